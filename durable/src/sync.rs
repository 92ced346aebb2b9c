//! [`DiskSync`]: turn a sled flush into data on stable storage.
//!
//! What it does not do: flush sled (the caller does that first) or retry a failed sync. After a
//! failed `fsync` the kernel may already have dropped the dirty pages it could not write, so a
//! second `fsync` that succeeds proves nothing; callers treat the first failure as final.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The segment size both daemons open sled with. sled writes any page over a quarter of a
/// segment to a file of its own (a blob), which [`DiskSync::sync`] must then fsync and list in a
/// synced directory, and whose directory every later sync reads again. With sled's 512 KiB
/// default a group commit of a few dozen requests crossed that line on every flush. sled keeps
/// it in the store's `conf` and refuses to open a store with another size.
pub const SEGMENT_BYTES: usize = 8 << 20;

/// Syncs a sled database directory after sled's own flush (see the crate docs).
pub struct DiskSync {
    dir: PathBuf,
    /// sled's log and page file; `fdatasync` through any descriptor covers the whole inode.
    log: File,
    known: Mutex<Known>,
}

/// Names already made durable in the database directory and in its `blobs/` directory.
#[derive(Default)]
struct Known {
    top: HashSet<OsString>,
    blobs: HashSet<OsString>,
}

/// The file sled 0.34 keeps its log and pages in.
const LOG_FILE: &str = "db";
const BLOBS_DIR: &str = "blobs";

impl DiskSync {
    /// Open the database at `dir` (already opened by sled) for syncing, and make everything that
    /// exists there durable now: the files, their directories, and the directory's own entry in
    /// its parent (sled may just have created it).
    pub fn open(dir: &Path) -> io::Result<DiskSync> {
        let log = File::open(dir.join(LOG_FILE))?;
        let sync = DiskSync {
            dir: dir.to_owned(),
            log,
            known: Mutex::new(Known::default()),
        };
        sync.sync()?;
        if let Some(parent) = dir.parent() {
            sync_dir(parent)?;
        }
        Ok(sync)
    }

    /// Make everything sled flushed so far durable. Call after every successful `flush`.
    pub fn sync(&self) -> io::Result<()> {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        // Blob files first: the log records that point to them are synced just after.
        let blobs = self.dir.join(BLOBS_DIR);
        if sync_new_files(&blobs, &mut known.blobs)? {
            sync_dir(&blobs)?;
        }
        self.log.sync_data()?;
        if sync_new_files(&self.dir, &mut known.top)? {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// The directory this syncs, for messages.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// `fsync` every regular file in `dir` not yet in `known`; forget names that disappeared (sled
/// removes blobs it no longer needs). Answers whether a new name appeared, i.e. whether the
/// directory itself needs a sync. A missing directory holds nothing to sync.
fn sync_new_files(dir: &Path, known: &mut HashSet<OsString>) -> io::Result<bool> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(error) => return Err(error),
    };
    let mut present = HashSet::with_capacity(known.len());
    let mut appeared = false;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        if !known.contains(&name) {
            appeared = true;
            if entry.file_type()?.is_file() {
                File::open(entry.path())?.sync_all()?;
            }
        }
        present.insert(name);
    }
    appeared |= present.len() != known.len();
    *known = present;
    Ok(appeared)
}

/// A directory's entries (names of new, renamed or removed files) are durable only once the
/// directory itself is synced.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_blob_files_and_names_are_tracked_until_they_disappear() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(LOG_FILE), b"log").unwrap();
        let sync = DiskSync::open(dir.path()).unwrap();
        let blobs = dir.path().join(BLOBS_DIR);
        std::fs::create_dir(&blobs).unwrap();
        std::fs::write(blobs.join("17"), b"blob").unwrap();
        sync.sync().unwrap();
        {
            let known = sync.known.lock().unwrap();
            assert!(known.blobs.contains(&OsString::from("17")));
            assert!(known.top.contains(&OsString::from(BLOBS_DIR)));
        }
        // A second sync with nothing new finds nothing new.
        let mut blobs_known = sync.known.lock().unwrap().blobs.clone();
        assert!(!sync_new_files(&blobs, &mut blobs_known).unwrap());
        std::fs::remove_file(blobs.join("17")).unwrap();
        sync.sync().unwrap();
        assert!(sync.known.lock().unwrap().blobs.is_empty());
    }

    #[test]
    fn a_missing_log_file_is_an_error_not_a_silent_success() {
        let dir = tempfile::tempdir().unwrap();
        assert!(DiskSync::open(dir.path()).is_err());
    }
}
