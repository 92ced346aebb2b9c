//! Who is calling the central's REST API, and which events they may touch.
//!
//! Three kinds of callers: a configured REST user (Basic; needs the
//! [`REST_WEB_SERVICE_USER`] role), an agent (Bearer agent token: only that agent's events), and
//! an integration script (Bearer script credential from [`server::credentials::script_token`]: only
//! that agent's events of that one integration). Passwords are argon2 hashes, verified on a small
//! bounded pool of threads ([`server::verify_pool`]) with recent successes cached; a name that
//! names exist; a full pool answers 429. Failed passwords are counted per (source address, user
//! name) ([`server::throttle`]): after [`MAX_FAILURES`] a pair gets 429 without any hash computed.
//!
//! What it does NOT do: route requests or check the websocket's token (`ws` does).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::header::AUTHORIZATION;
use http::HeaderMap;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::{CentralConfig, REST_WEB_SERVICE_USER};
use server::credentials::argon2_matches;
use server::http_util::{basic_credentials, bearer_token};
use server::throttle::FailureThrottle;
use server::verify_pool::VerifyPool;

/// How long a verified (user, password) pair is trusted without hashing again.
const VERIFIED_TTL: Duration = Duration::from_secs(600);
/// How many verified pairs are remembered at most.
const VERIFIED_CAPACITY: usize = 1024;
/// Waiting argon2 checks per verification thread.
const QUEUE_PER_THREAD: usize = 4;
/// Failed passwords per (source, user name) before that pair gets 429.
pub const MAX_FAILURES: u32 = 5;
/// How long a throttled pair waits, counted from its first failure.
const FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// An authenticated REST caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A configured user with the REST role: every event.
    User(String),
    /// An agent, by its token: only the events it created.
    Agent(String),
    /// An integration script, by its script credential: only the events of that agent and the
    /// integrations the credential names.
    Script {
        /// The agent the credential belongs to.
        agent: String,
        /// The script's own integration and any others the agent's config grants it.
        integrations: Vec<String>,
    },
}

impl Caller {
    /// The agent and integration the caller is limited to (`None`: not limited), for the events
    /// report's filters.
    pub fn scope(&self) -> (Option<&str>, Option<&[String]>) {
        match self {
            Caller::User(_) => (None, None),
            Caller::Agent(agent) => (Some(agent), None),
            Caller::Script {
                agent,
                integrations,
            } => (Some(agent), Some(integrations)),
        }
    }

    /// Whether the caller may read or change `event`.
    pub fn may_touch(&self, event: &Value) -> bool {
        let (agent, integrations) = self.scope();
        let field = |name: &str| event.get(name).and_then(Value::as_str);
        agent.is_none_or(|agent| field("agentId") == Some(agent))
            && integrations.is_none_or(|ids| {
                field("integrationId").is_some_and(|id| ids.iter().any(|i| i == id))
            })
    }
}

/// Why a REST call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No credential, or a wrong one: 401.
    #[error("authentication required: Basic (REST user) or Bearer (agent or script credential)")]
    Unauthorized,
    /// A valid user without the REST role: 403.
    #[error("user `{0}` does not hold the role `REST Web Service User`")]
    Forbidden(String),
    /// Every verification thread is busy: 429.
    #[error("too many credential checks in progress; retry shortly")]
    Busy,
    /// This (source, user name) pair failed too often lately: 429.
    #[error("too many failed attempts; retry in {0} s")]
    Throttled(u64),
}

impl Refusal {
    /// Seconds to send as `Retry-After` with a 429.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Refusal::Busy => Some(1),
            Refusal::Throttled(secs) => Some(*secs),
            Refusal::Unauthorized | Refusal::Forbidden(_) => None,
        }
    }
}

/// The REST credential checker; one per running central.
pub struct Access {
    pool: VerifyPool,
    throttle: FailureThrottle,
    /// SHA-256(name, password) of recent successes → when they stop being trusted.
    verified: Mutex<HashMap<[u8; 32], Instant>>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

impl Default for Access {
    fn default() -> Self {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get().min(16));
        Self {
            pool: VerifyPool::new(threads, threads * QUEUE_PER_THREAD),
            throttle: FailureThrottle::new(MAX_FAILURES, FAILURE_WINDOW),
            verified: Mutex::new(HashMap::new()),
        }
    }
}

impl Access {
    /// Identify the caller of a REST request from `source` by its `Authorization` header.
    pub async fn caller(
        &self,
        config: &CentralConfig,
        headers: &HeaderMap,
        source: IpAddr,
    ) -> Result<Caller, Refusal> {
        let header = headers.get(AUTHORIZATION);
        if let Some(token) = bearer_token(header) {
            if let Some((agent, integrations)) = config.script_scope(&token) {
                return Ok(Caller::Script {
                    agent: agent.id.clone(),
                    integrations,
                });
            }
            return config
                .agent_for_token(&token)
                .map(|agent| Caller::Agent(agent.id.clone()))
                .ok_or(Refusal::Unauthorized);
        }
        let (name, password) = basic_credentials(header).ok_or(Refusal::Unauthorized)?;
        self.user(config, name, password, source).await
    }

    /// Check a REST user's password from `source` (Basic auth, or the console's login form):
    /// throttled per (source, name), argon2 on the bounded pool, the REST role required.
    pub async fn user(
        &self,
        config: &CentralConfig,
        name: String,
        password: String,
        source: IpAddr,
    ) -> Result<Caller, Refusal> {
        if let Err(wait) = self.throttle.check(source, &name, Instant::now()) {
            return Err(Refusal::Throttled(wait.as_secs().max(1)));
        }
        let user = config.user(&name);
        // An unknown name is checked against some configured hash, and fails regardless.
        let Some(phc) = user.or(config.users.first()).map(|u| u.phc()) else {
            return Err(Refusal::Unauthorized);
        };
        let key = pair_key(&name, &password);
        let now = Instant::now();
        let cached = self.lock().get(&key).is_some_and(|until| *until > now);
        let matches = cached
            || self
                .pool
                .run(move || argon2_matches(&phc, &password))
                .await
                .map_err(|_| Refusal::Busy)?;
        let Some(user) = user.filter(|_| matches) else {
            self.throttle.failed(source, &name, Instant::now());
            return Err(Refusal::Unauthorized);
        };
        self.throttle.succeeded(source, &name);
        if !cached {
            self.remember(key, now);
        }
        if user.has_role(REST_WEB_SERVICE_USER) {
            Ok(Caller::User(name))
        } else {
            Err(Refusal::Forbidden(name))
        }
    }

    fn remember(&self, key: [u8; 32], now: Instant) {
        let mut verified = self.lock();
        if verified.len() >= VERIFIED_CAPACITY {
            verified.retain(|_, until| *until > now);
            if verified.len() >= VERIFIED_CAPACITY {
                verified.clear();
            }
        }
        verified.insert(key, now + VERIFIED_TTL);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Instant>> {
        self.verified.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn pair_key(name: &str, password: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update((name.len() as u64).to_be_bytes());
    hasher.update(name.as_bytes());
    hasher.update(password.as_bytes());
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UserCredential;
    use http::HeaderValue;
    use server::credentials::script_token;

    const SOURCE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        headers
    }

    fn basic(user: &str, password: &str) -> HeaderMap {
        use base64::Engine;
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        headers(&format!("Basic {encoded}"))
    }

    fn config() -> CentralConfig {
        let mut config = CentralConfig::new("127.0.0.1:0".parse().unwrap(), "/tmp/x")
            .with_agent("agent-a", "token-a")
            .with_agent("agent-b", "token-b")
            .with_user("admin", "admin-pw")
            .unwrap();
        let mut viewer = UserCredential::new("viewer", "viewer-pw").unwrap();
        viewer.roles = vec!["Standard User".into()];
        config.users.push(viewer);
        config
    }

    #[tokio::test]
    async fn each_credential_kind_maps_to_its_scope() {
        let (config, access) = (config(), Access::default());
        let caller = |h: HeaderMap| {
            let (config, access) = (&config, &access);
            async move { access.caller(config, &h, SOURCE).await }
        };
        assert_eq!(
            caller(basic("admin", "admin-pw")).await,
            Ok(Caller::User("admin".into()))
        );
        assert_eq!(
            caller(basic("admin", "admin-pw")).await,
            Ok(Caller::User("admin".into())),
            "cached success"
        );
        assert_eq!(
            caller(basic("admin", "nope")).await,
            Err(Refusal::Unauthorized)
        );
        assert_eq!(
            caller(basic("ghost", "admin-pw")).await,
            Err(Refusal::Unauthorized)
        );
        assert_eq!(
            caller(basic("viewer", "viewer-pw")).await,
            Err(Refusal::Forbidden("viewer".into()))
        );
        assert_eq!(
            caller(headers("Bearer token-b")).await,
            Ok(Caller::Agent("agent-b".into()))
        );
        let scope = vec!["alerts".to_owned()];
        let script = script_token("token-a", &scope);
        assert_eq!(
            caller(headers(&format!("Bearer {script}"))).await,
            Ok(Caller::Script {
                agent: "agent-a".into(),
                integrations: scope.clone(),
            })
        );
        // A widened scope, or a credential forged from a wrong token, fails.
        let forged = script_token("token-x", &scope);
        assert_eq!(
            caller(headers(&format!("Bearer {forged}"))).await,
            Err(Refusal::Unauthorized)
        );
        let widened = {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"["alerts","other"]"#)
        };
        let swapped = script.replace(
            &script[script.find('.').unwrap() + 1..script.rfind('.').unwrap()],
            &widened,
        );
        assert_eq!(
            caller(headers(&format!("Bearer {swapped}"))).await,
            Err(Refusal::Unauthorized)
        );
        assert_eq!(caller(HeaderMap::new()).await, Err(Refusal::Unauthorized));
    }

    #[tokio::test]
    async fn repeated_wrong_passwords_are_throttled_per_source() {
        let (config, access) = (config(), Access::default());
        for _ in 0..MAX_FAILURES {
            let refusal = access
                .caller(&config, &basic("admin", "guess"), SOURCE)
                .await;
            assert_eq!(refusal, Err(Refusal::Unauthorized));
        }
        let refusal = access
            .caller(&config, &basic("admin", "admin-pw"), SOURCE)
            .await
            .expect_err("throttled even with the right password");
        assert!(matches!(refusal, Refusal::Throttled(secs) if (1..=60).contains(&secs)));
        let elsewhere = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 9));
        assert_eq!(
            access
                .caller(&config, &basic("admin", "admin-pw"), elsewhere)
                .await,
            Ok(Caller::User("admin".into())),
            "another source is not locked out"
        );
    }

    #[test]
    fn scopes_limit_events_to_their_agent_and_integration() {
        let event = serde_json::json!({"agentId": "agent-a", "integrationId": "alerts"});
        assert!(Caller::User("u".into()).may_touch(&event));
        assert!(Caller::Agent("agent-a".into()).may_touch(&event));
        assert!(!Caller::Agent("agent-b".into()).may_touch(&event));
        let script = |integrations: &[&str]| Caller::Script {
            agent: "agent-a".into(),
            integrations: integrations.iter().map(|i| (*i).to_owned()).collect(),
        };
        assert!(script(&["alerts"]).may_touch(&event));
        assert!(script(&["other", "alerts"]).may_touch(&event));
        assert!(!script(&["other"]).may_touch(&event));
    }
}
