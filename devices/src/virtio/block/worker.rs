//! The thread that serves a virtio-blk queue.
//!
//! It waits (epoll) on the queue's notification eventfd and a stop eventfd, drains
//! the available ring with notifications suppressed, serving the chains it takes in batches
//! through the shared [`RequestHandler`], and raises the interrupt once per drain when the
//! driver wants one (honouring EVENT_IDX).

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::request::RequestHandler;
use crate::rate_limit::RateLimiter;
use crate::virtio::worker_thread::WorkerThread;
use crate::virtio::VirtioInterrupt;

const TOKEN_QUEUE: u64 = 0;
const TOKEN_STOP: u64 = 1;

/// Serves one queue of one disk.
pub struct QueueWorker {
    /// The queue, as configured by the driver.
    pub queue: Queue,
    /// Guest memory.
    pub mem: GuestMemoryMmap<()>,
    /// Serves the requests from the disk's store.
    pub handler: Arc<RequestHandler>,
    /// The interrupt to raise after a batch.
    pub interrupt: VirtioInterrupt,
    log: RateLimiter,
}

impl QueueWorker {
    /// Creates a worker for `queue`.
    pub fn new(
        queue: Queue,
        mem: GuestMemoryMmap<()>,
        handler: Arc<RequestHandler>,
        interrupt: VirtioInterrupt,
    ) -> Self {
        Self {
            queue,
            mem,
            handler,
            interrupt,
            log: RateLimiter::default(),
        }
    }

    fn warn(&self, msg: std::fmt::Arguments<'_>) {
        if let Some(suppressed) = self.log.admit() {
            tracing::warn!("virtio-blk: {msg} ({suppressed} similar messages suppressed)");
        }
    }

    /// Serves every available request; returns how many chains were completed.
    /// Raises the interrupt once at the end if the driver asked for it.
    pub fn process_queue(&mut self) -> usize {
        let mut completed = 0usize;
        loop {
            if let Err(e) = self.queue.disable_notification(&self.mem) {
                self.warn(format_args!("could not suppress notifications: {e}"));
            }
            let mut popped = 0usize;
            loop {
                // Take every available chain (at most a queue's worth) and serve them with
                // their store operations in flight together.
                let mut chains = Vec::new();
                while chains.len() < usize::from(self.queue.size()) {
                    let Some(chain) = self.queue.pop_descriptor_chain(&self.mem) else {
                        break;
                    };
                    chains.push(chain);
                }
                if chains.is_empty() {
                    break;
                }
                popped += chains.len();
                for (head, done) in self.handler.process_batch(&self.mem, chains) {
                    match self.queue.add_used(&self.mem, head, done.used_len) {
                        Ok(()) => completed += 1,
                        Err(e) => self.warn(format_args!("could not complete head {head}: {e}")),
                    }
                }
            }
            match crate::virtio::rearm(&mut self.queue, &self.mem, popped) {
                // More requests arrived while notifications were off.
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    self.warn(format_args!("{e}"));
                    break;
                }
            }
        }
        if completed > 0 {
            let notify = match self.queue.needs_notification(&self.mem) {
                Ok(n) => n,
                Err(e) => {
                    self.warn(format_args!("could not read the used event index: {e}"));
                    true
                }
            };
            if notify {
                if let Err(e) = self.interrupt.signal_used_queue() {
                    self.warn(format_args!("could not raise the interrupt: {e}"));
                }
            }
        }
        completed
    }

    /// Runs the worker on a new thread until stopped.
    pub fn spawn(self, queue_event: EventFd) -> io::Result<WorkerThread> {
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            queue_event.as_raw_fd(),
            EpollEvent::new(EventSet::IN, TOKEN_QUEUE),
        )?;
        WorkerThread::spawn("lego-blk", epoll, TOKEN_STOP, move |epoll| {
            self.run(epoll, queue_event)
        })
    }

    fn run(mut self, epoll: Epoll, queue_event: EventFd) {
        let mut events = [EpollEvent::default(); 2];
        // Requests may have been queued before activation.
        self.process_queue();
        loop {
            let n = match epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!("virtio-blk worker: epoll failed, stopping: {e}");
                    return;
                }
            };
            for ev in &events[..n] {
                match ev.data() {
                    TOKEN_STOP => return,
                    _ => {
                        // Draining the counter; an error only means it was already 0.
                        let _ = queue_event.read();
                        self.process_queue();
                    }
                }
            }
        }
    }
}
