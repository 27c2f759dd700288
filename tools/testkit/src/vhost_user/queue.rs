//! A split virtqueue laid out by hand in guest memory: the descriptor table, the available
//! ring and the used ring of one queue, its kick and call eventfds, and the driver's indexes.

use std::os::fd::AsRawFd;
use std::sync::atomic::{fence, Ordering};
use std::time::Instant;

use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VringConfigData};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// Offset of the descriptor table in a queue's block.
pub const DESC: u64 = 0x0;
/// Offset of the available ring in a queue's block.
pub const AVAIL: u64 = 0x1000;
/// Offset of the used ring in a queue's block.
pub const USED: u64 = 0x2000;
/// Descriptor flag: the chain goes on at `next`.
pub const F_NEXT: u16 = 1;
/// Descriptor flag: the device writes this buffer.
pub const F_WRITE: u16 = 2;

/// One queue's rings at `base` (+[`DESC`], +[`AVAIL`], +[`USED`]) and its eventfds.
pub struct SplitQueue {
    base: u64,
    size: u16,
    kick: EventFd,
    call: EventFd,
    avail_idx: u16,
    used_seen: u16,
}

impl SplitQueue {
    /// Sets up and enables queue `index` of `size` entries on `fe`, its rings at `base` in
    /// `mem`.
    pub fn setup(
        fe: &mut Frontend,
        mem: &GuestMemoryMmap,
        index: usize,
        size: u16,
        base: u64,
    ) -> SplitQueue {
        let host = |gpa: u64| mem.get_host_address(GuestAddress(gpa)).expect("host") as u64;
        fe.set_vring_num(index, size).expect("set_vring_num");
        fe.set_vring_addr(
            index,
            &VringConfigData {
                queue_max_size: size,
                queue_size: size,
                flags: 0,
                desc_table_addr: host(base + DESC),
                used_ring_addr: host(base + USED),
                avail_ring_addr: host(base + AVAIL),
                log_addr: None,
            },
        )
        .expect("set_vring_addr");
        fe.set_vring_base(index, 0).expect("set_vring_base");
        let kick = EventFd::new(libc::EFD_NONBLOCK).expect("kick");
        let call = EventFd::new(libc::EFD_NONBLOCK).expect("call");
        fe.set_vring_call(index, &call).expect("set_vring_call");
        fe.set_vring_kick(index, &kick).expect("set_vring_kick");
        fe.set_vring_enable(index, true).expect("set_vring_enable");
        SplitQueue {
            base,
            size,
            kick,
            call,
            avail_idx: 0,
            used_seen: 0,
        }
    }

    /// Writes descriptor `i`: buffer `addr` of `len` bytes, `flags`, chained to `next`.
    pub fn write_desc(
        &self,
        mem: &GuestMemoryMmap,
        i: u16,
        (addr, len, flags): (u64, u32, u16),
        next: u16,
    ) {
        let at = GuestAddress(self.base + DESC + 16 * u64::from(i));
        mem.write_obj(addr, at).expect("desc addr");
        mem.write_obj(len, at.unchecked_add(8)).expect("desc len");
        mem.write_obj(flags, at.unchecked_add(12))
            .expect("desc flags");
        mem.write_obj(next, at.unchecked_add(14))
            .expect("desc next");
    }

    /// Writes `flags` into descriptor `i`.
    pub fn set_desc_flags(&self, mem: &GuestMemoryMmap, i: u16, flags: u16) {
        let at = GuestAddress(self.base + DESC + 16 * u64::from(i) + 12);
        mem.write_obj(flags, at).expect("desc flags");
    }

    /// Puts the chain starting at descriptor `head` on the available ring, not yet published.
    pub fn push(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        mem.write_obj(head, GuestAddress(self.base + AVAIL + 4 + 2 * slot))
            .expect("avail ring");
        self.avail_idx = self.avail_idx.wrapping_add(1);
    }

    /// With EVENT_IDX: asks for an interrupt once the device moves past what was reaped.
    pub fn request_interrupt_after_seen(&self, mem: &GuestMemoryMmap) {
        let used_event = self.base + AVAIL + 4 + 2 * u64::from(self.size);
        mem.write_obj(self.used_seen, GuestAddress(used_event))
            .expect("used_event");
    }

    /// Publishes the pushed chains (the available index) and kicks the backend.
    pub fn publish(&self, mem: &GuestMemoryMmap) {
        self.write_avail_idx(mem);
        self.kick.write(1).expect("kick");
    }

    /// Makes the pushed chains visible to the device: writes the available index between
    /// full fences (the chains before it, the device's flags after it).
    fn write_avail_idx(&self, mem: &GuestMemoryMmap) {
        fence(Ordering::SeqCst);
        mem.write_obj(self.avail_idx, GuestAddress(self.base + AVAIL + 2))
            .expect("avail idx");
        fence(Ordering::SeqCst);
    }

    /// Publishes like [`Self::publish`] but, as Linux's driver does without EVENT_IDX, kicks
    /// only when the device has not set `VRING_USED_F_NO_NOTIFY` (it is polling the ring).
    /// Returns whether it kicked.
    pub fn publish_unless_suppressed(&self, mem: &GuestMemoryMmap) -> bool {
        self.write_avail_idx(mem);
        let flags: u16 = mem
            .read_obj(GuestAddress(self.base + USED))
            .expect("used flags");
        if flags & 1 != 0 {
            return false;
        }
        self.kick.write(1).expect("kick");
        true
    }

    /// The device's used index.
    pub fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        let used = mem
            .read_obj(GuestAddress(self.base + USED + 2))
            .expect("used idx");
        fence(Ordering::SeqCst);
        used
    }

    /// The next used element not yet reaped, as (head descriptor, written length).
    pub fn pop_used(&mut self, mem: &GuestMemoryMmap) -> Option<(u32, u32)> {
        if self.used_idx(mem) == self.used_seen {
            return None;
        }
        let elem = self.base + USED + 4 + 8 * u64::from(self.used_seen % self.size);
        let id = mem.read_obj(GuestAddress(elem)).expect("used id");
        let len = mem.read_obj(GuestAddress(elem + 4)).expect("used len");
        self.used_seen = self.used_seen.wrapping_add(1);
        Some((id, len))
    }

    /// The used elements reaped so far (wrapping).
    pub fn used_seen(&self) -> u16 {
        self.used_seen
    }

    /// Waits until the backend signals the call eventfd (`true`, and clears it) or `deadline`
    /// passes (`false`).
    pub fn wait_call(&self, deadline: Instant) -> bool {
        let called = wait_readable(&self.call, deadline);
        if called {
            let _ = self.call.read();
        }
        called
    }
}

/// Waits until `fd` is readable (`true`) or `deadline` passes (`false`).
pub fn wait_readable(fd: &EventFd, deadline: Instant) -> bool {
    loop {
        let ms = deadline
            .saturating_duration_since(Instant::now())
            .as_millis()
            .min(i32::MAX as u128) as i32;
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `p` is one valid pollfd for the duration of the call.
        let r = unsafe { libc::poll(&mut p, 1, ms) };
        if r < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        return r > 0 && p.revents & libc::POLLIN != 0;
    }
}
