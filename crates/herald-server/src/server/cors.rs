//! CORS for browser apps on other origins: EventSource (with credentials for the cookie
//! token) and publish from an admin page (preflight).

use super::body::ResponseBody;
use http::{HeaderValue, Response};

pub struct Cors {
    origins: Vec<String>,
    any: bool,
}

impl Cors {
    pub fn new(origins: &[String]) -> Self {
        Self {
            any: origins.iter().any(|o| o == "*"),
            origins: origins
                .iter()
                .map(|o| o.trim_end_matches('/').to_owned())
                .collect(),
        }
    }

    pub fn allows(&self, origin: &str) -> bool {
        self.any || self.listed(origin)
    }

    /// Whether pages on `origin` may act with the user's cookie: only origins named in the
    /// list. `*` lets any page read what its own token (`?token=`, `Authorization`) allows,
    /// never with the cookie, or any site could read a logged-in user's streams.
    pub fn listed(&self, origin: &str) -> bool {
        self.origins.iter().any(|o| o == origin)
    }

    /// The CORS headers for a request from `origin`: none unless the origin is allowed. A
    /// listed origin is echoed with credentials allowed; any other origin under `*` gets
    /// `*`, which browsers never combine with credentials.
    pub fn header_lines(&self, origin: Option<&HeaderValue>) -> Vec<(&'static str, HeaderValue)> {
        let Some(origin) = origin else {
            return Vec::new();
        };
        let Ok(name) = origin.to_str() else {
            return Vec::new();
        };
        let expose = (
            "access-control-expose-headers",
            HeaderValue::from_static("Retry-After"),
        );
        let vary = ("vary", HeaderValue::from_static("Origin"));
        if self.listed(name) {
            vec![
                ("access-control-allow-origin", origin.clone()),
                (
                    "access-control-allow-credentials",
                    HeaderValue::from_static("true"),
                ),
                expose,
                vary,
            ]
        } else if self.any {
            vec![
                ("access-control-allow-origin", HeaderValue::from_static("*")),
                expose,
                vary,
            ]
        } else {
            Vec::new()
        }
    }

    /// Adds the CORS headers for an allowed origin.
    pub fn apply(&self, origin: Option<&HeaderValue>, resp: &mut Response<ResponseBody>) {
        let lines = self.header_lines(origin);
        let h = resp.headers_mut();
        if lines.is_empty() {
            h.append(http::header::VARY, HeaderValue::from_static("Origin"));
        }
        for (k, v) in lines {
            h.insert(k, v);
        }
    }

    /// Preflight answer for an allowed origin.
    pub fn preflight(&self) -> Response<ResponseBody> {
        let mut resp = Response::new(ResponseBody::empty());
        *resp.status_mut() = http::StatusCode::NO_CONTENT;
        let h = resp.headers_mut();
        h.insert(
            http::header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, OPTIONS"),
        );
        h.insert(
            http::header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("Authorization, Content-Type, Last-Event-ID, Cache-Control"),
        );
        h.insert(
            http::header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_origins_get_headers() {
        let c = Cors::new(&["http://app.example".to_owned()]);
        let mut r = Response::new(ResponseBody::empty());
        c.apply(
            Some(&HeaderValue::from_static("http://evil.example")),
            &mut r,
        );
        assert!(r.headers().get("access-control-allow-origin").is_none());
        c.apply(
            Some(&HeaderValue::from_static("http://app.example")),
            &mut r,
        );
        assert_eq!(
            r.headers().get("access-control-allow-origin").unwrap(),
            "http://app.example"
        );
    }

    #[test]
    fn any_origin_never_gets_credentials() {
        let c = Cors::new(&["*".to_owned(), "http://app.example".to_owned()]);
        let evil = c.header_lines(Some(&HeaderValue::from_static("http://evil.example")));
        let get = |lines: &[(&str, HeaderValue)], k: &str| {
            lines.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
        };
        assert_eq!(get(&evil, "access-control-allow-origin").unwrap(), "*");
        assert!(get(&evil, "access-control-allow-credentials").is_none());
        assert!(!c.listed("http://evil.example") && c.allows("http://evil.example"));
        let app = c.header_lines(Some(&HeaderValue::from_static("http://app.example")));
        assert_eq!(
            get(&app, "access-control-allow-origin").unwrap(),
            "http://app.example"
        );
        assert_eq!(
            get(&app, "access-control-allow-credentials").unwrap(),
            "true"
        );
    }
}
