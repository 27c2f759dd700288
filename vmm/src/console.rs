//! Where the guest's serial console goes (stdout, a file, a Unix socket, or nowhere), and a
//! watch on it for the kernel's panic line, which ends the vNode even before the guest has
//! loaded its pvpanic driver. Clients of the socket also type into the console: what they send
//! goes to the [`crate::console_input`] queue.

use crate::config::SerialOutput;
use crate::console_input::InputQueue;
use lego_devices::exit::{ExitNotifier, GuestExit};
use std::io::{IsTerminal, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The kernel's panic banner.
const PANIC_MARKER: &[u8] = b"Kernel panic - not syncing";
/// Longest line kept for panic detection.
const MAX_LINE: usize = 4096;
/// Clients the serial socket serves at once; more are turned away.
pub const MAX_SOCKET_CLIENTS: usize = 8;
/// How long console output waits for a socket client that does not read before dropping it
/// (the guest's vCPU waits meanwhile).
const CLIENT_WRITE_TIMEOUT: Duration = Duration::from_millis(100);

/// Whether the console reads legovmm's standard input: it does when the console is on stdout
/// and stdin is a terminal.
pub fn reads_stdin(output: &SerialOutput) -> bool {
    *output == SerialOutput::Stdout && std::io::stdin().is_terminal()
}

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
    /// Opens the configured output; what socket clients send goes to `input`.
    pub fn open(
        output: &SerialOutput,
        exit: ExitNotifier,
        input: InputQueue,
    ) -> Result<Self, ConsoleError> {
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
            SerialOutput::Socket(path) => Box::new(SocketFanout::listen(path, input)?),
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

/// Streams console output to every client connected to a Unix socket, and queues what each
/// client sends as console input.
struct SocketFanout {
    clients: Arc<Mutex<Vec<UnixStream>>>,
}

impl SocketFanout {
    fn listen(path: &Path, input: InputQueue) -> Result<Self, ConsoleError> {
        let err = |source| ConsoleError::Socket {
            path: path.display().to_string(),
            source,
        };
        let listener = UnixListener::bind(path).map_err(err)?;
        let clients = Arc::new(Mutex::new(Vec::new()));
        let accepted = clients.clone();
        std::thread::Builder::new()
            .name("serial-socket".into())
            .spawn(move || accept_clients(&listener, &accepted, &input))
            .map_err(err)?;
        Ok(Self { clients })
    }
}

/// Accepts socket clients: up to [`MAX_SOCKET_CLIENTS`] at once, each read by its own thread.
fn accept_clients(listener: &UnixListener, clients: &Mutex<Vec<UnixStream>>, input: &InputQueue) {
    let connected = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming().flatten() {
        if connected.load(Ordering::Acquire) >= MAX_SOCKET_CLIENTS {
            tracing::warn!(
                "the serial socket has {MAX_SOCKET_CLIENTS} clients; one more was turned away"
            );
            continue;
        }
        let reader = match stream.try_clone() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("cannot serve a serial socket client: {e}");
                continue;
            }
        };
        let _ = stream.set_write_timeout(Some(CLIENT_WRITE_TIMEOUT));
        connected.fetch_add(1, Ordering::AcqRel);
        let (input, count) = (input.clone(), connected.clone());
        let started = std::thread::Builder::new()
            .name("serial-client".into())
            .spawn(move || {
                read_client(reader, &input);
                count.fetch_sub(1, Ordering::AcqRel);
            });
        if started.is_err() {
            connected.fetch_sub(1, Ordering::AcqRel);
            continue;
        }
        clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(stream);
    }
}

/// Queues what one client sends until it hangs up (the queue's back-pressure slows it down).
fn read_client(mut client: UnixStream, input: &InputQueue) {
    let mut buf = [0u8; 4096];
    loop {
        match client.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if input.send(buf[..n].to_vec()).is_err() {
                    return;
                }
            }
        }
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

    #[test]
    fn panic_line_ends_the_guest_with_the_kernels_words() {
        let exit = ExitNotifier::new().unwrap();
        let (input, _typed) = crate::console_input::queue();
        let mut c = Console::open(&SerialOutput::None, exit.clone(), input).unwrap();
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
    fn file_and_socket_outputs_receive_the_bytes_and_socket_clients_type() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("console.log");
        let exit = ExitNotifier::new().unwrap();
        let (input, typed) = crate::console_input::queue();
        let mut c = Console::open(
            &SerialOutput::File(file.clone()),
            exit.clone(),
            input.clone(),
        )
        .unwrap();
        c.write_all(b"boot\n").unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"boot\n");

        let sock = dir.path().join("console.sock");
        let mut c = Console::open(&SerialOutput::Socket(sock.clone()), exit, input).unwrap();
        let mut client = UnixStream::connect(&sock).unwrap();
        client.write_all(b"ls\n").unwrap();
        let got = typed.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(got, b"ls\n", "what a client sends is console input");
        // Wait until the listener thread has accepted the client, then read output.
        client
            .set_read_timeout(Some(Duration::from_millis(10)))
            .unwrap();
        let mut b = [0u8; 1];
        let received = (0..500).any(|_| {
            c.write_all(b"x").unwrap();
            client.read(&mut b).is_ok()
        });
        assert!(received, "the socket client never received console output");
        assert_eq!(b[0], b'x');

        // Clients past the limit are turned away: their connection is closed at once.
        let others: Vec<UnixStream> = (1..MAX_SOCKET_CLIENTS)
            .map(|_| UnixStream::connect(&sock).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        let mut extra = UnixStream::connect(&sock).unwrap();
        extra
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        assert_eq!(
            extra.read(&mut b).unwrap(),
            0,
            "the extra client was closed"
        );
        drop(others);
    }
}
