//! `lego-guest-tools`: the static helper run inside LegoVMM guests (and, for
//! [`boot_timer`], inside the testbed's compute host).
//!
//! The same code is used on the host by tests: [`pattern`] and [`disk`] write and verify the
//! deterministic block pattern in disk files, so the host and the guest can check each
//! other's writes.

#![warn(missing_docs)]

pub mod boot_timer;
pub mod disk;
pub mod hotplug;
pub mod linescan;
pub mod memtest;
pub mod nettest;
pub mod pattern;
pub mod power_button;
pub mod procstatus;
pub mod sysinfo;
