//! `lego-bench`: benchmark drivers for LegoVMM.
//!
//! `boot-bench` boots the same guest with legovmm and with QEMU microvm, interleaved, in
//! one compute host of the testbed, timing each boot with `lego-guest-tools boot-timer`
//! (ready marker, exit, peak `VmRSS - RssShmem`), and prints a markdown table.
//!
//! - [`assets`]: the files a run needs (guest image, VMMs, QEMU's libraries, the timer);
//! - [`driver`]: the options, preparation and keeping steps the drivers share;
//! - [`setup`]: how a driver's setups are named (result lines, files, `--setups`);
//! - [`script`]: the job script run on the compute host;
//! - [`results`]: parsing the timing lines the job leaves;
//! - [`report`]: the markdown report (medians and ranges from `lego_testkit::stats`).
//!
//! `swap-bench` runs the same swap-heavy workload with remote memory (legovmm), with swap on
//! an NBD-backed disk (QEMU + qemu-nbd) and with all-local RAM, side by side; see [`swap`].
//!
//! `net-bench` measures TCP round trips and throughput between a vNode and its compute host
//! with legovmm's virtio-net (vhost-net and in-process) and QEMU's (vhost-net); see [`net`].
//!
//! `soak` runs the demo-sized swap workload N times, each in a fresh compute host, and
//! counts the runs the testbed lost by kind; see [`soak`].

#![warn(missing_docs)]

pub mod assets;
pub mod driver;
pub mod net;
pub mod report;
pub mod results;
pub mod script;
pub mod setup;
pub mod soak;
pub mod swap;
