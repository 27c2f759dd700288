//! [`RemoteMemoryStore`]: a vNode's remote memory (vRegions on memory monitors) as a block
//! device, typically used by the guest as swap.
//!
//! Monitors hold 4 KiB pages, so the device advertises a 4 KiB block size; a request that is
//! not page aligned (a guest may still send one) is served by read-modify-write of its edge
//! pages. Such writes hold the [`gate::Gate`] exclusively so that two sub-page writes to one
//! page from different queues cannot lose each other's bytes; whole-page writes share it for
//! as long as they are in flight. Reads and whole-page writes are pipelined
//! ([`BlockStore::submit`]): every page of a batch is sent before any answer is awaited.

pub mod gate;

use std::sync::Arc;

use lego_monitor_client::client::{CallError, LeaseKeeper, Renewal, VnodeMemory};
use lego_monitor_client::proto::memory::PAGE_SIZE;

use super::pending::Later;
use super::{check_range, check_write, BlockStore, StoreError, StoreOp, StorePending};
use gate::Gate;
/// A page operation handed to [`PageAccess::submit_pages`]: a run of pages to read or write.
pub use lego_monitor_client::client::PageOp;

const PAGE: u64 = PAGE_SIZE as u64;

/// The serial of every remote memory device.
pub const SERIAL: &str = "lego-remote-memory";

/// A page operation in flight: the pages read (empty for a write).
pub type PageWait = Later<CallError>;

/// Page access to remote memory; implemented by [`VnodeMemory`] (and by fakes in tests).
pub trait PageAccess: Send + Sync {
    /// Starts `ops` without waiting; one [`PageWait`] per op, in order.
    fn submit_pages(&self, ops: &[PageOp<'_>]) -> Vec<PageWait>;
    /// Frees `count` pages from `start` (they read as zeros afterwards).
    fn trim_pages(&self, start: u64, count: u64) -> Result<(), CallError>;
    /// Frees every page of the vNode; returns how many were stored.
    fn release_all(&self) -> Result<u64, CallError>;
}

impl PageAccess for VnodeMemory {
    fn submit_pages(&self, ops: &[PageOp<'_>]) -> Vec<PageWait> {
        self.submit(ops)
            .into_iter()
            .map(|p| PageWait::deferred(move || p.wait()))
            .collect()
    }

    fn trim_pages(&self, start: u64, count: u64) -> Result<(), CallError> {
        self.trim(start, count).map(|_| ())
    }

    fn release_all(&self) -> Result<u64, CallError> {
        self.free_all()
    }
}

/// Runs one page op and waits for it.
fn page_op<P: PageAccess + ?Sized>(pages: &P, op: PageOp<'_>) -> Result<Vec<u8>, CallError> {
    match pages.submit_pages(&[op]).pop() {
        Some(w) => w.wait(),
        None => Err(CallError::Invalid(
            "the page operation was not started".into(),
        )),
    }
}

/// Called after pages were written or trimmed and before the guest learns of it (the state
/// a restart of the backend needs: `crate::state::LiveState::check`); an error fails the
/// request.
pub type AfterWrite = Arc<dyn Fn() -> Result<(), StoreError> + Send + Sync>;

/// Remote memory as a block device of `capacity` bytes.
pub struct RemoteMemoryStore<P: PageAccess = VnodeMemory> {
    pages: P,
    capacity: u64,
    gate: Arc<Gate>,
    /// Keeps the capability fresh while the store lives.
    _renewal: Option<Renewal>,
    /// Keeps the vNode's lease with the manager while the store lives.
    _lease: Option<LeaseKeeper>,
    /// Runs after each write or trim (see [`AfterWrite`]).
    after_write: Option<AfterWrite>,
}

fn remote(op: &'static str) -> impl FnOnce(CallError) -> StoreError {
    move |source| StoreError::Remote {
        op,
        source: source.into(),
    }
}

/// Checks that a monitor answered with exactly `count` pages.
fn expect_len<'a>(pages: &'a [u8], count: u64, op: &'static str) -> Result<&'a [u8], StoreError> {
    if pages.len() as u64 == count * PAGE {
        Ok(pages)
    } else {
        Err(StoreError::Remote {
            op,
            source: CallError::Invalid(format!(
                "asked for {count} pages, got {} bytes",
                pages.len()
            ))
            .into(),
        })
    }
}

/// The pages covering `len` bytes at `offset`: (first page, page count, offset in the first).
fn cover(offset: u64, len: u64) -> (u64, u64, usize) {
    let first = offset / PAGE;
    let end = (offset + len).div_ceil(PAGE);
    (first, end - first, (offset - first * PAGE) as usize)
}

/// How one op of a batch is served.
enum Plan {
    /// Finished without the monitors (an error or an empty op).
    Done(Result<Vec<u8>, StoreError>),
    /// Page op `n` of the batch, reading `count` pages; the op wants `at..at+len` of them.
    Read {
        n: usize,
        count: u64,
        at: usize,
        len: usize,
    },
    /// Page op `n` of the batch, a whole-page write.
    Write { n: usize },
    /// A partial-page write, done by read-modify-write once the batch's page ops are done.
    Partial,
}

impl<P: PageAccess> RemoteMemoryStore<P> {
    /// Serves the first `capacity` bytes (rounded down to whole pages) of `pages`.
    pub fn new(pages: P, capacity: u64) -> Self {
        Self {
            pages,
            capacity: capacity - capacity % PAGE,
            gate: Arc::new(Gate::default()),
            _renewal: None,
            _lease: None,
            after_write: None,
        }
    }

    /// The same store, renewing its capability with `renewal` while it lives.
    pub fn with_renewal(mut self, renewal: Renewal) -> Self {
        self._renewal = Some(renewal);
        self
    }

    /// The same store, renewing the vNode's lease with `lease` while it lives.
    pub fn with_lease(mut self, lease: LeaseKeeper) -> Self {
        self._lease = Some(lease);
        self
    }

    /// The same store, calling `hook` after each write or trim, before its completion.
    pub fn with_after_write(mut self, hook: AfterWrite) -> Self {
        self.after_write = Some(hook);
        self
    }

    /// Runs the after-write hook, if any.
    fn wrote(&self) -> Result<(), StoreError> {
        self.after_write.as_ref().map_or(Ok(()), |hook| hook())
    }

    /// The page access in use.
    pub fn pages(&self) -> &P {
        &self.pages
    }

    /// Writes bytes at any sector-aligned offset: whole pages directly, partial edge pages
    /// by read-modify-write. `data` of `None` means zeros.
    fn write_span(&self, offset: u64, len: u64, data: Option<&[u8]>) -> Result<(), StoreError> {
        if len == 0 {
            return Ok(());
        }
        let (first, count, at) = cover(offset, len);
        let aligned = offset.is_multiple_of(PAGE) && len.is_multiple_of(PAGE);
        if aligned {
            let _t = self.gate.shared();
            let zeros;
            let data = match data {
                Some(d) => d,
                None => {
                    zeros = vec![0u8; len as usize];
                    &zeros
                }
            };
            page_op(&self.pages, PageOp::Write { start: first, data })
                .map_err(remote("page write"))?;
            return self.wrote();
        }
        let _g = self.gate.exclusive();
        let mut buf = page_op(
            &self.pages,
            PageOp::Read {
                start: first,
                count,
            },
        )
        .map_err(remote("page read for a partial write"))?;
        expect_len(&buf, count, "page read for a partial write")?;
        let dst = &mut buf[at..at + len as usize];
        match data {
            Some(d) => dst.copy_from_slice(d),
            None => dst.fill(0),
        }
        page_op(
            &self.pages,
            PageOp::Write {
                start: first,
                data: &buf,
            },
        )
        .map_err(remote("page write"))?;
        self.wrote()
    }

    /// Plans `op` as the page ops it needs, appended to `page_ops`.
    fn plan<'a>(&self, op: &StoreOp<'a>, page_ops: &mut Vec<PageOp<'a>>) -> Plan {
        match *op {
            StoreOp::Read { offset, len } => {
                if let Err(e) = check_range(offset, len as u64, self.capacity) {
                    return Plan::Done(Err(e));
                }
                if len == 0 {
                    return Plan::Done(Ok(Vec::new()));
                }
                let (start, count, at) = cover(offset, len as u64);
                page_ops.push(PageOp::Read { start, count });
                Plan::Read {
                    n: page_ops.len() - 1,
                    count,
                    at,
                    len,
                }
            }
            StoreOp::Write { offset, data } => {
                let len = data.len() as u64;
                if let Err(e) = check_write(false, offset, len, self.capacity) {
                    return Plan::Done(Err(e));
                }
                if len == 0 {
                    return Plan::Done(Ok(Vec::new()));
                }
                if !(offset.is_multiple_of(PAGE) && len.is_multiple_of(PAGE)) {
                    return Plan::Partial;
                }
                page_ops.push(PageOp::Write {
                    start: offset / PAGE,
                    data,
                });
                Plan::Write {
                    n: page_ops.len() - 1,
                }
            }
        }
    }
}

impl<P: PageAccess> BlockStore for RemoteMemoryStore<P> {
    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn read_only(&self) -> bool {
        false
    }

    fn serial(&self) -> &str {
        SERIAL
    }

    fn block_size(&self) -> u32 {
        PAGE_SIZE as u32
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        let len = buf.len();
        let op = StoreOp::Read { offset, len };
        let data = self.submit(&[op]).pop().map_or_else(
            || {
                Err(StoreError::ShortRead {
                    expected: len,
                    got: 0,
                })
            },
            Later::wait,
        )?;
        if data.len() != len {
            return Err(StoreError::ShortRead {
                expected: len,
                got: data.len(),
            });
        }
        buf.copy_from_slice(&data);
        Ok(())
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        check_write(false, offset, data.len() as u64, self.capacity)?;
        self.write_span(offset, data.len() as u64, Some(data))
    }

    fn flush(&self) -> Result<(), StoreError> {
        // A page is stored on its monitor before the write is acknowledged; remote memory is
        // volatile by design, so there is nothing more to make durable.
        Ok(())
    }

    fn submit(&self, ops: &[StoreOp<'_>]) -> Vec<StorePending> {
        let mut page_ops = Vec::with_capacity(ops.len());
        let plans: Vec<Plan> = ops.iter().map(|op| self.plan(op, &mut page_ops)).collect();
        // Whole-page writes share the gate until their answers are in.
        let ticket = page_ops
            .iter()
            .any(|p| matches!(p, PageOp::Write { .. }))
            .then(|| Arc::new(self.gate.shared()));
        let mut waits: Vec<Option<PageWait>> = self
            .pages
            .submit_pages(&page_ops)
            .into_iter()
            .map(Some)
            .collect();
        let mut take = |n: usize| {
            waits.get_mut(n).and_then(Option::take).unwrap_or_else(|| {
                PageWait::ready(Err(CallError::Invalid(
                    "the page operation was not started".into(),
                )))
            })
        };
        let mut partial = Vec::new();
        let mut out: Vec<StorePending> = plans
            .into_iter()
            .enumerate()
            .map(|(i, plan)| match plan {
                Plan::Done(r) => StorePending::ready(r),
                Plan::Read { n, count, at, len } => take(n).then(move |r| {
                    let pages = r.map_err(remote("page read"))?;
                    expect_len(&pages, count, "page read")?;
                    if at == 0 && len == pages.len() {
                        Ok(pages)
                    } else {
                        Ok(pages[at..at + len].to_vec())
                    }
                }),
                Plan::Write { n } => {
                    let ticket = ticket.clone();
                    let hook = self.after_write.clone();
                    take(n).then(move |r| {
                        drop(ticket);
                        r.map_err(remote("page write"))?;
                        hook.map_or(Ok(()), |h| h())?;
                        Ok(Vec::new())
                    })
                }
                Plan::Partial => {
                    partial.push(i);
                    StorePending::ready(Ok(Vec::new()))
                }
            })
            .collect();
        drop(ticket);
        if !partial.is_empty() {
            // A read-modify-write needs the gate to itself: finish this batch's page ops first
            // (the caller holds nothing else from this store, see `BlockStore::submit`).
            out = out
                .into_iter()
                .map(|p| StorePending::ready(p.wait()))
                .collect();
            for i in partial {
                if let StoreOp::Write { offset, data } = ops[i] {
                    let r = self.write_span(offset, data.len() as u64, Some(data));
                    out[i] = StorePending::ready(r.map(|()| Vec::new()));
                }
            }
        }
        out
    }

    fn release(&self) -> Result<u64, StoreError> {
        // Remote memory holds the guest's swap, which dies with the device.
        self.pages
            .release_all()
            .map(|pages| pages * PAGE)
            .map_err(remote("release"))
    }

    fn supports_discard(&self) -> bool {
        true
    }

    fn discard(&self, offset: u64, len: u64) -> Result<(), StoreError> {
        // Discarded bytes read as zeros here, exactly as write-zeroes with unmap.
        self.write_zeroes(offset, len, true)
    }

    fn supports_write_zeroes(&self) -> bool {
        true
    }

    fn write_zeroes(&self, offset: u64, len: u64, _may_unmap: bool) -> Result<(), StoreError> {
        check_write(false, offset, len, self.capacity)?;
        // Whole pages are trimmed (a page never written reads as zeros and costs nothing on
        // the monitor); partial edge pages are zeroed by read-modify-write.
        let full_start = offset.div_ceil(PAGE) * PAGE;
        let full_end = (offset + len) / PAGE * PAGE;
        if full_start >= full_end {
            return self.write_span(offset, len, None);
        }
        self.write_span(offset, full_start - offset, None)?;
        {
            let _t = self.gate.shared();
            self.pages
                .trim_pages(full_start / PAGE, (full_end - full_start) / PAGE)
                .map_err(remote("page trim"))?;
            self.wrote()?;
        }
        self.write_span(full_end, offset + len - full_end, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    /// Pages in a vector; fails every call while `fail` is set.
    struct FakePages {
        bytes: Mutex<Vec<u8>>,
        fail: AtomicBool,
        trims: Mutex<Vec<(u64, u64)>>,
        /// The size of every batch submitted.
        batches: Mutex<Vec<usize>>,
    }

    impl FakePages {
        fn new(pages: u64) -> Self {
            Self {
                bytes: Mutex::new(vec![0; (pages * PAGE) as usize]),
                fail: AtomicBool::new(false),
                trims: Mutex::new(Vec::new()),
                batches: Mutex::new(Vec::new()),
            }
        }

        fn check(&self) -> Result<(), CallError> {
            if self.fail.load(Ordering::SeqCst) {
                Err(CallError::Invalid("the monitor is gone".into()))
            } else {
                Ok(())
            }
        }
    }

    /// Runs page ops one by one with `read` and `write`, as a synchronous fake monitor.
    fn run_pages(
        ops: &[PageOp<'_>],
        read: impl Fn(u64, u64) -> Result<Vec<u8>, CallError>,
        write: impl Fn(u64, &[u8]) -> Result<(), CallError>,
    ) -> Vec<PageWait> {
        ops.iter()
            .map(|op| {
                PageWait::ready(match *op {
                    PageOp::Read { start, count } => read(start, count),
                    PageOp::Write { start, data } => write(start, data).map(|()| Vec::new()),
                })
            })
            .collect()
    }

    impl PageAccess for FakePages {
        fn submit_pages(&self, ops: &[PageOp<'_>]) -> Vec<PageWait> {
            self.batches.lock().expect("lock").push(ops.len());
            run_pages(
                ops,
                |s, c| self.read_pages(s, c),
                |s, d| self.write_pages(s, d),
            )
        }

        fn trim_pages(&self, start: u64, count: u64) -> Result<(), CallError> {
            self.check()?;
            self.trims.lock().expect("lock").push((start, count));
            let mut b = self.bytes.lock().expect("lock");
            b[(start * PAGE) as usize..((start + count) * PAGE) as usize].fill(0);
            Ok(())
        }

        fn release_all(&self) -> Result<u64, CallError> {
            self.check()?;
            let mut b = self.bytes.lock().expect("lock");
            let stored = b
                .chunks(PAGE as usize)
                .filter(|p| p.iter().any(|&x| x != 0));
            let n = stored.count() as u64;
            b.fill(0);
            Ok(n)
        }
    }

    impl FakePages {
        fn read_pages(&self, start: u64, count: u64) -> Result<Vec<u8>, CallError> {
            self.check()?;
            let b = self.bytes.lock().expect("lock");
            Ok(b[(start * PAGE) as usize..((start + count) * PAGE) as usize].to_vec())
        }

        fn write_pages(&self, start: u64, data: &[u8]) -> Result<(), CallError> {
            self.check()?;
            assert_eq!(
                data.len() % PAGE_SIZE,
                0,
                "only whole pages reach the monitor"
            );
            let mut b = self.bytes.lock().expect("lock");
            let at = (start * PAGE) as usize;
            b[at..at + data.len()].copy_from_slice(data);
            Ok(())
        }
    }

    fn store(pages: u64) -> RemoteMemoryStore<FakePages> {
        RemoteMemoryStore::new(FakePages::new(pages), pages * PAGE)
    }

    #[test]
    fn describes_itself() {
        let s = RemoteMemoryStore::new(FakePages::new(4), 4 * PAGE + 1000);
        assert_eq!(s.capacity(), 4 * PAGE);
        assert_eq!(s.block_size(), 4096);
        assert_eq!(s.serial(), "lego-remote-memory");
        assert!(s.supports_discard() && s.supports_write_zeroes() && !s.read_only());
    }

    #[test]
    fn release_gives_every_page_back() {
        let s = store(4);
        s.write_at(0, &[7u8; 512]).expect("partial write");
        s.write_at(2 * PAGE, &[8u8; PAGE_SIZE]).expect("page write");
        assert_eq!(s.release().expect("release"), 2 * PAGE);
        let mut all = vec![1u8; 4 * PAGE_SIZE];
        s.read_at(0, &mut all).expect("read");
        assert!(all.iter().all(|&b| b == 0), "released pages read as zeros");
    }

    #[test]
    fn whole_and_partial_pages_round_trip() {
        let s = store(4);
        let page: Vec<u8> = (0..PAGE_SIZE).map(|i| (i % 253) as u8).collect();
        s.write_at(PAGE, &page).expect("aligned write");
        s.write_at(512, &[9u8; 1024]).expect("partial write");
        s.write_at(3 * PAGE - 512, &[5u8; 1024])
            .expect("write across pages");
        let mut all = vec![0u8; (4 * PAGE) as usize];
        s.read_at(0, &mut all).expect("read");
        assert!(all[..512].iter().all(|&b| b == 0));
        assert!(all[512..1536].iter().all(|&b| b == 9));
        assert!(all[1536..4096].iter().all(|&b| b == 0));
        assert_eq!(&all[4096..8192], &page[..]);
        assert!(all[3 * 4096 - 512..3 * 4096 + 512].iter().all(|&b| b == 5));
        let mut mid = vec![0u8; 512];
        s.read_at(PAGE + 512, &mut mid).expect("partial read");
        assert_eq!(&mid[..], &page[512..1024]);
    }

    #[test]
    fn write_zeroes_trims_whole_pages_and_zeroes_edges() {
        let s = store(4);
        s.write_at(0, &vec![0xEE; (4 * PAGE) as usize])
            .expect("fill");
        s.write_zeroes(PAGE - 512, 2 * PAGE + 1024, false)
            .expect("zero");
        assert_eq!(*s.pages.trims.lock().expect("lock"), vec![(1, 2)]);
        let mut all = vec![0u8; (4 * PAGE) as usize];
        s.read_at(0, &mut all).expect("read");
        for (i, b) in all.iter().enumerate() {
            let zero = (4096 - 512..3 * 4096 + 512).contains(&i);
            assert_eq!(*b, if zero { 0 } else { 0xEE }, "byte {i}");
        }
        s.discard(0, 512).expect("sub-page discard");
        s.read_at(0, &mut all[..512]).expect("read");
        assert!(all[..512].iter().all(|&b| b == 0));
    }

    /// A monitor that answers every read with one page too few.
    struct ShortPages;

    impl PageAccess for ShortPages {
        fn submit_pages(&self, ops: &[PageOp<'_>]) -> Vec<PageWait> {
            run_pages(
                ops,
                |_, count| Ok(vec![0; ((count - 1) * PAGE) as usize]),
                |_, _| Ok(()),
            )
        }
        fn trim_pages(&self, _start: u64, _count: u64) -> Result<(), CallError> {
            Ok(())
        }
        fn release_all(&self) -> Result<u64, CallError> {
            Ok(0)
        }
    }

    #[test]
    fn short_answers_are_errors_not_panics() {
        let s = RemoteMemoryStore::new(ShortPages, 4 * PAGE);
        let mut buf = vec![0u8; 4096];
        assert!(s.read_at(0, &mut buf).is_err());
        assert!(s.write_at(512, &buf[..512]).is_err());
    }

    #[test]
    fn monitor_failures_and_bad_ranges_are_errors() {
        let s = store(2);
        let mut buf = vec![0u8; 512];
        assert!(s.read_at(2 * PAGE, &mut buf).is_err());
        assert!(s.write_at(100, &buf).is_err());
        s.pages.fail.store(true, Ordering::SeqCst);
        let e = s.read_at(0, &mut buf).expect_err("monitor down");
        assert!(e.to_string().contains("monitor"), "{e}");
        assert!(s.write_at(0, &buf).is_err());
        assert!(s.write_zeroes(0, PAGE, true).is_err());
        s.flush().expect("flush has nothing to do");
    }

    #[test]
    fn a_batch_goes_out_at_once_and_partial_writes_follow_it() {
        let s = store(8);
        let a = vec![0xAAu8; PAGE_SIZE];
        let b = vec![0xBBu8; 2 * PAGE_SIZE];
        let part = [0xCCu8; 512];
        let ops = [
            StoreOp::Write {
                offset: 0,
                data: &a,
            },
            StoreOp::Write {
                offset: 2 * PAGE,
                data: &b,
            },
            StoreOp::Write {
                offset: 5 * PAGE + 512,
                data: &part,
            },
            StoreOp::Read {
                offset: 6 * PAGE,
                len: 512,
            },
            // Outside the device: fails alone.
            StoreOp::Read {
                offset: 8 * PAGE,
                len: 4096,
            },
        ];
        let done: Vec<_> = s.submit(&ops).into_iter().map(Later::wait).collect();
        assert_eq!(done.len(), 5);
        assert!(done[..4].iter().all(Result::is_ok), "{done:?}");
        assert!(matches!(done[4], Err(StoreError::OutOfRange { .. })));
        assert_eq!(done[3].as_ref().expect("read").len(), 512);
        // Whole pages and the read in one batch; then the read-modify-write (read + write).
        assert_eq!(*s.pages.batches.lock().expect("lock"), vec![3, 1, 1]);
        let reads = s.submit(&[
            StoreOp::Read {
                offset: 0,
                len: 4 * PAGE_SIZE,
            },
            StoreOp::Read {
                offset: 5 * PAGE,
                len: PAGE_SIZE,
            },
        ]);
        let mut reads = reads.into_iter().map(|p| p.wait().expect("read"));
        let first = reads.next().expect("first");
        assert_eq!(&first[..PAGE_SIZE], &a[..]);
        assert!(first[PAGE_SIZE..2 * PAGE_SIZE].iter().all(|&x| x == 0));
        assert_eq!(&first[2 * PAGE_SIZE..], &b[..]);
        let fifth = reads.next().expect("second");
        assert!(fifth[..512].iter().all(|&x| x == 0));
        assert_eq!(&fifth[512..1024], &part[..]);
        assert!(fifth[1024..].iter().all(|&x| x == 0));
    }

    #[test]
    fn monitor_failures_fail_only_their_ops() {
        let s = store(2);
        s.pages.fail.store(true, Ordering::SeqCst);
        let ops = [
            StoreOp::Read {
                offset: 0,
                len: 4096,
            },
            StoreOp::Read { offset: 0, len: 0 },
        ];
        let done: Vec<_> = s.submit(&ops).into_iter().map(Later::wait).collect();
        assert!(matches!(done[0], Err(StoreError::Remote { .. })));
        assert_eq!(done[1].as_ref().expect("empty read"), &Vec::<u8>::new());
    }
}
