//! The fault threads: each polls every source's userfaultfd, reads fault messages and serves
//! them — zeros for a page never written (no round trip), the eviction buffer for a page
//! still being written back, or a fetch from the monitors (the fabric pipelines the threads'
//! fetches). A fault at the page after the previous fault's run is sequential: it takes a
//! longer run (neighbours prefetched, or zero-filled) in one install.

use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use userfaultfd::Event;
use vmm_sys_util::eventfd::EventFd;

use super::source::{InstallError, Source};
use super::stats::Stats;
use super::table::{hash, FaultPlan, State, PAGE};
use super::Shared;

/// How long a poll waits before the thread looks at the sources again.
const POLL_MS: i32 = 100;

/// Runs one fault thread until the pager stops. `wake` is this thread's eventfd: written when
/// the sources change or the pager stops.
pub fn run(shared: Arc<Shared>, wake: EventFd) {
    let mut fds: Vec<libc::pollfd> = Vec::new();
    while !shared.stopping() {
        let sources = shared.sources();
        fds.clear();
        fds.push(pollfd(wake.as_raw_fd()));
        fds.extend(sources.iter().map(|s| pollfd(s.fd())));
        // SAFETY: `fds` is a valid array of pollfd of the given length for the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, POLL_MS) };
        if n <= 0 {
            continue;
        }
        if fds[0].revents != 0 {
            let _ = wake.read();
        }
        for (fd, source) in fds[1..].iter().zip(&sources) {
            if fd.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
                source.mark_dead();
            }
            if fd.revents & libc::POLLIN != 0 {
                drain(&shared, source);
            }
        }
    }
}

fn pollfd(fd: i32) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

/// Serves every fault message waiting on `source`.
fn drain(shared: &Shared, source: &Source) {
    loop {
        match source.uffd().read_event() {
            Ok(Some(Event::Pagefault { addr, .. })) => match source.page_of(addr as u64) {
                Some(page) => serve(shared, source, page),
                None => tracing::warn!(
                    source = source.name(),
                    "a fault at {addr:p} is outside guest RAM; left unserved"
                ),
            },
            Ok(Some(other)) => tracing::debug!(source = source.name(), "ignored {other:?}"),
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(source = source.name(), "cannot read a fault: {e}");
                source.mark_dead();
                return;
            }
        }
    }
}

/// Serves a fault on `page` from `source`: installs it (with a run of neighbours when the
/// access is sequential) or waits for the thread that is installing it.
fn serve(shared: &Shared, source: &Source, page: u64) {
    let stats = &shared.stats;
    loop {
        let sequential = shared.next_expected.load(Ordering::Relaxed) == page;
        let (zero_run, fetch_run) = if sequential {
            (shared.config.zero_run, shared.config.prefetch + 1)
        } else {
            (1, 1)
        };
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
                shared.wait_for_room(count);
                Stats::count(&stats.zero_faults, 1);
                Stats::count(&stats.zero_pages, count);
                let r = source.zero(start, count).map(|()| None);
                (start, count, r, State::Untouched)
            }
            FaultPlan::Buffer(buf) => {
                shared.wait_for_room(1);
                Stats::count(&stats.buffer_faults, 1);
                let r = source.copy(page, &buf).map(|()| Some(vec![hash(&buf)]));
                (page, 1, r, State::Evicted)
            }
            FaultPlan::Fetch { start, count } => {
                shared.wait_for_room(count);
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
                let hashes = data.chunks(PAGE).map(hash).collect();
                let r = source.copy(start, &data).map(|()| Some(hashes));
                (start, count, r, State::Remote)
            }
        };
        match result {
            Ok(hashes) => {
                let resident = shared.table().installed(start, count, hashes.as_deref());
                stats.resident_now(resident);
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
