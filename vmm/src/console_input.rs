//! Input to the guest's serial console: what is typed on legovmm's terminal (raw mode, with
//! an escape sequence to quit) and what clients of the serial socket send reaches the UART's
//! receive FIFO at the pace the guest drains it.
//!
//! Every source hands byte chunks to one bounded queue; one pump thread moves them into the
//! 64-byte FIFO. A guest that does not read its serial port therefore holds back the sources
//! (a socket client's writes block), never grows legovmm's memory.

use lego_devices::exit::{ExitNotifier, GuestExit};
use lego_devices::legacy::serial::{SerialDevice, SerialError};
use std::io::Read;
use std::os::fd::RawFd;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Chunks of input the queue holds before its sources wait.
pub const QUEUE_CHUNKS: usize = 64;
/// The escape byte on legovmm's terminal: Ctrl-A.
pub const ESCAPE: u8 = 0x01;
/// After [`ESCAPE`], the byte that quits legovmm (and ends the vNode).
pub const QUIT: u8 = b'x';
/// How long the pump waits before trying a full FIFO again.
const FIFO_RETRY: Duration = Duration::from_millis(2);

/// Errors wiring console input.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// A thread could not be started.
    #[error("cannot start the serial input thread")]
    Thread(#[source] std::io::Error),
    /// The terminal's modes could not be read or set.
    #[error("cannot switch the terminal to raw mode")]
    Terminal(#[source] std::io::Error),
}

/// Where console input is queued.
pub type InputQueue = SyncSender<Vec<u8>>;

/// A new input queue and its receiving end (for [`start_pump`]).
pub fn queue() -> (InputQueue, Receiver<Vec<u8>>) {
    sync_channel(QUEUE_CHUNKS)
}

/// Moves queued input into `uart`'s receive FIFO until every sender is gone.
pub fn start_pump(
    input: Receiver<Vec<u8>>,
    uart: Arc<Mutex<SerialDevice>>,
) -> Result<(), InputError> {
    std::thread::Builder::new()
        .name("serial-input".into())
        .spawn(move || {
            for chunk in input {
                feed(&uart, &chunk);
            }
        })
        .map(drop)
        .map_err(InputError::Thread)
}

/// Puts all of `bytes` into the FIFO, waiting while it is full.
fn feed(uart: &Mutex<SerialDevice>, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        let taken = uart
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .enqueue_input(bytes);
        match taken {
            Ok(n) if n > 0 => bytes = &bytes[n..],
            Ok(_) | Err(SerialError::FifoFull) => std::thread::sleep(FIFO_RETRY),
            Err(e) => {
                // The bytes are in the FIFO; only the interrupt failed. The guest polls on.
                tracing::warn!("serial input: {}", lego_report::error_chain(&e));
                return;
            }
        }
    }
}

/// What the escape filter made of a chunk typed on the terminal.
#[derive(Debug, PartialEq, Eq)]
pub struct Typed {
    /// The bytes for the guest.
    pub bytes: Vec<u8>,
    /// The user typed the quit sequence.
    pub quit: bool,
}

/// Recognises Ctrl-A x (quit) and Ctrl-A Ctrl-A (a literal Ctrl-A) in typed input, across
/// chunk boundaries; Ctrl-A followed by anything else passes both bytes on.
#[derive(Debug, Default)]
pub struct EscapeFilter {
    after_escape: bool,
}

impl EscapeFilter {
    /// Filters one chunk.
    pub fn filter(&mut self, input: &[u8]) -> Typed {
        let mut bytes = Vec::with_capacity(input.len());
        for &b in input {
            if self.after_escape {
                self.after_escape = false;
                match b {
                    QUIT => return Typed { bytes, quit: true },
                    ESCAPE => bytes.push(ESCAPE),
                    other => bytes.extend_from_slice(&[ESCAPE, other]),
                }
            } else if b == ESCAPE {
                self.after_escape = true;
            } else {
                bytes.push(b);
            }
        }
        Typed { bytes, quit: false }
    }
}

/// Reads legovmm's standard input (a terminal in raw mode) into `queue`; Ctrl-A x ends the
/// vNode through `exit`. Input the guest is not reading fast enough is dropped, as a real
/// UART drops it, so that the escape sequence always gets through.
pub fn start_stdin(queue: InputQueue, exit: ExitNotifier) -> Result<(), InputError> {
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let mut filter = EscapeFilter::default();
            let mut stdin = std::io::stdin().lock();
            let mut buf = [0u8; 1024];
            loop {
                let n = match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let typed = filter.filter(&buf[..n]);
                if !typed.bytes.is_empty() {
                    match queue.try_send(typed.bytes) {
                        Ok(()) => {}
                        Err(TrySendError::Full(_)) => {
                            tracing::debug!("the guest is not reading its console; input dropped")
                        }
                        Err(TrySendError::Disconnected(_)) => return,
                    }
                }
                if typed.quit {
                    exit.notify(GuestExit::Quit);
                    return;
                }
            }
        })
        .map(drop)
        .map_err(InputError::Thread)
}

/// A terminal switched to raw mode; dropping it restores the modes it had.
pub struct RawTerminal {
    fd: RawFd,
    saved: libc::termios,
}

impl RawTerminal {
    /// Switches the terminal on `fd` to raw mode (no echo, no line editing, no signals from
    /// keys: Ctrl-C reaches the guest).
    pub fn enter(fd: RawFd) -> Result<Self, InputError> {
        // SAFETY: termios is plain data; tcgetattr fills it or fails.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `saved` is a valid termios to write into; a bad fd makes the call fail.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return Err(InputError::Terminal(std::io::Error::last_os_error()));
        }
        let mut raw = saved;
        // SAFETY: `raw` is a valid termios, modified in place.
        unsafe { libc::cfmakeraw(&mut raw) };
        // Keep output processing so that legovmm's own log lines still start at column 0.
        raw.c_oflag |= libc::OPOST | libc::ONLCR;
        // SAFETY: `raw` is a valid termios; a bad fd makes the call fail.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return Err(InputError::Terminal(std::io::Error::last_os_error()));
        }
        Ok(Self { fd, saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: `saved` is the termios tcgetattr returned for this fd.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lego_devices::bus::BusDevice;

    #[test]
    fn the_escape_quits_and_doubles_to_a_literal_across_chunks() {
        let mut f = EscapeFilter::default();
        assert_eq!(f.filter(b"ls\r").bytes, b"ls\r");
        assert_eq!(f.filter(&[b'a', ESCAPE]).bytes, b"a");
        assert_eq!(f.filter(&[ESCAPE, b'b']).bytes, [ESCAPE, b'b']);
        assert_eq!(f.filter(&[ESCAPE, b'c']).bytes, [ESCAPE, b'c']);
        let t = f.filter(&[b'd', ESCAPE, QUIT, b'e']);
        assert_eq!(
            t,
            Typed {
                bytes: b"d".to_vec(),
                quit: true
            }
        );
    }

    #[test]
    fn queued_input_reaches_the_fifo_as_the_guest_drains_it() {
        let mut dev = SerialDevice::new(Box::new(std::io::sink())).unwrap();
        dev.write(1, &[0x01]); // IER: received-data interrupt on
        let uart = Arc::new(Mutex::new(dev));
        let (tx, rx) = queue();
        start_pump(rx, uart.clone()).unwrap();
        let text: Vec<u8> = (0..300u32).map(|i| b'a' + (i % 26) as u8).collect();
        tx.send(text.clone()).unwrap();
        drop(tx);
        // Play the guest: read the data register while the line status says data is ready.
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while got.len() < text.len() && std::time::Instant::now() < deadline {
            let mut u = uart.lock().unwrap();
            let (mut lsr, mut data) = ([0u8], [0u8]);
            u.read(5, &mut lsr);
            if lsr[0] & 1 == 1 {
                u.read(0, &mut data);
                got.push(data[0]);
            } else {
                drop(u);
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        assert_eq!(got, text, "every byte arrives, in order, none dropped");
    }

    #[test]
    fn a_raw_terminal_is_restored_when_dropped() {
        let (mut master, mut slave) = (0, 0);
        // SAFETY: both out-pointers are valid; null name, termios and winsize are allowed.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        let lflag = |fd| {
            // SAFETY: plain data filled by tcgetattr.
            let mut t: libc::termios = unsafe { std::mem::zeroed() };
            // SAFETY: `t` is valid to write; `fd` is our pty.
            assert_eq!(unsafe { libc::tcgetattr(fd, &mut t) }, 0);
            t.c_lflag
        };
        let before = lflag(slave);
        assert_ne!(before & libc::ICANON, 0, "a new pty is canonical");
        let raw = RawTerminal::enter(slave).unwrap();
        assert_eq!(lflag(slave) & (libc::ICANON | libc::ECHO | libc::ISIG), 0);
        drop(raw);
        assert_eq!(lflag(slave), before);
        // SAFETY: we own both fds.
        unsafe {
            libc::close(master);
            libc::close(slave);
        }
        assert!(RawTerminal::enter(-1).is_err());
    }
}
