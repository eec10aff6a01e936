//! Who is asking: publishers by API key, subscribers by HS256 token (query, header or
//! cookie). `--dev` lets anonymous callers through.

use crate::config::{ApiKey, Secret};
use crate::server::error::ApiError;
use herald_proto::{Claims, TokenError};
use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub struct Auth {
    keys: Vec<ApiKey>,
    /// SHA-256 of each key, in `keys` order: keys are compared as digests of one length.
    digests: Vec<[u8; 32]>,
    secret: Option<Secret>,
    /// SHA-256 of `HERALD_METRICS_TOKEN`, if set.
    metrics_token: Option<[u8; 32]>,
    /// SHA-256 of `HERALD_ADMIN_KEY`, if set: the dashboard's key.
    admin_key: Option<[u8; 32]>,
    dev: bool,
}

/// A subscriber: a verified token, or anonymous in dev mode.
pub enum Subscriber {
    Token(Claims),
    Anonymous,
}

impl Subscriber {
    /// The user the token names (`sub`), if any: acks and offline delivery need one.
    pub fn user(&self) -> Option<&str> {
        match self {
            Subscriber::Token(c) if !c.sub.is_empty() => Some(&c.sub),
            _ => None,
        }
    }

    pub fn may_read(&self, channel: &str) -> bool {
        match self {
            Subscriber::Token(c) => c.allows(channel),
            Subscriber::Anonymous => true,
        }
    }
}

impl Auth {
    pub fn new(
        keys: Vec<ApiKey>,
        secret: Option<Secret>,
        metrics_token: Option<&Secret>,
        dev: bool,
    ) -> Self {
        let digests = keys.iter().map(|k| digest(k.key.as_bytes())).collect();
        Self {
            keys,
            digests,
            secret,
            metrics_token: metrics_token.map(|t| digest(&t.0)),
            admin_key: None,
            dev,
        }
    }

    /// The dashboard's key (`HERALD_ADMIN_KEY`); without one the dashboard's data is off.
    pub fn with_admin_key(mut self, key: Option<&Secret>) -> Self {
        self.admin_key = key.map(|k| digest(&k.0));
        self
    }

    /// Who may see the dashboard's data: the bearer of `HERALD_ADMIN_KEY` (anyone under
    /// `--dev`). Publisher keys may not: the dashboard shows every namespace.
    pub fn admin(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        if self.dev {
            return Ok(());
        }
        let Some(key) = &self.admin_key else {
            return Err(ApiError::new(
                403,
                "admin_disabled",
                "the dashboard is off: set HERALD_ADMIN_KEY",
            ));
        };
        let Some(presented) = bearer(headers) else {
            return Err(ApiError::new(
                401,
                "missing_api_key",
                "send HERALD_ADMIN_KEY as `Authorization: Bearer <key>`",
            ));
        };
        if bool::from(key.ct_eq(&digest(presented.as_bytes()))) {
            return Ok(());
        }
        Err(ApiError::new(401, "invalid_api_key", "not the admin key"))
    }

    /// Who may read `/metrics`: the bearer of `HERALD_METRICS_TOKEN` or of a publisher key
    /// (anyone under `--dev`). Counters name channels' traffic and the cluster's shape.
    pub fn scraper(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        if self.dev {
            return Ok(());
        }
        let Some(presented) = bearer(headers) else {
            return Err(ApiError::new(
                401,
                "missing_api_key",
                "send HERALD_METRICS_TOKEN or a publisher API key as `Authorization: Bearer <key>`",
            ));
        };
        let token_ok = self
            .metrics_token
            .is_some_and(|t| bool::from(t.ct_eq(&digest(presented.as_bytes()))));
        if token_ok | self.key_name(presented).is_some() {
            return Ok(());
        }
        Err(ApiError::new(
            401,
            "invalid_api_key",
            "neither the metrics token nor a publisher API key",
        ))
    }

    fn key_name(&self, presented: &str) -> Option<&str> {
        // Compare digests (one length, whatever the key's) against every key without
        // stopping early, in constant time: timing says nothing about which key matched,
        // how much of one, or how long the keys are.
        let presented = digest(presented.as_bytes());
        let mut found = None;
        for (k, d) in self.keys.iter().zip(&self.digests) {
            if bool::from(d.ct_eq(&presented)) {
                found = Some(k.name.as_str());
            }
        }
        found
    }

    /// The publisher's key name.
    pub fn publisher(&self, headers: &HeaderMap) -> Result<String, ApiError> {
        match bearer(headers) {
            Some(k) => match self.key_name(k) {
                Some(name) => Ok(name.to_owned()),
                None if self.dev && self.keys.is_empty() => Ok("dev".to_owned()),
                None => Err(ApiError::new(401, "invalid_api_key", "unknown API key")),
            },
            None if self.dev => Ok("dev".to_owned()),
            None => Err(ApiError::new(
                401,
                "missing_api_key",
                "send the publisher API key as `Authorization: Bearer <key>`",
            )),
        }
    }

    /// The name of the publisher key the request carries, if one checks out (history
    /// accepts a publisher key or a subscriber token).
    pub fn publisher_name(&self, headers: &HeaderMap) -> Option<&str> {
        bearer(headers).and_then(|k| self.key_name(k))
    }

    /// The subscriber, from `?token=`, `Authorization: Bearer` or the `herald_token` cookie.
    pub fn subscriber(
        &self,
        headers: &HeaderMap,
        query_token: Option<&str>,
    ) -> Result<Subscriber, ApiError> {
        let token = query_token
            .or_else(|| bearer(headers))
            .or_else(|| cookie(headers, "herald_token"));
        let Some(token) = token else {
            if self.dev {
                return Ok(Subscriber::Anonymous);
            }
            return Err(ApiError::new(
                401,
                "missing_token",
                "a subscriber token is required (?token=, Authorization: Bearer, or cookie herald_token)",
            ));
        };
        let Some(secret) = &self.secret else {
            if self.dev {
                return Ok(Subscriber::Anonymous);
            }
            return Err(ApiError::new(
                401,
                "invalid_token",
                "tokens are not configured",
            ));
        };
        match herald_proto::verify_hs256(token, &secret.0, now_secs()) {
            Ok(c) => Ok(Subscriber::Token(c)),
            Err(TokenError::Expired) => {
                Err(ApiError::new(401, "token_expired", "the token has expired"))
            }
            Err(e) => Err(ApiError::new(401, "invalid_token", e.to_string())),
        }
    }
}

/// Whether the subscriber credential of this request is the `herald_token` cookie (the one
/// a browser attaches by itself, also to requests another site makes it send).
pub fn credential_is_cookie(headers: &HeaderMap, query_token: Option<&str>) -> bool {
    query_token.is_none() && bearer(headers).is_none() && cookie(headers, "herald_token").is_some()
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim())
        .filter(|t| !t.is_empty())
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Whether two secrets are equal, in constant time whatever their lengths (compared as
/// SHA-256 digests).
pub fn same_secret(presented: &str, expected: &str) -> bool {
    bool::from(digest(presented.as_bytes()).ct_eq(&digest(expected.as_bytes())))
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn publisher_keys() {
        let a = Auth::new(
            vec![ApiKey {
                name: "billing".into(),
                key: "k-123456789".into(),
            }],
            None,
            None,
            false,
        );
        let ok = headers(&[("authorization", "Bearer k-123456789")]);
        assert_eq!(a.publisher(&ok).unwrap(), "billing");
        for wrong in ["nope-nope", "k-12345678", "k-1234567890", "K-123456789"] {
            let bad = headers(&[("authorization", &format!("Bearer {wrong}"))]);
            assert_eq!(
                a.publisher(&bad).unwrap_err().code,
                "invalid_api_key",
                "{wrong}"
            );
        }
        assert_eq!(
            a.publisher(&HeaderMap::new()).unwrap_err().code,
            "missing_api_key"
        );
    }

    #[test]
    fn subscriber_token_sources() {
        let secret = b"0123456789abcdef0123".to_vec();
        let a = Auth::new(vec![], Some(Secret(secret.clone())), None, false);
        let claims = Claims {
            sub: "bob".into(),
            channels: vec!["live:*".into()],
            exp: Some(now_secs() + 60),
            nbf: None,
            iat: None,
        };
        let t = herald_proto::sign_hs256(&claims, &secret);
        let from_cookie = headers(&[("cookie", &format!("a=b; herald_token={t}"))]);
        assert!(matches!(
            a.subscriber(&from_cookie, None),
            Ok(Subscriber::Token(_))
        ));
        assert!(a.subscriber(&HeaderMap::new(), Some(&t)).is_ok());
        assert_eq!(
            a.subscriber(&HeaderMap::new(), None).err().unwrap().code,
            "missing_token"
        );
        let expired = herald_proto::sign_hs256(
            &Claims {
                exp: Some(1),
                ..claims
            },
            &secret,
        );
        assert_eq!(
            a.subscriber(&HeaderMap::new(), Some(&expired))
                .err()
                .unwrap()
                .code,
            "token_expired"
        );
    }

    #[test]
    fn metrics_take_the_metrics_token_or_a_publisher_key() {
        let token = Secret(b"scrape-0123456789".to_vec());
        let key = ApiKey {
            name: "ops".into(),
            key: "k-123456789".into(),
        };
        let a = Auth::new(vec![key.clone()], None, Some(&token), false);
        for ok in ["scrape-0123456789", "k-123456789"] {
            let h = headers(&[("authorization", &format!("Bearer {ok}"))]);
            assert!(a.scraper(&h).is_ok(), "{ok}");
        }
        for wrong in ["scrape-012345678", "k-1234567890", "x"] {
            let h = headers(&[("authorization", &format!("Bearer {wrong}"))]);
            assert_eq!(
                a.scraper(&h).unwrap_err().code,
                "invalid_api_key",
                "{wrong}"
            );
        }
        assert_eq!(
            a.scraper(&HeaderMap::new()).unwrap_err().code,
            "missing_api_key"
        );
        let no_token = Auth::new(vec![key], None, None, false);
        let h = headers(&[("authorization", "Bearer scrape-0123456789")]);
        assert!(no_token.scraper(&h).is_err());
        let dev = Auth::new(vec![], None, None, true);
        assert!(dev.scraper(&HeaderMap::new()).is_ok());
    }
}
