//! Which guest pages a device may touch at any moment: its live queues' rings and every buffer
//! their descriptor tables point at.
//!
//! A device (a worker thread here, a vhost-user backend in another process) reads and writes
//! guest RAM behind the VMM's back: the rings, and the buffers of requests it has taken from
//! the available ring. legovmm's pager must never take such a page out of guest RAM while the
//! device may write it, or the write would be lost. Every transport registers its live queues
//! in a [`RingRegistry`]; [`RingRegistry::device_pages`] reads them from guest memory and
//! returns a superset of the pages devices may touch: the rings themselves and the buffers of
//! **every** descriptor in each table (free descriptors included, so no ordering of the
//! available and used rings has to be trusted), following indirect tables. With the vCPUs
//! paused the guest cannot post anything new, so the set is complete until they run again.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// The size of a guest page the set is counted in.
pub const PAGE_SIZE: u64 = 4096;
/// Descriptor flag: the buffer is an indirect descriptor table.
const VIRTQ_DESC_F_INDIRECT: u16 = 4;
/// The most entries of an indirect table that are followed (the spec allows no more than the
/// queue size; guests use far fewer).
const MAX_INDIRECT: u64 = 1024;
/// A buffer longer than this is counted only up to it (a descriptor's length is 32 bits; a
/// stale or hostile one must not make the set huge).
const MAX_BUFFER: u64 = 4 << 20;

/// Where one live split virtqueue lives in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingAddrs {
    /// Descriptor table.
    pub desc: u64,
    /// Available (driver) ring.
    pub avail: u64,
    /// Used (device) ring.
    pub used: u64,
    /// Queue size (entries).
    pub size: u16,
}

/// The live queues of every device, by transport slot.
#[derive(Debug, Clone, Default)]
pub struct RingRegistry {
    slots: Arc<Mutex<Vec<Vec<RingAddrs>>>>,
}

impl RingRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// A new slot for one transport's queues (empty until [`RingRegistry::set`]).
    pub fn slot(&self) -> usize {
        let mut slots = self.lock();
        slots.push(Vec::new());
        slots.len() - 1
    }

    /// Records the live queues of transport `slot` (empty when it is reset).
    pub fn set(&self, slot: usize, queues: Vec<RingAddrs>) {
        if let Some(s) = self.lock().get_mut(slot) {
            *s = queues;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Vec<RingAddrs>>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The guest-physical page numbers (address / 4096) devices may touch now: every live
    /// ring and every buffer every descriptor of its table points at. Reads guest memory;
    /// unreadable addresses (outside RAM) are skipped.
    pub fn device_pages(&self, mem: &GuestMemoryMmap<()>) -> BTreeSet<u64> {
        let queues: Vec<RingAddrs> = self.lock().iter().flatten().copied().collect();
        let mut pages = BTreeSet::new();
        for q in queues {
            let size = u64::from(q.size);
            add_range(&mut pages, q.desc, 16 * size);
            add_range(&mut pages, q.avail, 6 + 2 * size);
            add_range(&mut pages, q.used, 6 + 8 * size);
            for i in 0..size {
                add_descriptor(&mut pages, mem, q.desc + 16 * i, true);
            }
        }
        pages
    }
}

/// Adds the pages of the buffer descriptor `at` names (and of an indirect table's entries
/// when `follow` is set: indirect tables do not nest).
fn add_descriptor(pages: &mut BTreeSet<u64>, mem: &GuestMemoryMmap<()>, at: u64, follow: bool) {
    let Ok(addr) = mem.read_obj::<u64>(GuestAddress(at)) else {
        return;
    };
    let Ok(len) = mem.read_obj::<u32>(GuestAddress(at + 8)) else {
        return;
    };
    let Ok(flags) = mem.read_obj::<u16>(GuestAddress(at + 12)) else {
        return;
    };
    let len = u64::from(len).min(MAX_BUFFER);
    add_range(pages, addr, len);
    if follow && flags & VIRTQ_DESC_F_INDIRECT != 0 {
        for i in 0..(len / 16).min(MAX_INDIRECT) {
            add_descriptor(pages, mem, addr + 16 * i, false);
        }
    }
}

/// Adds the pages `len` bytes at `addr` cover.
fn add_range(pages: &mut BTreeSet<u64>, addr: u64, len: u64) {
    if len == 0 {
        return;
    }
    let first = addr / PAGE_SIZE;
    let last = addr.saturating_add(len - 1) / PAGE_SIZE;
    pages.extend(first..=last);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    fn write_desc(mem: &GuestMemoryMmap<()>, at: u64, addr: u64, len: u32, flags: u16) {
        mem.write_obj(addr, GuestAddress(at)).unwrap();
        mem.write_obj(len, GuestAddress(at + 8)).unwrap();
        mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
    }

    #[test]
    fn rings_buffers_and_indirect_tables_are_all_counted() {
        let mem = mem();
        let reg = RingRegistry::new();
        let slot = reg.slot();
        // Queue of 4 at desc 0x1000, avail 0x2000, used 0x3000.
        write_desc(&mem, 0x1000, 0x10_0000 - 0x800, 0x1000, 0); // straddles two pages
        write_desc(&mem, 0x1010, 0x5000, 32, VIRTQ_DESC_F_INDIRECT);
        write_desc(&mem, 0x5000, 0x7000, 1, 0);
        write_desc(&mem, 0x5010, 0x9000, 0x2000, 0);
        reg.set(
            slot,
            vec![RingAddrs {
                desc: 0x1000,
                avail: 0x2000,
                used: 0x3000,
                size: 4,
            }],
        );
        let pages = reg.device_pages(&mem);
        for p in [0x1, 0x2, 0x3, 0xff, 0x100, 0x5, 0x7, 0x9, 0xa] {
            assert!(pages.contains(&p), "page {p:#x} missing from {pages:x?}");
        }
        assert!(!pages.contains(&0x8), "{pages:x?}");
        reg.set(slot, Vec::new());
        assert!(reg.device_pages(&mem).is_empty());
    }

    #[test]
    fn hostile_lengths_are_bounded() {
        let mem = mem();
        let reg = RingRegistry::new();
        let slot = reg.slot();
        write_desc(&mem, 0x1000, 0, u32::MAX, VIRTQ_DESC_F_INDIRECT);
        reg.set(
            slot,
            vec![RingAddrs {
                desc: 0x1000,
                avail: 0x2000,
                used: 0x3000,
                size: 1,
            }],
        );
        let pages = reg.device_pages(&mem);
        assert!(
            pages.len() as u64 <= MAX_BUFFER / PAGE_SIZE + 8,
            "{}",
            pages.len()
        );
    }
}
