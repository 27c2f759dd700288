//! Where evicted pages go: the vNode's remote memory on the memory monitors, behind a small
//! trait so that the pager's logic can be tested against a fake.

use lego_monitor_client::client::{CallError, PageOp, VnodeMemory};

/// Errors reading or writing pages on the monitors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The monitors could not serve the pages.
    #[error("the memory monitors could not {op} pages {start}..{end} of guest RAM")]
    Remote {
        /// "read" or "write".
        op: &'static str,
        /// First page.
        start: u64,
        /// One past the last page.
        end: u64,
        /// The monitors' error.
        source: CallError,
    },
    /// A monitor answered with the wrong amount of data.
    #[error("the memory monitors answered {got} bytes for pages {start}..{end} of guest RAM")]
    Short {
        /// First page.
        start: u64,
        /// One past the last page.
        end: u64,
        /// What came back.
        got: usize,
    },
}

/// Pages of guest RAM on the monitors, numbered like the guest RAM memfd's pages.
pub trait PageStore: Send + Sync {
    /// Reads `count` pages from `start` (several threads call this at once: the fabric
    /// pipelines their requests).
    fn read(&self, start: u64, count: u64) -> Result<Vec<u8>, StoreError>;
    /// Writes runs of whole pages `(first page, contents)`, all sent before any answer is
    /// awaited; returns once every one is stored (on every copy).
    fn write(&self, runs: &[(u64, &[u8])]) -> Result<(), StoreError>;
}

impl PageStore for VnodeMemory {
    fn read(&self, start: u64, count: u64) -> Result<Vec<u8>, StoreError> {
        let data = self
            .read_run(start, count)
            .map_err(|source| StoreError::Remote {
                op: "read",
                start,
                end: start + count,
                source,
            })?;
        if data.len() as u64 != count * super::table::PAGE as u64 {
            return Err(StoreError::Short {
                start,
                end: start + count,
                got: data.len(),
            });
        }
        Ok(data)
    }

    fn write(&self, runs: &[(u64, &[u8])]) -> Result<(), StoreError> {
        let ops: Vec<PageOp<'_>> = runs
            .iter()
            .map(|&(start, data)| PageOp::Write { start, data })
            .collect();
        let pending = self.submit(&ops);
        let mut first = None;
        for (p, &(start, data)) in pending.into_iter().zip(runs) {
            if let Err(source) = p.wait() {
                first.get_or_insert(StoreError::Remote {
                    op: "write",
                    start,
                    end: start + (data.len() / super::table::PAGE) as u64,
                    source,
                });
            }
        }
        first.map_or(Ok(()), Err)
    }
}
