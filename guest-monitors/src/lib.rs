//! LegoVMM monitors: the memory monitor (LegoOS mComponent), the storage monitor (sComponent)
//! and the global manager (GMM/GSM). The wire messages and typed clients to reach them live in
//! `lego-monitor-client` (`guest-monitors/client/`), which the daemons share with every client.

#![warn(missing_docs)]

pub mod agent;
pub mod bounds;
pub mod config;
pub mod daemon;
pub mod fsutil;
pub mod manager;
pub mod memory_service;
pub mod metrics;
pub mod monitor_main;
pub mod pagestore;
pub mod placement;
pub mod storage_service;
pub mod volume;
