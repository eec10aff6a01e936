//! Unsigned LEB128 varints (at most 10 bytes for a `u64`), the one codec of every binary
//! format Herald has (cursors, fabric messages). Decoding accepts only the minimal
//! encoding, so every value has exactly one valid byte string.

/// Longest encoding of a `u64`.
pub const MAX_LEN: usize = 10;

/// Why a varint could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VarintError {
    /// Input ended while the continuation bit was still set.
    Truncated,
    /// More than 64 bits of value.
    Overflow,
    /// A longer-than-necessary encoding (trailing zero group).
    NonMinimal,
}

/// Number of bytes [`encode`] produces for `v`.
#[inline]
pub const fn encoded_len(v: u64) -> usize {
    let bits = 64 - (v | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Encodes `v` into `buf`, returning the used prefix.
#[inline]
pub fn encode(mut v: u64, buf: &mut [u8; MAX_LEN]) -> &[u8] {
    let mut i = 0;
    loop {
        // Masked to 7 bits, so the cast cannot truncate.
        let low = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            buf[i] = low;
            return &buf[..=i];
        }
        buf[i] = low | 0x80;
        i += 1;
    }
}

/// Decodes one varint from the start of `input`, returning the value and the bytes consumed.
pub fn decode(input: &[u8]) -> Result<(u64, usize), VarintError> {
    let mut value: u64 = 0;
    for i in 0..MAX_LEN {
        let byte = *input.get(i).ok_or(VarintError::Truncated)?;
        if i == MAX_LEN - 1 && byte > 1 {
            // The 10th byte carries only the top bit of a u64 and must end the varint.
            return Err(VarintError::Overflow);
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            if i > 0 && byte == 0 {
                return Err(VarintError::NonMinimal);
            }
            return Ok((value, i + 1));
        }
    }
    // Unreachable: the 10th byte is either rejected above or ends the loop.
    Err(VarintError::Overflow)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(v: u64) -> Vec<u8> {
        let mut buf = [0u8; MAX_LEN];
        encode(v, &mut buf).to_vec()
    }

    #[test]
    fn known_encodings() {
        assert_eq!(enc(0), [0x00]);
        assert_eq!(enc(1), [0x01]);
        assert_eq!(enc(127), [0x7f]);
        assert_eq!(enc(128), [0x80, 0x01]);
        assert_eq!(enc(300), [0xac, 0x02]);
        assert_eq!(
            enc(u64::MAX),
            [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]
        );
    }

    #[test]
    fn round_trip_and_len() {
        let mut v: u64 = 1;
        let mut values = vec![0, u64::MAX];
        while v != 0 {
            values.extend([v - 1, v, v.wrapping_add(1)]);
            v = v.wrapping_shl(1);
        }
        for v in values {
            let e = enc(v);
            assert_eq!(e.len(), encoded_len(v), "len of {v}");
            assert_eq!(decode(&e), Ok((v, e.len())), "decode of {v}");
        }
    }

    #[test]
    fn errors() {
        assert_eq!(decode(&[]), Err(VarintError::Truncated));
        assert_eq!(decode(&[0x80]), Err(VarintError::Truncated));
        assert_eq!(decode(&[0x80, 0x00]), Err(VarintError::NonMinimal));
        assert_eq!(
            decode(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02]),
            Err(VarintError::Overflow)
        );
        assert_eq!(decode(&[0xff; 11]), Err(VarintError::Overflow));
    }
}
