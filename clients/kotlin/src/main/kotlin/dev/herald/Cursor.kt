package dev.herald

import okio.ByteString.Companion.decodeBase64
import okio.ByteString.Companion.toByteString

/** A position within one channel: `seq` counts from 1 within an `epoch`. */
internal data class Position(val epoch: Long, val seq: Long) : Comparable<Position> {
    override fun compareTo(other: Position): Int =
        compareValuesBy(this, other, { it.epoch.toULong() }, { it.seq.toULong() })
}

/**
 * Reads and rewrites Herald's v1 cursor (`h1` + base64url of, per channel, an 8-byte
 * little-endian FNV-1a 64 hash of the name, LEB128 epoch, LEB128 seq; then a 4-byte
 * checksum: the low 32 bits of FNV-1a 64 of the payload; see herald-proto's cursor.rs).
 *
 * Apps treat the cursor as opaque; the client reads it for two things the protocol needs:
 * a client started from a saved cursor knows each channel's last position (so a reset can
 * say how much was missed and backfill from the right place), and a removed channel's entry
 * can be dropped (so it starts live when added back, as docs/CLIENTS.md says). A cursor of
 * another version is passed through untouched.
 */
internal object CursorCodec {
    private const val PREFIX = "h1"
    private const val FNV_OFFSET = -0x340d631b7bdddcdbL // 0xcbf29ce484222325
    private const val FNV_PRIME = 0x100000001b3L

    fun channelHash(channel: String): Long = fnv(channel.toByteArray(Charsets.UTF_8))

    private fun fnv(bytes: ByteArray, length: Int = bytes.size): Long {
        var h = FNV_OFFSET
        for (i in 0 until length) {
            h = h xor (bytes[i].toLong() and 0xff)
            h *= FNV_PRIME
        }
        return h
    }

    /** The entries (hash, position) in order, or null when this is not a valid v1 cursor. */
    fun decode(cursor: String): List<Pair<Long, Position>>? {
        if (!cursor.startsWith(PREFIX) || cursor.length > 8192) return null
        // Okio's decoder (not java.util.Base64, which Android has only from API 26) reads base64url.
        val payload = cursor.substring(PREFIX.length).decodeBase64()?.toByteArray() ?: return null
        if (payload.size < 4) return null
        val end = payload.size - 4
        val sum = (payload[end].toLong() and 0xff) or
            ((payload[end + 1].toLong() and 0xff) shl 8) or
            ((payload[end + 2].toLong() and 0xff) shl 16) or
            ((payload[end + 3].toLong() and 0xff) shl 24)
        if ((fnv(payload, end) and 0xffffffffL) != sum) return null
        val out = ArrayList<Pair<Long, Position>>()
        var i = 0
        while (i < end) {
            if (end - i < 8) return null
            var hash = 0L
            for (k in 0 until 8) hash = hash or ((payload[i + k].toLong() and 0xff) shl (8 * k))
            i += 8
            val (epoch, n1) = varint(payload, i, end) ?: return null
            i += n1
            val (seq, n2) = varint(payload, i, end) ?: return null
            i += n2
            out += hash to Position(epoch, seq)
        }
        return out
    }

    fun encode(entries: List<Pair<Long, Position>>): String {
        val buf = java.io.ByteArrayOutputStream()
        for ((hash, pos) in entries) {
            for (k in 0 until 8) buf.write(((hash ushr (8 * k)) and 0xff).toInt())
            writeVarint(buf, pos.epoch)
            writeVarint(buf, pos.seq)
        }
        val payload = buf.toByteArray()
        val sum = fnv(payload)
        for (k in 0 until 4) buf.write(((sum ushr (8 * k)) and 0xff).toInt())
        return PREFIX + buf.toByteArray().toByteString().base64Url().trimEnd('=')
    }

    /** The cursor without the entries of [channels]; unchanged if it cannot be read. */
    fun without(cursor: String, channels: Collection<String>): String {
        if (channels.isEmpty()) return cursor
        val entries = decode(cursor) ?: return cursor
        val drop = channels.map(::channelHash).toSet()
        val kept = entries.filter { it.first !in drop }
        return if (kept.size == entries.size) cursor else encode(kept)
    }

    private fun varint(b: ByteArray, start: Int, end: Int): Pair<Long, Int>? {
        var value = 0L
        var i = 0
        while (i < 10) {
            if (start + i >= end) return null
            val byte = b[start + i].toInt() and 0xff
            value = value or ((byte and 0x7f).toLong() shl (7 * i))
            if (byte and 0x80 == 0) return value to (i + 1)
            i++
        }
        return null
    }

    private fun writeVarint(out: java.io.ByteArrayOutputStream, v: Long) {
        var x = v
        while (true) {
            val low = (x and 0x7f).toInt()
            x = x ushr 7
            if (x == 0L) {
                out.write(low)
                return
            }
            out.write(low or 0x80)
        }
    }
}
