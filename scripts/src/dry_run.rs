//! `xmagent test-script`: run one script against one request file and print the outcome as JSON.
//!
//! Script authors use it to try a script without the daemon, and the conformance suite drives the
//! runtime through it. It runs the same engine as the agent ([`crate::run_once`]); HTTP calls are
//! answered from a fixtures file instead of the network.

use crate::flow::{EventMapping, FlowEvent};
use crate::{
    run_once, HttpCall, HttpClient, HttpReply, Limits, Outcome, Program, ProgramSpec, ScriptError,
    ScriptRequest, Source,
};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// Arguments of `xmagent test-script` (the conformance runner's command line).
#[derive(Debug, Clone, clap::Args)]
pub struct TestScriptArgs {
    /// The integration script.
    pub script: PathBuf,
    /// The inbound request as JSON: method, headers, query, body, requestId, integrationUuid.
    #[arg(long)]
    pub request: PathBuf,
    /// The integration's constants as a JSON object of strings.
    #[arg(long)]
    pub constants: Option<PathBuf>,
    /// A shared library for `require(NAME)`; repeatable.
    #[arg(long = "library", value_name = "NAME=FILE")]
    pub libraries: Vec<String>,
    /// Canned replies for `http.request`, matched by endpoint, method and path, each used once.
    #[arg(long)]
    pub http_fixtures: Option<PathBuf>,
    /// Time limit of the run in milliseconds.
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    /// Memory limit of the runtime in MiB.
    #[arg(long)]
    pub memory_limit_mb: Option<usize>,
    /// Run the script as a Flow Designer HTTP trigger: the output also has `"outputs"`, what the
    /// script set on `output`.
    #[arg(long)]
    pub flow_trigger: bool,
    /// With `--flow-trigger`: the integration's event mapping as JSON (`properties`,
    /// `recipients`, `priority`, `skip_if`); the output then also has `"event"`, the event the
    /// agent would create (null when `skip_if` said no).
    #[arg(long, requires = "flow_trigger")]
    pub event_mapping: Option<PathBuf>,
}

/// A problem with the dry run's input files (exit code 64).
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A JSON file does not have the expected shape.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A `--library` argument is not `NAME=FILE`.
    #[error("--library {0:?}: expected NAME=FILE")]
    LibraryArg(String),
}

/// The request file's shape.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RequestFile {
    #[serde(default = "default_method")]
    method: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    query: String,
    #[serde(default)]
    body: String,
    #[serde(default)]
    request_id: Option<String>,
    #[serde(default)]
    integration_uuid: Option<String>,
    #[serde(default)]
    remote_address: Option<String>,
}

fn default_method() -> String {
    "POST".to_owned()
}

/// One canned HTTP reply.
#[derive(Debug, Clone, Deserialize)]
struct Fixture {
    endpoint: String,
    method: String,
    path: String,
    #[serde(default = "default_status")]
    status: u16,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    body: String,
}

fn default_status() -> u16 {
    200
}

/// An [`HttpClient`] answering from canned fixtures; each fixture answers one call. A call with no
/// matching fixture fails (as an unknown endpoint would in the agent).
pub struct FixtureClient {
    fixtures: Mutex<Vec<Option<Fixture>>>,
}

impl FixtureClient {
    /// Parse a fixtures file's JSON (an array of `{endpoint, method, path, status, headers, body}`).
    pub fn from_json(text: &str) -> Result<FixtureClient, String> {
        let list: Vec<Fixture> = serde_json::from_str(text).map_err(|e| e.to_string())?;
        Ok(FixtureClient {
            fixtures: Mutex::new(list.into_iter().map(Some).collect()),
        })
    }

    /// A client with no fixtures: every call fails.
    pub fn empty() -> FixtureClient {
        FixtureClient {
            fixtures: Mutex::new(Vec::new()),
        }
    }
}

impl HttpClient for FixtureClient {
    fn send(&self, call: &HttpCall) -> Result<HttpReply, String> {
        let mut fixtures = self
            .fixtures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let slot = fixtures.iter_mut().find(|slot| {
            slot.as_ref().is_some_and(|f| {
                f.endpoint == call.endpoint
                    && f.method.eq_ignore_ascii_case(&call.method)
                    && f.path == call.path
            })
        });
        match slot.and_then(Option::take) {
            Some(fixture) => Ok(HttpReply {
                status: fixture.status,
                headers: fixture.headers.into_iter().collect(),
                body: fixture.body,
            }),
            None => Err(format!(
                "no HTTP fixture for {} {} on endpoint '{}' (unknown endpoint or fixture used up)",
                call.method, call.path, call.endpoint
            )),
        }
    }
}

fn read(path: &Path) -> Result<String, InputError> {
    std::fs::read_to_string(path).map_err(|source| InputError::Read {
        path: path.to_owned(),
        source,
    })
}

fn parse_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, InputError> {
    serde_json::from_str(&read(path)?).map_err(|e| InputError::Invalid {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// Everything the dry run needs, loaded from the files named by the arguments.
pub struct DryRun {
    /// Whether to show the outputs of a Flow Designer HTTP trigger, and how they map to an event.
    pub flow: Option<Option<EventMapping>>,
    /// The program spec (script, libraries, constants).
    pub spec: ProgramSpec,
    /// The request.
    pub request: ScriptRequest,
    /// The fixture-backed HTTP client.
    pub http: FixtureClient,
    /// The limits, with the command-line overrides applied.
    pub limits: Limits,
}

impl DryRun {
    /// Load and validate the input files.
    pub fn load(args: &TestScriptArgs) -> Result<DryRun, InputError> {
        let script = Source {
            name: args.script.display().to_string(),
            code: read(&args.script)?,
        };
        let mut libraries = BTreeMap::new();
        for arg in &args.libraries {
            let Some((name, file)) = arg.split_once('=') else {
                return Err(InputError::LibraryArg(arg.clone()));
            };
            let path = PathBuf::from(file);
            libraries.insert(
                name.to_owned(),
                Source {
                    name: path.display().to_string(),
                    code: read(&path)?,
                },
            );
        }
        let constants: BTreeMap<String, String> = match &args.constants {
            Some(path) => parse_json(path)?,
            None => BTreeMap::new(),
        };
        let file: RequestFile = parse_json(&args.request)?;
        let headers: Vec<(String, String)> = file.headers.into_iter().collect();
        let content_type = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            .map(|(_, v)| v.as_str());
        // A request file may write the query with its URL's `?`; the parser takes what follows.
        let query = file.query.strip_prefix('?').unwrap_or(&file.query);
        let parameters = ScriptRequest::parameters_from(query, content_type, &file.body);
        let integration_uuid = file
            .integration_uuid
            .unwrap_or_else(|| "00000000-0000-4000-8000-000000000000".to_owned());
        let request = ScriptRequest {
            method: file.method,
            headers,
            parameters,
            body: file.body,
            request_id: file
                .request_id
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            integration_uuid: integration_uuid.clone(),
            remote_address: file
                .remote_address
                .unwrap_or_else(|| "127.0.0.1".to_owned()),
        };
        let http = match &args.http_fixtures {
            Some(path) => {
                FixtureClient::from_json(&read(path)?).map_err(|message| InputError::Invalid {
                    path: path.clone(),
                    message,
                })?
            }
            None => FixtureClient::empty(),
        };
        let mut limits = Limits::default();
        if let Some(ms) = args.timeout_ms {
            limits.timeout = Duration::from_millis(ms);
        }
        if let Some(mb) = args.memory_limit_mb {
            limits.memory_bytes = mb.saturating_mul(1024 * 1024);
        }
        let flow = match (args.flow_trigger, &args.event_mapping) {
            (false, _) => None,
            (true, None) => Some(None),
            (true, Some(path)) => Some(Some(parse_json(path)?)),
        };
        Ok(DryRun {
            flow,
            spec: ProgramSpec {
                integration_id: integration_uuid,
                script,
                libraries,
                constants,
            },
            request,
            http,
            limits,
        })
    }

    /// Compile and run; a syntax error becomes an outcome with an error of kind `syntax`.
    pub fn run(self) -> Outcome {
        match Program::compile(self.spec) {
            Ok(program) => run_once(&program, self.request, &self.http, &self.limits),
            Err(error) => Outcome::failed(error),
        }
    }
}

fn error_json(error: &ScriptError) -> Value {
    json!({ "kind": error.kind, "message": error.message, "line": error.line })
}

/// The JSON object the dry run prints for an outcome (the conformance runner's contract).
pub fn outcome_json(outcome: &Outcome) -> Value {
    json!({
        "ok": outcome.error.is_none(),
        "posts": outcome.posts,
        "logs": outcome.logs,
        "http": outcome.http,
        "error": outcome.error.as_ref().map(error_json),
        "duration_ms": u64::try_from(outcome.duration.as_millis()).unwrap_or(u64::MAX),
    })
}

/// Run the dry run and return the printed JSON and the exit code: 0 ok, 1 script failed, 64 bad
/// input files.
pub fn execute(args: &TestScriptArgs) -> (Value, i32) {
    match DryRun::load(args) {
        Ok(dry) => {
            let flow = dry.flow.clone();
            let outcome = dry.run();
            let code = if outcome.is_ok() { 0 } else { 1 };
            let mut printed = outcome_json(&outcome);
            if let (Some(mapping), Value::Object(fields)) = (flow, &mut printed) {
                fields.insert("outputs".into(), Value::Object(outcome.outputs.clone()));
                if let Some(mapping) = mapping {
                    let event = match mapping.event(&outcome.outputs) {
                        FlowEvent::Create(trigger) if outcome.is_ok() => trigger,
                        _ => Value::Null,
                    };
                    fields.insert("event".into(), event);
                }
            }
            (printed, code)
        }
        Err(error) => (
            json!({
                "ok": false, "posts": [], "logs": [], "http": [],
                "error": { "kind": "input", "message": error.to_string(), "line": null },
            }),
            64,
        ),
    }
}

/// Run the dry run, print the one JSON object on stdout, and return the process exit code.
pub fn main(args: TestScriptArgs) -> i32 {
    let (output, code) = execute(&args);
    println!("{output}");
    code
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    fn call(endpoint: &str, method: &str, path: &str) -> HttpCall {
        HttpCall {
            endpoint: endpoint.into(),
            method: method.into(),
            path: path.into(),
            headers: vec![],
            body: None,
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn fixtures_are_used_once_and_matched_exactly() {
        let client = FixtureClient::from_json(
            r#"[{"endpoint":"A","method":"GET","path":"/x","status":201,"body":"hi"}]"#,
        )
        .expect("valid fixtures");
        assert!(client.send(&call("A", "POST", "/x")).is_err());
        assert!(client.send(&call("B", "GET", "/x")).is_err());
        let reply = client
            .send(&call("A", "get", "/x"))
            .expect("fixture matches");
        assert_eq!((reply.status, reply.body.as_str()), (201, "hi"));
        assert!(client.send(&call("A", "GET", "/x")).is_err(), "used once");
    }

    #[test]
    fn missing_files_exit_64_with_json() {
        let args = TestScriptArgs {
            script: "/nonexistent/script.js".into(),
            request: "/nonexistent/request.json".into(),
            constants: None,
            libraries: vec![],
            http_fixtures: None,
            timeout_ms: None,
            memory_limit_mb: None,
            flow_trigger: false,
            event_mapping: None,
        };
        let (out, code) = execute(&args);
        assert_eq!(code, 64);
        assert_eq!(out["ok"], json!(false));
        assert_eq!(out["error"]["kind"], json!("input"));
    }

    #[test]
    fn error_kind_serializes_lowercase() {
        let e = ScriptError::new(ErrorKind::Timeout, "t");
        assert_eq!(error_json(&e)["kind"], json!("timeout"));
    }
}
