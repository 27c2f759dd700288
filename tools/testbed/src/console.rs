//! Watching a child's console: collect its lines, log and stream them, notice markers,
//! and kill the child when it overruns its time or misses its ready marker.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::Command;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::proc::{exit_code, GroupChild, ProcError};

/// How long to keep reading output after the child exited.
const DRAIN: Duration = Duration::from_millis(500);

/// Errors from watching a child.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// Starting or waiting for the child failed.
    #[error(transparent)]
    Proc(#[from] ProcError),
    /// The console log file could not be created.
    #[error("could not create the console log {path}")]
    Log {
        /// The log file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// What to watch for and how long to wait.
#[derive(Debug, Clone)]
pub struct Watch {
    /// Kill the child after this long.
    pub timeout: Duration,
    /// A line containing this text shows the run got going.
    pub ready_marker: Option<String>,
    /// Kill the child if the ready marker has not appeared after this long.
    pub ready_timeout: Duration,
    /// Texts whose first appearance is timed (see [`Watched::seen`]).
    pub timed_markers: Vec<String>,
    /// Which lines to copy to standard error as they arrive.
    pub stream: Stream,
    /// Write the console to this file as it arrives.
    pub log: Option<PathBuf>,
    /// Kill the child when no line has arrived for this long (its console carries a
    /// heartbeat, so silence means it hangs).
    pub silence_timeout: Option<Duration>,
}

/// Which console lines reach standard error while a run is watched.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Stream {
    /// None (they are still logged and collected).
    #[default]
    Off,
    /// Every line, as it arrives.
    All,
    /// Only what [`crate::progress`] turns into a progress line for a person.
    Progress,
}

/// How a watched run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The child exited by itself with this shell-style code.
    Exited(i32),
    /// The child was killed at the overall timeout.
    TimedOut,
    /// The child was killed because the ready marker did not appear in time.
    NotReady,
    /// The child was killed because its console stayed silent for the silence timeout.
    Silent,
}

/// The result of a watched run.
#[derive(Debug, Clone)]
pub struct Watched {
    /// How it ended.
    pub ending: Ending,
    /// Every console line, joined with `\n`.
    pub console: String,
    /// Wall time from start to end.
    pub duration: Duration,
    /// When the ready marker appeared, if it did.
    pub ready_after: Option<Duration>,
    /// Each timed marker that appeared, with the time of its first appearance.
    pub seen: Vec<(String, Duration)>,
}

/// Bookkeeping while lines arrive.
struct State<'a> {
    watch: &'a Watch,
    start: Instant,
    console: String,
    ready_after: Option<Duration>,
    seen: Vec<(String, Duration)>,
    log: Option<File>,
    last_line: Instant,
}

impl State<'_> {
    fn line(&mut self, line: &str) {
        let at = self.start.elapsed();
        self.last_line = Instant::now();
        match self.watch.stream {
            Stream::Off => {}
            Stream::All => {
                let _ = writeln!(std::io::stderr().lock(), "{line}");
            }
            Stream::Progress => {
                if let Some(text) = crate::progress::for_person(line) {
                    crate::progress::say(at, &text);
                }
            }
        }
        if let Some(f) = self.log.as_mut() {
            let _ = writeln!(f, "{line}");
        }
        if self.ready_after.is_none() {
            if let Some(m) = &self.watch.ready_marker {
                if line.contains(m.as_str()) {
                    self.ready_after = Some(at);
                }
            }
        }
        for m in &self.watch.timed_markers {
            if line.contains(m.as_str()) && !self.seen.iter().any(|(s, _)| s == m) {
                self.seen.push((m.clone(), at));
            }
        }
        self.console.push_str(line);
        self.console.push('\n');
    }

    /// Returns true if the ready marker is still awaited.
    fn awaiting_ready(&self) -> bool {
        self.watch.ready_marker.is_some() && self.ready_after.is_none()
    }
}

/// Starts `cmd` (in its own process group, output merged) and watches it to the end.
pub fn run(cmd: Command, watch: &Watch) -> Result<Watched, ConsoleError> {
    run_with_dump(cmd, watch, &|| String::new())
}

/// Like [`run`]; when the child is to be killed for its timeout or its silence, first
/// calls `dump` and adds what it returns (the child's state, e.g. its CPUs' registers) to
/// the console and the log.
pub fn run_with_dump(
    cmd: Command,
    watch: &Watch,
    dump: &dyn Fn() -> String,
) -> Result<Watched, ConsoleError> {
    let log = match &watch.log {
        Some(path) => Some(File::create(path).map_err(|source| ConsoleError::Log {
            path: path.clone(),
            source,
        })?),
        None => None,
    };
    let start = Instant::now();
    let (mut child, reader) = GroupChild::spawn(cmd)?;
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut r = BufReader::new(reader);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&buf);
                    let line = text.trim_end_matches(['\n', '\r']).replace('\r', "");
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let mut st = State {
        watch,
        start,
        console: String::new(),
        ready_after: None,
        seen: Vec::new(),
        log,
        last_line: Instant::now(),
    };
    let dump_and_kill = |st: &mut State<'_>, child: &mut GroupChild, why: &str| {
        st.line(&format!(
            "LEGO_TESTBED_KILL {why}; state before the kill follows"
        ));
        for l in dump().lines() {
            st.line(l);
        }
        child.kill();
    };
    let ending = loop {
        let now = start.elapsed();
        if now >= watch.timeout {
            let why = format!("timeout after {:.0} s", now.as_secs_f64());
            dump_and_kill(&mut st, &mut child, &why);
            break Ending::TimedOut;
        }
        if let Some(limit) = watch.silence_timeout {
            let quiet = st.last_line.elapsed();
            if quiet >= limit {
                let why = format!("console silent for {:.0} s", quiet.as_secs_f64());
                dump_and_kill(&mut st, &mut child, &why);
                break Ending::Silent;
            }
        }
        if st.awaiting_ready() && now >= watch.ready_timeout {
            child.kill();
            break Ending::NotReady;
        }
        let mut wait = (watch.timeout - now).min(Duration::from_millis(200));
        if st.awaiting_ready() {
            wait = wait.min(watch.ready_timeout.saturating_sub(now));
        }
        match rx.recv_timeout(wait) {
            Ok(line) => st.line(&line),
            Err(RecvTimeoutError::Timeout) => {
                if let Some(status) = child.try_wait()? {
                    drain(&rx, &mut st);
                    break Ending::Exited(exit_code(status));
                }
            }
            Err(RecvTimeoutError::Disconnected) => {
                break wait_exit(&mut child, start, watch.timeout)?;
            }
        }
    };
    drop(child);
    // Lines already queued when the child was killed still belong to the console.
    while let Ok(line) = rx.try_recv() {
        st.line(&line);
    }
    if let Some(f) = st.log.as_mut() {
        let _ = f.flush();
    }
    Ok(Watched {
        ending,
        console: st.console,
        duration: start.elapsed(),
        ready_after: st.ready_after,
        seen: st.seen,
    })
}

/// Reads what is left of the output for a short while after the child exited.
fn drain(rx: &mpsc::Receiver<String>, st: &mut State<'_>) {
    let until = Instant::now() + DRAIN;
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) => st.line(&line),
            Err(_) => break,
        }
    }
}

/// Waits for a child whose output has closed, up to the overall timeout.
fn wait_exit(
    child: &mut GroupChild,
    start: Instant,
    timeout: Duration,
) -> Result<Ending, ConsoleError> {
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Ending::Exited(exit_code(status)));
        }
        if start.elapsed() >= timeout {
            child.kill();
            return Ok(Ending::TimedOut);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch(timeout_ms: u64) -> Watch {
        Watch {
            timeout: Duration::from_millis(timeout_ms),
            ready_marker: None,
            ready_timeout: Duration::from_millis(timeout_ms),
            timed_markers: vec!["MARK".into()],
            stream: Stream::Off,
            log: None,
            silence_timeout: None,
        }
    }

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    }

    #[test]
    fn collects_lines_and_exit_code() {
        let w = run(
            sh("echo a; echo MARK b; printf 'c\\r\\n'; exit 4"),
            &watch(10_000),
        )
        .unwrap();
        assert_eq!(w.ending, Ending::Exited(4));
        assert_eq!(w.console, "a\nMARK b\nc\n");
        assert_eq!(w.seen.len(), 1);
    }

    #[test]
    fn times_out() {
        let w = run(sh("echo start; sleep 1000"), &watch(300)).unwrap();
        assert_eq!(w.ending, Ending::TimedOut);
        assert!(w.console.contains("start"));
    }

    #[test]
    fn misses_the_ready_marker() {
        let mut wt = watch(10_000);
        wt.ready_marker = Some("READY".into());
        wt.ready_timeout = Duration::from_millis(300);
        let w = run(sh("sleep 1000"), &wt).unwrap();
        assert_eq!(w.ending, Ending::NotReady);
        let w = run(sh("echo READY; exit 0"), &wt).unwrap();
        assert_eq!(w.ending, Ending::Exited(0));
        assert!(w.ready_after.is_some());
    }

    #[test]
    fn kills_a_silent_child_after_dumping_its_state() {
        let mut wt = watch(10_000);
        wt.silence_timeout = Some(Duration::from_millis(400));
        let t0 = Instant::now();
        let w = run_with_dump(
            sh("echo one; sleep 0.2; echo two; sleep 1000"),
            &wt,
            &|| "RIP=dead".to_string(),
        )
        .unwrap();
        assert_eq!(w.ending, Ending::Silent);
        assert!(t0.elapsed() < Duration::from_secs(5));
        assert!(
            w.console.contains("two\nLEGO_TESTBED_KILL console silent"),
            "{}",
            w.console
        );
        assert!(w.console.ends_with("RIP=dead\n"), "{}", w.console);
        // A child that keeps talking is not silent.
        let w = run(sh("for i in 1 2 3 4 5 6; do echo $i; sleep 0.2; done"), &wt).unwrap();
        assert_eq!(w.ending, Ending::Exited(0));
    }

    #[test]
    fn writes_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut wt = watch(10_000);
        wt.log = Some(dir.path().join("console.log"));
        run(sh("echo logged"), &wt).unwrap();
        let text = std::fs::read_to_string(dir.path().join("console.log")).unwrap();
        assert_eq!(text, "logged\n");
    }
}
