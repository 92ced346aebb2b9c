//! Stable storage for a sled database: the two things sled 0.34 does not do for us.
//!
//! - [`DiskSync`]: sled's `flush` ends in `sync_file_range`, which pushes pages to the device
//!   but flushes neither the drive's cache nor the file's size, and it never syncs the large
//!   values it keeps as separate files under `blobs/` nor the directories that name new files.
//!   Data "flushed" that way survives a killed process but not a power cut. [`DiskSync::sync`],
//!   called after every flush, makes it stable: `fdatasync` of the log file, `fsync` of every
//!   blob file written since, and `fsync` of a directory whenever a name appeared in it.
//! - [`Seal`]: a small file beside the database recording how much the daemon has acknowledged
//!   (a [`Mark`]), so that at start a database that lost acknowledged data (truncated, a
//!   damaged page, a deleted file) is noticed instead of silently serving less. It also records
//!   writes that were refused after a failed flush ([`Voided`]), so they cannot come back.
//!
//! What it does not do: it does not open sled, decide what a lost write means for the daemon,
//! or flush sled itself; the caller flushes, then calls [`DiskSync::sync`], then records its
//! [`Mark`].
#![forbid(unsafe_code)]

mod seal;
mod sync;

pub use seal::{Mark, Seal, SealError, Sealed, Voided, MAX_VOIDED};
pub use sync::{DiskSync, SEGMENT_BYTES};

/// Bytes available to this process on the filesystem holding `path`: a daemon stops writing
/// before this reaches zero, since a write that fails for lack of space breaks the database.
pub fn available_bytes(path: &std::path::Path) -> std::io::Result<u64> {
    fs2::available_space(path)
}
