//! Integrations defined at the central and run by agents (`run_on`): the `integrations` frame
//! each named agent gets after `welcome`, and again when a reload changes its set (an agent
//! dropped from every `run_on` gets an empty set, so it stops serving them).
//!
//! The version of a set is the SHA-256 of its content, so equal versions mean equal sets and a
//! reload that changed nothing for an agent sends it nothing.
//!
//! What it does not do: validate definitions (the configuration did) or keep any state of its
//! own across restarts (the configuration is the source).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use protocol::{CentralFrame, ManagedIntegrations};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};

use crate::hosted::HostedConfig;

/// One agent's set, encoded once.
#[derive(Debug, PartialEq, Eq)]
struct AgentSet {
    version: String,
    frame: String,
    /// The ids of its integrations, in id order (the console shows them).
    ids: Vec<String>,
}

/// The sets in force, by agent id; connections watch it.
#[derive(Debug)]
pub struct AgentIntegrations(watch::Sender<Arc<HashMap<String, AgentSet>>>);

impl AgentIntegrations {
    /// The sets of the integrations in `hosted` that name agents in `run_on`.
    pub fn new(hosted: Option<&HostedConfig>) -> Self {
        Self(watch::Sender::new(Arc::new(sets(hosted))))
    }

    /// Take the sets of a reloaded configuration; connected agents whose set changed get it.
    pub fn reload(&self, hosted: Option<&HostedConfig>) {
        let new = sets(hosted);
        self.0.send_if_modified(|running| {
            let changed: Vec<&String> = new
                .iter()
                .filter(|(agent, set)| running.get(*agent) != Some(set))
                .map(|(agent, _)| agent)
                .chain(running.keys().filter(|agent| !new.contains_key(*agent)))
                .collect();
            if changed.is_empty() {
                return false;
            }
            tracing::info!(agents = ?changed, "the integrations of these agents changed");
            *running = Arc::new(new);
            true
        });
    }

    /// The ids of the integrations `agent_id` runs for the central (`run_on`), in id order:
    /// what the console shows for an agent that has not reported its own list.
    pub fn ids_of(&self, agent_id: &str) -> Vec<String> {
        self.0
            .borrow()
            .get(agent_id)
            .map(|set| set.ids.clone())
            .unwrap_or_default()
    }

    /// Send `agent_id` its set now and whenever a reload changes it, through `to_agent`, until
    /// that channel closes.
    pub(super) async fn push(&self, agent_id: String, to_agent: mpsc::Sender<super::Outgoing>) {
        let mut sets = self.0.subscribe();
        let mut sent: Option<String> = None;
        loop {
            let frame = {
                let now = sets.borrow_and_update();
                match (now.get(&agent_id), &sent) {
                    (Some(set), Some(version)) if &set.version == version => None,
                    (Some(set), _) => Some((set.version.clone(), set.frame.clone())),
                    (None, Some(_)) => {
                        let empty = encode(BTreeMap::new(), Vec::new());
                        Some((empty.version, empty.frame))
                    }
                    (None, None) => None,
                }
            };
            if let Some((version, frame)) = frame {
                tracing::info!(agent = %agent_id, %version, "sending the agent its integrations");
                if to_agent.send(super::Outgoing::Frame(frame)).await.is_err() {
                    return;
                }
                sent = Some(version);
            }
            if sets.changed().await.is_err() {
                return;
            }
        }
    }
}

/// Every agent's set: the integrations whose `run_on` names it, in id order.
fn sets(hosted: Option<&HostedConfig>) -> HashMap<String, AgentSet> {
    let Some(hosted) = hosted else {
        return HashMap::new();
    };
    let mut ids: Vec<&String> = hosted.integrations.keys().collect();
    ids.sort();
    let mut by_agent: BTreeMap<&str, (BTreeMap<_, _>, Vec<_>)> = BTreeMap::new();
    for id in ids {
        let integration = &hosted.integrations[id];
        for agent in integration.run_on() {
            let (libraries, integrations) = by_agent.entry(agent).or_default();
            integrations.push(integration.to_managed(libraries));
        }
    }
    by_agent
        .into_iter()
        .map(|(agent, (libraries, integrations))| {
            (agent.to_owned(), encode(libraries, integrations))
        })
        .collect()
}

fn encode(
    libraries: BTreeMap<String, protocol::ScriptText>,
    integrations: Vec<protocol::ManagedIntegration>,
) -> AgentSet {
    let content = serde_json::to_vec(&(&integrations, &libraries))
        .expect("integration definitions always serialize");
    let version = hex::encode(Sha256::digest(&content));
    let ids = integrations
        .iter()
        .map(|integration| integration.id.clone())
        .collect();
    let frame = CentralFrame::Integrations(ManagedIntegrations {
        version: version.clone(),
        integrations,
        libraries,
    })
    .to_text();
    AgentSet {
        version,
        frame,
        ids,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_agent_has_the_ids_of_its_run_on_integrations_in_order() {
        let text = "[central]\ndata_dir = \"/tmp/x\"\n\
            [[agents]]\nid = \"a1\"\ntoken = \"token-a1-0123456789\"\n\
            [[agents]]\nid = \"a2\"\ntoken = \"token-a2-0123456789\"\n\
            [[integrations]]\nid = \"zeta\"\naction = \"create_event\"\nauth = \"basic\"\nrun_on = [\"a1\", \"a2\"]\n\
            [[integrations]]\nid = \"alpha\"\naction = \"create_event\"\nauth = \"basic\"\nrun_on = [\"a1\"]\n\
            [[integrations]]\nid = \"cloud\"\naction = \"create_event\"\nauth = \"basic\"\n";
        let config = crate::config::parse(text, "central.toml", std::path::Path::new("/etc/xm"))
            .expect("a valid config");
        let sets = AgentIntegrations::new(config.hosted.as_ref());
        assert_eq!(sets.ids_of("a1"), ["alpha", "zeta"]);
        assert_eq!(sets.ids_of("a2"), ["zeta"]);
        assert!(
            sets.ids_of("other").is_empty(),
            "cloud integrations run on no agent"
        );
        sets.reload(None);
        assert!(sets.ids_of("a1").is_empty(), "a reload is seen");
    }
}
