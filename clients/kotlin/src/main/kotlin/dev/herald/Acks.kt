package dev.herald

import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.Job
import kotlinx.coroutines.channels.Channel
import kotlinx.coroutines.delay
import kotlinx.coroutines.isActive
import kotlinx.coroutines.launch
import kotlinx.coroutines.withTimeoutOrNull
import kotlinx.serialization.json.buildJsonObject
import kotlinx.serialization.json.put
import okhttp3.HttpUrl
import okhttp3.MediaType.Companion.toMediaType
import okhttp3.OkHttpClient
import okhttp3.Request
import okhttp3.RequestBody.Companion.toRequestBody

/**
 * Batches acks: the app may ack every message, the server hears at most one `POST /v1/ack`
 * per channel per interval, with the highest position (the server never moves an ack back,
 * so only the highest matters).
 */
internal class Acks(
    private val http: OkHttpClient,
    private val baseUrl: HttpUrl,
    private val tokens: TokenKeeper,
    private val options: HeraldOptions,
) {
    /**
     * Highest position the app acked per channel, and what the server has already taken.
     * Guarded by [lock] (plain maps: `ConcurrentHashMap.merge` needs Android API 24).
     */
    private val lock = Any()
    private val wanted = HashMap<String, Position>()
    private val sent = HashMap<String, Position>()
    private var ticker: Job? = null

    /** Signalled when there is something to send, so an idle client does not wake every interval. */
    private val pending = Channel<Unit>(Channel.CONFLATED)

    /** The last error of a flush (diagnostics). */
    @Volatile
    var lastError: HeraldError? = null
        private set

    fun record(channel: String, position: Position) {
        synchronized(lock) {
            val old = wanted[channel]
            if (old == null || position > old) wanted[channel] = position
        }
        pending.trySend(Unit)
    }

    fun start(scope: CoroutineScope) {
        if (ticker != null) return
        ticker = scope.launch {
            while (isActive) {
                pending.receive()
                delay(options.ackIntervalMs)
                // A failed ack is tried again after the next interval.
                if (!flush()) pending.trySend(Unit)
            }
        }
    }

    fun stop() {
        ticker?.cancel()
    }

    /** Sends every channel that moved; a failure is left for the next flush. True if all went. */
    suspend fun flush(): Boolean {
        var allSent = true
        val moved = synchronized(lock) {
            wanted.filter { (channel, position) -> sent[channel].let { it == null || position > it } }
        }
        for ((channel, position) in moved) {
            when (send(channel, position)) {
                Outcome.Sent, Outcome.Dropped -> synchronized(lock) {
                    val done = sent[channel]
                    if (done == null || position > done) sent[channel] = position
                }
                Outcome.Retry -> allSent = false
            }
        }
        return allSent
    }

    /** [flush] with a deadline, for close(): pending acks must not hold the app up forever. */
    suspend fun flushWithin(timeoutMs: Long) {
        withTimeoutOrNull(timeoutMs) { flush() }
    }

    private enum class Outcome { Sent, Dropped, Retry }

    private suspend fun send(channel: String, position: Position): Outcome {
        val token = try {
            tokens.current()
        } catch (e: HeraldError) {
            lastError = e
            return Outcome.Retry
        }
        val generation = tokens.generation
        val body = buildJsonObject {
            put("channel", channel)
            put("epoch", position.epoch)
            put("seq", position.seq)
        }.toString().toRequestBody(JSON)
        val request = Request.Builder().url(baseUrl.newBuilder().addPathSegments("v1/ack").build()).post(body).apply {
            if (token != null) header("Authorization", "Bearer $token")
        }.build()
        val answer = http.newCall(request).json(options.requestTimeoutMs)
        val error = answer.error ?: return Outcome.Sent
        lastError = error
        return when {
            // An ack outside the channel's log (a reset moved the channel on) can never succeed.
            error.status == 400 -> Outcome.Dropped
            else -> {
                // Tried again at the next interval; after a 401 with a renewed token.
                if (error.status == 401 && tokens.renewable) {
                    try {
                        tokens.renewAfter401(generation)
                    } catch (_: HeraldError) {
                    }
                }
                Outcome.Retry
            }
        }
    }

    private companion object {
        val JSON = "application/json".toMediaType()
    }
}
