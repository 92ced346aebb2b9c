//! `Authorization` header parsing for Basic (users and API keys) and Bearer (OAuth tokens and the
//! agent token at the central).
//!
//! Invariants: nothing panics on any header value; what Basic parsing returns is exactly what a
//! client encoding that user and password sends (the user never holds a `:`); a Bearer token is
//! trimmed and round-trips; a header is never both Basic and Bearer.
#![no_main]

use base64::Engine as _;
use server::http_util::{basic_credentials, bearer_token};
use http::HeaderValue;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(header) = HeaderValue::from_bytes(bytes) else {
        return;
    };
    let basic = basic_credentials(Some(&header));
    let bearer = bearer_token(Some(&header));
    assert!(
        basic.is_none() || bearer.is_none(),
        "both schemes: {header:?}"
    );

    if let Some((user, password)) = basic {
        assert!(!user.contains(':'), "user with a colon from {header:?}");
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let again = HeaderValue::from_str(&format!("Basic {encoded}")).expect("base64 is ASCII");
        assert_eq!(basic_credentials(Some(&again)), Some((user, password)));
    }
    if let Some(token) = bearer {
        assert_eq!(token, token.trim(), "untrimmed token from {header:?}");
        if let Ok(again) = HeaderValue::from_str(&format!("Bearer {token}")) {
            assert_eq!(bearer_token(Some(&again)), Some(token));
        }
    }
});
