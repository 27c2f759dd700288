//! Serving one virtio-blk request: parse the descriptor chain (header, data, status byte),
//! run it against the [`BlockStore`], write the status, and say how many bytes the device
//! wrote for the used ring.
//!
//! Nothing a guest puts in a chain can panic or stall the device: a chain that cannot be read
//! is completed with `VIRTIO_BLK_S_IOERR` when it has a status byte, and with no bytes written
//! when it has none; such problems are logged at most once a second.

use std::io::{Read, Write};
use std::sync::Arc;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
};
use virtio_queue::{DescriptorChain, Reader, Writer};
use vm_memory::{GuestMemory, GuestMemoryMmap};

use crate::ratelimit::RateLimiter;
use crate::store::{BlockStore, StoreError, SECTOR_SIZE};

/// Bytes moved between the guest and the store per step of a large read or write.
pub const CHUNK: usize = 1 << 20;
/// Segments accepted in one DISCARD or WRITE_ZEROES request.
pub const MAX_DISCARD_SEGMENTS: u32 = 32;
/// Sectors accepted in one DISCARD or WRITE_ZEROES segment (1 GiB).
pub const MAX_DISCARD_SECTORS: u32 = (1 << 30) / SECTOR_SIZE as u32;
/// Size of the request header (type u32, reserved u32, sector u64).
const HEADER_LEN: usize = 16;
/// Size of one DISCARD / WRITE_ZEROES segment (sector u64, sectors u32, flags u32).
const SEGMENT_LEN: usize = 16;
/// The WRITE_ZEROES segment flag allowing deallocation.
const FLAG_UNMAP: u32 = 1;

/// Why a request failed; every variant becomes a status for the guest (see
/// [`RequestError::status`]).
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The device-readable part of the chain is shorter than the request header.
    #[error("the request header needs 16 bytes but the chain has {0} readable")]
    ShortHeader(usize),
    /// The readable descriptors could not be mapped.
    #[error("the readable descriptors are malformed: {0}")]
    Readable(virtio_queue::Error),
    /// A data length is not a whole number of sectors.
    #[error("a data length of {0} bytes is not a whole number of 512-byte sectors")]
    Misaligned(u64),
    /// The sector lies past any possible device.
    #[error("sector {0} is out of range")]
    SectorOverflow(u64),
    /// DISCARD / WRITE_ZEROES segments are malformed.
    #[error("the discard or write-zeroes segments are malformed: {0}")]
    Segments(String),
    /// Copying between guest memory and the device failed.
    #[error("copying guest memory failed: {0}")]
    GuestMemory(std::io::Error),
    /// The store failed.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The request type (or a flag in it) is not supported.
    #[error("request type {0} is not supported")]
    Unsupported(u32),
}

impl RequestError {
    /// The virtio-blk status reported to the guest.
    pub fn status(&self) -> u8 {
        match self {
            RequestError::Unsupported(_) | RequestError::Store(StoreError::Unsupported(_)) => {
                VIRTIO_BLK_S_UNSUPP as u8
            }
            _ => VIRTIO_BLK_S_IOERR as u8,
        }
    }

    /// Whether the guest sent something malformed (as opposed to a store failure).
    fn is_guest_fault(&self) -> bool {
        !matches!(self, RequestError::Store(_) | RequestError::Unsupported(_))
    }
}

/// What serving a chain produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// Bytes the device wrote into the chain (data plus the status byte): the used length.
    pub used_len: u32,
    /// The status written, or `None` when the chain had nowhere to put one.
    pub status: Option<u8>,
}

/// Serves virtio-blk requests from one store; shared by all queues.
pub struct RequestHandler {
    store: Arc<dyn BlockStore>,
    guest_faults: RateLimiter,
    store_faults: RateLimiter,
}

impl RequestHandler {
    /// A handler for `store`.
    pub fn new(store: Arc<dyn BlockStore>) -> Self {
        Self {
            store,
            guest_faults: RateLimiter::default(),
            store_faults: RateLimiter::default(),
        }
    }

    /// The store served.
    pub fn store(&self) -> &Arc<dyn BlockStore> {
        &self.store
    }

    /// Serves one chain whose buffers live in `mem`.
    pub fn process<T>(&self, mem: &GuestMemoryMmap, chain: DescriptorChain<T>) -> Completion
    where
        T: std::ops::Deref + Clone,
        T::Target: GuestMemory + Sized,
    {
        let head = chain.head_index();
        let mut writer = match Writer::new(mem, chain.clone()) {
            Ok(w) => w,
            Err(e) => {
                self.guest_fault(
                    head,
                    &format!("the writable descriptors are malformed: {e}"),
                );
                return Completion {
                    used_len: 0,
                    status: None,
                };
            }
        };
        let writable = writer.available_bytes();
        if writable == 0 {
            self.guest_fault(head, "the chain has no writable byte for the status");
            return Completion {
                used_len: 0,
                status: None,
            };
        }
        let mut status_writer = match writer.split_at(writable - 1) {
            Ok(w) => w,
            Err(e) => {
                self.guest_fault(head, &format!("the status byte cannot be located: {e}"));
                return Completion {
                    used_len: 0,
                    status: None,
                };
            }
        };
        let result = Reader::new(mem, chain)
            .map_err(RequestError::Readable)
            .and_then(|mut reader| self.execute(&mut reader, &mut writer));
        let (status, data_len) = match result {
            Ok(n) => (VIRTIO_BLK_S_OK as u8, n),
            Err(e) => {
                if e.is_guest_fault() {
                    self.guest_fault(head, &e.to_string());
                } else {
                    self.store_fault(head, &e);
                }
                // Whatever reached the guest before the failure still counts as written.
                (e.status(), writer.bytes_written())
            }
        };
        if let Err(e) = status_writer.write_all(&[status]) {
            self.guest_fault(head, &format!("the status byte cannot be written: {e}"));
            return Completion {
                used_len: u32::try_from(data_len).unwrap_or(u32::MAX),
                status: None,
            };
        }
        Completion {
            used_len: u32::try_from(data_len.saturating_add(1)).unwrap_or(u32::MAX),
            status: Some(status),
        }
    }

    /// Runs the request; returns the data bytes written to the guest.
    fn execute(
        &self,
        reader: &mut Reader<'_>,
        writer: &mut Writer<'_>,
    ) -> Result<usize, RequestError> {
        if reader.available_bytes() < HEADER_LEN {
            return Err(RequestError::ShortHeader(reader.available_bytes()));
        }
        let hdr: [u8; HEADER_LEN] = reader.read_obj().map_err(RequestError::GuestMemory)?;
        let kind = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
        let mut sector = [0u8; 8];
        sector.copy_from_slice(&hdr[8..16]);
        let sector = u64::from_le_bytes(sector);
        match kind {
            VIRTIO_BLK_T_IN => self.read(sector, writer),
            VIRTIO_BLK_T_OUT => self.write(sector, reader).map(|()| 0),
            VIRTIO_BLK_T_FLUSH => self.store.flush().map(|()| 0).map_err(Into::into),
            VIRTIO_BLK_T_GET_ID => self.get_id(writer),
            VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
                self.discard_or_zero(kind, reader).map(|()| 0)
            }
            other => Err(RequestError::Unsupported(other)),
        }
    }

    fn read(&self, sector: u64, writer: &mut Writer<'_>) -> Result<usize, RequestError> {
        let len = writer.available_bytes();
        let offset = byte_range(sector, len as u64)?;
        check_inside(offset, len as u64, self.store.capacity())?;
        let mut buf = vec![0u8; len.min(CHUNK)];
        let mut done = 0usize;
        while done < len {
            let n = (len - done).min(CHUNK);
            self.store.read_at(offset + done as u64, &mut buf[..n])?;
            writer
                .write_all(&buf[..n])
                .map_err(RequestError::GuestMemory)?;
            done += n;
        }
        Ok(len)
    }

    fn write(&self, sector: u64, reader: &mut Reader<'_>) -> Result<(), RequestError> {
        let len = reader.available_bytes();
        let offset = byte_range(sector, len as u64)?;
        if self.store.read_only() {
            return Err(StoreError::ReadOnly.into());
        }
        check_inside(offset, len as u64, self.store.capacity())?;
        let mut buf = vec![0u8; len.min(CHUNK)];
        let mut done = 0usize;
        while done < len {
            let n = (len - done).min(CHUNK);
            reader
                .read_exact(&mut buf[..n])
                .map_err(RequestError::GuestMemory)?;
            self.store.write_at(offset + done as u64, &buf[..n])?;
            done += n;
        }
        Ok(())
    }

    fn get_id(&self, writer: &mut Writer<'_>) -> Result<usize, RequestError> {
        let mut id = [0u8; VIRTIO_BLK_ID_BYTES as usize];
        let serial = self.store.serial().as_bytes();
        let n = serial.len().min(id.len());
        id[..n].copy_from_slice(&serial[..n]);
        let len = writer.available_bytes().min(id.len());
        writer
            .write_all(&id[..len])
            .map_err(RequestError::GuestMemory)?;
        Ok(len)
    }

    fn discard_or_zero(&self, kind: u32, reader: &mut Reader<'_>) -> Result<(), RequestError> {
        let zero = kind == VIRTIO_BLK_T_WRITE_ZEROES;
        let supported = if zero {
            self.store.supports_write_zeroes()
        } else {
            self.store.supports_discard()
        };
        if !supported {
            return Err(RequestError::Unsupported(kind));
        }
        let len = reader.available_bytes();
        let count = len / SEGMENT_LEN;
        if !len.is_multiple_of(SEGMENT_LEN) || count == 0 || count > MAX_DISCARD_SEGMENTS as usize {
            return Err(RequestError::Segments(format!(
                "{len} bytes are not 1 to {MAX_DISCARD_SEGMENTS} segments of 16 bytes"
            )));
        }
        let mut segments = Vec::with_capacity(count);
        for _ in 0..count {
            let s: [u8; SEGMENT_LEN] = reader.read_obj().map_err(RequestError::GuestMemory)?;
            let mut sector = [0u8; 8];
            sector.copy_from_slice(&s[..8]);
            let sector = u64::from_le_bytes(sector);
            let sectors = u32::from_le_bytes([s[8], s[9], s[10], s[11]]);
            let flags = u32::from_le_bytes([s[12], s[13], s[14], s[15]]);
            // DISCARD must not carry the unmap flag; neither may carry reserved flags.
            let allowed = if zero { FLAG_UNMAP } else { 0 };
            if flags & !allowed != 0 {
                return Err(RequestError::Unsupported(kind));
            }
            if sectors > MAX_DISCARD_SECTORS {
                return Err(RequestError::Segments(format!(
                    "a segment of {sectors} sectors exceeds the limit of {MAX_DISCARD_SECTORS}"
                )));
            }
            let len = u64::from(sectors) * SECTOR_SIZE;
            let offset = byte_range(sector, len)?;
            if self.store.read_only() {
                return Err(StoreError::ReadOnly.into());
            }
            check_inside(offset, len, self.store.capacity())?;
            segments.push((offset, len, flags & FLAG_UNMAP != 0));
        }
        for (offset, len, unmap) in segments {
            if zero {
                self.store.write_zeroes(offset, len, unmap)?;
            } else {
                self.store.discard(offset, len)?;
            }
        }
        Ok(())
    }

    fn guest_fault(&self, head: u16, what: &str) {
        if let Some(suppressed) = self.guest_faults.admit() {
            tracing::warn!(head, suppressed, "malformed request from the guest: {what}");
        }
    }

    fn store_fault(&self, head: u16, e: &RequestError) {
        if let Some(suppressed) = self.store_faults.admit() {
            tracing::warn!(head, suppressed, "request failed: {e}");
        }
    }
}

/// The byte offset of `sector`, checking that `len` is whole sectors.
fn byte_range(sector: u64, len: u64) -> Result<u64, RequestError> {
    if !len.is_multiple_of(SECTOR_SIZE) {
        return Err(RequestError::Misaligned(len));
    }
    sector
        .checked_mul(SECTOR_SIZE)
        .ok_or(RequestError::SectorOverflow(sector))
}

fn check_inside(offset: u64, len: u64, capacity: u64) -> Result<(), RequestError> {
    crate::store::check_range(offset, len, capacity).map_err(RequestError::Store)
}

#[cfg(test)]
mod tests;
