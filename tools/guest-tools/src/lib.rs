//! `lego-guest-tools`: the static helper run inside LegoVMM guests.
//!
//! The same code is used on the host by tests: [`pattern`] and [`disk`] write and verify the
//! deterministic block pattern in disk files, so the host and the guest can check each
//! other's writes.

#![warn(missing_docs)]

pub mod disk;
pub mod memtest;
pub mod pattern;
pub mod sysinfo;
