//! Which agents are connected, since when, and when each was last heard from: the agents page
//! reads it, the websocket (`crate::ws`) writes it.
//!
//! Kept in memory: after a restart every agent shows "never seen" until it reconnects, which it
//! does within its back-off. Only configured agents appear (the websocket refuses others).
//!
//! What it does NOT do: know an agent's software version or queue depth (protocol version 1
//! carries neither), or decide anything about a connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};

use time::OffsetDateTime;

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
    /// Record that `agent` was welcomed on a connection from `peer` speaking `version`.
    pub fn connected(&self, agent: &str, version: u32, peer: SocketAddr) -> Connection<'_> {
        let now = OffsetDateTime::now_utc();
        let mut agents = self.lock();
        let entry = agents.entry(agent.to_owned()).or_insert(AgentPresence {
            connections: 0,
            connected_since: None,
            last_seen: None,
            peer: None,
            protocol_version: None,
        });
        entry.connections += 1;
        entry.connected_since = Some(now);
        entry.last_seen = Some(now);
        entry.peer = Some(peer);
        entry.protocol_version = Some(version);
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

    /// What is known of `agent`, if it connected since the central started.
    pub fn of(&self, agent: &str) -> Option<AgentPresence> {
        self.lock().get(agent).cloned()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, AgentPresence>> {
        self.agents.lock().unwrap_or_else(PoisonError::into_inner)
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
        let first = presence.connected("a", 1, peer);
        let welcomed = presence.of("a").expect("known");
        presence.seen("a");
        presence.seen("unknown");
        let known = presence.of("a").expect("known");
        assert_eq!((known.connections, known.protocol_version), (1, Some(1)));
        assert!(known.last_seen >= welcomed.last_seen);
        assert_eq!(known.peer, Some(peer));
        assert_eq!(presence.of("unknown"), None, "only welcomed agents appear");
        let second = presence.connected("a", 1, peer);
        drop(first);
        assert_eq!(presence.of("a").unwrap().connections, 1);
        drop(second);
        let gone = presence.of("a").unwrap();
        assert_eq!(gone.connections, 0);
        assert!(gone.last_seen >= known.last_seen);
    }
}
