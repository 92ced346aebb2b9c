//! Server plumbing shared by `xmagent` and `xmcentral`: the HTTP accept loop with graceful drain
//! and optional TLS ([`serve`], [`tls`]), HTTP helpers ([`http_util`]), log set-up
//! ([`telemetry`]), exit codes and configuration errors ([`exit`]), Prometheus histograms
//! ([`metrics`]), and the credential checks both daemons must agree on ([`credentials`],
//! [`verify_pool`], [`throttle`]).
//!
//! It exists so the agent does not link the reference central for its plumbing, and so each
//! piece is written and reviewed once.
//!
//! What it does NOT do: know about events, integrations, stores, websockets or configuration
//! files; those belong to the daemons.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod credentials;
pub mod exit;
pub mod http_util;
pub mod metrics;
pub mod serve;
pub mod telemetry;
pub mod throttle;
pub mod tls;
pub mod verify_pool;
