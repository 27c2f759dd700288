//! The memory monitor's page store: 4 KiB pages of many vNodes, sharded, arena-backed.
//!
//! A page never written reads as zeros and costs nothing; writing an all-zero page frees it.
//! Capacity is enforced with an atomic reservation counter so concurrent writers never exceed it.

pub mod arena;
pub mod fence;
pub mod hasher;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use arena::{Arena, ArenaError};
use fence::{FenceError, Fences};
use hasher::KeyHasherBuilder;
pub use hasher::PageKey;
pub use lego_monitor_client::proto::memory::{PageStoreStats, PAGE_SIZE};

/// Number of shards (a power of two).
pub const SHARDS: usize = 64;
/// Ranges longer than this are trimmed by scanning the maps rather than page by page.
const TRIM_SCAN_THRESHOLD: u64 = 1 << 16;

/// Errors from page store operations.
#[derive(Debug, thiserror::Error)]
pub enum PageStoreError {
    /// The write needs more pages than the capacity leaves free.
    #[error(
        "the memory monitor is full: writing {needed} new page(s) needs {needed_bytes} bytes but \
         only {free_bytes} of {capacity_bytes} bytes are free"
    )]
    NoSpace {
        /// New pages the write needed.
        needed: u64,
        /// Bytes those pages need.
        needed_bytes: u64,
        /// Bytes free at the time.
        free_bytes: u64,
        /// Configured capacity in bytes.
        capacity_bytes: u64,
    },
    /// A buffer length did not match the page count.
    #[error("a buffer of {got} bytes does not hold {pages} page(s) of 4096 bytes")]
    BadLength {
        /// Pages requested.
        pages: usize,
        /// Bytes given.
        got: usize,
    },
    /// A page index overflowed.
    #[error("page range starting at {start} with {count} page(s) overflows")]
    Overflow {
        /// First page.
        start: u64,
        /// Page count.
        count: u64,
    },
    /// The frame arena failed.
    #[error(transparent)]
    Arena(#[from] ArenaError),
    /// A repair fence could not be opened or does not cover a repair write.
    #[error(transparent)]
    Fence(#[from] FenceError),
}

/// Operation counters.
#[derive(Debug, Default)]
struct OpCounters {
    read_ops: AtomicU64,
    write_ops: AtomicU64,
    trim_ops: AtomicU64,
    pages_read: AtomicU64,
    pages_written: AtomicU64,
    zero_pages_written: AtomicU64,
    nospace_errors: AtomicU64,
}

struct ShardInner {
    map: HashMap<PageKey, u32, KeyHasherBuilder>,
    arena: Arena,
    per_vnode: HashMap<u64, u64>,
}

/// One shard, padded to its own cache lines so neighbouring locks do not false-share.
#[repr(align(128))]
struct Shard {
    inner: Mutex<ShardInner>,
}

/// The page store shared by all connections of a memory monitor.
pub struct PageStore {
    shards: Box<[Shard]>,
    hasher: KeyHasherBuilder,
    capacity_pages: u64,
    /// Pages reserved or stored; never exceeds `capacity_pages`.
    used_pages: AtomicU64,
    ops: OpCounters,
    /// Regions under repair here (see [`fence`]).
    fences: Fences,
}

/// True when the page is all zero bytes.
#[inline]
pub fn is_zero_page(p: &[u8]) -> bool {
    // Most non-zero pages differ in their first or last bytes: answer those without a scan.
    if p.first().is_some_and(|&b| b != 0) || p.last().is_some_and(|&b| b != 0) {
        return false;
    }
    let (pre, mid, post) = {
        // SAFETY: u64 has no invalid bit patterns, so viewing initialized bytes as u64 is sound;
        // align_to returns correctly aligned middle words and the unaligned rest as bytes.
        unsafe { p.align_to::<u64>() }
    };
    pre.iter().all(|&b| b == 0) && mid.iter().all(|&w| w == 0) && post.iter().all(|&b| b == 0)
}

impl PageStore {
    /// An empty store holding at most `capacity_bytes` (rounded down to whole pages).
    pub fn new(capacity_bytes: u64) -> Self {
        let hasher = KeyHasherBuilder::random();
        let shards = (0..SHARDS)
            .map(|_| Shard {
                inner: Mutex::new(ShardInner {
                    map: HashMap::with_hasher(hasher),
                    arena: Arena::new(),
                    per_vnode: HashMap::new(),
                }),
            })
            .collect();
        Self {
            shards,
            hasher,
            capacity_pages: capacity_bytes / PAGE_SIZE as u64,
            used_pages: AtomicU64::new(0),
            ops: OpCounters::default(),
            fences: Fences::default(),
        }
    }

    /// Capacity in bytes.
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_pages * PAGE_SIZE as u64
    }

    /// Bytes of page data stored (or reserved by writes in flight).
    pub fn used_bytes(&self) -> u64 {
        self.used_pages.load(Ordering::Relaxed) * PAGE_SIZE as u64
    }

    fn lock(&self, key: &PageKey) -> MutexGuard<'_, ShardInner> {
        let s = self.hasher.shard_of(key, SHARDS);
        // A poisoned shard only means another thread panicked mid-update of plain data; the map
        // and arena stay structurally valid, so keep serving.
        self.shards[s]
            .inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn try_reserve(&self, n: u64) -> bool {
        if n == 0 {
            return true;
        }
        self.used_pages
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(n).filter(|&t| t <= self.capacity_pages)
            })
            .is_ok()
    }

    fn unreserve(&self, n: u64) {
        if n > 0 {
            self.used_pages.fetch_sub(n, Ordering::AcqRel);
        }
    }

    fn no_space(&self, needed: u64) -> PageStoreError {
        self.ops.nospace_errors.fetch_add(1, Ordering::Relaxed);
        let used = self.used_pages.load(Ordering::Relaxed);
        PageStoreError::NoSpace {
            needed,
            needed_bytes: needed * PAGE_SIZE as u64,
            free_bytes: self.capacity_pages.saturating_sub(used) * PAGE_SIZE as u64,
            capacity_bytes: self.capacity_bytes(),
        }
    }

    fn read_one(&self, key: PageKey, out: &mut [u8]) {
        let shard = self.lock(&key);
        match shard.map.get(&key) {
            Some(&slot) => out.copy_from_slice(shard.arena.get(slot)),
            None => out.fill(0),
        }
    }

    /// Writes one page; returns +1 if it consumed a new page, -1 if it freed one, 0 otherwise.
    /// `reserved` says whether the caller already reserved capacity for a new page.
    fn write_one(&self, key: PageKey, data: &[u8], reserved: bool) -> Result<i64, PageStoreError> {
        let zero = is_zero_page(data);
        let mut shard = self.lock(&key);
        let inner = &mut *shard;
        if zero {
            if let Some(slot) = inner.map.remove(&key) {
                dec_vnode(&mut inner.per_vnode, key.vnode);
                inner.arena.release(vec![slot]);
                return Ok(-1);
            }
            return Ok(0);
        }
        if let Some(&slot) = inner.map.get(&key) {
            inner.arena.get_mut(slot).copy_from_slice(data);
            return Ok(0);
        }
        if !reserved && !self.try_reserve(1) {
            return Err(self.no_space(1));
        }
        let slot = match inner.arena.alloc() {
            Ok(s) => s,
            Err(e) => {
                if !reserved {
                    self.unreserve(1);
                }
                return Err(e.into());
            }
        };
        inner.arena.get_mut(slot).copy_from_slice(data);
        inner.map.insert(key, slot);
        *inner.per_vnode.entry(key.vnode).or_insert(0) += 1;
        Ok(1)
    }

    fn contains(&self, key: PageKey) -> bool {
        self.lock(&key).map.contains_key(&key)
    }

    /// Writes pages given as (page index, data) pairs, all or nothing with respect to capacity.
    fn write_pages<'a, I>(&self, vnode: u64, pages: I) -> Result<(), PageStoreError>
    where
        I: Iterator<Item = (u64, &'a [u8])> + Clone,
    {
        // Reserve for every non-zero page up front; if that fails, count precisely which
        // pages are new (an overwrite needs no capacity) before refusing.
        let nonzero = pages.clone().filter(|(_, d)| !is_zero_page(d)).count() as u64;
        let mut reserved = nonzero;
        if !self.try_reserve(reserved) {
            let new = pages
                .clone()
                .filter(|(p, d)| !is_zero_page(d) && !self.contains(PageKey { vnode, page: *p }))
                .count() as u64;
            if !self.try_reserve(new) {
                return Err(self.no_space(new));
            }
            reserved = new;
        }
        // Pages under repair are marked before they are written (see `fence`).
        self.fences.touch(vnode, pages.clone().map(|(p, _)| p));
        let mut count = 0u64;
        let mut result = Ok(());
        for (page, data) in pages {
            count += 1;
            let use_reservation = reserved > 0;
            match self.write_one(PageKey { vnode, page }, data, use_reservation) {
                Ok(1) if use_reservation => reserved -= 1,
                Ok(-1) => self.unreserve(1),
                Ok(_) => {}
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        self.unreserve(reserved);
        self.ops.write_ops.fetch_add(1, Ordering::Relaxed);
        self.ops.pages_written.fetch_add(count, Ordering::Relaxed);
        self.ops
            .zero_pages_written
            .fetch_add(count.saturating_sub(nonzero), Ordering::Relaxed);
        result
    }

    /// Reads `out.len() / 4096` consecutive pages starting at `start`.
    pub fn read_run(&self, vnode: u64, start: u64, out: &mut [u8]) -> Result<(), PageStoreError> {
        let pages = check_len(out.len())?;
        check_range(start, pages as u64)?;
        for (i, chunk) in out.chunks_exact_mut(PAGE_SIZE).enumerate() {
            self.read_one(
                PageKey {
                    vnode,
                    page: start + i as u64,
                },
                chunk,
            );
        }
        self.count_read(pages);
        Ok(())
    }

    /// Writes `data.len() / 4096` consecutive pages starting at `start`.
    pub fn write_run(&self, vnode: u64, start: u64, data: &[u8]) -> Result<(), PageStoreError> {
        let pages = check_len(data.len())?;
        check_range(start, pages as u64)?;
        let it = data
            .chunks_exact(PAGE_SIZE)
            .enumerate()
            .map(move |(i, d)| (start + i as u64, d));
        self.write_pages(vnode, it)
    }

    /// Reads the listed pages into `out` (4096 bytes per listed page, in list order).
    pub fn read_list(
        &self,
        vnode: u64,
        pages: &[u64],
        out: &mut [u8],
    ) -> Result<(), PageStoreError> {
        if out.len() != pages.len() * PAGE_SIZE {
            return Err(PageStoreError::BadLength {
                pages: pages.len(),
                got: out.len(),
            });
        }
        for (&p, chunk) in pages.iter().zip(out.chunks_exact_mut(PAGE_SIZE)) {
            self.read_one(PageKey { vnode, page: p }, chunk);
        }
        self.count_read(pages.len());
        Ok(())
    }

    /// Writes the listed pages from `data` (4096 bytes per listed page, in list order).
    pub fn write_list(&self, vnode: u64, pages: &[u64], data: &[u8]) -> Result<(), PageStoreError> {
        if data.len() != pages.len() * PAGE_SIZE {
            return Err(PageStoreError::BadLength {
                pages: pages.len(),
                got: data.len(),
            });
        }
        let it = pages.iter().copied().zip(data.chunks_exact(PAGE_SIZE));
        self.write_pages(vnode, it)
    }

    fn count_read(&self, pages: usize) {
        self.ops.read_ops.fetch_add(1, Ordering::Relaxed);
        self.ops
            .pages_read
            .fetch_add(pages as u64, Ordering::Relaxed);
    }

    /// Frees pages `start..start+count` of a vNode (they read as zeros afterwards).
    /// Returns the number of stored pages freed.
    pub fn trim(&self, vnode: u64, start: u64, count: u64) -> Result<u64, PageStoreError> {
        let end = check_range(start, count)?;
        self.fences.touch_range(vnode, start, end);
        self.ops.trim_ops.fetch_add(1, Ordering::Relaxed);
        let freed = if count <= TRIM_SCAN_THRESHOLD {
            let mut freed = 0;
            for page in start..end {
                let key = PageKey { vnode, page };
                let mut shard = self.lock(&key);
                let inner = &mut *shard;
                if let Some(slot) = inner.map.remove(&key) {
                    dec_vnode(&mut inner.per_vnode, vnode);
                    inner.arena.release(vec![slot]);
                    freed += 1;
                }
            }
            freed
        } else {
            self.scan_free(|k| k.vnode == vnode && k.page >= start && k.page < end)
        };
        self.unreserve(freed);
        Ok(freed)
    }

    /// Frees every page of a vNode; returns the number freed.
    pub fn free_vnode(&self, vnode: u64) -> u64 {
        self.fences.close_vnode(vnode);
        self.ops.trim_ops.fetch_add(1, Ordering::Relaxed);
        let freed = self.scan_free(|k| k.vnode == vnode);
        self.unreserve(freed);
        freed
    }

    fn scan_free(&self, pred: impl Fn(&PageKey) -> bool) -> u64 {
        let mut freed = 0;
        for shard in self.shards.iter() {
            let mut guard = shard.inner.lock().unwrap_or_else(|e| e.into_inner());
            let inner = &mut *guard;
            let mut slots = Vec::new();
            inner.map.retain(|k, slot| {
                if pred(k) {
                    slots.push(*slot);
                    if let Some(c) = inner.per_vnode.get_mut(&k.vnode) {
                        *c -= 1;
                    }
                    false
                } else {
                    true
                }
            });
            inner.per_vnode.retain(|_, c| *c > 0);
            freed += slots.len() as u64;
            inner.arena.release(slots);
        }
        freed
    }

    /// Opens a repair fence over `start..start+count` of `vnode` (see [`fence`]); one at the
    /// same start is replaced.
    pub fn fill_begin(&self, vnode: u64, start: u64, count: u64) -> Result<(), PageStoreError> {
        self.fences.open(vnode, start, count)?;
        tracing::info!(vnode, start, count, "a repair of a vRegion began here");
        Ok(())
    }

    /// Closes the repair fence of `vnode` at `start`; true if one was open.
    pub fn fill_end(&self, vnode: u64, start: u64) -> bool {
        let closed = self.fences.close(vnode, start);
        if closed {
            tracing::info!(vnode, start, "a repair of a vRegion ended here");
        }
        closed
    }

    /// The repair's put-if-absent: stores each page of `data` from `start` that is not all
    /// zeros, not stored, and not touched since the fence opened (an open fence must cover
    /// the run). Returns the pages stored.
    pub fn fill_run(&self, vnode: u64, start: u64, data: &[u8]) -> Result<u64, PageStoreError> {
        let pages = check_len(data.len())? as u64;
        check_range(start, pages)?;
        let view = self.fences.view(vnode, start, pages)?;
        let mut stored = 0;
        for (i, d) in data.chunks_exact(PAGE_SIZE).enumerate() {
            if is_zero_page(d) {
                continue;
            }
            let key = PageKey {
                vnode,
                page: start + i as u64,
            };
            let mut shard = self.lock(&key);
            let inner = &mut *shard;
            if view.touched(key.page) || inner.map.contains_key(&key) {
                continue;
            }
            if !self.try_reserve(1) {
                return Err(self.no_space(1));
            }
            let slot = match inner.arena.alloc() {
                Ok(s) => s,
                Err(e) => {
                    self.unreserve(1);
                    return Err(e.into());
                }
            };
            inner.arena.get_mut(slot).copy_from_slice(d);
            inner.map.insert(key, slot);
            *inner.per_vnode.entry(vnode).or_insert(0) += 1;
            stored += 1;
        }
        self.ops.write_ops.fetch_add(1, Ordering::Relaxed);
        self.ops.pages_written.fetch_add(stored, Ordering::Relaxed);
        Ok(stored)
    }

    /// Which of pages `start..start+count` of `vnode` are stored: bit `i % 8` of byte `i / 8`
    /// for page `start + i`.
    pub fn present(&self, vnode: u64, start: u64, count: u32) -> Result<Vec<u8>, PageStoreError> {
        check_range(start, count.into())?;
        let mut bits = vec![0u8; (count as usize).div_ceil(8)];
        for i in 0..count as u64 {
            if self.contains(PageKey {
                vnode,
                page: start + i,
            }) {
                bits[(i / 8) as usize] |= 1 << (i % 8);
            }
        }
        Ok(bits)
    }

    /// Pages stored for one vNode.
    pub fn vnode_pages(&self, vnode: u64) -> u64 {
        self.shards
            .iter()
            .map(|s| {
                let g = s.inner.lock().unwrap_or_else(|e| e.into_inner());
                g.per_vnode.get(&vnode).copied().unwrap_or(0)
            })
            .sum()
    }

    /// A snapshot of use and counters.
    pub fn stats(&self) -> PageStoreStats {
        let mut per: HashMap<u64, u64> = HashMap::new();
        let mut pages = 0u64;
        let mut mapped = 0u64;
        for s in self.shards.iter() {
            let g = s.inner.lock().unwrap_or_else(|e| e.into_inner());
            pages += g.map.len() as u64;
            mapped += g.arena.mapped_bytes();
            for (&v, &c) in &g.per_vnode {
                *per.entry(v).or_insert(0) += c;
            }
        }
        let mut per_vnode: Vec<(u64, u64)> = per.into_iter().collect();
        per_vnode.sort_unstable();
        let o = &self.ops;
        PageStoreStats {
            capacity_bytes: self.capacity_bytes(),
            pages_stored: pages,
            bytes_in_use: pages * PAGE_SIZE as u64,
            arena_mapped_bytes: mapped,
            per_vnode,
            read_ops: o.read_ops.load(Ordering::Relaxed),
            write_ops: o.write_ops.load(Ordering::Relaxed),
            trim_ops: o.trim_ops.load(Ordering::Relaxed),
            pages_read: o.pages_read.load(Ordering::Relaxed),
            pages_written: o.pages_written.load(Ordering::Relaxed),
            zero_pages_written: o.zero_pages_written.load(Ordering::Relaxed),
            nospace_errors: o.nospace_errors.load(Ordering::Relaxed),
        }
    }
}

fn dec_vnode(per: &mut HashMap<u64, u64>, vnode: u64) {
    if let Some(c) = per.get_mut(&vnode) {
        *c -= 1;
        if *c == 0 {
            per.remove(&vnode);
        }
    }
}

fn check_len(len: usize) -> Result<usize, PageStoreError> {
    if !len.is_multiple_of(PAGE_SIZE) {
        return Err(PageStoreError::BadLength {
            pages: len / PAGE_SIZE,
            got: len,
        });
    }
    Ok(len / PAGE_SIZE)
}

fn check_range(start: u64, count: u64) -> Result<u64, PageStoreError> {
    start
        .checked_add(count)
        .filter(|&e| e <= u64::MAX / PAGE_SIZE as u64)
        .ok_or(PageStoreError::Overflow { start, count })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(fill: u8) -> Vec<u8> {
        vec![fill; PAGE_SIZE]
    }

    #[test]
    fn unwritten_pages_read_zero_and_cost_nothing() {
        let s = PageStore::new(1 << 20);
        let mut out = page(9);
        s.read_run(1, 12345, &mut out).expect("read");
        assert!(is_zero_page(&out));
        assert_eq!(s.stats().pages_stored, 0);
        assert_eq!(s.used_bytes(), 0);
    }

    #[test]
    fn write_read_run_and_list() {
        let s = PageStore::new(1 << 20);
        let mut data = Vec::new();
        for i in 1..=4u8 {
            data.extend(page(i));
        }
        s.write_run(7, 100, &data).expect("write");
        let mut out = vec![0; 4 * PAGE_SIZE];
        s.read_run(7, 100, &mut out).expect("read");
        assert_eq!(out, data);
        let mut one = page(0);
        s.read_list(7, &[102], &mut one).expect("read list");
        assert_eq!(one, page(3));
        s.write_list(7, &[5, 900], &[page(0xaa), page(0xbb)].concat())
            .expect("write list");
        let mut two = vec![0; 2 * PAGE_SIZE];
        s.read_list(7, &[900, 5], &mut two).expect("read list");
        assert_eq!(two, [page(0xbb), page(0xaa)].concat());
        let st = s.stats();
        assert_eq!(st.pages_stored, 6);
        assert_eq!(st.per_vnode, vec![(7, 6)]);
        assert_eq!(st.bytes_in_use, 6 * PAGE_SIZE as u64);
    }

    #[test]
    fn vnodes_are_separate() {
        let s = PageStore::new(1 << 20);
        s.write_run(1, 0, &page(1)).expect("write");
        let mut out = page(5);
        s.read_run(2, 0, &mut out).expect("read");
        assert!(is_zero_page(&out));
    }

    #[test]
    fn zero_page_write_frees() {
        let s = PageStore::new(1 << 20);
        s.write_run(1, 3, &page(1)).expect("write");
        assert_eq!(s.stats().pages_stored, 1);
        s.write_run(1, 3, &page(0)).expect("write zero");
        let st = s.stats();
        assert_eq!(st.pages_stored, 0);
        assert_eq!(st.zero_pages_written, 1);
        assert_eq!(s.used_bytes(), 0);
        assert!(st.per_vnode.is_empty());
    }

    #[test]
    fn capacity_is_enforced_all_or_nothing() {
        let s = PageStore::new(4 * PAGE_SIZE as u64);
        s.write_run(1, 0, &[page(1), page(2), page(3)].concat())
            .expect("fits");
        let err = s
            .write_run(1, 10, &[page(1), page(2)].concat())
            .expect_err("over capacity");
        assert!(
            matches!(err, PageStoreError::NoSpace { needed: 2, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("full"));
        assert_eq!(
            s.stats().pages_stored,
            3,
            "nothing of the refused batch was stored"
        );
        // Overwrites need no new capacity even when full.
        s.write_run(1, 20, &page(4)).expect("last page fits");
        s.write_run(1, 0, &[page(7), page(8), page(0)].concat())
            .expect("overwrite at full capacity");
        assert_eq!(
            s.used_bytes(),
            3 * PAGE_SIZE as u64,
            "the zero page freed one"
        );
        s.write_run(1, 30, &page(4))
            .expect("the freed page is reusable");
        // Zero pages cost nothing even at full capacity.
        s.write_run(2, 0, &page(0)).expect("zero page when full");
    }

    #[test]
    fn trim_small_and_large_ranges() {
        let s = PageStore::new(64 << 20);
        for p in 0..100u64 {
            s.write_run(1, p, &page(p as u8 + 1)).expect("write");
            s.write_run(2, p, &page(1)).expect("write");
        }
        assert_eq!(s.trim(1, 10, 10).expect("trim"), 10);
        assert_eq!(s.trim(1, 50, 1 << 20).expect("trim scan"), 50);
        assert_eq!(s.vnode_pages(1), 40);
        assert_eq!(s.vnode_pages(2), 100);
        let mut out = page(1);
        s.read_run(1, 15, &mut out).expect("read");
        assert!(is_zero_page(&out));
        s.read_run(1, 9, &mut out).expect("read");
        assert_eq!(out, page(10));
        assert_eq!(s.free_vnode(2), 100);
        assert_eq!(s.used_bytes(), 40 * PAGE_SIZE as u64);
        assert!(s.trim(1, u64::MAX - 1, 5).is_err());
    }

    #[test]
    fn a_repair_copy_never_overwrites_what_the_vnode_wrote_or_trimmed_during_the_repair() {
        let s = PageStore::new(1 << 20);
        let old = [page(1), page(2), page(3), page(4), page(5), page(6)].concat();
        assert!(
            s.fill_run(1, 10, &old).is_err(),
            "a repair write needs an open fence"
        );
        s.write_run(1, 10, &page(0x10)).expect("before the fence");
        s.fill_begin(1, 0, 64).expect("fence");
        // Arriving before the repair copy: a write, a zero write and a trim.
        s.write_run(1, 11, &page(0x11)).expect("write");
        s.write_run(1, 12, &page(0)).expect("zero write");
        s.trim(1, 13, 1).expect("trim");
        let stored = s.fill_run(1, 10, &old).expect("fill");
        assert_eq!(stored, 2, "only pages 14 and 15 were absent and untouched");
        let mut out = vec![0; 6 * PAGE_SIZE];
        s.read_run(1, 10, &mut out).expect("read");
        let want = [page(0x10), page(0x11), page(0), page(0), page(5), page(6)].concat();
        assert_eq!(out, want);
        // Arriving after the repair copy: the vNode's write and trim replace it.
        s.write_run(1, 14, &page(0x14)).expect("write");
        s.trim(1, 15, 1).expect("trim");
        assert_eq!(s.fill_run(1, 14, &old[4 * PAGE_SIZE..]).expect("again"), 0);
        s.read_run(1, 10, &mut out).expect("read");
        let want = [
            page(0x10),
            page(0x11),
            page(0),
            page(0),
            page(0x14),
            page(0),
        ]
        .concat();
        assert_eq!(out, want);
        assert_eq!(s.present(1, 8, 10).expect("present"), vec![0b0100_1100, 0]);
        assert!(s.fill_run(1, 60, &old).is_err(), "past the fence");
        assert!(s.fill_end(1, 0));
        assert!(s.fill_run(1, 20, &page(1)).is_err(), "closed");
        s.fill_begin(1, 0, 64).expect("fence");
        s.free_vnode(1);
        assert!(
            s.fill_run(1, 20, &page(1)).is_err(),
            "freeing the vNode closes it"
        );
        assert_eq!(s.used_bytes(), 0);
    }

    #[test]
    fn bad_lengths_rejected() {
        let s = PageStore::new(1 << 20);
        assert!(s.write_run(1, 0, &[1u8; 100]).is_err());
        assert!(s.write_list(1, &[1, 2], &page(1)).is_err());
    }

    #[test]
    fn concurrent_writers_never_exceed_capacity() {
        let s = std::sync::Arc::new(PageStore::new(1000 * PAGE_SIZE as u64));
        let hs: Vec<_> = (0..4u64)
            .map(|t| {
                let s = s.clone();
                std::thread::spawn(move || {
                    let mut ok = 0;
                    for p in 0..500u64 {
                        if s.write_run(t, p, &page(1)).is_ok() {
                            ok += 1;
                        }
                    }
                    ok
                })
            })
            .collect();
        let total: u64 = hs.into_iter().map(|h| h.join().expect("join")).sum();
        assert_eq!(total, 1000);
        assert_eq!(s.stats().pages_stored, 1000);
    }
}
