//! Test harness: start the real binaries on loopback.
