//! The `xmcentral` configuration file: where to listen, where to keep data, which agents and REST
//! users may connect.
//!
//! Secrets are read once and never kept in plain text, so a memory dump or a stray `Debug` print
//! never shows them: agent tokens (long random strings) as SHA-256 digests compared in constant
//! time, user passwords as salted argon2 PHC strings (`password_hash`, or an inline `password` /
//! `password_file` hashed at load). Users carry roles; the REST API needs
//! [`REST_WEB_SERVICE_USER`]. The central serves HTTPS/WSS when `tls_cert_file` and `tls_key_file`
//! are set.
//!
//! The notification tables (`[[people]]`, `[[groups]]`, `[[plans]]`, `[flood_control]`,
//! `[alert_rate_filter]`, `[notifications]`) are read here and validated by their own modules
//! ([`crate::directory`], [`crate::flood`], [`crate::alert_rate`], [`crate::notify`]) into one
//! [`crate::notify::Policy`], the part SIGHUP reloads.
//!
//! What it does NOT do: verify passwords (see [`crate::access`]) or open sockets.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use argon2::Argon2;
use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use server::credentials::{script_mac, SCRIPT_TOKEN_PREFIX};
use server::exit::ConfigError;
use server::tls::TlsFiles;

use integration::auth::{ApiKeyConfig, AuthLimitsConfig, Authenticator, OAuthConfig, UserConfig};
use integration::definition::{self, Host, IntegrationConfig, LibraryConfig, ScriptsSection};
use integration::endpoints::EndpointConfig;

use crate::hosted::{HostedConfig, HOSTED_AGENT_ID};

/// The address used when `[central] listen` is absent: loopback only, so a fresh install is not
/// reachable from the network by accident.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8443";

/// The largest trigger body of a hosted integration when `[central] max_body_bytes` is absent.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;

/// The data directory used when `[central] data_dir` is absent (relative to the config file).
pub const DEFAULT_DATA_DIR: &str = "./central-data";

/// The role a REST user needs to read events and change their status (the xMatters name). Users
/// configured without `roles` hold it, so existing configs keep working.
pub const REST_WEB_SERVICE_USER: &str = "REST Web Service User";

/// A validated central configuration, ready for [`crate::start`].
///
/// It can also be built in code ([`CentralConfig::new`] plus [`CentralConfig::with_agent`] /
/// [`CentralConfig::with_user`]), which is how `xmagent dev`, tests and the benchmark embed a
/// central without writing a file.
#[derive(Debug, Clone)]
pub struct CentralConfig {
    /// The socket address to bind; port 0 asks the OS for a free port (tests).
    pub listen: SocketAddr,
    /// Where the event store lives; absolute after loading.
    pub data_dir: PathBuf,
    /// Agents allowed to open the websocket (and to call REST with their token).
    pub agents: Vec<AgentCredential>,
    /// REST users allowed to call the API with Basic auth.
    pub users: Vec<UserCredential>,
    /// Serve HTTPS/WSS with these files instead of plain HTTP.
    pub tls: Option<TlsFiles>,
    /// The directory, flood control and notification delivery (reloaded on SIGHUP).
    pub notifications: crate::notify::Policy,
    /// Cloud-hosted integrations (`[[integrations]]`), when the file has any.
    pub hosted: Option<HostedConfig>,
}

/// One agent the central accepts: the id it is bound to and a digest of its token.
#[derive(Clone)]
pub struct AgentCredential {
    /// The agent id reported in `welcome` and recorded on every event it creates.
    pub id: String,
    token_sha256: [u8; 32],
}

/// One REST user: a name, roles and a salted argon2 hash of the password.
#[derive(Clone)]
pub struct UserCredential {
    /// The user name given in Basic auth.
    pub name: String,
    /// What the user may do; see [`REST_WEB_SERVICE_USER`].
    pub roles: Vec<String>,
    phc: std::sync::Arc<str>,
}

fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

impl AgentCredential {
    /// Build a credential from the plain token; only its digest is kept.
    pub fn new(id: impl Into<String>, token: &str) -> Self {
        Self {
            id: id.into(),
            token_sha256: digest(token),
        }
    }

    /// Whether `token` is this agent's token, compared in constant time.
    pub fn verify(&self, token: &str) -> bool {
        digest(token).ct_eq(&self.token_sha256).into()
    }
}

impl UserCredential {
    /// Build a credential holding [`REST_WEB_SERVICE_USER`] from the plain password, hashed with
    /// argon2id at its default cost (tens of milliseconds: done once, at load).
    pub fn new(name: impl Into<String>, password: &str) -> Result<Self, String> {
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        let phc = Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map_err(|e| format!("cannot hash the password: {e}"))?
            .to_string();
        Ok(Self {
            name: name.into(),
            roles: vec![REST_WEB_SERVICE_USER.to_owned()],
            phc: phc.into(),
        })
    }

    /// Build a credential from an argon2 PHC string (e.g. from `xmagent hash-password`). The
    /// error never repeats the string.
    pub fn from_hash(
        name: impl Into<String>,
        phc: &str,
        roles: Vec<String>,
    ) -> Result<Self, String> {
        let hash = PasswordHash::new(phc.trim()).map_err(|e| {
            format!("not a valid PHC hash string: {e} (create one with `xmagent hash-password`)")
        })?;
        argon2::Algorithm::try_from(hash.algorithm)
            .map_err(|_| format!("`{}` is not an argon2 algorithm", hash.algorithm))?;
        Ok(Self {
            name: name.into(),
            roles,
            phc: phc.trim().into(),
        })
    }

    /// Whether the user holds `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// The PHC string, for verification off the async runtime (see [`crate::access`]).
    pub fn phc(&self) -> std::sync::Arc<str> {
        std::sync::Arc::clone(&self.phc)
    }
}

// Hand-written so the digests never reach a log line, not even hashed.
impl std::fmt::Debug for AgentCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentCredential")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for UserCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserCredential")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl CentralConfig {
    /// A config with no agents and no users, listening on `listen` and storing under `data_dir`.
    pub fn new(listen: SocketAddr, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            listen,
            data_dir: data_dir.into(),
            agents: Vec::new(),
            users: Vec::new(),
            tls: None,
            notifications: crate::notify::Policy::default(),
            hosted: None,
        }
    }

    /// Add an agent that may connect with `token`.
    pub fn with_agent(mut self, id: impl Into<String>, token: &str) -> Self {
        self.agents.push(AgentCredential::new(id, token));
        self
    }

    /// Add a REST user (with [`REST_WEB_SERVICE_USER`]) that may call the API with Basic auth.
    /// The password is hashed with argon2 here.
    pub fn with_user(mut self, name: impl Into<String>, password: &str) -> Result<Self, String> {
        self.users.push(UserCredential::new(name, password)?);
        Ok(self)
    }

    /// The agent whose token this is, if any. Every configured token is compared (no early
    /// exit), so timing does not reveal which agents exist.
    pub fn agent_for_token(&self, token: &str) -> Option<&AgentCredential> {
        let mut found = None;
        for agent in &self.agents {
            if agent.verify(token) && found.is_none() {
                found = Some(agent);
            }
        }
        found
    }

    /// The configured REST user called `name`, if any.
    pub fn user(&self, name: &str) -> Option<&UserCredential> {
        self.users.iter().find(|user| user.name == name)
    }

    /// The agent and integrations a script credential ([`server::credentials::script_token`]) stands for, if it is
    /// one of a configured agent. Every agent is tried (no early exit), comparing in constant
    /// time.
    pub fn script_scope(&self, token: &str) -> Option<(&AgentCredential, Vec<String>)> {
        let rest = token.strip_prefix(SCRIPT_TOKEN_PREFIX)?;
        let (encoded, mac_hex) = rest.split_once('.')?;
        let scope = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(encoded)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())?;
        let mut given = [0u8; 32];
        hex::decode_to_slice(mac_hex, &mut given).ok()?;
        let mut found = None;
        for agent in &self.agents {
            let expected = script_mac(&agent.token_sha256, &scope);
            if bool::from(expected.ct_eq(&given)) && found.is_none() {
                found = Some(agent);
            }
        }
        let integrations = serde_json::from_str(&scope).ok()?;
        found.map(|agent| (agent, integrations))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    central: RawCentral,
    #[serde(default)]
    agents: Vec<RawAgent>,
    #[serde(default)]
    users: Vec<RawUser>,
    #[serde(default)]
    people: Vec<crate::directory::RawPerson>,
    #[serde(default)]
    groups: Vec<crate::directory::RawGroup>,
    #[serde(default)]
    plans: Vec<crate::directory::RawPlan>,
    #[serde(default)]
    flood_control: crate::flood::RawFloodSettings,
    #[serde(default)]
    notifications: crate::notify::RawDeliverySettings,
    alert_rate_filter: Option<crate::alert_rate::RawAlertRateSettings>,
    #[serde(default)]
    oauth: OAuthConfig,
    #[serde(default)]
    auth: AuthLimitsConfig,
    #[serde(default)]
    scripts: ScriptsSection,
    #[serde(default)]
    endpoints: Vec<EndpointConfig>,
    #[serde(default)]
    libraries: Vec<LibraryConfig>,
    #[serde(default)]
    integrations: Vec<IntegrationConfig>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCentral {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    tls_cert_file: Option<PathBuf>,
    tls_key_file: Option<PathBuf>,
    max_body_bytes: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    id: String,
    token: Option<String>,
    token_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: String,
    roles: Option<Vec<String>>,
    password: Option<String>,
    password_file: Option<PathBuf>,
    password_hash: Option<String>,
    #[serde(default)]
    api_keys: Vec<ApiKeyConfig>,
}

/// Read and validate the config file at `path`.
///
/// Relative paths inside the file (`data_dir`, `token_file`, `password_file`) resolve against
/// the directory of the config file, so a config works no matter where the daemon is started.
pub fn load(path: impl AsRef<Path>) -> Result<CentralConfig, ConfigError> {
    let path = path.as_ref();
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|error| ConfigError::new(&file, "(file)", format!("cannot read: {error}")))?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let base = if base.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        base
    };
    parse(&text, &file, &base)
}

/// Validate config `text`; `file` names it in errors and `base` anchors relative paths.
pub fn parse(text: &str, file: &str, base: &Path) -> Result<CentralConfig, ConfigError> {
    let raw = deserialize(text, file)?;

    let listen_text = raw.central.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
    let listen: SocketAddr = listen_text.parse().map_err(|_| {
        ConfigError::new(
            file,
            "central.listen",
            format!("`{listen_text}` is not an IP:port socket address (e.g. \"127.0.0.1:8443\")"),
        )
    })?;

    let data_dir = raw
        .central
        .data_dir
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    if data_dir.as_os_str().is_empty() {
        return Err(ConfigError::new(
            file,
            "central.data_dir",
            "must not be empty",
        ));
    }
    let data_dir = absolute(base, &data_dir);

    let mut config = CentralConfig::new(listen, data_dir);
    let callers: Vec<UserConfig> = raw
        .users
        .iter()
        .map(|user| UserConfig {
            name: user.name.clone(),
            roles: user
                .roles
                .clone()
                .unwrap_or_else(|| vec![REST_WEB_SERVICE_USER.to_owned()]),
            password: user.password.clone(),
            password_file: user.password_file.clone(),
            password_hash: user.password_hash.clone(),
            api_keys: user.api_keys.clone(),
        })
        .collect();

    for (index, agent) in raw.agents.into_iter().enumerate() {
        let key = format!("agents[{index}]");
        if agent.id == HOSTED_AGENT_ID {
            return Err(ConfigError::new(
                file,
                format!("{key}.id"),
                format!("`{HOSTED_AGENT_ID}` is the id of the central's own hosted integrations"),
            ));
        }
        if agent.id.trim().is_empty() {
            return Err(ConfigError::new(
                file,
                format!("{key}.id"),
                "must not be empty",
            ));
        }
        if config.agents.iter().any(|known| known.id == agent.id) {
            return Err(ConfigError::new(
                file,
                format!("{key}.id"),
                format!("agent id `{}` is configured twice", agent.id),
            ));
        }
        let token = secret(file, base, &key, "token", agent.token, agent.token_file)?;
        if config.agent_for_token(&token).is_some() {
            return Err(ConfigError::new(
                file,
                format!("{key}.token"),
                "two agents share the same token; each agent needs its own",
            ));
        }
        config.agents.push(AgentCredential::new(agent.id, &token));
    }

    for (index, user) in raw.users.into_iter().enumerate() {
        let key = format!("users[{index}]");
        if user.name.trim().is_empty() || user.name.contains(':') {
            return Err(ConfigError::new(
                file,
                format!("{key}.name"),
                "must be non-empty and must not contain ':' (Basic auth cannot carry it)",
            ));
        }
        if config.users.iter().any(|known| known.name == user.name) {
            return Err(ConfigError::new(
                file,
                format!("{key}.name"),
                format!("user `{}` is configured twice", user.name),
            ));
        }
        let roles = user
            .roles
            .unwrap_or_else(|| vec![REST_WEB_SERVICE_USER.to_owned()]);
        let credential = match user.password_hash {
            Some(_) if user.password.is_some() || user.password_file.is_some() => {
                return Err(ConfigError::new(
                    file,
                    format!("{key}.password_hash"),
                    "set only one of `password`, `password_file`, `password_hash`",
                ))
            }
            Some(phc) => UserCredential::from_hash(user.name, &phc, roles),
            None => {
                let password = secret(
                    file,
                    base,
                    &key,
                    "password",
                    user.password,
                    user.password_file,
                )?;
                UserCredential::new(user.name, &password).map(|u| UserCredential { roles, ..u })
            }
        }
        .map_err(|reason| ConfigError::new(file, format!("{key}.password_hash"), reason))?;
        config.users.push(credential);
    }

    if !raw.integrations.is_empty() {
        let max_body_bytes = match raw.central.max_body_bytes {
            Some(0) => {
                return Err(ConfigError::new(
                    file,
                    "central.max_body_bytes",
                    "must be greater than 0",
                ))
            }
            Some(bytes) => bytes,
            None => DEFAULT_MAX_BODY_BYTES,
        };
        let config_path = Path::new(file);
        let authenticator =
            Authenticator::from_config(&callers, &raw.oauth, &raw.auth, config_path, base)?;
        let libraries = definition::libraries(&raw.libraries, base, file)?;
        let integrations = definition::integrations(
            raw.integrations,
            &libraries,
            &authenticator,
            Host::Central,
            base,
            file,
        )?;
        config.hosted = Some(HostedConfig {
            authenticator,
            integrations,
            scripts: raw.scripts.resolve(file)?,
            endpoints: raw.endpoints,
            base_dir: base.to_path_buf(),
            max_body_bytes,
        });
    }

    config.tls = match (raw.central.tls_cert_file, raw.central.tls_key_file) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert: absolute(base, &cert),
            key: absolute(base, &key),
        }),
        (None, None) => None,
        (Some(_), None) => {
            return Err(ConfigError::new(
                file,
                "central.tls_key_file",
                "missing: `tls_cert_file` is set, so the key is needed too",
            ))
        }
        (None, Some(_)) => {
            return Err(ConfigError::new(
                file,
                "central.tls_cert_file",
                "missing: `tls_key_file` is set, so the certificate is needed too",
            ))
        }
    };

    config.notifications = crate::notify::Policy {
        directory: crate::directory::RawDirectory {
            people: raw.people,
            groups: raw.groups,
            plans: raw.plans,
        }
        .validate(file)?,
        flood: raw.flood_control.validate(file)?,
        delivery: raw.notifications.validate(file)?,
        alert_rate: raw
            .alert_rate_filter
            .map(|raw| raw.validate(file))
            .transpose()?,
    };
    Ok(config)
}

fn deserialize(text: &str, file: &str) -> Result<RawConfig, ConfigError> {
    let deserializer = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        let message = server::exit::toml_reason(&inner);
        let line = inner.span().map(|span| line_of(text, span.start));
        // A missing field is reported on the enclosing table (an unknown one already on itself);
        // either way the key names the field.
        let field = ["unknown field `", "missing field `", "duplicate key `"]
            .iter()
            .find_map(|prefix| message.strip_prefix(prefix))
            .and_then(|rest| rest.split('`').next())
            .map(str::to_owned);
        let mut key = match (path.as_str(), field) {
            (".", Some(field)) | ("", Some(field)) => field,
            (".", None) | ("", None) => "(syntax)".to_owned(),
            (path, Some(field)) if path == field || path.ends_with(&format!(".{field}")) => {
                path.to_owned()
            }
            (path, Some(field)) => format!("{path}.{field}"),
            (path, None) => path.to_owned(),
        };
        if key.is_empty() || key.ends_with('.') {
            // The key is the empty one (`"" = 1` is legal TOML): name it as it is written.
            key.push_str("\"\"");
        }
        let reason = match line {
            Some(line) => format!("{message} (line {line})"),
            None => message,
        };
        ConfigError::new(file, key, reason)
    })
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(0, |head| head.matches('\n').count())
        + 1
}

fn absolute(base: &Path, path: &Path) -> PathBuf {
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    };
    std::path::absolute(&joined).unwrap_or(joined)
}

/// Resolve a secret given either inline (`name`) or in a file (`name_file`), never both.
fn secret(
    file: &str,
    base: &Path,
    key: &str,
    name: &str,
    inline: Option<String>,
    from_file: Option<PathBuf>,
) -> Result<String, ConfigError> {
    let value = match (inline, from_file) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                file,
                format!("{key}.{name}"),
                format!("set either `{name}` or `{name}_file`, not both"),
            ))
        }
        (None, None) => {
            return Err(ConfigError::new(
                file,
                format!("{key}.{name}"),
                format!("missing: set `{name}` or `{name}_file`"),
            ))
        }
        (Some(value), None) => value,
        (None, Some(path)) => {
            let path = absolute(base, &path);
            let text = std::fs::read_to_string(&path).map_err(|error| {
                ConfigError::new(
                    file,
                    format!("{key}.{name}_file"),
                    format!("cannot read {}: {error}", path.display()),
                )
            })?;
            // Files written by `echo` end with a newline that is not part of the secret.
            text.trim_end_matches(['\r', '\n']).to_owned()
        }
    };
    if value.is_empty() {
        return Err(ConfigError::new(
            file,
            format!("{key}.{name}"),
            "must not be empty",
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use server::credentials::{argon2_matches, script_token};

    fn parse_ok(text: &str) -> CentralConfig {
        match parse(text, "test.toml", Path::new("/etc/xm")) {
            Ok(config) => config,
            Err(error) => panic!("expected a valid config, got {error}"),
        }
    }

    fn parse_err(text: &str) -> ConfigError {
        match parse(text, "test.toml", Path::new("/etc/xm")) {
            Ok(config) => panic!("expected an error, got {config:?}"),
            Err(error) => error,
        }
    }

    #[test]
    fn hosted_integrations_are_read_with_the_agent_keys_and_their_errors() {
        let base = "[central]\ndata_dir = \"/tmp/x\"\n\n[[users]]\nname = \"svc\"\npassword = \"pw\"\napi_keys = [{ key = \"k\", secret = \"s\" }]\n";
        let config = parse_ok(&format!(
            "{base}\n[[integrations]]\nid = \"cloud\"\naction = \"create_event\"\nauth = \"url\"\nurl_key = \"key\"\nauthenticating_user = \"svc\"\n"
        ));
        let hosted = config.hosted.expect("hosted integrations");
        assert!(hosted.integrations["cloud"].served_here());
        assert_eq!(hosted.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
        assert!(parse_ok(base).hosted.is_none());

        let error = parse_err(&format!(
            "{base}\n[[integrations]]\nid = \"cloud\"\naction = \"create_event\"\nauth = \"url\"\n"
        ));
        assert_eq!(
            (error.file.as_str(), error.key.as_str()),
            ("test.toml", "integrations[0].url_key")
        );
        let error = parse_err(&format!(
            "{base}\n[[integrations]]\nid = \"cloud\"\naction = \"transform\"\n"
        ));
        assert_eq!(error.key, "integrations[0].script");
        let error = parse_err(
            "[central]\nmax_body_bytes = 0\n\n[[integrations]]\nid = \"c\"\naction = \"create_event\"\n",
        );
        assert_eq!(error.key, "central.max_body_bytes");
    }

    #[test]
    fn no_agent_may_take_the_hosted_id() {
        let error = parse_err("[[agents]]\nid = \"xmcentral\"\ntoken = \"t\"\n");
        assert_eq!(error.key, "agents[0].id");
        assert!(error.reason.contains("hosted"), "{error}");
    }

    #[test]
    fn defaults_and_relative_data_dir() {
        let config = parse_ok("");
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(config.data_dir, Path::new("/etc/xm/central-data"));
        assert!(config.agents.is_empty() && config.users.is_empty());
    }

    #[test]
    fn full_config_verifies_secrets() {
        let config = parse_ok(
            r#"
            [central]
            listen = "127.0.0.1:0"
            data_dir = "/var/lib/xmcentral"
            [[agents]]
            id = "agent-01"
            token = "tok-1"
            [[agents]]
            id = "agent-02"
            token = "tok-2"
            [[users]]
            name = "admin"
            password = "pw"
            "#,
        );
        assert_eq!(config.listen.port(), 0);
        assert_eq!(config.data_dir, Path::new("/var/lib/xmcentral"));
        assert_eq!(
            config.agent_for_token("tok-2").map(|a| a.id.as_str()),
            Some("agent-02")
        );
        assert!(config.agent_for_token("tok-3").is_none());
        let admin = config.user("admin").expect("configured");
        assert!(admin.has_role(REST_WEB_SERVICE_USER), "the default role");
        assert!(
            argon2_matches(&admin.phc(), "pw"),
            "inline password hashed at load"
        );
        assert!(!argon2_matches(&admin.phc(), "pw2"));
        assert!(admin.phc().starts_with("$argon2id$"));
        assert!(config.user("root").is_none());
        // Debug output must not carry the secret.
        assert!(!format!("{config:?}").contains("tok-1"));
    }

    /// Found by the `agent_config` fuzz target: a key without a value at the end of the file
    /// gave an empty reason.
    #[test]
    fn a_key_without_a_value_at_the_end_has_a_reason() {
        let error = parse_err("[central]\nlisten = ");
        assert!(error.reason.starts_with("malformed TOML"), "{error}");
    }

    /// Found by the `central_config` fuzz target: an unknown empty key gave an empty key name.
    #[test]
    fn an_unknown_empty_key_is_named_as_written() {
        assert_eq!(parse_err("\"\" = 1\n").key, "\"\"");
        assert_eq!(parse_err("[central]\n\"\" = 1\n").key, "central.\"\"");
    }

    #[test]
    fn unknown_key_names_the_key() {
        let error = parse_err("[[agents]]\nid = \"a\"\ntokne = \"x\"\n");
        assert_eq!(error.key, "agents[0].tokne");
        assert!(error.reason.contains("unknown field"), "{}", error.reason);
        assert_eq!(error.file, "test.toml");

        let error = parse_err("[central]\nlisten = 5\n");
        assert_eq!(error.key, "central.listen");

        let error = parse_err("[centrl]\n");
        assert_eq!(error.key, "centrl");
    }

    #[test]
    fn bad_values_name_the_key() {
        assert_eq!(
            parse_err("[central]\nlisten = \"nowhere\"\n").key,
            "central.listen"
        );
        assert_eq!(parse_err("[[agents]]\nid = \"a\"\n").key, "agents[0].token");
        assert_eq!(
            parse_err("[[agents]]\nid = \"a\"\ntoken = \"x\"\ntoken_file = \"f\"\n").key,
            "agents[0].token"
        );
        assert_eq!(parse_err("[[agents]]\ntoken = \"x\"\n").key, "agents[0].id");
        assert_eq!(
            parse_err(
                "[[agents]]\nid = \"a\"\ntoken = \"x\"\n[[agents]]\nid = \"a\"\ntoken = \"y\"\n"
            )
            .key,
            "agents[1].id"
        );
        assert_eq!(
            parse_err("[[users]]\nname = \"u\"\npassword_file = \"/nonexistent/pw\"\n").key,
            "users[0].password_file"
        );
        assert_eq!(parse_err("this is not toml").key, "(syntax)");
    }

    #[test]
    fn secrets_from_files_drop_the_trailing_newline() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("agent.token"), "s3cret\n").expect("write token");
        let config = parse(
            "[[agents]]\nid = \"a\"\ntoken_file = \"agent.token\"\n",
            "x.toml",
            dir.path(),
        )
        .expect("valid");
        assert!(config.agent_for_token("s3cret").is_some());
        assert!(config.agent_for_token("s3cret\n").is_none());
    }

    #[test]
    fn load_resolves_against_the_config_directory_and_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("central.toml");
        std::fs::write(&path, "[central]\ndata_dir = \"data\"\n").expect("write");
        let config = load(&path).expect("valid");
        assert_eq!(config.data_dir, dir.path().join("data"));

        let missing = dir.path().join("missing.toml");
        let error = load(&missing).expect_err("missing file");
        assert!(error.file.contains("missing.toml"));
    }

    #[test]
    fn users_take_argon2_hashes_and_roles_and_tls_needs_both_files() {
        let phc = UserCredential::new("x", "hashed-pw").unwrap().phc();
        let config = parse_ok(&format!(
            r#"
            [central]
            tls_cert_file = "tls/cert.pem"
            tls_key_file = "tls/key.pem"
            [[users]]
            name = "ops"
            password_hash = "{phc}"
            [[users]]
            name = "viewer"
            roles = ["Standard User"]
            password = "v"
            "#
        ));
        let ops = config.user("ops").unwrap();
        assert!(argon2_matches(&ops.phc(), "hashed-pw"));
        assert!(ops.has_role(REST_WEB_SERVICE_USER));
        assert!(!config
            .user("viewer")
            .unwrap()
            .has_role(REST_WEB_SERVICE_USER));
        let tls = config.tls.expect("tls");
        assert_eq!(tls.cert, Path::new("/etc/xm/tls/cert.pem"));
        assert!(
            !format!("{:?}", config.users).contains("argon2"),
            "Debug shows no hash"
        );

        let error = parse_err("[[users]]\nname = \"a\"\npassword_hash = \"plain-text\"\n");
        assert_eq!(error.key, "users[0].password_hash");
        assert!(!error.to_string().contains("plain-text"), "{error}");
        let error = parse_err(&format!(
            "[[users]]\nname = \"a\"\npassword = \"p\"\npassword_hash = \"{phc}\"\n"
        ));
        assert!(error.reason.contains("only one"), "{error}");
        let error = parse_err("[central]\ntls_cert_file = \"c.pem\"\n");
        assert_eq!(error.key, "central.tls_key_file");
        let error = parse_err("[central]\ntls_key_file = \"k.pem\"\n");
        assert_eq!(error.key, "central.tls_cert_file");
    }

    #[test]
    fn script_tokens_name_their_scope_and_cannot_be_widened() {
        let config = parse_ok("[[agents]]\nid = \"a1\"\ntoken = \"tok-1\"\n");
        let scope = vec!["i1".to_owned(), "i2".to_owned()];
        let token = script_token("tok-1", &scope);
        assert!(!token.contains("tok-1"));
        let (agent, integrations) = config.script_scope(&token).expect("valid");
        assert_eq!((agent.id.as_str(), integrations), ("a1", scope));
        assert!(config
            .script_scope(&script_token("tok-2", &["i1".to_owned()]))
            .is_none());
        assert!(
            config.script_scope("tok-1").is_none(),
            "the agent token is no script token"
        );
        assert!(config.script_scope("xms1.garbage").is_none());
    }
}
