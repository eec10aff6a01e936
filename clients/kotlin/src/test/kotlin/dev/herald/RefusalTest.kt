package dev.herald

import kotlinx.coroutines.delay
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import okhttp3.OkHttpClient
import okhttp3.Request
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import java.util.concurrent.TimeUnit

class RefusalTest {
    @Test
    fun `503 with Retry-After - few attempts, never before Retry-After, spread apart`() = runBlocking {
        withTimeout(60_000) {
            HeraldServer(mapOf("HERALD_MAX_CONNECTIONS" to "1")).use { server ->
                val token = HeraldServer.token("kt", listOf("live:*"))
                // The one stream the server takes, held open for the whole test.
                val holder = OkHttpClient.Builder().readTimeout(0, TimeUnit.MILLISECONDS).build()
                val held = holder.newCall(
                    Request.Builder().url("${server.url}/v1/sse?channel=live:held")
                        .header("Authorization", "Bearer $token").build(),
                ).execute()
                assertEquals(200, held.code)
                try {
                    val probes = List(3) { Probe() }
                    val clients = probes.map { probe ->
                        Herald(HeraldOptions(url = server.url, token = TokenSource.of(token), channels = listOf("live:busy")), probe.client)
                    }
                    val recs = clients.map { Recorder(it, this) }
                    val start = System.nanoTime()
                    clients.forEach { it.connect() }
                    eventually(25_000, { "three attempts each: ${probes.map { it.streams().size }}" }) {
                        probes.all { it.answeredStreams().size >= 3 }
                    }
                    val elapsedMs = (System.nanoTime() - start) / 1_000_000
                    val gaps = probes.flatMap { probe ->
                        val s = probe.answeredStreams()
                        assertTrue(s.all { it.status == 503 }, "all refused: ${s.map { it.status }}")
                        s.zipWithNext { x, y -> (y.atNanos - x.atNanos) / 1_000_000 }
                    }
                    // Retry-After is 5 s: never sooner, and at most 20 % later (plus scheduling slack).
                    assertTrue(gaps.all { it in 4_950..7_000 }, "gaps between attempts: $gaps")
                    // Bounded: in the time three attempts took, no client made more.
                    assertTrue(probes.all { it.streams().size <= 1 + elapsedMs / 4_950 }, "attempts: ${probes.map { it.streams().size }} in $elapsedMs ms")
                    // Jittered: clients refused together do not come back together.
                    assertTrue(gaps.max() - gaps.min() > 50, "delays are all alike: $gaps")
                    recs.forEach { rec ->
                        val retrying = rec.states.filterIsInstance<ConnectionState.Retrying>()
                        assertTrue(retrying.isNotEmpty() && retrying.all { it.cause.code == "too_many_connections" && it.cause.status == 503 }, "${rec.states}")
                        assertTrue(rec.states.none { it is ConnectionState.Stopped || it == ConnectionState.Open })
                    }
                    clients.forEach { it.close() }
                    recs.forEach { it.stop() }
                } finally {
                    held.close()
                }
            }
        }
    }

    private suspend fun stopsWithoutRetrying(server: HeraldServer, token: String, channel: String, code: String, status: Int) {
        val probe = Probe()
        val herald = Herald(HeraldOptions(url = server.url, token = TokenSource.of(token), channels = listOf(channel)), probe.client)
        herald.connect()
        eventually(10_000, { "stopped: ${herald.state.value}" }) { herald.state.value is ConnectionState.Stopped }
        val error = (herald.state.value as ConnectionState.Stopped).error
        assertEquals(code, error.code)
        assertEquals(status, error.status)
        delay(1_500) // a negative check: no further attempt may come
        assertEquals(1, probe.streams().size, "attempts after a $status")
        assertTrue(herald.state.value is ConnectionState.Stopped)
        herald.close()
    }

    @Test
    fun `403 and 400 stop without retrying`() = runBlocking {
        withTimeout(30_000) {
            HeraldServer().use { server ->
                val token = HeraldServer.token("kt", listOf("live:*"))
                stopsWithoutRetrying(server, token, "secret:1", "channel_forbidden", 403)
                stopsWithoutRetrying(server, token, "live:bad name", "invalid_channel", 400)
            }
        }
    }
}
