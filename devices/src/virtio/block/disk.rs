//! The local file (or block device) behind a virtio-blk device.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use vm_memory::bitmap::BitmapSlice;
use vm_memory::VolatileSlice;

/// The size of a virtio-blk sector.
pub const SECTOR_SIZE: u64 = 512;
/// The length of the device id string GET_ID returns.
pub const ID_BYTES: usize = 20;

/// Errors opening a disk.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The file could not be opened.
    #[error("could not open the disk {path}: {source}")]
    Open {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The file's size could not be determined.
    #[error("could not find the size of the disk {path}: {source}")]
    Size {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// An open disk image with its geometry and identity.
#[derive(Debug)]
pub struct Disk {
    file: File,
    capacity: u64,
    read_only: bool,
    id: [u8; ID_BYTES],
}

impl Disk {
    /// Opens `path`, read-only if `read_only`; `id` (at most 20 bytes are kept) is
    /// what GET_ID returns and what the guest shows as the disk's serial.
    pub fn open(path: &Path, read_only: bool, id: &str) -> Result<Self, DiskError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| DiskError::Open {
                path: path.to_owned(),
                source,
            })?;
        // Seeking to the end works for regular files and block devices alike.
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(|source| DiskError::Size {
                path: path.to_owned(),
                source,
            })?;
        if size % SECTOR_SIZE != 0 {
            tracing::warn!(
                "the disk {} is {size} bytes, not a multiple of {SECTOR_SIZE}: the tail is not visible to the guest",
                path.display()
            );
        }
        let mut id_bytes = [0u8; ID_BYTES];
        let n = id.len().min(ID_BYTES);
        id_bytes[..n].copy_from_slice(&id.as_bytes()[..n]);
        Ok(Self {
            file,
            capacity: size / SECTOR_SIZE,
            read_only,
            id: id_bytes,
        })
    }

    /// The capacity in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.capacity
    }

    /// Whether the guest may only read.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The 20-byte id (NUL padded).
    pub fn id(&self) -> &[u8; ID_BYTES] {
        &self.id
    }

    /// Whether `len` bytes from sector `sector` lie inside the disk.
    pub fn in_range(&self, sector: u64, len: u64) -> bool {
        sector
            .checked_mul(SECTOR_SIZE)
            .and_then(|start| start.checked_add(len))
            .is_some_and(|end| end <= self.capacity * SECTOR_SIZE)
    }

    /// Reads exactly `slice.len()` bytes at byte `offset` into guest memory.
    pub fn read_into<B: BitmapSlice>(
        &self,
        slice: &VolatileSlice<B>,
        offset: u64,
    ) -> io::Result<()> {
        let guard = slice.ptr_guard_mut();
        let base = guard.as_ptr();
        let len = slice.len();
        let mut done = 0usize;
        while done < len {
            let pos = offset_at(offset, done)?;
            // SAFETY: `base..base + len` is a live mapping of guest memory borrowed
            // through `slice` for the duration of this call; the kernel writes at most
            // `len - done` bytes starting `done` bytes into it.
            let n = unsafe {
                libc::pread(
                    self.file.as_raw_fd(),
                    base.add(done).cast(),
                    len - done,
                    pos,
                )
            };
            done += check_io(n)?;
        }
        slice.bitmap().mark_dirty(0, len);
        Ok(())
    }

    /// Writes all of `slice` (guest memory) at byte `offset`.
    pub fn write_from<B: BitmapSlice>(
        &self,
        slice: &VolatileSlice<B>,
        offset: u64,
    ) -> io::Result<()> {
        let guard = slice.ptr_guard();
        let base = guard.as_ptr();
        let len = slice.len();
        let mut done = 0usize;
        while done < len {
            let pos = offset_at(offset, done)?;
            // SAFETY: `base..base + len` is a live mapping of guest memory borrowed
            // through `slice` for the duration of this call; the kernel only reads
            // `len - done` bytes starting `done` bytes into it.
            let n = unsafe {
                libc::pwrite(
                    self.file.as_raw_fd(),
                    base.add(done).cast(),
                    len - done,
                    pos,
                )
            };
            done += check_io(n)?;
        }
        Ok(())
    }

    /// Makes written data durable (fdatasync).
    pub fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

fn offset_at(offset: u64, done: usize) -> io::Result<libc::off_t> {
    offset
        .checked_add(done as u64)
        .and_then(|o| libc::off_t::try_from(o).ok())
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))
}

/// Turns a pread/pwrite result into a byte count; zero counts as an error (end of file).
fn check_io(n: isize) -> io::Result<usize> {
    match n {
        n if n > 0 => Ok(n as usize),
        0 => Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
        _ => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                Ok(0)
            } else {
                Err(e)
            }
        }
    }
}
