//! [`RemoteMemoryStore`]: a vNode's remote memory (vRegions on memory monitors) as a block
//! device, typically used by the guest as swap.
//!
//! Monitors hold 4 KiB pages, so the device advertises a 4 KiB block size; a request that is
//! not page aligned (a guest may still send one) is served by read-modify-write of its edge
//! pages. Such writes take an exclusive lock so that two sub-page writes to one page from
//! different queues cannot lose each other's bytes; whole-page writes share the lock.

use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use lego_monitors::client::{CallError, VnodeMemory};
use lego_monitors::proto::memory::PAGE_SIZE;

use super::{check_range, check_write, BlockStore, StoreError};

const PAGE: u64 = PAGE_SIZE as u64;

/// The serial of every remote memory device.
pub const SERIAL: &str = "lego-remote-memory";

/// Page access to remote memory; implemented by [`VnodeMemory`] (and by fakes in tests).
pub trait PageAccess: Send + Sync {
    /// Reads `count` pages from page `start`.
    fn read_pages(&self, start: u64, count: u64) -> Result<Vec<u8>, CallError>;
    /// Writes whole pages from page `start`.
    fn write_pages(&self, start: u64, data: &[u8]) -> Result<(), CallError>;
    /// Frees `count` pages from `start` (they read as zeros afterwards).
    fn trim_pages(&self, start: u64, count: u64) -> Result<(), CallError>;
}

impl PageAccess for VnodeMemory {
    fn read_pages(&self, start: u64, count: u64) -> Result<Vec<u8>, CallError> {
        self.read_run(start, count)
    }

    fn write_pages(&self, start: u64, data: &[u8]) -> Result<(), CallError> {
        self.write_run(start, data)
    }

    fn trim_pages(&self, start: u64, count: u64) -> Result<(), CallError> {
        self.trim(start, count).map(|_| ())
    }
}

/// Remote memory as a block device of `capacity` bytes.
pub struct RemoteMemoryStore<P: PageAccess = VnodeMemory> {
    pages: P,
    capacity: u64,
    rmw: RwLock<()>,
}

fn remote(op: &'static str) -> impl FnOnce(CallError) -> StoreError {
    move |source| StoreError::Remote { op, source }
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
            )),
        })
    }
}

impl<P: PageAccess> RemoteMemoryStore<P> {
    /// Serves the first `capacity` bytes (rounded down to whole pages) of `pages`.
    pub fn new(pages: P, capacity: u64) -> Self {
        Self {
            pages,
            capacity: capacity - capacity % PAGE,
            rmw: RwLock::new(()),
        }
    }

    fn shared(&self) -> RwLockReadGuard<'_, ()> {
        // The lock guards no data, so a poisoned lock is as good as a healthy one.
        self.rmw.read().unwrap_or_else(|e| e.into_inner())
    }

    fn exclusive(&self) -> RwLockWriteGuard<'_, ()> {
        self.rmw.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes bytes at any sector-aligned offset: whole pages directly, partial edge pages
    /// by read-modify-write. `data` of `None` means zeros.
    fn write_span(&self, offset: u64, len: u64, data: Option<&[u8]>) -> Result<(), StoreError> {
        if len == 0 {
            return Ok(());
        }
        let first = offset / PAGE;
        let end = (offset + len).div_ceil(PAGE);
        let aligned = offset.is_multiple_of(PAGE) && len.is_multiple_of(PAGE);
        if aligned {
            let _g = self.shared();
            return match data {
                Some(d) => self
                    .pages
                    .write_pages(first, d)
                    .map_err(remote("page write")),
                None => self
                    .pages
                    .write_pages(first, &vec![0u8; len as usize])
                    .map_err(remote("page write")),
            };
        }
        let _g = self.exclusive();
        let mut buf = self
            .pages
            .read_pages(first, end - first)
            .map_err(remote("page read for a partial write"))?;
        expect_len(&buf, end - first, "page read for a partial write")?;
        let at = (offset - first * PAGE) as usize;
        let dst = &mut buf[at..at + len as usize];
        match data {
            Some(d) => dst.copy_from_slice(d),
            None => dst.fill(0),
        }
        self.pages
            .write_pages(first, &buf)
            .map_err(remote("page write"))
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
        let len = buf.len() as u64;
        check_range(offset, len, self.capacity)?;
        if len == 0 {
            return Ok(());
        }
        let first = offset / PAGE;
        let end = (offset + len).div_ceil(PAGE);
        let pages = self
            .pages
            .read_pages(first, end - first)
            .map_err(remote("page read"))?;
        let at = (offset - first * PAGE) as usize;
        let src = expect_len(&pages, end - first, "page read")?;
        buf.copy_from_slice(&src[at..at + buf.len()]);
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
            let _g = self.shared();
            self.pages
                .trim_pages(full_start / PAGE, (full_end - full_start) / PAGE)
                .map_err(remote("page trim"))?;
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
    }

    impl FakePages {
        fn new(pages: u64) -> Self {
            Self {
                bytes: Mutex::new(vec![0; (pages * PAGE) as usize]),
                fail: AtomicBool::new(false),
                trims: Mutex::new(Vec::new()),
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

    impl PageAccess for FakePages {
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

        fn trim_pages(&self, start: u64, count: u64) -> Result<(), CallError> {
            self.check()?;
            self.trims.lock().expect("lock").push((start, count));
            let mut b = self.bytes.lock().expect("lock");
            b[(start * PAGE) as usize..((start + count) * PAGE) as usize].fill(0);
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
        fn read_pages(&self, _start: u64, count: u64) -> Result<Vec<u8>, CallError> {
            Ok(vec![0; ((count - 1) * PAGE) as usize])
        }
        fn write_pages(&self, _start: u64, _data: &[u8]) -> Result<(), CallError> {
            Ok(())
        }
        fn trim_pages(&self, _start: u64, _count: u64) -> Result<(), CallError> {
            Ok(())
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
}
