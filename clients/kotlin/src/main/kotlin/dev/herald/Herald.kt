package dev.herald

import kotlinx.coroutines.CompletableDeferred
import kotlinx.coroutines.CoroutineName
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.CoroutineStart
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.Job
import kotlinx.coroutines.NonCancellable
import kotlinx.coroutines.SupervisorJob
import kotlinx.coroutines.cancel
import kotlinx.coroutines.cancelAndJoin
import kotlinx.coroutines.coroutineScope
import kotlinx.coroutines.delay
import kotlinx.coroutines.flow.Flow
import kotlinx.coroutines.flow.MutableSharedFlow
import kotlinx.coroutines.flow.MutableStateFlow
import kotlinx.coroutines.flow.SharedFlow
import kotlinx.coroutines.flow.StateFlow
import kotlinx.coroutines.flow.asSharedFlow
import kotlinx.coroutines.flow.asStateFlow
import kotlinx.coroutines.flow.filter
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.flow.update
import kotlinx.coroutines.launch
import kotlinx.coroutines.withContext
import kotlinx.coroutines.withTimeoutOrNull
import okhttp3.Call
import okhttp3.HttpUrl
import okhttp3.HttpUrl.Companion.toHttpUrl
import okhttp3.OkHttpClient
import okhttp3.Request
import java.io.IOException
import java.io.InterruptedIOException
import java.util.concurrent.TimeUnit
import java.util.concurrent.atomic.AtomicReference

/**
 * A Herald subscriber: one SSE stream for all its channels, kept open through failures,
 * channel changes, token renewals and resets as docs/CLIENTS.md describes.
 *
 * Every coroutine it starts belongs to its own scope, which [close] ends. Collect
 * [messages] (and [resets]) before [connect]: they are hot flows, and a message arriving
 * while nobody collects is not kept.
 *
 * @param httpClient shared with the app (its connection pool and dispatcher); the stream
 *   uses a derived client whose read timeout is [HeraldOptions.idleTimeoutMs] and connect
 *   timeout [HeraldOptions.requestTimeoutMs], so no wait of the stream is unbounded.
 */
class Herald(
    private val options: HeraldOptions,
    httpClient: OkHttpClient = OkHttpClient(),
) {
    private val scope = CoroutineScope(SupervisorJob() + Dispatchers.IO + CoroutineName("herald"))
    private val baseUrl: HttpUrl = options.url.toHttpUrl()
    private val http = httpClient
    private val streamHttp = httpClient.newBuilder()
        .readTimeout(options.idleTimeoutMs, TimeUnit.MILLISECONDS)
        .connectTimeout(options.requestTimeoutMs, TimeUnit.MILLISECONDS)
        .callTimeout(0, TimeUnit.MILLISECONDS)
        .build()
    private val tokens = TokenKeeper(options.token, options)
    private val acks = Acks(http, baseUrl, tokens, options)
    private val backoff = Backoff(options.retry)

    private val _state = MutableStateFlow<ConnectionState>(ConnectionState.Idle)

    /** idle → connecting → open; retrying (with delay and cause); offline; stopped; closed. */
    val state: StateFlow<ConnectionState> = _state.asStateFlow()

    private val _messages = MutableSharedFlow<Message>(extraBufferCapacity = options.bufferSize)

    /** Every message of every channel, in the order the stream delivered them. */
    val allMessages: SharedFlow<Message> = _messages.asSharedFlow()

    private val _resets = MutableSharedFlow<Reset>(extraBufferCapacity = options.bufferSize)

    /** A channel's position was gone; raised after its retained messages were backfilled. */
    val resets: SharedFlow<Reset> = _resets.asSharedFlow()

    /** What the app wants: the channel list and whether the device is online. */
    private data class Control(val channels: Set<String>, val online: Boolean)

    private val control = MutableStateFlow(Control(LinkedHashSet(options.channels), online = true))
    private val lifecycle = Any()
    private var loop: Job? = null
    private var closed = false

    private val positions = Positions(options.cursor)

    /** The channels of the last stream opened (loop-owned): what a later list removed is forgotten. */
    private var streamed: Set<String> = emptySet()

    private val history = Backfill(http, baseUrl, tokens, options)

    /** Messages per history request (the server's most); smaller in tests, to cover paging. */
    internal var historyPageSize: Long
        get() = history.pageSize
        set(value) {
            history.pageSize = value
        }

    /**
     * The position of every channel of the stream: save it and pass it as
     * [HeraldOptions.cursor] to resume after the app restarts.
     */
    val cursor: String? get() = positions.cursor

    /** The channels followed now. */
    val channels: Set<String> get() = control.value.channels

    /** Starts (or, after `stopped`, restarts) following the channels. */
    fun connect() {
        synchronized(lifecycle) {
            check(!closed) { "this Herald client is closed" }
            if (loop?.isActive == true) return
            tokens.start(scope)
            acks.start(scope)
            loop = scope.launch { run() }
        }
    }

    /**
     * Follows [channel] too. Changes made together (before the client's coroutine runs, or
     * within a few milliseconds) cost one reconnect, and every channel keeps its place.
     */
    fun subscribe(channel: String) {
        control.update {
            if (channel in it.channels) {
                it
            } else {
                require(it.channels.size < HeraldOptions.MAX_CHANNELS) { "at most ${HeraldOptions.MAX_CHANNELS} channels" }
                it.copy(channels = LinkedHashSet(it.channels).apply { add(channel) })
            }
        }
    }

    /** Stops following [channel]; its position is forgotten (added back later, it starts live). */
    fun unsubscribe(channel: String) {
        control.update {
            if (channel !in it.channels) it else it.copy(channels = LinkedHashSet(it.channels).apply { remove(channel) })
        }
    }

    /**
     * The messages of one channel, one event name or every one (`"*"`). A filtered view of a
     * hot flow: collect before the messages you want arrive.
     */
    fun messages(channel: String, event: String = "*"): Flow<Message> =
        _messages.filter { it.channel == channel && (event == "*" || it.event == event) }

    /**
     * Calls [handler] for each message of [channel] and [event], on the client's scope, until
     * the returned job is cancelled or the client closed. Subscribed before this returns.
     */
    fun on(channel: String, event: String = "*", handler: suspend (Message) -> Unit): Job =
        scope.launch(start = CoroutineStart.UNDISPATCHED) {
            messages(channel, event).collect { handler(it) }
        }

    /** Records that the app processed [message]; sent in the next batch (ephemeral ones are ignored). */
    fun ack(message: Message) {
        val epoch = message.epoch ?: return
        val seq = message.seq ?: return
        acks.record(message.channel, Position(epoch, seq))
    }

    /**
     * The device lost or regained its network (an Android `ConnectivityManager` callback, say).
     * Offline closes the stream; online reconnects at once with the cursor.
     */
    fun setOnline(online: Boolean) {
        control.update { it.copy(online = online) }
    }

    /**
     * Ends the stream, sends pending acks (within [HeraldOptions.requestTimeoutMs]) and every
     * coroutine of the client. The state becomes `closed` for good.
     */
    suspend fun close() {
        val running = synchronized(lifecycle) {
            if (closed) return
            closed = true
            loop
        }
        withContext(NonCancellable) {
            withTimeoutOrNull(options.requestTimeoutMs) { running?.cancelAndJoin() }
            acks.stop()
            acks.flushWithin(options.requestTimeoutMs)
            _state.value = ConnectionState.Closed
            scope.cancel()
        }
    }

    // ---------------------------------------------------------------- the state machine

    private fun setState(s: ConnectionState) {
        _state.update { if (it == ConnectionState.Closed) it else s }
    }

    private sealed class Outcome {
        /** The channel list changed or the device went offline: reconnect now (not a failure). */
        data object Changed : Outcome()

        /** `herald:reconnect`: the server moves the stream; come back after [afterMs]. */
        data class Reconnect(val afterMs: Long, val reason: String) : Outcome()

        data class Failed(val error: HeraldError, val delivered: Boolean, val tokenGeneration: Int) : Outcome()
    }

    private suspend fun run() {
        var attempt = 0
        while (true) {
            val ctl = control.value
            if (!ctl.online) {
                setState(ConnectionState.Offline)
                control.first { it.online }
                attempt = 0
                continue
            }
            if (ctl.channels.isEmpty()) {
                setState(ConnectionState.Idle)
                control.first { it.channels.isNotEmpty() || !it.online }
                continue
            }
            positions.forget(streamed - ctl.channels)
            streamed = ctl.channels
            setState(ConnectionState.Connecting)
            when (val outcome = openOnce(ctl.channels)) {
                Outcome.Changed -> delay(COALESCE_MS) // let changes made together land in one reconnect
                is Outcome.Reconnect -> {
                    attempt = 0
                    val cause = HeraldError("reconnect", "the server asked to reconnect (${outcome.reason})")
                    waitRetrying(outcome.afterMs, cause, attempt)
                }
                is Outcome.Failed -> {
                    if (outcome.delivered) attempt = 0
                    val e = outcome.error
                    when (e.status) {
                        // Retrying cannot help: the token does not allow it, the request is wrong
                        // (a channel name), or this URL serves no streams (a dispatcher's).
                        400, 403, 404 -> {
                            setState(ConnectionState.Stopped(e))
                            return
                        }
                        401 -> {
                            if (!tokens.renewable) {
                                setState(ConnectionState.Stopped(e))
                                return
                            }
                            // A failing callback is one more failure, retried with the backoff below.
                            try {
                                tokens.renewAfter401(outcome.tokenGeneration)
                            } catch (_: HeraldError) {
                            }
                        }
                    }
                    val wait = if (e.status == 429 || e.status == 503) {
                        backoff.delayMs(attempt, e.retryAfterMs)
                    } else {
                        backoff.delayMs(attempt)
                    }
                    attempt++
                    waitRetrying(wait, e, attempt)
                }
            }
        }
    }

    /** Waits before the next try; going offline ends the wait (the loop then waits for online). */
    private suspend fun waitRetrying(ms: Long, cause: HeraldError, attempt: Int) {
        setState(ConnectionState.Retrying(ms, cause, attempt))
        withTimeoutOrNull(ms) { control.first { !it.online } }
    }

    /** One stream, until it fails, ends, or the app changes what it wants. */
    private suspend fun openOnce(channels: Set<String>): Outcome = coroutineScope {
        val call = AtomicReference<Call?>()
        val result = CompletableDeferred<Outcome>()
        val reader = launch { result.complete(stream(channels, call)) }
        val watcher = launch {
            control.first { !it.online || it.channels != channels }
            result.complete(Outcome.Changed)
        }
        try {
            result.await()
        } finally {
            // Closing the socket is what ends a blocking read; cancelling the coroutine alone would not.
            call.get()?.cancel()
            reader.cancel()
            watcher.cancel()
        }
    }

    private suspend fun stream(channels: Set<String>, callRef: AtomicReference<Call?>): Outcome {
        val token = try {
            tokens.current()
        } catch (e: HeraldError) {
            return Outcome.Failed(e, delivered = false, tokenGeneration = tokens.generation)
        }
        // Read after current(), which may have just fetched the token this stream uses.
        val generation = tokens.generation
        val url = baseUrl.newBuilder().addPathSegments("v1/sse").apply {
            channels.forEach { addQueryParameter("channel", it) }
        }.build()
        val request = Request.Builder().url(url)
            .header("Accept", "text/event-stream")
            .header("Cache-Control", "no-cache")
            .apply {
                if (token != null) header("Authorization", "Bearer $token")
                positions.cursor?.let { header("Last-Event-ID", it) }
            }
            .build()
        val call = streamHttp.newCall(request)
        callRef.set(call)
        val response = try {
            call.await()
        } catch (e: IOException) {
            return Outcome.Failed(networkError(e), delivered = false, tokenGeneration = generation)
        }
        response.use {
            if (!it.isSuccessful) {
                // Error bodies are small; peekBody bounds what a misbehaving proxy could make us read.
                val body = try {
                    parseJsonOrNull(it.peekBody(64 * 1024).string())
                } catch (_: IOException) {
                    null
                }
                return Outcome.Failed(errorOf(it, body), delivered = false, tokenGeneration = generation)
            }
            val type = it.header("Content-Type").orEmpty()
            if (!type.startsWith("text/event-stream")) {
                val e = HeraldError("bad_response", "expected text/event-stream, got '$type'", status = it.code)
                return Outcome.Failed(e, delivered = false, tokenGeneration = generation)
            }
            setState(ConnectionState.Open)
            return read(SseLineReader(it.body.source()), generation)
        }
    }

    private suspend fun read(lines: SseLineReader, generation: Int): Outcome {
        val parser = SseParser()
        var delivered = false
        while (true) {
            val line = try {
                lines.readLine()
            } catch (e: IOException) {
                return Outcome.Failed(networkError(e), delivered, generation)
            } ?: return Outcome.Failed(HeraldError("stream_ended", "the server ended the stream"), delivered, generation)
            val comments = parser.comments
            val ev = parser.line(line)
            if (parser.comments != comments) delivered = true // a heartbeat: the stream works
            if (ev == null) continue
            delivered = true
            when (ev.event) {
                CURSOR_ONLY -> positions.moveCursor(ev.id)
                "herald:reset" -> onReset(ev)
                "herald:reconnect" -> return Outcome.Reconnect(Envelope.reconnectAfterMs(ev), Envelope.reconnectReason(ev))
                else -> onMessage(ev)
            }
        }
    }

    private suspend fun onMessage(ev: SseEvent) {
        // An unreadable event is skipped; its id still moves the cursor past it.
        val message = Envelope.message(ev)
        // A channel the app unsubscribed from is quiet at once, not only after the reconnect.
        if (message != null && message.channel in control.value.channels) {
            val epoch = message.epoch
            val seq = message.seq
            if (epoch != null && seq != null) {
                if (positions.isNew(message.channel, epoch, seq)) {
                    _messages.emit(message)
                    positions.delivered(message.channel, Position(epoch, seq))
                }
                // else: a repeat of what was in flight before a reconnect.
            } else {
                _messages.emit(message)
            }
        }
        positions.moveCursor(ev.id)
    }

    /**
     * Backfills what the history endpoint still has between the last delivered position and
     * the reset's `seq`, then tells the app. The stream is not read meanwhile, which holds
     * this channel's live events (and, simply, every other channel's) until the backfill is
     * done, so the app sees one channel's messages in order.
     */
    private suspend fun onReset(ev: SseEvent) {
        val reset = Envelope.reset(ev)
        if (reset == null) {
            positions.moveCursor(ev.id)
            return
        }
        val last = positions.last(reset.channel)
        val after = if (last != null && last.epoch == reset.epoch) last.seq else 0L
        var backfilled = 0
        var error: HeraldError? = null
        if (options.backfillOnReset && reset.reason != "ahead" && reset.seq > after) {
            val result = history.fetch(reset.channel, reset.epoch, after, reset.seq) { m, position ->
                _messages.emit(m)
                positions.delivered(reset.channel, position)
            }
            backfilled = result.first
            error = result.second
        }
        positions.delivered(reset.channel, Position(reset.epoch, reset.seq))
        val missed = (reset.seq - after - backfilled).coerceAtLeast(0)
        _resets.emit(Reset(reset.channel, reset.epoch, reset.seq, reset.reason, missed, backfilled, error))
        positions.moveCursor(ev.id)
    }

    private fun networkError(e: IOException): HeraldError = when (e) {
        is java.net.SocketTimeoutException ->
            HeraldError("idle_timeout", "nothing received for ${options.idleTimeoutMs} ms", cause = e)
        is InterruptedIOException -> HeraldError("network", e.message ?: "interrupted", cause = e)
        else -> HeraldError("network", e.message ?: e.toString(), cause = e)
    }

    private companion object {
        const val COALESCE_MS = 20L
    }
}
