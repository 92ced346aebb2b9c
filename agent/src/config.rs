//! The agent's TOML configuration: parsing, validation and resolution into [`Loaded`], the
//! immutable snapshot the daemon runs on (swapped whole on SIGHUP).
//!
//! Every error names the file, the key and the reason ([`ConfigError`]) so an operator can fix
//! the file without reading source; the binary exits with code 78 on one.
//!
//! What it does not do: it does not open the store, bind sockets or talk to the central.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use server::exit::ConfigError;

use crate::auth::{
    AuthLimitsConfig, AuthMode, Authenticator, IntegrationAuth, OAuthConfig, SecretDigest,
    UserConfig,
};
use crate::endpoints::EndpointConfig;
use crate::relay::{RelayConfig, RelaySettings};
use crate::store::StoreConfig;

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `[agent]`: identity, listener, data directory.
    pub agent: AgentSection,
    /// `[central]`: where to relay events.
    pub central: RelayConfig,
    /// `[store]`: bounds and retention.
    #[serde(default)]
    pub store: StoreConfig,
    /// `[scripts]`: sandbox limits and threads.
    #[serde(default)]
    pub scripts: ScriptsSection,
    /// `[oauth]`: token lifetimes.
    #[serde(default)]
    pub oauth: OAuthConfig,
    /// `[auth]`: bounds on credential checking (verification threads, throttling).
    #[serde(default)]
    pub auth: AuthLimitsConfig,
    /// `[[users]]`: who may call the agent.
    #[serde(default)]
    pub users: Vec<UserConfig>,
    /// `[[endpoints]]`: what scripts may call with `http.request`.
    #[serde(default)]
    pub endpoints: Vec<EndpointConfig>,
    /// `[[libraries]]`: shared script libraries for `require`.
    #[serde(default)]
    pub libraries: Vec<LibraryConfig>,
    /// `[[integrations]]`: the inbound integrations.
    #[serde(default)]
    pub integrations: Vec<IntegrationConfig>,
}

/// `[agent]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    /// This agent's id, sent to the central in `hello`.
    pub id: String,
    /// Ingress listen address.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Where the store lives (relative to the config file's directory).
    pub data_dir: PathBuf,
    /// Largest accepted request body.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
}

fn default_listen() -> String {
    "127.0.0.1:8081".into()
}

fn default_max_body() -> usize {
    1 << 20
}

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
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
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
    pub rate_limit: Option<crate::rate_limit::RateLimit>,
    /// Other integrations whose events the scripts may touch (validated to exist).
    pub script_events_of: Vec<String>,
    /// The compiled script for `transform` / `run_script` / `http_trigger`.
    pub program: Option<Arc<scripts::Program>>,
    /// How an `http_trigger` integration's outputs become its event (default mapping otherwise).
    pub event: scripts::flow::EventMapping,
}

impl Integration {
    /// How this integration's events sent by `sender` are routed at the central: the
    /// principal's user is the integration's authenticating user for URL and API-key requests
    /// and the caller for Basic and OAuth, as the form's sender permissions expect.
    pub fn routing(&self, sender: &str) -> crate::store::Routing {
        crate::store::Routing {
            form: self.form.clone(),
            plan: self.plan.clone(),
            sender: Some(sender.to_owned()),
            flood_control: self.flood_control,
        }
    }
}

/// The whole resolved configuration: what the daemon runs on until the next reload.
pub struct Loaded {
    /// The file it came from.
    pub file: PathBuf,
    /// Agent id.
    pub agent_id: String,
    /// Ingress address.
    pub listen: SocketAddr,
    /// Store directory (absolute or relative to the working directory).
    pub data_dir: PathBuf,
    /// Body limit.
    pub max_body_bytes: usize,
    /// Store bounds.
    pub store: StoreConfig,
    /// Relay settings.
    pub relay: RelaySettings,
    /// Sandbox limits.
    pub limits: scripts::Limits,
    /// Script threads.
    pub script_threads: usize,
    /// See [`ScriptsSection::threads_per_integration`].
    pub script_share: usize,
    /// See [`ScriptsSection::backlog_kib`].
    pub script_backlog_kib: usize,
    /// Who may call.
    pub authenticator: Authenticator,
    /// `[[endpoints]]` as written (resolved by `Endpoints::new`).
    pub endpoints: Vec<EndpointConfig>,
    /// The directory relative paths resolve against.
    pub base_dir: PathBuf,
    /// Integrations by id.
    pub integrations: HashMap<String, Arc<Integration>>,
}

impl Loaded {
    /// The directory the store lives in.
    pub fn store_dir(&self) -> PathBuf {
        self.data_dir.join("store")
    }
}

/// Read and validate `path`. Scripts and libraries are compiled here, so a syntax error is a
/// config error with file and line, and a broken script never reaches a request.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let file: FileConfig = parse(path)?;
    let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    resolve(file, path, &base_dir)
}

/// Only the data directory, for the CLI's admin commands (`request`, `activity`, ...): they must
/// not compile every script to find it, and must work while a script in the file is broken.
pub fn data_dir(path: &Path) -> Result<PathBuf, ConfigError> {
    #[derive(Deserialize)]
    struct Partial {
        agent: PartialAgent,
    }
    #[derive(Deserialize)]
    struct PartialAgent {
        data_dir: PathBuf,
    }
    let partial: Partial = parse(path)?;
    let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    Ok(base_dir.join(partial.agent.data_dir))
}

/// Read and deserialize the file, naming the key where the TOML is wrong.
fn parse<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let display = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(&display, "(file)", format!("cannot read: {e}")))?;
    toml::from_str(&text).map_err(|e| {
        let key = e
            .span()
            .map(|span| key_at(&text, span.start))
            .unwrap_or_default();
        ConfigError::new(&display, key, server::exit::toml_reason(&e))
    })
}

/// Best effort: name the TOML key (or table) where the parser stopped.
fn key_at(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line = before.rsplit('\n').next().unwrap_or("");
    let table = before
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').to_owned())
        .filter(|table| !table.is_empty());
    let key = line
        .split('=')
        .next()
        .map(str::trim)
        .filter(|k| !k.is_empty() && !k.starts_with('['));
    match (table, key) {
        (Some(table), Some(key)) => format!("{table}.{key}"),
        (Some(table), None) => table,
        (None, Some(key)) => key.to_owned(),
        (None, None) => "(top level)".into(),
    }
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

fn resolve(file: FileConfig, path: &Path, base_dir: &Path) -> Result<Loaded, ConfigError> {
    let display = path.display().to_string();
    let err = |key: &str, reason: String| ConfigError::new(&display, key, reason);
    if file.agent.id.trim().is_empty() {
        return Err(err("agent.id", "must not be empty".into()));
    }
    let listen: SocketAddr = file.agent.listen.parse().map_err(|e| {
        err(
            "agent.listen",
            format!(
                "{:?} is not an address like 127.0.0.1:8081 ({e})",
                file.agent.listen
            ),
        )
    })?;
    if file.agent.max_body_bytes == 0 {
        return Err(err("agent.max_body_bytes", "must be greater than 0".into()));
    }
    if file.store.max_entries == 0 || file.store.max_bytes == 0 {
        return Err(err(
            "store",
            "max_entries and max_bytes must be greater than 0".into(),
        ));
    }
    let relay = file.central.validate(path, base_dir)?;
    let authenticator =
        Authenticator::from_config(&file.users, &file.oauth, &file.auth, path, base_dir)?;
    let limits = script_limits(&file.scripts);
    let script_threads = match file.scripts.threads {
        Some(n) if n > 0 => n,
        _ => 2 * std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let script_share = match file.scripts.threads_per_integration {
        None => scripts::default_share(script_threads),
        Some(share) if (1..=script_threads).contains(&share) => share,
        Some(share) => {
            return Err(err(
                "scripts.threads_per_integration",
                format!("{share} is not between 1 and the {script_threads} script threads"),
            ))
        }
    };

    let mut endpoint_names = std::collections::HashSet::new();
    for (i, endpoint) in file.endpoints.iter().enumerate() {
        if !endpoint_names.insert(endpoint.name.as_str()) || endpoint.name == "xMatters" {
            return Err(err(
                &format!("endpoints[{i}].name"),
                format!(
                    "{:?} is defined twice (xMatters is built in)",
                    endpoint.name
                ),
            ));
        }
    }

    let mut libraries = BTreeMap::new();
    for (i, library) in file.libraries.iter().enumerate() {
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

    let mut integrations = HashMap::new();
    for (i, integration) in file.integrations.into_iter().enumerate() {
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
        let url_key = secret(
            integration.url_key.as_deref(),
            integration.url_key_file.as_deref(),
            base_dir,
            &display,
            &key("url_key"),
        )?;
        if matches!(integration.auth, AuthMode::Url) && url_key.is_none() {
            return Err(err(
                &key("url_key"),
                "auth = \"url\" needs url_key or url_key_file".into(),
            ));
        }
        if url_key.is_some() || matches!(integration.auth, AuthMode::Url) {
            let user = integration.authenticating_user.as_deref().ok_or_else(|| {
                err(
                    &key("authenticating_user"),
                    "an integration with a URL key needs an authenticating user".into(),
                )
            })?;
            authenticator
                .check_authenticating_user(user)
                .map_err(|reason| err(&key("authenticating_user"), reason))?;
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
                let full = base_dir.join(script_path);
                let code = std::fs::read_to_string(&full).map_err(|e| {
                    err(
                        &key("script"),
                        format!("cannot read {}: {e}", full.display()),
                    )
                })?;
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
                    script: scripts::Source {
                        name: full.display().to_string(),
                        code,
                    },
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
                url_key: url_key.as_deref().map(SecretDigest::new),
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
                Some(n) => Some(crate::rate_limit::RateLimit::per_minute(
                    n,
                    std::time::Instant::now(),
                )),
                None => None,
            },
            script_events_of: integration.script_events_of,
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
    Ok(Loaded {
        file: path.to_path_buf(),
        agent_id: file.agent.id,
        listen,
        data_dir: base_dir.join(&file.agent.data_dir),
        max_body_bytes: file.agent.max_body_bytes,
        store: file.store,
        relay,
        limits,
        script_threads,
        script_share,
        script_backlog_kib: file.scripts.backlog_kib.unwrap_or(8 * 1024).max(1),
        authenticator,
        endpoints: file.endpoints,
        base_dir: base_dir.to_path_buf(),
        integrations,
    })
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

    /// Found by the `agent_config` fuzz target: an error inside a table header with no name yet
    /// (`[!...`) gave an empty key.
    #[test]
    fn an_error_in_a_nameless_table_header_still_names_a_place() {
        assert_eq!(key_at("[!agent]\nid = 1\n", 1), "(top level)");
        assert_eq!(key_at("[agent]\nid = x\n", 13), "agent.id");
    }

    /// Found by the `agent_config` fuzz target: a key without a value at the end of the file gave
    /// an empty reason.
    #[test]
    fn a_key_without_a_value_at_the_end_has_a_reason() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, "[agent]\nid = ").expect("write the config");
        let Err(error) = load(&path) else {
            panic!("incomplete TOML was accepted");
        };
        assert_eq!(error.key, "agent.id");
        assert!(error.reason.starts_with("malformed TOML"), "{error}");
    }

    #[test]
    fn an_integration_routes_its_events_by_plan_sender_and_flood_control() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("agent.toml");
        let text = "[agent]\nid = \"a\"\ndata_dir = \"data\"\n[central]\nurl = \"ws://127.0.0.1:1/x\"\ntoken = \"t\"\n\
            [[users]]\nname = \"svc\"\nroles = [\"REST Web Service User\"]\npassword = \"p\"\n\
            [[integrations]]\nid = \"flood\"\naction = \"create_event\"\nplan = \"Ops\"\n\
            form = \"Alert\"\nflood_control = true\nauth = \"basic\"\n\
            [[integrations]]\nid = \"plain\"\naction = \"create_event\"\nauth = \"basic\"\n";
        std::fs::write(&path, text).expect("write the config");
        let loaded = load(&path).unwrap_or_else(|error| panic!("{error}"));
        let routing = loaded.integrations["flood"].routing("svc");
        assert_eq!(
            routing,
            crate::store::Routing {
                form: Some("Alert".into()),
                plan: Some("Ops".into()),
                sender: Some("svc".into()),
                flood_control: true,
            }
        );
        let plain = loaded.integrations["plain"].routing("caller");
        assert_eq!(
            (plain.plan, plain.flood_control),
            (None, false),
            "the defaults"
        );
    }
}
