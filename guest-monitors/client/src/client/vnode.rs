//! [`VnodeMemory`]: a vNode's whole remote memory, spread as vRegions over several memory
//! monitors, addressed by page index. Runs are split at region boundaries; [`VnodeMemory::submit`]
//! starts a batch of runs with one vectored write per monitor connection and lets each run be
//! waited on later, and the blocking calls are built on it.

use std::collections::HashMap;
use std::sync::Arc;

use lego_fabric::{Capability, ClientConfig, ClusterKey};

use super::{CallError, MemoryClient, PageOp, PendingPages};
use crate::proto::manager::MemoryPlacement;
use crate::proto::memory::{MAX_PAGES, PAGE_SIZE};

/// One vNode's remote memory across its memory monitors.
pub struct VnodeMemory {
    placement: MemoryPlacement,
    /// One client per monitor; `index` maps a monitor's address to its position.
    clients: Vec<MemoryClient>,
    index: HashMap<String, usize>,
}

/// One op of [`VnodeMemory::submit`] in flight: its pieces on their monitors, or the error
/// that kept it from being sent.
pub struct PendingRun(Result<Vec<PendingPages>, CallError>);

impl PendingRun {
    /// Waits for every piece; returns the pages read (empty for a write) or the first error.
    /// Every answer is checked for length, and every piece is waited for before an error is
    /// reported, so nothing of the op stays in flight.
    pub fn wait(self) -> Result<Vec<u8>, CallError> {
        let mut out = Vec::new();
        let mut first_err = None;
        for p in self.0? {
            match p.wait() {
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
    /// Connects to every monitor named in `placement`, attaching `cap` (for `placement.vnode`).
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
        let mut index = HashMap::new();
        for r in &placement.regions {
            if !index.contains_key(&r.monitor) {
                let c = MemoryClient::connect(&r.monitor, key.clone(), cap, config.clone())?;
                index.insert(r.monitor.clone(), clients.len());
                clients.push(c);
            }
        }
        Ok(Self {
            placement,
            clients,
            index,
        })
    }

    /// The placement in use.
    pub fn placement(&self) -> &MemoryPlacement {
        &self.placement
    }

    /// The fabric client of every monitor, to attach a renewed capability to.
    pub fn fabric_clients(&self) -> Vec<lego_fabric::Client> {
        self.clients.iter().map(|c| c.fabric().clone()).collect()
    }

    /// Pages covered by the placement.
    pub fn pages(&self) -> u64 {
        self.placement.regions.len() as u64 * self.placement.region_pages()
    }

    /// Splits `start..start+count` into (monitor index, first page, page count) pieces that
    /// stay inside one region and one request.
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
            let mon = self
                .placement
                .monitor_of_page(p)
                .ok_or_else(|| CallError::Invalid(format!("page {p} has no region")))?;
            let m = *self
                .index
                .get(mon)
                .ok_or_else(|| CallError::Invalid(format!("no connection to {mon}")))?;
            out.push((m, p, n));
            p += n;
        }
        Ok(out)
    }

    /// Splits `op` into (monitor index, piece) pairs, in page order.
    fn pieces<'a>(&self, op: PageOp<'a>) -> Result<Vec<(usize, PageOp<'a>)>, CallError> {
        match op {
            PageOp::Read { start, count } => Ok(self
                .split(start, count)?
                .into_iter()
                .map(|(m, start, count)| (m, PageOp::Read { start, count }))
                .collect()),
            PageOp::Write { start, data } => {
                let mut off = 0usize;
                let mut out = Vec::new();
                for (m, start, count) in self.split(start, whole_pages(data)?)? {
                    let len = count as usize * PAGE_SIZE;
                    let data = &data[off..off + len];
                    out.push((m, PageOp::Write { start, data }));
                    off += len;
                }
                Ok(out)
            }
        }
    }

    /// Starts `ops` without waiting: each is split at region boundaries, the pieces are grouped
    /// by monitor and each monitor gets its group with one vectored write. Returns one
    /// [`PendingRun`] per op, in order. The ops run concurrently, so none may depend on another.
    pub fn submit(&self, ops: &[PageOp<'_>]) -> Vec<PendingRun> {
        let mut batches: Vec<Vec<PageOp<'_>>> = vec![Vec::new(); self.clients.len()];
        // Per op: where its pieces went, as (monitor index, position in that monitor's batch).
        let mut plan: Vec<Result<Vec<(usize, usize)>, CallError>> = Vec::with_capacity(ops.len());
        for &op in ops {
            plan.push(self.pieces(op).map(|pieces| {
                pieces
                    .into_iter()
                    .map(|(m, piece)| {
                        batches[m].push(piece);
                        (m, batches[m].len() - 1)
                    })
                    .collect()
            }));
        }
        let mut sent: Vec<Result<Vec<Option<PendingPages>>, Arc<CallError>>> = batches
            .iter()
            .zip(&self.clients)
            .map(|(batch, c)| {
                c.submit_runs(batch)
                    .map(|p| p.into_iter().map(Some).collect())
                    .map_err(Arc::new)
            })
            .collect();
        let mut take = |(m, i): (usize, usize)| match &mut sent[m] {
            Ok(s) => s.get_mut(i).and_then(Option::take).ok_or_else(|| {
                CallError::Invalid("the fabric returned fewer answers than requests".into())
            }),
            Err(e) => Err(CallError::Batch(e.clone())),
        };
        plan.into_iter()
            .map(|slots| PendingRun(slots.and_then(|s| s.into_iter().map(&mut take).collect())))
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
    /// stays reserved); returns how many pages were stored.
    pub fn free_all(&self) -> Result<u64, CallError> {
        let mut freed = 0;
        for c in &self.clients {
            freed += c.free_all()?;
        }
        Ok(freed)
    }

    /// Frees `count` pages from `start`; returns how many were stored.
    pub fn trim(&self, start: u64, count: u64) -> Result<u64, CallError> {
        let mut freed = 0;
        for (m, p, n) in self.split(start, count)? {
            freed += self.clients[m].trim(p, n)?;
        }
        Ok(freed)
    }
}
