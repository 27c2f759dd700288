//! `lego-image`: builds the LegoVMM guest image from Debian packages.
//!
//! - [`debian::fetch`] downloads and unpacks packages (resolving the kernel metapackage);
//! - [`modules::resolve`] turns module names into `.ko` files in load order;
//! - [`cpio::Archive`] writes newc archives;
//! - [`guest::build`] puts it together: `<cache>/guest/{vmlinuz,initramfs.cpio,manifest.json}`.

#![warn(missing_docs)]

pub mod cpio;
pub mod debian;
pub mod elf;
pub mod guest;
pub mod guest_tools;
pub mod init;
pub mod lock;
pub mod modules;
pub mod progress;

use std::path::PathBuf;

pub use guest::{build, GuestImage, GuestOptions};

/// The environment variable that overrides the cache folder.
pub const CACHE_ENV: &str = "LEGO_CACHE";

/// Returns the default cache folder: `$LEGO_CACHE` if set and not empty, else
/// `<workspace root>/.cache`.
pub fn default_cache() -> PathBuf {
    match std::env::var_os(CACHE_ENV) {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => guest_tools::workspace_root().join(".cache"),
    }
}
