package dev.herald

import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import kotlinx.serialization.json.buildJsonObject
import kotlinx.serialization.json.put
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test

class ChannelChangeTest {
    @Test
    fun `a channel added and one removed mid-stream cost one reconnect and lose nothing`() = runBlocking {
        withTimeout(60_000) {
            HeraldServer().use { server ->
                val a = "live:keep"
                val b = "live:drop"
                val c = "live:add"
                val probe = Probe()
                val herald = Herald(
                    HeraldOptions(
                        url = server.url,
                        token = TokenSource.of(HeraldServer.token("kt", listOf("live:*"))),
                        channels = listOf(a, b),
                    ),
                    probe.client,
                )
                val rec = Recorder(herald, this)
                herald.connect()
                eventually(10_000, { "open" }) { herald.state.value == ConnectionState.Open }

                var na = 0
                var nb = 0
                var nc = 0
                fun pa() = server.publish(a, buildJsonObject { put("n", ++na) })
                fun pb() = server.publish(b, buildJsonObject { put("n", ++nb) })
                fun pc() = server.publish(c, buildJsonObject { put("n", ++nc) })

                repeat(5) { pa(); pb() }
                eventually(10_000, { "first batch" }) { rec.ns(a).size == 5 && rec.ns(b).size == 5 }

                // Changed together: one reconnect.
                herald.subscribe(c)
                herald.unsubscribe(b)
                repeat(5) { pa(); pb() } // while the stream is being replaced
                eventually(10_000, { "second stream: ${probe.streams()}" }) {
                    probe.streams().size == 2 && herald.state.value == ConnectionState.Open
                }
                val bBefore = nb
                repeat(5) { pa(); pb(); pc() }
                eventually(10_000, { "a=${rec.ns(a)} c=${rec.ns(c)}" }) { rec.ns(a).size >= 15 && rec.ns(c).size >= 5 }
                pa() // sentinel: anything still to come from the old stream or a duplicate is before it
                eventually(10_000, { "sentinel" }) { rec.ns(a).lastOrNull() == na }

                assertEquals((1..na).toList(), rec.ns(a), "the kept channel lost or repeated something")
                assertEquals((1..5).toList(), rec.ns(c), "the added channel gets live messages")
                // Nothing of the removed channel after unsubscribe(), not even what the old stream still carried.
                assertEquals((1..5).toList(), rec.ns(b), "the removed channel stopped (published up to $bBefore)")
                assertEquals(2, probe.streams().size, "changes made together cost one reconnect")
                assertEquals(setOf(a, c), herald.channels)
                herald.close()
                rec.stop()
            }
        }
    }
}
