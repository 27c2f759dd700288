//! The evictor: keeps guest RAM's resident pages under the limit.
//!
//! Cold pages are found in the order they became resident (a FIFO with a second chance for
//! pages that were faulted back in after an eviction: userspace cannot see the accessed bits
//! of guest page tables cheaply, and a page that came back is the one signal it has that a
//! page is hot). A round takes a batch of candidates and:
//! 1. parks the vCPUs ([`super::pause::PauseGate`]): the guest cannot write, nor post a
//!    request that lets a device write, any page;
//! 2. asks the ring registry which pages devices may still touch (rings, and the buffers of
//!    every descriptor in their tables) and keeps those;
//! 3. under the table lock, copies each other candidate out, decides from its hash whether the
//!    monitors' copy is current (no write), whether it is zeros the monitors never held (no
//!    write, no remote memory), or dirty; then punches the pages out of the memfd
//!    (`fallocate(PUNCH_HOLE)`: the host memory is freed, every mapping faults on next touch);
//! 4. lets the vCPUs run, and writes the dirty pages back in one pipelined batch. Until a
//!    page's write lands, a fault on it is served from its copy.

use std::collections::BTreeSet;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use super::stats::Stats;
use super::table::{PageBuf, Verdict, PAGE};
use super::Shared;

/// Runs the evictor until the pager stops.
pub fn run(shared: Arc<Shared>) {
    while !shared.stopping() && !shared.failed() {
        if !shared.wait_for_pressure() {
            continue;
        }
        if let Err(reason) = round(&shared) {
            shared.fail(reason);
            return;
        }
    }
}

/// One eviction round; an error is fatal (a page could not be written back).
fn round(shared: &Shared) -> Result<(), String> {
    let batch = shared.config.evict_batch;
    let candidates = shared.table().candidates(batch);
    if candidates.is_empty() {
        std::thread::sleep(Duration::from_millis(1));
        return Ok(());
    }
    let give_up = || shared.stopping() || shared.failed();
    let Some((paused, took)) = shared.gate.pause(crate::kick::signal_number(), &give_up) else {
        shared.table().requeue(&candidates);
        return Ok(());
    };
    let device_pages = shared.device_file_pages();
    let mut kept = Vec::new();
    let mut dirty: Vec<(u64, PageBuf)> = Vec::new();
    {
        let mut table = shared.table();
        let mut out: Vec<u64> = Vec::new();
        for &page in &candidates {
            if device_pages.contains(&page) || !table.state(page).is_resident() {
                kept.push(page);
                continue;
            }
            let contents = shared.read_page(page);
            match table.evict(page, contents.clone()) {
                Verdict::Clean => Stats::count(&shared.stats.evicted_clean, 1),
                Verdict::Zero => Stats::count(&shared.stats.evicted_zero, 1),
                Verdict::Dirty => {
                    Stats::count(&shared.stats.evicted_dirty, 1);
                    dirty.push((page, contents));
                }
            }
            out.push(page);
        }
        punch(shared, &out)?;
        table.requeue(&kept);
    }
    drop(paused);
    Stats::count(&shared.stats.pauses, 1);
    let held = took.as_micros() as u64;
    Stats::count(&shared.stats.paused_us, held);
    shared.notify();
    if dirty.is_empty() {
        return Ok(());
    }
    write_back(shared, &dirty)
}

/// Writes `dirty` pages to the monitors in contiguous runs, pipelined; then tells the table.
fn write_back(shared: &Shared, dirty: &[(u64, PageBuf)]) -> Result<(), String> {
    let mut sorted: Vec<&(u64, PageBuf)> = dirty.iter().collect();
    sorted.sort_by_key(|(p, _)| *p);
    let mut runs: Vec<(u64, Vec<u8>)> = Vec::new();
    for (page, contents) in sorted {
        match runs.last_mut() {
            Some((start, data)) if *start + (data.len() / PAGE) as u64 == *page => {
                data.extend_from_slice(contents)
            }
            _ => runs.push((*page, contents.to_vec())),
        }
    }
    let refs: Vec<(u64, &[u8])> = runs.iter().map(|(s, d)| (*s, d.as_slice())).collect();
    shared.store.write(&refs).map_err(|e| {
        format!(
            "evicted pages of guest RAM could not be written to the memory monitors: {}",
            lego_report::error_chain(&e)
        )
    })?;
    Stats::count(&shared.stats.writeback_batches, 1);
    let mut table = shared.table();
    for (page, _) in dirty {
        table.written(*page);
    }
    drop(table);
    shared.notify();
    Ok(())
}

/// Frees `pages` from the memfd (contiguous runs in one call each).
fn punch(shared: &Shared, pages: &[u64]) -> Result<(), String> {
    let mut sorted = pages.to_vec();
    sorted.sort_unstable();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut n = 1;
        while i + n < sorted.len() && sorted[i + n] == start + n as u64 {
            n += 1;
        }
        // SAFETY: fallocate on the memfd we own; the range lies within it; punching only
        // frees its pages (every mapping faults them in again through userfaultfd).
        let r = unsafe {
            libc::fallocate(
                shared.memfd.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                (start * PAGE as u64) as libc::off_t,
                (n * PAGE) as libc::off_t,
            )
        };
        if r != 0 {
            return Err(format!(
                "cannot free pages {start}..{} of guest RAM from the memfd: {}",
                start + n as u64,
                std::io::Error::last_os_error()
            ));
        }
        i += n;
    }
    Ok(())
}

/// Pages of the memfd, from guest-physical page numbers.
pub fn file_pages(gpa_pages: &BTreeSet<u64>, regions: &[(u64, u64, u64)]) -> BTreeSet<u64> {
    gpa_pages
        .iter()
        .filter_map(|&gp| {
            let gpa = gp * PAGE as u64;
            regions
                .iter()
                .find(|&&(start, len, _)| gpa >= start && gpa - start < len)
                .map(|&(start, _, off)| (off + gpa - start) / PAGE as u64)
        })
        .collect()
}
