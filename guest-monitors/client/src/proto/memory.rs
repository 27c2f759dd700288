//! Memory monitor operations (opcodes 0x01xx).
//!
//! | opcode | request body | response body |
//! |---|---|---|
//! | `READ_RUN` 0x0101 | start u64, count u32 | count x 4096 bytes |
//! | `WRITE_RUN` 0x0102 | start u64, count u32, count x 4096 bytes | empty |
//! | `READ_LIST` 0x0103 | count u32, count x page u64 | count x 4096 bytes, in list order |
//! | `WRITE_LIST` 0x0104 | count u32, count x page u64, count x 4096 bytes | empty |
//! | `TRIM` 0x0105 | start u64, count u64 | freed u64 |
//! | `FREE_VNODE` 0x0106 | empty | freed u64 |
//! | `STATS` 0x0107 | empty | JSON [`VnodeMemoryStats`] (vNode N) or [`MonitorMemoryStats`] (vNode 0) |
//!
//! Page ops need a capability with `Rights::MEMORY` for the request's vNode; `STATS` on vNode 0
//! is cluster-level. All integers are little-endian.

use serde::{Deserialize, Serialize};

use super::wire::{Reader, Writer};
use super::ProtoError;

/// Page size in bytes: the unit of every page operation, of the page store and of placement.
pub const PAGE_SIZE: usize = 4096;
/// Most pages one request may carry (4 MiB, below the fabric's 8 MiB frame limit).
pub const MAX_PAGES: u32 = 1024;

/// Read consecutive pages.
pub const READ_RUN: u16 = 0x0101;
/// Write consecutive pages.
pub const WRITE_RUN: u16 = 0x0102;
/// Read a scattered list of pages.
pub const READ_LIST: u16 = 0x0103;
/// Write a scattered list of pages.
pub const WRITE_LIST: u16 = 0x0104;
/// Free a range of pages.
pub const TRIM: u16 = 0x0105;
/// Free all pages of the vNode.
pub const FREE_VNODE: u16 = 0x0106;
/// Use and counters.
pub const STATS: u16 = 0x0107;

/// A decoded page operation (borrowing page data from the request body).
#[derive(Debug, PartialEq, Eq)]
pub enum MemoryOp<'a> {
    /// Read `count` pages from `start`.
    ReadRun {
        /// First page.
        start: u64,
        /// Page count.
        count: u32,
    },
    /// Write pages from `start`.
    WriteRun {
        /// First page.
        start: u64,
        /// count x 4096 bytes.
        data: &'a [u8],
    },
    /// Read listed pages.
    ReadList {
        /// Page indexes.
        pages: Vec<u64>,
    },
    /// Write listed pages.
    WriteList {
        /// Page indexes.
        pages: Vec<u64>,
        /// 4096 bytes per listed page.
        data: &'a [u8],
    },
    /// Free pages `start..start+count`.
    Trim {
        /// First page.
        start: u64,
        /// Page count.
        count: u64,
    },
    /// Free every page of the vNode.
    FreeVnode,
    /// Report statistics.
    Stats,
}

fn check_count(count: u32) -> Result<u32, ProtoError> {
    if count > MAX_PAGES {
        return Err(ProtoError::TooLarge {
            what: "page count",
            got: count as u64,
            max: MAX_PAGES as u64,
        });
    }
    Ok(count)
}

fn check_data(data: &[u8], count: u32) -> Result<(), ProtoError> {
    let expected = count as u64 * PAGE_SIZE as u64;
    if data.len() as u64 != expected {
        return Err(ProtoError::LengthMismatch {
            expected,
            got: data.len() as u64,
        });
    }
    Ok(())
}

fn read_pages(r: &mut Reader<'_>, count: u32) -> Result<Vec<u64>, ProtoError> {
    (0..count).map(|_| r.u64("page index")).collect()
}

impl<'a> MemoryOp<'a> {
    /// Decodes the body of a request with `opcode`.
    pub fn decode(opcode: u16, body: &'a [u8]) -> Result<Self, ProtoError> {
        let mut r = Reader::new(body);
        let op = match opcode {
            READ_RUN => {
                let start = r.u64("start page")?;
                let count = check_count(r.u32("page count")?)?;
                MemoryOp::ReadRun { start, count }
            }
            WRITE_RUN => {
                let start = r.u64("start page")?;
                let count = check_count(r.u32("page count")?)?;
                let data = r.rest();
                check_data(data, count)?;
                MemoryOp::WriteRun { start, data }
            }
            READ_LIST => {
                let count = check_count(r.u32("page count")?)?;
                MemoryOp::ReadList {
                    pages: read_pages(&mut r, count)?,
                }
            }
            WRITE_LIST => {
                let count = check_count(r.u32("page count")?)?;
                let pages = read_pages(&mut r, count)?;
                let data = r.rest();
                check_data(data, count)?;
                MemoryOp::WriteList { pages, data }
            }
            TRIM => MemoryOp::Trim {
                start: r.u64("start page")?,
                count: r.u64("page count")?,
            },
            FREE_VNODE => MemoryOp::FreeVnode,
            STATS => MemoryOp::Stats,
            other => return Err(ProtoError::UnknownOpcode(other)),
        };
        r.finish()?;
        Ok(op)
    }

    /// The opcode of this operation.
    pub fn opcode(&self) -> u16 {
        match self {
            MemoryOp::ReadRun { .. } => READ_RUN,
            MemoryOp::WriteRun { .. } => WRITE_RUN,
            MemoryOp::ReadList { .. } => READ_LIST,
            MemoryOp::WriteList { .. } => WRITE_LIST,
            MemoryOp::Trim { .. } => TRIM,
            MemoryOp::FreeVnode => FREE_VNODE,
            MemoryOp::Stats => STATS,
        }
    }

    /// Encodes the body of this operation.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            MemoryOp::ReadRun { start, count } => {
                Writer::with_capacity(12).u64(*start).u32(*count).finish()
            }
            MemoryOp::WriteRun { start, data } => Writer::with_capacity(12 + data.len())
                .u64(*start)
                .u32((data.len() / PAGE_SIZE) as u32)
                .bytes(data)
                .finish(),
            MemoryOp::ReadList { pages } => {
                let mut w = Writer::with_capacity(4 + 8 * pages.len()).u32(pages.len() as u32);
                for &p in pages {
                    w = w.u64(p);
                }
                w.finish()
            }
            MemoryOp::WriteList { pages, data } => {
                let mut w =
                    Writer::with_capacity(4 + 8 * pages.len() + data.len()).u32(pages.len() as u32);
                for &p in pages {
                    w = w.u64(p);
                }
                w.bytes(data).finish()
            }
            MemoryOp::Trim { start, count } => {
                Writer::with_capacity(16).u64(*start).u64(*count).finish()
            }
            MemoryOp::FreeVnode | MemoryOp::Stats => Vec::new(),
        }
    }
}

/// Encodes a u64 result (freed page counts).
pub fn encode_u64(v: u64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

/// Decodes a u64 result.
pub fn decode_u64(b: &[u8]) -> Result<u64, ProtoError> {
    let mut r = Reader::new(b);
    let v = r.u64("result")?;
    r.finish()?;
    Ok(v)
}

/// One vNode's use of a memory monitor.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VnodeMemoryStats {
    /// The vNode.
    pub vnode: u64,
    /// Pages it has stored here.
    pub pages_stored: u64,
}

/// A snapshot of a memory monitor's page store: use and counters.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PageStoreStats {
    /// Configured capacity in bytes.
    pub capacity_bytes: u64,
    /// Pages stored (non-zero pages).
    pub pages_stored: u64,
    /// Bytes of page data stored (`pages_stored * 4096`).
    pub bytes_in_use: u64,
    /// Address space mapped for page frames (includes freed frames kept for reuse).
    pub arena_mapped_bytes: u64,
    /// Pages stored per vNode.
    pub per_vnode: Vec<(u64, u64)>,
    /// Read requests served.
    pub read_ops: u64,
    /// Write requests served.
    pub write_ops: u64,
    /// Trim/free requests served.
    pub trim_ops: u64,
    /// Pages read.
    pub pages_read: u64,
    /// Pages written (including all-zero ones).
    pub pages_written: u64,
    /// All-zero pages written (stored as holes).
    pub zero_pages_written: u64,
    /// Writes refused for lack of capacity.
    pub nospace_errors: u64,
}

/// A memory monitor's use and counters.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MonitorMemoryStats {
    /// Page store statistics.
    pub store: PageStoreStats,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_round_trip() {
        let page = vec![3u8; PAGE_SIZE];
        let two = [page.clone(), page.clone()].concat();
        let ops = vec![
            MemoryOp::ReadRun { start: 5, count: 2 },
            MemoryOp::WriteRun {
                start: 5,
                data: &two,
            },
            MemoryOp::ReadList { pages: vec![9, 1] },
            MemoryOp::WriteList {
                pages: vec![9, 1],
                data: &two,
            },
            MemoryOp::Trim {
                start: 1,
                count: 100,
            },
            MemoryOp::FreeVnode,
            MemoryOp::Stats,
        ];
        for op in ops {
            let body = op.encode();
            assert_eq!(MemoryOp::decode(op.opcode(), &body).expect("decode"), op);
        }
    }

    #[test]
    fn malformed_bodies_rejected() {
        assert!(MemoryOp::decode(READ_RUN, &[1, 2, 3]).is_err());
        let body = MemoryOp::WriteRun {
            start: 0,
            data: &[0u8; PAGE_SIZE],
        }
        .encode();
        assert!(MemoryOp::decode(WRITE_RUN, &body[..body.len() - 1]).is_err());
        let huge = Writer::default().u64(0).u32(MAX_PAGES + 1).finish();
        assert!(matches!(
            MemoryOp::decode(READ_RUN, &huge),
            Err(ProtoError::TooLarge { .. })
        ));
        let lying = Writer::default().u32(u32::MAX).finish();
        assert!(MemoryOp::decode(READ_LIST, &lying).is_err());
        assert!(matches!(
            MemoryOp::decode(0x01ff, &[]),
            Err(ProtoError::UnknownOpcode(_))
        ));
        assert!(MemoryOp::decode(STATS, &[0]).is_err());
    }
}
