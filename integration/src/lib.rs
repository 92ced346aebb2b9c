//! The integration runtime both daemons share: what an inbound integration is and how one request
//! to it is authenticated, parsed and turned into event-creation calls. The agent serves its
//! integrations from `agent.toml` with it, the central its cloud-hosted ones from `central.toml`.
//!
//! - [`definition`]: the `[[integrations]]`, `[[libraries]]` and `[scripts]` keys, validated the
//!   same way for both hosts.
//! - [`auth`]: the [`auth::Authenticator`] (URL key, Basic, API key, OAuth tokens).
//! - [`request`]: an inbound request as it is kept, credentials removed.
//! - [`trigger`]: a `create_event` body into its trigger.
//! - [`action`]: a request into events through `scripts`; [`activity`]: its activity entry.
//! - [`endpoints`]: the HTTP client behind scripts' `http.request`; [`proxy`]: CONNECT tunnels.
//! - [`http`]: admitting a trigger request, the token endpoint, refusals.
//! - [`backlog`]: the bound on bodies waiting for scripts.
//! - [`rate_limit`]: the per-integration request rate limit.
//!
//! What it deliberately does not do: store anything (no sled), speak the websocket, or run an
//! HTTP server; each host keeps requests durably and answers HTTP its own way.
#![forbid(unsafe_code)]

pub mod action;
pub mod activity;
pub mod auth;
pub mod backlog;
pub mod definition;
pub mod endpoints;
pub mod http;
pub mod proxy;
pub mod rate_limit;
pub mod request;
pub mod trigger;
