//! [`MemoryClient`]: one vNode's pages on one memory monitor.

use std::sync::{Arc, Mutex, MutexGuard};

use lego_fabric::{Capability, Client, ClientConfig, Identity, Pending, Request, Response};

use super::custody::{Custody, Loss, Pages, Restart};
use super::CallError;
use crate::proto::memory::{
    self as mm, MemoryOp, MonitorMemoryStats, VnodeMemoryStats, MAX_PAGES, PAGE_SIZE,
};
use crate::proto::{from_json, ProtoError};

/// A vNode's view of one memory monitor. Cheap to clone; safe to share between threads.
///
/// Every answer is checked against the pages' [`Custody`]: once the monitor restarted (a
/// new incarnation answers), reading a page stored in the old process is
/// [`CallError::Lost`], never the zeros the new one holds.
#[derive(Clone)]
pub struct MemoryClient {
    client: Client,
    vnode: u64,
    custody: Arc<Mutex<Custody>>,
}

fn lock(custody: &Mutex<Custody>) -> MutexGuard<'_, Custody> {
    // Custody's updates leave it consistent at every step, so a poisoned lock is usable.
    custody.lock().unwrap_or_else(|e| e.into_inner())
}

/// What an answer must be checked for before it is used.
struct Check {
    custody: Arc<Mutex<Custody>>,
    addr: std::net::SocketAddr,
    vnode: u64,
    kind: CheckKind,
    pages: Pages,
}

/// Which custody update an answer makes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum CheckKind {
    Read,
    Write,
    Fill,
}

impl Check {
    fn apply(&self, r: &Response) -> Result<(), CallError> {
        let (restart, verdict) = {
            let mut c = lock(&self.custody);
            match self.kind {
                CheckKind::Write => c.wrote(r.incarnation, &self.pages),
                CheckKind::Read => c.read(r.incarnation, &self.pages),
                CheckKind::Fill => c.filled(r.incarnation, &self.pages),
            }
        };
        if let Some(restart) = restart {
            log_restart(self.addr, self.vnode, restart);
        }
        verdict.map_err(|loss| lost(self.addr, loss))
    }
}

fn lost(addr: std::net::SocketAddr, loss: Loss) -> CallError {
    CallError::Lost { addr, loss }
}

fn log_restart(addr: std::net::SocketAddr, vnode: u64, r: Restart) {
    tracing::error!(
        monitor = %addr,
        vnode,
        from = format_args!("{:#018x}", r.from),
        to = format_args!("{:#018x}", r.to),
        pages_lost = r.pages_lost,
        "the memory monitor restarted: the pages it held for this vNode are lost, and reading \
         one is an error until it is written again"
    );
}

/// A run of consecutive pages to read or write, for [`MemoryClient::submit_runs`] and
/// [`super::VnodeMemory::submit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageOp<'a> {
    /// Read `count` pages from page `start`.
    Read {
        /// First page.
        start: u64,
        /// Page count.
        count: u64,
    },
    /// Write whole pages from page `start`.
    Write {
        /// First page.
        start: u64,
        /// A whole number of pages.
        data: &'a [u8],
    },
}

/// A submitted page read or write; [`PendingPages::wait`] returns the pages read (empty for writes).
pub struct PendingPages {
    pending: Pending,
    expect: usize,
    check: Check,
}

impl PendingPages {
    /// Waits for the answer.
    pub fn wait(self) -> Result<Vec<u8>, CallError> {
        let r = self.pending.wait()?;
        if r.payload.len() != self.expect {
            return Err(ProtoError::LengthMismatch {
                expected: self.expect as u64,
                got: r.payload.len() as u64,
            }
            .into());
        }
        self.check.apply(&r)?;
        Ok(r.payload)
    }
}

fn check_pages(n: usize) -> Result<(), CallError> {
    if n == 0 || n > MAX_PAGES as usize {
        return Err(CallError::Invalid(format!(
            "a request carries 1 to {MAX_PAGES} pages, not {n}"
        )));
    }
    Ok(())
}

fn check_data(data: &[u8]) -> Result<usize, CallError> {
    if !data.len().is_multiple_of(PAGE_SIZE) {
        return Err(CallError::Invalid(format!(
            "{} bytes are not whole 4096-byte pages",
            data.len()
        )));
    }
    let n = data.len() / PAGE_SIZE;
    check_pages(n)?;
    Ok(n)
}

impl MemoryClient {
    /// Connects to a memory monitor and attaches `cap` (the client acts for `cap.vnode`).
    pub fn connect(
        addr: &str,
        key: impl Into<Identity>,
        cap: &Capability,
        config: ClientConfig,
    ) -> Result<Self, CallError> {
        let key = key.into();
        let client = super::connect_attached(addr, key, cap, config)?;
        Ok(Self::from_client(client, cap.vnode))
    }

    /// Wraps a connected client that already has a capability for `vnode` attached
    /// (or `vnode` 0 for cluster-level statistics only).
    pub fn from_client(client: Client, vnode: u64) -> Self {
        let custody = Arc::new(Mutex::new(Custody::new(client.incarnation())));
        Self {
            client,
            vnode,
            custody,
        }
    }

    /// Pages this client stored in the monitor's live incarnation, and pages it stored in
    /// an earlier one that restarted (lost, until written again).
    pub fn custody_counts(&self) -> (u64, u64) {
        lock(&self.custody).counts()
    }

    /// Treats `count` pages from `start` as not held by this monitor until they are written
    /// again (a write or trim of them failed or skipped this copy).
    pub fn forget(&self, start: u64, count: u64) {
        lock(&self.custody).forget(&Pages::Run { start, count });
    }

    /// Takes `count` pages from `start` as held by the monitor's live incarnation, stored
    /// there by an earlier process of this vNode's backend (see [`Custody::adopt`]).
    pub fn adopt(&self, start: u64, count: u64) {
        lock(&self.custody).adopt(&Pages::Run { start, count });
    }

    fn check(&self, write: bool, pages: Pages) -> Check {
        let kind = if write {
            CheckKind::Write
        } else {
            CheckKind::Read
        };
        self.check_as(kind, pages)
    }

    fn check_as(&self, kind: CheckKind, pages: Pages) -> Check {
        Check {
            custody: self.custody.clone(),
            addr: self.client.peer_addr(),
            vnode: self.vnode,
            kind,
            pages,
        }
    }

    /// Pages of `start..start+count` this client counts as lost on the monitor.
    pub fn lost_in(&self, start: u64, count: u64) -> u64 {
        lock(&self.custody).lost_in(start, count)
    }

    /// The pages of `start..start+count` this client counts as lost on the monitor.
    pub fn lost_pages(&self, start: u64, count: u64) -> std::collections::BTreeSet<u64> {
        lock(&self.custody).lost_pages(start, count)
    }

    /// Opens a repair fence over `start..start+count` on the monitor (see
    /// [`crate::proto::memory`]); returns the incarnation that opened it.
    pub fn fill_begin(&self, start: u64, count: u64) -> Result<u64, CallError> {
        let r = self
            .client
            .call(self.req(&MemoryOp::FillBegin { start, count }))?;
        Ok(r.incarnation)
    }

    /// Sends a repair copy of pages from `start` (put-if-absent inside an open fence);
    /// returns how many the monitor stored and the incarnation that answered.
    pub fn fill_run(&self, start: u64, data: &[u8]) -> Result<(u64, u64), CallError> {
        let n = check_data(data)?;
        let r = self
            .client
            .call(self.req(&MemoryOp::FillRun { start, data }))?;
        let stored = mm::decode_u64(&r.payload)?;
        let pages = Pages::Run {
            start,
            count: n as u64,
        };
        self.check_as(CheckKind::Fill, pages).apply(&r)?;
        Ok((stored, r.incarnation))
    }

    /// Closes the repair fence at `start`; returns the incarnation that answered.
    pub fn fill_end(&self, start: u64, count: u64) -> Result<u64, CallError> {
        let r = self
            .client
            .call(self.req(&MemoryOp::FillEnd { start, count }))?;
        Ok(r.incarnation)
    }

    /// Which of pages `start..start+count` the monitor stores (bit `i % 8` of byte `i / 8`
    /// for page `start + i`), and the incarnation that answered.
    pub fn present(&self, start: u64, count: u32) -> Result<(Vec<u8>, u64), CallError> {
        let r = self
            .client
            .call(self.req(&MemoryOp::Present { start, count }))?;
        let want = (count as usize).div_ceil(8);
        if r.payload.len() != want {
            return Err(ProtoError::LengthMismatch {
                expected: want as u64,
                got: r.payload.len() as u64,
            }
            .into());
        }
        Ok((r.payload, r.incarnation))
    }

    /// The vNode this client acts for.
    pub fn vnode(&self) -> u64 {
        self.vnode
    }

    /// The underlying fabric client.
    pub fn fabric(&self) -> &Client {
        &self.client
    }

    fn req(&self, op: &MemoryOp<'_>) -> Request {
        Request::new(op.opcode(), self.vnode, op.encode())
    }

    /// Submits a read of `count` consecutive pages from `start` without waiting.
    pub fn submit_read_run(&self, start: u64, count: u32) -> Result<PendingPages, CallError> {
        check_pages(count as usize)?;
        let pending = self
            .client
            .submit(self.req(&MemoryOp::ReadRun { start, count }));
        Ok(PendingPages {
            pending,
            expect: count as usize * PAGE_SIZE,
            check: self.check(
                false,
                Pages::Run {
                    start,
                    count: count.into(),
                },
            ),
        })
    }

    /// Submits a write of consecutive pages from `start` without waiting.
    pub fn submit_write_run(&self, start: u64, data: &[u8]) -> Result<PendingPages, CallError> {
        let n = check_data(data)?;
        let pending = self
            .client
            .submit(self.req(&MemoryOp::WriteRun { start, data }));
        Ok(PendingPages {
            pending,
            expect: 0,
            check: self.check(
                true,
                Pages::Run {
                    start,
                    count: n as u64,
                },
            ),
        })
    }

    /// Submits page runs without waiting, all with one vectored write; one [`PendingPages`]
    /// per op, in order. Each op carries 1 to [`MAX_PAGES`] pages; if one does not, nothing
    /// is sent.
    pub fn submit_runs(&self, ops: &[PageOp<'_>]) -> Result<Vec<PendingPages>, CallError> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let mut reqs = Vec::with_capacity(ops.len());
        let mut expect = Vec::with_capacity(ops.len());
        for op in ops {
            match *op {
                PageOp::Read { start, count } => {
                    check_pages(usize::try_from(count).unwrap_or(usize::MAX))?;
                    let count = count as u32;
                    reqs.push(self.req(&MemoryOp::ReadRun { start, count }));
                    let pages = Pages::Run {
                        start,
                        count: count.into(),
                    };
                    expect.push((count as usize * PAGE_SIZE, self.check(false, pages)));
                }
                PageOp::Write { start, data } => {
                    let n = check_data(data)?;
                    reqs.push(self.req(&MemoryOp::WriteRun { start, data }));
                    let pages = Pages::Run {
                        start,
                        count: n as u64,
                    };
                    expect.push((0, self.check(true, pages)));
                }
            }
        }
        Ok(self
            .client
            .submit_batch(reqs)
            .into_iter()
            .zip(expect)
            .map(|(pending, (expect, check))| PendingPages {
                pending,
                expect,
                check,
            })
            .collect())
    }

    /// Submits a read of the listed pages without waiting.
    pub fn submit_read_list(&self, pages: &[u64]) -> Result<PendingPages, CallError> {
        check_pages(pages.len())?;
        let pending = self.client.submit(self.req(&MemoryOp::ReadList {
            pages: pages.to_vec(),
        }));
        Ok(PendingPages {
            pending,
            expect: pages.len() * PAGE_SIZE,
            check: self.check(false, Pages::List(pages.to_vec())),
        })
    }

    /// Submits a write of the listed pages without waiting.
    pub fn submit_write_list(&self, pages: &[u64], data: &[u8]) -> Result<PendingPages, CallError> {
        let n = check_data(data)?;
        if n != pages.len() {
            return Err(CallError::Invalid(format!(
                "{} page indexes for {n} pages of data",
                pages.len()
            )));
        }
        let pending = self.client.submit(self.req(&MemoryOp::WriteList {
            pages: pages.to_vec(),
            data,
        }));
        Ok(PendingPages {
            pending,
            expect: 0,
            check: self.check(true, Pages::List(pages.to_vec())),
        })
    }

    /// Reads one page.
    pub fn read_page(&self, page: u64) -> Result<Vec<u8>, CallError> {
        self.read_run(page, 1)
    }

    /// Writes one page (4096 bytes).
    pub fn write_page(&self, page: u64, data: &[u8]) -> Result<(), CallError> {
        if data.len() != PAGE_SIZE {
            return Err(CallError::Invalid(format!(
                "a page is 4096 bytes, not {}",
                data.len()
            )));
        }
        self.write_run(page, data)
    }

    /// Reads `count` consecutive pages from `start`.
    pub fn read_run(&self, start: u64, count: u32) -> Result<Vec<u8>, CallError> {
        self.submit_read_run(start, count)?.wait()
    }

    /// Writes consecutive pages from `start`.
    pub fn write_run(&self, start: u64, data: &[u8]) -> Result<(), CallError> {
        self.submit_write_run(start, data)?.wait().map(|_| ())
    }

    /// Reads the listed pages (4096 bytes each, in list order).
    pub fn read_list(&self, pages: &[u64]) -> Result<Vec<u8>, CallError> {
        self.submit_read_list(pages)?.wait()
    }

    /// Writes the listed pages.
    pub fn write_list(&self, pages: &[u64], data: &[u8]) -> Result<(), CallError> {
        self.submit_write_list(pages, data)?.wait().map(|_| ())
    }

    /// Frees pages `start..start+count`; returns how many were stored.
    pub fn trim(&self, start: u64, count: u64) -> Result<u64, CallError> {
        let r = self
            .client
            .call(self.req(&MemoryOp::Trim { start, count }))?;
        let freed = mm::decode_u64(&r.payload)?;
        let restart = lock(&self.custody).freed(r.incarnation, &Pages::Run { start, count });
        if let Some(restart) = restart {
            log_restart(self.client.peer_addr(), self.vnode, restart);
        }
        Ok(freed)
    }

    /// Frees every page of this vNode on the monitor.
    pub fn free_all(&self) -> Result<u64, CallError> {
        let r = self.client.call(self.req(&MemoryOp::FreeVnode))?;
        let freed = mm::decode_u64(&r.payload)?;
        lock(&self.custody).freed_all();
        Ok(freed)
    }

    /// This vNode's use of the monitor.
    pub fn stats(&self) -> Result<VnodeMemoryStats, CallError> {
        let r = self.client.call(self.req(&MemoryOp::Stats))?;
        Ok(from_json(&r.payload)?)
    }

    /// The whole monitor's statistics (cluster-level request, no capability needed).
    pub fn monitor_stats(client: &Client) -> Result<MonitorMemoryStats, CallError> {
        let r = client.call(Request::new(mm::STATS, 0, Vec::new()))?;
        Ok(from_json(&r.payload)?)
    }
}
