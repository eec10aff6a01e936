package dev.herald

import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import kotlinx.serialization.json.Json
import kotlinx.serialization.json.buildJsonObject
import kotlinx.serialization.json.jsonArray
import kotlinx.serialization.json.jsonObject
import kotlinx.serialization.json.jsonPrimitive
import kotlinx.serialization.json.long
import kotlinx.serialization.json.put
import okhttp3.Request
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Test

class AckTest {
    private fun ackedSeq(server: HeraldServer, channel: String, user: String): Long? {
        val req = Request.Builder().url("${server.url}/v1/channels/$channel/acks")
            .header("Authorization", "Bearer ${HeraldServer.API_KEY}").build()
        server.http.newCall(req).execute().use {
            check(it.isSuccessful) { "acks: ${it.code}" }
            val acks = Json.parseToJsonElement(it.body.string()).jsonObject["acks"]!!.jsonArray
            return acks.map { a -> a.jsonObject }.firstOrNull { a -> a["user"]!!.jsonPrimitive.content == user }
                ?.get("seq")?.jsonPrimitive?.long
        }
    }

    @Test
    fun `acks are batched, the highest per channel, and flushed by close`() = runBlocking {
        withTimeout(30_000) {
            HeraldServer().use { server ->
                val inbox = "user:ann"
                val live = "live:acked"
                val probe = Probe()
                val herald = Herald(
                    HeraldOptions(
                        url = server.url,
                        token = TokenSource.of(HeraldServer.token("ann", listOf("live:*"))),
                        channels = listOf(inbox, live),
                        ackIntervalMs = 60_000, // only close() sends, so the batching is visible
                    ),
                    probe.client,
                )
                val rec = Recorder(herald, this)
                herald.connect()
                eventually(10_000, { "open" }) { herald.state.value == ConnectionState.Open }
                for (n in 1..10) {
                    server.publish(inbox, buildJsonObject { put("n", n) })
                    server.publish(live, buildJsonObject { put("n", n) })
                }
                server.publishEphemeral(live, buildJsonObject { put("n", 99) })
                eventually(10_000, { "all" }) { rec.ns(inbox).size == 10 && rec.ns(live).size == 11 }
                // Out of order on purpose: the highest counts.
                rec.of(inbox).reversed().forEach(herald::ack)
                rec.of(live).take(7).forEach(herald::ack) // and the ephemeral one is ignored
                herald.close()
                rec.stop()

                val posts = synchronized(probe.attempts) { probe.attempts.filter { it.path == "/v1/ack" } }
                assertEquals(2, posts.size, "one ack per channel: $posts")
                assertEquals(listOf(200, 200), posts.map { it.status })
                assertEquals(10L, ackedSeq(server, inbox, "ann"))
                assertEquals(7L, ackedSeq(server, live, "ann"))
            }
        }
    }

    @Test
    fun `acks go out every ackIntervalMs while the client runs`() = runBlocking {
        withTimeout(30_000) {
            HeraldServer().use { server ->
                val inbox = "user:bob"
                val probe = Probe()
                val herald = Herald(
                    HeraldOptions(
                        url = server.url,
                        token = TokenSource.of(HeraldServer.token("bob", emptyList())),
                        channels = listOf(inbox),
                        ackIntervalMs = 300,
                    ),
                    probe.client,
                )
                val rec = Recorder(herald, this)
                herald.connect()
                eventually(10_000, { "open" }) { herald.state.value == ConnectionState.Open }
                for (n in 1..10) server.publish(inbox, buildJsonObject { put("n", n) })
                eventually(10_000, { "all" }) { rec.ns(inbox).size == 10 }
                rec.of(inbox).forEach(herald::ack)
                eventually(10_000, { "acked: ${ackedSeq(server, inbox, "bob")}" }) { ackedSeq(server, inbox, "bob") == 10L }
                val posts = synchronized(probe.attempts) { probe.attempts.count { it.path == "/v1/ack" } }
                assertEquals(1, posts, "ten acks made together, one request")
                herald.close()
                rec.stop()
                assertEquals(1, synchronized(probe.attempts) { probe.attempts.count { it.path == "/v1/ack" } }, "nothing left for close()")
            }
        }
    }
}
