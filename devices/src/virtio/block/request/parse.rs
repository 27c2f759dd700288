//! Parsing a descriptor chain into a [`Parsed`] request: the status byte located, the header
//! read, ranges and segments checked. Nothing reaches the store here except GET_ID, which
//! only needs the serial.

use std::io::Write;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID,
    VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
};
use virtio_queue::{DescriptorChain, Reader, Writer};
use vm_memory::{Address, GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryMmap};

use super::{
    byte_range, check_inside, RequestError, RequestHandler, FLAG_UNMAP, HEADER_LEN,
    MAX_DISCARD_SECTORS, MAX_DISCARD_SEGMENTS, SEGMENT_LEN,
};
use crate::virtio::block::store::{BlockStore, StoreError, SECTOR_SIZE};

/// What a parsed request still has to do.
#[derive(Debug)]
pub(super) enum Op {
    /// Nothing: it is answered (GET_ID) or it failed.
    Done,
    /// Read `len` bytes at `offset` into the data part.
    Read { offset: u64, len: usize },
    /// Write the `len` bytes of the readable part at `offset`.
    Write { offset: u64, len: usize },
    /// Make completed writes durable.
    Flush,
    /// DISCARD or (with `zero`) WRITE_ZEROES of (offset, len, may unmap) ranges.
    Segments {
        zero: bool,
        segments: Vec<(u64, u64, bool)>,
    },
}

/// One request between parsing and completion.
pub(super) struct Parsed<'m> {
    /// The chain's head index, for the used ring.
    pub head: u16,
    /// Where the status byte goes; `None` when the chain has none (it completes empty).
    pub status: Option<GuestAddress>,
    /// The device-writable data part (before the status byte).
    pub data: Option<Writer<'m>>,
    /// The device-readable part after the header.
    pub reader: Option<Reader<'m>>,
    /// What is left to do.
    pub op: Op,
    /// The first failure; the request's status comes from it.
    pub error: Option<RequestError>,
}

impl<'m> Parsed<'m> {
    fn empty(head: u16) -> Self {
        Parsed {
            head,
            status: None,
            data: None,
            reader: None,
            op: Op::Done,
            error: None,
        }
    }

    /// Records a failure (the first one wins) and drops what was left to do.
    pub fn fail(&mut self, e: RequestError) {
        self.op = Op::Done;
        self.error.get_or_insert(e);
    }
}

/// Parses `chain`, whose buffers live in `mem`.
pub(super) fn parse<'m, T>(
    handler: &RequestHandler,
    mem: &'m GuestMemoryMmap,
    chain: DescriptorChain<T>,
) -> Parsed<'m>
where
    T: std::ops::Deref + Clone,
    T::Target: GuestMemory + Sized,
{
    let head = chain.head_index();
    let mut p = Parsed::empty(head);
    let shape = match shape(mem, &chain) {
        Ok(shape) => shape,
        Err(what) => {
            handler.guest_fault(head, what);
            return p;
        }
    };
    // From here on the chain has a status byte: whatever is wrong becomes its error status.
    p.status = Some(shape.status);
    if !shape.in_order {
        p.fail(RequestError::Directions);
        return p;
    }
    let mut writer = match Writer::new(mem, chain.clone()) {
        Ok(w) => w,
        Err(e) => {
            p.fail(RequestError::Writable(e));
            return p;
        }
    };
    // The status byte is the chain's last writable byte: keep it out of the data part.
    if let Err(e) = writer.split_at(writer.available_bytes().saturating_sub(1)) {
        p.fail(RequestError::Writable(e));
        return p;
    }
    let mut reader = match Reader::new(mem, chain) {
        Ok(r) => r,
        Err(e) => {
            p.data = Some(writer);
            p.fail(RequestError::Readable(e));
            return p;
        }
    };
    match header(handler, &mut reader, &mut writer) {
        Ok(op) => p.op = op,
        Err(e) => p.fail(e),
    }
    p.data = Some(writer);
    p.reader = Some(reader);
    p
}

/// What walking a chain's descriptors tells before any buffer is touched.
struct Shape {
    /// The status byte: the last byte of the last descriptor.
    status: GuestAddress,
    /// Every device-readable descriptor comes before every device-writable one.
    in_order: bool,
}

/// Walks `chain` to find its status byte, which must be the last byte of a device-writable
/// last descriptor and lie inside guest memory, and to check the descriptors' directions.
fn shape<T>(mem: &GuestMemoryMmap, chain: &DescriptorChain<T>) -> Result<Shape, &'static str>
where
    T: std::ops::Deref + Clone,
    T::Target: GuestMemory + Sized,
{
    let mut last = None;
    let mut writable_seen = false;
    let mut in_order = true;
    for desc in chain.clone() {
        if desc.is_write_only() {
            writable_seen = true;
        } else if writable_seen {
            in_order = false;
        }
        last = Some(desc);
    }
    let last = last.ok_or("the descriptor chain is empty or unreadable")?;
    if !last.is_write_only() || last.len() == 0 {
        return Err("the chain has no writable byte for the status");
    }
    let status = last
        .addr()
        .checked_add(u64::from(last.len()) - 1)
        .filter(|&a| mem.address_in_range(a))
        .ok_or("the status byte lies outside guest memory")?;
    Ok(Shape { status, in_order })
}

/// Reads and checks the header (and DISCARD / WRITE_ZEROES segments); answers GET_ID.
fn header(
    handler: &RequestHandler,
    reader: &mut Reader<'_>,
    writer: &mut Writer<'_>,
) -> Result<Op, RequestError> {
    let store = handler.store().as_ref();
    if reader.available_bytes() < HEADER_LEN {
        return Err(RequestError::ShortHeader(reader.available_bytes()));
    }
    let hdr: [u8; HEADER_LEN] = reader.read_obj().map_err(RequestError::GuestMemory)?;
    let kind = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
    let mut sector = [0u8; 8];
    sector.copy_from_slice(&hdr[8..16]);
    let sector = u64::from_le_bytes(sector);
    match kind {
        VIRTIO_BLK_T_IN => {
            let len = writer.available_bytes();
            let offset = byte_range(sector, len as u64)?;
            check_inside(offset, len as u64, store.capacity())?;
            Ok(Op::Read { offset, len })
        }
        VIRTIO_BLK_T_OUT => {
            let len = reader.available_bytes();
            let offset = byte_range(sector, len as u64)?;
            if store.read_only() {
                return Err(StoreError::ReadOnly.into());
            }
            check_inside(offset, len as u64, store.capacity())?;
            Ok(Op::Write { offset, len })
        }
        VIRTIO_BLK_T_FLUSH => Ok(Op::Flush),
        VIRTIO_BLK_T_GET_ID => {
            get_id(store, writer)?;
            Ok(Op::Done)
        }
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES if handler.serves_discard() => {
            segments(store, kind, reader)
        }
        other => Err(RequestError::Unsupported(other)),
    }
}

fn get_id(store: &dyn BlockStore, writer: &mut Writer<'_>) -> Result<(), RequestError> {
    let mut id = [0u8; VIRTIO_BLK_ID_BYTES as usize];
    let serial = store.serial().as_bytes();
    let n = serial.len().min(id.len());
    id[..n].copy_from_slice(&serial[..n]);
    let len = writer.available_bytes().min(id.len());
    writer
        .write_all(&id[..len])
        .map_err(RequestError::GuestMemory)
}

fn segments(
    store: &dyn BlockStore,
    kind: u32,
    reader: &mut Reader<'_>,
) -> Result<Op, RequestError> {
    let zero = kind == VIRTIO_BLK_T_WRITE_ZEROES;
    let supported = if zero {
        store.supports_write_zeroes()
    } else {
        store.supports_discard()
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
        if store.read_only() {
            return Err(StoreError::ReadOnly.into());
        }
        check_inside(offset, len, store.capacity())?;
        segments.push((offset, len, flags & FLAG_UNMAP != 0));
    }
    Ok(Op::Segments { zero, segments })
}
