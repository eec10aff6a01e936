package dev.herald

import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import kotlin.random.Random

class BackoffTest {
    private val backoff = Backoff(RetryOptions(baseMs = 500, maxMs = 30_000), Random(42))

    @Test
    fun `each delay lies in the doc's band and the cap holds`() {
        for (attempt in 0..40) {
            val ceiling = minOf(30_000.0, 500.0 * Math.pow(2.0, minOf(attempt, 30).toDouble()))
            repeat(50) {
                val d = backoff.delayMs(attempt)
                assertTrue(d >= (ceiling * 0.5).toLong() && d <= ceiling.toLong(), "attempt $attempt: $d")
            }
        }
    }

    @Test
    fun `the first retry waits at least a quarter second (no tight loop)`() {
        repeat(1000) { assertTrue(backoff.delayMs(0) >= 250) }
    }

    @Test
    fun `delays are jittered`() {
        val delays = List(20) { backoff.delayMs(3) }.toSet()
        assertTrue(delays.size > 10, "too few distinct delays: $delays")
    }

    @Test
    fun `Retry-After is a floor, spread upwards by at most 20 percent`() {
        repeat(200) {
            val d = backoff.delayMs(0, 5_000)
            assertTrue(d in 5_000..6_000, "$d")
        }
        // A backoff longer than Retry-After wins.
        repeat(50) { assertTrue(backoff.delayMs(10, 1_000) >= 15_000) }
        // No Retry-After: plain backoff.
        repeat(50) { assertTrue(backoff.delayMs(0, null) in 250..500) }
        assertEquals(2, setOf(backoff.delayMs(0, 5_000), backoff.delayMs(0, 5_000)).size)
    }
}
