//! Parsing and serving one virtio-blk request (one descriptor chain).
//!
//! A request is a readable 16-byte header (type, reserved, sector), then data
//! buffers (readable for OUT, writable for IN and GET_ID), then a writable status
//! byte at the very end of the chain. Every malformed chain is completed: with an
//! error status when the status byte can be written, otherwise with a used length
//! of 0.

use std::io;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::disk::{Disk, SECTOR_SIZE};

/// The size of the request header.
pub const HEADER_LEN: u64 = 16;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The chain had no descriptors (bad head index or unreadable table).
    #[error("the descriptor chain is empty or unreadable")]
    EmptyChain,
    /// The chain does not end with a writable status byte inside guest memory.
    #[error("the chain has no writable status byte in guest memory")]
    NoStatus,
    /// A device-readable descriptor follows a device-writable one.
    #[error("a readable descriptor follows a writable one")]
    BadDirections,
    /// The readable part is shorter than the header.
    #[error("the request header is {0} bytes, shorter than 16")]
    ShortHeader(u64),
    /// A buffer lies (partly) outside guest memory.
    #[error("the buffer {addr:#x}+{len:#x} is not inside guest memory")]
    BadBuffer {
        /// Guest address.
        addr: u64,
        /// Length.
        len: u64,
    },
    /// The data length is not a whole number of sectors.
    #[error("the data length {0} is not a multiple of 512")]
    PartialSector(u64),
    /// The request reaches beyond the end of the disk.
    #[error("sectors {sector}+{len} bytes lie beyond the end of the disk")]
    OutOfRange {
        /// First sector.
        sector: u64,
        /// Data length in bytes.
        len: u64,
    },
    /// A write or flush to a read-only disk.
    #[error("the disk is read-only")]
    ReadOnly,
    /// The host I/O failed.
    #[error("disk I/O failed: {0}")]
    Io(#[from] io::Error),
    /// The request type is not supported.
    #[error("request type {0} is not supported")]
    Unsupported(u32),
}

impl RequestError {
    /// The status byte the guest sees for this error.
    pub fn status(&self) -> u8 {
        match self {
            RequestError::Unsupported(_) => VIRTIO_BLK_S_UNSUPP as u8,
            _ => VIRTIO_BLK_S_IOERR as u8,
        }
    }

    /// Whether this is the guest's fault (worth a rate-limited warning) rather than
    /// an ordinary I/O outcome.
    pub fn is_malformed(&self) -> bool {
        !matches!(self, RequestError::Io(_) | RequestError::Unsupported(_))
    }
}

/// A contiguous guest buffer.
#[derive(Debug, Clone, Copy)]
struct Segment {
    addr: GuestAddress,
    len: u64,
}

/// The outcome of one request.
#[derive(Debug)]
pub struct Outcome {
    /// The number of bytes written into the chain's writable buffers (the used length).
    pub used_len: u32,
    /// The error, if the request failed.
    pub error: Option<RequestError>,
}

/// Serves the request in `descs` (one chain, in order) against `disk`.
pub fn handle(mem: &GuestMemoryMmap<()>, disk: &Disk, descs: &[Descriptor]) -> Outcome {
    let Some(last) = descs.last() else {
        return failed(0, RequestError::EmptyChain);
    };
    let status_addr = (last.is_write_only() && last.len() >= 1)
        .then(|| last.addr().checked_add(u64::from(last.len()) - 1))
        .flatten()
        .filter(|&a| GuestMemoryBackend::check_range(mem, a, 1));
    let Some(status_addr) = status_addr else {
        return failed(0, RequestError::NoStatus);
    };

    let (used, result) = match execute(mem, disk, descs) {
        Ok(data_written) => (data_written, Ok(())),
        Err(e) => (0, Err(e)),
    };
    let status = match &result {
        Ok(()) => VIRTIO_BLK_S_OK as u8,
        Err(e) => e.status(),
    };
    if let Err(e) = mem.write_obj(status, status_addr) {
        // Checked above; only a racing memory unplug could get here.
        return failed(0, RequestError::Io(io::Error::other(e.to_string())));
    }
    let used_len = u32::try_from(used.saturating_add(1)).unwrap_or(u32::MAX);
    Outcome {
        used_len,
        error: result.err(),
    }
}

fn failed(used_len: u32, error: RequestError) -> Outcome {
    Outcome {
        used_len,
        error: Some(error),
    }
}

/// Runs the request; returns how many data bytes it wrote into guest buffers.
fn execute(
    mem: &GuestMemoryMmap<()>,
    disk: &Disk,
    descs: &[Descriptor],
) -> Result<u64, RequestError> {
    let split = descs
        .iter()
        .position(|d| d.is_write_only())
        .unwrap_or(descs.len());
    let (readable, writable) = descs.split_at(split);
    if writable.iter().any(|d| !d.is_write_only()) {
        return Err(RequestError::BadDirections);
    }
    let readable: Vec<Segment> = readable.iter().map(segment).collect();
    let mut writable: Vec<Segment> = writable.iter().map(segment).collect();
    // Drop the status byte (the chain's last byte) from the writable data.
    if let Some(last) = writable.last_mut() {
        last.len -= 1;
    }
    for seg in readable.iter().chain(&writable) {
        check_segment(mem, seg)?;
    }

    let readable_len: u64 = readable.iter().map(|s| s.len).sum();
    if readable_len < HEADER_LEN {
        return Err(RequestError::ShortHeader(readable_len));
    }
    let mut header = [0u8; HEADER_LEN as usize];
    gather(mem, &readable, &mut header)?;
    let request_type = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let sector = u64::from_le_bytes([
        header[8], header[9], header[10], header[11], header[12], header[13], header[14],
        header[15],
    ]);

    match request_type {
        VIRTIO_BLK_T_IN => {
            let len = checked_io_len(disk, sector, &writable)?;
            transfer(mem, &writable, sector * SECTOR_SIZE, |slice, off| {
                disk.read_into(slice, off)
            })?;
            Ok(len)
        }
        VIRTIO_BLK_T_OUT => {
            if disk.read_only() {
                return Err(RequestError::ReadOnly);
            }
            let data = skip(&readable, HEADER_LEN);
            checked_io_len(disk, sector, &data)?;
            transfer(mem, &data, sector * SECTOR_SIZE, |slice, off| {
                disk.write_from(slice, off)
            })?;
            Ok(0)
        }
        VIRTIO_BLK_T_FLUSH => {
            if !disk.read_only() {
                disk.flush()?;
            }
            Ok(0)
        }
        VIRTIO_BLK_T_GET_ID => {
            let mut written = 0u64;
            let mut id: &[u8] = disk.id();
            for seg in &writable {
                if id.is_empty() {
                    break;
                }
                let n = id.len().min(usize::try_from(seg.len).unwrap_or(usize::MAX));
                mem.write_slice(&id[..n], seg.addr)
                    .map_err(|_| bad_buffer(seg))?;
                id = &id[n..];
                written += n as u64;
            }
            Ok(written)
        }
        other => Err(RequestError::Unsupported(other)),
    }
}

fn segment(d: &Descriptor) -> Segment {
    Segment {
        addr: d.addr(),
        len: u64::from(d.len()),
    }
}

fn bad_buffer(seg: &Segment) -> RequestError {
    RequestError::BadBuffer {
        addr: seg.addr.raw_value(),
        len: seg.len,
    }
}

fn check_segment(mem: &GuestMemoryMmap<()>, seg: &Segment) -> Result<(), RequestError> {
    let ok = seg.len == 0
        || usize::try_from(seg.len)
            .is_ok_and(|len| GuestMemoryBackend::check_range(mem, seg.addr, len));
    if ok {
        Ok(())
    } else {
        Err(bad_buffer(seg))
    }
}

/// The data length of `segs` after checking it is whole sectors inside the disk.
fn checked_io_len(disk: &Disk, sector: u64, segs: &[Segment]) -> Result<u64, RequestError> {
    let len: u64 = segs.iter().map(|s| s.len).sum();
    if !len.is_multiple_of(SECTOR_SIZE) {
        return Err(RequestError::PartialSector(len));
    }
    if !disk.in_range(sector, len) {
        return Err(RequestError::OutOfRange { sector, len });
    }
    Ok(len)
}

/// The segments left after skipping the first `n` bytes.
fn skip(segs: &[Segment], mut n: u64) -> Vec<Segment> {
    let mut out = Vec::with_capacity(segs.len());
    for seg in segs {
        if n >= seg.len {
            n -= seg.len;
            continue;
        }
        out.push(Segment {
            addr: seg.addr.unchecked_add(n),
            len: seg.len - n,
        });
        n = 0;
    }
    out
}

/// Copies the first `buf.len()` bytes of `segs` into `buf`.
fn gather(mem: &GuestMemoryMmap<()>, segs: &[Segment], buf: &mut [u8]) -> Result<(), RequestError> {
    let mut filled = 0usize;
    for seg in segs {
        if filled == buf.len() {
            break;
        }
        let n = (buf.len() - filled).min(usize::try_from(seg.len).unwrap_or(usize::MAX));
        mem.read_slice(&mut buf[filled..filled + n], seg.addr)
            .map_err(|_| bad_buffer(seg))?;
        filled += n;
    }
    Ok(())
}

/// Runs `io` over every host slice of `segs`, advancing the disk offset from `offset`.
fn transfer<F>(
    mem: &GuestMemoryMmap<()>,
    segs: &[Segment],
    mut offset: u64,
    mut io: F,
) -> Result<(), RequestError>
where
    F: FnMut(&vm_memory::VolatileSlice<'_, ()>, u64) -> io::Result<()>,
{
    for seg in segs {
        let len = usize::try_from(seg.len).map_err(|_| bad_buffer(seg))?;
        for slice in GuestMemoryBackend::get_slices(mem, seg.addr, len) {
            let slice = slice.map_err(|_| bad_buffer(seg))?;
            io(&slice, offset)?;
            offset += slice.len() as u64;
        }
    }
    Ok(())
}
