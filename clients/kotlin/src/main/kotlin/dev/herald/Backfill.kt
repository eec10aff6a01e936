package dev.herald

import kotlinx.serialization.json.JsonObject
import okhttp3.HttpUrl
import okhttp3.OkHttpClient
import okhttp3.Request

/**
 * Reads what a channel still retains after a `herald:reset`, so the app gets every message
 * the server still has instead of a bare "you missed some". Bounded: at most
 * `(until - after) / pageSize` requests, each with a deadline, and it stops at the first
 * page that makes no progress.
 */
internal class Backfill(
    private val http: OkHttpClient,
    private val baseUrl: HttpUrl,
    private val tokens: TokenKeeper,
    private val options: HeraldOptions,
) {
    /** Messages per request: the server's most. */
    var pageSize: Long = 1000

    /** Pages history after [after] up to [until]: (messages delivered, the error that stopped it). */
    suspend fun fetch(
        channel: String,
        epoch: Long,
        after: Long,
        until: Long,
        deliver: suspend (Message, Position) -> Unit,
    ): Pair<Int, HeraldError?> {
        var from = after
        var count = 0
        var renewed = false
        while (from < until) {
            val token = try {
                tokens.current()
            } catch (e: HeraldError) {
                return count to e
            }
            val generation = tokens.generation
            val url = baseUrl.newBuilder()
                .addPathSegments("v1/channels").addPathSegment(channel).addPathSegment("history")
                .addQueryParameter("after", from.toString())
                .addQueryParameter("limit", minOf(pageSize, until - from).toString())
                .build()
            val request = Request.Builder().url(url).apply {
                if (token != null) header("Authorization", "Bearer $token")
            }.build()
            val answer = http.newCall(request).json(options.requestTimeoutMs)
            val error = answer.error
            if (error != null) {
                if (error.status == 401 && tokens.renewable && !renewed) {
                    renewed = true
                    try {
                        tokens.renewAfter401(generation)
                        continue
                    } catch (e: HeraldError) {
                        return count to e
                    }
                }
                return count to error
            }
            val body = answer.body as? JsonObject
            val page = body?.let { Envelope.historyPage(channel, it) }
                ?: return count to HeraldError("bad_response", "unreadable history answer", status = answer.status)
            // The channel moved to another epoch meanwhile: nothing more of this one to read.
            if (page.epoch != epoch) return count to null
            val pageAfter = from
            for (m in page.messages) {
                val seq = m.seq ?: continue
                if (seq <= from) continue
                if (seq > until) return count to null
                deliver(m, Position(epoch, seq))
                from = seq
                count++
            }
            val next = page.nextAfter
            if (!page.hasMore || next == null) break
            if (next <= pageAfter) break // no progress: never loop on a bad page
            from = maxOf(from, next)
        }
        return count to null
    }
}
