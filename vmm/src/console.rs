//! Where the guest's serial console goes (stdout, a file, a Unix socket, or nowhere), and a
//! watch on it for the kernel's panic line, which ends the vNode even before the guest has
//! loaded its pvpanic driver.

use crate::config::SerialOutput;
use lego_devices::exit::{ExitNotifier, GuestExit};
use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// The kernel's panic banner.
const PANIC_MARKER: &[u8] = b"Kernel panic - not syncing";
/// Longest line kept for panic detection.
const MAX_LINE: usize = 4096;

/// Errors opening the console output.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The output file could not be opened.
    #[error("cannot open the serial output file {path}")]
    File {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The socket could not be bound.
    #[error("cannot listen on the serial socket {path}")]
    Socket {
        /// The socket path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// The console sink given to the UART.
pub struct Console {
    out: Box<dyn Write + Send>,
    line: Vec<u8>,
    exit: ExitNotifier,
}

impl Console {
    /// Opens the configured output.
    pub fn open(output: &SerialOutput, exit: ExitNotifier) -> Result<Self, ConsoleError> {
        let out: Box<dyn Write + Send> = match output {
            SerialOutput::Stdout => Box::new(std::io::stdout()),
            SerialOutput::None => Box::new(std::io::sink()),
            SerialOutput::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| ConsoleError::File {
                        path: path.display().to_string(),
                        source,
                    })?,
            ),
            SerialOutput::Socket(path) => Box::new(SocketFanout::listen(path)?),
        };
        Ok(Self {
            out,
            line: Vec::new(),
            exit,
        })
    }

    fn watch(&mut self, data: &[u8]) {
        for &b in data {
            if b == b'\n' {
                if contains(&self.line, PANIC_MARKER) {
                    let text = String::from_utf8_lossy(&self.line).trim().to_string();
                    self.exit.notify(GuestExit::Crashed(format!(
                        "the guest kernel panicked: {text}"
                    )));
                }
                self.line.clear();
            } else if self.line.len() < MAX_LINE {
                self.line.push(b);
            }
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

impl Write for Console {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.watch(data);
        // A console that cannot be written (closed stdout) must not stop the guest.
        if self.out.write_all(data).is_ok() {
            let _ = self.out.flush();
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Streams console output to every client connected to a Unix socket.
struct SocketFanout {
    clients: Arc<Mutex<Vec<UnixStream>>>,
}

impl SocketFanout {
    fn listen(path: &Path) -> Result<Self, ConsoleError> {
        let err = |source| ConsoleError::Socket {
            path: path.display().to_string(),
            source,
        };
        let listener = UnixListener::bind(path).map_err(err)?;
        let clients = Arc::new(Mutex::new(Vec::new()));
        let accepted = clients.clone();
        std::thread::Builder::new()
            .name("serial-socket".into())
            .spawn(move || {
                for stream in listener.incoming().flatten() {
                    accepted
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(stream);
                }
            })
            .map_err(err)?;
        Ok(Self { clients })
    }
}

impl Write for SocketFanout {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients.retain_mut(|c| c.write_all(data).is_ok());
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn panic_line_ends_the_guest_with_the_kernels_words() {
        let exit = ExitNotifier::new().unwrap();
        let mut c = Console::open(&SerialOutput::None, exit.clone()).unwrap();
        c.write_all(b"[    1.0] hello\n[    2.0] Kernel panic - not sync")
            .unwrap();
        assert_eq!(exit.exit(), None);
        c.write_all(b"ing: Attempted to kill init!\n").unwrap();
        match exit.exit() {
            Some(GuestExit::Crashed(m)) => assert!(m.contains("Attempted to kill init"), "{m}"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn file_and_socket_outputs_receive_the_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("console.log");
        let exit = ExitNotifier::new().unwrap();
        let mut c = Console::open(&SerialOutput::File(file.clone()), exit.clone()).unwrap();
        c.write_all(b"boot\n").unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"boot\n");

        let sock = dir.path().join("console.sock");
        let mut c = Console::open(&SerialOutput::Socket(sock.clone()), exit).unwrap();
        let mut client = UnixStream::connect(&sock).unwrap();
        // Wait until the listener thread has accepted the client.
        for _ in 0..500 {
            c.write_all(b"x").unwrap();
            let mut b = [0u8; 1];
            client
                .set_read_timeout(Some(std::time::Duration::from_millis(10)))
                .unwrap();
            if client.read(&mut b).is_ok() {
                assert_eq!(b[0], b'x');
                return;
            }
        }
        panic!("the socket client never received console output");
    }
}
