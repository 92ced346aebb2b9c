//! The on-premise integration agent.
#![forbid(unsafe_code)]

pub mod auth;
pub mod endpoints;
pub mod relay;
pub mod tls;
