package dev.herald

import kotlinx.coroutines.CancellationException
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.Job
import kotlinx.coroutines.delay
import kotlinx.coroutines.launch
import kotlinx.coroutines.sync.Mutex
import kotlinx.coroutines.sync.withLock
import kotlinx.coroutines.withTimeout
import kotlinx.serialization.json.JsonObject
import okio.ByteString.Companion.decodeBase64

/**
 * Holds the subscriber token and renews it before it expires. The server checks a token only
 * when a stream opens, so renewing never touches the stream: the next connect, ack or
 * history read simply uses the new one.
 */
internal class TokenKeeper(
    private val source: TokenSource?,
    private val options: HeraldOptions,
    private val clock: () -> Long = System::currentTimeMillis,
) {
    private val lock = Mutex()

    @Volatile
    private var token: String? = (source as? TokenSource.Fixed)?.token

    /** Bumped on every new token, so a 401 can tell whether the token it used is still current. */
    @Volatile
    var generation: Int = 0
        private set

    /** Whether a 401 can be cured (there is a callback to ask). */
    val renewable: Boolean get() = source is TokenSource.Provider

    /** Calls to the callback so far (tests and diagnostics). */
    @Volatile
    var fetches: Int = 0
        private set

    private var refresher: Job? = null

    /** The token to use now, asking the callback first if there is none yet; null without a token. */
    suspend fun current(): String? {
        token?.let { return it }
        if (source !is TokenSource.Provider) return null
        return lock.withLock { token ?: fetchLocked() }
    }

    /**
     * After a 401 with the token of [usedGeneration]: asks for a new one unless another
     * caller already did (a stream and an ack failing together ask once).
     */
    suspend fun renewAfter401(usedGeneration: Int): String? {
        if (source !is TokenSource.Provider) return null
        return lock.withLock {
            if (generation != usedGeneration && token != null) token else fetchLocked()
        }
    }

    private suspend fun fetchLocked(): String {
        val provider = source as TokenSource.Provider
        fetches++
        val fresh = try {
            withTimeout(options.requestTimeoutMs) { provider.fetch() }
        } catch (e: CancellationException) {
            if (e is kotlinx.coroutines.TimeoutCancellationException) {
                throw HeraldError("token_unavailable", "the token callback did not answer within ${options.requestTimeoutMs} ms", cause = e)
            }
            throw e
        } catch (e: Exception) {
            throw HeraldError("token_unavailable", "the token callback failed: ${e.message}", cause = e)
        }
        if (fresh.isBlank()) throw HeraldError("token_unavailable", "the token callback returned an empty token")
        token = fresh
        generation++
        return fresh
    }

    /**
     * Renews the token ahead of its `exp` for as long as [scope] lives. A failed renewal is
     * tried again with the backoff; the old token keeps working for whatever does not need a
     * new check until it expires (and a 401 then asks again).
     */
    fun start(scope: CoroutineScope) {
        if (source !is TokenSource.Provider || refresher != null) return
        refresher = scope.launch {
            val backoff = Backoff(options.retry)
            var failures = 0
            while (true) {
                val now = clock()
                val wait = token?.let { refreshDelayMs(it, now) }
                if (wait == null) {
                    // No token yet, or one without `exp`: the first connect fetches it; look again later.
                    delay(if (token == null) 1_000 else 60_000)
                    continue
                }
                val before = generation
                delay(wait)
                try {
                    lock.withLock { if (generation == before) fetchLocked() }
                    failures = 0
                } catch (e: HeraldError) {
                    delay(backoff.delayMs(failures++))
                }
            }
        }
    }

    /**
     * When to renew a token: `refreshBeforeSecs` before `exp`, or at 80 % of its remaining life
     * when that is sooner; a token shorter-lived than `refreshBeforeSecs` is renewed at 80 %
     * (not at once, which would ask the callback in a loop). At least 1 s, so a callback that
     * keeps returning expired tokens is asked once a second at most.
     */
    fun refreshDelayMs(token: String, now: Long): Long? {
        val exp = expOf(token) ?: return null
        val life = exp * 1000 - now
        val early = life - options.refreshBeforeSecs * 1000
        val eighty = life * 8 / 10
        val wait = if (early > 0) minOf(early, eighty) else eighty
        return wait.coerceAtLeast(1_000)
    }

    companion object {
        /** The `exp` claim (unix seconds) of a JWT, read without verifying it; null if absent. */
        fun expOf(token: String): Long? {
            val parts = token.split('.')
            if (parts.size < 2) return null
            val json = parts[1].decodeBase64()?.utf8() ?: return null
            return (parseJsonOrNull(json) as? JsonObject)?.long("exp")
        }
    }
}
