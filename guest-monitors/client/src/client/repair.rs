//! [`RepairThread`]: the client's half of repairing a vRegion. It follows the manager's
//! placement of the vNode and copies a region that lost a copy into the monitor the manager
//! chose, while the vNode keeps reading and writing.
//!
//! The copy is done here, by the vNode's own client, rather than by the surviving monitor.
//! The client is the only writer of the vNode's pages, so it alone can tell when every write
//! also reaches the new copy; a monitor-side copy would need the client's word on that anyway
//! (or a log of writes, as LegoOS keeps), plus a monitor-to-monitor channel with its own
//! capability. The cost is that the pages cross the compute host's network twice (survivor
//! to client, client to new copy), throttled by the manager's `--repair-rate-mib`, and that a
//! vNode whose backend is not running is not repaired until it runs again (its status says
//! degraded meanwhile).
//!
//! For region `i` with repair target `t`, one attempt is:
//! 1. connect to `t` (with a fresh capability from the manager), free whatever `t` holds of
//!    the region (left by an earlier attempt, it may be older than the holders) and mark, in
//!    `t`'s custody, every page of the region that every holder has lost (so `t` never
//!    answers zeros for them);
//! 2. open a repair fence on `t` (`FILL_BEGIN`): from now on `t` remembers every page the
//!    vNode writes or trims in the region;
//! 3. make `t` the region's *filling* copy (written and trimmed, never read) and wait until
//!    every op started before that has finished: from here on every write reaches `t`, and
//!    the survivors hold the result of every earlier one;
//! 4. ask the holders which pages they store (`PRESENT`), read those from the holders (with
//!    failover) and send them to `t` as put-if-absent repair writes (`FILL_RUN`), at most
//!    the manager's rate, reporting progress; a page the vNode wrote or trimmed meanwhile
//!    wins on `t` in either arrival order (see `lego_monitors::pagestore::fence`);
//! 5. close the fence, report the copy done; once the manager answers that the region is
//!    repaired, `t` becomes a holder and serves reads too.
//!
//! An attempt that fails (the target restarted or does not answer, the survivors cannot be
//! read) is tried again at the next refresh, with the target still written to, so what it
//! holds stays current (a target that restarted, or one that missed writes during the copy
//! so that it lacks pages a holder has, is dropped first, so the next attempt starts from
//! nothing); if the manager lists the target as a holder although its answer to
//! the completion report was lost, the client takes it as done; an attempt the manager cancelled (the target died and
//! a new one was chosen, or the last holder died and the region is lost) stops writing to
//! the target at once.

use std::collections::BTreeSet;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use lego_fabric::Rights;
use lego_report::error_chain;

use super::vnode::{Layout, Shared, Slot};
use super::{CallError, ManagerClient, MemoryClient};
use crate::proto::manager::{MemoryPlacement, RepairAck, RepairProgress};
use crate::proto::memory::{MAX_PAGES, MAX_PRESENT_PAGES, PAGE_SIZE};

/// Timings of a [`RepairThread`].
#[derive(Debug, Clone)]
pub struct RepairConfig {
    /// How often the manager is asked for the vNode's placement.
    pub refresh: Duration,
    /// How often while a copy of some region is down (a repair is likely coming).
    pub refresh_when_down: Duration,
    /// How often the copy's progress is reported.
    pub report_every: Duration,
    /// Pages per repair write (1 to 1024).
    pub chunk_pages: u32,
    /// How long a change of the copies waits for the ops in flight before it gives up.
    pub drain_patience: Duration,
}

impl Default for RepairConfig {
    fn default() -> Self {
        Self {
            refresh: Duration::from_secs(1),
            refresh_when_down: Duration::from_millis(250),
            report_every: Duration::from_millis(250),
            chunk_pages: 256,
            drain_patience: Duration::from_secs(60),
        }
    }
}

/// Why an attempt to fill a region's new copy stopped.
#[derive(Debug, thiserror::Error)]
pub enum FillError {
    /// The manager could not be asked.
    #[error("the manager did not answer")]
    Manager(#[source] CallError),
    /// The new copy's monitor failed.
    #[error("the monitor at {addr} being filled with the region's new copy failed")]
    Target {
        /// Its address.
        addr: String,
        /// What failed.
        #[source]
        source: CallError,
    },
    /// The new copy's monitor restarted during the copy.
    #[error("the monitor at {addr} being filled restarted during the copy; starting over")]
    TargetRestarted {
        /// Its address.
        addr: String,
    },
    /// No holder said which pages it stores.
    #[error("no holder of the region could say which pages it stores")]
    Source(#[source] CallError),
    /// Ops in flight did not finish in time.
    #[error("page operations in flight did not finish within {0:?}")]
    Drain(Duration),
    /// The manager no longer repairs the region onto this target.
    #[error("the manager cancelled the repair onto {addr}")]
    Cancelled {
        /// The target.
        addr: String,
    },
    /// Writes that missed the new copy left it without pages the holders have.
    #[error(
        "{holes} page(s) the holders have are missing on the new copy at {addr} (writes to it \
         failed during the copy); starting over"
    )]
    Holes {
        /// The target.
        addr: String,
        /// Pages missing.
        holes: u64,
    },
    /// The thread is stopping.
    #[error("the repair thread is stopping")]
    Stopped,
}

type Flag = Arc<(Mutex<bool>, Condvar)>;

/// A running repair follower; dropping it stops the thread.
pub struct RepairThread {
    stop: Flag,
    thread: Option<JoinHandle<()>>,
}

impl RepairThread {
    /// Follows the manager's repairs of `shared`'s vNode through `manager`.
    ///
    /// # Panics
    /// If the operating system cannot create the thread.
    pub(crate) fn start(
        shared: Arc<Shared>,
        manager: ManagerClient,
        config: RepairConfig,
    ) -> RepairThread {
        let stop: Flag = Arc::new((Mutex::new(false), Condvar::new()));
        let worker = Worker {
            shared,
            manager,
            config,
            stop: stop.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("repair-{}", worker.vnode()))
            .spawn(move || worker.run())
            .expect("the OS could not create the vRegion repair thread");
        RepairThread {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for RepairThread {
    fn drop(&mut self) {
        {
            let (lock, cv) = &*self.stop;
            *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
            cv.notify_all();
        }
        // A thread between two steps stops at once; one waiting for an answer is left to
        // finish on its own (it checks the flag after every step).
        if let Some(t) = self.thread.take() {
            std::thread::sleep(Duration::from_millis(2));
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

struct Worker {
    shared: Arc<Shared>,
    manager: ManagerClient,
    config: RepairConfig,
    stop: Flag,
}

fn bit(bits: &[u8], i: u64) -> bool {
    bits[(i / 8) as usize] & (1 << (i % 8)) != 0
}

impl Worker {
    fn vnode(&self) -> u64 {
        self.shared.placement.vnode
    }

    /// Sleeps up to `wait`; true if the thread was stopped.
    fn stopped_within(&self, wait: Duration) -> bool {
        let (lock, cv) = &*self.stop;
        let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = cv
            .wait_timeout_while(guard, wait, |stop| !*stop)
            .unwrap_or_else(|e| e.into_inner());
        *guard
    }

    fn stopped(&self) -> bool {
        self.stopped_within(Duration::ZERO)
    }

    fn run(&self) {
        loop {
            let wait = if self.shared.layout().any_down() {
                self.config.refresh_when_down
            } else {
                self.config.refresh
            };
            if self.stopped_within(wait) {
                return;
            }
            match self.manager.memory_placement(self.vnode()) {
                Ok(p) => {
                    if self.follow(&p).is_err() {
                        return;
                    }
                }
                Err(e) => tracing::debug!(vnode = self.vnode(), error = %error_chain(&e),
                    "could not ask the manager for the vNode's placement; asking again later"),
            }
        }
    }

    /// Brings the copies in line with `p`; `Err` only when stopping.
    fn follow(&self, p: &MemoryPlacement) -> Result<(), FillError> {
        for r in &p.regions {
            let i = r.index as usize;
            if i >= self.shared.layout().holders.len() {
                continue;
            }
            let listed: Vec<&str> = r.holders().collect();
            self.adopt_recorded(i, &listed);
            self.retain_holders(i, &listed);
            let target = r.repair.as_ref().and_then(|x| x.target.clone());
            let rate = r.repair.as_ref().map_or(0, |x| x.rate_mib_s);
            match target {
                Some(t) => match self.fill(i, &t, rate) {
                    Ok(()) => {}
                    Err(FillError::Stopped) => return Err(FillError::Stopped),
                    // A target that restarted lost what it had: the next attempt starts over
                    // from nothing, as with a new target (its custody is reset by the trim).
                    Err(
                        e @ (FillError::Cancelled { .. }
                        | FillError::TargetRestarted { .. }
                        | FillError::Holes { .. }),
                    ) => {
                        tracing::warn!(vnode = self.vnode(), region = i, "{e}");
                        self.cancel(i);
                    }
                    Err(e) => tracing::warn!(vnode = self.vnode(), region = i,
                        error = %error_chain(&e), "repairing a vRegion failed; trying again"),
                },
                None => self.cancel(i),
            }
        }
        Ok(())
    }

    /// Drops the holders of region `i` the manager no longer lists (they died); never the
    /// last one, and never adds one (a holder this client did not fill may lack its pages).
    fn retain_holders(&self, i: usize, listed: &[&str]) {
        let l = self.shared.layout();
        let keep: Vec<usize> = l.holders[i]
            .iter()
            .copied()
            .filter(|&m| listed.contains(&l.clients[m].addr.as_str()))
            .collect();
        if keep.is_empty() || keep.len() == l.holders[i].len() {
            return;
        }
        tracing::info!(vnode = self.vnode(), region = i, holders = %listed.join(","),
            "the manager dropped dead copies of a vRegion; no longer using them");
        self.shared.change(|l| {
            let mut n = l.clone();
            n.holders[i].retain(|m| keep.contains(m));
            n
        });
    }

    /// Makes region `i`'s filling copy a holder if the manager lists it as one: the manager
    /// recorded the repair done, though its answer did not get here.
    fn adopt_recorded(&self, i: usize, listed: &[&str]) {
        let l = self.shared.layout();
        let Some(m) = l.filling[i] else {
            return;
        };
        if !listed.contains(&l.clients[m].addr.as_str()) {
            return;
        }
        tracing::info!(vnode = self.vnode(), region = i, target = %l.clients[m].addr,
            "the manager recorded the repair of a vRegion as done; reading its new copy too");
        self.shared.change(|l| {
            let mut n = l.clone();
            n.filling[i] = None;
            if !n.holders[i].contains(&m) {
                n.holders[i].push(m);
            }
            n
        });
    }

    /// Stops writing to region `i`'s filling copy, if any, and frees what it got there.
    fn cancel(&self, i: usize) {
        let l = self.shared.layout();
        let Some(m) = l.filling[i] else {
            return;
        };
        self.shared.change(|l| {
            let mut n = l.clone();
            n.filling[i] = None;
            n
        });
        let rp = self.shared.placement.region_pages();
        if l.is_up(m) && !l.holders.iter().any(|h| h.contains(&m)) {
            let c = &l.clients[m].client;
            let _ = c.fill_end(i as u64 * rp, rp);
            let _ = c.trim(i as u64 * rp, rp);
        }
        tracing::info!(vnode = self.vnode(), region = i, target = %l.clients[m].addr,
            "stopped filling a vRegion's new copy");
    }

    /// The position of the monitor at `addr`, connecting to it if needed.
    fn slot(&self, addr: &str) -> Result<usize, FillError> {
        if let Some(m) = self.shared.layout().position(addr) {
            return Ok(m);
        }
        let cap = self
            .manager
            .issue_capability(self.vnode(), Rights::MEMORY, Duration::ZERO)
            .map_err(FillError::Manager)?;
        let client = MemoryClient::connect(
            addr,
            self.shared.key.clone(),
            &cap,
            self.shared.config.clone(),
        )
        .map_err(|source| FillError::Target {
            addr: addr.into(),
            source,
        })?;
        let mut pos = 0;
        self.shared.change(|l| {
            let mut n = l.clone();
            pos = n.clients.len();
            n.clients.push(Slot::new(addr.to_string(), client));
            n
        });
        Ok(pos)
    }

    fn report(
        &self,
        i: usize,
        target: &str,
        copied: u64,
        total: u64,
        done: bool,
    ) -> Result<RepairAck, FillError> {
        let ack = self
            .manager
            .repair_progress(&RepairProgress {
                vnode: self.vnode(),
                region: i as u64,
                target: target.into(),
                copied_pages: copied,
                total_pages: total,
                done,
            })
            .map_err(FillError::Manager)?;
        if ack == RepairAck::Cancelled {
            return Err(FillError::Cancelled {
                addr: target.into(),
            });
        }
        Ok(ack)
    }

    /// Marks on `m` every page of `start..start+count` that every holder in `l` has lost.
    fn carry_losses(l: &Layout, i: usize, m: usize, start: u64, count: u64) {
        let mut lost: Option<BTreeSet<u64>> = None;
        for &h in &l.holders[i] {
            let mine: BTreeSet<u64> = l.clients[h].client.lost_pages(start, count);
            lost = Some(match lost {
                None => mine,
                Some(prev) => prev.intersection(&mine).copied().collect(),
            });
        }
        for p in lost.unwrap_or_default() {
            l.clients[m].client.forget(p, 1);
        }
    }

    /// Pages of `start..start+count` lost on `target` (a write to it failed or skipped it)
    /// that some holder has not lost: the new copy would not be a full copy.
    fn holes(l: &Layout, i: usize, target: &MemoryClient, start: u64, count: u64) -> u64 {
        let lost = target.lost_pages(start, count);
        if lost.is_empty() {
            return 0;
        }
        let everywhere: Vec<BTreeSet<u64>> = l.holders[i]
            .iter()
            .map(|&h| l.clients[h].client.lost_pages(start, count))
            .collect();
        lost.iter()
            .filter(|p| !everywhere.iter().all(|s| s.contains(p)))
            .count() as u64
    }

    /// Which pages of `start..start+count` some up holder stores: a bitmap.
    fn present(&self, l: &Layout, i: usize, start: u64, count: u64) -> Result<Vec<u8>, FillError> {
        let mut bits = vec![0u8; count.div_ceil(8) as usize];
        let mut first_err = None;
        let mut answered = false;
        'holders: for &h in &l.holders[i] {
            let mut mine = vec![0u8; bits.len()];
            let mut off = 0u64;
            while off < count {
                let n = (count - off).min(u64::from(MAX_PRESENT_PAGES)) as u32;
                match l.clients[h].client.present(start + off, n) {
                    Ok((b, _)) => {
                        let at = (off / 8) as usize;
                        mine[at..at + b.len()].copy_from_slice(&b);
                    }
                    Err(e) => {
                        l.failed(h, &e);
                        first_err.get_or_insert(e);
                        continue 'holders;
                    }
                }
                off += u64::from(n);
            }
            answered = true;
            for (b, m) in bits.iter_mut().zip(mine) {
                *b |= m;
            }
        }
        match (answered, first_err) {
            (false, Some(e)) => Err(FillError::Source(e)),
            (false, None) => Err(FillError::Source(CallError::Invalid(
                "the region has no holder".into(),
            ))),
            _ => Ok(bits),
        }
    }

    /// One attempt at filling region `i`'s new copy on `target` (see the module's steps).
    fn fill(&self, i: usize, target: &str, rate_mib_s: u32) -> Result<(), FillError> {
        let rp = self.shared.placement.region_pages();
        let (start, count) = (i as u64 * rp, rp);
        let m = self.slot(target)?;
        let tgt = |source| FillError::Target {
            addr: target.into(),
            source,
        };
        let l = self.shared.layout();
        if l.holders[i].contains(&m) {
            return Ok(());
        }
        let client = l.clients[m].client.clone();
        if l.filling[i] != Some(m) {
            self.cancel(i);
            // Nothing writes to the target yet: whatever it holds of the region (from an
            // attempt of an earlier process, or one whose clean-up failed) may be older than
            // the holders, and a put-if-absent would keep it. Start from nothing.
            client.trim(start, count).map_err(tgt)?;
            Self::carry_losses(&l, i, m, start, count);
        }
        drop(l);
        let incarnation = client.fill_begin(start, count).map_err(tgt)?;
        // After the fence opened, a failure from a new incarnation of the target (whose fence
        // is gone with the old one) is a restart.
        let failed = |source| {
            if client
                .fabric()
                .incarnation()
                .is_some_and(|now| now != incarnation)
            {
                FillError::TargetRestarted {
                    addr: target.into(),
                }
            } else {
                tgt(source)
            }
        };
        let old = self.shared.change(|l| {
            let mut n = l.clone();
            n.filling[i] = Some(m);
            n
        });
        if !Shared::drain(old, self.config.drain_patience) {
            return Err(FillError::Drain(self.config.drain_patience));
        }
        let l = self.shared.layout();
        let bits = self.present(&l, i, start, count)?;
        drop(l);
        let total: u64 = bits.iter().map(|b| u64::from(b.count_ones())).sum();
        tracing::info!(
            vnode = self.vnode(),
            region = i,
            target,
            pages = total,
            rate_mib_s,
            "copying a vRegion to its new copy"
        );
        self.report(i, target, 0, total, false)?;
        let chunk = u64::from(self.config.chunk_pages.clamp(1, MAX_PAGES));
        let began = Instant::now();
        let mut last_report = Instant::now();
        let (mut copied, mut sent_bytes, mut unreadable) = (0u64, 0u64, 0u64);
        let mut w = 0;
        while w < count {
            if self.stopped() {
                return Err(FillError::Stopped);
            }
            let end = (w + chunk).min(count);
            let set: Vec<u64> = (w..end).filter(|&k| bit(&bits, k)).collect();
            w = end;
            let (Some(&lo), Some(&hi)) = (set.first(), set.last()) else {
                continue;
            };
            let n = hi - lo + 1;
            match self.shared.read_run(start + lo, n) {
                Ok(data) if data.len() == n as usize * PAGE_SIZE => {
                    let (_, answered) = client.fill_run(start + lo, &data).map_err(failed)?;
                    if answered != incarnation {
                        return Err(FillError::TargetRestarted {
                            addr: target.into(),
                        });
                    }
                    sent_bytes += data.len() as u64;
                }
                Ok(data) => {
                    return Err(FillError::Source(CallError::Invalid(format!(
                        "the holders answered {} bytes for {n} pages",
                        data.len()
                    ))))
                }
                Err(CallError::Lost { .. }) => {
                    // Some pages of the run were lost on every holder (restarted ones): copy
                    // the others one by one; the new copy must not serve zeros for the lost.
                    for &k in &set {
                        let p = start + k;
                        match self.shared.read_run(p, 1) {
                            Ok(data) if data.len() == PAGE_SIZE => {
                                let (_, answered) = client.fill_run(p, &data).map_err(failed)?;
                                if answered != incarnation {
                                    return Err(FillError::TargetRestarted {
                                        addr: target.into(),
                                    });
                                }
                                sent_bytes += PAGE_SIZE as u64;
                            }
                            Err(CallError::Lost { .. }) => {
                                client.forget(p, 1);
                                unreadable += 1;
                            }
                            Ok(_) | Err(_) => {
                                return Err(FillError::Source(CallError::Invalid(format!(
                                    "page {p} could not be read from any holder"
                                ))))
                            }
                        }
                    }
                }
                // No holder answers: the copy cannot be completed now (and if they are gone
                // for good, the manager declares the region lost).
                Err(e) => return Err(FillError::Source(e)),
            }
            copied += set.len() as u64;
            if rate_mib_s > 0 {
                let due = Duration::from_secs_f64(
                    sent_bytes as f64 / (f64::from(rate_mib_s) * 1048576.0),
                );
                if let Some(wait) = due.checked_sub(began.elapsed()) {
                    if self.stopped_within(wait) {
                        return Err(FillError::Stopped);
                    }
                }
            }
            if last_report.elapsed() >= self.config.report_every {
                self.report(i, target, copied, total, false)?;
                last_report = Instant::now();
            }
        }
        if client.fill_end(start, count).map_err(failed)? != incarnation {
            return Err(FillError::TargetRestarted {
                addr: target.into(),
            });
        }
        let secs = began.elapsed().as_secs_f64();
        let holes = Self::holes(&self.shared.layout(), i, &client, start, count);
        if holes > 0 {
            return Err(FillError::Holes {
                addr: target.into(),
                holes,
            });
        }
        let lost_there = client.lost_in(start, count);
        self.report(i, target, copied, total, true)?;
        self.shared.change(|l| {
            let mut n = l.clone();
            n.filling[i] = None;
            if !n.holders[i].contains(&m) {
                n.holders[i].push(m);
            }
            n
        });
        tracing::info!(
            vnode = self.vnode(),
            region = i,
            target,
            pages = copied,
            unreadable,
            lost_there,
            secs,
            mib_s = sent_bytes as f64 / 1048576.0 / secs.max(1e-9),
            "vRegion repaired: its new copy is complete and serves reads"
        );
        Ok(())
    }
}
