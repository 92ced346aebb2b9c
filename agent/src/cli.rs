//! The `xmagent` command line: parse, dispatch, map outcomes to exit codes.
//!
//! Exit codes follow sysexits: 0 ok, 64 usage, 70 runtime failure, 78 bad configuration — so a
//! systemd unit can refuse to restart-loop on a broken config (`RestartPreventExitStatus=78`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use server::exit;
use server::telemetry::{self, LogFormat};
use tokio::sync::watch;

use hyper::Method;

use crate::config;
use crate::ingress::admin;
use crate::store::{QueueState, Recovery};

mod render;

/// Default config path of the packaged agent.
const DEFAULT_CONFIG: &str = "/etc/xmagent/agent.toml";

#[derive(Parser)]
#[command(
    name = "xmagent",
    version,
    about = "xMatters-compatible on-premise integration agent"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct ConfigArg {
    /// The agent's configuration file.
    #[arg(long, short, default_value = DEFAULT_CONFIG, env = "XMAGENT_CONFIG", global = true)]
    config: PathBuf,
}

/// How the operator commands print their answer.
#[derive(Args)]
struct OutputArg {
    /// Print the agent's JSON answer (for tools) instead of readable text.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (SIGTERM/SIGINT stop it gracefully, SIGHUP reloads the configuration).
    Run {
        #[command(flatten)]
        config: ConfigArg,
        /// Start even when the store lost requests it had acknowledged (a truncated or damaged
        /// file): the loss is logged and the store goes on with what is left. Without it the
        /// agent refuses to start (exit 65) and names what is missing.
        #[arg(long)]
        accept_store_loss: bool,
    },
    /// Validate the configuration (including compiling every script) and exit.
    Check(ConfigArg),
    /// Try it out: an agent and a central in one process on loopback, with the examples.
    Dev(DevArgs),
    /// Show what happened to one request (ACCEPTED, QUEUED, DELIVERED with event ids, FAILED).
    Request {
        /// The requestId answered in the 202.
        request_id: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Show the activity stream of one integration, newest first (`--follow`: new entries as
    /// they come, oldest first, like `tail -f`).
    Activity {
        /// The integration id.
        integration: String,
        /// How many entries.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Keep printing new entries until interrupted.
        #[arg(long, short)]
        follow: bool,
        #[command(flatten)]
        output: OutputArg,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// The running agent at a glance: version, uptime, central connection, queue depth and
    /// oldest pending request, dead letters, last error, keys waiting for a restart.
    Status {
        #[command(flatten)]
        output: OutputArg,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Look into the queue and repair it.
    Queue {
        #[command(subcommand)]
        action: QueueAction,
        #[command(flatten)]
        output: OutputArg,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// List events the central refused for good.
    DeadLetters(ConfigArg),
    /// Hash a password (read from stdin) for `password_hash` / `secret_hash`.
    HashPassword,
    /// Generate a random key (for url_key, API keys and tokens).
    GenKey,
    /// Run a script against a request file, without the daemon (for script authors).
    TestScript(scripts::dry_run::TestScriptArgs),
}

#[derive(Subcommand)]
enum QueueAction {
    /// List pending requests, events waiting for the central and dead letters.
    List {
        /// Only entries in this state.
        #[arg(long, value_enum)]
        state: Option<QueueState>,
        /// Only entries of this integration.
        #[arg(long)]
        integration: Option<String>,
        /// At most this many entries.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Send dead letters to the central again.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["id", "all_dead"])))]
    Retry {
        /// The dead letter's id (from `queue list --state dead`).
        id: Option<u64>,
        /// Every dead letter.
        #[arg(long)]
        all_dead: bool,
    },
    /// Delete every dead letter for good (pending entries are never purged).
    Purge {
        /// Purge the dead letters (the only thing that can be purged).
        #[arg(long, required = true)]
        dead: bool,
        /// Confirm: without it nothing is deleted.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Args)]
struct DevArgs {
    /// Directory holding agent.toml, central.toml and the example integrations.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples"))]
    examples: PathBuf,
}

/// Parse the process's command line, run the command, return the process exit code.
pub fn main() -> i32 {
    main_from(std::env::args())
}

/// Run the command line `args` (the first item is the program name); the benchmark uses this to
/// run the real agent in a child process of its own binary.
pub fn main_from(args: impl IntoIterator<Item = String>) -> i32 {
    // A usage error exits 64 (EX_USAGE) like the rest of this program's usage errors, not
    // clap's 2; `--help` and `--version` print and exit 0.
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return if error.use_stderr() { exit::USAGE } else { 0 };
        }
    };
    let _logs = telemetry::init(cli.log_format);
    match cli.command {
        Command::Run {
            config,
            accept_store_loss,
        } => {
            let recovery = if accept_store_loss {
                Recovery::AcceptLoss
            } else {
                Recovery::Refuse
            };
            runtime_then(Audience::Log, || run_daemon(&config.config, recovery))
        }
        Command::Check(args) => check(&args.config),
        Command::Dev(args) => runtime_then(Audience::Log, || dev(&args.examples)),
        Command::Request { request_id, config } => query(
            &config.config,
            &format!("{}{request_id}", crate::ingress::REQUESTS_PREFIX),
        ),
        Command::Activity {
            integration,
            limit,
            follow,
            output,
            config,
        } => activity(&config.config, &integration, limit, follow, output.json),
        Command::Status { output, config } => operate(
            &config.config,
            Method::GET,
            admin::STATUS_PATH.to_owned(),
            output.json,
            render::status,
        ),
        Command::Queue {
            action,
            output,
            config,
        } => queue(&config.config, action, output.json),
        Command::DeadLetters(config) => query(&config.config, crate::ingress::DEAD_LETTERS_PATH),
        Command::HashPassword => hash_password(),
        Command::GenKey => {
            println!("{}", integration::auth::generate_key());
            0
        }
        Command::TestScript(args) => scripts::dry_run::main(args),
    }
}

/// A failure that should end the process with `code`.
struct Failure {
    code: i32,
    error: anyhow::Error,
}

/// Who reads a command's failure, so it is told once, in the form that reader takes.
#[derive(Clone, Copy)]
enum Audience {
    /// A daemon (`run`, `dev`): its log stream, which is the journal (with a priority) or the
    /// JSON lines a shipper parses; a plain extra line there would be a duplicate or break the
    /// JSON.
    Log,
    /// A one-shot operator command: one plain `xmagent: ...` line on stderr, no log timestamp.
    Person,
}

impl Failure {
    fn report(&self, audience: Audience) {
        match audience {
            Audience::Log => tracing::error!("{:#}", self.error),
            Audience::Person => eprintln!("xmagent: {:#}", self.error),
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        let code = if error.downcast_ref::<exit::ConfigError>().is_some() {
            exit::CONFIG
        } else if error.downcast_ref::<crate::daemon::StoreBroken>().is_some() {
            exit::TEMPFAIL
        } else if let Some(crate::store::StoreError::Damaged { .. }) = error.downcast_ref() {
            exit::DATA
        } else {
            exit::SOFTWARE
        };
        Failure { code, error }
    }
}

fn runtime_then<F, Fut>(audience: Audience, body: F) -> i32
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<(), Failure>>,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("xmagent: cannot start the runtime: {error}");
            return exit::SOFTWARE;
        }
    };
    match runtime.block_on(body()) {
        Ok(()) => 0,
        Err(failure) => {
            failure.report(audience);
            failure.code
        }
    }
}

fn load(path: &Path) -> Result<config::Loaded, Failure> {
    config::load(path).map_err(|e| Failure {
        code: exit::CONFIG,
        error: e.into(),
    })
}

fn check(path: &Path) -> i32 {
    match config::load(path) {
        Ok(loaded) => {
            println!(
                "config OK: {} integration(s), listening on {}",
                loaded.integrations.len(),
                loaded.listen
            );
            0
        }
        Err(error) => {
            eprintln!("xmagent: {error}");
            exit::CONFIG
        }
    }
}

/// A watch channel that turns true on SIGTERM or SIGINT.
fn stop_signal() -> anyhow::Result<watch::Receiver<bool>> {
    use tokio::signal::unix::{signal, SignalKind};
    let (tx, rx) = watch::channel(false);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping"),
            _ = int.recv() => tracing::info!("SIGINT: stopping"),
        }
        let _ = tx.send(true);
    });
    Ok(rx)
}

async fn run_daemon(path: &Path, recovery: Recovery) -> Result<(), Failure> {
    use crate::notify::{self, Health};
    let loaded = load(path)?;
    let shutdown = stop_signal()?;
    let agent = crate::daemon::start(path, loaded, shutdown.clone(), recovery).await?;
    // Store open, listener bound, scripts compiled: ready.
    let shared = agent.handle.shared();
    notify::ready(&shared.status_line());
    tokio::spawn(notify::supervise(shared.clone(), shutdown));
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot listen for SIGHUP")?;
    let mut task = agent.task;
    loop {
        tokio::select! {
            result = &mut task => {
                notify::stopping();
                let result = result.context("agent task panicked")?.map_err(Failure::from);
                if let Err(failure) = &result {
                    if failure.code == exit::TEMPFAIL {
                        // The store failed: sled's drop would wait forever for a flush its
                        // failed log can never complete, so leave before anything drops it.
                        // Nothing is lost: every 202 was synced, and the refused writes are
                        // recorded in the seal.
                        failure.report(Audience::Log);
                        std::process::exit(exit::TEMPFAIL);
                    }
                }
                return result;
            }
            _ = hangup.recv() => {
                notify::reloading();
                if let Err(error) = agent.handle.reload().await {
                    tracing::error!("reload refused, the previous configuration stays active: {error}");
                }
                notify::ready(&shared.status_line());
            }
        }
    }
}

async fn dev(examples: &Path) -> Result<(), Failure> {
    let central_path = examples.join("central.toml");
    let agent_path = examples.join("agent.toml");
    let scratch = std::env::temp_dir().join(format!("xmagent-dev-{}", std::process::id()));
    let mut central_config = central::config::load(&central_path).map_err(|e| Failure {
        code: exit::CONFIG,
        error: e.into(),
    })?;
    central_config.data_dir = scratch.join("central");
    let mut agent_config = load(&agent_path)?;
    agent_config.data_dir = scratch.join("agent");
    let shutdown = stop_signal()?;
    let central = central::start(central_config, shutdown.clone()).await?;
    let agent = crate::daemon::start(&agent_path, agent_config, shutdown, Recovery::Refuse).await?;
    println!(
        "\nxmagent dev: central on http://{}, agent on http://{} (data in {})",
        central.addr,
        agent.addr,
        scratch.display()
    );
    println!("Try it:\n\n{}\n", curl_example(&agent_path, agent.addr));
    println!("Then look the event up at the central:\n  curl -s -u admin:admin-change-me 'http://{}/api/xm/1/events?requestId=REQUEST_ID'\n", central.addr);
    println!(
        "Or open the web console: http://{}/console (admin / admin-change-me)\n",
        central.addr
    );
    println!("Stop with Ctrl-C.");
    agent.task.await.context("agent task panicked")??;
    central.task.await.context("central task panicked")?;
    Ok(())
}

/// A ready-to-paste curl command for the first example integration with a URL key.
fn curl_example(agent_toml: &Path, addr: std::net::SocketAddr) -> String {
    let text = std::fs::read_to_string(agent_toml).unwrap_or_default();
    let parsed: toml::Value =
        toml::from_str(&text).unwrap_or(toml::Value::Table(Default::default()));
    let integration = parsed
        .get("integrations")
        .and_then(|list| list.as_array())
        .and_then(|list| list.iter().find(|i| i.get("url_key").is_some()));
    match integration {
        Some(integration) => format!(
            "  curl -s -X POST 'http://{addr}/api/integration/1/functions/{}/triggers?apiKey={}' \\\n    -H 'Content-Type: application/json' \\\n    -d '{{\"properties\": {{\"summary\": \"Disk full on db1\", \"severity\": \"critical\"}}}}'",
            integration.get("id").and_then(|v| v.as_str()).unwrap_or("?"),
            integration.get("url_key").and_then(|v| v.as_str()).unwrap_or("?"),
        ),
        None => format!("  (no integration with a url_key in {})", agent_toml.display()),
    }
}

fn hash_password() -> i32 {
    let mut line = String::new();
    if std::io::stdin().read_line(&mut line).is_err()
        || line.trim_end_matches(['\n', '\r']).is_empty()
    {
        eprintln!("xmagent: give the password on stdin, e.g. `read -s P; echo \"$P\" | xmagent hash-password`");
        return exit::USAGE;
    }
    match integration::auth::hash_password(line.trim_end_matches(['\n', '\r'])) {
        Ok(hash) => {
            println!("{hash}");
            0
        }
        Err(error) => {
            eprintln!("xmagent: {error}");
            exit::SOFTWARE
        }
    }
}

/// Ask the running agent (admin endpoints, authorized by the admin token in its data directory)
/// and print the JSON answer.
fn query(config_path: &Path, path_and_query: &str) -> i32 {
    operate(
        config_path,
        Method::GET,
        path_and_query.to_owned(),
        true,
        |_| String::new(),
    )
}

/// Call an admin endpoint and print the answer: pretty JSON with `json`, else `text(answer)`.
fn operate(
    config_path: &Path,
    method: Method,
    path_and_query: String,
    json: bool,
    text: fn(&serde_json::Value) -> String,
) -> i32 {
    let access = match admin_access(config_path) {
        Ok(access) => access,
        Err(code) => return code,
    };
    runtime_then(Audience::Person, || async move {
        let answer = admin_call(&access, method, &path_and_query).await?;
        print_answer(&answer, json, text);
        Ok(())
    })
}

fn print_answer(answer: &serde_json::Value, json: bool, text: fn(&serde_json::Value) -> String) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(answer).unwrap_or_default()
        );
    } else {
        print!("{}", text(answer));
    }
}

fn admin_access(config_path: &Path) -> Result<crate::daemon::AdminAccess, i32> {
    let data_dir = config::data_dir(config_path).map_err(|error| {
        eprintln!("xmagent: {error}");
        exit::CONFIG
    })?;
    crate::daemon::AdminAccess::read(&data_dir).map_err(|error| {
        eprintln!("xmagent: {error:#}; is the agent running, and are you its user?");
        exit::SOFTWARE
    })
}

/// One admin call; a non-2xx answer becomes a failure (exit 1) carrying the agent's message.
async fn admin_call(
    access: &crate::daemon::AdminAccess,
    method: Method,
    path_and_query: &str,
) -> Result<serde_json::Value, Failure> {
    let (status, body) = crate::http_client::send(
        access.addr,
        method,
        path_and_query,
        Some(&access.token),
        Duration::from_secs(60),
    )
    .await
    .with_context(|| format!("cannot reach the agent at {}; is it running?", access.addr))?;
    let answer = serde_json::from_slice::<serde_json::Value>(&body)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&body).into()));
    if status.is_success() {
        return Ok(answer);
    }
    let message = answer["message"]
        .as_str()
        .or(answer.as_str())
        .unwrap_or("")
        .to_owned();
    Err(Failure {
        code: 1,
        error: anyhow::anyhow!("the agent answered {status}: {message}"),
    })
}

fn queue(config_path: &Path, action: QueueAction, json: bool) -> i32 {
    let (method, path, text): (_, _, fn(&serde_json::Value) -> String) = match action {
        QueueAction::List {
            state,
            integration,
            limit,
        } => {
            let mut query = form_urlencoded::Serializer::new(String::new());
            query.append_pair("limit", &limit.to_string());
            if let Some(state) = state {
                let name = clap::ValueEnum::to_possible_value(&state)
                    .map(|v| v.get_name().to_owned())
                    .unwrap_or_default();
                query.append_pair("state", &name);
            }
            if let Some(integration) = &integration {
                query.append_pair("integration", integration);
            }
            (
                Method::GET,
                format!("{}?{}", admin::QUEUE_PATH, query.finish()),
                render::queue,
            )
        }
        QueueAction::Retry { id, all_dead } => {
            let query = match (id, all_dead) {
                (_, true) => "allDead=true".to_owned(),
                (Some(id), false) => format!("id={id}"),
                (None, false) => {
                    eprintln!("xmagent: give a dead letter's id or --all-dead");
                    return exit::USAGE;
                }
            };
            (
                Method::POST,
                format!("{}?{query}", admin::RETRY_PATH),
                render::retried,
            )
        }
        QueueAction::Purge { dead, yes } => {
            if !(dead && yes) {
                eprintln!(
                    "xmagent: purging deletes every dead letter for good; add --yes to confirm"
                );
                return exit::USAGE;
            }
            (
                Method::POST,
                format!("{}?dead=true&confirm=yes", admin::PURGE_PATH),
                render::purged,
            )
        }
    };
    operate(config_path, method, path, json, text)
}

/// Characters an id keeps as they are in a URL path: the RFC 3986 unreserved ones. The agent
/// matches the path as sent, so `flow-alert` must not become `flow%2Dalert`.
const PATH_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `id` as one URL path segment.
fn path_segment(id: &str) -> String {
    percent_encoding::utf8_percent_encode(id, PATH_SEGMENT).to_string()
}

/// `xmagent activity`: the newest `limit` entries; with `follow`, then every new entry as it
/// arrives (polled every second), oldest first, and an entry again when its status changes
/// (QUEUED → DELIVERED), until interrupted.
fn activity(config_path: &Path, integration: &str, limit: usize, follow: bool, json: bool) -> i32 {
    let access = match admin_access(config_path) {
        Ok(access) => access,
        Err(code) => return code,
    };
    let integration = path_segment(integration);
    runtime_then(Audience::Person, || async move {
        let path = format!("/api/xm/1/integrations/{integration}/logs?limit={limit}");
        let first = admin_call(&access, Method::GET, &path).await?;
        if !follow {
            print_answer(&first, json, render::activity);
            return Ok(());
        }
        // Poll with the largest page, so a busy second does not skip entries; an entry is shown
        // when the previous page did not hold it with the same status (pages only ever lose
        // their oldest entries, and an entry's status is where its request is now).
        let poll = format!("/api/xm/1/integrations/{integration}/logs?limit=1000");
        let mut previous = std::collections::HashSet::new();
        let mut answer = first;
        loop {
            let entries = answer["data"].as_array().cloned().unwrap_or_default();
            let seen = |entry: &serde_json::Value| {
                (entry["requestId"].to_string(), entry["status"].to_string())
            };
            for entry in entries
                .iter()
                .rev()
                .filter(|e| !previous.contains(&seen(e)))
            {
                if json {
                    println!("{entry}");
                } else {
                    print!("{}", render::activity_line(entry));
                }
            }
            use std::io::Write;
            let _ = std::io::stdout().flush();
            previous = entries.iter().map(seen).collect();
            tokio::time::sleep(Duration::from_secs(1)).await;
            answer = admin_call(&access, Method::GET, &poll).await?;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::path_segment;

    #[test]
    fn ids_keep_unreserved_characters_in_the_path() {
        assert_eq!(path_segment("flow-alert.v2_x~y"), "flow-alert.v2_x~y");
        assert_eq!(path_segment("a b/c?"), "a%20b%2Fc%3F");
    }
}
