//! The trigger URL's query string: `apiKey` lookup for URL authentication, the `apiKey`-free copy
//! kept for scripts and logs, and the `request.parameters` built from it.
//!
//! Invariants: nothing panics; no `apiKey` survives cleaning or reaches `request.parameters`
//! (however its name is percent-encoded); every other parameter reaches the script with the
//! value URL authentication would read for that name (the first one given).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|query: &str| {
    let cleaned = integration::request::query_without_api_key(query);
    assert_eq!(
        integration::request::query_param(Some(&cleaned), "apiKey"),
        None,
        "apiKey survived cleaning: {query:?} -> {cleaned:?}"
    );
    let parameters = scripts::ScriptRequest::parameters_from(&cleaned, None, "");
    assert!(!parameters.contains_key("apiKey"), "{query:?}");
    for (name, value) in &parameters {
        assert_eq!(
            integration::request::query_param(Some(query), name).as_ref(),
            Some(value),
            "parameter {name:?} of {query:?} changed in cleaning"
        );
    }
    // Cleaning only drops pairs: the parameters seen raw (bar apiKey and nameless pairs) all
    // reach the script.
    let raw = scripts::ScriptRequest::parameters_from(query, None, "");
    let kept = raw.keys().filter(|name| !name.is_empty()).count();
    assert_eq!(parameters.len(), kept, "{query:?} -> {cleaned:?}");
});
