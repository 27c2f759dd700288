//! The pager's record of every page of guest RAM: where its contents are (nowhere yet, in
//! guest RAM, on the memory monitors, or in an eviction buffer), whether the monitors' copy is
//! current, and the order pages became resident in (the eviction queue).
//!
//! Pages are numbered by their offset in the guest RAM memfd divided by 4096; the same number
//! is the page's index in the vNode's remote memory. This module is pure bookkeeping (no
//! system calls): the fault threads and the evictor hold its lock only to decide, never while
//! they wait on the kernel or the network.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Bytes per page.
pub const PAGE: usize = 4096;

/// One page's contents.
pub type PageBuf = Arc<[u8]>;

/// Where a page's contents are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Never written anywhere: reads as zeros, costs nothing.
    Untouched,
    /// In guest RAM; the monitors hold no current copy.
    ResidentLocal,
    /// In guest RAM; the monitors hold a copy whose hash is recorded.
    ResidentSynced,
    /// A fault thread is installing it.
    Installing,
    /// Out of guest RAM, its contents in an eviction buffer until the monitors hold them.
    Evicted,
    /// Only on the monitors.
    Remote,
}

impl State {
    /// True for the states of a page in guest RAM.
    pub fn is_resident(self) -> bool {
        matches!(self, State::ResidentLocal | State::ResidentSynced)
    }
}

/// What a fault thread must do for a faulting page.
#[derive(Debug, Clone)]
pub enum FaultPlan {
    /// It is resident already (another thread or mapping got there first): wake the faulter.
    Wake,
    /// Another thread is installing it: wait for that, then wake the faulter.
    Wait,
    /// Install zeros (no round trip): these pages, from the faulting one, are now Installing.
    Zero {
        /// First page.
        start: u64,
        /// Page count.
        count: u64,
    },
    /// Install this buffer (the page was evicted and is still being written back).
    Buffer(PageBuf),
    /// Fetch these pages from the monitors: from the faulting one, now Installing.
    Fetch {
        /// First page.
        start: u64,
        /// Page count.
        count: u64,
    },
}

/// How an evicted page is finished once its contents are known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The monitors' copy is current: dropped without a write.
    Clean,
    /// Zeros that the monitors never held: back to Untouched, no write.
    Zero,
    /// Must be written to the monitors.
    Dirty,
}

/// The table.
#[derive(Debug)]
pub struct Table {
    state: Vec<State>,
    hash: Vec<u128>,
    /// A write-back of the page is in flight: it may not be evicted again until it lands (two
    /// writes of one page must never race on the fabric).
    writing: Vec<bool>,
    /// Faulted back in after an eviction: gets a second chance in the eviction queue.
    referenced: Vec<bool>,
    buffers: HashMap<u64, PageBuf>,
    queue: VecDeque<u64>,
    resident: u64,
    remote: u64,
}

impl Table {
    /// A table of `pages` pages, all Untouched.
    pub fn new(pages: u64) -> Self {
        let n = pages as usize;
        Self {
            state: vec![State::Untouched; n],
            hash: vec![0; n],
            writing: vec![false; n],
            referenced: vec![false; n],
            buffers: HashMap::new(),
            queue: VecDeque::new(),
            resident: 0,
            remote: 0,
        }
    }

    /// The page count.
    pub fn pages(&self) -> u64 {
        self.state.len() as u64
    }

    /// The state of `page`.
    pub fn state(&self, page: u64) -> State {
        self.state[page as usize]
    }

    /// Pages in guest RAM now.
    pub fn resident(&self) -> u64 {
        self.resident
    }

    /// Pages whose only current copy is on the monitors (or in flight to them).
    pub fn remote(&self) -> u64 {
        self.remote
    }

    /// Decides how to serve a fault on `page`. `run` is how many pages from it a sequential
    /// fault may take at once (1 = only the faulting page); neighbours join only if they are
    /// in the same state and not being written back.
    pub fn plan_fault(&mut self, page: u64, zero_run: u64, fetch_run: u64) -> FaultPlan {
        let p = page as usize;
        match self.state[p] {
            State::ResidentLocal | State::ResidentSynced => FaultPlan::Wake,
            State::Installing => FaultPlan::Wait,
            State::Untouched => {
                let count = self.claim_run(page, zero_run, State::Untouched);
                FaultPlan::Zero { start: page, count }
            }
            State::Evicted => {
                let buf = self.buffers[&page].clone();
                self.state[p] = State::Installing;
                self.referenced[p] = true;
                FaultPlan::Buffer(buf)
            }
            State::Remote => {
                self.referenced[p] = true;
                let count = self.claim_run(page, fetch_run, State::Remote);
                FaultPlan::Fetch { start: page, count }
            }
        }
    }

    /// Marks `page` and up to `run - 1` following pages in state `like` Installing; returns
    /// how many.
    fn claim_run(&mut self, page: u64, run: u64, like: State) -> u64 {
        let end = (page + run.max(1)).min(self.pages());
        let mut count = 0;
        for q in page..end {
            let i = q as usize;
            if self.state[i] != like || (q != page && self.writing[i]) {
                break;
            }
            self.state[i] = State::Installing;
            count += 1;
        }
        count
    }

    /// The pages `start..start+count` (Installing) are in guest RAM now. `hashes` gives the
    /// hash of each one's contents as the monitors hold them (`None`: zeros never written
    /// out, the monitors hold nothing). Returns the resident count.
    pub fn installed(&mut self, start: u64, count: u64, hashes: Option<&[u128]>) -> u64 {
        for (k, q) in (start..start + count).enumerate() {
            let i = q as usize;
            if self.state[i] != State::Installing {
                continue;
            }
            match hashes {
                Some(h) => {
                    self.state[i] = State::ResidentSynced;
                    self.hash[i] = h[k];
                    self.remote = self.remote.saturating_sub(1);
                    self.buffers.remove(&q);
                }
                None => self.state[i] = State::ResidentLocal,
            }
            self.resident += 1;
            self.queue.push_back(q);
        }
        self.resident
    }

    /// An install of `start..start+count` failed: back to the state `was` (the pages are not
    /// in guest RAM).
    pub fn install_failed(&mut self, start: u64, count: u64, was: State) {
        for q in start..start + count {
            let i = q as usize;
            if self.state[i] == State::Installing {
                self.state[i] = was;
            }
        }
    }

    /// Picks up to `max` eviction candidates from the queue head: resident pages not being
    /// written back, skipping (and requeueing) those with a second chance. They stay resident
    /// until [`Table::evict`].
    pub fn candidates(&mut self, max: usize) -> Vec<u64> {
        let mut out = Vec::with_capacity(max);
        let mut looked = 0;
        let limit = self.queue.len();
        while out.len() < max && looked < limit {
            let Some(q) = self.queue.pop_front() else {
                break;
            };
            looked += 1;
            let i = q as usize;
            if !matches!(self.state[i], State::ResidentLocal | State::ResidentSynced) {
                continue; // a stale entry: the page left guest RAM since
            }
            if self.writing[i] || std::mem::take(&mut self.referenced[i]) {
                self.queue.push_back(q);
                continue;
            }
            out.push(q);
        }
        out
    }

    /// Puts candidates that were not evicted back at the queue head, in order.
    pub fn requeue(&mut self, pages: &[u64]) {
        for &q in pages.iter().rev() {
            self.queue.push_front(q);
        }
    }

    /// Takes resident `page` out of the table's idea of guest RAM with `contents` (copied
    /// while nothing could write it) and decides whether it needs a write. The caller then
    /// removes it from guest RAM; faults on it are served from the buffer meanwhile.
    pub fn evict(&mut self, page: u64, contents: PageBuf) -> Verdict {
        let i = page as usize;
        let h = hash(&contents);
        let verdict = match self.state[i] {
            State::ResidentSynced if self.hash[i] == h => Verdict::Clean,
            State::ResidentLocal if contents.iter().all(|&b| b == 0) => Verdict::Zero,
            _ => Verdict::Dirty,
        };
        self.resident = self.resident.saturating_sub(1);
        match verdict {
            Verdict::Clean => {
                self.state[i] = State::Remote;
                self.remote += 1;
            }
            Verdict::Zero => self.state[i] = State::Untouched,
            Verdict::Dirty => {
                self.state[i] = State::Evicted;
                self.hash[i] = h;
                self.writing[i] = true;
                self.buffers.insert(page, contents);
                self.remote += 1;
            }
        }
        verdict
    }

    /// The write-back of `page` landed on the monitors: its buffer is dropped (the page is
    /// Remote now), or, if it was faulted back from the buffer meanwhile, it is resident
    /// with a current remote copy.
    pub fn written(&mut self, page: u64) {
        let i = page as usize;
        self.writing[i] = false;
        if self.state[i] == State::Evicted {
            self.buffers.remove(&page);
            self.state[i] = State::Remote;
        }
    }

    /// The hash of `page`'s contents recorded at its last install or eviction.
    pub fn recorded_hash(&self, page: u64) -> u128 {
        self.hash[page as usize]
    }

    /// Checks pages fetched from `start` (their `hashes`, in order) against the hashes of
    /// what was last written to the monitors: the first page that came back different (a
    /// stale or wrong copy, which must never be installed), if any.
    pub fn first_mismatch(&self, start: u64, hashes: &[u128]) -> Option<u64> {
        (start..)
            .zip(hashes)
            .find(|&(q, h)| self.hash[q as usize] != *h)
            .map(|(q, _)| q)
    }
}

/// The 128-bit hash that tells a page the monitors hold a current copy of: two different
/// contents hash equal with probability 2^-128.
pub fn hash(page: &[u8]) -> u128 {
    xxhash_rust::xxh3::xxh3_128(page)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buf(byte: u8) -> PageBuf {
        vec![byte; PAGE].into()
    }

    #[test]
    fn an_untouched_page_is_zero_filled_with_its_untouched_neighbours() {
        let mut t = Table::new(8);
        assert!(matches!(
            t.plan_fault(2, 4, 1),
            FaultPlan::Zero { start: 2, count: 4 }
        ));
        assert!(matches!(t.plan_fault(3, 4, 1), FaultPlan::Wait));
        t.installed(2, 4, None);
        assert_eq!(t.resident(), 4);
        assert!(matches!(t.plan_fault(3, 4, 1), FaultPlan::Wake));
        // The run stops at a page in another state.
        assert!(matches!(
            t.plan_fault(0, 8, 1),
            FaultPlan::Zero { start: 0, count: 2 }
        ));
    }

    #[test]
    fn eviction_writes_only_what_the_monitors_do_not_hold() {
        let mut t = Table::new(4);
        t.plan_fault(0, 4, 1);
        t.installed(0, 4, None);
        assert_eq!(t.candidates(4), vec![0, 1, 2, 3]);
        t.requeue(&[2, 3]);
        assert_eq!(t.evict(0, buf(0)), Verdict::Zero);
        assert_eq!(t.state(0), State::Untouched);
        assert_eq!(t.evict(1, buf(7)), Verdict::Dirty);
        assert_eq!(t.state(1), State::Evicted);
        assert_eq!(t.remote(), 1);
        // Faulted back before its write-back landed: served from the buffer.
        let FaultPlan::Buffer(b) = t.plan_fault(1, 1, 1) else {
            panic!("expected the buffer")
        };
        assert_eq!(b[0], 7);
        t.installed(1, 1, Some(&[hash(&b)]));
        assert_eq!(t.remote(), 0);
        assert_eq!(t.state(1), State::ResidentSynced);
        // Still being written: not a candidate until the write lands.
        assert_eq!(t.candidates(4), vec![2, 3]);
        t.requeue(&[2, 3]);
        t.written(1);
        assert_eq!(t.state(1), State::ResidentSynced);
        // Faulted back in: a second chance first, then a candidate.
        assert_eq!(t.candidates(4), vec![2, 3]);
        t.requeue(&[2, 3]);
        assert_eq!(t.candidates(4), vec![2, 3, 1]);
        // Unchanged since: clean, dropped without a write.
        assert_eq!(t.evict(1, buf(7)), Verdict::Clean);
        assert_eq!(t.state(1), State::Remote);
        // Changed since its copy: dirty.
        assert_eq!(t.evict(2, buf(1)), Verdict::Dirty);
        t.written(2);
        assert_eq!(t.state(2), State::Remote);
        assert!(matches!(
            t.plan_fault(1, 1, 4),
            FaultPlan::Fetch { start: 1, count: 2 }
        ));
    }

    #[test]
    fn a_page_faulted_back_gets_a_second_chance() {
        let mut t = Table::new(3);
        t.plan_fault(0, 3, 1);
        t.installed(0, 3, None);
        assert_eq!(t.candidates(1), vec![0]);
        assert_eq!(t.evict(0, buf(9)), Verdict::Dirty);
        t.written(0);
        let FaultPlan::Fetch { start, count } = t.plan_fault(0, 1, 1) else {
            panic!("expected a fetch")
        };
        t.installed(start, count, Some(&[hash(&buf(9))]));
        // Queue is now 1, 2, 0; page 0 is referenced, 1 and 2 are not.
        assert_eq!(t.candidates(3), vec![1, 2]);
        assert_eq!(t.candidates(3), vec![0]);
    }

    #[test]
    fn a_fetched_page_must_be_the_one_written() {
        let mut t = Table::new(3);
        t.plan_fault(0, 3, 1);
        t.installed(0, 3, None);
        assert_eq!(t.candidates(3), vec![0, 1, 2]);
        assert_eq!(t.evict(0, buf(4)), Verdict::Dirty);
        assert_eq!(t.evict(1, buf(5)), Verdict::Dirty);
        t.written(0);
        t.written(1);
        let FaultPlan::Fetch { start, count } = t.plan_fault(0, 1, 2) else {
            panic!("expected a fetch")
        };
        assert_eq!((start, count), (0, 2));
        let good = [hash(&buf(4)), hash(&buf(5))];
        assert_eq!(t.first_mismatch(0, &good), None);
        // An older copy of page 1 (zeros), or pages swapped: caught, never installed.
        assert_eq!(t.first_mismatch(0, &[good[0], hash(&buf(0))]), Some(1));
        assert_eq!(t.first_mismatch(0, &[good[1], good[0]]), Some(0));
    }

    #[test]
    fn a_failed_install_leaves_the_page_where_it_was() {
        let mut t = Table::new(2);
        t.plan_fault(0, 1, 1);
        t.installed(0, 1, None);
        t.evict(0, buf(3));
        t.written(0);
        let FaultPlan::Fetch { start, count } = t.plan_fault(0, 1, 1) else {
            panic!("expected a fetch")
        };
        t.install_failed(start, count, State::Remote);
        assert_eq!(t.state(0), State::Remote);
        assert_eq!(t.remote(), 1);
    }
}
