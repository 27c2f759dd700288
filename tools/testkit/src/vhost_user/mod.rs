//! A vhost-user frontend for tests and benches: guest memory in a memfd shared with the
//! backend ([`memory`]), the feature negotiation ([`handshake`]), split virtqueues laid out by
//! hand ([`queue`]) and a virtio-blk driver sending one request at a time ([`blk`]).
//!
//! This is a test double, not the VMM's frontend (`devices/src/vhost_user/`).

pub mod blk;
pub mod handshake;
pub mod memory;
pub mod queue;

pub use blk::Driver;
pub use handshake::{handshake, Offered, VIRTIO_F_VERSION_1};
pub use memory::{guest_memory, set_mem_table};
pub use queue::{wait_readable, SplitQueue};
