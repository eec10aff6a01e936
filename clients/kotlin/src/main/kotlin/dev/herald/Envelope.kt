package dev.herald

import kotlinx.serialization.json.JsonArray
import kotlinx.serialization.json.JsonNull
import kotlinx.serialization.json.JsonObject
import kotlinx.serialization.json.JsonPrimitive

/**
 * Reads the JSON the server sends into the client's types. Everything from the network is
 * checked here: a field that is missing or of the wrong type makes the event unreadable
 * (null), never an exception deep inside the state machine.
 */
internal object Envelope {
    /** An SSE event's `{"channel","epoch","seq","ts","data"}` (ephemeral: no epoch/seq). */
    fun message(ev: SseEvent): Message? {
        val obj = parseJsonOrNull(ev.data) as? JsonObject ?: return null
        val channel = obj.str("channel") ?: return null
        val epoch = obj.long("epoch")
        val seq = obj.long("seq")
        val reliable = epoch != null && seq != null
        return Message(
            channel = channel,
            event = ev.event,
            data = obj["data"] ?: JsonNull,
            id = if (reliable) ev.id else null,
            epoch = if (reliable) epoch else null,
            seq = if (reliable) seq else null,
            ts = obj.long("ts"),
            ephemeral = !reliable,
            backfilled = false,
        )
    }

    class ResetEvent(val channel: String, val epoch: Long, val seq: Long, val reason: String)

    /** `herald:reset`: `{"channel","epoch","seq","reason"}`. */
    fun reset(ev: SseEvent): ResetEvent? {
        val obj = parseJsonOrNull(ev.data) as? JsonObject ?: return null
        return ResetEvent(
            channel = obj.str("channel") ?: return null,
            epoch = obj.long("epoch") ?: return null,
            seq = obj.long("seq") ?: return null,
            reason = obj.str("reason") ?: "unknown",
        )
    }

    /** `herald:reconnect`'s `after_ms` (0 when unreadable: the backoff floor still applies). */
    fun reconnectAfterMs(ev: SseEvent): Long =
        ((parseJsonOrNull(ev.data) as? JsonObject)?.long("after_ms") ?: 0L).coerceIn(0L, 600_000L)

    fun reconnectReason(ev: SseEvent): String =
        (parseJsonOrNull(ev.data) as? JsonObject)?.str("reason") ?: "unknown"

    class HistoryPage(
        val epoch: Long,
        val messages: List<Message>,
        val nextAfter: Long?,
        val hasMore: Boolean,
    )

    /** A history answer; its messages carry the page's epoch and are marked backfilled. */
    fun historyPage(channel: String, body: JsonObject): HistoryPage? {
        val epoch = body.long("epoch") ?: return null
        val items = body["messages"] as? JsonArray ?: return null
        val messages = items.mapNotNull { item ->
            val m = item as? JsonObject ?: return@mapNotNull null
            val seq = m.long("seq") ?: return@mapNotNull null
            Message(
                channel = channel,
                event = m.str("event") ?: "message",
                data = m["data"] ?: JsonNull,
                id = null,
                epoch = epoch,
                seq = seq,
                ts = m.long("ts"),
                ephemeral = false,
                backfilled = true,
            )
        }
        val hasMore = (body["has_more"] as? JsonPrimitive)?.content == "true"
        return HistoryPage(epoch, messages, body.long("next_after"), hasMore)
    }
}
