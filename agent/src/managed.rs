//! Integrations defined at the central and run by this agent: the last set the central sent is
//! kept in `data_dir/managed-integrations.json` (written to a temporary file, fsynced, renamed),
//! so the agent serves them while the central is unreachable and after a restart before the
//! relay connects; and they are merged with the `agent.toml` integrations, a local one with the
//! same id winning.
//!
//! The activity entries of these integrations wait in an [`ActivityUplink`] for the relay to
//! report them to the central: bounded, best effort, dropped when full, so ingress and the worker
//! never wait for the central.
//!
//! What it does not do: validate a definition (`integration::definition::managed` does, with the
//! code that checks `agent.toml`) or decide when to apply a set (`daemon`).

use std::collections::{HashMap, VecDeque};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::Notify;

use integration::definition::Integration;
use protocol::ManagedIntegrations;

/// The file in the data directory that holds the central's last accepted set.
const FILE_NAME: &str = "managed-integrations.json";

/// Why the kept set could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ManagedFileError {
    /// The file system refused.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The file is not a set the central sent.
    #[error("{path} is not a set of integrations: {source}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        source: serde_json::Error,
    },
}

/// Where the set is kept in `data_dir`.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// Keep `set` durably, replacing the previous one whole (a crash leaves one or the other).
pub fn save(data_dir: &Path, set: &ManagedIntegrations) -> Result<(), ManagedFileError> {
    let target = path(data_dir);
    let temporary = data_dir.join(format!("{FILE_NAME}.new"));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ManagedFileError::Io { path, source }
    };
    let text = serde_json::to_vec(set).map_err(|source| ManagedFileError::Invalid {
        path: target.clone(),
        source,
    })?;
    let mut file = std::fs::File::create(&temporary).map_err(io(&temporary))?;
    file.write_all(&text).map_err(io(&temporary))?;
    file.sync_all().map_err(io(&temporary))?;
    std::fs::rename(&temporary, &target).map_err(io(&target))?;
    std::fs::File::open(data_dir)
        .and_then(|dir| dir.sync_all())
        .map_err(io(data_dir))
}

/// The set kept by [`save`], `None` when the central never sent one.
pub fn load(data_dir: &Path) -> Result<Option<ManagedIntegrations>, ManagedFileError> {
    let path = path(data_dir);
    let text = match std::fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(ManagedFileError::Io { path, source }),
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|source| ManagedFileError::Invalid { path, source })
}

/// Every integration to serve: `local` ones (`agent.toml`) and `managed` ones, a local one
/// winning over a managed one with the same id (logged, since the central's is then not served).
pub fn merge(
    local: &HashMap<String, Arc<Integration>>,
    managed: &HashMap<String, Arc<Integration>>,
) -> HashMap<String, Arc<Integration>> {
    let mut all = local.clone();
    for (id, integration) in managed {
        if local.contains_key(id) {
            tracing::warn!(integration = %id, "agent.toml defines an integration the central also sends; the local one is served");
        } else {
            all.insert(id.clone(), integration.clone());
        }
    }
    all
}

/// Activity entries waiting to be reported to the central, oldest first, at most
/// [`ActivityUplink::CAPACITY`]: beyond that new entries are dropped (and counted), because the
/// agent's own activity stream keeps them anyway and the worker must never wait for the central.
#[derive(Debug, Default)]
pub struct ActivityUplink {
    entries: Mutex<VecDeque<Value>>,
    ready: Notify,
    dropped: AtomicU64,
}

impl ActivityUplink {
    /// Most entries waiting at once.
    pub const CAPACITY: usize = 1000;

    /// Queue `entry` for the central, or drop it when the queue is full.
    pub fn offer(&self, entry: Value) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= Self::CAPACITY {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        entries.push_back(entry);
        self.ready.notify_one();
    }

    /// Take up to `max` entries, oldest first.
    pub fn take(&self, max: usize) -> Vec<Value> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let n = max.min(entries.len());
        entries.drain(..n).collect()
    }

    /// Resolves when an entry was offered since the last call.
    pub async fn ready(&self) {
        self.ready.notified().await;
    }

    /// Entries dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_uplink_is_bounded_and_keeps_order() {
        let uplink = ActivityUplink::default();
        for i in 0..ActivityUplink::CAPACITY + 5 {
            uplink.offer(Value::from(i));
        }
        assert_eq!(uplink.dropped(), 5);
        uplink.ready().await; // a permit was stored by the offers
        let first = uplink.take(2);
        assert_eq!(first, [Value::from(0), Value::from(1)]);
        assert_eq!(uplink.take(usize::MAX).len(), ActivityUplink::CAPACITY - 2);
        assert!(uplink.take(1).is_empty());
    }

    fn set(version: &str) -> ManagedIntegrations {
        ManagedIntegrations {
            version: version.into(),
            integrations: Vec::new(),
            libraries: Default::default(),
        }
    }

    #[test]
    fn a_saved_set_is_loaded_back_and_replaced_whole() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        assert!(load(dir.path()).expect("no file is no set").is_none());
        save(dir.path(), &set("one")).expect("saved");
        save(dir.path(), &set("two")).expect("saved again");
        assert_eq!(
            load(dir.path()).expect("read").expect("a set").version,
            "two"
        );
    }

    #[test]
    fn a_damaged_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        std::fs::write(path(dir.path()), "{not json").expect("write");
        let error = load(dir.path()).expect_err("refused");
        assert!(error.to_string().contains(FILE_NAME), "{error}");
    }
}
