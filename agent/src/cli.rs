//! The `xmagent` command line: parse, dispatch, map outcomes to exit codes.
//!
//! Exit codes follow sysexits: 0 ok, 64 usage, 70 runtime failure, 78 bad configuration — so a
//! systemd unit can refuse to restart-loop on a broken config (`RestartPreventExitStatus=78`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use central::exit;
use central::telemetry::{self, LogFormat};
use clap::{Args, Parser, Subcommand};
use tokio::sync::watch;

use crate::config;

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
    #[arg(long, short, default_value = DEFAULT_CONFIG, env = "XMAGENT_CONFIG")]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (SIGTERM/SIGINT stop it gracefully, SIGHUP reloads the configuration).
    Run(ConfigArg),
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
    /// Show the activity stream of one integration, newest first.
    Activity {
        /// The integration id.
        integration: String,
        /// How many entries.
        #[arg(long, default_value_t = 20)]
        limit: usize,
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
    let cli = Cli::parse_from(args);
    telemetry::init(cli.log_format);
    match cli.command {
        Command::Run(args) => runtime_then(|| run_daemon(&args.config)),
        Command::Check(args) => check(&args.config),
        Command::Dev(args) => runtime_then(|| dev(&args.examples)),
        Command::Request { request_id, config } => query(
            &config.config,
            &format!("{}{request_id}", crate::ingress::REQUESTS_PREFIX),
        ),
        Command::Activity {
            integration,
            limit,
            config,
        } => query(
            &config.config,
            &format!("/api/xm/1/integrations/{integration}/logs?limit={limit}"),
        ),
        Command::DeadLetters(config) => query(&config.config, crate::ingress::DEAD_LETTERS_PATH),
        Command::HashPassword => hash_password(),
        Command::GenKey => {
            println!("{}", crate::auth::generate_key());
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

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        let code = if error.downcast_ref::<exit::ConfigError>().is_some() {
            exit::CONFIG
        } else {
            exit::SOFTWARE
        };
        Failure { code, error }
    }
}

fn runtime_then<F, Fut>(body: F) -> i32
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
        Err(Failure { code, error }) => {
            tracing::error!("{error:#}");
            eprintln!("xmagent: {error:#}");
            code
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

async fn run_daemon(path: &Path) -> Result<(), Failure> {
    use crate::notify::{self, Health};
    let loaded = load(path)?;
    let shutdown = stop_signal()?;
    let agent = crate::daemon::start(path, loaded, shutdown.clone()).await?;
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
                return result.context("agent task panicked")?.map_err(Failure::from);
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
    let agent = crate::daemon::start(&agent_path, agent_config, shutdown).await?;
    println!(
        "\nxmagent dev: central on http://{}, agent on http://{} (data in {})",
        central.addr,
        agent.addr,
        scratch.display()
    );
    println!("Try it:\n\n{}\n", curl_example(&agent_path, agent.addr));
    println!("Then look the event up at the central:\n  curl -s -u admin:admin-change-me 'http://{}/api/xm/1/events?requestId=REQUEST_ID'\n", central.addr);
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
    match crate::auth::hash_password(line.trim_end_matches(['\n', '\r'])) {
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
    let data_dir = match config::data_dir(config_path) {
        Ok(data_dir) => data_dir,
        Err(error) => {
            eprintln!("xmagent: {error}");
            return exit::CONFIG;
        }
    };
    let access = match crate::daemon::AdminAccess::read(&data_dir) {
        Ok(access) => access,
        Err(error) => {
            eprintln!("xmagent: {error:#}; is the agent running, and are you its user?");
            return exit::SOFTWARE;
        }
    };
    let result = runtime_then(|| async move {
        let (status, body) = crate::http_client::get(
            access.addr,
            path_and_query,
            Some(&access.token),
            Duration::from_secs(10),
        )
        .await
        .with_context(|| format!("cannot reach the agent at {}; is it running?", access.addr))?;
        match serde_json::from_slice::<serde_json::Value>(&body) {
            Ok(value) => println!(
                "{}",
                serde_json::to_string_pretty(&value).unwrap_or_default()
            ),
            Err(_) => println!("{}", String::from_utf8_lossy(&body)),
        }
        if status.is_success() {
            Ok(())
        } else {
            Err(Failure {
                code: 1,
                error: anyhow::anyhow!("the agent answered {status}"),
            })
        }
    });
    result
}
