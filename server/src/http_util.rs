//! Small HTTP helpers both daemons need: JSON and error responses in one shape, bounded body
//! reads, and Basic-credential parsing.
//!
//! What it does NOT do: route, authenticate or decide status codes for a daemon's own errors.

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde::Serialize;

use crate::serve::Body;

/// A full (non-streamed) body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A JSON response with the given status.
pub fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// An error response in the xMatters shape: `{"code": 404, "reason": "Not Found", "message": ...}`.
/// The message is written for the caller and must never contain a secret.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    json(
        status,
        &serde_json::json!({
            "code": status.as_u16(),
            "reason": status.canonical_reason().unwrap_or("Error"),
            "message": message.into(),
        }),
    )
}

/// The longest request target (path and query) either daemon reads; longer ones get 414.
pub const MAX_TARGET_BYTES: usize = 8 * 1024;
/// The most header bytes (names and values) either daemon reads; more get 431. Below hyper's own
/// limit (about 400 KiB), so the answer is ours, with a JSON message.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Refuse a request whose head is malformed or oversized before any handler sees it: HTTP/1.1
/// without `Host` (RFC 9112 §3.2: 400), a target over [`MAX_TARGET_BYTES`] (414), headers over
/// [`MAX_HEADER_BYTES`] (431). Each answer carries a JSON message like every other error.
pub fn check_request_head<B>(request: &hyper::Request<B>) -> Result<(), Box<Response<Body>>> {
    if request.version() == hyper::Version::HTTP_11
        && !request.headers().contains_key(hyper::header::HOST)
    {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "an HTTP/1.1 request must carry a Host header",
        )));
    }
    let target = request
        .uri()
        .path_and_query()
        .map_or(0, |target| target.as_str().len());
    if target > MAX_TARGET_BYTES {
        return Err(Box::new(error(
            StatusCode::URI_TOO_LONG,
            format!("the request target is over {MAX_TARGET_BYTES} bytes"),
        )));
    }
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if header_bytes > MAX_HEADER_BYTES {
        return Err(Box::new(error(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!("the request headers are over {MAX_HEADER_BYTES} bytes"),
        )));
    }
    Ok(())
}

/// "an array", "a string", ...: how error messages describe a JSON value of the wrong kind.
/// [`json_text_kind`] says the same of JSON text.
pub fn json_kind(value: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// [`json_kind`] of a JSON value's text, told by its first byte (no leading whitespace, as
/// serde_json writes it). The central's trigger validation reads triggers as text.
pub fn json_text_kind(text: &[u8]) -> &'static str {
    match text.first() {
        Some(b'n') => "null",
        Some(b't' | b'f') => "a boolean",
        Some(b'"') => "a string",
        Some(b'[') => "an array",
        Some(b'{') => "an object",
        _ => "a number",
    }
}

/// The current time as RFC 3339 UTC with millisecond precision, as xMatters shows `created`;
/// the agent stamps its records the same way.
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    let now = now.replace_millisecond(now.millisecond()).unwrap_or(now);
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| now.unix_timestamp().to_string())
}

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The body exceeded the limit; the caller answers 413.
    #[error("request body is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The configured limit in bytes.
        limit: usize,
    },
    /// The connection failed while the body was being read.
    #[error("could not read the request body: {0}")]
    Io(String),
}

/// Read the whole body, refusing more than `limit` bytes without buffering past it.
pub async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, BodyError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            Err(BodyError::TooLarge { limit })
        }
        Err(error) => Err(BodyError::Io(error.to_string())),
    }
}

/// Parse `Authorization: Basic base64(user:password)`. `None` when the header is absent or not
/// Basic; malformed Basic credentials also give `None` (they can only fail authentication).
pub fn basic_credentials(header: Option<&HeaderValue>) -> Option<(String, String)> {
    let value = header?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// Parse `Authorization: Bearer TOKEN`.
pub fn bearer_token(header: Option<&HeaderValue>) -> Option<String> {
    let value = header?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

/// Compare two secrets in time independent of where they differ. Both sides are hashed first so
/// the comparison does not leak the secret's length either.
pub fn secrets_equal(given: &[u8], expected: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    Sha256::digest(given)
        .ct_eq(&Sha256::digest(expected))
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_heads_are_checked() {
        let request = |version, target: &str, host: bool, header_bytes: usize| {
            let mut builder = hyper::Request::builder().version(version).uri(target);
            if host {
                builder = builder.header("host", "x");
            }
            if header_bytes > 0 {
                builder = builder.header("x-pad", "p".repeat(header_bytes));
            }
            builder.body(()).unwrap()
        };
        let status = |r: &hyper::Request<()>| check_request_head(r).err().map(|e| e.status());
        let v11 = hyper::Version::HTTP_11;
        assert_eq!(status(&request(v11, "/a", true, 0)), None);
        assert_eq!(
            status(&request(hyper::Version::HTTP_10, "/a", false, 0)),
            None,
            "HTTP/1.0 needs no Host"
        );
        assert_eq!(
            status(&request(v11, "/a", false, 0)),
            Some(StatusCode::BAD_REQUEST)
        );
        let long = format!("/a?{}", "q".repeat(MAX_TARGET_BYTES));
        assert_eq!(
            status(&request(v11, &long, true, 0)),
            Some(StatusCode::URI_TOO_LONG)
        );
        assert_eq!(
            status(&request(v11, "/a", true, MAX_HEADER_BYTES)),
            Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        );
    }

    #[test]
    fn basic_credentials_parse_and_reject_garbage() {
        let ok = HeaderValue::from_static("Basic dXNlcjpwYXNzOndvcmQ="); // user:pass:word
        assert_eq!(
            basic_credentials(Some(&ok)),
            Some(("user".into(), "pass:word".into()))
        );
        for bad in ["Basic !!!", "Bearer abc", "Basic", "Basic dXNlcg=="] {
            assert_eq!(
                basic_credentials(Some(&HeaderValue::from_static(bad))),
                None,
                "{bad}"
            );
        }
        assert_eq!(basic_credentials(None), None);
    }

    #[test]
    fn bearer_is_case_insensitive_on_the_scheme() {
        let v = HeaderValue::from_static("bearer tok123");
        assert_eq!(bearer_token(Some(&v)).as_deref(), Some("tok123"));
        assert_eq!(
            bearer_token(Some(&HeaderValue::from_static("Basic x"))),
            None
        );
    }

    #[test]
    fn secrets_equal_only_for_identical_input() {
        assert!(secrets_equal(b"abc", b"abc"));
        assert!(!secrets_equal(b"abc", b"abd"));
        assert!(!secrets_equal(b"abc", b"abcd"));
        assert!(!secrets_equal(b"", b"a"));
    }
}
