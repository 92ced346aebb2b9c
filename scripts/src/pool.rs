//! Script threads: the pool the agent's workers use, and [`run_once`] for the dry run and tests.
//!
//! The pool also keeps integrations fair: one integration holds at most its share of the threads
//! at once, so runaway scripts in one integration (each bounded by the time limit) cannot make
//! every other integration wait. It does not bound the queue: the agent's backlog does that.

use crate::{
    Engine, ErrorKind, HttpCall, HttpClient, HttpReply, Limits, Outcome, Program, ScriptError,
    ScriptRequest,
};
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};

/// Native stack of a script thread: QuickJS's own limit plus room for the Rust and C frames around
/// it (parser, host hooks, HTTP client).
fn thread_stack(limits: &Limits) -> usize {
    limits.stack_bytes.saturating_add(8 * 1024 * 1024)
}

fn internal(message: impl Into<String>) -> Outcome {
    Outcome::failed(ScriptError::new(ErrorKind::Exception, message))
}

/// Run one job on this thread's engine, creating it on first use and replacing it after a panic,
/// so one bad run never takes the thread down.
fn run_guarded(
    engine: &mut Option<Engine>,
    limits: &Limits,
    program: &Program,
    request: ScriptRequest,
    http: Arc<dyn HttpClient>,
) -> Outcome {
    if engine.is_none() {
        match Engine::new(limits.clone()) {
            Ok(created) => *engine = Some(created),
            Err(error) => return Outcome::failed(error),
        }
    }
    let Some(current) = engine.as_mut() else {
        return internal("internal error: no script engine");
    };
    match catch_unwind(AssertUnwindSafe(|| current.run(program, request, http))) {
        Ok(outcome) => outcome,
        Err(_) => {
            // The runtime may be in any state after a panic; dropping it could trip QuickJS's
            // leak assertions, so it is leaked instead (panics here are bugs, not routine).
            if let Some(broken) = engine.take() {
                std::mem::forget(broken);
            }
            tracing::error!("script engine panicked; it was replaced");
            internal("internal error: the script engine failed; it was restarted")
        }
    }
}

/// How many threads one integration may hold when the configuration does not say: half of them
/// rounded up, so with two threads or more another integration always finds one.
pub fn default_share(threads: usize) -> usize {
    threads.max(1).div_ceil(2)
}

/// Per-integration admission: a FIFO semaphore per integration with `share` permits. Entries are
/// keyed by the configured integration ids, so the map is as bounded as the configuration.
struct Shares {
    share: usize,
    by_integration: Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>,
}

impl Shares {
    fn of(&self, integration: &str) -> Arc<tokio::sync::Semaphore> {
        let mut map = self
            .by_integration
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.entry(integration.to_owned())
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(self.share)))
            .clone()
    }
}

struct Job {
    program: Arc<Program>,
    request: ScriptRequest,
    http: Arc<dyn HttpClient>,
    reply: tokio::sync::oneshot::Sender<Outcome>,
    /// The integration's share this job holds until its thread is done with it, even if the
    /// caller stopped waiting.
    _share: tokio::sync::OwnedSemaphorePermit,
}

/// N script threads, each owning one QuickJS runtime with warm contexts; jobs arrive over a channel.
///
/// Scripts are CPU-bound and QuickJS runtimes are single-threaded, so they run on dedicated OS
/// threads rather than on the tokio runtime (DESIGN §4). Any thread may take any job; each keeps its
/// own warm context per integration. A job enters the queue only once its integration holds
/// fewer than its share of the threads.
pub struct ScriptPool {
    sender: Option<mpsc::Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
    shares: Shares,
}

impl ScriptPool {
    /// Start `threads` script threads (at least one) with the given per-run limits; one
    /// integration runs at most `share` scripts at once (at least one; see [`default_share`]).
    pub fn new(threads: usize, share: usize, limits: Limits) -> ScriptPool {
        let (sender, receiver) = mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        let mut handles = Vec::new();
        for index in 0..threads.max(1) {
            let receiver = receiver.clone();
            let limits = limits.clone();
            let spawned = thread::Builder::new()
                .name(format!("xmagent-script-{index}"))
                .stack_size(thread_stack(&limits))
                .spawn(move || worker_loop(&receiver, &limits));
            match spawned {
                Ok(handle) => handles.push(handle),
                Err(error) => tracing::error!(%error, "cannot start a script thread"),
            }
        }
        ScriptPool {
            sender: Some(sender),
            threads: handles,
            shares: Shares {
                share: share.max(1),
                by_integration: Mutex::new(HashMap::new()),
            },
        }
    }

    /// Run the program for one request on a free script thread and wait for the outcome. The
    /// request first waits (in arrival order) while its integration holds its whole share.
    pub async fn run(
        &self,
        program: Arc<Program>,
        request: ScriptRequest,
        http: Arc<dyn HttpClient>,
    ) -> Outcome {
        let Some(sender) = &self.sender else {
            return internal("the script pool is shut down");
        };
        let share = self.shares.of(program.integration_id());
        let Ok(share) = share.acquire_owned().await else {
            return internal("the script pool is shut down");
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = Job {
            program,
            request,
            http,
            reply,
            _share: share,
        };
        if sender.send(job).is_err() {
            return internal("the script pool has no running threads");
        }
        answer
            .await
            .unwrap_or_else(|_| internal("the script thread stopped before answering"))
    }

    /// Stop taking jobs, let the threads finish what is queued, and join them.
    pub fn shutdown(mut self) {
        self.sender.take();
        for handle in self.threads.drain(..) {
            if handle.join().is_err() {
                tracing::error!("a script thread panicked");
            }
        }
    }
}

impl Drop for ScriptPool {
    fn drop(&mut self) {
        // Closing the channel ends the threads once the queue is drained.
        self.sender.take();
    }
}

fn worker_loop(receiver: &Mutex<mpsc::Receiver<Job>>, limits: &Limits) {
    let mut engine: Option<Engine> = None;
    loop {
        let job = {
            let guard = receiver.lock().unwrap_or_else(PoisonError::into_inner);
            guard.recv()
        };
        let Ok(job) = job else {
            return;
        };
        if job.reply.is_closed() {
            continue; // the caller gave up waiting
        }
        let outcome = run_guarded(&mut engine, limits, &job.program, job.request, job.http);
        let _ = job.reply.send(outcome);
    }
}

enum Message {
    Call(HttpCall, mpsc::Sender<Result<HttpReply, String>>),
    Done(Outcome),
}

/// Forwards the script thread's HTTP calls to the caller's thread, where the borrowed client lives.
struct Forward {
    sender: mpsc::Sender<Message>,
}

impl HttpClient for Forward {
    fn send(&self, call: &HttpCall) -> Result<HttpReply, String> {
        let (reply, answer) = mpsc::channel();
        self.sender
            .send(Message::Call(call.clone(), reply))
            .map_err(|_| "the HTTP client is gone".to_owned())?;
        answer
            .recv()
            .map_err(|_| "the HTTP client did not answer".to_owned())?
    }
}

/// Run a program once in a fresh runtime on its own script thread, with the same engine the pool
/// uses. For the dry run (`xmagent test-script`) and tests; HTTP calls are served by `http` on the
/// calling thread.
pub fn run_once(
    program: &Program,
    request: ScriptRequest,
    http: &dyn HttpClient,
    limits: &Limits,
) -> Outcome {
    let (sender, receiver) = mpsc::channel::<Message>();
    thread::scope(|scope| {
        let forward = sender.clone();
        let spawned = thread::Builder::new()
            .name("xmagent-script-once".to_owned())
            .stack_size(thread_stack(limits))
            .spawn_scoped(scope, move || {
                let client: Arc<dyn HttpClient> = Arc::new(Forward {
                    sender: forward.clone(),
                });
                let mut engine = None;
                let outcome = run_guarded(&mut engine, limits, program, request, client);
                let _ = forward.send(Message::Done(outcome));
            });
        drop(sender);
        let handle = match spawned {
            Ok(handle) => handle,
            Err(error) => return internal(format!("cannot start a script thread: {error}")),
        };
        let mut outcome = None;
        while let Ok(message) = receiver.recv() {
            match message {
                Message::Call(call, reply) => {
                    let _ = reply.send(http.send(&call));
                }
                Message::Done(done) => {
                    outcome = Some(done);
                    break;
                }
            }
        }
        let joined = handle.join();
        match (outcome, joined) {
            (Some(outcome), _) => outcome,
            (None, _) => internal("the script thread stopped before answering"),
        }
    })
}
