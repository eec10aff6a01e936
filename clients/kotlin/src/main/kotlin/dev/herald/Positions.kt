package dev.herald

/**
 * Where the app is on each channel: the stream's cursor and the last (epoch, seq) delivered
 * per channel. Owned by the stream loop (one coroutine at a time); [cursor] alone is read
 * from other threads.
 */
internal class Positions(initialCursor: String?) {
    private val last = HashMap<String, Position>()

    @Volatile
    var cursor: String? = initialCursor?.takeIf { it.isNotBlank() }
        private set

    /** The last position delivered on [channel]: this client's own, else what its cursor says. */
    fun last(channel: String): Position? {
        last[channel]?.let { return it }
        val entries = cursor?.let { CursorCodec.decode(it) } ?: return null
        val hash = CursorCodec.channelHash(channel)
        return entries.firstOrNull { it.first == hash }?.second
    }

    /**
     * Whether a reliable event is new to the app. A reconnect can repeat what was in flight, so
     * an event at or below the last delivered seq of the same epoch is dropped; another epoch
     * is a new log (the server announces it with a reset).
     */
    fun isNew(channel: String, epoch: Long, seq: Long): Boolean {
        val at = last(channel) ?: return true
        return at.epoch != epoch || seq > at.seq
    }

    fun delivered(channel: String, position: Position) {
        last[channel] = position
    }

    /** The `id:` of an event the app has been given: the position to resume from. */
    fun moveCursor(id: String?) {
        if (!id.isNullOrEmpty()) cursor = id
    }

    /** Forgets removed channels, in the cursor too, so one added back later starts live. */
    fun forget(channels: Set<String>) {
        if (channels.isEmpty()) return
        channels.forEach { last.remove(it) }
        cursor = cursor?.let { CursorCodec.without(it, channels) }
    }
}
