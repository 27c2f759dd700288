//! The global manager (LegoOS GMM/GSM): membership, heartbeats, placement, capabilities,
//! vNode leases, the running vNodes, the vNodes' network addresses.

pub mod addresses;
pub mod core;
pub mod election;
pub mod etcd_store;
pub mod lease;
pub mod repair;
pub mod running;
pub mod service;
pub mod standby;
pub mod state;

pub use self::core::{Manager, ManagerError, ManagerSettings};
pub use addresses::{AddressError, VnodeSubnet};
pub use lease::VnodeLeases;
pub use running::RunningVnodes;
pub use state::{ClusterState, FileStateStore, MemoryStateStore, StateError, StateStore};
