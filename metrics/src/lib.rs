//! Prometheus metrics for LegoVMM's daemons.
//!
//! A daemon builds a [`prometheus_client::registry::Registry`] (its own metrics, or a
//! [`prometheus_client::collector::Collector`] that reads its counters at each scrape) and
//! starts a [`MetricsServer`] on the address of its `--metrics` flag; the server answers
//! `GET /metrics` with the registry in the Prometheus text format (version 0.0.4) from its
//! own thread, and stops when dropped.

pub mod collect;
pub mod server;

pub use prometheus_client;
pub use server::{MetricsError, MetricsServer};
