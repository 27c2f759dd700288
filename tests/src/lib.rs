//! Shared helpers for LegoVMM's integration tests: finding the binaries under test and
//! running guests through the nested-KVM testbed.

use std::path::PathBuf;
use std::process::{Command, Output};

/// The legovmm binary under test: `$LEGOVMM_BIN`, else the workspace's release or debug build.
pub fn legovmm() -> PathBuf {
    lego_testbed::paths::locate_legovmm(None).unwrap_or_else(|e| {
        panic!("legovmm is not built ({e}); run `cargo build --release -p legovmm` first")
    })
}

/// Runs legovmm with `args` on this host and captures its output.
pub fn run_legovmm(args: &[&str]) -> Output {
    Command::new(legovmm())
        .args(args)
        .output()
        .expect("legovmm could not be started")
}

/// Standard error of an output as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Finds `KEY=value` on its own line in `text` and returns the value.
pub fn marker<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        let l = l.trim_end_matches('\r');
        let at = l.find(&format!("{key}="))?;
        Some(
            l[at + key.len() + 1..]
                .split_whitespace()
                .next()
                .unwrap_or(""),
        )
    })
}
