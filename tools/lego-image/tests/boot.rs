//! Boots the built guest image under QEMU (TCG, `-M pc`) and checks the init's markers and a
//! disk pattern round trip: the host writes seed 1, the guest verifies it and writes seed 2,
//! the host verifies seed 2. Skips (saying why) without apt lists or QEMU, and fails for that
//! under CI.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{lego_image, skip_without_apt, stderr, temp_cache};
use lego_guest_tools::disk::{self, Verify};
use lego_testkit::prerequisite::require;

const QEMU: &str = "qemu-system-x86_64";

fn have_qemu() -> bool {
    Command::new(QEMU)
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs QEMU until it exits or `limit` passes; returns (console output, exited in time).
fn run_qemu(
    kernel: &Path,
    initrd: &Path,
    disk: &Path,
    append: &str,
    limit: Duration,
) -> (String, bool) {
    let mut child = Command::new(QEMU)
        .args([
            "-accel", "tcg", "-M", "pc", "-cpu", "EPYC", "-smp", "1", "-m", "256",
        ])
        .args([
            "-nographic",
            "-no-reboot",
            "-nodefaults",
            "-serial",
            "stdio",
        ])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(append)
        .arg("-drive")
        .arg(format!("id=d0,file={},format=raw,if=none", disk.display()))
        .args(["-device", "virtio-blk-pci,drive=d0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu starts");
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let mut in_time = false;
    while start.elapsed() < limit {
        if child.try_wait().unwrap().is_some() {
            in_time = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    if !in_time {
        let _ = child.kill();
    }
    let _ = child.wait();
    (reader.join().unwrap(), in_time)
}

#[test]
fn guest_boots_runs_lego_run_and_round_trips_a_disk() {
    if skip_without_apt() {
        return;
    }
    if !require(
        "qemu-system-x86_64 (Debian package qemu-system-x86)",
        have_qemu(),
    ) {
        return;
    }
    let cache = temp_cache();
    let out = lego_image(&["build", "--cache", cache.path().to_str().unwrap()]);
    assert!(out.status.success(), "build failed: {}", stderr(&out));
    let img = lego_image::guest::output_paths(cache.path());

    let disk_img = cache.path().join("disk.img");
    let w = disk::write_pattern(&disk_img, 1, 256).unwrap();
    let append = "console=ttyS0 panic=-1 lego.run=\"lego-guest-tools sysinfo; \
        lego-guest-tools disk-verify /dev/vda --seed 1 --blocks 256 && \
        lego-guest-tools disk-write /dev/vda --seed 2 --blocks 256; \
        lego-guest-tools memtest --mib 16; exit 7\"";
    let (console, in_time) = run_qemu(
        &img.kernel,
        &img.initramfs,
        &disk_img,
        append,
        Duration::from_secs(300),
    );
    let tail: String = console
        .lines()
        .rev()
        .take(30)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    assert!(in_time, "the guest did not power off within 300 s:\n{tail}");
    for marker in [
        "LEGO_GUEST_READY".to_string(),
        "LEGO_CPUS=1".to_string(),
        format!("LEGO_DISK_VERIFY_OK blocks=256 crc={:08x}", w.crc),
        "LEGO_DISK_WRITE_OK blocks=256".to_string(),
        "LEGO_MEMTEST pages=4096 bad=0".to_string(),
        "LEGO_RUN_EXIT=7".to_string(),
    ] {
        assert!(
            console.contains(&marker),
            "no {marker:?} on the console:\n{tail}"
        );
    }
    assert!(!console.contains("lego-init: could not load"), "{tail}");
    match disk::verify_pattern(&disk_img, 2, 256).unwrap() {
        Verify::Ok(r) => assert!(console.contains(&format!("crc={:08x}", r.crc))),
        bad => panic!("the guest's seed-2 write did not reach the disk: {bad:?}"),
    }
}
