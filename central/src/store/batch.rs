//! The value format of one stored batch: every event one `create_batch` call wrote, with the
//! keys the store looks events up by, in a single sled value.
//!
//! Layout (integers big-endian):
//! - one byte: the format, [`FORMAT`];
//! - the event count (u32);
//! - per event: its id (16 bytes), its index (u32), then the agent id and the request id, each a
//!   u32 length and UTF-8 bytes, then the length of its JSON (u32);
//! - the events' JSON, one after the other, in the same order.
//!
//! The heads come first so that opening the store (which rebuilds the request index) and
//! listing pages it skips read only a few bytes of each event.
//!
//! What it does not do: know about keys, the index or JSON content; decoding never trusts a
//! length it has not checked against the bytes it has.

/// The first byte of every batch value. Every event id of a batch is at least the batch's key
/// and below the next batch's key, so the store finds an event by the last batch key at or below
/// its id.
pub const FORMAT: u8 = 1;

/// One event of a batch, borrowed from its encoded value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    /// The event id (a UUID as an integer).
    pub id: u128,
    /// Position among the events of the request.
    pub index: u32,
    /// The agent that created it.
    pub agent_id: &'a str,
    /// The agent's request id.
    pub request_id: &'a str,
    /// The event as REST returns it.
    pub json: &'a [u8],
}

/// A decoded batch: its events in write order.
#[derive(Debug, PartialEq, Eq)]
pub struct Batch<'a> {
    /// The events, in the order they were written.
    pub entries: Vec<Entry<'a>>,
}

/// Builds a batch value; heads and bodies grow side by side and are joined once at the end.
#[derive(Default)]
pub struct Encoder {
    heads: Vec<u8>,
    bodies: Vec<u8>,
    count: u32,
}

/// Append `text` as a u32 length and its bytes (also the old layouts' request keys).
pub(super) fn put_text(out: &mut Vec<u8>, text: &str) {
    // Agent and request ids arrive in size-limited frames, far below u32::MAX.
    out.extend_from_slice(&(text.len() as u32).to_be_bytes());
    out.extend_from_slice(text.as_bytes());
}

impl Encoder {
    /// Append one event.
    pub fn push(&mut self, entry: &Entry<'_>) {
        self.heads.extend_from_slice(&entry.id.to_be_bytes());
        self.heads.extend_from_slice(&entry.index.to_be_bytes());
        put_text(&mut self.heads, entry.agent_id);
        put_text(&mut self.heads, entry.request_id);
        self.heads
            .extend_from_slice(&(entry.json.len() as u32).to_be_bytes());
        self.bodies.extend_from_slice(entry.json);
        self.count += 1;
    }

    /// How many events were pushed.
    pub fn len(&self) -> u32 {
        self.count
    }

    /// The value to store.
    pub fn finish(self) -> Vec<u8> {
        let mut value = Vec::with_capacity(5 + self.heads.len() + self.bodies.len());
        value.push(FORMAT);
        value.extend_from_slice(&self.count.to_be_bytes());
        value.extend_from_slice(&self.heads);
        value.extend_from_slice(&self.bodies);
        value
    }
}

/// Reads the fields of a value front to back, failing on any length that overruns it.
pub(super) struct Reader<'a> {
    /// What is left to read.
    pub rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, len: usize) -> Result<&'a [u8], String> {
        if self.rest.len() < len {
            return Err(format!(
                "truncated: {len} bytes wanted, {} left",
                self.rest.len()
            ));
        }
        let (field, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(field)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let bytes = self.bytes(N)?;
        Ok(<[u8; N]>::try_from(bytes).unwrap_or([0; N]))
    }

    pub fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub fn text(&mut self) -> Result<&'a str, String> {
        let len = self.u32()? as usize;
        std::str::from_utf8(self.bytes(len)?).map_err(|_| "an id is not UTF-8".to_owned())
    }
}

fn read_format(reader: &mut Reader<'_>) -> Result<(), String> {
    match reader.array::<1>()? {
        [FORMAT] => Ok(()),
        [other] => Err(format!("unknown batch format {other}")),
    }
}

/// How many events the batch holds, reading only its first five bytes.
pub fn count(value: &[u8]) -> Result<u32, String> {
    let mut reader = Reader { rest: value };
    read_format(&mut reader)?;
    reader.u32()
}

/// Decode a batch value. Every length is checked; the JSON lengths must cover the rest of the
/// value exactly, so a value cut short or padded is reported rather than half read.
pub fn decode(value: &[u8]) -> Result<Batch<'_>, String> {
    let mut reader = Reader { rest: value };
    read_format(&mut reader)?;
    let count = reader.u32()?;
    // Each head takes at least 32 bytes, so a count the value cannot hold is caught before it
    // sizes an allocation.
    if count as usize > reader.rest.len() / 32 {
        return Err(format!(
            "{count} events cannot fit in {} bytes",
            value.len()
        ));
    }
    let mut heads = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let id = u128::from_be_bytes(reader.array()?);
        let index = reader.u32()?;
        let agent_id = reader.text()?;
        let request_id = reader.text()?;
        let json_len = reader.u32()? as usize;
        heads.push((id, index, agent_id, request_id, json_len));
    }
    let mut entries = Vec::with_capacity(heads.len());
    for (id, index, agent_id, request_id, json_len) in heads {
        entries.push(Entry {
            id,
            index,
            agent_id,
            request_id,
            json: reader.bytes(json_len)?,
        });
    }
    if !reader.rest.is_empty() {
        return Err(format!("{} bytes after the last event", reader.rest.len()));
    }
    Ok(Batch { entries })
}

/// The same batch with the JSON of the event at `position` replaced.
pub fn replace_json(batch: &Batch<'_>, position: usize, json: &[u8]) -> Vec<u8> {
    let mut encoder = Encoder::default();
    for (at, entry) in batch.entries.iter().enumerate() {
        if at == position {
            encoder.push(&Entry { json, ..*entry });
        } else {
            encoder.push(entry);
        }
    }
    encoder.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry_strategy() -> impl Strategy<Value = (u128, u32, String, String, Vec<u8>)> {
        (
            any::<u128>(),
            any::<u32>(),
            ".{0,12}",
            ".{0,40}",
            proptest::collection::vec(any::<u8>(), 0..200),
        )
    }

    fn encode(entries: &[(u128, u32, String, String, Vec<u8>)]) -> Vec<u8> {
        let mut encoder = Encoder::default();
        for (id, index, agent_id, request_id, json) in entries {
            encoder.push(&Entry {
                id: *id,
                index: *index,
                agent_id,
                request_id,
                json,
            });
        }
        assert_eq!(encoder.len() as usize, entries.len());
        encoder.finish()
    }

    proptest! {
        #[test]
        fn decode_returns_what_was_encoded(
            entries in proptest::collection::vec(entry_strategy(), 0..20),
        ) {
            let value = encode(&entries);
            prop_assert_eq!(count(&value), Ok(entries.len() as u32));
            let batch = decode(&value).expect("decodes");
            prop_assert_eq!(batch.entries.len(), entries.len());
            for (got, (id, index, agent_id, request_id, json)) in batch.entries.iter().zip(&entries) {
                prop_assert_eq!(got.id, *id);
                prop_assert_eq!(got.index, *index);
                prop_assert_eq!(got.agent_id, agent_id.as_str());
                prop_assert_eq!(got.request_id, request_id.as_str());
                prop_assert_eq!(got.json, json.as_slice());
            }
        }

        /// A value cut anywhere, or with bytes appended, is an error, never a shorter batch.
        #[test]
        fn a_cut_or_padded_value_is_rejected(
            entries in proptest::collection::vec(entry_strategy(), 1..6),
            extra in proptest::collection::vec(any::<u8>(), 1..8),
        ) {
            let value = encode(&entries);
            for cut in 0..value.len() {
                prop_assert!(decode(&value[..cut]).is_err(), "cut at {}", cut);
            }
            let mut padded = value.clone();
            padded.extend_from_slice(&extra);
            prop_assert!(decode(&padded).is_err());
        }

        /// Arbitrary bytes never panic the decoder.
        #[test]
        fn arbitrary_bytes_never_panic(value in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(&value);
            let _ = count(&value);
        }
    }

    #[test]
    fn replace_json_changes_one_event_only() {
        let entries = vec![
            (7, 0, "a".to_owned(), "r".to_owned(), b"{\"n\":0}".to_vec()),
            (8, 1, "a".to_owned(), "r".to_owned(), b"{\"n\":1}".to_vec()),
        ];
        let value = encode(&entries);
        let batch = decode(&value).expect("decodes");
        let replaced = replace_json(&batch, 1, b"{\"n\":\"new\"}");
        let after = decode(&replaced).expect("decodes");
        assert_eq!(after.entries[0], batch.entries[0]);
        assert_eq!(after.entries[1].json, b"{\"n\":\"new\"}");
        assert_eq!(after.entries[1].id, 8);
    }

    #[test]
    fn unknown_format_and_impossible_counts_are_reported() {
        assert!(decode(&[9, 0, 0, 0, 0])
            .expect_err("format")
            .contains("format 9"));
        let huge = [1, 0xff, 0xff, 0xff, 0xff, 0, 0, 0];
        assert!(decode(&huge).expect_err("count").contains("cannot fit"));
        assert_eq!(decode(&[1, 0, 0, 0, 0]).expect("empty").entries, []);
    }
}
