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
//! | `FILL_BEGIN` 0x0108 | start u64, count u64 | empty |
//! | `FILL_RUN` 0x0109 | start u64, count u32, count x 4096 bytes | stored u64 |
//! | `FILL_END` 0x010a | start u64, count u64 | empty |
//! | `PRESENT` 0x010b | start u64, count u32 | bitmap, `count.div_ceil(8)` bytes |
//!
//! The `FILL_*` operations repair a copy of a vRegion (see `lego_monitors::pagestore::fence`):
//! `FILL_BEGIN` opens a fence over the region's pages, after which every write, zero write
//! and trim of a page there is remembered; `FILL_RUN` stores only pages that are neither
//! present nor touched since the fence opened (put-if-absent), so a page the vNode wrote or
//! trimmed during the repair always wins over the older copy, in either arrival order;
//! `FILL_END` drops the fence. `PRESENT` says which pages of a range are stored (bit `i`
//! of byte `i / 8` is page `start + i`), so a repair copies only those.
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
/// Open a repair fence over a range of pages.
pub const FILL_BEGIN: u16 = 0x0108;
/// Store pages that are absent and untouched since the fence opened (a repair copy).
pub const FILL_RUN: u16 = 0x0109;
/// Close a repair fence.
pub const FILL_END: u16 = 0x010a;
/// Which pages of a range are stored.
pub const PRESENT: u16 = 0x010b;
/// Most pages one repair fence may cover (64 GiB of pages; its bitmap is 2 MiB).
pub const MAX_FENCE_PAGES: u64 = 1 << 24;
/// Most pages one `PRESENT` request may ask about (its answer is 8 KiB).
pub const MAX_PRESENT_PAGES: u32 = 1 << 16;

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
    /// Open a repair fence over pages `start..start+count`.
    FillBegin {
        /// First page.
        start: u64,
        /// Page count (at most [`MAX_FENCE_PAGES`]).
        count: u64,
    },
    /// Store the pages from `start` that are absent and untouched since the fence opened.
    FillRun {
        /// First page.
        start: u64,
        /// count x 4096 bytes.
        data: &'a [u8],
    },
    /// Close the repair fence opened at `start` with `count` pages.
    FillEnd {
        /// First page.
        start: u64,
        /// Page count.
        count: u64,
    },
    /// Which of pages `start..start+count` are stored.
    Present {
        /// First page.
        start: u64,
        /// Page count (at most [`MAX_PRESENT_PAGES`]).
        count: u32,
    },
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
            FILL_BEGIN | FILL_END => {
                let start = r.u64("start page")?;
                let count = r.u64("page count")?;
                if count > MAX_FENCE_PAGES {
                    return Err(ProtoError::TooLarge {
                        what: "fence page count",
                        got: count,
                        max: MAX_FENCE_PAGES,
                    });
                }
                if opcode == FILL_BEGIN {
                    MemoryOp::FillBegin { start, count }
                } else {
                    MemoryOp::FillEnd { start, count }
                }
            }
            FILL_RUN => {
                let start = r.u64("start page")?;
                let count = check_count(r.u32("page count")?)?;
                let data = r.rest();
                check_data(data, count)?;
                MemoryOp::FillRun { start, data }
            }
            PRESENT => {
                let start = r.u64("start page")?;
                let count = r.u32("page count")?;
                if count > MAX_PRESENT_PAGES {
                    return Err(ProtoError::TooLarge {
                        what: "presence page count",
                        got: count.into(),
                        max: MAX_PRESENT_PAGES.into(),
                    });
                }
                MemoryOp::Present { start, count }
            }
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
            MemoryOp::FillBegin { .. } => FILL_BEGIN,
            MemoryOp::FillRun { .. } => FILL_RUN,
            MemoryOp::FillEnd { .. } => FILL_END,
            MemoryOp::Present { .. } => PRESENT,
        }
    }

    /// Encodes the body of this operation.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            MemoryOp::ReadRun { start, count } => {
                Writer::with_capacity(12).u64(*start).u32(*count).finish()
            }
            MemoryOp::WriteRun { start, data } | MemoryOp::FillRun { start, data } => {
                Writer::with_capacity(12 + data.len())
                    .u64(*start)
                    .u32((data.len() / PAGE_SIZE) as u32)
                    .bytes(data)
                    .finish()
            }
            MemoryOp::FillBegin { start, count } | MemoryOp::FillEnd { start, count } => {
                Writer::with_capacity(16).u64(*start).u64(*count).finish()
            }
            MemoryOp::Present { start, count } => {
                Writer::with_capacity(12).u64(*start).u32(*count).finish()
            }
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
            MemoryOp::FillBegin {
                start: 0,
                count: 16384,
            },
            MemoryOp::FillRun {
                start: 5,
                data: &two,
            },
            MemoryOp::FillEnd {
                start: 0,
                count: 16384,
            },
            MemoryOp::Present {
                start: 64,
                count: 4096,
            },
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
        let fence = Writer::default().u64(0).u64(MAX_FENCE_PAGES + 1).finish();
        assert!(matches!(
            MemoryOp::decode(FILL_BEGIN, &fence),
            Err(ProtoError::TooLarge { .. })
        ));
        let present = Writer::default().u64(0).u32(MAX_PRESENT_PAGES + 1).finish();
        assert!(matches!(
            MemoryOp::decode(PRESENT, &present),
            Err(ProtoError::TooLarge { .. })
        ));
        let fill = Writer::default()
            .u64(0)
            .u32(2)
            .bytes(&[1; PAGE_SIZE])
            .finish();
        assert!(matches!(
            MemoryOp::decode(FILL_RUN, &fill),
            Err(ProtoError::LengthMismatch { .. })
        ));
    }
}
