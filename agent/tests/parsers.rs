//! Property tests for everything that parses untrusted input on the way in: the trigger body, the
//! query string, Basic credentials and websocket frames. They must never panic, and what they
//! accept must mean what the caller sent.

use proptest::prelude::*;
use serde_json::{json, Value};

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn trigger_parser_never_panics_on_bytes(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = integration::trigger::trigger_from_body(&body);
    }

    #[test]
    fn any_object_is_accepted_and_kept(value in json_value()) {
        let body = serde_json::to_vec(&value).unwrap();
        let parsed = integration::trigger::trigger_from_body(&body)
            .map(|text| serde_json::from_str::<Value>(&text).expect("the trigger text is JSON"));
        match (&value, parsed) {
            (Value::Object(object), Ok(trigger)) if object.contains_key("properties") => {
                prop_assert_eq!(&trigger, &value);
            }
            (Value::Object(_), Ok(trigger)) => prop_assert_eq!(&trigger, &json!({"properties": value})),
            (Value::Object(object), Err(reason)) => {
                // Only a non-object `properties` is refused among objects.
                prop_assert!(!object["properties"].is_object(), "{}", reason);
            }
            (_, result) => prop_assert!(result.is_err(), "a non-object body was accepted"),
        }
    }

    #[test]
    fn api_key_never_survives_query_cleaning(
        pairs in prop::collection::vec(("(apiKey|apiKe%79|api%4Bey|a|b|api|apikey)", "[a-z0-9%=+]{0,6}"), 0..6)
    ) {
        let query = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&");
        let cleaned = integration::request::query_without_api_key(&query);
        prop_assert!(integration::request::query_param(Some(&cleaned), "apiKey").is_none());
        let kept = pairs.iter().filter(|(k, _)| !["apiKey", "apiKe%79", "api%4Bey"].contains(&k.as_str())).count();
        prop_assert_eq!(cleaned.split('&').filter(|p| !p.is_empty()).count(), kept);
    }

    #[test]
    fn basic_credentials_never_panic_and_round_trip(user in "[^:]{0,16}", password in ".{0,16}", junk in ".{0,40}") {
        use base64::Engine;
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let header = hyper::header::HeaderValue::from_str(&format!("Basic {encoded}")).unwrap();
        prop_assert_eq!(
            server::http_util::basic_credentials(Some(&header)),
            Some((user.clone(), password.clone()))
        );
        if let Ok(garbage) = hyper::header::HeaderValue::from_str(&junk) {
            let _ = server::http_util::basic_credentials(Some(&garbage));
            let _ = server::http_util::bearer_token(Some(&garbage));
        }
    }

    #[test]
    fn frame_decoding_never_panics(text in ".{0,200}", value in json_value()) {
        let _ = serde_json::from_str::<protocol::CentralFrame>(&text);
        let _ = serde_json::from_str::<protocol::AgentFrame>(&text);
        let _ = serde_json::from_value::<protocol::CentralFrame>(value.clone());
        let _ = serde_json::from_value::<protocol::AgentFrame>(value);
    }
}
