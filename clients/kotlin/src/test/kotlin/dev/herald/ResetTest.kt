package dev.herald

import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import kotlinx.serialization.json.buildJsonObject
import kotlinx.serialization.json.jsonPrimitive
import kotlinx.serialization.json.long
import kotlinx.serialization.json.put
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test

class ResetTest {
    private val config = """
        [namespaces.tiny]
        retention_count = 5
    """.trimIndent()

    @Test
    fun `a client far behind a tiny-retention channel gets what is retained, backfilled, then a reset`() = runBlocking {
        withTimeout(60_000) {
            HeraldServer(mapOf("HERALD_RETENTION_SWEEP_SECS" to "1"), config).use { server ->
                val ch = "tiny:reset"
                val token = TokenSource.of(HeraldServer.token("kt", listOf("tiny:*")))
                fun options(cursor: String?, backfill: Boolean = true) = HeraldOptions(
                    url = server.url, token = token, channels = listOf(ch), cursor = cursor, backfillOnReset = backfill,
                )

                // A client follows the channel for a while, then goes away with its cursor.
                val first = Herald(options(null))
                val rec1 = Recorder(first, this)
                first.connect()
                eventually(10_000, { "open" }) { first.state.value == ConnectionState.Open }
                for (n in 1..3) server.publish(ch, buildJsonObject { put("n", n) })
                eventually(10_000, { "first three" }) { rec1.ns(ch).size == 3 }
                val saved = first.cursor ?: throw AssertionError("no cursor after three messages")
                first.close()
                rec1.stop()

                // It falls far behind: 20 more, of which retention keeps 5.
                for (n in 4..23) server.publish(ch, buildJsonObject { put("n", n) })
                var firstSeq = 0L
                eventually(15_000, { "retention sweep: first_seq=$firstSeq" }) {
                    firstSeq = server.history(ch)["first_seq"]!!.jsonPrimitive.long
                    firstSeq > 4
                }

                val second = Herald(options(saved))
                second.historyPageSize = 2 // three pages
                val rec2 = Recorder(second, this)
                second.connect()
                eventually(10_000, { "reset: ${rec2.resets} ${rec2.states}" }) { rec2.resets.size == 1 }
                val reset = rec2.resets.single()
                assertEquals(ch, reset.channel)
                assertEquals("retention", reset.reason)
                assertEquals(23L, reset.seq)
                assertNull(reset.error)
                assertEquals(firstSeq - 1 - 3, reset.missed, "positions 4..${firstSeq - 1} are gone")
                assertEquals((23 - firstSeq + 1).toInt(), reset.backfilled)
                val backfilled = rec2.of(ch)
                assertTrue(backfilled.all { it.backfilled && it.id == null }, "$backfilled")
                assertEquals((firstSeq..23L).toList(), backfilled.map { it.seq })
                assertEquals((firstSeq.toInt()..23).toList(), rec2.ns(ch))

                // Then live, after the reset's seq, and nothing twice.
                for (n in 24..25) server.publish(ch, buildJsonObject { put("n", n) })
                eventually(10_000, { "live: ${rec2.ns(ch)}" }) { rec2.ns(ch).lastOrNull() == 25 }
                assertEquals((firstSeq.toInt()..25).toList(), rec2.ns(ch))
                assertTrue(rec2.of(ch).filter { it.seq!! > 23 }.none { it.backfilled })
                assertEquals(1, rec2.resets.size)
                second.close()
                rec2.stop()

                // Without backfill: the reset alone, counting everything as missed.
                val third = Herald(options(saved, backfill = false))
                val rec3 = Recorder(third, this)
                third.connect()
                eventually(10_000, { "reset without backfill" }) { rec3.resets.size == 1 }
                assertEquals(25L - 3, rec3.resets.single().missed)
                assertEquals(0, rec3.resets.single().backfilled)
                assertTrue(rec3.messages.isEmpty())
                third.close()
                rec3.stop()
            }
        }
    }
}
