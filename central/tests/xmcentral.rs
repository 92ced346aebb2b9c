//! End-to-end tests of the real `xmcentral` binary on loopback: config checking, the agent
//! websocket, the events REST API, graceful stop and restart on the same data directory.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use protocol::{AgentFrame, CentralFrame, EventCreate, CONNECT_PATH, PROTOCOL_VERSION};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const TOKEN: &str = "test-token-abc";
const TOKEN_2: &str = "second-agent-token";
const USER: (&str, &str) = ("admin", "pw-123");
const WAIT: Duration = Duration::from_secs(20);

fn xmcentral() -> &'static str {
    env!("CARGO_BIN_EXE_xmcentral")
}

fn write_config(dir: &Path) -> PathBuf {
    let path = dir.join("central.toml");
    let text = format!(
        "[central]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"data\"\n\
         [[agents]]\nid = \"agent-01\"\ntoken = \"{TOKEN}\"\n\
         [[agents]]\nid = \"agent-02\"\ntoken = \"{TOKEN_2}\"\n\
         [[users]]\nname = \"{}\"\npassword = \"{}\"\n",
        USER.0, USER.1
    );
    std::fs::write(&path, text).expect("write config");
    path
}

/// A running `xmcentral`; killed if the test panics.
struct Central {
    child: Child,
    addr: SocketAddr,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Central {
    fn start(config: &Path) -> Self {
        let mut child = Command::new(xmcentral())
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn xmcentral");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = log.clone();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or("");
                    if let Ok(addr) = addr.parse::<SocketAddr>() {
                        let _ = tx.send(addr);
                    }
                }
                let mut log = sink.lock().expect("log lock");
                log.push_str(&line);
                log.push('\n');
            }
        });
        let addr = match rx.recv_timeout(WAIT) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "xmcentral did not log `listening on`; log:\n{}",
                    log.lock().expect("log")
                );
            }
        };
        Self { child, addr, log }
    }

    /// SIGTERM and wait for the exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "xmcentral did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Central {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Small HTTP and websocket clients.

struct Answer {
    status: u16,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| {
            panic!(
                "not JSON ({error}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

fn basic(user: &str, password: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: &str,
) -> Answer {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("handshake");
    tokio::spawn(connection);
    let mut builder = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header("content-type", "application/json");
    if let Some(auth) = auth {
        builder = builder.header("authorization", auth);
    }
    let request = builder
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("request");
    let response = tokio::time::timeout(WAIT, sender.send_request(request))
        .await
        .expect("answer in time")
        .expect("response");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    Answer {
        status,
        headers,
        body,
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn ws_connect(addr: SocketAddr, token: Option<&str>) -> Result<Ws, u16> {
    let mut request = format!("ws://{addr}{CONNECT_PATH}")
        .into_client_request()
        .expect("client request");
    if let Some(token) = token {
        let value = format!("Bearer {token}").parse().expect("header value");
        request.headers_mut().insert("authorization", value);
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => Ok(socket),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(error) => panic!("websocket connect failed: {error}"),
    }
}

async fn send(ws: &mut Ws, frame: &AgentFrame) {
    ws.send(Message::text(frame.to_text())).await.expect("send");
}

async fn receive(ws: &mut Ws) -> Message {
    loop {
        let message = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
            .expect("socket open")
            .expect("frame");
        if !matches!(message, Message::Ping(_) | Message::Pong(_)) {
            return message;
        }
    }
}

async fn receive_frame(ws: &mut Ws) -> CentralFrame {
    match receive(ws).await {
        Message::Text(text) => serde_json::from_str(text.as_str()).expect("central frame"),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

async fn hello(addr: SocketAddr) -> Ws {
    hello_as(addr, TOKEN, "agent-01").await
}

async fn hello_as(addr: SocketAddr, token: &str, expected_id: &str) -> Ws {
    let mut ws = ws_connect(addr, Some(token))
        .await
        .expect("upgrade accepted");
    send(
        &mut ws,
        // As an agent older than `softwareVersion` says it.
        &AgentFrame::Hello {
            version: PROTOCOL_VERSION,
            agent_id: "x".into(),
            software_version: None,
        },
    )
    .await;
    let welcome = receive_frame(&mut ws).await;
    assert!(
        welcome.accepts(protocol::ACCEPTS_STATUS),
        "the central announces the status frame: {welcome:?}"
    );
    assert!(matches!(
        welcome,
        CentralFrame::Welcome { version: PROTOCOL_VERSION, agent_id, .. } if agent_id == expected_id
    ));
    ws
}

fn create(seq: u64, request_id: &str, index: u32, trigger: Value) -> AgentFrame {
    AgentFrame::EventCreate(EventCreate {
        seq,
        request_id: request_id.into(),
        index,
        integration_id: "int-1".into(),
        form: Some("Incident".into()),
        plan: None,
        sender: None,
        flood_control: false,
        trigger,
    })
}

async fn expect_ack(ws: &mut Ws, seq: u64) -> String {
    match receive_frame(ws).await {
        CentralFrame::Ack { seq: got, event_id } if got == seq => event_id,
        other => panic!("expected ack for seq {seq}, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------

#[test]
fn check_accepts_a_good_config_and_names_file_and_key_of_a_bad_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = write_config(dir.path());
    let output = Command::new(xmcentral())
        .args(["check", "--config"])
        .arg(&good)
        .output();
    let output = output.expect("run check");
    assert_eq!(output.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&output.stdout).contains("config OK"));

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[agents]]\nid = \"a\"\ntokne = \"secret-value\"\n").expect("write");
    for command in ["check", "run"] {
        let output = Command::new(xmcentral())
            .args([command, "--config"])
            .arg(&bad)
            .output();
        let output = output.expect("run xmcentral");
        assert_eq!(output.status.code(), Some(78), "{command}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("bad.toml"), "{command}: {stderr}");
        assert!(stderr.contains("agents[0].tokne"), "{command}: {stderr}");
    }

    let missing = dir.path().join("missing.toml");
    let output = Command::new(xmcentral())
        .args(["check", "--config"])
        .arg(&missing)
        .output();
    assert_eq!(output.expect("run check").status.code(), Some(78));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_rest_and_restart_keep_events_exactly_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path());
    let central = Central::start(&config);
    let addr = central.addr;
    let admin = basic(USER.0, USER.1);

    // Websocket authentication.
    assert_eq!(ws_connect(addr, None).await.err(), Some(401));
    assert_eq!(ws_connect(addr, Some("wrong-token")).await.err(), Some(401));

    let mut ws = hello(addr).await;
    // A status frame is taken without an answer; the connection goes on.
    send(
        &mut ws,
        &AgentFrame::Status(protocol::AgentStatus {
            queue_depth: 1,
            ..Default::default()
        }),
    )
    .await;
    let trigger = json!({
        "priority": "high",
        "properties": {"Host#en": "db1", "Summary": "disk full"},
        "recipients": [{"targetName": "ops"}],
        "expirationInMinutes": 30
    });
    send(&mut ws, &create(1, "req-1", 0, trigger.clone())).await;
    let event_id = expect_ack(&mut ws, 1).await;
    send(&mut ws, &create(2, "req-1", 0, trigger.clone())).await;
    assert_eq!(
        expect_ack(&mut ws, 2).await,
        event_id,
        "a resend answers the same event"
    );

    // Validation rejects are permanent and answered in order with the acks around them.
    send(
        &mut ws,
        &create(3, "req-bad", 0, json!({"priority": "urgent"})),
    )
    .await;
    send(
        &mut ws,
        &create(4, "req-bad", 1, json!(["not", "an", "object"])),
    )
    .await;
    send(&mut ws, &create(5, "req-2", 0, json!({}))).await;
    for seq in [3, 4] {
        match receive_frame(&mut ws).await {
            CentralFrame::Reject {
                seq: got,
                retryable: false,
                status: 400,
                message,
            } => {
                assert_eq!(got, seq);
                assert!(!message.is_empty());
            }
            other => panic!("expected reject for {seq}, got {other:?}"),
        }
    }
    expect_ack(&mut ws, 5).await;

    // A pipelined window: 64 frames sent before reading any answer, answered in order.
    for seq in 100..164 {
        let index = u32::try_from(seq - 100).expect("small");
        send(
            &mut ws,
            &create(seq, "req-window", index, json!({"properties": {"n": seq}})),
        )
        .await;
    }
    let mut window_ids = std::collections::HashSet::new();
    for seq in 100..164 {
        window_ids.insert(expect_ack(&mut ws, seq).await);
    }
    assert_eq!(window_ids.len(), 64, "64 distinct events");

    // REST: the events report by requestId, with Basic and with the agent token.
    let report = request(
        addr,
        "GET",
        "/api/xm/1/events?requestId=req-1",
        Some(&admin),
        "",
    )
    .await;
    assert_eq!(report.status, 200);
    let report = report.json();
    assert_eq!(report["count"], 1);
    assert_eq!(report["total"], 1);
    let event = &report["data"][0];
    assert_eq!(event["id"], event_id.as_str());
    assert_eq!(event["eventId"], event_id.as_str());
    assert_eq!(event["status"], "ACTIVE");
    assert_eq!(event["priority"], "HIGH");
    assert_eq!(event["form"]["name"], "Incident");
    assert_eq!(event["agentId"], "agent-01");
    assert_eq!(event["expirationInMinutes"], 30);
    assert_eq!(
        event["links"]["self"],
        format!("/api/xm/1/events/{event_id}")
    );
    let bearer = format!("Bearer {TOKEN}");
    let with_token = request(
        addr,
        "GET",
        "/api/xm/1/events?requestId=req-1",
        Some(&bearer),
        "",
    );
    assert_eq!(with_token.await.status, 200);

    let by_property = request(
        addr,
        "GET",
        "/api/xm/1/events?propertyName=Host%23en&propertyValue=db1",
        Some(&admin),
        "",
    )
    .await;
    assert_eq!(by_property.json()["total"], 1);
    let window = request(
        addr,
        "GET",
        "/api/xm/1/events?requestId=req-window&limit=10",
        Some(&admin),
        "",
    );
    let window = window.await.json();
    assert_eq!(
        (window["count"].as_u64(), window["total"].as_u64()),
        (Some(10), Some(64))
    );
    assert!(window["links"]["next"]
        .as_str()
        .is_some_and(|next| next.contains("offset=10")));

    // 401 paths carry the Basic challenge.
    for auth in [
        None,
        Some(basic(USER.0, "wrong")),
        Some("Bearer wrong".to_owned()),
    ] {
        let answer = request(addr, "GET", "/api/xm/1/events", auth.as_deref(), "").await;
        assert_eq!(answer.status, 401, "{auth:?}");
        assert_eq!(
            answer
                .headers
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok()),
            Some("Basic realm=\"xmcentral\"")
        );
    }

    // Single event, status change, errors.
    let one = request(
        addr,
        "GET",
        &format!("/api/xm/1/events/{event_id}"),
        Some(&admin),
        "",
    )
    .await;
    assert_eq!(
        (one.status, one.json()["id"].clone()),
        (200, json!(event_id))
    );
    let missing = request(addr, "GET", "/api/xm/1/events/nope", Some(&admin), "").await;
    assert_eq!(missing.status, 404);
    let body = json!({"id": event_id, "status": "suspended"}).to_string();
    let changed = request(addr, "POST", "/api/xm/1/events", Some(&admin), &body).await;
    assert_eq!(changed.status, 202);
    assert_eq!(changed.json()["status"], "SUSPENDED");
    let body = json!({"id": event_id, "status": "PAUSED"}).to_string();
    assert_eq!(
        request(addr, "POST", "/api/xm/1/events", Some(&admin), &body)
            .await
            .status,
        400
    );
    let body = json!({"id": "nope", "status": "ACTIVE"}).to_string();
    assert_eq!(
        request(addr, "POST", "/api/xm/1/events", Some(&admin), &body)
            .await
            .status,
        404
    );
    let suspended = request(
        addr,
        "GET",
        "/api/xm/1/events?status=SUSPENDED",
        Some(&admin),
        "",
    );
    assert_eq!(suspended.await.json()["total"], 1);

    // Routing errors, health, metrics.
    let unknown = request(addr, "GET", "/api/xm/1/nothing", Some(&admin), "").await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json()["code"], 404);
    let wrong_method = request(addr, "DELETE", "/api/xm/1/events", Some(&admin), "").await;
    assert_eq!(wrong_method.status, 405);
    assert_eq!(
        wrong_method
            .headers
            .get("allow")
            .and_then(|v| v.to_str().ok()),
        Some("GET, POST")
    );
    let health = request(addr, "GET", "/healthz", None, "").await;
    assert_eq!(
        (health.status, health.body.as_ref()),
        (200, b"ok\n".as_ref())
    );
    assert_eq!(request(addr, "GET", "/readyz", None, "").await.status, 200);
    let metrics = request(addr, "GET", "/metrics", None, "").await;
    let metrics = String::from_utf8_lossy(&metrics.body).into_owned();
    assert!(
        metrics.contains("xmcentral_events_created_total 66\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("xmcentral_duplicates_answered_total 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("xmcentral_frames_rejected_total 2\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("xmcentral_agents_connected 1\n"),
        "{metrics}"
    );

    // Graceful stop: the open websocket is closed by the central, the process exits 0.
    let log = central.log.clone();
    let status = central.stop();
    assert_eq!(status.code(), Some(0), "log:\n{}", log.lock().expect("log"));
    let closed = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("socket ends");
    assert!(
        matches!(closed, None | Some(Ok(Message::Close(_))) | Some(Err(_))),
        "{closed:?}"
    );
    let log_text = log.lock().expect("log").clone();
    assert!(
        !log_text.contains(TOKEN) && !log_text.contains(USER.1),
        "secret in the log"
    );

    // Restart on the same data directory: events survive, resends still dedupe.
    let central = Central::start(&config);
    let addr = central.addr;
    let report = request(
        addr,
        "GET",
        "/api/xm/1/events?requestId=req-1",
        Some(&admin),
        "",
    )
    .await;
    let report = report.json();
    assert_eq!(report["total"], 1);
    assert_eq!(report["data"][0]["id"], event_id.as_str());
    assert_eq!(report["data"][0]["status"], "SUSPENDED");
    let mut ws = hello(addr).await;
    send(&mut ws, &create(7, "req-1", 0, trigger)).await;
    assert_eq!(expect_ack(&mut ws, 7).await, event_id);
    let all = request(addr, "GET", "/api/xm/1/events?limit=1000", Some(&admin), "").await;
    assert_eq!(all.json()["total"], 66, "1 + 1 + 64 events, no duplicates");
    assert_eq!(central.stop().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_hello_closes_the_socket_with_a_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let central = Central::start(&write_config(dir.path()));

    let mut ws = ws_connect(central.addr, Some(TOKEN))
        .await
        .expect("upgrade");
    send(
        &mut ws,
        &AgentFrame::Hello {
            version: PROTOCOL_VERSION + 1,
            agent_id: "x".into(),
            software_version: None,
        },
    )
    .await;
    match receive(&mut ws).await {
        Message::Close(Some(frame)) => {
            assert!(
                frame.reason.as_str().contains("version"),
                "{}",
                frame.reason.as_str()
            )
        }
        other => panic!("expected a close frame, got {other:?}"),
    }

    let mut ws = ws_connect(central.addr, Some(TOKEN))
        .await
        .expect("upgrade");
    send(&mut ws, &create(1, "r", 0, json!({}))).await;
    match receive(&mut ws).await {
        Message::Close(Some(frame)) => {
            assert!(
                frame.reason.as_str().contains("hello"),
                "{}",
                frame.reason.as_str()
            )
        }
        other => panic!("expected a close frame, got {other:?}"),
    }

    // No event was created by the refused frame.
    let admin = basic(USER.0, USER.1);
    let all = request(central.addr, "GET", "/api/xm/1/events", Some(&admin), "").await;
    assert_eq!(all.json()["total"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_agents_get_their_own_events_and_pings_are_answered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let central = Central::start(&write_config(dir.path()));
    let addr = central.addr;

    let mut ws = hello(addr).await;
    ws.send(Message::Ping(Bytes::from_static(b"hb")))
        .await
        .expect("ping");
    let pong = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("in time");
    assert!(
        matches!(pong, Some(Ok(Message::Pong(ref data))) if data.as_ref() == b"hb"),
        "{pong:?}"
    );
    drop(ws);

    // Two connections per agent, all sending the same request ids at once. Per agent, both
    // connections must agree on every event id; across agents the events are distinct.
    let mut tasks = Vec::new();
    for (token, agent) in [(TOKEN, "agent-01"), (TOKEN_2, "agent-02")] {
        for _connection in 0..2 {
            tasks.push(tokio::spawn(async move {
                let mut ws = hello_as(addr, token, agent).await;
                for seq in 0..100u64 {
                    let index = u32::try_from(seq).expect("small");
                    send(&mut ws, &create(seq, "shared", index, json!({}))).await;
                }
                let mut ids = Vec::new();
                for seq in 0..100 {
                    ids.push(expect_ack(&mut ws, seq).await);
                }
                (agent, ids)
            }));
        }
    }
    let mut by_agent: std::collections::HashMap<&str, Vec<Vec<String>>> = Default::default();
    for task in tasks {
        let (agent, ids) = task.await.expect("connection task");
        by_agent.entry(agent).or_default().push(ids);
    }
    let mut all = std::collections::HashSet::new();
    for (agent, runs) in &by_agent {
        assert_eq!(runs.len(), 2);
        assert_eq!(
            runs[0], runs[1],
            "{agent}: both connections see the same events"
        );
        all.extend(runs[0].iter().cloned());
    }
    assert_eq!(
        all.len(),
        200,
        "100 events per agent, none shared, none doubled"
    );

    let admin = basic(USER.0, USER.1);
    let report = request(
        addr,
        "GET",
        "/api/xm/1/events?requestId=shared&limit=1000",
        Some(&admin),
        "",
    );
    assert_eq!(report.await.json()["total"], 200);
}

/// An agent named in `run_on` gets its integrations (URL key as a digest only) after `welcome`;
/// the activity it reports is kept only for the integrations it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_on_integrations_are_sent_and_only_their_activity_is_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path());
    let text = std::fs::read_to_string(&config).expect("read config")
        + "[[integrations]]\nid = \"mine\"\naction = \"create_event\"\nauth = \"url\"\n\
           url_key = \"mine-plain-key\"\nauthenticating_user = \"svc\"\nrun_on = [\"agent-01\"]\n\
           [[integrations]]\nid = \"theirs\"\naction = \"create_event\"\nauth = \"basic\"\n\
           run_on = [\"agent-02\"]\n";
    std::fs::write(&config, text).expect("write config");
    let central = Central::start(&config);

    let mut ws = hello(central.addr).await;
    let message = receive(&mut ws).await;
    let Message::Text(text) = message else {
        panic!("expected the integrations frame, got {message:?}");
    };
    assert!(!text.contains("mine-plain-key"), "no plain URL key: {text}");
    let CentralFrame::Integrations(set) = serde_json::from_str(text.as_str()).expect("frame")
    else {
        panic!("expected the integrations frame: {text}");
    };
    let ids: Vec<&str> = set.integrations.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids, ["mine"]);
    assert_eq!(set.version.len(), 64, "a SHA-256 version");
    assert!(set.integrations[0].url_key_sha256.is_some());

    let entry = |integration: &str| json!({"requestId": format!("r-{integration}"), "integrationId": integration, "status": "COMPLETED"});
    let activity = AgentFrame::Activity {
        entries: vec![entry("mine"), entry("theirs")],
    };
    send(&mut ws, &activity).await;
    let auth = basic(USER.0, USER.1);
    let deadline = std::time::Instant::now() + WAIT;
    let logs = loop {
        let answer = request(
            central.addr,
            "GET",
            "/api/xm/1/integrations/mine/logs",
            Some(&auth),
            "",
        )
        .await;
        let logs = answer.json();
        if logs["count"] == 1 || std::time::Instant::now() > deadline {
            break logs;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(logs["data"][0]["agentId"], "agent-01", "{logs}");
    let theirs = request(
        central.addr,
        "GET",
        "/api/xm/1/integrations/theirs/logs",
        Some(&auth),
        "",
    )
    .await;
    assert_eq!(
        theirs.json()["count"],
        0,
        "agent-01 does not run it: {:?}",
        theirs.body
    );
}

// ---------------------------------------------------------------------------------------------
// Managing integrations (issue 12 item 5).

/// A hosted `url`-auth integration and one run by `agent-01`, both with URL keys.
const MANAGED_INTEGRATIONS: &str = "\n# the cloud one\n[[integrations]]\nid = \"cloud\"\nname = \"Cloud alerts\"\naction = \"create_event\"\nplan = \"Ops\"\nform = \"Alert\"\nauth = \"url\"\nurl_key = \"cloud-secret-key\"\nauthenticating_user = \"admin\"\n\n[[integrations]]\nid = \"dc\"\naction = \"create_event\"\nurl_key = \"dc-secret-key\"\nauthenticating_user = \"admin\"\nrun_on = [\"agent-01\"]\n";

fn write_managed_config(dir: &Path) -> PathBuf {
    let path = write_config(dir);
    let mut text = std::fs::read_to_string(&path).expect("read config");
    text.push_str(MANAGED_INTEGRATIONS);
    std::fs::write(&path, text).expect("write config");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integrations_are_listed_for_rest_users_without_secrets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let central = Central::start(&write_managed_config(dir.path()));
    let admin = basic(USER.0, USER.1);
    let list = request(
        central.addr,
        "GET",
        "/api/xm/1/integrations",
        Some(&admin),
        "",
    )
    .await;
    assert_eq!(list.status, 200, "{}", String::from_utf8_lossy(&list.body));
    let text = String::from_utf8_lossy(&list.body).into_owned();
    for secret in ["cloud-secret-key", "dc-secret-key", TOKEN] {
        assert!(!text.contains(secret), "a secret leaked: {text}");
    }
    let list = list.json();
    assert_eq!(
        (list["count"].clone(), list["total"].clone()),
        (json!(2), json!(2))
    );
    let cloud = &list["data"][0];
    assert_eq!(cloud["id"], "cloud");
    assert_eq!(cloud["name"], "Cloud alerts");
    assert_eq!(cloud["operation"], "CREATE_EVENT");
    assert_eq!(cloud["authenticationType"], "URL");
    assert_eq!(cloud["plan"]["name"], "Ops");
    assert_eq!(cloud["form"]["name"], "Alert");
    assert_eq!(cloud["deployed"], true);
    assert_eq!(cloud["environment"], json!({"type": "CLOUD"}));
    let dc = &list["data"][1];
    assert_eq!(dc["authenticationType"], "ANY");
    assert_eq!(
        dc["environment"],
        json!({"type": "AGENT", "agents": ["agent-01"]})
    );

    let page = request(
        central.addr,
        "GET",
        "/api/xm/1/integrations?offset=1&limit=1",
        Some(&admin),
        "",
    )
    .await
    .json();
    assert_eq!(page["data"][0]["id"], "dc");
    assert!(page["links"].get("next").is_none(), "{page}");

    let one = request(
        central.addr,
        "GET",
        "/api/xm/1/integrations/dc",
        Some(&admin),
        "",
    )
    .await;
    assert_eq!(one.status, 200);
    assert_eq!(one.json(), list["data"][1]);

    let agent = format!("Bearer {TOKEN}");
    let refusals = [
        (
            "GET",
            "/api/xm/1/integrations/nope",
            Some(admin.as_str()),
            404,
        ),
        (
            "GET",
            "/api/xm/1/integrations?limit=x",
            Some(admin.as_str()),
            400,
        ),
        ("GET", "/api/xm/1/integrations", None, 401),
        ("GET", "/api/xm/1/integrations", Some(agent.as_str()), 403),
        ("POST", "/api/xm/1/integrations", Some(admin.as_str()), 405),
    ];
    for (method, path, auth, status) in refusals {
        let answer = request(central.addr, method, path, auth, "").await;
        assert_eq!(answer.status, status, "{method} {path}");
    }
    central.stop();
}

fn run_xmcentral(args: &[&str], config: &Path) -> (Option<i32>, String, String) {
    let output = Command::new(xmcentral())
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .expect("run xmcentral");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The keys printed by `copy` / `import`, by integration id.
fn printed_keys(stdout: &str) -> Vec<(String, String)> {
    stdout
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("new URL key of ")?;
            let (id, key) = rest.split_once(" (shown only once): ")?;
            Some((id.to_owned(), key.to_owned()))
        })
        .collect()
}

async fn trigger(addr: SocketAddr, id: &str, key: &str) -> u16 {
    let path = format!("/api/integration/1/functions/{id}/triggers?apiKey={key}");
    request(addr, "POST", &path, None, "{\"summary\": \"disk full\"}")
        .await
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copied_integration_is_served_after_a_restart_with_its_new_key_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_managed_config(dir.path());
    let before = std::fs::read_to_string(&config).expect("read");
    let central = Central::start(&config);
    assert_eq!(
        trigger(central.addr, "cloud", "cloud-secret-key").await,
        202
    );

    let (code, stdout, stderr) =
        run_xmcentral(&["integration", "copy", "cloud", "cloud-2"], &config);
    assert_eq!(code, Some(0), "{stderr}");
    let keys = printed_keys(&stdout);
    assert_eq!(keys.len(), 1, "{stdout}");
    let (id, new_key) = &keys[0];
    assert_eq!(id, "cloud-2");
    assert_ne!(new_key, "cloud-secret-key");
    let after = std::fs::read_to_string(&config).expect("read");
    assert!(
        after.starts_with(&before),
        "comments and layout kept:\n{after}"
    );
    assert_eq!(after.matches(new_key.as_str()).count(), 1, "{after}");
    assert_eq!(
        after.matches("cloud-secret-key").count(),
        1,
        "the old key untouched"
    );

    // The running central does not know the copy yet; after a restart it serves it.
    assert_eq!(trigger(central.addr, "cloud-2", new_key).await, 404);
    assert!(central.stop().success());
    let central = Central::start(&config);
    assert_eq!(trigger(central.addr, "cloud-2", new_key).await, 202);
    let old_key = trigger(central.addr, "cloud-2", "cloud-secret-key").await;
    assert!(
        old_key == 401 || old_key == 403,
        "old key answered {old_key}"
    );
    assert_eq!(
        trigger(central.addr, "cloud", "cloud-secret-key").await,
        202
    );
    let copy = request(
        central.addr,
        "GET",
        "/api/xm/1/integrations/cloud-2",
        Some(&basic(USER.0, USER.1)),
        "",
    )
    .await
    .json();
    assert_eq!(copy["authenticationType"], "URL");
    assert_eq!(copy["name"], "Cloud alerts (copy)");
    central.stop();
}

#[test]
fn export_import_round_trip_gives_url_auth_with_new_keys_and_keeps_scripts() {
    let source_dir = tempfile::tempdir().expect("tempdir");
    let source = write_config(source_dir.path());
    let script = "var data = JSON.parse(request.body);\nform.post({properties: data});\n";
    std::fs::write(source_dir.path().join("transform.js"), script).expect("script");
    std::fs::write(source_dir.path().join("util.js"), "exports.x = 1;\n").expect("library");
    let mut text = std::fs::read_to_string(&source).expect("read");
    text.push_str("\n[[libraries]]\nname = \"util\"\npath = \"util.js\"\n\n[[integrations]]\nid = \"ops-transform\"\naction = \"transform\"\nplan = \"Ops\"\nscript = \"transform.js\"\nlibraries = [\"util\"]\nauth = \"basic\"\nconstants = { region = \"eu\" }\n\n[[integrations]]\nid = \"other-plan\"\naction = \"create_event\"\nplan = \"Other\"\nurl_key = \"other-secret\"\nauthenticating_user = \"admin\"\n");
    std::fs::write(&source, text).expect("write");

    let (code, bundle, stderr) =
        run_xmcentral(&["integration", "export", "--plan", "Ops"], &source);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        !bundle.contains("other"),
        "only the plan's integrations: {bundle}"
    );
    let parsed: Value = serde_json::from_str(&bundle).expect("JSON bundle");
    assert_eq!(parsed["integrations"][0]["script"], script);
    assert_eq!(
        parsed["integrations"][0]["libraries"]["util"],
        "exports.x = 1;\n"
    );
    let bundle_path = source_dir.path().join("bundle.json");
    std::fs::write(&bundle_path, &bundle).expect("bundle");
    let (code, _, stderr) = run_xmcentral(&["integration", "export", "--plan", "Nope"], &source);
    assert_eq!(code, Some(64), "{stderr}");

    let target_dir = tempfile::tempdir().expect("tempdir");
    let target = write_config(target_dir.path());
    let bundle_arg = bundle_path.to_str().expect("utf-8 path");
    let import = [
        "integration",
        "import",
        bundle_arg,
        "--authenticating-user",
        "admin",
    ];
    let (code, stdout, stderr) = run_xmcentral(&import, &target);
    assert_eq!(code, Some(0), "{stderr}");
    let keys = printed_keys(&stdout);
    assert_eq!(keys.len(), 1, "{stdout}");
    assert_eq!(keys[0].0, "ops-transform");
    let imported = std::fs::read_to_string(&target).expect("read");
    assert!(imported.contains("auth = \"url\""), "{imported}");
    assert!(
        imported.contains(&format!("url_key = \"{}\"", keys[0].1)),
        "{imported}"
    );
    assert_eq!(
        std::fs::read_to_string(target_dir.path().join("ops-transform.js")).expect("script"),
        script
    );
    let (code, stdout, stderr) = run_xmcentral(&["check"], &target);
    assert_eq!(code, Some(0), "{stdout}{stderr}");

    // Again: the id is taken; with a prefix it goes beside, with another key.
    let (code, _, stderr) = run_xmcentral(&import, &target);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains("central.toml") && stderr.contains("ops-transform"),
        "{stderr}"
    );
    let prefixed = [&import[..], &["--rename-prefix", "copy-"]].concat();
    let (code, stdout, stderr) = run_xmcentral(&prefixed, &target);
    assert_eq!(code, Some(0), "{stderr}");
    let second = printed_keys(&stdout);
    assert_eq!(second[0].0, "copy-ops-transform");
    assert_ne!(second[0].1, keys[0].1);
}

#[test]
fn integration_commands_refuse_bad_requests_with_usage_or_config_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_managed_config(dir.path());
    let original = std::fs::read_to_string(&config).expect("read");
    let cases: [(&[&str], i32, &str); 3] = [
        (
            &["integration", "copy", "nope", "x"],
            64,
            "no integration with id \"nope\"",
        ),
        (
            &["integration", "copy", "cloud", "dc"],
            64,
            "already exists",
        ),
        (
            &["integration", "copy", "cloud", "bad/id"],
            64,
            "not a valid integration id",
        ),
    ];
    for (args, expected, message) in cases {
        let (code, _, stderr) = run_xmcentral(args, &config);
        assert_eq!(code, Some(expected), "{args:?}: {stderr}");
        assert!(
            stderr.contains(message) && stderr.contains("central.toml"),
            "{stderr}"
        );
    }
    let (code, _, stderr) = run_xmcentral(&["integration", "copy", "cloud"], &config);
    assert_eq!(code, Some(64), "{stderr}");

    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "[central]\nlisten = 1\n").expect("write");
    let (code, _, stderr) = run_xmcentral(&["integration", "copy", "cloud", "x"], &broken);
    assert_eq!(code, Some(78), "{stderr}");
    assert!(stderr.contains("broken.toml"), "{stderr}");

    // Bundles: not JSON, and one the daemon would refuse (nothing written, no script left).
    let bundle = dir.path().join("bundle.json");
    std::fs::write(&bundle, "not json").expect("write");
    let args = ["integration", "import", bundle.to_str().expect("utf-8")];
    let (code, _, stderr) = run_xmcentral(&args, &config);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("bundle.json"), "{stderr}");
    let invalid = json!({
        "format": "xmcentral-integrations/1",
        "plan": "Ops",
        "integrations": [{
            "keys": {"id": "broken", "action": "transform", "authenticating_user": "admin"},
            "script": "this is ( not javascript",
        }],
    });
    std::fs::write(&bundle, invalid.to_string()).expect("write");
    let (code, _, stderr) = run_xmcentral(&args, &config);
    assert_eq!(code, Some(78), "{stderr}");
    assert!(stderr.contains("integrations[2].script"), "{stderr}");
    assert!(
        !dir.path().join("broken.js").exists(),
        "the script file was removed"
    );
    assert_eq!(std::fs::read_to_string(&config).expect("read"), original);
}
