//! The OAuth token endpoint's form body (`POST /api/xm/1/oauth2/token`).
//!
//! Invariants: nothing panics; a form is refused exactly when a parameter name repeats (RFC 6749
//! §3.2), with a message naming that; an accepted form holds every pair as `form_urlencoded`
//! decodes it and survives re-encoding unchanged.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(body)
        .map(|(name, value)| (name.into_owned(), value.into_owned()))
        .collect();
    let mut names: Vec<&str> = pairs.iter().map(|(name, _)| name.as_str()).collect();
    names.sort_unstable();
    let repeated = names.windows(2).any(|pair| pair[0] == pair[1]);

    match agent::fuzzing::oauth_form(body) {
        Ok(form) => {
            assert!(!repeated, "a repeated parameter was accepted: {body:?}");
            let expected: HashMap<String, String> = pairs.into_iter().collect();
            assert_eq!(form, expected);
            let encoded = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(form.iter())
                .finish();
            assert_eq!(agent::fuzzing::oauth_form(encoded.as_bytes()), Ok(form));
        }
        Err(message) => {
            assert!(repeated, "refused without a repeat: {message}");
            assert!(message.contains("more than once"), "{message}");
        }
    }
});
