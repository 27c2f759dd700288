//! The global manager (LegoOS GMM/GSM): membership, heartbeats, placement, capabilities,
//! vNode leases.

pub mod core;
pub mod lease;
pub mod repair;
pub mod service;
pub mod state;

pub use self::core::{Manager, ManagerError, ManagerSettings};
pub use lease::VnodeLeases;
pub use state::{ClusterState, FileStateStore, MemoryStateStore, StateError, StateStore};
