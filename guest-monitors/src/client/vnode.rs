//! [`VnodeMemory`]: a vNode's whole remote memory, spread as vRegions over several memory
//! monitors, addressed by page index. Runs are split at region boundaries and the pieces are
//! sent to their monitors in parallel (pipelined on each connection).

use std::collections::HashMap;

use lego_fabric::{Capability, ClientConfig, ClusterKey};

use super::{CallError, MemoryClient, PendingPages};
use crate::proto::manager::MemoryPlacement;
use crate::proto::memory::{MAX_PAGES, PAGE_SIZE};

/// One vNode's remote memory across its memory monitors.
pub struct VnodeMemory {
    placement: MemoryPlacement,
    clients: HashMap<String, MemoryClient>,
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
        let mut clients = HashMap::new();
        for r in &placement.regions {
            if !clients.contains_key(&r.monitor) {
                let c = MemoryClient::connect(&r.monitor, key.clone(), cap, config.clone())?;
                clients.insert(r.monitor.clone(), c);
            }
        }
        Ok(Self { placement, clients })
    }

    /// The placement in use.
    pub fn placement(&self) -> &MemoryPlacement {
        &self.placement
    }

    /// Pages covered by the placement.
    pub fn pages(&self) -> u64 {
        self.placement.regions.len() as u64 * self.placement.region_pages()
    }

    /// Splits `start..start+count` into (monitor client, first page, page count) pieces that
    /// stay inside one region and one request.
    fn pieces(&self, start: u64, count: u64) -> Result<Vec<(&MemoryClient, u64, u32)>, CallError> {
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
            let n = (end - p).min(rp - p % rp).min(MAX_PAGES as u64);
            let mon = self
                .placement
                .monitor_of_page(p)
                .ok_or_else(|| CallError::Invalid(format!("page {p} has no region")))?;
            let c = self
                .clients
                .get(mon)
                .ok_or_else(|| CallError::Invalid(format!("no connection to {mon}")))?;
            out.push((c, p, n as u32));
            p += n;
        }
        Ok(out)
    }

    /// Reads `count` pages from `start`, wherever they live.
    pub fn read_run(&self, start: u64, count: u64) -> Result<Vec<u8>, CallError> {
        let pending: Vec<PendingPages> = self
            .pieces(start, count)?
            .into_iter()
            .map(|(c, p, n)| c.submit_read_run(p, n))
            .collect::<Result<_, _>>()?;
        let mut out = Vec::with_capacity(count as usize * PAGE_SIZE);
        for p in pending {
            out.extend_from_slice(&p.wait()?);
        }
        Ok(out)
    }

    /// Writes whole pages from `start`, wherever they live.
    pub fn write_run(&self, start: u64, data: &[u8]) -> Result<(), CallError> {
        if !data.len().is_multiple_of(PAGE_SIZE) {
            return Err(CallError::Invalid(format!(
                "{} bytes are not whole 4096-byte pages",
                data.len()
            )));
        }
        let mut pending = Vec::new();
        let mut off = 0usize;
        for (c, p, n) in self.pieces(start, (data.len() / PAGE_SIZE) as u64)? {
            let len = n as usize * PAGE_SIZE;
            pending.push(c.submit_write_run(p, &data[off..off + len])?);
            off += len;
        }
        for p in pending {
            p.wait()?;
        }
        Ok(())
    }

    /// Frees `count` pages from `start`; returns how many were stored.
    pub fn trim(&self, start: u64, count: u64) -> Result<u64, CallError> {
        let mut freed = 0;
        for (c, p, n) in self.pieces(start, count)? {
            freed += c.trim(p, n as u64)?;
        }
        Ok(freed)
    }
}
