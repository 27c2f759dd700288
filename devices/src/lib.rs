//! Guest-visible devices of LegoVMM: legacy platform devices (serial, CMOS, i8042,
//! ACPI power management, pvpanic), the virtio-mmio transport with its devices (including the
//! virtio-blk core that the `lego-vhost-blk` backend shares) and the vhost-user frontend
//! ([`vhost_user_frontend`]) for devices a backend process serves.
//!
//! The VMM owns the buses; each device implements [`bus::BusDevice`] and is placed
//! on the port-I/O or MMIO bus at a fixed range. Devices that end the guest (power-off,
//! reset, panic) report through [`exit::ExitNotifier`].

#![warn(missing_docs)]

pub mod bus;
pub mod exit;
pub mod legacy;
pub mod net;
pub mod rate_limit;
pub mod vhost_user_frontend;
pub mod virtio;
