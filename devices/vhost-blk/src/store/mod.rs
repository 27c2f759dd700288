//! The stores this backend serves. The store interface ([`BlockStore`], [`StoreError`],
//! [`StoreOp`]) and the local [`file::FileStore`] are virtio-blk's shared core in
//! `lego_devices::virtio::block::store`, re-exported here; the backend adds the remote stores:
//!
//! * [`remote_memory::RemoteMemoryStore`]: a vNode's remote memory on memory monitors.
//! * [`remote_disk::RemoteDiskStore`]: a volume on a storage monitor.

pub use lego_devices::virtio::block::store::*;

pub mod remote_disk;
pub mod remote_memory;
