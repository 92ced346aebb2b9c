//! Which agents are connected, since when, when each was last heard from, the software version
//! its `hello` named and the queue figures and integrations of its latest `status` frame: the
//! agents page reads it, the websocket (`crate::ws`) writes it.
//!
//! Kept in memory: after a restart every agent shows "never seen" until it reconnects, which it
//! does within its back-off, and reports its status right after `welcome`. Only configured
//! agents appear (the websocket refuses others). What an agent reports is bounded here (version
//! length, number and length of integration ids), so one agent cannot grow the table.
//!
//! What it does NOT do: decide anything about a connection, or ask an agent for its status (an
//! agent too old to send `status` simply has none).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use protocol::AgentStatus;
use time::OffsetDateTime;

/// A status older than this is shown as stale: agents report every ~10 s while connected.
pub const STALE_AFTER: Duration = Duration::from_secs(60);
/// Longest software version kept (characters).
const MAX_VERSION_CHARS: usize = 64;
/// Most integration ids kept of one report.
const MAX_INTEGRATIONS: usize = 1000;
/// Longest integration id kept (characters).
const MAX_ID_CHARS: usize = 200;

/// The latest `status` an agent sent, and when it arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportedStatus {
    /// The figures as reported (integrations bounded, see the module doc).
    pub figures: AgentStatus,
    /// When the central received them.
    pub at: OffsetDateTime,
    /// Integration ids left out because the report named more than the bound.
    pub integrations_left_out: usize,
}

impl ReportedStatus {
    /// Whether the report is older than [`STALE_AFTER`] at `now` (the agent stopped reporting,
    /// or is disconnected): its figures may no longer hold.
    pub fn is_stale(&self, now: OffsetDateTime) -> bool {
        now - self.at > STALE_AFTER
    }
}

/// What the central knows of one agent's connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentPresence {
    /// Live websocket connections (normally 0 or 1; 2 briefly while an agent reconnects).
    pub connections: usize,
    /// When the current (newest) connection was welcomed.
    pub connected_since: Option<OffsetDateTime>,
    /// When a frame last arrived (or the last connection ended).
    pub last_seen: Option<OffsetDateTime>,
    /// The address of the newest connection.
    pub peer: Option<SocketAddr>,
    /// The protocol version the agent's `hello` named.
    pub protocol_version: Option<u32>,
    /// The software version the newest connection's `hello` named (agents older than that
    /// member name none).
    pub software_version: Option<String>,
    /// The latest `status` frame, kept across reconnects until a newer one arrives.
    pub status: Option<ReportedStatus>,
}

/// The table of agents heard from; one per running central.
#[derive(Debug, Default)]
pub struct Presence {
    agents: Mutex<HashMap<String, AgentPresence>>,
}

/// Held by a websocket task while its agent is welcomed; dropping it records the disconnect.
#[derive(Debug)]
pub struct Connection<'a> {
    presence: &'a Presence,
    agent: String,
}

impl Presence {
    /// Record that `agent` was welcomed on a connection from `peer` speaking `version`, running
    /// `software` if its `hello` said.
    pub fn connected(
        &self,
        agent: &str,
        version: u32,
        software: Option<&str>,
        peer: SocketAddr,
    ) -> Connection<'_> {
        let now = OffsetDateTime::now_utc();
        let mut agents = self.lock();
        let entry = agents.entry(agent.to_owned()).or_insert(AgentPresence {
            connections: 0,
            connected_since: None,
            last_seen: None,
            peer: None,
            protocol_version: None,
            software_version: None,
            status: None,
        });
        entry.connections += 1;
        entry.connected_since = Some(now);
        entry.last_seen = Some(now);
        entry.peer = Some(peer);
        entry.protocol_version = Some(version);
        entry.software_version = software.map(|text| bounded(text, MAX_VERSION_CHARS));
        Connection {
            presence: self,
            agent: agent.to_owned(),
        }
    }

    /// Record that frames (pings included) just arrived from `agent`.
    pub fn seen(&self, agent: &str) {
        if let Some(entry) = self.lock().get_mut(agent) {
            entry.last_seen = Some(OffsetDateTime::now_utc());
        }
    }

    /// Record the `status` frame `agent` just sent (only a welcomed agent's is kept).
    pub fn reported(&self, agent: &str, mut figures: AgentStatus) {
        let now = OffsetDateTime::now_utc();
        let left_out = figures.integrations.len().saturating_sub(MAX_INTEGRATIONS);
        figures.integrations.truncate(MAX_INTEGRATIONS);
        for id in &mut figures.integrations {
            if id.chars().count() > MAX_ID_CHARS {
                *id = bounded(id, MAX_ID_CHARS);
            }
        }
        if let Some(entry) = self.lock().get_mut(agent) {
            entry.last_seen = Some(now);
            entry.status = Some(ReportedStatus {
                figures,
                at: now,
                integrations_left_out: left_out,
            });
        }
    }

    /// What is known of `agent`, if it connected since the central started.
    pub fn of(&self, agent: &str) -> Option<AgentPresence> {
        self.lock().get(agent).cloned()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, AgentPresence>> {
        self.agents.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// `text` cut to `max` characters, marked with an ellipsis when cut.
fn bounded(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

impl Drop for Connection<'_> {
    fn drop(&mut self) {
        if let Some(entry) = self.presence.lock().get_mut(&self.agent) {
            entry.connections = entry.connections.saturating_sub(1);
            entry.last_seen = Some(OffsetDateTime::now_utc());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_counted_until_dropped() {
        let presence = Presence::default();
        assert_eq!(presence.of("a"), None);
        let peer: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let first = presence.connected("a", 1, None, peer);
        let welcomed = presence.of("a").expect("known");
        presence.seen("a");
        presence.seen("unknown");
        let known = presence.of("a").expect("known");
        assert_eq!((known.connections, known.protocol_version), (1, Some(1)));
        assert!(known.last_seen >= welcomed.last_seen);
        assert_eq!(known.peer, Some(peer));
        assert_eq!(presence.of("unknown"), None, "only welcomed agents appear");
        let second = presence.connected("a", 1, Some("2.0.0"), peer);
        drop(first);
        let newest = presence.of("a").unwrap();
        assert_eq!(newest.connections, 1);
        assert_eq!(newest.software_version.as_deref(), Some("2.0.0"));
        drop(second);
        let gone = presence.of("a").unwrap();
        assert_eq!(gone.connections, 0);
        assert!(gone.last_seen >= known.last_seen);
    }

    #[test]
    fn status_reports_are_kept_bounded_and_age_into_stale() {
        let presence = Presence::default();
        let peer: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let report = AgentStatus {
            queue_depth: 4,
            dead_letters: 1,
            oldest_pending_ms: Some(2500),
            integrations: vec!["b".into(), "a".into()],
        };
        presence.reported("a", report.clone());
        assert_eq!(
            presence.of("a"),
            None,
            "only a welcomed agent's report is kept"
        );

        let long_version = "9".repeat(500);
        let connection = presence.connected("a", 1, Some(&long_version), peer);
        assert_eq!(presence.of("a").unwrap().status, None);
        presence.reported("a", report.clone());
        let known = presence.of("a").unwrap();
        let version = known.software_version.expect("kept");
        assert_eq!(
            version.chars().count(),
            MAX_VERSION_CHARS + 1,
            "cut, with an ellipsis"
        );
        let status = known.status.expect("reported");
        assert_eq!(status.figures, report);
        assert_eq!(status.integrations_left_out, 0);
        assert!(!status.is_stale(status.at + Duration::from_secs(30)));
        assert!(status.is_stale(status.at + STALE_AFTER + Duration::from_secs(1)));

        // A flood of ids is cut to the bound, and each id to its length.
        let many = AgentStatus {
            integrations: (0..MAX_INTEGRATIONS + 5)
                .map(|n| format!("{n}{}", "x".repeat(300)))
                .collect(),
            ..AgentStatus::default()
        };
        presence.reported("a", many);
        let status = presence.of("a").unwrap().status.unwrap();
        assert_eq!(status.figures.integrations.len(), MAX_INTEGRATIONS);
        assert_eq!(status.integrations_left_out, 5);
        assert!(status
            .figures
            .integrations
            .iter()
            .all(|id| id.chars().count() <= MAX_ID_CHARS + 1));

        // The report outlives the connection (shown as stale later); a reconnect by an agent
        // that names no version forgets the old one.
        drop(connection);
        assert!(presence.of("a").unwrap().status.is_some());
        let _again = presence.connected("a", 1, None, peer);
        let again = presence.of("a").unwrap();
        assert_eq!(again.software_version, None);
        assert!(again.status.is_some());
    }
}
