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
        self.any || self.origins.iter().any(|o| o == origin)
    }

    /// The CORS headers for a request from `origin`: none unless the origin is allowed. The
    /// origin is echoed (never `*`) because credentials are allowed.
    pub fn header_lines(&self, origin: Option<&HeaderValue>) -> Vec<(&'static str, HeaderValue)> {
        let Some(origin) = origin else {
            return Vec::new();
        };
        let allowed = origin.to_str().is_ok_and(|o| self.allows(o));
        if !allowed {
            return Vec::new();
        }
        vec![
            ("access-control-allow-origin", origin.clone()),
            (
                "access-control-allow-credentials",
                HeaderValue::from_static("true"),
            ),
            (
                "access-control-expose-headers",
                HeaderValue::from_static("Retry-After"),
            ),
            ("vary", HeaderValue::from_static("Origin")),
        ]
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
}
