//! Integrations defined at the central and run by agents (`run_on`), end to end with the real
//! binaries: the central sends the definition over the websocket, the agent serves it on its own
//! trigger URL, keeps serving it while the central is down and after a restart, lets a local
//! `agent.toml` integration with the same id win, refuses a version it cannot validate while the
//! previous one serves, and two agents running one integration lose no request when one of them
//! is SIGKILLed under load.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use e2e::*;
use serde_json::Value;

const SCRIPT: &str = r#"
var data = JSON.parse(request.body);
trigger.properties.summary = data.title;
trigger.properties.version = constants.Version;
form.post(trigger);
"#;

/// The second agent's token (the harness's is [`AGENT_TOKEN`]).
const SECOND_TOKEN: &str = "second-agent-token-0123456789";

/// How long anything that crosses processes may take on a loaded CI machine.
const PATIENCE: Duration = Duration::from_secs(60);

/// `central.toml` in `dir` on `port`: two agents, the user URL-key requests act as (and one
/// more), and the integration `dc` run on both agents, whose `constants.Version` is `version`
/// and whose authenticating user is `user`.
fn write_central(dir: &Path, port: u16, version: &str, user: &str) -> PathBuf {
    std::fs::write(dir.join("dc.js"), SCRIPT).unwrap();
    let path = central_config(dir, port);
    let text = std::fs::read_to_string(&path).unwrap()
        + &format!(
            r#"
[[agents]]
id = "agent-two"
token = "{SECOND_TOKEN}"

[[users]]
name = "svc"
password = "svc-password"

[[users]]
name = "other"
password = "other-password"

[[integrations]]
id = "dc"
action = "transform"
auth = "url"
url_key = "dc-key"
authenticating_user = "{user}"
script = "dc.js"
run_on = ["agent-test", "agent-two"]
[integrations.constants]
Version = "{version}"
"#
        );
    std::fs::write(&path, text).unwrap();
    path
}

fn start_central_with(config: &Path) -> Node {
    Node::start(
        &binary("xmcentral"),
        &["run", "--config", config.to_str().unwrap()],
    )
}

/// The users every agent here has: `svc` may be an authenticating user; `other` is unknown.
const AGENT_USERS: &str = r#"
[[users]]
name = "svc"
roles = ["REST Web Service User"]
password = "svc-password"
"#;

/// `agent.toml` in `dir` (created); `second` makes it `agent-two` with its own token.
fn write_agent(dir: &Path, central_port: u16, second: bool, extra: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = agent_config(dir, central_port, &format!("{AGENT_USERS}{extra}"));
    if second {
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("id = \"agent-test\"", "id = \"agent-two\"")
            .replace(AGENT_TOKEN, SECOND_TOKEN);
        std::fs::write(&path, text).unwrap();
    }
    path
}

async fn post_dc(agent: SocketAddr, title: &str) -> Answer {
    trigger(
        agent,
        "dc",
        "?apiKey=dc-key",
        &[],
        &format!(r#"{{"title":"{title}"}}"#),
    )
    .await
}

/// Wait until `agent` serves `dc` (the central's set arrived) and return the accepted request id.
async fn served(agent: SocketAddr, title: &str) -> String {
    eventually(
        PATIENCE,
        "the agent serves the central's integration",
        || async {
            let answer = post_dc(agent, title).await;
            (answer.status == 202).then(|| answer.json()["requestId"].as_str().unwrap().to_owned())
        },
    )
    .await
}

/// The one event the central created for `request_id`.
async fn event_of(central: SocketAddr, request_id: &str) -> Value {
    eventually(PATIENCE, "the event reaches the central", || async {
        let mut events = central_events(central, request_id).await;
        (events.len() == 1).then(|| events.remove(0))
    })
    .await
}

async fn wait_for_log(node: &Node, line: &str) {
    eventually(PATIENCE, line, || async {
        node.log().contains(line).then_some(())
    })
    .await
}

/// A central running version `v1` of `dc` in `dir`, and the config of an agent in `dir/agent`.
fn central_and_agent_config(dir: &Path) -> (Node, PathBuf) {
    let central = start_central_with(&write_central(dir, 0, "v1", "svc"));
    let agent_config = write_agent(&dir.join("agent"), central.addr.port(), false, "");
    (central, agent_config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_managed_integration_is_served_and_kept_without_the_central() {
    let dir = tempfile::tempdir().unwrap();
    let (central, agent_config) = central_and_agent_config(dir.path());
    let agent_dir = dir.path().join("agent");
    let agent = start_agent(&agent_config);

    let first = served(agent.addr, "first").await;
    let event = event_of(central.addr, &first).await;
    assert_eq!(event["properties"]["summary"], "first", "{event}");
    assert_eq!(event["properties"]["version"], "v1", "{event}");
    assert!(
        agent
            .log()
            .contains("serving the integrations the central sent"),
        "the agent logs the version it runs"
    );
    // The agent reports the request's activity upstream: the central's stream shows it.
    let entry = eventually(
        PATIENCE,
        "the central's activity stream shows the request",
        || {
            let first = first.clone();
            let central = central.addr;
            async move {
                let auth = basic(CENTRAL_USER.0, CENTRAL_USER.1);
                let path = "/api/xm/1/integrations/dc/logs";
                let answer = http(central, "GET", path, &[("authorization", &auth)], "")
                    .await
                    .expect("central reachable");
                assert_eq!(answer.status, 200);
                answer.json()["data"]
                    .as_array()
                    .and_then(|entries| entries.iter().find(|e| e["requestId"] == first.as_str()))
                    .cloned()
            }
        },
    )
    .await;
    assert_eq!(entry["agentId"], "agent-test", "{entry}");
    // The wrong URL key is refused as for an agent.toml integration.
    let refused = trigger(agent.addr, "dc", "?apiKey=wrong", &[], "{}").await;
    assert_eq!(refused.status, 401);
    let kept = std::fs::read_to_string(agent_dir.join("agent-data/managed-integrations.json"))
        .expect("the set is kept in the data directory");
    assert!(
        !kept.contains("dc-key"),
        "no plain URL key on the agent's disk"
    );

    // The central goes away: the agent keeps serving (and queues the events).
    central.kill();
    assert_eq!(post_dc(agent.addr, "central down").await.status, 202);

    // The agent restarts while the central is still down: served from the kept set at once.
    assert_eq!(agent.terminate(), Some(0));
    let agent = start_agent(&agent_config);
    let answer = post_dc(agent.addr, "after restart").await;
    assert_eq!(
        answer.status,
        202,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_integration_with_the_same_id_wins() {
    let dir = tempfile::tempdir().unwrap();
    let central = start_central_with(&write_central(dir.path(), 0, "v1", "svc"));
    let local = "\n[[integrations]]\nid = \"dc\"\naction = \"create_event\"\nauth = \"basic\"\n";
    let agent = start_agent(&write_agent(dir.path(), central.addr.port(), false, local));
    wait_for_log(&agent, "the local one is served").await;

    // The local definition (Basic only) answers, not the central's (URL key).
    assert_eq!(post_dc(agent.addr, "url key").await.status, 401);
    let auth = basic("svc", "svc-password");
    let answer = trigger(
        agent.addr,
        "dc",
        "",
        &[("authorization", &auth)],
        r#"{"properties":{"summary":"local"}}"#,
    )
    .await;
    assert_eq!(answer.status, 202);
    let event = event_of(central.addr, answer.json()["requestId"].as_str().unwrap()).await;
    assert_eq!(event["properties"]["summary"], "local", "{event}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_the_agent_cannot_validate_is_refused_while_the_old_one_serves() {
    let dir = tempfile::tempdir().unwrap();
    let (central, agent_config) = central_and_agent_config(dir.path());
    let agent = start_agent(&agent_config);
    served(agent.addr, "v1").await;

    // Version 2 acts as a user this agent does not know: the central accepts it, the agent not.
    write_central(dir.path(), central.addr.port(), "v2", "other");
    central.signal("HUP");
    wait_for_log(&agent, "refused the integrations the central sent").await;

    let answer = post_dc(agent.addr, "still v1").await;
    assert_eq!(answer.status, 202);
    let event = event_of(central.addr, answer.json()["requestId"].as_str().unwrap()).await;
    assert_eq!(event["properties"]["version"], "v1", "{event}");

    // A valid version 3 replaces it.
    write_central(dir.path(), central.addr.port(), "v3", "svc");
    central.signal("HUP");
    let request = eventually(PATIENCE, "version 3 is served", || async {
        let answer = post_dc(agent.addr, "v3").await;
        assert_eq!(answer.status, 202);
        let id = answer.json()["requestId"].as_str().unwrap().to_owned();
        let event = event_of(central.addr, &id).await;
        (event["properties"]["version"] == "v3").then_some(id)
    })
    .await;
    assert!(!request.is_empty());
}

/// Item 4: two agents run `dc`; concurrent clients post to the first until it is SIGKILLed
/// under load, then to the second. The first is restarted afterwards (its store kept what it
/// accepted), and every request that got a 202 from either is at the central exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_run_one_integration_and_a_killed_one_loses_nothing() {
    const CLIENTS: usize = 4;
    const PER_CLIENT: usize = 75;
    const KILL_AFTER: usize = 100;
    let dir = tempfile::tempdir().unwrap();
    let central = start_central_with(&write_central(dir.path(), 0, "v1", "svc"));
    let (one_dir, two_dir) = (dir.path().join("one"), dir.path().join("two"));
    let one_config = write_agent(&one_dir, central.addr.port(), false, "");
    let one = start_agent(&one_config);
    let two = start_agent(&write_agent(&two_dir, central.addr.port(), true, ""));
    let mut accepted = vec![served(one.addr, "warm-up one").await];
    accepted.push(served(two.addr, "warm-up two").await);

    let started = std::time::Instant::now();
    let answered = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let targets = vec![one.addr, two.addr];
            let answered = answered.clone();
            tokio::spawn(post_until_done(client, PER_CLIENT, targets, answered))
        })
        .collect();
    eventually(PATIENCE, "the clients are under way", || async {
        (answered.load(Ordering::SeqCst) >= KILL_AFTER).then_some(())
    })
    .await;
    one.kill();
    let mut moved = 0;
    let mut refused = 0;
    for client in clients {
        let outcome = client.await.expect("a client task");
        accepted.extend(outcome.accepted);
        moved += usize::from(outcome.moved);
        refused += outcome.refused;
    }
    let elapsed = started.elapsed();
    assert!(moved > 0, "the clients moved to the second agent");
    // The first agent comes back and relays what it had accepted before it was killed.
    let one = start_agent(&one_config);

    let counts = eventually(PATIENCE, "every accepted request is at the central", || {
        let accepted = &accepted;
        async move {
            let mut counts: HashMap<String, usize> = HashMap::new();
            for event in all_central_events(central.addr).await {
                if let Some(id) = event["requestId"].as_str() {
                    *counts.entry(id.to_owned()).or_default() += 1;
                }
            }
            accepted
                .iter()
                .all(|id| counts.contains_key(id))
                .then_some(counts)
        }
    })
    .await;
    for id in &accepted {
        assert_eq!(counts[id], 1, "request {id} is at the central exactly once");
    }
    println!(
        "failover: {} accepted, {refused} refused with 503, {} posted by {CLIENTS} clients in \
         {elapsed:?}, {moved} clients moved",
        accepted.len(),
        CLIENTS * PER_CLIENT
    );
    drop(one);
}

/// What one client saw.
struct ClientOutcome {
    accepted: Vec<String>,
    refused: usize,
    moved: bool,
}

/// Post `count` requests, each to the first of `targets` that answers (a request whose
/// connection failed is posted again to the next agent: it got no 202).
async fn post_until_done(
    client: usize,
    count: usize,
    mut targets: Vec<SocketAddr>,
    answered: Arc<AtomicUsize>,
) -> ClientOutcome {
    let mut outcome = ClientOutcome {
        accepted: Vec::new(),
        refused: 0,
        moved: false,
    };
    let path = "/api/integration/1/functions/dc/triggers?apiKey=dc-key";
    let headers = [("content-type", "application/json")];
    for i in 0..count {
        loop {
            let target = *targets.first().expect("an agent left to post to");
            let body = format!(r#"{{"title":"client {client} request {i}"}}"#);
            match http(target, "POST", path, &headers, body).await {
                Ok(answer) if answer.status == 202 => {
                    let id = answer.json()["requestId"].as_str().unwrap().to_owned();
                    outcome.accepted.push(id);
                    break;
                }
                Ok(answer) => {
                    assert_eq!(
                        answer.status,
                        503,
                        "{}",
                        String::from_utf8_lossy(&answer.body)
                    );
                    outcome.refused += 1;
                    break;
                }
                Err(_) => {
                    targets.remove(0);
                    outcome.moved = true;
                }
            }
        }
        answered.fetch_add(1, Ordering::SeqCst);
    }
    outcome
}
