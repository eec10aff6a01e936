package dev.herald

/**
 * Where the subscriber token comes from. A [Fixed] token cannot be renewed, so a 401 stops
 * the client (the app must act); a [Provider] is asked at start, before `exp` and after a 401.
 */
sealed class TokenSource {
    /** A token the app already has. */
    class Fixed(val token: String) : TokenSource()

    /** Called on the client's scope; it must return a fresh token or throw. */
    class Provider(val fetch: suspend () -> String) : TokenSource()

    companion object {
        fun of(token: String): TokenSource = Fixed(token)
        fun from(fetch: suspend () -> String): TokenSource = Provider(fetch)
    }
}

/** The backoff of docs/CLIENTS.md ("Retry, never in a tight loop"). */
data class RetryOptions(
    val baseMs: Long = 500,
    val maxMs: Long = 30_000,
) {
    init {
        require(baseMs > 0) { "retry.baseMs must be > 0" }
        require(maxMs >= baseMs) { "retry.maxMs must be >= retry.baseMs" }
    }
}

/**
 * The client's options. The first eight have the names and defaults of every Herald client
 * (docs/CLIENTS.md); the rest bound the waits and buffers that a JVM client has to choose.
 */
data class HeraldOptions(
    /** The server (or load balancer) base URL, e.g. `https://rt.example.com`. */
    val url: String,
    /** The subscriber token; none only for a `--dev` server. */
    val token: TokenSource? = null,
    /** Channels to follow (at most 64). */
    val channels: List<String> = emptyList(),
    /** A cursor saved from [Herald.cursor] earlier: resume every channel from there. */
    val cursor: String? = null,
    /** On `herald:reset`, fetch what is still retained through the history endpoint. */
    val backfillOnReset: Boolean = true,
    /** Acks are sent at most this often, the highest per channel. */
    val ackIntervalMs: Long = 1000,
    val retry: RetryOptions = RetryOptions(),
    /** How long before the token's `exp` the [TokenSource.Provider] is asked for a new one. */
    val refreshBeforeSecs: Long = 30,
    /**
     * A stream that sends nothing (not even a heartbeat, every 15 s by default) for this long
     * is taken as dead and reconnected: a half-open TCP connection would otherwise wait forever.
     */
    val idleTimeoutMs: Long = 45_000,
    /** Timeout of every request other than the stream (history, acks) and of the token callback. */
    val requestTimeoutMs: Long = 10_000,
    /**
     * Messages (and resets) buffered for slow collectors. When it is full the stream stops
     * being read: the server then drops the connection as a slow consumer and the client
     * resumes from its cursor, so nothing reliable is lost to a slow app.
     */
    val bufferSize: Int = 1024,
) {
    init {
        require(url.startsWith("http://") || url.startsWith("https://")) { "url must be http(s)://…" }
        require(channels.size <= MAX_CHANNELS) { "at most $MAX_CHANNELS channels" }
        require(ackIntervalMs > 0) { "ackIntervalMs must be > 0" }
        require(refreshBeforeSecs >= 0) { "refreshBeforeSecs must be >= 0" }
        require(idleTimeoutMs > 0 && requestTimeoutMs > 0) { "timeouts must be > 0" }
        require(bufferSize > 0) { "bufferSize must be > 0" }
    }

    companion object {
        /** The server's limit of channels per stream. */
        const val MAX_CHANNELS = 64
    }
}
