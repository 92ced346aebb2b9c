//! The reference xMatters-compatible central endpoint.
//!
//! It also hosts the small server plumbing both daemons share ([`serve`], [`http_util`],
//! [`telemetry`], [`exit`]): `xmagent` depends on this crate anyway to embed a central in
//! `xmagent dev`, so the plumbing is written once here.
#![forbid(unsafe_code)]

pub mod exit;
pub mod http_util;
pub mod serve;
pub mod telemetry;
