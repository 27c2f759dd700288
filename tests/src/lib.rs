//! Shared helpers for LegoVMM's integration tests: finding the binaries under test and
//! running guests through the nested-KVM testbed.

use lego_report::error_chain;
use lego_testbed::{Job, JobOutput, Testbed, TestbedConfig};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

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

/// A fresh cluster key in hex, from the release `legoctl keygen` (for a job's
/// `LEGO_CLUSTER_KEY`).
pub fn cluster_key_hex() -> String {
    let out = std::process::Command::new(release_binary("legoctl"))
        .arg("keygen")
        .output()
        .expect("legoctl keygen runs");
    String::from_utf8(out.stdout)
        .expect("a hex key")
        .trim()
        .to_string()
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
    /// The job file `name` read as one JSON document; panics with its text when it is not.
    fn json(&self, name: &str) -> serde_json::Value;
    /// The job file `name` read as JSON lines (legovmm's `--events` log), oldest first.
    fn events(&self, name: &str) -> Vec<serde_json::Value>;
    /// Every console of the vNode `name`, oldest first: the consoles `lego_vnode` kept of
    /// launches it restarted after a triple fault (`<name>.tryN.console`), then the last
    /// (`<name>.console`). What a guest did only on its first launch (formatting a fresh
    /// disk) shows in the first of them.
    fn consoles(&self, name: &str) -> String;
    /// The exit status `lego_vnode` recorded for the vNode `name` (`<name>.exit`).
    fn vnode_exit(&self, name: &str) -> i32;
    /// Checks that the disk image `name` came back holding `blocks` blocks of `seed`'s pattern.
    fn assert_disk_holds(&self, name: &str, seed: u64, blocks: u64);
    /// Checks that the vNode `name`'s legovmm exited with `status`, showing its standard
    /// error (`<name>.err`) otherwise.
    fn assert_vnode_exit(&self, name: &str, status: i32);
    /// Checks that the vNode `name`'s guest command exited 0 (`LEGO_RUN_EXIT=0` on
    /// `<name>.console`) and that its legovmm then exited 0.
    fn assert_vnode_ran_clean(&self, name: &str);
}

impl JobFiles for lego_testbed::JobOutput {
    fn text(&self, name: &str) -> String {
        let bytes = self.read_file(name).unwrap_or_else(|e| {
            panic!(
                "the job left no {name}: {}\n{}",
                error_chain(&e),
                self.summary()
            )
        });
        String::from_utf8_lossy(&bytes).into_owned()
    }

    fn json(&self, name: &str) -> serde_json::Value {
        let text = self.text(name);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name} is not JSON ({e}):\n{text}"))
    }

    fn events(&self, name: &str) -> Vec<serde_json::Value> {
        self.text(name)
            .lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("{name} holds a line that is not JSON ({e}): {l}"))
            })
            .collect()
    }

    fn consoles(&self, name: &str) -> String {
        let mut all = String::new();
        for attempt in 1.. {
            match self.read_file(&format!("{name}.try{attempt}.console")) {
                Ok(bytes) => all.push_str(&String::from_utf8_lossy(&bytes)),
                Err(_) => break,
            }
        }
        all + &self.text(&format!("{name}.console"))
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
            .unwrap_or_else(|e| panic!("the disk {name} does not come back: {}", error_chain(&e)));
        let verify = lego_guest_tools::disk::verify_pattern(&back, seed, blocks)
            .unwrap_or_else(|e| panic!("the disk {name} cannot be read: {}", error_chain(&e)));
        assert!(
            matches!(verify, lego_guest_tools::disk::Verify::Ok(_)),
            "the host does not find the guest's writes (seed {seed}) in {name}: {verify:?}"
        );
    }

    fn assert_vnode_exit(&self, name: &str, status: i32) {
        assert_eq!(
            self.vnode_exit(name),
            status,
            "legovmm: {}",
            self.text(&format!("{name}.err"))
        );
    }

    fn assert_vnode_ran_clean(&self, name: &str) {
        let console = self.text(&format!("{name}.console"));
        assert_eq!(marker(&console, "LEGO_RUN_EXIT"), Some("0"), "{console}");
        self.assert_vnode_exit(name, 0);
    }
}

/// A job named `name` running `script` with the guest image (built on first use, in the
/// testbed's default cache) as its files `vmlinuz` and `initramfs.cpio`, killed after
/// `timeout`, whose compute host is retried twice when no vNode starts within 240 s.
pub fn guest_job(name: &str, script: impl Into<String>, timeout: Duration) -> Job {
    let cache = lego_testbed::paths::default_cache();
    let image = lego_testbed::vnode::guest_image(&cache).expect("the guest image builds");
    Job::new(name, script)
        .file(&image.kernel, "vmlinuz")
        .file(&image.initramfs, "initramfs.cpio")
        .timeout(timeout)
        .ready("LEGO_VNODE_START", Duration::from_secs(240), 2)
}

/// Starts a testbed for the legovmm under test, with the compute host's network to this
/// machine when `network` is set, and logs its mode under `label`.
pub fn testbed(label: &str, network: bool) -> Testbed {
    let mut config = TestbedConfig::new(Some(legovmm()));
    config.network = network;
    config.qemu.extra_cmdline = lego_testbed::qemu::VM_HOST_THP.to_string();
    let testbed = Testbed::new(config).expect("the testbed starts");
    eprintln!(
        "{label}: testbed mode {} ({})",
        testbed.mode(),
        testbed.mode_reason()
    );
    testbed
}

/// Runs `job` on `testbed`, logs its summary under `label` and checks that it succeeded.
pub fn run_job(testbed: &Testbed, job: &Job, label: &str) -> JobOutput {
    let out = testbed.run(job).expect("the testbed runs the job");
    eprintln!("{label}: {}", out.summary());
    assert!(out.succeeded(), "the job failed: {}", out.failure_report());
    out
}

/// The cluster's daemons and tools a nested job needs to run a manager, monitors and
/// remote devices beside its vNodes (release builds, see [`release_binary`]).
pub const CLUSTER_BINARIES: [&str; 5] = [
    "lego-vhost-blk",
    "lego-manager",
    "lego-memory-monitor",
    "lego-storage-monitor",
    "legoctl",
];

/// Runs `script` as the guest job `name` (see [`guest_job`]) on a fresh testbed, with a fresh
/// cluster key in `LEGO_CLUSTER_KEY` and [`CLUSTER_BINARIES`] in the job folder; each
/// `(WORD, value)` of `words` is replaced in the script first. Logs under `label` and checks
/// that the job succeeded.
pub fn run_cluster_job(
    name: &str,
    label: &str,
    script: &str,
    words: &[(&str, String)],
    timeout: Duration,
) -> JobOutput {
    let script = words.iter().fold(script.to_string(), |s, (word, value)| {
        s.replace(word, value)
    });
    let script = format!("export LEGO_CLUSTER_KEY={}\n{script}", cluster_key_hex());
    let job = CLUSTER_BINARIES
        .iter()
        .fold(guest_job(name, script, timeout), |job, bin| {
            job.file(release_binary(bin), *bin)
        });
    run_job(&testbed(label, false), &job, label)
}

/// The static `lego-guest-tools` (the one the guest image holds), for jobs that run it on the
/// compute host itself; built on first use into the testbed's default cache.
pub fn static_guest_tools() -> PathBuf {
    let cache = lego_testbed::paths::default_cache();
    lego_image::guest_tools::build(&cache.join("guest-tools-target"))
        .expect("the static guest tools build")
}

/// `tools/vnode-bridge.sh`, which sets up a compute host's bridge for its vNodes.
pub fn vnode_bridge_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tools/vnode-bridge.sh")
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

/// Defines `fn $name() -> &'static $ty`: the value `$init` returns, shared by the tests of
/// a file through [`shared`]. The job runs once, and if it fails every test reports that
/// failure (it is not run again).
#[macro_export]
macro_rules! shared_results {
    ($vis:vis fn $name:ident() -> $ty:ty = $init:path) => {
        $vis fn $name() -> &'static $ty {
            static RESULTS: std::sync::OnceLock<Result<$ty, String>> = std::sync::OnceLock::new();
            $crate::shared(&RESULTS, $init)
        }
    };
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
