//! What the central's recent events say about integrations and agents: one pass over the
//! newest events feeds the overview's picture, the integrations page and the agents page.
//!
//! The central learns of an agent's integration only when it creates an event, so an
//! integration appears here once it created an event within [`WINDOW`]. The pass reads at most
//! [`MAX_EVENTS`] events (newest first) so a page never costs more than that; the pages say when
//! the window was cut.
//!
//! What it does NOT do: render anything, or know integrations that created no event.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;

use crate::store::{self, Query, Store, StoreError};

/// How far back the summary looks.
pub const WINDOW: Duration = Duration::from_secs(24 * 60 * 60);
/// The most events one summary reads.
pub const MAX_EVENTS: usize = 20_000;
/// Minutes the picture covers.
pub const CHART_MINUTES: usize = 180;

const MINUTE_MS: u64 = 60_000;

/// Events of one integration within the window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IntegrationSummary {
    /// Events created.
    pub events: usize,
    /// The newest event's `created`.
    pub last_activity: Option<String>,
    /// The agents that relayed them.
    pub agents: BTreeSet<String>,
}

/// Events of one agent within the window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentSummary {
    /// Events created.
    pub events: usize,
    /// The newest event's `created`.
    pub last_event: Option<String>,
    /// The integrations they came from.
    pub integrations: BTreeSet<String>,
}

/// Counts per minute, one series per label, for the picture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PerMinute {
    /// The start of the first minute, in Unix milliseconds.
    pub start_ms: u64,
    /// (label, one count per minute), labels in order.
    pub series: Vec<(String, Vec<u64>)>,
}

impl PerMinute {
    /// Empty series over [`CHART_MINUTES`] minutes ending with the minute of `now_ms`.
    pub fn ending_at(now_ms: u64) -> Self {
        let current = now_ms - now_ms % MINUTE_MS;
        Self {
            start_ms: current.saturating_sub((CHART_MINUTES as u64 - 1) * MINUTE_MS),
            series: Vec::new(),
        }
    }

    /// Add `n` to `label` at `at_ms`; times outside the span are ignored.
    pub fn add(&mut self, label: &str, at_ms: u64, n: u64) {
        let Some(minute) = at_ms
            .checked_sub(self.start_ms)
            .map(|offset| (offset / MINUTE_MS) as usize)
            .filter(|minute| *minute < CHART_MINUTES)
        else {
            return;
        };
        let at = match self
            .series
            .binary_search_by(|(name, _)| name.as_str().cmp(label))
        {
            Ok(at) => at,
            Err(at) => {
                self.series
                    .insert(at, (label.to_owned(), vec![0; CHART_MINUTES]));
                at
            }
        };
        self.series[at].1[minute] += n;
    }

    /// The sum of all series.
    pub fn total(&self) -> u64 {
        self.series.iter().flat_map(|(_, counts)| counts).sum()
    }
}

/// The summary of the newest events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// By integration id.
    pub integrations: BTreeMap<String, IntegrationSummary>,
    /// By agent id.
    pub agents: BTreeMap<String, AgentSummary>,
    /// Events per minute and integration over the last [`CHART_MINUTES`].
    pub per_minute: PerMinute,
    /// True when [`MAX_EVENTS`] were read before the window's start.
    pub truncated: bool,
}

impl Summary {
    /// Read the events of the last [`WINDOW`] before `now_ms` (Unix milliseconds). Blocking.
    pub fn load(store: &Store, now_ms: u64) -> Result<Self, StoreError> {
        let page = store.query(&Query {
            created_from_ms: Some(now_ms.saturating_sub(WINDOW.as_millis() as u64)),
            newest_first: true,
            limit: MAX_EVENTS,
            ..Query::default()
        })?;
        let mut summary = Self::from_events(&page.events, now_ms);
        summary.truncated = page.total > page.events.len();
        Ok(summary)
    }

    /// Summarize `events`, newest first.
    pub fn from_events(events: &[Value], now_ms: u64) -> Self {
        let mut summary = Self {
            integrations: BTreeMap::new(),
            agents: BTreeMap::new(),
            per_minute: PerMinute::ending_at(now_ms),
            truncated: false,
        };
        for event in events {
            let field = |name: &str| event.get(name).and_then(Value::as_str).unwrap_or("");
            let (integration, agent, created) =
                (field("integrationId"), field("agentId"), field("created"));
            let entry = summary
                .integrations
                .entry(integration.to_owned())
                .or_default();
            entry.events += 1;
            entry
                .last_activity
                .get_or_insert_with(|| created.to_owned());
            entry.agents.insert(agent.to_owned());
            let entry = summary.agents.entry(agent.to_owned()).or_default();
            entry.events += 1;
            entry.last_event.get_or_insert_with(|| created.to_owned());
            entry.integrations.insert(integration.to_owned());
            if let Some(at) = store::created_ms(field("id")) {
                summary.per_minute.add(integration, at, 1);
            }
        }
        summary
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A UUID v7 text minted at `ms`.
    fn id_at(ms: u64) -> String {
        uuid::Uuid::from_u128((u128::from(ms) << 80) | (7 << 76) | 1)
            .hyphenated()
            .to_string()
    }

    #[test]
    fn events_are_counted_per_integration_agent_and_minute() {
        let now = 1_700_000_000_000 + 30_000;
        let events = [
            json!({"id": id_at(now - 1_000), "integrationId": "b", "agentId": "a1", "created": "t3"}),
            json!({"id": id_at(now - 61_000), "integrationId": "a", "agentId": "a1", "created": "t2"}),
            json!({"id": id_at(now - 62_000), "integrationId": "a", "agentId": "a2", "created": "t1"}),
            // Older than the picture: counted, not drawn.
            json!({"id": id_at(now - 4 * 3_600_000), "integrationId": "a", "agentId": "a2", "created": "t0"}),
        ];
        let summary = Summary::from_events(&events, now);
        let a = &summary.integrations["a"];
        assert_eq!(a.events, 3);
        assert_eq!(a.last_activity.as_deref(), Some("t2"), "newest first");
        assert_eq!(a.agents.iter().collect::<Vec<_>>(), ["a1", "a2"]);
        assert_eq!(summary.agents["a1"].integrations.len(), 2);
        assert_eq!(summary.agents["a2"].last_event.as_deref(), Some("t1"));

        let chart = &summary.per_minute;
        assert_eq!(chart.total(), 3);
        let labels: Vec<_> = chart
            .series
            .iter()
            .map(|(label, _)| label.as_str())
            .collect();
        assert_eq!(labels, ["a", "b"], "series sorted by label");
        assert_eq!(
            chart.series[0].1[CHART_MINUTES - 2],
            2,
            "a: the minute before"
        );
        assert_eq!(chart.series[1].1[CHART_MINUTES - 1], 1, "b: this minute");
    }
}
