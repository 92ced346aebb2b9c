//! Security end to end: the argon2 flood, least privilege on the admin endpoints, OAuth as the
//! RFCs say, bounded input, and no secret in any log — against the real binaries.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::*;
use serde_json::Value;

const HASHED_PASSWORD: &str = "hashy-Correct-Horse-7";
const CALLER_PASSWORD: &str = "caller-secret-pw-1";
const OPS_PASSWORD: &str = "ops-secret-pw-2";
const LIMITED_OPS_PASSWORD: &str = "opsl-secret-pw-3";
const NOROLE_PASSWORD: &str = "norole-secret-pw-4";
const QUIET_URL_KEY: &str = "quiet-url-key-5";
const PRIVATE_URL_KEY: &str = "private-url-key-6";
const WRONG_PASSWORD: &str = "wrong-guess-pw-8";

/// An argon2 PHC string of `password`, made by the real `xmagent hash-password`.
fn argon2_hash(password: &str) -> String {
    let mut child = Command::new(binary("xmagent"))
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start xmagent hash-password");
    writeln!(child.stdin.take().expect("stdin"), "{password}").expect("write password");
    let output = child.wait_with_output().expect("hash-password output");
    assert!(output.status.success(), "hash-password failed");
    String::from_utf8(output.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

/// Users of every kind and three integrations: `quiet` (URL key), `flooded` (Basic only) and
/// `private` (only `caller` and `ops` may use or see it).
fn security_agent_config(dir: &Path, central_port: u16, extra: &str) -> std::path::PathBuf {
    let hash = argon2_hash(HASHED_PASSWORD);
    agent_config(
        dir,
        central_port,
        &format!(
            r#"
[[users]]
name = "hashy"
roles = ["REST Web Service User"]
password_hash = "{hash}"

[[users]]
name = "caller"
roles = ["REST Web Service User"]
password = "{CALLER_PASSWORD}"

[[users]]
name = "ops"
roles = ["Agent Administrator"]
password = "{OPS_PASSWORD}"

[[users]]
name = "ops_limited"
roles = ["Agent Administrator"]
password = "{LIMITED_OPS_PASSWORD}"

[[users]]
name = "norole"
password = "{NOROLE_PASSWORD}"

[[integrations]]
id = "quiet"
action = "create_event"
auth = "url"
authenticating_user = "caller"
url_key = "{QUIET_URL_KEY}"

[[integrations]]
id = "flooded"
action = "create_event"
auth = "basic"

[[integrations]]
id = "private"
action = "create_event"
authenticating_user = "caller"
url_key = "{PRIVATE_URL_KEY}"
allowed_users = ["caller", "ops"]
{extra}"#
        ),
    )
}

/// Threads and resident memory (KiB) of a process, from /proc; `None` where /proc is missing.
fn threads_and_rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("Threads:")?, field("VmRSS:")?))
}

/// Latencies of `n` sequential URL-key triggers of `quiet`, sorted.
async fn quiet_latencies(agent: SocketAddr, n: usize) -> Vec<Duration> {
    let mut latencies = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let answer = trigger(
            agent,
            "quiet",
            &format!("?apiKey={QUIET_URL_KEY}"),
            &[],
            r#"{"summary":"quiet"}"#,
        )
        .await;
        latencies.push(started.elapsed());
        assert_eq!(
            answer.status,
            202,
            "{}",
            String::from_utf8_lossy(&answer.body)
        );
    }
    latencies.sort();
    latencies
}

/// 64 clients sending wrong Basic passwords for an argon2 user leave a URL-key trigger on another
/// integration answering and the agent small (≤ 64 threads, ≤ 256 MiB); prints the neighbour's
/// median latency quiet and under the flood (the target is ≤ 100 ms).
#[tokio::test(flavor = "multi_thread")]
async fn argon2_flood_leaves_other_integrations_fast_and_the_agent_small() {
    if threads_and_rss_kib(std::process::id()).is_none() {
        eprintln!("skipped: /proc/<pid>/status is not readable on this machine");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let central = start_central(dir.path(), 0);
    let agent = start_agent(&security_agent_config(dir.path(), central.addr.port(), ""));
    let quiet = quiet_latencies(agent.addr, 20).await;

    let stop = Arc::new(AtomicBool::new(false));
    let counts: Arc<[AtomicU64; 4]> = Arc::new(Default::default()); // 401, 429, other, errors
    let wrong = basic("hashy", WRONG_PASSWORD);
    let mut flood = Vec::new();
    for _ in 0..64 {
        let (stop, counts, wrong, addr) = (stop.clone(), counts.clone(), wrong.clone(), agent.addr);
        flood.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let path = "/api/integration/1/functions/flooded/triggers";
                let slot = match http(addr, "POST", path, &[("authorization", &wrong)], "{}").await
                {
                    Ok(a) if a.status == 401 => 0,
                    Ok(a) if a.status == 429 => {
                        assert!(a.header("retry-after").is_some(), "429 without Retry-After");
                        1
                    }
                    Ok(_) => 2,
                    Err(_) => 3,
                };
                counts[slot].fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let peak = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
    let sampler = {
        let (stop, peak, pid) = (stop.clone(), peak.clone(), agent.pid());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Some((threads, rss)) = threads_and_rss_kib(pid) {
                    peak.0.fetch_max(threads, Ordering::Relaxed);
                    peak.1.fetch_max(rss, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let flooded = quiet_latencies(agent.addr, 30).await;
    stop.store(true, Ordering::Relaxed);
    for task in flood {
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("flood clients stop")
            .expect("flood client");
    }
    sampler.await.unwrap();

    let median = |l: &[Duration]| l[l.len() / 2];
    let (threads, rss_kib) = (
        peak.0.load(Ordering::Relaxed),
        peak.1.load(Ordering::Relaxed),
    );
    let [unauthorized, throttled, other, errors] =
        [0, 1, 2, 3].map(|i| counts[i].load(Ordering::Relaxed));
    println!(
        "flood figures: quiet median {:?} (p90 {:?}); under a 64-client argon2 flood median {:?} \
         (p90 {:?}); agent peak {threads} threads, {} MiB RSS; flood answers: {unauthorized}×401, \
         {throttled}×429, {other} other, {errors} connection errors",
        median(&quiet),
        quiet[quiet.len() * 9 / 10],
        median(&flooded),
        flooded[flooded.len() * 9 / 10],
        rss_kib / 1024,
    );
    assert_eq!(other, 0, "a wrong password never gets anything but 401/429");
    assert!(throttled > 0, "the flood was never throttled");
    // The latency target (median <= 100 ms) is a figure to print and report, not an assertion:
    // on a loaded 2-core CI machine a timing assertion would fail for reasons of its own. What
    // keeps the neighbour fast is asserted instead: argon2 stays on its bounded pool (threads),
    // failures are throttled (429s) and memory stays bounded.
    assert!(threads <= 64, "the agent grew to {threads} threads");
    assert!(
        rss_kib <= 256 * 1024,
        "the agent grew to {} MiB",
        rss_kib / 1024
    );
    drop(central);
}

/// GET `path` with `authorization` (if any); the status and the body.
async fn get(agent: SocketAddr, path: &str, authorization: Option<&str>) -> (u16, Value) {
    let headers: Vec<(&str, &str)> = authorization
        .map(|a| vec![("authorization", a)])
        .unwrap_or_default();
    let answer = http(agent, "GET", path, &headers, "").await.expect("agent");
    let body = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
    (answer.status, body)
}

/// POST a form to the token endpoint.
async fn token_request(agent: SocketAddr, form: &str) -> Answer {
    http(
        agent,
        "POST",
        "/api/xm/1/oauth2/token",
        &[("content-type", "application/x-www-form-urlencoded")],
        form.to_owned(),
    )
    .await
    .expect("agent")
}

/// Admin endpoints need an admin credential, `allowed_users` holds on every endpoint that shows an
/// integration's data, OAuth follows the RFCs, and neither daemon logs any secret used along the
/// way (both run at debug level).
#[tokio::test(flavor = "multi_thread")]
async fn least_privilege_oauth_and_no_secret_in_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let central = Node::start_logging(
        &binary("xmcentral"),
        &[
            "run",
            "--config",
            central_config(dir.path(), 0).to_str().unwrap(),
        ],
        "debug",
    );
    let config = security_agent_config(dir.path(), central.addr.port(), "");
    let agent = Node::start_logging(
        &binary("xmagent"),
        &["run", "--config", config.to_str().unwrap()],
        "debug",
    );
    let addr = agent.addr;
    let private = trigger(
        addr,
        "private",
        &format!("?apiKey={PRIVATE_URL_KEY}"),
        &[],
        r#"{"summary":"private"}"#,
    )
    .await;
    assert_eq!(private.status, 202);
    let request_id = private.json()["requestId"].as_str().unwrap().to_owned();

    let caller = basic("caller", CALLER_PASSWORD);
    let ops = basic("ops", OPS_PASSWORD);
    let limited = basic("ops_limited", LIMITED_OPS_PASSWORD);
    let wrong = basic("ops", WRONG_PASSWORD);
    let logs = "/api/xm/1/integrations/private/logs";
    let record = format!("/api/agent/1/requests/{request_id}");
    let dead = "/api/agent/1/dead-letters";
    let cases: [(&str, &str, Option<&str>, u16); 11] = [
        ("activity, no credentials", logs, None, 401),
        ("activity, wrong password", logs, Some(&wrong), 401),
        ("activity, REST user", logs, Some(&caller), 403),
        (
            "activity, admin not in allowed_users",
            logs,
            Some(&limited),
            403,
        ),
        ("activity, admin in allowed_users", logs, Some(&ops), 200),
        ("request record, REST user", &record, Some(&caller), 403),
        (
            "request record, admin not in allowed_users",
            &record,
            Some(&limited),
            404,
        ),
        (
            "request record, admin in allowed_users",
            &record,
            Some(&ops),
            200,
        ),
        ("dead letters, no credentials", dead, None, 401),
        ("dead letters, REST user", dead, Some(&caller), 403),
        ("dead letters, admin", dead, Some(&ops), 200),
    ];
    for (what, path, authorization, expected) in cases {
        let (status, body) = get(addr, path, authorization).await;
        println!("authorization case: {what}: {status}");
        assert_eq!(status, expected, "{what}: {body}");
        if status != 200 {
            assert!(
                body["message"].is_string(),
                "{what}: error without a message"
            );
        }
    }

    // OAuth: no-store, tokens only for callers, refresh reuse revokes the family.
    let grant = |user: &str, password: &str| {
        format!("grant_type=password&username={user}&password={password}")
    };
    let denied = token_request(addr, &grant("norole", NOROLE_PASSWORD)).await;
    assert_eq!(
        denied.status, 400,
        "a user who may call nothing gets no token"
    );
    assert_eq!(denied.json()["error"], "unauthorized_client");
    let issued = token_request(addr, &grant("caller", CALLER_PASSWORD)).await;
    assert_eq!(issued.status, 200);
    for answer in [&denied, &issued] {
        assert_eq!(answer.header("cache-control"), Some("no-store"));
        assert_eq!(answer.header("pragma"), Some("no-cache"));
    }
    let first = issued.json();
    let refresh =
        |token: &Value| format!("grant_type=refresh_token&refresh_token={token}").replace('"', "");
    let rotated = token_request(addr, &refresh(&first["refresh_token"])).await;
    assert_eq!(rotated.status, 200);
    let second = rotated.json();
    let bearer = format!("Bearer {}", second["access_token"].as_str().unwrap());
    let with_token = trigger(addr, "private", "", &[("authorization", &bearer)], "{}").await;
    assert_eq!(with_token.status, 202, "the rotated access token works");
    let replay = token_request(addr, &refresh(&first["refresh_token"])).await;
    assert_eq!(replay.status, 400, "a rotated refresh token is refused");
    let revoked = trigger(addr, "private", "", &[("authorization", &bearer)], "{}").await;
    assert_eq!(
        revoked.status, 401,
        "its replay revoked the tokens issued from it"
    );
    println!("oauth: replayed refresh token → 400; tokens of its family afterwards → 401");

    // The central's REST API with its user's password, a wrong one, and a script credential.
    eventually(
        Duration::from_secs(20),
        "the event at the central",
        || async {
            let events = central_events(central.addr, &request_id).await;
            (!events.is_empty()).then_some(())
        },
    )
    .await;
    let wrong_central = basic(CENTRAL_USER.0, WRONG_PASSWORD);
    let path = format!("/api/xm/1/events?requestId={request_id}");
    let refused = http(
        central.addr,
        "GET",
        &path,
        &[("authorization", &wrong_central)],
        "",
    )
    .await
    .unwrap();
    assert_eq!(refused.status, 401);
    let script_credential = server::credentials::script_token(AGENT_TOKEN, &["private".to_owned()]);
    let bearer_script = format!("Bearer {script_credential}");
    let scoped = http(
        central.addr,
        "GET",
        &path,
        &[("authorization", &bearer_script)],
        "",
    )
    .await
    .unwrap();
    assert_eq!(scoped.status, 200);

    // Nothing above left a secret in either daemon's output.
    let mut secrets = vec![
        HASHED_PASSWORD,
        CALLER_PASSWORD,
        OPS_PASSWORD,
        LIMITED_OPS_PASSWORD,
        NOROLE_PASSWORD,
        QUIET_URL_KEY,
        PRIVATE_URL_KEY,
        WRONG_PASSWORD,
        AGENT_TOKEN,
        CENTRAL_USER.1,
    ];
    let issued_tokens: Vec<String> = [&first, &second]
        .iter()
        .flat_map(|t| [&t["access_token"], &t["refresh_token"]])
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    secrets.extend(issued_tokens.iter().map(String::as_str));
    secrets.push(&script_credential);
    let encoded: Vec<String> = [&caller, &ops, &limited, &wrong, &wrong_central]
        .iter()
        .map(|h| h.trim_start_matches("Basic ").to_owned())
        .collect();
    secrets.extend(encoded.iter().map(String::as_str));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let output = format!("{}\n{}", agent.log(), central.log());
    assert!(
        output.lines().count() > 10,
        "the logs were captured: {output}"
    );
    for secret in &secrets {
        assert!(!output.contains(secret), "a secret appeared in the logs");
    }
    println!(
        "no secret in {} log lines ({} secrets checked)",
        output.lines().count(),
        secrets.len()
    );
}

/// Send `head` (request line and headers, without the blank line) on a raw connection and read
/// the answer: the status and the JSON body.
async fn raw_request(addr: SocketAddr, head: &str) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(format!("{head}\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("answer in time")
        .expect("read");
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// Malformed and oversized requests get 400/414/431 with a JSON message from both daemons;
/// stored headers are capped; the per-integration rate limit answers 429 + `Retry-After` and
/// stores nothing.
#[tokio::test(flavor = "multi_thread")]
async fn bounded_input_and_the_rate_limit() {
    let dir = tempfile::tempdir().unwrap();
    let central = start_central(dir.path(), 0);
    let limited = format!(
        "\n[[integrations]]\nid = \"limited\"\naction = \"create_event\"\nauth = \"url\"\n\
         authenticating_user = \"caller\"\nurl_key = \"{QUIET_URL_KEY}\"\nrate_limit_per_minute = 2\n"
    );
    let agent = start_agent(&security_agent_config(
        dir.path(),
        central.addr.port(),
        &limited,
    ));
    let trigger_path =
        format!("/api/integration/1/functions/quiet/triggers?apiKey={QUIET_URL_KEY}");
    let long_target = format!("{trigger_path}&pad={}", "p".repeat(9 * 1024));
    let big_headers: String = (0..10)
        .map(|i| format!("\r\nx-big-{i}: {}", "h".repeat(7 * 1024)))
        .collect();
    for (name, addr) in [("agent", agent.addr), ("central", central.addr)] {
        let cases = [
            ("no Host", "GET /healthz HTTP/1.1".to_owned(), 400),
            (
                "long target",
                format!("GET {long_target} HTTP/1.1\r\nhost: x"),
                414,
            ),
            (
                "big headers",
                format!("GET /healthz HTTP/1.1\r\nhost: x{big_headers}"),
                431,
            ),
        ];
        for (what, head, expected) in cases {
            let (status, body) = raw_request(addr, &head).await;
            println!("bounded input: {name}, {what}: {status}");
            assert_eq!(status, expected, "{name}: {what}");
            assert!(
                body["message"].is_string(),
                "{name}: {what}: no JSON message"
            );
        }
    }

    // 30 KiB of headers pass (under 64 KiB) but only 16 KiB of them are stored.
    let value = "s".repeat(1024);
    let many: Vec<(String, &str)> = (0..30)
        .map(|i| (format!("x-s-{i}"), value.as_str()))
        .collect();
    let headers: Vec<(&str, &str)> = many.iter().map(|(n, v)| (n.as_str(), *v)).collect();
    let answer = trigger(
        agent.addr,
        "quiet",
        &format!("?apiKey={QUIET_URL_KEY}"),
        &headers,
        "{}",
    )
    .await;
    assert_eq!(answer.status, 202);
    let (status, logs) = get(
        agent.addr,
        "/api/xm/1/integrations/quiet/logs",
        Some(&basic("ops", OPS_PASSWORD)),
    )
    .await;
    assert_eq!(status, 200);
    let stored = logs["data"][0]["request"]["headers"].to_string();
    assert!(
        stored.len() < 20 * 1024,
        "{} bytes of headers stored",
        stored.len()
    );
    assert!(
        stored.contains("x-xmagent-omitted-headers"),
        "no omission note"
    );

    // The rate limit: two a minute pass, the third is refused and leaves no trace.
    let query = format!("?apiKey={QUIET_URL_KEY}");
    for _ in 0..2 {
        assert_eq!(
            trigger(agent.addr, "limited", &query, &[], "{}")
                .await
                .status,
            202
        );
    }
    let refused = trigger(agent.addr, "limited", &query, &[], "{}").await;
    assert_eq!(refused.status, 429);
    let retry: u64 = refused
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert!(refused.json()["message"].is_string());
    let (_, logs) = get(
        agent.addr,
        "/api/xm/1/integrations/limited/logs",
        Some(&basic("ops", OPS_PASSWORD)),
    )
    .await;
    assert_eq!(
        logs["count"], 2,
        "the refused request was not stored: {logs}"
    );
}

/// The central's REST API: users need the REST role, an agent token sees only its agent's events,
/// a script credential only its integrations' events.
#[tokio::test(flavor = "multi_thread")]
async fn central_scopes_every_caller() {
    let dir = tempfile::tempdir().unwrap();
    let config = central_config(dir.path(), 0);
    let hash = argon2_hash("hashed-central-pw-9");
    let extra = format!(
        "\n[[agents]]\nid = \"agent-other\"\ntoken = \"other-agent-token-0123\"\n\n\
         [[users]]\nname = \"hashed\"\npassword_hash = \"{hash}\"\n\n\
         [[users]]\nname = \"viewer\"\nroles = []\npassword = \"viewer-central-pw\"\n"
    );
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&extra);
    std::fs::write(&config, text).unwrap();
    let central = Node::start(
        &binary("xmcentral"),
        &["run", "--config", config.to_str().unwrap()],
    );
    let agent = start_agent(&security_agent_config(dir.path(), central.addr.port(), ""));
    let answer = trigger(
        agent.addr,
        "quiet",
        &format!("?apiKey={QUIET_URL_KEY}"),
        &[],
        r#"{"summary":"scoped"}"#,
    )
    .await;
    let request_id = answer.json()["requestId"].as_str().unwrap().to_owned();
    let event_id = eventually(Duration::from_secs(20), "event at the central", || async {
        let events = central_events(central.addr, &request_id).await;
        events
            .first()
            .and_then(|e| e["id"].as_str().map(str::to_owned))
    })
    .await;

    let script = |scope: &[&str]| {
        let scope: Vec<String> = scope.iter().map(|s| (*s).to_owned()).collect();
        format!(
            "Bearer {}",
            server::credentials::script_token(AGENT_TOKEN, &scope)
        )
    };
    let list = format!("/api/xm/1/events?requestId={request_id}");
    let one = format!("/api/xm/1/events/{event_id}");
    let cases: Vec<(&str, String, String, u16, Option<u64>)> = vec![
        (
            "list, no credentials",
            list.clone(),
            String::new(),
            401,
            None,
        ),
        (
            "list, wrong password",
            list.clone(),
            basic("hashed", "nope"),
            401,
            None,
        ),
        (
            "list, user without the REST role",
            list.clone(),
            basic("viewer", "viewer-central-pw"),
            403,
            None,
        ),
        (
            "list, argon2 user",
            list.clone(),
            basic("hashed", "hashed-central-pw-9"),
            200,
            Some(1),
        ),
        (
            "list, its agent's token",
            list.clone(),
            format!("Bearer {AGENT_TOKEN}"),
            200,
            Some(1),
        ),
        (
            "list, another agent's token",
            list.clone(),
            "Bearer other-agent-token-0123".into(),
            200,
            Some(0),
        ),
        (
            "list, its integration's script",
            list.clone(),
            script(&["quiet"]),
            200,
            Some(1),
        ),
        (
            "list, another integration's script",
            list.clone(),
            script(&["private"]),
            200,
            Some(0),
        ),
        (
            "event, another agent's token",
            one.clone(),
            "Bearer other-agent-token-0123".into(),
            404,
            None,
        ),
        (
            "event, another integration's script",
            one.clone(),
            script(&["private"]),
            404,
            None,
        ),
        (
            "event, its integration's script",
            one.clone(),
            script(&["quiet"]),
            200,
            None,
        ),
    ];
    for (what, path, authorization, expected, count) in cases {
        let headers: Vec<(&str, &str)> = if authorization.is_empty() {
            vec![]
        } else {
            vec![("authorization", authorization.as_str())]
        };
        let answer = http(central.addr, "GET", &path, &headers, "")
            .await
            .unwrap();
        println!("central authorization case: {what}: {}", answer.status);
        assert_eq!(answer.status, expected, "{what}");
        if let Some(count) = count {
            assert_eq!(answer.json()["count"], count, "{what}");
        }
        if expected != 200 {
            assert!(answer.json()["message"].is_string(), "{what}: no message");
        }
    }
    let change = format!(r#"{{"id":"{event_id}","status":"TERMINATED"}}"#);
    for (what, authorization, expected) in [
        (
            "status change, another agent's token",
            "Bearer other-agent-token-0123".to_owned(),
            404,
        ),
        (
            "status change, another integration's script",
            script(&["private"]),
            404,
        ),
        (
            "status change, its integration's script",
            script(&["quiet", "private"]),
            202,
        ),
    ] {
        let answer = http(
            central.addr,
            "POST",
            "/api/xm/1/events",
            &[
                ("authorization", &authorization),
                ("content-type", "application/json"),
            ],
            change.clone(),
        )
        .await
        .unwrap();
        println!("central authorization case: {what}: {}", answer.status);
        assert_eq!(answer.status, expected, "{what}");
    }
    // A script credential is no agent token: it cannot open the websocket.
    let upgrade = http(
        central.addr,
        "GET",
        "/api/agent/1/connect",
        &[
            ("authorization", &script(&["quiet"])),
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ],
        "",
    )
    .await
    .unwrap();
    println!(
        "central authorization case: websocket with a script credential: {}",
        upgrade.status
    );
    assert_eq!(upgrade.status, 401);
}

/// Agent → central over TLS (WSS), with a CA made in the test: the central serves the CA-signed
/// certificate, the agent trusts the CA through `ca_file`, and a trigger is delivered.
#[tokio::test(flavor = "multi_thread")]
async fn agent_reaches_the_central_over_tls_with_a_test_ca() {
    if !e2e::tls::openssl_available() {
        eprintln!("skipped: the `openssl` command is not available to make a test CA");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let central = e2e::tls::start_tls_central(d);
    let port = central.addr.port();

    // Plain HTTP to the TLS port gets no HTTP answer.
    assert!(
        http(central.addr, "GET", "/healthz", &[], "")
            .await
            .is_err(),
        "the central must not speak plain HTTP when TLS is configured"
    );

    // A script that asks the central for its events through the built-in endpoint (HTTPS too).
    std::fs::write(
        d.join("lookup.js"),
        "var r = http.request({ endpoint: 'xMatters', method: 'GET', path: '/api/xm/1/events' })\n\
         .write();\nconsole.log('events lookup: ' + r.statusCode);\n",
    )
    .unwrap();
    let lookup = "\n[[integrations]]\nid = \"lookup\"\naction = \"run_script\"\nauth = \"url\"\n\
                  authenticating_user = \"svc\"\nurl_key = \"url-key-lookup\"\nscript = \"lookup.js\"\n";
    let agent_toml = agent_config(d, port, &format!("{STANDARD_AGENT}{lookup}"));
    let text = std::fs::read_to_string(&agent_toml).unwrap().replace(
        &format!("url = \"ws://127.0.0.1:{port}/api/agent/1/connect\""),
        &format!("url = \"wss://localhost:{port}/api/agent/1/connect\"\nca_file = \"ca.pem\""),
    );
    std::fs::write(&agent_toml, text).unwrap();
    let agent = start_agent(&agent_toml);
    let answer = trigger(
        agent.addr,
        "any",
        "?apiKey=url-key-any",
        &[],
        r#"{"summary":"tls"}"#,
    )
    .await;
    assert_eq!(answer.status, 202);
    let request_id = answer.json()["requestId"].as_str().unwrap().to_owned();
    let admin = basic("svc", "svc-password");
    let record = eventually(Duration::from_secs(20), "DELIVERED over TLS", || async {
        let (status, record) = get(
            agent.addr,
            &format!("/api/agent/1/requests/{request_id}"),
            Some(&admin),
        )
        .await;
        (status == 200 && record["status"] == "DELIVERED").then_some(record)
    })
    .await;
    println!(
        "TLS: agent → central over wss://localhost:{port} with a test CA: {} (event {})",
        record["status"], record["events"][0]["eventId"]
    );
    assert!(record["events"][0]["eventId"].is_string());
    assert!(
        central.log().contains("tls=true"),
        "the central says it serves TLS"
    );

    let answer = trigger(agent.addr, "lookup", "?apiKey=url-key-lookup", &[], "{}").await;
    assert_eq!(answer.status, 202);
    let logs = eventually(Duration::from_secs(20), "the lookup script ran", || async {
        let (status, logs) = get(
            agent.addr,
            "/api/xm/1/integrations/lookup/logs",
            Some(&admin),
        )
        .await;
        (status == 200 && logs["data"][0]["status"] == "COMPLETED").then_some(logs)
    })
    .await;
    let call = &logs["data"][0]["http"][0];
    println!(
        "TLS: a script's built-in xMatters call over HTTPS: {}",
        call["status"]
    );
    assert_eq!(call["status"], 200, "{logs}");
}

/// The security settings refuse nonsense with exit 78, naming the file, the key and the reason.
#[test]
fn security_settings_refuse_bad_values_with_exit_78() {
    let base = "[agent]\nid = \"a\"\nlisten = \"127.0.0.1:0\"\ndata_dir = \"d\"\n\n\
        [central]\nurl = \"ws://127.0.0.1:1/api/agent/1/connect\"\ntoken = \"t\"\n\n\
        [[users]]\nname = \"svc\"\nroles = [\"REST Web Service User\"]\npassword = \"p\"\n\n\
        [[integrations]]\nid = \"i1\"\naction = \"create_event\"\nauthenticating_user = \"svc\"\n\
        url_key = \"k\"\n";
    let cases = [
        (
            format!("{base}rate_limit_per_minute = 0\n"),
            "rate_limit_per_minute",
            "at least 1",
        ),
        (
            format!("{base}script_events_of = [\"ghost\"]\n"),
            "script_events_of",
            "ghost",
        ),
        (
            format!("[auth]\nverify_threads = 0\n{base}"),
            "auth.verify_threads",
            "at least 1",
        ),
        (
            format!("[auth]\nmax_failures = 0\n{base}"),
            "auth.max_failures",
            "at least 1",
        ),
        (
            format!("[auth]\nfailure_window_secs = 0\n{base}"),
            "auth.failure_window_secs",
            "between 1 and 86400",
        ),
        (format!("[auth]\nbogus = 1\n{base}"), "auth", "bogus"),
    ];
    for (config, key, reason) in cases {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, config).unwrap();
        let out = Command::new(binary("xmagent"))
            .args(["check", "--config", path.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{key}: {stderr}");
        assert!(stderr.contains("agent.toml"), "no file name: {stderr}");
        assert!(stderr.contains(key), "no key {key:?}: {stderr}");
        assert!(stderr.contains(reason), "no reason {reason:?}: {stderr}");
    }
}
