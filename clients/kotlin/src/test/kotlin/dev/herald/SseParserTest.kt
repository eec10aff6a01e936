package dev.herald

import okio.Buffer
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.assertThrows
import java.io.IOException

class SseParserTest {
    private fun parse(text: String): Pair<List<SseEvent>, SseParser> {
        val parser = SseParser()
        val reader = SseLineReader(Buffer().writeUtf8(text))
        val out = mutableListOf<SseEvent>()
        while (true) {
            val line = reader.readLine() ?: break
            parser.line(line)?.let(out::add)
        }
        return out to parser
    }

    @Test
    fun `herald's events with id, event name and retry`() {
        val (events, parser) = parse(
            "retry: 2537\n\n" +
                "id: h1abc\nevent: comment\ndata: {\"channel\":\"live:1\",\"seq\":1}\n\n" +
                "event: message\ndata: {\"channel\":\"live:1\"}\n\n",
        )
        assertEquals(2537L, parser.retryMs)
        assertEquals(
            listOf(
                SseEvent("comment", "{\"channel\":\"live:1\",\"seq\":1}", "h1abc"),
                // An event without id: must not inherit the previous one (ephemeral events keep the cursor).
                SseEvent("message", "{\"channel\":\"live:1\"}", null),
            ),
            events,
        )
    }

    @Test
    fun `an id without an event (where a stream starts) is passed on as a cursor only`() {
        val (events, _) = parse("retry: 2537\nid: h1start\n\n: hb\n\n")
        assertEquals(listOf(SseEvent(CURSOR_ONLY, "", "h1start")), events)
    }

    @Test
    fun `CRLF, bare CR and LF all end lines, multi-line data joins with LF`() {
        val (events, _) = parse("data: a\r\ndata: b\rdata:c\n\r\nevent:x\rdata: d\r\r")
        assertEquals(listOf(SseEvent("message", "a\nb\nc", null), SseEvent("x", "d", null)), events)
    }

    @Test
    fun `comments count as heartbeats and dispatch nothing`() {
        val (events, parser) = parse(": hb\n\n: hb\n\n")
        assertEquals(emptyList<SseEvent>(), events)
        assertEquals(2L, parser.comments)
    }

    @Test
    fun `no space after the colon, field without colon, unknown fields, bad retry`() {
        val (events, parser) = parse("retry: 12x\nfoo: bar\ndata\n\nid:h1\ndata:{}\n\n")
        assertNull(parser.retryMs)
        assertEquals(listOf(SseEvent("message", "", null), SseEvent("message", "{}", "h1")), events)
    }

    @Test
    fun `an event cut off by the end of the body is not dispatched`() {
        val (events, _) = parse("data: whole\n\ndata: half")
        assertEquals(listOf(SseEvent("message", "whole", null)), events)
    }

    @Test
    fun `an endless line is refused, not buffered`() {
        val reader = SseLineReader(Buffer().writeUtf8("data: " + "x".repeat(5000)), maxLineBytes = 1024)
        assertThrows<IOException> { reader.readLine() }
    }

    @Test
    fun `utf-8 split across reads`() {
        val (events, _) = parse("data: {\"t\":\"héllo ✓\"}\n\n")
        assertEquals("{\"t\":\"héllo ✓\"}", events.single().data)
    }
}
