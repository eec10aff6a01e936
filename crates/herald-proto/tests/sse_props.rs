//! Property tests for the SSE framing and parser.

use herald_proto::sse::{comment, retry_field, write_event, SseEvent, SseParser};
use proptest::prelude::*;

#[path = "support/fuzz.rs"]
mod fuzz;
use fuzz::fuzz_cases;

/// Everything observable about a parse: dispatched events and the final parser state.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    events: Vec<SseEvent>,
    last_event_id: Option<String>,
    retry: Option<u64>,
    comments: u64,
}

fn parse_chunks<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> Outcome {
    let mut p = SseParser::new();
    let mut events = Vec::new();
    for c in chunks {
        events.extend(p.push(c));
    }
    Outcome {
        events,
        last_event_id: p.last_event_id().map(str::to_owned),
        retry: p.retry(),
        comments: p.comments_seen(),
    }
}

/// Byte-stream fragments that exercise every parser rule, including ones that must not be split
/// naively (CRLF, multi-byte UTF-8, BOM, invalid UTF-8).
fn fragment() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"\n".to_vec()),
        Just(b"\r".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"data".to_vec()),
        Just(b"data:".to_vec()),
        Just(b"data: ".to_vec()),
        Just(b"event: ".to_vec()),
        Just(b"id: ".to_vec()),
        Just(b"id".to_vec()),
        Just(b"retry: ".to_vec()),
        Just(b":".to_vec()),
        Just(b" ".to_vec()),
        Just(b"\0".to_vec()),
        Just(b"\xef\xbb\xbf".to_vec()),
        Just(b"\xff".to_vec()),
        Just("é→🎉".as_bytes().to_vec()),
        "[a-z0-9]{1,6}".prop_map(String::into_bytes),
        "[0-9]{1,4}".prop_map(String::into_bytes),
    ]
}

fn stream() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(fragment(), 0..60).prop_map(|f| f.concat())
}

/// Splits `bytes` at the given (unsorted, possibly repeated) cut points.
fn split_at_points(bytes: &[u8], cuts: &[prop::sample::Index]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
    points.push(0);
    points.push(bytes.len());
    points.sort_unstable();
    points
        .windows(2)
        .map(|w| bytes[w[0]..w[1]].to_vec())
        .collect()
}

#[derive(Debug, Clone)]
struct Written {
    id: Option<String>,
    event: Option<String>,
    data: String,
}

fn written_event() -> impl Strategy<Value = Written> {
    (
        prop::option::of("[ -~]{0,12}"),
        prop::option::of("[A-Za-z0-9_.:-]{0,10}"),
        // Any text without line breaks, including leading spaces and colons.
        "[^\r\n]{0,40}",
    )
        .prop_map(|(id, event, data)| Written { id, event, data })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(fuzz_cases(256)))]

    #[test]
    fn chunking_does_not_change_the_result(
        bytes in stream(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let whole = parse_chunks([bytes.as_slice()]);
        let chunks = split_at_points(&bytes, &cuts);
        let split = parse_chunks(chunks.iter().map(Vec::as_slice));
        prop_assert_eq!(&split, &whole);
        let bytewise = parse_chunks(bytes.chunks(1));
        prop_assert_eq!(&bytewise, &whole);
    }

    #[test]
    fn write_event_round_trips(
        events in prop::collection::vec(written_event(), 0..8),
        heartbeats in prop::collection::vec(any::<bool>(), 8),
        retry in prop::option::of(any::<u64>()),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let mut out = Vec::new();
        if let Some(ms) = retry {
            out.extend(retry_field(ms));
        }
        let mut expected = Vec::new();
        let mut current_id: Option<String> = None;
        let mut beats = 0;
        for (w, beat) in events.iter().zip(&heartbeats) {
            if *beat {
                out.extend(comment("hb"));
                beats += 1;
            }
            write_event(
                &mut out,
                w.id.as_deref().map(str::as_bytes),
                w.event.as_deref(),
                w.data.as_bytes(),
            );
            if let Some(id) = &w.id {
                // An empty id resets the last event ID.
                current_id = (!id.is_empty()).then(|| id.clone());
            }
            expected.push(SseEvent {
                id: current_id.clone(),
                event: match w.event.as_deref() {
                    None | Some("") => "message".to_owned(),
                    Some(e) => e.to_owned(),
                },
                data: w.data.clone(),
            });
        }
        let chunks = split_at_points(&out, &cuts);
        let got = parse_chunks(chunks.iter().map(Vec::as_slice));
        prop_assert_eq!(got, Outcome {
            events: expected,
            last_event_id: current_id,
            retry,
            comments: beats,
        });
    }
}
