//! Talking to systemd (`sd_notify`): READY once the agent can take requests, RELOADING/READY
//! around a reload, STOPPING at shutdown, a STATUS= line a person reads in `systemctl status`,
//! and watchdog pings that stop as soon as a part of the agent is stuck, so systemd restarts it.
//!
//! Without `NOTIFY_SOCKET` (not under systemd) every call is a no-op. It does not decide what
//! "stuck" means: [`Health`] (implemented by the daemon) does; this module only paces the checks
//! and speaks the protocol.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::watch;

/// How often the STATUS= line is refreshed when no watchdog asks for more.
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// What the supervisor asks the running agent.
pub trait Health: Send + Sync + 'static {
    /// One line for `systemctl status` (central connection, queue depth).
    fn status_line(&self) -> String;
    /// `Err(which part and why)` when a part of the agent is stuck; checks may take up to
    /// `deadline`.
    fn check(&self, deadline: Duration) -> impl Future<Output = Result<(), String>> + Send;
}

fn send(states: &[NotifyState<'_>]) {
    // Failing to reach systemd is not a reason to stop serving; it only loses a status update.
    if let Err(error) = sd_notify::notify(false, states) {
        tracing::debug!(%error, "sd_notify failed");
    }
}

/// The agent is ready: store open, listener bound, scripts compiled.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A reload starts (systemd shows "reloading" until [`ready`]).
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// Shutdown started.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// The watchdog interval systemd asked for (`WATCHDOG_USEC`), if any. Like libsystemd's
/// `sd_watchdog_enabled`, a `WATCHDOG_PID` that names another process means "not for us", and a
/// missing one means "for us" (the sd-notify crate insists on it, which a test cannot set for a
/// child it has not started yet).
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Refresh STATUS= and, when systemd runs a watchdog, ping it twice per interval while
/// [`Health::check`] passes. A failed check is logged once per failure and no ping is sent, so
/// a part that stays stuck gets the agent restarted. Runs until `stop` turns true.
pub async fn supervise<H: Health>(health: Arc<H>, mut stop: watch::Receiver<bool>) {
    let watchdog = watchdog_interval();
    let every = watchdog.map_or(STATUS_EVERY, |interval| (interval / 2).min(STATUS_EVERY));
    let mut last_status = String::new();
    loop {
        let healthy = match watchdog {
            Some(_) => health.check(every).await,
            None => Ok(()),
        };
        let status = health.status_line();
        match (&healthy, watchdog.is_some()) {
            (Ok(()), true) => send(&[NotifyState::Watchdog, NotifyState::Status(&status)]),
            (Ok(()), false) if status != last_status => send(&[NotifyState::Status(&status)]),
            (Ok(()), false) => {}
            (Err(stuck), _) => {
                tracing::error!(part = %stuck, "not pinging the watchdog: a part of the agent is stuck");
                send(&[NotifyState::Status(&format!("stuck: {stuck}"))]);
            }
        }
        last_status = status;
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|stopped| *stopped) => {
                stopping();
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Healthy until `stuck` turns true.
    struct Switch {
        stuck: AtomicBool,
    }

    impl Health for Switch {
        fn status_line(&self) -> String {
            "central connected; queue 0".into()
        }

        async fn check(&self, _deadline: Duration) -> Result<(), String> {
            if self.stuck.load(Ordering::SeqCst) {
                Err("relay: its task ended".into())
            } else {
                Ok(())
            }
        }
    }

    fn next(socket: &UnixDatagram) -> String {
        let mut buffer = [0u8; 4096];
        let n = socket.recv(&mut buffer).expect("a notification");
        String::from_utf8_lossy(&buffer[..n]).into_owned()
    }

    // The only test in this crate that sets NOTIFY_SOCKET / WATCHDOG_USEC (the process
    // environment is shared by all tests).
    #[tokio::test]
    async fn the_watchdog_is_pinged_while_healthy_and_not_once_stuck() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        std::env::set_var("NOTIFY_SOCKET", &path);
        std::env::set_var("WATCHDOG_USEC", "200000");
        assert_eq!(watchdog_interval(), Some(Duration::from_millis(200)));

        let health = Arc::new(Switch {
            stuck: AtomicBool::new(false),
        });
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(supervise(health.clone(), stop_rx));
        let first = tokio::task::spawn_blocking({
            let socket = socket.try_clone().unwrap();
            move || next(&socket)
        })
        .await
        .unwrap();
        assert!(first.contains("WATCHDOG=1"), "{first}");
        assert!(first.contains("STATUS=central connected"), "{first}");

        health.stuck.store(true, Ordering::SeqCst);
        let after = tokio::task::spawn_blocking({
            let socket = socket.try_clone().unwrap();
            move || (0..4).map(|_| next(&socket)).collect::<Vec<_>>()
        })
        .await
        .unwrap();
        // At most one ping was already on its way; then only "stuck" status lines.
        let stuck: Vec<_> = after
            .iter()
            .skip_while(|m| m.contains("WATCHDOG=1"))
            .collect();
        assert!(stuck.len() >= 3, "{after:?}");
        for message in stuck {
            assert!(!message.contains("WATCHDOG=1"), "{after:?}");
            assert!(message.contains("STATUS=stuck: relay"), "{after:?}");
        }

        stop.send(true).unwrap();
        task.await.unwrap();
        let last = next(&socket);
        assert!(last.contains("STOPPING=1"), "{last}");
        std::env::remove_var("NOTIFY_SOCKET");
        std::env::remove_var("WATCHDOG_USEC");
    }
}
