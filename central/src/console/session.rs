//! Console sessions: who is logged in, the cookie that says so, and the CSRF token every
//! state-changing form must carry.
//!
//! Sessions live in memory only: a restart of the central logs everyone out, which is the
//! honest price of not writing session secrets to disk. A session token is 32 random bytes; the
//! map is keyed by its SHA-256, so the table never holds a usable token. A session ends when the
//! user logs out, after [`IDLE_TIMEOUT`] without a request, or [`LIFETIME`] after the login,
//! whichever comes first. The table is bounded ([`MAX_SESSIONS`]): beyond it the session that
//! was used least recently goes.
//!
//! What it does NOT do: check passwords (see [`crate::access`]) or decide what a page shows.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine as _;
use cookie::{Cookie, SameSite};
use http::header::COOKIE;
use http::HeaderMap;
use rand::RngCore as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "xmc_session";
/// The cookie that pairs the login form with its CSRF field (there is no session yet).
pub const LOGIN_COOKIE: &str = "xmc_login";
/// A session unused this long has ended.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// A session ends this long after the login, however busy it is.
pub const LIFETIME: Duration = Duration::from_secs(12 * 60 * 60);
/// The most sessions held at once; a login beyond it ends the least recently used one.
pub const MAX_SESSIONS: usize = 10_000;
/// How long a login form stays valid.
const LOGIN_FORM_LIFETIME: Duration = Duration::from_secs(15 * 60);
/// The path every console cookie is limited to.
const COOKIE_PATH: &str = "/console";

/// One logged-in user, as a page handler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The REST user who logged in.
    pub user: String,
    /// The CSRF token the session's forms carry.
    pub csrf: String,
}

impl Session {
    /// Whether `given` (a form's `csrf` field) is this session's token, compared in constant
    /// time so the comparison does not leak how much of a guess was right.
    pub fn csrf_matches(&self, given: &str) -> bool {
        self.csrf.as_bytes().ct_eq(given.as_bytes()).into()
    }
}

struct Entry {
    session: Session,
    started: Instant,
    used: Instant,
}

/// The table of live sessions; one per running central.
#[derive(Default)]
pub struct Sessions {
    table: Mutex<HashMap<[u8; 32], Entry>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("live", &self.lock().len())
            .finish()
    }
}

/// A fresh random token: 32 bytes, URL-safe base64 (fits a cookie and a form field as is).
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn expired(entry: &Entry, now: Instant) -> bool {
    now.duration_since(entry.used) >= IDLE_TIMEOUT || now.duration_since(entry.started) >= LIFETIME
}

impl Sessions {
    /// Start a session for `user`; returns the token for the cookie and the session.
    pub fn create(&self, user: &str, now: Instant) -> (String, Session) {
        let token = random_token();
        let session = Session {
            user: user.to_owned(),
            csrf: random_token(),
        };
        let mut table = self.lock();
        if table.len() >= MAX_SESSIONS {
            table.retain(|_, entry| !expired(entry, now));
        }
        if table.len() >= MAX_SESSIONS {
            let oldest = table
                .iter()
                .min_by_key(|(_, entry)| entry.used)
                .map(|(key, _)| *key);
            if let Some(key) = oldest {
                table.remove(&key);
            }
        }
        table.insert(
            digest(&token),
            Entry {
                session: session.clone(),
                started: now,
                used: now,
            },
        );
        (token, session)
    }

    /// The live session of `token`, marking it used; an expired one is removed.
    pub fn get(&self, token: &str, now: Instant) -> Option<Session> {
        let key = digest(token);
        let mut table = self.lock();
        let entry = table.get_mut(&key)?;
        if expired(entry, now) {
            table.remove(&key);
            return None;
        }
        entry.used = now;
        Some(entry.session.clone())
    }

    /// End the session of `token` (logout). Unknown tokens are ignored.
    pub fn end(&self, token: &str) {
        self.lock().remove(&digest(token));
    }

    /// How many sessions are held (expired ones included until they are next looked at).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no session is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<[u8; 32], Entry>> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The value of cookie `name` in the request's `Cookie` headers, if present.
pub fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|cookie| cookie.name() == name)
        .map(|cookie| cookie.value().to_owned())
}

/// A `Set-Cookie` value: `HttpOnly` (scripts never see it), `SameSite=Strict` (other sites
/// never send it), limited to the console's paths, `Secure` when the central serves TLS.
/// `lifetime: None` deletes the cookie.
pub fn set_cookie(name: &str, value: &str, lifetime: Option<Duration>, secure: bool) -> String {
    let max_age = lifetime.map_or(cookie::time::Duration::ZERO, |lifetime| {
        cookie::time::Duration::seconds(i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX))
    });
    Cookie::build((name, value))
        .path(COOKIE_PATH)
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(secure)
        .max_age(max_age)
        .build()
        .to_string()
}

/// The `Set-Cookie` value of a new session.
pub fn session_cookie(token: &str, secure: bool) -> String {
    set_cookie(SESSION_COOKIE, token, Some(LIFETIME), secure)
}

/// The `Set-Cookie` value pairing a login form with its CSRF field.
pub fn login_cookie(token: &str, secure: bool) -> String {
    set_cookie(LOGIN_COOKIE, token, Some(LOGIN_FORM_LIFETIME), secure)
}

/// Whether a login form's CSRF field matches its cookie (both must be present), in constant
/// time.
pub fn login_form_matches(cookie: Option<&str>, field: Option<&str>) -> bool {
    match (cookie, field) {
        (Some(cookie), Some(field)) if !cookie.is_empty() => {
            cookie.as_bytes().ct_eq(field.as_bytes()).into()
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn a_session_lives_until_logout_idle_timeout_or_lifetime() {
        let sessions = Sessions::default();
        let start = Instant::now();
        let (token, session) = sessions.create("admin", start);
        assert_eq!(session.user, "admin");
        assert_ne!(
            token, session.csrf,
            "the CSRF token is not the session token"
        );
        assert_eq!(sessions.get(&token, start), Some(session.clone()));
        assert_eq!(sessions.get("not-a-token", start), None);

        // Used regularly, it survives past one idle timeout, but not past its lifetime.
        let mut now = start;
        while now.duration_since(start) + IDLE_TIMEOUT / 2 < LIFETIME {
            now += IDLE_TIMEOUT / 2;
            assert!(sessions.get(&token, now).is_some(), "alive at {now:?}");
        }
        assert_eq!(sessions.get(&token, start + LIFETIME), None);
        assert!(sessions.is_empty(), "the expired session was removed");

        let (idle, _) = sessions.create("admin", start);
        assert_eq!(sessions.get(&idle, start + IDLE_TIMEOUT), None);

        let (ended, _) = sessions.create("admin", start);
        sessions.end(&ended);
        assert_eq!(sessions.get(&ended, start), None);
    }

    #[test]
    fn the_table_is_bounded_and_drops_the_least_recently_used() {
        let sessions = Sessions::default();
        let start = Instant::now();
        let (first, _) = sessions.create("u", start);
        let (second, _) = sessions.create("u", start + Duration::from_secs(1));
        for i in 2..MAX_SESSIONS {
            sessions.create("u", start + Duration::from_secs(2));
            assert!(sessions.len() <= i + 1);
        }
        // `first` is used again, so `second` is now the least recently used.
        assert!(sessions
            .get(&first, start + Duration::from_secs(3))
            .is_some());
        sessions.create("u", start + Duration::from_secs(4));
        assert_eq!(sessions.len(), MAX_SESSIONS);
        assert!(sessions
            .get(&first, start + Duration::from_secs(5))
            .is_some());
        assert_eq!(sessions.get(&second, start + Duration::from_secs(5)), None);
    }

    #[test]
    fn csrf_tokens_must_match_exactly() {
        let session = Session {
            user: "u".into(),
            csrf: random_token(),
        };
        assert!(session.csrf_matches(&session.csrf.clone()));
        assert!(!session.csrf_matches(""));
        assert!(!session.csrf_matches(&session.csrf[1..]));
        assert!(!session.csrf_matches(&random_token()));
        assert!(login_form_matches(Some("abc"), Some("abc")));
        for (cookie, field) in [
            (None, Some("abc")),
            (Some("abc"), None),
            (Some(""), Some("")),
            (Some("abc"), Some("abd")),
        ] {
            assert!(!login_form_matches(cookie, field), "{cookie:?} {field:?}");
        }
    }

    #[test]
    fn cookies_are_http_only_strict_and_secure_over_tls() {
        let plain = session_cookie("tok", false);
        for part in [
            "xmc_session=tok",
            "HttpOnly",
            "SameSite=Strict",
            "Path=/console",
        ] {
            assert!(plain.contains(part), "{plain} lacks {part}");
        }
        assert!(plain.contains(&format!("Max-Age={}", LIFETIME.as_secs())));
        assert!(!plain.contains("Secure"));
        assert!(session_cookie("tok", true).contains("Secure"));
        assert!(set_cookie(SESSION_COOKIE, "", None, false).contains("Max-Age=0"));

        let mut headers = HeaderMap::new();
        headers.append(COOKIE, HeaderValue::from_static("a=1; xmc_session=abc"));
        headers.append(COOKIE, HeaderValue::from_static("xmc_login=def"));
        assert_eq!(
            cookie_value(&headers, SESSION_COOKIE).as_deref(),
            Some("abc")
        );
        assert_eq!(cookie_value(&headers, LOGIN_COOKIE).as_deref(), Some("def"));
        assert_eq!(cookie_value(&headers, "other"), None);
    }
}
