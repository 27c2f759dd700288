//! [`BlkBackend`]: the vhost-user device one frontend connection talks to. It offers the
//! features and config space of [`DeviceConfig`], runs one worker thread per queue, and serves
//! each kicked queue's chains through the shared [`RequestHandler`]: every available chain at
//! once, with their store operations in flight together, and one interrupt per batch.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use lego_devices::rate_limit::RateLimiter;
use lego_devices::virtio::block::{DeviceConfig, RequestHandler};

use crate::poll::PollWindow;

/// Guest memory as the frontend shares it.
pub type GuestMem = GuestMemoryAtomic<GuestMemoryMmap>;

/// The device behind one frontend connection.
pub struct BlkBackend {
    handler: Arc<RequestHandler>,
    config: DeviceConfig,
    event_idx: AtomicBool,
    mem: RwLock<GuestMem>,
    queue_faults: RateLimiter,
    /// Each queue's polling window (`--poll-us`), used only by that queue's worker.
    windows: Vec<Mutex<PollWindow>>,
}

impl BlkBackend {
    /// A device serving `handler`'s store as described by `config`, over `mem`, whose
    /// queue workers poll for up to `poll` after a batch (zero: never).
    pub fn new(
        handler: Arc<RequestHandler>,
        config: DeviceConfig,
        mem: GuestMem,
        poll: Duration,
    ) -> Self {
        let windows = (0..config.queues)
            .map(|_| Mutex::new(PollWindow::new(poll)))
            .collect();
        Self {
            handler,
            config,
            event_idx: AtomicBool::new(false),
            mem: RwLock::new(mem),
            queue_faults: RateLimiter::default(),
            windows,
        }
    }

    /// The device description offered.
    pub fn config(&self) -> &DeviceConfig {
        &self.config
    }

    /// Chains served together at most: a queue cannot hold more distinct requests.
    fn max_batch(&self) -> usize {
        usize::from(self.config.queue_size).max(1)
    }

    fn queue_fault(&self, queue: usize, what: &str) {
        if let Some(suppressed) = self.queue_faults.admit() {
            tracing::warn!(queue, suppressed, "queue problem: {what}");
        }
    }

    /// Serves every available chain of `vring`, signalling the guest as the ring asks, and
    /// with polling on looks for more for the queue's [`PollWindow`] before it sleeps.
    ///
    /// **Invariant: each queue's requests complete in the order they were taken from the
    /// available ring** (`process_batch` returns them in that order and they are added to
    /// the used ring one by one). A frontend that reconnects after this process died
    /// (legovmm's `vhost_user_frontend::reconnect`) relies on it: it restarts the queue at
    /// the used ring's index, so every request after it is served again and none before it
    /// is. Completing out of order would make it serve a finished request twice and skip
    /// an unfinished one; a change here must keep the order or bring INFLIGHT_SHMFD.
    fn process_queue(&self, queue: usize, vring: &VringRwLock) {
        let mem = self.mem.read().unwrap_or_else(|e| e.into_inner()).memory();
        let event_idx = self.event_idx.load(Ordering::Acquire);
        let mut window = self
            .windows
            .get(queue)
            .map(|w| w.lock().unwrap_or_else(|e| e.into_inner()));
        let polling = window.as_ref().is_some_and(|w| w.enabled());
        if let Some(w) = window.as_mut() {
            w.woken(Instant::now());
        }
        // Set when the ring said more chains were available: serving none then means the
        // ring's index is corrupt, and the worker waits for the next kick rather than spin.
        let mut more_announced = false;
        loop {
            if event_idx || polling {
                if let Err(e) = vring.disable_notification() {
                    self.queue_fault(queue, &format!("cannot disable notifications: {e}"));
                }
            }
            let Some(served) = self.serve_available(queue, vring, &mem) else {
                return;
            };
            if served == 0 && std::mem::take(&mut more_announced) {
                if !is_live(vring) {
                    // The frontend stopped the queue after the ring announced the chains:
                    // nothing to serve, and nothing wrong with the ring.
                    break;
                }
                self.queue_fault(queue, "the available ring index is invalid");
                if let Err(e) = vring.enable_notification() {
                    self.queue_fault(queue, &format!("cannot enable notifications: {e}"));
                }
                break;
            }
            if let Some(w) = window.as_mut().filter(|_| polling) {
                if w.poll(|| has_available(vring, &mem), || !is_live(vring)) {
                    more_announced = true;
                    continue;
                }
            }
            // Always, even when this worker never turned them off: a backend killed while
            // polling leaves NO_NOTIFY set in the used ring, and its successor must clear it
            // or the driver would never kick again.
            match vring.enable_notification() {
                // More chains arrived while notifications were off.
                Ok(true) => more_announced = true,
                Ok(false) => break,
                Err(e) => {
                    self.queue_fault(queue, &format!("cannot enable notifications: {e}"));
                    break;
                }
            }
        }
        if let Some(w) = window.as_mut() {
            w.sleeping(Instant::now());
        }
    }

    /// Serves the chains available now, a queue's worth at a time; returns how many, or
    /// `None` when the used ring cannot be written (the queue is given up until a kick).
    fn serve_available(
        &self,
        queue: usize,
        vring: &VringRwLock,
        mem: &GuestMemRef,
    ) -> Option<usize> {
        let mut served = 0usize;
        loop {
            // Take every available chain (at most a queue's worth) and serve them with
            // their store operations in flight together.
            let mut chains = Vec::new();
            while chains.len() < self.max_batch() {
                let chain = vring
                    .get_mut()
                    .get_queue_mut()
                    .pop_descriptor_chain(mem.clone());
                let Some(chain) = chain else { break };
                chains.push(chain);
            }
            if chains.is_empty() {
                return Some(served);
            }
            served += chains.len();
            for (head, done) in self.handler.process_batch(mem, chains) {
                if let Err(e) = vring.add_used(head, done.used_len) {
                    self.queue_fault(queue, &format!("cannot complete request {head}: {e}"));
                    return None;
                }
            }
            // One interrupt per batch (when the driver wants one).
            if vring.needs_notification().unwrap_or(true) {
                if let Err(e) = vring.signal_used_queue() {
                    self.queue_fault(queue, &format!("cannot interrupt the guest: {e}"));
                }
            }
        }
    }
}

/// A snapshot of guest memory as a worker holds it while serving.
type GuestMemRef = vm_memory::GuestMemoryLoadGuard<GuestMemoryMmap>;

/// Whether the driver has made chains available that the device has not taken.
fn has_available(vring: &VringRwLock, mem: &GuestMemRef) -> bool {
    let state = vring.get_ref();
    let queue = state.get_queue();
    queue
        .avail_idx(&**mem, std::sync::atomic::Ordering::Acquire)
        .is_ok_and(|idx| idx.0 != queue.next_avail())
}

/// Whether the queue is still set up and enabled (a frontend stopping it ends a poll).
fn is_live(vring: &VringRwLock) -> bool {
    let state = vring.get_ref();
    state.is_enabled() && state.get_queue().ready()
}

impl VhostUserBackend for BlkBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        usize::from(self.config.queues)
    }

    fn max_queue_size(&self) -> usize {
        usize::from(self.config.queue_size)
    }

    fn features(&self) -> u64 {
        self.config.features() | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    /// CONFIG, MQ and REPLY_ACK; and PAGEFAULT: a frontend that pages guest RAM (legovmm
    /// with its pager) gets this process's userfaultfd over guest RAM (vhost-user postcopy,
    /// done by `vhost-user-backend`), so that a page the frontend has not filled is fetched
    /// by it instead of read as zeros. A frontend that never sends POSTCOPY_* sees no change.
    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::PAGEFAULT
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Release);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        self.config.read(offset, size)
    }

    fn set_config(&self, _offset: u32, _buf: &[u8]) -> io::Result<()> {
        // Nothing in the config space is writable (no CONFIG_WCE).
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the virtio-blk config space is read-only",
        ))
    }

    fn update_memory(&self, mem: GuestMem) -> io::Result<()> {
        *self.mem.write().unwrap_or_else(|e| e.into_inner()) = mem;
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        // One worker thread per queue, so queues are served in parallel.
        (0..self.config.queues.min(64)).map(|q| 1u64 << q).collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        match new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC) {
            Ok(pair) => Some(pair),
            Err(e) => {
                tracing::error!("cannot create a worker exit event: {e}");
                None
            }
        }
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            self.queue_fault(thread_id, &format!("unexpected event set {evset:?}"));
            return Ok(());
        }
        // Each worker owns one queue, so the event index is its position in `vrings`.
        match vrings.get(usize::from(device_event)) {
            Some(vring) => self.process_queue(thread_id, vring),
            None => self.queue_fault(thread_id, &format!("event {device_event} has no queue")),
        }
        // Never an error: an error would stop this queue's worker for good.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::os::fd::{FromRawFd, IntoRawFd};

    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::split::Descriptor as SplitDescriptor;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, Bytes, GuestAddress};
    use vmm_sys_util::eventfd::EventFd;

    use super::*;
    use crate::store::file::{FileStore, FileStoreOptions};
    use crate::store::BlockStore;

    fn backend(queues: u16, mem: GuestMem, poll: Duration) -> (BlkBackend, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn BlockStore> = Arc::new(
            FileStore::open(&FileStoreOptions {
                path: dir.path().join("d.img"),
                read_only: false,
                size: Some(1 << 20),
            })
            .expect("store"),
        );
        let config = DeviceConfig::for_store(store.as_ref(), queues, 16);
        (
            BlkBackend::new(Arc::new(RequestHandler::new(store)), config, mem, poll),
            dir,
        )
    }

    #[test]
    fn offers_the_device_and_one_thread_per_queue() {
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let (b, _dir) = backend(3, mem, Duration::ZERO);
        assert_eq!(b.num_queues(), 3);
        assert_eq!(b.queues_per_thread(), vec![1, 2, 4]);
        assert_ne!(
            b.features() & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits(),
            0
        );
        assert!(b
            .protocol_features()
            .contains(VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::PAGEFAULT));
        assert_eq!(b.get_config(0, 8), 2048u64.to_le_bytes().to_vec());
        assert!(b.exit_event(0).is_some());
        assert!(b.set_config(0, &[1]).is_err());
        // An event with no queue behind it is ignored, not an error.
        assert!(b.handle_event(5, EventSet::IN, &[], 0).is_ok());
    }

    /// A one-queue backend over `mmap` (2 MiB) with a mock driver queue of 16 entries whose
    /// vring is set up, ready and enabled.
    fn ready_queue(
        mmap: &GuestMemoryMmap<()>,
        poll: Duration,
    ) -> (
        BlkBackend,
        tempfile::TempDir,
        MockSplitQueue<'_, GuestMemoryMmap<()>>,
        VringRwLock,
    ) {
        let mem = GuestMemoryAtomic::new(mmap.clone());
        let (b, dir) = backend(1, mem.clone(), poll);
        let q = MockSplitQueue::new(mmap, 16);
        let vring = VringRwLock::new(mem, 16).expect("vring");
        vring.set_queue_size(16);
        vring
            .set_queue_info(q.desc_table_addr().0, q.avail_addr().0, q.used_addr().0)
            .expect("queue info");
        vring.set_queue_ready(true);
        vring.set_enabled(true);
        (b, dir, q, vring)
    }

    #[test]
    fn kicked_queue_is_served_and_signalled_with_and_without_event_idx() {
        let mmap = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x20_0000)])
            .expect("guest memory");
        let (b, _dir, q, vring) = ready_queue(&mmap, Duration::ZERO);
        let call = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        // SAFETY: the duplicated descriptor is fresh and owned by nothing else.
        let call_file = unsafe { File::from_raw_fd(call.try_clone().expect("dup").into_raw_fd()) };
        vring.set_call(Some(call_file));

        // (round, EVENT_IDX, used_event written by the driver, interrupt expected).
        let rounds = [
            (0u16, false, 0u16, true),
            (1, true, 1, true),
            (2, true, 2, true),
            // A stale used_event (the driver has not caught up): the device stays quiet.
            (3, true, 0, false),
        ];
        for (round, event_idx, used_event, interrupt) in rounds {
            vring.set_queue_event_idx(event_idx);
            b.set_event_idx(event_idx);
            mmap.write_obj(used_event, q.avail_addr().unchecked_add(4 + 2 * 16))
                .expect("used_event");
            let hdr = 0x10_0000 + u64::from(round) * 0x1000;
            mmap.write_slice(
                &[4u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                GuestAddress(hdr),
            )
            .expect("flush header");
            let descs = [
                RawDescriptor::from(SplitDescriptor::new(hdr, 16, 1, round * 2 + 1)),
                RawDescriptor::from(SplitDescriptor::new(
                    hdr + 0x100,
                    1,
                    VRING_DESC_F_WRITE as u16,
                    0,
                )),
            ];
            q.add_desc_chains(&descs, round * 2).expect("chain");
            b.handle_event(0, EventSet::IN, std::slice::from_ref(&vring), 0)
                .expect("handled");
            assert_eq!(q.used().idx().load(), round + 1, "round {round}");
            let status: u8 = mmap.read_obj(GuestAddress(hdr + 0x100)).expect("status");
            assert_eq!(status, 0, "FLUSH succeeded");
            assert_eq!(call.read().is_ok(), interrupt, "interrupt in round {round}");
        }
    }

    /// Adds a FLUSH request as chain `n` (descriptors 2n, 2n+1; header and status in page n).
    fn add_flush(mmap: &GuestMemoryMmap<()>, q: &MockSplitQueue<'_, GuestMemoryMmap<()>>, n: u16) {
        let hdr = 0x10_0000 + u64::from(n) * 0x1000;
        mmap.write_slice(
            &[4u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            GuestAddress(hdr),
        )
        .expect("flush header");
        mmap.write_obj(0xffu8, GuestAddress(hdr + 0x100))
            .expect("status");
        let descs = [
            RawDescriptor::from(SplitDescriptor::new(hdr, 16, 1, n * 2 + 1)),
            RawDescriptor::from(SplitDescriptor::new(
                hdr + 0x100,
                1,
                VRING_DESC_F_WRITE as u16,
                0,
            )),
        ];
        q.add_desc_chains(&descs, n * 2).expect("chain");
    }

    #[test]
    fn a_polling_worker_serves_a_request_that_came_without_a_kick() {
        let mmap = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x20_0000)])
            .expect("guest memory");
        // Windows of up to 2 s: opened once, 250 ms.
        let (b, _dir, q, vring) = ready_queue(&mmap, Duration::from_secs(2));
        add_flush(&mmap, &q, 0);
        b.handle_event(0, EventSet::IN, std::slice::from_ref(&vring), 0)
            .expect("handled");
        assert_eq!(q.used().idx().load(), 1);
        std::thread::scope(|s| {
            // Woken again at once: the window opens, and the worker polls after its batch.
            let worker =
                s.spawn(|| b.handle_event(0, EventSet::IN, std::slice::from_ref(&vring), 0));
            std::thread::sleep(Duration::from_millis(20));
            // The driver sees NO_NOTIFY in the used ring's flags while the worker polls.
            let flags: u16 = mmap.read_obj(q.used_addr()).expect("used flags");
            assert_eq!(
                u32::from(flags),
                virtio_bindings::virtio_ring::VRING_USED_F_NO_NOTIFY
            );
            add_flush(&mmap, &q, 1);
            worker.join().expect("worker").expect("handled");
        });
        assert_eq!(
            q.used().idx().load(),
            2,
            "the request was served by the poll"
        );
        let status: u8 = mmap
            .read_obj(GuestAddress(0x10_1000 + 0x100))
            .expect("status");
        assert_eq!(status, 0, "FLUSH succeeded");
        // Back to sleep, the worker asks for kicks again.
        let flags: u16 = mmap.read_obj(q.used_addr()).expect("used flags");
        assert_eq!(flags, 0);
    }

    #[test]
    fn a_stale_no_notify_left_by_a_killed_backend_is_cleared() {
        let mmap = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x20_0000)])
            .expect("guest memory");
        // A backend that does not poll, after one killed mid-poll left NO_NOTIFY set.
        let (b, _dir, q, vring) = ready_queue(&mmap, Duration::ZERO);
        mmap.write_obj(1u16, q.used_addr()).expect("used flags");
        add_flush(&mmap, &q, 0);
        // The frontend's kick after reconnecting.
        b.handle_event(0, EventSet::IN, std::slice::from_ref(&vring), 0)
            .expect("handled");
        assert_eq!(q.used().idx().load(), 1);
        let flags: u16 = mmap.read_obj(q.used_addr()).expect("used flags");
        assert_eq!(flags, 0, "the driver may kick again");
    }

    #[test]
    fn a_corrupt_available_index_does_not_spin_the_worker() {
        for poll in [Duration::ZERO, Duration::from_millis(100)] {
            let mmap = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x20_0000)])
                .expect("guest memory");
            let (b, _dir, q, vring) = ready_queue(&mmap, poll);
            vring.set_queue_event_idx(true);
            b.set_event_idx(true);
            // Far more entries announced than the queue can hold.
            mmap.write_obj(1000u16, q.avail_addr().unchecked_add(2))
                .expect("avail idx");
            let (tx, rx) = std::sync::mpsc::channel();
            let b = Arc::new(b);
            let worker = {
                let b = b.clone();
                std::thread::spawn(move || {
                    // Twice: the second time the polling window is open.
                    for _ in 0..2 {
                        let r = b.handle_event(0, EventSet::IN, std::slice::from_ref(&vring), 0);
                        let _ = tx.send(r.is_ok());
                    }
                })
            };
            for _ in 0..2 {
                let done = rx.recv_timeout(std::time::Duration::from_secs(10));
                assert_eq!(
                    done,
                    Ok(true),
                    "the worker spun on a corrupt ring (poll {poll:?})"
                );
            }
            worker.join().expect("worker");
        }
    }
}
