//! Byte layouts of the embedded store's keys and values. Keys sort by (channel, seq) so a
//! channel's log is one contiguous, ordered range.

use crate::StoreError;
use bytes::Bytes;

const U64: usize = 8;

/// `[len u8][channel]`: the prefix shared by all keys of one channel.
pub fn channel_prefix(channel: &str) -> Result<Vec<u8>, StoreError> {
    let len = u8::try_from(channel.len())
        .map_err(|_| StoreError::Invalid(format!("channel name too long: {}", channel.len())))?;
    let mut key = Vec::with_capacity(1 + channel.len() + U64);
    key.push(len);
    key.extend_from_slice(channel.as_bytes());
    Ok(key)
}

/// `[len u8][channel][seq u64 BE]`.
pub fn message_key(channel: &str, seq: u64) -> Result<Vec<u8>, StoreError> {
    let mut key = channel_prefix(channel)?;
    key.extend_from_slice(&seq.to_be_bytes());
    Ok(key)
}

/// Seq of a message key whose channel prefix is `prefix_len` bytes long.
pub fn seq_of_key(key: &[u8], prefix_len: usize) -> Result<u64, StoreError> {
    let raw = key
        .get(prefix_len..prefix_len + U64)
        .ok_or_else(|| corrupt("message key", "short key"))?;
    Ok(u64::from_be_bytes(to_array(raw)))
}

/// `[len u8][channel][user]`: a channel's acks sort together, by user.
pub fn ack_key(channel: &str, user: &str) -> Result<Vec<u8>, StoreError> {
    let mut out = channel_prefix(channel)?;
    out.extend_from_slice(user.as_bytes());
    Ok(out)
}

/// `[len u8][channel][idempotency key]`.
pub fn idempotency_key(channel: &str, key: &str) -> Result<Vec<u8>, StoreError> {
    let mut out = channel_prefix(channel)?;
    out.extend_from_slice(key.as_bytes());
    Ok(out)
}

pub fn encode_message(
    epoch: u64,
    ts_ms: u64,
    event: &str,
    data: &[u8],
) -> Result<Vec<u8>, StoreError> {
    let event_len = u8::try_from(event.len())
        .map_err(|_| StoreError::Invalid(format!("event name too long: {}", event.len())))?;
    let mut out = Vec::with_capacity(2 * U64 + 1 + event.len() + data.len());
    out.extend_from_slice(&epoch.to_le_bytes());
    out.extend_from_slice(&ts_ms.to_le_bytes());
    out.push(event_len);
    out.extend_from_slice(event.as_bytes());
    out.extend_from_slice(data);
    Ok(out)
}

/// Decodes `(epoch, ts_ms, event, data)`.
pub fn decode_message(value: &[u8]) -> Result<(u64, u64, String, Bytes), StoreError> {
    let head = 2 * U64 + 1;
    if value.len() < head {
        return Err(corrupt("message", "short value"));
    }
    let epoch = read_u64(value, 0)?;
    let ts = read_u64(value, U64)?;
    let event_len = value[2 * U64] as usize;
    let event = value
        .get(head..head + event_len)
        .ok_or_else(|| corrupt("message", "short event"))?;
    let event = std::str::from_utf8(event)
        .map_err(|_| corrupt("message", "event not utf-8"))?
        .to_owned();
    let data = Bytes::copy_from_slice(&value[head + event_len..]);
    Ok((epoch, ts, event, data))
}

pub fn encode_u64s<const N: usize>(values: [u64; N]) -> Vec<u8> {
    let mut out = Vec::with_capacity(N * U64);
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

pub fn decode_u64s<const N: usize>(what: &'static str, raw: &[u8]) -> Result<[u64; N], StoreError> {
    if raw.len() != N * U64 {
        return Err(corrupt(what, "wrong length"));
    }
    let mut out = [0u64; N];
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = read_u64(raw, i * U64)?;
    }
    Ok(out)
}

fn read_u64(raw: &[u8], at: usize) -> Result<u64, StoreError> {
    let bytes = raw
        .get(at..at + U64)
        .ok_or_else(|| corrupt("u64", "short field"))?;
    Ok(u64::from_le_bytes(to_array(bytes)))
}

fn to_array(raw: &[u8]) -> [u8; U64] {
    let mut out = [0u8; U64];
    out.copy_from_slice(&raw[..U64]);
    out
}

fn corrupt(what: &'static str, detail: &str) -> StoreError {
    StoreError::Corrupt {
        what,
        detail: detail.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_round_trip() {
        let raw = encode_message(7, 9, "comment", br#"{"a":1}"#).unwrap();
        let (epoch, ts, event, data) = decode_message(&raw).unwrap();
        assert_eq!(
            (epoch, ts, event.as_str(), &data[..]),
            (7, 9, "comment", &br#"{"a":1}"#[..])
        );
    }

    #[test]
    fn keys_sort_by_seq_within_channel() {
        let a = message_key("live:1", 2).unwrap();
        let b = message_key("live:1", 10).unwrap();
        assert!(a < b);
        assert_eq!(
            seq_of_key(&b, channel_prefix("live:1").unwrap().len()).unwrap(),
            10
        );
    }

    #[test]
    fn short_values_are_corrupt_not_panics() {
        assert!(decode_message(&[1, 2, 3]).is_err());
        assert!(decode_u64s::<2>("x", &[0; 15]).is_err());
    }
}
