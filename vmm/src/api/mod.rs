//! legovmm's API socket (`--api-socket PATH`): HTTP/1.1 REST over a Unix socket, in the style
//! of Cloud Hypervisor's `/api/v1/vm.*` endpoints, documented in `vmm/api/openapi.json`.
//!
//! - [`model`]: the JSON bodies (what `vm.info` and `vm.counters` answer, errors);
//! - [`control`]: what the API can do to a running vNode ([`control::VmControl`]) and the
//!   live implementation over the VM's pause gate, exit notifier, devices and pager;
//! - [`routes`]: one request in, one answer out (method and path to an action);
//! - [`metrics`]: `GET /metrics`, the vNode's figures in the Prometheus text format;
//! - [`server`]: binds the socket and answers requests on one thread.

pub mod control;
pub mod metrics;
pub mod model;
pub mod routes;
pub mod server;

pub use control::{LiveVm, VmControl};
pub use server::{ApiError, ApiServer};
