//! What a process needs to reach LegoVMM's monitors and manager, apart from the daemons
//! themselves (`lego-monitors`): the wire protocol ([`proto`]), its constants and the types it
//! carries, the typed clients over a [`lego_fabric::Client`] ([`client`]), and human-readable
//! byte sizes for flags and config files ([`size`]).
//!
//! The daemons, the vhost-user backend and `legoctl` all depend on this crate; only the daemons
//! depend on `lego-monitors`.

#![warn(missing_docs)]

pub mod client;
#[cfg(feature = "logging")]
pub mod logging;
pub mod proto;
pub mod size;
