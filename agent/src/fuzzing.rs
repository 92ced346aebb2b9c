//! Doors for the fuzz targets in `fuzz/` to parsers that are private to their modules.
//!
//! Each function only forwards to the real parser, so the fuzzers exercise the code the agent
//! runs, not a copy. It deliberately adds no behaviour and is no API (hidden from the docs);
//! public parsers (`worker::trigger_from_body`, `ingress::query_param`, ...) are fuzzed directly.

use std::collections::HashMap;

/// The OAuth token endpoint's form parser ([`integration::auth`]); the error is its description.
pub fn oauth_form(body: &[u8]) -> Result<HashMap<String, String>, String> {
    integration::auth::parse_form(body).map_err(|error| error.to_string())
}

/// The relay's reading of the central's first frame ([`crate::relay`]): `Ok` for a `welcome`
/// of this protocol version, else the reason the connection would be dropped.
pub fn welcome(text: &str, agent_id: &str) -> Result<(), String> {
    crate::relay::parse_welcome(text, agent_id)
        .map(|_| ())
        .map_err(|error| error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oauth_form_forwards_to_the_token_endpoints_parser() {
        let form = oauth_form(b"grant_type=password&username=a%20b").expect("a valid form");
        assert_eq!(form["username"], "a b");
        let repeated = oauth_form(b"a=1&a=2").expect_err("a repeated parameter");
        assert!(repeated.contains("more than once"), "{repeated}");
    }

    #[test]
    fn welcome_forwards_to_the_relays_reader() {
        let version = protocol::PROTOCOL_VERSION;
        welcome(
            &format!(r#"{{"type":"welcome","version":{version},"agentId":"a"}}"#),
            "a",
        )
        .expect("a welcome");
        let ack = welcome(r#"{"type":"ack","seq":1,"eventId":"e"}"#, "a").expect_err("an ack");
        assert!(ack.contains("expected welcome"), "{ack}");
    }
}
