package dev.herald

import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Test
import java.util.Base64

class TokenKeeperTest {
    private fun jwt(payload: String): String {
        val enc = Base64.getUrlEncoder().withoutPadding()
        return enc.encodeToString("{\"alg\":\"HS256\"}".toByteArray()) + "." +
            enc.encodeToString(payload.toByteArray()) + ".sig"
    }

    private val keeper = TokenKeeper(TokenSource.from { "x" }, HeraldOptions(url = "http://h", refreshBeforeSecs = 30))

    @Test
    fun `reads exp without verifying`() {
        assertEquals(1_900_000_000L, TokenKeeper.expOf(jwt("{\"sub\":\"a\",\"exp\":1900000000}")))
        assertNull(TokenKeeper.expOf(jwt("{\"sub\":\"a\"}")))
        assertNull(TokenKeeper.expOf("not a jwt"))
        assertNull(TokenKeeper.expOf("a.%%%.c"))
    }

    @Test
    fun `renews refreshBeforeSecs before exp, or at 80 percent of a short life`() {
        val now = 1_000_000_000_000L
        val hour = jwt("{\"exp\":${now / 1000 + 3600}}")
        assertEquals(3600_000L * 8 / 10, keeper.refreshDelayMs(hour, now)) // 80 % is sooner than exp - 30 s
        val minute = jwt("{\"exp\":${now / 1000 + 100}}")
        assertEquals(70_000L, keeper.refreshDelayMs(minute, now)) // exp - 30 s is sooner
        val short = jwt("{\"exp\":${now / 1000 + 5}}")
        assertEquals(4_000L, keeper.refreshDelayMs(short, now)) // shorter than refreshBeforeSecs: 80 %
        val expired = jwt("{\"exp\":${now / 1000 - 5}}")
        assertEquals(1_000L, keeper.refreshDelayMs(expired, now)) // never a loop
    }
}
