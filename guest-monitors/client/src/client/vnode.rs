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

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lego_fabric::{Capability, ClientConfig, ClientError, ClusterKey};

use super::{CallError, MemoryClient, PageOp, PendingPages};
use crate::proto::manager::MemoryPlacement;
use crate::proto::memory::{MAX_PAGES, PAGE_SIZE};

/// One monitor's share of a vNode's memory: its address, its client, and the page runs
/// (start, count) of the regions it holds a copy of.
pub type Holding<'a> = (String, &'a MemoryClient, Vec<(u64, u64)>);

/// How long a copy whose connection failed is skipped before it is tried again.
pub const DOWN_FOR: Duration = Duration::from_millis(1000);

/// The clients of every monitor holding some region, and which of them are down.
struct Copies {
    clients: Vec<MemoryClient>,
    /// Per client: until when it is skipped, in ms after `born` (0: up).
    down_until_ms: Vec<AtomicU64>,
    born: Instant,
}

impl Copies {
    fn now_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64 + 1
    }

    fn is_up(&self, m: usize) -> bool {
        self.down_until_ms[m].load(Ordering::Relaxed) <= self.now_ms()
    }

    /// Marks client `m` down after `err`, if it is a connection failure (an answer from a
    /// working monitor, such as a lost page or a full monitor, is not).
    fn failed(&self, m: usize, err: &CallError) {
        let transport = matches!(
            err,
            CallError::Fabric(
                ClientError::Timeout(_) | ClientError::Disconnected(_) | ClientError::Io(_)
            ) | CallError::Batch(_)
        );
        if transport {
            let until = self.now_ms() + DOWN_FOR.as_millis() as u64;
            if self.down_until_ms[m].swap(until, Ordering::Relaxed) <= self.now_ms() {
                tracing::warn!(
                    monitor = %self.clients[m].fabric().peer_addr(),
                    error = %lego_report::error_chain(err),
                    "a memory monitor holding copies of this vNode's pages failed; its copies \
                     are skipped for a while"
                );
            }
        }
    }
}

/// One vNode's remote memory across its memory monitors.
pub struct VnodeMemory {
    placement: MemoryPlacement,
    copies: Arc<Copies>,
    /// Client positions of each region's holders, primary first.
    holders: Vec<Vec<usize>>,
}

/// One piece of an op: a run inside one region, in flight on its copies.
enum Piece {
    /// Sent to every copy that was up; the others already forgot the pages.
    Write {
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
            Piece::Write { start, count, sent } => {
                let mut done = 0;
                let mut first_err = None;
                for (m, pending) in sent {
                    match pending.and_then(PendingPages::wait) {
                        Ok(_) => done += 1,
                        Err(e) => {
                            copies.failed(m, &e);
                            copies.clients[m].forget(start, count);
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
                    match copies.clients[m].read_run(start, count as u32) {
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
        key: ClusterKey,
        cap: &Capability,
        config: ClientConfig,
    ) -> Result<Self, CallError> {
        if cap.vnode != placement.vnode {
            return Err(CallError::Invalid(format!(
                "the capability is for vNode {} but the placement is for vNode {}",
                cap.vnode, placement.vnode
            )));
        }
        let mut clients = Vec::new();
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
                        clients.push(c);
                        clients.len() - 1
                    }
                };
                if !h.contains(&m) {
                    h.push(m);
                }
            }
            holders.push(h);
        }
        let down_until_ms = clients.iter().map(|_| AtomicU64::new(0)).collect();
        Ok(Self {
            placement,
            copies: Arc::new(Copies {
                clients,
                down_until_ms,
                born: Instant::now(),
            }),
            holders,
        })
    }

    /// The placement in use.
    pub fn placement(&self) -> &MemoryPlacement {
        &self.placement
    }

    /// The fabric client of every monitor, to attach a renewed capability to.
    pub fn fabric_clients(&self) -> Vec<lego_fabric::Client> {
        self.copies
            .clients
            .iter()
            .map(|c| c.fabric().clone())
            .collect()
    }

    /// Each monitor's address and client with the page runs (start, count) of the regions
    /// it holds a copy of: what a restarted backend needs to resume the pages' custody.
    pub fn holdings(&self) -> Vec<Holding<'_>> {
        let rp = self.placement.region_pages();
        let mut out: Vec<Holding<'_>> = self
            .copies
            .clients
            .iter()
            .map(|c| (c.fabric().peer_addr().to_string(), c, Vec::new()))
            .collect();
        for (region, holders) in self.holders.iter().enumerate() {
            for &m in holders {
                out[m].2.push((region as u64 * rp, rp));
            }
        }
        out
    }

    /// Pages covered by the placement.
    pub fn pages(&self) -> u64 {
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
    pub fn submit(&self, ops: &[PageOp<'_>]) -> Vec<PendingRun> {
        let copies = &self.copies;
        let mut batches: Vec<Vec<PageOp<'_>>> = vec![Vec::new(); copies.clients.len()];
        /// Where a piece went: (monitor, position in its batch) per copy sent to.
        enum Slot {
            Write(u64, u64, Vec<(usize, usize)>),
            Read(u64, u64, Option<(usize, usize)>, Vec<usize>),
        }
        let mut plan: Vec<Result<Vec<Slot>, CallError>> = Vec::with_capacity(ops.len());
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
                        let holders = &self.holders[region];
                        match data {
                            Some(data) => {
                                let len = count as usize * PAGE_SIZE;
                                let piece = PageOp::Write {
                                    start,
                                    data: &data[off..off + len],
                                };
                                off += len;
                                let mut sent = Vec::new();
                                for &m in holders {
                                    if copies.is_up(m) {
                                        batches[m].push(piece);
                                        sent.push((m, batches[m].len() - 1));
                                    } else {
                                        copies.clients[m].forget(start, count);
                                    }
                                }
                                Slot::Write(start, count, sent)
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
                                Slot::Read(start, count, first, fallbacks.collect())
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
                c.submit_runs(batch)
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
                            Slot::Write(start, count, to) => Piece::Write {
                                start,
                                count,
                                sent: to.into_iter().map(&mut take).collect(),
                            },
                            Slot::Read(start, count, first, fallbacks) => Piece::Read {
                                start,
                                count,
                                first: first.map(&mut take),
                                fallbacks,
                            },
                        })
                        .collect()
                }),
                copies: self.copies.clone(),
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

    /// Reads `count` pages from `start`, wherever they live.
    pub fn read_run(&self, start: u64, count: u64) -> Result<Vec<u8>, CallError> {
        self.run(PageOp::Read { start, count })
    }

    /// Writes whole pages from `start`, wherever they live.
    pub fn write_run(&self, start: u64, data: &[u8]) -> Result<(), CallError> {
        self.run(PageOp::Write { start, data }).map(|_| ())
    }

    /// Frees every page of the vNode on every monitor of the placement (the placement itself
    /// stays reserved); returns how many pages were stored. A monitor that cannot be reached
    /// is passed over (its pages died with it or are freed when it is released); the call
    /// fails only if none could be reached.
    pub fn free_all(&self) -> Result<u64, CallError> {
        let mut freed = 0;
        let mut first_err = None;
        let mut reached = 0;
        for (m, c) in self.copies.clients.iter().enumerate() {
            match c.free_all() {
                Ok(n) => {
                    freed += n;
                    reached += 1;
                }
                Err(e) => {
                    self.copies.failed(m, &e);
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) if reached == 0 => Err(e),
            _ => Ok(freed),
        }
    }

    /// Frees `count` pages from `start` on every copy; returns how many the first copy of
    /// each piece stored. A copy that cannot be reached forgets the pages instead, so it never
    /// serves what was trimmed.
    pub fn trim(&self, start: u64, count: u64) -> Result<u64, CallError> {
        let mut freed = 0;
        for (region, p, n) in self.split(start, count)? {
            let mut done = false;
            let mut first_err = None;
            for &m in &self.holders[region] {
                let c = &self.copies.clients[m];
                if !self.copies.is_up(m) {
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
                        self.copies.failed(m, &e);
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
