//! An inbound request as both hosts keep it: what scripts and the activity stream see of an HTTP
//! trigger, with every credential removed (credential headers redacted, `apiKey` dropped from the
//! query) and its headers bounded.
//!
//! What it does not do: read the body or check credentials (see [`crate::auth`]).

use serde::{Deserialize, Serialize};

use crate::auth::Principal;

/// Who made a request, as recorded for the activity stream.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PrincipalRecord {
    /// The user the request acts as.
    pub user: String,
    /// How it authenticated: `url`, `basic`, `api_key` or `oauth`.
    pub method: String,
}

/// One accepted inbound request, exactly as the worker needs it after a restart.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InboundRequest {
    /// The UUID answered in the 202.
    pub request_id: String,
    /// The integration the URL named.
    pub integration_id: String,
    /// HTTP method (always POST today; kept for scripts).
    pub method: String,
    /// Request headers with credentials redacted, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The raw query string without `apiKey`.
    pub query: String,
    /// The body as text (invalid UTF-8 replaced).
    pub body: String,
    /// The authenticated principal.
    pub principal: PrincipalRecord,
    /// The peer address.
    pub remote_address: String,
    /// RFC 3339 UTC time of acceptance.
    pub received_at: String,
}

impl InboundRequest {
    /// The request as it is kept: `head` with its credentials removed (see the module docs) and
    /// `body` as text (invalid UTF-8 replaced).
    pub fn new(
        request_id: String,
        integration_id: String,
        head: &http::request::Parts,
        body: &[u8],
        principal: PrincipalRecord,
        peer: std::net::IpAddr,
        received_at: String,
    ) -> Self {
        Self {
            request_id,
            integration_id,
            method: head.method.to_string(),
            headers: redacted_headers(&head.headers),
            query: query_without_api_key(head.uri.query().unwrap_or("")),
            body: String::from_utf8_lossy(body).into_owned(),
            principal,
            remote_address: peer.to_string(),
            received_at,
        }
    }
}

/// Headers whose values are credentials: they never reach the store, scripts or logs.
const REDACTED_HEADERS: [&str; 4] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-api-key",
];

/// How many bytes of header names and values a stored request keeps (like the body, what is kept of
/// a request is bounded).
pub const MAX_STORED_HEADER_BYTES: usize = 16 * 1024;
/// The header that replaces those past [`MAX_STORED_HEADER_BYTES`] in a stored request.
pub const OMITTED_HEADERS: &str = "x-xmagent-omitted-headers";

/// The principal as a stored request records it.
pub fn principal_record(principal: &Principal) -> PrincipalRecord {
    let method = serde_json::to_value(principal.method)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    PrincipalRecord {
        user: principal.user.clone(),
        method,
    }
}

/// The request headers as stored (for scripts and the activity stream): credentials redacted, and
/// at most [`MAX_STORED_HEADER_BYTES`] of names and values; the headers past that are replaced by
/// one [`OMITTED_HEADERS`] entry saying how many were left out.
pub fn redacted_headers(headers: &http::HeaderMap) -> Vec<(String, String)> {
    let mut kept = Vec::with_capacity(headers.len());
    let mut bytes = 0;
    let mut omitted = 0usize;
    for (name, value) in headers {
        let value = if REDACTED_HEADERS.contains(&name.as_str()) {
            "<redacted>".to_owned()
        } else {
            String::from_utf8_lossy(value.as_bytes()).into_owned()
        };
        bytes += name.as_str().len() + value.len();
        if bytes > MAX_STORED_HEADER_BYTES {
            omitted += 1;
            continue;
        }
        kept.push((name.as_str().to_owned(), value));
    }
    if omitted > 0 {
        kept.push((
            OMITTED_HEADERS.to_owned(),
            format!(
                "{omitted} headers past the first {MAX_STORED_HEADER_BYTES} bytes were not kept"
            ),
        ));
    }
    kept
}

/// The first value of `name` in a query string, percent-decoded.
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// The query string with every `apiKey` parameter removed (scripts and logs never see it).
pub fn query_without_api_key(query: &str) -> String {
    query
        .split('&')
        .filter(|pair| {
            // Compare the decoded name: `apiKe%79=...` is the same parameter to the auth check.
            match form_urlencoded::parse(pair.as_bytes()).next() {
                Some((name, _)) => !name.is_empty() && name != "apiKey",
                None => false,
            }
        })
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn api_key_never_survives_in_the_query() {
        assert_eq!(query_without_api_key("apiKey=s3cret&a=1&b=2"), "a=1&b=2");
        assert_eq!(query_without_api_key("a=1&apiKey=x&apiKey=y"), "a=1");
        assert_eq!(query_without_api_key("apiKey"), "");
        assert_eq!(query_without_api_key("apikey=keep"), "apikey=keep");
    }

    #[test]
    fn query_param_decodes() {
        assert_eq!(
            query_param(Some("a=1&apiKey=k%2By"), "apiKey").as_deref(),
            Some("k+y")
        );
        assert_eq!(query_param(None, "apiKey"), None);
    }

    #[test]
    fn credentials_are_redacted_from_stored_headers() {
        let mut headers = http::HeaderMap::new();
        headers.insert("authorization", HeaderValue::from_static("Basic c2VjcmV0"));
        headers.insert("x-custom", HeaderValue::from_static("visible"));
        let kept = redacted_headers(&headers);
        assert!(kept.contains(&("authorization".into(), "<redacted>".into())));
        assert!(kept.contains(&("x-custom".into(), "visible".into())));
        assert!(!format!("{kept:?}").contains("c2VjcmV0"));
    }

    #[test]
    fn stored_headers_are_capped() {
        let mut headers = http::HeaderMap::new();
        let big = "v".repeat(1024);
        for i in 0..40 {
            headers.insert(
                http::header::HeaderName::from_bytes(format!("x-h{i}").as_bytes()).unwrap(),
                HeaderValue::from_str(&big).unwrap(),
            );
        }
        let kept = redacted_headers(&headers);
        let bytes: usize = kept.iter().map(|(n, v)| n.len() + v.len()).sum();
        assert!(bytes <= MAX_STORED_HEADER_BYTES + 200, "{bytes} bytes kept");
        let (name, note) = kept.last().unwrap();
        assert_eq!(name, OMITTED_HEADERS);
        assert!(note.starts_with("25 headers"), "{note}");
    }
}
