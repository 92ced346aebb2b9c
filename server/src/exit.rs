//! Process exit codes both daemons use, from sysexits(3), so systemd units and scripts can tell a
//! bad config (fix the file) from a runtime failure (look at the logs).
//!
//! What it does NOT do: print or exit; the binaries map their errors to these codes.

/// The configuration is invalid (EX_CONFIG). systemd's `RestartPreventExitStatus=78` stops a
/// restart loop on a broken config.
pub const CONFIG: i32 = 78;
/// Something failed at run time (EX_SOFTWARE).
pub const SOFTWARE: i32 = 70;
/// Stored data is damaged and the daemon will not guess (EX_DATAERR): an operator decides.
pub const DATA: i32 = 65;
/// A temporary failure that a restart clears (EX_TEMPFAIL), such as a store that stopped
/// taking writes.
pub const TEMPFAIL: i32 = 75;
/// The command line or an input file was wrong (EX_USAGE / EX_DATAERR collapsed).
pub const USAGE: i32 = 64;

/// A configuration error that names the file, the key and the reason, as operators need to fix it
/// without reading source code.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {reason}")]
pub struct ConfigError {
    /// The config file (or a file it references).
    pub file: String,
    /// The dotted key path, e.g. `integrations[2].script`.
    pub key: String,
    /// What is wrong and, where useful, what would be right.
    pub reason: String,
}

impl ConfigError {
    /// Build an error for `key` in `file`.
    pub fn new(
        file: impl std::fmt::Display,
        key: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Self {
            file: file.to_string(),
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// The reason to give for a TOML syntax or type error, never empty: the `toml` crate leaves the
/// message empty for some syntax errors (a key with no value at the end of the file), and a
/// config error must always say what is wrong.
pub fn toml_reason(error: &toml::de::Error) -> String {
    match error.message() {
        "" => "malformed TOML here (for example a key without a value)".to_owned(),
        message => message.to_owned(),
    }
}
