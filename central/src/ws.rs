//! The agent websocket (`protocol::CONNECT_PATH`): upgrade, `hello`/`welcome`, then a pipelined
//! stream of `event.create` frames answered in order with `ack` or `reject`.
//!
//! Throughput comes from batching: the reader takes every frame that is already available (up
//! to [`MAX_BATCH`]), writes them in one store transaction and hands the answers to a writer
//! task, which waits for one group-committed flush and then sends them. Reading the next batch
//! overlaps with flushing the previous one, and answers still leave in arrival order because
//! the writer handles batches one after another. An `ack` is only sent once its event is on disk.

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
use protocol::{AgentFrame, CentralFrame, EventCreate, PROTOCOL_VERSION};
use tokio::sync::{mpsc, Notify};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::event;
use crate::http_util;
use crate::metrics::Metrics;
use crate::serve::Body;
use crate::store::NewEvent;
use crate::State;

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
                let socket =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
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
    let refusal = match hello {
        Err(_) => Some((CloseCode::Policy, "no hello within 10 s".to_owned())),
        Ok(None) => return,
        Ok(Some(Err(reason))) => Some((CloseCode::Protocol, reason)),
        Ok(Some(Ok(version))) if version != PROTOCOL_VERSION => Some((
            CloseCode::Policy,
            format!(
                "unsupported protocol version {version}; this central speaks {PROTOCOL_VERSION}"
            ),
        )),
        Ok(Some(Ok(_))) => None,
    };
    if let Some((code, reason)) = refusal {
        tracing::warn!(agent = %agent_id, %peer, %reason, "agent connection refused");
        let _ = socket.send(close(code, &reason)).await;
        return;
    }
    let welcome = CentralFrame::Welcome {
        version: PROTOCOL_VERSION,
        agent_id: agent_id.clone(),
    };
    if socket.send(Message::text(welcome.to_text())).await.is_err() {
        return;
    }
    state
        .metrics
        .agents_connected
        .fetch_add(1, Ordering::Relaxed);
    let _connected = Connected(&state.metrics);
    tracing::info!(agent = %agent_id, %peer, "agent connected");

    let (sink, mut stream) = socket.split();
    let (to_writer, from_reader) = mpsc::channel::<Outgoing>(4);
    let writer = tokio::spawn(write_answers(state.clone(), sink, from_reader));

    let mut batch: Vec<EventCreate> = Vec::new();
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

/// Read until the first data frame; `Ok(version)` for a `hello`, `Err(reason)` for anything
/// else, `None` when the socket ended first.
async fn first_frame(socket: &mut Socket) -> Option<Result<u32, String>> {
    loop {
        let message = socket.next().await?.ok()?;
        match message {
            Message::Text(text) => {
                return Some(match serde_json::from_str::<AgentFrame>(text.as_str()) {
                    Ok(AgentFrame::Hello { version, .. }) => Ok(version),
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
    Create(EventCreate),
    Malformed { seq: u64, message: String },
    Ignore,
    Closed,
    Fatal(CloseCode, String),
}

fn classify(message: Message) -> Inbound {
    match message {
        Message::Text(text) => match serde_json::from_str::<AgentFrame>(text.as_str()) {
            Ok(AgentFrame::EventCreate(create)) => Inbound::Create(create),
            Ok(AgentFrame::Hello { .. }) => {
                Inbound::Fatal(CloseCode::Protocol, "hello was already received".to_owned())
            }
            Err(error) => {
                // If the frame names its seq, answer it so the agent can dead-letter the entry
                // instead of resending it forever; otherwise the stream is unreadable.
                let seq = serde_json::from_str::<serde_json::Value>(text.as_str())
                    .ok()
                    .and_then(|value| value.get("seq").and_then(serde_json::Value::as_u64));
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
        },
        Message::Binary(_) => Inbound::Fatal(
            CloseCode::Unsupported,
            "binary frames are not supported".to_owned(),
        ),
        Message::Close(_) => Inbound::Closed,
        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Inbound::Ignore,
    }
}

/// Validate and write `batch` (emptied), returning one answer per frame in order.
fn process(state: &State, agent_id: &str, batch: &mut Vec<EventCreate>) -> Vec<Answer> {
    if batch.is_empty() {
        return Vec::new();
    }
    let created = crate::http_util::now_rfc3339();
    let mut answers: Vec<Option<Answer>> = Vec::with_capacity(batch.len());
    let mut writes = Vec::new();
    let mut write_seqs = Vec::new();
    for create in batch.drain(..) {
        let event_id = uuid::Uuid::new_v4().to_string();
        let origin = event::Origin {
            event_id: &event_id,
            request_id: &create.request_id,
            agent_id,
            integration_id: &create.integration_id,
            form: create.form.as_deref(),
            created: &created,
        };
        let built = event::build(&create.trigger, &origin)
            .map_err(|error| error.to_string())
            .and_then(|event| serde_json::to_vec(&event).map_err(|error| error.to_string()));
        match built {
            Ok(json) => {
                writes.push(NewEvent {
                    request_id: create.request_id,
                    index: create.index,
                    event_id,
                    json,
                });
                write_seqs.push((answers.len(), create.seq));
                answers.push(None);
            }
            Err(message) => {
                tracing::info!(agent = %agent_id, request_id = %create.request_id,
                    index = create.index, %message, "event.create rejected");
                answers.push(Some(Answer::Reject {
                    seq: create.seq,
                    retryable: false,
                    status: 400,
                    message,
                }));
            }
        }
    }
    if !writes.is_empty() {
        match state.store.create_batch(agent_id, &writes) {
            Ok(written) => {
                for ((slot, seq), written) in write_seqs.into_iter().zip(written) {
                    if let Some(answer) = answers.get_mut(slot) {
                        *answer = Some(Answer::Ack {
                            seq,
                            event_id: written.event_id,
                            duplicate: written.duplicate,
                        });
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
    answers.into_iter().flatten().collect()
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
) {
    while let Some(outgoing) = from_reader.recv().await {
        match outgoing {
            Outgoing::Close(message) => {
                let _ = sink.send(message).await;
                break;
            }
            Outgoing::Answers { frames, durable } => {
                let durable_ok = if durable {
                    match state.store.wait_durable().await {
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
                            let counter = if duplicate {
                                &state.metrics.duplicates_answered
                            } else {
                                &state.metrics.events_created
                            };
                            Metrics::add(counter, 1);
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
