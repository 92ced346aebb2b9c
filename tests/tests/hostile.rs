//! Hostile scripts end to end (issue 11): scripts that loop, exhaust memory or the stack, backtrack
//! forever, flood the console, `form.post` or `http.request`, or try to reach files, processes,
//! the network or modules, each run through the real `xmagent` (and `xmcentral`). Each must fail
//! only its own request, with an activity entry that says why and reports no events; the agent
//! must stay up and a neighbour integration must keep answering. The fairness test shows that
//! runaway scripts in one integration leave script threads to the others.
//!
//! What the sandbox does per run (limits, frozen built-ins) is tested in `scripts/tests/engine.rs`;
//! this file checks the whole path: ingress, worker, pool, activity stream, relay.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use e2e::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);
/// The scripts' time limit in these tests: short, so runaway cases end quickly.
const TIMEOUT_MS: u64 = 1500;

/// The two tests measure latency and fill the script threads; running them at once on a small
/// machine would make each disturb the other's figures.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const NEIGHBOUR: &str =
    "var data = JSON.parse(request.body);\ntrigger.properties.n = data.n;\nform.post(trigger);\n";

/// One hostile case: the integration id, its script, and what the activity entry's error must
/// say (`None`: the run may complete, but must stay bounded and create nothing it should not).
struct Case {
    id: &'static str,
    script: &'static str,
    error: Option<&'static str>,
}

const CASES: &[Case] = &[
    Case {
        id: "loop",
        script: "while (true) {}",
        error: Some("time limit"),
    },
    Case {
        id: "loop-in-catch",
        script: "for (;;) { try { while (true) {} } catch (e) { form.post(trigger); } }",
        error: Some("time limit"),
    },
    Case {
        id: "memory-bomb",
        script: "var hoard = []; for (;;) hoard.push(new Array(100000).join('x') + hoard.length);",
        error: Some("out of memory"),
    },
    Case {
        id: "deep-recursion",
        script: "function down(n) { return down(n + 1) + 1; }\ndown(0);",
        error: Some("stack"),
    },
    Case {
        id: "regex-backtracking",
        script: "var evil = /^(a+)+$/;\nevil.test(new Array(64).join('a') + 'b');\nform.post(trigger);",
        error: Some("time limit"),
    },
    Case {
        id: "console-flood",
        script: "for (var i = 0; i < 100000; i++) console.log('line ' + i + ' of the flood');",
        error: None,
    },
    Case {
        id: "post-flood",
        script: "for (var i = 0; i < 100000; i++) { try { form.post({ properties: { i: i } }); } catch (e) {} }",
        error: Some("too many form.post calls"),
    },
    Case {
        id: "http-flood",
        script: "for (var i = 0; i < 10000; i++) {\n  try { http.request({ endpoint: 'xMatters', method: 'GET', path: '/api/xm/1/events?i=' + i }).write(); } catch (e) {}\n}\nform.post(trigger);",
        error: Some("too many HTTP calls"),
    },
    Case {
        id: "read-file",
        script: "var text = std.loadFile('/etc/passwd');\nform.post({ properties: { text: text } });",
        error: Some("std is not defined"),
    },
    Case {
        id: "run-process",
        script: "os.exec(['/bin/sh', '-c', 'touch /tmp/xmagent-hostile']);\nform.post(trigger);",
        error: Some("os is not defined"),
    },
    Case {
        id: "require-fs",
        script: "var fs = require('fs');\nform.post({ properties: { text: fs.readFileSync('/etc/passwd') } });",
        error: Some("Cannot find library 'fs'"),
    },
    Case {
        id: "raw-network",
        script: "http.request({ endpoint: 'http://127.0.0.1:9', method: 'GET', path: '/' }).write();\nform.post(trigger);",
        error: Some("endpoint"),
    },
    Case {
        id: "fetch",
        script: "fetch('http://127.0.0.1:9/');\nform.post(trigger);",
        error: Some("fetch is not defined"),
    },
    Case {
        id: "dynamic-import",
        // The import is refused asynchronously; the handlers are left queued by the failed run
        // and must not act (post, log) in the next run of the thread.
        script: "var loaded = import('os');\nloaded.then(function (os) { os.exec(['/bin/true']); form.post(trigger); },\n  function (e) { form.post({ properties: { leaked: String(e) } }); });\nthrow new Error('import() gives a ' + typeof loaded + ', never a module');",
        error: Some("never a module"),
    },
];

fn write_agent(dir: &Path, central_port: u16, extra: &str) -> std::path::PathBuf {
    let mut text = format!(
        "[scripts]\nthreads = 2\ntimeout_ms = {TIMEOUT_MS}\nmemory_limit_mb = 16\n{extra}\n\
         [[users]]\nname = \"svc\"\nroles = [\"REST Web Service User\", \"Agent Administrator\"]\n\
         password = \"svc-password\"\n"
    );
    let mut scripts: Vec<(&str, &str)> =
        vec![("neighbour", NEIGHBOUR), ("runaway", "while (true) {}")];
    scripts.extend(CASES.iter().map(|c| (c.id, c.script)));
    for (id, script) in scripts {
        let file = dir.join(format!("{id}.js"));
        std::fs::write(&file, script).unwrap();
        text.push_str(&format!(
            "\n[[integrations]]\nid = \"{id}\"\naction = \"transform\"\nform = \"Incident Alert\"\n\
             authenticating_user = \"svc\"\nurl_key = \"key-{id}\"\nscript = \"{}\"\n",
            file.display()
        ));
    }
    agent_config(dir, central_port, &text)
}

async fn post(agent: SocketAddr, id: &str, body: &str) -> String {
    accepted(agent, id, body).await
}

async fn admin_get(agent: SocketAddr, path: &str) -> Value {
    get_json(agent, path, ("svc", "svc-password")).await
}

/// Wait until the script of `request_id` ran (the request is no longer `ACCEPTED`), polling
/// often so the time it took is a latency figure; return its status.
async fn script_done(agent: SocketAddr, request_id: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let record = admin_get(agent, &format!("/api/agent/1/requests/{request_id}")).await;
        let status = record["status"].as_str().unwrap_or_default().to_owned();
        if status != "ACCEPTED" {
            return status;
        }
        assert!(Instant::now() < deadline, "request {request_id} never ran");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The time from the POST of a neighbour request until its script ran.
async fn neighbour_latency(agent: SocketAddr, n: usize) -> Duration {
    let started = Instant::now();
    let id = post(agent, "neighbour", &format!("{{\"n\": {n}}}")).await;
    let status = script_done(agent, &id).await;
    let latency = started.elapsed();
    assert!(
        matches!(status.as_str(), "QUEUED" | "DELIVERED"),
        "{status}"
    );
    latency
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// The activity entry of one request of an integration.
async fn activity_of(agent: SocketAddr, integration: &str, request_id: &str) -> Value {
    let logs = admin_get(agent, &format!("/api/xm/1/integrations/{integration}/logs")).await;
    logs["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry.to_string().contains(request_id))
        .cloned()
        .unwrap_or_else(|| panic!("no activity entry for {request_id}: {logs}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_scripts_fail_only_their_own_request() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let central = start_central(dir.path(), 0);
    let agent = start_agent(&write_agent(dir.path(), central.addr.port(), ""));
    let (agent_addr, central_addr) = (agent.addr, central.addr);
    let pid = agent.pid();

    for case in CASES {
        let started = Instant::now();
        let id = post(agent_addr, case.id, "{}").await;
        let status = script_done(agent_addr, &id).await;
        let took = started.elapsed();
        let entry = activity_of(agent_addr, case.id, &id).await;
        let message = entry["error"]["message"].as_str().unwrap_or_default();
        println!(
            "{:>20}: {status} in {} ms, events {}, error {:?}",
            case.id,
            took.as_millis(),
            entry["events"],
            message
        );
        assert!(
            took < Duration::from_millis(TIMEOUT_MS) * 4,
            "{}: took {took:?}",
            case.id
        );
        match case.error {
            Some(expected) => {
                assert_eq!(status, "FAILED", "{}: {entry}", case.id);
                assert!(
                    message.contains(expected),
                    "{}: the error should say {expected:?}: {entry}",
                    case.id
                );
                assert_eq!(entry["events"], 0, "{}: {entry}", case.id);
                assert!(
                    central_events(central_addr, &id).await.is_empty(),
                    "{}: a failed run created events",
                    case.id
                );
            }
            None => {
                // The console flood completes with its output cut at the per-run limit.
                assert_eq!(status, "COMPLETED", "{}: {entry}", case.id);
                let log = entry["log"].as_array().unwrap();
                let bytes: usize = log
                    .iter()
                    .map(|l| l["message"].as_str().unwrap_or_default().len())
                    .sum();
                assert!(bytes <= 65 * 1024, "{}: {bytes} bytes of log", case.id);
                assert!(
                    log.last().unwrap()["message"]
                        .as_str()
                        .unwrap()
                        .contains("truncated"),
                    "{}: {entry}",
                    case.id
                );
            }
        }
        // After every case the agent is alive and a neighbour integration still answers.
        assert!(
            Path::new(&format!("/proc/{pid}")).exists(),
            "the agent died after {}",
            case.id
        );
        let neighbour = post(agent_addr, "neighbour", "{\"n\": 0}").await;
        script_done(agent_addr, &neighbour).await;
        let entry = activity_of(agent_addr, "neighbour", &neighbour).await;
        assert_eq!(
            entry["events"], 1,
            "after {} the neighbour reports only its own event: {entry}",
            case.id
        );
    }
    assert!(
        !Path::new("/tmp/xmagent-hostile").exists(),
        "a script started a process"
    );
    // The neighbour's requests all reached the central.
    let delivered = eventually(WAIT, "neighbour events delivered", || async {
        let events = all_central_events(central_addr).await;
        (events.len() >= CASES.len()).then_some(events.len())
    })
    .await;
    assert_eq!(delivered, CASES.len(), "only the neighbour created events");
}

#[tokio::test(flavor = "multi_thread")]
async fn runaway_scripts_leave_threads_to_other_integrations() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let central = start_central(dir.path(), 0);
    let agent = start_agent(&write_agent(dir.path(), central.addr.port(), ""));
    let agent_addr = agent.addr;

    // Warm up, then the quiet figure.
    for n in 0..3 {
        neighbour_latency(agent_addr, n).await;
    }
    let mut quiet = Vec::new();
    for n in 0..7 {
        quiet.push(neighbour_latency(agent_addr, n).await);
    }
    let quiet = median(quiet);

    // Four runaway requests: with two script threads and the default share (half of them), they
    // hold one thread at a time and queue for it.
    let started = Instant::now();
    let mut runaway = Vec::new();
    for _ in 0..4 {
        runaway.push(post(agent_addr, "runaway", "{}").await);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut loaded = Vec::new();
    for n in 0..7 {
        loaded.push(neighbour_latency(agent_addr, n).await);
    }
    let measured_within = started.elapsed();
    let loaded_median = median(loaded.clone());
    let runaway_status = script_done(agent_addr, &runaway[0]).await;
    println!(
        "neighbour transform latency: quiet median {:.1} ms, with 4 runaway requests median {:.1} ms \
         (max {:.1} ms, measured within {:.0} ms of the runaway requests; first runaway: {runaway_status})",
        quiet.as_secs_f64() * 1000.0,
        loaded_median.as_secs_f64() * 1000.0,
        loaded.iter().max().unwrap().as_secs_f64() * 1000.0,
        measured_within.as_secs_f64() * 1000.0,
    );
    assert!(
        measured_within < Duration::from_millis(TIMEOUT_MS),
        "the neighbour was measured while the runaway scripts ran"
    );
    assert_eq!(runaway_status, "FAILED");
    // A starved neighbour would wait for a runaway's time limit (1.5 s) before it got a thread.
    // The "within 2x of normal" figure is printed above and reported; the assertion keeps a wide
    // margin so that a loaded CI machine (a runaway still burns a whole core) cannot fail it.
    let starved = Duration::from_millis(TIMEOUT_MS) / 2;
    assert!(
        loaded_median < starved,
        "neighbour latency {loaded_median:?} under load, {quiet:?} quiet: it waited for a thread"
    );
}

/// `[scripts] threads_per_integration` outside 1..=threads is a configuration error naming the
/// file and key (exit 78); a valid value passes.
#[test]
fn a_share_beyond_the_threads_is_refused() {
    let _serial = SERIAL.blocking_lock();
    let dir = tempfile::tempdir().unwrap();
    for (share, code) in [("0", 78), ("3", 78), ("2", 0)] {
        let config = write_agent(dir.path(), 1, &format!("threads_per_integration = {share}"));
        let output = std::process::Command::new(binary("xmagent"))
            .args(["check", "--config", config.to_str().unwrap()])
            .output()
            .expect("xmagent check");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(output.status.code(), Some(code), "share {share}: {text}");
        if code == 78 {
            assert!(
                text.contains("agent.toml") && text.contains("scripts.threads_per_integration"),
                "share {share}: {text}"
            );
        }
    }
}
