//! Nothing accepted is lost, nothing is duplicated: central down, central restarted, agent
//! SIGKILLed under load. Every test counts what arrived at the central.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use e2e::*;

const KEY: &str = "?apiKey=url-key-any";

/// Events at the central per requestId.
async fn events_by_request(central: SocketAddr) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for event in all_central_events(central).await {
        *counts
            .entry(event["requestId"].as_str().unwrap_or("").to_owned())
            .or_insert(0) += 1;
    }
    counts
}

/// Wait until every id in `accepted` has an event, then check each has exactly one.
async fn assert_exactly_once(central: SocketAddr, accepted: &[String]) {
    let counts = eventually(
        Duration::from_secs(60),
        "all accepted requests at the central",
        || async {
            let counts = events_by_request(central).await;
            accepted
                .iter()
                .all(|id| counts.contains_key(id))
                .then_some(counts)
        },
    )
    .await;
    for id in accepted {
        assert_eq!(counts[id], 1, "request {id} produced {} events", counts[id]);
    }
    let duplicated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(duplicated.is_empty(), "duplicated events: {duplicated:?}");
}

/// `clients` concurrent senders posting to integration `any` until `stop` is set; returns the
/// ids that got a 202.
fn load(
    agent: SocketAddr,
    clients: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Vec<String>> {
    load_integration(agent, "any", clients, stop)
}

/// [`load`] against any integration that accepts the `url-key-any` URL key.
fn load_integration(
    agent: SocketAddr,
    integration: &'static str,
    clients: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for client in 0..clients {
            let (accepted, stop) = (accepted.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    n += 1;
                    let body = format!("{{\"client\": {client}, \"n\": {n}}}");
                    let path = format!("/api/integration/1/functions/{integration}/triggers{KEY}");
                    match http(
                        agent,
                        "POST",
                        &path,
                        &[("content-type", "application/json")],
                        body,
                    )
                    .await
                    {
                        Ok(answer) if answer.status == 202 => {
                            let id = answer.json()["requestId"].as_str().unwrap().to_owned();
                            accepted.lock().unwrap().push(id);
                        }
                        Ok(answer) => {
                            assert_eq!(answer.status, 503, "unexpected {}", answer.status)
                        }
                        // The agent was killed under us: this request got no 202, so it may or
                        // may not have been kept.
                        Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let ids = accepted.lock().unwrap().clone();
        ids
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn central_down_at_start_then_everything_is_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let agent = start_agent(&agent_config(dir.path(), port, STANDARD_AGENT));
    let mut accepted = Vec::new();
    for n in 0..25 {
        let answer = trigger(agent.addr, "any", KEY, &[], &format!("{{\"n\": {n}}}")).await;
        assert_eq!(answer.status, 202);
        accepted.push(answer.json()["requestId"].as_str().unwrap().to_owned());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let central = start_central(dir.path(), port);
    assert_exactly_once(central.addr, &accepted).await;
    assert_eq!(all_central_events(central.addr).await.len(), 25);
}

#[tokio::test(flavor = "multi_thread")]
async fn central_restarted_mid_stream_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let central = start_central(dir.path(), port);
    let agent = start_agent(&agent_config(dir.path(), port, STANDARD_AGENT));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = load(agent.addr, 4, stop.clone());
    tokio::time::sleep(Duration::from_millis(700)).await;
    central.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let central = start_central(dir.path(), port);
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let accepted = sender.await.unwrap();
    assert!(
        accepted.len() > 20,
        "too little load to mean anything: {}",
        accepted.len()
    );
    assert_exactly_once(central.addr, &accepted).await;
    assert_eq!(all_central_events(central.addr).await.len(), accepted.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_sigkilled_under_load_delivers_every_202_exactly_once() {
    sigkill_under_load("any", "").await;
}

/// The same through a transform script: requests wait in the inbox, the worker turns them into
/// outbox entries, and a kill can land between any of those writes.
#[tokio::test(flavor = "multi_thread")]
async fn agent_sigkilled_under_transform_load_delivers_every_202_exactly_once() {
    sigkill_under_load(
        "mapper",
        "[[integrations]]\nid = \"mapper\"\naction = \"transform\"\n\
         authenticating_user = \"svc\"\nurl_key = \"url-key-any\"\nscript = \"SCRIPT\"\n",
    )
    .await;
}

/// Load `integration` (defined in the standard config plus `extra`, where `SCRIPT` names a
/// script posting one event per request), SIGKILL the agent, restart it, count at the central.
async fn sigkill_under_load(integration: &'static str, extra: &str) {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("mapper.js");
    std::fs::write(
        &script,
        "var body = JSON.parse(request.body);\ntrigger.properties.client = body.client;\n\
         trigger.properties.n = body.n;\nform.post(trigger);\n",
    )
    .unwrap();
    let extra = extra.replace("SCRIPT", &script.display().to_string());
    let central = start_central(dir.path(), 0);
    let config = agent_config(
        dir.path(),
        central.addr.port(),
        &format!("{STANDARD_AGENT}\n{extra}"),
    );
    let agent = start_agent(&config);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = load_integration(agent.addr, integration, 8, stop.clone());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    agent.kill();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let accepted = sender.await.unwrap();
    assert!(
        accepted.len() > 50,
        "too little load to mean anything: {}",
        accepted.len()
    );
    let _agent = start_agent(&config);
    assert_exactly_once(central.addr, &accepted).await;
    eprintln!(
        "accepted before SIGKILL: {}, events at the central: {}",
        accepted.len(),
        all_central_events(central.addr).await.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_cleanly_and_a_restart_delivers_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = agent_config(dir.path(), port, STANDARD_AGENT);
    let agent = start_agent(&config);
    let mut accepted = Vec::new();
    for n in 0..10 {
        let answer = trigger(agent.addr, "any", KEY, &[], &format!("{{\"n\": {n}}}")).await;
        accepted.push(answer.json()["requestId"].as_str().unwrap().to_owned());
    }
    assert_eq!(agent.terminate(), Some(0), "SIGTERM must exit 0");
    let central = start_central(dir.path(), port);
    let _agent = start_agent(&config);
    assert_exactly_once(central.addr, &accepted).await;
}
