//! Typed clients for the monitors and the manager, over a shared [`lego_fabric::Client`].
//!
//! The VMM side (e.g. a vhost-user backend) uses these: [`MemoryClient`] for a vNode's pages,
//! [`VnodeMemory`] for all of a vNode's vRegions across monitors (page runs submitted in
//! batches and waited on later as [`PendingRun`]s), [`StorageClient`] for its volumes,
//! [`ManagerClient`] for placement and capabilities, [`LeaseKeeper`] for a vNode's lease.

pub mod custody;
pub mod lease;
pub mod manager;
pub mod memory;
pub mod renewal;
pub mod repair;
pub mod storage;
pub mod vnode;

pub use lease::LeaseKeeper;
pub use manager::ManagerClient;
pub use memory::{MemoryClient, PageOp, PendingPages};
pub use renewal::Renewal;
pub use repair::RepairConfig;
pub use storage::StorageClient;
pub use vnode::{PendingRun, VnodeMemory};

use std::sync::Arc;

use lego_fabric::{
    Capability, CapabilityError, Client, ClientConfig, ClientError, ErrorCode, Identity,
    RemoteError,
};

use crate::proto::ProtoError;

/// Errors from typed client calls.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The fabric call failed (transport, timeout, or an error answered by the server).
    #[error(transparent)]
    Fabric(#[from] ClientError),
    /// The answer could not be decoded.
    #[error("the server's answer could not be decoded")]
    Decode(#[from] ProtoError),
    /// The manager's capability token could not be read.
    #[error("the manager sent an unreadable capability")]
    BadCapability(#[source] CapabilityError),
    /// A batch that several calls shared failed; each of them reports it.
    #[error("a batch of requests to a monitor could not be sent")]
    Batch(#[source] Arc<CallError>),
    /// The arguments cannot be sent.
    #[error("{0}")]
    Invalid(String),
    /// The memory monitor that held the pages restarted empty: what it held is gone, and
    /// answering with what the new process has (zeros) would be wrong.
    #[error(
        "the memory monitor at {addr} restarted and lost the pages it held for this vNode ({loss})"
    )]
    Lost {
        /// The monitor.
        addr: std::net::SocketAddr,
        /// What was lost.
        loss: custody::Loss,
    },
    /// The manager has no vNode address left to give: every address of its `--vnode-subnet`
    /// is held by a vNode (its `NoSpace` answer to `VNODE_ADDRESS`).
    #[error("{}", crate::proto::manager::pool_exhausted(subnet, *addresses))]
    AddressPoolExhausted {
        /// The manager's vNode subnet, e.g. `10.99.0.0/30`.
        subnet: String,
        /// How many vNode addresses it has (all held).
        addresses: u64,
    },
}

impl CallError {
    /// The error code the server answered with, if it answered with an error.
    pub fn remote_code(&self) -> Option<ErrorCode> {
        match self {
            CallError::Fabric(ClientError::Remote(RemoteError { code, .. })) => Some(*code),
            CallError::Batch(e) => e.remote_code(),
            CallError::AddressPoolExhausted { .. } => Some(ErrorCode::NoSpace),
            _ => None,
        }
    }
}

/// Connects to a monitor at `addr` and attaches `cap`, so that the client acts for `cap.vnode`.
fn connect_attached(
    addr: &str,
    key: Identity,
    cap: &Capability,
    config: ClientConfig,
) -> Result<Client, CallError> {
    let client = Client::connect(addr, key, config)?;
    client.attach(cap)?;
    Ok(client)
}
