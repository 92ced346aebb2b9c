//! The central's config loader (`central::config::parse`, TOML text).
//!
//! Invariants: nothing panics on any text; a refusal names the file, a key and a reason
//! (operators fix configs from that message alone).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    match central::config::parse(text, "fuzz.toml", Path::new("/nonexistent-fuzz-base")) {
        Ok(config) => assert!(config.data_dir.starts_with("/") || config.data_dir.is_relative()),
        Err(error) => {
            assert_eq!(error.file, "fuzz.toml");
            assert!(!error.key.is_empty(), "no key in: {error}");
            assert!(!error.reason.is_empty(), "no reason in: {error}");
        }
    }
});
