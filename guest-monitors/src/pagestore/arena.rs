//! Page-frame arena: 4 KiB frames carved from 2 MiB anonymous mappings.
//!
//! One `Box<[u8; 4096]>` per page costs a malloc header and call per page and fragments the heap;
//! the arena hands out frames by a `u32` slot number, keeps freed slots on a free list, and gives
//! their memory back to the kernel with `madvise(MADV_DONTNEED)` so a trimmed page costs nothing
//! resident. Fresh mappings are lazily zero-filled by the kernel.

use std::ptr::NonNull;

use crate::pagestore::PAGE_SIZE;

/// Frames per chunk (2 MiB chunks).
pub const CHUNK_FRAMES: usize = 512;
const CHUNK_BYTES: usize = CHUNK_FRAMES * PAGE_SIZE;

/// Errors from the arena.
#[derive(Debug, thiserror::Error)]
pub enum ArenaError {
    /// The kernel refused a new mapping.
    #[error("could not map {CHUNK_BYTES} bytes of page frames")]
    Map(#[source] std::io::Error),
    /// The slot space of this arena is exhausted.
    #[error("the page arena has no free slot numbers left")]
    SlotsExhausted,
}

/// One 2 MiB anonymous private mapping.
struct Chunk {
    ptr: NonNull<u8>,
}

// SAFETY: the mapping is plain memory owned exclusively by this Chunk; moving it between threads is
// fine, and all access goes through &self/&mut self of the owning Arena (behind a shard lock).
unsafe impl Send for Chunk {}

impl Chunk {
    fn new() -> Result<Self, ArenaError> {
        // SAFETY: anonymous private mapping with no address hint; the result is checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                CHUNK_BYTES,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(ArenaError::Map(std::io::Error::last_os_error()));
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or(ArenaError::Map(std::io::Error::other(
            "mmap returned a null pointer",
        )))?;
        Ok(Self { ptr })
    }

    fn frame(&self, i: usize) -> &[u8] {
        debug_assert!(i < CHUNK_FRAMES);
        // SAFETY: i < CHUNK_FRAMES so the range lies inside the live CHUNK_BYTES mapping; the
        // returned borrow is tied to &self so the mapping outlives it.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(i * PAGE_SIZE), PAGE_SIZE) }
    }

    fn frame_mut(&mut self, i: usize) -> &mut [u8] {
        debug_assert!(i < CHUNK_FRAMES);
        // SAFETY: as in `frame`, and &mut self guarantees exclusive access to the mapping.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(i * PAGE_SIZE), PAGE_SIZE) }
    }

    /// Drops the physical memory behind frames `first..first+n` (they read as zeros afterwards).
    fn discard(&mut self, first: usize, n: usize) {
        debug_assert!(first + n <= CHUNK_FRAMES);
        // SAFETY: the range is inside this chunk's mapping; MADV_DONTNEED on private anonymous
        // memory only replaces the contents with zero pages and no borrow of them is live (&mut).
        let rc = unsafe {
            libc::madvise(
                self.ptr.as_ptr().add(first * PAGE_SIZE).cast(),
                n * PAGE_SIZE,
                libc::MADV_DONTNEED,
            )
        };
        if rc != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "madvise(MADV_DONTNEED) failed");
        }
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        // SAFETY: ptr/CHUNK_BYTES is exactly the mapping created in `new`, unmapped once here.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), CHUNK_BYTES);
        }
    }
}

/// A growable set of page frames addressed by slot number.
#[derive(Default)]
pub struct Arena {
    chunks: Vec<Chunk>,
    free: Vec<u32>,
    /// Slots ever handed out from the chunk tail (slots below this are in use or on `free`).
    high_water: u32,
}

impl Arena {
    /// An empty arena (maps nothing until the first allocation).
    pub fn new() -> Self {
        Self::default()
    }

    /// Allocates a frame; its content is unspecified (callers overwrite all of it).
    pub fn alloc(&mut self) -> Result<u32, ArenaError> {
        if let Some(s) = self.free.pop() {
            return Ok(s);
        }
        let slot = self.high_water;
        if slot as usize == self.chunks.len() * CHUNK_FRAMES {
            if slot.checked_add(CHUNK_FRAMES as u32).is_none() {
                return Err(ArenaError::SlotsExhausted);
            }
            self.chunks.push(Chunk::new()?);
        }
        self.high_water += 1;
        Ok(slot)
    }

    /// The frame of a slot.
    pub fn get(&self, slot: u32) -> &[u8] {
        let s = slot as usize;
        self.chunks[s / CHUNK_FRAMES].frame(s % CHUNK_FRAMES)
    }

    /// The frame of a slot, writable.
    pub fn get_mut(&mut self, slot: u32) -> &mut [u8] {
        let s = slot as usize;
        self.chunks[s / CHUNK_FRAMES].frame_mut(s % CHUNK_FRAMES)
    }

    /// Returns slots to the free list and their memory to the kernel (runs coalesced).
    pub fn release(&mut self, mut slots: Vec<u32>) {
        if slots.is_empty() {
            return;
        }
        slots.sort_unstable();
        let mut i = 0;
        while i < slots.len() {
            let start = slots[i] as usize;
            let chunk = start / CHUNK_FRAMES;
            let mut end = start + 1;
            let mut j = i + 1;
            while j < slots.len() && slots[j] as usize == end && !end.is_multiple_of(CHUNK_FRAMES) {
                end += 1;
                j += 1;
            }
            self.chunks[chunk].discard(start % CHUNK_FRAMES, end - start);
            i = j;
        }
        self.free.extend_from_slice(&slots);
    }

    /// Bytes of address space mapped for frames (an upper bound on resident memory).
    pub fn mapped_bytes(&self) -> u64 {
        (self.chunks.len() * CHUNK_BYTES) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_reuse_and_discard() {
        let mut a = Arena::new();
        let s: Vec<u32> = (0..600).map(|_| a.alloc().expect("alloc")).collect();
        assert_eq!(a.mapped_bytes(), 2 * CHUNK_BYTES as u64);
        a.get_mut(s[3]).fill(7);
        assert!(a.get(s[3]).iter().all(|&b| b == 7));
        a.release(vec![s[3], s[4], s[5], s[599]]);
        assert!(
            a.get(s[3]).iter().all(|&b| b == 0),
            "discarded frame reads zero"
        );
        let again = a.alloc().expect("alloc");
        assert!([s[3], s[4], s[5], s[599]].contains(&again));
    }
}
