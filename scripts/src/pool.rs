//! Script threads: the pool the agent's workers use, and [`run_once`] for the dry run and tests.
//!
//! The pool also keeps integrations fair: one integration holds at most its share of the threads
//! at once, so runaway scripts in one integration (each bounded by the time limit) cannot make
//! every other integration wait. The threads pick their next job themselves (the oldest one whose
//! integration is under its share), so a thread that finishes a run goes straight on to the next
//! one instead of sleeping until the caller's task hands it over. It does not bound the queue:
//! the agent's backlog does that.

use crate::{
    Engine, ErrorKind, HttpCall, HttpClient, HttpReply, Limits, Outcome, Program, ScriptError,
    ScriptRequest,
};
use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
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

struct Job {
    program: Arc<Program>,
    request: ScriptRequest,
    http: Arc<dyn HttpClient>,
    reply: tokio::sync::oneshot::Sender<Outcome>,
}

/// The jobs waiting for a thread, one FIFO per integration, and how many threads each
/// integration holds. Entries exist only while an integration has jobs running or waiting.
#[derive(Default)]
struct Queue {
    waiting: HashMap<String, VecDeque<(u64, Job)>>,
    running: HashMap<String, usize>,
    /// Arrival number of the next job: the oldest eligible job goes first, across integrations.
    arrivals: u64,
    /// Threads asleep in [`Scheduler::next`].
    idle: usize,
    /// Set at shutdown: threads leave once nothing is waiting.
    closed: bool,
}

impl Queue {
    fn holds(&self, integration: &str) -> usize {
        self.running.get(integration).copied().unwrap_or(0)
    }

    /// The integration whose oldest waiting job is the oldest among those under their share.
    fn eligible(&self, share: usize) -> Option<&str> {
        self.waiting
            .iter()
            .filter(|(integration, _)| self.holds(integration) < share)
            .filter_map(|(integration, jobs)| jobs.front().map(|(n, _)| (*n, integration)))
            .min_by_key(|(n, _)| *n)
            .map(|(_, integration)| integration.as_str())
    }

    fn take(&mut self, integration: &str) -> Option<Job> {
        let jobs = self.waiting.get_mut(integration)?;
        let (_, job) = jobs.pop_front()?;
        if jobs.is_empty() {
            self.waiting.remove(integration);
        }
        *self.running.entry(integration.to_owned()).or_insert(0) += 1;
        Some(job)
    }

    fn finished(&mut self, integration: &str) {
        if let Some(count) = self.running.get_mut(integration) {
            *count -= 1;
            if *count == 0 {
                self.running.remove(integration);
            }
        }
    }
}

/// Hands jobs to the script threads fairly (see the module doc).
struct Scheduler {
    queue: Mutex<Queue>,
    wake: Condvar,
    share: usize,
}

impl Scheduler {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queue a job; wakes a sleeping thread only when one is asleep and the job may start.
    /// `false`: the pool is shut down and the job was dropped.
    fn submit(&self, job: Job) -> bool {
        let mut queue = self.lock();
        if queue.closed {
            return false;
        }
        let integration = job.program.integration_id();
        let arrival = queue.arrivals;
        queue.arrivals += 1;
        let may_start = queue.holds(integration) < self.share;
        match queue.waiting.get_mut(integration) {
            Some(jobs) => jobs.push_back((arrival, job)),
            None => {
                let key = integration.to_owned();
                queue.waiting.insert(key, VecDeque::from([(arrival, job)]));
            }
        }
        if may_start && queue.idle > 0 {
            self.wake.notify_one();
        }
        true
    }

    /// Report the run of `done` (if any) finished and wait for the next job this thread may
    /// take; `None` once the pool is closed and drained.
    fn next(&self, done: Option<&str>) -> Option<Job> {
        let mut queue = self.lock();
        if let Some(integration) = done {
            queue.finished(integration);
        }
        loop {
            if let Some(integration) = queue.eligible(self.share).map(str::to_owned) {
                let job = queue.take(&integration);
                // More startable work than this thread: pass the word on to a sleeping one.
                if queue.idle > 0 && queue.eligible(self.share).is_some() {
                    self.wake.notify_one();
                }
                if job.is_some() {
                    return job;
                }
                continue;
            }
            if queue.closed && queue.waiting.is_empty() {
                self.wake.notify_all();
                return None;
            }
            queue.idle += 1;
            queue = self
                .wake
                .wait(queue)
                .unwrap_or_else(PoisonError::into_inner);
            queue.idle -= 1;
        }
    }

    fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_all();
    }
}

/// N script threads, each owning one QuickJS runtime with warm contexts.
///
/// Scripts are CPU-bound and QuickJS runtimes are single-threaded, so they run on dedicated OS
/// threads rather than on the tokio runtime (DESIGN §4). Any thread may take any job; each keeps its
/// own warm context per integration. A job starts only while its integration holds fewer than its
/// share of the threads.
pub struct ScriptPool {
    scheduler: Arc<Scheduler>,
    threads: Vec<JoinHandle<()>>,
}

impl ScriptPool {
    /// Start `threads` script threads (at least one) with the given per-run limits; one
    /// integration runs at most `share` scripts at once (at least one; see [`default_share`]).
    pub fn new(threads: usize, share: usize, limits: Limits) -> ScriptPool {
        let scheduler = Arc::new(Scheduler {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            share: share.max(1),
        });
        let mut handles = Vec::new();
        for index in 0..threads.max(1) {
            let scheduler = scheduler.clone();
            let limits = limits.clone();
            let spawned = thread::Builder::new()
                .name(format!("xmagent-script-{index}"))
                .stack_size(thread_stack(&limits))
                .spawn(move || worker_loop(&scheduler, &limits));
            match spawned {
                Ok(handle) => handles.push(handle),
                Err(error) => tracing::error!(%error, "cannot start a script thread"),
            }
        }
        if handles.is_empty() {
            scheduler.close();
        }
        ScriptPool {
            scheduler,
            threads: handles,
        }
    }

    /// Run the program for one request on a free script thread and wait for the outcome. The
    /// request waits (in arrival order) while its integration holds its whole share.
    pub async fn run(
        &self,
        program: Arc<Program>,
        request: ScriptRequest,
        http: Arc<dyn HttpClient>,
    ) -> Outcome {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = Job {
            program,
            request,
            http,
            reply,
        };
        if !self.scheduler.submit(job) {
            return internal("the script pool is shut down");
        }
        answer
            .await
            .unwrap_or_else(|_| internal("the script thread stopped before answering"))
    }

    /// Stop taking jobs, let the threads finish what is queued, and join them.
    pub fn shutdown(mut self) {
        self.scheduler.close();
        for handle in self.threads.drain(..) {
            if handle.join().is_err() {
                tracing::error!("a script thread panicked");
            }
        }
    }
}

impl Drop for ScriptPool {
    fn drop(&mut self) {
        // The threads end once the queue is drained.
        self.scheduler.close();
    }
}

fn worker_loop(scheduler: &Scheduler, limits: &Limits) {
    let mut engine: Option<Engine> = None;
    let mut done: Option<Arc<Program>> = None;
    while let Some(job) = scheduler.next(done.as_ref().map(|p| p.integration_id())) {
        done = Some(job.program.clone());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ProgramSpec, Source};

    struct NoHttp;
    impl HttpClient for NoHttp {
        fn send(&self, _: &HttpCall) -> Result<HttpReply, String> {
            Err("no HTTP in this test".into())
        }
    }

    fn job(integration: &str, body: &str) -> Job {
        let program = Program::compile(ProgramSpec {
            integration_id: integration.to_owned(),
            script: Source {
                name: "s.js".into(),
                code: "form.post(trigger);".into(),
            },
            libraries: Default::default(),
            constants: Default::default(),
        })
        .expect("compiles");
        Job {
            program: Arc::new(program),
            request: ScriptRequest {
                body: body.into(),
                ..ScriptRequest::default()
            },
            http: Arc::new(NoHttp),
            reply: tokio::sync::oneshot::channel().0,
        }
    }

    fn scheduler(share: usize) -> Scheduler {
        Scheduler {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            share,
        }
    }

    fn taken(scheduler: &Scheduler, done: Option<&str>) -> (String, String) {
        let job = scheduler.next(done).expect("a job");
        (job.program.integration_id().to_owned(), job.request.body)
    }

    /// Jobs start in arrival order across integrations, skipping those that hold their share;
    /// the thread that finishes a run takes the next startable job in the same call.
    #[test]
    fn the_oldest_job_under_its_share_goes_first() {
        let s = scheduler(1);
        for (integration, body) in [("a", "a1"), ("a", "a2"), ("b", "b1"), ("a", "a3")] {
            assert!(s.submit(job(integration, body)));
        }
        assert_eq!(taken(&s, None), ("a".into(), "a1".into()));
        // `a` holds its share of one: the second thread gets `b` although a2 came first.
        assert_eq!(taken(&s, None), ("b".into(), "b1".into()));
        assert_eq!(taken(&s, Some("a")), ("a".into(), "a2".into()));
        assert_eq!(taken(&s, Some("a")), ("a".into(), "a3".into()));
        let queue = s.lock();
        assert!(queue.waiting.is_empty());
        assert_eq!(queue.holds("a"), 1);
        assert_eq!(queue.holds("b"), 1);
    }

    /// After close, queued jobs still run; then every thread is told to leave, and nothing more
    /// is accepted.
    #[test]
    fn a_closed_scheduler_drains_then_ends() {
        let s = scheduler(2);
        assert!(s.submit(job("a", "a1")));
        s.close();
        assert!(!s.submit(job("a", "a2")));
        assert_eq!(taken(&s, None), ("a".into(), "a1".into()));
        assert!(s.next(Some("a")).is_none());
        assert!(s.lock().running.is_empty());
    }

    /// A sleeping thread wakes for a job that may start, and a pool serves runs end to end.
    #[test]
    fn a_sleeping_thread_takes_a_new_job() {
        let s = Arc::new(scheduler(1));
        let waiter = {
            let s = s.clone();
            thread::spawn(move || taken(&s, None))
        };
        while s.lock().idle == 0 {
            thread::yield_now();
        }
        assert!(s.submit(job("a", "late")));
        assert_eq!(waiter.join().expect("thread"), ("a".into(), "late".into()));
    }
}
