//! `lego-vhost-blk`: a vhost-user-blk backend that serves a vNode's remote memory, a remote
//! disk volume or a local file to any vhost-user frontend (QEMU's `vhost-user-blk`, legovmm).
//!
//! * [`cli`]: the command line; [`open`]: turns it into a [`store::BlockStore`].
//! * [`store`]: the stores (file, remote memory, remote disk).
//! * [`request`]: virtio-blk requests from descriptor chains to status bytes, in batches whose
//!   store operations are in flight together.
//! * [`config`]: feature bits and config space; [`backend`]: the vhost-user device.
//! * [`server`]: the socket, one frontend at a time, clean stop.

#![warn(missing_docs)]

pub mod backend;
pub mod cli;
pub mod config;
pub mod open;
pub mod ratelimit;
pub mod request;
pub mod server;
pub mod store;
