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
    /// Copy, export and import the integrations of the configuration file (restart to serve).
    Integration {
        #[command(subcommand)]
        command: IntegrationCommand,
    },
}

/// `xmcentral integration ...` (see `central::manage`).
#[derive(Subcommand)]
enum IntegrationCommand {
    /// Add a copy of integration SRC under id NEW; prints the copy's new URL key once.
    Copy {
        /// The id of the integration to copy.
        src: String,
        /// The id of the copy.
        new: String,
        /// The TOML configuration file (edited in place, comments kept).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Write a JSON bundle of a communication plan's integrations (no secrets) on stdout.
    Export {
        /// The communication plan (the integrations' `plan` key).
        #[arg(long)]
        plan: String,
        /// The TOML configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Add a bundle's integrations with URL authentication; prints each new URL key once.
    Import {
        /// The JSON bundle written by `export`.
        bundle: PathBuf,
        /// The TOML configuration file (edited in place, comments kept).
        #[arg(long, short)]
        config: PathBuf,
        /// Prefix the imported ids with this (to import beside integrations with the same ids).
        #[arg(long)]
        rename_prefix: Option<String>,
        /// The user the imported integrations' URL keys act as (default: the bundle's).
        #[arg(long)]
        authenticating_user: Option<String>,
    },
}

fn main() {
    // Usage errors exit 64 (EX_USAGE) like every other usage error of this program.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            std::process::exit(if error.use_stderr() { exit::USAGE } else { 0 });
        }
    };
    let code = match cli.command {
        Command::Integration { command } => manage(command),
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

/// Run one `xmcentral integration` command: results on stdout, errors on stderr.
fn manage(command: IntegrationCommand) -> i32 {
    use central::manage::{self, ImportOptions, NewKey};
    let print_keys = |keys: &[NewKey]| {
        for NewKey { integration, key } in keys {
            println!("new URL key of {integration} (shown only once): {key}");
        }
    };
    let result = match command {
        IntegrationCommand::Copy { src, new, config } => {
            manage::copy(&config, &src, &new).map(|key| {
                println!(
                    "added integration {new} to {} (restart xmcentral to serve it)",
                    config.display()
                );
                print_keys(key.as_slice());
            })
        }
        IntegrationCommand::Export { plan, config } => {
            manage::export(&config, &plan).map(|bundle| {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&bundle).unwrap_or_default()
                );
            })
        }
        IntegrationCommand::Import {
            bundle,
            config,
            rename_prefix,
            authenticating_user,
        } => {
            let options = ImportOptions {
                rename_prefix,
                authenticating_user,
            };
            manage::import(&config, &bundle, &options).map(|keys| {
                println!("imported {} integration(s) into {} with URL authentication (restart xmcentral to serve them)", keys.len(), config.display());
                print_keys(&keys);
            })
        }
    };
    match result {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("error: {error}");
            error.exit_code()
        }
    }
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
