//! The storage monitor's volume store: one sparse file per volume, plus a small metadata file
//! naming its owner vNode, in a folder per vNode (`vnode-N/NAME.vol`, `vnode-N/NAME.meta`), so
//! volume names are per vNode: two vNodes may both have a volume `root` on one monitor.
//! Volumes kept by earlier versions directly in the data folder move into their owner's folder
//! when the store opens.
//!
//! Requests are stateless, by (volume name, offset), as in LegoOS's storage monitor. Writes go to
//! the page cache; `flush` is `fdatasync`, so a flushed write survives a crash of the monitor.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};

pub use lego_monitor_client::proto::storage::{VolumeInfo, MAX_IO, MAX_NAME_LEN};

use crate::fsutil::{self, FsError};

const DATA_EXT: &str = "vol";
const META_EXT: &str = "meta";

/// Errors from volume operations.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The name could escape the data folder or has odd characters.
    #[error(
        "'{0}' is not a valid volume name; use 1-64 letters, digits, '-', '_' or '.', not starting \
         with '.'"
    )]
    BadName(String),
    /// No such volume.
    #[error("the volume '{0}' does not exist")]
    NotFound(String),
    /// The volume exists already.
    #[error("the volume '{0}' exists already")]
    Exists(String),
    /// The volume's metadata names another owner than the vNode whose folder holds it.
    #[error("the volume '{name}' in the folder of vNode {vnode} names another owner")]
    NotOwner {
        /// The volume.
        name: String,
        /// The vNode that asked.
        vnode: u64,
    },
    /// The range lies outside the volume.
    #[error("the range {offset}+{len} lies outside the volume '{name}' of {size} bytes")]
    OutOfRange {
        /// The volume.
        name: String,
        /// Start of the range.
        offset: u64,
        /// Length of the range.
        len: u64,
        /// Volume size.
        size: u64,
    },
    /// A read or write is larger than [`MAX_IO`].
    #[error("an I/O of {0} bytes is larger than the limit of {MAX_IO} bytes")]
    TooLarge(usize),
    /// The volume's metadata file is unreadable.
    #[error("the metadata of volume '{name}' is corrupt")]
    BadMeta {
        /// The volume.
        name: String,
        /// What is wrong.
        source: serde_json::Error,
    },
    /// An I/O call failed.
    #[error("could not {step} volume '{name}'")]
    Io {
        /// What was being done.
        step: &'static str,
        /// The volume.
        name: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A durable metadata update failed.
    #[error(transparent)]
    Fs(#[from] FsError),
}

/// What is persisted beside each volume.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VolumeMeta {
    /// The owner vNode.
    pub owner: u64,
    /// Size in bytes.
    pub size: u64,
}

struct Volume {
    file: File,
    meta: RwLock<VolumeMeta>,
}

/// A volume's key: its owner vNode and its name.
type VolumeKey = (u64, String);

/// Prefix of each vNode's folder.
const VNODE_DIR_PREFIX: &str = "vnode-";

/// All volumes of one storage monitor.
pub struct VolumeStore {
    dir: PathBuf,
    open: Mutex<HashMap<VolumeKey, Arc<Volume>>>,
    /// Serializes create/resize/delete (the rare metadata operations).
    admin: Mutex<()>,
}

/// Checks that a volume name cannot escape the data folder.
pub fn validate_name(name: &str) -> Result<(), VolumeError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(VolumeError::BadName(name.chars().take(80).collect()))
    }
}

impl VolumeStore {
    /// Opens the store in `dir`, creating the folder if needed and checking it is writable;
    /// volumes an earlier version kept directly in `dir` move into their owner's folder.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, VolumeError> {
        let dir = dir.into();
        fsutil::check_writable_dir(&dir)?;
        let s = Self {
            dir,
            open: Mutex::new(HashMap::new()),
            admin: Mutex::new(()),
        };
        s.adopt_flat_volumes()?;
        Ok(s)
    }

    /// The data folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn vnode_dir(&self, vnode: u64) -> PathBuf {
        self.dir.join(format!("{VNODE_DIR_PREFIX}{vnode}"))
    }

    fn data_path(&self, vnode: u64, name: &str) -> PathBuf {
        self.vnode_dir(vnode).join(format!("{name}.{DATA_EXT}"))
    }

    fn meta_path(&self, vnode: u64, name: &str) -> PathBuf {
        self.vnode_dir(vnode).join(format!("{name}.{META_EXT}"))
    }

    /// Moves volumes of the flat layout (`NAME.meta` and `NAME.vol` in the data folder) into
    /// their owner's folder: data first, metadata last, so a crash in between leaves the
    /// volume where the next open finds it (its metadata still in the old place).
    fn adopt_flat_volumes(&self) -> Result<(), VolumeError> {
        let rd = std::fs::read_dir(&self.dir).map_err(Self::io_err("list the folder of", "*"))?;
        let mut moved = 0;
        for entry in rd.flatten() {
            let file_name = entry.file_name();
            let Some(name) = file_name.to_str().and_then(|n| n.strip_suffix(".meta")) else {
                continue;
            };
            if validate_name(name).is_err() {
                continue;
            }
            let flat_meta = self.dir.join(format!("{name}.{META_EXT}"));
            let flat_data = self.dir.join(format!("{name}.{DATA_EXT}"));
            let bytes =
                std::fs::read(&flat_meta).map_err(Self::io_err("read the metadata of", name))?;
            let meta: VolumeMeta =
                serde_json::from_slice(&bytes).map_err(|source| VolumeError::BadMeta {
                    name: name.to_string(),
                    source,
                })?;
            self.make_vnode_dir(meta.owner)?;
            if self.meta_path(meta.owner, name).exists() {
                tracing::warn!(volume = name, vnode = meta.owner, "a volume of the old layout has the name of one in its owner's folder: left where it is");
                continue;
            }
            if flat_data.exists() {
                std::fs::rename(&flat_data, self.data_path(meta.owner, name))
                    .map_err(Self::io_err("move", name))?;
            }
            fsutil::fsync_dir(&self.vnode_dir(meta.owner))?;
            std::fs::rename(&flat_meta, self.meta_path(meta.owner, name))
                .map_err(Self::io_err("move the metadata of", name))?;
            fsutil::fsync_dir(&self.vnode_dir(meta.owner))?;
            fsutil::fsync_dir(&self.dir)?;
            moved += 1;
        }
        if moved > 0 {
            tracing::info!(moved, dir = %self.dir.display(), "volumes moved into per-vNode folders");
        }
        Ok(())
    }

    /// Creates vNode `vnode`'s folder if it does not exist (durably).
    fn make_vnode_dir(&self, vnode: u64) -> Result<(), VolumeError> {
        let d = self.vnode_dir(vnode);
        match std::fs::create_dir(&d) {
            Ok(()) => Ok(fsutil::fsync_dir(&self.dir)?),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(Self::io_err("create the folder of", "*")(e)),
        }
    }

    fn io_err<'a>(
        step: &'static str,
        name: &'a str,
    ) -> impl FnOnce(std::io::Error) -> VolumeError + 'a {
        move |source| VolumeError::Io {
            step,
            name: name.to_string(),
            source,
        }
    }

    fn read_meta(&self, vnode: u64, name: &str) -> Result<VolumeMeta, VolumeError> {
        let bytes = match std::fs::read(self.meta_path(vnode, name)) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(VolumeError::NotFound(name.to_string()))
            }
            Err(e) => return Err(Self::io_err("read the metadata of", name)(e)),
        };
        serde_json::from_slice(&bytes).map_err(|source| VolumeError::BadMeta {
            name: name.to_string(),
            source,
        })
    }

    fn write_meta(&self, name: &str, meta: &VolumeMeta) -> Result<(), VolumeError> {
        let bytes = serde_json::to_vec(meta).map_err(|source| VolumeError::BadMeta {
            name: name.to_string(),
            source,
        })?;
        fsutil::write_atomic(&self.meta_path(meta.owner, name), &bytes)?;
        Ok(())
    }

    /// Looks up vNode `vnode`'s volume `name` (opening it on first use).
    fn owned(&self, vnode: u64, name: &str) -> Result<Arc<Volume>, VolumeError> {
        validate_name(name)?;
        let key = (vnode, name.to_string());
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = open.get(&key) {
            return Ok(v.clone());
        }
        let meta = self.read_meta(vnode, name)?;
        if meta.owner != vnode {
            return Err(VolumeError::NotOwner {
                name: name.to_string(),
                vnode,
            });
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.data_path(vnode, name))
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => VolumeError::NotFound(name.to_string()),
                _ => Self::io_err("open", name)(e),
            })?;
        let v = Arc::new(Volume {
            file,
            meta: RwLock::new(meta),
        });
        open.insert(key, v.clone());
        Ok(v)
    }

    fn info(name: &str, v: &Volume) -> Result<VolumeInfo, VolumeError> {
        let meta = v.meta.read().unwrap_or_else(|e| e.into_inner()).clone();
        let md = v.file.metadata().map_err(Self::io_err("stat", name))?;
        Ok(VolumeInfo {
            name: name.to_string(),
            owner: meta.owner,
            size: meta.size,
            allocated_bytes: md.blocks() * 512,
        })
    }

    /// Creates a sparse volume of `size` bytes owned by `vnode`.
    pub fn create(&self, vnode: u64, name: &str, size: u64) -> Result<VolumeInfo, VolumeError> {
        validate_name(name)?;
        let _admin = self.admin.lock().unwrap_or_else(|e| e.into_inner());
        if self.meta_path(vnode, name).exists() {
            return Err(VolumeError::Exists(name.to_string()));
        }
        self.make_vnode_dir(vnode)?;
        let path = self.data_path(vnode, name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(Self::io_err("create", name))?;
        file.set_len(size).map_err(Self::io_err("size", name))?;
        file.sync_all().map_err(Self::io_err("fsync", name))?;
        // The metadata file is written last: a volume exists once its metadata does.
        self.write_meta(name, &VolumeMeta { owner: vnode, size })?;
        let v = Arc::new(Volume {
            file,
            meta: RwLock::new(VolumeMeta { owner: vnode, size }),
        });
        let info = Self::info(name, &v)?;
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((vnode, name.to_string()), v);
        tracing::info!(volume = name, vnode, size, "volume created");
        Ok(info)
    }

    /// Describes vNode `vnode`'s volume `name`.
    pub fn stat(&self, vnode: u64, name: &str) -> Result<VolumeInfo, VolumeError> {
        Self::info(name, &*self.owned(vnode, name)?)
    }

    /// Changes a volume's size (growing is sparse; shrinking drops the tail).
    pub fn resize(&self, vnode: u64, name: &str, size: u64) -> Result<VolumeInfo, VolumeError> {
        let _admin = self.admin.lock().unwrap_or_else(|e| e.into_inner());
        let v = self.owned(vnode, name)?;
        let mut meta = v.meta.write().unwrap_or_else(|e| e.into_inner());
        v.file.set_len(size).map_err(Self::io_err("resize", name))?;
        v.file.sync_all().map_err(Self::io_err("fsync", name))?;
        let new = VolumeMeta {
            owner: meta.owner,
            size,
        };
        self.write_meta(name, &new)?;
        *meta = new;
        drop(meta);
        tracing::info!(volume = name, vnode, size, "volume resized");
        Self::info(name, &v)
    }

    /// Deletes a volume and its data.
    pub fn delete(&self, vnode: u64, name: &str) -> Result<(), VolumeError> {
        let _admin = self.admin.lock().unwrap_or_else(|e| e.into_inner());
        self.owned(vnode, name)?;
        // Metadata first: a crash in between leaves an orphan data file, never a volume without data.
        std::fs::remove_file(self.meta_path(vnode, name))
            .map_err(Self::io_err("delete the metadata of", name))?;
        std::fs::remove_file(self.data_path(vnode, name)).map_err(Self::io_err("delete", name))?;
        fsutil::fsync_dir(&self.vnode_dir(vnode))?;
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(vnode, name.to_string()));
        tracing::info!(volume = name, vnode, "volume deleted");
        Ok(())
    }

    /// The vNodes that have a folder here.
    fn vnodes(&self) -> Result<Vec<u64>, VolumeError> {
        let rd = std::fs::read_dir(&self.dir).map_err(Self::io_err("list the folder of", "*"))?;
        Ok(rd
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_prefix(VNODE_DIR_PREFIX)?
                    .parse()
                    .ok()
            })
            .filter(|&v| v != 0)
            .collect())
    }

    /// Lists the volumes of `vnode` (of every vNode for `vnode` 0), by owner then name.
    pub fn list(&self, vnode: u64) -> Result<Vec<VolumeInfo>, VolumeError> {
        let vnodes = if vnode == 0 {
            self.vnodes()?
        } else {
            vec![vnode]
        };
        let mut out = Vec::new();
        for v in vnodes {
            let rd = match std::fs::read_dir(self.vnode_dir(v)) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Self::io_err("list the folder of", "*")(e)),
            };
            for entry in rd.flatten() {
                let file_name = entry.file_name();
                let Some(name) = file_name.to_str().and_then(|n| n.strip_suffix(".meta")) else {
                    continue;
                };
                if validate_name(name).is_err() {
                    continue;
                }
                match self.owned(v, name).and_then(|vol| Self::info(name, &vol)) {
                    Ok(info) => out.push(info),
                    Err(e) => {
                        tracing::warn!(volume = name, vnode = v, error = %lego_report::error_chain(&e), "skipping unreadable volume")
                    }
                }
            }
        }
        out.sort_by(|a, b| (a.owner, &a.name).cmp(&(b.owner, &b.name)));
        Ok(out)
    }

    fn check_range(name: &str, v: &Volume, offset: u64, len: u64) -> Result<(), VolumeError> {
        let size = v.meta.read().unwrap_or_else(|e| e.into_inner()).size;
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(()),
            _ => Err(VolumeError::OutOfRange {
                name: name.to_string(),
                offset,
                len,
                size,
            }),
        }
    }

    /// Reads `len` bytes at `offset`.
    pub fn read(
        &self,
        vnode: u64,
        name: &str,
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>, VolumeError> {
        if len > MAX_IO {
            return Err(VolumeError::TooLarge(len));
        }
        let v = self.owned(vnode, name)?;
        Self::check_range(name, &v, offset, len as u64)?;
        let mut buf = vec![0u8; len];
        v.file
            .read_exact_at(&mut buf, offset)
            .map_err(Self::io_err("read", name))?;
        Ok(buf)
    }

    /// Writes `data` at `offset`; with `fua` the data is on stable storage before this returns.
    pub fn write(
        &self,
        vnode: u64,
        name: &str,
        offset: u64,
        data: &[u8],
        fua: bool,
    ) -> Result<(), VolumeError> {
        if data.len() > MAX_IO {
            return Err(VolumeError::TooLarge(data.len()));
        }
        let v = self.owned(vnode, name)?;
        Self::check_range(name, &v, offset, data.len() as u64)?;
        v.file
            .write_all_at(data, offset)
            .map_err(Self::io_err("write", name))?;
        if fua {
            v.file
                .sync_data()
                .map_err(Self::io_err("fdatasync", name))?;
        }
        Ok(())
    }

    /// Makes all completed writes to the volume durable (`fdatasync`).
    pub fn flush(&self, vnode: u64, name: &str) -> Result<(), VolumeError> {
        let v = self.owned(vnode, name)?;
        v.file.sync_data().map_err(Self::io_err("fdatasync", name))
    }

    /// Deallocates a range (punches a hole); it reads as zeros afterwards.
    pub fn discard(
        &self,
        vnode: u64,
        name: &str,
        offset: u64,
        len: u64,
    ) -> Result<(), VolumeError> {
        let v = self.owned(vnode, name)?;
        Self::check_range(name, &v, offset, len)?;
        fallocate(
            &v.file,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
        .map_err(Self::io_err("punch a hole in", name))
    }

    /// Zeroes a range (zero-range, falling back to a hole punch, then to writing zeros).
    pub fn write_zeroes(
        &self,
        vnode: u64,
        name: &str,
        offset: u64,
        len: u64,
    ) -> Result<(), VolumeError> {
        let v = self.owned(vnode, name)?;
        Self::check_range(name, &v, offset, len)?;
        let keep = libc::FALLOC_FL_KEEP_SIZE;
        if fallocate(&v.file, libc::FALLOC_FL_ZERO_RANGE | keep, offset, len).is_ok()
            || fallocate(&v.file, libc::FALLOC_FL_PUNCH_HOLE | keep, offset, len).is_ok()
        {
            return Ok(());
        }
        let zeros = vec![0u8; 1 << 20];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(zeros.len() as u64) as usize;
            v.file
                .write_all_at(&zeros[..n], offset + done)
                .map_err(Self::io_err("write zeroes to", name))?;
            done += n as u64;
        }
        Ok(())
    }

    /// Sum of the sizes of all volumes (provisioned bytes) and of their allocated bytes.
    pub fn usage(&self) -> Result<(u64, u64), VolumeError> {
        let all = self.list(0)?;
        Ok((
            all.iter().map(|v| v.size).sum(),
            all.iter().map(|v| v.allocated_bytes).sum(),
        ))
    }
}

fn fallocate(file: &File, mode: libc::c_int, offset: u64, len: u64) -> std::io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    let off = i64::try_from(offset).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let l = i64::try_from(len).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: fallocate only reads its scalar arguments; the fd is valid while `file` is borrowed.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), mode, off, l) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Bytes free on the filesystem holding `dir` (for the default capacity).
pub fn filesystem_capacity(dir: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: statvfs is plain old data; zeroed is a valid initial value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out-pointer for the call.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let frsize = st.f_frsize as u64;
    Ok((st.f_blocks as u64 * frsize, st.f_bavail as u64 * frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, VolumeStore) {
        let d = tempfile::tempdir().expect("tempdir");
        let s = VolumeStore::open(d.path().join("vols")).expect("open");
        (d, s)
    }

    #[test]
    fn names_cannot_escape() {
        for bad in [
            "",
            "..",
            "../x",
            "a/b",
            ".hidden",
            "x\0y",
            "/etc/passwd",
            &"a".repeat(65),
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["disk0", "vnode-7_root.img", "A.b-c"] {
            validate_name(good).expect(good);
        }
        let (_d, s) = store();
        assert!(matches!(
            s.create(1, "../evil", 4096),
            Err(VolumeError::BadName(_))
        ));
        assert!(matches!(
            s.read(1, "../../etc/passwd", 0, 1),
            Err(VolumeError::BadName(_))
        ));
    }

    #[test]
    fn create_write_read_flush() {
        let (_d, s) = store();
        let info = s.create(3, "root", 1 << 20).expect("create");
        assert_eq!(info.size, 1 << 20);
        assert!(matches!(
            s.create(3, "root", 1),
            Err(VolumeError::Exists(_))
        ));
        s.write(3, "root", 8192, b"hello", false).expect("write");
        s.flush(3, "root").expect("flush");
        assert_eq!(s.read(3, "root", 8192, 5).expect("read"), b"hello");
        assert_eq!(s.read(3, "root", 0, 4).expect("read hole"), vec![0; 4]);
        assert!(matches!(
            s.read(3, "root", (1 << 20) - 2, 4),
            Err(VolumeError::OutOfRange { .. })
        ));
        assert!(matches!(
            s.write(3, "root", u64::MAX, b"x", false),
            Err(VolumeError::OutOfRange { .. })
        ));
        s.write(3, "root", 0, b"fua", true).expect("fua write");
    }

    #[test]
    fn names_are_per_vnode() {
        let (_d, s) = store();
        s.create(1, "root", 4096).expect("create for vNode 1");
        s.create(2, "root", 8192)
            .expect("the same name for vNode 2");
        s.write(1, "root", 0, b"one", false).expect("write 1");
        s.write(2, "root", 0, b"two", false).expect("write 2");
        assert_eq!(s.read(1, "root", 0, 3).expect("read 1"), b"one");
        assert_eq!(s.read(2, "root", 0, 3).expect("read 2"), b"two");
        let e = s.read(3, "root", 0, 1).expect_err("vNode 3 has no root");
        assert!(matches!(e, VolumeError::NotFound(_)), "{e}");
        assert!(s.write(3, "root", 0, b"x", false).is_err());
        assert!(s.delete(3, "root").is_err());
        s.delete(1, "root").expect("delete vNode 1's root");
        assert_eq!(
            s.read(2, "root", 0, 3)
                .expect("vNode 2's root is untouched"),
            b"two"
        );
        assert_eq!(s.list(1).expect("list").len(), 0);
        let all = s.list(0).expect("list all");
        assert_eq!(all.len(), 1);
        assert_eq!((all[0].owner, all[0].size), (2, 8192));
    }

    #[test]
    fn volumes_of_the_flat_layout_move_into_their_owners_folder() {
        let d = tempfile::tempdir().expect("tempdir");
        for (name, owner) in [("root", 4u64), ("data", 9)] {
            std::fs::write(d.path().join(format!("{name}.vol")), name.as_bytes()).expect("data");
            let meta = serde_json::to_vec(&VolumeMeta { owner, size: 4 }).expect("json");
            std::fs::write(d.path().join(format!("{name}.meta")), meta).expect("meta");
        }
        let s = VolumeStore::open(d.path()).expect("open");
        assert_eq!(s.read(4, "root", 0, 4).expect("root"), b"root");
        assert_eq!(s.read(9, "data", 0, 4).expect("data"), b"data");
        assert!(
            !d.path().join("root.meta").exists(),
            "left in the flat layout"
        );
        assert_eq!(s.list(0).expect("list").len(), 2);
        drop(s);
        let s = VolumeStore::open(d.path()).expect("reopen");
        assert_eq!(s.read(4, "root", 0, 4).expect("root after reopen"), b"root");
    }

    #[test]
    fn discard_zeroes_resize_delete_and_reopen() {
        let d = tempfile::tempdir().expect("tempdir");
        {
            let s = VolumeStore::open(d.path()).expect("open");
            s.create(5, "v", 1 << 20).expect("create");
            s.write(5, "v", 0, &vec![0xab; 65536], true).expect("write");
            s.discard(5, "v", 0, 8192).expect("discard");
            s.write_zeroes(5, "v", 8192, 4096).expect("zeroes");
            assert_eq!(s.read(5, "v", 0, 12288).expect("read"), vec![0; 12288]);
            assert_eq!(s.read(5, "v", 12288, 1).expect("read"), vec![0xab]);
            s.resize(5, "v", 2 << 20).expect("resize");
            s.flush(5, "v").expect("flush");
        }
        let s = VolumeStore::open(d.path()).expect("reopen");
        let info = s.stat(5, "v").expect("stat");
        assert_eq!(info.size, 2 << 20);
        assert_eq!(s.read(5, "v", 12288, 1).expect("read"), vec![0xab]);
        assert_eq!(s.usage().expect("usage").0, 2 << 20);
        s.delete(5, "v").expect("delete");
        assert!(matches!(s.stat(5, "v"), Err(VolumeError::NotFound(_))));
    }
}
