//! `autoEncodeURI`: make a script-supplied path safe to put in a request line.

/// Percent-encode what `encodeURI` would encode, but keep existing `%XX` escapes, so a path a
/// script already encoded (for example with `encodeURIComponent`) is not encoded twice.
pub(crate) fn encode_uri(path: &str) -> String {
    const KEEP: &[u8] = b";/?:@&=+$,-_.!~*'()#";
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let is_escape = b == b'%'
            && bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
            && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit);
        if b.is_ascii_alphanumeric() || KEEP.contains(&b) || is_escape {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::encode_uri;

    #[test]
    fn keeps_reserved_and_existing_escapes() {
        assert_eq!(
            encode_uri("/api/xm/1/events?status=ACTIVE&propertyName=incidentId%23en"),
            "/api/xm/1/events?status=ACTIVE&propertyName=incidentId%23en"
        );
    }

    #[test]
    fn encodes_spaces_unicode_and_stray_percent() {
        assert_eq!(encode_uri("/a b/ü?x=100%"), "/a%20b/%C3%BC?x=100%25");
    }
}
