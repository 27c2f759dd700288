//! [`Supervisor`]: keeps the backend processes legovmm started running while the vNode
//! lives. A backend that dies (a crash, `kill -9`) is started again with the same arguments
//! and logged; the vhost-user frontend reconnects to its socket by itself
//! (`lego_devices::vhost_user_frontend::reconnect`). A backend that keeps dying right after
//! its start is restarted with a growing delay, never given up on. When legovmm stops, the
//! supervisor stops first, so the backends' exits are not mistaken for crashes; then each
//! backend is told to release the vNode's resources and exit (SIGTERM). A backend whose
//! legovmm died without that (kill -9) gets SIGTERM from the kernel (parent-death signal).

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the supervisor looks at its backends.
const POLL: Duration = Duration::from_millis(10);
/// A backend that ran at least this long before it died is restarted at once.
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// The first delay before restarting a backend that died soon after its start.
const FIRST_DELAY: Duration = Duration::from_millis(500);
/// The longest delay between two restarts.
const MAX_DELAY: Duration = Duration::from_secs(30);

/// Errors starting a backend process.
#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    /// Its log file could not be opened.
    #[error("cannot open the backend log {path}")]
    Log {
        /// The log file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The process could not be started.
    #[error("cannot start {binary}")]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The supervisor thread could not be started.
    #[error("cannot start the backend supervisor thread")]
    Thread(#[source] std::io::Error),
}

/// How to start one backend, again and again.
#[derive(Debug, Clone)]
pub struct Recipe {
    /// Which device it serves, for log messages ("remote memory").
    pub what: &'static str,
    /// The binary.
    pub binary: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its stderr goes here (appended to across restarts).
    pub log: PathBuf,
}

impl Recipe {
    /// Starts the process.
    pub fn spawn(&self) -> Result<Child, SuperviseError> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|source| SuperviseError::Log {
                path: self.log.clone(),
                source,
            })?;
        let mut cmd = Command::new(&self.binary);
        // SAFETY: the closure runs in the child between fork and exec and only makes one
        // async-signal-safe system call (prctl), touching no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                // If legovmm dies without stopping it (kill -9), the vNode is gone: the
                // backend gets SIGTERM, releases the vNode's resources and exits, rather
                // than living on and renewing a lease nobody needs.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.args(&self.args)
            // Its own process group: a Ctrl-C meant for legovmm must not reach it; legovmm
            // tells it when to release and exit.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|source| SuperviseError::Spawn {
                binary: self.binary.clone(),
                source,
            })
    }
}

/// One supervised backend.
pub struct Supervised {
    /// How to start it.
    pub recipe: Recipe,
    /// The running process (or the one that died and awaits its restart).
    pub child: Child,
    started: Instant,
    /// When a dead process is due to be started again.
    restart_at: Option<Instant>,
    delay: Duration,
    /// Restarts so far.
    pub restarts: u64,
}

impl Supervised {
    /// A backend already started from `recipe`.
    pub fn new(recipe: Recipe, child: Child) -> Self {
        Self {
            recipe,
            child,
            started: Instant::now(),
            restart_at: None,
            delay: FIRST_DELAY,
            restarts: 0,
        }
    }

    /// Looks at the process once: notices a death, restarts when due.
    fn check(&mut self) {
        let what = self.recipe.what;
        if self.restart_at.is_none() {
            match self.child.try_wait() {
                Ok(None) => return,
                Ok(Some(status)) => {
                    let ran = self.started.elapsed();
                    let wait = if ran >= STABLE_AFTER {
                        self.delay = FIRST_DELAY;
                        Duration::ZERO
                    } else {
                        let d = self.delay;
                        self.delay = (self.delay * 2).min(MAX_DELAY);
                        if self.restarts == 0 {
                            Duration::ZERO
                        } else {
                            d
                        }
                    };
                    tracing::warn!(
                        device = what,
                        pid = self.child.id(),
                        "the {what} backend died ({status}) after {} ms; restarting it with the same arguments in {} ms",
                        ran.as_millis(),
                        wait.as_millis()
                    );
                    self.restart_at = Some(Instant::now() + wait);
                }
                Err(e) => {
                    tracing::warn!(device = what, "cannot check the {what} backend: {e}");
                    return;
                }
            }
        }
        if self.restart_at.is_some_and(|at| Instant::now() >= at) {
            match self.recipe.spawn() {
                Ok(child) => {
                    self.child = child;
                    self.started = Instant::now();
                    self.restart_at = None;
                    self.restarts += 1;
                    tracing::info!(
                        device = what,
                        pid = self.child.id(),
                        restarts = self.restarts,
                        "restarted the {what} backend"
                    );
                }
                Err(e) => {
                    self.restart_at = Some(Instant::now() + self.delay);
                    self.delay = (self.delay * 2).min(MAX_DELAY);
                    tracing::error!(
                        device = what,
                        "{}; trying again in {} ms",
                        lego_report::error_chain(&e),
                        self.delay.as_millis()
                    );
                }
            }
        }
    }
}

/// The backends and the thread restarting them.
pub struct Supervisor {
    backends: Arc<Mutex<Vec<Supervised>>>,
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Supervisor {
    /// Starts supervising `backends`.
    pub fn start(backends: Vec<Supervised>) -> Result<Self, SuperviseError> {
        let backends = Arc::new(Mutex::new(backends));
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let (b, s) = (backends.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("backend-supervisor".into())
            .spawn(move || loop {
                {
                    let (flag, cv) = &*s;
                    let guard = lock(flag);
                    let (guard, _) = cv
                        .wait_timeout_while(guard, POLL, |stop| !*stop)
                        .unwrap_or_else(|e| e.into_inner());
                    if *guard {
                        return;
                    }
                }
                lock(&b).iter_mut().for_each(Supervised::check);
            })
            .map_err(SuperviseError::Thread)?;
        Ok(Self {
            backends,
            stop,
            thread: Some(thread),
        })
    }

    /// Supervises one more backend.
    pub fn add(&self, backend: Supervised) {
        lock(&self.backends).push(backend);
    }

    /// The pids of the backends now running, in start order.
    pub fn pids(&self) -> Vec<u32> {
        lock(&self.backends).iter().map(|b| b.child.id()).collect()
    }

    /// Stops restarting, then asks each backend to release the vNode's resources and exit
    /// (SIGTERM), and waits for them.
    pub fn stop(&mut self) {
        if let Some(thread) = self.thread.take() {
            let (flag, cv) = &*self.stop;
            *lock(flag) = true;
            cv.notify_all();
            let _ = thread.join();
        }
        let mut backends = lock(&self.backends);
        for b in backends.iter_mut() {
            let what = b.recipe.what;
            if matches!(b.child.try_wait(), Ok(None)) {
                tracing::info!(
                    device = what,
                    pid = b.child.id(),
                    "the vNode ends: asking the {what} backend to release its remote resources and exit"
                );
                // SAFETY: kill(2) with a pid we spawned and have not yet reaped (try_wait
                // just said it runs); at worst it exited since and the call fails harmlessly.
                unsafe { libc::kill(b.child.id() as libc::pid_t, libc::SIGTERM) };
            }
        }
        for b in backends.iter_mut() {
            match b.child.wait() {
                Ok(status) => tracing::info!(
                    device = b.recipe.what,
                    "remote device backend stopped ({status})"
                ),
                Err(_) => {
                    let _ = b.child.kill();
                }
            }
        }
        backends.clear();
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let start = Instant::now();
        while !cond() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "timed out: {what}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn a_backend_gets_sigterm_when_the_thread_that_started_it_is_gone() {
        use std::os::unix::process::ExitStatusExt;
        let dir = tempfile::tempdir().unwrap();
        let recipe = Recipe {
            what: "test",
            binary: "sleep".into(),
            args: vec!["600".into()],
            log: dir.path().join("test.log"),
        };
        // As if legovmm died: the spawning thread ends without stopping the child.
        let mut child = std::thread::spawn(move || recipe.spawn().unwrap())
            .join()
            .unwrap();
        let mut status = None;
        wait_for("the parent-death signal", || {
            status = child.try_wait().unwrap();
            status.is_some()
        });
        assert_eq!(status.and_then(|s| s.signal()), Some(libc::SIGTERM));
    }

    #[test]
    fn a_killed_backend_is_restarted_and_stop_terminates_it() {
        let dir = tempfile::tempdir().unwrap();
        let recipe = Recipe {
            what: "test",
            binary: "sleep".into(),
            args: vec!["600".into()],
            log: dir.path().join("test.log"),
        };
        let child = recipe.spawn().unwrap();
        let first = child.id();
        let mut sup = Supervisor::start(vec![Supervised::new(recipe, child)]).unwrap();
        // SAFETY: kill(2) on the child this test started.
        unsafe { libc::kill(first as libc::pid_t, libc::SIGKILL) };
        wait_for("the restart", || sup.pids()[0] != first);
        let second = sup.pids()[0];
        sup.stop();
        // SAFETY: kill(2) with signal 0 only checks whether the process exists.
        let alive = unsafe { libc::kill(second as libc::pid_t, 0) } == 0;
        assert!(!alive, "the restarted backend was not stopped");
    }
}
