//! `xmbench`: the trigger path under loopback load, against a bare hyper server in the same run.
//!
//! It starts a central (in this process), the real agent (a child process, so its RSS is its own)
//! and a bare hyper server answering 202 (another child process), drives both with the same
//! keep-alive load, waits until the central stored every accepted request, and prints one JSON
//! object as its last line. Absolute numbers on shared machines are noisy; `ratio` is the figure
//! that counts.
//!
//! ```text
//! cargo run --release --bin xmbench -- --scenario create_event --seconds 10 --connections 64
//! ```

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::json;

/// The agent runs from this binary (`__agent`), so it gets the allocator `xmagent` has; the
/// baseline server and the central share it, so the ratio compares like with like.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
const TOKEN: &str = "bench-agent-token-0123456789";

#[derive(Clone, Copy, ValueEnum, PartialEq, Debug)]
enum Scenario {
    /// `create_event`: the body is the trigger.
    #[value(name = "create_event", alias = "create-event")]
    CreateEvent,
    /// `transform`: the Prometheus Alertmanager example script.
    Transform,
}

#[derive(Parser)]
#[command(about = "Load the agent's trigger path and compare with a bare hyper server")]
struct Args {
    /// Which integration action to drive.
    #[arg(long, value_enum, default_value = "create_event")]
    scenario: Scenario,
    /// Seconds of load against each server.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
}

fn main() -> anyhow::Result<()> {
    let mut raw = std::env::args();
    let _ = raw.next();
    match raw.next().as_deref() {
        // Child roles: the agent runs its real CLI; the baseline is a bare hyper server.
        Some("__agent") => std::process::exit(agent::cli::main_from(
            std::iter::once("xmagent".to_owned()).chain(raw),
        )),
        Some("__baseline") => return baseline_server(),
        _ => {}
    }
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(bench(args))
}

fn payload(scenario: Scenario) -> anyhow::Result<(String, &'static str)> {
    match scenario {
        Scenario::CreateEvent => {
            // About 1.5 KiB, like a real monitoring alert.
            let text = std::fs::read_to_string(Path::new(EXAMPLES).join("payloads/datadog-1.json"))
                .unwrap_or_else(|_| {
                    json!({"properties": {"summary": "x".repeat(1400)}}).to_string()
                });
            Ok((text, "generic-event"))
        }
        Scenario::Transform => {
            let text =
                std::fs::read_to_string(Path::new(EXAMPLES).join("payloads/prometheus-1.json"))
                    .context("examples/payloads/prometheus-1.json")?;
            Ok((text, "alertmanager"))
        }
    }
}

async fn bench(args: Args) -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    let (body, integration) = payload(args.scenario)?;

    // Central, in this process.
    let central_toml = scratch.path().join("central.toml");
    std::fs::write(
        &central_toml,
        format!(
            "[central]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"central\"\n[[agents]]\nid = \"bench\"\ntoken = \"{TOKEN}\"\n\
             [[users]]\nname = \"admin\"\npassword = \"bench\"\n"
        ),
    )?;
    let central_config = central::config::load(&central_toml)?;
    let (stop_central, stop_rx) = tokio::sync::watch::channel(false);
    let central = central::start(central_config, stop_rx).await?;

    // The agent, as a child process running the real CLI.
    let agent_toml = scratch.path().join("agent.toml");
    std::fs::write(&agent_toml, agent_config(central.addr, scratch.path()))?;
    let exe = std::env::current_exe()?;
    let (mut agent, agent_addr) = spawn_listening(
        &exe,
        &[
            "__agent",
            "run",
            "--config",
            agent_toml.to_str().unwrap_or_default(),
        ],
    )?;
    let path = format!("/api/integration/1/functions/{integration}/triggers?apiKey=bench-url-key");
    let duration = Duration::from_secs(args.seconds);
    let load = |addr| drive(addr, &path, &body, args.connections, duration);
    let ticks_at_start = cpu_ticks();
    let agent_run = load(agent_addr).await;
    let caught_up = wait_created(
        central.addr,
        agent_run.accepted_ids.len(),
        Duration::from_secs(120),
    )
    .await?;
    let batching = store_batching(agent_addr).await.unwrap_or_default();
    let peak_rss_mib = peak_rss_kib(agent.id()).unwrap_or(0) as f64 / 1024.0;
    // Everything the agent spent, accepting and delivering, per accepted request.
    let agent_cpu_us =
        cpu_seconds(agent.id()).unwrap_or(0.0) * 1e6 / agent_run.accepted_ids.len().max(1) as f64;
    let _ = agent.kill();
    let _ = agent.wait();
    let _ = stop_central.send(true);
    // Only the task: the reload handles (the notifier holds the store) drop here, so the store
    // can be opened below once the task ended.
    let central_task = {
        let central = central;
        central.task
    };
    central_task.await?;
    let delivered =
        count_delivered(scratch.path().join("central"), &agent_run.accepted_ids).await?;

    let (mut baseline, baseline_addr) = spawn_listening(&exe, &["__baseline"])?;
    let baseline_run = load(baseline_addr).await;
    let _ = baseline.kill();
    let _ = baseline.wait();

    let (agent_rps, baseline_rps) = (agent_run.rps(), baseline_run.rps());
    let steal_pct = match (ticks_at_start, cpu_ticks()) {
        (Some((steal0, total0)), Some((steal1, total1))) if total1 > total0 => {
            (steal1 - steal0) as f64 * 100.0 / (total1 - total0) as f64
        }
        _ => 0.0,
    };
    let summary = json!({
        "scenario": args.scenario.to_possible_value().map(|v| v.get_name().to_owned()).unwrap_or_default(),
        "seconds": args.seconds,
        "connections": args.connections,
        "accepted": agent_run.accepted_ids.len(),
        "refused": agent_run.refused,
        "delivered": delivered.requests,
        "events": delivered.events,
        "agent_rps": agent_rps.round(),
        "baseline_rps": baseline_rps.round(),
        "ratio": (agent_rps / baseline_rps * 1000.0).round() / 1000.0,
        "p50_ms": agent_run.percentile_ms(50.0),
        "p99_ms": agent_run.percentile_ms(99.0),
        "baseline_p50_ms": baseline_run.percentile_ms(50.0),
        "baseline_p99_ms": baseline_run.percentile_ms(99.0),
        "agent_peak_rss_mib": (peak_rss_mib * 10.0).round() / 10.0,
        "agent_cpu_us_per_request": agent_cpu_us.round(),
        "delivery_lag_s": (caught_up.as_secs_f64() * 100.0).round() / 100.0,
        "cpu_steal_pct": steal_pct.round(),
        "store_flushes": batching.flushes,
        "flush_ms_mean": (batching.flush_ms_mean() * 100.0).round() / 100.0,
    });
    println!("{summary}");
    Ok(())
}

fn agent_config(central: SocketAddr, dir: &Path) -> String {
    let script = Path::new(EXAMPLES).join("integrations/alertmanager.js");
    format!(
        r#"[agent]
id = "bench"
listen = "127.0.0.1:0"
data_dir = "{data}"

[central]
url = "ws://{central}/api/agent/1/connect"
token = "{TOKEN}"

[[users]]
name = "svc"
roles = ["REST Web Service User"]
password = "bench"

[[integrations]]
id = "generic-event"
action = "create_event"
auth = "url"
authenticating_user = "svc"
url_key = "bench-url-key"

[[integrations]]
id = "alertmanager"
action = "transform"
auth = "url"
authenticating_user = "svc"
url_key = "bench-url-key"
script = "{script}"
{store}"#,
        data = dir.join("agent").display(),
        script = script.display(),
        // XMBENCH_AGENT_STORE adds `[store]` keys, to measure a setting (e.g.
        // `group_commit_wait_us = 200`).
        store = std::env::var("XMBENCH_AGENT_STORE")
            .map(|keys| format!("\n[store]\n{keys}\n"))
            .unwrap_or_default(),
    )
}

/// Start `exe args` and wait for its `listening on ADDR` line on stderr.
fn spawn_listening(exe: &PathBuf, args: &[&str]) -> anyhow::Result<(Child, SocketAddr)> {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(exe)
        .args(args)
        // The agent logs as an operator would run it (INFO, one access line per request);
        // XMBENCH_AGENT_LOG sets another filter, e.g. to measure a silenced access log.
        .env(
            "RUST_LOG",
            std::env::var("XMBENCH_AGENT_LOG")
                .unwrap_or_else(|_| "warn,xmagent=info,agent=info".to_owned()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().context("stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on ").nth(1) {
                if let (Some(sender), Ok(addr)) = (tx.take(), rest.trim().parse::<SocketAddr>()) {
                    let _ = sender.send(addr);
                }
            } else if line.contains("ERROR") {
                eprintln!("{line}");
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(addr) => Ok((child, addr)),
        Err(_) => {
            let _ = child.kill();
            bail!("{} {args:?} did not start listening", exe.display())
        }
    }
}

struct Run {
    accepted_ids: Vec<String>,
    refused: u64,
    latencies_us: Vec<u64>,
    elapsed: Duration,
}

impl Run {
    fn rps(&self) -> f64 {
        self.accepted_ids.len() as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let index = ((p / 100.0) * (self.latencies_us.len() - 1) as f64).round() as usize;
        (self.latencies_us[index] as f64 / 10.0).round() / 100.0
    }
}

/// `connections` keep-alive connections posting `body` to `path` for `duration`.
async fn drive(
    addr: SocketAddr,
    path: &str,
    body: &str,
    connections: usize,
    duration: Duration,
) -> Run {
    let stop = Arc::new(AtomicBool::new(false));
    let body = Bytes::from(body.to_owned());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (stop, body, path) = (stop.clone(), body.clone(), path.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            let mut latencies = Vec::new();
            let mut refused = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
                    break;
                };
                let _ = stream.set_nodelay(true);
                let Ok((mut sender, connection)) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
                else {
                    break;
                };
                tokio::spawn(connection);
                while !stop.load(Ordering::Relaxed) {
                    if sender.ready().await.is_err() {
                        break;
                    }
                    let request = Request::post(path.as_str())
                        .header("host", addr.to_string())
                        .header("content-type", "application/json")
                        .body(Full::new(body.clone()))
                        .expect("static request");
                    let sent = Instant::now();
                    let Ok(response) = sender.send_request(request).await else {
                        break;
                    };
                    let status = response.status().as_u16();
                    let Ok(bytes) = response.into_body().collect().await.map(|b| b.to_bytes())
                    else {
                        break;
                    };
                    latencies.push(sent.elapsed().as_micros() as u64);
                    if status == 202 {
                        let id = serde_json::from_slice::<serde_json::Value>(&bytes)
                            .ok()
                            .and_then(|v| v["requestId"].as_str().map(str::to_owned))
                            .unwrap_or_default();
                        ids.push(id);
                    } else {
                        refused += 1;
                    }
                }
            }
            (ids, latencies, refused)
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut run = Run {
        accepted_ids: Vec::new(),
        refused: 0,
        latencies_us: Vec::new(),
        elapsed: started.elapsed(),
    };
    for task in tasks {
        if let Ok((ids, latencies, refused)) = task.await {
            run.accepted_ids.extend(ids);
            run.latencies_us.extend(latencies);
            run.refused += refused;
        }
    }
    run.elapsed = started.elapsed();
    run.latencies_us.sort_unstable();
    run
}

/// What the central stored for the run.
struct Delivered {
    /// Accepted requests with at least one event.
    requests: usize,
    /// Events in the central's store.
    events: usize,
}

/// Wait until the central counts as many created events as requests were accepted; returns
/// how long that took after the load ended (how far delivery lagged behind acceptance).
/// The agent's group commits over the run, from its `/metrics`: how many flushes and how long
/// one took, which says whether the load was bound by the disk's sync time or by the CPU.
#[derive(Default)]
struct Batching {
    flushes: f64,
    flush_seconds: f64,
}

impl Batching {
    fn flush_ms_mean(&self) -> f64 {
        if self.flushes > 0.0 {
            self.flush_seconds * 1000.0 / self.flushes
        } else {
            0.0
        }
    }
}

async fn store_batching(agent: SocketAddr) -> anyhow::Result<Batching> {
    let metrics = get_body(agent, "/metrics", "").await?;
    let metrics = String::from_utf8_lossy(&metrics);
    let value = |name: &str| {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|n| n.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Ok(Batching {
        flushes: value("xmagent_store_flushes_total"),
        flush_seconds: value("xmagent_store_flush_duration_seconds_sum"),
    })
}

async fn wait_created(
    central: SocketAddr,
    accepted: usize,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let auth = format!(
        "Basic {}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "admin:bench")
    );
    loop {
        let metrics = get_body(central, "/metrics", &auth).await?;
        let created = String::from_utf8_lossy(&metrics)
            .lines()
            .find_map(|line| line.strip_prefix("xmcentral_events_created_total "))
            .and_then(|n| n.trim().parse::<usize>().ok())
            .unwrap_or(0);
        if created >= accepted || started.elapsed() > timeout {
            return Ok(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Count, in the stopped central's own store, the events and the accepted requests they cover
/// (read in large pages: REST pages of 1000 would cost a scan of the store each).
async fn count_delivered(store_dir: PathBuf, accepted: &[String]) -> anyhow::Result<Delivered> {
    let accepted: HashSet<String> = accepted.iter().cloned().collect();
    tokio::task::spawn_blocking(move || {
        // sled's I/O threads can hold the file lock for a moment after the central stopped.
        let started = Instant::now();
        let store = loop {
            match central::store::Store::open(&store_dir) {
                Ok(store) => break store,
                Err(_) if started.elapsed() < Duration::from_secs(10) => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(error) => return Err(error.into()),
            }
        };
        let (mut requests, mut events) = (HashSet::new(), 0);
        loop {
            let page = store.query(&central::store::Query {
                offset: events,
                limit: 20_000,
                ..Default::default()
            })?;
            if page.events.is_empty() {
                break;
            }
            events += page.events.len();
            requests.extend(
                page.events
                    .iter()
                    .filter_map(|e| e["requestId"].as_str())
                    .filter(|id| accepted.contains(*id))
                    .map(str::to_owned),
            );
        }
        Ok(Delivered {
            requests: requests.len(),
            events,
        })
    })
    .await?
}

async fn get_body(addr: SocketAddr, path: &str, auth: &str) -> anyhow::Result<Bytes> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let mut request = Request::get(path).header("host", addr.to_string());
    if !auth.is_empty() {
        request = request.header("authorization", auth);
    }
    let request = request.body(Full::new(Bytes::new()))?;
    let response = sender.send_request(request).await?;
    Ok(response.into_body().collect().await?.to_bytes())
}

/// The machine's CPU time counters (all cores, in ticks): (steal, total). On a virtual machine
/// the hypervisor's steal time makes every figure of a run lower; the summary reports it.
fn cpu_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let counters: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|n| n.parse().ok())
        .collect();
    Some((*counters.get(7)?, counters.iter().take(8).sum()))
}

/// CPU time (user + system) a process used so far, in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// Peak resident set size (VmHWM) of a process, in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The baseline: a bare hyper server that answers every request 202 with a fresh requestId, on
/// a multi-threaded runtime like the agent's.
fn baseline_server() -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            eprintln!("listening on {}", listener.local_addr()?);
            loop {
                let (stream, _) = listener.accept().await?;
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        |request: Request<hyper::body::Incoming>| async move {
                            let _ = request.into_body().collect().await;
                            let body = json!({"requestId": uuid_like()}).to_string();
                            Ok::<_, std::convert::Infallible>(
                                hyper::Response::builder()
                                    .status(202)
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(body)))
                                    .expect("static response"),
                            )
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        })
}

/// A random id of the same size as a UUID, so both servers send equal-sized answers.
fn uuid_like() -> String {
    use std::sync::atomic::AtomicU64;
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "00000000-0000-4000-8000-{:012x}",
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}
