package dev.herald

import kotlinx.coroutines.delay
import kotlinx.serialization.json.Json
import kotlinx.serialization.json.JsonElement
import kotlinx.serialization.json.JsonObject
import kotlinx.serialization.json.buildJsonArray
import kotlinx.serialization.json.buildJsonObject
import kotlinx.serialization.json.jsonObject
import kotlinx.serialization.json.jsonPrimitive
import kotlinx.serialization.json.long
import kotlinx.serialization.json.put
import okhttp3.MediaType.Companion.toMediaType
import okhttp3.OkHttpClient
import okhttp3.Request
import okhttp3.RequestBody.Companion.toRequestBody
import java.io.File
import java.nio.file.Files
import java.util.Base64
import java.util.concurrent.CompletableFuture
import java.util.concurrent.TimeUnit
import javax.crypto.Mac
import javax.crypto.spec.SecretKeySpec

/**
 * A real `herald serve` for the integration tests, on a loopback port of its own, with only
 * the settings a test gives it (every HERALD_* variable of this process is dropped).
 */
class HeraldServer(
    private val settings: Map<String, String> = emptyMap(),
    private val config: String? = null,
) : AutoCloseable {
    val dir: File = Files.createTempDirectory("herald-kt-").toFile()
    private val dataDir = File(dir, "data")
    private val log = File(dir, "herald.log")
    private var process: Process? = null
    var port: Int = 0
        private set
    val url: String get() = "http://127.0.0.1:$port"

    /** Publishes over the API; a plain client of its own so tests never share the SDK's. */
    val http: OkHttpClient = OkHttpClient.Builder().callTimeout(10, TimeUnit.SECONDS).build()

    init {
        start(0)
    }

    /** Starts on [listenPort] (0: any); a port still held by a killed process is retried for a while. */
    private fun start(listenPort: Int) {
        val deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(15)
        while (true) {
            val cmd = mutableListOf(bin(), "serve", "--listen", "127.0.0.1:$listenPort", "--data-dir", dataDir.path)
            if (config != null) {
                val file = File(dir, "herald.toml")
                file.writeText(config)
                cmd += listOf("--config", file.path)
            }
            val pb = ProcessBuilder(cmd).redirectError(ProcessBuilder.Redirect.appendTo(log))
            val env = pb.environment()
            env.keys.filter { it.startsWith("HERALD_") }.forEach { env.remove(it) }
            env["HERALD_API_KEYS"] = API_KEY
            env["HERALD_JWT_SECRET"] = SECRET
            env["HERALD_LOG"] = "warn"
            env["NO_COLOR"] = "1"
            env.putAll(settings)
            val p = pb.start()
            val listening = CompletableFuture<Int>()
            Thread({
                p.inputStream.bufferedReader().useLines { lines ->
                    for (line in lines) {
                        Regex("herald listening on https?://127\\.0\\.0\\.1:(\\d+)").find(line)?.let {
                            listening.complete(it.groupValues[1].toInt())
                        }
                    }
                }
                listening.complete(-1)
            }, "herald-stdout").apply { isDaemon = true }.start()
            val got = try {
                listening.get(20, TimeUnit.SECONDS)
            } catch (e: java.util.concurrent.TimeoutException) {
                p.destroyForcibly()
                error("herald did not print its listen line within 20 s; log:\n${log.readText()}")
            }
            if (got > 0) {
                process = p
                port = got
                return
            }
            p.waitFor(5, TimeUnit.SECONDS)
            if (System.nanoTime() > deadline) error("herald would not start on port $listenPort; log:\n${log.readText()}")
            Thread.sleep(200) // the port of a killed process: try again shortly
        }
    }

    /** `kill -9`: nothing is flushed beyond what the server already answered. */
    fun kill9() {
        process?.let {
            it.destroyForcibly()
            check(it.waitFor(10, TimeUnit.SECONDS)) { "herald did not die" }
        }
        process = null
    }

    /** Starts again on the same port and data directory. */
    fun restart() {
        check(process == null) { "still running" }
        start(port)
    }

    override fun close() {
        kill9()
        dir.deleteRecursively()
    }

    fun logText(): String = if (log.exists()) log.readText() else ""

    /** Publishes a reliable message; returns its seq. */
    fun publish(channel: String, data: JsonElement, event: String? = null): Long {
        val body = buildJsonObject {
            put("channel", channel)
            put("data", data)
            if (event != null) put("event", event)
        }
        val answer = post("/v1/publish", body.toString())
        return answer.jsonObject["seq"]!!.jsonPrimitive.long
    }

    fun publishEphemeral(channel: String, data: JsonElement) {
        post("/v1/publish", buildJsonObject { put("channel", channel); put("data", data); put("ephemeral", true) }.toString())
    }

    /** The history endpoint read with the publisher key. */
    fun history(channel: String): JsonObject {
        val req = Request.Builder().url("$url/v1/channels/$channel/history?after=0&limit=1000")
            .header("Authorization", "Bearer $API_KEY").build()
        http.newCall(req).execute().use {
            check(it.isSuccessful) { "history: ${it.code} ${it.body.string()}" }
            return Json.parseToJsonElement(it.body.string()).jsonObject
        }
    }

    private fun post(path: String, json: String): JsonElement {
        val req = Request.Builder().url(url + path)
            .header("Authorization", "Bearer $API_KEY")
            .post(json.toRequestBody("application/json".toMediaType()))
            .build()
        http.newCall(req).execute().use {
            val text = it.body.string()
            check(it.isSuccessful) { "POST $path: ${it.code} $text" }
            return Json.parseToJsonElement(text)
        }
    }

    companion object {
        const val API_KEY = "kt-publisher-key-0123456789"
        const val SECRET = "kt-jwt-secret-0123456789abcdef"

        fun bin(): String {
            val path = System.getenv("HERALD_BIN")?.takeIf { it.isNotBlank() } ?: "../../target/debug/herald"
            val file = File(path).absoluteFile
            check(file.canExecute()) { "herald binary not found at $file (set HERALD_BIN, or cargo build -p herald)" }
            return file.path
        }

        /** An HS256 subscriber token signed as `herald token` signs it. */
        fun token(sub: String, channels: List<String>, expEpochSecs: Long = System.currentTimeMillis() / 1000 + 3600): String {
            val enc = Base64.getUrlEncoder().withoutPadding()
            val head = enc.encodeToString("{\"alg\":\"HS256\",\"typ\":\"JWT\"}".toByteArray())
            val claims = buildJsonObject {
                put("sub", sub)
                put("channels", buildJsonArray { channels.forEach { add(kotlinx.serialization.json.JsonPrimitive(it)) } })
                put("exp", expEpochSecs)
            }
            val body = enc.encodeToString(claims.toString().toByteArray())
            val mac = Mac.getInstance("HmacSHA256").apply { init(SecretKeySpec(SECRET.toByteArray(), "HmacSHA256")) }
            val sig = enc.encodeToString(mac.doFinal("$head.$body".toByteArray()))
            return "$head.$body.$sig"
        }
    }
}

/** Polls [cond] every 20 ms until it holds, failing after [timeoutMs] with [what]. */
suspend fun eventually(timeoutMs: Long, what: () -> String, cond: () -> Boolean) {
    val deadline = System.nanoTime() + timeoutMs * 1_000_000
    while (!cond()) {
        if (System.nanoTime() > deadline) throw AssertionError("timed out after $timeoutMs ms: ${what()}")
        delay(20)
    }
}
