//! Relay tests against real sockets on 127.0.0.1: a small scripted websocket "central" per test
//! and an in-memory outbox. Intervals are milliseconds so the whole module runs in seconds.

use super::*;

use std::collections::VecDeque;
use std::sync::Mutex;

use protocol::EventCreate;
use tokio::sync::Notify;

use crate::store::OutboxEntry;

use base64::Engine as _;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::WebSocketStream;

const TOKEN: &str = "agent-token-7f3a9c";
const AGENT_ID: &str = "agent-test";
const STEP: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// In-memory outbox

#[derive(Default)]
struct MemState {
    pending: BTreeMap<u64, EventCreate>,
    acked: Vec<(u64, String)>,
    rejected: Vec<(u64, u16, String)>,
    next_seq: u64,
}

struct MemOutbox {
    state: Mutex<MemState>,
    notify: Arc<Notify>,
}

impl MemOutbox {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(MemState::default()),
            notify: Arc::new(Notify::new()),
        })
    }

    /// Append `n` entries and wake the relay; returns their seqs.
    fn push(&self, n: usize) -> Vec<u64> {
        let mut seqs = Vec::new();
        {
            let mut st = self.state.lock().unwrap();
            for _ in 0..n {
                st.next_seq += 1;
                let seq = st.next_seq;
                st.pending.insert(seq, entry(seq));
                seqs.push(seq);
            }
        }
        self.notify.notify_waiters();
        seqs
    }

    fn pending(&self) -> Vec<u64> {
        self.state.lock().unwrap().pending.keys().copied().collect()
    }

    fn acked(&self) -> Vec<(u64, String)> {
        self.state.lock().unwrap().acked.clone()
    }

    fn rejected(&self) -> Vec<(u64, u16, String)> {
        self.state.lock().unwrap().rejected.clone()
    }
}

impl Outbox for MemOutbox {
    fn pending_after(&self, after: Option<u64>, max: usize) -> Result<Vec<OutboxEntry>, String> {
        let st = self.state.lock().unwrap();
        let start = after.map_or(0, |a| a + 1);
        Ok(st
            .pending
            .range(start..)
            .take(max)
            .map(|(_, e)| OutboxEntry::encode(e))
            .collect())
    }

    fn acknowledged(&self, acks: &[(u64, String)]) -> Result<(), String> {
        let mut st = self.state.lock().unwrap();
        for (seq, event_id) in acks {
            st.pending
                .remove(seq)
                .ok_or_else(|| format!("ack of unknown seq {seq}"))?;
            st.acked.push((*seq, event_id.clone()));
        }
        Ok(())
    }

    fn rejected(&self, seq: u64, status: u16, message: &str) -> Result<(), String> {
        let mut st = self.state.lock().unwrap();
        st.pending
            .remove(&seq)
            .ok_or_else(|| format!("reject of unknown seq {seq}"))?;
        st.rejected.push((seq, status, message.to_string()));
        Ok(())
    }

    fn appended(&self) -> Arc<Notify> {
        Arc::clone(&self.notify)
    }
}

fn entry(seq: u64) -> EventCreate {
    EventCreate {
        seq,
        request_id: format!("req-{seq}"),
        index: 0,
        integration_id: "int-1".into(),
        form: Some("Incident Alert".into()),
        plan: None,
        sender: None,
        flood_control: false,
        trigger: json!({"properties": {"n": seq}}),
    }
}

// ---------------------------------------------------------------------------------------------
// Relay side

fn test_settings(url: &str) -> RelaySettings {
    RelaySettings {
        target: Target::parse(url).unwrap(),
        token: Token::inline(TOKEN).unwrap(),
        tls: None,
        proxy: None,
        window: 8,
        ping_interval: Duration::from_millis(50),
        dead_after: Duration::from_millis(400),
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
        ack_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(2),
        welcome_timeout: Duration::from_secs(2),
        shutdown_grace: Duration::from_millis(500),
        ack_latency: None,
        heartbeat: Default::default(),
        integrations: None,
        activity: None,
        status_source: None,
    }
}

struct Relay {
    status: watch::Receiver<RelayStatus>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Relay {
    fn start(settings: RelaySettings, outbox: Arc<MemOutbox>) -> Self {
        let (status_tx, status) = watch::channel(RelayStatus::default());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let task = tokio::spawn(run(
            settings,
            AGENT_ID.into(),
            outbox,
            status_tx,
            shutdown_rx,
        ));
        Self {
            status,
            shutdown,
            task,
        }
    }

    fn status(&self) -> RelayStatus {
        self.status.borrow().clone()
    }

    /// Request shutdown and return how long `run` took to return.
    async fn stop(self) -> Duration {
        let started = std::time::Instant::now();
        self.shutdown.send(true).unwrap();
        tokio::time::timeout(STEP, self.task)
            .await
            .expect("run() did not return")
            .unwrap();
        started.elapsed()
    }
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + STEP;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Central side

type ServerWs = WebSocketStream<TcpStream>;

async fn listen() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "ws://{}{}",
        listener.local_addr().unwrap(),
        protocol::CONNECT_PATH
    );
    (listener, url)
}

fn bearer_ok(req: &Request) -> bool {
    let expected = format!("Bearer {TOKEN}");
    req.headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        == Some(expected.as_str())
}

/// Accept one upgrade on an already accepted stream, answering 401 unless the bearer token is
/// right. `Err` when the upgrade was refused.
#[allow(clippy::result_large_err)] // the callback signature is tungstenite's
async fn upgrade<S>(stream: S) -> Result<WebSocketStream<S>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let check = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        assert_eq!(req.uri().path(), protocol::CONNECT_PATH);
        if bearer_ok(req) {
            Ok(resp)
        } else {
            Err(http::Response::builder()
                .status(401)
                .body(Some("bad agent token".into()))
                .unwrap())
        }
    };
    tokio_tungstenite::accept_hdr_async(stream, check)
        .await
        .map_err(|e| e.to_string())
}

async fn accept(listener: &TcpListener) -> Result<ServerWs, String> {
    let (tcp, _) = tokio::time::timeout(STEP, listener.accept())
        .await
        .expect("no connection")
        .unwrap();
    upgrade(tcp).await
}

/// Read the hello (checking it) and answer welcome.
async fn welcome<S>(ws: &mut WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let hello = next_text(ws).await.expect("hello");
    let frame: AgentFrame = serde_json::from_str(&hello).unwrap();
    assert_eq!(
        frame,
        AgentFrame::Hello {
            version: PROTOCOL_VERSION,
            agent_id: AGENT_ID.into(),
            software_version: Some(env!("CARGO_PKG_VERSION").into()),
        }
    );
    send(
        ws,
        CentralFrame::Welcome {
            version: PROTOCOL_VERSION,
            agent_id: AGENT_ID.into(),
            accepts: Vec::new(),
        },
    )
    .await;
}

async fn accept_welcomed(listener: &TcpListener) -> ServerWs {
    let mut ws = accept(listener).await.expect("upgrade refused");
    welcome(&mut ws).await;
    ws
}

/// Next text frame (pings are answered by tungstenite while reading); `None` on close/EOF.
async fn next_text<S>(ws: &mut WebSocketStream<S>) -> Option<String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match tokio::time::timeout(STEP, ws.next())
            .await
            .expect("no frame from the relay")
        {
            Some(Ok(Message::Text(t))) => return Some(t.as_str().to_string()),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => continue,
        }
    }
}

async fn recv_event<S>(ws: &mut WebSocketStream<S>) -> EventCreate
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let text = next_text(ws)
        .await
        .expect("connection ended while waiting for event.create");
    match serde_json::from_str::<AgentFrame>(&text).unwrap() {
        AgentFrame::EventCreate(e) => e,
        other => panic!("expected event.create, got {other:?}"),
    }
}

/// An event.create if one arrives within `wait`.
async fn recv_event_within(ws: &mut ServerWs, wait: Duration) -> Option<EventCreate> {
    let deadline = Instant::now() + wait;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next()).await.ok()??;
        match msg {
            Ok(Message::Text(t)) => match serde_json::from_str::<AgentFrame>(t.as_str()).unwrap() {
                AgentFrame::EventCreate(e) => return Some(e),
                other => panic!("expected event.create, got {other:?}"),
            },
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

async fn send<S>(ws: &mut WebSocketStream<S>, frame: CentralFrame)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.send(Message::text(frame.to_text())).await.unwrap();
}

async fn ack<S>(ws: &mut WebSocketStream<S>, seq: u64)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    send(
        ws,
        CentralFrame::Ack {
            seq,
            event_id: format!("ev-{seq}"),
        },
    )
    .await;
}

/// Keep reading until the relay's close frame (true) or EOF without one (false).
async fn saw_close(ws: &mut ServerWs) -> bool {
    loop {
        match tokio::time::timeout(STEP, ws.next()).await {
            Ok(Some(Ok(Message::Close(_)))) => return true,
            Ok(Some(Ok(_))) => continue,
            _ => return false,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Streaming

#[tokio::test]
async fn delivers_all_entries_in_order_and_removes_them_after_ack() {
    let (listener, url) = listen().await;
    let outbox = MemOutbox::new();
    outbox.push(50);
    let relay = Relay::start(test_settings(&url), outbox.clone());
    let mut ws = accept_welcomed(&listener).await;

    let mut seen = Vec::new();
    for _ in 0..50 {
        let e = recv_event(&mut ws).await;
        assert_eq!(e, entry(e.seq), "frame content is the outbox entry");
        seen.push(e.seq);
        ack(&mut ws, e.seq).await;
    }
    assert_eq!(seen, (1..=50).collect::<Vec<_>>());
    wait_until("first 50 acked", || outbox.pending().is_empty()).await;

    // Entries appended later wake the idle relay (no polling).
    outbox.push(5);
    for expected in 51..=55 {
        let e = recv_event(&mut ws).await;
        assert_eq!(e.seq, expected);
        ack(&mut ws, e.seq).await;
    }
    wait_until("all acked", || outbox.pending().is_empty()).await;
    let acked = outbox.acked();
    assert_eq!(
        acked.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        (1..=55).collect::<Vec<_>>()
    );
    assert_eq!(acked[6].1, "ev-7", "event id recorded per seq");
    wait_until("status counters", || relay.status().acked_total == 55).await;
    let status = relay.status();
    assert!(status.connected);
    assert_eq!(status.in_flight, 0);
    assert_eq!(status.reconnects, 0);
    relay.stop().await;
}

#[tokio::test]
async fn window_bounds_unanswered_frames() {
    let (listener, url) = listen().await;
    let outbox = MemOutbox::new();
    outbox.push(20);
    let mut settings = test_settings(&url);
    settings.window = 4;
    let relay = Relay::start(settings, outbox.clone());
    let mut ws = accept_welcomed(&listener).await;

    let mut outstanding = VecDeque::new();
    let mut received = Vec::new();
    let mut max_outstanding = 0;
    while received.len() < 20 || !outstanding.is_empty() {
        // Collect everything the relay is willing to send, then answer only the oldest.
        while let Some(e) = recv_event_within(&mut ws, Duration::from_millis(30)).await {
            outstanding.push_back(e.seq);
            received.push(e.seq);
            max_outstanding = max_outstanding.max(outstanding.len());
            assert!(relay.status().in_flight <= 4);
        }
        let seq = outstanding
            .pop_front()
            .expect("relay stalled with room in its window");
        ack(&mut ws, seq).await;
    }
    assert_eq!(
        max_outstanding, 4,
        "the window is used fully and never exceeded"
    );
    assert_eq!(received, (1..=20).collect::<Vec<_>>());
    wait_until("all acked", || outbox.pending().is_empty()).await;
    relay.stop().await;
}

#[tokio::test]
async fn reconnect_resends_exactly_the_unacknowledged_entries() {
    let (listener, url) = listen().await;
    let outbox = MemOutbox::new();
    outbox.push(10);
    let mut settings = test_settings(&url);
    settings.window = 16;
    let relay = Relay::start(settings, outbox.clone());

    let mut first = accept_welcomed(&listener).await;
    for expected in 1..=10 {
        assert_eq!(recv_event(&mut first).await.seq, expected);
    }
    for seq in 1..=4 {
        ack(&mut first, seq).await;
    }
    wait_until("acks 1..4 processed", || {
        outbox.pending() == (5..=10).collect::<Vec<_>>()
    })
    .await;
    drop(first); // mid-stream drop without a close frame

    let mut second = accept_welcomed(&listener).await;
    let mut resent = Vec::new();
    for _ in 5..=10 {
        let e = recv_event(&mut second).await;
        resent.push(e.seq);
        ack(&mut second, e.seq).await;
    }
    assert_eq!(
        resent,
        (5..=10).collect::<Vec<_>>(),
        "only unacked entries, in order"
    );
    assert!(
        recv_event_within(&mut second, Duration::from_millis(150))
            .await
            .is_none(),
        "acknowledged entries must not be resent"
    );
    wait_until("drained", || outbox.pending().is_empty()).await;
    let acked: Vec<u64> = outbox.acked().iter().map(|(s, _)| *s).collect();
    assert_eq!(
        acked,
        (1..=10).collect::<Vec<_>>(),
        "each entry acknowledged exactly once"
    );
    let status = relay.status();
    assert_eq!(status.reconnects, 1);
    assert!(status.connected);
    assert!(status.last_error.is_some(), "the disconnect is recorded");
    relay.stop().await;
}

#[tokio::test]
async fn non_retryable_reject_dead_letters_the_entry() {
    let (listener, url) = listen().await;
    let outbox = MemOutbox::new();
    outbox.push(3);
    let relay = Relay::start(test_settings(&url), outbox.clone());
    let mut ws = accept_welcomed(&listener).await;
    for expected in 1..=3 {
        assert_eq!(recv_event(&mut ws).await.seq, expected);
    }
    ack(&mut ws, 1).await;
    send(
        &mut ws,
        CentralFrame::Reject {
            seq: 2,
            retryable: false,
            status: 422,
            message: "trigger has no recipients".into(),
        },
    )
    .await;
    ack(&mut ws, 3).await;
    wait_until("outbox drained", || outbox.pending().is_empty()).await;
    assert_eq!(
        outbox.rejected(),
        vec![(2, 422, "trigger has no recipients".to_string())]
    );
    assert_eq!(
        outbox.acked().iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![1, 3]
    );
    assert!(
        recv_event_within(&mut ws, Duration::from_millis(200))
            .await
            .is_none(),
        "no resend"
    );
    wait_until("counters", || {
        relay.status().rejected_total == 1 && relay.status().acked_total == 2
    })
    .await;
    relay.stop().await;
}

#[tokio::test]
async fn retryable_reject_is_resent_later_on_the_same_connection() {
    let (listener, url) = listen().await;
    let outbox = MemOutbox::new();
    outbox.push(3);
    let mut settings = test_settings(&url);
    settings.backoff_initial = Duration::from_millis(60);
    settings.backoff_max = Duration::from_millis(200);
    let relay = Relay::start(settings, outbox.clone());
    let mut ws = accept_welcomed(&listener).await;
    for expected in 1..=3 {
        assert_eq!(recv_event(&mut ws).await.seq, expected);
    }
    let rejected_at = Instant::now();
    send(
        &mut ws,
        CentralFrame::Reject {
            seq: 1,
            retryable: true,
            status: 503,
            message: "busy".into(),
        },
    )
    .await;
    ack(&mut ws, 2).await;
    ack(&mut ws, 3).await;

    let again = recv_event(&mut ws).await;
    assert_eq!(again.seq, 1, "the refused entry comes back");
    assert!(
        rejected_at.elapsed() >= Duration::from_millis(30),
        "resend waits (half the back-off at least)"
    );
    assert!(
        outbox.pending().contains(&1),
        "still in the outbox until acked"
    );
    ack(&mut ws, 1).await;
    wait_until("drained", || outbox.pending().is_empty()).await;
    assert!(outbox.rejected().is_empty());
    assert!(
        recv_event_within(&mut ws, Duration::from_millis(200))
            .await
            .is_none(),
        "no further resend"
    );
    assert_eq!(relay.status().reconnects, 0);
    relay.stop().await;
}

#[tokio::test]
async fn unauthorized_upgrade_is_reported_and_retried_until_the_token_file_is_fixed() {
    let (listener, url) = listen().await;
    let dir = tempfile::tempdir().unwrap();
    let token_path = dir.path().join("agent.token");
    std::fs::write(&token_path, "wrong-token-55\n").unwrap();
    let mut settings = test_settings(&url);
    settings.token = Token::from_file(token_path.clone()).unwrap();
    let outbox = MemOutbox::new();
    outbox.push(1);
    let relay = Relay::start(settings, outbox.clone());

    for _ in 0..3 {
        assert!(
            accept(&listener).await.is_err(),
            "bad token must be refused"
        );
    }
    wait_until("last_error set", || relay.status().last_error.is_some()).await;
    let status = relay.status();
    let error = status.last_error.unwrap();
    assert!(error.contains("authentication"), "{error}");
    assert!(error.contains("401"), "{error}");
    assert!(
        !error.contains("wrong-token-55"),
        "the token is never reported"
    );
    assert!(!status.connected);

    // The operator fixes the token file; the relay picks it up on its next attempt.
    std::fs::write(&token_path, format!("{TOKEN}\n")).unwrap();
    let mut ws = loop {
        if let Ok(ws) = accept(&listener).await {
            break ws;
        }
    };
    welcome(&mut ws).await;
    assert_eq!(recv_event(&mut ws).await.seq, 1);
    ack(&mut ws, 1).await;
    wait_until("delivered", || outbox.pending().is_empty()).await;
    assert!(relay.status().connected);
    relay.stop().await;
}

#[tokio::test]
async fn silent_connection_is_dropped_after_dead_after_and_reconnected() {
    let (listener, url) = listen().await;
    let outbox = MemOutbox::new();
    let settings = test_settings(&url);
    let dead_after = settings.dead_after;
    let relay = Relay::start(settings, outbox.clone());
    let silent = accept_welcomed(&listener).await; // never read again: pings go unanswered
    let since = Instant::now();
    let mut second = accept_welcomed(&listener).await;
    let took = since.elapsed();
    assert!(
        took >= dead_after - Duration::from_millis(50),
        "dropped too early: {took:?}"
    );
    assert!(
        took < dead_after + Duration::from_millis(600),
        "dropped too late: {took:?}"
    );
    let error = relay.status().last_error.unwrap_or_default();
    assert!(error.contains("nothing received"), "{error}");
    drop(silent);

    // The new connection works.
    outbox.push(1);
    assert_eq!(recv_event(&mut second).await.seq, 1);
    ack(&mut second, 1).await;
    wait_until("delivered", || outbox.pending().is_empty()).await;
    wait_until("reconnect counted", || relay.status().reconnects == 1).await;
    relay.stop().await;
}

#[tokio::test]
async fn unanswered_entry_triggers_reconnect_after_ack_timeout() {
    let (listener, url) = listen().await;
    let outbox = MemOutbox::new();
    outbox.push(2);
    let mut settings = test_settings(&url);
    settings.ack_timeout = Duration::from_millis(300);
    let relay = Relay::start(settings, outbox.clone());
    let mut first = accept_welcomed(&listener).await;
    for expected in 1..=2 {
        assert_eq!(recv_event(&mut first).await.seq, expected);
    }
    ack(&mut first, 2).await;
    // Keep answering pings but never answer seq 1: the link is alive, the entry is stuck.
    let keeper = tokio::spawn(async move { saw_close(&mut first).await });
    let mut second = accept_welcomed(&listener).await;
    assert_eq!(
        recv_event(&mut second).await.seq,
        1,
        "the stuck entry is resent"
    );
    ack(&mut second, 1).await;
    wait_until("drained", || outbox.pending().is_empty()).await;
    let error = relay.status().last_error.unwrap_or_default();
    assert!(error.contains("no answer to event.create seq 1"), "{error}");
    keeper.abort();
    relay.stop().await;
}

#[tokio::test]
async fn unknown_frames_from_a_newer_central_are_ignored() {
    let (listener, url) = listen().await;
    let outbox = MemOutbox::new();
    outbox.push(1);
    let relay = Relay::start(test_settings(&url), outbox.clone());
    let mut ws = accept_welcomed(&listener).await;
    let e = recv_event(&mut ws).await;
    ws.send(Message::text(r#"{"type":"trigger.forward","x":1}"#))
        .await
        .unwrap();
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    ack(&mut ws, 99).await; // not in flight: ignored
    ack(&mut ws, e.seq).await;
    wait_until("delivered", || outbox.pending().is_empty()).await;
    let status = relay.status();
    assert!(status.connected);
    assert_eq!(status.reconnects, 0);
    assert_eq!(status.acked_total, 1);
    assert!(status.last_error.is_none());
    relay.stop().await;
}

#[tokio::test]
async fn answered_pings_keep_an_idle_connection_alive() {
    let (listener, url) = listen().await;
    let outbox = MemOutbox::new();
    let relay = Relay::start(test_settings(&url), outbox.clone());
    let mut ws = accept_welcomed(&listener).await;
    // Read (and so answer pings) for well over dead_after without any data frames.
    let mut pings = 0;
    let until = Instant::now() + Duration::from_millis(900);
    while let Ok(msg) = tokio::time::timeout_at(until, ws.next()).await {
        match msg {
            Some(Ok(Message::Ping(_))) => pings += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(pings >= 5, "pings every ping_interval, got {pings}");
    assert_eq!(relay.status().reconnects, 0);
    assert!(relay.status().connected);
    relay.stop().await;
}

#[tokio::test]
async fn wrong_protocol_version_is_an_error_and_retried() {
    let (listener, url) = listen().await;
    let relay = Relay::start(test_settings(&url), MemOutbox::new());
    for _ in 0..2 {
        let mut ws = accept(&listener).await.unwrap();
        next_text(&mut ws).await.expect("hello");
        send(
            &mut ws,
            CentralFrame::Welcome {
                version: PROTOCOL_VERSION + 1,
                agent_id: AGENT_ID.into(),
                accepts: Vec::new(),
            },
        )
        .await;
    }
    let error = relay.status().last_error.unwrap_or_default();
    assert!(error.contains("protocol version"), "{error}");
    relay.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Shutdown

#[tokio::test]
async fn shutdown_with_unanswered_entries_returns_promptly_and_closes() {
    let (listener, url) = listen().await;
    let outbox = MemOutbox::new();
    outbox.push(3);
    let relay = Relay::start(test_settings(&url), outbox.clone());
    let mut ws = accept_welcomed(&listener).await;
    for expected in 1..=3 {
        assert_eq!(recv_event(&mut ws).await.seq, expected);
    }
    let server = tokio::spawn(async move { saw_close(&mut ws).await });
    let took = relay.stop().await;
    assert!(took < Duration::from_millis(1200), "shutdown took {took:?}");
    assert!(server.await.unwrap(), "the relay sends a close frame");
    assert_eq!(
        outbox.pending(),
        vec![1, 2, 3],
        "unanswered entries stay in the outbox"
    );
}

#[tokio::test]
async fn shutdown_waits_briefly_for_outstanding_acks() {
    let (listener, url) = listen().await;
    let outbox = MemOutbox::new();
    outbox.push(3);
    let relay = Relay::start(test_settings(&url), outbox.clone());
    let mut ws = accept_welcomed(&listener).await;
    for expected in 1..=3 {
        assert_eq!(recv_event(&mut ws).await.seq, expected);
    }
    let server = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        for seq in 1..=3 {
            ack(&mut ws, seq).await;
        }
        saw_close(&mut ws).await
    });
    let took = relay.stop().await;
    assert!(took < Duration::from_millis(1200), "shutdown took {took:?}");
    assert!(server.await.unwrap());
    assert!(
        outbox.pending().is_empty(),
        "acks arriving during the grace period are recorded"
    );
}

#[tokio::test]
async fn shutdown_during_backoff_returns_promptly() {
    // A port with nothing listening: every attempt fails and the relay sits in back-off.
    let (listener, url) = listen().await;
    drop(listener);
    let mut settings = test_settings(&url);
    settings.backoff_initial = Duration::from_secs(30);
    settings.backoff_max = Duration::from_secs(30);
    let relay = Relay::start(settings, MemOutbox::new());
    wait_until("first failure", || relay.status().last_error.is_some()).await;
    let error = relay.status().last_error.unwrap();
    assert!(error.contains("cannot connect"), "{error}");
    let took = relay.stop().await;
    assert!(took < Duration::from_millis(300), "shutdown took {took:?}");
}

// ---------------------------------------------------------------------------------------------
// Proxy and TLS

/// A one-connection HTTP CONNECT proxy; returns the request head it received.
async fn connect_proxy(listener: TcpListener) -> String {
    let (mut client, _) = listener.accept().await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        client.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let target = head.split_whitespace().nth(1).unwrap().to_string();
    let mut upstream = TcpStream::connect(target).await.unwrap();
    client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    });
    head
}

#[tokio::test]
async fn connects_through_an_http_connect_proxy_with_credentials() {
    let (listener, url) = listen().await;
    let central_addr = listener.local_addr().unwrap();
    let proxy_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = proxy_listener.local_addr().unwrap();
    let proxy = tokio::spawn(connect_proxy(proxy_listener));

    let mut settings = test_settings(&url);
    settings.proxy = Some(Proxy::parse(&format!("http://svc:p%40ss@{proxy_addr}")).unwrap());
    let outbox = MemOutbox::new();
    outbox.push(2);
    let relay = Relay::start(settings, outbox.clone());
    let mut ws = accept_welcomed(&listener).await;
    for seq in 1..=2 {
        assert_eq!(recv_event(&mut ws).await.seq, seq);
        ack(&mut ws, seq).await;
    }
    wait_until("delivered", || outbox.pending().is_empty()).await;

    let head = proxy.await.unwrap();
    assert!(
        head.starts_with(&format!("CONNECT {central_addr} HTTP/1.1\r\n")),
        "{head}"
    );
    let expected_auth = base64::engine::general_purpose::STANDARD.encode("svc:p@ss");
    assert!(
        head.contains(&format!("Proxy-Authorization: Basic {expected_auth}\r\n")),
        "{head}"
    );
    relay.stop().await;
}

fn tls_acceptor() -> tokio_rustls::TlsAcceptor {
    let certs: Vec<_> = rustls_pemfile::certs(&mut include_str!("testdata/server.pem").as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = rustls_pemfile::private_key(&mut include_str!("testdata/server.key").as_bytes())
        .unwrap()
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

#[tokio::test]
async fn wss_with_a_private_ca_from_the_config_file() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("central-ca.pem"),
        include_str!("testdata/ca.pem"),
    )
    .unwrap();
    std::fs::write(dir.path().join("agent.token"), TOKEN).unwrap();
    let config: RelayConfig = toml::from_str(&format!(
        "url = \"wss://localhost:{port}\"\ntoken_file = \"agent.token\"\nca_file = \"central-ca.pem\"\n"
    ))
    .unwrap();
    let mut settings = config
        .validate(&dir.path().join("agent.toml"), dir.path())
        .unwrap();
    settings.backoff_initial = Duration::from_millis(10);
    settings.backoff_max = Duration::from_millis(50);
    assert_eq!(
        settings.url(),
        format!("wss://localhost:{port}{}", protocol::CONNECT_PATH)
    );

    let outbox = MemOutbox::new();
    outbox.push(2);
    let relay = Relay::start(settings, outbox.clone());
    let (tcp, _) = tokio::time::timeout(STEP, listener.accept())
        .await
        .unwrap()
        .unwrap();
    let tls = tls_acceptor().accept(tcp).await.unwrap();
    let mut ws = upgrade(tls).await.expect("upgrade over TLS");
    welcome(&mut ws).await;
    for seq in 1..=2 {
        assert_eq!(recv_event(&mut ws).await.seq, seq);
        ack(&mut ws, seq).await;
    }
    wait_until("delivered over TLS", || outbox.pending().is_empty()).await;
    relay.stop().await;
}

#[tokio::test]
async fn wss_to_an_untrusted_certificate_fails_with_a_tls_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut settings = test_settings(&format!("wss://localhost:{port}"));
    // Trust only a CA that did not sign the server certificate: the server's own leaf is not a
    // trust anchor for itself.
    let mut roots = rustls::RootCertStore::empty();
    let leaf = rustls_pemfile::certs(&mut include_str!("testdata/server.pem").as_bytes())
        .next()
        .unwrap()
        .unwrap();
    roots.add(leaf).unwrap();
    settings.tls = Some(crate::tls::client_config_with_roots(roots).unwrap());
    let relay = Relay::start(settings, MemOutbox::new());
    let acceptor = tls_acceptor();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        acceptor.accept(tcp).await.is_err()
    });
    assert!(server.await.unwrap(), "the handshake must fail");
    wait_until("tls error reported", || relay.status().last_error.is_some()).await;
    let error = relay.status().last_error.unwrap();
    assert!(error.contains("TLS"), "{error}");
    assert!(!relay.status().connected);
    relay.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Configuration

fn parse_config(toml_text: &str) -> RelayConfig {
    toml::from_str(toml_text).unwrap()
}

fn validate(toml_text: &str) -> Result<RelaySettings, ConfigError> {
    let dir = std::env::temp_dir();
    parse_config(toml_text).validate(Path::new("/etc/xmagent/agent.toml"), &dir)
}

#[test]
fn plain_ws_is_only_allowed_to_loopback() {
    let err = validate("url = \"ws://central.example.com/api/agent/1/connect\"\ntoken = \"t\"")
        .unwrap_err();
    assert_eq!(err.key, "central.url");
    assert!(err.reason.contains("wss://"), "{}", err.reason);
    assert!(err.to_string().contains("/etc/xmagent/agent.toml"));
    for ok in [
        "ws://127.0.0.1:9000/x",
        "ws://localhost:9000",
        "ws://[::1]:9000",
    ] {
        validate(&format!("url = \"{ok}\"\ntoken = \"t\"")).unwrap();
    }
}

#[test]
fn url_scheme_host_and_default_path() {
    for (url, reason) in [
        ("https://central.example.com", "scheme"),
        ("central.example.com", "scheme"),
        ("wss://user:pw@central.example.com", "credentials"),
    ] {
        let err = validate(&format!("url = \"{url}\"\ntoken = \"t\"")).unwrap_err();
        assert_eq!(err.key, "central.url", "{url}");
        assert!(err.reason.contains(reason), "{url}: {}", err.reason);
    }
    let settings = validate("url = \"ws://127.0.0.1:9000\"\ntoken = \"t\"").unwrap();
    assert_eq!(
        settings.url(),
        format!("ws://127.0.0.1:9000{}", protocol::CONNECT_PATH)
    );
    let settings =
        validate("url = \"ws://127.0.0.1:9000/custom/path?x=1\"\ntoken = \"t\"").unwrap();
    assert_eq!(settings.url(), "ws://127.0.0.1:9000/custom/path?x=1");
}

#[test]
fn token_sources_are_exclusive_and_required() {
    let err =
        validate("url = \"ws://127.0.0.1:1\"\ntoken = \"a\"\ntoken_file = \"t\"").unwrap_err();
    assert_eq!(err.key, "central.token");
    let err = validate("url = \"ws://127.0.0.1:1\"").unwrap_err();
    assert_eq!(err.key, "central.token_file");
    let err = validate("url = \"ws://127.0.0.1:1\"\ntoken = \"has space\"").unwrap_err();
    assert_eq!(err.key, "central.token");
    assert!(
        !err.to_string().contains("has space"),
        "the reason never quotes the token"
    );
}

#[test]
fn token_file_is_resolved_against_the_config_directory_and_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("agent.token"), "  s3cr3t-token-value\n").unwrap();
    let config = parse_config("url = \"ws://127.0.0.1:1\"\ntoken_file = \"agent.token\"");
    let mut settings = config
        .validate(&dir.path().join("agent.toml"), dir.path())
        .unwrap();
    let header = settings.token.authorization();
    assert_eq!(header.to_str().unwrap(), "Bearer s3cr3t-token-value");
    assert!(header.is_sensitive());
    assert!(!format!("{settings:?}").contains("s3cr3t"));

    let inline = parse_config("url = \"ws://127.0.0.1:1\"\ntoken = \"inline-s3cr3t\"");
    assert!(!format!("{inline:?}").contains("inline-s3cr3t"));

    let err = parse_config("url = \"ws://127.0.0.1:1\"\ntoken_file = \"missing.token\"")
        .validate(&dir.path().join("agent.toml"), dir.path())
        .unwrap_err();
    assert_eq!(err.key, "central.token_file");
    assert!(err.reason.contains("missing.token"), "{}", err.reason);
}

#[test]
fn numeric_limits_are_checked() {
    let base = "url = \"ws://127.0.0.1:1\"\ntoken = \"t\"\n";
    for (extra, key) in [
        ("window = 0", "central.window"),
        ("ping_interval_secs = 0", "central.ping_interval_secs"),
        (
            "ping_interval_secs = 30\ndead_after_secs = 30",
            "central.dead_after_secs",
        ),
        ("backoff_initial_ms = 0", "central.backoff_initial_ms"),
        (
            "backoff_initial_ms = 500\nbackoff_max_ms = 100",
            "central.backoff_max_ms",
        ),
        ("ack_timeout_secs = 0", "central.ack_timeout_secs"),
    ] {
        let err = validate(&format!("{base}{extra}")).unwrap_err();
        assert_eq!(err.key, key, "{extra}");
    }
    let settings = validate(base).unwrap();
    assert_eq!(settings.window(), DEFAULT_WINDOW);
    assert_eq!(settings.ping_interval, Duration::from_secs(15));
    assert_eq!(settings.dead_after, Duration::from_secs(45));
    assert_eq!(settings.backoff_initial, Duration::from_millis(250));
    assert_eq!(settings.backoff_max, Duration::from_secs(30));
}

#[test]
fn unknown_keys_and_bad_proxies_are_rejected() {
    assert!(
        toml::from_str::<RelayConfig>("url = \"ws://127.0.0.1:1\"\ntoken = \"t\"\nwindw = 3")
            .is_err()
    );
    let base = "url = \"ws://127.0.0.1:1\"\ntoken = \"t\"\n";
    for proxy in ["https://proxy:3128", "socks5://proxy:1080", "proxy:3128"] {
        let err = validate(&format!("{base}proxy = \"{proxy}\"")).unwrap_err();
        assert_eq!(err.key, "central.proxy", "{proxy}");
    }
    let proxy = Proxy::parse("http://user:hunter2@proxy.internal:3128").unwrap();
    assert_eq!(proxy.authority(), "proxy.internal:3128");
    assert!(!format!("{proxy:?}").contains("hunter2"));
    let err = validate(&format!("{base}proxy = \"ftp://user:hunter2@x\"")).unwrap_err();
    assert!(
        !err.to_string().contains("hunter2"),
        "proxy credentials never echoed"
    );
}

#[test]
fn bad_ca_file_is_a_config_error_on_ca_file() {
    let err = validate(
        "url = \"wss://central.example.com\"\ntoken = \"t\"\nca_file = \"/nonexistent/ca.pem\"",
    )
    .unwrap_err();
    assert_eq!(err.key, "central.ca_file");
    assert!(err.reason.contains("/nonexistent/ca.pem"), "{}", err.reason);
}

// ---------------------------------------------------------------------------------------------
// Back-off

#[test]
fn backoff_doubles_with_jitter_up_to_the_cap_and_resets() {
    let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
    let mut nominal = Vec::new();
    for _ in 0..8 {
        let base = b.nominal();
        let d = b.next_delay();
        assert!(
            d >= base / 2 && d <= base,
            "{d:?} not within [{:?}, {base:?}]",
            base / 2
        );
        nominal.push(base.as_millis());
    }
    assert_eq!(nominal, vec![100, 200, 400, 800, 1000, 1000, 1000, 1000]);
    b.reset();
    assert_eq!(b.nominal(), Duration::from_millis(100));
    // Far past any sane attempt count nothing overflows.
    b.attempt = u32::MAX;
    assert_eq!(b.nominal(), Duration::from_millis(1000));
    assert!(b.next_delay() <= Duration::from_millis(1000));
}

#[test]
fn a_heartbeat_is_overdue_only_after_its_promise() {
    let heartbeat = Heartbeat::default();
    assert_eq!(
        heartbeat.overdue(),
        None,
        "a relay that has not started is not late"
    );
    heartbeat.expect_within(Duration::from_secs(1));
    assert_eq!(
        heartbeat.overdue(),
        None,
        "within its promise (and the margin)"
    );
    // A promise made long ago and not renewed: the relay is hung.
    heartbeat
        .deadline_ms
        .store(1, std::sync::atomic::Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(5));
    assert!(heartbeat.overdue().is_some());
}

#[tokio::test]
async fn a_connected_relay_keeps_renewing_its_heartbeat() {
    let (listener, url) = listen().await;
    let heartbeat = Arc::new(Heartbeat::default());
    let settings = test_settings(&url).with_heartbeat(heartbeat.clone());
    let outbox = MemOutbox::new();
    let _relay = Relay::start(settings, outbox.clone());
    let _ws = accept_welcomed(&listener).await;
    let first = heartbeat
        .deadline_ms
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(first > 0, "the relay promised a beat when it started");
    wait_until("a renewed promise", || {
        heartbeat
            .deadline_ms
            .load(std::sync::atomic::Ordering::Relaxed)
            > first
    })
    .await;
    assert_eq!(heartbeat.overdue(), None);
}

// ---------------------------------------------------------------------------------------------
// Status reports

/// A status source that counts its reads and reports the outbox's pending entries.
struct CountingSource {
    outbox: Arc<MemOutbox>,
    reads: std::sync::atomic::AtomicUsize,
    changed: tokio::sync::Notify,
}

impl StatusSource for CountingSource {
    fn status(&self) -> Option<AgentStatus> {
        self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Some(AgentStatus {
            queue_depth: self.outbox.pending().len() as u64,
            dead_letters: 0,
            oldest_pending_ms: None,
            integrations: vec!["int-1".into()],
        })
    }

    fn changed(&self) -> &tokio::sync::Notify {
        &self.changed
    }
}

/// A relay to `url` that reports a [`CountingSource`] over `outbox`.
fn start_reporting(url: &str, outbox: &Arc<MemOutbox>) -> (Relay, Arc<CountingSource>) {
    let source = Arc::new(CountingSource {
        outbox: Arc::clone(outbox),
        reads: Default::default(),
        changed: Default::default(),
    });
    let settings = test_settings(url).with_status_source(source.clone());
    (Relay::start(settings, Arc::clone(outbox)), source)
}

/// Accept the relay's connection and welcome it as a central that accepts `status` frames.
async fn accept_welcomed_with_status(listener: &TcpListener) -> ServerWs {
    let mut ws = accept(listener).await.expect("upgrade refused");
    next_text(&mut ws).await.expect("hello");
    send(
        &mut ws,
        CentralFrame::Welcome {
            version: PROTOCOL_VERSION,
            agent_id: AGENT_ID.into(),
            accepts: vec![ACCEPTS_STATUS.into()],
        },
    )
    .await;
    ws
}

/// The frames that arrive within `wait`, as JSON.
async fn frames_within(ws: &mut ServerWs, wait: Duration) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + wait;
    let mut frames = Vec::new();
    while let Ok(Some(Ok(message))) = tokio::time::timeout_at(deadline, ws.next()).await {
        if let Message::Text(text) = message {
            frames.push(serde_json::from_str(text.as_str()).unwrap());
        }
    }
    frames
}

#[tokio::test]
async fn an_older_central_gets_no_status_frame() {
    let (listener, url) = listen().await;
    let outbox = MemOutbox::new();
    let (relay, source) = start_reporting(&url, &outbox);
    // The welcome lists nothing in `accepts`, as a central older than `status` sends it.
    let mut ws = accept_welcomed(&listener).await;
    outbox.push(1);
    let event = recv_event(&mut ws).await;
    ack(&mut ws, event.seq).await;
    let frames = frames_within(&mut ws, Duration::from_millis(300)).await;
    assert!(
        frames.iter().all(|frame| frame["type"] == "event.create"),
        "{frames:?}"
    );
    assert_eq!(
        source.reads.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the figures are not even read"
    );
    relay.stop().await;
}

#[tokio::test]
async fn status_is_reported_right_after_welcome_and_soon_after_the_queue_changes() {
    let (listener, url) = listen().await;
    let outbox = MemOutbox::new();
    outbox.push(1);
    let (relay, _source) = start_reporting(&url, &outbox);
    let mut ws = accept_welcomed_with_status(&listener).await;
    // First the status (one pending entry), then the entry itself.
    let first: serde_json::Value =
        serde_json::from_str(&next_text(&mut ws).await.unwrap()).unwrap();
    assert_eq!(
        first,
        json!({"type": "status", "queueDepth": 1, "deadLetters": 0,
               "oldestPendingMs": null, "integrations": ["int-1"]})
    );
    let event = recv_event(&mut ws).await;
    ack(&mut ws, event.seq).await;
    // The ack emptied the queue: reported after the minimum gap, not the full period (next_text
    // waits less than STATUS_EVERY).
    let started = Instant::now();
    let report = loop {
        let text = next_text(&mut ws).await.expect("a status after the ack");
        let frame: serde_json::Value = serde_json::from_str(&text).unwrap();
        if frame["type"] == "status" {
            break frame;
        }
    };
    println!("status after the ack: {:?} later", started.elapsed());
    assert_eq!(report["queueDepth"], 0, "{report}");
    relay.stop().await;
}

/// A change the relay cannot see itself (the integrations in force after a reload) is reported
/// within the minimum gap once the source signals it, not at the next period (next_text waits
/// less than STATUS_EVERY).
#[tokio::test]
async fn a_signalled_change_is_reported_before_the_period() {
    let (listener, url) = listen().await;
    let outbox = MemOutbox::new();
    let (relay, source) = start_reporting(&url, &outbox);
    let mut ws = accept_welcomed_with_status(&listener).await;
    let first: serde_json::Value =
        serde_json::from_str(&next_text(&mut ws).await.unwrap()).unwrap();
    assert_eq!(first["type"], "status", "{first}");
    let reads = source.reads.load(std::sync::atomic::Ordering::SeqCst);
    source.changed.notify_one();
    let started = Instant::now();
    let again: serde_json::Value =
        serde_json::from_str(&next_text(&mut ws).await.expect("a status after the signal"))
            .unwrap();
    assert_eq!(again["type"], "status", "{again}");
    assert!(source.reads.load(std::sync::atomic::Ordering::SeqCst) > reads);
    println!("status after the signal: {:?} later", started.elapsed());
    relay.stop().await;
}
