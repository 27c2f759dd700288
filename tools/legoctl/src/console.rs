//! `legoctl console`: attaches to a vNode's serial socket (`legovmm run --serial
//! socket:PATH`). What arrives on the input goes to the guest's console; what the guest prints
//! is copied to the output. Line-oriented, for scripts: after the input ends, the console is
//! read for a while longer (the answers to what was typed), then left.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How often the output side checks whether the input has ended.
const POLL: Duration = Duration::from_millis(50);

/// Errors attaching to a console.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The socket could not be connected.
    #[error("cannot connect to the serial socket {path} (is the vNode running with --serial socket:{path}?)")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Reading from or writing to the console failed.
    #[error("the console connection failed")]
    Io(#[source] std::io::Error),
}

/// How an attachment ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// The input ended and the linger time passed.
    InputDone,
    /// The vNode closed the console (it stopped).
    VnodeGone,
}

/// Copies `input` to the console at `socket` and the console to `output`, until the vNode
/// closes it or `linger` after `input` ends.
pub fn attach<R, W>(
    socket: &Path,
    input: R,
    output: &mut W,
    linger: Duration,
) -> Result<Ended, ConsoleError>
where
    R: Read + Send + 'static,
    W: Write,
{
    let stream = UnixStream::connect(socket).map_err(|source| ConsoleError::Connect {
        path: socket.to_owned(),
        source,
    })?;
    let mut reader = stream;
    let mut writer = reader.try_clone().map_err(ConsoleError::Io)?;
    reader
        .set_read_timeout(Some(POLL))
        .map_err(ConsoleError::Io)?;
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut input = input;
        let _ = std::io::copy(&mut input, &mut writer);
        let _ = done_tx.send(());
    });
    let mut input_done: Option<Instant> = None;
    let mut buf = [0u8; 4096];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Ok(Ended::VnodeGone),
            Ok(n) => {
                output.write_all(&buf[..n]).map_err(ConsoleError::Io)?;
                output.flush().map_err(ConsoleError::Io)?;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(ConsoleError::Io(e)),
        }
        if input_done.is_none() && done_rx.try_recv().is_ok() {
            input_done = Some(Instant::now());
        }
        if input_done.is_some_and(|t| t.elapsed() >= linger) {
            return Ok(Ended::InputDone);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A console that greets, then answers each line it gets with "ran: LINE".
    fn fake_console(path: &Path, then_close: bool) {
        let listener = UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(b"login# ").unwrap();
            let mut r = std::io::BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            while std::io::BufRead::read_line(&mut r, &mut line).unwrap() > 0 {
                s.write_all(format!("ran: {line}").as_bytes()).unwrap();
                line.clear();
                if then_close {
                    return;
                }
            }
        });
    }

    #[test]
    fn typed_lines_reach_the_console_and_its_answers_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("console.sock");
        fake_console(&sock, false);
        let mut out = Vec::new();
        let input = std::io::Cursor::new(b"uname\n".to_vec());
        let ended = attach(&sock, input, &mut out, Duration::from_millis(500)).unwrap();
        assert_eq!(ended, Ended::InputDone);
        assert_eq!(String::from_utf8(out).unwrap(), "login# ran: uname\n");
    }

    #[test]
    fn a_console_that_closes_ends_the_attachment() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("console.sock");
        fake_console(&sock, true);
        let mut out = Vec::new();
        let input = std::io::Cursor::new(b"poweroff\n".to_vec());
        let ended = attach(&sock, input, &mut out, Duration::from_secs(60)).unwrap();
        assert_eq!(ended, Ended::VnodeGone);
        let e = attach(&dir.path().join("none"), std::io::empty(), &mut out, POLL).unwrap_err();
        assert!(e.to_string().contains("cannot connect"), "{e}");
    }
}
