//! Authentication and permission checks for inbound integration requests, and the OAuth token
//! endpoint, the way xMatters does them.
//!
//! An integration accepts one of five kinds of credentials (see [`AuthMode`]): a URL key
//! (`?apiKey=...`), Basic with a user's password, Basic with an API key and its secret, an OAuth
//! bearer token issued by [`Authenticator::token`], or any of them. A request that authenticates
//! yields a [`Principal`]; the principal must then be permitted to trigger the integration.
//!
//! Secrets are only ever verified, never used, so this module keeps none in plain text (DESIGN §3
//! invariant 5): plain secrets from the config are reduced to SHA-256 digests at load, argon2 PHC
//! hashes are kept as they are, OAuth tokens are stored as SHA-256 digests. Every comparison is
//! constant time. Errors never carry a secret and never say which half of a credential was wrong.
//!
//! Checking credentials cannot be turned against the agent: argon2 runs only on a small bounded
//! pool of its own threads ([`verify_pool`]), never on a tokio worker, and work beyond its queue is
//! refused ([`AuthError::Busy`], 429); failed checks are remembered per (source address, user
//! name) and throttled ([`throttle`], [`AuthError::Throttled`], 429); a name that matches no user
//! or key is checked against a dummy hash of the same cost, so timing does not tell which names
//! exist.
//!
//! What this module does NOT do: parse the config file (the config loader hands us
//! [`UserConfig`]/[`OAuthConfig`]/[`AuthLimitsConfig`]) or build HTTP responses (ingress maps
//! [`AuthError`] to 401/403/429 and [`OAuthError`] to its JSON body).

use server::throttle;
use server::verify_pool;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use argon2::Argon2;
use base64::Engine;
use http::header::AUTHORIZATION;
use http::{HeaderMap, StatusCode};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use server::credentials::argon2_matches;
use server::exit::ConfigError;
use server::http_util::{basic_credentials, bearer_token};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The xMatters role a user needs to trigger integrations (unless the integration lists its
/// allowed users explicitly), and that an integration's authenticating user must hold.
pub const REST_WEB_SERVICE_USER: &str = "REST Web Service User";

/// The role that opens the agent's admin endpoints (activity, request records, dead letters) to a
/// user; the REST role alone does not, so a caller of integrations cannot read other callers' data.
pub const AGENT_ADMIN_ROLE: &str = "Agent Administrator";

/// Failed checks per (source, user name) before that pair is throttled, unless configured.
pub const DEFAULT_MAX_FAILURES: u32 = 5;
/// How long a throttled pair waits, counted from its first failure, unless configured.
pub const DEFAULT_FAILURE_WINDOW_SECS: u64 = 60;
/// Queued argon2 checks per verification thread, unless configured.
const DEFAULT_QUEUE_PER_THREAD: usize = 4;

/// The realm named in `WWW-Authenticate` challenges, so clients can tell which server asks.
pub const REALM: &str = "xmagent";

/// Default lifetime of an OAuth access token (xMatters uses about ten minutes).
pub const DEFAULT_ACCESS_TOKEN_TTL_SECS: u64 = 600;
/// Default lifetime of an OAuth refresh token (one day).
pub const DEFAULT_REFRESH_TOKEN_TTL_SECS: u64 = 86_400;
/// Upper bound for either token lifetime (one year); longer values are almost certainly a typo and
/// would also overflow `Instant` arithmetic on some platforms.
pub const MAX_TOKEN_TTL_SECS: u64 = 365 * 86_400;

/// How many live tokens of each kind (access, refresh) are kept at most. Tokens live in memory
/// only; the cap keeps a client that logs in in a loop from growing the agent without bound.
const MAX_TOKENS: usize = 100_000;
/// How often (at most) an insert sweeps expired tokens when the map is not full.
const TOKEN_SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// How many successful argon2 verifications are remembered.
const VERIFY_CACHE_CAPACITY: usize = 1024;
/// How long a successful argon2 verification is remembered.
const VERIFY_CACHE_TTL: Duration = Duration::from_secs(600);
/// Argon2 memory cost above which a configured hash is refused (1 GiB, in KiB): verifying such a
/// hash per request would exhaust the machine, so it is a config mistake.
const MAX_ARGON2_M_COST_KIB: u32 = 1024 * 1024;
/// Argon2 time cost above which a configured hash is refused, for the same reason.
const MAX_ARGON2_T_COST: u32 = 64;
/// Argon2 parallelism above which a configured hash is refused.
const MAX_ARGON2_P_COST: u32 = 64;

/// Generic reason: the request carried no credential of a kind the integration accepts.
const REASON_MISSING: &str = "missing credentials";
/// Generic reason: a credential was presented and did not verify. Deliberately does not say
/// whether the user, the key or the secret was wrong.
const REASON_INVALID: &str = "invalid credentials";
/// Generic reason: a bearer token was presented and is unknown or expired.
const REASON_BAD_TOKEN: &str = "invalid or expired access token";

// ---------------------------------------------------------------------------------------------
// Configuration (deserialized by the config loader)
// ---------------------------------------------------------------------------------------------

/// One `[[users]]` entry: a person or service account that may call integrations.
///
/// At most one of `password`, `password_file` and `password_hash` may be set; with none, the user
/// cannot use Basic or the OAuth password grant but can still own API keys and act as an
/// integration's authenticating user. `Debug` redacts every secret so the config can be logged.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// The user name, as sent in Basic credentials and the OAuth password grant.
    pub name: String,
    /// xMatters roles, e.g. [`REST_WEB_SERVICE_USER`], which permission checks look at.
    #[serde(default)]
    pub roles: Vec<String>,
    /// The password in plain text (convenient for development; prefer `password_hash`).
    pub password: Option<String>,
    /// A file holding the password, relative to the config file's directory, so the secret can
    /// live in a file readable only by the service user.
    pub password_file: Option<PathBuf>,
    /// An argon2 PHC string (`$argon2id$...`, from `xmagent hash-password`), so the config never
    /// holds a usable password.
    pub password_hash: Option<String>,
    /// API keys owned by this user; requests made with them act as this user.
    #[serde(default)]
    pub api_keys: Vec<ApiKeyConfig>,
}

impl fmt::Debug for UserConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserConfig")
            .field("name", &self.name)
            .field("roles", &self.roles)
            .field("password", &self.password.as_ref().map(|_| Redacted))
            .field("password_file", &self.password_file)
            .field(
                "password_hash",
                &self.password_hash.as_ref().map(|_| Redacted),
            )
            .field("api_keys", &self.api_keys)
            .finish()
    }
}

/// One API key of a user: the key is sent as the Basic user name, the secret as the password.
///
/// Exactly one of `secret`, `secret_file` and `secret_hash` must be set. `Debug` shows the key
/// (it identifies the caller, like a user name) and redacts the secret.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// The key itself; unique across all users.
    pub key: String,
    /// The secret in plain text.
    pub secret: Option<String>,
    /// A file holding the secret, relative to the config file's directory.
    pub secret_file: Option<PathBuf>,
    /// An argon2 PHC string of the secret.
    pub secret_hash: Option<String>,
}

impl fmt::Debug for ApiKeyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyConfig")
            .field("key", &self.key)
            .field("secret", &self.secret.as_ref().map(|_| Redacted))
            .field("secret_file", &self.secret_file)
            .field("secret_hash", &self.secret_hash.as_ref().map(|_| Redacted))
            .finish()
    }
}

/// The `[oauth]` section: token lifetimes and the optional client id for
/// `POST /api/xm/1/oauth2/token`. Everything is optional so the section can be left out.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthConfig {
    /// Access token lifetime in seconds (default 600, at least 1).
    pub access_token_ttl_secs: Option<u64>,
    /// Refresh token lifetime in seconds (default 86400, at least 1).
    pub refresh_token_ttl_secs: Option<u64>,
    /// When set, token requests must name this `client_id`, so only the expected client can
    /// obtain tokens; when unset, any (or no) client id is accepted.
    pub client_id: Option<String>,
}

/// The `[auth]` section: bounds on credential checking. Everything is optional.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthLimitsConfig {
    /// Threads that verify argon2 hashes (default: the number of cores), so a flood of wrong
    /// passwords can use at most this much CPU.
    pub verify_threads: Option<usize>,
    /// argon2 checks that may wait for a thread (default: 4 per thread); beyond that callers get
    /// 429 + `Retry-After` at once.
    pub verify_queue: Option<usize>,
    /// Failed checks per (source address, user name) before that pair gets 429 (default 5).
    pub max_failures: Option<u32>,
    /// Seconds a throttled pair waits, counted from its first failure (default 60).
    pub failure_window_secs: Option<u64>,
}

/// How an integration authenticates its callers (the integration's `auth` key).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// Accept any of the four credential kinds (the xMatters default).
    #[default]
    Any,
    /// Only the `apiKey` query parameter (the integration's URL key).
    Url,
    /// Only Basic with a user name and password.
    Basic,
    /// Only Basic with an API key as user and its secret as password.
    ApiKey,
    /// Only `Authorization: Bearer` with an access token from the token endpoint.
    Oauth,
}

impl AuthMode {
    /// The name as written in the `auth` key.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::Any => "any",
            AuthMode::Url => "url",
            AuthMode::Basic => "basic",
            AuthMode::ApiKey => "api_key",
            AuthMode::Oauth => "oauth",
        }
    }
}

/// Prints in place of a secret in `Debug` output.
struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

// ---------------------------------------------------------------------------------------------
// Secret digests and the per-integration policy
// ---------------------------------------------------------------------------------------------

/// A secret we only verify, kept as its SHA-256 digest and compared in constant time.
///
/// A fast hash is adequate for URL keys and the other long random strings this holds: they
/// cannot be guessed, so slowing down guessing buys nothing, and every request pays for the hash.
/// (Human-chosen passwords belong in argon2 `password_hash` instead.) `Debug` prints
/// `<redacted>` so a policy or config can be logged safely.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretDigest([u8; 32]);

impl SecretDigest {
    /// Digest `plain` so the plain text need not be kept.
    pub fn new(plain: &str) -> Self {
        Self(Sha256::digest(plain.as_bytes()).into())
    }

    /// Accept an already computed digest (64 hex digits), so a config can store a URL key hashed
    /// (`SecretDigest::new(key).to_hex()`) instead of in plain text. `None` if not 64 hex digits.
    pub fn from_hex(hex_digest: &str) -> Option<Self> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex_digest.trim(), &mut bytes).ok()?;
        Some(Self(bytes))
    }

    /// The digest as lowercase hex, for writing a hashed key into a config file. The digest of a
    /// long random key reveals nothing usable, so printing it is safe.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Whether `given` is the secret, in time independent of where (or whether) they differ.
    pub fn matches(&self, given: &str) -> bool {
        let given: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        given.ct_eq(&self.0).into()
    }
}

impl fmt::Debug for SecretDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// How one integration authenticates and who may trigger it; built by the config loader from the
/// `[[integrations]]` entry and passed to [`Authenticator::authenticate`] with every request.
#[derive(Clone, Debug, Default)]
pub struct IntegrationAuth {
    /// Which credential kinds the integration accepts.
    pub mode: AuthMode,
    /// The digest of the integration's URL key (`apiKey` query parameter), if it has one.
    pub url_key: Option<SecretDigest>,
    /// The user URL-key requests act as; must hold [`REST_WEB_SERVICE_USER`]
    /// (see [`Authenticator::check_authenticating_user`]).
    pub authenticating_user: Option<String>,
    /// When set, exactly these users may trigger the integration (regardless of roles); when
    /// unset, any user holding [`REST_WEB_SERVICE_USER`] may.
    pub allowed_users: Option<Vec<String>>,
}

/// Which kind of credential authenticated a request; recorded with the request and shown in the
/// activity stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    /// The integration's URL key.
    Url,
    /// Basic with a user's password.
    Basic,
    /// Basic with an API key and its secret.
    ApiKey,
    /// An OAuth bearer token.
    Oauth,
}

/// Who made a request and how they proved it; stored with the request so scripts and the
/// activity stream can tell callers apart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Principal {
    /// The configured user the request acts as (the authenticating user for URL keys, the key's
    /// owner for API keys).
    pub user: String,
    /// The credential kind that was verified.
    pub method: AuthMethod,
}

/// Why a request was refused. The messages are safe to send to the caller: they never contain a
/// secret and never say which part of a credential was wrong.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No acceptable credential, or a wrong one: ingress answers 401 with `WWW-Authenticate`.
    #[error("authentication failed: {reason}")]
    Unauthorized {
        /// A generic, caller-safe reason.
        reason: &'static str,
    },
    /// The credential was valid but the user may not trigger this integration: ingress answers
    /// 403.
    #[error("user `{user}` is not permitted to trigger this integration")]
    Forbidden {
        /// The authenticated user (not a secret).
        user: String,
    },
    /// The credential was valid but the user lacks [`AGENT_ADMIN_ROLE`] (or may not see this
    /// integration's data): ingress answers 403.
    #[error("user `{user}` is not permitted to use this admin endpoint")]
    NotAdmin {
        /// The authenticated user (not a secret).
        user: String,
    },
    /// This (source, user name) pair failed too often lately; nothing was verified. Ingress
    /// answers 429 with `Retry-After`.
    #[error("too many failed attempts; retry in {retry_after_secs} s")]
    Throttled {
        /// Seconds until the pair may try again.
        retry_after_secs: u64,
    },
    /// Every verification thread is busy and the queue is full; nothing was verified. Ingress
    /// answers 429 with `Retry-After`.
    #[error("too many credential checks in progress; retry shortly")]
    Busy,
}

impl AuthError {
    /// The `WWW-Authenticate` value for a 401 under `mode` (RFC 7235 requires one), telling the
    /// client which scheme to use; `None` for 403, which carries no challenge.
    ///
    /// `any`, `basic` and `api_key` challenge with Basic (what curl and most tools answer);
    /// `oauth` with Bearer, adding `error="invalid_token"` (RFC 6750) when a token was presented
    /// but is unknown or expired (also in `any` mode, where the client evidently uses Bearer).
    /// `url` has no HTTP scheme of its own, so it names a descriptive `ApiKey` scheme that no
    /// client will try to answer automatically.
    pub fn www_authenticate(&self, mode: AuthMode) -> Option<&'static str> {
        let AuthError::Unauthorized { reason } = self else {
            return None;
        };
        let bad_token = *reason == REASON_BAD_TOKEN;
        Some(match mode {
            AuthMode::Oauth | AuthMode::Any if bad_token => {
                r#"Bearer realm="xmagent", error="invalid_token""#
            }
            AuthMode::Oauth => r#"Bearer realm="xmagent""#,
            AuthMode::Url => r#"ApiKey realm="xmagent""#,
            AuthMode::Any | AuthMode::Basic | AuthMode::ApiKey => r#"Basic realm="xmagent""#,
        })
    }

    /// Seconds the caller should wait before retrying, for the 429 answers.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            AuthError::Throttled { retry_after_secs } => Some(*retry_after_secs),
            AuthError::Busy => Some(1),
            _ => None,
        }
    }

    fn unauthorized(reason: &'static str) -> Self {
        AuthError::Unauthorized { reason }
    }
}

// ---------------------------------------------------------------------------------------------
// OAuth wire types
// ---------------------------------------------------------------------------------------------

/// The token endpoint's success body (RFC 6749 §5.1, as xMatters returns it). `Debug` redacts the
/// tokens.
#[derive(Clone, Serialize)]
pub struct TokenResponse {
    /// The bearer token for `Authorization: Bearer`.
    pub access_token: String,
    /// Always `"bearer"`.
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// Single-use token for `grant_type=refresh_token`.
    pub refresh_token: String,
}

impl fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenResponse")
            .field("access_token", &Redacted)
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .field("refresh_token", &Redacted)
            .finish()
    }
}

/// A token endpoint failure (RFC 6749 §5.2). Serializes as `{"error", "error_description"}`;
/// `status` is the HTTP status ingress answers with. Never carries a secret.
#[derive(Debug, thiserror::Error, Serialize)]
#[error("{error}: {description}")]
pub struct OAuthError {
    /// 400 for `invalid_request`/`invalid_grant`/`unsupported_grant_type`, 401 for
    /// `invalid_client`, 429 for `temporarily_unavailable`, 500 for `server_error`.
    #[serde(skip)]
    pub status: StatusCode,
    /// For 429: seconds until the client may retry (sent as `Retry-After`).
    #[serde(skip)]
    pub retry_after_secs: Option<u64>,
    /// The RFC 6749 error code: `invalid_request`, `invalid_grant`, `invalid_client`,
    /// `unsupported_grant_type`, or `server_error`.
    pub error: &'static str,
    /// A human-readable explanation for the client's developer.
    #[serde(rename = "error_description")]
    pub description: String,
}

impl OAuthError {
    fn invalid_request(description: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            retry_after_secs: None,
            error: "invalid_request",
            description: description.into(),
        }
    }

    fn invalid_grant(description: &str) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            retry_after_secs: None,
            error: "invalid_grant",
            description: description.to_owned(),
        }
    }

    fn invalid_client() -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            retry_after_secs: None,
            error: "invalid_client",
            description: "unknown client_id".to_owned(),
        }
    }

    fn unsupported_grant_type() -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            retry_after_secs: None,
            error: "unsupported_grant_type",
            description: "grant_type must be `password` or `refresh_token`".to_owned(),
        }
    }

    /// The grant was not checked because of throttling or a full verification queue.
    fn unavailable(error: &AuthError) -> Self {
        Self {
            status: StatusCode::TOO_MANY_REQUESTS,
            retry_after_secs: error.retry_after_secs(),
            error: "temporarily_unavailable",
            description: error.to_string(),
        }
    }

    fn unauthorized_client() -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            retry_after_secs: None,
            error: "unauthorized_client",
            description: "this user may not call integrations".to_owned(),
        }
    }

    fn server_error() -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            retry_after_secs: None,
            error: "server_error",
            description: "the token could not be issued".to_owned(),
        }
    }
}

/// `hash_password` could not produce a hash (only for absurd input such as a password over
/// 4 GiB).
#[derive(Debug, thiserror::Error)]
#[error("could not hash the password: {0}")]
pub struct HashPasswordError(String);

// ---------------------------------------------------------------------------------------------
// Helpers for the CLI
// ---------------------------------------------------------------------------------------------

/// Hash `plain` as an argon2id PHC string with a random salt and the argon2 crate's default
/// (OWASP-recommended) cost, for `xmagent hash-password` and the `password_hash`/`secret_hash`
/// config keys.
pub fn hash_password(plain: &str) -> Result<String, HashPasswordError> {
    hash_with(&Argon2::default(), plain)
}

fn hash_with(argon2: &Argon2<'_>, plain: &str) -> Result<String, HashPasswordError> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    argon2
        .hash_password(plain.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| HashPasswordError(e.to_string()))
}

/// A new random secret (32 bytes from the OS CSPRNG, URL-safe base64 without padding, 43
/// characters) for `xmagent gen-key`: usable as URL key, API key or API secret without escaping.
pub fn generate_key() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

// ---------------------------------------------------------------------------------------------
// Clock
// ---------------------------------------------------------------------------------------------

/// The time source for token expiry and the verification cache, so tests can move time forward
/// instead of sleeping.
pub trait Clock: Send + Sync {
    /// The current monotonic time.
    fn now(&self) -> Instant;
}

/// The real monotonic clock (the default).
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that only moves when told to, for tests (here and in ingress/e2e tests) that need
/// tokens to expire without waiting.
#[derive(Debug)]
pub struct ManualClock {
    start: Instant,
    offset: Mutex<Duration>,
}

impl ManualClock {
    /// A clock standing at the current instant.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            offset: Mutex::new(Duration::ZERO),
        }
    }

    /// Move the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut offset = lock(&self.offset);
        *offset = offset.saturating_add(by);
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        let offset = *lock(&self.offset);
        self.start.checked_add(offset).unwrap_or(self.start)
    }
}

/// Lock a mutex, ignoring poisoning: every critical section here leaves the data consistent, so a
/// panic elsewhere must not turn every later request into a panic too.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------------------------------------
// The authenticator
// ---------------------------------------------------------------------------------------------

/// How a stored secret is verified.
enum Verifier {
    /// A plain secret from the config, reduced to its SHA-256 digest.
    Digest(SecretDigest),
    /// An argon2 PHC string, validated at load (shared, so a check on the pool needs no copy).
    Argon2(Arc<str>),
}

struct User {
    roles: Vec<String>,
    password: Option<Verifier>,
}

struct ApiKey {
    owner: String,
    secret: Verifier,
}

/// Separates cache entries of user passwords from those of API-key secrets, so a user and a key
/// that happen to share a name can never vouch for each other.
#[derive(Clone, Copy)]
enum Domain {
    Password,
    ApiKeySecret,
}

/// Counters for `/metrics` and for tests that must observe the cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AuthStats {
    /// Argon2 verifications actually computed (cache misses).
    pub argon2_verifications: u64,
    /// Argon2 checks answered from the cache of recent successes.
    pub cache_hits: u64,
    /// Access tokens currently stored (including expired ones not yet swept).
    pub access_tokens: usize,
    /// Refresh tokens currently stored (including expired ones not yet swept).
    pub refresh_tokens: usize,
}

/// A bounded map from a SHA-256 key to a user, a token family and an expiry time.
struct ExpiringSet {
    entries: HashMap<[u8; 32], Entry>,
    capacity: usize,
    last_sweep: Option<Instant>,
}

struct Entry {
    user: String,
    /// The OAuth token family (every token descended from one password grant), so reuse of a
    /// rotated refresh token can revoke them all; 0 for the verification cache.
    family: u64,
    expires: Instant,
}

impl ExpiringSet {
    fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            capacity,
            last_sweep: None,
        }
    }

    /// The user recorded for `key` if it has not expired; an expired entry is dropped.
    fn get(&mut self, key: &[u8; 32], now: Instant) -> Option<&str> {
        let live = self.entries.get(key).map(|e| e.expires > now)?;
        if !live {
            self.entries.remove(key);
            return None;
        }
        self.entries.get(key).map(|e| e.user.as_str())
    }

    /// Remove `key`, returning it if it had not expired (single use).
    fn take(&mut self, key: &[u8; 32], now: Instant) -> Option<Entry> {
        self.entries.remove(key).filter(|e| e.expires > now)
    }

    /// Drop every entry of token family `family`.
    fn revoke(&mut self, family: u64) {
        self.entries.retain(|_, e| e.family != family);
    }

    /// Record `key`. Sweeps expired entries when full (or once in a while); if the set is still
    /// full, drops the eighth of the entries closest to expiry, so inserts stay amortized cheap
    /// and memory stays bounded.
    fn insert(&mut self, key: [u8; 32], entry: Entry, now: Instant) {
        let sweep_due = self
            .last_sweep
            .is_none_or(|t| now.saturating_duration_since(t) >= TOKEN_SWEEP_INTERVAL);
        if self.entries.len() >= self.capacity || sweep_due {
            self.entries.retain(|_, e| e.expires > now);
            self.last_sweep = Some(now);
        }
        if self.entries.len() >= self.capacity {
            let mut expiries: Vec<Instant> = self.entries.values().map(|e| e.expires).collect();
            let cut = (self.capacity / 8).min(expiries.len().saturating_sub(1));
            let (_, threshold, _) = expiries.select_nth_unstable(cut);
            let threshold = *threshold;
            self.entries.retain(|_, e| e.expires > threshold);
        }
        self.entries.insert(key, entry);
    }

    fn len(&self) -> usize {
        self.entries.len()
    }
}

struct Tokens {
    access: ExpiringSet,
    refresh: ExpiringSet,
    /// Refresh tokens already redeemed, until they would have expired: presenting one again
    /// means it leaked, so its whole family is revoked (RFC 6819 §5.2.2.3, RFC 9700 §4.14.2).
    spent: ExpiringSet,
}

impl Tokens {
    fn revoke(&mut self, family: u64) {
        self.access.revoke(family);
        self.refresh.revoke(family);
        self.spent.revoke(family);
    }
}

struct Inner {
    users: HashMap<String, User>,
    api_keys: HashMap<String, ApiKey>,
    access_ttl: Duration,
    refresh_ttl: Duration,
    client_id: Option<String>,
    tokens: Mutex<Tokens>,
    next_family: AtomicU64,
    /// Recent successful argon2 verifications: SHA-256(domain, name, secret) → expiry.
    verified: Mutex<ExpiringSet>,
    argon2_verifications: AtomicU64,
    cache_hits: AtomicU64,
    /// Where argon2 runs: bounded threads and queue, never a tokio worker.
    pool: verify_pool::VerifyPool,
    throttle: throttle::FailureThrottle,
    /// A hash at the cost of the configured ones, checked when a name matches no user or key
    /// so unknown names cost as much as known ones; `None` when no argon2 hash is configured.
    dummy: Option<Verifier>,
    /// Users named in some integration's `allowed_users`: they may obtain OAuth tokens without
    /// the REST role (set once by the config loader).
    listed_callers: OnceLock<HashSet<String>>,
}

/// Verifies credentials for every inbound request and issues OAuth tokens.
///
/// Built once per loaded config ([`Authenticator::from_config`]); a reloaded config builds a new
/// one, which also resets issued tokens and the verification cache. Cloning is cheap (the state is
/// shared behind an `Arc`), so each connection task can hold its own handle.
///
/// Argon2 hashes cost tens of milliseconds to verify: a cache miss runs on the authenticator's own
/// bounded thread pool (successes are cached for ten minutes, so a steady client pays once).
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("users", &self.inner.users.len())
            .field("api_keys", &self.inner.api_keys.len())
            .field("access_ttl", &self.inner.access_ttl)
            .field("refresh_ttl", &self.inner.refresh_ttl)
            .finish_non_exhaustive()
    }
}

/// Builds config errors for one file without repeating it.
struct Errors<'a> {
    file: &'a Path,
}

impl Errors<'_> {
    fn err(&self, key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError::new(self.file.display(), key, reason)
    }
}

impl Authenticator {
    /// Build the authenticator from the `[[users]]` and `[oauth]` config.
    ///
    /// Reads `password_file`/`secret_file` (relative paths are resolved against `base_dir`,
    /// the config file's directory), reduces plain secrets to digests, validates PHC strings, and
    /// rejects ambiguous entries (several secret sources, duplicate user names or API keys) with
    /// an error naming `config_file`, the key (e.g. `users[1].api_keys[0].secret_file`) and the
    /// reason.
    pub fn from_config(
        users: &[UserConfig],
        oauth: &OAuthConfig,
        limits: &AuthLimitsConfig,
        config_file: &Path,
        base_dir: &Path,
    ) -> Result<Self, ConfigError> {
        let errors = Errors { file: config_file };
        let mut by_name: HashMap<String, User> = HashMap::new();
        let mut first_seen: HashMap<&str, usize> = HashMap::new();
        let mut api_keys: HashMap<String, ApiKey> = HashMap::new();
        let mut key_seen: HashMap<&str, String> = HashMap::new();

        for (i, user) in users.iter().enumerate() {
            let at = format!("users[{i}]");
            check_identifier(&errors, &format!("{at}.name"), &user.name, "user name")?;
            if let Some(previous) = first_seen.insert(user.name.as_str(), i) {
                return Err(errors.err(
                    format!("{at}.name"),
                    format!("duplicate user `{}` (also users[{previous}])", user.name),
                ));
            }
            let password = load_secret(
                &errors,
                base_dir,
                &at,
                ["password", "password_file", "password_hash"],
                user.password.as_deref(),
                user.password_file.as_deref(),
                user.password_hash.as_deref(),
                false,
            )?;
            for (j, key) in user.api_keys.iter().enumerate() {
                let key_at = format!("{at}.api_keys[{j}]");
                check_identifier(&errors, &format!("{key_at}.key"), &key.key, "API key")?;
                if let Some(previous) = key_seen.insert(key.key.as_str(), key_at.clone()) {
                    return Err(errors.err(
                        format!("{key_at}.key"),
                        format!("duplicate API key (also {previous}.key)"),
                    ));
                }
                let secret = load_secret(
                    &errors,
                    base_dir,
                    &key_at,
                    ["secret", "secret_file", "secret_hash"],
                    key.secret.as_deref(),
                    key.secret_file.as_deref(),
                    key.secret_hash.as_deref(),
                    true,
                )?
                .ok_or_else(|| {
                    errors.err(
                        key_at.clone(),
                        "an API key needs one of secret, secret_file, secret_hash",
                    )
                })?;
                api_keys.insert(
                    key.key.clone(),
                    ApiKey {
                        owner: user.name.clone(),
                        secret,
                    },
                );
            }
            by_name.insert(
                user.name.clone(),
                User {
                    roles: user.roles.clone(),
                    password,
                },
            );
        }

        let access_ttl = ttl(
            &errors,
            "oauth.access_token_ttl_secs",
            oauth.access_token_ttl_secs,
            DEFAULT_ACCESS_TOKEN_TTL_SECS,
        )?;
        let refresh_ttl = ttl(
            &errors,
            "oauth.refresh_token_ttl_secs",
            oauth.refresh_token_ttl_secs,
            DEFAULT_REFRESH_TOKEN_TTL_SECS,
        )?;
        if let Some(client_id) = &oauth.client_id {
            if client_id.trim().is_empty() {
                return Err(errors.err("oauth.client_id", "must not be empty when set"));
            }
        }

        let threads = match limits.verify_threads {
            Some(0) => return Err(errors.err("auth.verify_threads", "must be at least 1")),
            Some(n) if n > 64 => {
                return Err(errors.err("auth.verify_threads", "must be at most 64"))
            }
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(2, |n| n.get().min(64)),
        };
        let queue = limits
            .verify_queue
            .unwrap_or(threads * DEFAULT_QUEUE_PER_THREAD);
        if queue > 10_000 {
            return Err(errors.err("auth.verify_queue", "must be at most 10000"));
        }
        let max_failures = limits.max_failures.unwrap_or(DEFAULT_MAX_FAILURES);
        if max_failures == 0 {
            return Err(errors.err("auth.max_failures", "must be at least 1"));
        }
        let window = limits
            .failure_window_secs
            .unwrap_or(DEFAULT_FAILURE_WINDOW_SECS);
        if window == 0 || window > 86_400 {
            return Err(errors.err(
                "auth.failure_window_secs",
                "must be between 1 and 86400 seconds",
            ));
        }
        let dummy = dummy_verifier(
            by_name
                .values()
                .filter_map(|u| u.password.as_ref())
                .chain(api_keys.values().map(|k| &k.secret)),
        )
        .map_err(|e| errors.err("users", e.to_string()))?;

        Ok(Self {
            inner: Arc::new(Inner {
                users: by_name,
                api_keys,
                access_ttl,
                refresh_ttl,
                client_id: oauth.client_id.clone(),
                tokens: Mutex::new(Tokens {
                    access: ExpiringSet::new(MAX_TOKENS),
                    refresh: ExpiringSet::new(MAX_TOKENS),
                    spent: ExpiringSet::new(MAX_TOKENS),
                }),
                next_family: AtomicU64::new(1),
                verified: Mutex::new(ExpiringSet::new(VERIFY_CACHE_CAPACITY)),
                argon2_verifications: AtomicU64::new(0),
                cache_hits: AtomicU64::new(0),
                pool: verify_pool::VerifyPool::new(threads, queue),
                throttle: throttle::FailureThrottle::new(max_failures, Duration::from_secs(window)),
                dummy,
                listed_callers: OnceLock::new(),
            }),
            clock: Arc::new(SystemClock),
        })
    }

    /// Use `clock` for token expiry and the verification cache (tests use a [`ManualClock`]).
    /// Call it right after construction: clones made earlier keep the old clock.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Check that `name` can serve as an integration's authenticating user: it exists and holds
    /// [`REST_WEB_SERVICE_USER`]. The `Err` is a reason for the config loader's `ConfigError`.
    pub fn check_authenticating_user(&self, name: &str) -> Result<(), String> {
        match self.inner.users.get(name) {
            None => Err(format!("no user `{name}` is configured in [[users]]")),
            Some(user) if !has_role(user, REST_WEB_SERVICE_USER) => Err(format!(
                "user `{name}` does not hold the role `{REST_WEB_SERVICE_USER}`"
            )),
            Some(_) => Ok(()),
        }
    }

    /// Whether a user of this name is configured, so the config loader can reject an
    /// `allowed_users` entry that names nobody.
    pub fn has_user(&self, name: &str) -> bool {
        self.inner.users.contains_key(name)
    }

    /// Counters of argon2 work, cache hits and stored tokens, for `/metrics`.
    pub fn stats(&self) -> AuthStats {
        let tokens = lock(&self.inner.tokens);
        AuthStats {
            argon2_verifications: self.inner.argon2_verifications.load(Ordering::Relaxed),
            cache_hits: self.inner.cache_hits.load(Ordering::Relaxed),
            access_tokens: tokens.access.len(),
            refresh_tokens: tokens.refresh.len(),
        }
    }

    /// Let the users named in some integration's `allowed_users` obtain OAuth tokens even without
    /// the REST role (they may call that integration). Called once by the config loader after the
    /// integrations are built; later calls are ignored.
    pub fn permit_listed_callers(&self, names: HashSet<String>) {
        let _ = self.inner.listed_callers.set(names);
    }

    /// Authenticate a request from `source` to an integration with `policy` and check that the
    /// principal may trigger it. `api_key_param` is the `apiKey` query parameter, if present.
    ///
    /// In `any` mode every credential the request carries is tried (Bearer, then Basic as API key,
    /// then Basic as password, then the URL key) and the first that verifies wins. Argon2 cache
    /// misses run on the verification pool; a full pool answers [`AuthError::Busy`], a
    /// (source, name) pair that failed too often [`AuthError::Throttled`].
    pub async fn authenticate(
        &self,
        policy: &IntegrationAuth,
        headers: &HeaderMap,
        api_key_param: Option<&str>,
        source: IpAddr,
    ) -> Result<Principal, AuthError> {
        let principal = self
            .identify(policy, headers, api_key_param, source)
            .await?;
        self.authorize(policy, principal)
    }

    /// Authenticate a caller of an admin endpoint: the agent's admin token (`admin_token`, as
    /// Bearer) or a configured user holding [`AGENT_ADMIN_ROLE`]. A valid user without the role
    /// gets [`AuthError::NotAdmin`] (403). One function so every admin route checks alike.
    pub async fn authenticate_admin(
        &self,
        headers: &HeaderMap,
        source: IpAddr,
        admin_token: &SecretDigest,
    ) -> Result<AdminCaller, AuthError> {
        if let Some(token) = bearer_token(headers.get(AUTHORIZATION)) {
            if admin_token.matches(&token) {
                return Ok(AdminCaller::Token);
            }
        }
        let any = IntegrationAuth::default();
        let principal = self.identify(&any, headers, None, source).await?;
        let is_admin = self
            .inner
            .users
            .get(&principal.user)
            .is_some_and(|u| has_role(u, AGENT_ADMIN_ROLE));
        if is_admin {
            Ok(AdminCaller::User(principal.user))
        } else {
            Err(AuthError::NotAdmin {
                user: principal.user,
            })
        }
    }

    /// Serve `POST /api/xm/1/oauth2/token` for a client at `source`: `form_body` is the
    /// form-urlencoded request body.
    ///
    /// `grant_type=password` verifies `username`/`password` like Basic (same pool, same
    /// throttle) and issues tokens only to users who may call integrations (the REST role, or
    /// named in an `allowed_users`). `grant_type=refresh_token` redeems a refresh token once (it
    /// is rotated: the answer carries a new one); presenting an already redeemed one revokes
    /// every token descended from the same password grant. When the config names a
    /// `client_id`, the request must carry it.
    pub async fn token(
        &self,
        form_body: &[u8],
        source: IpAddr,
    ) -> Result<TokenResponse, OAuthError> {
        let form = parse_form(form_body)?;
        let grant_type = form
            .get("grant_type")
            .ok_or_else(|| OAuthError::invalid_request("missing grant_type"))?;
        if grant_type != "password" && grant_type != "refresh_token" {
            return Err(OAuthError::unsupported_grant_type());
        }
        if let Some(expected) = &self.inner.client_id {
            if form.get("client_id") != Some(expected) {
                return Err(OAuthError::invalid_client());
            }
        }
        let required = |name: &str| {
            form.get(name)
                .ok_or_else(|| OAuthError::invalid_request(format!("missing {name}")))
        };

        if grant_type == "password" {
            let username = required("username")?;
            let password = required("password")?;
            let principal = match self
                .check_basic(source, username, password, false, true)
                .await
            {
                Ok(Some(principal)) => principal,
                Ok(None) => return Err(OAuthError::invalid_grant("invalid username or password")),
                Err(error) => return Err(OAuthError::unavailable(&error)),
            };
            if !self.may_call_integrations(&principal.user) {
                return Err(OAuthError::unauthorized_client());
            }
            let family = self.inner.next_family.fetch_add(1, Ordering::Relaxed);
            return self.issue(principal.user, family);
        }
        let refresh = token_key(required("refresh_token")?);
        let now = self.clock.now();
        let mut tokens = lock(&self.inner.tokens);
        if let Some(entry) = tokens.refresh.take(&refresh, now) {
            let family = entry.family;
            let user = entry.user.clone();
            tokens.spent.insert(refresh, entry, now);
            drop(tokens);
            return self.issue(user, family);
        }
        if let Some(reused) = tokens.spent.take(&refresh, now) {
            tokens.revoke(reused.family);
            tracing::warn!(
                user = %reused.user,
                "a refresh token was presented twice; every token of its grant is revoked"
            );
        }
        Err(OAuthError::invalid_grant(
            "invalid or expired refresh token",
        ))
    }

    // --- internals ---------------------------------------------------------------------------

    async fn identify(
        &self,
        policy: &IntegrationAuth,
        headers: &HeaderMap,
        api_key_param: Option<&str>,
        source: IpAddr,
    ) -> Result<Principal, AuthError> {
        let mode = policy.mode;
        let accepts = |m: AuthMode| mode == AuthMode::Any || mode == m;
        let authorization = headers.get(AUTHORIZATION);
        let mut presented = false;
        let mut bad_token = false;

        if accepts(AuthMode::Oauth) {
            if let Some(token) = bearer_token(authorization) {
                presented = true;
                if let Some(user) = self.check_access_token(&token) {
                    return Ok(Principal {
                        user,
                        method: AuthMethod::Oauth,
                    });
                }
                bad_token = true;
            }
        }
        if accepts(AuthMode::ApiKey) || accepts(AuthMode::Basic) {
            if let Some((name, secret)) = basic_credentials(authorization) {
                presented = true;
                let checked = self
                    .check_basic(
                        source,
                        &name,
                        &secret,
                        accepts(AuthMode::ApiKey),
                        accepts(AuthMode::Basic),
                    )
                    .await?;
                if let Some(principal) = checked {
                    return Ok(principal);
                }
            }
        }
        if accepts(AuthMode::Url) {
            if let Some(given) = api_key_param {
                presented = true;
                if let (Some(digest), Some(user)) = (&policy.url_key, &policy.authenticating_user) {
                    if digest.matches(given) {
                        return Ok(Principal {
                            user: user.clone(),
                            method: AuthMethod::Url,
                        });
                    }
                }
            }
        }
        Err(AuthError::unauthorized(if !presented {
            REASON_MISSING
        } else if bad_token {
            REASON_BAD_TOKEN
        } else {
            REASON_INVALID
        }))
    }

    /// Check Basic-style credentials as an API key (if `as_key`) and as a user's password (if
    /// `as_password`), throttled per (source, name). `Ok(None)`: wrong credentials (counted as a
    /// failure of the pair).
    async fn check_basic(
        &self,
        source: IpAddr,
        name: &str,
        secret: &str,
        as_key: bool,
        as_password: bool,
    ) -> Result<Option<Principal>, AuthError> {
        let throttle = &self.inner.throttle;
        if let Err(wait) = throttle.check(source, name, self.clock.now()) {
            return Err(AuthError::Throttled {
                retry_after_secs: wait.as_secs().max(1),
            });
        }
        let key = self.inner.api_keys.get(name).filter(|_| as_key);
        let password = self
            .inner
            .users
            .get(name)
            .and_then(|u| u.password.as_ref())
            .filter(|_| as_password);
        let mut found = None;
        if let Some(key) = key {
            if self
                .verify(Domain::ApiKeySecret, name, secret, &key.secret)
                .await?
            {
                found = Some(Principal {
                    user: key.owner.clone(),
                    method: AuthMethod::ApiKey,
                });
            }
        }
        if let (None, Some(verifier)) = (&found, password) {
            if self
                .verify(Domain::Password, name, secret, verifier)
                .await?
            {
                found = Some(Principal {
                    user: name.to_owned(),
                    method: AuthMethod::Basic,
                });
            }
        }
        if key.is_none() && password.is_none() {
            // Nobody by that name: spend what a real check would, then fail.
            if let Some(dummy) = &self.inner.dummy {
                self.verify(Domain::Password, name, secret, dummy).await?;
            }
        }
        if found.is_some() {
            throttle.succeeded(source, name);
        } else {
            throttle.failed(source, name, self.clock.now());
        }
        Ok(found)
    }

    fn authorize(
        &self,
        policy: &IntegrationAuth,
        principal: Principal,
    ) -> Result<Principal, AuthError> {
        let permitted = match &policy.allowed_users {
            Some(allowed) => allowed.contains(&principal.user),
            None => self
                .inner
                .users
                .get(&principal.user)
                .is_some_and(|u| has_role(u, REST_WEB_SERVICE_USER)),
        };
        if permitted {
            Ok(principal)
        } else {
            Err(AuthError::Forbidden {
                user: principal.user,
            })
        }
    }

    /// Whether `user` may call some integration, so may hold an OAuth token.
    fn may_call_integrations(&self, user: &str) -> bool {
        self.inner
            .users
            .get(user)
            .is_some_and(|u| has_role(u, REST_WEB_SERVICE_USER))
            || self
                .inner
                .listed_callers
                .get()
                .is_some_and(|names| names.contains(user))
    }

    fn check_access_token(&self, token: &str) -> Option<String> {
        let now = self.clock.now();
        lock(&self.inner.tokens)
            .access
            .get(&token_key(token), now)
            .map(str::to_owned)
    }

    async fn verify(
        &self,
        domain: Domain,
        name: &str,
        given: &str,
        verifier: &Verifier,
    ) -> Result<bool, AuthError> {
        let phc = match verifier {
            Verifier::Digest(digest) => return Ok(digest.matches(given)),
            Verifier::Argon2(phc) => Arc::clone(phc),
        };
        let key = cache_key(domain, name, given);
        let now = self.clock.now();
        if lock(&self.inner.verified).get(&key, now).is_some() {
            self.inner.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(true);
        }
        let given = given.to_owned();
        let ok = self
            .inner
            .pool
            .run(move || argon2_matches(&phc, &given))
            .await
            .map_err(|_| AuthError::Busy)?;
        self.inner
            .argon2_verifications
            .fetch_add(1, Ordering::Relaxed);
        if ok {
            let now = self.clock.now();
            let expires = now.checked_add(VERIFY_CACHE_TTL).unwrap_or(now);
            let entry = Entry {
                user: String::new(),
                family: 0,
                expires,
            };
            lock(&self.inner.verified).insert(key, entry, now);
        }
        Ok(ok)
    }

    fn issue(&self, user: String, family: u64) -> Result<TokenResponse, OAuthError> {
        let now = self.clock.now();
        let access_expires = now
            .checked_add(self.inner.access_ttl)
            .ok_or_else(OAuthError::server_error)?;
        let refresh_expires = now
            .checked_add(self.inner.refresh_ttl)
            .ok_or_else(OAuthError::server_error)?;
        let access_token = generate_key();
        let refresh_token = generate_key();
        {
            let mut tokens = lock(&self.inner.tokens);
            let access = Entry {
                user: user.clone(),
                family,
                expires: access_expires,
            };
            tokens.access.insert(token_key(&access_token), access, now);
            let refresh = Entry {
                user,
                family,
                expires: refresh_expires,
            };
            tokens
                .refresh
                .insert(token_key(&refresh_token), refresh, now);
        }
        Ok(TokenResponse {
            access_token,
            token_type: "bearer",
            expires_in: self.inner.access_ttl.as_secs(),
            refresh_token,
        })
    }
}

/// Who passed [`Authenticator::authenticate_admin`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminCaller {
    /// The agent's admin token (the CLI): sees everything.
    Token,
    /// A user holding [`AGENT_ADMIN_ROLE`]: sees the integrations whose `allowed_users` (if set)
    /// name them.
    User(String),
}

impl AdminCaller {
    /// Whether this caller may see the data (activity, request records, dead letters) of an
    /// integration with `policy`: `allowed_users` holds here too.
    pub fn may_see(&self, policy: &IntegrationAuth) -> bool {
        match (self, &policy.allowed_users) {
            (AdminCaller::Token, _) | (AdminCaller::User(_), None) => true,
            (AdminCaller::User(name), Some(allowed)) => allowed.contains(name),
        }
    }
}

/// A verifier for names that match nobody: a hash of a random secret at the parameters of the
/// costliest configured argon2 hash, or `None` when every secret is a plain digest (then a known
/// name costs a digest too).
fn dummy_verifier<'a>(
    configured: impl Iterator<Item = &'a Verifier>,
) -> Result<Option<Verifier>, HashPasswordError> {
    let costliest = configured
        .filter_map(|v| match v {
            Verifier::Argon2(phc) => {
                let hash = PasswordHash::new(phc).ok()?;
                let params = argon2::Params::try_from(&hash).ok()?;
                let algorithm = argon2::Algorithm::try_from(hash.algorithm).ok()?;
                Some((algorithm, params))
            }
            Verifier::Digest(_) => None,
        })
        .max_by_key(|(_, p)| u64::from(p.m_cost()) * u64::from(p.t_cost()));
    let Some((algorithm, params)) = costliest else {
        return Ok(None);
    };
    let argon2 = Argon2::new(algorithm, argon2::Version::V0x13, params);
    let phc = hash_with(&argon2, &generate_key())?;
    Ok(Some(Verifier::Argon2(phc.into())))
}

fn has_role(user: &User, role: &str) -> bool {
    user.roles.iter().any(|r| r == role)
}

/// Tokens are stored under their SHA-256, so a memory dump does not yield usable tokens and the
/// lookup does not compare the token itself.
fn token_key(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The verification cache key: SHA-256 over the domain, the length-prefixed name and the secret,
/// so no two (name, secret) pairs can produce the same input.
fn cache_key(domain: Domain, name: &str, secret: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(match domain {
        Domain::Password => b"password\0",
        Domain::ApiKeySecret => b"api-key\0\0",
    });
    hasher.update((name.len() as u64).to_be_bytes());
    hasher.update(name.as_bytes());
    hasher.update([0u8]);
    hasher.update(secret.as_bytes());
    hasher.finalize().into()
}

/// Parse a form body, refusing repeated parameters (RFC 6749 §3.2).
pub fn parse_form(body: &[u8]) -> Result<HashMap<String, String>, OAuthError> {
    let mut form = HashMap::new();
    for (name, value) in form_urlencoded::parse(body) {
        let name = name.into_owned();
        if form.contains_key(&name) {
            return Err(OAuthError::invalid_request(format!(
                "parameter `{name}` given more than once"
            )));
        }
        form.insert(name, value.into_owned());
    }
    Ok(form)
}

/// Reject names that can never authenticate: empty, surrounded by whitespace, or containing `:`
/// (Basic credentials split user and password at the first colon).
fn check_identifier(
    errors: &Errors<'_>,
    key: &str,
    value: &str,
    what: &str,
) -> Result<(), ConfigError> {
    if value.is_empty() {
        return Err(errors.err(key, format!("the {what} must not be empty")));
    }
    if value.trim() != value {
        return Err(errors.err(
            key,
            format!("the {what} must not start or end with whitespace"),
        ));
    }
    if value.contains(':') {
        return Err(errors.err(
            key,
            format!("the {what} must not contain `:` (Basic credentials cannot carry it)"),
        ));
    }
    Ok(())
}

/// Resolve one secret from its three possible sources. `names` are the config keys of the plain,
/// file and hash variants. With `required == false`, no source yields `Ok(None)`.
#[allow(clippy::too_many_arguments)]
fn load_secret(
    errors: &Errors<'_>,
    base_dir: &Path,
    at: &str,
    names: [&str; 3],
    plain: Option<&str>,
    file: Option<&Path>,
    hash: Option<&str>,
    required: bool,
) -> Result<Option<Verifier>, ConfigError> {
    let [plain_key, file_key, hash_key] = names;
    let set: Vec<&str> = [
        (plain.is_some(), plain_key),
        (file.is_some(), file_key),
        (hash.is_some(), hash_key),
    ]
    .iter()
    .filter(|(present, _)| *present)
    .map(|(_, name)| *name)
    .collect();
    if set.len() > 1 {
        return Err(errors.err(
            at,
            format!(
                "{} are all set; set exactly one of {plain_key}, {file_key}, {hash_key}",
                set.join(" and ")
            ),
        ));
    }
    if let Some(plain) = plain {
        if plain.is_empty() {
            return Err(errors.err(format!("{at}.{plain_key}"), "must not be empty"));
        }
        return Ok(Some(Verifier::Digest(SecretDigest::new(plain))));
    }
    if let Some(file) = file {
        let path = if file.is_absolute() {
            file.to_path_buf()
        } else {
            base_dir.join(file)
        };
        let text = std::fs::read_to_string(&path).map_err(|e| {
            errors.err(
                format!("{at}.{file_key}"),
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        let secret = text.trim_end_matches(['\r', '\n']);
        if secret.is_empty() {
            return Err(errors.err(
                format!("{at}.{file_key}"),
                format!("{} is empty", path.display()),
            ));
        }
        return Ok(Some(Verifier::Digest(SecretDigest::new(secret))));
    }
    if let Some(hash) = hash {
        return validate_phc(hash.trim())
            .map(|phc| Some(Verifier::Argon2(phc.into())))
            .map_err(|reason| errors.err(format!("{at}.{hash_key}"), reason));
    }
    if required {
        return Err(errors.err(
            at,
            format!("set exactly one of {plain_key}, {file_key}, {hash_key}"),
        ));
    }
    Ok(None)
}

/// Check that `phc` is an argon2 PHC string we can verify at a sane cost. The reason never
/// repeats the string itself.
fn validate_phc(phc: &str) -> Result<&str, String> {
    const HINT: &str = "(create one with `xmagent hash-password`)";
    let hash =
        PasswordHash::new(phc).map_err(|e| format!("not a valid PHC hash string: {e} {HINT}"))?;
    argon2::Algorithm::try_from(hash.algorithm)
        .map_err(|_| format!("`{}` is not an argon2 algorithm {HINT}", hash.algorithm))?;
    if hash.salt.is_none() || hash.hash.is_none() {
        return Err(format!("the PHC string lacks a salt or a hash {HINT}"));
    }
    let params = argon2::Params::try_from(&hash)
        .map_err(|e| format!("invalid argon2 parameters: {e} {HINT}"))?;
    if params.m_cost() > MAX_ARGON2_M_COST_KIB
        || params.t_cost() > MAX_ARGON2_T_COST
        || params.p_cost() > MAX_ARGON2_P_COST
    {
        return Err(format!(
            "argon2 cost too high to verify per request (at most m={MAX_ARGON2_M_COST_KIB}, \
             t={MAX_ARGON2_T_COST}, p={MAX_ARGON2_P_COST})"
        ));
    }
    Ok(phc)
}

fn ttl(
    errors: &Errors<'_>,
    key: &str,
    value: Option<u64>,
    default: u64,
) -> Result<Duration, ConfigError> {
    let secs = value.unwrap_or(default);
    if secs == 0 || secs > MAX_TOKEN_TTL_SECS {
        return Err(errors.err(
            key,
            format!("must be between 1 and {MAX_TOKEN_TTL_SECS} seconds, not {secs}"),
        ));
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const URL_KEY: &str = "url-key-0123456789";
    /// The source address of test requests.
    const SRC: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    /// Limits that never throttle, for tests that try many wrong credentials on purpose.
    fn lenient_limits() -> AuthLimitsConfig {
        AuthLimitsConfig {
            max_failures: Some(1_000_000),
            ..AuthLimitsConfig::default()
        }
    }

    /// Argon2id at the smallest cost, so unit tests in debug builds stay fast.
    fn cheap_hash(plain: &str) -> String {
        let params = argon2::Params::new(8, 1, 1, None).expect("valid test params");
        let argon2 = Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        hash_with(&argon2, plain).expect("hashing a short test password")
    }

    fn user(name: &str, roles: &[&str]) -> UserConfig {
        UserConfig {
            name: name.to_owned(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            password: None,
            password_file: None,
            password_hash: None,
            api_keys: Vec::new(),
        }
    }

    fn key(key: &str) -> ApiKeyConfig {
        ApiKeyConfig {
            key: key.to_owned(),
            secret: None,
            secret_file: None,
            secret_hash: None,
        }
    }

    fn users() -> Vec<UserConfig> {
        let mut svc = user("svc", &[REST_WEB_SERVICE_USER]);
        svc.password = Some("svc-pass".into());
        svc.api_keys.push(ApiKeyConfig {
            secret: Some("sec-plain".into()),
            ..key("key-plain")
        });
        let mut hashy = user("hashy", &[REST_WEB_SERVICE_USER, "Developer"]);
        hashy.password_hash = Some(cheap_hash("hash-pass"));
        hashy.api_keys.push(ApiKeyConfig {
            secret_hash: Some(cheap_hash("sec-hash")),
            ..key("key-hashed")
        });
        let mut norole = user("norole", &["Standard User"]);
        norole.password = Some("np".into());
        let nopass = user("nopass", &[REST_WEB_SERVICE_USER]);
        let mut boss = user("boss", &[AGENT_ADMIN_ROLE]);
        boss.password = Some("boss-pass".into());
        vec![svc, hashy, norole, nopass, boss]
    }

    fn authenticator(oauth: &OAuthConfig) -> (Authenticator, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new());
        let auth = Authenticator::from_config(
            &users(),
            oauth,
            &lenient_limits(),
            Path::new("/etc/xmagent/config.toml"),
            Path::new("/etc/xmagent"),
        )
        .expect("valid test config")
        .with_clock(clock.clone());
        (auth, clock)
    }

    fn policy(mode: AuthMode) -> IntegrationAuth {
        IntegrationAuth {
            mode,
            url_key: Some(SecretDigest::new(URL_KEY)),
            authenticating_user: Some("svc".into()),
            allowed_users: None,
        }
    }

    fn basic(user: &str, password: &str) -> HeaderMap {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let mut headers = HeaderMap::new();
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {encoded}")).expect("ascii header"),
        );
        headers
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).expect("ascii header"),
        );
        headers
    }

    async fn login(auth: &Authenticator, user: &str, password: &str) -> TokenResponse {
        let body = format!("grant_type=password&username={user}&password={password}");
        auth.token(body.as_bytes(), SRC)
            .await
            .expect("password grant")
    }

    fn config_error(users: &[UserConfig], oauth: &OAuthConfig, base: &Path) -> String {
        match Authenticator::from_config(
            users,
            oauth,
            &AuthLimitsConfig::default(),
            Path::new("/cfg/agent.toml"),
            base,
        ) {
            Ok(_) => panic!("config should have been rejected"),
            Err(e) => {
                assert_eq!(e.file, "/cfg/agent.toml");
                e.to_string()
            }
        }
    }

    fn assert_unauthorized(result: Result<Principal, AuthError>, context: &str) {
        match result {
            Err(AuthError::Unauthorized { .. }) => {}
            other => panic!("{context}: expected Unauthorized, got {other:?}"),
        }
    }

    #[derive(Clone, Copy, Debug)]
    enum Cred {
        UrlKey,
        BasicPlain,
        BasicArgon2,
        ApiKeyPlain,
        ApiKeyHashed,
        Bearer,
    }

    const MODES: [AuthMode; 5] = [
        AuthMode::Any,
        AuthMode::Url,
        AuthMode::Basic,
        AuthMode::ApiKey,
        AuthMode::Oauth,
    ];
    const CREDS: [Cred; 6] = [
        Cred::UrlKey,
        Cred::BasicPlain,
        Cred::BasicArgon2,
        Cred::ApiKeyPlain,
        Cred::ApiKeyHashed,
        Cred::Bearer,
    ];

    /// The request parts for `cred`, with the right or a wrong secret, and the principal it
    /// should yield.
    fn request(
        cred: Cred,
        right: bool,
        token: &str,
    ) -> (HeaderMap, Option<String>, &'static str, AuthMethod) {
        let pick = |good: &str, bad: &str| {
            if right {
                good.to_owned()
            } else {
                bad.to_owned()
            }
        };
        match cred {
            Cred::UrlKey => (
                HeaderMap::new(),
                Some(pick(URL_KEY, "url-key-0123456788")),
                "svc",
                AuthMethod::Url,
            ),
            Cred::BasicPlain => (
                basic("svc", &pick("svc-pass", "svc-pasS")),
                None,
                "svc",
                AuthMethod::Basic,
            ),
            Cred::BasicArgon2 => (
                basic("hashy", &pick("hash-pass", "hash-pas")),
                None,
                "hashy",
                AuthMethod::Basic,
            ),
            Cred::ApiKeyPlain => (
                basic("key-plain", &pick("sec-plain", "sec-plaim")),
                None,
                "svc",
                AuthMethod::ApiKey,
            ),
            Cred::ApiKeyHashed => (
                basic("key-hashed", &pick("sec-hash", "")),
                None,
                "hashy",
                AuthMethod::ApiKey,
            ),
            Cred::Bearer => (
                bearer(&pick(token, "not-a-token")),
                None,
                "hashy",
                AuthMethod::Oauth,
            ),
        }
    }

    fn accepted(cred: Cred, mode: AuthMode) -> bool {
        mode == AuthMode::Any
            || matches!(
                (cred, mode),
                (Cred::UrlKey, AuthMode::Url)
                    | (Cred::BasicPlain | Cred::BasicArgon2, AuthMode::Basic)
                    | (Cred::ApiKeyPlain | Cred::ApiKeyHashed, AuthMode::ApiKey)
                    | (Cred::Bearer, AuthMode::Oauth)
            )
    }

    #[tokio::test]
    async fn every_credential_kind_against_every_mode() {
        let (auth, _) = authenticator(&OAuthConfig::default());
        let token = login(&auth, "hashy", "hash-pass").await.access_token;
        let mut checked = 0;
        for mode in MODES {
            for cred in CREDS {
                let context = format!("{cred:?} in mode {mode:?}");
                let (headers, param, user, method) = request(cred, true, &token);
                let result = auth
                    .authenticate(&policy(mode), &headers, param.as_deref(), SRC)
                    .await;
                if accepted(cred, mode) {
                    let principal = result.unwrap_or_else(|e| panic!("{context}: {e}"));
                    assert_eq!(principal.user, user, "{context}");
                    assert_eq!(principal.method, method, "{context}");
                } else {
                    assert_unauthorized(result, &context);
                }
                let (headers, param, _, _) = request(cred, false, &token);
                let result = auth
                    .authenticate(&policy(mode), &headers, param.as_deref(), SRC)
                    .await;
                assert_unauthorized(result, &format!("wrong secret: {context}"));
                checked += 1;
            }
        }
        assert_eq!(checked, MODES.len() * CREDS.len());
    }

    #[tokio::test]
    async fn missing_credentials_are_unauthorized_with_a_challenge() {
        let (auth, _) = authenticator(&OAuthConfig::default());
        for mode in MODES {
            let err = auth
                .authenticate(&policy(mode), &HeaderMap::new(), None, SRC)
                .await
                .expect_err("no credentials");
            assert!(
                matches!(err, AuthError::Unauthorized { reason } if reason == REASON_MISSING),
                "{mode:?}: {err:?}"
            );
            let challenge = err.www_authenticate(mode).expect("401 carries a challenge");
            assert!(challenge.contains(r#"realm="xmagent""#), "{challenge}");
        }
        let err = AuthError::unauthorized(REASON_MISSING);
        assert_eq!(
            err.www_authenticate(AuthMode::Basic),
            Some(r#"Basic realm="xmagent""#)
        );
        assert_eq!(
            err.www_authenticate(AuthMode::Oauth),
            Some(r#"Bearer realm="xmagent""#)
        );
        let forbidden = AuthError::Forbidden { user: "x".into() };
        assert_eq!(forbidden.www_authenticate(AuthMode::Any), None);
    }

    #[tokio::test]
    async fn unknown_users_keys_and_malformed_headers_are_unauthorized() {
        let (auth, _) = authenticator(&OAuthConfig::default());
        let mut garbage = HeaderMap::new();
        garbage.insert(AUTHORIZATION, HeaderValue::from_static("Basic !!!"));
        let cases = [
            basic("nobody", "svc-pass"),
            basic("key-unknown", "sec-plain"),
            basic("nopass", ""),
            basic("svc", ""),
            garbage,
        ];
        for (i, headers) in cases.iter().enumerate() {
            for mode in MODES {
                assert_unauthorized(
                    auth.authenticate(&policy(mode), headers, None, SRC).await,
                    &format!("case {i} mode {mode:?}"),
                );
            }
        }
        // A URL key on an integration without one never authenticates.
        let no_key = IntegrationAuth {
            url_key: None,
            ..policy(AuthMode::Url)
        };
        assert_unauthorized(
            auth.authenticate(&no_key, &HeaderMap::new(), Some(""), SRC)
                .await,
            "no url key",
        );
    }

    #[tokio::test]
    async fn unauthorized_messages_never_contain_the_secret_or_name_the_wrong_part() {
        let (auth, _) = authenticator(&OAuthConfig::default());
        let err = auth
            .authenticate(
                &policy(AuthMode::Basic),
                &basic("svc", "guess-XYZ"),
                None,
                SRC,
            )
            .await
            .expect_err("wrong password");
        let text = format!("{err} {err:?}");
        assert!(!text.contains("guess-XYZ"), "{text}");
        assert!(!text.contains("svc"), "{text}");
        assert!(!text.contains("password"), "{text}");
        assert_eq!(
            err.to_string(),
            "authentication failed: invalid credentials"
        );
    }

    #[tokio::test]
    async fn user_without_the_role_is_forbidden_not_unauthorized() {
        let (auth, _) = authenticator(&OAuthConfig::default());
        for mode in [AuthMode::Any, AuthMode::Basic] {
            match auth
                .authenticate(&policy(mode), &basic("norole", "np"), None, SRC)
                .await
            {
                Err(AuthError::Forbidden { user }) => assert_eq!(user, "norole"),
                other => panic!("{mode:?}: expected Forbidden, got {other:?}"),
            }
        }
        // ...but a wrong password for that user is still a 401, not a hint that the user exists.
        assert_unauthorized(
            auth.authenticate(&policy(AuthMode::Basic), &basic("norole", "nq"), None, SRC)
                .await,
            "wrong password of role-less user",
        );
    }

    #[tokio::test]
    async fn allowed_users_replace_the_role_check() {
        let (auth, _) = authenticator(&OAuthConfig::default());
        let only_norole = IntegrationAuth {
            allowed_users: Some(vec!["norole".into()]),
            ..policy(AuthMode::Any)
        };
        let principal = auth
            .authenticate(&only_norole, &basic("norole", "np"), None, SRC)
            .await
            .expect("listed user without the role is allowed");
        assert_eq!(principal.user, "norole");
        match auth
            .authenticate(&only_norole, &basic("svc", "svc-pass"), None, SRC)
            .await
        {
            Err(AuthError::Forbidden { user }) => assert_eq!(user, "svc"),
            other => panic!("unlisted user: expected Forbidden, got {other:?}"),
        }
        // URL-key and API-key requests are checked as the user they act as.
        match auth
            .authenticate(&only_norole, &HeaderMap::new(), Some(URL_KEY), SRC)
            .await
        {
            Err(AuthError::Forbidden { user }) => assert_eq!(user, "svc"),
            other => panic!("url key: expected Forbidden, got {other:?}"),
        }
        match auth
            .authenticate(&only_norole, &basic("key-plain", "sec-plain"), None, SRC)
            .await
        {
            Err(AuthError::Forbidden { user }) => assert_eq!(user, "svc"),
            other => panic!("api key: expected Forbidden, got {other:?}"),
        }
        let principal = auth
            .authenticate(
                &IntegrationAuth {
                    allowed_users: Some(vec!["svc".into()]),
                    ..policy(AuthMode::ApiKey)
                },
                &basic("key-plain", "sec-plain"),
                None,
                SRC,
            )
            .await
            .expect("key owner is listed");
        assert_eq!(principal.user, "svc");
    }

    #[tokio::test]
    async fn any_mode_falls_back_to_the_url_key_when_the_header_fails() {
        let (auth, _) = authenticator(&OAuthConfig::default());
        let principal = auth
            .authenticate(
                &policy(AuthMode::Any),
                &basic("svc", "wrong"),
                Some(URL_KEY),
                SRC,
            )
            .await
            .expect("the url key verifies");
        assert_eq!(principal.method, AuthMethod::Url);
    }

    #[tokio::test]
    async fn argon2_success_is_cached_failures_are_not() {
        let (auth, clock) = authenticator(&OAuthConfig::default());
        let p = policy(AuthMode::Basic);
        let good = basic("hashy", "hash-pass");
        auth.authenticate(&p, &good, None, SRC)
            .await
            .expect("first check");
        assert_eq!(auth.stats().argon2_verifications, 1);
        assert_eq!(auth.stats().cache_hits, 0);

        auth.authenticate(&p, &good, None, SRC)
            .await
            .expect("second check");
        let stats = auth.stats();
        assert_eq!(stats.argon2_verifications, 1, "second check must not hash");
        assert_eq!(stats.cache_hits, 1);

        for _ in 0..2 {
            assert_unauthorized(
                auth.authenticate(&p, &basic("hashy", "nope"), None, SRC)
                    .await,
                "wrong",
            );
        }
        assert_eq!(
            auth.stats().argon2_verifications,
            3,
            "failures are never cached"
        );

        // API-key secrets share the cache but not its entries.
        let key = basic("key-hashed", "sec-hash");
        auth.authenticate(&policy(AuthMode::ApiKey), &key, None, SRC)
            .await
            .expect("key");
        auth.authenticate(&policy(AuthMode::ApiKey), &key, None, SRC)
            .await
            .expect("key again");
        assert_eq!(auth.stats().argon2_verifications, 4);
        assert_eq!(auth.stats().cache_hits, 2);

        // Entries expire.
        clock.advance(VERIFY_CACHE_TTL + Duration::from_secs(1));
        auth.authenticate(&p, &good, None, SRC)
            .await
            .expect("after expiry");
        assert_eq!(auth.stats().argon2_verifications, 5);
    }

    #[test]
    fn cache_keys_separate_domains_and_name_boundaries() {
        assert_ne!(
            cache_key(Domain::Password, "a", "b"),
            cache_key(Domain::ApiKeySecret, "a", "b")
        );
        assert_ne!(
            cache_key(Domain::Password, "a\0b", "c"),
            cache_key(Domain::Password, "a", "b\0c")
        );
        assert_eq!(
            cache_key(Domain::Password, "a", "b"),
            cache_key(Domain::Password, "a", "b")
        );
    }

    #[tokio::test]
    async fn unknown_names_cost_an_argon2_check_like_known_ones() {
        let (auth, _) = authenticator(&OAuthConfig::default());
        let p = policy(AuthMode::Basic);
        assert_unauthorized(
            auth.authenticate(&p, &basic("hashy", "wrong"), None, SRC)
                .await,
            "known name",
        );
        assert_eq!(auth.stats().argon2_verifications, 1);
        assert_unauthorized(
            auth.authenticate(&p, &basic("nobody", "wrong"), None, SRC)
                .await,
            "unknown name",
        );
        assert_eq!(
            auth.stats().argon2_verifications,
            2,
            "an unknown name is checked against the dummy hash"
        );
        // Even the password of a real user does not open the dummy.
        assert_unauthorized(
            auth.authenticate(&p, &basic("nobody", "hash-pass"), None, SRC)
                .await,
            "dummy never matches",
        );
    }

    #[tokio::test]
    async fn failures_are_throttled_per_source_and_name() {
        let limits = AuthLimitsConfig {
            max_failures: Some(3),
            failure_window_secs: Some(60),
            ..AuthLimitsConfig::default()
        };
        let clock = Arc::new(ManualClock::new());
        let auth = Authenticator::from_config(
            &users(),
            &OAuthConfig::default(),
            &limits,
            Path::new("c"),
            Path::new("."),
        )
        .expect("valid")
        .with_clock(clock.clone());
        let p = policy(AuthMode::Basic);
        for _ in 0..3 {
            assert_unauthorized(
                auth.authenticate(&p, &basic("hashy", "wrong"), None, SRC)
                    .await,
                "wrong",
            );
        }
        let hashed = auth.stats().argon2_verifications;
        let good = basic("hashy", "hash-pass");
        match auth.authenticate(&p, &good, None, SRC).await {
            Err(AuthError::Throttled { retry_after_secs }) => {
                assert!((1..=60).contains(&retry_after_secs));
            }
            other => panic!("expected throttling, got {other:?}"),
        }
        assert_eq!(
            auth.stats().argon2_verifications,
            hashed,
            "a throttled pair costs no hash"
        );
        let other_source = IpAddr::V4(std::net::Ipv4Addr::new(10, 1, 2, 3));
        auth.authenticate(&p, &good, None, other_source)
            .await
            .expect("another source is not locked out");
        clock.advance(Duration::from_secs(61));
        auth.authenticate(&p, &good, None, SRC)
            .await
            .expect("the window has passed");
        // The token endpoint shares the throttle and answers 429.
        for _ in 0..3 {
            let body = b"grant_type=password&username=svc&password=bad";
            let err = auth.token(body, SRC).await.expect_err("wrong password");
            assert_eq!(err.error, "invalid_grant");
        }
        let err = auth
            .token(b"grant_type=password&username=svc&password=svc-pass", SRC)
            .await
            .expect_err("throttled");
        assert_eq!(err.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(err.retry_after_secs.is_some());
    }

    #[tokio::test]
    async fn admin_needs_the_admin_token_or_the_admin_role() {
        let (auth, _) = authenticator(&OAuthConfig::default());
        let admin_token = SecretDigest::new("admin-token-xyz");
        assert_eq!(
            auth.authenticate_admin(&bearer("admin-token-xyz"), SRC, &admin_token)
                .await
                .expect("token"),
            AdminCaller::Token
        );
        assert_eq!(
            auth.authenticate_admin(&basic("boss", "boss-pass"), SRC, &admin_token)
                .await
                .expect("admin user"),
            AdminCaller::User("boss".into())
        );
        match auth
            .authenticate_admin(&basic("svc", "svc-pass"), SRC, &admin_token)
            .await
        {
            Err(AuthError::NotAdmin { user }) => assert_eq!(user, "svc"),
            other => panic!("a REST user is no admin: {other:?}"),
        }
        assert_unauthorized(
            auth.authenticate_admin(&bearer("nope"), SRC, &admin_token)
                .await
                .map(|_| Principal {
                    user: String::new(),
                    method: AuthMethod::Oauth,
                }),
            "wrong token",
        );
        let mut limited = policy(AuthMode::Any);
        limited.allowed_users = Some(vec!["svc".into()]);
        assert!(AdminCaller::Token.may_see(&limited));
        assert!(!AdminCaller::User("boss".into()).may_see(&limited));
        assert!(AdminCaller::User("boss".into()).may_see(&policy(AuthMode::Any)));
    }

    #[tokio::test]
    async fn refresh_token_reuse_revokes_the_whole_family() {
        let (auth, _) = authenticator(&OAuthConfig::default());
        let refresh = |token: &str| format!("grant_type=refresh_token&refresh_token={token}");
        let first = login(&auth, "svc", "svc-pass").await;
        let unrelated = login(&auth, "svc", "svc-pass").await;
        let second = auth
            .token(refresh(&first.refresh_token).as_bytes(), SRC)
            .await
            .expect("rotation");
        let p = policy(AuthMode::Oauth);
        auth.authenticate(&p, &bearer(&second.access_token), None, SRC)
            .await
            .expect("rotated token works");
        // The old refresh token comes back: someone else holds a copy.
        let err = auth
            .token(refresh(&first.refresh_token).as_bytes(), SRC)
            .await
            .expect_err("reuse");
        assert_eq!(err.error, "invalid_grant");
        for token in [&first.access_token, &second.access_token] {
            assert_unauthorized(
                auth.authenticate(&p, &bearer(token), None, SRC).await,
                "revoked access token",
            );
        }
        auth.token(refresh(&second.refresh_token).as_bytes(), SRC)
            .await
            .expect_err("the family's newest refresh token is revoked too");
        auth.authenticate(&p, &bearer(&unrelated.access_token), None, SRC)
            .await
            .expect("another grant's tokens stay valid");
    }

    #[tokio::test]
    async fn only_users_who_may_call_integrations_get_tokens() {
        let (auth, _) = authenticator(&OAuthConfig::default());
        let body = b"grant_type=password&username=norole&password=np";
        let err = auth.token(body, SRC).await.expect_err("no REST role");
        assert_eq!(err.error, "unauthorized_client");
        assert_eq!(auth.stats().access_tokens, 0);
        auth.permit_listed_callers(HashSet::from(["norole".to_owned()]));
        auth.token(body, SRC)
            .await
            .expect("named in an allowed_users list");
    }

    #[test]
    fn expiring_set_stays_bounded() {
        let now = Instant::now();
        let mut set = ExpiringSet::new(16);
        for i in 0..100u8 {
            let expires = now + Duration::from_secs(u64::from(i) + 1);
            let entry = Entry {
                user: format!("u{i}"),
                family: 0,
                expires,
            };
            set.insert([i; 32], entry, now);
            assert!(set.len() <= 16, "len {} after {i}", set.len());
        }
        // The newest entry always survives eviction.
        assert_eq!(set.get(&[99; 32], now), Some("u99"));
        assert_eq!(
            set.take(&[99; 32], now).map(|e| e.user).as_deref(),
            Some("u99")
        );
        assert!(set.take(&[99; 32], now).is_none(), "single use");
        // Expired entries are gone on lookup.
        let later = now + Duration::from_secs(1000);
        assert_eq!(set.get(&[98; 32], later), None);
    }

    #[tokio::test]
    async fn password_grant_issues_tokens_that_authenticate() {
        let (auth, _) = authenticator(&OAuthConfig::default());
        let tokens = login(&auth, "svc", "svc-pass").await;
        assert_eq!(tokens.token_type, "bearer");
        assert_eq!(tokens.expires_in, DEFAULT_ACCESS_TOKEN_TTL_SECS);
        assert_ne!(tokens.access_token, tokens.refresh_token);
        assert_eq!(tokens.access_token.len(), 43);
        let principal = auth
            .authenticate(
                &policy(AuthMode::Oauth),
                &bearer(&tokens.access_token),
                None,
                SRC,
            )
            .await
            .expect("bearer");
        assert_eq!(
            principal,
            Principal {
                user: "svc".into(),
                method: AuthMethod::Oauth
            }
        );
        // A refresh token is not an access token.
        assert_unauthorized(
            auth.authenticate(
                &policy(AuthMode::Oauth),
                &bearer(&tokens.refresh_token),
                None,
                SRC,
            )
            .await,
            "refresh token as bearer",
        );
        let json = serde_json::to_value(&tokens).expect("serialize");
        assert_eq!(json["token_type"], "bearer");
        assert_eq!(json["expires_in"], 600);
        assert!(json["access_token"].is_string() && json["refresh_token"].is_string());
        let debug = format!("{tokens:?}");
        assert!(!debug.contains(&tokens.access_token) && !debug.contains(&tokens.refresh_token));
    }

    #[tokio::test]
    async fn access_tokens_expire() {
        let oauth = OAuthConfig {
            access_token_ttl_secs: Some(1),
            ..OAuthConfig::default()
        };
        let (auth, clock) = authenticator(&oauth);
        let tokens = login(&auth, "svc", "svc-pass").await;
        assert_eq!(tokens.expires_in, 1);
        let p = policy(AuthMode::Oauth);
        auth.authenticate(&p, &bearer(&tokens.access_token), None, SRC)
            .await
            .expect("fresh token");
        clock.advance(Duration::from_millis(999));
        auth.authenticate(&p, &bearer(&tokens.access_token), None, SRC)
            .await
            .expect("just before expiry");
        clock.advance(Duration::from_millis(1));
        let err = auth
            .authenticate(&p, &bearer(&tokens.access_token), None, SRC)
            .await
            .expect_err("expired");
        assert!(matches!(err, AuthError::Unauthorized { reason } if reason == REASON_BAD_TOKEN));
        assert_eq!(
            err.www_authenticate(AuthMode::Oauth),
            Some(r#"Bearer realm="xmagent", error="invalid_token""#)
        );
        assert_eq!(
            auth.stats().access_tokens,
            0,
            "expired token dropped on lookup"
        );
    }

    #[tokio::test]
    async fn tokens_expire_on_the_real_clock_too() {
        let oauth = OAuthConfig {
            access_token_ttl_secs: Some(1),
            ..OAuthConfig::default()
        };
        let auth = Authenticator::from_config(
            &users(),
            &oauth,
            &lenient_limits(),
            Path::new("c"),
            Path::new("."),
        )
        .expect("config");
        let tokens = login(&auth, "svc", "svc-pass").await;
        let p = policy(AuthMode::Oauth);
        auth.authenticate(&p, &bearer(&tokens.access_token), None, SRC)
            .await
            .expect("fresh");
        tokio::time::sleep(Duration::from_millis(1050)).await;
        assert_unauthorized(
            auth.authenticate(&p, &bearer(&tokens.access_token), None, SRC)
                .await,
            "after one second",
        );
    }

    #[tokio::test]
    async fn refresh_rotates_and_refresh_tokens_expire() {
        let oauth = OAuthConfig {
            access_token_ttl_secs: Some(1),
            refresh_token_ttl_secs: Some(5),
            ..OAuthConfig::default()
        };
        let (auth, clock) = authenticator(&oauth);
        let first = login(&auth, "hashy", "hash-pass").await;
        clock.advance(Duration::from_secs(2));
        let refresh = |token: &str| format!("grant_type=refresh_token&refresh_token={token}");

        let second = auth
            .token(refresh(&first.refresh_token).as_bytes(), SRC)
            .await
            .expect("refresh");
        assert_ne!(second.refresh_token, first.refresh_token);
        let principal = auth
            .authenticate(
                &policy(AuthMode::Oauth),
                &bearer(&second.access_token),
                None,
                SRC,
            )
            .await
            .expect("new access token");
        assert_eq!(principal.user, "hashy");

        let reused = auth
            .token(refresh(&first.refresh_token).as_bytes(), SRC)
            .await
            .expect_err("old refresh token is spent");
        assert_eq!(reused.error, "invalid_grant");
        assert_eq!(reused.status, StatusCode::BAD_REQUEST);

        clock.advance(Duration::from_secs(5));
        let expired = auth
            .token(refresh(&second.refresh_token).as_bytes(), SRC)
            .await
            .expect_err("refresh token expired");
        assert_eq!(expired.error, "invalid_grant");
    }

    #[tokio::test]
    async fn token_endpoint_errors() {
        let oauth = OAuthConfig {
            client_id: Some("my-client".into()),
            ..OAuthConfig::default()
        };
        let (auth, _) = authenticator(&oauth);
        let cases: [(&str, &str, StatusCode); 10] = [
            ("", "invalid_request", StatusCode::BAD_REQUEST),
            (
                "grant_type=client_credentials&client_id=my-client",
                "unsupported_grant_type",
                StatusCode::BAD_REQUEST,
            ),
            (
                "grant_type=authorization_code",
                "unsupported_grant_type",
                StatusCode::BAD_REQUEST,
            ),
            (
                "grant_type=password&username=svc&password=svc-pass",
                "invalid_client",
                StatusCode::UNAUTHORIZED,
            ),
            (
                "grant_type=password&client_id=other&username=svc&password=svc-pass",
                "invalid_client",
                StatusCode::UNAUTHORIZED,
            ),
            (
                "grant_type=password&client_id=my-client&username=svc",
                "invalid_request",
                StatusCode::BAD_REQUEST,
            ),
            (
                "grant_type=password&client_id=my-client&username=svc&password=wrong",
                "invalid_grant",
                StatusCode::BAD_REQUEST,
            ),
            (
                "grant_type=password&client_id=my-client&username=nopass&password=",
                "invalid_grant",
                StatusCode::BAD_REQUEST,
            ),
            (
                "grant_type=password&grant_type=password&client_id=my-client",
                "invalid_request",
                StatusCode::BAD_REQUEST,
            ),
            (
                "grant_type=refresh_token&client_id=my-client",
                "invalid_request",
                StatusCode::BAD_REQUEST,
            ),
        ];
        for (body, error, status) in cases {
            let err = auth.token(body.as_bytes(), SRC).await.expect_err(body);
            assert_eq!((err.error, err.status), (error, status), "{body}");
            assert!(!err.to_string().contains("svc-pass"), "{body}");
        }
        let ok = auth
            .token(
                b"grant_type=password&client_id=my-client&username=svc&password=svc-pass",
                SRC,
            )
            .await
            .expect("right client id");
        let refreshed = auth
            .token(
                format!(
                    "grant_type=refresh_token&client_id=my-client&refresh_token={}",
                    ok.refresh_token
                )
                .as_bytes(),
                SRC,
            )
            .await
            .expect("refresh with client id");
        assert_eq!(refreshed.token_type, "bearer");

        let err = auth
            .token(
                b"grant_type=password&client_id=my-client&username=svc&password=bad",
                SRC,
            )
            .await
            .expect_err("bad");
        let json = serde_json::to_value(&err).expect("serialize");
        assert_eq!(
            json,
            serde_json::json!({"error": "invalid_grant", "error_description": "invalid username or password"})
        );
    }

    #[tokio::test]
    async fn password_grant_with_argon2_hash_uses_the_cache() {
        let (auth, _) = authenticator(&OAuthConfig::default());
        login(&auth, "hashy", "hash-pass").await;
        login(&auth, "hashy", "hash-pass").await;
        let stats = auth.stats();
        assert_eq!((stats.argon2_verifications, stats.cache_hits), (1, 1));
        assert_eq!(stats.access_tokens, 2);
        assert_eq!(stats.refresh_tokens, 2);
    }

    #[test]
    fn authenticating_user_check() {
        let (auth, _) = authenticator(&OAuthConfig::default());
        assert_eq!(auth.check_authenticating_user("svc"), Ok(()));
        assert_eq!(auth.check_authenticating_user("nopass"), Ok(()));
        let err = auth
            .check_authenticating_user("norole")
            .expect_err("no role");
        assert!(
            err.contains("REST Web Service User") && err.contains("norole"),
            "{err}"
        );
        let err = auth
            .check_authenticating_user("ghost")
            .expect_err("unknown");
        assert!(err.contains("ghost"), "{err}");
        assert!(auth.has_user("hashy") && !auth.has_user("ghost"));
    }

    #[test]
    fn config_rejects_two_password_sources() {
        let mut u = user("a", &[]);
        u.password = Some("x".into());
        u.password_hash = Some(cheap_hash("x"));
        let msg = config_error(&[u], &OAuthConfig::default(), Path::new("/cfg"));
        assert!(msg.contains("users[0]"), "{msg}");
        assert!(msg.contains("password and password_hash"), "{msg}");
        assert!(!msg.contains("$argon2"), "{msg}");
    }

    #[test]
    fn config_reports_unreadable_password_file() {
        let mut ok = user("ok", &[]);
        ok.password = Some("x".into());
        let mut u = user("b", &[]);
        u.password_file = Some(PathBuf::from("missing/secret.txt"));
        let msg = config_error(&[ok, u], &OAuthConfig::default(), Path::new("/nonexistent"));
        assert!(msg.contains("users[1].password_file"), "{msg}");
        assert!(msg.contains("/nonexistent/missing/secret.txt"), "{msg}");
    }

    #[tokio::test]
    async fn password_and_secret_files_are_read_relative_to_base_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("pw"), "file-pass\n").expect("write");
        std::fs::write(dir.path().join("secret"), "file-secret\r\n").expect("write");
        std::fs::write(dir.path().join("empty"), "\n").expect("write");
        let mut u = user("f", &[REST_WEB_SERVICE_USER]);
        u.password_file = Some("pw".into());
        u.api_keys.push(ApiKeyConfig {
            secret_file: Some(dir.path().join("secret")),
            ..key("file-key")
        });
        let auth = Authenticator::from_config(
            std::slice::from_ref(&u),
            &OAuthConfig::default(),
            &lenient_limits(),
            Path::new("c.toml"),
            dir.path(),
        )
        .expect("config");
        let p = policy(AuthMode::Any);
        assert_eq!(
            auth.authenticate(&p, &basic("f", "file-pass"), None, SRC)
                .await
                .expect("password from file")
                .method,
            AuthMethod::Basic
        );
        assert_eq!(
            auth.authenticate(&p, &basic("file-key", "file-secret"), None, SRC)
                .await
                .expect("secret from file")
                .method,
            AuthMethod::ApiKey
        );
        assert_unauthorized(
            auth.authenticate(&p, &basic("f", "file-pass\n"), None, SRC)
                .await,
            "trailing newline is not part of the password",
        );

        u.password_file = Some("empty".into());
        let msg = config_error(&[u], &OAuthConfig::default(), dir.path());
        assert!(
            msg.contains("users[0].password_file") && msg.contains("empty"),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn config_rejects_bad_phc_strings() {
        let bad = [
            "not a hash",
            "$argon2id$v=19$m=8,t=1,p=1",
            "$pbkdf2-sha256$i=1000$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
            "$argon2id$v=19$m=4000000000,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaA",
        ];
        for (i, hash) in bad.iter().enumerate() {
            let mut u = user("h", &[]);
            u.api_keys.push(ApiKeyConfig {
                secret_hash: Some((*hash).to_owned()),
                ..key("k")
            });
            let msg = config_error(&[u], &OAuthConfig::default(), Path::new("/cfg"));
            assert!(
                msg.contains("users[0].api_keys[0].secret_hash"),
                "case {i}: {msg}"
            );
            let mut u = user("h", &[]);
            u.password_hash = Some((*hash).to_owned());
            let msg = config_error(&[u], &OAuthConfig::default(), Path::new("/cfg"));
            assert!(msg.contains("users[0].password_hash"), "case {i}: {msg}");
        }
        // The real CLI hash is accepted and verifies.
        let hash = hash_password("correct horse").expect("hash");
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        let mut u = user("h", &[REST_WEB_SERVICE_USER]);
        u.password_hash = Some(hash);
        let auth = Authenticator::from_config(
            &[u],
            &OAuthConfig::default(),
            &lenient_limits(),
            Path::new("c"),
            Path::new("."),
        )
        .expect("hash_password output is a valid password_hash");
        let p = policy(AuthMode::Basic);
        auth.authenticate(&p, &basic("h", "correct horse"), None, SRC)
            .await
            .expect("verifies");
        assert_unauthorized(
            auth.authenticate(&p, &basic("h", "correct horsE"), None, SRC)
                .await,
            "wrong",
        );
    }

    #[test]
    fn config_rejects_duplicates_and_unusable_entries() {
        let with_key = |name: &str, k: &str| {
            let mut u = user(name, &[]);
            u.api_keys.push(ApiKeyConfig {
                secret: Some("s".into()),
                ..key(k)
            });
            u
        };
        let d = OAuthConfig::default();
        let base = Path::new("/cfg");

        let msg = config_error(&[with_key("a", "k1"), with_key("b", "k1")], &d, base);
        assert!(
            msg.contains("users[1].api_keys[0].key") && msg.contains("duplicate API key"),
            "{msg}"
        );
        assert!(msg.contains("users[0].api_keys[0]"), "{msg}");

        let msg = config_error(&[user("a", &[]), user("a", &[])], &d, base);
        assert!(
            msg.contains("users[1].name") && msg.contains("duplicate user"),
            "{msg}"
        );

        let msg = config_error(&[with_key("a:b", "k")], &d, base);
        assert!(msg.contains("users[0].name"), "{msg}");

        let msg = config_error(&[user("", &[])], &d, base);
        assert!(
            msg.contains("users[0].name") && msg.contains("empty"),
            "{msg}"
        );

        let msg = config_error(&[with_key("a", "")], &d, base);
        assert!(msg.contains("users[0].api_keys[0].key"), "{msg}");

        let mut no_secret = user("a", &[]);
        no_secret.api_keys.push(key("k"));
        let msg = config_error(&[no_secret], &d, base);
        assert!(
            msg.contains("users[0].api_keys[0]") && msg.contains("secret_hash"),
            "{msg}"
        );

        let mut two = user("a", &[]);
        two.api_keys.push(ApiKeyConfig {
            secret: Some("s".into()),
            secret_file: Some("f".into()),
            ..key("k")
        });
        let msg = config_error(&[two], &d, base);
        assert!(msg.contains("secret and secret_file"), "{msg}");

        let mut empty = user("a", &[]);
        empty.password = Some(String::new());
        let msg = config_error(&[empty], &d, base);
        assert!(msg.contains("users[0].password"), "{msg}");
    }

    #[test]
    fn config_rejects_bad_oauth_settings() {
        for (oauth, key) in [
            (
                OAuthConfig {
                    access_token_ttl_secs: Some(0),
                    ..OAuthConfig::default()
                },
                "oauth.access_token_ttl_secs",
            ),
            (
                OAuthConfig {
                    refresh_token_ttl_secs: Some(u64::MAX),
                    ..OAuthConfig::default()
                },
                "oauth.refresh_token_ttl_secs",
            ),
            (
                OAuthConfig {
                    client_id: Some(" ".into()),
                    ..OAuthConfig::default()
                },
                "oauth.client_id",
            ),
        ] {
            let msg = config_error(&[], &oauth, Path::new("/cfg"));
            assert!(msg.contains(key), "{msg}");
        }
    }

    #[test]
    fn config_deserializes_and_refuses_unknown_keys() {
        #[derive(Deserialize)]
        struct File {
            users: Vec<UserConfig>,
            #[serde(default)]
            oauth: OAuthConfig,
        }
        let text = r#"
            [[users]]
            name = "svc"
            roles = ["REST Web Service User"]
            password = "pw"
            api_keys = [{ key = "k", secret = "s" }]
            [oauth]
            access_token_ttl_secs = 60
        "#;
        let file: File = toml::from_str(text).expect("valid config");
        assert_eq!(file.users[0].api_keys[0].key, "k");
        assert_eq!(file.oauth.access_token_ttl_secs, Some(60));
        let bad = "[[users]]\nname = \"a\"\npasword = \"typo\"\n";
        assert!(toml::from_str::<File>(bad).is_err());
        let mode: AuthMode = serde_json::from_str("\"api_key\"").expect("mode");
        assert_eq!(mode, AuthMode::ApiKey);
        assert_eq!(AuthMode::default(), AuthMode::Any);
        let method = serde_json::to_value(AuthMethod::ApiKey).expect("method");
        assert_eq!(method, "api_key");
    }

    #[test]
    fn debug_output_never_shows_secrets() {
        let mut u = user("svc", &[REST_WEB_SERVICE_USER]);
        u.password = Some("p4ssw0rd-plain".into());
        u.password_hash = Some("$argon2id$hash-material".into());
        u.api_keys.push(ApiKeyConfig {
            secret: Some("s3cret-value".into()),
            secret_hash: Some("$argon2id$other-material".into()),
            ..key("visible-key")
        });
        let debug = format!("{u:?} {u:#?}");
        for secret in [
            "p4ssw0rd-plain",
            "hash-material",
            "s3cret-value",
            "other-material",
        ] {
            assert!(!debug.contains(secret), "{debug}");
        }
        assert!(
            debug.contains("visible-key") && debug.contains("<redacted>"),
            "{debug}"
        );

        let digest = SecretDigest::new(URL_KEY);
        let p = policy(AuthMode::Url);
        let debug = format!("{digest:?} {p:?}");
        assert!(
            !debug.contains(URL_KEY) && !debug.contains(&digest.to_hex()),
            "{debug}"
        );
        assert!(debug.contains("<redacted>"), "{debug}");

        let (auth, _) = authenticator(&OAuthConfig::default());
        let debug = format!("{auth:?}");
        assert!(
            !debug.contains("svc-pass") && !debug.contains("sec-plain"),
            "{debug}"
        );
    }

    #[test]
    fn secret_digest_matches_only_the_secret() {
        let digest = SecretDigest::new("abc");
        assert!(digest.matches("abc"));
        assert!(!digest.matches("abd"));
        assert!(!digest.matches("abcd"));
        assert!(!digest.matches(""));
        let round_trip = SecretDigest::from_hex(&digest.to_hex()).expect("hex");
        assert!(round_trip == digest && round_trip.matches("abc"));
        assert!(SecretDigest::from_hex("abc").is_none());
        assert!(SecretDigest::from_hex(&"zz".repeat(32)).is_none());
    }

    #[test]
    fn generated_keys_are_url_safe_and_distinct() {
        let a = generate_key();
        let b = generate_key();
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&a)
            .expect("base64");
        assert_eq!(decoded.len(), 32);
    }

    #[test]
    fn authenticator_is_cheap_to_share() {
        fn assert_send_sync<T: Send + Sync + Clone>() {}
        assert_send_sync::<Authenticator>();
        let (auth, _) = authenticator(&OAuthConfig::default());
        let clone = auth.clone();
        assert!(Arc::ptr_eq(&auth.inner, &clone.inner));
    }
}
