//! A memory test: map N MiB, write a per-page pattern to every page, then verify every
//! page. Used with remote-memory swap, where most pages travel to a memory monitor and back.

use std::time::{Duration, Instant};

/// The page size the test assumes (x86-64).
pub const PAGE_SIZE: usize = 4096;
const WORDS_PER_PAGE: usize = PAGE_SIZE / 8;

/// Errors from the memory test.
#[derive(Debug, thiserror::Error)]
pub enum MemtestError {
    /// The size is zero or does not fit in the address space.
    #[error("cannot test {0} MiB; give a size between 1 MiB and the address space")]
    BadSize(u64),
    /// The anonymous mapping could not be created.
    #[error("could not map {mib} MiB of memory")]
    Map {
        /// The size asked for.
        mib: u64,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// What the test found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemtestReport {
    /// Pages tested.
    pub pages: u64,
    /// Pages whose contents did not match.
    pub bad: u64,
    /// The first bad page, if any.
    pub first_bad: Option<u64>,
    /// Time spent writing every page.
    pub write: Duration,
    /// Time spent verifying every page.
    pub verify: Duration,
}

/// A private anonymous mapping, unmapped on drop.
struct Mapping {
    ptr: *mut u64,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> std::io::Result<Self> {
        // SAFETY: an anonymous private mapping with a null hint creates fresh memory and
        // touches nothing existing; the result is checked against MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self {
            ptr: ptr.cast(),
            len,
        })
    }

    fn words(&mut self) -> &mut [u64] {
        // SAFETY: `ptr` is a live, page-aligned (so u64-aligned), readable and writable
        // mapping of `len` bytes owned by `self`, and the &mut borrow of self makes this the
        // only reference to it.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len / 8) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe exactly the mapping created in `new`, and no
        // reference into it outlives `self`.
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

/// The first word of page `page`; the other words add a per-word step.
fn page_base(seed: u64, page: u64) -> u64 {
    let mut z =
        (seed ^ page.wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_add(0x632B_E59B_D9B4_E019);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The expected value of word `word` of page `page`.
fn expected(base: u64, word: usize) -> u64 {
    base.wrapping_add((word as u64).wrapping_mul(0xA076_1D64_78BD_642F))
}

/// Writes the pattern of every page in `words` (page numbers start at 0).
fn write_pages(words: &mut [u64], seed: u64) {
    for (page, chunk) in words.chunks_mut(WORDS_PER_PAGE).enumerate() {
        let base = page_base(seed, page as u64);
        for (w, slot) in chunk.iter_mut().enumerate() {
            *slot = expected(base, w);
        }
    }
}

/// Checks every page; returns (bad pages, first bad page).
fn verify_pages(words: &[u64], seed: u64) -> (u64, Option<u64>) {
    let mut bad = 0;
    let mut first = None;
    for (page, chunk) in words.chunks(WORDS_PER_PAGE).enumerate() {
        let base = page_base(seed, page as u64);
        if chunk
            .iter()
            .enumerate()
            .any(|(w, &v)| v != expected(base, w))
        {
            bad += 1;
            first.get_or_insert(page as u64);
        }
    }
    (bad, first)
}

/// Runs the test over `mib` MiB with the given seed.
pub fn run(mib: u64, seed: u64) -> Result<MemtestReport, MemtestError> {
    let len = mib
        .checked_mul(1 << 20)
        .and_then(|b| usize::try_from(b).ok())
        .filter(|&b| b > 0 && b <= isize::MAX as usize)
        .ok_or(MemtestError::BadSize(mib))?;
    let mut map = Mapping::new(len).map_err(|source| MemtestError::Map { mib, source })?;
    let words = map.words();
    let t0 = Instant::now();
    write_pages(words, seed);
    let write = t0.elapsed();
    let t1 = Instant::now();
    let (bad, first_bad) = verify_pages(words, seed);
    let verify = t1.elapsed();
    Ok(MemtestReport {
        pages: (len / PAGE_SIZE) as u64,
        bad,
        first_bad,
        write,
        verify,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_run_is_clean() {
        let r = run(4, 1).unwrap();
        assert_eq!(r.pages, 1024);
        assert_eq!(r.bad, 0);
        assert_eq!(r.first_bad, None);
    }

    #[test]
    fn verify_finds_corrupted_pages() {
        let mut words = vec![0u64; WORDS_PER_PAGE * 8];
        write_pages(&mut words, 5);
        assert_eq!(verify_pages(&words, 5), (0, None));
        words[WORDS_PER_PAGE * 3 + 100] ^= 1 << 17;
        words[WORDS_PER_PAGE * 6] = 0;
        assert_eq!(verify_pages(&words, 5), (2, Some(3)));
        assert_eq!(verify_pages(&words, 6).0, 8);
        // A page holding another page's contents is bad.
        let mut w2 = vec![0u64; WORDS_PER_PAGE * 2];
        write_pages(&mut w2, 5);
        let (a, b) = w2.split_at_mut(WORDS_PER_PAGE);
        b.copy_from_slice(a);
        assert_eq!(verify_pages(&w2, 5), (1, Some(1)));
    }

    #[test]
    fn bad_sizes_are_rejected() {
        assert!(matches!(run(0, 1), Err(MemtestError::BadSize(0))));
        assert!(matches!(run(u64::MAX, 1), Err(MemtestError::BadSize(_))));
    }
}
