//! `lego-vhost-blk`: a vhost-user-blk backend that serves a vNode's remote memory, a remote
//! disk volume or a local file to any vhost-user frontend (QEMU's `vhost-user-blk`, legovmm).
//!
//! The virtio-blk device itself (request parsing and batching, the store interface, the file
//! store, feature bits and config space) is the core it shares with legovmm's in-process disk,
//! `lego_devices::virtio::block`; this crate adds the vhost-user side and the remote stores.
//!
//! * [`cli`]: the command line; [`open`]: turns it into a [`store::BlockStore`].
//! * [`store`]: the stores (the core's file store, remote memory, remote disk).
//! * [`backend`]: the vhost-user device, serving each queue through the core's
//!   `RequestHandler`; [`poll`]: how long a queue worker polls its ring before it sleeps.
//! * [`server`]: the socket, one frontend at a time, clean stop.
//! * [`state`]: what remote memory must remember across the backend's own restarts.
//! * [`metrics`]: the device's counters for its Prometheus endpoint (`--metrics`).

#![warn(missing_docs)]

pub mod backend;
pub mod cli;
pub mod metrics;
pub mod open;
pub mod poll;
pub mod server;
pub mod state;
pub mod store;
