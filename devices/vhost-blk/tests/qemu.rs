//! A real Linux guest under QEMU (TCG, q35, `vhost-user-blk-pci`) against the daemon: with the
//! file store it writes a pattern and verifies it in a second boot, reading its device serial
//! from sysfs and using two queues; with remote memory the guest's init turns the device into
//! swap by itself (by its serial) and a memory test larger than the guest's RAM passes; with a
//! remote disk the init formats it on first boot and mounts it at /mnt/remote, and a file
//! written there is found by a second boot through a restarted daemon; and QEMU's own
//! reconnection (`reconnect-ms`) to a remote memory daemon killed with SIGKILL mid-swap and
//! started again loses no page and shows the guest no error. Skipped, with the
//! reason printed, when QEMU or the guest image (`cargo run -p lego-image -- build`) is
//! missing, and failed for that under CI.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::Daemon;
use lego_testkit::prerequisite::require;

/// A whole boot may take this long before the test fails (a boot takes ~3 s here).
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);

/// The guest kernel and initramfs, if built; else what is missing.
fn guest_image() -> Result<(PathBuf, PathBuf), String> {
    let cache = match std::env::var_os("LEGO_CACHE") {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache"),
    };
    let kernel = cache.join("guest/vmlinuz");
    let initrd = cache.join("guest/initramfs.cpio");
    if kernel.is_file() && initrd.is_file() {
        Ok((kernel, initrd))
    } else {
        Err(format!(
            "the guest image in {} (build it with `cargo run -p lego-image -- build`)",
            cache.display()
        ))
    }
}

fn qemu() -> Result<(), String> {
    match Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(s) if s.success() => Ok(()),
        _ => Err("qemu-system-x86_64 (Debian package qemu-system-x86)".into()),
    }
}

/// The guest image if the test can run; else skips saying what is missing (fails under CI).
fn prerequisites() -> Option<(PathBuf, PathBuf)> {
    match qemu().and_then(|()| guest_image()) {
        Ok(img) => Some(img),
        Err(missing) => {
            require(&missing, false);
            None
        }
    }
}

/// A guest's CPUs, MiB of RAM and device queues.
type Shape = (u32, u32, u16);

/// The guest most tests boot: one CPU, 128 MiB, one queue.
const SMALL: Shape = (1, 128, 1);

/// Boots a guest of `shape` against `daemon` running `run`; returns its console.
fn boot(img: &(PathBuf, PathBuf), dir: &Path, daemon: &Daemon, shape: Shape, run: &str) -> String {
    boot_on(img, dir, &daemon.socket, shape, run, "")
}

/// [`boot`] against the backend at `socket`, with `chardev` appended to QEMU's chardev
/// options (e.g. `,reconnect-ms=100`).
fn boot_on(
    img: &(PathBuf, PathBuf),
    dir: &Path,
    socket: &Path,
    shape: Shape,
    run: &str,
    chardev: &str,
) -> String {
    let (cpus, mem_mib, queues) = shape;
    let console = dir.join(format!("console-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&console);
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg",
            "-M",
            "q35",
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
        ])
        .args(["-smp", &cpus.to_string(), "-m", &format!("{mem_mib}M")])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-object")
        .arg(format!(
            "memory-backend-memfd,id=mem,size={mem_mib}M,share=on"
        ))
        .args(["-machine", "memory-backend=mem"])
        .arg("-chardev")
        .arg(format!("socket,id=blk,path={}{chardev}", socket.display()))
        .arg("-device")
        .arg(format!(
            "vhost-user-blk-pci,chardev=blk,num-queues={queues}"
        ))
        .arg("-kernel")
        .arg(&img.0)
        .arg("-initrd")
        .arg(&img.1)
        .arg("-append")
        .arg(format!("console=ttyS0 quiet panic=-1 lego.run=\"{run}\""))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start qemu");
    let deadline = Instant::now() + BOOT_TIMEOUT;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for qemu") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let text = std::fs::read_to_string(&console).unwrap_or_default();
            panic!("the guest did not finish within {BOOT_TIMEOUT:?}; console:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = std::fs::read_to_string(&console).unwrap_or_default();
    assert!(
        status.success(),
        "qemu exited with {status}; console:\n{text}"
    );
    text
}

fn assert_has(console: &str, line: &str) {
    assert!(
        console
            .lines()
            .any(|l| l.trim_end() == line || l.starts_with(line)),
        "the console lacks '{line}':\n{console}"
    );
}

fn assert_lacks(console: &str, text: &str) {
    assert!(
        !console.contains(text),
        "the console has '{text}':\n{console}"
    );
}

#[test]
fn linux_guest_uses_the_file_store_with_two_queues() {
    let Some(img) = prerequisites() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = dir.path().join("disk.img");
    let daemon = Daemon::start_file(dir.path(), &disk, "64M", &["--queues", "2"]);
    let boot_here = |shape: Shape, run: &str| boot(&img, dir.path(), &daemon, shape, run);
    let console = boot_here(
        (2, 256, 2),
        "echo SERIAL=$(cat /sys/block/vda/serial); echo MQ=$(ls /sys/block/vda/mq | wc -l); lego-guest-tools disk-write /dev/vda --seed 5 --blocks 512",
    );
    assert_has(&console, "SERIAL=lego-local:disk.img");
    // A local disk is left alone by the init.
    assert_lacks(&console, "LEGO_SWAP_ON");
    assert_lacks(&console, "LEGO_REMOTE_DISK");
    assert_lacks(&console, "LEGO_ERROR");
    assert_has(&console, "MQ=2");
    assert_has(&console, "LEGO_DISK_WRITE_OK");
    assert_has(&console, "LEGO_RUN_EXIT=0");
    // A second guest, through a new frontend connection, finds the data.
    let console = boot_here(
        (1, 256, 1),
        "lego-guest-tools disk-verify /dev/vda --seed 5 --blocks 512",
    );
    assert_has(&console, "LEGO_DISK_VERIFY_OK");
    assert_has(&console, "LEGO_RUN_EXIT=0");
    assert!(daemon.terminate().success());
}

#[test]
fn linux_guest_swaps_to_remote_memory() {
    let Some(img) = prerequisites() else { return };
    let cluster = Cluster::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start_remote_memory(dir.path(), &cluster, "9", "256M");
    let console = boot(
        &img,
        dir.path(),
        &daemon,
        SMALL,
        // No mkswap or swapon here: the init does it, recognising the device by its serial.
        "echo SERIAL=$(cat /sys/block/vda/serial); lego-guest-tools memtest --mib 160 --seed 3 && grep SwapTotal /proc/meminfo",
    );
    assert_has(&console, "SERIAL=lego-remote-memory");
    assert_has(&console, "LEGO_SWAP_ON dev=/dev/vda size_kb=262144");
    assert_lacks(&console, "LEGO_ERROR");
    assert_has(&console, "LEGO_MEMTEST pages=40960 bad=0 ");
    assert_has(&console, "LEGO_RUN_EXIT=0");
    let stats = cluster.pages.stats();
    let stored = stats
        .per_vnode
        .iter()
        .find(|(v, _)| *v == 9)
        .map_or(0, |(_, n)| *n);
    assert!(
        stored > 1000,
        "only {stored} pages of vNode 9 reached the memory monitor"
    );
    eprintln!("remote memory pages stored after the memtest: {stored}");
    assert!(daemon.terminate().success());
}

#[test]
fn linux_guest_under_qemu_reconnects_to_a_restarted_backend_without_errors() {
    let Some(img) = prerequisites() else { return };
    let cluster = Cluster::start();
    let key = cluster.key_hex();
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("memory.state");
    let args = [
        "--store",
        "remote-memory",
        "--manager",
        cluster.manager_addr.as_str(),
        "--vnode",
        "12",
        "--size",
        "256M",
        "--state-file",
        state.to_str().expect("utf-8"),
    ];
    let start = || {
        let _ = std::fs::remove_file(dir.path().join("blk.sock"));
        Daemon::start_env(dir.path(), &args, &[("LEGO_CLUSTER_KEY", &key)])
    };
    let daemon = start();
    let socket = daemon.socket.clone();
    let console = std::thread::scope(|s| {
        let guest = s.spawn(|| {
            boot_on(
                &img,
                dir.path(),
                &socket,
                SMALL,
                "lego-guest-tools memtest --mib 160 --seed 4",
                ",reconnect-ms=100",
            )
        });
        // Kill the backend (SIGKILL) once the guest swapped out 16 MiB, then start it again.
        let deadline = Instant::now() + BOOT_TIMEOUT;
        while cluster.pages.vnode_pages(12) < 4096 {
            assert!(
                Instant::now() < deadline,
                "the guest never swapped 16 MiB out"
            );
            assert!(!guest.is_finished(), "the guest ended before the kill");
            std::thread::sleep(Duration::from_millis(20));
        }
        daemon.kill();
        eprintln!(
            "killed the backend after {} pages",
            cluster.pages.vnode_pages(12)
        );
        let again = start();
        let console = guest.join().expect("the guest thread");
        (console, again)
    });
    let (console, daemon) = console;
    assert_lacks(&console, "LEGO_ERROR");
    for sign in ["I/O error", "Read-error", "Write-error", "Bad page"] {
        assert_lacks(&console, sign);
    }
    assert_has(&console, "LEGO_MEMTEST pages=40960 bad=0 ");
    assert_has(&console, "LEGO_RUN_EXIT=0");
    assert!(daemon.terminate().success());
}

#[test]
fn linux_guest_keeps_a_file_on_the_remote_disk() {
    let Some(img) = prerequisites() else { return };
    let cluster = Cluster::start();
    let key = cluster.key_hex();
    let dir = tempfile::tempdir().expect("tempdir");
    let manager = cluster.manager_addr.as_str();
    // A daemon in its own folder `name` of `dir`, creating the volume or not, and a guest
    // booted against it running `run`.
    let start_and_boot = |name: &str, create: bool, run: &str| {
        let mut args = vec![
            "--store",
            "remote-disk",
            "--manager",
            manager,
            "--vnode",
            "11",
            "--volume",
            "data",
            "--size",
            "32M",
        ];
        if !create {
            args.push("--no-create");
        }
        let sub = dir.path().join(name);
        std::fs::create_dir(&sub).expect("mkdir");
        let daemon = Daemon::start_env(&sub, &args, &[("LEGO_CLUSTER_KEY", &key)]);
        let console = boot(&img, &sub, &daemon, SMALL, run);
        (daemon, console)
    };
    let (daemon, console) = start_and_boot(
        "first",
        true,
        "echo SERIAL=$(cat /sys/block/vda/serial); echo kept-by-the-storage-monitor > /mnt/remote/proof.txt && echo LISTED=$(ls /mnt/remote)",
    );
    assert_has(&console, "SERIAL=lego-remote-disk:dat");
    assert_has(&console, "LEGO_REMOTE_DISK_FORMATTED dev=/dev/vda");
    assert_has(
        &console,
        "LEGO_REMOTE_DISK_MOUNTED dev=/dev/vda path=/mnt/remote",
    );
    assert_has(&console, "LISTED=lost+found proof.txt");
    assert_has(&console, "LEGO_RUN_EXIT=0");
    assert_has(
        &console,
        "LEGO_REMOTE_DISK_UNMOUNTED dev=/dev/vda path=/mnt/remote",
    );
    assert_lacks(&console, "LEGO_ERROR");
    assert!(daemon.terminate().success());

    // A new daemon, which must find the volume on the storage monitor, and a new guest: the
    // init mounts the existing filesystem without formatting it, and the file is there. At
    // power-off the init still unmounts it although a leftover process holds it.
    let (daemon, console) = start_and_boot(
        "second",
        false,
        // The sleep left behind keeps the mount busy: the init must end it to unmount.
        "echo FOUND=$(cat /mnt/remote/proof.txt); (cd /mnt/remote && exec sleep 600) &",
    );
    assert_lacks(&console, "LEGO_REMOTE_DISK_FORMATTED");
    assert_has(
        &console,
        "LEGO_REMOTE_DISK_MOUNTED dev=/dev/vda path=/mnt/remote",
    );
    assert_has(&console, "FOUND=kept-by-the-storage-monitor");
    assert_has(
        &console,
        "lego-init: /mnt/remote is busy; ending all processes",
    );
    assert_has(&console, "LEGO_RUN_EXIT=0");
    assert_has(
        &console,
        "LEGO_REMOTE_DISK_UNMOUNTED dev=/dev/vda path=/mnt/remote",
    );
    assert_lacks(&console, "LEGO_ERROR");
    assert!(daemon.terminate().success());
}
