//! [`Seal`]: a fixed-size file that records how much a daemon acknowledged, to notice a store that
//! lost it, and which writes it refused after a failed flush, so they never come back.
//!
//! The daemon keeps the same [`Mark`] inside its database, written before each flush, and
//! records it here after the flush and [`crate::DiskSync::sync`] returned. The seal therefore
//! never runs ahead of what the database made durable: at start, a database whose mark is
//! behind the seal's lost acknowledged data, and the difference says how much.
//!
//! The file is written in place at a fixed size, so recording needs no new disk blocks on a
//! full disk (on filesystems that overwrite in place) and a torn write is caught by its
//! checksum.
//!
//! What it does not do: it does not read the database or decide whether a loss is acceptable.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// How much a daemon has made durable and acknowledged: group commits that wrote data, and the
/// entries they wrote. Both only grow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mark {
    /// Flushes that wrote at least one entry.
    pub flushes: u64,
    /// Entries written by those flushes, in all.
    pub entries: u64,
}

impl Mark {
    /// The mark as the daemon stores it inside its database.
    pub fn to_bytes(self) -> [u8; 16] {
        let mut bytes = [0; 16];
        bytes[..8].copy_from_slice(&self.flushes.to_be_bytes());
        bytes[8..].copy_from_slice(&self.entries.to_be_bytes());
        bytes
    }

    /// Read [`Mark::to_bytes`]; `None` for anything else.
    pub fn from_bytes(bytes: &[u8]) -> Option<Mark> {
        let bytes: &[u8; 16] = bytes.try_into().ok()?;
        Some(Mark {
            flushes: u64::from_be_bytes(bytes[..8].try_into().ok()?),
            entries: u64::from_be_bytes(bytes[8..].try_into().ok()?),
        })
    }
}

/// Entries `first..=last` of queue `queue` (the daemon's own numbering) were written by a flush
/// that failed: their writers were told "not accepted", so they must not be served if the
/// database kept them after all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Voided {
    /// Which of the daemon's queues.
    pub queue: u8,
    /// First sequence number refused.
    pub first: u64,
    /// Last sequence number refused.
    pub last: u64,
}

/// Most voided ranges kept; a daemon stops writing after its first failed flush, so a handful
/// per start is all it ever needs.
pub const MAX_VOIDED: usize = 16;

const MAGIC: &[u8; 8] = b"XMSEAL01";
const VOIDED_AT: usize = 25;
const VOIDED_SIZE: usize = 17;
const CHECKSUM_AT: usize = VOIDED_AT + MAX_VOIDED * VOIDED_SIZE;
const FILE_SIZE: usize = 512;

/// Why a seal could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The seal file.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// The file exists but is not a seal this version wrote intact.
    #[error("{path}: not a valid seal file (damaged or written by something else)")]
    Corrupt {
        /// The seal file.
        path: PathBuf,
    },
    /// More refused ranges than [`MAX_VOIDED`] are waiting to be cleared.
    #[error("{path}: too many refused write ranges to record")]
    Full {
        /// The seal file.
        path: PathBuf,
    },
}

/// What the seal file held when it was opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// The last mark recorded.
    pub mark: Mark,
    /// Refused ranges not cleared yet.
    pub voided: Vec<Voided>,
}

/// The seal file of one database; see the module docs.
pub struct Seal {
    path: PathBuf,
    file: File,
    state: Mutex<State>,
}

struct State {
    sealed: Sealed,
    /// When the file was last synced; records in between reach the page cache only.
    synced_at: Instant,
    unsynced: bool,
}

/// A recorded mark reaches the disk within this long: the seal is a detector, and a stale one
/// only misses a loss, it never reports one falsely (it never runs ahead of the database).
const SYNC_EVERY: Duration = Duration::from_secs(1);

impl Seal {
    /// Open the seal at `path`, creating it (empty, synced, with its directory entry) when it
    /// does not exist. Answers what it held, or `None` when it was just created.
    pub fn open(path: &Path) -> Result<(Seal, Option<Sealed>), SealError> {
        let io = |source| SealError::Io {
            path: path.to_owned(),
            source,
        };
        let existed = path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        let held = if existed {
            let mut bytes = Vec::with_capacity(FILE_SIZE);
            file.read_to_end(&mut bytes).map_err(io)?;
            Some(decode(&bytes).ok_or_else(|| SealError::Corrupt {
                path: path.to_owned(),
            })?)
        } else {
            None
        };
        let seal = Seal {
            path: path.to_owned(),
            file,
            state: Mutex::new(State {
                sealed: held.clone().unwrap_or(Sealed {
                    mark: Mark::default(),
                    voided: Vec::new(),
                }),
                synced_at: Instant::now(),
                unsynced: false,
            }),
        };
        if !existed {
            seal.write(true)?;
            if let Some(dir) = path.parent() {
                File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
            }
        }
        Ok((seal, held))
    }

    /// Record `mark` (call after the database made it durable). Reaches the disk within
    /// [`SYNC_EVERY`] or at [`Seal::sync`].
    pub fn record(&self, mark: Mark) -> Result<(), SealError> {
        let sync_now = {
            let mut state = self.lock();
            state.sealed.mark = mark;
            state.synced_at.elapsed() >= SYNC_EVERY
        };
        self.write(sync_now)
    }

    /// Record refused ranges, durably, before the writers hear "not accepted".
    pub fn void(&self, voided: &[Voided]) -> Result<(), SealError> {
        {
            let mut state = self.lock();
            if state.sealed.voided.len() + voided.len() > MAX_VOIDED {
                return Err(SealError::Full {
                    path: self.path.clone(),
                });
            }
            state.sealed.voided.extend_from_slice(voided);
        }
        self.write(true)
    }

    /// Forget the refused ranges (the daemon removed them from its database durably) and set
    /// the mark the database now holds.
    pub fn reset(&self, mark: Mark) -> Result<(), SealError> {
        {
            let mut state = self.lock();
            state.sealed = Sealed {
                mark,
                voided: Vec::new(),
            };
        }
        self.write(true)
    }

    /// Make the last record durable now (shutdown).
    pub fn sync(&self) -> Result<(), SealError> {
        if self.lock().unsynced {
            self.write(true)?;
        }
        Ok(())
    }

    /// The file's path, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self, sync: bool) -> Result<(), SealError> {
        let io = |source| SealError::Io {
            path: self.path.clone(),
            source,
        };
        let mut state = self.lock();
        self.file
            .write_all_at(&encode(&state.sealed), 0)
            .map_err(io)?;
        if sync {
            self.file.sync_data().map_err(io)?;
            state.synced_at = Instant::now();
            state.unsynced = false;
        } else {
            state.unsynced = true;
        }
        Ok(())
    }
}

fn encode(sealed: &Sealed) -> [u8; FILE_SIZE] {
    let mut bytes = [0; FILE_SIZE];
    bytes[..8].copy_from_slice(MAGIC);
    bytes[8..24].copy_from_slice(&sealed.mark.to_bytes());
    bytes[24] = sealed.voided.len() as u8;
    for (i, voided) in sealed.voided.iter().enumerate() {
        let at = VOIDED_AT + i * VOIDED_SIZE;
        bytes[at] = voided.queue;
        bytes[at + 1..at + 9].copy_from_slice(&voided.first.to_be_bytes());
        bytes[at + 9..at + 17].copy_from_slice(&voided.last.to_be_bytes());
    }
    let checksum = Sha256::digest(&bytes[..CHECKSUM_AT]);
    bytes[CHECKSUM_AT..CHECKSUM_AT + 8].copy_from_slice(&checksum[..8]);
    bytes
}

fn decode(bytes: &[u8]) -> Option<Sealed> {
    if bytes.len() != FILE_SIZE || &bytes[..8] != MAGIC {
        return None;
    }
    let checksum = Sha256::digest(&bytes[..CHECKSUM_AT]);
    if bytes[CHECKSUM_AT..CHECKSUM_AT + 8] != checksum[..8] {
        return None;
    }
    let count = usize::from(bytes[24]);
    if count > MAX_VOIDED {
        return None;
    }
    let u64_at = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().unwrap_or_default());
    let voided = (0..count)
        .map(|i| {
            let at = VOIDED_AT + i * VOIDED_SIZE;
            Voided {
                queue: bytes[at],
                first: u64_at(at + 1),
                last: u64_at(at + 9),
            }
        })
        .collect();
    Some(Sealed {
        mark: Mark::from_bytes(&bytes[8..24])?,
        voided,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_new_seal_is_created_and_reopens_with_what_was_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seal");
        let (seal, held) = Seal::open(&path).unwrap();
        assert_eq!(held, None);
        let mark = Mark {
            flushes: 3,
            entries: 70,
        };
        seal.record(mark).unwrap();
        let voided = Voided {
            queue: 1,
            first: 5,
            last: 9,
        };
        seal.void(&[voided]).unwrap();
        drop(seal);
        let (seal, held) = Seal::open(&path).unwrap();
        assert_eq!(
            held,
            Some(Sealed {
                mark,
                voided: vec![voided]
            })
        );
        seal.reset(Mark::default()).unwrap();
        drop(seal);
        let (_, held) = Seal::open(&path).unwrap();
        assert_eq!(held.unwrap().voided, vec![]);
    }

    #[test]
    fn a_damaged_seal_is_refused_not_guessed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seal");
        Seal::open(&path)
            .unwrap()
            .0
            .record(Mark::default())
            .unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[12] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(Seal::open(&path), Err(SealError::Corrupt { .. })));
        std::fs::write(&path, &bytes[..100]).unwrap();
        assert!(matches!(Seal::open(&path), Err(SealError::Corrupt { .. })));
    }

    #[test]
    fn voided_ranges_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let (seal, _) = Seal::open(&dir.path().join("seal")).unwrap();
        let one = Voided {
            queue: 0,
            first: 1,
            last: 1,
        };
        seal.void(&[one; MAX_VOIDED]).unwrap();
        assert!(matches!(seal.void(&[one]), Err(SealError::Full { .. })));
    }

    proptest! {
        #[test]
        fn encoding_roundtrips(flushes: u64, entries: u64, ranges in proptest::collection::vec((any::<u8>(), any::<u64>(), any::<u64>()), 0..=MAX_VOIDED)) {
            let sealed = Sealed {
                mark: Mark { flushes, entries },
                voided: ranges.into_iter().map(|(queue, first, last)| Voided { queue, first, last }).collect(),
            };
            prop_assert_eq!(decode(&encode(&sealed)), Some(sealed));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode(&bytes);
        }
    }
}
