//! HS256 JWTs for subscribers: `sub` (user id) and `channels` (allowed `*` glob patterns).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::channel::glob_match;

type HmacSha256 = Hmac<Sha256>;

/// Longest token accepted by [`verify_hs256`], in bytes.
pub const MAX_TOKEN_LEN: usize = 8192;

/// Header written by [`sign_hs256`]: `{"alg":"HS256","typ":"JWT"}`.
const HEADER_B64: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";

/// Subscriber token claims. Unknown claims are ignored when verifying.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// User id; non-empty in a valid token.
    pub sub: String,
    /// Channel patterns the holder may subscribe to (`*` glob).
    #[serde(default)]
    pub channels: Vec<String>,
    /// Expiry, seconds since the Unix epoch; required by [`verify_hs256`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    /// Not-before, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issued-at, seconds since the Unix epoch (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
}

impl Claims {
    /// True when some pattern glob-matches the channel, or `channel == "user:" + sub`.
    pub fn allows(&self, channel: &str) -> bool {
        let own = !self.sub.is_empty() && channel.strip_prefix("user:") == Some(self.sub.as_str());
        own || self.channels.iter().any(|p| glob_match(p, channel))
    }
}

/// Why a token was rejected.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("token is longer than {MAX_TOKEN_LEN} bytes")]
    TooLong,
    #[error("token is malformed")]
    Malformed,
    #[error("token algorithm is not HS256")]
    UnsupportedAlgorithm,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token has no exp claim")]
    MissingExp,
    #[error("token has an empty sub claim")]
    EmptySubject,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

fn mac(secret: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length; `new_from_slice` only fails for fixed-size-key MACs.
    <HmacSha256 as Mac>::new_from_slice(secret).expect("HMAC accepts keys of any length")
}

/// Signs `claims` as a compact HS256 JWT (header `{"alg":"HS256","typ":"JWT"}`).
pub fn sign_hs256(claims: &Claims, secret: &[u8]) -> String {
    // Serializing strings, string lists and integers cannot fail.
    let payload = serde_json::to_vec(claims).expect("Claims always serialize");
    let mut token = String::with_capacity(HEADER_B64.len() + payload.len() * 4 / 3 + 48);
    token.push_str(HEADER_B64);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
    let mut m = mac(secret);
    m.update(token.as_bytes());
    let sig = m.finalize().into_bytes();
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(sig, &mut token);
    token
}

/// Verifies a compact HS256 JWT and returns its claims.
///
/// Checks, in order: length, structure, header `alg` = `HS256` (anything else, including `none`,
/// is [`TokenError::UnsupportedAlgorithm`]), signature (constant-time), then claims: `exp`
/// required and `> now_secs` (no leeway), `nbf <= now_secs` if present, `sub` non-empty.
/// Base64url segments must be canonical and unpadded.
pub fn verify_hs256(token: &str, secret: &[u8], now_secs: u64) -> Result<Claims, TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::TooLong);
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(sig_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };

    let header_json = URL_SAFE_NO_PAD
        .decode(header_b64)
        .map_err(|_| TokenError::Malformed)?;
    let header: Header = serde_json::from_slice(&header_json).map_err(|_| TokenError::Malformed)?;
    if header.alg != "HS256" {
        return Err(TokenError::UnsupportedAlgorithm);
    }

    let sig = URL_SAFE_NO_PAD
        .decode(sig_b64)
        .map_err(|_| TokenError::Malformed)?;
    let signed_len = header_b64.len() + 1 + payload_b64.len();
    let signed = token
        .as_bytes()
        .get(..signed_len)
        .ok_or(TokenError::Malformed)?;
    let mut m = mac(secret);
    m.update(signed);
    m.verify_slice(&sig).map_err(|_| TokenError::BadSignature)?;

    let payload = URL_SAFE_NO_PAD
        .decode(payload_b64)
        .map_err(|_| TokenError::Malformed)?;
    let claims: Claims = serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;

    let exp = claims.exp.ok_or(TokenError::MissingExp)?;
    if exp <= now_secs {
        return Err(TokenError::Expired);
    }
    if claims.nbf.is_some_and(|nbf| nbf > now_secs) {
        return Err(TokenError::NotYetValid);
    }
    if claims.sub.is_empty() {
        return Err(TokenError::EmptySubject);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECRET: &[u8] = b"test-secret";
    const NOW: u64 = 1_700_000_000;

    fn claims(sub: &str, channels: &[&str]) -> Claims {
        Claims {
            sub: sub.to_owned(),
            channels: channels.iter().map(|s| (*s).to_owned()).collect(),
            exp: Some(NOW + 60),
            nbf: None,
            iat: Some(NOW),
        }
    }

    /// Builds a token from raw header/payload JSON, signed with `SECRET`.
    fn raw_token(header: &str, payload: &str) -> String {
        let mut t = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let mut m = mac(SECRET);
        m.update(t.as_bytes());
        let sig = m.finalize().into_bytes();
        t.push('.');
        t.push_str(&URL_SAFE_NO_PAD.encode(sig));
        t
    }

    #[test]
    fn header_constant_matches() {
        assert_eq!(
            URL_SAFE_NO_PAD.decode(HEADER_B64).expect("b64"),
            br#"{"alg":"HS256","typ":"JWT"}"#
        );
    }

    #[test]
    fn round_trip() {
        let c = claims("alice", &["live:*", "news"]);
        let t = sign_hs256(&c, SECRET);
        assert_eq!(t.split('.').count(), 3);
        assert_eq!(verify_hs256(&t, SECRET, NOW), Ok(c));
    }

    #[test]
    fn interoperates_with_jwt_io_example() {
        // The canonical jwt.io example token: valid signature, but no exp claim.
        let t = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.\
                 eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.\
                 SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
        assert_eq!(
            verify_hs256(t, b"your-256-bit-secret", NOW),
            Err(TokenError::MissingExp)
        );
        assert_eq!(
            verify_hs256(t, b"other-secret", NOW),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn allows() {
        let c = claims("alice", &["live:*", "news"]);
        assert!(c.allows("live:42"));
        assert!(c.allows("news"));
        assert!(!c.allows("news:1"));
        assert!(c.allows("user:alice"));
        assert!(!c.allows("user:bob"));
        assert!(!c.allows("user:alice2"));
        assert!(!c.allows("private"));
        let empty = claims("", &[]);
        assert!(!empty.allows("user:"));
        assert!(claims("x", &["*"]).allows("anything"));
    }

    #[test]
    fn error_too_long() {
        let t = "a".repeat(MAX_TOKEN_LEN + 1);
        assert_eq!(verify_hs256(&t, SECRET, NOW), Err(TokenError::TooLong));
    }

    #[test]
    fn error_malformed() {
        let good = sign_hs256(&claims("a", &[]), SECRET);
        let parts: Vec<&str> = good.split('.').collect();
        for bad in [
            String::new(),
            "abc".to_owned(),
            format!("{}.{}", parts[0], parts[1]),
            format!("{good}."),
            format!("{good}.{}", parts[2]),
            format!("!!.{}.{}", parts[1], parts[2]),
            format!("{}.{}.{}=", parts[0], parts[1], parts[2]),
            format!("{}.{}.{}", parts[0], parts[1], &parts[2][..10]),
            raw_token("not json", r#"{"sub":"a","exp":9999999999}"#),
            raw_token(r#"{"typ":"JWT"}"#, r#"{"sub":"a","exp":9999999999}"#),
            raw_token(r#"{"alg":"HS256"}"#, "not json"),
            raw_token(r#"{"alg":"HS256"}"#, r#"{"exp":9999999999}"#),
            raw_token(r#"{"alg":"HS256"}"#, r#"{"sub":"a","exp":-1}"#),
            raw_token(r#"{"alg":"HS256"}"#, r#"{"sub":"a","exp":1.5e9}"#),
            raw_token(
                r#"{"alg":"HS256"}"#,
                r#"{"sub":"a","channels":"x","exp":9999999999}"#,
            ),
        ] {
            assert_eq!(
                verify_hs256(&bad, SECRET, NOW),
                Err(TokenError::Malformed),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn error_unsupported_algorithm() {
        let payload = r#"{"sub":"a","exp":9999999999}"#;
        for header in [
            r#"{"alg":"none"}"#,
            r#"{"alg":"HS512"}"#,
            r#"{"alg":"RS256"}"#,
            r#"{"alg":"hs256"}"#,
        ] {
            assert_eq!(
                verify_hs256(&raw_token(header, payload), SECRET, NOW),
                Err(TokenError::UnsupportedAlgorithm),
                "{header}"
            );
        }
        // The classic "alg: none" attack with an empty signature.
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(payload)
        );
        assert_eq!(
            verify_hs256(&none, SECRET, NOW),
            Err(TokenError::UnsupportedAlgorithm)
        );
    }

    #[test]
    fn error_bad_signature() {
        let t = sign_hs256(&claims("a", &[]), SECRET);
        assert_eq!(
            verify_hs256(&t, b"wrong", NOW),
            Err(TokenError::BadSignature)
        );
        let (head, _) = t.rsplit_once('.').expect("dots");
        assert_eq!(
            verify_hs256(&format!("{head}."), SECRET, NOW),
            Err(TokenError::BadSignature)
        );
        let other = sign_hs256(&claims("b", &[]), SECRET);
        let (_, other_sig) = other.rsplit_once('.').expect("dots");
        assert_eq!(
            verify_hs256(&format!("{head}.{other_sig}"), SECRET, NOW),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn error_expired() {
        let mut c = claims("a", &[]);
        c.exp = Some(NOW);
        let t = sign_hs256(&c, SECRET);
        assert_eq!(verify_hs256(&t, SECRET, NOW), Err(TokenError::Expired));
        assert_eq!(verify_hs256(&t, SECRET, NOW + 1), Err(TokenError::Expired));
        assert_eq!(verify_hs256(&t, SECRET, NOW - 1), Ok(c));
    }

    #[test]
    fn error_not_yet_valid() {
        let mut c = claims("a", &[]);
        c.nbf = Some(NOW + 1);
        let t = sign_hs256(&c, SECRET);
        assert_eq!(verify_hs256(&t, SECRET, NOW), Err(TokenError::NotYetValid));
        assert_eq!(verify_hs256(&t, SECRET, NOW + 1), Ok(c));
    }

    #[test]
    fn error_missing_exp() {
        let mut c = claims("a", &[]);
        c.exp = None;
        let t = sign_hs256(&c, SECRET);
        assert_eq!(verify_hs256(&t, SECRET, NOW), Err(TokenError::MissingExp));
    }

    #[test]
    fn error_empty_subject() {
        let t = sign_hs256(&claims("", &[]), SECRET);
        assert_eq!(verify_hs256(&t, SECRET, NOW), Err(TokenError::EmptySubject));
    }

    #[test]
    fn extra_claims_and_header_fields_accepted() {
        let t = raw_token(
            r#"{"alg":"HS256","typ":"JWT","kid":"k1"}"#,
            r#"{"sub":"a","exp":9999999999,"iss":"me","aud":["x"]}"#,
        );
        let c = verify_hs256(&t, SECRET, NOW).expect("valid");
        assert_eq!(c.sub, "a");
        assert!(c.channels.is_empty());
    }

    fn claims_strategy() -> impl Strategy<Value = Claims> {
        (
            "[a-zA-Z0-9_@.\\-]{1,24}",
            prop::collection::vec("[a-z0-9:*]{0,16}", 0..5),
            (NOW + 1)..u64::MAX,
            prop::option::of(0..=NOW),
            prop::option::of(any::<u64>()),
        )
            .prop_map(|(sub, channels, exp, nbf, iat)| Claims {
                sub,
                channels,
                exp: Some(exp),
                nbf,
                iat,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn sign_verify_round_trip(c in claims_strategy(), secret in prop::collection::vec(any::<u8>(), 0..80)) {
            let t = sign_hs256(&c, &secret);
            prop_assert_eq!(verify_hs256(&t, &secret, NOW), Ok(c));
        }

        #[test]
        fn any_single_byte_mutation_fails(
            c in claims_strategy(),
            idx in any::<prop::sample::Index>(),
            replacement in 0x20u8..0x7f,
        ) {
            let t = sign_hs256(&c, SECRET);
            let mut bytes = t.clone().into_bytes();
            let i = idx.index(bytes.len());
            prop_assume!(bytes[i] != replacement);
            bytes[i] = replacement;
            let mutated = String::from_utf8(bytes).expect("ascii");
            prop_assert!(verify_hs256(&mutated, SECRET, NOW).is_err(), "{} -> {}", t, mutated);
        }

        #[test]
        fn verify_arbitrary_never_panics(s in "\\PC{0,200}") {
            let _ = verify_hs256(&s, SECRET, NOW);
        }
    }
}
