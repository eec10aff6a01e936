package dev.herald

import kotlinx.serialization.json.JsonElement

/**
 * A message as the app sees it. [data] is the publisher's JSON. Reliable messages have
 * [epoch] and [seq]; ephemeral ones have neither (and are never deduplicated or acked).
 * [id] is the stream cursor after this message; backfilled messages (read from the history
 * endpoint after a reset) have none.
 */
data class Message(
    val channel: String,
    val event: String,
    val data: JsonElement,
    val id: String?,
    val epoch: Long?,
    val seq: Long?,
    val ts: Long?,
    val ephemeral: Boolean,
    val backfilled: Boolean,
)

/**
 * The client's position on [channel] was gone (`reason`: `retention`, `epoch` or `ahead`).
 * The stream goes on live after [seq]. [backfilled] messages were delivered from history
 * before this; [missed] positions between the last delivered one and [seq] could not be.
 * [error] says why history could not be read (then [backfilled] is 0).
 */
data class Reset(
    val channel: String,
    val epoch: Long,
    val seq: Long,
    val reason: String,
    val missed: Long,
    val backfilled: Int,
    val error: HeraldError? = null,
)

/**
 * A refusal or failure. [status] is the HTTP status when there was one; [code] is the
 * server's stable error code (`channel_forbidden` …) or one of the client's own: `network`,
 * `stream_ended`, `idle_timeout`, `bad_event`, `token_unavailable`.
 */
class HeraldError(
    val code: String,
    message: String,
    val status: Int? = null,
    /** The server's `Retry-After`, in milliseconds. */
    val retryAfterMs: Long? = null,
    cause: Throwable? = null,
) : Exception(message, cause) {
    override fun toString(): String =
        "HeraldError(${status?.let { "$it " } ?: ""}$code: $message)"
}

/** The connection states of docs/CLIENTS.md. [name] is the state's name there. */
sealed class ConnectionState(val name: String) {
    data object Idle : ConnectionState("idle")
    data object Connecting : ConnectionState("connecting")
    data object Open : ConnectionState("open")

    /** Waiting [delayMs] before the next try, because of [cause] (failures so far: [attempt]). */
    data class Retrying(val delayMs: Long, val cause: HeraldError, val attempt: Int) : ConnectionState("retrying")

    data object Offline : ConnectionState("offline")

    /** A 403, 400 or 404, or a 401 without a token provider: retrying cannot help, the app must act. */
    data class Stopped(val error: HeraldError) : ConnectionState("stopped")

    data object Closed : ConnectionState("closed")
}
