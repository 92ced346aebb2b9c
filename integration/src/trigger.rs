//! Trigger parsing: how a `create_event` body becomes the trigger of its one event.
//!
//! Both hosts call [`trigger_from_body`] before they answer 202 (the agent's ingress, the
//! central's hosted integrations), so a body that could never become an event is refused with
//! 400 and the reason, and one accepted can never be refused downstream.
//!
//! What it does not do: store the trigger or run scripts.

/// Interpret a `create_event` body: an object with `properties` is the trigger itself (its
/// `priority`, if not null, must then be LOW, MEDIUM or HIGH in any letter case, as the central
/// requires); any other object becomes the trigger's `properties`. Anything else is refused with
/// the reason.
///
/// Returns the trigger as JSON text. The body is checked in one pass without building a value
/// tree and then embedded as it came, because this runs on every request of the busiest path.
///
/// The check is the one the central applies to every event (`protocol::limits`), so a body
/// accepted here can never be refused there and block the relay.
pub fn trigger_from_body(body: &[u8]) -> Result<String, String> {
    use protocol::limits::{LimitError, MAX_TRIGGER_BYTES};
    let refused = |error: LimitError| match error {
        LimitError::Invalid(reason) => format!("the body is not valid JSON: {reason}"),
        other => format!("the body is outside the limits of an event: {other}"),
    };
    let text =
        std::str::from_utf8(body).map_err(|e| refused(LimitError::Invalid(e.to_string())))?;
    if text.len() + TRIGGER_WRAP_BYTES > MAX_TRIGGER_BYTES {
        return Err(refused(LimitError::TooLarge { bytes: text.len() }));
    }
    let mut reader = serde_json::Deserializer::from_str(text);
    let shape = serde::de::DeserializeSeed::deserialize(body_shape::Shape::TOP, &mut reader)
        .and_then(|shape| reader.end().map(|()| shape))
        .map_err(|e| refused(e.into()))?;
    match shape {
        ("an object", Some("an object"), Err(reason)) => Err(reason),
        ("an object", Some("an object"), Ok(())) => Ok(text.trim().to_owned()),
        ("an object", Some(_), _) => Err("\"properties\" must be a JSON object".into()),
        ("an object", None, _) => {
            let body = text.trim();
            let mut trigger = String::with_capacity(body.len() + TRIGGER_WRAP_BYTES);
            trigger.push_str("{\"properties\":");
            trigger.push_str(body);
            trigger.push('}');
            Ok(trigger)
        }
        (kind, _, _) => Err(format!("the body must be a JSON object, not {kind}")),
    }
}

/// What wrapping a body as `{"properties":...}` adds.
const TRIGGER_WRAP_BYTES: usize = 15;

/// A one-pass check of a body's top-level shape that allocates nothing for the values it skips.
mod body_shape {
    use protocol::limits::Bounded;
    use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
    use std::fmt;

    /// Reads a value completely, checking it against the shared limits (`protocol::limits`), and
    /// answers its JSON kind ("an object", "an array", ...) and, when asked to look, the kind of
    /// its `properties` member and whether its `priority` member is one the central takes (the
    /// last of each, as JSON parsers keep the last of duplicate keys).
    #[derive(Clone, Copy)]
    pub struct Shape {
        look_for_properties: bool,
        bounded: Bounded,
    }

    impl Shape {
        /// For the top level of a body. It counts as one level down, since a body without
        /// `properties` becomes the `properties` of the trigger.
        pub const TOP: Shape = Shape {
            look_for_properties: true,
            bounded: Bounded::top().inner(),
        };
    }

    /// The kind, the kind of `properties` (if looked for and present), and the priority check.
    type Found = (&'static str, Option<&'static str>, Result<(), String>);

    impl<'de> DeserializeSeed<'de> for Shape {
        type Value = Found;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Found, D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Shape {
        type Value = Found;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON value")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Found, A::Error> {
            let inner = self.bounded.nested()?;
            let mut properties = None;
            let mut priority = Ok(());
            let nested = Shape {
                look_for_properties: false,
                bounded: inner,
            };
            while let Some(key) = map.next_key_seed(ReadTopKey)? {
                match key {
                    TopKey::Properties if self.look_for_properties => {
                        properties = Some(map.next_value_seed(nested)?.0);
                    }
                    TopKey::Priority if self.look_for_properties => {
                        priority = map.next_value_seed(Priority(nested))?;
                    }
                    _ => map.next_value_seed(inner)?,
                }
            }
            Ok(("an object", properties, priority))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Found, A::Error> {
            let inner = self.bounded.nested()?;
            while seq.next_element_seed(inner)?.is_some() {}
            Ok(("an array", None, Ok(())))
        }
        fn visit_str<E>(self, _: &str) -> Result<Found, E> {
            Ok(("a string", None, Ok(())))
        }
        fn visit_bool<E>(self, _: bool) -> Result<Found, E> {
            Ok(("a boolean", None, Ok(())))
        }
        fn visit_i64<E>(self, _: i64) -> Result<Found, E> {
            Ok(("a number", None, Ok(())))
        }
        fn visit_u64<E>(self, _: u64) -> Result<Found, E> {
            Ok(("a number", None, Ok(())))
        }
        fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<Found, E> {
            if value.is_finite() {
                Ok(("a number", None, Ok(())))
            } else {
                Err(E::custom("number out of range"))
            }
        }
        fn visit_unit<E>(self) -> Result<Found, E> {
            Ok(("null", None, Ok(())))
        }
    }

    /// A top-level key: the two the check looks at, or another, read without allocating it.
    enum TopKey {
        Properties,
        Priority,
        Other,
    }

    /// Reads a [`TopKey`].
    struct ReadTopKey;

    impl<'de> DeserializeSeed<'de> for ReadTopKey {
        type Value = TopKey;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<TopKey, D::Error> {
            d.deserialize_str(self)
        }
    }

    impl<'de> Visitor<'de> for ReadTopKey {
        type Value = TopKey;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an object key")
        }
        fn visit_str<E>(self, key: &str) -> Result<TopKey, E> {
            Ok(match key {
                "properties" => TopKey::Properties,
                "priority" => TopKey::Priority,
                _ => TopKey::Other,
            })
        }
    }

    /// Reads a trigger's `priority` and answers whether the central takes it (null counts as
    /// absent there); the refusal names what was given. Any other kind of value is read by the
    /// wrapped [`Shape`], so it is checked against the limits like every other value.
    struct Priority(Shape);

    fn not_a_priority(given: &str) -> Result<(), String> {
        Err(format!(
            "\"priority\" must be LOW, MEDIUM or HIGH, not {given}"
        ))
    }

    impl<'de> DeserializeSeed<'de> for Priority {
        type Value = Result<(), String>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Priority {
        type Value = Result<(), String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a priority")
        }
        fn visit_str<E>(self, priority: &str) -> Result<Self::Value, E> {
            let known = ["LOW", "MEDIUM", "HIGH"];
            Ok(
                match known.iter().any(|p| p.eq_ignore_ascii_case(priority)) {
                    true => Ok(()),
                    false => not_a_priority(&format!("{priority:?}")),
                },
            )
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(Ok(()))
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            Ok(not_a_priority(self.0.visit_map(map)?.0))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
            Ok(not_a_priority(self.0.visit_seq(seq)?.0))
        }
        fn visit_bool<E: serde::de::Error>(self, value: bool) -> Result<Self::Value, E> {
            Ok(not_a_priority(self.0.visit_bool(value)?.0))
        }
        fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<Self::Value, E> {
            Ok(not_a_priority(self.0.visit_i64(value)?.0))
        }
        fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<Self::Value, E> {
            Ok(not_a_priority(self.0.visit_u64(value)?.0))
        }
        fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<Self::Value, E> {
            Ok(not_a_priority(self.0.visit_f64(value)?.0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn body_with_properties_is_the_trigger() {
        let t = trigger_from_body(br#"{"properties":{"a":1},"priority":"HIGH"}"#).unwrap();
        let t: Value = serde_json::from_str(&t).unwrap();
        assert_eq!(t, json!({"properties": {"a": 1}, "priority": "HIGH"}));
    }

    /// Found by the `create_event_body` fuzz target: a body with `properties` and a priority the
    /// central refuses got 202 and was dead-lettered later; it is now a 400 with the reason.
    #[test]
    fn a_priority_the_central_refuses_is_refused_at_ingress() {
        for bad in [r#""HIspecGH""#, "3", "true", "[]", r#"{"a":1}"#] {
            let body = format!(r#"{{"properties":{{}},"priority":{bad}}}"#);
            let reason = trigger_from_body(body.as_bytes()).expect_err(&body);
            assert!(reason.contains("LOW, MEDIUM or HIGH"), "{reason}");
        }
        for good in [
            r#""high""#,
            r#""Low""#,
            "null",
            r#""x","priority":"MEDIUM""#,
        ] {
            let body = format!(r#"{{"properties":{{}},"priority":{good}}}"#);
            trigger_from_body(body.as_bytes()).expect(&body);
        }
        // Without `properties` the body is the properties: its priority is just a property.
        trigger_from_body(br#"{"priority":"URGENT"}"#).expect("a property");
    }

    #[test]
    fn other_objects_become_properties() {
        let t = trigger_from_body(br#"{"host":"db1","severity":"critical"}"#).unwrap();
        let t: Value = serde_json::from_str(&t).unwrap();
        assert_eq!(
            t,
            json!({"properties": {"host": "db1", "severity": "critical"}})
        );
    }

    #[test]
    fn non_objects_are_refused_with_the_reason() {
        assert!(trigger_from_body(b"[1,2]")
            .unwrap_err()
            .contains("an array"));
        assert!(trigger_from_body(b"not json")
            .unwrap_err()
            .contains("not valid JSON"));
        assert!(trigger_from_body(br#"{"properties": 3}"#)
            .unwrap_err()
            .contains("properties"));
        assert!(trigger_from_body(b"").is_err());
        assert!(trigger_from_body(b"{} trailing")
            .unwrap_err()
            .contains("not valid JSON"));
        assert!(trigger_from_body(b"\xff")
            .unwrap_err()
            .contains("not valid JSON"));
        assert!(trigger_from_body(b"null").unwrap_err().contains("null"));
        // The last of duplicate keys counts, as for any JSON parser.
        assert!(trigger_from_body(br#"{"properties": {}, "properties": 1}"#).is_err());
        assert!(trigger_from_body(br#"{"properties": 1, "properties": {}}"#).is_ok());
    }
}
