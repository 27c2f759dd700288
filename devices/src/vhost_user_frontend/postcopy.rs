//! vhost-user postcopy, used when legovmm pages guest RAM: the backend's faults on guest RAM
//! go to legovmm's pager instead of silently reading holes as zero pages.
//!
//! When legovmm pages guest RAM, pages of the shared memfd may be holes (never fetched, or
//! evicted with `fallocate(PUNCH_HOLE)`). A backend touching one would get a fresh zero page.
//! So, before every SET_MEM_TABLE, the frontend asks the backend for a userfaultfd of its own
//! (POSTCOPY_ADVISE), tells it to register the guest RAM it maps with it (POSTCOPY_LISTEN),
//! sends SET_MEM_TABLE (the backend answers with where it mapped each region), hands the
//! userfaultfd and the regions to the pager ([`BackendFaults::adopt`]), and only then lets
//! the backend use the new mappings (the postcopy ack of SET_MEM_TABLE). The vrings are set
//! up after that.
//!
//! ADVISE and LISTEN happen once per connection: a later SET_MEM_TABLE on the same
//! connection (the guest reset the device and drove it again) reuses the userfaultfd and is
//! adopted again. A backend that restarts is a new connection and hands over a new one.

use std::fs::File;
use std::io;
use std::sync::Arc;

use vhost::vhost_user::message::FrontendReq;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo};

use super::VhostUserError;

/// Where a vhost-user backend's userfaultfd goes when legovmm pages guest RAM.
pub trait BackendFaults: Send + Sync {
    /// A backend (re)mapped guest RAM with its own userfaultfd: serve its faults from now on.
    ///
    /// `device` names the device (stable across reconnections: a later call for the same
    /// name replaces the earlier uffd, whose backend is gone or has remapped guest RAM).
    /// `uffd` is the backend's userfaultfd (non-blocking, close-on-exec), registered in
    /// MISSING mode over every region of `regions` at the backend's addresses: a fault is
    /// resolved with UFFDIO_COPY, UFFDIO_ZEROPAGE or (when the page is already in the memfd)
    /// UFFDIO_WAKE on `uffd`, at the backend's address.
    ///
    /// The implementation must be ready to serve faults when it returns: the backend
    /// publishes the mappings to its queues right after. It is called with the device's
    /// connection locked, so it must not call back into the device.
    fn adopt(
        &self,
        device: &str,
        uffd: File,
        regions: Vec<BackendRegion>,
    ) -> Result<(), BackendFaultsError>;
}

/// One guest RAM region as a backend mapped it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendRegion {
    /// Where the backend mapped the region, in the backend's address space.
    pub backend_addr: u64,
    /// The region's length in bytes.
    pub len: u64,
    /// The guest physical address of the region's first byte.
    pub guest_phys_addr: u64,
    /// The mmap offset of the region in the guest RAM memfd.
    pub file_offset: u64,
}

/// Why a pager could not take over a backend's faults.
#[derive(Debug, thiserror::Error)]
pub enum BackendFaultsError {
    /// The backend mapped memory the pager does not page.
    #[error("the backend of {device} mapped {len:#x} bytes at guest address {guest_phys_addr:#x}, which is not guest RAM that legovmm pages")]
    UnknownRegion {
        /// The device.
        device: String,
        /// The region's guest physical address.
        guest_phys_addr: u64,
        /// The region's length.
        len: u64,
    },
    /// The pager has stopped and serves no faults any more.
    #[error(
        "legovmm's pager has stopped, so it cannot serve the faults of the backend of {device}"
    )]
    Stopped {
        /// The device.
        device: String,
    },
    /// A system resource (a thread, an epoll registration) could not be set up.
    #[error("could not {what} for the backend of {device}")]
    Io {
        /// The device.
        device: String,
        /// What the pager was doing.
        what: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// One connection's postcopy state: the pager, the device's name, and the backend's
/// userfaultfd once advised.
pub struct Postcopy {
    faults: Arc<dyn BackendFaults>,
    device: String,
    uffd: Option<File>,
    listening: bool,
}

impl Postcopy {
    /// Postcopy for the device named `device` (its socket path), its faults served by
    /// `faults`.
    pub fn new(faults: Arc<dyn BackendFaults>, device: String) -> Self {
        Self {
            faults,
            device,
            uffd: None,
            listening: false,
        }
    }

    /// The pager, for a later connection of the same device.
    pub fn faults(&self) -> Arc<dyn BackendFaults> {
        self.faults.clone()
    }

    /// Sends SET_MEM_TABLE with `regions` to the backend at `path` the postcopy way:
    /// POSTCOPY_ADVISE and POSTCOPY_LISTEN (once per connection), SET_MEM_TABLE (answered
    /// with the backend's bases), [`BackendFaults::adopt`], then the postcopy ack.
    pub fn set_mem_table(
        &mut self,
        frontend: &mut Frontend,
        path: &str,
        regions: &[VhostUserMemoryRegionInfo],
    ) -> Result<(), VhostUserError> {
        let proto = |step: &str| {
            let (path, step) = (path.to_string(), step.to_string());
            move |source| VhostUserError::Protocol { path, step, source }
        };
        if self.uffd.is_none() {
            self.uffd = Some(
                frontend
                    .postcopy_advise()
                    .map_err(proto("POSTCOPY_ADVISE"))?,
            );
        }
        if !self.listening {
            frontend
                .postcopy_listen()
                .map_err(proto("POSTCOPY_LISTEN"))?;
            self.listening = true;
        }
        let bases = frontend
            .set_mem_table(regions)
            .map_err(proto("SET_MEM_TABLE"))?
            .ok_or_else(|| {
                // The vhost crate answers with the bases whenever postcopy is listening.
                proto("SET_MEM_TABLE")(vhost::Error::VhostUserProtocol(
                    vhost::vhost_user::Error::InvalidMessage,
                ))
            })?;
        let mapped = backend_regions(regions, &bases);
        let uffd = self
            .uffd
            .as_ref()
            .map(File::try_clone)
            .transpose()
            .map_err(|source| VhostUserError::Io {
                what: "duplicate the backend's userfaultfd",
                source,
            })?
            .ok_or_else(|| VhostUserError::Io {
                what: "find the backend's userfaultfd",
                source: io::Error::other("POSTCOPY_ADVISE gave none"),
            })?;
        tracing::info!(
            device = %self.device, regions = mapped.len(),
            "handing the backend's userfaultfd to legovmm's pager"
        );
        self.faults
            .adopt(&self.device, uffd, mapped)
            .map_err(|source| VhostUserError::Adopt {
                path: path.to_string(),
                source,
            })?;
        frontend
            .postcopy_ack_mem_regions(FrontendReq::SET_MEM_TABLE)
            .map_err(proto("the postcopy ack of SET_MEM_TABLE"))
    }
}

/// The regions of a memory table as the backend mapped them: `regions` in order, each at
/// the base the backend answered for it.
pub fn backend_regions(regions: &[VhostUserMemoryRegionInfo], bases: &[u64]) -> Vec<BackendRegion> {
    regions
        .iter()
        .zip(bases)
        .map(|(r, &base)| BackendRegion {
            backend_addr: base,
            len: r.memory_size,
            guest_phys_addr: r.guest_phys_addr,
            file_offset: r.mmap_offset,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_regions_pair_each_region_with_its_base() {
        let info = |gpa, size, offset| VhostUserMemoryRegionInfo {
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: 0x7f00_0000_0000 + offset,
            mmap_offset: offset,
            mmap_handle: 3,
        };
        let regions = [
            info(0, 0x8000_0000, 0),
            info(1 << 32, 0x4000_0000, 0x8000_0000),
        ];
        let got = backend_regions(&regions, &[0x7e00_0000_0000, 0x7d00_0000_0000]);
        assert_eq!(
            got,
            vec![
                BackendRegion {
                    backend_addr: 0x7e00_0000_0000,
                    len: 0x8000_0000,
                    guest_phys_addr: 0,
                    file_offset: 0,
                },
                BackendRegion {
                    backend_addr: 0x7d00_0000_0000,
                    len: 0x4000_0000,
                    guest_phys_addr: 1 << 32,
                    file_offset: 0x8000_0000,
                },
            ]
        );
    }

    #[test]
    fn errors_read_as_sentences() {
        let e = BackendFaultsError::UnknownRegion {
            device: "/run/blk.sock".into(),
            guest_phys_addr: 0x1000,
            len: 0x2000,
        };
        assert_eq!(
            e.to_string(),
            "the backend of /run/blk.sock mapped 0x2000 bytes at guest address 0x1000, which is not guest RAM that legovmm pages"
        );
    }
}
