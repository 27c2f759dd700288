//! The memory monitor's fabric [`Handler`]: page operations on the shared [`PageStore`].

use std::sync::Arc;

use lego_fabric::{
    Dispatch, ErrorCode, Handler, RemoteError, Request, RequestContext, Rights, Role,
};

use crate::bounds::PlacementBounds;
use crate::pagestore::{PageStore, PageStoreError, PAGE_SIZE};
use lego_monitor_client::proto::memory::{
    self as mm, encode_u64, MemoryOp, MonitorMemoryStats, VnodeMemoryStats,
};
use lego_monitor_client::proto::to_json;

impl From<PageStoreError> for RemoteError {
    fn from(e: PageStoreError) -> Self {
        let code = match &e {
            PageStoreError::NoSpace { .. } => ErrorCode::NoSpace,
            PageStoreError::BadLength { .. }
            | PageStoreError::Overflow { .. }
            | PageStoreError::Fence(_) => ErrorCode::InvalidArgument,
            PageStoreError::Arena(_) => ErrorCode::Internal,
        };
        RemoteError::new(code, lego_report::error_chain(&e))
    }
}

/// Serves page requests over the fabric.
pub struct MemoryService {
    store: Arc<PageStore>,
    bounds: Option<Arc<PlacementBounds>>,
}

impl MemoryService {
    /// A handler around `store` that serves any page of a vNode with a capability (a monitor
    /// without a manager: nothing says where a vNode's regions are).
    pub fn new(store: Arc<PageStore>) -> Self {
        Self {
            store,
            bounds: None,
        }
    }

    /// A handler around `store` that serves a vNode only the pages of the vRegions placed
    /// on this monitor (see [`crate::bounds`]).
    pub fn with_bounds(store: Arc<PageStore>, bounds: Arc<PlacementBounds>) -> Self {
        Self {
            store,
            bounds: Some(bounds),
        }
    }

    /// Refuses pages of `op` outside `vnode`'s placement on this monitor.
    fn check_bounds(&self, vnode: u64, op: &MemoryOp<'_>) -> Result<(), RemoteError> {
        let Some(b) = &self.bounds else {
            return Ok(());
        };
        let pages = |data: &[u8]| (data.len() / PAGE_SIZE) as u64;
        match op {
            MemoryOp::ReadRun { start, count } => b.check(vnode, *start, u64::from(*count))?,
            MemoryOp::Trim { start, count } | MemoryOp::FillBegin { start, count } => {
                b.check(vnode, *start, *count)?
            }
            MemoryOp::Present { start, count } => b.check(vnode, *start, u64::from(*count))?,
            MemoryOp::WriteRun { start, data } | MemoryOp::FillRun { start, data } => {
                b.check(vnode, *start, pages(data))?
            }
            MemoryOp::ReadList { pages } => b.check_list(vnode, pages)?,
            MemoryOp::WriteList { pages, .. } => b.check_list(vnode, pages)?,
            MemoryOp::FillEnd { .. } | MemoryOp::FreeVnode | MemoryOp::Stats => {}
        }
        Ok(())
    }
}

impl Handler for MemoryService {
    fn handle(&self, ctx: &RequestContext, req: Request) -> Result<Vec<u8>, RemoteError> {
        let op = MemoryOp::decode(req.opcode, &req.payload)?;
        let vnode = ctx.vnode;
        if vnode == 0 {
            // Cluster-level: only whole-monitor statistics, which cover every vNode.
            if ctx.role == Role::Compute {
                return Err(RemoteError::new(
                    ErrorCode::Forbidden,
                    "a compute host may not read the monitor's statistics of every vNode; they need the operator role",
                ));
            }
            return match op {
                MemoryOp::Stats => Ok(to_json(&MonitorMemoryStats { store: self.store.stats() })),
                _ => Err(RemoteError::new(
                    ErrorCode::Forbidden,
                    "page operations need a vNode and its capability; vNode 0 may only ask for statistics",
                )),
            };
        }
        if !ctx.rights.contains(Rights::MEMORY) {
            return Err(RemoteError::new(
                ErrorCode::Forbidden,
                format!("the capability attached for vNode {vnode} does not grant memory access"),
            ));
        }
        self.check_bounds(vnode, &op)?;
        let s = &self.store;
        match op {
            MemoryOp::ReadRun { start, count } => {
                let mut out = vec![0u8; count as usize * PAGE_SIZE];
                s.read_run(vnode, start, &mut out)?;
                Ok(out)
            }
            MemoryOp::WriteRun { start, data } => {
                s.write_run(vnode, start, data)?;
                Ok(Vec::new())
            }
            MemoryOp::ReadList { pages } => {
                let mut out = vec![0u8; pages.len() * PAGE_SIZE];
                s.read_list(vnode, &pages, &mut out)?;
                Ok(out)
            }
            MemoryOp::WriteList { pages, data } => {
                s.write_list(vnode, &pages, data)?;
                Ok(Vec::new())
            }
            MemoryOp::Trim { start, count } => Ok(encode_u64(s.trim(vnode, start, count)?)),
            MemoryOp::FreeVnode => {
                let freed = s.free_vnode(vnode);
                if let Some(b) = &self.bounds {
                    b.forget(vnode);
                }
                tracing::info!(vnode, freed, "freed all pages of a vNode");
                Ok(encode_u64(freed))
            }
            MemoryOp::FillBegin { start, count } => {
                s.fill_begin(vnode, start, count)?;
                Ok(Vec::new())
            }
            MemoryOp::FillRun { start, data } => Ok(encode_u64(s.fill_run(vnode, start, data)?)),
            MemoryOp::FillEnd { start, .. } => {
                s.fill_end(vnode, start);
                Ok(Vec::new())
            }
            MemoryOp::Present { start, count } => Ok(s.present(vnode, start, count)?),
            MemoryOp::Stats => Ok(to_json(&VnodeMemoryStats {
                vnode,
                pages_stored: s.vnode_pages(vnode),
            })),
        }
    }

    fn dispatch(&self, req: &Request) -> Dispatch {
        // Page reads and writes are short and never block: answer them on the reader thread.
        // Trims, frees and statistics may scan whole maps: keep them off it.
        match req.opcode {
            mm::TRIM | mm::FREE_VNODE | mm::STATS | mm::FILL_BEGIN | mm::FILL_END | mm::PRESENT => {
                Dispatch::Worker
            }
            _ => Dispatch::Inline,
        }
    }
}
