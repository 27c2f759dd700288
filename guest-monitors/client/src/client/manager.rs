//! [`ManagerClient`]: membership, placement and capabilities from the manager.

use std::time::Duration;

use lego_fabric::{Capability, Client, ClientConfig, ClusterKey, Request, Rights};

use super::CallError;
use crate::proto::manager::{
    self as m, ClusterStatus, MemoryPlacement, Registered, VolumePlacement,
};
use crate::proto::{from_json, to_json};

/// A client of the manager. Cheap to clone; safe to share between threads.
#[derive(Clone)]
pub struct ManagerClient {
    client: Client,
}

impl ManagerClient {
    /// Connects to the manager.
    pub fn connect(addr: &str, key: ClusterKey, config: ClientConfig) -> Result<Self, CallError> {
        Ok(Self {
            client: Client::connect(addr, key, config)?,
        })
    }

    /// Wraps a connected fabric client.
    pub fn from_client(client: Client) -> Self {
        Self { client }
    }

    fn call<T: serde::Serialize>(&self, opcode: u16, body: &T) -> Result<Vec<u8>, CallError> {
        Ok(self
            .client
            .call(Request::new(opcode, 0, to_json(body)))?
            .payload)
    }

    /// Registers a monitor; returns the heartbeat interval to use.
    pub fn register(&self, r: &m::RegisterMonitor) -> Result<Registered, CallError> {
        Ok(from_json(&self.call(m::REGISTER, r)?)?)
    }

    /// Sends a heartbeat (`NotFound` means: register again).
    pub fn heartbeat(&self, h: &m::Heartbeat) -> Result<(), CallError> {
        self.call(m::HEARTBEAT, h).map(|_| ())
    }

    /// The cluster's monitors, vNodes and placements.
    pub fn status(&self) -> Result<ClusterStatus, CallError> {
        let r = self.client.call(Request::new(m::STATUS, 0, Vec::new()))?;
        Ok(from_json(&r.payload)?)
    }

    /// Ensures `vnode` has at least `bytes` of remote memory placed, new regions with the
    /// manager's number of copies.
    pub fn place_memory(&self, vnode: u64, bytes: u64) -> Result<MemoryPlacement, CallError> {
        self.place_memory_copies(vnode, bytes, None)
    }

    /// [`ManagerClient::place_memory`] with `copies` of each new region (`None`: the
    /// manager's setting).
    pub fn place_memory_copies(
        &self,
        vnode: u64,
        bytes: u64,
        copies: Option<u32>,
    ) -> Result<MemoryPlacement, CallError> {
        Ok(from_json(&self.call(
            m::PLACE_MEMORY,
            &m::PlaceMemory {
                vnode,
                bytes,
                copies,
            },
        )?)?)
    }

    /// Places a volume of `vnode`.
    pub fn place_volume(
        &self,
        vnode: u64,
        name: &str,
        size: u64,
    ) -> Result<VolumePlacement, CallError> {
        let body = m::PlaceVolume {
            vnode,
            name: name.into(),
            size,
        };
        Ok(from_json(&self.call(m::PLACE_VOLUME, &body)?)?)
    }

    /// Gets a capability for `vnode` (ttl zero: the manager's default).
    pub fn issue_capability(
        &self,
        vnode: u64,
        rights: Rights,
        ttl: Duration,
    ) -> Result<Capability, CallError> {
        let body = m::IssueCapability {
            vnode,
            rights: rights.bits(),
            ttl_secs: ttl.as_secs(),
        };
        let issued: m::IssuedCapability = from_json(&self.call(m::ISSUE_CAPABILITY, &body)?)?;
        issued.capability.parse().map_err(CallError::BadCapability)
    }

    /// `vnode`'s memory placement as it stands, repairs included; places nothing.
    pub fn memory_placement(&self, vnode: u64) -> Result<MemoryPlacement, CallError> {
        Ok(from_json(&self.call(
            m::MEMORY_PLACEMENT,
            &m::GetMemoryPlacement { vnode },
        )?)?)
    }

    /// Reports how far the copy of a region to its repair target has come.
    pub fn repair_progress(&self, p: &m::RepairProgress) -> Result<m::RepairAck, CallError> {
        Ok(from_json(&self.call(m::REPAIR_PROGRESS, p)?)?)
    }

    /// Renews `vnode`'s lease; returns how long it lasts.
    pub fn renew_lease(&self, vnode: u64) -> Result<Duration, CallError> {
        let granted: m::LeaseGranted =
            from_json(&self.call(m::RENEW_LEASE, &m::RenewLease { vnode })?)?;
        Ok(Duration::from_millis(granted.lease_ms))
    }

    /// Announces a running vNode; returns how often to announce it again.
    pub fn vnode_up(&self, up: &m::VnodeUp) -> Result<Duration, CallError> {
        let ack: m::VnodeUpAck = from_json(&self.call(m::VNODE_UP, up)?)?;
        Ok(Duration::from_millis(ack.interval_ms))
    }

    /// Says a vNode stopped.
    pub fn vnode_down(&self, down: &m::VnodeDown) -> Result<(), CallError> {
        self.call(m::VNODE_DOWN, down).map(|_| ())
    }

    /// Forgets a dead monitor that holds no placement.
    pub fn forget_monitor(&self, addr: &str) -> Result<(), CallError> {
        let body = m::ForgetMonitor { addr: addr.into() };
        self.call(m::FORGET_MONITOR, &body).map(|_| ())
    }

    /// Forgets a volume's placement (delete its data from its storage monitor first).
    pub fn forget_volume(&self, vnode: u64, name: &str) -> Result<(), CallError> {
        let body = m::ForgetVolume {
            vnode,
            name: name.into(),
        };
        self.call(m::FORGET_VOLUME, &body).map(|_| ())
    }

    /// Forgets a vNode's placements.
    pub fn release_vnode(&self, vnode: u64) -> Result<(), CallError> {
        self.call(m::RELEASE_VNODE, &m::ReleaseVnode { vnode })
            .map(|_| ())
    }
}
