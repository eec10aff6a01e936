package dev.herald

import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.CoroutineStart
import kotlinx.coroutines.Job
import kotlinx.coroutines.launch
import kotlinx.serialization.json.int
import kotlinx.serialization.json.jsonObject
import kotlinx.serialization.json.jsonPrimitive
import java.util.Collections

/**
 * Everything a client hands the app: messages, resets and every state it went through,
 * collected from before connect() (the flows are hot).
 */
class Recorder(herald: Herald, scope: CoroutineScope) {
    val messages: MutableList<Message> = Collections.synchronizedList(mutableListOf())
    val resets: MutableList<Reset> = Collections.synchronizedList(mutableListOf())
    val states: MutableList<ConnectionState> = Collections.synchronizedList(mutableListOf())
    private val jobs: List<Job> = listOf(
        scope.launch(start = CoroutineStart.UNDISPATCHED) { herald.allMessages.collect { messages += it } },
        scope.launch(start = CoroutineStart.UNDISPATCHED) { herald.resets.collect { resets += it } },
        scope.launch(start = CoroutineStart.UNDISPATCHED) { herald.state.collect { states += it } },
    )

    fun of(channel: String): List<Message> = synchronized(messages) { messages.filter { it.channel == channel } }

    /** The `n` field of every message of [channel], in arrival order. */
    fun ns(channel: String): List<Int> = of(channel).map { it.data.jsonObject["n"]!!.jsonPrimitive.int }

    fun stop() = jobs.forEach { it.cancel() }
}
