//! `xmcentral`: the command line of the reference central. All logic lives in the library;
//! this file parses arguments, maps errors to exit codes and handles signals.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use server::exit;
use server::telemetry::{self, LogFormat};

#[derive(Parser)]
#[command(
    name = "xmcentral",
    version,
    about = "Reference xMatters-compatible central endpoint"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the central until SIGTERM or SIGINT.
    Run {
        /// The TOML configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// Log line format on stderr.
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Validate the configuration file and exit (78 when it is invalid).
    Check {
        /// The TOML configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Check { config } => match central::config::load(&config) {
            Ok(_) => {
                println!("config OK");
                0
            }
            Err(error) => {
                eprintln!("config error: {error}");
                exit::CONFIG
            }
        },
        Command::Run { config, log_format } => {
            let _logs = telemetry::init(log_format);
            match central::config::load(&config) {
                Err(error) => {
                    tracing::error!("config error: {error}");
                    exit::CONFIG
                }
                Ok(loaded) => match run(loaded, &config) {
                    Ok(()) => 0,
                    Err(error) => {
                        tracing::error!("xmcentral failed: {error:#}");
                        exit::SOFTWARE
                    }
                },
            }
        }
    };
    std::process::exit(code);
}

fn run(config: central::CentralConfig, path: &std::path::Path) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let running = central::start(config, shutdown).await?;
        wait_for_signal(&running, path).await?;
        tracing::info!("shutdown requested; draining connections");
        let _ = stop.send(true);
        running.task.await.context("the server task panicked")?;
        Ok(())
    })
}

/// Wait for SIGTERM or SIGINT. SIGHUP reloads the directory, flood control and notification
/// settings from `path` (other keys need a restart); a bad file is logged and the running
/// settings stay.
async fn wait_for_signal(
    running: &central::RunningCentral,
    path: &std::path::Path,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let mut hangup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    loop {
        tokio::select! {
            _ = terminate.recv() => return Ok(()),
            _ = interrupt.recv() => return Ok(()),
            _ = hangup.recv() => match central::config::load(path) {
                Ok(config) => {
                    running.notifier.reload(config.notifications);
                    running.agent_integrations.reload(config.hosted.as_ref());
                    tracing::info!("reloaded the directory, flood control and notification settings");
                }
                Err(error) => {
                    tracing::error!("config error, keeping the running settings: {error}");
                }
            },
        }
    }
}
