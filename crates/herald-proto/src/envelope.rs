//! JSON request/response bodies and the one-line SSE data envelope.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::num::push_u64;

/// Body of `POST /v1/publish` (and each element of a batch).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    pub channel: String,
    /// The message payload as raw JSON; `None` when absent or `null`.
    pub data: Option<Box<RawValue>>,
    #[serde(default)]
    pub event: Option<String>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    #[serde(default)]
    pub ephemeral: bool,
    #[serde(default)]
    pub conflation_key: Option<String>,
    /// Trace this message through the cluster (`GET /v1/trace`).
    #[serde(default)]
    pub trace: bool,
    /// A W3C trace context continuing the publisher's trace (traced when sampled).
    #[serde(default)]
    pub traceparent: Option<String>,
}

/// Body of `POST /v1/publish/batch`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishBatchRequest {
    pub messages: Vec<PublishRequest>,
}

/// Response of a publish: the assigned position (absent for ephemeral messages), or, for
/// one item of a batch that failed while others did not, its `error`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishResult {
    pub channel: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub epoch: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub seq: Option<u64>,
    /// The idempotency key was seen before; the position is the original one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
    /// Why this item was not published (the others' results stand).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
    /// The trace id, when the message is traced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// Response of `POST /v1/publish/batch`, one result per message in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublishBatchResponse {
    pub results: Vec<PublishResult>,
}

/// One stored message in a history response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryMessage {
    pub seq: u64,
    pub event: String,
    pub data: Box<RawValue>,
    pub ts: u64,
}

/// Response of `GET /v1/channels/{ch}/history`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryResponse {
    pub channel: String,
    pub epoch: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub messages: Vec<HistoryMessage>,
    pub next_after: u64,
    pub has_more: bool,
}

/// `{"error":{"code":…,"message":…}}`; a batch whose every item failed also says what
/// became of each (`results`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results: Option<Vec<PublishResult>>,
}

/// The inner object of [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
    /// On the publish endpoints: whether the message (any message of the request, for a
    /// request-wide error) may have been stored. `false`: nothing was. `true`: the write
    /// failed or timed out after reaching the store; a retry with the same idempotency key
    /// settles it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maybe_stored: Option<bool>,
}

/// Appends `s` as a JSON string literal (quoted and escaped by serde_json).
pub fn write_json_string(out: &mut Vec<u8>, s: &str) {
    // Serializing a `str` cannot fail and `io::Write for Vec<u8>` never errors.
    serde_json::to_writer(&mut *out, s).expect("serializing a str into a Vec cannot fail");
}

/// `{"error":{"code":..,"message":..}}`
pub fn error_json(code: &str, message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(code.len() + message.len() + 36);
    out.extend_from_slice(br#"{"error":{"code":"#);
    write_json_string(&mut out, code);
    out.extend_from_slice(br#","message":"#);
    write_json_string(&mut out, message);
    out.extend_from_slice(b"}}");
    out
}

fn is_line_break(b: u8) -> bool {
    b == b'\r' || b == b'\n'
}

/// Appends the one-line SSE data envelope
/// `{"channel":"..","epoch":E,"seq":S,"ts":T,"data":<raw>}`; `epoch` / `seq` are omitted when
/// `None` (ephemeral).
///
/// `data_raw` is already-valid JSON; any `'\r'` / `'\n'` bytes in it are written as `' '` (they
/// can only be insignificant whitespace in valid JSON, since JSON strings escape them). An empty
/// `data_raw` is written as `null` so the envelope stays valid JSON.
pub fn write_envelope(
    out: &mut Vec<u8>,
    channel: &str,
    epoch: Option<u64>,
    seq: Option<u64>,
    ts_ms: u64,
    data_raw: &[u8],
) {
    out.reserve(channel.len() + data_raw.len() + 96);
    out.extend_from_slice(br#"{"channel":"#);
    write_json_string(out, channel);
    if let Some(epoch) = epoch {
        out.extend_from_slice(br#","epoch":"#);
        push_u64(out, epoch);
    }
    if let Some(seq) = seq {
        out.extend_from_slice(br#","seq":"#);
        push_u64(out, seq);
    }
    out.extend_from_slice(br#","ts":"#);
    push_u64(out, ts_ms);
    out.extend_from_slice(br#","data":"#);
    if data_raw.is_empty() {
        out.extend_from_slice(b"null");
    } else {
        let start = out.len();
        out.extend_from_slice(data_raw);
        for b in &mut out[start..] {
            if is_line_break(*b) {
                *b = b' ';
            }
        }
    }
    out.push(b'}');
}

/// Returns `raw` with `'\r'` / `'\n'` replaced by `' '` (borrowed when none are present), so
/// stored JSON can be written as one SSE `data:` line.
pub fn one_line_json(raw: &str) -> Cow<'_, str> {
    if raw.bytes().any(is_line_break) {
        Cow::Owned(raw.replace(['\r', '\n'], " "))
    } else {
        Cow::Borrowed(raw)
    }
}

/// Error code for malformed JSON syntax (also truncated bodies and read errors).
pub const MALFORMED_JSON: &str = "malformed_json";
/// Error code for well-formed JSON of the wrong shape.
pub const INVALID_BODY: &str = "invalid_body";

/// Classifies a serde_json error on a request body: `"malformed_json"` (syntax / eof / io) or
/// `"invalid_body"` (data: wrong type, unknown field, missing field).
pub fn json_error_code(e: &serde_json::Error) -> &'static str {
    use serde_json::error::Category;
    match e.classify() {
        Category::Io | Category::Syntax | Category::Eof => MALFORMED_JSON,
        Category::Data => INVALID_BODY,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn envelope(
        channel: &str,
        epoch: Option<u64>,
        seq: Option<u64>,
        ts: u64,
        data: &[u8],
    ) -> String {
        let mut out = Vec::new();
        write_envelope(&mut out, channel, epoch, seq, ts, data);
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn envelope_reliable() {
        let s = envelope(
            "live:42",
            Some(3),
            Some(17),
            1_700_000_000_000,
            br#"{"a":[1,2]}"#,
        );
        assert_eq!(
            s,
            r#"{"channel":"live:42","epoch":3,"seq":17,"ts":1700000000000,"data":{"a":[1,2]}}"#
        );
    }

    #[test]
    fn envelope_ephemeral_and_empty_data() {
        let s = envelope("c", None, None, 5, b"true");
        assert_eq!(s, r#"{"channel":"c","ts":5,"data":true}"#);
        let s = envelope("c", None, None, 5, b"");
        assert_eq!(s, r#"{"channel":"c","ts":5,"data":null}"#);
    }

    #[test]
    fn envelope_is_one_line_valid_json() {
        let raw = "{\r\n  \"text\": \"line1\\nline2\\r\",\n  \"n\": [1,\n2]\n}";
        let s = envelope("we\"ird\\ch\n", Some(1), Some(2), 3, raw.as_bytes());
        assert!(!s.contains('\n') && !s.contains('\r'));
        let v: Value = serde_json::from_str(&s).expect("valid json");
        assert_eq!(v["channel"], "we\"ird\\ch\n");
        assert_eq!(v["data"]["text"], "line1\nline2\r");
        assert_eq!(v["data"]["n"], serde_json::json!([1, 2]));
        assert_eq!(v["epoch"], 1);
        assert_eq!(v["seq"], 2);
        assert_eq!(v["ts"], 3);
    }

    #[test]
    fn envelope_appends() {
        let mut out = b"data: ".to_vec();
        write_envelope(&mut out, "c", Some(u64::MAX), Some(0), 0, b"1");
        assert_eq!(
            out,
            format!(
                r#"data: {{"channel":"c","epoch":{},"seq":0,"ts":0,"data":1}}"#,
                u64::MAX
            )
            .as_bytes()
        );
    }

    #[test]
    fn one_line() {
        assert!(matches!(one_line_json(r#"{"a":1}"#), Cow::Borrowed(_)));
        assert_eq!(one_line_json("{\r\n\"a\":\n1}"), "{  \"a\": 1}");
        assert!(matches!(one_line_json("[\n]"), Cow::Owned(_)));
    }

    #[test]
    fn error_body() {
        let body = error_json("bad\"code", "line\nbreak \u{1} é");
        let parsed: ErrorBody = serde_json::from_slice(&body).expect("valid");
        assert_eq!(parsed.error.code, "bad\"code");
        assert_eq!(parsed.error.message, "line\nbreak \u{1} é");
        assert_eq!(
            error_json("not_found", "no such channel"),
            br#"{"error":{"code":"not_found","message":"no such channel"}}"#
        );
    }

    #[test]
    fn publish_request_full_and_minimal() {
        let r: PublishRequest = serde_json::from_str(
            r#"{"channel":"live:42","data":{"x": [1, 2]},"event":"comment","idempotency_key":"k1","ephemeral":true,"conflation_key":"pos"}"#,
        )
        .expect("valid");
        assert_eq!(r.channel, "live:42");
        assert_eq!(r.data.as_ref().map(|d| d.get()), Some(r#"{"x": [1, 2]}"#));
        assert_eq!(r.event.as_deref(), Some("comment"));
        assert_eq!(r.idempotency_key.as_deref(), Some("k1"));
        assert!(r.ephemeral);
        assert_eq!(r.conflation_key.as_deref(), Some("pos"));

        let r: PublishRequest = serde_json::from_str(r#"{"channel":"c"}"#).expect("valid");
        assert!(r.data.is_none());
        assert!(r.event.is_none() && r.idempotency_key.is_none() && r.conflation_key.is_none());
        assert!(!r.ephemeral);

        let r: PublishRequest =
            serde_json::from_str(r#"{"channel":"c","data":null}"#).expect("valid");
        assert!(r.data.is_none());
        let r: PublishRequest =
            serde_json::from_str(r#"{"channel":"c","data":"s\n"}"#).expect("valid");
        assert_eq!(r.data.as_ref().map(|d| d.get()), Some(r#""s\n""#));
    }

    #[test]
    fn publish_batch() {
        let b: PublishBatchRequest = serde_json::from_str(
            r#"{"messages":[{"channel":"a","data":1},{"channel":"b","data":[],"ephemeral":true}]}"#,
        )
        .expect("valid");
        assert_eq!(b.messages.len(), 2);
        assert!(b.messages[1].ephemeral);
        let e = serde_json::from_str::<PublishBatchRequest>(r#"{"messages":[{"chan":"a"}]}"#)
            .expect_err("unknown field");
        assert_eq!(json_error_code(&e), INVALID_BODY);
    }

    #[test]
    fn json_error_codes() {
        let code = |body: &str| {
            let e = serde_json::from_str::<PublishRequest>(body).expect_err(body);
            json_error_code(&e)
        };
        // Syntax and EOF.
        assert_eq!(code(r#"{"channel":"c",}"#), MALFORMED_JSON);
        assert_eq!(code(r#"{"channel":"c""#), MALFORMED_JSON);
        assert_eq!(code(""), MALFORMED_JSON);
        assert_eq!(code("nope"), MALFORMED_JSON);
        // Data: unknown field, missing field, wrong type.
        assert_eq!(code(r#"{"channel":"c","extra":1}"#), INVALID_BODY);
        assert_eq!(code(r#"{"data":1}"#), INVALID_BODY);
        assert_eq!(code(r#"{"channel":5}"#), INVALID_BODY);
        assert_eq!(code(r#"{"channel":"c","ephemeral":"yes"}"#), INVALID_BODY);
        assert_eq!(code("[]"), INVALID_BODY);
        // Io.
        struct Failing;
        impl std::io::Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("boom"))
            }
        }
        let e = serde_json::from_reader::<_, PublishRequest>(Failing).expect_err("io");
        assert_eq!(json_error_code(&e), MALFORMED_JSON);
    }

    #[test]
    fn publish_result_serialization() {
        let r = PublishResult {
            channel: "c".into(),
            epoch: Some(1),
            seq: Some(2),
            ..PublishResult::default()
        };
        assert_eq!(
            serde_json::to_string(&r).expect("ser"),
            r#"{"channel":"c","epoch":1,"seq":2}"#
        );
        let eph = PublishResult {
            channel: "c".into(),
            epoch: None,
            seq: None,
            ..PublishResult::default()
        };
        assert_eq!(
            serde_json::to_string(&eph).expect("ser"),
            r#"{"channel":"c"}"#
        );
        let dup = PublishResult {
            duplicate: true,
            ..r.clone()
        };
        let s = serde_json::to_string(&dup).expect("ser");
        assert_eq!(s, r#"{"channel":"c","epoch":1,"seq":2,"duplicate":true}"#);
        assert_eq!(serde_json::from_str::<PublishResult>(&s).expect("de"), dup);
        assert_eq!(
            serde_json::from_str::<PublishResult>(r#"{"channel":"c"}"#).expect("de"),
            eph
        );
        let batch = PublishBatchResponse {
            results: vec![r, eph],
        };
        let s = serde_json::to_string(&batch).expect("ser");
        assert_eq!(
            s,
            r#"{"results":[{"channel":"c","epoch":1,"seq":2},{"channel":"c"}]}"#
        );
    }

    #[test]
    fn history_round_trip() {
        let body = r#"{"channel":"c","epoch":2,"first_seq":1,"last_seq":9,"messages":[{"seq":5,"event":"message","data":{"k":"v"},"ts":123}],"next_after":5,"has_more":true}"#;
        let h: HistoryResponse = serde_json::from_str(body).expect("de");
        assert_eq!(h.messages[0].data.get(), r#"{"k":"v"}"#);
        assert_eq!(serde_json::to_string(&h).expect("ser"), body);
    }
}
