//! The vhost-user FRONTEND side, in legovmm: virtio devices whose queues a separate backend
//! process serves over a Unix socket (the vhost-user protocol), reading and writing guest RAM
//! directly through the shared memfd. The backend side is another program, such as
//! `lego-vhost-blk` (`devices/vhost-blk/`, built on the `vhost-user-backend` crate).
//!
//! legovmm keeps the virtio-mmio transport; on DRIVER_OK the device hands the backend the
//! guest memory table, the rings' addresses, the queue-notify eventfds (KVM ioeventfds, so
//! guest kicks go straight to the backend) and one call eventfd per queue, which
//! [`relay`] turns into the device's interrupt.
//!
//! * [`connection`]: the protocol steps every vhost-user device needs (connect, features,
//!   config space, memory table, vrings, stop), device-independent;
//! * [`device`]: [`VhostUserDevice`], the virtio device over a connection and a relay, generic
//!   over a [`DeviceKind`];
//! * [`features`]: feature negotiation; [`relay`]: interrupts and backend hang-ups;
//!   [`reconnect`]: bringing a device back when its backend restarts;
//! * [`postcopy`]: when legovmm pages guest RAM, the backend's userfaultfd handed to the
//!   pager ([`BackendFaults`]) at every SET_MEM_TABLE;
//! * [`blk`]: virtio-blk, the one device kind so far. Another vhost-user device is a file
//!   like it: a `DeviceKind` and a type alias.

pub mod blk;
pub mod connection;
pub mod device;
pub mod features;
pub mod postcopy;
pub mod reconnect;
pub mod relay;

use std::io;

pub use blk::VhostUserBlk;
pub use device::{DeviceKind, VhostUserDevice};
pub use postcopy::{BackendFaults, BackendFaultsError, BackendRegion};
pub use reconnect::ReconnectPolicy;
pub use relay::{BackendEvent, BackendWatcher};

/// Errors of a vhost-user frontend.
#[derive(Debug, thiserror::Error)]
pub enum VhostUserError {
    /// The backend's socket could not be connected.
    #[error("cannot connect to the vhost-user backend at {path}")]
    Connect {
        /// The socket.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A vhost-user request failed or the backend answered it wrongly.
    #[error("the vhost-user backend at {path} failed {step}")]
    Protocol {
        /// The socket.
        path: String,
        /// The request, e.g. "GET_FEATURES".
        step: String,
        /// The vhost crate's error.
        #[source]
        source: vhost::Error,
    },
    /// The backend cannot serve a modern virtio device.
    #[error("the vhost-user backend at {0} does not offer VIRTIO_F_VERSION_1")]
    NotModern(String),
    /// The backend does not negotiate protocol features, or not CONFIG.
    #[error("the vhost-user backend at {0} does not offer the CONFIG protocol feature, which legovmm needs to read the device's config space")]
    NoConfig(String),
    /// legovmm pages guest RAM but the backend cannot hand over its faults.
    #[error("the vhost-user backend at {0} does not offer the PAGEFAULT protocol feature, so it cannot serve guest RAM that legovmm pages (it would read missing pages as zeros)")]
    NoPagefault(String),
    /// legovmm's pager refused the backend's userfaultfd.
    #[error("legovmm's pager could not take over the faults of the vhost-user backend at {path}")]
    Adopt {
        /// The socket.
        path: String,
        /// The pager's error.
        #[source]
        source: postcopy::BackendFaultsError,
    },
    /// Guest memory is not file-backed, so the backend cannot map it.
    #[error("guest memory at {0:#x} is not backed by a shared file, so a vhost-user backend cannot map it")]
    MemoryNotShared(u64),
    /// A queue's rings are not inside guest memory.
    #[error("queue {0}'s rings are not inside guest memory")]
    QueueOutsideMemory(usize),
    /// A system resource (eventfd, thread) could not be set up.
    #[error("could not {what}")]
    Io {
        /// What the frontend was doing.
        what: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
}
