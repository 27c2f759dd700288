//! The storage monitor's fabric [`Handler`]: volume operations on the [`VolumeStore`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use lego_fabric::{
    Dispatch, ErrorCode, Handler, RemoteError, Request, RequestContext, Rights, Role,
};

use crate::bounds::VolumeBounds;
use crate::volume::{VolumeError, VolumeStore};
use lego_monitor_client::proto::storage::{
    self as st, CreateVolume, DataOp, ResizeVolume, StorageStats, VolumeName,
};
use lego_monitor_client::proto::{from_json, to_json, ProtoError};

/// The storage monitor's incarnation for the volumes in `data_dir`: the same across restarts
/// of the process while the machine stays up (written data sits in the page cache, so a
/// killed process loses nothing acknowledged), another after a reboot (writes not yet
/// flushed may be gone). Derived from the kernel's boot id and the data folder; `None` if
/// the boot id cannot be read (then each process draws its own, which is only more careful).
pub fn storage_incarnation(data_dir: &std::path::Path) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let dir = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let mut h = std::collections::hash_map::DefaultHasher::new();
    boot.trim().hash(&mut h);
    dir.hash(&mut h);
    Some(h.finish() | 1)
}

impl From<VolumeError> for RemoteError {
    fn from(e: VolumeError) -> Self {
        let code = match &e {
            VolumeError::BadName(_)
            | VolumeError::OutOfRange { .. }
            | VolumeError::TooLarge(_)
            | VolumeError::Exists(_) => ErrorCode::InvalidArgument,
            VolumeError::NotFound(_) => ErrorCode::NotFound,
            VolumeError::NotOwner { .. } => ErrorCode::Forbidden,
            VolumeError::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC) => {
                ErrorCode::NoSpace
            }
            VolumeError::BadMeta { .. } | VolumeError::Io { .. } | VolumeError::Fs(_) => {
                ErrorCode::Io
            }
        };
        RemoteError::new(code, lego_report::error_chain(&e))
    }
}

/// Serves volume requests over the fabric.
pub struct StorageService {
    store: Arc<VolumeStore>,
    capacity: u64,
    bounds: Option<Arc<VolumeBounds>>,
    reads: AtomicU64,
    writes: AtomicU64,
    flushes: AtomicU64,
}

impl StorageService {
    /// A handler around `store`, offering `capacity` bytes.
    pub fn new(store: Arc<VolumeStore>, capacity: u64) -> Self {
        Self {
            store,
            capacity,
            bounds: None,
            reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
        }
    }

    /// Creates and grows volumes only as the manager placed them (see [`crate::bounds`]).
    pub fn with_bounds(mut self, bounds: Arc<VolumeBounds>) -> Self {
        self.bounds = Some(bounds);
        self
    }

    /// Refuses `vnode`'s volume `name` at `size` bytes unless the manager placed it here.
    fn check_placed(&self, vnode: u64, name: &str, size: u64) -> Result<(), RemoteError> {
        match &self.bounds {
            Some(b) => Ok(b.check(vnode, name, size)?),
            None => Ok(()),
        }
    }

    /// Current statistics.
    pub fn stats(&self) -> Result<StorageStats, VolumeError> {
        let (provisioned, allocated) = self.store.usage()?;
        Ok(StorageStats {
            capacity_bytes: self.capacity,
            provisioned_bytes: provisioned,
            allocated_bytes: allocated,
            volumes: self.store.list(0)?.len() as u64,
            reads: self.reads.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
            flushes: self.flushes.load(Ordering::Relaxed),
        })
    }

    /// Refuses to provision `more` bytes beyond the capacity offered.
    fn check_capacity(&self, more: u64) -> Result<(), RemoteError> {
        let (provisioned, _) = self.store.usage()?;
        if provisioned.saturating_add(more) > self.capacity {
            return Err(RemoteError::new(
                ErrorCode::NoSpace,
                format!(
                    "the storage monitor is full: {more} more bytes would exceed its capacity of {} bytes \
                     ({provisioned} already provisioned)",
                    self.capacity
                ),
            ));
        }
        Ok(())
    }

    fn data(&self, vnode: u64, op: DataOp<'_>, flags: u16) -> Result<Vec<u8>, RemoteError> {
        let s = &self.store;
        match op {
            DataOp::Read { name, offset, len } => {
                self.reads.fetch_add(1, Ordering::Relaxed);
                Ok(s.read(vnode, name, offset, len as usize)?)
            }
            DataOp::Write { name, offset, data } => {
                self.writes.fetch_add(1, Ordering::Relaxed);
                s.write(vnode, name, offset, data, flags & st::FLAG_FUA != 0)?;
                Ok(Vec::new())
            }
            DataOp::Flush { name } => {
                self.flushes.fetch_add(1, Ordering::Relaxed);
                s.flush(vnode, name)?;
                Ok(Vec::new())
            }
            DataOp::Discard { name, offset, len } => {
                s.discard(vnode, name, offset, len)?;
                Ok(Vec::new())
            }
            DataOp::WriteZeroes { name, offset, len } => {
                s.write_zeroes(vnode, name, offset, len)?;
                Ok(Vec::new())
            }
        }
    }

    fn control(&self, vnode: u64, req: &Request) -> Result<Vec<u8>, RemoteError> {
        let s = &self.store;
        let body = &req.payload;
        Ok(match req.opcode {
            st::CREATE => {
                let c: CreateVolume = from_json(body)?;
                self.check_placed(vnode, &c.name, c.size)?;
                self.check_capacity(c.size)?;
                to_json(&s.create(vnode, &c.name, c.size)?)
            }
            st::STAT => to_json(&s.stat(vnode, &from_json::<VolumeName>(body)?.name)?),
            st::RESIZE => {
                let r: ResizeVolume = from_json(body)?;
                let old = s.stat(vnode, &r.name)?.size;
                if r.size > old {
                    self.check_placed(vnode, &r.name, r.size)?;
                }
                self.check_capacity(r.size.saturating_sub(old))?;
                to_json(&s.resize(vnode, &r.name, r.size)?)
            }
            st::DELETE => {
                s.delete(vnode, &from_json::<VolumeName>(body)?.name)?;
                Vec::new()
            }
            st::LIST => to_json(&s.list(vnode)?),
            other => return Err(ProtoError::UnknownOpcode(other).into()),
        })
    }
}

impl Handler for StorageService {
    fn handle(&self, ctx: &RequestContext, req: Request) -> Result<Vec<u8>, RemoteError> {
        let vnode = ctx.vnode;
        if vnode == 0 {
            // Statistics and the list cover every vNode.
            if ctx.role == Role::Compute {
                return Err(RemoteError::new(
                    ErrorCode::Forbidden,
                    "a compute host may not list the volumes or read the statistics of every vNode; they need the operator role",
                ));
            }
            return match req.opcode {
                st::STATS => Ok(to_json(&self.stats()?)),
                st::LIST => Ok(to_json(&self.store.list(0)?)),
                _ => Err(RemoteError::new(
                    ErrorCode::Forbidden,
                    "volume operations need a vNode and its capability; vNode 0 may only list and ask for statistics",
                )),
            };
        }
        if !ctx.rights.contains(Rights::STORAGE) {
            return Err(RemoteError::new(
                ErrorCode::Forbidden,
                format!("the capability attached for vNode {vnode} does not grant storage access"),
            ));
        }
        let r = match DataOp::decode(req.opcode, &req.payload)? {
            Some(op) => self.data(vnode, op, req.flags),
            None => self.control(vnode, &req),
        };
        if let Err(e) = &r {
            tracing::debug!(peer = %ctx.peer, vnode, opcode = req.opcode, error = %lego_report::error_chain(&e), "storage request failed");
        }
        r
    }

    fn dispatch(&self, _req: &Request) -> Dispatch {
        // Disk reads, writes and fdatasync block: keep the connection reading meanwhile.
        Dispatch::Worker
    }
}
