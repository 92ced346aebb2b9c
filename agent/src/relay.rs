//! The relay: the agent's one persistent, authenticated websocket to the central.
//!
//! It drains the store's outbox in `seq` order, keeping a window of `event.create` frames in
//! flight, and removes an entry only when the central acknowledged it (DESIGN §3 invariant 2).
//! On any disconnect it reconnects with capped, jittered exponential back-off and starts again
//! from the oldest unacknowledged entry; the central dedupes on `(agent, requestId, index)`, so a
//! resend is harmless. Liveness is checked with websocket pings: a connection on which nothing
//! arrives for `dead_after` is dropped.
//!
//! What this module does NOT do: it never decides what goes into the outbox, never retries a
//! refusal the central called final (that goes to the dead-letter tree through
//! [`Outbox::rejected`]), and never logs the agent token.
//!
//! Assumption about the outbox: entries become visible to [`Outbox::pending_after`] in ascending
//! `seq` order (an entry with a smaller `seq` never appears after a larger one was returned).
//! Within one connection the relay only asks for entries after the last one it sent.
//!
//! Beside events, the relay tells the central about the agent: its software version in `hello`,
//! and its queue and integrations in `status` frames (from a [`StatusSource`]) right after
//! `welcome`, every [`STATUS_EVERY`] and soon after the queue or the integrations in force
//! change (at most one per [`STATUS_MIN_GAP`]). Frame types beyond `event.create` go only to a central whose `welcome`
//! lists them in `accepts` (an older central closes the socket on a frame type it does not know).
//! Reading the figures costs a few store reads per status, never work per request.

mod dial;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt as _, SinkExt as _, StreamExt as _};
use http::HeaderValue;
use protocol::{
    AgentFrame, AgentStatus, CentralFrame, ACCEPTS_ACTIVITY, ACCEPTS_STATUS, PROTOCOL_VERSION,
};
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use server::exit::ConfigError;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

pub use dial::Proxy;
use dial::{DialError, DialParams, Target, WsStream};

use crate::store::Outbox;

/// Large enough that the central's per-batch flush, not the window, paces a busy agent.
const DEFAULT_WINDOW: usize = 512;
/// Most frames read in one go before their acks are recorded together.
const ACK_BATCH: usize = 256;
const MAX_WINDOW: usize = 4096;
const DEFAULT_PING_INTERVAL_SECS: u64 = 15;
const DEFAULT_DEAD_AFTER_SECS: u64 = 45;
const DEFAULT_BACKOFF_INITIAL_MS: u64 = 250;
const DEFAULT_BACKOFF_MAX_MS: u64 = 30_000;
const DEFAULT_ACK_TIMEOUT_SECS: u64 = 60;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// How much of an unparsable frame is quoted in a log line.
const LOG_SNIPPET: usize = 200;
/// How often a connected agent reports its status when nothing changes.
pub const STATUS_EVERY: Duration = Duration::from_secs(10);
/// The least time between two status reports, however busy the queue.
pub const STATUS_MIN_GAP: Duration = Duration::from_secs(2);

/// The `[central]` section of the agent configuration, exactly as written in the file.
///
/// Kept separate from [`RelaySettings`] so the file format (optional keys, seconds, relative paths)
/// does not leak into the running relay, which only sees checked, resolved values.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// `wss://host[:port]/api/agent/1/connect` (a `ws://` URL only for a loopback central). A URL
    /// without a path gets [`protocol::CONNECT_PATH`].
    pub url: String,
    /// The agent token inline. Prefer `token_file`, which keeps the secret out of the config.
    #[serde(default)]
    pub token: Option<String>,
    /// File holding the agent token (surrounding whitespace ignored), relative to the config
    /// directory. Re-read on every connection attempt, so fixing it needs no restart.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Extra PEM file of CA certificates trusted in addition to the system store (`wss://`).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// `http://[user:password@]host:port` of an HTTP CONNECT proxy.
    #[serde(default)]
    pub proxy: Option<String>,
    /// How many `event.create` frames may await an answer at once (default 512).
    #[serde(default)]
    pub window: Option<usize>,
    /// Seconds between websocket pings (default 15).
    #[serde(default)]
    pub ping_interval_secs: Option<u64>,
    /// Drop the connection when nothing arrived for this many seconds (default 45).
    #[serde(default)]
    pub dead_after_secs: Option<u64>,
    /// First reconnect delay in milliseconds (default 250).
    #[serde(default)]
    pub backoff_initial_ms: Option<u64>,
    /// Cap of the reconnect delay in milliseconds (default 30000).
    #[serde(default)]
    pub backoff_max_ms: Option<u64>,
    /// Reconnect when a sent entry got no answer for this many seconds (default 60), so a central
    /// that silently loses a frame cannot pin the window forever.
    #[serde(default)]
    pub ack_timeout_secs: Option<u64>,
}

impl fmt::Debug for RelayConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayConfig")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_file", &self.token_file)
            .field("ca_file", &self.ca_file)
            .field("proxy", &self.proxy.as_ref().map(|_| "<set>"))
            .field("window", &self.window)
            .field("ping_interval_secs", &self.ping_interval_secs)
            .field("dead_after_secs", &self.dead_after_secs)
            .field("backoff_initial_ms", &self.backoff_initial_ms)
            .field("backoff_max_ms", &self.backoff_max_ms)
            .field("ack_timeout_secs", &self.ack_timeout_secs)
            .finish()
    }
}

impl RelayConfig {
    /// Check the section and resolve it into [`RelaySettings`].
    ///
    /// Done once at start-up (and by `config check`) so a bad URL, an unreadable token file or a
    /// broken CA file stops the agent with one message naming the file, the key and the reason,
    /// instead of surfacing later as an endless reconnect loop.
    pub fn validate(
        &self,
        config_file: &Path,
        base_dir: &Path,
    ) -> Result<RelaySettings, ConfigError> {
        let err = |key: &str, reason: String| {
            ConfigError::new(config_file.display(), format!("central.{key}"), reason)
        };

        let target = Target::parse(&self.url).map_err(|r| err("url", r))?;
        let token = match (&self.token, &self.token_file) {
            (Some(_), Some(_)) => {
                return Err(err(
                    "token",
                    "set either token or token_file, not both".into(),
                ))
            }
            (None, None) => {
                return Err(err(
                    "token_file",
                    "missing: the central needs the agent token (set token_file, or token)".into(),
                ))
            }
            (Some(inline), None) => Token::inline(inline).map_err(|r| err("token", r))?,
            (None, Some(file)) => {
                Token::from_file(base_dir.join(file)).map_err(|r| err("token_file", r))?
            }
        };
        let tls = if target.tls {
            let ca_file = self.ca_file.as_ref().map(|f| base_dir.join(f));
            Some(
                crate::tls::client_config(ca_file.as_deref())
                    .map_err(|e| err("ca_file", e.to_string()))?,
            )
        } else {
            None
        };
        let proxy = match &self.proxy {
            Some(url) => Some(Proxy::parse(url).map_err(|r| err("proxy", r))?),
            None => None,
        };

        let window = self.window.unwrap_or(DEFAULT_WINDOW);
        if !(1..=MAX_WINDOW).contains(&window) {
            return Err(err(
                "window",
                format!("must be between 1 and {MAX_WINDOW}, not {window}"),
            ));
        }
        let ping = self
            .ping_interval_secs
            .unwrap_or(DEFAULT_PING_INTERVAL_SECS);
        if ping == 0 {
            return Err(err("ping_interval_secs", "must be at least 1".into()));
        }
        let dead = self.dead_after_secs.unwrap_or(DEFAULT_DEAD_AFTER_SECS);
        if dead <= ping {
            return Err(err(
                "dead_after_secs",
                format!("must be greater than ping_interval_secs ({ping}), not {dead}"),
            ));
        }
        let initial = self
            .backoff_initial_ms
            .unwrap_or(DEFAULT_BACKOFF_INITIAL_MS);
        if initial == 0 {
            return Err(err("backoff_initial_ms", "must be at least 1".into()));
        }
        let max = self.backoff_max_ms.unwrap_or(DEFAULT_BACKOFF_MAX_MS);
        if max < initial {
            return Err(err(
                "backoff_max_ms",
                format!("must be at least backoff_initial_ms ({initial}), not {max}"),
            ));
        }
        let ack_timeout = self.ack_timeout_secs.unwrap_or(DEFAULT_ACK_TIMEOUT_SECS);
        if ack_timeout == 0 {
            return Err(err("ack_timeout_secs", "must be at least 1".into()));
        }

        Ok(RelaySettings {
            target,
            token,
            tls,
            proxy,
            window,
            ping_interval: Duration::from_secs(ping),
            dead_after: Duration::from_secs(dead),
            backoff_initial: Duration::from_millis(initial),
            backoff_max: Duration::from_millis(max),
            ack_timeout: Duration::from_secs(ack_timeout),
            connect_timeout: CONNECT_TIMEOUT,
            welcome_timeout: WELCOME_TIMEOUT,
            shutdown_grace: SHUTDOWN_GRACE,
            ack_latency: None,
            integrations: None,
            activity: None,
            status_source: None,
            heartbeat: Arc::default(),
        })
    }
}

/// The agent token and where it came from. The value never appears in `Debug` output or logs.
#[derive(Clone)]
struct Token {
    value: String,
    file: Option<PathBuf>,
}

impl Token {
    fn inline(value: &str) -> Result<Self, String> {
        Ok(Self {
            value: check_token(value)?,
            file: None,
        })
    }

    fn from_file(path: PathBuf) -> Result<Self, String> {
        let value = read_token_file(&path)?;
        Ok(Self {
            value,
            file: Some(path),
        })
    }

    /// The `Authorization` header for the next attempt. A token file is re-read each time so an
    /// operator who fixes it after a 401 needs no restart; if it became unreadable, the last good
    /// token is used and the problem is logged.
    fn authorization(&mut self) -> HeaderValue {
        if let Some(path) = &self.file {
            match read_token_file(path) {
                Ok(value) if value != self.value => {
                    tracing::info!(file = %path.display(), "agent token file changed; using the new token");
                    self.value = value;
                }
                Ok(_) => {}
                Err(reason) => {
                    tracing::warn!(%reason, "cannot re-read the agent token file; using the last good token")
                }
            }
        }
        // check_token guarantees visible ASCII, which is always a valid header value.
        let mut value = HeaderValue::from_str(&format!("Bearer {}", self.value))
            .unwrap_or_else(|_| HeaderValue::from_static("Bearer invalid"));
        value.set_sensitive(true);
        value
    }
}

fn read_token_file(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    check_token(&text).map_err(|r| format!("{}: {r}", path.display()))
}

/// Trim and check a token; the reason never quotes the token itself.
fn check_token(raw: &str) -> Result<String, String> {
    let token = raw.trim();
    if token.is_empty() {
        return Err("the agent token is empty".into());
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the agent token must be printable ASCII without spaces".into());
    }
    Ok(token.to_string())
}

/// The checked, resolved relay configuration handed to [`run`]. Built only by
/// [`RelayConfig::validate`], so the relay never has to re-check anything at run time.
#[derive(Clone)]
pub struct RelaySettings {
    target: Target,
    token: Token,
    tls: Option<Arc<rustls::ClientConfig>>,
    proxy: Option<Proxy>,
    window: usize,
    ping_interval: Duration,
    dead_after: Duration,
    backoff_initial: Duration,
    backoff_max: Duration,
    ack_timeout: Duration,
    connect_timeout: Duration,
    welcome_timeout: Duration,
    shutdown_grace: Duration,
    /// Where the time from sending an entry to its ack is recorded (`/metrics`), if anywhere.
    ack_latency: Option<Arc<crate::metrics::Histogram>>,
    heartbeat: Arc<Heartbeat>,
    /// Where the integrations the central sends go (the daemon applies the latest), if anywhere.
    integrations: Option<Arc<IntegrationsSink>>,
    /// The activity of the central's integrations, reported to a central that sends integrations.
    activity: Option<Arc<crate::managed::ActivityUplink>>,
    /// What `status` frames report, if anything.
    status_source: Option<Arc<dyn StatusSource>>,
}

/// Where the relay reads what it reports in `status` frames. The daemon implements it over the
/// store's counts and the live configuration, so the relay needs neither.
pub trait StatusSource: Send + Sync {
    /// The figures now; `None` when they cannot be read (no status is sent then).
    fn status(&self) -> Option<AgentStatus>;

    /// Signalled when the figures changed in a way the relay does not see itself (the
    /// integrations in force after a reload); the relay then reports within
    /// [`STATUS_MIN_GAP`] instead of at its next period.
    fn changed(&self) -> &tokio::sync::Notify;
}

/// Hands the central's `integrations` frames to the daemon; only the latest one matters.
pub type IntegrationsSink = watch::Sender<Option<Arc<protocol::ManagedIntegrations>>>;

/// When the relay promises to be heard from next: before each wait it sets a deadline (the
/// connect timeout, the back-off delay, the ping interval) and the watchdog checks that the
/// deadline is not long past, so a relay task that is alive but hung is noticed too.
#[derive(Debug)]
pub struct Heartbeat {
    origin: std::time::Instant,
    /// Milliseconds after `origin` by which the relay will have beaten again.
    deadline_ms: std::sync::atomic::AtomicU64,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat {
            origin: std::time::Instant::now(),
            deadline_ms: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl Heartbeat {
    /// The relay is busy for at most `wait` (plus a margin) before it beats again.
    fn expect_within(&self, wait: Duration) {
        let deadline = self.origin.elapsed() + wait + HEARTBEAT_MARGIN;
        self.deadline_ms.store(
            u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// How long the relay is overdue, if it is (0 before its first beat: not started yet).
    pub fn overdue(&self) -> Option<Duration> {
        let deadline = self.deadline_ms.load(std::sync::atomic::Ordering::Relaxed);
        let now = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        (deadline > 0 && now > deadline).then(|| Duration::from_millis(now - deadline))
    }
}

/// Slack on top of every promised wait (scheduling, a slow disk under the outbox queries).
const HEARTBEAT_MARGIN: Duration = Duration::from_secs(30);

impl RelaySettings {
    /// Beat `heartbeat` at every wait (see [`Heartbeat`]).
    pub fn with_heartbeat(mut self, heartbeat: Arc<Heartbeat>) -> Self {
        self.heartbeat = heartbeat;
        self
    }

    /// Pass the integrations the central sends to `sink` (without one they are ignored).
    pub fn with_integrations_sink(mut self, sink: Arc<IntegrationsSink>) -> Self {
        self.integrations = Some(sink);
        self
    }

    /// Report the entries of `uplink` to a central that manages integrations.
    pub fn with_activity_uplink(mut self, uplink: Arc<crate::managed::ActivityUplink>) -> Self {
        self.activity = Some(uplink);
        self
    }

    /// Report the figures of `source` to a central that accepts `status` frames.
    pub fn with_status_source(mut self, source: Arc<dyn StatusSource>) -> Self {
        self.status_source = Some(source);
        self
    }

    /// Record every ack's latency (send to ack, on one connection) in `histogram`.
    pub fn with_ack_latency(mut self, histogram: Arc<crate::metrics::Histogram>) -> Self {
        self.ack_latency = Some(histogram);
        self
    }
}

impl fmt::Debug for RelaySettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelaySettings")
            .field("url", &self.target.uri.to_string())
            .field("token", &"<redacted>")
            .field("token_file", &self.token.file)
            .field("tls", &self.tls.is_some())
            .field("proxy", &self.proxy)
            .field("window", &self.window)
            .field("ping_interval", &self.ping_interval)
            .field("dead_after", &self.dead_after)
            .field("backoff_initial", &self.backoff_initial)
            .field("backoff_max", &self.backoff_max)
            .field("ack_timeout", &self.ack_timeout)
            .finish()
    }
}

impl RelaySettings {
    /// The `[central] proxy`, which the built-in `xMatters` endpoint also goes through.
    pub fn proxy(&self) -> Option<Proxy> {
        self.proxy.clone()
    }

    /// The TLS client settings for the central (system roots plus `ca_file`), `None` for
    /// `ws://`; the built-in `xMatters` endpoint reuses them.
    pub fn tls(&self) -> Option<Arc<rustls::ClientConfig>> {
        self.tls.clone()
    }

    /// The central's REST API root (same host and port as the websocket, `http`/`https`): the
    /// base URL of the built-in `xMatters` endpoint scripts call.
    pub fn rest_base_url(&self) -> String {
        let scheme = if self.target.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.target.authority())
    }

    /// The agent token as currently configured, for the built-in `xMatters` endpoint (the central
    /// accepts it as a bearer token on its REST API).
    pub fn token(&self) -> String {
        self.token.value.clone()
    }

    /// The central URL actually dialled (with the default path filled in), for status pages and
    /// start-up logs.
    pub fn url(&self) -> String {
        self.target.uri.to_string()
    }

    /// The configured window, for status pages and metrics.
    pub fn window(&self) -> usize {
        self.window
    }
}

/// What the relay is doing, published on a `watch` channel for `/readyz`, `/metrics` and the CLI.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RelayStatus {
    /// A websocket to the central is open and welcomed.
    pub connected: bool,
    /// The most recent connection problem (kept after a successful reconnect, for diagnosis).
    pub last_error: Option<String>,
    /// Entries sent on the current connection and not yet answered, plus entries waiting to be
    /// resent after a retryable refusal.
    pub in_flight: usize,
    /// Entries the central acknowledged since start.
    pub acked_total: u64,
    /// Entries the central refused for good (dead-lettered) since start.
    pub rejected_total: u64,
    /// Successful connections after the first one of this process (a relay restarted by a
    /// reload counts its connection as a reconnect).
    pub reconnects: u64,
    /// Some relay of this process was connected once; what makes the next connection a
    /// reconnect.
    #[serde(skip)]
    pub connected_once: bool,
}

/// Why a connection ended or could not be used. The `Display` text goes to logs and
/// [`RelayStatus::last_error`], so it never contains the token.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RelayError {
    #[error(transparent)]
    Dial(#[from] DialError),
    #[error("no welcome from the central within {0:?} after hello")]
    WelcomeTimeout(Duration),
    #[error("the central speaks protocol version {theirs}, this agent speaks {PROTOCOL_VERSION}")]
    VersionMismatch { theirs: u32 },
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("the central closed the connection{}", close_reason(.0))]
    Closed(Option<CloseFrame>),
    #[error("websocket error: {0}")]
    Socket(#[from] WsError),
    #[error("sending to the central timed out after {0:?}")]
    SendTimeout(Duration),
    #[error("connection dead: nothing received from the central for {0:?}")]
    Dead(Duration),
    #[error("no answer to event.create seq {seq} within {timeout:?}")]
    AckTimeout { seq: u64, timeout: Duration },
    #[error("outbox: {0}")]
    Outbox(String),
}

fn close_reason(frame: &Option<CloseFrame>) -> String {
    match frame {
        Some(f) if !f.reason.is_empty() => {
            format!(" ({}: {})", u16::from(f.code), f.reason.as_str())
        }
        Some(f) => format!(" ({})", u16::from(f.code)),
        None => String::new(),
    }
}

/// Run the relay until `shutdown` becomes `true` (or its sender is dropped).
///
/// Never returns early on errors: every failure is logged, published on `status`, and followed by
/// a reconnect after back-off, because the outbox must eventually drain whatever happens.
pub async fn run(
    mut settings: RelaySettings,
    agent_id: String,
    outbox: Arc<dyn Outbox>,
    status: watch::Sender<RelayStatus>,
    mut shutdown: watch::Receiver<bool>,
) {
    let url = settings.url();
    let mut backoff = Backoff::new(settings.backoff_initial, settings.backoff_max);
    loop {
        if shutdown_requested(&mut shutdown) {
            break;
        }
        settings
            .heartbeat
            .expect_within(settings.connect_timeout + settings.welcome_timeout);
        let attempt = tokio::select! {
            biased;
            _ = wait_shutdown(&mut shutdown) => break,
            r = connect(&mut settings, &agent_id) => r,
        };
        let end = match attempt {
            Ok((ws, welcomed)) => {
                status.send_modify(|s| {
                    if s.connected_once {
                        s.reconnects += 1;
                    }
                    s.connected_once = true;
                    s.connected = true;
                });
                tracing::info!(url = %url, agent_id = %agent_id, "connected to the central");
                let mut session = Session::new(ws, welcomed, &settings, outbox.as_ref(), &status);
                let end = session.serve(&mut shutdown).await;
                status.send_modify(|s| {
                    s.connected = false;
                    s.in_flight = 0;
                });
                end
            }
            Err(error) => SessionEnd::Lost {
                error,
                healthy: false,
                was_connected: false,
            },
        };
        match end {
            SessionEnd::Shutdown => break,
            SessionEnd::Lost {
                error,
                healthy,
                was_connected,
            } => {
                if healthy {
                    backoff.reset();
                }
                let delay = backoff.next_delay();
                let reason = error.to_string();
                if was_connected {
                    tracing::warn!(url = %url, %reason, retry_in = ?delay, "disconnected from the central");
                } else if matches!(error, RelayError::Dial(DialError::Unauthorized { .. })) {
                    // The operator has to act; say so at the highest level, still without the token.
                    tracing::error!(url = %url, %reason, retry_in = ?delay, "the central refused the agent token");
                } else {
                    tracing::warn!(url = %url, %reason, retry_in = ?delay, "cannot connect to the central");
                }
                status.send_modify(|s| s.last_error = Some(reason));
                settings.heartbeat.expect_within(delay);
                tokio::select! {
                    biased;
                    _ = wait_shutdown(&mut shutdown) => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    status.send_modify(|s| {
        s.connected = false;
        s.in_flight = 0;
    });
    tracing::info!("relay stopped");
}

/// What the central's `welcome` allows on this connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Welcomed {
    /// It reads `status` frames.
    pub accepts_status: bool,
    /// It reads `activity` frames (a central that sends `integrations` does too).
    pub accepts_activity: bool,
}

/// Dial, say hello and wait for the welcome.
async fn connect(
    settings: &mut RelaySettings,
    agent_id: &str,
) -> Result<(WsStream, Welcomed), RelayError> {
    let authorization = settings.token.authorization();
    let mut ws = dial::dial(DialParams {
        target: &settings.target,
        proxy: settings.proxy.as_ref(),
        tls: settings.tls.as_ref(),
        authorization,
        timeout: settings.connect_timeout,
    })
    .await?;
    let hello = AgentFrame::Hello {
        version: PROTOCOL_VERSION,
        agent_id: agent_id.to_string(),
        software_version: Some(env!("CARGO_PKG_VERSION").to_owned()),
    };
    send_timed(
        &mut ws,
        Message::text(hello.to_text()),
        settings.welcome_timeout,
    )
    .await?;
    let welcome_timeout = settings.welcome_timeout;
    let welcome = tokio::time::timeout(welcome_timeout, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => return parse_welcome(text.as_str(), agent_id),
                Some(Ok(Message::Close(frame))) => return Err(RelayError::Closed(frame)),
                Some(Ok(Message::Binary(_))) => {
                    return Err(RelayError::Protocol(
                        "binary frame instead of welcome".into(),
                    ))
                }
                Some(Ok(_)) => continue, // ping/pong
                Some(Err(e)) => return Err(RelayError::Socket(e)),
                None => return Err(RelayError::Closed(None)),
            }
        }
    })
    .await
    .map_err(|_| RelayError::WelcomeTimeout(welcome_timeout))?;
    Ok((ws, welcome?))
}

pub(crate) fn parse_welcome(text: &str, agent_id: &str) -> Result<Welcomed, RelayError> {
    match &serde_json::from_str::<CentralFrame>(text) {
        Ok(
            welcome @ CentralFrame::Welcome {
                version,
                agent_id: bound,
                ..
            },
        ) => {
            if *version != PROTOCOL_VERSION {
                return Err(RelayError::VersionMismatch { theirs: *version });
            }
            if bound != agent_id {
                tracing::info!(configured = %agent_id, central = %bound, "the central knows this agent by another id");
            }
            Ok(Welcomed {
                accepts_status: welcome.accepts(ACCEPTS_STATUS),
                accepts_activity: welcome.accepts(ACCEPTS_ACTIVITY),
            })
        }
        Ok(other) => Err(RelayError::Protocol(format!(
            "expected welcome, got {}",
            frame_name(other)
        ))),
        Err(e) => Err(RelayError::Protocol(format!(
            "expected welcome, got unparsable frame ({e}): {}",
            snippet(text)
        ))),
    }
}

fn frame_name(frame: &CentralFrame) -> &'static str {
    match frame {
        CentralFrame::Welcome { .. } => "welcome",
        CentralFrame::Ack { .. } => "ack",
        CentralFrame::Reject { .. } => "reject",
        CentralFrame::Integrations(_) => "integrations",
    }
}

fn snippet(text: &str) -> String {
    match text.char_indices().nth(LOG_SNIPPET) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// Send one message, giving up after `limit` (a central that stops reading would otherwise block
/// the relay forever on a full TCP buffer).
async fn send_timed(ws: &mut WsStream, msg: Message, limit: Duration) -> Result<(), RelayError> {
    tokio::time::timeout(limit, ws.send(msg))
        .await
        .map_err(|_| RelayError::SendTimeout(limit))??;
    Ok(())
}

/// `true` when shutdown was requested or can no longer be signalled.
fn shutdown_requested(shutdown: &mut watch::Receiver<bool>) -> bool {
    *shutdown.borrow_and_update() || shutdown.has_changed().is_err()
}

/// Resolve once shutdown is requested; a dropped sender counts as a request (nobody could ever
/// stop the relay otherwise). Cancel-safe.
async fn wait_shutdown(shutdown: &mut watch::Receiver<bool>) {
    loop {
        if *shutdown.borrow_and_update() {
            return;
        }
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

/// How one connection ended.
enum SessionEnd {
    /// Shutdown was requested and handled (drained, closed).
    Shutdown,
    /// The connection failed or was lost. `was_connected`: it had been welcomed (a disconnect,
    /// not a failed attempt). `healthy` means it was welcomed and did useful work (or
    /// lived long enough), so the reconnect back-off starts over.
    Lost {
        error: RelayError,
        healthy: bool,
        was_connected: bool,
    },
}

/// Activity entries per `activity` frame: each is at most a few tens of KiB, so a frame stays
/// far below the shared frame limit.
const ACTIVITY_BATCH: usize = 64;

/// Resolves when `uplink` has entries (never without one).
async fn activity_ready(uplink: Option<&crate::managed::ActivityUplink>) {
    match uplink {
        Some(uplink) => uplink.ready().await,
        None => std::future::pending().await,
    }
}

/// An entry sent on this connection, awaiting its answer.
struct InFlight {
    /// The frame as sent (cheap to clone), kept for a resend after a retryable refusal.
    frame: Utf8Bytes,
    sent_at: Instant,
}

/// One welcomed connection and its bookkeeping.
struct Session<'a> {
    ws: WsStream,
    settings: &'a RelaySettings,
    outbox: &'a dyn Outbox,
    status: &'a watch::Sender<RelayStatus>,
    /// Sent and unanswered, by seq.
    in_flight: BTreeMap<u64, InFlight>,
    /// Refused with `retryable: true`: resend at the instant stored with it.
    waiting: BTreeMap<u64, (Utf8Bytes, Instant)>,
    /// The highest seq taken from the outbox on this connection.
    cursor: Option<u64>,
    /// Spaces out resends after retryable refusals; reset by any ack.
    retry_backoff: Backoff,
    started: Instant,
    last_rx: Instant,
    acked_any: bool,
    /// Acks read but not yet recorded in the outbox (see [`Session::record_acks`]).
    acks: Vec<(u64, String)>,
    /// The central sent `integrations` on this connection, so it reads `activity` frames.
    central_manages: bool,
    /// What the central's `welcome` allowed.
    welcomed: Welcomed,
    /// When the next `status` frame is due; `None` when none is sent on this connection.
    status_due: Option<Instant>,
    /// When the last `status` frame went out.
    status_sent_at: Instant,
}

impl<'a> Session<'a> {
    fn new(
        ws: WsStream,
        welcomed: Welcomed,
        settings: &'a RelaySettings,
        outbox: &'a dyn Outbox,
        status: &'a watch::Sender<RelayStatus>,
    ) -> Self {
        let now = Instant::now();
        Self {
            ws,
            settings,
            outbox,
            status,
            in_flight: BTreeMap::new(),
            waiting: BTreeMap::new(),
            cursor: None,
            retry_backoff: Backoff::new(settings.backoff_initial, settings.backoff_max),
            started: now,
            last_rx: now,
            acked_any: false,
            acks: Vec::new(),
            central_manages: false,
            welcomed,
            // The first one right after welcome.
            status_due: (welcomed.accepts_status && settings.status_source.is_some())
                .then_some(now),
            status_sent_at: now,
        }
    }

    /// The queue (or the integrations) changed: report soon, but not more often than
    /// [`STATUS_MIN_GAP`].
    fn status_changed(&mut self) {
        if let Some(due) = self.status_due {
            self.status_due = Some(due.min(self.status_sent_at + STATUS_MIN_GAP));
        }
    }

    /// Send a `status` frame when one is due (checked every turn, so a busy socket cannot
    /// starve it).
    async fn report_status_if_due(&mut self) -> Result<(), RelayError> {
        let now = Instant::now();
        if self.status_due.is_none_or(|due| due > now) {
            return Ok(());
        }
        self.status_due = Some(now + STATUS_EVERY);
        self.status_sent_at = now;
        let Some(status) = self
            .settings
            .status_source
            .as_ref()
            .and_then(|s| s.status())
        else {
            return Ok(());
        };
        let frame = AgentFrame::Status(status);
        send_timed(
            &mut self.ws,
            Message::text(frame.to_text()),
            self.settings.dead_after,
        )
        .await
    }

    fn outstanding(&self) -> usize {
        self.in_flight.len() + self.waiting.len()
    }

    fn healthy(&self) -> bool {
        self.acked_any || self.started.elapsed() >= self.settings.dead_after
    }

    fn lost(&self, error: RelayError) -> SessionEnd {
        SessionEnd::Lost {
            error,
            healthy: self.healthy(),
            was_connected: true,
        }
    }

    fn publish_in_flight(&self) {
        let n = self.outstanding();
        self.status.send_if_modified(|s| {
            let changed = s.in_flight != n;
            s.in_flight = n;
            changed
        });
    }

    /// Stream the outbox until the connection fails or shutdown is requested.
    async fn serve(&mut self, shutdown: &mut watch::Receiver<bool>) -> SessionEnd {
        let notify = self.outbox.appended();
        // Created (and registered) before every outbox query, so an append that lands between the
        // query and the wait still wakes us.
        let mut appended = pin!(notify.notified());
        appended.as_mut().enable();
        let mut need_query = true;
        let mut exhausted = false;
        let window = self.settings.window;
        let mut ping = tokio::time::interval_at(
            Instant::now() + self.settings.ping_interval,
            self.settings.ping_interval,
        );
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let heartbeat = self.settings.heartbeat.clone();

        loop {
            // Every turn of the loop ends at the latest at the next ping tick.
            heartbeat.expect_within(self.settings.ping_interval + self.settings.dead_after);
            if let Err(e) = self.resend_due().await {
                return self.lost(e);
            }
            if let Err(e) = self.report_status_if_due().await {
                return self.lost(e);
            }
            let room = window - self.outstanding().min(window);
            // Ask the outbox in batches (a quarter of the window) rather than once per ack, unless
            // the pipe ran empty.
            if need_query && room > 0 && (room * 4 >= window || self.in_flight.is_empty()) {
                appended.set(notify.notified());
                appended.as_mut().enable();
                need_query = false;
                match self.send_new(room).await {
                    Ok(sent) => {
                        exhausted = sent < room;
                        if sent > 0 {
                            self.status_changed();
                        }
                    }
                    Err(e) => return self.lost(e),
                }
            }
            let room = window - self.outstanding().min(window);
            let dead_at = self.last_rx + self.settings.dead_after;
            let oldest = self
                .in_flight
                .iter()
                .min_by_key(|(_, f)| f.sent_at)
                .map(|(seq, f)| (*seq, f.sent_at));
            let ack_deadline = oldest.map(|(_, at)| at + self.settings.ack_timeout);
            let retry_at = self.waiting.values().map(|(_, due)| *due).min();
            let uplink = self
                .settings
                .activity
                .clone()
                .filter(|_| self.central_manages || self.welcomed.accepts_activity);
            let status_due = self.status_due;
            let source = self.settings.status_source.clone();

            tokio::select! {
                biased;
                _ = wait_shutdown(shutdown) => return self.drain_and_close().await,
                msg = self.ws.next() => {
                    self.last_rx = Instant::now();
                    // Take whatever else already arrived too, then record the acks together.
                    let mut next = Some(msg);
                    let mut read = 0;
                    while let Some(msg) = next {
                        match self.handle(msg) {
                            Ok(freed) => {
                                if freed && !exhausted {
                                    need_query = true;
                                }
                            }
                            Err(e) => {
                                let _ = self.record_acks();
                                return self.lost(e);
                            }
                        }
                        read += 1;
                        next = if read < ACK_BATCH { self.ws.next().now_or_never() } else { None };
                    }
                    if let Err(e) = self.record_acks() {
                        return self.lost(e);
                    }
                }
                _ = appended.as_mut(), if room > 0 && !need_query => need_query = true,
                _ = ping.tick() => {
                    if let Err(e) = send_timed(&mut self.ws, Message::Ping(Default::default()), self.settings.dead_after).await {
                        return self.lost(e);
                    }
                }
                _ = tokio::time::sleep_until(dead_at) => return self.lost(RelayError::Dead(self.settings.dead_after)),
                _ = sleep_until_opt(ack_deadline), if ack_deadline.is_some() => {
                    let seq = oldest.map(|(seq, _)| seq).unwrap_or_default();
                    return self.lost(RelayError::AckTimeout { seq, timeout: self.settings.ack_timeout });
                }
                _ = sleep_until_opt(retry_at), if retry_at.is_some() => {}
                _ = sleep_until_opt(status_due), if status_due.is_some() => {}
                _ = source_changed(source.as_deref()), if source.is_some() => self.status_changed(),
                _ = activity_ready(uplink.as_deref()), if uplink.is_some() => {
                    if let Err(e) = self.send_activity(uplink.as_deref()).await {
                        return self.lost(e);
                    }
                }
            }
        }
    }

    /// Send the waiting activity entries, a batch per frame (best effort: entries taken are not
    /// put back if the connection fails).
    async fn send_activity(
        &mut self,
        uplink: Option<&crate::managed::ActivityUplink>,
    ) -> Result<(), RelayError> {
        let Some(uplink) = uplink else {
            return Ok(());
        };
        loop {
            let entries = uplink.take(ACTIVITY_BATCH);
            if entries.is_empty() {
                return Ok(());
            }
            let frame = AgentFrame::Activity { entries };
            send_timed(
                &mut self.ws,
                Message::text(frame.to_text()),
                self.settings.dead_after,
            )
            .await?;
        }
    }

    /// Take up to `room` new entries from the outbox and send them; returns how many were sent.
    async fn send_new(&mut self, room: usize) -> Result<usize, RelayError> {
        let batch = self
            .outbox
            .pending_after(self.cursor, room)
            .map_err(RelayError::Outbox)?;
        let mut frames = Vec::new();
        for entry in batch.into_iter().take(room) {
            if self.cursor.is_some_and(|c| entry.seq <= c) {
                // A well-behaved outbox never does this; resending out of order would be harmless
                // but looping on it would not, so skip and say so.
                tracing::warn!(seq = entry.seq, cursor = ?self.cursor, "outbox returned an entry out of order; skipped");
                continue;
            }
            self.cursor = Some(entry.seq);
            // The store hands out UTF-8 JSON text; a check here keeps the websocket honest.
            let frame = Utf8Bytes::try_from(entry.frame).map_err(|_| {
                RelayError::Outbox(format!("outbox entry {} is not UTF-8 text", entry.seq))
            })?;
            frames.push(Message::Text(frame.clone()));
            let sent_at = Instant::now();
            self.in_flight
                .insert(entry.seq, InFlight { frame, sent_at });
        }
        let sent = frames.len();
        if sent > 0 {
            // One flush for the whole batch; bounded, because a central that stops reading would
            // otherwise block the relay on a full socket buffer.
            let limit = self.settings.dead_after;
            let ws = &mut self.ws;
            tokio::time::timeout(limit, async move {
                for frame in frames {
                    ws.feed(frame).await?;
                }
                ws.flush().await
            })
            .await
            .map_err(|_| RelayError::SendTimeout(limit))??;
            self.publish_in_flight();
        }
        Ok(sent)
    }

    /// Resend entries whose retry time came.
    async fn resend_due(&mut self) -> Result<(), RelayError> {
        let now = Instant::now();
        let due: Vec<u64> = self
            .waiting
            .iter()
            .filter(|(_, (_, at))| *at <= now)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in due {
            if let Some((frame, _)) = self.waiting.remove(&seq) {
                tracing::debug!(seq, "resending after a retryable refusal");
                let message = Message::Text(frame.clone());
                send_timed(&mut self.ws, message, self.settings.dead_after).await?;
                self.in_flight.insert(
                    seq,
                    InFlight {
                        frame,
                        sent_at: Instant::now(),
                    },
                );
            }
        }
        Ok(())
    }

    /// Handle one item from the socket. Returns whether window room was freed.
    fn handle(&mut self, msg: Option<Result<Message, WsError>>) -> Result<bool, RelayError> {
        match msg {
            Some(Ok(Message::Text(text))) => {
                match serde_json::from_str::<CentralFrame>(text.as_str()) {
                    Ok(frame) => self.handle_frame(frame),
                    Err(e) => {
                        // Possibly a frame type from a newer central; not worth dropping the link for.
                        tracing::warn!(error = %e, frame = %snippet(text.as_str()), "ignoring unparsable frame from the central");
                        Ok(false)
                    }
                }
            }
            Some(Ok(Message::Binary(_))) => {
                tracing::warn!("ignoring binary frame from the central");
                Ok(false)
            }
            Some(Ok(Message::Close(frame))) => Err(RelayError::Closed(frame)),
            Some(Ok(_)) => Ok(false), // ping (answered by tungstenite), pong, raw frame
            Some(Err(e)) => Err(RelayError::Socket(e)),
            None => Err(RelayError::Closed(None)),
        }
    }

    fn handle_frame(&mut self, frame: CentralFrame) -> Result<bool, RelayError> {
        match frame {
            CentralFrame::Ack { seq, event_id } => {
                let sent = self.in_flight.remove(&seq);
                if let (Some(sent), Some(histogram)) = (&sent, &self.settings.ack_latency) {
                    histogram.observe(sent.sent_at.elapsed());
                }
                let known = sent.is_some() || self.waiting.remove(&seq).is_some();
                if !known {
                    tracing::warn!(
                        seq,
                        "ack for an entry not in flight on this connection; ignored"
                    );
                    return Ok(false);
                }
                self.acked_any = true;
                self.retry_backoff.reset();
                tracing::debug!(seq, event_id = %event_id, "event acknowledged");
                self.acks.push((seq, event_id));
                Ok(true)
            }
            CentralFrame::Reject {
                seq,
                retryable: false,
                status,
                message,
            } => {
                let known =
                    self.in_flight.remove(&seq).is_some() || self.waiting.remove(&seq).is_some();
                if !known {
                    tracing::warn!(
                        seq,
                        "reject for an entry not in flight on this connection; ignored"
                    );
                    return Ok(false);
                }
                self.record_acks()?;
                self.outbox
                    .rejected(seq, status, &message)
                    .map_err(RelayError::Outbox)?;
                let n = self.outstanding();
                self.status.send_modify(|s| {
                    s.rejected_total += 1;
                    s.in_flight = n;
                });
                self.status_changed();
                Ok(true)
            }
            CentralFrame::Reject {
                seq,
                retryable: true,
                status,
                message,
            } => {
                let Some(InFlight { frame, .. }) = self.in_flight.remove(&seq) else {
                    tracing::warn!(
                        seq,
                        "retryable reject for an entry not in flight on this connection; ignored"
                    );
                    return Ok(false);
                };
                let delay = self.retry_backoff.next_delay();
                tracing::info!(seq, status, reason = %message, retry_in = ?delay, "the central asked to retry an event later");
                self.waiting.insert(seq, (frame, Instant::now() + delay));
                // Still counts against the window: a busy central should not get new work.
                Ok(false)
            }
            CentralFrame::Welcome { .. } => {
                tracing::warn!("ignoring a second welcome from the central");
                Ok(false)
            }
            CentralFrame::Integrations(integrations) => {
                tracing::debug!(version = %integrations.version, "the central sent integrations");
                if let Some(sink) = &self.settings.integrations {
                    sink.send_replace(Some(Arc::new(integrations)));
                }
                self.central_manages = true;
                self.status_changed();
                Ok(false)
            }
        }
    }

    /// Record the acks read so far in the outbox (one batch) and publish the counts.
    fn record_acks(&mut self) -> Result<(), RelayError> {
        if self.acks.is_empty() {
            return Ok(());
        }
        let acks = std::mem::take(&mut self.acks);
        self.outbox
            .acknowledged(&acks)
            .map_err(RelayError::Outbox)?;
        let n = self.outstanding();
        self.status.send_modify(|s| {
            s.acked_total += acks.len() as u64;
            s.in_flight = n;
        });
        self.status_changed();
        Ok(())
    }

    /// Shutdown: send nothing new, give outstanding acks a short grace period, then close.
    async fn drain_and_close(&mut self) -> SessionEnd {
        let deadline = Instant::now() + self.settings.shutdown_grace;
        // Entries waiting for a retry stay in the outbox and go out after the next start.
        self.waiting.clear();
        while !self.in_flight.is_empty() {
            let msg = tokio::select! {
                msg = self.ws.next() => msg,
                _ = tokio::time::sleep_until(deadline) => break,
            };
            match self.handle(msg).and_then(|_| self.record_acks()) {
                Ok(()) => {
                    // A retryable refusal during shutdown is simply left for the next start.
                    self.waiting.clear();
                }
                Err(e) => {
                    tracing::info!(reason = %e, "connection ended while draining for shutdown");
                    return SessionEnd::Shutdown;
                }
            }
        }
        if !self.in_flight.is_empty() {
            tracing::info!(
                unanswered = self.in_flight.len(),
                "shutting down with unanswered entries; they stay in the outbox and are resent after restart"
            );
        }
        let close = CloseFrame {
            code: CloseCode::Away,
            reason: "agent shutting down".into(),
        };
        let close_wait = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(200));
        let _ = tokio::time::timeout(close_wait, async {
            if self.ws.close(Some(close)).await.is_ok() {
                // Read until the central answers the close (or the socket ends).
                while let Some(Ok(_)) = self.ws.next().await {}
            }
        })
        .await;
        tracing::info!("closed the connection to the central");
        SessionEnd::Shutdown
    }
}

/// Wait for the status source's change signal (forever without a source).
async fn source_changed(source: Option<&dyn StatusSource>) {
    match source {
        Some(source) => source.changed().notified().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Exponential back-off with "equal jitter": the delay is between half and all of
/// `initial * 2^attempt` (capped), so many agents restarting together do not reconnect in lockstep
/// while each still waits at least half the nominal delay.
struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            attempt: 0,
        }
    }

    fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The nominal (un-jittered) delay of the next attempt.
    fn nominal(&self) -> Duration {
        let factor = 1u32 << self.attempt.min(20);
        self.initial.saturating_mul(factor).min(self.max)
    }

    fn next_delay(&mut self) -> Duration {
        let base = self.nominal();
        self.attempt = self.attempt.saturating_add(1);
        let half = base / 2;
        let jitter_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
        half + Duration::from_millis(rand::thread_rng().gen_range(0..=jitter_ms))
    }
}
