//! Host-side network plumbing for the guest's network devices: [`tap`], the kernel tap
//! interface a virtio-net device sends and receives Ethernet frames through.

pub mod tap;

pub use tap::{Tap, TapError};
