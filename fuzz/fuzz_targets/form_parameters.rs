//! `request.parameters` from a form body (`application/x-www-form-urlencoded`) and a query.
//!
//! Invariants: nothing panics; `apiKey` never reaches the script; a query parameter wins over a
//! form field of the same name; the body counts only for the form content type (in any letter
//! case, with parameters after `;`); every parameter is what `form_urlencoded` decodes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scripts::ScriptRequest;

fuzz_target!(|input: (&str, &str, bool)| {
    let (query, body, with_charset) = input;
    let content_type = if with_charset {
        "Application/X-WWW-Form-URLEncoded; charset=utf-8"
    } else {
        "application/x-www-form-urlencoded"
    };
    let parameters = ScriptRequest::parameters_from(query, Some(content_type), body);
    assert!(!parameters.contains_key("apiKey"));

    let from_query = ScriptRequest::parameters_from(query, None, body);
    let from_body = ScriptRequest::parameters_from("", Some(content_type), body);
    assert_eq!(
        ScriptRequest::parameters_from(query, Some("application/json"), body),
        from_query,
        "a JSON body was read as a form"
    );
    for (name, value) in &parameters {
        let expected = from_query.get(name).or_else(|| from_body.get(name));
        assert_eq!(expected, Some(value), "parameter {name:?}");
    }
    assert!(from_query
        .keys()
        .chain(from_body.keys())
        .all(|name| parameters.contains_key(name)));
    for (name, value) in form_urlencoded::parse(body.as_bytes()) {
        if name != "apiKey" && !from_query.contains_key(name.as_ref()) {
            assert!(
                parameters.contains_key(name.as_ref()),
                "{name:?} = {value:?} lost"
            );
        }
    }
});
