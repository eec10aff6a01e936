package dev.herald

import kotlinx.coroutines.delay
import kotlinx.coroutines.launch
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import kotlinx.serialization.json.buildJsonObject
import kotlinx.serialization.json.put
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import java.util.concurrent.atomic.AtomicInteger

class TokenTest {
    @Test
    fun `tokens that expire mid-stream are renewed and the stream goes on, also across a reconnect after exp`() = runBlocking {
        withTimeout(60_000) {
            HeraldServer().use { server ->
                val ch = "live:tok"
                val calls = AtomicInteger()
                val firstExp = System.currentTimeMillis() / 1000 + 4
                val probe = Probe()
                val herald = Herald(
                    HeraldOptions(
                        url = server.url,
                        token = TokenSource.from {
                            calls.incrementAndGet()
                            HeraldServer.token("kt", listOf("live:*"), System.currentTimeMillis() / 1000 + 4)
                        },
                        channels = listOf(ch),
                    ),
                    probe.client,
                )
                val rec = Recorder(herald, this)
                herald.connect()
                eventually(10_000, { "open" }) { herald.state.value == ConnectionState.Open }

                var n = 0
                val publisher = launch(kotlinx.coroutines.Dispatchers.IO) {
                    while (n < 80) {
                        server.publish(ch, buildJsonObject { put("n", ++n) })
                        delay(100)
                    }
                }
                // Past the first token's exp, the stream it opened must still deliver.
                eventually(15_000, { "past exp" }) { System.currentTimeMillis() > firstExp * 1000 + 200 }
                val atExp = rec.ns(ch).size
                eventually(10_000, { "messages past exp: ${rec.ns(ch).size} (at exp: $atExp)" }) { rec.ns(ch).size >= atExp + 5 }
                assertEquals(1, probe.streams().size, "still the first stream, opened with the expired token")
                // A reconnect after exp (a channel change): it needs a token that is valid now.
                herald.subscribe("live:tok2")
                publisher.join()
                eventually(15_000, { "all ${rec.ns(ch)}" }) { rec.ns(ch).size >= n }

                assertEquals((1..n).toList(), rec.ns(ch))
                assertTrue(calls.get() >= 3, "the callback was asked again before each exp: ${calls.get()} calls")
                assertTrue(probe.streams().size >= 2, "reconnected after exp")
                assertTrue(probe.streams().all { it.status == 200 }, "a renewed token was used: ${probe.streams()}")
                assertTrue(rec.states.none { it is ConnectionState.Stopped }, "states: ${rec.states}")
                herald.close()
                rec.stop()
            }
        }
    }

    @Test
    fun `a 401 asks the callback for a new token and connects`() = runBlocking {
        withTimeout(30_000) {
            HeraldServer().use { server ->
                val calls = AtomicInteger()
                val probe = Probe()
                val herald = Herald(
                    HeraldOptions(
                        url = server.url,
                        token = TokenSource.from {
                            val expired = calls.incrementAndGet() == 1
                            val exp = System.currentTimeMillis() / 1000 + if (expired) -60 else 3600
                            HeraldServer.token("kt", listOf("live:*"), exp)
                        },
                        channels = listOf("live:401"),
                    ),
                    probe.client,
                )
                val rec = Recorder(herald, this)
                herald.connect()
                eventually(10_000, { "open: ${rec.states}" }) { herald.state.value == ConnectionState.Open }
                assertEquals(listOf(401, 200), probe.streams().map { it.status })
                assertEquals(2, calls.get())
                val retry = rec.states.filterIsInstance<ConnectionState.Retrying>().single()
                assertEquals("token_expired", retry.cause.code)
                assertTrue(retry.delayMs >= 250, "backoff after a 401: ${retry.delayMs}")
                herald.close()
                rec.stop()
            }
        }
    }

    @Test
    fun `a 401 without a callback stops`() = runBlocking {
        withTimeout(30_000) {
            HeraldServer().use { server ->
                val probe = Probe()
                val expired = HeraldServer.token("kt", listOf("live:*"), System.currentTimeMillis() / 1000 - 60)
                val herald = Herald(
                    HeraldOptions(url = server.url, token = TokenSource.of(expired), channels = listOf("live:x")),
                    probe.client,
                )
                herald.connect()
                eventually(10_000, { "stopped: ${herald.state.value}" }) { herald.state.value is ConnectionState.Stopped }
                assertEquals("token_expired", (herald.state.value as ConnectionState.Stopped).error.code)
                delay(1500) // a negative check: no further attempt may come
                assertEquals(1, probe.streams().size)
                herald.close()
            }
        }
    }
}
