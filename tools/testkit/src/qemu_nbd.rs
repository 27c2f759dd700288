//! The qemu-nbd server the benchmarks compare against (Debian package qemu-utils).

use std::path::Path;
use std::process::Command;

/// The export name [`command`] serves.
pub const EXPORT: &str = "bench";

/// A `qemu-nbd` command serving the raw file `image` as export [`EXPORT`] on 127.0.0.1:`port`:
/// persistent (`-t`), up to 4 clients, with the page cache in write-back mode, so that
/// NBD_CMD_FLUSH is an fdatasync.
pub fn command(image: &Path, port: u16) -> Command {
    let mut c = Command::new("qemu-nbd");
    c.args([
        "-f",
        "raw",
        "-x",
        EXPORT,
        "-t",
        "-e",
        "4",
        "--cache=writeback",
    ])
    .args(["-b", "127.0.0.1", "-p", &port.to_string()])
    .arg(image);
    c
}
