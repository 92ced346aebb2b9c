//! Test harness: start the real `xmagent` and `xmcentral` binaries on loopback and talk to them
//! over real sockets.
//!
//! Each [`Node`] is a child process with its own config and data directory; the harness reads
//! the bound address from the `listening on ADDR` log line, keeps draining its stderr (so a chatty
//! process never blocks on a full pipe) and keeps the log for the failure message.
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::Value;

pub mod tls;

/// The agent token the harness configures on both sides.
pub const AGENT_TOKEN: &str = "test-agent-token-0123456789";
/// The central's REST user.
pub const CENTRAL_USER: (&str, &str) = ("admin", "admin-test-password");

/// Path of a workspace binary built next to the running test executable.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/e2e-HASH  →  target/<profile>/NAME
    let profile_dir = exe.parent().and_then(Path::parent).expect("target layout");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is not built; run the tests with `cargo test --workspace` so every binary is built",
        path.display()
    );
    path
}

/// A free loopback port (bound and released), for nodes that must come back on the same port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A running child process.
pub struct Node {
    child: Child,
    /// The address its HTTP listener is bound to.
    pub addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Node {
    /// Start `binary args...` and wait for its `listening on` line.
    pub fn start(binary: &Path, args: &[&str]) -> Node {
        Self::start_with_env(binary, args, &[])
    }

    /// Like [`Node::start`] with `RUST_LOG` set to `filter` (e.g. `debug`, for tests that check
    /// what the logs never contain).
    pub fn start_logging(binary: &Path, args: &[&str], filter: &str) -> Node {
        Self::start_with_env(binary, args, &[("RUST_LOG", filter)])
    }

    /// [`Node::start`] with extra environment variables (e.g. a fake `NOTIFY_SOCKET`, or
    /// `RUST_LOG`, which defaults to `info`).
    pub fn start_with_env(binary: &Path, args: &[&str], env: &[(&str, &str)]) -> Node {
        let mut child = Command::new(binary)
            .args(args)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let addr = rest
                        .split_whitespace()
                        .next()
                        .unwrap_or("")
                        .trim_end_matches(['"', ',']);
                    if let (Some(sender), Ok(addr)) = (tx.as_ref(), addr.parse::<SocketAddr>()) {
                        let _ = sender.send(addr);
                        tx = None;
                    }
                }
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => Node { child, addr, log },
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "{} did not start listening; its log:\n{}",
                    binary.display(),
                    log.lock().unwrap()
                );
            }
        }
    }

    /// Everything the process logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for the exit status (code).
    pub fn terminate(mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        panic!(
            "process did not stop within 30 s of SIGTERM; log:\n{}",
            self.log()
        );
    }

    /// Wait (up to 30 s) for the process to exit by itself; answers its exit code.
    pub fn wait(mut self) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("process did not exit within 30 s; log:\n{}", self.log());
    }

    /// Send a signal by name (e.g. "HUP").
    pub fn signal(&self, name: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Write the central's config into `dir` and return its path.
pub fn central_config(dir: &Path, port: u16) -> PathBuf {
    let path = dir.join("central.toml");
    let text = format!(
        "[central]\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"central-data\"\n\n\
         [[agents]]\nid = \"agent-test\"\ntoken = \"{AGENT_TOKEN}\"\n\n\
         [[users]]\nname = \"{}\"\npassword = \"{}\"\n",
        CENTRAL_USER.0, CENTRAL_USER.1
    );
    std::fs::write(&path, text).expect("write central config");
    path
}

/// Start `xmcentral` on `port` (0 for any) with its data in `dir`.
pub fn start_central(dir: &Path, port: u16) -> Node {
    let config = central_config(dir, port);
    Node::start(
        &binary("xmcentral"),
        &["run", "--config", config.to_str().unwrap()],
    )
}

/// Write an agent config into `dir`: the common header pointing at the central on `central_port`,
/// plus `extra` (users, integrations, store bounds...).
pub fn agent_config(dir: &Path, central_port: u16, extra: &str) -> PathBuf {
    let path = dir.join("agent.toml");
    let text = format!(
        "[agent]\nid = \"agent-test\"\nlisten = \"127.0.0.1:0\"\ndata_dir = \"agent-data\"\n\n\
         [central]\nurl = \"ws://127.0.0.1:{central_port}/api/agent/1/connect\"\ntoken = \"{AGENT_TOKEN}\"\n\
         backoff_initial_ms = 50\nbackoff_max_ms = 500\n\n{extra}"
    );
    std::fs::write(&path, text).expect("write agent config");
    path
}

/// Start `xmagent run` with the config at `config`.
pub fn start_agent(config: &Path) -> Node {
    Node::start(
        &binary("xmagent"),
        &["run", "--config", config.to_str().unwrap()],
    )
}

/// The person the notification tests notify: `oncall` with a work email and an SMS
/// (`TEXT_PHONE`) device, a `[[people]]` entry to append to [`central_config`]'s file.
pub const ONCALL_PERSON: &str = r#"
[[people]]
target_name = "oncall"
devices = [
  { name = "Work Email", device_type = "EMAIL", address = "oncall@example.com" },
  { name = "Mobile", device_type = "TEXT_PHONE", address = "+15550100" },
]
"#;

/// A user, an API key and one integration per auth mode, all create_event, ready to append to
/// [`agent_config`]. The integration ids are `any`, `url`, `basic`, `api_key`, `oauth`.
pub const STANDARD_AGENT: &str = r#"
[oauth]
access_token_ttl_secs = 2

[[users]]
name = "svc"
roles = ["REST Web Service User", "Agent Administrator"]
password = "svc-password"
api_keys = [{ key = "svc-key", secret = "svc-key-secret" }]

[[users]]
name = "norole"
password = "norole-password"

[[integrations]]
id = "any"
action = "create_event"
form = "Incident Alert"
authenticating_user = "svc"
url_key = "url-key-any"

[[integrations]]
id = "url"
action = "create_event"
auth = "url"
authenticating_user = "svc"
url_key = "url-key-url"

[[integrations]]
id = "basic"
action = "create_event"
auth = "basic"

[[integrations]]
id = "api_key"
action = "create_event"
auth = "api_key"

[[integrations]]
id = "oauth"
action = "create_event"
auth = "oauth"
"#;

/// An HTTP answer.
#[derive(Debug)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Response headers (lower-case names).
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Bytes,
}

impl Answer {
    /// The body as JSON (panics with the body if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| {
            panic!(
                "not JSON ({}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// First value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request on a fresh connection.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> std::io::Result<Answer> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    exchange(stream, addr, method, path, headers, body.into()).await
}

/// One HTTP/1.1 request over `stream` (plain or TLS) to the listener at `addr`.
async fn exchange<S>(
    stream: S,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> std::io::Result<Answer>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io_error = |e: hyper::Error| std::io::Error::other(e.to_string());
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(io_error)?;
    tokio::spawn(connection);
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(body))
        .map_err(std::io::Error::other)?;
    let response = sender.send_request(request).await.map_err(io_error)?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(io_error)?
        .to_bytes();
    Ok(Answer {
        status,
        headers,
        body,
    })
}

/// `Authorization: Basic ...` for user and password.
pub fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// POST a JSON body to an integration's trigger URL.
pub async fn trigger(
    agent: SocketAddr,
    integration: &str,
    query: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let path = format!("/api/integration/1/functions/{integration}/triggers{query}");
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    http(agent, "POST", &path, &all, body.to_owned())
        .await
        .expect("agent reachable")
}

/// POST `body` to an integration whose URL key is `key-{integration}` (the convention of the
/// script tests), insist on 202 and return the request id.
pub async fn accepted(agent: SocketAddr, integration: &str, body: &str) -> String {
    let query = format!("?apiKey=key-{integration}");
    let answer = trigger(agent, integration, &query, &[], body).await;
    assert_eq!(
        answer.status,
        202,
        "{integration}: {}",
        String::from_utf8_lossy(&answer.body)
    );
    answer.json()["requestId"].as_str().unwrap().to_owned()
}

/// GET an agent API path as `user`, insist on 200 and return the JSON body.
pub async fn get_json(agent: SocketAddr, path: &str, (user, password): (&str, &str)) -> Value {
    let auth = basic(user, password);
    let answer = http(agent, "GET", path, &[("authorization", &auth)], "")
        .await
        .unwrap();
    assert_eq!(
        answer.status,
        200,
        "{path}: {}",
        String::from_utf8_lossy(&answer.body)
    );
    answer.json()
}

/// The events the central holds for `request_id`.
pub async fn central_events(central: SocketAddr, request_id: &str) -> Vec<Value> {
    let auth = basic(CENTRAL_USER.0, CENTRAL_USER.1);
    let answer = http(
        central,
        "GET",
        &format!("/api/xm/1/events?requestId={request_id}"),
        &[("authorization", &auth)],
        "",
    )
    .await
    .expect("central reachable");
    assert_eq!(
        answer.status,
        200,
        "events report: {}",
        String::from_utf8_lossy(&answer.body)
    );
    answer.json()["data"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Every event the central holds (all pages).
pub async fn all_central_events(central: SocketAddr) -> Vec<Value> {
    let auth = basic(CENTRAL_USER.0, CENTRAL_USER.1);
    let mut all = Vec::new();
    loop {
        let path = format!("/api/xm/1/events?limit=1000&offset={}", all.len());
        let answer = http(central, "GET", &path, &[("authorization", &auth)], "")
            .await
            .expect("central reachable");
        assert_eq!(
            answer.status,
            200,
            "events list: {}",
            String::from_utf8_lossy(&answer.body)
        );
        let page = answer.json()["data"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if page.is_empty() {
            return all;
        }
        all.extend(page);
    }
}

/// Poll `check` every 50 ms until it returns `Some`, or panic with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
