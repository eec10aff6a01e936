package dev.herald

import okhttp3.Interceptor
import okhttp3.OkHttpClient
import java.util.Collections

/**
 * Watches the client's real requests (it is an interceptor on the OkHttpClient the client is
 * given, not a mock): when each stream was asked for and what the server answered.
 */
class Probe {
    class Attempt(val atNanos: Long, val path: String) {
        /** The answer's status; -1 until it came (or when the request failed). */
        @Volatile
        var status: Int = -1

        override fun toString(): String = "$path@${atNanos / 1_000_000}ms:$status"
    }

    val attempts: MutableList<Attempt> = Collections.synchronizedList(mutableListOf())

    val client: OkHttpClient = OkHttpClient.Builder().addInterceptor(Interceptor { chain ->
        val a = Attempt(System.nanoTime(), chain.request().url.encodedPath)
        attempts += a
        val response = chain.proceed(chain.request())
        a.status = response.code
        response
    }).build()

    fun streams(): List<Attempt> = synchronized(attempts) { attempts.filter { it.path == "/v1/sse" } }

    /** Stream requests that have been answered. */
    fun answeredStreams(): List<Attempt> = streams().filter { it.status != -1 }
}
