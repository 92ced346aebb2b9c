//! The spine end to end: real `xmagent` and `xmcentral` processes on loopback.

use std::time::Duration;

use e2e::*;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);

async fn delivered_event(central: std::net::SocketAddr, request_id: &str) -> Value {
    eventually(
        WAIT,
        &format!("event for {request_id} at the central"),
        || async { central_events(central, request_id).await.into_iter().next() },
    )
    .await
}

/// A central and an agent with the standard integrations, their data under `dir`.
fn standard_pair(dir: &std::path::Path) -> (Node, Node) {
    let central = start_central(dir, 0);
    let agent = start_agent(&agent_config(dir, central.addr.port(), STANDARD_AGENT));
    (central, agent)
}

fn request_id(answer: &Answer) -> String {
    assert_eq!(
        answer.status,
        202,
        "expected 202, got {}: {}",
        answer.status,
        String::from_utf8_lossy(&answer.body)
    );
    answer.json()["requestId"]
        .as_str()
        .expect("requestId")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn trigger_becomes_an_event_at_the_central_and_status_shows_it() {
    let dir = tempfile::tempdir().unwrap();
    let (central, agent) = standard_pair(dir.path());

    let body = r#"{"properties": {"summary": "Disk full", "host": "db1"}, "priority": "high", "recipients": [{"targetName": "ops"}]}"#;
    let answer = trigger(agent.addr, "any", "?apiKey=url-key-any", &[], body).await;
    let id = request_id(&answer);
    uuid_v4(&id);
    let event = delivered_event(central.addr, &id).await;
    assert_eq!(
        event["properties"],
        json!({"summary": "Disk full", "host": "db1"})
    );
    assert_eq!(event["priority"], "HIGH");
    assert_eq!(event["requestId"], id.as_str());
    assert_eq!(event["status"], "ACTIVE");
    assert_eq!(event["form"]["name"], "Incident Alert");

    // A plain object becomes the properties.
    let answer = trigger(
        agent.addr,
        "any",
        "?apiKey=url-key-any",
        &[],
        r#"{"host": "web2", "cpu": 97}"#,
    )
    .await;
    let plain_id = request_id(&answer);
    let event = delivered_event(central.addr, &plain_id).await;
    assert_eq!(event["properties"], json!({"host": "web2", "cpu": 97}));

    // The request status (HTTP equivalent of `xmagent request`) shows DELIVERED with the event id.
    let admin = basic("svc", "svc-password");
    let status = eventually(WAIT, "DELIVERED status", || async {
        let answer = http(
            agent.addr,
            "GET",
            &format!("/api/agent/1/requests/{id}"),
            &[("authorization", &admin)],
            "",
        )
        .await
        .ok()?;
        let value = answer.json();
        (value["status"] == "DELIVERED").then_some(value)
    })
    .await;
    assert_eq!(
        status["events"][0]["eventId"],
        event_id_of(central.addr, &id).await
    );

    // The CLI shows the same, through the admin token in the data directory.
    let cli = std::process::Command::new(binary("xmagent"))
        .args([
            "request",
            &id,
            "--config",
            dir.path().join("agent.toml").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        cli.status.success(),
        "xmagent request failed: {}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let printed: Value = serde_json::from_slice(&cli.stdout).unwrap();
    assert_eq!(printed["status"], "DELIVERED");
    let config_path = dir.path().join("agent.toml");
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(binary("xmagent"))
            .args(args)
            .args(["--config", config_path.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "xmagent {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let activity = cli(&["activity", "any", "--limit", "5", "--json"]);
    assert_eq!(activity["data"][0]["requestId"], plain_id.as_str());
    assert_eq!(cli(&["dead-letters"])["count"], 0);
    let unknown = std::process::Command::new(binary("xmagent"))
        .args([
            "request",
            "no-such-request",
            "--config",
            config_path.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        !unknown.status.success(),
        "an unknown request id must not exit 0"
    );

    // The activity stream lists both requests, newest first, without the URL key.
    let logs = http(
        agent.addr,
        "GET",
        "/api/xm/1/integrations/any/logs",
        &[("authorization", &admin)],
        "",
    )
    .await
    .unwrap();
    assert_eq!(logs.status, 200);
    let logs = logs.json();
    let ids: Vec<&str> = logs["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["requestId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![plain_id.as_str(), id.as_str()]);
    assert!(
        !logs.to_string().contains("url-key-any"),
        "URL key leaked into the activity stream"
    );
    assert!(
        !agent.log().contains("url-key-any"),
        "URL key leaked into the log"
    );
}

/// A create_event activity entry keeps the first 4 KiB of the body and says when it was cut,
/// also when the cut falls inside a multi-byte character; a short body is shown whole.
#[tokio::test(flavor = "multi_thread")]
async fn activity_entries_show_the_head_of_a_long_body() {
    let dir = tempfile::tempdir().unwrap();
    let (_central, agent) = standard_pair(dir.path());
    // "é" is two bytes; after the 15-byte prefix the 4096-byte cut splits one.
    let long = format!("{{\"summary\":\"{}\"}}", "é".repeat(3000));
    let short = r#"{"summary":"short"}"#;
    let long_id = request_id(&trigger(agent.addr, "any", "?apiKey=url-key-any", &[], &long).await);
    let short_id = request_id(&trigger(agent.addr, "any", "?apiKey=url-key-any", &[], short).await);
    let logs = http(
        agent.addr,
        "GET",
        "/api/xm/1/integrations/any/logs",
        &[("authorization", &basic("svc", "svc-password"))],
        "",
    )
    .await
    .unwrap();
    assert_eq!(logs.status, 200);
    let logs = logs.json();
    let entry = |id: &str| {
        logs["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["requestId"] == id)
            .unwrap_or_else(|| panic!("no activity entry for {id}: {logs}"))
            .clone()
    };
    let long_entry = entry(&long_id);
    let shown = long_entry["request"]["body"].as_str().unwrap();
    assert!(
        shown.len() <= 4096 && shown.len() > 4000,
        "{} bytes",
        shown.len()
    );
    assert!(
        long.starts_with(shown),
        "the shown body is the start of the body"
    );
    assert_eq!(long_entry["request"]["bodyTruncated"], true);
    let short_entry = entry(&short_id);
    assert_eq!(short_entry["request"]["body"], short);
    assert_eq!(short_entry["request"]["bodyTruncated"], false);
}

async fn event_id_of(central: std::net::SocketAddr, request_id: &str) -> Value {
    central_events(central, request_id).await[0]["id"].clone()
}

fn uuid_v4(id: &str) {
    let parts: Vec<&str> = id.split('-').collect();
    assert_eq!(
        parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
        vec![8, 4, 4, 4, 12],
        "{id}"
    );
    assert!(parts[2].starts_with('4'), "not a v4 uuid: {id}");
}

#[tokio::test(flavor = "multi_thread")]
async fn error_paths_answer_honestly_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let extra = format!("{STANDARD_AGENT}\n[store]\nmax_entries = 3\n");
    // A central that is not running, so accepted events stay in the outbox and fill the store.
    let config = agent_config(dir.path(), free_port(), &extra);
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "data_dir = \"agent-data\"",
        "data_dir = \"agent-data\"\nmax_body_bytes = 1024",
    );
    std::fs::write(&config, text).unwrap();
    let agent = start_agent(&config);
    let key = "?apiKey=url-key-any";

    // 404 unknown integration.
    let answer = trigger(agent.addr, "nope", key, &[], "{}").await;
    assert_eq!(answer.status, 404);
    assert!(answer.json()["message"].as_str().unwrap().contains("nope"));
    // 405 wrong method, with Allow.
    let answer = http(
        agent.addr,
        "GET",
        "/api/integration/1/functions/any/triggers",
        &[],
        "",
    )
    .await
    .unwrap();
    assert_eq!(answer.status, 405);
    assert_eq!(answer.header("allow"), Some("POST"));
    // 401 without credentials, with a challenge.
    let answer = trigger(agent.addr, "any", "", &[], "{}").await;
    assert_eq!(answer.status, 401);
    assert!(answer.header("www-authenticate").is_some());
    // 401 wrong key.
    assert_eq!(
        trigger(agent.addr, "any", "?apiKey=wrong", &[], "{}")
            .await
            .status,
        401
    );
    // 403 valid user without the REST role.
    let norole = basic("norole", "norole-password");
    assert_eq!(
        trigger(agent.addr, "basic", "", &[("authorization", &norole)], "{}")
            .await
            .status,
        403
    );
    // 413 over the body limit (declared and streamed).
    let big = format!("{{\"a\": \"{}\"}}", "x".repeat(2000));
    let answer = trigger(agent.addr, "any", key, &[], &big).await;
    assert_eq!(answer.status, 413);
    // 400 for a body that is not a JSON object, with the reason.
    let answer = trigger(agent.addr, "any", key, &[], "[1, 2, 3]").await;
    assert_eq!(answer.status, 400);
    assert!(answer.json()["message"].as_str().unwrap().contains("array"));
    let answer = trigger(agent.addr, "any", key, &[], "{not json").await;
    assert_eq!(answer.status, 400);
    assert!(answer.json()["message"].as_str().unwrap().contains("JSON"));

    // Nothing refused was stored: the store takes exactly its bound of 3, then 503 + Retry-After.
    for n in 0..3 {
        let answer = trigger(agent.addr, "any", key, &[], &format!("{{\"n\": {n}}}")).await;
        request_id(&answer);
    }
    let answer = trigger(agent.addr, "any", key, &[], "{\"n\": 3}").await;
    assert_eq!(
        answer.status,
        503,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert!(answer.header("retry-after").is_some());
    // Health stays up; readiness says why it is not ready.
    assert_eq!(
        http(agent.addr, "GET", "/healthz", &[], "")
            .await
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        http(agent.addr, "GET", "/readyz", &[], "")
            .await
            .unwrap()
            .status,
        503
    );
    let metrics = http(agent.addr, "GET", "/metrics", &[], "").await.unwrap();
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(text.contains("xmagent_requests_accepted_total 3"), "{text}");
    assert!(text.contains("xmagent_store_pending_entries 3"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_matrix_each_credential_against_each_mode() {
    let dir = tempfile::tempdir().unwrap();
    let (_central, agent) = standard_pair(dir.path());

    let token_answer = http(
        agent.addr,
        "POST",
        "/api/xm/1/oauth2/token",
        &[("content-type", "application/x-www-form-urlencoded")],
        "grant_type=password&client_id=test&username=svc&password=svc-password",
    )
    .await
    .unwrap();
    assert_eq!(
        token_answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&token_answer.body)
    );
    let tokens = token_answer.json();
    assert_eq!(tokens["token_type"], "bearer");
    let bearer = format!("Bearer {}", tokens["access_token"].as_str().unwrap());

    let basic_ok = basic("svc", "svc-password");
    let basic_bad = basic("svc", "wrong");
    let key_ok = basic("svc-key", "svc-key-secret");
    let key_bad = basic("svc-key", "wrong");
    let bearer_bad = "Bearer not-a-token".to_owned();
    // (credential name, query, authorization header)
    let credentials: Vec<(&str, String, Option<&str>)> = vec![
        ("url-right", "?apiKey={KEY}".into(), None),
        ("url-wrong", "?apiKey=wrong".into(), None),
        ("basic-right", String::new(), Some(&basic_ok)),
        ("basic-wrong", String::new(), Some(&basic_bad)),
        ("apikey-right", String::new(), Some(&key_ok)),
        ("apikey-wrong", String::new(), Some(&key_bad)),
        ("bearer-right", String::new(), Some(&bearer)),
        ("bearer-wrong", String::new(), Some(&bearer_bad)),
        ("none", String::new(), None),
    ];
    let accepts = |mode: &str, credential: &str| -> bool {
        matches!(
            (mode, credential),
            (
                "any",
                "url-right" | "basic-right" | "apikey-right" | "bearer-right"
            ) | ("url", "url-right")
                | ("basic", "basic-right")
                | ("api_key", "apikey-right")
                | ("oauth", "bearer-right")
        )
    };
    let mut checked = 0;
    for mode in ["any", "url", "basic", "api_key", "oauth"] {
        for (name, query, header) in &credentials {
            let query = query.replace(
                "{KEY}",
                &format!("url-key-{}", if mode == "any" { "any" } else { "url" }),
            );
            let headers: Vec<(&str, &str)> = header.iter().map(|h| ("authorization", *h)).collect();
            let answer = trigger(agent.addr, mode, &query, &headers, r#"{"a": 1}"#).await;
            let expected = if accepts(mode, name) { 202 } else { 401 };
            assert_eq!(
                answer.status,
                expected,
                "mode {mode}, credential {name}: {}",
                String::from_utf8_lossy(&answer.body)
            );
            if expected == 401 {
                assert!(
                    answer.header("www-authenticate").is_some(),
                    "mode {mode}, credential {name}: no challenge"
                );
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 45);

    // Expiry and refresh: the access token lives 2 s; the refresh token gets a new one.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let answer = trigger(agent.addr, "oauth", "", &[("authorization", &bearer)], "{}").await;
    assert_eq!(answer.status, 401, "expired token must be refused");
    let refresh = format!(
        "grant_type=refresh_token&client_id=test&refresh_token={}",
        tokens["refresh_token"].as_str().unwrap()
    );
    let refreshed = http(
        agent.addr,
        "POST",
        "/api/xm/1/oauth2/token",
        &[("content-type", "application/x-www-form-urlencoded")],
        refresh.clone(),
    )
    .await
    .unwrap();
    assert_eq!(refreshed.status, 200);
    let fresh = format!(
        "Bearer {}",
        refreshed.json()["access_token"].as_str().unwrap()
    );
    assert_eq!(
        trigger(agent.addr, "oauth", "", &[("authorization", &fresh)], "{}")
            .await
            .status,
        202
    );
    // The refresh token was rotated: using it twice fails.
    let again = http(
        agent.addr,
        "POST",
        "/api/xm/1/oauth2/token",
        &[("content-type", "application/x-www-form-urlencoded")],
        refresh,
    )
    .await
    .unwrap();
    assert_eq!(again.status, 400);
    // Wrong password grant.
    let bad = http(
        agent.addr,
        "POST",
        "/api/xm/1/oauth2/token",
        &[("content-type", "application/x-www-form-urlencoded")],
        "grant_type=password&client_id=test&username=svc&password=nope",
    )
    .await
    .unwrap();
    assert!(bad.status == 400 || bad.status == 401, "{}", bad.status);
    let log = agent.log();
    for secret in [
        "svc-password",
        "svc-key-secret",
        "url-key-url",
        tokens["access_token"].as_str().unwrap(),
    ] {
        assert!(!log.contains(secret), "secret {secret} leaked into the log");
    }
}
