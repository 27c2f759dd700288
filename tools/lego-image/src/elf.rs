//! Minimal read-only ELF64 little-endian parsing: section lookup by name (for a kernel
//! module's `.modinfo`) and the "is this executable statically linked" check.

/// Errors from parsing an ELF file.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    /// The file does not start with the ELF magic.
    #[error("the file is not an ELF file")]
    NotElf,
    /// Only 64-bit little-endian ELF files are supported.
    #[error("the ELF file is not 64-bit little-endian, which is the only kind supported")]
    Unsupported,
    /// A header or table points outside the file.
    #[error("the ELF file is truncated or malformed ({0})")]
    Malformed(&'static str),
}

/// The program header type of the interpreter (dynamic loader) entry.
const PT_INTERP: u32 = 3;
/// The program header type of the dynamic section.
const PT_DYNAMIC: u32 = 2;
/// The `.dynamic` tag naming a needed shared library.
const DT_NEEDED: u64 = 1;

fn u16_at(b: &[u8], off: usize) -> Result<u16, ElfError> {
    b.get(off..off + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or(ElfError::Malformed("short read"))
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, ElfError> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or(ElfError::Malformed("short read"))
}

fn u64_at(b: &[u8], off: usize) -> Result<u64, ElfError> {
    b.get(off..off + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_le_bytes)
        .ok_or(ElfError::Malformed("short read"))
}

fn usize_at(b: &[u8], off: usize) -> Result<usize, ElfError> {
    usize::try_from(u64_at(b, off)?).map_err(|_| ElfError::Malformed("offset too large"))
}

/// Checks the identification bytes.
fn check_ident(b: &[u8]) -> Result<(), ElfError> {
    if b.len() < 64 || &b[..4] != b"\x7fELF" {
        return Err(ElfError::NotElf);
    }
    if b[4] != 2 || b[5] != 1 {
        return Err(ElfError::Unsupported);
    }
    Ok(())
}

/// Returns the contents of the section called `name`, or `None` if there is none.
pub fn section<'a>(b: &'a [u8], name: &str) -> Result<Option<&'a [u8]>, ElfError> {
    check_ident(b)?;
    let shoff = usize_at(b, 0x28)?;
    let shentsize = usize::from(u16_at(b, 0x3a)?);
    let shnum = usize::from(u16_at(b, 0x3c)?);
    let shstrndx = usize::from(u16_at(b, 0x3e)?);
    if shoff == 0 || shnum == 0 {
        return Ok(None);
    }
    if shentsize < 64 || shstrndx >= shnum {
        return Err(ElfError::Malformed("section header table"));
    }
    let header = |i: usize| -> Result<(u32, usize, usize), ElfError> {
        let base = shoff
            .checked_add(i * shentsize)
            .ok_or(ElfError::Malformed("section offset"))?;
        Ok((
            u32_at(b, base)?,
            usize_at(b, base + 0x18)?,
            usize_at(b, base + 0x20)?,
        ))
    };
    let slice = |off: usize, len: usize| {
        off.checked_add(len)
            .and_then(|end| b.get(off..end))
            .ok_or(ElfError::Malformed("section data"))
    };
    let (_, stroff, strsize) = header(shstrndx)?;
    let strtab = slice(stroff, strsize)?;
    for i in 0..shnum {
        let (name_off, off, size) = header(i)?;
        let Some(rest) = strtab.get(name_off as usize..) else {
            continue;
        };
        let end = rest.iter().position(|&c| c == 0).unwrap_or(rest.len());
        if &rest[..end] == name.as_bytes() {
            return slice(off, size).map(Some);
        }
    }
    Ok(None)
}

/// Returns true if the executable needs no dynamic loader and no shared libraries
/// (static or static-pie).
pub fn is_static(b: &[u8]) -> Result<bool, ElfError> {
    check_ident(b)?;
    let phoff = usize_at(b, 0x20)?;
    let phentsize = usize::from(u16_at(b, 0x36)?);
    let phnum = usize::from(u16_at(b, 0x38)?);
    if phentsize < 56 {
        return Err(ElfError::Malformed("program header table"));
    }
    for i in 0..phnum {
        let base = phoff
            .checked_add(i * phentsize)
            .ok_or(ElfError::Malformed("program header offset"))?;
        match u32_at(b, base)? {
            PT_INTERP => return Ok(false),
            PT_DYNAMIC => {
                let off = usize_at(b, base + 0x08)?;
                let size = usize_at(b, base + 0x20)?;
                let mut p = off;
                while p + 16 <= off.saturating_add(size) {
                    let tag = u64_at(b, p)?;
                    if tag == 0 {
                        break;
                    }
                    if tag == DT_NEEDED {
                        return Ok(false);
                    }
                    p += 16;
                }
            }
            _ => {}
        }
    }
    Ok(true)
}

/// Parses a `.modinfo` section (NUL-separated `key=value` strings) into pairs.
pub fn modinfo_pairs(section: &[u8]) -> Vec<(String, String)> {
    section
        .split(|&c| c == 0)
        .filter_map(|entry| {
            let s = String::from_utf8_lossy(entry);
            let (k, v) = s.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_non_elf() {
        assert!(matches!(section(b"hello", ".x"), Err(ElfError::NotElf)));
        assert!(matches!(is_static(&[0u8; 100]), Err(ElfError::NotElf)));
    }

    #[test]
    fn host_shell_is_dynamic_and_has_text() {
        let b = std::fs::read("/bin/sh").unwrap();
        assert!(!is_static(&b).unwrap());
        assert!(section(&b, ".text").unwrap().is_some());
        assert!(section(&b, ".no-such-section").unwrap().is_none());
    }

    #[test]
    fn parses_modinfo_pairs() {
        let p = modinfo_pairs(b"license=GPL\0depends=virtio,virtio_ring\0\0name=virtio_blk\0");
        assert_eq!(p.len(), 3);
        assert_eq!(p[1], ("depends".into(), "virtio,virtio_ring".into()));
    }
}
