//! The agent websocket (`protocol::CONNECT_PATH`): upgrade, `hello`/`welcome`, then a pipelined
//! stream of `event.create` frames answered in order with `ack` or `reject`.
//!
//! Throughput comes from batching: the reader takes every frame that is already available (up
//! to [`MAX_BATCH`]), writes them in one store transaction and hands the answers to a writer
//! task, which waits for one group-committed flush and then sends them. Reading the next batch
//! overlaps with flushing the previous one, and answers still leave in arrival order because
//! the writer handles batches one after another. An `ack` is only sent once its event is on disk.
//!
//! Beside events, an agent reports its software version (in `hello`) and its queue (`status`
//! frames, which `welcome` announces in `accepts`); both go to [`crate::console::presence`] for
//! the console's agents page and are never answered.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use http::header::{
    HeaderValue, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION,
    UPGRADE,
};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use protocol::{
    AgentFrame, AgentStatus, CentralFrame, ACCEPTS_ACTIVITY, ACCEPTS_STATUS, PROTOCOL_VERSION,
};
use tokio::sync::{mpsc, Notify};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::event;
use crate::metrics::Metrics;
use crate::store::NewEvent;
use crate::ws::frame::Create;
use crate::State;
use server::http_util;
use server::serve::Body;

mod frame;
mod managed;

pub use managed::AgentIntegrations;
#[doc(hidden)]
pub mod fuzzing;

/// The most frames written in one transaction and answered after one flush. The agent keeps at
/// most 64 in flight, so one batch usually holds everything that has arrived.
pub const MAX_BATCH: usize = 256;

/// How long a new connection may take to send `hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Counts live websocket tasks so shutdown can wait for them: upgraded connections are no
/// longer visible to the HTTP server's drain.
#[derive(Debug, Default)]
pub struct Tracker {
    live: AtomicUsize,
    idle: Notify,
}

/// Held by one websocket task; dropping it marks the task finished.
pub struct TrackerGuard(Arc<Tracker>);

impl Tracker {
    /// Register a task.
    pub fn track(self: &Arc<Self>) -> TrackerGuard {
        self.live.fetch_add(1, Ordering::SeqCst);
        TrackerGuard(Arc::clone(self))
    }

    /// Wait until no task is registered.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.live.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for TrackerGuard {
    fn drop(&mut self) {
        if self.0.live.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

fn header_has_token(request: &Request<Incoming>, name: http::HeaderName, token: &str) -> bool {
    request.headers().get_all(name).iter().any(|value| {
        value
            .to_str()
            .map(|text| {
                text.split(',')
                    .any(|part| part.trim().eq_ignore_ascii_case(token))
            })
            .unwrap_or(false)
    })
}

/// Answer an upgrade request on the connect path: authenticate, check the websocket headers,
/// reply `101` and run the connection on its own task.
pub fn upgrade(
    state: Arc<State>,
    mut request: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let token = http_util::bearer_token(request.headers().get(http::header::AUTHORIZATION));
    let Some(agent) = token
        .as_deref()
        .and_then(|token| state.config.agent_for_token(token))
    else {
        tracing::warn!(%peer, "agent connection refused: missing or unknown bearer token");
        return http_util::error(
            StatusCode::UNAUTHORIZED,
            "a valid agent bearer token is required",
        );
    };
    let agent_id = agent.id.clone();
    if !header_has_token(&request, UPGRADE, "websocket")
        || !header_has_token(&request, CONNECTION, "upgrade")
    {
        return http_util::error(
            StatusCode::BAD_REQUEST,
            "this path only accepts websocket upgrades (Upgrade: websocket)",
        );
    }
    if request
        .headers()
        .get(SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        let mut response = http_util::error(
            StatusCode::UPGRADE_REQUIRED,
            "websocket version 13 is required",
        );
        response
            .headers_mut()
            .insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        return response;
    }
    let Some(key) = request.headers().get(SEC_WEBSOCKET_KEY) else {
        return http_util::error(StatusCode::BAD_REQUEST, "Sec-WebSocket-Key is missing");
    };
    let accept = derive_accept_key(key.as_bytes());
    let Ok(accept) = HeaderValue::from_str(&accept) else {
        return http_util::error(StatusCode::BAD_REQUEST, "Sec-WebSocket-Key is malformed");
    };

    let on_upgrade = hyper::upgrade::on(&mut request);
    let guard = state.ws_tracker.track();
    tokio::spawn(async move {
        let _guard = guard;
        match on_upgrade.await {
            Ok(upgraded) => {
                let socket = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(socket_limits()),
                )
                .await;
                run(state, socket, agent_id, peer).await;
            }
            Err(error) => tracing::debug!(%error, %peer, "websocket upgrade did not complete"),
        }
    });

    let mut response = Response::new(http_util::full(""));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(SEC_WEBSOCKET_ACCEPT, accept);
    response
}

/// A message (however it is fragmented) may not exceed what a frame within the shared limits
/// needs, so a peer cannot make the central buffer more than that.
fn socket_limits() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(protocol::limits::MAX_FRAME_BYTES))
        .max_frame_size(Some(protocol::limits::MAX_FRAME_BYTES))
}

fn close(code: CloseCode, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

/// Decrements the connected-agents gauge however the connection ends.
struct Connected<'a>(&'a Metrics);

impl Drop for Connected<'_> {
    fn drop(&mut self) {
        self.0.agents_connected.fetch_sub(1, Ordering::Relaxed);
    }
}

type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// What the reader hands to the writer, in order.
enum Outgoing {
    /// Answers for one batch; `durable` says whether a flush must complete before they go out.
    Answers { frames: Vec<Answer>, durable: bool },
    /// Close the socket with this frame, after everything before it was sent.
    Close(Message),
    /// A frame of the central's own (the agent's integrations), sent as it is.
    Frame(String),
}

/// One answer, kept typed until the flush outcome is known.
enum Answer {
    Ack {
        seq: u64,
        event_id: String,
        duplicate: bool,
    },
    Reject {
        seq: u64,
        retryable: bool,
        status: u16,
        message: String,
    },
}

async fn run(state: Arc<State>, mut socket: Socket, agent_id: String, peer: SocketAddr) {
    let mut shutdown = state.shutdown.clone();
    // hello → welcome, or close with the reason.
    let hello = tokio::select! {
        hello = tokio::time::timeout(HELLO_TIMEOUT, first_frame(&mut socket)) => hello,
        () = stop_requested(&mut shutdown) => {
            let _ = socket.send(close(CloseCode::Away, "central shutting down")).await;
            return;
        }
    };
    let hello = match hello {
        Err(_) => Err((CloseCode::Policy, "no hello within 10 s".to_owned())),
        Ok(None) => return,
        Ok(Some(Err(reason))) => Err((CloseCode::Protocol, reason)),
        Ok(Some(Ok(Hello { version, .. }))) if version != PROTOCOL_VERSION => Err((
            CloseCode::Policy,
            format!(
                "unsupported protocol version {version}; this central speaks {PROTOCOL_VERSION}"
            ),
        )),
        Ok(Some(Ok(hello))) => Ok(hello),
    };
    let hello = match hello {
        Ok(hello) => hello,
        Err((code, reason)) => {
            tracing::warn!(agent = %agent_id, %peer, %reason, "agent connection refused");
            let _ = socket.send(close(code, &reason)).await;
            return;
        }
    };
    let welcome = CentralFrame::Welcome {
        version: PROTOCOL_VERSION,
        agent_id: agent_id.clone(),
        accepts: vec![ACCEPTS_STATUS.to_owned(), ACCEPTS_ACTIVITY.to_owned()],
    };
    if socket.send(Message::text(welcome.to_text())).await.is_err() {
        return;
    }
    state
        .metrics
        .agents_connected
        .fetch_add(1, Ordering::Relaxed);
    let _connected = Connected(&state.metrics);
    let _present = state.console.presence.connected(
        &agent_id,
        PROTOCOL_VERSION,
        hello.software_version.as_deref(),
        peer,
    );
    tracing::info!(agent = %agent_id, %peer, "agent connected");

    let (sink, mut stream) = socket.split();
    let (to_writer, from_reader) = mpsc::channel::<Outgoing>(4);
    let writer = tokio::spawn(write_answers(
        state.clone(),
        sink,
        from_reader,
        agent_id.clone(),
    ));
    let pusher = tokio::spawn({
        let integrations = Arc::clone(&state.agent_integrations);
        let (agent_id, to_writer) = (agent_id.clone(), to_writer.clone());
        async move { integrations.push(agent_id, to_writer).await }
    });

    let mut batch: Vec<Create> = Vec::new();
    let mut answers_before: Vec<Answer> = Vec::new();
    let ending: Option<Message> = loop {
        let first = tokio::select! {
            message = stream.next() => message,
            () = stop_requested(&mut shutdown) => {
                break Some(close(CloseCode::Away, "central shutting down"));
            }
        };
        let mut next = first;
        let mut stop: Option<Option<Message>> = None;
        // Take the first frame and everything else already available, up to MAX_BATCH.
        loop {
            match next {
                None | Some(Err(_)) => {
                    stop = Some(None);
                    break;
                }
                Some(Ok(message)) => match classify(message) {
                    Inbound::Create(create) => batch.push(create),
                    Inbound::Malformed { seq, message } => {
                        // Answers must stay in order: finish what came before, then this one.
                        answers_before.extend(process(&state, &agent_id, &mut batch));
                        answers_before.push(Answer::Reject {
                            seq,
                            retryable: false,
                            status: 400,
                            message,
                        });
                    }
                    Inbound::Activity(entries) => {
                        if let Some(hosted) = &state.hosted {
                            hosted.keep_agent_activity(&agent_id, entries);
                        }
                    }
                    Inbound::Status(status) => state.console.presence.reported(&agent_id, status),
                    Inbound::Ignore => {}
                    Inbound::Closed => {
                        stop = Some(None);
                        break;
                    }
                    Inbound::Fatal(code, reason) => {
                        stop = Some(Some(close(code, &reason)));
                        break;
                    }
                },
            }
            if batch.len() + answers_before.len() >= MAX_BATCH {
                break;
            }
            match stream.next().now_or_never() {
                Some(message) => next = message,
                None => break,
            }
        }
        let mut frames = std::mem::take(&mut answers_before);
        frames.extend(process(&state, &agent_id, &mut batch));
        state.console.presence.seen(&agent_id);
        if !frames.is_empty() {
            let durable = frames
                .iter()
                .any(|answer| matches!(answer, Answer::Ack { .. }));
            if to_writer
                .send(Outgoing::Answers { frames, durable })
                .await
                .is_err()
            {
                break None; // writer failed: the socket is gone
            }
        }
        if let Some(ending) = stop {
            break ending;
        }
    };
    pusher.abort();
    let _ = pusher.await;
    if let Some(message) = ending {
        let _ = to_writer.send(Outgoing::Close(message)).await;
    }
    drop(to_writer);
    let _ = writer.await;
    tracing::info!(agent = %agent_id, %peer, "agent disconnected");
}

/// Resolves once shutdown was requested; holds no channel borrow afterwards (keeps futures Send).
async fn stop_requested(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// What an agent's `hello` says.
struct Hello {
    version: u32,
    software_version: Option<String>,
}

/// Read until the first data frame; `Ok` for a `hello`, `Err(reason)` for anything else, `None`
/// when the socket ended first.
async fn first_frame(socket: &mut Socket) -> Option<Result<Hello, String>> {
    loop {
        let message = socket.next().await?.ok()?;
        match message {
            Message::Text(text) => {
                return Some(match serde_json::from_str::<AgentFrame>(text.as_str()) {
                    Ok(AgentFrame::Hello {
                        version,
                        software_version,
                        ..
                    }) => Ok(Hello {
                        version,
                        software_version,
                    }),
                    Ok(_) => Err("the first frame must be hello".to_owned()),
                    Err(_) => Err("the first frame must be a hello JSON frame".to_owned()),
                })
            }
            Message::Binary(_) => return Some(Err("binary frames are not supported".to_owned())),
            Message::Close(_) => return None,
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    }
}

/// A frame after `hello`, sorted by what the reader must do with it.
enum Inbound {
    Create(Create),
    /// Activity entries of the integrations this agent runs for the central.
    Activity(Vec<serde_json::Value>),
    /// The agent's queue figures and integrations.
    Status(AgentStatus),
    Malformed {
        seq: u64,
        message: String,
    },
    Ignore,
    Closed,
    Fatal(CloseCode, String),
}

fn classify(message: Message) -> Inbound {
    match message {
        Message::Text(text) => match Create::parse(text.as_str()) {
            Ok(create) => Inbound::Create(create),
            Err(_) => classify_text(text.as_str()),
        },
        Message::Binary(_) => Inbound::Fatal(
            CloseCode::Unsupported,
            "binary frames are not supported".to_owned(),
        ),
        Message::Close(_) => Inbound::Closed,
        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Inbound::Ignore,
    }
}

/// Classify a text frame the direct [`Create`] reader refused, through the protocol crate's
/// types: `hello`, malformed frames (and any odd frame serde's tagged enum accepts) are answered
/// exactly as the protocol defines them, on a path that does not need to be fast.
fn classify_text(text: &str) -> Inbound {
    match serde_json::from_str::<AgentFrame>(text) {
        Ok(AgentFrame::EventCreate(create)) => match Create::from_protocol(create) {
            Ok(create) => Inbound::Create(create),
            Err((seq, error)) => Inbound::Malformed {
                seq,
                message: format!("malformed event.create frame: {error}"),
            },
        },
        Ok(AgentFrame::Hello { .. }) => {
            Inbound::Fatal(CloseCode::Protocol, "hello was already received".to_owned())
        }
        Ok(AgentFrame::Activity { entries }) => Inbound::Activity(entries),
        Ok(AgentFrame::Status(status)) => Inbound::Status(status),
        Err(error) => {
            // If the frame names its seq, answer it so the agent can dead-letter the entry
            // instead of resending it forever; otherwise the stream is unreadable.
            // The members around `seq` are skipped unread (serde_json skips a value without
            // converting numbers or checking nesting), so a trigger the reader refused still
            // lets the frame be answered by its seq.
            #[derive(serde::Deserialize)]
            struct Envelope {
                seq: u64,
            }
            let seq = serde_json::from_str::<Envelope>(text).ok().map(|e| e.seq);
            match seq {
                Some(seq) => Inbound::Malformed {
                    seq,
                    message: format!("malformed event.create frame: {error}"),
                },
                None => Inbound::Fatal(
                    CloseCode::Unsupported,
                    "unreadable frame (not an agent frame with a seq)".to_owned(),
                ),
            }
        }
    }
}

/// Validate and write `batch` (emptied), returning one answer per frame in order.
fn process(state: &State, agent_id: &str, batch: &mut Vec<Create>) -> Vec<Answer> {
    process_batch(state, agent_id, batch, false)
}

/// [`process`]; with `all_or_none`, a batch in which any frame is refused writes nothing and
/// answers only the refusals (a cloud-hosted request creates all its events or none).
fn process_batch(
    state: &State,
    agent_id: &str,
    batch: &mut Vec<Create>,
    all_or_none: bool,
) -> Vec<Answer> {
    if batch.is_empty() {
        return Vec::new();
    }
    let created = server::http_util::now_rfc3339();
    let mut answers: Vec<Option<Answer>> = Vec::with_capacity(batch.len());
    let mut writes = Vec::with_capacity(batch.len());
    let mut write_seqs = Vec::with_capacity(batch.len());
    // Validation first, so an invalid trigger is refused whether or not its key exists.
    for create in batch.iter() {
        match admit(state, create) {
            Ok((checked, admitted)) => {
                writes.push(Pending {
                    create,
                    checked,
                    admitted,
                    agent_id,
                    created: &created,
                    notifier: &state.notifier,
                    suppressed: std::cell::Cell::new(false),
                });
                write_seqs.push((answers.len(), create.seq));
                answers.push(None);
            }
            Err((status, message)) => {
                tracing::info!(agent = %agent_id, request_id = %create.request_id,
                    index = create.index, %message, "event.create rejected");
                answers.push(Some(Answer::Reject {
                    seq: create.seq,
                    retryable: false,
                    status,
                    message,
                }));
            }
        }
    }
    if all_or_none && writes.len() < batch.len() {
        writes.clear();
    }
    if !writes.is_empty() {
        match state.store.create_batch(agent_id, &writes) {
            Ok(written) => {
                // Before the acks' flush, so the acks cover the notifications too; on a failure
                // the events stay without them and the agent's resend creates them.
                let notices: Vec<_> = writes
                    .iter()
                    .zip(&written)
                    .map(|(pending, written)| pending.notice(written))
                    .collect();
                let notified = state.notifier.after_create(&notices);
                drop(notices); // it borrows the ids
                if let Err(error) = &notified {
                    tracing::error!(%error, agent = %agent_id, "could not store notifications");
                }
                for ((slot, seq), written) in write_seqs.into_iter().zip(written) {
                    let answer = match notified {
                        Ok(()) => Answer::Ack {
                            seq,
                            event_id: written.event_id,
                            duplicate: written.duplicate,
                        },
                        Err(_) => unavailable(seq),
                    };
                    if let Some(slot) = answers.get_mut(slot) {
                        *slot = Some(answer);
                    }
                }
            }
            Err(error) => {
                tracing::error!(%error, agent = %agent_id, "could not store events");
                for (slot, seq) in write_seqs {
                    if let Some(answer) = answers.get_mut(slot) {
                        *answer = Some(unavailable(seq));
                    }
                }
            }
        }
    }
    drop(writes); // it borrows the batch
    batch.clear();
    answers.into_iter().flatten().collect()
}

/// Whether the central takes `create`: its trigger within the limits (400 otherwise), its form
/// known and its sender allowed to send it (403 otherwise).
fn admit<'a>(
    state: &State,
    create: &'a Create,
) -> Result<(event::Checked<'a>, crate::notify::Admitted), (u16, String)> {
    let checked = event::check(&create.trigger).map_err(|e| (400, e.to_string()))?;
    let (plan, form) = (create.plan.as_deref(), create.form.as_deref());
    match state.notifier.admit(plan, form, create.sender.as_deref()) {
        Ok(admitted) => Ok((checked, admitted)),
        Err(refusal) => Err((403, refusal.to_string())),
    }
}

/// Why the events of a cloud-hosted request were not created.
pub(crate) enum HostedRefusal {
    /// One event cannot be created (limits, form, sender): the request fails, with the reason.
    Refused(String),
    /// The store could not take them; the caller may retry.
    Unavailable,
}

/// Create the events of one cloud-hosted request exactly as an agent's frames are created
/// (limits, form and sender permission, notifications, alert rate filter), all or none: every
/// event is admitted before any is written. Answers their ids in order; the caller waits for
/// the flush.
pub(crate) fn create_hosted(
    state: &State,
    request_id: &str,
    integration_id: &str,
    events: &[(integration::action::Routing, serde_json::Value)],
) -> Result<Vec<String>, HostedRefusal> {
    let mut batch = Vec::with_capacity(events.len());
    for (index, (routing, trigger)) in events.iter().enumerate() {
        let refused = |reason: String| {
            HostedRefusal::Refused(format!("event {} cannot be created: {reason}", index + 1))
        };
        let trigger = event::Trigger::from_value(trigger).map_err(|e| refused(e.to_string()))?;
        let create = Create {
            seq: index as u64,
            request_id: request_id.to_owned(),
            index: index as u32,
            integration_id: integration_id.to_owned(),
            form: routing.form.clone(),
            plan: routing.plan.clone(),
            sender: routing.sender.clone(),
            flood_control: routing.flood_control,
            trigger,
        };
        batch.push(create);
    }
    let answers = process_batch(state, crate::hosted::HOSTED_AGENT_ID, &mut batch, true);
    if let Some(Answer::Reject { seq, message, .. }) = answers.iter().find(|answer| {
        matches!(
            answer,
            Answer::Reject {
                retryable: false,
                ..
            }
        )
    }) {
        return Err(HostedRefusal::Refused(format!(
            "event {} cannot be created: {message}",
            seq + 1
        )));
    }
    let mut ids = Vec::with_capacity(answers.len());
    let mut created = 0;
    for answer in answers {
        match answer {
            Answer::Ack {
                event_id,
                duplicate,
                ..
            } => {
                created += u64::from(!duplicate);
                ids.push(event_id);
            }
            Answer::Reject { .. } => return Err(HostedRefusal::Unavailable),
        }
    }
    state
        .metrics
        .created_for(crate::hosted::HOSTED_AGENT_ID, created);
    Ok(ids)
}

/// A validated `event.create` waiting for the store to give it an id.
struct Pending<'a> {
    create: &'a Create,
    checked: event::Checked<'a>,
    admitted: crate::notify::Admitted,
    agent_id: &'a str,
    created: &'a str,
    notifier: &'a crate::notify::Notifier,
    /// Set by `to_json` (new events only) when the alert rate filter suppressed the event.
    suppressed: std::cell::Cell<bool>,
}

impl Pending<'_> {
    /// What the notifier needs of the event the store wrote (or found) for this one.
    fn notice<'n>(&'n self, written: &'n crate::store::Written) -> crate::notify::Created<'n> {
        crate::notify::Created {
            event_id: &written.event_id,
            duplicate: written.duplicate,
            integration_id: &self.create.integration_id,
            recipients: self.checked.recipients(),
            admitted: &self.admitted,
            flood_control: self.create.flood_control,
            suppressed: self.suppressed.get(),
        }
    }
}

impl NewEvent for Pending<'_> {
    fn request_id(&self) -> &str {
        &self.create.request_id
    }

    fn index(&self) -> u32 {
        self.create.index
    }

    /// Called for new events only, so the alert rate filter counts each event once.
    fn to_json(&self, event_id: &str) -> Vec<u8> {
        let suppressed = self
            .notifier
            .rate_filter(&self.create.integration_id, self.checked.recipients());
        let json = self.checked.to_json(&event::Origin {
            event_id,
            request_id: &self.create.request_id,
            agent_id: self.agent_id,
            integration_id: &self.create.integration_id,
            form: self.create.form.as_deref(),
            plan: self.create.plan.as_deref(),
            flood_control: self.create.flood_control,
            suppressed: suppressed.as_deref(),
            created: self.created,
        });
        self.suppressed.set(suppressed.is_some());
        json
    }
}

/// The reject message when storage failed; the agent keeps the entry and retries.
const UNAVAILABLE: &str = "the central could not store the event; retry later";

fn unavailable(seq: u64) -> Answer {
    Answer::Reject {
        seq,
        retryable: true,
        status: 503,
        message: UNAVAILABLE.to_owned(),
    }
}

async fn write_answers(
    state: Arc<State>,
    mut sink: futures_util::stream::SplitSink<Socket, Message>,
    mut from_reader: mpsc::Receiver<Outgoing>,
    agent_id: String,
) {
    while let Some(outgoing) = from_reader.recv().await {
        match outgoing {
            Outgoing::Close(message) => {
                let _ = sink.send(message).await;
                break;
            }
            Outgoing::Frame(text) => {
                if sink.send(Message::text(text)).await.is_err() {
                    return;
                }
            }
            Outgoing::Answers { frames, durable } => {
                let durable_ok = if durable {
                    let started = std::time::Instant::now();
                    let flushed = state.store.wait_durable().await;
                    state.metrics.store_flush.observe(started.elapsed());
                    match flushed {
                        Ok(()) => true,
                        Err(error) => {
                            tracing::error!(%error, "flush failed; answering retryable rejects");
                            false
                        }
                    }
                } else {
                    true
                };
                for answer in frames {
                    let frame = match answer {
                        Answer::Ack {
                            seq,
                            event_id,
                            duplicate,
                        } if durable_ok => {
                            if duplicate {
                                Metrics::add(&state.metrics.duplicates_answered, 1);
                            } else {
                                state.metrics.created_for(&agent_id, 1);
                            }
                            CentralFrame::Ack { seq, event_id }
                        }
                        Answer::Ack { seq, .. } => {
                            Metrics::add(&state.metrics.frames_rejected, 1);
                            CentralFrame::Reject {
                                seq,
                                retryable: true,
                                status: 503,
                                message: UNAVAILABLE.to_owned(),
                            }
                        }
                        Answer::Reject {
                            seq,
                            retryable,
                            status,
                            message,
                        } => {
                            Metrics::add(&state.metrics.frames_rejected, 1);
                            CentralFrame::Reject {
                                seq,
                                retryable,
                                status,
                                message,
                            }
                        }
                    };
                    if sink.feed(Message::text(frame.to_text())).await.is_err() {
                        return;
                    }
                }
                if sink.flush().await.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(dir: &std::path::Path) -> Arc<State> {
        let config = crate::CentralConfig::new("127.0.0.1:0".parse().expect("addr"), dir)
            .with_agent("agent-01", "token");
        let (_stop, shutdown) = tokio::sync::watch::channel(false);
        let store = crate::store::Store::open(dir).expect("open store");
        let (notifier, _queue) =
            crate::notify::Notifier::open(store.clone(), config.notifications.clone())
                .expect("open notifications");
        Arc::new(State {
            config,
            store,
            notifier,
            metrics: Metrics::default(),
            shutdown,
            ws_tracker: Arc::default(),
            access: crate::access::Access::default(),
            console: crate::console::Console::default(),
            hosted: None,
            agent_integrations: Arc::new(AgentIntegrations::new(None)),
        })
    }

    /// What the protocol's own types make of a frame (the reference for the direct reader).
    fn by_protocol(text: &str) -> Option<protocol::EventCreate> {
        match serde_json::from_str::<AgentFrame>(text) {
            Ok(AgentFrame::EventCreate(create)) => Some(create),
            _ => None,
        }
    }

    fn event_of(create: &Create) -> Result<serde_json::Value, event::TriggerError> {
        let origin = event::Origin {
            event_id: "e",
            request_id: &create.request_id,
            agent_id: "a",
            integration_id: &create.integration_id,
            form: create.form.as_deref(),
            plan: create.plan.as_deref(),
            flood_control: create.flood_control,
            suppressed: None,
            created: "t",
        };
        event::build(&create.trigger, &origin)
            .map(|json| serde_json::from_slice(&json).expect("event JSON"))
    }

    /// The direct reader says yes only when the protocol's types say yes, with the same fields.
    fn assert_agrees(text: &str) -> Result<(), proptest::test_runner::TestCaseError> {
        use proptest::prelude::*;
        let reference = by_protocol(text);
        match Create::parse(text) {
            Ok(create) => {
                let Some(reference) = reference else {
                    return Err(TestCaseError::fail(format!(
                        "accepted only directly: {text}"
                    )));
                };
                prop_assert_eq!(create.seq, reference.seq);
                prop_assert_eq!(&create.request_id, &reference.request_id);
                prop_assert_eq!(create.index, reference.index);
                prop_assert_eq!(&create.integration_id, &reference.integration_id);
                prop_assert_eq!(&create.form, &reference.form);
                let via_protocol = Create::from_protocol(reference).expect("readable");
                prop_assert_eq!(event_of(&create), event_of(&via_protocol));
            }
            // Refused here: classify falls back to the protocol's types; it must then find an
            // event.create exactly when they do.
            Err(_) => match classify(Message::text(text.to_owned())) {
                Inbound::Create(create) => {
                    let Some(reference) = reference else {
                        return Err(TestCaseError::fail(format!("created from: {text}")));
                    };
                    prop_assert_eq!(create.seq, reference.seq);
                }
                _ => prop_assert!(reference.is_none(), "{}", text),
            },
        }
        Ok(())
    }

    /// Frame texts around a valid `event.create`: each required member usually valid, sometimes
    /// odd (wrong type, escaped, out of range), sometimes missing; extra, repeated and unknown
    /// members; any order.
    fn frame_text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let member = |valid: &'static str, odd: Vec<&'static str>| {
            prop_oneof![
                6 => Just(valid.to_owned()),
                1 => prop::sample::select(odd).prop_map(str::to_owned),
            ]
        };
        let required = (
            member(
                r#""type":"event.create""#,
                vec![
                    r#""typ\u0065":"event\u002ecreate""#,
                    r#""type":"hello""#,
                    r#""type":1"#,
                    r#""type":0"#,
                    r#""type":null"#,
                ],
            ),
            member(
                r#""seq":7"#,
                vec![
                    r#""seq":-1"#,
                    r#""seq":"7""#,
                    r#""seq":7.0"#,
                    r#""s\u0065q":8"#,
                ],
            ),
            member(
                r#""requestId":"r-1""#,
                vec![r#""requestId":"r\"\u00e9""#, r#""requestId":1"#],
            ),
            member(
                r#""index":0"#,
                vec![r#""index":4294967295"#, r#""index":4294967296"#],
            ),
            member(r#""integrationId":"i""#, vec![r#""integrationId":null"#]),
            crate::event::tests::trigger_text().prop_map(|t| format!(r#""trigger":{t}"#)),
        );
        let extra = prop_oneof![
            prop::sample::select(vec![
                r#""form":null"#,
                r#""form":"Incident""#,
                r#""form":3"#,
                r#""agentId":"x""#,
                r#""version":1"#,
                r#""seq":9"#,
                r#""type":"event.create""#,
            ])
            .prop_map(str::to_owned),
            crate::event::tests::json_text().prop_map(|v| format!(r#""other":{v}"#)),
        ];
        let keep = prop_oneof![
            6 => Just(vec![0usize, 1, 2, 3, 4, 5]),
            1 => prop::sample::subsequence(vec![0usize, 1, 2, 3, 4, 5], 4..=5),
        ];
        (required, prop::collection::vec(extra, 0..3), keep)
            .prop_flat_map(|((a, b, c, d, e, f), extra, keep)| {
                let all = [a, b, c, d, e, f];
                let mut members: Vec<String> = keep.into_iter().map(|i| all[i].clone()).collect();
                members.extend(extra);
                Just(members).prop_shuffle()
            })
            .prop_map(|members| format!("{{{}}}", members.join(",")))
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]

        #[test]
        fn direct_reader_agrees_with_the_protocol_types(text in frame_text()) {
            assert_agrees(&text)?;
        }
    }

    #[test]
    fn direct_reader_edge_cases() {
        /// How a frame is read: directly, only through the protocol's types, or not at all.
        #[derive(Debug, PartialEq)]
        enum Read {
            Directly,
            Fallback,
            Refused,
        }
        const HEAD: &str = r#""seq":1,"requestId":"r","index":0,"integrationId":"i""#;
        let trigger = r#"{"priority":"high","properties":{"a":1}}"#;
        let create = |rest: &str| format!(r#"{{"type":"event.create",{HEAD},{rest}}}"#);
        let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let cases = [
            // Member order, escapes in names and the tag, unknown members, null form.
            (
                format!(r#"{{"trigger":{trigger},{HEAD},"type":"event.create"}}"#),
                Read::Directly,
            ),
            (
                format!(
                    r#"{{"typ\u0065":"event\u002ecreate","s\u0065q":1,"requestId":"r","index":0,
                    "integrationId":"i","form":null,"trigger":{trigger}}}"#
                ),
                Read::Directly,
            ),
            // An unknown member sends the frame to the protocol's types (the direct reader
            // cannot tell whether they would read it).
            (
                create(&format!(r#""trigger":{trigger},"x":[1,{{"y":null}}]"#)),
                Read::Fallback,
            ),
            // A tagged enum also reads the array form: only the fallback takes it.
            (
                format!(r#"["event.create",1,"r",0,"i",null,{trigger}]"#),
                Read::Fallback,
            ),
            // The tag must be a string; members must not repeat; unknown members must be JSON a
            // `Value` reads (no number out of range); nothing may follow the frame.
            (
                format!(r#"{{"type":1,{HEAD},"trigger":{trigger}}}"#),
                Read::Refused,
            ),
            (
                create(&format!(r#""seq":2,"trigger":{trigger}"#)),
                Read::Refused,
            ),
            (
                create(&format!(r#""type":"event.create","trigger":{trigger}"#)),
                Read::Refused,
            ),
            (
                create(&format!(r#""trigger":{trigger},"x":1e400"#)),
                Read::Refused,
            ),
            (
                create(&format!(r#""trigger":{trigger}}} trailing"#)),
                Read::Refused,
            ),
            // The nesting limit counts from the frame: 127 levels in all.
            (
                create(&format!(r#""trigger":{{"a":{}}}"#, nested(125))),
                Read::Directly,
            ),
            (
                create(&format!(r#""trigger":{{"a":{}}}"#, nested(126))),
                Read::Refused,
            ),
            (
                create(&format!(r#""x":{},"trigger":{{}}"#, nested(126))),
                Read::Fallback,
            ),
            (
                create(&format!(r#""x":{},"trigger":{{}}"#, nested(127))),
                Read::Refused,
            ),
            (
                r#"{"type":"hello","version":1,"agentId":"a"}"#.to_owned(),
                Read::Refused,
            ),
        ];
        for (text, expected) in cases {
            assert_agrees(&text).unwrap_or_else(|error| panic!("{error}"));
            let read = match (Create::parse(&text), classify(Message::text(text.clone()))) {
                (Ok(_), _) => Read::Directly,
                (Err(_), Inbound::Create(_)) => Read::Fallback,
                (Err(_), _) => Read::Refused,
            };
            assert_eq!(read, expected, "{text}");
        }
    }

    #[test]
    fn an_event_the_central_cannot_read_is_rejected_alone_not_the_connection() {
        let frame = |trigger: &str| {
            format!(
                r#"{{"type":"event.create","seq":9,"requestId":"r","index":0,"integrationId":"i","trigger":{trigger}}}"#
            )
        };
        let deep = format!("{}1{}", "[".repeat(300), "]".repeat(300));
        for trigger in [
            r#"{"properties":{"a":1e400}}"#,
            r#"{"properties":{"a":"\ud800"}}"#,
            r#"{"properties":{"a":"\udc00\u0041"}}"#,
            deep.as_str(),
        ] {
            match classify(Message::text(frame(trigger))) {
                Inbound::Malformed { seq, message } => {
                    assert_eq!(seq, 9);
                    assert!(
                        message.starts_with("malformed event.create frame"),
                        "{message}"
                    );
                }
                _ => panic!(
                    "{}: expected a reject of seq 9",
                    &trigger[..20.min(trigger.len())]
                ),
            }
        }
    }

    #[test]
    fn a_message_is_capped_at_the_shared_frame_limit() {
        let limits = socket_limits();
        assert_eq!(
            limits.max_message_size,
            Some(protocol::limits::MAX_FRAME_BYTES)
        );
        assert_eq!(
            limits.max_frame_size,
            Some(protocol::limits::MAX_FRAME_BYTES)
        );
    }

    #[test]
    fn malformed_and_other_frames_are_answered_as_before() {
        // A frame with a seq but not a valid event.create: rejected with the protocol types'
        // reason, so the agent can dead-letter it.
        let text = r#"{"type":"event.create","seq":5,"requestId":"r"}"#;
        let expected = serde_json::from_str::<AgentFrame>(text).expect_err("malformed");
        match classify(Message::text(text)) {
            Inbound::Malformed { seq, message } => {
                assert_eq!(seq, 5);
                assert_eq!(message, format!("malformed event.create frame: {expected}"));
                assert!(message.contains("missing field `index`"), "{message}");
            }
            _ => panic!("expected a malformed answer"),
        }
        let text = r#"{"type":"event.create","seq":6,"requestId":"r","index":-1,
            "integrationId":"i","trigger":{}}"#;
        assert!(matches!(
            classify(Message::text(text)),
            Inbound::Malformed { seq: 6, .. }
        ));
        // Without a seq the stream is unreadable; a second hello is a protocol error.
        assert!(matches!(
            classify(Message::text(r#"{"type":"event.create"}"#)),
            Inbound::Fatal(CloseCode::Unsupported, _)
        ));
        assert!(matches!(
            classify(Message::text("not json")),
            Inbound::Fatal(CloseCode::Unsupported, _)
        ));
        assert!(matches!(
            classify(Message::text(
                r#"{"type":"hello","version":1,"agentId":"a"}"#
            )),
            Inbound::Fatal(CloseCode::Protocol, _)
        ));
        assert!(matches!(
            classify(Message::binary(vec![1u8])),
            Inbound::Fatal(CloseCode::Unsupported, _)
        ));
    }

    #[test]
    fn a_status_frame_is_read_for_the_console_and_an_unreadable_one_ends_the_stream() {
        let text = r#"{"type":"status","queueDepth":3,"deadLetters":0,"oldestPendingMs":900,
            "integrations":["a"]}"#;
        match classify(Message::text(text)) {
            Inbound::Status(status) => {
                assert_eq!(
                    (status.queue_depth, status.oldest_pending_ms),
                    (3, Some(900))
                );
                assert_eq!(status.integrations, ["a"]);
            }
            _ => panic!("expected a status"),
        }
        // A status the central cannot read has no seq to answer: the stream is unreadable.
        assert!(matches!(
            classify(Message::text(r#"{"type":"status","queueDepth":"many"}"#)),
            Inbound::Fatal(CloseCode::Unsupported, _)
        ));
    }

    #[test]
    fn process_answers_in_order_and_dedupes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = state(dir.path());
        let frame = |seq: u64, request: &str, trigger: &str| {
            let text = format!(
                r#"{{"type":"event.create","seq":{seq},"requestId":"{request}","index":0,
                "integrationId":"i","trigger":{trigger}}}"#
            );
            match classify(Message::text(text)) {
                Inbound::Create(create) => create,
                _ => panic!("not a create"),
            }
        };
        let mut batch = vec![
            frame(1, "r-1", r#"{"priority":"high"}"#),
            frame(2, "r-2", r#"{"priority":"urgent"}"#),
            frame(3, "r-1", r#"{}"#),
            frame(4, "r-3", r#"[]"#),
        ];
        let answers = process(&state, "agent-01", &mut batch);
        assert!(batch.is_empty());
        let ids: Vec<(u64, Option<&str>, bool)> = answers
            .iter()
            .map(|answer| match answer {
                Answer::Ack {
                    seq,
                    event_id,
                    duplicate,
                } => (*seq, Some(event_id.as_str()), *duplicate),
                Answer::Reject {
                    seq,
                    retryable,
                    status,
                    message,
                } => {
                    assert!(!retryable && *status == 400, "{message}");
                    (*seq, None, false)
                }
            })
            .collect();
        assert_eq!(ids.len(), 4);
        assert_eq!((ids[0].0, ids[0].2), (1, false));
        assert_eq!((ids[1].0, ids[1].1), (2, None));
        assert_eq!((ids[2].0, ids[2].1, ids[2].2), (3, ids[0].1, true));
        assert_eq!((ids[3].0, ids[3].1), (4, None));
        let stored = state
            .store
            .get(ids[0].1.expect("id"))
            .expect("read")
            .expect("stored");
        assert_eq!(stored["priority"], "HIGH");
        assert_eq!(stored["agentId"], "agent-01");
    }

    /// A frame as the agent's `create_event` path sends it: the head, the request body embedded
    /// as it came (a pretty-printed 1 KB alert as `properties`), `seq` last.
    fn realistic_frame(seq: u64) -> String {
        let body = include_str!("../../examples/payloads/datadog-1.json");
        format!(
            "{{\"type\":\"event.create\",\"requestId\":\"{}\",\"index\":0,\
             \"integrationId\":\"generic-event\",\"form\":\"Incident\",\
             \"trigger\":{{\"properties\":{}}},\"seq\":{seq}}}",
            uuid::Uuid::new_v4(),
            body.trim()
        )
    }

    /// An event whose JSON is a fixed 1300 bytes (the size of a realistic event), to time the
    /// store alone.
    struct Prebuilt(String);

    impl NewEvent for Prebuilt {
        fn request_id(&self) -> &str {
            &self.0
        }

        fn index(&self) -> u32 {
            0
        }

        fn to_json(&self, _: &str) -> Vec<u8> {
            vec![b'x'; 1300]
        }
    }

    /// Process CPU time (all threads, sled's included), from /proc.
    fn cpu_time() -> Duration {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or("", |(_, rest)| rest)
            .split_whitespace()
            .collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|t| t.parse::<u64>().ok())
                .unwrap_or(0)
        };
        // utime and stime are fields 14 and 15 (1-based, counting pid and comm): 11 and 12 here.
        Duration::from_millis((ticks(11) + ticks(12)) * 10)
    }

    /// The ingest path's cost per event on this machine (a measurement, not a check), over 20k
    /// realistic `event.create` frames (a 1 KB alert as the trigger, as the agent's
    /// `create_event` path sends it): `classify` alone; encoding as many acks; `classify` +
    /// `event::build`; the store alone (`create_batch` of events with a fixed 1300-byte JSON);
    /// and the whole `classify` → `process` path in batches of 64 like an agent's window,
    /// without and with the per-batch flush (process CPU counted, sled's threads included).
    /// Each figure is the best of three runs, as the machine is noisy.
    /// Run with `cargo test -p central --release -- --ignored --nocapture ingest_costs`.
    #[test]
    #[ignore]
    fn ingest_costs() {
        const N: usize = 20_000;
        const BATCH: usize = 64;
        const RUNS: usize = 3;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let frames: Vec<Message> = (0..N as u64)
            .map(|seq| Message::text(realistic_frame(seq)))
            .collect();
        eprintln!("frame size {} B, {N} frames", frames[0].len());
        let report = |what: &str, best: Duration, cpu: Option<Duration>| {
            let cpu = cpu.map_or(String::new(), |cpu| {
                format!(
                    ", {:.0} events per CPU-second",
                    N as f64 / cpu.as_secs_f64()
                )
            });
            eprintln!(
                "{what}: {:.0} events/s ({:?}/event){cpu}",
                N as f64 / best.as_secs_f64(),
                best / N as u32
            );
        };
        let classify_all = |chunk: &[Message]| -> Vec<Create> {
            chunk
                .iter()
                .map(|frame| match classify(frame.clone()) {
                    Inbound::Create(create) => create,
                    _ => panic!("not a create"),
                })
                .collect()
        };

        let mut best = Duration::MAX;
        for _ in 0..=RUNS {
            // The first round only warms up (allocator, caches); `min` keeps the best anyway.
            let t = std::time::Instant::now();
            for frame in &frames {
                assert!(matches!(classify(frame.clone()), Inbound::Create(_)));
            }
            best = best.min(t.elapsed());
        }
        report("classify", best, None);

        let mut best = Duration::MAX;
        for _ in 0..RUNS {
            let t = std::time::Instant::now();
            for seq in 0..N as u64 {
                let ack = CentralFrame::Ack {
                    seq,
                    event_id: "0190c2a4-7b1e-7c3d-9f00-123456789abc".to_owned(),
                };
                std::hint::black_box(Message::text(ack.to_text()));
            }
            best = best.min(t.elapsed());
        }
        report("ack frames (to_text)", best, None);

        let mut best = Duration::MAX;
        for _ in 0..RUNS {
            let t = std::time::Instant::now();
            for frame in &frames {
                let Inbound::Create(create) = classify(frame.clone()) else {
                    panic!("not a create")
                };
                let origin = event::Origin {
                    event_id: "6a1f4c52-1111-4f00-8000-000000000000",
                    request_id: &create.request_id,
                    agent_id: "agent-01",
                    integration_id: &create.integration_id,
                    form: create.form.as_deref(),
                    plan: create.plan.as_deref(),
                    flood_control: create.flood_control,
                    suppressed: None,
                    created: "2024-01-01T00:00:00.000Z",
                };
                assert!(event::build(&create.trigger, &origin).is_ok());
            }
            best = best.min(t.elapsed());
        }
        report("classify+build", best, None);

        let (mut best, mut best_cpu) = (Duration::MAX, Duration::MAX);
        for _ in 0..RUNS {
            let dir = tempfile::tempdir().expect("tempdir");
            let state = state(dir.path());
            let batches: Vec<Vec<Prebuilt>> = frames
                .chunks(BATCH)
                .map(|chunk| {
                    classify_all(chunk)
                        .into_iter()
                        .map(|create| Prebuilt(create.request_id))
                        .collect()
                })
                .collect();
            let (cpu, t) = (cpu_time(), std::time::Instant::now());
            for batch in &batches {
                state.store.create_batch("agent-01", batch).expect("write");
            }
            best = best.min(t.elapsed());
            best_cpu = best_cpu.min(cpu_time().saturating_sub(cpu));
        }
        report("create_batch alone (1300 B values)", best, Some(best_cpu));

        for flush in [false, true] {
            let (mut best, mut best_cpu) = (Duration::MAX, Duration::MAX);
            for _ in 0..RUNS {
                let dir = tempfile::tempdir().expect("tempdir");
                let state = state(dir.path());
                let (cpu, t) = (cpu_time(), std::time::Instant::now());
                for chunk in frames.chunks(BATCH) {
                    let mut batch = classify_all(chunk);
                    let answers = process(&state, "agent-01", &mut batch);
                    assert!(answers.iter().all(|a| matches!(
                        a,
                        Answer::Ack {
                            duplicate: false,
                            ..
                        }
                    )));
                    if flush {
                        runtime.block_on(state.store.wait_durable()).expect("flush");
                    }
                }
                best = best.min(t.elapsed());
                best_cpu = best_cpu.min(cpu_time().saturating_sub(cpu));
            }
            let what = if flush {
                "classify+process+flush"
            } else {
                "classify+process"
            };
            report(what, best, Some(best_cpu));
        }
    }
}
