//! The fault threads: each polls every source's userfaultfd, reads fault messages and serves
//! them — zeros for a page never written (no round trip), the eviction buffer for a page
//! still being written back, or a fetch from the monitors (the fabric pipelines the threads'
//! fetches). A fault at the page after the previous fault's run is sequential: it takes a
//! longer run (neighbours prefetched, or zero-filled) in one install.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use userfaultfd::Event;
use vmm_sys_util::eventfd::EventFd;

use super::source::{InstallError, Source};
use super::stats::Stats;
use super::table::{hash, FaultPlan, State, PAGE};
use super::{Room, Shared};

/// How long a wait lasts before the thread looks at the sources again.
const POLL_MS: i32 = 100;

/// Runs one fault thread until the pager stops. `wake` is this thread's eventfd: written when
/// the sources change or the pager stops.
///
/// Each thread has its own epoll set holding every source's userfaultfd with EPOLLEXCLUSIVE:
/// a fault wakes one thread, not all of them (measured: with four threads polling one fd
/// without it, every fault paid about 4 µs for waking the other three).
pub fn run(shared: Arc<Shared>, wake: EventFd) {
    // SAFETY: epoll_create1 has no memory preconditions; the fd is owned below.
    let raw = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if raw < 0 {
        shared.fail(format!(
            "a pager thread cannot create its epoll set: {}",
            std::io::Error::last_os_error()
        ));
        return;
    }
    // SAFETY: `raw` is a new epoll fd nothing else owns.
    let epoll = unsafe { OwnedFd::from_raw_fd(raw) };
    let add = |fd: i32, token: u64, exclusive: bool| {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN as u32)
                | if exclusive {
                    libc::EPOLLEXCLUSIVE as u32
                } else {
                    0
                },
            u64: token,
        };
        // SAFETY: `ev` is a valid epoll_event for the call; both fds are open.
        unsafe { libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) }
    };
    const WAKE: u64 = u64::MAX;
    add(wake.as_raw_fd(), WAKE, false);
    let mut watched: Vec<Arc<Source>> = Vec::new();
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; 8];
    while !shared.stopping() {
        let sources = shared.sources();
        if !same(&watched, &sources) {
            for s in &watched {
                // SAFETY: removing an fd from our epoll set; a closed fd is already gone.
                unsafe {
                    libc::epoll_ctl(
                        epoll.as_raw_fd(),
                        libc::EPOLL_CTL_DEL,
                        s.fd(),
                        std::ptr::null_mut(),
                    )
                };
            }
            for (i, s) in sources.iter().enumerate() {
                add(s.fd(), i as u64, true);
            }
            watched = sources;
        }
        // SAFETY: `events` is a valid buffer of the given length for the call.
        let n = unsafe {
            libc::epoll_wait(
                epoll.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as i32,
                POLL_MS,
            )
        };
        let mut served = false;
        for ev in events.iter().take(n.max(0) as usize) {
            let (token, flags) = (ev.u64, ev.events);
            if token == WAKE {
                let _ = wake.read();
                continue;
            }
            let Some(source) = watched.get(token as usize) else {
                continue;
            };
            if flags & (libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0 {
                source.mark_dead();
            }
            if flags & libc::EPOLLIN as u32 != 0 && drain(&shared, source) {
                served = true;
            }
        }
        if served {
            poll_for_more(&shared, &watched);
        }
    }
}

/// After a fault, keeps reading the sources for up to the configured spin (restarted by
/// each fault served): the next fault of a guest that faults in a loop then finds this
/// thread awake instead of waking one.
fn poll_for_more(shared: &Shared, sources: &[Arc<Source>]) {
    let spin = shared.config.spin;
    if spin.is_zero() {
        return;
    }
    let mut since = Instant::now();
    while since.elapsed() < spin && !shared.stopping() {
        let mut served = false;
        for s in sources.iter().filter(|s| !s.is_dead()) {
            served |= drain(shared, s);
        }
        if served {
            since = Instant::now();
        } else {
            std::hint::spin_loop();
        }
    }
}

/// True if `a` and `b` are the same sources in the same order.
fn same(a: &[Arc<Source>], b: &[Arc<Source>]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| Arc::ptr_eq(x, y))
}

/// Serves every fault message waiting on `source`; true if there was one.
fn drain(shared: &Shared, source: &Source) -> bool {
    let mut any = false;
    loop {
        match source.uffd().read_event() {
            Ok(Some(Event::Pagefault { addr, .. })) => {
                any = true;
                match source.page_of(addr as u64) {
                    Some(page) => serve(shared, source, page),
                    None => tracing::warn!(
                        source = source.name(),
                        "a fault at {addr:p} is outside guest RAM; left unserved"
                    ),
                }
            }
            Ok(Some(other)) => tracing::debug!(source = source.name(), "ignored {other:?}"),
            Ok(None) => return any,
            Err(e) => {
                tracing::debug!(source = source.name(), "cannot read a fault: {e}");
                source.mark_dead();
                return any;
            }
        }
    }
}

/// Serves a fault on `page` from `source`: installs it (with a run of neighbours when the
/// access is sequential) or waits for the thread that is installing it.
fn serve(shared: &Shared, source: &Source, page: u64) {
    let stats = &shared.stats;
    let backend = !std::ptr::eq(source, &*shared.own);
    loop {
        let sequential = shared.next_expected.load(Ordering::Relaxed) == page;
        let (mut zero_run, mut fetch_run) = if sequential {
            (shared.config.zero_run, shared.config.prefetch + 1)
        } else {
            (1, 1)
        };
        let run = match shared.table().state(page) {
            State::Untouched => zero_run,
            State::Remote => fetch_run,
            State::Evicted => 1,
            _ => 0, // resident or being installed: nothing new to make room for
        };
        if run > 0 && shared.wait_for_room(run, backend) == Room::OnePage {
            (zero_run, fetch_run) = (1, 1);
            Stats::count(&stats.over_limit_installs, 1);
        }
        let plan = shared.table().plan_fault(page, zero_run, fetch_run);
        let (start, count, result, was) = match plan {
            FaultPlan::Wake => {
                Stats::count(&stats.woken_faults, 1);
                source.wake_page(page);
                return;
            }
            FaultPlan::Wait => {
                shared.wait_installed(page);
                if shared.failed() {
                    return;
                }
                continue;
            }
            FaultPlan::Zero { start, count } => {
                Stats::count(&stats.zero_faults, 1);
                Stats::count(&stats.zero_pages, count);
                let r = source.zero(start, count).map(|()| None);
                (start, count, r, State::Untouched)
            }
            FaultPlan::Buffer(buf) => {
                Stats::count(&stats.buffer_faults, 1);
                let r = source.copy(page, &buf).map(|()| Some(vec![hash(&buf)]));
                (page, 1, r, State::Evicted)
            }
            FaultPlan::Fetch { start, count } => {
                Stats::count(&stats.fetch_faults, 1);
                let t = Instant::now();
                let data = match shared.store.read(start, count) {
                    Ok(d) => d,
                    Err(e) => {
                        shared.table().install_failed(start, count, State::Remote);
                        shared.fail(format!(
                            "page {page} of guest RAM could not be fetched: {}",
                            lego_report::error_chain(&e)
                        ));
                        return;
                    }
                };
                stats.fetch_took(t.elapsed());
                Stats::count(&stats.fetched_pages, count);
                let hashes: Vec<u128> = data.chunks(PAGE).map(hash).collect();
                let mismatch = shared.table().first_mismatch(start, &hashes);
                if let Some(bad) = mismatch {
                    shared.table().install_failed(start, count, State::Remote);
                    shared.fail(format!(
                        "page {bad} of guest RAM came back from the memory monitors different \
                         from what legovmm wrote there (a stale or wrong copy); it was not \
                         installed"
                    ));
                    return;
                }
                let r = source.copy(start, &data).map(|()| Some(hashes));
                (start, count, r, State::Remote)
            }
        };
        match result {
            Ok(hashes) => {
                let resident = shared.table().installed(start, count, hashes.as_deref());
                stats.resident_now(resident);
                shared.resident_changed(resident);
                shared.next_expected.store(start + count, Ordering::Relaxed);
            }
            Err(e) => {
                shared.table().install_failed(start, count, was);
                match e {
                    InstallError::Gone(_) => {
                        tracing::debug!("{}", lego_report::error_chain(&e))
                    }
                    e => shared.fail(format!(
                        "page {page} of guest RAM could not be installed: {}",
                        lego_report::error_chain(&e)
                    )),
                }
            }
        }
        shared.notify();
        return;
    }
}

/// How long a fault waits for another thread's install before looking again.
pub const WAIT_STEP: Duration = Duration::from_millis(5);

/// How long a backend's fault waits for room under the limit before it is installed past it
/// (only an eviction round that can free nothing takes this long).
pub const STALL_GUARD: Duration = Duration::from_secs(1);
