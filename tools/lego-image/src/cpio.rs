//! A small builder for `newc` cpio archives, the format the Linux kernel unpacks as an
//! initramfs.
//!
//! Entries are kept in insertion order; parent directories are added automatically. Every
//! entry gets uid/gid 0 and mtime 0, so the same inputs always give the same bytes.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

/// File type bits of `st_mode` used in the archive.
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// The fixed magic of a `newc` header.
const NEWC_MAGIC: &str = "070701";
/// The name of the closing entry.
const TRAILER: &str = "TRAILER!!!";

/// Errors from building or writing an archive.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    /// The archive path is empty, absolute after normalisation, or climbs with `..`.
    #[error("the archive path {0:?} is not a valid relative path")]
    BadPath(String),
    /// Two entries would have the same path.
    #[error("the archive already contains an entry named {0:?}")]
    Duplicate(String),
    /// A host file added with [`Archive::add_file_from`] could not be read.
    #[error("could not read the host file {path}")]
    ReadHost {
        /// The host path.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// An entry is too large for the 32-bit size field of the format.
    #[error("the entry {0:?} is larger than 4 GiB, which newc cannot hold")]
    TooLarge(String),
    /// Writing the archive failed.
    #[error("could not write the archive to {path}")]
    Write {
        /// The output path (or `<stream>`).
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

/// Where the contents of a regular file come from.
#[derive(Debug, Clone)]
enum Data {
    Bytes(Vec<u8>),
    Host(PathBuf),
}

/// What an entry is.
#[derive(Debug, Clone)]
enum Kind {
    Dir,
    File(Data),
    Symlink(String),
    CharDev { major: u32, minor: u32 },
}

/// One archive member.
#[derive(Debug, Clone)]
struct Entry {
    path: String,
    mode: u32,
    kind: Kind,
}

/// An in-memory description of a `newc` archive; file contents from host paths are read
/// only when the archive is written.
#[derive(Debug, Default, Clone)]
pub struct Archive {
    entries: Vec<Entry>,
    names: BTreeSet<String>,
}

/// Normalises an archive path: strips leading `/` and `./`, rejects `..` and empty names.
fn normalize(path: &str) -> Result<String, CpioError> {
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(CpioError::BadPath(path.to_string())),
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err(CpioError::BadPath(path.to_string()));
    }
    Ok(parts.join("/"))
}

impl Archive {
    /// Creates an empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns true if the archive has an entry at `path` (leading `/` optional).
    pub fn contains(&self, path: &str) -> bool {
        normalize(path).is_ok_and(|p| self.names.contains(&p))
    }

    /// Returns the number of entries (without the trailer).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Returns true if the archive has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds the missing parent directories of `path` with mode 0755.
    fn add_parents(&mut self, path: &str) {
        let mut prefix = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            if self.names.insert(prefix.clone()) {
                self.entries.push(Entry {
                    path: prefix.clone(),
                    mode: S_IFDIR | 0o755,
                    kind: Kind::Dir,
                });
            }
        }
    }

    /// Adds an entry after checking its name, creating parents as needed.
    fn push(&mut self, path: &str, mode: u32, kind: Kind) -> Result<&mut Self, CpioError> {
        let path = normalize(path)?;
        if self.names.contains(&path) {
            return Err(CpioError::Duplicate(path));
        }
        self.add_parents(&path);
        self.names.insert(path.clone());
        self.entries.push(Entry { path, mode, kind });
        Ok(self)
    }

    /// Adds a directory with the given permission bits (e.g. `0o755`). Adding a directory
    /// that already exists (for example as an implicit parent) is not an error.
    pub fn add_dir(&mut self, path: &str, mode: u32) -> Result<&mut Self, CpioError> {
        let norm = normalize(path)?;
        if let Some(entry) = self.entries.iter_mut().find(|e| e.path == norm) {
            if matches!(entry.kind, Kind::Dir) {
                entry.mode = S_IFDIR | (mode & 0o7777);
                return Ok(self);
            }
            return Err(CpioError::Duplicate(norm));
        }
        self.push(&norm, S_IFDIR | (mode & 0o7777), Kind::Dir)
    }

    /// Adds a regular file with the given contents and permission bits.
    pub fn add_file(
        &mut self,
        path: &str,
        data: impl Into<Vec<u8>>,
        mode: u32,
    ) -> Result<&mut Self, CpioError> {
        let data = data.into();
        if u32::try_from(data.len()).is_err() {
            return Err(CpioError::TooLarge(path.to_string()));
        }
        self.push(
            path,
            S_IFREG | (mode & 0o7777),
            Kind::File(Data::Bytes(data)),
        )
    }

    /// Adds a regular file whose contents are read from `host` when the archive is written.
    pub fn add_file_from(
        &mut self,
        path: &str,
        host: &Path,
        mode: u32,
    ) -> Result<&mut Self, CpioError> {
        let meta = std::fs::metadata(host).map_err(|source| CpioError::ReadHost {
            path: host.to_path_buf(),
            source,
        })?;
        if meta.len() > u64::from(u32::MAX) {
            return Err(CpioError::TooLarge(path.to_string()));
        }
        self.push(
            path,
            S_IFREG | (mode & 0o7777),
            Kind::File(Data::Host(host.to_path_buf())),
        )
    }

    /// Adds a symbolic link at `path` pointing to `target`.
    pub fn add_symlink(&mut self, path: &str, target: &str) -> Result<&mut Self, CpioError> {
        self.push(path, S_IFLNK | 0o777, Kind::Symlink(target.to_string()))
    }

    /// Adds a character device node (e.g. `/dev/console`, 5:1), which the kernel needs
    /// before devtmpfs is mounted to give `/init` a console.
    pub fn add_char_device(
        &mut self,
        path: &str,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> Result<&mut Self, CpioError> {
        self.push(
            path,
            S_IFCHR | (mode & 0o7777),
            Kind::CharDev { major, minor },
        )
    }

    /// Writes the archive in `newc` format to a file at `path` (created or truncated).
    pub fn write_to_path(&self, path: &Path) -> Result<u64, CpioError> {
        let wrap = |source| CpioError::Write {
            path: path.to_path_buf(),
            source,
        };
        let file = File::create(path).map_err(wrap)?;
        let mut out = BufWriter::new(file);
        let n = self.write(&mut out)?;
        let file = out.into_inner().map_err(|e| wrap(e.into_error()))?;
        file.sync_all().map_err(wrap)?;
        Ok(n)
    }

    /// Writes the archive in `newc` format to `out`, returning the number of bytes written.
    pub fn write(&self, out: &mut impl Write) -> Result<u64, CpioError> {
        let mut w = CountingWriter {
            inner: out,
            count: 0,
        };
        for (index, entry) in self.entries.iter().enumerate() {
            write_entry(&mut w, index as u32 + 1, entry)?;
        }
        let trailer = Entry {
            path: TRAILER.to_string(),
            mode: 0,
            kind: Kind::File(Data::Bytes(Vec::new())),
        };
        write_entry(&mut w, 0, &trailer)?;
        Ok(w.count)
    }
}

/// A writer that counts bytes, so padding can be computed.
struct CountingWriter<'a, W: Write> {
    inner: &'a mut W,
    count: u64,
}

impl<W: Write> CountingWriter<'_, W> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), CpioError> {
        self.inner
            .write_all(bytes)
            .map_err(|source| CpioError::Write {
                path: PathBuf::from("<stream>"),
                source,
            })?;
        self.count += bytes.len() as u64;
        Ok(())
    }

    fn pad4(&mut self) -> Result<(), CpioError> {
        let pad = (4 - (self.count % 4) as usize) % 4;
        self.put(&[0u8; 3][..pad])
    }
}

/// Writes one header, name and body.
fn write_entry<W: Write>(
    w: &mut CountingWriter<'_, W>,
    ino: u32,
    entry: &Entry,
) -> Result<(), CpioError> {
    let body: Vec<u8> = match &entry.kind {
        Kind::Dir | Kind::CharDev { .. } => Vec::new(),
        Kind::Symlink(target) => target.as_bytes().to_vec(),
        Kind::File(Data::Bytes(b)) => b.clone(),
        Kind::File(Data::Host(p)) => std::fs::read(p).map_err(|source| CpioError::ReadHost {
            path: p.clone(),
            source,
        })?,
    };
    let size = u32::try_from(body.len()).map_err(|_| CpioError::TooLarge(entry.path.clone()))?;
    let (rmajor, rminor) = match entry.kind {
        Kind::CharDev { major, minor } => (major, minor),
        _ => (0, 0),
    };
    let nlink = if matches!(entry.kind, Kind::Dir) {
        2
    } else {
        1
    };
    let namesize = entry.path.len() as u32 + 1;
    let header = format!(
        "{NEWC_MAGIC}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
        ino, entry.mode, 0, 0, nlink, 0, size, 0, 0, rmajor, rminor, namesize, 0
    );
    w.put(header.as_bytes())?;
    w.put(entry.path.as_bytes())?;
    w.put(&[0])?;
    w.pad4()?;
    w.put(&body)?;
    w.pad4()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn list_with_cpio(path: &Path) -> Vec<String> {
        let out = Command::new("cpio")
            .args(["-it", "--quiet", "-F"])
            .arg(path)
            .output()
            .expect("cpio must be installed");
        assert!(out.status.success(), "cpio -it failed: {out:?}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn cpio_lists_and_extracts_what_was_added() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("host.bin");
        std::fs::write(&host, b"from host file").unwrap();
        let mut a = Archive::new();
        a.add_dir("/bin", 0o755).unwrap();
        a.add_file("/init", b"#!/bin/sh\necho hi\n".to_vec(), 0o755)
            .unwrap();
        a.add_file_from("/usr/share/x/host.bin", &host, 0o644)
            .unwrap();
        a.add_symlink("/bin/sh", "busybox").unwrap();
        a.add_char_device("/dev/console", 0o600, 5, 1).unwrap();
        a.add_file("odd", vec![1u8; 5], 0o600).unwrap();
        let out = dir.path().join("a.cpio");
        let n = a.write_to_path(&out).unwrap();
        assert_eq!(n, std::fs::metadata(&out).unwrap().len());
        assert_eq!(n % 4, 0);

        let names = list_with_cpio(&out);
        for want in [
            "bin",
            "init",
            "usr",
            "usr/share",
            "usr/share/x",
            "usr/share/x/host.bin",
            "bin/sh",
            "dev",
            "dev/console",
            "odd",
        ] {
            assert!(
                names.iter().any(|n| n == want),
                "{want} missing from {names:?}"
            );
        }
        assert_eq!(names.len(), 10);

        let outdir = dir.path().join("x");
        std::fs::create_dir(&outdir).unwrap();
        let status = Command::new("cpio")
            .args(["-id", "--quiet", "--no-absolute-filenames", "-F"])
            .arg(&out)
            .current_dir(&outdir)
            .status()
            .unwrap();
        assert!(status.success());
        assert_eq!(
            std::fs::read(outdir.join("usr/share/x/host.bin")).unwrap(),
            b"from host file"
        );
        assert_eq!(
            std::fs::read_link(outdir.join("bin/sh")).unwrap(),
            Path::new("busybox")
        );
        assert_eq!(std::fs::read(outdir.join("odd")).unwrap(), vec![1u8; 5]);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(outdir.join("init"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
    }

    #[test]
    fn verbose_listing_shows_device_and_modes() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Archive::new();
        a.add_char_device("dev/console", 0o600, 5, 1).unwrap();
        let out = dir.path().join("a.cpio");
        a.write_to_path(&out).unwrap();
        let o = Command::new("cpio")
            .args(["-itv", "--quiet", "-F"])
            .arg(&out)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout);
        let line = text.lines().find(|l| l.ends_with("dev/console")).unwrap();
        assert!(line.starts_with("crw-------"), "{line}");
        assert!(line.contains("5,"), "{line}");
    }

    #[test]
    fn rejects_duplicates_and_bad_paths() {
        let mut a = Archive::new();
        a.add_file("a/b", b"x".to_vec(), 0o644).unwrap();
        assert!(matches!(
            a.add_file("/a/b", b"y".to_vec(), 0o644),
            Err(CpioError::Duplicate(_))
        ));
        assert!(matches!(
            a.add_symlink("a", "x"),
            Err(CpioError::Duplicate(_))
        ));
        assert!(a.add_dir("a", 0o700).is_ok());
        assert!(matches!(
            a.add_file("../x", b"".to_vec(), 0o644),
            Err(CpioError::BadPath(_))
        ));
        assert!(matches!(a.add_dir("/", 0o755), Err(CpioError::BadPath(_))));
        assert!(a.contains("/a") && a.contains("a/b") && !a.contains("c"));
        assert!(matches!(
            a.add_file_from("x", Path::new("/nonexistent/file"), 0o644),
            Err(CpioError::ReadHost { .. })
        ));
    }

    #[test]
    fn output_is_deterministic() {
        let build = || {
            let mut a = Archive::new();
            a.add_file("x/y", b"data".to_vec(), 0o644).unwrap();
            a.add_symlink("z", "x/y").unwrap();
            let mut v = Vec::new();
            a.write(&mut v).unwrap();
            v
        };
        let one = build();
        assert_eq!(one, build());
        assert!(one.starts_with(b"070701"));
        assert!(one.windows(10).any(|w| w == b"TRAILER!!!"));
    }
}
