package dev.herald

import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertSame
import org.junit.jupiter.api.Test

class CursorCodecTest {
    // Sent by a herald server for a stream of tiny:1 (at epoch 1796278741053, seq 4) and live:1 (never published).
    private val real = "h1dosiPci_U3S90LnUozQE2rjQYwfd5oAAANvI8Cw"

    @Test
    fun `decodes a server's cursor`() {
        val entries = CursorCodec.decode(real)!!.toMap()
        assertEquals(Position(1796278741053, 4), entries[CursorCodec.channelHash("tiny:1")])
        assertEquals(Position(0, 0), entries[CursorCodec.channelHash("live:1")])
        assertEquals(2, entries.size)
    }

    @Test
    fun `re-encodes to the same text, and drops a channel`() {
        val entries = CursorCodec.decode(real)!!
        assertEquals(real, CursorCodec.encode(entries))
        val dropped = CursorCodec.without(real, listOf("live:1"))
        assertEquals(listOf(CursorCodec.channelHash("tiny:1")), CursorCodec.decode(dropped)!!.map { it.first })
    }

    @Test
    fun `anything else is left alone`() {
        assertNull(CursorCodec.decode("h2whatever"))
        assertNull(CursorCodec.decode("h1!!"))
        assertNull(CursorCodec.decode(real.dropLast(2) + "AA")) // checksum
        assertSame("h9opaque", CursorCodec.without("h9opaque", listOf("live:1")))
    }

    @Test
    fun `positions order by epoch then seq`() {
        assert(Position(2, 1) > Position(1, 99))
        assert(Position(1, 3) > Position(1, 2))
    }
}
