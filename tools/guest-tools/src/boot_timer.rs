//! Timing a VMM's boot: start it, watch its console for the guest's ready marker, wait for
//! it to exit, and sample its resident memory from `/proc/<pid>/status` meanwhile.
//!
//! The result is one greppable line ([`Timing::line`]), e.g.
//! `LEGO_BOOT_TIMING vmm=qemu status=ok ready_ms=6120 exit_ms=6900 exit_code=0
//! overhead_kb=30000 rss_kb=300000 anon_kb=25000 file_kb=5000 shmem_kb=270000 samples=340`.

use std::ffi::OsString;
use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::linescan::{self, Scanner};
use crate::procstatus::{self, MemPeak};

/// The prefix of the timing line.
pub const TIMING_MARKER: &str = "LEGO_BOOT_TIMING";

/// How long to wait for the console reader after the VMM exited (the reader ends as soon as
/// the console pipe closes; this bounds the wait when a child of the VMM keeps it open, and
/// leaves room for a loaded machine).
const READER_GRACE: Duration = Duration::from_secs(5);

/// Errors from timing a boot.
#[derive(Debug, thiserror::Error)]
pub enum BootTimerError {
    /// No command was given.
    #[error("no command to time was given (put it after --)")]
    NoCommand,
    /// The label would break the timing line.
    #[error("the label {0:?} must be non-empty and contain no whitespace or '='")]
    BadLabel(String),
    /// The console copy could not be created.
    #[error("could not create the console copy {path}")]
    Console {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The command could not be started.
    #[error("could not start {program:?}")]
    Spawn {
        /// The program.
        program: OsString,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A helper thread could not be started.
    #[error("could not start a helper thread")]
    Thread(#[source] std::io::Error),
}

/// What to run and how to watch it.
#[derive(Debug, Clone)]
pub struct TimerConfig {
    /// The VMM's name in the timing line.
    pub label: String,
    /// The console text that shows the guest is up.
    pub ready_marker: String,
    /// Console lines containing this are copied to standard output (e.g. `LEGO_`).
    pub forward: Option<String>,
    /// Where to keep a copy of the whole console.
    pub console: Option<PathBuf>,
    /// How often to sample the memory figures.
    pub sample_every: Duration,
    /// Kill the VMM if the marker has not appeared this long after the start.
    pub ready_timeout: Option<Duration>,
    /// Kill the VMM if it has not exited this long after the start.
    pub timeout: Option<Duration>,
    /// The program and its arguments.
    pub command: Vec<OsString>,
}

/// How the timed run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    /// The marker appeared and the VMM exited by itself.
    Ok,
    /// The VMM exited by itself without the marker.
    NoReady,
    /// Killed: no marker within the ready timeout.
    Hung,
    /// Killed: no exit within the overall timeout.
    TimedOut,
}

impl RunStatus {
    /// The word used in the timing line.
    pub fn word(self) -> &'static str {
        match self {
            RunStatus::Ok => "ok",
            RunStatus::NoReady => "noready",
            RunStatus::Hung => "hung",
            RunStatus::TimedOut => "timeout",
        }
    }
}

/// The measurements of one run.
#[derive(Debug, Clone)]
pub struct Timing {
    /// The VMM's name.
    pub label: String,
    /// How the run ended.
    pub status: RunStatus,
    /// Start to the ready marker.
    pub ready: Option<Duration>,
    /// Start to the VMM's exit.
    pub exit: Option<Duration>,
    /// The exit code (128 + signal for a signal).
    pub exit_code: Option<i32>,
    /// Peak memory figures.
    pub peak: MemPeak,
}

impl Timing {
    /// Renders the greppable timing line.
    pub fn line(&self) -> String {
        let ms = |d: Option<Duration>| d.map_or("none".to_string(), |d| d.as_millis().to_string());
        let p = &self.peak;
        format!(
            "{TIMING_MARKER} vmm={} status={} ready_ms={} exit_ms={} exit_code={} overhead_kb={} rss_kb={} anon_kb={} file_kb={} shmem_kb={} samples={}",
            self.label,
            self.status.word(),
            ms(self.ready),
            ms(self.exit),
            self.exit_code.map_or("none".to_string(), |c| c.to_string()),
            p.overhead_kb,
            p.rss_kb,
            p.anon_kb,
            p.file_kb,
            p.shmem_kb,
            p.samples
        )
    }

    /// The exit status this tool should end with: 0 for a clean run, 125 for a VMM that
    /// never got its guest up (hung), 124 for a timeout, else the VMM's own code or 1.
    pub fn tool_exit_code(&self) -> u8 {
        match (self.status, self.exit_code) {
            (RunStatus::Hung, _) => 125,
            (RunStatus::TimedOut, _) => 124,
            (RunStatus::Ok, Some(0)) => 0,
            (_, Some(c)) => u8::try_from(c).ok().filter(|c| *c != 0).unwrap_or(1),
            (_, None) => 1,
        }
    }
}

/// Events from the helper threads.
enum Event {
    Ready(Instant),
    Exited(Instant, ExitStatus),
    ReaderDone,
}

fn exit_code(status: ExitStatus) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    status.code().or_else(|| status.signal().map(|s| 128 + s))
}

/// Sends SIGKILL to `pid`.
fn kill(pid: u32) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) takes plain integers and touches no memory of ours. The pid is
        // our own child, which the waiter thread has not reaped yet (no Exited event has
        // been received), so it cannot have been reused.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

/// Checks that a label fits in the timing line.
pub fn check_label(label: &str) -> Result<(), BootTimerError> {
    if label.is_empty() || label.contains(|c: char| c.is_whitespace() || c == '=') {
        return Err(BootTimerError::BadLabel(label.to_string()));
    }
    Ok(())
}

/// Runs the command and measures it.
pub fn run(cfg: &TimerConfig) -> Result<Timing, BootTimerError> {
    check_label(&cfg.label)?;
    let (program, args) = cfg.command.split_first().ok_or(BootTimerError::NoCommand)?;
    let copy = match &cfg.console {
        Some(path) => Some(BufWriter::new(File::create(path).map_err(|source| {
            BootTimerError::Console {
                path: path.clone(),
                source,
            }
        })?)),
        None => None,
    };
    let start = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|source| BootTimerError::Spawn {
            program: program.clone(),
            source,
        })?;
    let pid = child.id();
    let stdout = child.stdout.take();
    let (tx, rx) = mpsc::channel();

    let reader_tx = tx.clone();
    let mut scanner = Scanner::new(&cfg.ready_marker, cfg.forward.as_deref());
    let spawned = std::thread::Builder::new()
        .name("console".into())
        .spawn(move || {
            if let Some(out) = stdout {
                let ready_tx = reader_tx.clone();
                let on_ready = move || {
                    let _ = ready_tx.send(Event::Ready(Instant::now()));
                };
                let stdout = std::io::stdout();
                if let Err(e) = linescan::pump(
                    BufReader::new(out),
                    &mut scanner,
                    copy,
                    stdout.lock(),
                    on_ready,
                ) {
                    eprintln!("lego-guest-tools: boot-timer: console reader stopped: {e}");
                }
            }
            let _ = reader_tx.send(Event::ReaderDone);
        });
    if let Err(e) = spawned {
        kill(pid);
        let _ = child.wait();
        return Err(BootTimerError::Thread(e));
    }
    let waiter_tx = tx;
    let spawned = std::thread::Builder::new()
        .name("waiter".into())
        .spawn(move || {
            let status = child.wait();
            let now = Instant::now();
            if let Ok(status) = status {
                let _ = waiter_tx.send(Event::Exited(now, status));
            }
        });
    if let Err(e) = spawned {
        kill(pid);
        return Err(BootTimerError::Thread(e));
    }

    let mut peak = MemPeak::default();
    let mut ready = None;
    let mut exited: Option<(Duration, ExitStatus)> = None;
    let mut killed: Option<RunStatus> = None;
    let mut reader_done = false;
    let mut next_sample = start;
    let mut exited_at: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if exited.is_none() {
            if now >= next_sample {
                // The process may be gone already: a failed read just means no sample.
                if let Ok(s) = procstatus::read(pid) {
                    peak.add(&s);
                }
                next_sample = now + cfg.sample_every;
            }
            let elapsed = now - start;
            if killed.is_none() {
                if ready.is_none() && cfg.ready_timeout.is_some_and(|t| elapsed >= t) {
                    kill(pid);
                    killed = Some(RunStatus::Hung);
                } else if cfg.timeout.is_some_and(|t| elapsed >= t) {
                    kill(pid);
                    killed = Some(RunStatus::TimedOut);
                }
            }
        } else if reader_done || exited_at.is_some_and(|t| now - t >= READER_GRACE) {
            break;
        }
        let wait = if exited.is_none() {
            next_sample.saturating_duration_since(Instant::now())
        } else {
            Duration::from_millis(50)
        };
        match rx.recv_timeout(wait) {
            Ok(Event::Ready(t)) => ready = Some(t - start),
            Ok(Event::Exited(t, status)) => {
                exited = Some((t - start, status));
                exited_at = Some(t);
            }
            Ok(Event::ReaderDone) => reader_done = true,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    let status = match (killed, ready) {
        (Some(k), _) => k,
        (None, Some(_)) => RunStatus::Ok,
        (None, None) => RunStatus::NoReady,
    };
    Ok(Timing {
        label: cfg.label.clone(),
        status,
        ready,
        exit: exited.map(|(d, _)| d),
        exit_code: exited.and_then(|(_, s)| exit_code(s)),
        peak,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(script: &str) -> TimerConfig {
        TimerConfig {
            label: "fake".into(),
            ready_marker: "LEGO_GUEST_READY".into(),
            forward: Some("LEGO_".into()),
            console: None,
            sample_every: Duration::from_millis(10),
            // Generous: a loaded CI machine can stall a short script for seconds.
            ready_timeout: Some(Duration::from_secs(30)),
            timeout: Some(Duration::from_secs(60)),
            command: vec!["sh".into(), "-c".into(), script.into()],
        }
    }

    #[test]
    fn times_a_fake_vmm() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg("sleep 0.2; echo booting; echo LEGO_GUEST_READY; sleep 0.2; exit 0");
        c.console = Some(dir.path().join("console"));
        let t = run(&c).unwrap();
        assert_eq!(t.status, RunStatus::Ok);
        let ready = t.ready.unwrap();
        let exit = t.exit.unwrap();
        assert!(ready >= Duration::from_millis(150) && exit > ready, "{t:?}");
        assert_eq!(t.exit_code, Some(0));
        assert_eq!(t.tool_exit_code(), 0);
        assert!(t.peak.samples >= 5 && t.peak.rss_kb > 0, "{t:?}");
        let console = std::fs::read_to_string(dir.path().join("console")).unwrap();
        assert_eq!(console, "booting\nLEGO_GUEST_READY\n");
        let line = t.line();
        assert!(
            line.starts_with("LEGO_BOOT_TIMING vmm=fake status=ok ready_ms="),
            "{line}"
        );
        assert!(line.contains(" exit_code=0 overhead_kb="), "{line}");
    }

    #[test]
    fn kills_a_vmm_that_never_gets_ready() {
        let mut c = cfg("exec sleep 30");
        c.ready_timeout = Some(Duration::from_millis(300));
        let started = Instant::now();
        let t = run(&c).unwrap();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(t.status, RunStatus::Hung);
        assert_eq!(t.exit_code, Some(128 + libc::SIGKILL));
        assert_eq!(t.tool_exit_code(), 125);
        assert!(
            t.line().contains("status=hung ready_ms=none"),
            "{}",
            t.line()
        );
    }

    #[test]
    fn reports_an_exit_without_the_marker() {
        let t = run(&cfg("echo oops; exit 3")).unwrap();
        assert_eq!(t.status, RunStatus::NoReady);
        assert_eq!(t.exit_code, Some(3));
        assert_eq!(t.tool_exit_code(), 3);
    }

    #[test]
    fn rejects_bad_input() {
        let mut c = cfg("true");
        c.command.clear();
        assert!(matches!(run(&c), Err(BootTimerError::NoCommand)));
        let mut c = cfg("true");
        c.label = "a b".into();
        assert!(run(&c).unwrap_err().to_string().contains("whitespace"));
        let mut c = cfg("true");
        c.command = vec!["/nonexistent/vmm".into()];
        assert!(matches!(run(&c), Err(BootTimerError::Spawn { .. })));
    }
}
