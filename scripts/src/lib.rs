//! The sandboxed QuickJS runtime and the xMatters script API.
#![forbid(unsafe_code)]

pub mod dry_run;
