//! The `integrations` frame: the integrations the central defines and an agent runs (the
//! xMatters model of "define once, tick the agents that run it"). Each definition carries the
//! keys of `[[integrations]]` with the script and library sources inline, and the URL key only as
//! its SHA-256 digest: an agent verifies URL keys, it never needs one in plain text.
//!
//! What it does not do: validate a definition (the integration runtime does, with the same code
//! as for `agent.toml`) or compute the version (the central does; the agent only logs it).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Every integration the central wants one agent to run, replacing the previous set whole.
///
/// Agents older than this frame read it as an unknown frame type and ignore it (their relay
/// logs and skips frames it cannot parse), so the central sends it to every agent named in a
/// `run_on` without asking first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManagedIntegrations {
    /// A digest of the content: equal versions mean equal definitions, so an agent can log which
    /// set it runs and the central can tell whether a reload changed an agent's set.
    pub version: String,
    /// The definitions, in id order.
    pub integrations: Vec<ManagedIntegration>,
    /// The sources of the libraries the definitions name, by `require` name.
    #[serde(default)]
    pub libraries: BTreeMap<String, ScriptText>,
}

/// One JavaScript source and the name it is reported under (errors, stacks).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScriptText {
    /// Where the code came from at the central (its file name).
    pub name: String,
    /// The JavaScript source.
    pub code: String,
}

/// One `[[integrations]]` entry as the central sends it: the same keys, sources inline, no
/// plain secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManagedIntegration {
    /// The id in the trigger URL.
    pub id: String,
    /// Display name.
    pub name: String,
    /// `create_event`, `transform`, `run_script` or `http_trigger` (the `action` key).
    pub action: String,
    /// The form events are created from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub form: Option<String>,
    /// The communication plan of `form`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// Whether the central applies notification flood control.
    #[serde(default)]
    pub flood_control: bool,
    /// `any`, `url`, `basic`, `api_key` or `oauth` (the `auth` key).
    pub auth: String,
    /// The user URL-key and API-key requests act as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authenticating_user: Option<String>,
    /// The SHA-256 digest (hex) of the integration's URL key, never the key itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_key_sha256: Option<String>,
    /// Restrict callers to these users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_users: Option<Vec<String>>,
    /// Requests a minute before 429.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_minute: Option<u32>,
    /// Other integrations whose events the scripts may reach.
    #[serde(default)]
    pub script_events_of: Vec<String>,
    /// The script of `transform`, `run_script` and `http_trigger`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<ScriptText>,
    /// Library names (keys of [`ManagedIntegrations::libraries`]) the script may require.
    #[serde(default)]
    pub libraries: Vec<String>,
    /// `constants` visible to the script.
    #[serde(default)]
    pub constants: BTreeMap<String, String>,
    /// `[integrations.event]` of an `http_trigger` integration, as its TOML keys in JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<Value>,
}
