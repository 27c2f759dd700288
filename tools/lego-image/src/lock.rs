//! An exclusive advisory lock on a file in the cache, so that concurrent builders (tests,
//! the testbed, the CLI) do not unpack or write the same outputs at the same time.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Errors from taking a cache lock.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The lock file could not be opened or locked.
    #[error("could not lock {path}")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

/// An exclusive `flock` held until dropped.
#[derive(Debug)]
pub struct CacheLock {
    _file: File,
}

impl CacheLock {
    /// Opens (creating) `path` and blocks until an exclusive lock on it is held.
    pub fn acquire(path: &Path) -> Result<Self, LockError> {
        let wrap = |source| LockError::Lock {
            path: path.to_path_buf(),
            source,
        };
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(wrap)?;
        loop {
            // SAFETY: flock takes a valid open descriptor owned by `file` for the whole call
            // and touches no memory.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                break;
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(wrap(err));
            }
        }
        // The lock is released when the descriptor is closed.
        Ok(Self { _file: file })
    }
}
