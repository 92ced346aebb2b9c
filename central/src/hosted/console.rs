//! What the web console shows of the cloud-hosted integrations: each one with its action,
//! authentication method, flood-control flag and trigger URL, and its activity stream read
//! from the same entries as `GET /api/xm/1/integrations/{id}/logs`
//! ([`crate::console::source::HostedIntegrations`]).
//!
//! What it does not do: show a secret (the trigger URL carries no key; the entries were
//! redacted when they were written) or serve the integrations.

use std::sync::Arc;

use integration::definition::Integration;
use serde_json::Value;

use crate::console::source::{ActivityEntry, HostedIntegration, HostedIntegrations};

use super::activity_prefix;

/// Longest detail of one activity step (script log lines, bodies) the console shows.
const STEP_DETAIL_CHARS: usize = 500;

/// The hosted integrations as the console reads them.
pub struct ConsoleView {
    /// Served by the central (no `run_on`), by id.
    integrations: Vec<Arc<Integration>>,
    activity: sled::Tree,
    /// `http://host:port` or `https://...`, the start of every trigger URL.
    base_url: String,
}

impl ConsoleView {
    pub(super) fn new(
        mut integrations: Vec<Arc<Integration>>,
        activity: sled::Tree,
        base_url: String,
    ) -> Self {
        integrations.sort_by(|a, b| a.id.cmp(&b.id));
        Self {
            integrations,
            activity,
            base_url,
        }
    }

    fn newest(&self, id: &str, limit: usize) -> Result<Vec<Value>, sled::Error> {
        self.activity
            .scan_prefix(activity_prefix(id))
            .rev()
            .take(limit)
            .map(|item| {
                item.map(|(_, value)| serde_json::from_slice(&value).unwrap_or(Value::Null))
            })
            .collect()
    }
}

impl HostedIntegrations for ConsoleView {
    fn list(&self) -> Vec<HostedIntegration> {
        self.integrations
            .iter()
            .map(|integration| {
                let last = self.newest(&integration.id, 1).ok().and_then(|entries| {
                    entries
                        .first()
                        .and_then(|entry| entry["created"].as_str().map(str::to_owned))
                });
                HostedIntegration {
                    id: integration.id.clone(),
                    name: integration.name.clone(),
                    action: integration.action.as_str().to_owned(),
                    auth: integration.auth.mode.as_str().to_owned(),
                    flood_control: integration.flood_control,
                    trigger_url: format!(
                        "{}/api/integration/1/functions/{}/triggers",
                        self.base_url, integration.id
                    ),
                    last_activity: last,
                }
            })
            .collect()
    }

    fn activity(&self, id: &str, limit: usize) -> Option<Result<Vec<ActivityEntry>, String>> {
        if !self.integrations.iter().any(|i| i.id == id) {
            return None;
        }
        Some(
            self.newest(id, limit)
                .map(|entries| entries.iter().map(entry_view).collect())
                .map_err(|_| "the activity stream cannot be read now".to_owned()),
        )
    }
}

/// One stored activity entry as the console's steps: who called, what was stored, the script's
/// log lines, the events created and the error, each cut to [`STEP_DETAIL_CHARS`].
fn entry_view(entry: &Value) -> ActivityEntry {
    let text = |value: &Value| match value {
        Value::String(text) => text.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let mut steps = Vec::new();
    let principal = &entry["principal"];
    steps.push((
        "auth".to_owned(),
        format!(
            "{} ({})",
            text(&principal["user"]),
            text(&principal["method"])
        ),
    ));
    let request = &entry["request"];
    steps.push((
        "received".to_owned(),
        format!(
            "{} body: {}",
            text(&request["method"]),
            text(&request["body"])
        ),
    ));
    for line in entry["log"].as_array().into_iter().flatten() {
        steps.push(("script log".to_owned(), text(&line["message"])));
    }
    if let Some(ids) = entry["eventIds"].as_array().filter(|ids| !ids.is_empty()) {
        let ids: Vec<String> = ids.iter().map(text).collect();
        steps.push(("events created".to_owned(), ids.join(", ")));
    }
    if !entry["error"].is_null() {
        steps.push(("error".to_owned(), text(&entry["error"]["message"])));
    }
    for (_, detail) in &mut steps {
        if let Some((cut, _)) = detail.char_indices().nth(STEP_DETAIL_CHARS) {
            detail.truncate(cut);
            detail.push('…');
        }
    }
    ActivityEntry {
        request_id: text(&entry["requestId"]),
        at: text(&entry["created"]),
        outcome: text(&entry["status"]),
        steps,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_entry_becomes_its_steps_cut_and_in_order() {
        let entry = json!({
            "requestId": "r-1",
            "created": "2026-12-01T08:00:00Z",
            "status": "FAILED",
            "principal": {"user": "svc", "method": "url"},
            "request": {"method": "POST", "body": "x".repeat(2000)},
            "log": [{"level": "info", "message": "parsed"}],
            "eventIds": [],
            "error": {"message": "event 1 cannot be created: unknown form"},
        });
        let view = entry_view(&entry);
        assert_eq!(
            (view.request_id.as_str(), view.outcome.as_str()),
            ("r-1", "FAILED")
        );
        let names: Vec<&str> = view.steps.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["auth", "received", "script log", "error"]);
        assert_eq!(view.steps[0].1, "svc (url)");
        assert!(view.steps[1].1.chars().count() <= STEP_DETAIL_CHARS + 1);
        assert!(view.steps[3].1.contains("unknown form"));
    }
}
