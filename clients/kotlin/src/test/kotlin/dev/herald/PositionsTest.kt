package dev.herald

import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test

class PositionsTest {
    // A server's cursor: tiny:1 at (1796278741053, 4), live:1 at (0, 0).
    private val real = "h1dosiPci_U3S90LnUozQE2rjQYwfd5oAAANvI8Cw"
    private val epoch = 1796278741053L

    @Test
    fun `a repeat at or below the last seq of the epoch is dropped`() {
        val p = Positions(null)
        assertTrue(p.isNew("a", 7, 1))
        p.delivered("a", Position(7, 5))
        assertFalse(p.isNew("a", 7, 5))
        assertFalse(p.isNew("a", 7, 2))
        assertTrue(p.isNew("a", 7, 6))
        assertTrue(p.isNew("a", 8, 1), "another epoch is a new log")
        assertTrue(p.isNew("b", 7, 1), "per channel")
    }

    @Test
    fun `a starting cursor tells the last position of each channel`() {
        val p = Positions(real)
        assertEquals(Position(epoch, 4), p.last("tiny:1"))
        assertFalse(p.isNew("tiny:1", epoch, 4))
        assertTrue(p.isNew("tiny:1", epoch, 5))
        assertEquals(Position(0, 0), p.last("live:1"))
        assertNull(p.last("other"))
    }

    @Test
    fun `a forgotten channel leaves the cursor and starts over`() {
        val p = Positions(real)
        p.delivered("tiny:1", Position(epoch, 9))
        p.forget(setOf("tiny:1"))
        assertNull(p.last("tiny:1"))
        assertEquals(Position(0, 0), p.last("live:1"))
        assertTrue(p.isNew("tiny:1", epoch, 1))
    }

    @Test
    fun `the cursor moves only with an id`() {
        val p = Positions(real)
        p.moveCursor(null)
        p.moveCursor("")
        assertEquals(real, p.cursor)
        p.moveCursor("h1next")
        assertEquals("h1next", p.cursor)
    }
}
