//! Every parser of untrusted input, fed arbitrary and near-valid input: it answers with a
//! value or an error, never a panic, and what it accepts is well-formed.

use herald_proto::{
    json_error_code, one_line_json, validate_channel, verify_hs256, Cursor, PublishBatchRequest,
    PublishRequest,
};
use proptest::prelude::*;

#[path = "support/fuzz.rs"]
mod fuzz;
use fuzz::fuzz_cases;

/// JSON-ish text: valid publish bodies with random mutations, and plain noise.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let valid = (
        "[a-z:0-9]{0,20}",
        prop::option::of("[a-z]{0,8}"),
        any::<bool>(),
        prop::collection::vec(any::<u8>(), 0..8),
    )
        .prop_map(|(ch, ev, eph, junk)| {
            let mut s = format!("{{\"channel\":\"{ch}\",\"data\":{{\"x\":[1,2,{{}}]}}");
            if let Some(e) = ev {
                s.push_str(&format!(",\"event\":\"{e}\""));
            }
            s.push_str(&format!(",\"ephemeral\":{eph}}}"));
            let mut b = s.into_bytes();
            // Splice junk somewhere to make it nearly valid.
            if !junk.is_empty() {
                let at = junk[0] as usize % (b.len() + 1);
                b.splice(at..at, junk);
            }
            b
        });
    prop_oneof![valid, prop::collection::vec(any::<u8>(), 0..256)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(fuzz_cases(512)))]

    #[test]
    fn publish_bodies_parse_or_classify(b in body()) {
        match serde_json::from_slice::<PublishRequest>(&b) {
            Ok(r) => {
                if let Some(d) = &r.data {
                    // Accepted data is valid JSON, and on one line after normalizing.
                    let line = one_line_json(d.get());
                    prop_assert!(!line.contains('\n') && !line.contains('\r'));
                    prop_assert!(serde_json::from_str::<serde_json::Value>(&line).is_ok());
                }
            }
            Err(e) => {
                let code = json_error_code(&e);
                prop_assert!(code == "malformed_json" || code == "invalid_body");
            }
        }
        let _ = serde_json::from_slice::<PublishBatchRequest>(&b);
    }

    #[test]
    fn channel_names_never_panic_and_accepted_ones_are_clean(s in ".{0,200}") {
        if validate_channel(&s).is_ok() {
            prop_assert!(!s.is_empty() && s.len() <= 128);
            prop_assert!(s.bytes().all(|c| c.is_ascii_alphanumeric() || b"_-.:@=+".contains(&c)));
        }
    }

    #[test]
    fn tokens_never_panic(s in "[A-Za-z0-9_\\-\\.=]{0,300}", secret in prop::collection::vec(any::<u8>(), 1..40)) {
        let _ = verify_hs256(&s, &secret, 1_000_000);
    }

    #[test]
    fn cursors_never_panic_on_near_valid_input(prefix in "h1[A-Za-z0-9_\\-]{0,64}", tail in ".{0,8}") {
        let s = format!("{prefix}{tail}");
        if let Ok(c) = Cursor::decode(&s) {
            // What decodes re-encodes to itself.
            prop_assert_eq!(c.encode(), s);
        }
    }
}
