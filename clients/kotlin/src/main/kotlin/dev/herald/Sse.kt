package dev.herald

import okio.BufferedSource
import okio.ByteString.Companion.encodeUtf8
import java.io.IOException

/**
 * One dispatched SSE event. [id] is the `id:` of this event only (not the sticky "last event
 * ID" of the WHATWG algorithm): Herald's ephemeral events carry none, and they must not move
 * the client's cursor.
 */
internal data class SseEvent(val event: String, val data: String, val id: String?)

/** The event name of a block that carried only an `id:` (no event is dispatched for it). */
internal const val CURSOR_ONLY = ""


/**
 * The field-level half of the SSE parser (WHATWG "event stream interpretation"), fed one line
 * at a time. Kept apart from the byte reading so it can be tested on plain strings and so
 * the reader can stay a dumb, bounded line splitter.
 */
internal class SseParser {
    private val data = StringBuilder()
    private var hasData = false
    private var event: String? = null
    private var id: String? = null

    /** The last `retry:` value, in milliseconds. */
    var retryMs: Long? = null
        private set

    /** Comment lines (`: hb`) seen: a heartbeat proves the stream is alive. */
    var comments: Long = 0
        private set

    /** Feeds one line (without its terminator); returns the event a blank line dispatches. */
    fun line(line: String): SseEvent? {
        if (line.isEmpty()) return dispatch()
        if (line[0] == ':') {
            comments++
            return null
        }
        val colon = line.indexOf(':')
        val field: String
        var value: String
        if (colon < 0) {
            field = line
            value = ""
        } else {
            field = line.substring(0, colon)
            value = line.substring(colon + 1)
            if (value.startsWith(' ')) value = value.substring(1)
        }
        when (field) {
            "event" -> event = value
            "data" -> {
                if (hasData) data.append('\n')
                data.append(value)
                hasData = true
            }
            // The spec ignores an id containing NUL (it could not be sent back as a header).
            "id" -> if (value.indexOf('\u0000') < 0) id = value
            "retry" -> if (value.isNotEmpty() && value.all { it in '0'..'9' }) {
                retryMs = value.toLongOrNull()
            }
            else -> {} // unknown fields are ignored by the spec
        }
        return null
    }

    private fun dispatch(): SseEvent? {
        val out = when {
            hasData -> SseEvent(event?.takeIf { it.isNotEmpty() } ?: "message", data.toString(), id)
            // An `id:` with no event: Herald names where the stream starts this way, so a
            // stream that drops before its first event still resumes from there.
            id != null -> SseEvent(CURSOR_ONLY, "", id)
            else -> null
        }
        data.setLength(0)
        hasData = false
        event = null
        id = null
        return out
    }
}

/**
 * Splits a streaming body into lines ending in LF, CRLF or a bare CR, as the SSE spec
 * requires, without ever waiting for the byte after a CR (that could hold an event back
 * until the next heartbeat). A line longer than [maxLineBytes] is an error: a buffer per
 * stream must stay bounded whatever the peer sends.
 */
internal class SseLineReader(
    private val source: BufferedSource,
    private val maxLineBytes: Long = 8L * 1024 * 1024,
) {
    private var skipLf = false

    /** The next line, or null at the end of the body. */
    @Throws(IOException::class)
    fun readLine(): String? {
        while (true) {
            val buffer = source.buffer
            if (skipLf) {
                if (buffer.size == 0L && !source.request(1)) return null
                if (buffer[0] == LF) buffer.skip(1)
                skipLf = false
            }
            val at = buffer.indexOfElement(TERMINATORS)
            if (at >= 0) {
                if (at > maxLineBytes) throw IOException("SSE line longer than $maxLineBytes bytes")
                val line = buffer.readUtf8(at)
                if (buffer.readByte() == CR) skipLf = true
                return line
            }
            if (buffer.size > maxLineBytes) throw IOException("SSE line longer than $maxLineBytes bytes")
            if (!source.request(buffer.size + 1)) {
                // End of body: a last line without terminator is dropped with its event, as the
                // spec says for an unterminated event.
                return null
            }
        }
    }

    private companion object {
        const val CR = '\r'.code.toByte()
        const val LF = '\n'.code.toByte()
        val TERMINATORS = "\r\n".encodeUtf8()
    }
}
