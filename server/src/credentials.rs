//! Credential checks whose format both daemons must agree on: argon2 password verification and
//! the script credential the agent mints for its scripts' built-in `xMatters` endpoint and the
//! central verifies.
//!
//! What it does NOT do: hold credentials, cache results or decide who may do what (the agent's
//! authenticator and the central's access module do), or run argon2 off the async runtime (see
//! [`crate::verify_pool`]).

use argon2::password_hash::{PasswordHash, PasswordVerifier};
use argon2::Argon2;
use base64::Engine as _;
use sha2::{Digest, Sha256};

/// Whether `password` matches the argon2 PHC string `phc`. Slow by design: call it on a
/// verification thread, never on an async worker.
pub fn argon2_matches(phc: &str, password: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|hash| {
        Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok()
    })
}

/// The credential the agent gives its scripts' built-in `xMatters` endpoint: derived from the
/// agent token and the ids of the integrations whose events the scripts may touch (their own,
/// plus any the config grants), so it names exactly those and cannot be turned into the agent
/// token or widened. The central accepts it for the REST API only, limited to the events of that
/// agent and those integrations (never for the websocket).
pub fn script_token(agent_token: &str, integrations: &[String]) -> String {
    let scope = serde_json::to_string(integrations).unwrap_or_default();
    format!(
        "{SCRIPT_TOKEN_PREFIX}{}.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&scope),
        hex::encode(script_mac(
            &Sha256::digest(agent_token.as_bytes()).into(),
            &scope
        ))
    )
}

/// How script credentials start (they never collide with a configured agent token's use).
pub const SCRIPT_TOKEN_PREFIX: &str = "xms1.";

/// Keyed with the token's digest, which is all the central keeps of it; `scope` is the JSON
/// array of integration ids. Public so the central can recompute it from the digest alone.
pub fn script_mac(token_sha256: &[u8; 32], scope: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(b"xmagent script credential v1\0");
    hasher.update(token_sha256);
    hasher.update(scope.as_bytes());
    hasher.finalize().into()
}
