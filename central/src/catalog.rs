//! The xMatters REST view of the central's integrations: `GET /api/xm/1/integrations` and
//! `GET /api/xm/1/integrations/{id}` describe every `[[integrations]]` entry of `central.toml`
//! (cloud-hosted ones and those with `run_on`) in the xMatters shapes (`id`, `name`,
//! `integrationType`, `operation`, `authenticationType`, `plan`, `form`, `deployed`), plus
//! where each runs (`environment`: the cloud, or the agents named by `run_on`).
//!
//! What it deliberately does NOT do: show any secret (no URL key, no API key, no digest: the
//! resolved [`Integration`] only holds digests and none of them is read here), change anything
//! (integrations are configuration; see `xmcentral integration copy/import`), or answer callers
//! other than REST users.

use serde_json::{json, Value};

use integration::auth::AuthMode;
use integration::definition::{Action, Integration};

/// The xMatters `operation` of an action.
fn operation(action: Action) -> &'static str {
    match action {
        Action::CreateEvent => "CREATE_EVENT",
        Action::Transform => "TRANSFORM_CONTENT",
        Action::RunScript => "RUN_SCRIPT",
        Action::HttpTrigger => "HTTP_TRIGGER",
    }
}

/// The xMatters `authenticationType` of an authentication policy (`ANY` accepts all four).
fn authentication_type(mode: AuthMode) -> &'static str {
    match mode {
        AuthMode::Any => "ANY",
        AuthMode::Url => "URL",
        AuthMode::Basic => "BASIC",
        AuthMode::ApiKey => "API_KEY",
        AuthMode::Oauth => "OAUTH",
    }
}

/// One integration as the REST API shows it, without any secret. `urlKeyConfigured` only says
/// whether a URL key exists, so an operator can tell a URL-authenticated integration is usable.
pub fn integration_json(integration: &Integration) -> Value {
    let named = |name: &Option<String>| match name {
        Some(name) => json!({"id": name, "name": name}),
        None => Value::Null,
    };
    let environment = if integration.served_here() {
        json!({"type": "CLOUD"})
    } else {
        json!({"type": "AGENT", "agents": integration.run_on()})
    };
    json!({
        "id": integration.id,
        "name": integration.name,
        "integrationType": "INBOUND_WEBHOOK",
        "operation": operation(integration.action),
        "authenticationType": authentication_type(integration.auth.mode),
        "authenticatingUser": integration.auth.authenticating_user,
        "urlKeyConfigured": integration.auth.url_key.is_some(),
        "plan": named(&integration.plan),
        "form": named(&integration.form),
        "deployed": true,
        "environment": environment,
        "links": {
            "self": format!("/api/xm/1/integrations/{}", integration.id),
            "trigger": format!("/api/integration/1/functions/{}/triggers", integration.id),
        },
    })
}

/// Every integration of `integrations`, sorted by id (a stable order for paging).
pub fn list_json<'i>(integrations: impl Iterator<Item = &'i Integration>) -> Vec<Value> {
    let mut all: Vec<&Integration> = integrations.collect();
    all.sort_by(|a, b| a.id.cmp(&b.id));
    all.into_iter().map(integration_json).collect()
}
