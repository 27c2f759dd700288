//! The interrupt relay of a vhost device: a thread that turns the backend's "used buffers"
//! eventfds into the device's virtio interrupt. For a vhost-user device it also watches the
//! backend's socket and brings the device back when the backend hangs up (with a
//! [`Reconnector`]; without one it only reports the hang-up): [`Relay::start`]. The kernel's
//! vhost-net has no socket to watch: [`Relay::start_calls`] relays the call eventfds only.
//!
//! The virtio-mmio transport keeps an InterruptStatus word that the guest reads before it
//! looks at the used rings; a relayed call sets its bit before raising the irqfd, which costs
//! one thread wake-up per interrupt. By default the backends get the irqfd itself as their
//! call eventfd and the relay only watches the socket (`crate::virtio::CallPath`).

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::reconnect::{ReconnectError, Reconnector};
use crate::rate_limit::RateLimiter;
use crate::virtio::VirtioInterrupt;

/// What happened to a backend's connection, as the relay tells its watcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendEvent {
    /// The backend closed its connection (guest requests wait from here).
    Lost,
    /// The device reconnected and its queues run again.
    Reconnected,
    /// The device gave up on the backend, with why: the disk stops answering.
    Failed(String),
}

/// Told the backend's socket path and each [`BackendEvent`] (e.g. legovmm's event log).
pub type BackendWatcher = Arc<dyn Fn(&str, &BackendEvent) + Send + Sync>;

/// A running relay thread; stopped (and joined) by [`Relay::stop`] or on drop.
pub struct Relay {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

/// What the relay thread watches.
struct Watched {
    calls: Vec<EventFd>,
    /// The vhost-user backend's connection, when there is one.
    socket: Option<UnixStream>,
    stop: EventFd,
    interrupt: VirtioInterrupt,
    /// The backend's name in log messages (a vhost-user socket path, or e.g. "vhost-net on
    /// tap0").
    path: String,
    reconnect: Option<Reconnector>,
    watcher: Option<BackendWatcher>,
}

impl Relay {
    /// Starts relaying `calls` (one per queue) to `interrupt`, and watching `socket` (a
    /// clone of the backend connection) for a hang-up of the backend at `path`, after which
    /// `reconnect` (when given) brings the device back; `watcher` (when given) is told.
    pub fn start(
        calls: Vec<EventFd>,
        socket: UnixStream,
        interrupt: VirtioInterrupt,
        path: String,
        reconnect: Option<Reconnector>,
        watcher: Option<BackendWatcher>,
    ) -> io::Result<Self> {
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let watched = Watched {
            calls,
            socket: Some(socket),
            stop: stop.try_clone()?,
            interrupt,
            path,
            reconnect,
            watcher,
        };
        Self::spawn(watched, stop, "vhost-user-irq")
    }

    /// Starts relaying `calls` (one per queue) to `interrupt`, with no backend socket to
    /// watch (the kernel's vhost-net); `name` names the backend in log messages.
    pub fn start_calls(
        calls: Vec<EventFd>,
        interrupt: VirtioInterrupt,
        name: String,
    ) -> io::Result<Self> {
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let watched = Watched {
            calls,
            socket: None,
            stop: stop.try_clone()?,
            interrupt,
            path: name,
            reconnect: None,
            watcher: None,
        };
        Self::spawn(watched, stop, "vhost-irq")
    }

    fn spawn(watched: Watched, stop: EventFd, thread_name: &str) -> io::Result<Self> {
        let epoll = watched.register()?;
        let thread = std::thread::Builder::new()
            .name(thread_name.into())
            .spawn(move || watched.run(&epoll))?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread and waits for it.
    pub fn stop(&mut self) {
        if let Some(thread) = self.thread.take() {
            if let Err(e) = self.stop.write(1) {
                tracing::error!("could not stop the vhost interrupt relay: {e}");
                return;
            }
            let _ = thread.join();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Watched {
    /// The epoll token of the backend socket; the stop eventfd's is one more; the call
    /// eventfds' are their queue indexes.
    fn socket_token(&self) -> u64 {
        self.calls.len() as u64
    }

    fn register(&self) -> io::Result<Epoll> {
        let epoll = Epoll::new()?;
        for (i, call) in self.calls.iter().enumerate() {
            epoll.ctl(
                ControlOperation::Add,
                call.as_raw_fd(),
                EpollEvent::new(EventSet::IN, i as u64),
            )?;
        }
        // Only a hang-up of the socket: its replies belong to whoever sent the request.
        if let Some(socket) = &self.socket {
            epoll.ctl(
                ControlOperation::Add,
                socket.as_raw_fd(),
                EpollEvent::new(EventSet::READ_HANG_UP, self.socket_token()),
            )?;
        }
        epoll.ctl(
            ControlOperation::Add,
            self.stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, self.socket_token() + 1),
        )?;
        Ok(epoll)
    }

    /// Sleeps up to `d`; true if the relay was told to stop meanwhile (the stop eventfd
    /// stays readable, so the main loop sees it too).
    fn stopped_within(&self, d: Duration) -> bool {
        let mut p = libc::pollfd {
            fd: self.stop.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(d.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: `p` is one valid pollfd that outlives the call; the eventfd stays open
        // while `self` lives.
        let r = unsafe { libc::poll(&mut p, 1, ms) };
        r > 0 && p.revents & libc::POLLIN != 0
    }

    /// The backend hung up: stop watching its socket and, with a reconnector, bring the
    /// device back and watch the new socket. False if the relay must end (stopped).
    fn backend_gone(&mut self, epoll: &Epoll) -> bool {
        if let Some(socket) = self.socket.take() {
            if let Err(e) = epoll.ctl(
                ControlOperation::Delete,
                socket.as_raw_fd(),
                EpollEvent::default(),
            ) {
                tracing::warn!("could not stop watching the backend socket: {e}");
            }
        }
        self.tell(&BackendEvent::Lost);
        let Some(reconnect) = self.reconnect.take() else {
            tracing::error!(
                "the vhost-user backend at {} closed its connection; the disk stops answering",
                self.path
            );
            self.tell(&BackendEvent::Failed(
                "the device does not reconnect".into(),
            ));
            return true;
        };
        match reconnect.run(|d| self.stopped_within(d)) {
            Ok(socket) => {
                let token = self.socket_token();
                if let Err(e) = epoll.ctl(
                    ControlOperation::Add,
                    socket.as_raw_fd(),
                    EpollEvent::new(EventSet::READ_HANG_UP, token),
                ) {
                    tracing::error!(
                        "cannot watch the reconnected backend at {} for another hang-up: {e}",
                        self.path
                    );
                }
                self.socket = Some(socket);
                self.reconnect = Some(reconnect);
                self.tell(&BackendEvent::Reconnected);
                true
            }
            Err(ReconnectError::Stopped) => false,
            Err(e) => {
                let why = lego_report::error_chain(&e);
                tracing::error!("{why}; the disk stops answering");
                self.tell(&BackendEvent::Failed(why));
                true
            }
        }
    }

    /// Tells the watcher, if any, what happened to the backend.
    fn tell(&self, event: &BackendEvent) {
        if let Some(w) = &self.watcher {
            w(&self.path, event);
        }
    }

    fn run(mut self, epoll: &Epoll) {
        let mut events = vec![EpollEvent::default(); self.calls.len() + 2];
        let log = RateLimiter::default();
        loop {
            let n = match epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!(
                        "the interrupt relay of the vhost backend {} failed: {e}; the device stops answering",
                        self.path
                    );
                    return;
                }
            };
            for event in &events[..n] {
                let token = event.data();
                if token == self.socket_token() + 1 {
                    return;
                }
                if token == self.socket_token() {
                    if !self.backend_gone(epoll) {
                        return;
                    }
                    continue;
                }
                let Some(call) = usize::try_from(token).ok().and_then(|i| self.calls.get(i)) else {
                    continue;
                };
                match call.read() {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => {
                        if let Some(suppressed) = log.admit() {
                            tracing::warn!(
                                "could not read queue {token}'s call eventfd: {e} ({suppressed} similar messages suppressed)"
                            );
                        }
                        continue;
                    }
                }
                if let Err(e) = self.interrupt.signal_used_queue() {
                    if let Some(suppressed) = log.admit() {
                        tracing::warn!(
                            "could not raise the interrupt of the device served by {}: {e} ({suppressed} similar messages suppressed)",
                            self.path
                        );
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::interrupt::INT_USED_RING;
    use std::time::Instant;

    fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let start = Instant::now();
        while !cond() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "timed out: {what}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_call_raises_the_used_ring_interrupt_and_a_hang_up_does_not_stop_the_relay() {
        let calls: Vec<EventFd> = (0..2)
            .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
            .collect();
        let backend_calls: Vec<EventFd> = calls.iter().map(|c| c.try_clone().unwrap()).collect();
        let (ours, theirs) = UnixStream::pair().unwrap();
        let irq = VirtioInterrupt::new().unwrap();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let told = seen.clone();
        let watcher: BackendWatcher = Arc::new(move |path: &str, e: &BackendEvent| {
            told.lock().unwrap().push((path.to_string(), e.clone()));
        });
        let mut relay = Relay::start(
            calls,
            ours,
            irq.clone(),
            "test.sock".into(),
            None,
            Some(watcher),
        )
        .unwrap();

        backend_calls[1].write(1).unwrap();
        wait_for("the interrupt", || irq.status() & INT_USED_RING != 0);
        assert!(irq.event().read().unwrap() >= 1);
        irq.ack(INT_USED_RING);

        // The backend dies: the relay logs it, tells the watcher and keeps going.
        assert!(seen.lock().unwrap().is_empty());
        drop(theirs);
        wait_for("the watcher told", || seen.lock().unwrap().len() == 2);
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen[0], ("test.sock".to_string(), BackendEvent::Lost));
        assert!(
            matches!(&seen[1].1, BackendEvent::Failed(why) if why.contains("does not reconnect")),
            "{seen:?}"
        );
        backend_calls[0].write(1).unwrap();
        wait_for("the interrupt after the hang-up", || {
            irq.status() & INT_USED_RING != 0
        });
        relay.stop();
        relay.stop();
    }

    #[test]
    fn a_relay_without_a_socket_relays_calls_and_stops() {
        let calls: Vec<EventFd> = (0..3)
            .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
            .collect();
        let backend_calls: Vec<EventFd> = calls.iter().map(|c| c.try_clone().unwrap()).collect();
        let irq = VirtioInterrupt::new().unwrap();
        let mut relay = Relay::start_calls(calls, irq.clone(), "vhost-net".into()).unwrap();
        for call in &backend_calls {
            irq.ack(INT_USED_RING);
            call.write(1).unwrap();
            wait_for("the interrupt", || irq.status() & INT_USED_RING != 0);
        }
        relay.stop();
        drop(relay);
    }
}
