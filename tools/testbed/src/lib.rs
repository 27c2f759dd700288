//! `lego-testbed`: runs LegoVMM jobs on a compute host with KVM.
//!
//! On a host whose KVM boots stock kernels (`legovmm probe` succeeds) a job's script runs
//! here with bash ([`Mode::Direct`]). Elsewhere (e.g. under PVM) the testbed boots its own
//! compute host ([`Mode::Nested`]): QEMU TCG with an emulated AMD EPYC CPU with SVM and
//! nested paging, running the stock Debian cloud kernel with `kvm-amd`, from a small
//! initramfs; the job's files, `legovmm` and its libraries come on an ext4 virtio disk,
//! which is read back after the run.
//!
//! ```no_run
//! use lego_testbed::{Job, Testbed, TestbedConfig};
//! use std::time::Duration;
//! let tb = Testbed::new(TestbedConfig::new(None))?;
//! let job = Job::new("hello", "echo hi > out.txt; exit 3").timeout(Duration::from_secs(120));
//! let out = tb.run(&job)?;
//! assert_eq!(out.job_exit, Some(3));
//! assert_eq!(out.read_file("out.txt")?, b"hi\n");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

pub mod console;
pub mod disk;
pub mod job;
pub mod l1;
pub mod markers;
pub mod mode;
pub mod paths;
pub mod proc;
pub mod progress;
pub mod qemu;
pub mod shell;
pub mod testbed;
pub mod vnode;

pub use job::{Job, JobError, JobOutput, Outcome};
pub use mode::{Mode, ModeChoice};
pub use testbed::{Testbed, TestbedConfig, TestbedError};
