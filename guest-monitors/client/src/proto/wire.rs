//! Little-endian field reader and writer for the hot-path codecs.

use super::ProtoError;

/// Reads fields from a body, failing cleanly on short input.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    /// Takes the next `n` bytes.
    pub fn bytes(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], ProtoError> {
        if self.buf.len() < n {
            return Err(ProtoError::Truncated {
                field,
                needed: n - self.buf.len(),
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], ProtoError> {
        let b = self.bytes(N, field)?;
        let mut a = [0u8; N];
        a.copy_from_slice(b);
        Ok(a)
    }

    /// Reads a u16.
    pub fn u16(&mut self, field: &'static str) -> Result<u16, ProtoError> {
        self.array(field).map(u16::from_le_bytes)
    }

    /// Reads a u32.
    pub fn u32(&mut self, field: &'static str) -> Result<u32, ProtoError> {
        self.array(field).map(u32::from_le_bytes)
    }

    /// Reads a u64.
    pub fn u64(&mut self, field: &'static str) -> Result<u64, ProtoError> {
        self.array(field).map(u64::from_le_bytes)
    }

    /// Reads a u16-length-prefixed UTF-8 string of at most `max` bytes.
    pub fn string(&mut self, field: &'static str, max: usize) -> Result<&'a str, ProtoError> {
        let n = self.u16(field)? as usize;
        if n > max {
            return Err(ProtoError::TooLarge {
                what: field,
                got: n as u64,
                max: max as u64,
            });
        }
        std::str::from_utf8(self.bytes(n, field)?).map_err(|_| ProtoError::NotUtf8(field))
    }

    /// The unread rest.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    /// Fails if bytes remain.
    pub fn finish(&self) -> Result<(), ProtoError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(ProtoError::Trailing(self.buf.len()))
        }
    }
}

/// Appends fields to a body.
#[derive(Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// A writer with room for `n` bytes.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            buf: Vec::with_capacity(n),
        }
    }

    /// Appends a u16.
    pub fn u16(mut self, v: u16) -> Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Appends a u32.
    pub fn u32(mut self, v: u32) -> Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Appends a u64.
    pub fn u64(mut self, v: u64) -> Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Appends a u16-length-prefixed string (truncated to 65535 bytes).
    pub fn string(self, s: &str) -> Self {
        let b = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
        self.u16(b.len() as u16).bytes(b)
    }

    /// Appends raw bytes.
    pub fn bytes(mut self, b: &[u8]) -> Self {
        self.buf.extend_from_slice(b);
        self
    }

    /// The body.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let b = Writer::default()
            .u16(7)
            .u32(8)
            .u64(9)
            .string("vol")
            .bytes(b"xy")
            .finish();
        let mut r = Reader::new(&b);
        assert_eq!(r.u16("a").unwrap(), 7);
        assert_eq!(r.u32("b").unwrap(), 8);
        assert_eq!(r.u64("c").unwrap(), 9);
        assert_eq!(r.string("d", 10).unwrap(), "vol");
        assert_eq!(r.rest(), b"xy");
        r.finish().expect("empty");
        let mut short = Reader::new(&b[..3]);
        short.u16("a").expect("u16");
        assert!(matches!(short.u32("b"), Err(ProtoError::Truncated { .. })));
        let mut long = Reader::new(&b[6..]);
        long.u64("c").expect("u64");
        assert!(matches!(
            long.string("d", 2),
            Err(ProtoError::TooLarge { .. })
        ));
    }
}
