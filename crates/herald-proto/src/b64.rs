//! Streaming base64url (RFC 4648 §5, no padding) encoder writing straight into a `Vec<u8>`,
//! so the hot cursor path needs no temporary buffers. Decoding uses the `base64` crate.

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Encoded length (no padding) of `n` input bytes.
#[inline]
pub(crate) const fn encoded_len(n: usize) -> usize {
    (n * 4).div_ceil(3)
}

/// Accumulates bytes and appends base64url characters to `out` every 3 bytes.
pub(crate) struct B64Writer<'a> {
    out: &'a mut Vec<u8>,
    acc: u32,
    pending: u8,
}

impl<'a> B64Writer<'a> {
    pub(crate) fn new(out: &'a mut Vec<u8>) -> Self {
        B64Writer {
            out,
            acc: 0,
            pending: 0,
        }
    }

    #[inline]
    fn sextet(&mut self, v: u32) {
        // Masked to 6 bits, so the index is in range.
        self.out.push(ALPHABET[(v & 0x3f) as usize]);
    }

    #[inline]
    pub(crate) fn write_byte(&mut self, b: u8) {
        self.acc = (self.acc << 8) | u32::from(b);
        self.pending += 1;
        if self.pending == 3 {
            let acc = self.acc;
            self.sextet(acc >> 18);
            self.sextet(acc >> 12);
            self.sextet(acc >> 6);
            self.sextet(acc);
            self.acc = 0;
            self.pending = 0;
        }
    }

    #[inline]
    pub(crate) fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_byte(b);
        }
    }

    /// Flushes the last 1 or 2 bytes (unused low bits are zero, as canonical decoders require).
    pub(crate) fn finish(mut self) {
        let acc = self.acc;
        match self.pending {
            1 => {
                let v = acc << 4;
                self.sextet(v >> 6);
                self.sextet(v);
            }
            2 => {
                let v = acc << 2;
                self.sextet(v >> 12);
                self.sextet(v >> 6);
                self.sextet(v);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    #[test]
    fn matches_base64_crate() {
        let data: Vec<u8> = (0..=255u8).rev().chain(0..=255).collect();
        for n in 0..data.len() {
            let mut out = Vec::new();
            let mut w = B64Writer::new(&mut out);
            w.write(&data[..n]);
            w.finish();
            let expected = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&data[..n]);
            assert_eq!(out, expected.as_bytes(), "n = {n}");
            assert_eq!(out.len(), encoded_len(n));
        }
    }
}
