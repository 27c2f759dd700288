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

/// Reading what a testbed job left in its job folder.
pub trait JobFiles {
    /// The text of the job file `name`; panics with the job's summary when it is missing.
    fn text(&self, name: &str) -> String;
    /// The exit status `lego_vnode` recorded for the vNode `name` (`<name>.exit`).
    fn vnode_exit(&self, name: &str) -> i32;
    /// Checks that the disk image `name` came back holding `blocks` blocks of `seed`'s pattern.
    fn assert_disk_holds(&self, name: &str, seed: u64, blocks: u64);
}

impl JobFiles for lego_testbed::JobOutput {
    fn text(&self, name: &str) -> String {
        let bytes = self
            .read_file(name)
            .unwrap_or_else(|e| panic!("the job left no {name}: {e}\n{}", self.summary()));
        String::from_utf8_lossy(&bytes).into_owned()
    }

    fn vnode_exit(&self, name: &str) -> i32 {
        let text = self.text(&format!("{name}.exit"));
        text.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}.exit holds no status: {text:?}"))
    }

    fn assert_disk_holds(&self, name: &str, seed: u64, blocks: u64) {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let back = dir.path().join(name);
        self.copy_file(name, &back)
            .unwrap_or_else(|e| panic!("the disk {name} does not come back: {e}"));
        let verify = lego_guest_tools::disk::verify_pattern(&back, seed, blocks)
            .unwrap_or_else(|e| panic!("the disk {name} cannot be read: {e}"));
        assert!(
            matches!(verify, lego_guest_tools::disk::Verify::Ok(_)),
            "the host does not find the guest's writes (seed {seed}) in {name}: {verify:?}"
        );
    }
}

/// A release binary of the workspace, next to the legovmm under test.
pub fn release_binary(name: &str) -> PathBuf {
    let p = legovmm().with_file_name(name);
    assert!(
        p.is_file(),
        "{} is not built: run `cargo build --release --workspace`",
        p.display()
    );
    p
}

/// The number after `"key":` in pretty-printed JSON (the monitors' statistics).
pub fn json_number(json: &str, key: &str) -> u64 {
    json.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("\"{key}\":")))
        .and_then(|v| v.trim().trim_end_matches(',').parse().ok())
        .unwrap_or_else(|| panic!("no {key} in:\n{json}"))
}

/// Returns the value `once` holds, running `init` to fill it the first time. A panic in
/// `init` is kept as the value's failure, so a job shared by several tests runs once even when
/// it fails, and every test that needs it reports the same failure.
pub fn shared<T>(
    once: &'static std::sync::OnceLock<Result<T, String>>,
    init: fn() -> T,
) -> &'static T {
    let value = once.get_or_init(|| {
        std::panic::catch_unwind(init).map_err(|panic| {
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "the shared job panicked".to_string())
        })
    });
    match value {
        Ok(v) => v,
        Err(e) => panic!("the job these tests share failed: {e}"),
    }
}
