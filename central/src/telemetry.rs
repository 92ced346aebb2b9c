//! Logging set-up shared by both daemons: human-readable lines on stderr by default (journald
//! captures them), one JSON object per line with `--log-format json` for log shippers.

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

/// The `--log-format` choices.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Compact human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, with span fields (`request_id`, `integration`) flattened in.
    Json,
}

/// Install the global tracing subscriber. `RUST_LOG` overrides the default level (`info`).
/// Calling it twice is harmless (the second call is ignored), which lets `xmagent dev` start the
/// embedded central without fighting over the subscriber.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sled=warn,hyper=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => {
            // Colours only for a person at a terminal, never into journald or a file.
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            builder.with_target(false).with_ansi(ansi).try_init()
        }
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
}
