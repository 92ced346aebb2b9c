//! The agent's TOML configuration: parsing, validation and resolution into [`Loaded`], the
//! immutable snapshot the daemon runs on (swapped whole on SIGHUP).
//!
//! Every error names the file, the key and the reason ([`ConfigError`]) so an operator can fix
//! the file without reading source; the binary exits with code 78 on one.
//!
//! What it does not do: it does not open the store, bind sockets or talk to the central.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use server::exit::ConfigError;

use crate::relay::{RelayConfig, RelaySettings};
use crate::store::StoreConfig;
use integration::auth::{AuthLimitsConfig, Authenticator, OAuthConfig, UserConfig};
use integration::definition::{
    self, Host, Integration, IntegrationConfig, LibraryConfig, ScriptsSection,
};
use integration::endpoints::EndpointConfig;

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
    let scripts = file.scripts.resolve(&display)?;

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

    let libraries = definition::libraries(&file.libraries, base_dir, &display)?;
    let integrations = definition::integrations(
        file.integrations,
        &libraries,
        &authenticator,
        Host::Agent,
        base_dir,
        &display,
    )?;
    Ok(Loaded {
        file: path.to_path_buf(),
        agent_id: file.agent.id,
        listen,
        data_dir: base_dir.join(&file.agent.data_dir),
        max_body_bytes: file.agent.max_body_bytes,
        store: file.store,
        relay,
        limits: scripts.limits,
        script_threads: scripts.threads,
        script_share: scripts.share,
        script_backlog_kib: scripts.backlog_kib,
        authenticator,
        endpoints: file.endpoints,
        base_dir: base_dir.to_path_buf(),
        integrations,
    })
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
            integration::action::Routing {
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
