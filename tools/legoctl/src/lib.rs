//! `legoctl`: the operator's view of a LegoVMM cluster. The library holds the rendering so it
//! can be tested; `main.rs` holds the command line.

#![warn(missing_docs)]

pub mod api_client;
pub mod console;
pub mod render;
pub mod table;
