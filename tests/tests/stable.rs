//! A 202 means stable storage, and nothing accepted can block the relay: the order of syncs and
//! answers seen by strace (the agent's 202s, the central's acks and its hosted 202s), each
//! poisonous body and script post, a damaged store, a full disk.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::*;
use serde_json::Value;

const KEY: &str = "?apiKey=url-key-any";

/// The agent's record of one request (status, failure reason, event ids), read as the
/// standard agent's administrator.
async fn request_record(agent: &Node, request_id: &str) -> Value {
    let path = format!("/api/agent/1/requests/{request_id}");
    get_json(agent.addr, &path, ("svc", "svc-password")).await
}

/// A request's final record, once it has one.
async fn final_record(agent: &Node, request_id: &str) -> Value {
    eventually(
        Duration::from_secs(20),
        "a final request status",
        || async {
            let record = request_record(agent, request_id).await;
            matches!(
                record["status"].as_str(),
                Some("DELIVERED" | "FAILED" | "COMPLETED")
            )
            .then_some(record)
        },
    )
    .await
}

fn strace_available() -> bool {
    Command::new("strace")
        .args(["-o", "/dev/null", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// One syscall from `strace -f -y` output, at the line where it completed (a call another
/// thread interrupted is matched with its `resumed` line).
#[derive(Debug)]
struct Call {
    name: String,
    /// The call's arguments as printed (fd paths included thanks to `-y`).
    args: String,
}

fn completed_calls(trace: &str) -> Vec<Call> {
    let mut pending: std::collections::HashMap<String, Call> = Default::default();
    let mut calls = Vec::new();
    for line in trace.lines() {
        let Some((pid, rest)) = line.split_once(' ') else {
            continue;
        };
        let rest = rest.trim_start();
        if let Some(resumed) = rest.strip_prefix("<... ") {
            if let Some(mut call) = pending.remove(pid) {
                call.args.push_str(resumed);
                calls.push(call);
            }
            continue;
        }
        let Some((name, args)) = rest.split_once('(') else {
            continue;
        };
        let call = Call {
            name: name.to_owned(),
            args: args.to_owned(),
        };
        if rest.ends_with("<unfinished ...>") {
            pending.insert(pid.to_owned(), call);
        } else {
            calls.push(call);
        }
    }
    calls
}

/// DESIGN §3 invariant 1, checked on the real binary: between two 202s of sequential requests
/// the store's log file is written, and the last thing done to it before the 202 leaves is an
/// `fdatasync` (sled's own flush ends in `sync_file_range`, which a power cut does not honour).
#[tokio::test]
async fn every_202_follows_a_sync_of_the_store_after_its_write() {
    if !strace_available() {
        eprintln!("SKIPPED: strace is not installed or cannot trace here (apt-get install strace)");
        return;
    }
    // No central: without acknowledgements nothing but the requests themselves writes to the
    // store (an acknowledgement's flush could otherwise land between a request's sync and its
    // 202 and look like an unsynced write).
    let dir = tempfile::tempdir().unwrap();
    let config = agent_config(dir.path(), free_port(), STANDARD_AGENT);
    let trace_path = dir.path().join("trace");
    let agent = Node::start(
        Path::new("strace"),
        &[
            "-f",
            "-y",
            "-s",
            "24",
            "-o",
            trace_path.to_str().unwrap(),
            "-e",
            "trace=pwrite64,pwritev,write,writev,fsync,fdatasync,sync_file_range",
            binary("xmagent").to_str().unwrap(),
            "run",
            "--config",
            config.to_str().unwrap(),
        ],
    );
    let requests = 12;
    for n in 0..requests {
        let answer = trigger(agent.addr, "any", KEY, &[], &format!(r#"{{"n": {n}}}"#)).await;
        assert_eq!(answer.status, 202);
    }
    // strace's child is the agent: stop it, and strace ends with it.
    Command::new("pkill")
        .args(["-TERM", "-P", &agent.pid().to_string()])
        .status()
        .unwrap();
    assert_eq!(agent.wait(), Some(0));
    let trace = std::fs::read_to_string(&trace_path).unwrap();
    let calls = completed_calls(&trace);
    let on_log = |call: &Call| call.args.contains("/store/db>");
    let mut answers = 0;
    let mut wrote_since_answer = false;
    let mut synced_after_write = false;
    let mut syncs = 0;
    for call in &calls {
        match call.name.as_str() {
            "pwrite64" | "pwritev" if on_log(call) => {
                wrote_since_answer = true;
                synced_after_write = false;
            }
            "fdatasync" | "fsync" if on_log(call) => {
                synced_after_write = true;
                syncs += 1;
            }
            "writev" | "write" if call.args.contains("HTTP/1.1 202") => {
                answers += 1;
                assert!(
                    wrote_since_answer,
                    "202 number {answers} was sent without a write to the store since the last one"
                );
                assert!(
                    synced_after_write,
                    "202 number {answers} was sent before the store's last write was synced"
                );
                wrote_since_answer = false;
            }
            _ => {}
        }
    }
    assert_eq!(answers, requests, "202s seen in the trace");
    eprintln!("strace: {answers} answers, each after a write and an fdatasync ({syncs} syncs of the store in all)");
}

/// DESIGN §3 invariant 1 on the central's side, on the real binary: every ack it sends an agent
/// and every 202 it answers for a cloud-hosted integration leaves only after the central's store
/// was synced (`fdatasync`) after its last write. Requests go one at a time, so no other request's
/// write can fall between a sync and the answer it covers.
#[tokio::test]
async fn the_central_acks_and_answers_202_only_after_a_sync() {
    if !strace_available() {
        eprintln!("SKIPPED: strace is not installed or cannot trace here (apt-get install strace)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The central hosts the standard integrations itself (its "any" answers the same URL key).
    let central_toml = central_config(dir.path(), 0);
    let mut text = std::fs::read_to_string(&central_toml).unwrap();
    text.push_str(STANDARD_AGENT);
    std::fs::write(&central_toml, text).unwrap();
    let trace_path = dir.path().join("trace");
    let central = Node::start(
        Path::new("strace"),
        &[
            "-f",
            "-y",
            "-s",
            "64",
            "-o",
            trace_path.to_str().unwrap(),
            "-e",
            "trace=pwrite64,pwritev,write,writev,sendto,sendmsg,fsync,fdatasync,sync_file_range",
            binary("xmcentral").to_str().unwrap(),
            "run",
            "--config",
            central_toml.to_str().unwrap(),
        ],
    );
    let agent = start_agent(&agent_config(
        dir.path(),
        central.addr.port(),
        STANDARD_AGENT,
    ));
    let requests = 6;
    for n in 0..requests {
        let body = format!(r#"{{"n": {n}}}"#);
        let hosted = trigger(central.addr, "any", KEY, &[], &body).await;
        assert_eq!(
            hosted.status,
            202,
            "{}",
            String::from_utf8_lossy(&hosted.body)
        );
        let relayed = trigger(agent.addr, "any", KEY, &[], &body).await;
        assert_eq!(relayed.status, 202);
        let id = relayed.json()["requestId"].as_str().unwrap().to_owned();
        assert_eq!(final_record(&agent, &id).await["status"], "DELIVERED");
    }
    agent.kill();
    Command::new("pkill")
        .args(["-TERM", "-P", &central.pid().to_string()])
        .status()
        .unwrap();
    assert_eq!(central.wait(), Some(0));
    let trace = std::fs::read_to_string(&trace_path).unwrap();
    let on_store = |call: &Call| call.args.contains("/central-data/") && call.args.contains("/db>");
    let (mut acks, mut answers, mut syncs) = (0, 0, 0);
    let mut synced_after_write = true;
    for call in completed_calls(&trace) {
        match call.name.as_str() {
            "pwrite64" | "pwritev" if on_store(&call) => synced_after_write = false,
            "fdatasync" | "fsync" if on_store(&call) => {
                synced_after_write = true;
                syncs += 1;
            }
            "sendto" | "sendmsg" | "writev" | "write" if call.args.contains(r#"type\":\"ack"#) => {
                acks += 1;
                assert!(
                    synced_after_write,
                    "ack number {acks} left before the store was synced"
                );
            }
            "writev" | "write" if call.args.contains("HTTP/1.1 202") => {
                answers += 1;
                assert!(
                    synced_after_write,
                    "202 number {answers} left before the store was synced"
                );
            }
            _ => {}
        }
    }
    assert_eq!(answers, requests, "hosted 202s seen in the trace");
    assert!(acks >= requests, "acks seen in the trace: {acks}");
    eprintln!("strace (central): {acks} acks and {answers} hosted 202s, each after an fdatasync of the store ({syncs} syncs in all)");
}

/// A transform integration whose script posts what the request asks for: each poison the
/// central could not read, or a normal event.
const POISON_SCRIPT: &str = r#"
var kind = JSON.parse(request.body).kind;
var value = 'fine';
if (kind === 'deep') { value = []; for (var i = 0; i < 200; i++) { value = [value]; } }
if (kind === 'surrogate') { value = 'a\ud800b'; }
if (kind === 'huge') { value = 'x'.repeat(5 * 1024 * 1024); }
trigger.properties.value = value;
form.post(trigger);
"#;

fn poison_agent(dir: &Path, central_port: u16) -> PathBuf {
    std::fs::write(dir.join("poison.js"), POISON_SCRIPT).unwrap();
    let extra = format!(
        "[agent]\nmax_body_bytes = 8388608\n\n[scripts]\nmemory_limit_mb = 128\n{STANDARD_AGENT}\n\
         [[integrations]]\nid = \"poster\"\naction = \"transform\"\nscript = \"poison.js\"\n\
         authenticating_user = \"svc\"\nurl_key = \"url-key-any\"\n"
    );
    // `[agent]` is in the common header already: merge the extra key into it.
    let path = agent_config(dir, central_port, "");
    let header = std::fs::read_to_string(&path).unwrap();
    let (agent_section, rest) = extra.split_once("\n\n").unwrap();
    let text = header.replacen("[agent]\n", &format!("{agent_section}\n"), 1) + rest;
    std::fs::write(&path, text).unwrap();
    path
}

/// No request can poison the relay: every body the central could not read is refused at
/// ingress with a 400 that says why, every such script post fails its own request, and a normal
/// request after all of them is delivered.
#[tokio::test]
async fn poisonous_bodies_and_posts_fail_alone_and_delivery_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let central = start_central(dir.path(), 0);
    let config = poison_agent(dir.path(), central.addr.port());
    let agent = start_agent(&config);

    let deep = format!(
        r#"{{"properties": {{"a": {}1{}}}}}"#,
        "[".repeat(130),
        "]".repeat(130)
    );
    let huge = format!(r#"{{"a": "{}"}}"#, "x".repeat(5 * 1024 * 1024));
    for (body, reason) in [
        (
            r#"{"properties": {"a": 1e99999}}"#.to_owned(),
            "number out of range",
        ),
        (r#"{"a": -1e400}"#.to_owned(), "number out of range"),
        (deep, "nested deeper than the limit of 64 levels"),
        (r#"{"a": "\ud800"}"#.to_owned(), "escape"),
        (r#"{"a": "\udc00\u0041"}"#.to_owned(), "surrogate"),
        (huge, "more than the limit"),
    ] {
        let answer = trigger(agent.addr, "any", KEY, &[], &body).await;
        assert_eq!(answer.status, 400, "{}", &body[..body.len().min(60)]);
        let message = answer.json()["message"].as_str().unwrap_or("").to_owned();
        assert!(message.contains(reason), "{message}");
    }

    let mut poisoned = Vec::new();
    // A lone surrogate never leaves the script: QuickJS's string cannot become text, and the
    // run fails at the line that posted it.
    for kind in ["deep", "surrogate", "huge"] {
        let answer = trigger(
            agent.addr,
            "poster",
            KEY,
            &[],
            &format!(r#"{{"kind": "{kind}"}}"#),
        )
        .await;
        assert_eq!(answer.status, 202, "{kind}");
        poisoned.push((
            kind,
            answer.json()["requestId"].as_str().unwrap().to_owned(),
        ));
    }
    let expected = ["cannot be sent", "poison.js:8", "cannot be sent"];
    for ((kind, id), reason) in poisoned.iter().zip(expected) {
        let record = final_record(&agent, id).await;
        assert_eq!(record["status"], "FAILED", "{kind}: {record}");
        let given = record["reason"].as_str().unwrap_or("");
        assert!(given.contains(reason), "{kind}: {record}");
    }

    let normal = trigger(agent.addr, "poster", KEY, &[], r#"{"kind": "normal"}"#).await;
    assert_eq!(normal.status, 202);
    let normal_id = normal.json()["requestId"].as_str().unwrap().to_owned();
    let direct = trigger(
        agent.addr,
        "any",
        KEY,
        &[],
        r#"{"summary": "after the poison"}"#,
    )
    .await;
    let direct_id = direct.json()["requestId"].as_str().unwrap().to_owned();
    for id in [&normal_id, &direct_id] {
        let record = final_record(&agent, id).await;
        assert_eq!(record["status"], "DELIVERED", "{record}");
        assert_eq!(central_events(central.addr, id).await.len(), 1);
    }
    for (_, id) in &poisoned {
        assert!(central_events(central.addr, id).await.is_empty());
    }
}

/// Start `xmagent run` and wait for it to exit by itself; answers its exit code and log.
fn run_until_exit(config: &Path, extra_args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(binary("xmagent"))
        .args(["run", "--config", config.to_str().unwrap()])
        .args(extra_args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut log = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut log)
                .unwrap();
            return (status.code(), log);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("xmagent run did not exit by itself");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Queue `n` create_event requests with the central unreachable, then SIGKILL the agent: the
/// store holds them, acknowledged, and nothing else.
async fn queue_and_kill(dir: &Path, n: usize) -> PathBuf {
    let config = agent_config(dir, free_port(), STANDARD_AGENT);
    let agent = start_agent(&config);
    for i in 0..n {
        let body = format!(r#"{{"n": {i}, "pad": "{}"}}"#, "p".repeat(2000));
        assert_eq!(
            trigger(agent.addr, "any", KEY, &[], &body).await.status,
            202
        );
    }
    agent.kill();
    config
}

/// A damaged store is never silent: the agent refuses to start, names the file and how many
/// acknowledged entries are missing, and starts only when the operator accepts the loss.
#[tokio::test]
async fn a_store_that_lost_acknowledged_requests_refuses_to_start() {
    type Damage = fn(&Path);
    let truncate: Damage = |db| {
        let len = std::fs::metadata(db).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(db)
            .unwrap()
            .set_len(len / 2)
            .unwrap();
    };
    let flip: Damage = |db| {
        let mut bytes = std::fs::read(db).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 0x5a;
        std::fs::write(db, bytes).unwrap();
    };
    let delete: Damage = |db| std::fs::remove_file(db).unwrap();
    for (what, damage) in [
        ("truncated", truncate),
        ("flipped byte", flip),
        ("deleted", delete),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let config = queue_and_kill(dir.path(), 30).await;
        let db = dir.path().join("agent-data/store/db");
        damage(&db);
        let (code, log) = run_until_exit(&config, &[]);
        eprintln!(
            "{what}: exit {code:?}; {}",
            log.lines().last().unwrap_or("")
        );
        assert_eq!(code, Some(65), "{what}: must refuse to start\n{log}");
        assert!(
            log.contains("store/db holds") && log.contains("fewer acknowledged entries"),
            "{what}: the error names the file and what is missing\n{log}"
        );
        {
            // The operator accepts the loss: the agent starts with what is left.
            let agent = Node::start(
                &binary("xmagent"),
                &[
                    "run",
                    "--config",
                    config.to_str().unwrap(),
                    "--accept-store-loss",
                ],
            );
            assert!(
                agent.log().contains("going on with what is left"),
                "{}",
                agent.log()
            );
            assert_eq!(agent.terminate(), Some(0));
            // Accepted once: the next start is an ordinary one.
            let agent = start_agent(&config);
            assert_eq!(agent.terminate(), Some(0));
        }
    }
}

/// An intact store after a SIGKILL opens without complaint (the seal never runs ahead).
#[tokio::test]
async fn an_intact_store_after_a_kill_opens_and_delivers_everything() {
    let dir = tempfile::tempdir().unwrap();
    let config = queue_and_kill(dir.path(), 30).await;
    let agent = start_agent(&config);
    assert!(
        !agent.log().contains("fewer acknowledged"),
        "{}",
        agent.log()
    );
    assert_eq!(agent.terminate(), Some(0));
}

/// A small tmpfs mounted for one test, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// Mount a tmpfs of `mib` MiB, or `None` where this machine does not allow it.
    fn mount(mib: u64) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().ok()?;
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        mounted.then_some(SmallDisk { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn free_bytes(&self) -> u64 {
        let out = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(self.path())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .and_then(|l| l.trim().parse().ok())
            .unwrap()
    }

    /// Fill the disk until `leave` bytes are free.
    fn fill(&self, name: &str, leave: u64) {
        let size = self.free_bytes().saturating_sub(leave);
        let status = Command::new("fallocate")
            .args(["-l", &size.to_string()])
            .arg(self.path().join(name))
            .status()
            .unwrap();
        assert!(status.success(), "fallocate");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// A central, and an agent whose data directory is on a 48 MiB tmpfs, having accepted one
/// request; `None` (with the reason printed) where this machine cannot mount one.
struct OnSmallDisk {
    disk: SmallDisk,
    config: PathBuf,
    central: Node,
    agent: Node,
    _dir: tempfile::TempDir,
}

async fn agent_on_small_disk(min_free_mib: u64) -> Option<OnSmallDisk> {
    let Some(disk) = SmallDisk::mount(48) else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN)");
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    let central = start_central(dir.path(), 0);
    let config = agent_config(
        disk.path(),
        central.addr.port(),
        &format!("[store]\nmin_free_mib = {min_free_mib}\ncache_mib = 1\n{STANDARD_AGENT}"),
    );
    let agent = start_agent(&config);
    let first = trigger(agent.addr, "any", KEY, &[], r#"{"a": 1}"#).await;
    assert_eq!(first.status, 202);
    Some(OnSmallDisk {
        disk,
        config,
        central,
        agent,
        _dir: dir,
    })
}

async fn readiness(agent: &Node) -> (u16, Value) {
    let answer = http(agent.addr, "GET", "/readyz", &[], "").await.unwrap();
    (answer.status, answer.json())
}

/// While the store's disk is almost full, triggers get 503 + Retry-After, nothing is stored
/// and `/readyz` says why; when space returns the agent accepts again by itself.
#[tokio::test]
async fn a_full_disk_refuses_honestly_and_recovers_by_itself() {
    let Some(OnSmallDisk {
        disk,
        central,
        agent,
        _dir,
        ..
    }) = agent_on_small_disk(16).await
    else {
        return;
    };

    disk.fill("filler", 8 * 1024 * 1024);
    let refused = eventually(Duration::from_secs(5), "503 on a full disk", || async {
        let answer = trigger(agent.addr, "any", KEY, &[], r#"{"a": 2}"#).await;
        (answer.status == 503).then_some(answer)
    })
    .await;
    assert!(refused.header("retry-after").is_some());
    assert!(refused.json()["message"].as_str().unwrap().contains("disk"));
    let (status, ready) = readiness(&agent).await;
    assert_eq!(status, 503);
    assert_eq!(ready["store"]["diskHasRoom"], false, "{ready}");

    std::fs::remove_file(disk.path().join("filler")).unwrap();
    let accepted = eventually(
        Duration::from_secs(5),
        "202 once space returned",
        || async {
            let answer = trigger(agent.addr, "any", KEY, &[], r#"{"a": 3}"#).await;
            (answer.status == 202).then_some(answer)
        },
    )
    .await;
    let id = accepted.json()["requestId"].as_str().unwrap().to_owned();
    eventually(
        Duration::from_secs(10),
        "the event after recovery",
        || async { (central_events(central.addr, &id).await.len() == 1).then_some(()) },
    )
    .await;
    assert_eq!(readiness(&agent).await.0, 200);
    assert!(agent.log().contains("has room again"), "{}", agent.log());
    assert_eq!(agent.terminate(), Some(0));
}

/// When a write does fail for lack of space (no free-space margin configured), the client gets
/// 503, the agent stops (exit 75) instead of serving from a store that cannot write, and after
/// the restart the refused request is not processed.
#[tokio::test]
async fn a_failed_flush_answers_503_and_the_request_never_reappears() {
    let Some(OnSmallDisk {
        disk,
        config,
        central,
        agent,
        _dir,
    }) = agent_on_small_disk(0).await
    else {
        return;
    };
    disk.fill("filler", 0);
    // Large bodies, so the write cannot fit in pages the store's file already has.
    let body = format!(r#"{{"pad": "{}"}}"#, "p".repeat(512 * 1024));
    let mut refused = None;
    let mut accepted_large = 0;
    for _ in 0..20 {
        let answer = trigger(agent.addr, "any", KEY, &[], &body).await;
        if answer.status == 503 {
            refused = Some(answer);
            break;
        }
        assert_eq!(answer.status, 202);
        accepted_large += 1;
    }
    let refused = refused.expect("a write on a full disk is refused");
    assert!(refused.header("retry-after").is_some());
    let code = agent.wait();
    assert_eq!(code, Some(75), "the agent stops once its store failed");

    std::fs::remove_file(disk.path().join("filler")).unwrap();
    let agent = start_agent(&config);
    // Nothing that got 503 comes back: every event at the central belongs to a 202.
    let after = trigger(agent.addr, "any", KEY, &[], r#"{"after": true}"#).await;
    assert_eq!(after.status, 202);
    let id = after.json()["requestId"].as_str().unwrap().to_owned();
    eventually(
        Duration::from_secs(10),
        "the event after the restart",
        || async { (central_events(central.addr, &id).await.len() == 1).then_some(()) },
    )
    .await;
    let padded = all_central_events(central.addr)
        .await
        .into_iter()
        .filter(|e| e["properties"]["pad"].is_string())
        .count();
    eprintln!("large bodies: {accepted_large} got 202, {padded} events at the central");
    assert_eq!(
        padded, accepted_large,
        "a request answered 503 was delivered"
    );
    let log = agent.log();
    assert!(
        log.contains("dropping writes a failed flush refused"),
        "{log}"
    );
    assert_eq!(agent.terminate(), Some(0), "{log}");
}
