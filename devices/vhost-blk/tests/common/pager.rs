//! [`TestPager`]: a stand-in for legovmm's pager behind
//! `lego_devices::vhost_user_frontend::BackendFaults`. For each adopted backend userfaultfd it
//! runs a thread that resolves every fault with UFFDIO_COPY of [`page_pattern`] for the page's
//! offset in the guest RAM memfd, and logs it.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use lego_devices::vhost_user_frontend::{BackendFaults, BackendFaultsError, BackendRegion};
use userfaultfd::{Event, Uffd};

/// The page size faults are resolved in.
pub const PAGE: u64 = 4096;

/// What the pager holds for the page at `file_offset` of the memfd: never a zero byte, and
/// different for every page.
pub fn page_pattern(file_offset: u64) -> Vec<u8> {
    let page = file_offset / PAGE;
    (0..PAGE)
        .map(|i| ((page * 7 + i * 13) % 251 + 1) as u8)
        .collect()
}

/// One fault the pager was asked to resolve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// Which adoption's userfaultfd it came from (1 for the first).
    pub adoption: u64,
    /// The faulting page's offset in the memfd.
    pub file_offset: u64,
}

/// One adoption: what `adopt` was given.
#[derive(Debug, Clone)]
pub struct Adopted {
    /// The device's name.
    pub device: String,
    /// The regions as the backend mapped them.
    pub regions: Vec<BackendRegion>,
}

#[derive(Default)]
struct Log {
    adopted: Vec<Adopted>,
    faults: Vec<Fault>,
    errors: Vec<String>,
}

/// The thread serving one device's current userfaultfd.
struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serves backends' faults with [`page_pattern`]; see the module doc.
#[derive(Default)]
pub struct TestPager {
    log: Arc<Mutex<Log>>,
    servers: Mutex<HashMap<String, Server>>,
}

impl TestPager {
    /// Every adoption so far, in order.
    pub fn adopted(&self) -> Vec<Adopted> {
        self.log.lock().unwrap().adopted.clone()
    }

    /// Every fault so far, in order (logged before it is resolved, so a request that
    /// completed finds its faults here).
    pub fn faults(&self) -> Vec<Fault> {
        self.log.lock().unwrap().faults.clone()
    }

    /// What went wrong in a serving thread (nothing, in a passing test).
    pub fn errors(&self) -> Vec<String> {
        self.log.lock().unwrap().errors.clone()
    }
}

impl BackendFaults for TestPager {
    fn adopt(
        &self,
        device: &str,
        uffd: File,
        regions: Vec<BackendRegion>,
    ) -> Result<(), BackendFaultsError> {
        // SAFETY: `uffd` is a userfaultfd (the backend's, received from it) that this call
        // owns; `Uffd` takes the descriptor over and closes it.
        let uffd = unsafe { Uffd::from_raw_fd(uffd.into_raw_fd()) };
        let adoption = {
            let mut log = self.log.lock().unwrap();
            log.adopted.push(Adopted {
                device: device.to_string(),
                regions: regions.clone(),
            });
            log.adopted.len() as u64
        };
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stop, log) = (stop.clone(), self.log.clone());
            std::thread::Builder::new()
                .name(format!("test-pager-{adoption}"))
                .spawn(move || serve(&uffd, &regions, adoption, &stop, &log))
                .map_err(|source| BackendFaultsError::Io {
                    device: device.to_string(),
                    what: "start a thread serving faults",
                    source,
                })?
        };
        let server = Server {
            stop,
            thread: Some(thread),
        };
        // The earlier server of this device (if any) is stopped as it is dropped.
        self.servers
            .lock()
            .unwrap()
            .insert(device.to_string(), server);
        Ok(())
    }
}

/// Resolves the faults of `uffd` over `regions` until `stop`.
fn serve(
    uffd: &Uffd,
    regions: &[BackendRegion],
    adoption: u64,
    stop: &AtomicBool,
    log: &Mutex<Log>,
) {
    let fail = |e: String| log.lock().unwrap().errors.push(e);
    while !stop.load(Ordering::SeqCst) {
        let mut p = libc::pollfd {
            fd: uffd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `p` is one valid pollfd that outlives the call.
        let ready = unsafe { libc::poll(&mut p, 1, 20) };
        if ready <= 0 {
            continue;
        }
        if p.revents & libc::POLLIN == 0 {
            // An error or hang-up (the backend died): wait to be replaced or stopped.
            std::thread::sleep(std::time::Duration::from_millis(20));
            continue;
        }
        let addr = match uffd.read_event() {
            Ok(Some(Event::Pagefault { addr, .. })) => addr as u64 & !(PAGE - 1),
            Ok(None) => continue,
            Ok(Some(other)) => return fail(format!("unexpected event {other:?}")),
            Err(e) => return fail(format!("cannot read the userfaultfd: {e}")),
        };
        let Some(region) = regions
            .iter()
            .find(|r| addr >= r.backend_addr && addr < r.backend_addr + r.len)
        else {
            return fail(format!(
                "a fault at {addr:#x}, outside every adopted region"
            ));
        };
        let file_offset = region.file_offset + (addr - region.backend_addr);
        log.lock().unwrap().faults.push(Fault {
            adoption,
            file_offset,
        });
        let data = page_pattern(file_offset);
        // SAFETY: `data` is PAGE readable bytes in this process; the destination is one
        // page of the backend's registered mapping, written by the kernel (in the backend's
        // address space), never dereferenced here.
        let copied =
            unsafe { uffd.copy(data.as_ptr().cast(), addr as *mut _, PAGE as usize, true) };
        match copied {
            Ok(_) => {}
            // Another thread of the backend faulted on it too and the page is in: wake it.
            Err(userfaultfd::Error::CopyFailed(e)) if e as i32 == libc::EEXIST => {
                if let Err(e) = uffd.wake(addr as *mut _, PAGE as usize) {
                    return fail(format!("cannot wake {addr:#x}: {e}"));
                }
            }
            Err(e) => return fail(format!("UFFDIO_COPY at {addr:#x} failed: {e:?}")),
        }
    }
}
