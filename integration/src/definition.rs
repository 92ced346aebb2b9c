//! Integration definitions: the `[[integrations]]`, `[[libraries]]` and `[scripts]` keys both
//! hosts read (`agent.toml` and `central.toml` take the same keys), their validation with the
//! same errors, and their resolution into [`Integration`]s ready to serve (credentials reduced to
//! digests, scripts and libraries compiled, so a syntax error is a config error with file and
//! line and a broken script never reaches a request).
//!
//! The same validation serves the integrations a central sends an agent ([`managed`], built at
//! the central by [`Integration::to_managed`]): their scripts come with the definition instead
//! of from files, and their URL key only as its digest.
//!
//! What it does not do: read the rest of either file, or serve anything.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use protocol::{ManagedIntegration, ManagedIntegrations, ScriptText};
use serde::{Deserialize, Serialize};
use server::exit::ConfigError;

use crate::auth::{AuthMode, Authenticator, IntegrationAuth, SecretDigest};
use crate::rate_limit::RateLimit;

/// `[scripts]`: the sandbox limits of DESIGN.md invariant 4.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ScriptsSection {
    /// Script threads; 0 or absent = two per core, so that with the default share (half the
    /// threads) one busy integration can still keep every core busy while another integration
    /// always finds a free thread (runs are not pre-empted, so fairness needs spare threads).
    pub threads: Option<usize>,
    /// Script threads one integration may hold at once, so runaway scripts in one integration
    /// leave threads to the others; absent = half the threads rounded up.
    pub threads_per_integration: Option<usize>,
    /// Request bodies (KiB) accepted and waiting for a script run before ingress waits.
    pub backlog_kib: Option<usize>,
    /// Wall time per run.
    pub timeout_ms: Option<u64>,
    /// QuickJS heap per runtime.
    pub memory_limit_mb: Option<usize>,
    /// QuickJS stack.
    pub stack_kib: Option<usize>,
    /// Console output kept per run.
    pub max_log_bytes: Option<usize>,
    /// `http.request` calls per run.
    pub max_http_calls: Option<u32>,
    /// `form.post` calls per run.
    pub max_posts: Option<u32>,
}

/// `[scripts]` resolved: the sandbox limits and the script pool's size.
#[derive(Debug, Clone)]
pub struct ScriptSettings {
    /// Sandbox limits per run.
    pub limits: scripts::Limits,
    /// Script threads.
    pub threads: usize,
    /// See [`ScriptsSection::threads_per_integration`].
    pub share: usize,
    /// See [`ScriptsSection::backlog_kib`].
    pub backlog_kib: usize,
}

impl ScriptsSection {
    /// Validate the section (errors name the key in `file`) and fill in the defaults.
    pub fn resolve(&self, file: &str) -> Result<ScriptSettings, ConfigError> {
        let err = |key: &str, reason: String| ConfigError::new(file, key, reason);
        let section = self;
        let script_threads = match section.threads {
            Some(n) if n > 0 => n,
            _ => 2 * std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let script_share = match section.threads_per_integration {
            None => scripts::default_share(script_threads),
            Some(share) if (1..=script_threads).contains(&share) => share,
            Some(share) => {
                return Err(err(
                    "scripts.threads_per_integration",
                    format!("{share} is not between 1 and the {script_threads} script threads"),
                ))
            }
        };

        Ok(ScriptSettings {
            limits: script_limits(section),
            threads: script_threads,
            share: script_share,
            backlog_kib: section.backlog_kib.unwrap_or(8 * 1024).max(1),
        })
    }
}

/// `[[libraries]]`: a shared library scripts load with `require(name)`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LibraryConfig {
    /// The name scripts pass to `require`.
    pub name: String,
    /// The JavaScript file.
    pub path: PathBuf,
}

/// What an integration does with a request.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// The JSON body is the trigger (or its properties).
    CreateEvent,
    /// A script builds the trigger(s) and posts them with `form.post`.
    Transform,
    /// A script runs; events are created only if it posts them.
    RunScript,
    /// A Flow Designer HTTP trigger: the script sets `output[...]` and the integration's
    /// `[integrations.event]` mapping turns the outputs into one event (or none).
    HttpTrigger,
}

impl Action {
    /// The name as written in the `action` key.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::CreateEvent => "create_event",
            Action::Transform => "transform",
            Action::RunScript => "run_script",
            Action::HttpTrigger => "http_trigger",
        }
    }
}

/// `[[integrations]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntegrationConfig {
    /// The id in the URL.
    pub id: String,
    /// Display name.
    pub name: Option<String>,
    /// What to do with a request.
    pub action: Action,
    /// The form events are created from.
    pub form: Option<String>,
    /// The communication plan of `form` (the central then looks for the form in it only).
    pub plan: Option<String>,
    /// Whether the central applies notification flood control to this integration's events.
    #[serde(default)]
    pub flood_control: bool,
    /// Which credentials are accepted.
    #[serde(default)]
    pub auth: AuthMode,
    /// The user URL-key requests act as.
    pub authenticating_user: Option<String>,
    /// The `apiKey` of the integration URL.
    pub url_key: Option<String>,
    /// The same, read from a file.
    pub url_key_file: Option<PathBuf>,
    /// The SHA-256 digest (64 hex digits) of the URL key instead of the key: how a central sends
    /// it to the agents that run the integration, and how a file can avoid holding it.
    pub url_key_sha256: Option<String>,
    /// Restrict callers to these users (default: any user with the REST role).
    pub allowed_users: Option<Vec<String>>,
    /// Accept at most this many requests a minute (default: no limit); more get 429.
    pub rate_limit_per_minute: Option<u32>,
    /// Other integrations whose events this one's scripts may read and change through the
    /// built-in `xMatters` endpoint (default: only its own).
    #[serde(default)]
    pub script_events_of: Vec<String>,
    /// The script of `transform` / `run_script`.
    pub script: Option<PathBuf>,
    /// Libraries (by `[[libraries]]` name) this integration may require.
    #[serde(default)]
    pub libraries: Vec<String>,
    /// `constants` visible to the script.
    #[serde(default)]
    pub constants: BTreeMap<String, String>,
    /// `[integrations.event]`: how an `http_trigger` script's outputs become its event.
    pub event: Option<scripts::flow::EventMapping>,
    /// Central only: the agents that run this integration instead of the central.
    pub run_on: Option<Vec<String>>,
}

/// One integration, resolved and ready to serve.
pub struct Integration {
    /// The id in the URL.
    pub id: String,
    /// Display name (the id when none was given).
    pub name: String,
    /// What to do with a request.
    pub action: Action,
    /// The form events are created from.
    pub form: Option<String>,
    /// The communication plan of `form`.
    pub plan: Option<String>,
    /// Whether the central applies notification flood control to this integration's events.
    pub flood_control: bool,
    /// Authentication policy.
    pub auth: IntegrationAuth,
    /// The request rate limit, when `rate_limit_per_minute` is set.
    pub rate_limit: Option<RateLimit>,
    /// Other integrations whose events the scripts may touch (validated to exist).
    pub script_events_of: Vec<String>,
    /// The compiled script for `transform` / `run_script` / `http_trigger`.
    pub program: Option<Arc<scripts::Program>>,
    /// How an `http_trigger` integration's outputs become its event (default mapping otherwise).
    pub event: scripts::flow::EventMapping,
    run_on: Vec<String>,
}

impl Integration {
    /// The agents named by `run_on` (central only; empty when the host serves it itself). Such
    /// an integration is defined at the central and run by those agents, the xMatters model of
    /// "define once, tick the agents that run it": the central does not serve its trigger URL.
    pub fn run_on(&self) -> &[String] {
        &self.run_on
    }

    /// The integrations whose events its scripts may reach through the built-in `xMatters`
    /// endpoint: its own and those of `script_events_of` (the scope of their credential).
    pub fn script_scope(&self) -> Vec<String> {
        let mut scope = vec![self.id.clone()];
        scope.extend(self.script_events_of.iter().cloned());
        scope
    }

    /// How this integration's events sent by `sender` are routed at the central: the
    /// principal's user is the integration's authenticating user for URL and API-key requests
    /// and the caller for Basic and OAuth, as the form's sender permissions expect.
    pub fn routing(&self, sender: &str) -> crate::action::Routing {
        crate::action::Routing {
            form: self.form.clone(),
            plan: self.plan.clone(),
            sender: Some(sender.to_owned()),
            flood_control: self.flood_control,
        }
    }

    /// The definition as a central sends it to the agents of `run_on`: the same keys, the
    /// script and libraries as sources (the library sources go into `libraries`), the URL key
    /// as its digest only.
    pub fn to_managed(&self, libraries: &mut BTreeMap<String, ScriptText>) -> ManagedIntegration {
        let text = |source: &scripts::Source| ScriptText {
            name: source.name.clone(),
            code: source.code.clone(),
        };
        let spec = self.program.as_ref().map(|program| program.spec());
        for (name, source) in spec.iter().flat_map(|spec| &spec.libraries) {
            libraries.insert(name.clone(), text(source));
        }
        let word = |value: serde_json::Result<serde_json::Value>| {
            value
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default()
        };
        ManagedIntegration {
            id: self.id.clone(),
            name: self.name.clone(),
            action: word(serde_json::to_value(self.action)),
            form: self.form.clone(),
            plan: self.plan.clone(),
            flood_control: self.flood_control,
            auth: word(serde_json::to_value(self.auth.mode)),
            authenticating_user: self.auth.authenticating_user.clone(),
            url_key_sha256: self.auth.url_key.as_ref().map(SecretDigest::to_hex),
            allowed_users: self.auth.allowed_users.clone(),
            rate_limit_per_minute: self.rate_limit.as_ref().map(RateLimit::requests_per_minute),
            script_events_of: self.script_events_of.clone(),
            script: spec.map(|spec| text(&spec.script)),
            libraries: spec
                .map(|spec| spec.libraries.keys().cloned().collect())
                .unwrap_or_default(),
            constants: spec.map(|spec| spec.constants.clone()).unwrap_or_default(),
            event: (matches!(self.action, Action::HttpTrigger))
                .then(|| serde_json::to_value(&self.event).ok())
                .flatten(),
        }
    }

    /// Whether the host that loaded it serves its trigger URL itself (no `run_on`).
    pub fn served_here(&self) -> bool {
        self.run_on.is_empty()
    }
}

/// Which host reads the definitions: only the central may name agents (`run_on`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host {
    /// `agent.toml`.
    Agent,
    /// `central.toml`.
    Central,
}

/// Read and index `[[libraries]]` (paths relative to `base_dir`); errors name the key in `file`.
pub fn libraries(
    configs: &[LibraryConfig],
    base_dir: &Path,
    file: &str,
) -> Result<BTreeMap<String, scripts::Source>, ConfigError> {
    let err = |key: &str, reason: String| ConfigError::new(file, key, reason);
    let mut libraries = BTreeMap::new();
    for (i, library) in configs.iter().enumerate() {
        let full = base_dir.join(&library.path);
        let code = std::fs::read_to_string(&full).map_err(|e| {
            err(
                &format!("libraries[{i}].path"),
                format!("cannot read {}: {e}", full.display()),
            )
        })?;
        let source = scripts::Source {
            name: full.display().to_string(),
            code,
        };
        if libraries.insert(library.name.clone(), source).is_some() {
            return Err(err(
                &format!("libraries[{i}].name"),
                format!("{:?} is defined twice", library.name),
            ));
        }
    }

    Ok(libraries)
}

/// Validate and resolve `[[integrations]]` for `host`: URL keys read and digested, the
/// authenticating users checked against `authenticator`, scripts compiled with their
/// `libraries`, ids unique and `script_events_of` naming configured integrations. Errors name
/// the key in `file`.
pub fn integrations(
    configs: Vec<IntegrationConfig>,
    libraries: &BTreeMap<String, scripts::Source>,
    authenticator: &Authenticator,
    host: Host,
    base_dir: &Path,
    file: &str,
) -> Result<HashMap<String, Arc<Integration>>, ConfigError> {
    let files = |path: &Path| {
        let full = base_dir.join(path);
        std::fs::read_to_string(&full)
            .map(|code| scripts::Source {
                name: full.display().to_string(),
                code,
            })
            .map_err(|e| format!("cannot read {}: {e}", full.display()))
    };
    resolve(
        configs,
        libraries,
        authenticator,
        host,
        base_dir,
        &files,
        file,
    )
}

/// Validate and resolve the integrations a central sent (an agent runs them as if they were in
/// its `agent.toml`, see [`integrations`]); errors name the integration in "the integrations
/// frame of version ...". The scripts are compiled here, so a broken one is refused before it
/// replaces anything.
pub fn managed(
    frame: &ManagedIntegrations,
    authenticator: &Authenticator,
) -> Result<HashMap<String, Arc<Integration>>, ConfigError> {
    let file = format!("the central's integrations (version {})", frame.version);
    let err = |key: String, reason: String| ConfigError::new(&file, key, reason);
    let mut configs = Vec::with_capacity(frame.integrations.len());
    let mut sources = HashMap::new();
    for (i, sent) in frame.integrations.iter().enumerate() {
        let event = match &sent.event {
            Some(mapping) => Some(
                serde_json::from_value(mapping.clone())
                    .map_err(|e| err(format!("integrations[{i}].event"), e.to_string()))?,
            ),
            None => None,
        };
        let script = sent.script.as_ref().map(|script| {
            sources.insert(sent.id.clone(), script.clone());
            PathBuf::from(&sent.id)
        });
        configs.push(IntegrationConfig {
            id: sent.id.clone(),
            name: Some(sent.name.clone()),
            action: keyword(&sent.action)
                .map_err(|e| err(format!("integrations[{i}].action"), e))?,
            form: sent.form.clone(),
            plan: sent.plan.clone(),
            flood_control: sent.flood_control,
            auth: keyword(&sent.auth).map_err(|e| err(format!("integrations[{i}].auth"), e))?,
            authenticating_user: sent.authenticating_user.clone(),
            url_key: None,
            url_key_file: None,
            url_key_sha256: sent.url_key_sha256.clone(),
            allowed_users: sent.allowed_users.clone(),
            rate_limit_per_minute: sent.rate_limit_per_minute,
            script_events_of: sent.script_events_of.clone(),
            script,
            libraries: sent.libraries.clone(),
            constants: sent.constants.clone(),
            event,
            run_on: None,
        });
    }
    let libraries = frame
        .libraries
        .iter()
        .map(|(name, text)| (name.clone(), source_of(text)))
        .collect();
    let sent_script = |path: &Path| {
        path.to_str()
            .and_then(|id| sources.get(id))
            .map(source_of)
            .ok_or_else(|| "the definition carries no script".to_owned())
    };
    resolve(
        configs,
        &libraries,
        authenticator,
        Host::Agent,
        Path::new(""),
        &sent_script,
        &file,
    )
}

/// A keyword of the TOML file (`action`, `auth`) sent as a string.
fn keyword<T: serde::de::DeserializeOwned>(word: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(word.to_owned())).map_err(|e| e.to_string())
}

fn source_of(text: &ScriptText) -> scripts::Source {
    scripts::Source {
        name: text.name.clone(),
        code: text.code.clone(),
    }
}

/// Where [`resolve`] finds a script: a file beside the configuration, or the text a central sent.
type ScriptReader<'a> = dyn Fn(&Path) -> Result<scripts::Source, String> + 'a;

fn resolve(
    configs: Vec<IntegrationConfig>,
    libraries: &BTreeMap<String, scripts::Source>,
    authenticator: &Authenticator,
    host: Host,
    base_dir: &Path,
    read_script: &ScriptReader<'_>,
    file: &str,
) -> Result<HashMap<String, Arc<Integration>>, ConfigError> {
    let display = file;
    let err = |key: &str, reason: String| ConfigError::new(file, key, reason);
    let mut integrations = HashMap::new();
    for (i, integration) in configs.into_iter().enumerate() {
        let key = |field: &str| format!("integrations[{i}].{field}");
        if integration.id.is_empty()
            || !integration
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(err(
                &key("id"),
                "must be non-empty and use only letters, digits, '-' and '_'".into(),
            ));
        }
        let run_on = match (host, integration.run_on) {
            (_, None) => Vec::new(),
            (Host::Agent, Some(_)) => {
                return Err(err(
                    &key("run_on"),
                    "only the central's configuration names the agents that run an integration"
                        .into(),
                ))
            }
            (Host::Central, Some(agents)) => {
                if agents.is_empty() || agents.iter().any(|agent| agent.trim().is_empty()) {
                    return Err(err(
                        &key("run_on"),
                        "must name at least one agent id, none of them empty (leave run_on out to host the integration at the central)".into(),
                    ));
                }
                agents
            }
        };
        let url_key = secret(
            integration.url_key.as_deref(),
            integration.url_key_file.as_deref(),
            base_dir,
            display,
            &key("url_key"),
        )?;
        let url_key = match (url_key, &integration.url_key_sha256) {
            (Some(_), Some(_)) => {
                return Err(err(
                    &key("url_key_sha256"),
                    "give either url_key (or url_key_file) or url_key_sha256, not both".into(),
                ))
            }
            (Some(plain), None) => Some(SecretDigest::new(&plain)),
            (None, Some(digest)) => Some(SecretDigest::from_hex(digest).ok_or_else(|| {
                err(
                    &key("url_key_sha256"),
                    "must be a SHA-256 digest: 64 hex digits".into(),
                )
            })?),
            (None, None) => None,
        };
        if matches!(integration.auth, AuthMode::Url) && url_key.is_none() {
            return Err(err(
                &key("url_key"),
                "auth = \"url\" needs url_key, url_key_file or url_key_sha256".into(),
            ));
        }
        if url_key.is_some() || matches!(integration.auth, AuthMode::Url) {
            let user = integration.authenticating_user.as_deref().ok_or_else(|| {
                err(
                    &key("authenticating_user"),
                    "an integration with a URL key needs an authenticating user".into(),
                )
            })?;
            // An integration agents run acts as a user of those agents: they check it when it
            // arrives (the central need not know the agents' users).
            if run_on.is_empty() {
                authenticator
                    .check_authenticating_user(user)
                    .map_err(|reason| err(&key("authenticating_user"), reason))?;
            }
        }
        let program = match (integration.action, &integration.script) {
            (Action::CreateEvent, Some(_)) => {
                return Err(err(
                    &key("script"),
                    "action \"create_event\" takes no script".into(),
                ))
            }
            (Action::CreateEvent, None) => None,
            (_, None) => {
                return Err(err(
                    &key("script"),
                    "actions \"transform\", \"run_script\" and \"http_trigger\" need a script"
                        .into(),
                ))
            }
            (_, Some(script_path)) => {
                let script =
                    read_script(script_path).map_err(|reason| err(&key("script"), reason))?;
                let mut own_libraries = BTreeMap::new();
                for (j, name) in integration.libraries.iter().enumerate() {
                    let source = libraries.get(name).ok_or_else(|| {
                        err(
                            &format!("integrations[{i}].libraries[{j}]"),
                            format!("no [[libraries]] entry named {name:?}"),
                        )
                    })?;
                    own_libraries.insert(name.clone(), source.clone());
                }
                let spec = scripts::ProgramSpec {
                    integration_id: integration.id.clone(),
                    script,
                    libraries: own_libraries,
                    constants: integration.constants.clone(),
                };
                let program = scripts::Program::compile(spec)
                    .map_err(|e| err(&key("script"), e.to_string()))?;
                Some(Arc::new(program))
            }
        };
        let event = match (integration.action, integration.event) {
            (Action::HttpTrigger, event) => event.unwrap_or_default(),
            (_, None) => scripts::flow::EventMapping::default(),
            (_, Some(_)) => {
                return Err(err(
                    &key("event"),
                    "only action \"http_trigger\" maps script outputs to an event".into(),
                ))
            }
        };
        if let Some(empty) = event
            .properties
            .iter()
            .find(|(p, o)| p.is_empty() || o.is_empty())
        {
            return Err(err(
                &key("event.properties"),
                format!("{empty:?}: property and output names must not be empty"),
            ));
        }
        let resolved = Integration {
            name: integration.name.unwrap_or_else(|| integration.id.clone()),
            action: integration.action,
            form: integration.form,
            plan: integration.plan,
            flood_control: integration.flood_control,
            auth: IntegrationAuth {
                mode: integration.auth,
                url_key,
                authenticating_user: integration.authenticating_user,
                allowed_users: integration.allowed_users,
            },
            rate_limit: match integration.rate_limit_per_minute {
                Some(0) => {
                    return Err(err(
                        &key("rate_limit_per_minute"),
                        "must be at least 1 (leave it out for no limit)".into(),
                    ))
                }
                Some(n) => Some(RateLimit::per_minute(n, std::time::Instant::now())),
                None => None,
            },
            script_events_of: integration.script_events_of,
            run_on,
            program,
            event,
            id: integration.id.clone(),
        };
        if integrations
            .insert(integration.id.clone(), Arc::new(resolved))
            .is_some()
        {
            return Err(err(
                &key("id"),
                format!("{:?} is defined twice", integration.id),
            ));
        }
    }

    let mut ids: Vec<&String> = integrations.keys().collect();
    ids.sort();
    for id in ids {
        if let Some(unknown) = integrations[id]
            .script_events_of
            .iter()
            .find(|other| !integrations.contains_key(*other))
        {
            return Err(err(
                "integrations.script_events_of",
                format!("integration {id:?} names no configured integration {unknown:?}"),
            ));
        }
    }
    authenticator.permit_listed_callers(
        integrations
            .values()
            .filter_map(|i| i.auth.allowed_users.clone())
            .flatten()
            .collect(),
    );
    Ok(integrations)
}

/// Read a secret given inline or through a `*_file` key (trailing newline trimmed).
pub fn secret(
    inline: Option<&str>,
    file: Option<&Path>,
    base_dir: &Path,
    config_file: &str,
    key: &str,
) -> Result<Option<String>, ConfigError> {
    match (inline, file) {
        (Some(_), Some(_)) => Err(ConfigError::new(
            config_file,
            key,
            format!("give either {key} or {key}_file, not both"),
        )),
        (Some(value), None) => Ok(Some(value.to_owned())),
        (None, Some(file)) => {
            let full = base_dir.join(file);
            let value = std::fs::read_to_string(&full).map_err(|e| {
                ConfigError::new(
                    config_file,
                    format!("{key}_file"),
                    format!("cannot read {}: {e}", full.display()),
                )
            })?;
            Ok(Some(value.trim_end_matches(['\n', '\r']).to_owned()))
        }
        (None, None) => Ok(None),
    }
}

fn script_limits(section: &ScriptsSection) -> scripts::Limits {
    let defaults = scripts::Limits::default();
    scripts::Limits {
        timeout: section
            .timeout_ms
            .map(std::time::Duration::from_millis)
            .unwrap_or(defaults.timeout),
        memory_bytes: section
            .memory_limit_mb
            .map(|mb| mb << 20)
            .unwrap_or(defaults.memory_bytes),
        stack_bytes: section
            .stack_kib
            .map(|kib| kib << 10)
            .unwrap_or(defaults.stack_bytes),
        max_log_bytes: section.max_log_bytes.unwrap_or(defaults.max_log_bytes),
        max_http_calls: section.max_http_calls.unwrap_or(defaults.max_http_calls),
        max_posts: section.max_posts.unwrap_or(defaults.max_posts),
        ..defaults
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{AuthLimitsConfig, OAuthConfig};

    fn resolve(text: &str, host: Host) -> Result<HashMap<String, Arc<Integration>>, ConfigError> {
        #[derive(Deserialize)]
        struct File {
            integrations: Vec<IntegrationConfig>,
        }
        let file: File = toml::from_str(text).expect("valid TOML");
        let base = Path::new("/nonexistent");
        let authenticator = Authenticator::from_config(
            &[],
            &OAuthConfig::default(),
            &AuthLimitsConfig::default(),
            Path::new("x.toml"),
            base,
        )
        .expect("no users is valid");
        integrations(
            file.integrations,
            &BTreeMap::new(),
            &authenticator,
            host,
            base,
            "x.toml",
        )
    }

    #[test]
    fn run_on_names_the_agents_at_the_central_only() {
        let text = "[[integrations]]\nid = \"dc\"\naction = \"create_event\"\nrun_on = [\"agent-01\", \"agent-02\"]\n";
        let resolved = resolve(text, Host::Central).expect("valid at the central");
        let dc = &resolved["dc"];
        assert_eq!(dc.run_on(), ["agent-01", "agent-02"]);
        assert!(!dc.served_here());

        let error = resolve(text, Host::Agent)
            .err()
            .expect("refused on an agent");
        assert_eq!(error.key, "integrations[0].run_on");
        assert!(error.reason.contains("central"), "{error}");
    }

    #[test]
    fn run_on_must_name_someone() {
        for agents in ["[]", "[\"agent-01\", \" \"]"] {
            let text = format!(
                "[[integrations]]\nid = \"dc\"\naction = \"create_event\"\nrun_on = {agents}\n"
            );
            let error = resolve(&text, Host::Central).err().expect(&text);
            assert_eq!(error.key, "integrations[0].run_on", "{agents}");
        }
        let served = resolve(
            "[[integrations]]\nid = \"here\"\naction = \"create_event\"\n",
            Host::Central,
        )
        .expect("valid");
        assert!(served["here"].served_here());
        assert_eq!(served["here"].script_scope(), ["here"]);
    }

    /// Resolve `text` (integrations and users) as a central would, with scripts in `dir`.
    fn resolve_at_central(
        dir: &Path,
        text: &str,
    ) -> (Authenticator, HashMap<String, Arc<Integration>>) {
        #[derive(Deserialize)]
        struct File {
            users: Vec<crate::auth::UserConfig>,
            integrations: Vec<IntegrationConfig>,
        }
        let file: File = toml::from_str(text).expect("valid TOML");
        let authenticator = Authenticator::from_config(
            &file.users,
            &OAuthConfig::default(),
            &AuthLimitsConfig::default(),
            Path::new("c.toml"),
            dir,
        )
        .expect("valid users");
        let resolved = integrations(
            file.integrations,
            &BTreeMap::new(),
            &authenticator,
            Host::Central,
            dir,
            "c.toml",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        (authenticator, resolved)
    }

    const SENT: &str =
        "[[users]]\nname = \"svc\"\nroles = [\"REST Web Service User\"]\npassword = \"p\"\n\
        [[integrations]]\nid = \"dc\"\naction = \"transform\"\nauth = \"url\"\nurl_key = \"k3y\"\n\
        authenticating_user = \"svc\"\nscript = \"dc.js\"\nrate_limit_per_minute = 30\n\
        run_on = [\"agent-01\"]\n[integrations.constants]\nA = \"1\"\n";

    fn sent_frame(resolved: &HashMap<String, Arc<Integration>>) -> ManagedIntegrations {
        let mut libraries = BTreeMap::new();
        let integrations = vec![resolved["dc"].to_managed(&mut libraries)];
        ManagedIntegrations {
            version: "v".into(),
            integrations,
            libraries,
        }
    }

    #[test]
    fn a_definition_sent_by_the_central_resolves_the_same_on_an_agent() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        std::fs::write(dir.path().join("dc.js"), "form.post(trigger);").expect("write");
        let (authenticator, resolved) = resolve_at_central(dir.path(), SENT);
        let frame = sent_frame(&resolved);
        let text = serde_json::to_string(&frame).expect("serializes");
        assert!(
            !text.contains("k3y"),
            "the plain URL key is never sent: {text}"
        );

        let on_agent = managed(&frame, &authenticator).unwrap_or_else(|e| panic!("{e}"));
        let dc = &on_agent["dc"];
        assert!(dc.served_here());
        assert_eq!(dc.action, Action::Transform);
        assert_eq!(dc.auth.mode, AuthMode::Url);
        assert!(dc.auth.url_key.as_ref().expect("a URL key").matches("k3y"));
        let spec = dc.program.as_ref().expect("compiled").spec();
        assert_eq!(spec.script.code, "form.post(trigger);");
        assert_eq!(spec.constants["A"], "1");
        assert_eq!(
            dc.rate_limit.as_ref().map(RateLimit::requests_per_minute),
            Some(30)
        );
    }

    #[test]
    fn a_sent_script_that_does_not_compile_is_refused_with_its_key() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        std::fs::write(dir.path().join("dc.js"), "form.post(trigger);").expect("write");
        let (authenticator, resolved) = resolve_at_central(dir.path(), SENT);
        let mut frame = sent_frame(&resolved);
        frame.integrations[0]
            .script
            .as_mut()
            .expect("a script")
            .code = "this is not ( javascript".into();
        let error = managed(&frame, &authenticator).err().expect("refused");
        assert_eq!(error.key, "integrations[0].script");

        frame.integrations[0].url_key_sha256 = Some("not hex".into());
        let error = managed(&frame, &authenticator).err().expect("refused");
        assert_eq!(error.key, "integrations[0].url_key_sha256");

        frame.integrations[0].action = "explode".into();
        let error = managed(&frame, &authenticator).err().expect("refused");
        assert_eq!(error.key, "integrations[0].action");
    }
}
