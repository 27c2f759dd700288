//! Helpers shared by the integration tests.
// Each test file uses a subset of these helpers.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

use lego_testkit::prerequisite::require;

/// Runs the `lego-image` binary with arguments.
pub fn lego_image(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lego-image"))
        .args(args)
        .output()
        .expect("lego-image runs")
}

/// Returns the standard error of a run as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Returns true (after saying why) if the tests that need apt must be skipped; fails under CI
/// instead (see `lego_testkit::prerequisite`).
pub fn skip_without_apt() -> bool {
    !require(
        "apt lists in /var/lib/apt/lists (run `apt-get update`)",
        lego_image::debian::apt_lists_present(),
    )
}

/// Creates a temporary cache whose guest tools target folder is shared across runs, so
/// the static guest tools build stays incremental.
pub fn temp_cache() -> tempfile::TempDir {
    let cache = tempfile::tempdir().unwrap();
    let tools_target = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("guest-tools-target");
    std::fs::create_dir_all(&tools_target).unwrap();
    std::os::unix::fs::symlink(&tools_target, cache.path().join("guest-tools-target")).unwrap();
    cache
}
