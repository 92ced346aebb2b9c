//! The on-premise integration agent: accepts inbound-integration triggers over HTTP, stores them
//! durably, runs the integration's action, and relays the resulting events to the central.
//!
//! See ARCHITECTURE.md at the repository root for the map of these modules and their invariants.
#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
pub mod daemon;
#[doc(hidden)]
pub mod fuzzing;
pub mod http_client;
pub mod ingress;
pub mod live;
pub mod managed;
pub mod metrics;
pub mod notify;
pub mod relay;
pub mod store;
pub mod tls;
pub mod worker;
