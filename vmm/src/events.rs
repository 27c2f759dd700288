//! The vNode's lifecycle events as JSON lines (`--events PATH`): started, device_added,
//! device_removed, paused, resumed, backend_lost, backend_reconnected, backend_failed,
//! guest_panic, stopped.
//!
//! PATH is a regular file (created, appended to) or a FIFO another process reads (opened
//! without blocking: a FIFO nobody reads is refused at start). Events are written with one
//! `write` each and never wait: when a FIFO's reader is slow the event is dropped and
//! counted, and when the reader is gone the log stops; the vNode runs on either way.

use serde_json::{json, Map, Value};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Errors opening the event log.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    /// The file or FIFO could not be opened.
    #[error("cannot open the event log {path} (a FIFO needs a reader before legovmm starts)")]
    Open {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Where events go; a log opened on no path drops them.
#[derive(Debug)]
pub struct EventLog {
    out: Mutex<Option<File>>,
    started: Instant,
    dropped: AtomicU64,
}

impl EventLog {
    /// A log that writes nowhere.
    pub fn disabled() -> Self {
        Self {
            out: Mutex::new(None),
            started: Instant::now(),
            dropped: AtomicU64::new(0),
        }
    }

    /// Opens `path` (a file, created and appended to, or a FIFO with a reader).
    pub fn open(path: &Path) -> Result<Self, EventsError> {
        let err = |source| EventsError::Open {
            path: path.to_owned(),
            source,
        };
        let fifo = std::fs::metadata(path)
            .map(|m| m.file_type().is_fifo())
            .unwrap_or(false);
        let mut options = std::fs::OpenOptions::new();
        if fifo {
            options.write(true).custom_flags(libc::O_NONBLOCK);
        } else {
            options.create(true).append(true);
        }
        let file = options.open(path).map_err(err)?;
        Ok(Self {
            out: Mutex::new(Some(file)),
            ..Self::disabled()
        })
    }

    /// Opens the configured log, or a disabled one.
    pub fn from_config(path: Option<&Path>) -> Result<Self, EventsError> {
        path.map_or_else(|| Ok(Self::disabled()), Self::open)
    }

    /// Writes one event: `{"event": NAME, "time_ms": …, "uptime_ms": …, …fields}`.
    pub fn emit(&self, name: &str, fields: Value) {
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let Some(file) = out.as_mut() else {
            return;
        };
        let mut line = Map::new();
        line.insert("event".into(), name.into());
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        line.insert("time_ms".into(), now.into());
        line.insert(
            "uptime_ms".into(),
            (self.started.elapsed().as_millis() as u64).into(),
        );
        if let Value::Object(extra) = fields {
            line.extend(extra);
        }
        let mut text = Value::Object(line).to_string();
        text.push('\n');
        match file.write(text.as_bytes()) {
            Ok(n) if n == text.len() => {}
            Ok(_) => {
                tracing::warn!("the event log took part of an event; it stops here");
                *out = None;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::debug!("the event log's reader is slow; {n} events dropped so far");
            }
            Err(e) => {
                tracing::warn!("cannot write the event log ({e}); it stops here");
                *out = None;
            }
        }
    }

    /// Events dropped because a FIFO's reader was slow.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The `stopped` event's fields for how the vNode ended.
pub fn stopped_fields(outcome: &crate::vm::Outcome) -> Value {
    use crate::vm::Outcome;
    use lego_devices::exit::GuestExit;
    let (reason, detail) = match outcome {
        Outcome::Guest(GuestExit::PowerOff) => ("poweroff", None),
        Outcome::Guest(GuestExit::Reset) => ("reset", None),
        Outcome::Guest(GuestExit::Crashed(why)) => ("crashed", Some(why.clone())),
        Outcome::Guest(GuestExit::VmmFailed(why)) => ("vmm_failed", Some(why.clone())),
        Outcome::Guest(GuestExit::Shutdown) => ("shutdown", None),
        Outcome::Guest(GuestExit::Quit) => ("quit", None),
        Outcome::Signal(n) => ("signal", Some(format!("signal {n}"))),
    };
    json!({ "reason": reason, "detail": detail })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn lines(path: &Path) -> Vec<Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn events_are_json_lines_appended_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        std::fs::write(&path, "{\"event\":\"earlier\"}\n").unwrap();
        let log = EventLog::open(&path).unwrap();
        log.emit("started", json!({"pid": 7}));
        log.emit(
            "stopped",
            stopped_fields(&crate::vm::Outcome::Guest(
                lego_devices::exit::GuestExit::Crashed("oops".into()),
            )),
        );
        let got = lines(&path);
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[0]["event"], "earlier");
        assert_eq!(got[1]["event"], "started");
        assert_eq!(got[1]["pid"], 7);
        assert!(got[1]["time_ms"].as_u64().unwrap() > 1_600_000_000_000);
        assert_eq!(got[2]["reason"], "crashed");
        assert_eq!(got[2]["detail"], "oops");
        EventLog::disabled().emit("nowhere", json!({}));
        let e = EventLog::open(&dir.path().join("no/such/dir/x")).unwrap_err();
        assert!(e.to_string().contains("cannot open the event log"), "{e}");
    }

    #[test]
    fn a_fifo_needs_a_reader_and_a_slow_one_loses_events_not_the_vnode() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("events.fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(EventLog::open(&fifo).is_err(), "no reader yet");
        let mut reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        let log = EventLog::open(&fifo).unwrap();
        log.emit("started", json!({}));
        let mut buf = vec![0u8; 4096];
        let n = reader.read(&mut buf).unwrap();
        let first: Value = serde_json::from_slice(&buf[..n]).unwrap();
        assert_eq!(first["event"], "started");
        // Nobody reads: the pipe fills, events are dropped, emit never blocks.
        let start = Instant::now();
        for _ in 0..10_000 {
            log.emit("paused", json!({"padding": "x".repeat(100)}));
        }
        assert!(log.dropped() > 0);
        assert!(start.elapsed() < std::time::Duration::from_secs(10));
        // The reader goes away: the log stops, quietly.
        drop(reader);
        log.emit("resumed", json!({}));
        log.emit("resumed", json!({}));
    }
}
