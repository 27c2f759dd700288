//! The in-process backend: one thread per queue pair moving frames between the tap and the
//! guest's rings.
//!
//! The thread waits (epoll) on the tap, the rx and tx queues' notification eventfds and a
//! stop eventfd.
//!
//! * **tx**: each chain (a 12-byte virtio-net header, then the frame) is written to the tap
//!   with one `writev` straight from guest memory (copied first only when a descriptor
//!   straddles two memory regions), then completed with length 0.
//! * **rx**: a frame is read from the tap (header included) and copied into as many
//!   guest buffers as it needs (one without `MRG_RXBUF`), `num_buffers` set. When the guest
//!   has posted too few buffers, the frame waits, the tap is taken out of the epoll set and
//!   the rx queue's notifications are turned on: the guest's next kick brings the tap back.
//!   A tap queue the control queue detached reads `EBADFD`: it is dropped from the set the
//!   same way until the control queue attaches it again and kicks the rx eventfd.
//!
//! Both directions complete chains with notifications suppressed and raise the interrupt
//! once per batch when the driver wants one (EVENT_IDX). A malformed chain is completed with
//! length 0 and logged (rate-limited).

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::net::tap::{Tap, VNET_HDR_LEN};
use crate::rate_limit::RateLimiter;
use crate::virtio::worker_thread::WorkerThread;
use crate::virtio::VirtioInterrupt;

const TOKEN_RX: u64 = 0;
const TOKEN_TX: u64 = 1;
const TOKEN_TAP: u64 = 2;
const TOKEN_STOP: u64 = 3;

/// The largest frame moved through the tap: a 64 KiB GSO frame with its headers and the
/// virtio-net header, with room to spare (QEMU's buffer is the same 4 KiB + 64 KiB; a frame
/// cut short by a small read buffer would be resent, and cut, forever).
pub const MAX_FRAME: usize = 4096 + 65536;
/// The most frames moved from the tap per wake-up, so tx is not starved.
const RX_BATCH: usize = 128;
/// The offset of `num_buffers` in the virtio-net header.
const NUM_BUFFERS_OFFSET: usize = 10;

/// A posted rx buffer: its head and its device-writable segments.
struct RxBuffer {
    head: u16,
    segs: Vec<(GuestAddress, usize)>,
    capacity: usize,
}

/// What became of the pending frame.
enum Placement {
    /// It is in the guest's buffers.
    Placed,
    /// It cannot be placed and was dropped.
    Dropped,
    /// Too few buffers are posted.
    NoBuffers,
}

/// Serves one queue pair over one tap queue.
pub struct PairWorker {
    pair: usize,
    rx: Queue,
    tx: Queue,
    mem: GuestMemoryMmap<()>,
    tap: Arc<Tap>,
    interrupt: VirtioInterrupt,
    mrg_rxbuf: bool,
    log: RateLimiter,
    /// The frame read from the tap (it may wait there for rx buffers).
    frame: Vec<u8>,
    /// A tx frame copied out of guest memory (only when a descriptor straddles regions):
    /// apart from `frame`, which may hold an rx frame waiting for buffers.
    tx_frame: Vec<u8>,
    /// The length of a frame read from the tap that waits for rx buffers.
    pending: Option<usize>,
    /// rx buffers taken from the ring but not yet filled.
    held: Vec<RxBuffer>,
    /// rx chains taken off the ring so far (wrapping).
    popped: u64,
    /// Completions since the last interrupt, per direction.
    rx_used: usize,
    tx_used: usize,
}

impl PairWorker {
    /// A worker for queue pair `pair`; `mrg_rxbuf` when the driver acked
    /// `VIRTIO_NET_F_MRG_RXBUF`.
    pub fn new(
        pair: usize,
        rx: Queue,
        tx: Queue,
        mem: GuestMemoryMmap<()>,
        tap: Arc<Tap>,
        interrupt: VirtioInterrupt,
        mrg_rxbuf: bool,
    ) -> Self {
        Self {
            pair,
            rx,
            tx,
            mem,
            tap,
            interrupt,
            mrg_rxbuf,
            log: RateLimiter::default(),
            frame: vec![0; MAX_FRAME],
            tx_frame: vec![0; MAX_FRAME],
            pending: None,
            held: Vec::new(),
            popped: 0,
            rx_used: 0,
            tx_used: 0,
        }
    }

    fn warn(&self, msg: std::fmt::Arguments<'_>) {
        if let Some(suppressed) = self.log.admit() {
            tracing::warn!(
                "virtio-net {} queue pair {}: {msg} ({suppressed} similar messages suppressed)",
                self.tap.name(),
                self.pair
            );
        }
    }

    fn complete(&mut self, rx: bool, head: u16, len: u32) {
        let res = if rx {
            self.rx.add_used(&self.mem, head, len)
        } else {
            self.tx.add_used(&self.mem, head, len)
        };
        match res {
            Ok(()) if rx => self.rx_used += 1,
            Ok(()) => self.tx_used += 1,
            Err(e) => self.warn(format_args!("could not complete head {head}: {e}")),
        }
    }

    /// Raises the interrupt if either queue completed chains and the driver wants to know.
    fn signal(&mut self) {
        let mut notify = false;
        for rx in [true, false] {
            let used = if rx { self.rx_used } else { self.tx_used };
            if used == 0 {
                continue;
            }
            let queue = if rx { &mut self.rx } else { &mut self.tx };
            notify |= queue.needs_notification(&self.mem).unwrap_or(true);
        }
        self.rx_used = 0;
        self.tx_used = 0;
        if notify {
            if let Err(e) = self.interrupt.signal_used_queue() {
                self.warn(format_args!("could not raise the interrupt: {e}"));
            }
        }
    }

    /// Sends every chain the guest queued for transmission.
    pub fn process_tx(&mut self) {
        let mem = self.mem.clone();
        loop {
            if let Err(e) = self.tx.disable_notification(&mem) {
                self.warn(format_args!("could not suppress tx notifications: {e}"));
            }
            let mut popped = 0usize;
            while let Some(chain) = self.tx.pop_descriptor_chain(&mem) {
                popped += 1;
                let head = chain.head_index();
                if let Err(why) = self.send(chain) {
                    self.warn(format_args!(
                        "dropped a malformed tx chain (head {head}): {why}"
                    ));
                }
                self.complete(false, head, 0);
            }
            match crate::virtio::rearm(&mut self.tx, &mem, popped) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    self.warn(format_args!("tx: {e}"));
                    break;
                }
            }
        }
    }

    /// Writes one tx chain to the tap. An error names what is malformed; a failed write to
    /// the tap is logged here (the frame is lost, as on a wire).
    fn send(&mut self, chain: DescriptorChain<&GuestMemoryMmap<()>>) -> Result<(), &'static str> {
        let mem = chain.memory();
        let mut descs = Vec::new();
        let mut total = 0usize;
        for desc in chain.clone() {
            if desc.is_write_only() {
                return Err("it holds a device-writable descriptor");
            }
            let len = desc.len() as usize;
            if len == 0 {
                continue;
            }
            total += len;
            if total > MAX_FRAME {
                return Err("the frame is larger than 64 KiB");
            }
            descs.push((desc.addr(), len));
        }
        if total < VNET_HDR_LEN {
            return Err("it is shorter than the virtio-net header");
        }
        let slices: Result<Vec<_>, _> = descs
            .iter()
            .map(|&(addr, len)| mem.get_slice(addr, len))
            .collect();
        let result = match slices {
            Ok(slices) => {
                let iovecs: Vec<libc::iovec> = slices
                    .iter()
                    .map(|s| libc::iovec {
                        iov_base: s.ptr_guard().as_ptr().cast_mut().cast(),
                        iov_len: s.len(),
                    })
                    .collect();
                // SAFETY: each iovec covers a slice of guest memory checked to lie in one
                // mapped region; `self.mem` keeps the mappings alive during the call.
                unsafe { self.tap.writev_frame(&iovecs) }
            }
            Err(_) => {
                // A descriptor straddles regions (or lies outside memory): copy.
                let mut off = 0;
                for &(addr, len) in &descs {
                    if mem
                        .read_slice(&mut self.tx_frame[off..off + len], addr)
                        .is_err()
                    {
                        return Err("a descriptor lies outside guest memory");
                    }
                    off += len;
                }
                let iov = [libc::iovec {
                    iov_base: self.tx_frame.as_mut_ptr().cast(),
                    iov_len: total,
                }];
                // SAFETY: the iovec covers the first `total` bytes of `self.tx_frame`, which
                // lives across the call.
                unsafe { self.tap.writev_frame(&iov) }
            }
        };
        if let Err(e) = result {
            self.warn(format_args!("could not write a frame to the tap: {e}"));
        }
        Ok(())
    }

    /// Takes the next usable rx buffer off the ring into `held`; false when none is posted.
    /// Malformed chains met on the way are completed with length 0.
    fn hold_next(&mut self) -> bool {
        let mem = self.mem.clone();
        while let Some(chain) = self.rx.pop_descriptor_chain(&mem) {
            self.popped = self.popped.wrapping_add(1);
            let head = chain.head_index();
            let mut segs = Vec::new();
            let mut capacity = 0usize;
            let mut bad = None;
            for desc in chain {
                if !desc.is_write_only() {
                    bad = Some("it holds a device-readable descriptor");
                    break;
                }
                let len = desc.len() as usize;
                if len == 0 {
                    continue;
                }
                if !mem.check_range(desc.addr(), len) {
                    bad = Some("a descriptor lies outside guest memory");
                    break;
                }
                capacity += len;
                segs.push((desc.addr(), len));
            }
            if bad.is_none() && capacity < VNET_HDR_LEN {
                bad = Some("it cannot hold the virtio-net header");
            }
            if let Some(why) = bad {
                self.warn(format_args!("malformed rx buffer (head {head}): {why}"));
                self.complete(true, head, 0);
                continue;
            }
            self.held.push(RxBuffer {
                head,
                segs,
                capacity,
            });
            return true;
        }
        false
    }

    /// Puts the pending frame of `len` bytes into held (and newly taken) rx buffers.
    fn place(&mut self, len: usize) -> Placement {
        let count = if self.mrg_rxbuf {
            let mut count = 0;
            let mut capacity = 0;
            while capacity < len {
                if count == self.held.len() {
                    if self.held.len() >= usize::from(self.rx.size()) {
                        self.warn(format_args!(
                            "dropped a {len}-byte frame larger than the whole rx ring's buffers"
                        ));
                        return Placement::Dropped;
                    }
                    if !self.hold_next() {
                        return Placement::NoBuffers;
                    }
                }
                capacity += self.held[count].capacity;
                count += 1;
            }
            count
        } else {
            if self.held.is_empty() && !self.hold_next() {
                return Placement::NoBuffers;
            }
            if self.held[0].capacity < len {
                // The buffer stays for a smaller frame.
                self.warn(format_args!(
                    "dropped a {len}-byte frame larger than the rx buffer ({} bytes)",
                    self.held[0].capacity
                ));
                return Placement::Dropped;
            }
            1
        };
        let num_buffers = u16::try_from(count).unwrap_or(u16::MAX);
        self.frame[NUM_BUFFERS_OFFSET..VNET_HDR_LEN].copy_from_slice(&num_buffers.to_le_bytes());
        let mut off = 0;
        let buffers: Vec<RxBuffer> = self.held.drain(..count).collect();
        for buf in buffers {
            let start = off;
            for &(addr, seg_len) in &buf.segs {
                if off == len {
                    break;
                }
                let n = seg_len.min(len - off);
                if let Err(e) = self.mem.write_slice(&self.frame[off..off + n], addr) {
                    // Checked at hold time; memory does not shrink under a running device.
                    self.warn(format_args!("could not write an rx buffer: {e}"));
                }
                off += n;
            }
            self.complete(true, buf.head, (off - start) as u32);
        }
        Placement::Placed
    }

    /// Moves frames from the tap into rx buffers. Returns whether the tap should stay in the
    /// epoll set: false when the guest has too few buffers or the tap queue is detached.
    pub fn process_rx(&mut self) -> bool {
        if let Err(e) = self.rx.disable_notification(&self.mem) {
            self.warn(format_args!("could not suppress rx notifications: {e}"));
        }
        let mut keep_polling = true;
        let mut frames = 0;
        // Chains taken off the ring when notifications were last turned on.
        let mut popped_at_rearm = None;
        while frames < RX_BATCH {
            let len = match self.pending {
                Some(len) => len,
                None => match self.tap.read_frame(&mut self.frame) {
                    Ok(len) => len,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.raw_os_error() == Some(libc::EBADFD) => {
                        tracing::debug!(
                            "virtio-net {} queue pair {}: the tap queue is detached",
                            self.tap.name(),
                            self.pair
                        );
                        keep_polling = false;
                        break;
                    }
                    Err(e) => {
                        self.warn(format_args!("could not read the tap: {e}"));
                        keep_polling = false;
                        break;
                    }
                },
            };
            if len < VNET_HDR_LEN {
                self.warn(format_args!(
                    "the tap gave a {len}-byte frame, shorter than its header"
                ));
                continue;
            }
            self.pending = Some(len);
            match self.place(len) {
                Placement::Placed | Placement::Dropped => {
                    self.pending = None;
                    frames += 1;
                }
                Placement::NoBuffers => {
                    // Ask for a kick when buffers come, then look once more: some may
                    // have come meanwhile.
                    match self.rx.enable_notification(&self.mem) {
                        Ok(true) if popped_at_rearm != Some(self.popped) => {
                            popped_at_rearm = Some(self.popped);
                            if let Err(e) = self.rx.disable_notification(&self.mem) {
                                self.warn(format_args!("could not suppress rx notifications: {e}"));
                            }
                        }
                        Ok(true) => {
                            self.warn(format_args!("the rx available ring index is invalid"));
                            keep_polling = false;
                            break;
                        }
                        Ok(false) => {
                            keep_polling = false;
                            break;
                        }
                        Err(e) => {
                            self.warn(format_args!("could not re-enable rx notifications: {e}"));
                            keep_polling = false;
                            break;
                        }
                    }
                }
            }
        }
        keep_polling
    }

    /// Runs the worker on a new thread until stopped.
    pub fn spawn(self, rx_event: EventFd, tx_event: EventFd) -> io::Result<WorkerThread> {
        let epoll = Epoll::new()?;
        for (fd, token) in [
            (rx_event.as_raw_fd(), TOKEN_RX),
            (tx_event.as_raw_fd(), TOKEN_TX),
        ] {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )?;
        }
        let name = format!("lego-net{}", self.pair);
        WorkerThread::spawn(&name, epoll, TOKEN_STOP, move |epoll| {
            self.run(epoll, rx_event, tx_event)
        })
    }

    /// Adds the tap to or removes it from the epoll set (level-triggered readable).
    fn poll_tap(&self, epoll: &Epoll, polled: &mut bool, want: bool) {
        if *polled == want {
            return;
        }
        let (op, ev) = if want {
            (
                ControlOperation::Add,
                EpollEvent::new(EventSet::IN, TOKEN_TAP),
            )
        } else {
            (ControlOperation::Delete, EpollEvent::default())
        };
        match epoll.ctl(op, self.tap.as_raw_fd(), ev) {
            Ok(()) => *polled = want,
            Err(e) => self.warn(format_args!("could not change the tap's polling: {e}")),
        }
    }

    fn run(mut self, epoll: Epoll, rx_event: EventFd, tx_event: EventFd) {
        let mut events = [EpollEvent::default(); 4];
        let mut tap_polled = false;
        // The driver may have queued frames and buffers before activation.
        self.process_tx();
        let want = self.process_rx();
        self.poll_tap(&epoll, &mut tap_polled, want);
        self.signal();
        loop {
            let n = match epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!(
                        "virtio-net {} queue pair {}: epoll failed, stopping: {e}",
                        self.tap.name(),
                        self.pair
                    );
                    return;
                }
            };
            for ev in &events[..n] {
                match ev.data() {
                    TOKEN_STOP => return,
                    TOKEN_TX => {
                        // Draining the counter; an error only means it was already 0.
                        let _ = tx_event.read();
                        self.process_tx();
                    }
                    TOKEN_RX => {
                        let _ = rx_event.read();
                        // With the tap polled, frames go as they come; a kick matters only
                        // to a worker waiting for buffers (or for a re-attached tap).
                        if !tap_polled {
                            let want = self.process_rx();
                            self.poll_tap(&epoll, &mut tap_polled, want);
                        }
                    }
                    _ => {
                        let want = self.process_rx();
                        self.poll_tap(&epoll, &mut tap_polled, want);
                    }
                }
            }
            self.signal();
        }
    }
}
