//! The sandboxed QuickJS runtime and the xMatters Integration Builder script API.
//!
//! The agent's workers hand a compiled-checked [`Program`] and a [`ScriptRequest`] to a
//! [`ScriptPool`]; the pool runs the script on one of its OS threads in a warm QuickJS context and
//! answers with an [`Outcome`]: the event-creation calls the script made (`form.post`), its console
//! output, the HTTP calls it made through the host's [`HttpClient`], and the error if it failed.
//!
//! Scripts cannot reach the host: the only ways out of the sandbox are the built-ins defined here,
//! and HTTP goes through the [`HttpClient`] trait the host implements (only configured endpoints).
//! Every run is bounded by [`Limits`] (time, memory, stack, console output, HTTP calls, posts).
#![forbid(unsafe_code)]

pub mod dry_run;
mod engine;
pub mod flow;
mod pool;
mod uri;
mod xml;

use serde::{Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use engine::{Engine, EngineStats};
pub use pool::{default_share, run_once, ScriptPool};

/// The bounds of one script run.
///
/// A script is untrusted code written by integration authors; these bounds keep one runaway script
/// from stalling or exhausting the agent (DESIGN §5 invariant 4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock budget of one run, including HTTP calls; past it the run is interrupted and fails
    /// with [`ErrorKind::Timeout`] (a `try`/`catch` in the script cannot swallow it).
    pub timeout: Duration,
    /// QuickJS heap limit of one script thread's runtime (shared by its warm contexts).
    pub memory_bytes: usize,
    /// JavaScript stack limit; deeper recursion throws a catchable `RangeError`-like exception.
    pub stack_bytes: usize,
    /// Total bytes of console output kept per run; the rest is dropped with a truncation note.
    pub max_log_bytes: usize,
    /// Number of `http.request(...).write()` calls allowed per run.
    pub max_http_calls: u32,
    /// Number of `form.post` calls allowed per run.
    pub max_posts: u32,
    /// Total size of the objects passed to `form.post` per run, measured as their compact JSON
    /// text (escape sequences aside), so the Rust-side copies stay bounded too.
    pub max_post_bytes: usize,
    /// A warm context is recycled after this many runs, to bound any state the leak guard misses.
    pub max_runs_per_context: u32,
    /// Largest document `XMLUtils.DOMParser`, `XMLUtils.xpath` and `JXON.parse` accept, in bytes;
    /// the parsed tree lives in the runtime's heap, so this keeps one body from filling it.
    pub max_markup_bytes: usize,
    /// Most nodes (elements, text, comments) one parsed document may have.
    pub max_markup_nodes: usize,
    /// Warm contexts kept per script thread (least recently used ones are dropped first); they share
    /// the thread's memory limit, so this bounds their footprint.
    pub max_warm_contexts: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_secs(10),
            memory_bytes: 32 * 1024 * 1024,
            stack_bytes: 512 * 1024,
            max_log_bytes: 64 * 1024,
            max_http_calls: 20,
            max_posts: 100,
            max_post_bytes: 8 * 1024 * 1024,
            // Setting a context up (freezing the built-ins) costs about as much as 50 runs.
            max_runs_per_context: 10_000,
            max_markup_bytes: 4 * 1024 * 1024,
            max_markup_nodes: 100_000,
            max_warm_contexts: 32,
        }
    }
}

/// One JavaScript source file (the integration script or a shared library).
///
/// The name travels with the code so errors can say which file and line failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Where the code came from (for example the file path); used in error messages and stacks.
    pub name: String,
    /// The JavaScript source.
    pub code: String,
}

/// Everything needed to build a [`Program`]: the configured integration's script, libraries and
/// constants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramSpec {
    /// The integration this program belongs to; warm contexts are never shared across integrations.
    pub integration_id: String,
    /// The integration script, run as the body of a function whose parameters are the built-ins.
    pub script: Source,
    /// Shared libraries by `require` name.
    pub libraries: BTreeMap<String, Source>,
    /// The integration's constants, visible to the script as `constants`.
    pub constants: BTreeMap<String, String>,
}

static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

/// A syntax-checked, immutable integration program, shared between script threads via `Arc`.
///
/// Each `Program` has a unique generation id, so when a configuration reload compiles a new
/// program for the same integration, warm contexts built from the old one are not reused.
#[derive(Debug)]
pub struct Program {
    spec: ProgramSpec,
    generation: u64,
}

impl Program {
    /// Syntax-check the script and every library with QuickJS, so a broken script is reported when
    /// the configuration is loaded rather than on the first request.
    ///
    /// The error is of kind [`ErrorKind::Syntax`] and names the file and line.
    pub fn compile(spec: ProgramSpec) -> Result<Program, ScriptError> {
        engine::syntax_check(&spec)?;
        Ok(Program {
            spec,
            generation: NEXT_GENERATION.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// The unique id of this compiled program; warm contexts are keyed by it.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The specification this program was built from.
    pub fn spec(&self) -> &ProgramSpec {
        &self.spec
    }

    /// The integration this program belongs to.
    pub fn integration_id(&self) -> &str {
        &self.spec.integration_id
    }
}

/// The inbound request as the script sees it (`request.*`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScriptRequest {
    /// HTTP method of the inbound request (`request.method`).
    pub method: String,
    /// Request headers in arrival order; the script reads them in any letter case.
    pub headers: Vec<(String, String)>,
    /// Query parameters plus form fields (`request.parameters`); see [`ScriptRequest::parameters_from`].
    pub parameters: BTreeMap<String, String>,
    /// The raw body as a string (`request.body`).
    pub body: String,
    /// The id the caller got in its 202 answer (`request.requestId`).
    pub request_id: String,
    /// The integration's id (`request.integrationUuid`).
    pub integration_uuid: String,
    /// The caller's address (`request.remoteAddress`).
    pub remote_address: String,
}

impl ScriptRequest {
    /// Build `request.parameters` the way xMatters does: the query parameters plus the fields of an
    /// `application/x-www-form-urlencoded` body. `apiKey` is the integration's URL credential and is
    /// never handed to scripts. When a name repeats, the first value wins (query before body).
    ///
    /// `query` is the text after the URL's `?`, read exactly as the agent's URL authentication
    /// reads it: a further `?` belongs to the first name (`??a=1` names `?a`), so the script sees
    /// the parameters authentication saw.
    pub fn parameters_from(
        query: &str,
        content_type: Option<&str>,
        body: &str,
    ) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let mut add = |input: &str| {
            for (k, v) in form_urlencoded::parse(input.as_bytes()) {
                if k == "apiKey" {
                    continue;
                }
                out.entry(k.into_owned()).or_insert_with(|| v.into_owned());
            }
        };
        add(query);
        let is_form = content_type
            .and_then(|ct| ct.split(';').next())
            .map(|mime| {
                mime.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            })
            .unwrap_or(false);
        if is_form {
            add(body);
        }
        out
    }
}

/// The console method a message was written with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// `console.log` (and `console.debug`/`console.trace`).
    Log,
    /// `console.info`.
    Info,
    /// `console.warn`.
    Warn,
    /// `console.error`.
    Error,
}

/// One console message; goes to the activity-stream entry of the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogEntry {
    /// Which console method wrote it.
    pub level: LogLevel,
    /// The arguments converted with `String()` and joined by one space.
    pub message: String,
}

/// One HTTP call a script asks the host to make (`http.request(...).write(body)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCall {
    /// The configured endpoint name (`xMatters` is the built-in one).
    pub endpoint: String,
    /// Upper-case HTTP method.
    pub method: String,
    /// Path (and query) to append to the endpoint's base URL, already URI-encoded when the script
    /// left `autoEncodeURI` on.
    pub path: String,
    /// Headers the script set.
    pub headers: Vec<(String, String)>,
    /// Request body; objects were JSON-encoded by the runtime.
    pub body: Option<String>,
    /// What remains of the run's time budget; the client should not wait longer than this.
    pub timeout: Duration,
}

/// The answer to an [`HttpCall`]. Any status is a normal answer, not an error (scripts check
/// `statusCode` themselves).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpReply {
    /// HTTP status code.
    pub status: u16,
    /// Response headers.
    pub headers: Vec<(String, String)>,
    /// Response body as text (lossily decoded if it was not UTF-8).
    pub body: String,
}

fn headers_as_map<S: Serializer>(headers: &[(String, String)], s: S) -> Result<S::Ok, S::Error> {
    let map: BTreeMap<&str, &str> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    map.serialize(s)
}

/// A record of one HTTP call made by a script, for the activity stream and the dry run.
///
/// Header values that carry credentials (`Authorization`, `Cookie`, API-key headers) are redacted
/// and long bodies are truncated, so the record is safe to store and show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HttpExchange {
    /// The endpoint name the script used.
    pub endpoint: String,
    /// Upper-case HTTP method.
    pub method: String,
    /// The path as sent.
    pub path: String,
    /// Request headers (credentials redacted).
    #[serde(serialize_with = "headers_as_map")]
    pub headers: Vec<(String, String)>,
    /// Request body (truncated when long).
    pub body: Option<String>,
    /// Response status, when an answer arrived.
    pub status: Option<u16>,
    /// How long the call took.
    pub duration_ms: u64,
    /// Why the call failed, when it did (unknown endpoint, connection error, timeout...).
    pub error: Option<String>,
}

/// The host side of `http.request`: performs a call to a configured endpoint.
///
/// It is BLOCKING and called on the script thread. `Err(message)` becomes an exception inside the
/// script; it is also how an unknown endpoint is refused. The implementation decides which
/// endpoints exist and adds their credentials, so scripts never see secrets.
pub trait HttpClient: Send + Sync {
    /// Perform the call and return the answer, or a message explaining why there is none.
    fn send(&self, call: &HttpCall) -> Result<HttpReply, String>;
}

/// What kind of failure ended a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorKind {
    /// The script or a library does not compile.
    Syntax,
    /// Something was thrown at run time and not caught (including stack overflow).
    Exception,
    /// The run exceeded its time budget.
    Timeout,
    /// The runtime's memory limit was reached.
    Memory,
    /// The script exceeded a count limit (HTTP calls, posts, posted bytes).
    Limit,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            ErrorKind::Syntax => "syntax",
            ErrorKind::Exception => "exception",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Memory => "memory",
            ErrorKind::Limit => "limit",
        };
        f.write_str(s)
    }
}

/// Why a script failed; shown to integration authors in the activity stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{kind} error: {message}")]
pub struct ScriptError {
    /// The category, used for metrics and for deciding whether the context can be reused.
    pub kind: ErrorKind,
    /// Human-readable message; includes the file and line where known.
    pub message: String,
    /// Line in the script or library where the error arose, where known.
    pub line: Option<u32>,
}

impl ScriptError {
    /// Build an error without line information.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ScriptError {
        ScriptError {
            kind,
            message: message.into(),
            line: None,
        }
    }
}

/// The result of one run: what the script did, and whether it failed.
///
/// Posts and logs made before a failure are kept (the logs explain the failure); the worker
/// decides what to do with posts of a failed run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    /// The objects passed to `form.post`, deep-copied as JSON, in call order.
    pub posts: Vec<serde_json::Value>,
    /// What a Flow Designer HTTP trigger script set on `output` (empty for other scripts), as
    /// `JSON.stringify` would write it.
    pub outputs: serde_json::Map<String, serde_json::Value>,
    /// Console output, in order (capped by [`Limits::max_log_bytes`]).
    pub logs: Vec<LogEntry>,
    /// HTTP calls the script made, in order.
    pub http: Vec<HttpExchange>,
    /// Why the run failed; `None` when it succeeded.
    pub error: Option<ScriptError>,
    /// Time spent running (excluding time waiting in the pool's queue).
    #[serde(serialize_with = "duration_ms")]
    pub duration: Duration,
}

fn duration_ms<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Outcome {
    /// An outcome that carries only an error (the script never ran).
    pub fn failed(error: ScriptError) -> Outcome {
        Outcome {
            posts: Vec::new(),
            outputs: serde_json::Map::new(),
            logs: Vec::new(),
            http: Vec::new(),
            error: Some(error),
            duration: Duration::ZERO,
        }
    }

    /// Whether the run succeeded.
    pub fn is_ok(&self) -> bool {
        self.error.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_merge_query_and_form_without_api_key() {
        let p = ScriptRequest::parameters_from(
            "a=1&apiKey=secret&b=x%20y",
            Some("application/x-www-form-urlencoded; charset=utf-8"),
            "c=3&a=2",
        );
        assert_eq!(p.get("a").map(String::as_str), Some("1"));
        assert_eq!(p.get("b").map(String::as_str), Some("x y"));
        assert_eq!(p.get("c").map(String::as_str), Some("3"));
        assert!(!p.contains_key("apiKey"));
    }

    /// Found by the `trigger_query` fuzz target: `??x=1` once reached scripts as `x` while URL
    /// authentication and the query cleaning read the name `?x`.
    #[test]
    fn a_question_mark_in_the_query_belongs_to_the_name() {
        let p = ScriptRequest::parameters_from("?x=1&?apiKey=k", None, "");
        assert_eq!(p.get("?x").map(String::as_str), Some("1"));
        assert_eq!(p.get("?apiKey").map(String::as_str), Some("k"));
        assert!(!p.contains_key("x"));
    }

    #[test]
    fn json_body_is_not_parsed_as_form() {
        let p = ScriptRequest::parameters_from("", Some("application/json"), "a=1");
        assert!(p.is_empty());
    }
}
