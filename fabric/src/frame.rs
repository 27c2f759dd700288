//! The wire format: a fixed 36-byte little-endian header, then the payload.
//!
//! | offset | field        | type |
//! |--------|--------------|------|
//! | 0      | magic        | u32  |
//! | 4      | version      | u16  |
//! | 6      | opcode       | u16  |
//! | 8      | flags        | u16  |
//! | 10     | status       | u16  |
//! | 12     | request_id   | u64  |
//! | 20     | vnode        | u64  |
//! | 28     | payload_len  | u32  |
//! | 32     | crc32c       | u32  |
//!
//! The CRC-32C covers the header (with the crc field zero) followed by the payload.

/// Magic number opening every frame ("LEGO" read as a little-endian u32).
pub const MAGIC: u32 = u32::from_le_bytes(*b"LEGO");
/// The protocol version this crate speaks.
pub const VERSION: u16 = 1;
/// Size of the fixed header in bytes.
pub const HEADER_LEN: usize = 36;
/// Largest payload a frame may carry (8 MiB).
pub const MAX_PAYLOAD: usize = 8 << 20;
/// Largest `payload_len` on the wire: [`MAX_PAYLOAD`] and a protected frame's tag.
pub const MAX_WIRE_PAYLOAD: usize = MAX_PAYLOAD + crate::seal::TAG_LEN;
/// Flag set on every frame sent by the serving side in answer to a request.
pub const FLAG_RESPONSE: u16 = 0x8000;

const CRC_OFFSET: usize = 32;

/// Why bytes could not be decoded into a frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The frame did not start with [`MAGIC`].
    #[error("the frame has bad magic {found:#010x} (expected {MAGIC:#010x})")]
    BadMagic {
        /// The magic that was found.
        found: u32,
    },
    /// The frame was written for another protocol version.
    #[error("the peer speaks protocol version {theirs}, but this side speaks version {ours}")]
    VersionMismatch {
        /// Our version.
        ours: u16,
        /// The version in the frame.
        theirs: u16,
    },
    /// The payload length exceeds [`MAX_WIRE_PAYLOAD`].
    #[error("the frame announces a payload of {len} bytes, more than the limit of {max} bytes")]
    Oversized {
        /// The announced length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// The checksum did not match the contents.
    #[error("the frame checksum {found:#010x} does not match the computed {computed:#010x}")]
    BadChecksum {
        /// The checksum carried by the frame.
        found: u32,
        /// The checksum of the received bytes.
        computed: u32,
    },
    /// The input ended before the frame did.
    #[error("the frame is truncated: {needed} bytes are needed but only {available} are present")]
    Truncated {
        /// Bytes needed for a whole frame (or at least a header).
        needed: usize,
        /// Bytes present.
        available: usize,
    },
    /// The peer closed the connection cleanly between frames.
    #[error("the connection was closed by the peer")]
    Closed,
    /// Reading or writing the transport failed.
    #[error("the transport failed")]
    Io(#[from] std::io::Error),
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    /// Protocol version ([`VERSION`] when we send).
    pub version: u16,
    /// Operation; 0x0000-0x00FF are reserved for the fabric itself.
    pub opcode: u16,
    /// Operation flags; [`FLAG_RESPONSE`] marks responses.
    pub flags: u16,
    /// 0 for requests and successful responses, else an [`crate::ErrorCode`].
    pub status: u16,
    /// Matches a response to its request.
    pub request_id: u64,
    /// The vNode the request is about (0: cluster-level).
    pub vnode: u64,
    /// Length of the payload that follows.
    pub payload_len: u32,
    /// CRC-32C of header (crc zero) and payload; filled in by [`Header::encode`].
    pub crc: u32,
}

impl Header {
    /// A request-style header of our version for `payload_len` bytes of payload.
    pub fn new(opcode: u16, request_id: u64, vnode: u64, payload_len: usize) -> Header {
        Header {
            version: VERSION,
            opcode,
            flags: 0,
            status: 0,
            request_id,
            vnode,
            payload_len: payload_len as u32,
            crc: 0,
        }
    }

    fn write_fields(&self, crc: u32) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..6].copy_from_slice(&self.version.to_le_bytes());
        b[6..8].copy_from_slice(&self.opcode.to_le_bytes());
        b[8..10].copy_from_slice(&self.flags.to_le_bytes());
        b[10..12].copy_from_slice(&self.status.to_le_bytes());
        b[12..20].copy_from_slice(&self.request_id.to_le_bytes());
        b[20..28].copy_from_slice(&self.vnode.to_le_bytes());
        b[28..32].copy_from_slice(&self.payload_len.to_le_bytes());
        b[32..36].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Encodes the header for `payload`, setting `payload_len` from it and computing the
    /// checksum. The caller sends the returned bytes followed by `payload`.
    pub fn encode(&self, payload: &[u8]) -> [u8; HEADER_LEN] {
        let mut h = *self;
        h.payload_len = payload.len() as u32;
        let zeroed = h.write_fields(0);
        let crc = crc32c::crc32c_append(crc32c::crc32c(&zeroed), payload);
        h.write_fields(crc)
    }

    /// Encodes the header as it is (its `payload_len` unchanged) with the checksum field 0:
    /// how frames protected by a tag go on the wire (see [`crate::seal`]).
    pub fn encode_without_checksum(&self) -> [u8; HEADER_LEN] {
        self.write_fields(0)
    }

    /// Decodes and validates a header: magic, version and length (not the checksum, which
    /// needs the payload; see [`Header::verify`]).
    pub fn decode(bytes: &[u8]) -> Result<Header, FrameError> {
        let b: &[u8; HEADER_LEN] = bytes
            .get(..HEADER_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(FrameError::Truncated {
                needed: HEADER_LEN,
                available: bytes.len(),
            })?;
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(a)
        };
        let magic = u32_at(0);
        if magic != MAGIC {
            return Err(FrameError::BadMagic { found: magic });
        }
        let header = Header {
            version: u16_at(4),
            opcode: u16_at(6),
            flags: u16_at(8),
            status: u16_at(10),
            request_id: u64_at(12),
            vnode: u64_at(20),
            payload_len: u32_at(28),
            crc: u32_at(CRC_OFFSET),
        };
        if header.version != VERSION {
            return Err(FrameError::VersionMismatch {
                ours: VERSION,
                theirs: header.version,
            });
        }
        if header.payload_len as usize > MAX_WIRE_PAYLOAD {
            return Err(FrameError::Oversized {
                len: u64::from(header.payload_len),
                max: MAX_WIRE_PAYLOAD,
            });
        }
        Ok(header)
    }

    /// Checks the header's checksum against its fields and `payload`.
    pub fn verify(&self, payload: &[u8]) -> Result<(), FrameError> {
        let zeroed = self.write_fields(0);
        let computed = crc32c::crc32c_append(crc32c::crc32c(&zeroed), payload);
        if computed == self.crc {
            Ok(())
        } else {
            Err(FrameError::BadChecksum {
                found: self.crc,
                computed,
            })
        }
    }

    /// Whether this frame answers a request.
    pub fn is_response(&self) -> bool {
        self.flags & FLAG_RESPONSE != 0
    }
}

/// A whole frame: header and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The header; `payload_len` and `crc` are recomputed on encode.
    pub header: Header,
    /// The payload.
    pub payload: Vec<u8>,
}

impl Frame {
    /// Encodes the frame into one buffer.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.payload.len());
        out.extend_from_slice(&self.header.encode(&self.payload));
        out.extend_from_slice(&self.payload);
        out
    }

    /// Decodes one frame from the start of `bytes`, returning it and the bytes consumed.
    pub fn decode(bytes: &[u8]) -> Result<(Frame, usize), FrameError> {
        let header = Header::decode(bytes)?;
        let total = HEADER_LEN + header.payload_len as usize;
        let payload = bytes.get(HEADER_LEN..total).ok_or(FrameError::Truncated {
            needed: total,
            available: bytes.len(),
        })?;
        header.verify(payload)?;
        Ok((
            Frame {
                header,
                payload: payload.to_vec(),
            },
            total,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_frame() -> impl Strategy<Value = Frame> {
        (
            any::<u16>(),
            any::<u16>(),
            any::<u16>(),
            any::<u64>(),
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..5000),
        )
            .prop_map(|(opcode, flags, status, request_id, vnode, payload)| {
                let mut header = Header::new(opcode, request_id, vnode, payload.len());
                header.flags = flags;
                header.status = status;
                let crc_bytes = header.encode(&payload);
                header.crc = u32::from_le_bytes([
                    crc_bytes[32],
                    crc_bytes[33],
                    crc_bytes[34],
                    crc_bytes[35],
                ]);
                Frame { header, payload }
            })
    }

    #[test]
    fn header_is_36_bytes_and_magic_is_lego() {
        let bytes = Header::new(1, 2, 3, 0).encode(&[]);
        assert_eq!(bytes.len(), HEADER_LEN);
        assert_eq!(&bytes[..4], b"LEGO");
    }

    #[test]
    fn distinct_errors() {
        let f = Frame {
            header: Header::new(0x101, 7, 9, 4),
            payload: vec![1, 2, 3, 4],
        };
        let good = f.encode();
        let mut bad_magic = good.clone();
        bad_magic[0] ^= 0xff;
        assert!(matches!(
            Frame::decode(&bad_magic),
            Err(FrameError::BadMagic { .. })
        ));
        let mut bad_version = good.clone();
        bad_version[4] = 9;
        assert!(matches!(
            Frame::decode(&bad_version),
            Err(FrameError::VersionMismatch {
                ours: VERSION,
                theirs: 9
            })
        ));
        let mut oversized = good.clone();
        oversized[28..32].copy_from_slice(&(MAX_WIRE_PAYLOAD as u32 + 1).to_le_bytes());
        assert!(matches!(
            Frame::decode(&oversized),
            Err(FrameError::Oversized { .. })
        ));
        let mut bad_crc = good.clone();
        bad_crc[HEADER_LEN] ^= 1;
        assert!(matches!(
            Frame::decode(&bad_crc),
            Err(FrameError::BadChecksum { .. })
        ));
        assert!(matches!(
            Frame::decode(&good[..good.len() - 1]),
            Err(FrameError::Truncated { .. })
        ));
        assert!(matches!(
            Frame::decode(&good[..10]),
            Err(FrameError::Truncated { .. })
        ));
    }

    proptest! {
        #[test]
        fn round_trip(frame in arb_frame()) {
            let bytes = frame.encode();
            let (decoded, used) = Frame::decode(&bytes).expect("decodes");
            prop_assert_eq!(used, bytes.len());
            prop_assert_eq!(decoded, frame);
        }

        #[test]
        fn truncation_is_reported(frame in arb_frame(), cut in any::<prop::sample::Index>()) {
            let bytes = frame.encode();
            let len = cut.index(bytes.len());
            let is_truncated = matches!(Frame::decode(&bytes[..len]), Err(FrameError::Truncated { .. }));
            prop_assert!(is_truncated);
        }

        #[test]
        fn corruption_is_detected(frame in arb_frame(), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut bytes = frame.encode();
            let i = pos.index(bytes.len());
            bytes[i] ^= 1 << bit;
            // A single flipped bit is always caught, by magic, version, length or CRC.
            match Frame::decode(&bytes) {
                Ok(_) => prop_assert!(false, "corruption at byte {} went unnoticed", i),
                Err(FrameError::BadMagic { .. }) => prop_assert!(i < 4),
                Err(FrameError::VersionMismatch { .. }) => prop_assert!((4..6).contains(&i)),
                Err(FrameError::Oversized { .. }) | Err(FrameError::Truncated { .. }) => {
                    prop_assert!((28..32).contains(&i))
                }
                Err(FrameError::BadChecksum { .. }) => prop_assert!(i >= 6),
                Err(e) => prop_assert!(false, "unexpected error {}", e),
            }
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Frame::decode(&bytes);
            let _ = Header::decode(&bytes);
        }
    }
}
