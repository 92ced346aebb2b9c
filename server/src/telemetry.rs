//! Logging set-up shared by both daemons: human-readable lines on stderr by default, one JSON
//! object per line with `--log-format json` for log shippers. When stderr is the journal
//! (`JOURNAL_STREAM` names it), text lines carry no timestamp (journald adds its own) and start
//! with a `<N>` syslog priority, so `journalctl -p warning` filters by level.
//!
//! Warnings and errors are written to stderr by the thread that logs them, so they are out before
//! the process can exit. INFO and more verbose lines (one access line per request on a busy
//! daemon) are handed to a writer thread that writes them in batches: a request thread never
//! waits for the pipe to journald. The two can interleave a few milliseconds out of order.
//!
//! It does not decide what is logged; the daemons do (never a secret or a whole body at INFO).

use std::fmt;
use std::io::BufWriter;

use clap::ValueEnum;
use tracing::{Event, Level, Subscriber};
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::writer::MakeWriterExt;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;
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

/// Keeps the log writer thread; dropping it writes out the lines still queued. Hold it until the
/// command returns.
#[must_use = "dropping the guard stops the log writer thread"]
pub struct LogGuard {
    _writer: Option<WorkerGuard>,
}

impl fmt::Debug for LogGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogGuard").finish_non_exhaustive()
    }
}

/// Install the global tracing subscriber. `RUST_LOG` overrides the default level (`info`).
/// Calling it twice is harmless (the second call is ignored and its guard holds nothing), which
/// lets `xmagent dev` start the embedded central without fighting over the subscriber.
pub fn init(format: LogFormat) -> LogGuard {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sled=warn,hyper=warn"));
    // Not lossy: a full queue (a flood of INFO lines) makes the logging thread wait, as a
    // direct write would, instead of dropping lines.
    let (batched, worker) = NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("log-writer")
        .finish(BufWriter::new(std::io::stderr()));
    let writer = std::io::stderr.with_max_level(Level::WARN).or_else(batched);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let installed = match format {
        LogFormat::Text if stderr_is_journal() => builder
            .with_ansi(false)
            .event_format(JournalLine)
            .try_init(),
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
    LogGuard {
        _writer: installed.is_ok().then_some(worker),
    }
}

/// True when stderr is the stream `JOURNAL_STREAM` (`DEVICE:INODE`) names: systemd set it up for
/// this process and nobody redirected stderr since.
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(named) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(stderr) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    named == format!("{}:{}", stderr.dev(), stderr.ino())
}

/// The syslog priority journald reads from a `<N>` line prefix.
fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// One journal line: `<priority>span fields: message fields`, no timestamp, no level word.
struct JournalLine;

impl<S, N> FormatEvent<S, N> for JournalLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "<{}>", priority(event.metadata().level()))?;
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                if let Some(fields) = extensions.get::<FormattedFields<N>>() {
                    if !fields.is_empty() {
                        write!(writer, "{fields}: ")?;
                    }
                }
            }
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_map_to_syslog_priorities() {
        assert_eq!(priority(&Level::ERROR), 3);
        assert_eq!(priority(&Level::WARN), 4);
        assert_eq!(priority(&Level::INFO), 6);
        assert_eq!(priority(&Level::DEBUG), 7);
    }

    #[test]
    fn a_journal_stream_that_is_not_stderr_is_ignored() {
        // The test harness's stderr is a pipe or a terminal, never inode 0 of device 0.
        std::env::set_var("JOURNAL_STREAM", "0:0");
        assert!(!stderr_is_journal());
        std::env::remove_var("JOURNAL_STREAM");
        assert!(!stderr_is_journal());
    }
}
