//! The virtio-net control queue, served in-process whichever backend moves the frames.
//!
//! A request is a readable header (class, command), readable command data and one writable
//! status byte (`VIRTIO_NET_OK` or `VIRTIO_NET_ERR`). Only `VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET`
//! is served (the device offers no other control feature); every other class or command
//! is answered `VIRTIO_NET_ERR`. A request without a status byte, or with readable data
//! after it, is completed with length 0 and logged (rate-limited).

use std::io;
use std::os::fd::AsRawFd;

use virtio_bindings::virtio_net::{
    VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET,
    VIRTIO_NET_ERR, VIRTIO_NET_OK,
};
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::rate_limit::RateLimiter;
use crate::virtio::worker_thread::WorkerThread;
use crate::virtio::VirtioInterrupt;

/// The most readable bytes of one request the device looks at (a request it serves needs 4).
const MAX_REQUEST: usize = 64;

/// Errors of the control queue's thread.
#[derive(Debug, thiserror::Error)]
pub enum CtrlError {
    /// A system resource (eventfd, epoll, thread) could not be set up.
    #[error("could not {what} for the virtio-net control queue")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Applies a `VQ_PAIRS_SET`: the number of queue pairs the driver now uses.
pub type SetPairs = Box<dyn FnMut(u16) -> Result<(), String> + Send>;

/// A parsed control request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// `VIRTIO_NET_CTRL_MQ` / `VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET` with the pair count.
    SetPairs(u16),
    /// A class or command the device does not serve.
    Unsupported {
        /// The class.
        class: u8,
        /// The command.
        command: u8,
    },
    /// Too short for its header or its command's data.
    Truncated,
}

/// Parses the readable bytes of a request.
pub fn parse(out: &[u8]) -> Request {
    let [class, command, data @ ..] = out else {
        return Request::Truncated;
    };
    if u32::from(*class) == VIRTIO_NET_CTRL_MQ
        && u32::from(*command) == VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET
    {
        return match data {
            [lo, hi, ..] => Request::SetPairs(u16::from_le_bytes([*lo, *hi])),
            _ => Request::Truncated,
        };
    }
    Request::Unsupported {
        class: *class,
        command: *command,
    }
}

/// Serves the control queue.
pub struct CtrlQueue {
    queue: Queue,
    mem: GuestMemoryMmap<()>,
    interrupt: VirtioInterrupt,
    /// The most pairs the driver may ask for.
    max_pairs: u16,
    set_pairs: SetPairs,
    log: RateLimiter,
}

impl CtrlQueue {
    /// A control queue for a device of `max_pairs` usable pairs; `set_pairs` applies a
    /// valid `VQ_PAIRS_SET`.
    pub fn new(
        queue: Queue,
        mem: GuestMemoryMmap<()>,
        interrupt: VirtioInterrupt,
        max_pairs: u16,
        set_pairs: SetPairs,
    ) -> Self {
        Self {
            queue,
            mem,
            interrupt,
            max_pairs,
            set_pairs,
            log: RateLimiter::default(),
        }
    }

    fn warn(&self, msg: std::fmt::Arguments<'_>) {
        if let Some(suppressed) = self.log.admit() {
            tracing::warn!(
                "virtio-net control queue: {msg} ({suppressed} similar messages suppressed)"
            );
        }
    }

    /// Serves one request; returns the used length (1 with a status byte, 0 without).
    pub fn serve_chain(&mut self, chain: DescriptorChain<&GuestMemoryMmap<()>>) -> u32 {
        let mut out = Vec::new();
        let mut status: Option<GuestAddress> = None;
        let mut malformed: Option<&'static str> = None;
        for desc in chain {
            if desc.is_write_only() {
                if status.is_none() && desc.len() > 0 {
                    status = Some(desc.addr());
                }
                continue;
            }
            if status.is_some() {
                malformed = Some("readable data follows the status byte");
                break;
            }
            let want = (desc.len() as usize).min(MAX_REQUEST - out.len());
            if want == 0 {
                continue;
            }
            let start = out.len();
            out.resize(start + want, 0);
            if self.mem.read_slice(&mut out[start..], desc.addr()).is_err() {
                malformed = Some("a descriptor lies outside guest memory");
                break;
            }
        }
        if let Some(why) = malformed {
            self.warn(format_args!("malformed request: {why}"));
            return 0;
        }
        let Some(status) = status else {
            self.warn(format_args!("malformed request: no writable status byte"));
            return 0;
        };
        let ok = match parse(&out) {
            Request::SetPairs(n) => {
                if n < VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN as u16 || n > self.max_pairs {
                    self.warn(format_args!(
                        "the driver asked for {n} queue pairs; the device has 1 to {}",
                        self.max_pairs
                    ));
                    false
                } else {
                    match (self.set_pairs)(n) {
                        Ok(()) => {
                            tracing::debug!("virtio-net: the driver uses {n} queue pairs");
                            true
                        }
                        Err(e) => {
                            self.warn(format_args!("could not use {n} queue pairs: {e}"));
                            false
                        }
                    }
                }
            }
            Request::Unsupported { class, command } => {
                tracing::debug!(
                    "virtio-net: control class {class} command {command} is not supported"
                );
                false
            }
            Request::Truncated => {
                self.warn(format_args!("a request is too short for its command"));
                false
            }
        };
        let byte = if ok { VIRTIO_NET_OK } else { VIRTIO_NET_ERR } as u8;
        if self.mem.write_slice(&[byte], status).is_err() {
            self.warn(format_args!("the status byte lies outside guest memory"));
            return 0;
        }
        1
    }

    /// Serves every available request; returns how many were completed.
    pub fn process_queue(&mut self) -> usize {
        let mut completed = 0;
        let mem = self.mem.clone();
        loop {
            if let Err(e) = self.queue.disable_notification(&mem) {
                self.warn(format_args!("could not suppress notifications: {e}"));
            }
            let mut popped = 0usize;
            while let Some(chain) = self.queue.pop_descriptor_chain(&mem) {
                popped += 1;
                let head = chain.head_index();
                let len = self.serve_chain(chain);
                match self.queue.add_used(&mem, head, len) {
                    Ok(()) => completed += 1,
                    Err(e) => self.warn(format_args!("could not complete head {head}: {e}")),
                }
            }
            match crate::virtio::rearm(&mut self.queue, &mem, popped) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    self.warn(format_args!("{e}"));
                    break;
                }
            }
        }
        if completed > 0 {
            let notify = self.queue.needs_notification(&mem).unwrap_or(true);
            if notify {
                if let Err(e) = self.interrupt.signal_used_queue() {
                    self.warn(format_args!("could not raise the interrupt: {e}"));
                }
            }
        }
        completed
    }

    /// Serves the queue on a new thread, woken by `queue_event`, until stopped.
    pub fn spawn(mut self, queue_event: EventFd) -> Result<WorkerThread, CtrlError> {
        let io = |what| move |source| CtrlError::Io { what, source };
        let epoll = Epoll::new().map_err(io("create an epoll"))?;
        epoll
            .ctl(
                ControlOperation::Add,
                queue_event.as_raw_fd(),
                EpollEvent::new(EventSet::IN, 0),
            )
            .map_err(io("watch an eventfd"))?;
        WorkerThread::spawn("lego-net-ctrl", epoll, 1, move |epoll| {
            self.process_queue();
            let mut events = [EpollEvent::default(); 2];
            loop {
                let n = match epoll.wait(-1, &mut events) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        tracing::error!("virtio-net control queue: epoll failed, stopping: {e}");
                        return;
                    }
                };
                for ev in &events[..n] {
                    if ev.data() == 1 {
                        return;
                    }
                    let _ = queue_event.read();
                    self.process_queue();
                }
            }
        })
        .map_err(io("start the thread"))
    }
}
