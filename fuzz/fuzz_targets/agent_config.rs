//! The agent's config loader (`agent::config::load`, and `data_dir` for the admin commands),
//! given the fuzzed TOML as a file in an otherwise empty directory.
//!
//! Invariants: nothing panics on any text; a refusal names a file, a key and a reason; a
//! config the full loader accepts also gives the admin commands the same data directory.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

/// One directory for the whole run; the file is rewritten for every input.
fn config_path() -> &'static PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = DIR.get_or_init(|| tempfile::tempdir().expect("a temporary directory"));
        dir.path().join("agent.toml")
    })
}

fuzz_target!(|text: &str| {
    let path = config_path();
    std::fs::write(path, text).expect("write the config");
    match agent::config::load(path) {
        Ok(loaded) => {
            let data_dir = agent::config::data_dir(path).expect("the admin commands read it too");
            assert_eq!(data_dir, loaded.data_dir);
        }
        Err(error) => {
            // The config itself or a file it names (a script, a secret file).
            assert!(!error.file.is_empty(), "no file in: {error}");
            assert!(!error.key.is_empty(), "no key in: {error}");
            assert!(!error.reason.is_empty(), "no reason in: {error}");
        }
    }
    let _ = agent::config::data_dir(path);
});
