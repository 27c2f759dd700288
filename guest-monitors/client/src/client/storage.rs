//! [`StorageClient`]: one vNode's volumes on one storage monitor.

use lego_fabric::{Capability, Client, ClientConfig, Identity, Request};

use super::CallError;
use crate::proto::storage::{
    self as st, CreateVolume, DataOp, ResizeVolume, StorageStats, VolumeInfo, VolumeName,
};
use crate::proto::{from_json, to_json};

/// A vNode's view of one storage monitor. Cheap to clone; safe to share between threads.
#[derive(Clone)]
pub struct StorageClient {
    client: Client,
    vnode: u64,
}

impl StorageClient {
    /// Connects to a storage monitor and attaches `cap` (the client acts for `cap.vnode`).
    pub fn connect(
        addr: &str,
        key: impl Into<Identity>,
        cap: &Capability,
        config: ClientConfig,
    ) -> Result<Self, CallError> {
        let key = key.into();
        let client = super::connect_attached(addr, key, cap, config)?;
        Ok(Self::from_client(client, cap.vnode))
    }

    /// Wraps a connected client with a capability for `vnode` attached.
    pub fn from_client(client: Client, vnode: u64) -> Self {
        Self { client, vnode }
    }

    /// The underlying fabric client.
    pub fn fabric(&self) -> &Client {
        &self.client
    }

    fn call(&self, opcode: u16, body: Vec<u8>, flags: u16) -> Result<Vec<u8>, CallError> {
        Ok(self
            .client
            .call(Request::new(opcode, self.vnode, body).with_flags(flags))?
            .payload)
    }

    /// Creates a volume.
    pub fn create(&self, name: &str, size: u64) -> Result<VolumeInfo, CallError> {
        let b = self.call(
            st::CREATE,
            to_json(&CreateVolume {
                name: name.into(),
                size,
            }),
            0,
        )?;
        Ok(from_json(&b)?)
    }

    /// Describes a volume (the "open" of LegoOS: requests are stateless afterwards).
    pub fn stat(&self, name: &str) -> Result<VolumeInfo, CallError> {
        Ok(from_json(&self.call(
            st::STAT,
            to_json(&VolumeName { name: name.into() }),
            0,
        )?)?)
    }

    /// Resizes a volume.
    pub fn resize(&self, name: &str, size: u64) -> Result<VolumeInfo, CallError> {
        let b = self.call(
            st::RESIZE,
            to_json(&ResizeVolume {
                name: name.into(),
                size,
            }),
            0,
        )?;
        Ok(from_json(&b)?)
    }

    /// Deletes a volume.
    pub fn delete(&self, name: &str) -> Result<(), CallError> {
        self.call(st::DELETE, to_json(&VolumeName { name: name.into() }), 0)
            .map(|_| ())
    }

    /// Lists this vNode's volumes.
    pub fn list(&self) -> Result<Vec<VolumeInfo>, CallError> {
        Ok(from_json(&self.call(st::LIST, Vec::new(), 0)?)?)
    }

    /// Reads `len` bytes at `offset`.
    pub fn read(&self, name: &str, offset: u64, len: u32) -> Result<Vec<u8>, CallError> {
        let b = self.call(st::READ, DataOp::Read { name, offset, len }.encode(), 0)?;
        if b.len() != len as usize {
            return Err(CallError::Invalid(format!(
                "asked for {len} bytes, got {}",
                b.len()
            )));
        }
        Ok(b)
    }

    /// Writes `data` at `offset`; with `fua` it is durable before this returns.
    pub fn write(&self, name: &str, offset: u64, data: &[u8], fua: bool) -> Result<(), CallError> {
        let flags = if fua { st::FLAG_FUA } else { 0 };
        self.call(
            st::WRITE,
            DataOp::Write { name, offset, data }.encode(),
            flags,
        )
        .map(|_| ())
    }

    /// Submits a write without waiting (pipelining); `wait()` on the result.
    pub fn submit_write(
        &self,
        name: &str,
        offset: u64,
        data: &[u8],
        fua: bool,
    ) -> lego_fabric::Pending {
        let flags = if fua { st::FLAG_FUA } else { 0 };
        self.client.submit(
            Request::new(
                st::WRITE,
                self.vnode,
                DataOp::Write { name, offset, data }.encode(),
            )
            .with_flags(flags),
        )
    }

    /// Submits a read without waiting (pipelining); `wait()` on the result.
    pub fn submit_read(&self, name: &str, offset: u64, len: u32) -> lego_fabric::Pending {
        self.client.submit(Request::new(
            st::READ,
            self.vnode,
            DataOp::Read { name, offset, len }.encode(),
        ))
    }

    /// Submits a flush without waiting (see [`StorageClient::flush`]); the answer says which
    /// incarnation of the monitor made the writes durable.
    pub fn submit_flush(&self, name: &str) -> lego_fabric::Pending {
        self.client.submit(Request::new(
            st::FLUSH,
            self.vnode,
            DataOp::Flush { name }.encode(),
        ))
    }

    /// Makes all completed writes durable (fdatasync on the monitor before the answer).
    pub fn flush(&self, name: &str) -> Result<(), CallError> {
        self.call(st::FLUSH, DataOp::Flush { name }.encode(), 0)
            .map(|_| ())
    }

    /// Deallocates a range (reads as zeros).
    pub fn discard(&self, name: &str, offset: u64, len: u64) -> Result<(), CallError> {
        self.call(
            st::DISCARD,
            DataOp::Discard { name, offset, len }.encode(),
            0,
        )
        .map(|_| ())
    }

    /// Zeroes a range.
    pub fn write_zeroes(&self, name: &str, offset: u64, len: u64) -> Result<(), CallError> {
        self.call(
            st::WRITE_ZEROES,
            DataOp::WriteZeroes { name, offset, len }.encode(),
            0,
        )
        .map(|_| ())
    }

    /// The whole monitor's statistics (cluster-level request, no capability needed).
    pub fn monitor_stats(client: &Client) -> Result<StorageStats, CallError> {
        let r = client.call(Request::new(st::STATS, 0, Vec::new()))?;
        Ok(from_json(&r.payload)?)
    }
}
