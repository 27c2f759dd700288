//! Boots the real nested compute host (QEMU TCG, emulated AMD SVM) and checks what jobs
//! get back. Skipped, with a message, where QEMU or its qboot firmware is missing; failed for
//! that under CI.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use lego_testbed::qemu::{QemuConfig, DEFAULT_BIOS};
use lego_testbed::{Job, Mode, ModeChoice, Outcome, Testbed, TestbedConfig};
use lego_testkit::prerequisite::require;

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
    require(
        &format!("qemu-system-x86_64 or {DEFAULT_BIOS} (Debian package qemu-system-x86)"),
        found && Path::new(DEFAULT_BIOS).is_file(),
    )
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

#[test]
fn a_compute_host_that_dies_under_the_job_is_retried() {
    if !qemu_present() {
        return;
    }
    let _g = serial();
    // The first try crashes the compute host's kernel (as a TCG or nested-SVM fault would);
    // the retry gets a fresh host and a fresh job disk.
    let job = Job::new(
        "test-host-dies",
        "echo \"try $LEGO_TESTBED_TRY\" > try.txt; sync\n\
         if [ \"$LEGO_TESTBED_TRY\" = 1 ]; then echo c > /proc/sysrq-trigger; sleep 60; fi\n\
         echo survived > result.txt\n",
    )
    .timeout(Duration::from_secs(120))
    .ready("LEGO_L1_DISK", Duration::from_secs(60), 1);
    let out = testbed().run(&job).unwrap();
    assert_eq!(out.outcome, Outcome::Completed, "{}", out.failure_report());
    assert_eq!(out.tries, 2, "{}", out.failure_report());
    assert_eq!(out.read_file("try.txt").unwrap(), b"try 2\n");
    assert_eq!(out.read_file("result.txt").unwrap(), b"survived\n");
}

#[test]
fn a_job_that_kills_its_host_on_every_try_is_a_host_failure() {
    if !qemu_present() {
        return;
    }
    let _g = serial();
    let job = Job::new(
        "test-host-dies-always",
        "echo c > /proc/sysrq-trigger; sleep 60\n",
    )
    .timeout(Duration::from_secs(120))
    .ready("LEGO_L1_DISK", Duration::from_secs(60), 1);
    let out = testbed().run(&job).unwrap();
    assert_eq!(out.outcome, Outcome::HostFailed, "{}", out.console);
    assert_eq!(out.tries, 2);
    assert!(out.host_exit.is_some(), "{}", out.summary());
    assert!(
        out.summary().contains("compute host's QEMU exited"),
        "{}",
        out.summary()
    );
    assert!(
        out.failure_report().contains("Kernel panic"),
        "{}",
        out.failure_report()
    );
}

/// Starts a line echo server on this machine's 127.0.0.1 (a free port): each connection
/// gets its first line back and is closed; every line received is also sent to the
/// returned channel.
fn echo_server() -> (u16, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(20)));
            let mut line = String::new();
            let Ok(mut reader) = conn.try_clone().map(BufReader::new) else {
                continue;
            };
            if reader.read_line(&mut line).is_ok() {
                let _ = conn.write_all(line.as_bytes());
                let _ = tx.send(line);
            }
        }
    });
    (port, rx)
}

#[test]
fn the_network_reaches_a_server_on_the_host_loopback() {
    if !qemu_present() {
        return;
    }
    let _g = serial();
    let (port, received) = echo_server();
    let token = format!(
        "lego-token-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    let script = format!(
        "echo \"host=$LEGO_HOST_ADDR\"\n\
         echo {token} | nc -w 10 \"$LEGO_HOST_ADDR\" {port} > reply.txt\n\
         echo \"nc=$?\"\n\
         ip route > routes.txt\n"
    );
    let job = Job::new("test-net", script)
        .network(true)
        .timeout(Duration::from_secs(50));
    let out = testbed().run(&job).unwrap();
    assert_eq!(out.outcome, Outcome::Completed, "{}", out.console);
    assert_eq!(out.l1_net, Some(true), "{}", out.console);
    assert!(
        out.console
            .contains("LEGO_L1_NET=up addr=10.0.2.15 host=10.0.2.2"),
        "{}",
        out.console
    );
    assert!(out.console.contains("host=10.0.2.2\n"), "{}", out.console);
    let reply = String::from_utf8(out.read_file("reply.txt").unwrap()).unwrap();
    assert_eq!(reply, format!("{token}\n"), "{}", out.console);
    assert_eq!(
        received.recv_timeout(Duration::from_secs(1)).unwrap(),
        format!("{token}\n")
    );
    // Only the slirp link is routed: nothing can be sent past this machine.
    let routes = String::from_utf8(out.read_file("routes.txt").unwrap()).unwrap();
    assert!(routes.contains("10.0.2.0/24 dev eth0"), "{routes}");
    assert!(!routes.contains("default"), "{routes}");
    eprintln!("{}", out.summary());
}

#[test]
fn without_the_network_there_is_no_nic() {
    if !qemu_present() {
        return;
    }
    let _g = serial();
    let job = Job::new(
        "test-no-net",
        "ls /sys/class/net > nics.txt\necho \"host=${LEGO_HOST_ADDR-unset}\"\n",
    )
    .timeout(Duration::from_secs(50));
    let out = testbed().run(&job).unwrap();
    assert_eq!(out.outcome, Outcome::Completed, "{}", out.console);
    assert_eq!(out.job_exit, Some(0), "{}", out.console);
    assert_eq!(out.l1_net, None, "{}", out.console);
    assert!(!out.console.contains("LEGO_L1_NET"), "{}", out.console);
    assert!(out.console.contains("host=unset"), "{}", out.console);
    let nics = String::from_utf8(out.read_file("nics.txt").unwrap()).unwrap();
    assert_eq!(nics.trim(), "lo", "{nics}");
}
