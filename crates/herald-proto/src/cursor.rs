//! Resume cursors: the SSE `id:` of every reliable event, encoding the position of every channel
//! of a stream so a reconnect (`Last-Event-ID`) resumes all of them.
//!
//! Text format v1: `h1` followed by base64url (no padding) of the payload, where the payload is,
//! for each entry, 8 bytes channel hash (little-endian), LEB128 epoch, LEB128 seq; then a 4-byte
//! little-endian checksum = low 32 bits of FNV-1a 64 over the preceding payload bytes.
//!
//! Decoding is strict (canonical base64, minimal varints), so a string that decodes re-encodes
//! to exactly itself.

use base64::Engine as _;

use crate::b64::{self, B64Writer};
use crate::fnv::{self, Fnv1a64};
use crate::varint::{self, VarintError};

/// A stream position within one channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Position {
    pub epoch: u64,
    pub seq: u64,
}

/// FNV-1a 64 of the channel name bytes (stable across versions: it is inside client cursors).
pub fn channel_hash(channel: &str) -> u64 {
    fnv::hash(channel.as_bytes())
}

/// Channels hash into this many partitions. In a cluster a partition is the unit of write
/// ownership: one dispatcher at a time holds its lease and sequences its channels.
pub const PARTITIONS: u32 = 1024;

/// The partition of `channel` (`0..PARTITIONS`).
pub fn partition_of(channel: &str) -> u32 {
    // FNV's low bits mix poorly: fold the high half in before taking the remainder.
    let h = channel_hash(channel);
    ((h ^ (h >> 32)) % u64::from(PARTITIONS)) as u32
}

/// Longest cursor text accepted by [`Cursor::decode`], in bytes.
pub const MAX_CURSOR_LEN: usize = 8192;
/// Most entries accepted by [`Cursor::decode`].
pub const MAX_CURSOR_CHANNELS: usize = 256;

/// Version prefix of the v1 cursor text.
pub const CURSOR_PREFIX: &str = "h1";

const ENTRY_HASH_LEN: usize = 8;
const CHECKSUM_LEN: usize = 4;

/// Why a cursor string was rejected.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum CursorError {
    #[error("cursor is longer than {MAX_CURSOR_LEN} bytes")]
    TooLong,
    #[error("cursor does not start with {CURSOR_PREFIX:?}")]
    BadPrefix,
    #[error("cursor is not valid base64url or contains a malformed number")]
    BadEncoding,
    #[error("cursor checksum mismatch")]
    BadChecksum,
    #[error("cursor is truncated")]
    Truncated,
    #[error("cursor names more than {MAX_CURSOR_CHANNELS} channels")]
    TooManyChannels,
    #[error("cursor names the same channel twice")]
    DuplicateChannel,
}

impl From<VarintError> for CursorError {
    fn from(e: VarintError) -> Self {
        match e {
            VarintError::Truncated => CursorError::Truncated,
            VarintError::Overflow | VarintError::NonMinimal => CursorError::BadEncoding,
        }
    }
}

/// A decoded cursor: `(channel_hash, position)` per channel, in encoding order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    pub entries: Vec<(u64, Position)>,
}

impl Cursor {
    /// The cursor text (same bytes as [`encode_cursor_into`]).
    pub fn encode(&self) -> String {
        let mut out = Vec::new();
        encode_cursor_into(&self.entries, &mut out);
        // The encoder only emits the ASCII prefix and base64url characters.
        String::from_utf8(out).unwrap_or_default()
    }

    /// Parses cursor text; see the module docs for the format and [`CursorError`] for failures.
    pub fn decode(s: &str) -> Result<Cursor, CursorError> {
        if s.len() > MAX_CURSOR_LEN {
            return Err(CursorError::TooLong);
        }
        let body = s
            .strip_prefix(CURSOR_PREFIX)
            .ok_or(CursorError::BadPrefix)?;
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| CursorError::BadEncoding)?;
        let split = payload
            .len()
            .checked_sub(CHECKSUM_LEN)
            .ok_or(CursorError::Truncated)?;
        let (mut rest, checksum) = payload.split_at(split);
        let expected = u32::from_le_bytes(checksum.try_into().map_err(|_| CursorError::Truncated)?);
        if checksum32(rest) != expected {
            return Err(CursorError::BadChecksum);
        }

        let mut entries: Vec<(u64, Position)> = Vec::new();
        while !rest.is_empty() {
            if entries.len() == MAX_CURSOR_CHANNELS {
                return Err(CursorError::TooManyChannels);
            }
            let (hash_bytes, tail) = rest
                .split_first_chunk::<ENTRY_HASH_LEN>()
                .ok_or(CursorError::Truncated)?;
            let (epoch, n) = varint::decode(tail)?;
            let tail = &tail[n..];
            let (seq, n) = varint::decode(tail)?;
            rest = &tail[n..];
            entries.push((u64::from_le_bytes(*hash_bytes), Position { epoch, seq }));
        }

        let mut hashes: Vec<u64> = entries.iter().map(|&(h, _)| h).collect();
        hashes.sort_unstable();
        if hashes.windows(2).any(|w| w[0] == w[1]) {
            return Err(CursorError::DuplicateChannel);
        }
        Ok(Cursor { entries })
    }

    /// Position of `channel` (looked up by [`channel_hash`]).
    pub fn get(&self, channel: &str) -> Option<Position> {
        self.get_hash(channel_hash(channel))
    }

    /// Position of the channel whose [`channel_hash`] is `hash`.
    pub fn get_hash(&self, hash: u64) -> Option<Position> {
        self.entries
            .iter()
            .find(|&&(h, _)| h == hash)
            .map(|&(_, p)| p)
    }

    /// Sets the position of `channel`, replacing an existing entry or appending a new one.
    pub fn set(&mut self, channel: &str, pos: Position) {
        let hash = channel_hash(channel);
        match self.entries.iter_mut().find(|(h, _)| *h == hash) {
            Some(entry) => entry.1 = pos,
            None => self.entries.push((hash, pos)),
        }
    }
}

fn checksum32(payload: &[u8]) -> u32 {
    // Low 32 bits by definition of the format.
    fnv::hash(payload) as u32
}

/// Exact number of bytes [`encode_cursor_into`] appends for `entries`.
pub fn encoded_cursor_len(entries: &[(u64, Position)]) -> usize {
    let payload: usize = entries
        .iter()
        .map(|(_, p)| ENTRY_HASH_LEN + varint::encoded_len(p.epoch) + varint::encoded_len(p.seq))
        .sum::<usize>()
        + CHECKSUM_LEN;
    CURSOR_PREFIX.len() + b64::encoded_len(payload)
}

/// Appends the cursor text for these entries to `out` without allocating beyond `out`'s growth
/// (hot path: called once per delivered event per connection). Same text as [`Cursor::encode`].
///
/// Does not enforce the decode limits: more than [`MAX_CURSOR_CHANNELS`] entries, or text longer
/// than [`MAX_CURSOR_LEN`], produce a cursor that [`Cursor::decode`] rejects.
pub fn encode_cursor_into(entries: &[(u64, Position)], out: &mut Vec<u8>) {
    out.reserve(encoded_cursor_len(entries));
    out.extend_from_slice(CURSOR_PREFIX.as_bytes());
    let mut w = B64Writer::new(out);
    let mut sum = Fnv1a64::new();
    let mut emit = |w: &mut B64Writer<'_>, bytes: &[u8]| {
        sum.write(bytes);
        w.write(bytes);
    };
    let mut buf = [0u8; varint::MAX_LEN];
    for &(hash, pos) in entries {
        emit(&mut w, &hash.to_le_bytes());
        emit(&mut w, varint::encode(pos.epoch, &mut buf));
        emit(&mut w, varint::encode(pos.seq, &mut buf));
    }
    w.write(&(sum.finish() as u32).to_le_bytes());
    w.finish();
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn pos(epoch: u64, seq: u64) -> Position {
        Position { epoch, seq }
    }

    /// Builds cursor text from a raw payload, appending a correct checksum.
    fn text_for_payload(payload: &[u8]) -> String {
        let mut p = payload.to_vec();
        p.extend_from_slice(&checksum32(payload).to_le_bytes());
        format!(
            "{CURSOR_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(p)
        )
    }

    #[test]
    fn channel_hash_is_fnv1a64() {
        assert_eq!(channel_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(channel_hash("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(channel_hash("foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn empty_cursor() {
        let c = Cursor::default();
        let s = c.encode();
        // Checksum of the empty payload: low 32 bits of the FNV offset basis.
        let expected = text_for_payload(&[]);
        assert_eq!(s, expected);
        assert_eq!(s, "h1JSMihA");
        assert_eq!(Cursor::decode(&s), Ok(Cursor::default()));
    }

    #[test]
    fn golden_vector() {
        // Pin the exact bytes: cursors are stored by clients across server versions.
        let c = Cursor {
            entries: vec![(channel_hash("live:42"), pos(1, 300))],
        };
        let mut payload = channel_hash("live:42").to_le_bytes().to_vec();
        payload.extend_from_slice(&[0x01, 0xac, 0x02]);
        let s = c.encode();
        assert_eq!(s, text_for_payload(&payload));
        assert_eq!(s.len(), encoded_cursor_len(&c.entries));
        let d = Cursor::decode(&s).expect("valid");
        assert_eq!(d.get("live:42"), Some(pos(1, 300)));
        assert_eq!(d.get("live:43"), None);
    }

    #[test]
    fn encode_into_appends() {
        let entries = vec![(1, pos(2, 3)), (4, pos(5, 6))];
        let mut out = b"id: ".to_vec();
        encode_cursor_into(&entries, &mut out);
        let expected = Cursor {
            entries: entries.clone(),
        }
        .encode();
        assert_eq!(&out[..4], b"id: ");
        assert_eq!(&out[4..], expected.as_bytes());
    }

    #[test]
    fn encode_into_does_not_reallocate_reserved_output() {
        let entries: Vec<_> = (0..40u64)
            .map(|h| {
                (
                    h.wrapping_mul(0x9e37_79b9_7f4a_7c15),
                    pos(h << 40, u64::MAX - h),
                )
            })
            .collect();
        let mut out = Vec::with_capacity(encoded_cursor_len(&entries));
        let (ptr, cap) = (out.as_ptr(), out.capacity());
        encode_cursor_into(&entries, &mut out);
        assert_eq!((out.as_ptr(), out.capacity()), (ptr, cap));
        assert_eq!(out.len(), encoded_cursor_len(&entries));
    }

    #[test]
    fn set_and_get() {
        let mut c = Cursor::default();
        c.set("a", pos(1, 1));
        c.set("b", pos(1, 2));
        c.set("a", pos(2, 0));
        assert_eq!(c.entries.len(), 2);
        assert_eq!(c.get("a"), Some(pos(2, 0)));
        assert_eq!(c.get_hash(channel_hash("b")), Some(pos(1, 2)));
    }

    #[test]
    fn max_channels_small_positions_fit() {
        let c = Cursor {
            entries: (0..MAX_CURSOR_CHANNELS as u64)
                .map(|h| (h, pos(1, 1)))
                .collect(),
        };
        let s = c.encode();
        assert!(s.len() <= MAX_CURSOR_LEN);
        assert_eq!(Cursor::decode(&s), Ok(c));
    }

    #[test]
    fn error_too_long() {
        let s = format!("h1{}", "A".repeat(MAX_CURSOR_LEN - 1));
        assert_eq!(Cursor::decode(&s), Err(CursorError::TooLong));
        // Length is checked before anything else, even the prefix.
        assert_eq!(
            Cursor::decode(&"!".repeat(MAX_CURSOR_LEN + 1)),
            Err(CursorError::TooLong)
        );
    }

    #[test]
    fn error_bad_prefix() {
        assert_eq!(Cursor::decode(""), Err(CursorError::BadPrefix));
        assert_eq!(Cursor::decode("h"), Err(CursorError::BadPrefix));
        assert_eq!(Cursor::decode("h2JSMihA"), Err(CursorError::BadPrefix));
        assert_eq!(Cursor::decode("H1JSMihA"), Err(CursorError::BadPrefix));
    }

    #[test]
    fn error_bad_encoding() {
        // Standard-alphabet characters, padding, length 1 mod 4, non-canonical trailing bits.
        assert_eq!(Cursor::decode("h1JSMih+"), Err(CursorError::BadEncoding));
        assert_eq!(Cursor::decode("h1JSMih/"), Err(CursorError::BadEncoding));
        assert_eq!(Cursor::decode("h1JSMihA=="), Err(CursorError::BadEncoding));
        assert_eq!(Cursor::decode("h1JSMihAB"), Err(CursorError::BadEncoding));
        assert_eq!(Cursor::decode("h1JSMihB"), Err(CursorError::BadEncoding));
        assert_eq!(Cursor::decode("h1JS Mih"), Err(CursorError::BadEncoding));
        // Varint overflow (11 continuation bytes) and a non-minimal varint.
        let mut payload = 7u64.to_le_bytes().to_vec();
        payload.extend_from_slice(&[0xff; 11]);
        payload.push(0);
        assert_eq!(
            Cursor::decode(&text_for_payload(&payload)),
            Err(CursorError::BadEncoding)
        );
        let mut payload = 7u64.to_le_bytes().to_vec();
        payload.extend_from_slice(&[0x81, 0x00, 0x01]);
        assert_eq!(
            Cursor::decode(&text_for_payload(&payload)),
            Err(CursorError::BadEncoding)
        );
    }

    #[test]
    fn error_truncated() {
        // Payload shorter than the checksum.
        assert_eq!(Cursor::decode("h1"), Err(CursorError::Truncated));
        assert_eq!(Cursor::decode("h1AAA"), Err(CursorError::Truncated));
        // Entry hash cut short.
        assert_eq!(
            Cursor::decode(&text_for_payload(&[1, 2, 3])),
            Err(CursorError::Truncated)
        );
        // Missing seq, and seq varint cut inside.
        let mut payload = 7u64.to_le_bytes().to_vec();
        payload.push(1);
        assert_eq!(
            Cursor::decode(&text_for_payload(&payload)),
            Err(CursorError::Truncated)
        );
        payload.push(0x80);
        assert_eq!(
            Cursor::decode(&text_for_payload(&payload)),
            Err(CursorError::Truncated)
        );
    }

    #[test]
    fn error_bad_checksum() {
        let s = Cursor {
            entries: vec![(9, pos(1, 2))],
        }
        .encode();
        let mut payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&s[2..])
            .expect("valid");
        payload[8] ^= 1;
        let bad = format!(
            "h1{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&payload)
        );
        assert_eq!(Cursor::decode(&bad), Err(CursorError::BadChecksum));
        assert_eq!(Cursor::decode("h1AAAAAA"), Err(CursorError::BadChecksum));
    }

    #[test]
    fn error_too_many_channels() {
        let entries: Vec<_> = (0..=MAX_CURSOR_CHANNELS as u64)
            .map(|h| (h, pos(0, 0)))
            .collect();
        let s = Cursor { entries }.encode();
        assert!(s.len() <= MAX_CURSOR_LEN);
        assert_eq!(Cursor::decode(&s), Err(CursorError::TooManyChannels));
    }

    #[test]
    fn error_duplicate_channel() {
        let s = Cursor {
            entries: vec![(5, pos(1, 1)), (6, pos(1, 1)), (5, pos(2, 2))],
        }
        .encode();
        assert_eq!(Cursor::decode(&s), Err(CursorError::DuplicateChannel));
    }

    #[test]
    fn error_messages_are_descriptive() {
        assert!(CursorError::TooLong.to_string().contains("8192"));
        assert!(CursorError::BadPrefix.to_string().contains("h1"));
    }

    fn entries_strategy() -> impl Strategy<Value = Vec<(u64, Position)>> {
        prop::collection::btree_map(any::<u64>(), (any::<u64>(), any::<u64>()), 0..64)
            .prop_map(|m: BTreeMap<u64, (u64, u64)>| {
                m.into_iter().map(|(h, (e, s))| (h, pos(e, s))).collect()
            })
            .prop_shuffle()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn round_trip(entries in entries_strategy()) {
            let c = Cursor { entries };
            let s = c.encode();
            prop_assert_eq!(s.len(), encoded_cursor_len(&c.entries));
            prop_assert_eq!(Cursor::decode(&s), Ok(c));
        }

        #[test]
        fn round_trip_small_values(
            entries in prop::collection::btree_map(any::<u64>(), (0u64..300, 0u64..100_000), 0..=MAX_CURSOR_CHANNELS)
        ) {
            let c = Cursor {
                entries: entries.into_iter().map(|(h, (e, s))| (h, pos(e, s))).collect(),
            };
            let s = c.encode();
            if s.len() <= MAX_CURSOR_LEN {
                prop_assert_eq!(Cursor::decode(&s), Ok(c));
            } else {
                prop_assert_eq!(Cursor::decode(&s), Err(CursorError::TooLong));
            }
        }

        #[test]
        fn decode_arbitrary_never_panics(s in "\\PC{0,64}") {
            let _ = Cursor::decode(&s);
        }

        #[test]
        fn decode_arbitrary_base64_is_canonical(body in "[A-Za-z0-9_-]{0,80}") {
            let s = format!("h1{body}");
            if let Ok(c) = Cursor::decode(&s) {
                prop_assert_eq!(c.encode(), s);
            }
        }

        #[test]
        fn decode_arbitrary_payload_with_checksum(payload in prop::collection::vec(any::<u8>(), 0..200)) {
            let s = text_for_payload(&payload);
            if let Ok(c) = Cursor::decode(&s) {
                prop_assert_eq!(c.encode(), s);
            }
        }
    }
}
