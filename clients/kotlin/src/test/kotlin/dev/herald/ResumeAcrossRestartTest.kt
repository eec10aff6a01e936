package dev.herald

import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import kotlinx.serialization.json.buildJsonObject
import kotlinx.serialization.json.put
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test

class ResumeAcrossRestartTest {
    @Test
    fun `through kill -9 and a restart every message arrives exactly once, in order`() = runBlocking {
        withTimeout(90_000) {
            HeraldServer().use { server ->
                val a = "live:resume-a"
                val b = "live:resume-b"
                val probe = Probe()
                val herald = Herald(
                    HeraldOptions(
                        url = server.url,
                        token = TokenSource.of(HeraldServer.token("kt", listOf("live:*"))),
                        channels = listOf(a, b),
                        retry = RetryOptions(baseMs = 1000, maxMs = 4000),
                    ),
                    probe.client,
                )
                val rec = Recorder(herald, this)
                herald.connect()
                eventually(10_000, { "open: ${herald.state.value}" }) { herald.state.value == ConnectionState.Open }

                var n = 0
                fun publishBoth() {
                    n++
                    server.publish(a, buildJsonObject { put("n", n) })
                    server.publish(b, buildJsonObject { put("n", n) })
                }
                repeat(10) { publishBoth() } // before
                eventually(10_000, { "before: ${rec.ns(a)}" }) { rec.ns(a).size == 10 && rec.ns(b).size == 10 }

                server.kill9()
                eventually(10_000, { "retrying: ${herald.state.value}" }) { herald.state.value is ConnectionState.Retrying }
                server.restart()
                var whileAway = 0
                repeat(10) { // during: the client is still away, waiting its backoff
                    if (herald.state.value != ConnectionState.Open) whileAway++
                    publishBoth()
                }
                eventually(15_000, { "reopened: ${herald.state.value}" }) { herald.state.value == ConnectionState.Open }
                repeat(10) { publishBoth() } // after
                eventually(15_000, { "all: a=${rec.ns(a)} b=${rec.ns(b)}" }) { rec.ns(a).size >= 30 && rec.ns(b).size >= 30 }
                // A sentinel behind everything: a duplicate would have arrived before it.
                publishBoth()
                eventually(10_000, { "sentinel" }) { rec.ns(a).lastOrNull() == 31 && rec.ns(b).lastOrNull() == 31 }

                assertEquals((1..31).toList(), rec.ns(a), "channel a")
                assertEquals((1..31).toList(), rec.ns(b), "channel b")
                assertTrue(whileAway > 0, "no message was published while the client was away")
                assertTrue(probe.streams().size >= 2, "the client reconnected")
                assertTrue(rec.messages.none { it.backfilled || it.ephemeral })
                assertTrue(rec.states.none { it is ConnectionState.Stopped }, "states: ${rec.states}")
                herald.close()
                rec.stop()
                assertEquals(ConnectionState.Closed, herald.state.value)
            }
        }
    }

    @Test
    fun `a stream that drops before its first event resumes from where it started`() = runBlocking {
        withTimeout(60_000) {
            HeraldServer().use { server ->
                val ch = "live:quiet"
                val herald = Herald(
                    HeraldOptions(
                        url = server.url,
                        token = TokenSource.of(HeraldServer.token("kt", listOf("live:*"))),
                        channels = listOf(ch),
                        // Long enough that the publishes below happen while the client is away.
                        retry = RetryOptions(baseMs = 4000, maxMs = 4000),
                    ),
                )
                val rec = Recorder(herald, this)
                herald.connect()
                eventually(10_000, { "the starting cursor: ${herald.cursor}" }) { herald.cursor != null }
                server.kill9()
                server.restart()
                server.publish(ch, buildJsonObject { put("n", 1) })
                server.publish(ch, buildJsonObject { put("n", 2) })
                eventually(20_000, { "both: ${rec.ns(ch)}" }) { rec.ns(ch).size == 2 }
                assertEquals(listOf(1, 2), rec.ns(ch))
                herald.close()
                rec.stop()
            }
        }
    }

    @Test
    fun `herald-reconnect (stream lifetime) and going offline resume from the cursor`() = runBlocking {
        withTimeout(60_000) {
            HeraldServer(mapOf("HERALD_MAX_CONN_LIFETIME_SECS" to "2", "HERALD_RETRY_JITTER_MS" to "300")).use { server ->
                val ch = "live:lifetime"
                val probe = Probe()
                val herald = Herald(
                    HeraldOptions(
                        url = server.url,
                        token = TokenSource.of(HeraldServer.token("kt", listOf("live:*"))),
                        channels = listOf(ch),
                    ),
                    probe.client,
                )
                val rec = Recorder(herald, this)
                herald.connect()
                eventually(10_000, { "open" }) { herald.state.value == ConnectionState.Open }
                var n = 0
                // Published across at least two lifetime reconnects.
                while (probe.streams().size < 3) {
                    server.publish(ch, buildJsonObject { put("n", ++n) })
                    kotlinx.coroutines.delay(50)
                    check(n < 400) { "no lifetime reconnect: ${probe.streams()}" }
                }
                val reconnects = rec.states.filterIsInstance<ConnectionState.Retrying>()
                assertTrue(reconnects.isNotEmpty() && reconnects.all { it.cause.code == "reconnect" }, "${rec.states}")

                herald.setOnline(false)
                eventually(10_000, { "offline" }) { herald.state.value == ConnectionState.Offline }
                val streamsOffline = probe.streams().size
                repeat(5) { server.publish(ch, buildJsonObject { put("n", ++n) }) } // while offline
                herald.setOnline(true)
                eventually(10_000, { "back: ${herald.state.value}" }) { herald.state.value == ConnectionState.Open }
                assertEquals(streamsOffline + 1, probe.streams().size, "online reconnects at once, once")
                server.publish(ch, buildJsonObject { put("n", ++n) })
                eventually(10_000, { "all: ${rec.ns(ch)}" }) { rec.ns(ch).lastOrNull() == n }
                assertEquals((1..n).toList(), rec.ns(ch))
                herald.close()
                rec.stop()
            }
        }
    }
}
