//! One set of limits on event JSON that the agent checks before it accepts and the central
//! checks before it creates, so that nothing the agent acknowledged can be refused downstream.
//!
//! Without a shared rule, a body the agent took with a 202 (a number like `1e99999`, an array
//! nested 130 levels deep, a lone UTF-16 surrogate) could be unreadable for the central's JSON
//! parser, and the frame carrying it would be resent forever, blocking every event behind it.
//! [`check_json`] reads a JSON text fully, the way the central will, and refuses what either
//! side could not take: numbers outside the range of an `f64`, nesting deeper than
//! [`MAX_DEPTH`], invalid escapes or surrogates, and text over [`MAX_TRIGGER_BYTES`].
//!
//! What it does not do: it does not decide status codes or how a refusal is reported (400 at
//! ingress, a failed script run, a non-retryable reject at the central); it only says why.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// Deepest nesting of objects and arrays in a trigger. serde_json refuses more than 128 levels
/// in a whole frame; a trigger sits three levels down in it, so 64 leaves room to spare.
pub const MAX_DEPTH: usize = 64;

/// Largest trigger text (compact JSON) in one `event.create` frame.
pub const MAX_TRIGGER_BYTES: usize = 4 * 1024 * 1024;

/// Largest short text member of a frame (request id, integration id, form name).
pub const MAX_NAME_BYTES: usize = 1024;

/// Largest websocket message the central reads; a frame within the limits above always fits.
pub const MAX_FRAME_BYTES: usize = MAX_TRIGGER_BYTES + 3 * MAX_NAME_BYTES + 1024;

/// Why a JSON text is outside the shared limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitError {
    /// The text is larger than [`MAX_TRIGGER_BYTES`].
    TooLarge { bytes: usize },
    /// Objects and arrays nest deeper than [`MAX_DEPTH`].
    TooDeep,
    /// Not JSON the central can read: syntax, a number out of range, an invalid escape or
    /// surrogate. Carries the parser's message, which names the line and column.
    Invalid(String),
}

impl fmt::Display for LimitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LimitError::TooLarge { bytes } => write!(
                f,
                "the event is {bytes} bytes of JSON, more than the limit of {MAX_TRIGGER_BYTES}"
            ),
            LimitError::TooDeep => write!(
                f,
                "objects and arrays are nested deeper than the limit of {MAX_DEPTH} levels"
            ),
            LimitError::Invalid(reason) => write!(f, "{reason}"),
        }
    }
}

impl std::error::Error for LimitError {}

/// Check a whole JSON text against the shared limits (see the module docs).
pub fn check_json(text: &str) -> Result<(), LimitError> {
    if text.len() > MAX_TRIGGER_BYTES {
        return Err(LimitError::TooLarge { bytes: text.len() });
    }
    let mut reader = serde_json::Deserializer::from_str(text);
    Bounded::top()
        .deserialize(&mut reader)
        .and_then(|()| reader.end())
        .map_err(LimitError::from)
}

/// Check a value already in memory against the shared limits, without writing or reading its
/// text: a `Value` holds only finite numbers and valid strings by construction, so what is left
/// is the nesting (walked, never deeper than [`MAX_DEPTH`]) and the size of its compact JSON
/// (counted, stopping at the limit). Agrees with [`check_json`] of the value's text.
pub fn check_value(value: &serde_json::Value) -> Result<(), LimitError> {
    fn within_depth(value: &serde_json::Value, depth: usize) -> bool {
        use serde_json::Value::{Array, Object};
        match value {
            Array(items) => depth < MAX_DEPTH && items.iter().all(|v| within_depth(v, depth + 1)),
            Object(map) => depth < MAX_DEPTH && map.values().all(|v| within_depth(v, depth + 1)),
            _ => true,
        }
    }
    if !within_depth(value, 0) {
        return Err(LimitError::TooDeep);
    }
    let mut counter = ByteCount(0);
    match serde_json::to_writer(&mut counter, value) {
        Ok(()) => Ok(()),
        Err(_) => Err(LimitError::TooLarge { bytes: counter.0 }),
    }
}

/// Counts what is written and refuses to go past [`MAX_TRIGGER_BYTES`].
struct ByteCount(usize);

impl std::io::Write for ByteCount {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0 += bytes.len();
        if self.0 > MAX_TRIGGER_BYTES {
            return Err(std::io::Error::other("over the limit"));
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// For readers that embed [`Bounded`] in their own pass: the depth refusal comes back as a
/// serde error, recognised here by its own message.
impl From<serde_json::Error> for LimitError {
    fn from(error: serde_json::Error) -> Self {
        let message = error.to_string();
        if message.starts_with(TOO_DEEP) {
            LimitError::TooDeep
        } else {
            LimitError::Invalid(message)
        }
    }
}

const TOO_DEEP: &str = "nested too deep";

/// A `DeserializeSeed` that reads one JSON value completely (so numbers are converted and range
/// checked, strings unescaped and surrogates checked) without keeping any of it, and refuses
/// nesting deeper than [`MAX_DEPTH`]. Other readers embed it for the values they skip, so one
/// pass both shapes and checks a body.
#[derive(Clone, Copy, Debug)]
pub struct Bounded {
    depth: usize,
}

impl Bounded {
    /// For a value at the top of a trigger.
    pub const fn top() -> Self {
        Bounded { depth: 0 }
    }

    /// For a value nested one level below this one, without checking the depth yet (a reader
    /// that wraps a body in one more object starts its values here).
    pub const fn inner(self) -> Self {
        Bounded {
            depth: self.depth + 1,
        }
    }

    /// For the members of an object or array at this level: refused when that nests deeper
    /// than [`MAX_DEPTH`].
    pub fn nested<E: serde::de::Error>(self) -> Result<Self, E> {
        if self.depth >= MAX_DEPTH {
            Err(E::custom(format_args!(
                "{TOO_DEEP}: more than {MAX_DEPTH} levels"
            )))
        } else {
            Ok(self.inner())
        }
    }
}

impl<'de> DeserializeSeed<'de> for Bounded {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Bounded {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<(), E> {
        if value.is_finite() {
            Ok(())
        } else {
            Err(E::custom("number out of range"))
        }
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let inner = self.nested()?;
        while seq.next_element_seed(inner)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let inner = self.nested()?;
        while map.next_key_seed(inner)?.is_some() {
            map.next_value_seed(inner)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn nested(depth: usize) -> String {
        format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn each_poison_is_refused_with_its_reason() {
        for (text, expected) in [
            (r#"{"a": 1e99999}"#, "number out of range"),
            (r#"{"a": -1e400}"#, "number out of range"),
            (r#"{"a": "\ud800"}"#, "escape"),
            (r#"{"a": "\ud800\u0041"}"#, "surrogate"),
            (r#"{"a": "\udc00x"}"#, "surrogate"),
            (r#"{"a": "\x"}"#, "escape"),
            (r#"{"a": 1"#, "EOF"),
            (r#"{"a": 1} x"#, "trailing"),
        ] {
            let error = check_json(text).unwrap_err().to_string();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }

    #[test]
    fn nesting_is_allowed_up_to_the_limit_and_refused_beyond() {
        assert_eq!(check_json(&nested(MAX_DEPTH)), Ok(()));
        assert_eq!(check_json(&nested(MAX_DEPTH + 1)), Err(LimitError::TooDeep));
        // Far beyond serde_json's own recursion limit: still our clear refusal.
        assert_eq!(check_json(&nested(5000)), Err(LimitError::TooDeep));
        let objects = format!("{}1{}", r#"{"a":"#.repeat(MAX_DEPTH + 1), "}".repeat(65));
        assert_eq!(check_json(&objects), Err(LimitError::TooDeep));
    }

    #[test]
    fn a_large_value_is_refused_without_writing_it_all() {
        let big = serde_json::json!({ "a": "x".repeat(MAX_TRIGGER_BYTES) });
        assert!(matches!(
            check_value(&big),
            Err(LimitError::TooLarge { .. })
        ));
        let fits = serde_json::json!({ "a": "x".repeat(MAX_TRIGGER_BYTES - 10) });
        assert_eq!(check_value(&fits), Ok(()));
    }

    #[test]
    fn size_is_bounded() {
        let big = format!(r#"{{"a":"{}"}}"#, "x".repeat(MAX_TRIGGER_BYTES));
        assert!(matches!(check_json(&big), Err(LimitError::TooLarge { .. })));
        let fits = format!(r#"{{"a":"{}"}}"#, "x".repeat(MAX_TRIGGER_BYTES - 10));
        assert_eq!(check_json(&fits), Ok(()));
    }

    #[test]
    fn ordinary_json_passes() {
        for text in [
            r#"{"properties": {"a": 1, "b": [true, null, 1.5e300, -0, "é\u00e9\ud83d\ude00"]}}"#,
            "123456789012345678901234567890",
            "[]",
            r#""just a string""#,
        ] {
            assert_eq!(check_json(text), Ok(()), "{text}");
        }
    }

    proptest! {
        /// Whatever the check accepts, serde_json reads into a `Value` (what the central does
        /// with a frame), and the value re-encodes to text the check accepts again.
        #[test]
        fn accepted_text_is_readable_by_the_central(text in "[\\[\\]{}\":,0-9a-z.eE+\\-\\\\u ]{0,80}") {
            if check_json(&text).is_ok() {
                let value: serde_json::Value = serde_json::from_str(&text).unwrap();
                prop_assert_eq!(check_json(&value.to_string()), Ok(()));
            }
        }

        /// Checking a value in memory and checking its text say the same.
        #[test]
        fn a_value_and_its_text_are_judged_alike(depth in 0usize..(MAX_DEPTH + 3), width in 1usize..4, leaf in "[a-z\u{e9}\u{1f600}]{0,6}") {
            let mut value = serde_json::Value::String(leaf);
            for level in 0..depth {
                // Wide only at the bottom, so the value stays small at any depth.
                let copies = if level == 0 { width } else { 1 };
                value = if level % 2 == 0 {
                    serde_json::Value::Array(vec![value; copies])
                } else {
                    serde_json::json!({ "k": value })
                };
            }
            prop_assert_eq!(check_value(&value), check_json(&value.to_string()));
        }

        #[test]
        fn any_value_serde_writes_within_depth_is_accepted(depth in 0usize..=MAX_DEPTH, leaf in any::<f64>()) {
            let leaf = if leaf.is_finite() { leaf.to_string() } else { "0".into() };
            let text = format!("{}{}{}", "[".repeat(depth), leaf, "]".repeat(depth));
            prop_assert_eq!(check_json(&text), Ok(()));
        }
    }
}
