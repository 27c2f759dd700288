//! A fault source: one userfaultfd and the guest RAM mappings registered with it — legovmm's
//! own (vCPUs through KVM, in-process devices, the loader) or a vhost-user backend's (handed
//! over with VHOST_USER_POSTCOPY_ADVISE). Pages are installed into a source's mappings with
//! UFFDIO_COPY / UFFDIO_ZEROPAGE; the memfd is shared, so a page installed through any
//! source is in guest RAM for all of them.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use userfaultfd::Uffd;

use super::table::PAGE;

/// Errors installing pages.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The process whose mapping this is has gone (a backend died).
    #[error("the process of {0} is gone")]
    Gone(String),
    /// The kernel refused the install.
    #[error("cannot install pages into guest RAM as {name} maps it")]
    Refused {
        /// The source.
        name: String,
        /// The kernel's error.
        source: userfaultfd::Error,
    },
    /// The address is not in a mapping of this source.
    #[error("page {page} of guest RAM is not mapped by {name}")]
    Unmapped {
        /// The source.
        name: String,
        /// The page.
        page: u64,
    },
}

/// One guest RAM region as a source maps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    /// Where it is mapped in the source's address space.
    pub host: u64,
    /// Its length in bytes.
    pub len: u64,
    /// Its offset in the guest RAM memfd.
    pub file_offset: u64,
}

/// A userfaultfd and its mappings.
pub struct Source {
    name: String,
    uffd: Uffd,
    maps: Vec<Mapping>,
    dead: AtomicBool,
}

impl Source {
    /// A source named `name` (for logs and errors).
    pub fn new(name: impl Into<String>, uffd: Uffd, maps: Vec<Mapping>) -> Self {
        Self {
            name: name.into(),
            uffd,
            maps,
            dead: AtomicBool::new(false),
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its userfaultfd.
    pub fn uffd(&self) -> &Uffd {
        &self.uffd
    }

    /// The file descriptor to poll.
    pub fn fd(&self) -> RawFd {
        self.uffd.as_raw_fd()
    }

    /// True once its process is known to be gone.
    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    /// Marks its process gone.
    pub fn mark_dead(&self) {
        self.dead.store(true, Ordering::Release);
    }

    /// The memfd page a faulting address is in.
    pub fn page_of(&self, addr: u64) -> Option<u64> {
        self.maps
            .iter()
            .find(|m| addr >= m.host && addr - m.host < m.len)
            .map(|m| (m.file_offset + (addr - m.host)) / PAGE as u64)
    }

    /// Splits pages `start..start+count` into pieces contiguous in this source's address
    /// space: (host address, first page, page count).
    pub fn pieces(&self, start: u64, count: u64) -> Result<Vec<(u64, u64, u64)>, InstallError> {
        let mut out = Vec::new();
        let mut page = start;
        let end = start + count;
        while page < end {
            let off = page * PAGE as u64;
            let m = self
                .maps
                .iter()
                .find(|m| off >= m.file_offset && off - m.file_offset < m.len)
                .ok_or_else(|| InstallError::Unmapped {
                    name: self.name.clone(),
                    page,
                })?;
            let in_map = (m.file_offset + m.len - off) / PAGE as u64;
            let n = in_map.min(end - page);
            out.push((m.host + (off - m.file_offset), page, n));
            page += n;
        }
        Ok(out)
    }

    fn refused(&self, source: userfaultfd::Error) -> InstallError {
        if let userfaultfd::Error::CopyFailed(e) | userfaultfd::Error::ZeropageFailed(e) = &source {
            if matches!(*e as i32, libc::ESRCH | libc::ENOENT) {
                self.mark_dead();
                return InstallError::Gone(self.name.clone());
            }
        }
        InstallError::Refused {
            name: self.name.clone(),
            source,
        }
    }

    /// Installs zeros at pages `start..start+count` and wakes their faulters. A page that is
    /// there already (EEXIST) is left as it is.
    pub fn zero(&self, start: u64, count: u64) -> Result<(), InstallError> {
        for (host, _, n) in self.pieces(start, count)? {
            let len = (n as usize) * PAGE;
            // SAFETY: `host..host+len` lies in a guest RAM mapping registered with this
            // userfaultfd (from `maps`); ZEROPAGE only fills missing pages there.
            let r = unsafe { self.uffd.zeropage(host as *mut _, len, true) };
            match r {
                Ok(_) => {}
                Err(userfaultfd::Error::ZeropageFailed(e)) if e as i32 == libc::EEXIST => {
                    self.page_by_page(host, n, |addr| {
                        // SAFETY: as above, one page of the same range.
                        unsafe { self.uffd.zeropage(addr as *mut _, PAGE, true) }.map(|_| ())
                    })?
                }
                Err(e) => return Err(self.refused(e)),
            }
        }
        Ok(())
    }

    /// Copies `data` (whole pages) to pages `start..` and wakes their faulters. A page that is
    /// there already (EEXIST) is left as it is.
    pub fn copy(&self, start: u64, data: &[u8]) -> Result<(), InstallError> {
        let count = (data.len() / PAGE) as u64;
        for (host, first, n) in self.pieces(start, count)? {
            let at = ((first - start) as usize) * PAGE;
            let chunk = &data[at..at + (n as usize) * PAGE];
            self.copy_piece(host, chunk)?;
        }
        Ok(())
    }

    fn copy_piece(&self, host: u64, chunk: &[u8]) -> Result<(), InstallError> {
        let mut done = 0;
        while done < chunk.len() {
            // SAFETY: the destination lies in a guest RAM mapping registered with this
            // userfaultfd; the source is `chunk`, valid for its length; COPY only fills
            // missing pages.
            let r = unsafe {
                self.uffd.copy(
                    chunk[done..].as_ptr() as *const _,
                    (host + done as u64) as *mut _,
                    chunk.len() - done,
                    true,
                )
            };
            match r {
                Ok(n) => done += n,
                Err(userfaultfd::Error::PartiallyCopied(n)) if n > 0 => done += n,
                Err(userfaultfd::Error::CopyFailed(e)) if e as i32 == libc::EEXIST => {
                    let rest = &chunk[done..];
                    let base = host + done as u64;
                    return self.page_by_page(base, (rest.len() / PAGE) as u64, |addr| {
                        let at = (addr - base) as usize;
                        // SAFETY: as above, one page of the same range.
                        unsafe {
                            self.uffd.copy(
                                rest[at..].as_ptr() as *const _,
                                addr as *mut _,
                                PAGE,
                                true,
                            )
                        }
                        .map(|_| ())
                    });
                }
                Err(e) => return Err(self.refused(e)),
            }
        }
        Ok(())
    }

    /// Installs `n` pages from `host` one at a time, treating a page that exists as done
    /// (and waking its faulters).
    fn page_by_page(
        &self,
        host: u64,
        n: u64,
        install: impl Fn(u64) -> userfaultfd::Result<()>,
    ) -> Result<(), InstallError> {
        for k in 0..n {
            let addr = host + k * PAGE as u64;
            match install(addr) {
                Ok(()) => {}
                Err(userfaultfd::Error::CopyFailed(e) | userfaultfd::Error::ZeropageFailed(e))
                    if e as i32 == libc::EEXIST =>
                {
                    self.wake(addr, 1)
                }
                Err(e) => return Err(self.refused(e)),
            }
        }
        Ok(())
    }

    /// Wakes threads of this source waiting on `pages` pages at `host` (they retry).
    pub fn wake(&self, host: u64, pages: u64) {
        if let Err(e) = self.uffd.wake(host as *mut _, (pages as usize) * PAGE) {
            tracing::debug!(source = %self.name, "cannot wake a fault at {host:#x}: {e}");
        }
    }

    /// Wakes the threads waiting on `page`.
    pub fn wake_page(&self, page: u64) {
        if let Ok(p) = self.pieces(page, 1) {
            if let Some(&(host, _, _)) = p.first() {
                self.wake(host, 1);
            }
        }
    }
}
