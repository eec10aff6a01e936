package dev.herald

import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.suspendCancellableCoroutine
import kotlinx.coroutines.withContext
import kotlinx.coroutines.withTimeout
import kotlinx.serialization.json.Json
import kotlinx.serialization.json.JsonElement
import kotlinx.serialization.json.JsonObject
import kotlinx.serialization.json.longOrNull
import okhttp3.Call
import okhttp3.Callback
import okhttp3.Response
import java.io.IOException
import kotlin.coroutines.resume
import kotlin.coroutines.resumeWithException

/**
 * Runs a call without blocking a thread while it waits, and cancels it (closing its socket)
 * when the coroutine is cancelled, so close() never leaves a request behind.
 */
internal suspend fun Call.await(): Response = suspendCancellableCoroutine { cont ->
    cont.invokeOnCancellation { cancel() }
    enqueue(object : Callback {
        override fun onFailure(call: Call, e: IOException) {
            cont.resumeWithException(e)
        }

        override fun onResponse(call: Call, response: Response) {
            cont.resume(response) { _, r, _ -> r.close() }
        }
    })
}

/** The answer of a small JSON request: its status and parsed body (null if not JSON). */
internal class JsonAnswer(val status: Int, val body: JsonElement?, val error: HeraldError?)

/**
 * One JSON request with a deadline over the whole exchange (headers and body): a server
 * that accepts and never answers costs at most [timeoutMs].
 */
internal suspend fun Call.json(timeoutMs: Long): JsonAnswer = try {
    withTimeout(timeoutMs) {
        val response = await()
        response.use {
            val text = withContext(Dispatchers.IO) { it.body.string() }
            val parsed = parseJsonOrNull(text)
            val error = if (it.isSuccessful) null else errorOf(it, parsed)
            JsonAnswer(it.code, parsed, error)
        }
    }
} catch (e: IOException) {
    JsonAnswer(0, null, HeraldError("network", e.message ?: e.toString(), cause = e))
} catch (e: kotlinx.coroutines.TimeoutCancellationException) {
    cancel()
    JsonAnswer(0, null, HeraldError("timeout", "no answer within $timeoutMs ms", cause = e))
}

internal fun parseJsonOrNull(text: String): JsonElement? = try {
    Json.parseToJsonElement(text)
} catch (_: Exception) {
    null
}

/** The error of a refused request: the body's `{"error":{"code","message"}}` and `Retry-After`. */
internal fun errorOf(response: Response, body: JsonElement?): HeraldError {
    val err = (body as? JsonObject)?.get("error") as? JsonObject
    val code = err?.str("code") ?: "http_${response.code}"
    val message = err?.str("message") ?: response.message.ifEmpty { "HTTP ${response.code}" }
    return HeraldError(code, message, status = response.code, retryAfterMs = retryAfterMs(response))
}

/** `Retry-After` as seconds or an HTTP date, in milliseconds from now; null when absent or past. */
internal fun retryAfterMs(response: Response): Long? {
    val raw = response.header("Retry-After")?.trim() ?: return null
    raw.toLongOrNull()?.let { return if (it > 0) it * 1000 else null }
    val at = response.headers.getDate("Retry-After") ?: return null // java.util.Date: any Android API level
    val ms = at.time - System.currentTimeMillis()
    return if (ms > 0) ms else null
}

internal fun JsonObject.str(key: String): String? =
    (this[key] as? kotlinx.serialization.json.JsonPrimitive)?.takeIf { it.isString }?.content

internal fun JsonObject.long(key: String): Long? =
    (this[key] as? kotlinx.serialization.json.JsonPrimitive)?.takeIf { !it.isString }?.longOrNull

internal fun JsonElement.objOrNull(): JsonObject? = this as? JsonObject

