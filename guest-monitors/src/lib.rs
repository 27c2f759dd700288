//! LegoVMM monitors: the memory monitor (LegoOS mComponent), the storage monitor (sComponent)
//! and the global manager (GMM/GSM), plus the wire messages and typed clients to reach them.

#![warn(missing_docs)]

pub mod agent;
pub mod client;
pub mod config;
pub mod daemon;
pub mod fsutil;
pub mod manager;
pub mod memory_service;
pub mod monitor_main;
pub mod pagestore;
pub mod placement;
pub mod proto;
pub mod size;
pub mod storage_service;
pub mod volume;
