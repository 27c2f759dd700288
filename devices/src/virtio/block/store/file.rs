//! [`FileStore`]: a local file or block device, read and written with `pread`/`pwrite`,
//! flushed with `fdatasync`, discarded and zeroed with `fallocate` where the file system can.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{check_range, check_write, BlockStore, StoreError, SECTOR_SIZE};

/// Largest zero buffer written at once when `fallocate` cannot zero a range.
const ZERO_CHUNK: usize = 1 << 20;

/// Errors from opening a file store.
#[derive(Debug, thiserror::Error)]
pub enum FileStoreError {
    /// The file could not be opened or created.
    #[error("cannot open '{path}'")]
    Open {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file could not be sized.
    #[error("cannot find or set the size of '{path}'")]
    Size {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is smaller than one sector.
    #[error("'{path}' holds {len} bytes, less than one 512-byte sector; give --size to grow it")]
    TooSmall {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: u64,
    },
}

/// How to open a [`FileStore`].
#[derive(Debug, Clone)]
pub struct FileStoreOptions {
    /// The file (or block device).
    pub path: PathBuf,
    /// Open read-only and refuse writes.
    pub read_only: bool,
    /// Create the file if missing and grow it to at least this many bytes.
    pub size: Option<u64>,
}

/// A local file as a block device.
#[derive(Debug)]
pub struct FileStore {
    file: File,
    capacity: u64,
    read_only: bool,
    serial: String,
}

impl FileStore {
    /// Opens (and with `size`, creates or grows) the file.
    pub fn open(opts: &FileStoreOptions) -> Result<Self, FileStoreError> {
        let path = &opts.path;
        let grow = opts.size.filter(|_| !opts.read_only);
        let mut file = OpenOptions::new()
            .read(true)
            .write(!opts.read_only)
            .create(grow.is_some())
            .truncate(false)
            .open(path)
            .map_err(|source| FileStoreError::Open {
                path: path.clone(),
                source,
            })?;
        let size_err = |source| FileStoreError::Size {
            path: path.clone(),
            source,
        };
        // Seeking to the end sizes block devices too, whose metadata length is zero.
        let mut len = file.seek(SeekFrom::End(0)).map_err(size_err)?;
        if let Some(want) = grow {
            if len < want {
                file.set_len(want).map_err(size_err)?;
                len = want;
            }
        }
        let capacity = len - len % SECTOR_SIZE;
        if capacity == 0 {
            return Err(FileStoreError::TooSmall {
                path: path.clone(),
                len,
            });
        }
        if capacity != len {
            tracing::warn!(
                path = %path.display(),
                len,
                capacity,
                "the file is not a whole number of sectors; its tail is not exposed"
            );
        }
        Ok(Self {
            file,
            capacity,
            read_only: opts.read_only,
            serial: serial_for(path),
        })
    }

    /// Answers GET_ID with `serial` instead of `lego-local:<file name>`.
    pub fn with_serial(mut self, serial: impl Into<String>) -> Self {
        self.serial = serial.into();
        self
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> std::io::Result<()> {
        let (Ok(off), Ok(l)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        };
        // SAFETY: fallocate only reads its integer arguments; the fd is owned by `self.file`
        // and stays open for the duration of the call.
        let r = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, off, l) };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    fn write_zero_bytes(&self, offset: u64, len: u64) -> Result<(), StoreError> {
        let zeros = vec![0u8; ZERO_CHUNK.min(len as usize)];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(zeros.len() as u64) as usize;
            self.file
                .write_all_at(&zeros[..n], offset + done)
                .map_err(|source| StoreError::Io {
                    op: "writing zeros",
                    source,
                })?;
            done += n as u64;
        }
        Ok(())
    }
}

/// `lego-local:<file name>`.
fn serial_for(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("lego-local:{name}")
}

/// Whether an `fallocate` failure means "this file system cannot", so a fallback applies.
fn unsupported(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) | Some(libc::ENODEV)
    )
}

impl BlockStore for FileStore {
    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn serial(&self) -> &str {
        &self.serial
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        check_range(offset, buf.len() as u64, self.capacity)?;
        self.file
            .read_exact_at(buf, offset)
            .map_err(|source| StoreError::Io {
                op: "reading the file",
                source,
            })
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        check_write(self.read_only, offset, data.len() as u64, self.capacity)?;
        self.file
            .write_all_at(data, offset)
            .map_err(|source| StoreError::Io {
                op: "writing the file",
                source,
            })
    }

    fn flush(&self) -> Result<(), StoreError> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data().map_err(|source| StoreError::Io {
            op: "fdatasync",
            source,
        })
    }

    fn supports_discard(&self) -> bool {
        !self.read_only
    }

    fn discard(&self, offset: u64, len: u64) -> Result<(), StoreError> {
        check_write(self.read_only, offset, len, self.capacity)?;
        if len == 0 {
            return Ok(());
        }
        match self.fallocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        ) {
            Ok(()) => Ok(()),
            // Block devices and some file systems cannot punch holes: zeroing keeps the
            // "reads as zeros" promise the other stores make.
            Err(e) if unsupported(&e) => self.write_zero_bytes(offset, len),
            Err(source) => Err(StoreError::Io {
                op: "punching a hole",
                source,
            }),
        }
    }

    fn supports_write_zeroes(&self) -> bool {
        !self.read_only
    }

    fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> Result<(), StoreError> {
        check_write(self.read_only, offset, len, self.capacity)?;
        if len == 0 {
            return Ok(());
        }
        let mut modes = vec![libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE];
        if may_unmap {
            modes.push(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE);
        }
        for mode in modes {
            match self.fallocate(mode, offset, len) {
                Ok(()) => return Ok(()),
                Err(e) if unsupported(&e) => continue,
                Err(source) => {
                    return Err(StoreError::Io {
                        op: "zeroing a range",
                        source,
                    })
                }
            }
        }
        self.write_zero_bytes(offset, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path, size: Option<u64>, read_only: bool) -> Result<FileStore, FileStoreError> {
        FileStore::open(&FileStoreOptions {
            path: dir.join("disk.img"),
            read_only,
            size,
        })
    }

    #[test]
    fn creates_grows_and_names_the_file() {
        let d = tempfile::tempdir().expect("tempdir");
        let s = open(d.path(), Some(1 << 20), false).expect("create");
        assert_eq!(s.capacity(), 1 << 20);
        assert_eq!(s.serial(), "lego-local:disk.img");
        assert!(!s.read_only());
        drop(s);
        // An existing larger file keeps its size; a smaller --size never shrinks it.
        let s = open(d.path(), Some(4096), false).expect("reopen");
        assert_eq!(s.capacity(), 1 << 20);
    }

    #[test]
    fn missing_or_tiny_files_are_clear_errors() {
        let d = tempfile::tempdir().expect("tempdir");
        let e = open(d.path(), None, false).expect_err("missing");
        assert!(e.to_string().contains("cannot open"), "{e}");
        std::fs::write(d.path().join("disk.img"), [1u8; 100]).expect("write");
        let e = open(d.path(), None, false).expect_err("tiny");
        assert!(e.to_string().contains("less than one"), "{e}");
    }

    #[test]
    fn odd_sized_files_expose_whole_sectors() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::write(d.path().join("disk.img"), vec![7u8; 1500]).expect("write");
        let s = open(d.path(), None, true).expect("open");
        assert_eq!(s.capacity(), 1024);
    }

    #[test]
    fn write_read_flush_round_trip() {
        let d = tempfile::tempdir().expect("tempdir");
        let s = open(d.path(), Some(64 << 10), false).expect("create");
        let data: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
        s.write_at(8192, &data).expect("write");
        s.flush().expect("flush");
        let mut back = vec![0u8; 4096];
        s.read_at(8192, &mut back).expect("read");
        assert_eq!(back, data);
        let on_disk = std::fs::read(d.path().join("disk.img")).expect("read file");
        assert_eq!(&on_disk[8192..8192 + 4096], &data[..]);
    }

    #[test]
    fn out_of_range_and_misaligned_requests_fail() {
        let d = tempfile::tempdir().expect("tempdir");
        let s = open(d.path(), Some(4096), false).expect("create");
        let mut buf = vec![0u8; 512];
        assert!(matches!(
            s.read_at(4096, &mut buf),
            Err(StoreError::OutOfRange { .. })
        ));
        assert!(s.write_at(3584 + 512, &buf).is_err());
        assert!(s.write_at(1, &buf).is_err());
        assert!(s.read_at(0, &mut buf[..100]).is_err());
        assert!(s.discard(0, 8192).is_err());
    }

    #[test]
    fn read_only_refuses_changes() {
        let d = tempfile::tempdir().expect("tempdir");
        drop(open(d.path(), Some(8192), false).expect("create"));
        let s = open(d.path(), None, true).expect("open ro");
        assert!(s.read_only());
        assert!(!s.supports_discard());
        assert!(matches!(
            s.write_at(0, &[0u8; 512]),
            Err(StoreError::ReadOnly)
        ));
        assert!(matches!(
            s.write_zeroes(0, 512, false),
            Err(StoreError::ReadOnly)
        ));
        let mut buf = vec![1u8; 512];
        s.read_at(0, &mut buf).expect("read");
        assert_eq!(buf, vec![0u8; 512]);
        s.flush().expect("flush is a no-op");
    }

    #[test]
    fn discard_and_write_zeroes_read_back_as_zeros() {
        let d = tempfile::tempdir().expect("tempdir");
        let s = open(d.path(), Some(64 << 10), false).expect("create");
        s.write_at(0, &vec![0xAB; 64 << 10]).expect("fill");
        s.discard(4096, 8192).expect("discard");
        s.write_zeroes(32768, 512, false).expect("zero");
        s.write_zeroes(40960, 4096, true).expect("zero unmap");
        let mut all = vec![0u8; 64 << 10];
        s.read_at(0, &mut all).expect("read");
        for (i, b) in all.iter().enumerate() {
            let zero = (4096..12288).contains(&i)
                || (32768..33280).contains(&i)
                || (40960..45056).contains(&i);
            assert_eq!(*b, if zero { 0 } else { 0xAB }, "byte {i}");
        }
    }
}
