//! What LegoVMM's tests and benchmarks share, written once: used only as a dev-dependency (and
//! by the bench tool), never by a shipped binary.
//!
//! * [`stats`]: medians, percentiles, ranges and ratios of measurements.
//! * [`net`]: free loopback ports.
//! * [`netns`]: a network namespace of the test's own, for taps, bridges and their daemons.
//! * [`prerequisite`]: skipping a test whose prerequisite is missing, but failing under CI.
//! * [`process`]: child processes killed (and reaped) when dropped, also on panic.
//! * [`qemu_nbd`]: the qemu-nbd server benchmarks compare against.
//! * [`wait`]: polling until something is ready, with a deadline.
//! * `vhost_user` (feature `vhost-user`): a vhost-user frontend driving virtio-blk requests.

#![warn(missing_docs)]

pub mod metrics;
pub mod net;
pub mod netns;
pub mod prerequisite;
pub mod process;
pub mod qemu_nbd;
pub mod stats;
#[cfg(feature = "vhost-user")]
pub mod vhost_user;
pub mod wait;
