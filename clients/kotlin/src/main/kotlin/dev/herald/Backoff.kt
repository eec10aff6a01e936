package dev.herald

import kotlin.math.max
import kotlin.math.min
import kotlin.random.Random

/**
 * The retry delays of docs/CLIENTS.md: `min(maxMs, baseMs · 2^attempt) · (0.5 + random · 0.5)`.
 * The random half spreads a crowd of clients that failed together (a server restart) over
 * time instead of bringing them back in one burst; the floor of half the base means even a
 * server that accepts and drops at once costs a client at least `baseMs / 2` per try.
 */
internal class Backoff(
    private val options: RetryOptions,
    private val random: Random = Random.Default,
) {
    /** The delay before the next try after `attempt` failures (0 for the first). */
    fun delayMs(attempt: Int): Long {
        val exp = min(attempt.coerceAtLeast(0), 30)
        val ceiling = min(options.maxMs.toDouble(), options.baseMs.toDouble() * (1L shl exp))
        return (ceiling * (0.5 + random.nextDouble() * 0.5)).toLong()
    }

    /**
     * The delay after a 429 or 503: never before the server's `Retry-After`, and never shorter
     * than the backoff. The server gives every refused client the same whole number of
     * seconds, so up to 20 % is added at random: clients refused together come back apart.
     */
    fun delayMs(attempt: Int, retryAfterMs: Long?): Long {
        val backoff = delayMs(attempt)
        if (retryAfterMs == null || retryAfterMs <= 0) return backoff
        val spread = (retryAfterMs * (1.0 + random.nextDouble() * 0.2)).toLong()
        return max(backoff, spread)
    }
}
