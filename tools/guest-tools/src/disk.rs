//! Writing and verifying the block pattern on a disk (a block device in the guest, a
//! plain file on the host).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::pattern::{self, BLOCK_SIZE};

/// Blocks moved per read or write call.
const CHUNK_BLOCKS: u64 = 64;

/// Errors from disk pattern commands.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The device or file could not be opened.
    #[error("could not open {path}")]
    Open {
        /// The path.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Writing, reading or syncing failed.
    #[error("could not {action} {path} at block {block}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The first block of the failed request.
        block: u64,
        /// The underlying error.
        source: io::Error,
    },
}

/// The result of a successful write or verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskReport {
    /// Blocks written or verified.
    pub blocks: u64,
    /// CRC32C over all blocks in order (equal to [`pattern::crc`]).
    pub crc: u32,
}

/// The outcome of a verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Every block matched.
    Ok(DiskReport),
    /// Some blocks differed or were missing (the disk is shorter).
    Bad {
        /// The first bad block.
        first_bad: u64,
        /// How many blocks were bad.
        bad_blocks: u64,
        /// Blocks checked.
        blocks: u64,
    },
}

/// Writes `blocks` pattern blocks under `seed` from the start of `path`, then fsyncs.
pub fn write_pattern(path: &Path, seed: u64, blocks: u64) -> Result<DiskReport, DiskError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|source| DiskError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    let mut buf = vec![0u8; BLOCK_SIZE * CHUNK_BLOCKS as usize];
    let mut crc = 0u32;
    let mut block = 0;
    while block < blocks {
        let n = (blocks - block).min(CHUNK_BLOCKS);
        let bytes = &mut buf[..n as usize * BLOCK_SIZE];
        for (i, b) in bytes.chunks_mut(BLOCK_SIZE).enumerate() {
            pattern::fill_block(seed, block + i as u64, b);
        }
        crc = crc32c::crc32c_append(crc, bytes);
        file.write_all(bytes).map_err(|source| DiskError::Io {
            action: "write",
            path: path.to_path_buf(),
            block,
            source,
        })?;
        block += n;
    }
    file.sync_all().map_err(|source| DiskError::Io {
        action: "fsync",
        path: path.to_path_buf(),
        block,
        source,
    })?;
    Ok(DiskReport { blocks, crc })
}

/// Asks the kernel to drop cached pages of `file`, so the verify reads the device.
fn drop_cache(file: &File) {
    // SAFETY: posix_fadvise only takes a valid descriptor owned by `file` and plain
    // integers; it reads or writes no memory of ours. Failure only means a cached read.
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
    }
}

/// Reads as much of `buf` as the file holds; returns the bytes read.
fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Verifies the first `blocks` blocks of `path` against the pattern under `seed`.
pub fn verify_pattern(path: &Path, seed: u64, blocks: u64) -> Result<Verify, DiskError> {
    let mut file = File::open(path).map_err(|source| DiskError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    drop_cache(&file);
    let mut buf = vec![0u8; BLOCK_SIZE * CHUNK_BLOCKS as usize];
    let mut crc = 0u32;
    let mut first_bad = None;
    let mut bad_blocks = 0;
    let mut block = 0;
    while block < blocks {
        let n = (blocks - block).min(CHUNK_BLOCKS);
        let bytes = &mut buf[..n as usize * BLOCK_SIZE];
        let got = read_full(&mut file, bytes).map_err(|source| DiskError::Io {
            action: "read",
            path: path.to_path_buf(),
            block,
            source,
        })?;
        crc = crc32c::crc32c_append(crc, &bytes[..got]);
        for (i, b) in bytes.chunks(BLOCK_SIZE).enumerate() {
            let end = (i + 1) * BLOCK_SIZE;
            let this = block + i as u64;
            if end > got || !pattern::check_block(seed, this, b) {
                first_bad.get_or_insert(this);
                bad_blocks += 1;
            }
        }
        block += n;
    }
    Ok(match first_bad {
        None => Verify::Ok(DiskReport { blocks, crc }),
        Some(first_bad) => Verify::Bad {
            first_bad,
            bad_blocks,
            blocks,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom};

    #[test]
    fn write_then_verify_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk.img");
        let w = write_pattern(&disk, 11, 100).unwrap();
        assert_eq!(w.blocks, 100);
        assert_eq!(w.crc, pattern::crc(11, 100));
        assert_eq!(std::fs::metadata(&disk).unwrap().len(), 100 * 4096);
        assert_eq!(verify_pattern(&disk, 11, 100).unwrap(), Verify::Ok(w));
        // A prefix verifies too.
        assert!(matches!(
            verify_pattern(&disk, 11, 10).unwrap(),
            Verify::Ok(_)
        ));
    }

    #[test]
    fn verify_reports_wrong_seed_corruption_and_short_disk() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk.img");
        write_pattern(&disk, 1, 80).unwrap();
        assert!(matches!(
            verify_pattern(&disk, 2, 80).unwrap(),
            Verify::Bad {
                first_bad: 0,
                bad_blocks: 80,
                ..
            }
        ));
        let mut f = OpenOptions::new().write(true).open(&disk).unwrap();
        f.seek(SeekFrom::Start(70 * 4096 + 17)).unwrap();
        f.write_all(b"x").unwrap();
        drop(f);
        assert_eq!(
            verify_pattern(&disk, 1, 80).unwrap(),
            Verify::Bad {
                first_bad: 70,
                bad_blocks: 1,
                blocks: 80
            }
        );
        assert_eq!(
            verify_pattern(&disk, 1, 90).unwrap(),
            Verify::Bad {
                first_bad: 70,
                bad_blocks: 11,
                blocks: 90
            }
        );
    }

    #[test]
    fn missing_disk_is_an_error() {
        assert!(matches!(
            verify_pattern(Path::new("/nonexistent/disk"), 1, 1),
            Err(DiskError::Open { .. })
        ));
    }
}
