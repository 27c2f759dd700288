//! The global manager (LegoOS GMM/GSM): membership, heartbeats, placement, capabilities.

pub mod core;
pub mod repair;
pub mod service;
pub mod state;

pub use self::core::{Manager, ManagerError, ManagerSettings};
pub use state::{ClusterState, FileStateStore, MemoryStateStore, StateError, StateStore};
