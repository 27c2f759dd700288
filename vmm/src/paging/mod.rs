//! VMM-paged guest RAM (`--local-memory`): the guest sees all of its RAM as ordinary RAM,
//! legovmm keeps at most the local limit of it resident on this host, and the rest lives on
//! the vNode's memory monitors, fetched when touched — LegoOS's ExCache for a virtual machine,
//! with no swap, driver or configuration in the guest.
//!
//! Guest RAM is a shared memfd registered with userfaultfd (MISSING mode) in legovmm; each
//! vhost-user backend registers its own mapping of it and hands its userfaultfd over
//! (VHOST_USER_POSTCOPY_ADVISE), so every first touch of a missing page, by a vCPU (through
//! KVM), an in-process device, the loader or a backend, becomes a fault message one of the
//! fault threads ([`faults`]) serves. The evictor ([`evict`]) keeps the resident count under
//! the limit. The record of every page is in [`table`]; the monitors are reached through
//! [`store`]; the vCPUs stand still during an eviction through [`pause`].

pub mod evict;
pub mod faults;
pub mod pause;
pub mod remote;
pub mod source;
pub mod stats;
pub mod store;
pub mod table;

use std::collections::BTreeSet;
use std::fs::File;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use lego_devices::exit::{ExitNotifier, GuestExit};
use lego_devices::vhost_user_frontend::{BackendFaults, BackendFaultsError, BackendRegion};
use lego_devices::virtio::rings::RingRegistry;
use std::os::fd::{FromRawFd, IntoRawFd};
use userfaultfd::UffdBuilder;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::memory::GuestMemory;
use pause::PauseGate;
use source::{Mapping, Source};
use stats::Stats;
use store::PageStore;
use table::{Table, PAGE};

/// What a fault may install, from [`Shared::wait_for_room`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Room {
    /// The whole run fits under the limit.
    Fits,
    /// Only the faulting page, past the limit.
    OnePage,
}

/// The smallest local memory accepted: the kernel, its page tables and the rings must fit.
pub const MIN_LOCAL: u64 = 64 << 20;

/// Errors starting the pager.
#[derive(Debug, thiserror::Error)]
pub enum PagingError {
    /// No userfaultfd.
    #[error("cannot page guest RAM: this host gives legovmm no userfaultfd (it needs a kernel with CONFIG_USERFAULTFD, and root or vm.unprivileged_userfaultfd=1 for faults taken in the kernel, as KVM's are)")]
    Userfaultfd(#[source] userfaultfd::Error),
    /// Registering guest RAM failed.
    #[error("cannot register guest RAM with userfaultfd")]
    Register(#[source] userfaultfd::Error),
    /// Guest RAM is not a shared memfd.
    #[error("VMM-paged guest RAM must be a shared memfd (use --memory-backing auto or shared)")]
    NotShared,
    /// A region has no host mapping.
    #[error("guest RAM region at {0:#x} has no host mapping or file offset")]
    Unmapped(u64),
    /// A thread could not be started.
    #[error("cannot start a pager thread")]
    Thread(#[source] std::io::Error),
}

/// How the pager runs.
#[derive(Debug, Clone)]
pub struct PagingConfig {
    /// Bytes of guest RAM that may be resident.
    pub limit: u64,
    /// Fault threads.
    pub threads: usize,
    /// Pages fetched after the faulting one on a sequential fault.
    pub prefetch: u64,
    /// Pages zero-filled from the faulting one on a sequential fault to a page never written.
    pub zero_run: u64,
    /// Pages evicted per round (per vCPU pause).
    pub evict_batch: usize,
    /// How long a fault thread that just served a fault keeps polling for the next one
    /// before it sleeps in epoll (zero: never; a fault that finds a polling thread skips a
    /// thread wake-up, at the cost of a busy core for that long).
    pub spin: Duration,
}

impl PagingConfig {
    /// The defaults for a local limit of `limit` bytes.
    pub fn new(limit: u64) -> Self {
        Self {
            limit,
            threads: 4,
            prefetch: 15,
            zero_run: 64,
            evict_batch: 512,
            spin: default_spin(),
        }
    }
}

/// The default fault spin: 20 µs where more than one CPU can run legovmm's threads, none
/// on a single CPU (where polling only delays the thread that would make the next fault).
pub fn default_spin() -> Duration {
    match std::thread::available_parallelism() {
        Ok(n) if n.get() > 1 => Duration::from_micros(20),
        _ => Duration::ZERO,
    }
}

/// What the fault threads and the evictor share.
pub struct Shared {
    table: Mutex<Table>,
    /// Signalled when a page's state changes (faults waiting for an install or for room).
    changed: Condvar,
    /// Signalled when the evictor may have work (pressure began, armed, stopping, failed):
    /// apart from `changed`, so that an install does not wake the evictor every time.
    pressure: Condvar,
    store: Arc<dyn PageStore>,
    stats: Stats,
    gate: Arc<PauseGate>,
    config: PagingConfig,
    limit_pages: u64,
    armed: AtomicBool,
    stop: AtomicBool,
    failed: AtomicBool,
    failure: Mutex<Option<String>>,
    exit: ExitNotifier,
    sources: RwLock<Vec<Arc<Source>>>,
    wakes: Vec<EventFd>,
    next_expected: AtomicU64,
    memfd: Arc<File>,
    own: Arc<Source>,
    /// (guest-physical start, length, memfd offset) of each region.
    regions: Vec<(u64, u64, u64)>,
    rings: RingRegistry,
    mem: GuestMemory,
}

impl Shared {
    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sources(&self) -> Vec<Arc<Source>> {
        self.sources
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|s| !s.is_dead())
            .cloned()
            .collect()
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Wakes the faults waiting on a page or for room.
    fn notify(&self) {
        self.changed.notify_all();
    }

    /// Wakes everything that waits: the faults and the evictor.
    fn notify_everyone(&self) {
        self.changed.notify_all();
        self.pressure.notify_all();
    }

    /// True when `resident` pages leave less than one eviction batch under the limit.
    fn under_pressure(&self, resident: u64) -> bool {
        resident + self.config.evict_batch as u64 > self.limit_pages
    }

    /// Tells the evictor that `resident` pages are now resident: wakes it when that is
    /// pressure (it checks again under the lock, so a spurious wake costs nothing).
    fn resident_changed(&self, resident: u64) {
        if self.armed.load(Ordering::Acquire) && self.under_pressure(resident) {
            self.pressure.notify_one();
        }
    }

    /// Stops the vNode: a page cannot be had. Nothing wrong is ever installed instead: the
    /// faulting thread stays blocked until the VMM exits.
    fn fail(&self, reason: String) {
        if !self.failed.swap(true, Ordering::AcqRel) {
            tracing::error!("{reason}; stopping the vNode");
            *self.failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason.clone());
            self.exit.notify(GuestExit::VmmFailed(reason));
        }
        self.notify_everyone();
    }

    /// Waits until `page` is no longer being installed by another thread.
    fn wait_installed(&self, page: u64) {
        let mut t = self.table();
        while t.state(page) == table::State::Installing && !self.failed() && !self.stopping() {
            t = self
                .changed
                .wait_timeout(t, faults::WAIT_STEP)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Waits until a run of `count` more resident pages fits under the limit (once armed);
    /// returns [`Room::Fits`] then, or [`Room::OnePage`] when the fault must not wait and
    /// installs only its own page past the limit:
    /// - a fault of legovmm's own mapping while the evictor pauses the vCPUs (a vCPU the pause
    ///   waits for may be blocked on it): at most one page per vCPU or device thread per
    ///   round, so guest RAM passes the limit by a handful of pages, never by runs;
    /// - a backend's fault waits even through a pause (nothing the pause needs waits on a
    ///   backend), up to [`faults::STALL_GUARD`]: only a round that can free nothing takes it
    ///   that long, and the fault then goes through (logged) rather than stall the device.
    fn wait_for_room(&self, count: u64, backend: bool) -> Room {
        if !self.armed.load(Ordering::Acquire) {
            return Room::Fits;
        }
        let guard = std::time::Instant::now() + faults::STALL_GUARD;
        let mut t = self.table();
        while t.resident() + count > self.limit_pages && !self.failed() && !self.stopping() {
            if !backend && self.gate.pausing() {
                return Room::OnePage;
            }
            if backend && std::time::Instant::now() >= guard {
                tracing::warn!(
                    "a device's fault waited {:?} for room under the local memory limit; \
                     installing its page past the limit",
                    faults::STALL_GUARD
                );
                return Room::OnePage;
            }
            self.pressure.notify_one();
            t = self
                .changed
                .wait_timeout(t, faults::WAIT_STEP)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Room::Fits
    }

    /// The evictor's wait: true when the resident count is within one batch of the limit.
    fn wait_for_pressure(&self) -> bool {
        let mut t = self.table();
        loop {
            if self.stopping() || self.failed() {
                return false;
            }
            if self.armed.load(Ordering::Acquire) && self.under_pressure(t.resident()) {
                return true;
            }
            t = self
                .pressure
                .wait_timeout(t, std::time::Duration::from_millis(50))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// A copy of memfd page `page` as it is now (it must be resident).
    fn read_page(&self, page: u64) -> table::PageBuf {
        let mut buf = vec![0u8; PAGE];
        if let Ok(pieces) = self.own.pieces(page, 1) {
            if let Some(&(host, _, _)) = pieces.first() {
                // SAFETY: `host` is legovmm's mapping of a resident page of guest RAM (the
                // caller holds the table lock and checked it is resident), valid for PAGE
                // bytes; nothing writes it while the vCPUs are parked and devices keep off it.
                unsafe { std::ptr::copy_nonoverlapping(host as *const u8, buf.as_mut_ptr(), PAGE) };
            }
        }
        buf.into()
    }

    /// The memfd pages devices may touch now.
    fn device_file_pages(&self) -> BTreeSet<u64> {
        evict::file_pages(&self.rings.device_pages(&self.mem), &self.regions)
    }
}

impl Shared {
    /// Serves faults of another process's mapping of guest RAM from now on (a vhost-user
    /// backend's); replaces the source of the same name (the backend restarted).
    fn adopt(&self, name: &str, uffd: userfaultfd::Uffd, maps: Vec<Mapping>) {
        {
            let mut sources = self.sources.write().unwrap_or_else(|e| e.into_inner());
            sources.retain(|s| s.name() != name);
            sources.push(Arc::new(Source::new(name, uffd, maps)));
        }
        for w in &self.wakes {
            let _ = w.write(1);
        }
        tracing::info!(
            source = name,
            "serving guest RAM faults of a vhost-user backend"
        );
    }
}

/// The pager's side of vhost-user postcopy: a backend's userfaultfd becomes a fault source.
struct BackendSources(Arc<Shared>);

impl BackendFaults for BackendSources {
    fn adopt(
        &self,
        device: &str,
        uffd: File,
        regions: Vec<BackendRegion>,
    ) -> Result<(), BackendFaultsError> {
        if self.0.stopping() {
            return Err(BackendFaultsError::Stopped {
                device: device.to_string(),
            });
        }
        // SAFETY: `uffd` is an open userfaultfd the backend created and handed over; the
        // File is consumed, so the Uffd is its only owner.
        let uffd = unsafe { userfaultfd::Uffd::from_raw_fd(uffd.into_raw_fd()) };
        let maps = regions
            .iter()
            .map(|r| Mapping {
                host: r.backend_addr,
                len: r.len,
                file_offset: r.file_offset,
            })
            .collect();
        self.0.adopt(device, uffd, maps);
        Ok(())
    }
}

/// A read-only view of a running pager's figures.
#[derive(Clone)]
pub struct PagerView(Arc<Shared>);

impl PagerView {
    /// Pages resident now and pages whose only copy is remote.
    pub fn counts(&self) -> (u64, u64) {
        let t = self.0.table();
        (t.resident(), t.remote())
    }

    /// The most pages that may be resident.
    pub fn limit_pages(&self) -> u64 {
        self.0.limit_pages
    }

    /// The pager's counters as they are now.
    pub fn stats(&self) -> &Stats {
        &self.0.stats
    }
}

/// The running pager.
pub struct Pager {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Pager {
    /// Registers `mem` (backed by `memfd`) with a new userfaultfd and starts the fault threads
    /// and the evictor, which parks the vCPUs through `gate`. Nothing is evicted until
    /// [`Pager::arm`]; a failure to get a page stops the vNode through `exit`.
    pub fn start(
        mem: &GuestMemory,
        memfd: Arc<File>,
        store: Arc<dyn PageStore>,
        config: PagingConfig,
        exit: ExitNotifier,
        rings: RingRegistry,
        gate: Arc<PauseGate>,
    ) -> Result<Self, PagingError> {
        let uffd = UffdBuilder::new()
            .close_on_exec(true)
            .non_blocking(true)
            .user_mode_only(false)
            .create()
            .map_err(PagingError::Userfaultfd)?;
        let mut maps = Vec::new();
        let mut regions = Vec::new();
        for region in mem.iter() {
            let start = region.start_addr();
            let host = mem
                .get_host_address(start)
                .map_err(|_| PagingError::Unmapped(start.0))?;
            let offset = region
                .file_offset()
                .ok_or(PagingError::Unmapped(start.0))?
                .start();
            let len = region.len();
            // SAFETY: madvise on a mapping `mem` owns; it changes no contents. Huge pages
            // would populate neighbours of a fault without a fault for each.
            unsafe { libc::madvise(host as *mut _, len as usize, libc::MADV_NOHUGEPAGE) };
            uffd.register(host as *mut _, len as usize)
                .map_err(PagingError::Register)?;
            maps.push(Mapping {
                host: host as u64,
                len,
                file_offset: offset,
            });
            regions.push((start.0, len, offset));
        }
        let pages = regions
            .iter()
            .map(|r| (r.2 + r.1) / PAGE as u64)
            .max()
            .unwrap_or(0);
        let own = Arc::new(Source::new("legovmm", uffd, maps));
        let wakes = (0..config.threads)
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()
            .map_err(PagingError::Thread)?;
        let shared = Arc::new(Shared {
            table: Mutex::new(Table::new(pages)),
            changed: Condvar::new(),
            pressure: Condvar::new(),
            store,
            stats: Stats::new(),
            gate,
            limit_pages: config.limit / PAGE as u64,
            config,
            armed: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            failure: Mutex::new(None),
            exit,
            sources: RwLock::new(vec![own.clone()]),
            wakes,
            next_expected: AtomicU64::new(u64::MAX),
            memfd,
            own,
            regions,
            rings,
            mem: mem.clone(),
        });
        let mut threads = Vec::new();
        for (i, wake) in shared.wakes.iter().enumerate() {
            let wake = wake.try_clone().map_err(PagingError::Thread)?;
            let s = shared.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("pager-fault{i}"))
                    .spawn(move || faults::run(s, wake))
                    .map_err(PagingError::Thread)?,
            );
        }
        let s = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name("pager-evict".into())
                .spawn(move || evict::run(s))
                .map_err(PagingError::Thread)?,
        );
        tracing::info!(
            guest_pages = pages,
            limit_pages = shared.limit_pages,
            threads = shared.config.threads,
            "guest RAM is paged by legovmm: at most {} MiB resident, the rest on the vNode's memory monitors",
            shared.config.limit >> 20
        );
        Ok(Self { shared, threads })
    }

    /// A handle that reads the pager's figures while it runs (for the API and metrics).
    pub fn view(&self) -> PagerView {
        PagerView(self.shared.clone())
    }

    /// Starts holding guest RAM to the limit (call once the vCPUs run: before that, the
    /// loader writes guest RAM outside any vCPU and must not lose a page to an eviction).
    pub fn arm(&self) {
        self.shared.armed.store(true, Ordering::Release);
        self.shared.notify_everyone();
    }

    /// The handle vhost-user backends hand their userfaultfds to.
    pub fn backend_faults(&self) -> Arc<dyn BackendFaults> {
        Arc::new(BackendSources(self.shared.clone()))
    }

    /// Pages resident now and pages whose only copy is remote.
    pub fn counts(&self) -> (u64, u64) {
        let t = self.shared.table();
        (t.resident(), t.remote())
    }

    /// The pager's counters as they are now (faults by kind, evictions, fetch latency).
    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// Why the pager stopped the vNode, if it did.
    pub fn failure(&self) -> Option<String> {
        self.shared
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stops the threads and logs the summary (call after the vCPUs and devices stopped).
    pub fn stop(self) {
        self.shared.stop.store(true, Ordering::Release);
        for w in &self.shared.wakes {
            let _ = w.write(1);
        }
        self.shared.notify_everyone();
        for t in self.threads {
            let _ = t.join();
        }
        let (resident, remote) = {
            let t = self.shared.table();
            (t.resident(), t.remote())
        };
        tracing::info!(
            "pager summary: {}",
            self.shared
                .stats
                .summary(resident, remote, self.shared.limit_pages)
        );
    }
}
