//! Storage monitor operations (opcodes 0x02xx).
//!
//! Data operations use the binary codec (name: u16 length + UTF-8):
//!
//! | opcode | request body | response body |
//! |---|---|---|
//! | `READ` 0x0210 | name, offset u64, len u32 | len bytes |
//! | `WRITE` 0x0211 | name, offset u64, data (rest of body); flag [`FLAG_FUA`]: durable before the ack | empty |
//! | `FLUSH` 0x0212 | name | empty (after `fdatasync`) |
//! | `DISCARD` 0x0213 | name, offset u64, len u64 | empty |
//! | `WRITE_ZEROES` 0x0214 | name, offset u64, len u64 | empty |
//!
//! Control operations carry JSON: `CREATE` 0x0201 [`CreateVolume`], `STAT` 0x0202 [`VolumeName`],
//! `RESIZE` 0x0203 [`ResizeVolume`], `DELETE` 0x0204 [`VolumeName`], `LIST` 0x0205 (empty), all
//! answered with [`VolumeInfo`] (a list for `LIST`, empty for `DELETE`), and `STATS` 0x0220
//! (vNode 0) answered with [`StorageStats`]. Volume ops need `Rights::STORAGE` for the vNode.

use serde::{Deserialize, Serialize};

use super::wire::{Reader, Writer};
use super::ProtoError;

/// Longest accepted volume name.
pub const MAX_NAME_LEN: usize = 64;
/// Largest single read or write.
pub const MAX_IO: usize = 4 << 20;

/// A volume's description as returned to clients.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VolumeInfo {
    /// The volume name.
    pub name: String,
    /// The owner vNode.
    pub owner: u64,
    /// Size in bytes.
    pub size: u64,
    /// Bytes actually allocated on disk (sparse files allocate less).
    pub allocated_bytes: u64,
}

/// Create a volume.
pub const CREATE: u16 = 0x0201;
/// Describe a volume.
pub const STAT: u16 = 0x0202;
/// Resize a volume.
pub const RESIZE: u16 = 0x0203;
/// Delete a volume.
pub const DELETE: u16 = 0x0204;
/// List the vNode's volumes.
pub const LIST: u16 = 0x0205;
/// Read a range.
pub const READ: u16 = 0x0210;
/// Write a range.
pub const WRITE: u16 = 0x0211;
/// Make completed writes durable.
pub const FLUSH: u16 = 0x0212;
/// Deallocate a range.
pub const DISCARD: u16 = 0x0213;
/// Zero a range.
pub const WRITE_ZEROES: u16 = 0x0214;
/// Monitor statistics (vNode 0).
pub const STATS: u16 = 0x0220;

/// Request flag on `WRITE`: forced unit access (fdatasync before the ack).
pub const FLAG_FUA: u16 = 0x0001;

/// Body of `CREATE`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CreateVolume {
    /// Volume name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
}

/// Body of `STAT` and `DELETE`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VolumeName {
    /// Volume name.
    pub name: String,
}

/// Body of `RESIZE`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ResizeVolume {
    /// Volume name.
    pub name: String,
    /// New size in bytes.
    pub size: u64,
}

/// Answer to `STATS`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct StorageStats {
    /// Capacity offered to the manager.
    pub capacity_bytes: u64,
    /// Sum of volume sizes.
    pub provisioned_bytes: u64,
    /// Bytes allocated on disk.
    pub allocated_bytes: u64,
    /// Number of volumes.
    pub volumes: u64,
    /// Reads served.
    pub reads: u64,
    /// Writes served.
    pub writes: u64,
    /// Flushes served.
    pub flushes: u64,
}

/// A decoded binary data operation (borrowing from the request body).
#[derive(Debug, PartialEq, Eq)]
pub enum DataOp<'a> {
    /// Read `len` bytes at `offset`.
    Read {
        /// Volume.
        name: &'a str,
        /// Byte offset.
        offset: u64,
        /// Length.
        len: u32,
    },
    /// Write `data` at `offset`.
    Write {
        /// Volume.
        name: &'a str,
        /// Byte offset.
        offset: u64,
        /// Bytes to write.
        data: &'a [u8],
    },
    /// fdatasync the volume.
    Flush {
        /// Volume.
        name: &'a str,
    },
    /// Punch a hole.
    Discard {
        /// Volume.
        name: &'a str,
        /// Byte offset.
        offset: u64,
        /// Length.
        len: u64,
    },
    /// Zero a range.
    WriteZeroes {
        /// Volume.
        name: &'a str,
        /// Byte offset.
        offset: u64,
        /// Length.
        len: u64,
    },
}

impl<'a> DataOp<'a> {
    /// Decodes a data op; `Ok(None)` when `opcode` is not a data op.
    pub fn decode(opcode: u16, body: &'a [u8]) -> Result<Option<Self>, ProtoError> {
        let mut r = Reader::new(body);
        let op = match opcode {
            READ => {
                let name = r.string("volume name", MAX_NAME_LEN)?;
                let offset = r.u64("offset")?;
                let len = r.u32("length")?;
                if len as usize > MAX_IO {
                    return Err(ProtoError::TooLarge {
                        what: "read length",
                        got: len as u64,
                        max: MAX_IO as u64,
                    });
                }
                DataOp::Read { name, offset, len }
            }
            WRITE => {
                let name = r.string("volume name", MAX_NAME_LEN)?;
                let offset = r.u64("offset")?;
                DataOp::Write {
                    name,
                    offset,
                    data: r.rest(),
                }
            }
            FLUSH => DataOp::Flush {
                name: r.string("volume name", MAX_NAME_LEN)?,
            },
            DISCARD | WRITE_ZEROES => {
                let name = r.string("volume name", MAX_NAME_LEN)?;
                let offset = r.u64("offset")?;
                let len = r.u64("length")?;
                if opcode == DISCARD {
                    DataOp::Discard { name, offset, len }
                } else {
                    DataOp::WriteZeroes { name, offset, len }
                }
            }
            _ => return Ok(None),
        };
        r.finish()?;
        Ok(Some(op))
    }

    /// The opcode of this operation.
    pub fn opcode(&self) -> u16 {
        match self {
            DataOp::Read { .. } => READ,
            DataOp::Write { .. } => WRITE,
            DataOp::Flush { .. } => FLUSH,
            DataOp::Discard { .. } => DISCARD,
            DataOp::WriteZeroes { .. } => WRITE_ZEROES,
        }
    }

    /// Encodes the body of this operation.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            DataOp::Read { name, offset, len } => Writer::with_capacity(16 + name.len())
                .string(name)
                .u64(*offset)
                .u32(*len)
                .finish(),
            DataOp::Write { name, offset, data } => {
                Writer::with_capacity(12 + name.len() + data.len())
                    .string(name)
                    .u64(*offset)
                    .bytes(data)
                    .finish()
            }
            DataOp::Flush { name } => Writer::default().string(name).finish(),
            DataOp::Discard { name, offset, len } | DataOp::WriteZeroes { name, offset, len } => {
                Writer::with_capacity(20 + name.len())
                    .string(name)
                    .u64(*offset)
                    .u64(*len)
                    .finish()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_ops_round_trip() {
        let ops = vec![
            DataOp::Read {
                name: "v",
                offset: 4096,
                len: 512,
            },
            DataOp::Write {
                name: "disk",
                offset: 1,
                data: b"abc",
            },
            DataOp::Flush { name: "disk" },
            DataOp::Discard {
                name: "d",
                offset: 0,
                len: 1 << 20,
            },
            DataOp::WriteZeroes {
                name: "d",
                offset: 8,
                len: 8,
            },
        ];
        for op in ops {
            let body = op.encode();
            assert_eq!(
                DataOp::decode(op.opcode(), &body).expect("decode"),
                Some(op)
            );
        }
        assert_eq!(DataOp::decode(CREATE, b"{}").unwrap(), None);
        assert!(DataOp::decode(READ, &[200, 0, 1]).is_err());
        let big = DataOp::Read {
            name: "v",
            offset: 0,
            len: u32::MAX,
        }
        .encode();
        assert!(DataOp::decode(READ, &big).is_err());
    }
}
