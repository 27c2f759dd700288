//! Boots the real nested compute host (QEMU TCG, emulated AMD SVM) and checks what jobs
//! get back. Skipped, with a message, where QEMU or its qboot firmware is missing.

use std::path::Path;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use lego_testbed::qemu::{QemuConfig, DEFAULT_BIOS};
use lego_testbed::{Job, Mode, ModeChoice, Outcome, Testbed, TestbedConfig};

/// One compute host at a time: the machine has two cores.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn qemu_present() -> bool {
    let found = std::process::Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found || !Path::new(DEFAULT_BIOS).is_file() {
        eprintln!(
            "skipping: qemu-system-x86_64 or {DEFAULT_BIOS} is missing (install qemu-system-x86)"
        );
        return false;
    }
    true
}

/// A nested testbed without legovmm: these jobs only need the compute host.
fn testbed() -> &'static Testbed {
    static TB: OnceLock<Testbed> = OnceLock::new();
    TB.get_or_init(|| {
        let mut cfg = TestbedConfig::new(None);
        cfg.mode = ModeChoice::Nested;
        cfg.qemu = QemuConfig {
            memory_mib: 512,
            ..QemuConfig::default()
        };
        Testbed::new(cfg).expect("testbed")
    })
}

#[test]
fn compute_host_has_kvm_and_returns_exit_status_and_files() {
    if !qemu_present() {
        return;
    }
    let _g = serial();
    let tb = testbed();
    assert_eq!(tb.mode(), Mode::Nested);
    let input = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(input.path(), "payload\n").unwrap();
    let job = Job::new(
        "test-kvm",
        "test -c /dev/kvm && echo kvm-present > result.txt\n\
         cat input.txt >> result.txt\n\
         echo \"$JOB_DIR $LEGO_TESTBED_MODE\" >> result.txt\n\
         exit 3\n",
    )
    .file(input.path(), "input.txt")
    .timeout(Duration::from_secs(180));
    let out = tb.run(&job).unwrap();
    assert_eq!(out.outcome, Outcome::Completed, "{}", out.console);
    assert_eq!(out.l1_kvm, Some(true), "{}", out.console);
    assert_eq!(out.job_exit, Some(3));
    assert_eq!(out.tries, 1);
    assert!(out.l1_init_after.is_some());
    let result = String::from_utf8(out.read_file("result.txt").unwrap()).unwrap();
    assert_eq!(result, "kvm-present\npayload\n/mnt/job nested\n");
    assert!(out.read_file("absent.txt").is_err());
    eprintln!("{}", out.summary());
}

#[test]
fn a_hung_job_is_killed_at_its_timeout() {
    if !qemu_present() {
        return;
    }
    let _g = serial();
    let job =
        Job::new("test-hang", "echo going-to-hang\nsleep 1000\n").timeout(Duration::from_secs(25));
    let out = testbed().run(&job).unwrap();
    assert_eq!(out.outcome, Outcome::TimedOut, "{}", out.console);
    assert_eq!(out.job_exit, None);
    assert!(out.duration < Duration::from_secs(35), "{:?}", out.duration);
    assert!(out.console.contains("going-to-hang"), "{}", out.console);
}

#[test]
fn a_missed_ready_marker_is_retried_and_counted() {
    if !qemu_present() {
        return;
    }
    let _g = serial();
    let job = Job::new("test-not-ready", "sleep 1000\n")
        .timeout(Duration::from_secs(120))
        .ready("NEVER_PRINTED", Duration::from_secs(12), 1);
    let out = testbed().run(&job).unwrap();
    assert_eq!(out.outcome, Outcome::NotReady, "{}", out.console);
    assert_eq!(out.tries, 2);
}
