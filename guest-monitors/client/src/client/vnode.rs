//! [`VnodeMemory`]: a vNode's whole remote memory, spread as vRegions over several memory
//! monitors, addressed by page index. Runs are split at region boundaries; [`VnodeMemory::submit`]
//! starts a batch of runs with one vectored write per monitor connection and lets each run be
//! waited on later, and the blocking calls are built on it.
//!
//! A vRegion may have several copies (its placement's holders). A write goes to every copy
//! that is up and completes when at least one took it; a copy that failed or was skipped is
//! told to forget those pages ([`MemoryClient::forget`]), so it never serves them stale. A
//! read goes to the first copy that is up and fails over to the next on any error. A copy
//! whose connection failed is skipped for [`DOWN_FOR`] before it is tried again.
//!
//! The set of copies can change while the vNode runs: with [`VnodeMemory::keep_repaired`], a
//! thread ([`super::repair`]) follows the manager's repairs, adds a region's new copy as a
//! *filling* copy (written, trimmed, never read), copies the region into it, and makes it a
//! holder once the manager has recorded the repair as done. Every op works on the
//! [`Layout`] it started with, so a change waits only for the ops already in flight.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use lego_fabric::{Capability, ClientConfig, ClientError, Identity};

use super::repair::{RepairConfig, RepairThread};
use super::{CallError, ManagerClient, MemoryClient, PageOp, PendingPages};
use crate::proto::manager::MemoryPlacement;
use crate::proto::memory::{MAX_PAGES, PAGE_SIZE};

/// One monitor's share of a vNode's memory: its address, its client, and the page runs
/// (start, count) of the regions it holds a copy of.
pub type Holding = (String, MemoryClient, Vec<(u64, u64)>);

/// How long a copy whose connection failed is skipped before it is tried again.
pub const DOWN_FOR: Duration = Duration::from_millis(1000);

/// The connection to one memory monitor holding (or filling) copies of this vNode's regions.
pub(crate) struct Slot {
    /// Its fabric address, as the manager names it.
    pub(crate) addr: String,
    /// The client.
    pub(crate) client: MemoryClient,
    /// Until when it is skipped, in ms after the layout's `born` (0: up).
    down_until_ms: AtomicU64,
}

impl Slot {
    pub(crate) fn new(addr: String, client: MemoryClient) -> Arc<Slot> {
        Arc::new(Slot {
            addr,
            client,
            down_until_ms: AtomicU64::new(0),
        })
    }
}

/// Which monitors serve which region: one snapshot, shared by every op that started with it.
#[derive(Clone)]
pub(crate) struct Layout {
    /// Every monitor connection, by position.
    pub(crate) clients: Vec<Arc<Slot>>,
    /// Positions of each region's holders, primary first: written and read.
    pub(crate) holders: Vec<Vec<usize>>,
    /// Position of each region's filling copy (a repair's target): written, never read.
    pub(crate) filling: Vec<Option<usize>>,
    born: Instant,
}

/// The copies an op works on (the name the op code below uses for a [`Layout`]).
type Copies = Layout;

impl Layout {
    fn now_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64 + 1
    }

    fn client(&self, m: usize) -> &MemoryClient {
        &self.clients[m].client
    }

    pub(crate) fn is_up(&self, m: usize) -> bool {
        self.clients[m].down_until_ms.load(Ordering::Relaxed) <= self.now_ms()
    }

    /// Every copy a write or trim of `region` goes to: its holders, then its filling copy.
    fn written(&self, region: usize) -> impl Iterator<Item = usize> + '_ {
        self.holders[region]
            .iter()
            .copied()
            .chain(self.filling[region].filter(|f| !self.holders[region].contains(f)))
    }

    /// Whether any copy is down now.
    pub(crate) fn any_down(&self) -> bool {
        (0..self.clients.len()).any(|m| !self.is_up(m))
    }

    /// The position of the monitor at `addr`, if connected.
    pub(crate) fn position(&self, addr: &str) -> Option<usize> {
        self.clients.iter().position(|s| s.addr == addr)
    }

    /// Marks client `m` down after `err`, if it is a connection failure (an answer from a
    /// working monitor, such as a lost page or a full monitor, is not).
    pub(crate) fn failed(&self, m: usize, err: &CallError) {
        let transport = matches!(
            err,
            CallError::Fabric(
                ClientError::Timeout(_) | ClientError::Disconnected(_) | ClientError::Io(_)
            ) | CallError::Batch(_)
        );
        if transport {
            let until = self.now_ms() + DOWN_FOR.as_millis() as u64;
            let slot = &self.clients[m];
            if slot.down_until_ms.swap(until, Ordering::Relaxed) <= self.now_ms() {
                tracing::warn!(
                    monitor = %slot.addr,
                    error = %lego_report::error_chain(err),
                    "a memory monitor holding copies of this vNode's pages failed; its copies \
                     are skipped for a while"
                );
            }
        }
    }
}

/// What [`VnodeMemory`] shares with its repair thread.
pub(crate) struct Shared {
    pub(crate) placement: MemoryPlacement,
    layout: RwLock<Arc<Layout>>,
    pub(crate) key: Identity,
    pub(crate) config: ClientConfig,
}

/// One vNode's remote memory across its memory monitors.
pub struct VnodeMemory {
    shared: Arc<Shared>,
    /// Follows the manager's repairs while it lives ([`VnodeMemory::keep_repaired`]).
    repair: Option<RepairThread>,
}

/// One piece of an op: a run inside one region, in flight on its copies.
enum Piece {
    /// Sent to every copy that was up; the others already forgot the pages. Done when a
    /// holder of `region` took it (a filling copy alone is not readable).
    Write {
        region: usize,
        start: u64,
        count: u64,
        sent: Vec<(usize, Result<PendingPages, CallError>)>,
    },
    /// Sent to the first copy that was up; the others are the fallbacks, in order.
    Read {
        start: u64,
        count: u64,
        first: Option<(usize, Result<PendingPages, CallError>)>,
        fallbacks: Vec<usize>,
    },
}

/// One op of [`VnodeMemory::submit`] in flight: its pieces on their monitors, or the error
/// that kept it from being sent.
pub struct PendingRun {
    pieces: Result<Vec<Piece>, CallError>,
    copies: Arc<Copies>,
}

fn no_copy(start: u64, count: u64) -> CallError {
    CallError::Invalid(format!(
        "no copy of pages {start}+{count} is on a working memory monitor"
    ))
}

impl Piece {
    fn wait(self, copies: &Copies) -> Result<Vec<u8>, CallError> {
        match self {
            Piece::Write {
                region,
                start,
                count,
                sent,
            } => {
                let mut done = 0;
                let mut first_err = None;
                for (m, pending) in sent {
                    match pending.and_then(PendingPages::wait) {
                        Ok(_) if copies.holders[region].contains(&m) => done += 1,
                        Ok(_) => {}
                        Err(e) => {
                            copies.failed(m, &e);
                            copies.client(m).forget(start, count);
                            first_err.get_or_insert(e);
                        }
                    }
                }
                match (done, first_err) {
                    (0, Some(e)) => Err(e),
                    (0, None) => Err(no_copy(start, count)),
                    _ => Ok(Vec::new()),
                }
            }
            Piece::Read {
                start,
                count,
                first,
                fallbacks,
            } => {
                let mut first_err = None;
                if let Some((m, pending)) = first {
                    match pending.and_then(PendingPages::wait) {
                        Ok(pages) => return Ok(pages),
                        Err(e) => {
                            copies.failed(m, &e);
                            first_err = Some(e);
                        }
                    }
                }
                for m in fallbacks {
                    // `count` fits in one request: pieces never cross MAX_PAGES.
                    match copies.client(m).read_run(start, count as u32) {
                        Ok(pages) => return Ok(pages),
                        Err(e) => {
                            copies.failed(m, &e);
                            first_err.get_or_insert(e);
                        }
                    }
                }
                Err(first_err.unwrap_or_else(|| no_copy(start, count)))
            }
        }
    }
}

impl PendingRun {
    /// Waits for every piece; returns the pages read (empty for a write) or the first error.
    /// Every answer is checked for length, and every piece is waited for before an error is
    /// reported, so nothing of the op stays in flight.
    pub fn wait(self) -> Result<Vec<u8>, CallError> {
        let mut out = Vec::new();
        let mut first_err = None;
        for piece in self.pieces? {
            match piece.wait(&self.copies) {
                Ok(pages) if out.is_empty() => out = pages,
                Ok(pages) => out.extend_from_slice(&pages),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(out), Err)
    }
}

fn whole_pages(data: &[u8]) -> Result<u64, CallError> {
    if !data.len().is_multiple_of(PAGE_SIZE) {
        return Err(CallError::Invalid(format!(
            "{} bytes are not whole 4096-byte pages",
            data.len()
        )));
    }
    Ok((data.len() / PAGE_SIZE) as u64)
}

impl VnodeMemory {
    /// Connects to every monitor holding a copy of a region of `placement`, attaching `cap`
    /// (for `placement.vnode`).
    pub fn connect(
        placement: MemoryPlacement,
        key: impl Into<Identity>,
        cap: &Capability,
        config: ClientConfig,
    ) -> Result<Self, CallError> {
        let key = key.into();
        if cap.vnode != placement.vnode {
            return Err(CallError::Invalid(format!(
                "the capability is for vNode {} but the placement is for vNode {}",
                cap.vnode, placement.vnode
            )));
        }
        let mut clients: Vec<Arc<Slot>> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut holders = Vec::with_capacity(placement.regions.len());
        for (i, r) in placement.regions.iter().enumerate() {
            if r.index != i as u64 {
                return Err(CallError::Invalid(format!(
                    "the placement's region {i} is numbered {}",
                    r.index
                )));
            }
            let mut h = Vec::new();
            for addr in r.holders() {
                let m = match index.get(addr) {
                    Some(&m) => m,
                    None => {
                        let c = MemoryClient::connect(addr, key.clone(), cap, config.clone())?;
                        index.insert(addr.to_string(), clients.len());
                        clients.push(Slot::new(addr.to_string(), c));
                        clients.len() - 1
                    }
                };
                if !h.contains(&m) {
                    h.push(m);
                }
            }
            holders.push(h);
        }
        let filling = vec![None; holders.len()];
        let layout = Layout {
            clients,
            holders,
            filling,
            born: Instant::now(),
        };
        Ok(Self {
            shared: Arc::new(Shared {
                placement,
                layout: RwLock::new(Arc::new(layout)),
                key,
                config,
            }),
            repair: None,
        })
    }

    /// Follows the manager's repairs of this vNode's regions for as long as this lives (see
    /// [`super::repair`]): a region that lost a copy gets its new copy filled from a survivor,
    /// written to from the moment the copy starts and read from once it is complete.
    pub fn keep_repaired(&mut self, manager: ManagerClient) {
        self.keep_repaired_with(manager, RepairConfig::default());
    }

    /// [`VnodeMemory::keep_repaired`] with explicit timings.
    pub fn keep_repaired_with(&mut self, manager: ManagerClient, config: RepairConfig) {
        self.repair = Some(RepairThread::start(self.shared.clone(), manager, config));
    }

    /// The placement this was connected with (the holders may have changed since: see
    /// [`VnodeMemory::holders`]).
    pub fn placement(&self) -> &MemoryPlacement {
        &self.shared.placement
    }

    /// The monitors serving region `region` now: its holders (read and written), then its
    /// filling copy if a repair is copying into one.
    pub fn holders(&self, region: usize) -> (Vec<String>, Option<String>) {
        let l = self.shared.layout();
        let name = |m: &usize| l.clients[*m].addr.clone();
        (
            l.holders
                .get(region)
                .into_iter()
                .flatten()
                .map(name)
                .collect(),
            l.filling.get(region).copied().flatten().map(|m| name(&m)),
        )
    }

    /// The fabric client of every monitor, to attach a renewed capability to.
    pub fn fabric_clients(&self) -> Vec<lego_fabric::Client> {
        self.shared.fabric_clients()
    }

    /// A function listing the fabric client of every monitor as the set changes (for
    /// [`super::Renewal::start_with`], so a copy added by a repair gets renewed capabilities).
    pub fn fabric_client_list(&self) -> impl Fn() -> Vec<lego_fabric::Client> + Send + 'static {
        let shared = self.shared.clone();
        move || shared.fabric_clients()
    }

    /// Each monitor's address and client with the page runs (start, count) of the regions
    /// it holds a copy of: what a restarted backend needs to resume the pages' custody.
    pub fn holdings(&self) -> Vec<Holding> {
        let rp = self.shared.placement.region_pages();
        let l = self.shared.layout();
        let mut out: Vec<Holding> = l
            .clients
            .iter()
            .map(|s| (s.addr.clone(), s.client.clone(), Vec::new()))
            .collect();
        for (region, holders) in l.holders.iter().enumerate() {
            for &m in holders {
                out[m].2.push((region as u64 * rp, rp));
            }
        }
        out
    }

    /// Pages covered by the placement.
    pub fn pages(&self) -> u64 {
        self.shared.pages()
    }

    /// Starts `ops` without waiting; see [`Shared::submit`].
    pub fn submit(&self, ops: &[PageOp<'_>]) -> Vec<PendingRun> {
        self.shared.submit(ops)
    }

    /// Reads `count` pages from `start`, wherever they live.
    pub fn read_run(&self, start: u64, count: u64) -> Result<Vec<u8>, CallError> {
        self.shared.read_run(start, count)
    }

    /// Writes whole pages from `start`, wherever they live.
    pub fn write_run(&self, start: u64, data: &[u8]) -> Result<(), CallError> {
        self.shared.write_run(start, data)
    }

    /// Frees every page of the vNode on every monitor of the placement (the placement itself
    /// stays reserved); returns how many pages were stored. A monitor that cannot be reached
    /// is passed over (its pages died with it or are freed when it is released); the call
    /// fails only if none could be reached.
    pub fn free_all(&self) -> Result<u64, CallError> {
        self.shared.free_all()
    }

    /// Frees `count` pages from `start` on every copy; returns how many the first copy of
    /// each piece stored. A copy that cannot be reached forgets the pages instead, so it never
    /// serves what was trimmed.
    pub fn trim(&self, start: u64, count: u64) -> Result<u64, CallError> {
        self.shared.trim(start, count)
    }
}

impl Shared {
    /// The layout new ops start with.
    pub(crate) fn layout(&self) -> Arc<Layout> {
        self.layout
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the layout with `f(current)` and returns the one replaced: once no op holds
    /// it any more ([`Shared::drain`]), every op in flight uses the new one.
    pub(crate) fn change(&self, f: impl FnOnce(&Layout) -> Layout) -> Arc<Layout> {
        let mut guard = self.layout.write().unwrap_or_else(|e| e.into_inner());
        let new = Arc::new(f(&guard));
        std::mem::replace(&mut *guard, new)
    }

    /// Waits until no op started with `old` is in flight (or `patience` passed; false then).
    pub(crate) fn drain(old: Arc<Layout>, patience: Duration) -> bool {
        let until = Instant::now() + patience;
        while Arc::strong_count(&old) > 1 {
            if Instant::now() > until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    fn fabric_clients(&self) -> Vec<lego_fabric::Client> {
        self.layout()
            .clients
            .iter()
            .map(|c| c.client.fabric().clone())
            .collect()
    }

    pub(crate) fn pages(&self) -> u64 {
        self.placement.regions.len() as u64 * self.placement.region_pages()
    }

    /// Splits `start..start+count` into (region, first page, page count) pieces that stay
    /// inside one region and one request.
    fn split(&self, start: u64, count: u64) -> Result<Vec<(usize, u64, u64)>, CallError> {
        let end = start
            .checked_add(count)
            .filter(|&e| e <= self.pages())
            .ok_or_else(|| {
                CallError::Invalid(format!(
                    "pages {start}+{count} lie outside the {} placed pages",
                    self.pages()
                ))
            })?;
        let rp = self.placement.region_pages();
        let mut out = Vec::new();
        let mut p = start;
        while p < end {
            let n = (end - p).min(rp - p % rp).min(u64::from(MAX_PAGES));
            out.push(((p / rp) as usize, p, n));
            p += n;
        }
        Ok(out)
    }

    /// Starts `ops` without waiting: each is split at region boundaries, each piece goes to
    /// the copies it needs (see the module's documentation), the pieces are grouped by
    /// monitor and each monitor gets its group with one vectored write. Returns one
    /// [`PendingRun`] per op, in order. The ops run concurrently, so none may depend on another.
    pub(crate) fn submit(&self, ops: &[PageOp<'_>]) -> Vec<PendingRun> {
        let layout = self.layout();
        let copies = &*layout;
        let mut batches: Vec<Vec<PageOp<'_>>> = vec![Vec::new(); copies.clients.len()];
        /// Where a piece went: (monitor, position in its batch) per copy sent to.
        enum Sent {
            Write(usize, u64, u64, Vec<(usize, usize)>),
            Read(u64, u64, Option<(usize, usize)>, Vec<usize>),
        }
        let mut plan: Vec<Result<Vec<Sent>, CallError>> = Vec::with_capacity(ops.len());
        for &op in ops {
            let (start, count, data) = match op {
                PageOp::Read { start, count } => (start, count, None),
                PageOp::Write { start, data } => match whole_pages(data) {
                    Ok(n) => (start, n, Some(data)),
                    Err(e) => {
                        plan.push(Err(e));
                        continue;
                    }
                },
            };
            plan.push(self.split(start, count).map(|pieces| {
                let mut off = 0usize;
                pieces
                    .into_iter()
                    .map(|(region, start, count)| {
                        let holders = &copies.holders[region];
                        match data {
                            Some(data) => {
                                let len = count as usize * PAGE_SIZE;
                                let piece = PageOp::Write {
                                    start,
                                    data: &data[off..off + len],
                                };
                                off += len;
                                let mut sent = Vec::new();
                                for m in copies.written(region) {
                                    if copies.is_up(m) {
                                        batches[m].push(piece);
                                        sent.push((m, batches[m].len() - 1));
                                    } else {
                                        copies.client(m).forget(start, count);
                                    }
                                }
                                Sent::Write(region, start, count, sent)
                            }
                            None => {
                                let mut order: Vec<usize> = holders.clone();
                                order.sort_by_key(|&m| !copies.is_up(m));
                                let first = order.first().copied().filter(|&m| copies.is_up(m));
                                let first = first.map(|m| {
                                    batches[m].push(PageOp::Read { start, count });
                                    (m, batches[m].len() - 1)
                                });
                                let fallbacks =
                                    order.into_iter().skip(usize::from(first.is_some()));
                                Sent::Read(start, count, first, fallbacks.collect())
                            }
                        }
                    })
                    .collect()
            }));
        }
        let mut sent: Vec<Result<Vec<Option<PendingPages>>, Arc<CallError>>> = batches
            .iter()
            .zip(&copies.clients)
            .map(|(batch, c)| {
                c.client
                    .submit_runs(batch)
                    .map(|p| p.into_iter().map(Some).collect())
                    .map_err(Arc::new)
            })
            .collect();
        let mut take = |(m, i): (usize, usize)| -> (usize, Result<PendingPages, CallError>) {
            let p = match &mut sent[m] {
                Ok(s) => s.get_mut(i).and_then(Option::take).ok_or_else(|| {
                    CallError::Invalid("the fabric returned fewer answers than requests".into())
                }),
                Err(e) => Err(CallError::Batch(e.clone())),
            };
            (m, p)
        };
        plan.into_iter()
            .map(|slots| PendingRun {
                pieces: slots.map(|slots| {
                    slots
                        .into_iter()
                        .map(|slot| match slot {
                            Sent::Write(region, start, count, to) => Piece::Write {
                                region,
                                start,
                                count,
                                sent: to.into_iter().map(&mut take).collect(),
                            },
                            Sent::Read(start, count, first, fallbacks) => Piece::Read {
                                start,
                                count,
                                first: first.map(&mut take),
                                fallbacks,
                            },
                        })
                        .collect()
                }),
                copies: layout.clone(),
            })
            .collect()
    }

    /// Starts one op and waits for it.
    fn run(&self, op: PageOp<'_>) -> Result<Vec<u8>, CallError> {
        match self.submit(&[op]).pop() {
            Some(p) => p.wait(),
            None => Err(CallError::Invalid("the page run was not started".into())),
        }
    }

    pub(crate) fn read_run(&self, start: u64, count: u64) -> Result<Vec<u8>, CallError> {
        self.run(PageOp::Read { start, count })
    }

    pub(crate) fn write_run(&self, start: u64, data: &[u8]) -> Result<(), CallError> {
        self.run(PageOp::Write { start, data }).map(|_| ())
    }

    fn free_all(&self) -> Result<u64, CallError> {
        let layout = self.layout();
        let mut freed = 0;
        let mut first_err = None;
        let mut reached = 0;
        for (m, c) in layout.clients.iter().enumerate() {
            match c.client.free_all() {
                Ok(n) => {
                    freed += n;
                    reached += 1;
                }
                Err(e) => {
                    layout.failed(m, &e);
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) if reached == 0 => Err(e),
            _ => Ok(freed),
        }
    }

    fn trim(&self, start: u64, count: u64) -> Result<u64, CallError> {
        let layout = self.layout();
        let mut freed = 0;
        for (region, p, n) in self.split(start, count)? {
            let mut done = false;
            let mut first_err = None;
            for m in layout.written(region) {
                let c = layout.client(m);
                if !layout.is_up(m) {
                    c.forget(p, n);
                    continue;
                }
                match c.trim(p, n) {
                    Ok(k) => {
                        if !done {
                            freed += k;
                        }
                        done = true;
                    }
                    Err(e) => {
                        layout.failed(m, &e);
                        c.forget(p, n);
                        first_err.get_or_insert(e);
                    }
                }
            }
            if let (false, Some(e)) = (done, first_err) {
                return Err(e);
            }
        }
        Ok(freed)
    }
}
