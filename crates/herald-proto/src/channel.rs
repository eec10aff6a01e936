//! Channel and event names: validation, namespaces and `*` glob matching.

use crate::error::ProtoError;

/// Longest valid channel name, in bytes.
pub const MAX_CHANNEL_LEN: usize = 128;

/// Longest valid event name, in bytes.
pub const MAX_EVENT_NAME_LEN: usize = 64;

/// Prefix of event names reserved for Herald's own events (`herald:reset`, …).
pub const RESERVED_EVENT_PREFIX: &str = "herald:";

fn is_channel_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'@' | b'=' | b'+')
}

fn is_event_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':')
}

/// The first character of `name` that `ok` rejects, for error messages.
fn first_bad_char(name: &str, ok: fn(u8) -> bool) -> Option<char> {
    name.chars().find(|&c| !(c.is_ascii() && ok(c as u8)))
}

/// Valid: 1..=128 bytes of `[A-Za-z0-9_\-.:@=+]`, must not start or end with `':'`.
pub fn validate_channel(name: &str) -> Result<(), ProtoError> {
    let invalid = |reason: String| Err(ProtoError::InvalidChannel(reason));
    if name.is_empty() {
        return invalid("channel name is empty".to_owned());
    }
    if name.len() > MAX_CHANNEL_LEN {
        return invalid(format!(
            "channel name is {} bytes long, the limit is {MAX_CHANNEL_LEN}",
            name.len()
        ));
    }
    if let Some(c) = first_bad_char(name, is_channel_byte) {
        return invalid(format!(
            "channel name contains {c:?}; allowed: A-Z a-z 0-9 _ - . : @ = +"
        ));
    }
    if name.starts_with(':') {
        return invalid("channel name must not start with ':'".to_owned());
    }
    if name.ends_with(':') {
        return invalid("channel name must not end with ':'".to_owned());
    }
    Ok(())
}

/// Part before the first `':'`; `""` when there is no `':'`.
pub fn namespace_of(name: &str) -> &str {
    match name.split_once(':') {
        Some((ns, _)) => ns,
        None => "",
    }
}

/// `'*'` matches any run of characters (including `':'` and empty). Everything else is literal.
///
/// Iterative with single-star backtracking: O(len(pattern) × len(name)) worst case, never
/// exponential.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0usize, 0usize);
    // After the most recent '*': (pattern index just past it, name index it currently eats up to).
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        match p.get(pi) {
            Some(b'*') => {
                pi += 1;
                star = Some((pi, ni));
            }
            Some(&c) if c == n[ni] => {
                pi += 1;
                ni += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    // Let the star swallow one more byte and retry the rest of the pattern.
                    pi = sp;
                    ni = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    p[pi.min(p.len())..].iter().all(|&b| b == b'*')
}

/// Event names: 1..=64 bytes of `[A-Za-z0-9_\-.:]`, must not start with `"herald:"` (reserved).
pub fn validate_event_name(name: &str) -> Result<(), ProtoError> {
    let invalid = |reason: String| Err(ProtoError::InvalidEvent(reason));
    if name.is_empty() {
        return invalid("event name is empty".to_owned());
    }
    if name.len() > MAX_EVENT_NAME_LEN {
        return invalid(format!(
            "event name is {} bytes long, the limit is {MAX_EVENT_NAME_LEN}",
            name.len()
        ));
    }
    if let Some(c) = first_bad_char(name, is_event_byte) {
        return invalid(format!(
            "event name contains {c:?}; allowed: A-Z a-z 0-9 _ - . :"
        ));
    }
    if name.starts_with(RESERVED_EVENT_PREFIX) {
        return invalid(format!(
            "event names starting with {RESERVED_EVENT_PREFIX:?} are reserved"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn channel_reason(name: &str) -> String {
        match validate_channel(name) {
            Err(ProtoError::InvalidChannel(r)) => r,
            other => panic!("expected InvalidChannel for {name:?}, got {other:?}"),
        }
    }

    fn event_reason(name: &str) -> String {
        match validate_event_name(name) {
            Err(ProtoError::InvalidEvent(r)) => r,
            other => panic!("expected InvalidEvent for {name:?}, got {other:?}"),
        }
    }

    #[test]
    fn valid_channels() {
        for ok in [
            "a",
            "live:42",
            "user:alice@example.com",
            "a-b_c.d:e@f=g+h",
            "ns:sub:leaf",
            "Z9",
            &"x".repeat(MAX_CHANNEL_LEN),
        ] {
            assert_eq!(validate_channel(ok), Ok(()), "{ok:?}");
        }
    }

    #[test]
    fn invalid_channels() {
        assert!(channel_reason("").contains("empty"));
        assert!(channel_reason(&"x".repeat(MAX_CHANNEL_LEN + 1)).contains("129"));
        assert!(channel_reason("a b").contains("' '"));
        assert!(channel_reason("a/b").contains("'/'"));
        assert!(channel_reason("a*").contains("'*'"));
        assert!(channel_reason("café").contains("'é'"));
        assert!(channel_reason("a\nb").contains("'\\n'"));
        assert!(channel_reason(":a").contains("start"));
        assert!(channel_reason("a:").contains("end"));
        assert!(channel_reason(":").contains("start"));
    }

    #[test]
    fn namespaces() {
        assert_eq!(namespace_of("live:42"), "live");
        assert_eq!(namespace_of("a:b:c"), "a");
        assert_eq!(namespace_of("plain"), "");
        assert_eq!(namespace_of(""), "");
        assert_eq!(namespace_of(":x"), "");
    }

    #[test]
    fn globs() {
        assert!(glob_match("*", ""));
        assert!(glob_match("*", "anything:at:all"));
        assert!(glob_match("", ""));
        assert!(!glob_match("", "a"));
        assert!(glob_match("live:*", "live:42"));
        assert!(glob_match("live:*", "live:"));
        assert!(glob_match("live:*", "live:a:b"));
        assert!(!glob_match("live:*", "live"));
        assert!(!glob_match("live:*", "xlive:1"));
        assert!(glob_match("*:42", "live:42"));
        assert!(glob_match("a*b*c", "abc"));
        assert!(glob_match("a*b*c", "aXXbYYbZZc"));
        assert!(!glob_match("a*b*c", "aXXbYYbZZ"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
        assert!(glob_match("**", "x"));
        assert!(glob_match("a?", "a?"));
        assert!(!glob_match("a?", "ab"));
    }

    #[test]
    fn glob_is_not_exponential() {
        let name = "a".repeat(4096);
        let pattern = format!("{}b", "a*".repeat(64));
        assert!(!glob_match(&pattern, &name));
    }

    #[test]
    fn valid_events() {
        for ok in [
            "message",
            "comment",
            "a.b-c_d:e",
            "x",
            &"e".repeat(64),
            "herald",
        ] {
            assert_eq!(validate_event_name(ok), Ok(()), "{ok:?}");
        }
    }

    #[test]
    fn invalid_events() {
        assert!(event_reason("").contains("empty"));
        assert!(event_reason(&"e".repeat(65)).contains("65"));
        assert!(event_reason("a b").contains("' '"));
        assert!(event_reason("a@b").contains("'@'"));
        assert!(event_reason("herald:reset").contains("reserved"));
        assert!(event_reason("herald:").contains("reserved"));
    }

    /// Obviously-correct (exponential) reference for `glob_match`.
    fn reference_glob(p: &[u8], s: &[u8]) -> bool {
        match p.split_first() {
            None => s.is_empty(),
            Some((b'*', rest)) => (0..=s.len()).any(|i| reference_glob(rest, &s[i..])),
            Some((c, rest)) => s.first() == Some(c) && reference_glob(rest, &s[1..]),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn glob_matches_reference(pattern in "[ab:*]{0,10}", name in "[ab:]{0,12}") {
            prop_assert_eq!(
                glob_match(&pattern, &name),
                reference_glob(pattern.as_bytes(), name.as_bytes())
            );
        }

        #[test]
        fn glob_literal_pattern_is_equality(a in "[a-c:]{0,8}", b in "[a-c:]{0,8}") {
            prop_assert_eq!(glob_match(&a, &b), a == b);
        }

        #[test]
        fn validate_channel_never_panics(name in "\\PC{0,140}") {
            let _ = validate_channel(&name);
            let _ = validate_event_name(&name);
        }
    }
}
