//! Cloud-hosted integrations end to end: `[[integrations]]` in `central.toml`, served by the real
//! `xmcentral` at its own trigger URL with every authentication method and every action, the
//! activity stream, a script reaching the central through the built-in `xMatters` endpoint, and
//! a refusal for each error path. No agent is involved.

use std::net::SocketAddr;
use std::path::Path;

use e2e::*;
use serde_json::{json, Value};

const TRANSFORM: &str = r#"
var data = JSON.parse(request.body);
trigger.properties.summary = data.title;
trigger.priority = 'HIGH';
form.post(trigger);
"#;

/// Creates one event, then finds it through the built-in endpoint (which reaches the central
/// itself) and logs how many it saw.
const RUN_SCRIPT: &str = r#"
var data = JSON.parse(request.body);
trigger.properties.host = data.host;
form.post(trigger);
var found = http.request({ endpoint: 'xMatters', method: 'GET',
  path: '/api/xm/1/events?requestId=' + encodeURIComponent(data.earlier) }).write();
console.log('status ' + found.statusCode + ' count ' + JSON.parse(found.body).count);
"#;

/// A central hosting one integration per auth mode (create_event) and one per script action.
fn start_hosting(dir: &Path) -> Node {
    std::fs::write(dir.join("transform.js"), TRANSFORM).unwrap();
    std::fs::write(dir.join("run.js"), RUN_SCRIPT).unwrap();
    let path = central_config(dir, 0);
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "data_dir = \"central-data\"",
        // A small body limit for the 413 case.
        "data_dir = \"central-data\"\nmax_body_bytes = 4096",
    );
    std::fs::write(&path, text + &hosted()).unwrap();
    Node::start(
        &binary("xmcentral"),
        &["run", "--config", path.to_str().unwrap()],
    )
}

/// `STANDARD_AGENT` (users, API key, one create_event integration per auth mode: the same keys
/// an agent takes) plus a user without the trigger role, the script integrations, and one that
/// agents run.
fn hosted() -> String {
    format!(
        r#"{STANDARD_AGENT}
# Valid credentials, without the role triggers need (central users without `roles` hold it).
[[users]]
name = "noperm"
password = "noperm-password"
roles = ["Observer"]

[[integrations]]
id = "transform"
action = "transform"
auth = "basic"
script = "transform.js"

[[integrations]]
id = "run"
action = "run_script"
auth = "basic"
script = "run.js"

[[integrations]]
id = "elsewhere"
action = "create_event"
url_key = "elsewhere-key"
authenticating_user = "svc"
run_on = ["agent-test"]
"#
    )
}

fn request_id(answer: &Answer) -> String {
    assert_eq!(
        answer.status,
        202,
        "expected 202: {}",
        String::from_utf8_lossy(&answer.body)
    );
    answer.json()["requestId"].as_str().unwrap().to_owned()
}

/// The one event of `request_id`, which the 202 promised is stored already (no waiting).
async fn stored_event(central: SocketAddr, request_id: &str) -> Value {
    let events = central_events(central, request_id).await;
    assert_eq!(events.len(), 1, "events of {request_id}: {events:?}");
    events.into_iter().next().unwrap()
}

async fn oauth_token(central: SocketAddr) -> String {
    let answer = http(
        central,
        "POST",
        "/api/xm/1/oauth2/token",
        &[("content-type", "application/x-www-form-urlencoded")],
        "grant_type=password&username=svc&password=svc-password",
    )
    .await
    .unwrap();
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(answer.header("cache-control"), Some("no-store"));
    answer.json()["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_authentication_method_creates_the_event_before_the_202() {
    let dir = tempfile::tempdir().unwrap();
    let central = start_hosting(dir.path());
    let body = r#"{"properties": {"summary": "Disk full"}, "priority": "low"}"#;
    let svc = basic("svc", "svc-password");
    let key = basic("svc-key", "svc-key-secret");
    for (id, query, auth) in [
        ("url", "?apiKey=url-key-url", Some(String::new())),
        ("any", "?apiKey=url-key-any", Some(String::new())),
        ("basic", "", Some(svc.clone())),
        ("api_key", "", Some(key.clone())),
        // Tokens live 2 s here: fetched right before use.
        ("oauth", "", None),
    ] {
        let auth = match auth {
            Some(auth) => auth,
            None => format!("Bearer {}", oauth_token(central.addr).await),
        };
        let headers: Vec<(&str, &str)> = if auth.is_empty() {
            Vec::new()
        } else {
            vec![("authorization", auth.as_str())]
        };
        let answer = trigger(central.addr, id, query, &headers, body).await;
        let request = request_id(&answer);
        let event = stored_event(central.addr, &request).await;
        assert_eq!(event["properties"]["summary"], "Disk full", "{id}");
        assert_eq!(event["priority"], "LOW", "{id}");
        assert_eq!(event["integrationId"], id);
        assert_eq!(event["agentId"], "xmcentral");
        println!("{id}: event {} for {request}", event["id"]);
    }
    // The URL key must not reach the stored request.
    let logs = get_json(
        central.addr,
        "/api/xm/1/integrations/url/logs",
        CENTRAL_USER,
    )
    .await;
    assert_eq!(logs["data"][0]["status"], "DELIVERED", "{logs}");
    assert!(!logs.to_string().contains("url-key-url"), "{logs}");
    let metrics = http(central.addr, "GET", "/metrics", &[], "")
        .await
        .unwrap();
    let metrics = String::from_utf8_lossy(&metrics.body).into_owned();
    assert!(
        metrics.contains("xmcentral_events_created_by_agent_total{agent=\"xmcentral\"} 5\n"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn scripts_transform_and_run_and_the_activity_stream_shows_them() {
    let dir = tempfile::tempdir().unwrap();
    let central = start_hosting(dir.path());
    let svc = basic("svc", "svc-password");
    let auth = [("authorization", svc.as_str())];

    let transformed = request_id(
        &trigger(
            central.addr,
            "transform",
            "",
            &auth,
            r#"{"title": "CPU hot"}"#,
        )
        .await,
    );
    let event = stored_event(central.addr, &transformed).await;
    assert_eq!(event["properties"]["summary"], "CPU hot");
    assert_eq!(event["priority"], "HIGH");

    // run_script: one event, and the built-in endpoint reaches the central itself, where the
    // script's credential sees its own integration's events only (none of `transform`'s).
    let body = json!({"host": "db1", "earlier": transformed}).to_string();
    let ran = request_id(&trigger(central.addr, "run", "", &auth, &body).await);
    let event = stored_event(central.addr, &ran).await;
    assert_eq!(event["properties"]["host"], "db1");
    let logs = get_json(
        central.addr,
        "/api/xm/1/integrations/run/logs",
        CENTRAL_USER,
    )
    .await;
    let entry = &logs["data"][0];
    assert_eq!(entry["requestId"], ran.as_str(), "{logs}");
    assert_eq!(entry["status"], "DELIVERED");
    assert_eq!(entry["eventIds"][0], event["id"]);
    assert_eq!(entry["http"][0]["endpoint"], "xMatters", "{entry}");
    assert_eq!(entry["log"][0]["message"], "status 200 count 0", "{entry}");
    assert!(!logs.to_string().contains("svc-password"));

    // A failing script: 202 (the request was kept), FAILED in the stream, no event.
    let failed = request_id(&trigger(central.addr, "transform", "", &auth, "not json").await);
    assert!(central_events(central.addr, &failed).await.is_empty());
    let logs = get_json(
        central.addr,
        "/api/xm/1/integrations/transform/logs?limit=1",
        CENTRAL_USER,
    )
    .await;
    assert_eq!(logs["count"], 1);
    assert_eq!(logs["data"][0]["requestId"], failed.as_str());
    assert_eq!(logs["data"][0]["status"], "FAILED");
}

/// Integration, query, headers, body, expected status.
type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, String, u16);

#[tokio::test(flavor = "multi_thread")]
async fn each_error_path_gets_its_status_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let central = start_hosting(dir.path());
    let body = r#"{"summary": "x"}"#;
    let svc = basic("svc", "svc-password");
    let wrong = basic("svc", "wrong");
    let rest_only = basic(CENTRAL_USER.0, CENTRAL_USER.1);
    let noperm = basic("noperm", "noperm-password");

    let cases: [Case; 9] = [
        (
            "nope",
            "",
            vec![("authorization", svc.as_str())],
            body.into(),
            404,
        ),
        // Served by its agents, not here.
        (
            "elsewhere",
            "?apiKey=elsewhere-key",
            vec![],
            body.into(),
            404,
        ),
        ("basic", "", vec![], body.into(), 401),
        (
            "basic",
            "",
            vec![("authorization", wrong.as_str())],
            body.into(),
            401,
        ),
        ("url", "?apiKey=wrong", vec![], body.into(), 401),
        // A user's password where an API key is required.
        (
            "api_key",
            "",
            vec![("authorization", rest_only.as_str())],
            body.into(),
            401,
        ),
        // A valid user without the REST role.
        (
            "basic",
            "",
            vec![("authorization", noperm.as_str())],
            body.into(),
            403,
        ),
        (
            "basic",
            "",
            vec![("authorization", svc.as_str())],
            "[1, 2]".into(),
            400,
        ),
        (
            "basic",
            "",
            vec![("authorization", svc.as_str())],
            format!(r#"{{"a": "{}"}}"#, "x".repeat(5000)),
            413,
        ),
    ];
    for (id, query, headers, body, status) in cases {
        let answer = trigger(central.addr, id, query, &headers, &body).await;
        assert_eq!(
            answer.status,
            status,
            "{id}{query}: {}",
            String::from_utf8_lossy(&answer.body)
        );
        if status == 401 {
            assert!(
                answer.header("www-authenticate").is_some(),
                "{id}: no challenge"
            );
        }
    }
    let answer = http(
        central.addr,
        "GET",
        "/api/integration/1/functions/basic/triggers",
        &[("authorization", svc.as_str())],
        "",
    )
    .await
    .unwrap();
    assert_eq!(answer.status, 405);
    // The activity stream: REST users only, known integrations only.
    let answer = http(
        central.addr,
        "GET",
        "/api/xm/1/integrations/nope/logs",
        &[("authorization", rest_only.as_str())],
        "",
    )
    .await
    .unwrap();
    assert_eq!(answer.status, 404);
    let answer = http(
        central.addr,
        "GET",
        "/api/xm/1/integrations/basic/logs",
        &[],
        "",
    )
    .await
    .unwrap();
    assert_eq!(answer.status, 401);
    assert!(
        all_central_events(central.addr).await.is_empty(),
        "a refused request left an event"
    );
}

/// Script requests wait for room in `[scripts] backlog_kib`; one that finds none within 10 s
/// gets 503 + `Retry-After` and leaves nothing behind, while the request holding the room runs.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_script_backlog_is_a_503() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("slow.js"), "while (true) {}\n").unwrap();
    let path = central_config(dir.path(), 0);
    let mut text = std::fs::read_to_string(&path).unwrap();
    // The run holding the room outlives the 10 s a waiting request gets, with room to spare.
    text.push_str(
        "\n[scripts]\nbacklog_kib = 1\ntimeout_ms = 25000\n\n\
         [[integrations]]\nid = \"slow\"\naction = \"run_script\"\nauth = \"basic\"\nscript = \"slow.js\"\n",
    );
    std::fs::write(&path, text).unwrap();
    let central = Node::start(
        &binary("xmcentral"),
        &["run", "--config", path.to_str().unwrap()],
    );
    let auth = basic(CENTRAL_USER.0, CENTRAL_USER.1);
    let body = format!(r#"{{"pad": "{}"}}"#, "x".repeat(2048));
    let send = || {
        let (auth, body) = (auth.clone(), body.clone());
        let addr = central.addr;
        tokio::spawn(async move {
            trigger(addr, "slow", "", &[("authorization", auth.as_str())], &body).await
        })
    };
    let (first, second) = (send(), send());
    let mut answers = [first.await.unwrap(), second.await.unwrap()];
    answers.sort_by_key(|answer| answer.status);
    let [ran, refused] = answers;
    assert_eq!(ran.status, 202, "{}", String::from_utf8_lossy(&ran.body));
    assert_eq!(
        refused.status,
        503,
        "{}",
        String::from_utf8_lossy(&refused.body)
    );
    assert_eq!(refused.header("retry-after"), Some("5"));
    let logs = get_json(
        central.addr,
        "/api/xm/1/integrations/slow/logs",
        CENTRAL_USER,
    )
    .await;
    assert_eq!(
        logs["count"], 1,
        "only the request that ran is in the stream: {logs}"
    );
    assert_eq!(logs["data"][0]["status"], "FAILED");
}
