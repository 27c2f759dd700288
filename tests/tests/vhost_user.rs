//! legovmm's vhost-user-blk frontend with a real guest: one compute-host boot (nested KVM
//! where this host's KVM cannot boot stock kernels) runs a vNode whose only disk is served
//! by our backend `lego-vhost-blk`, then, when `qemu-storage-daemon` is installed, one served
//! by QEMU's backend, which we did not write.

use lego_testbed::disk;
use lego_testbed::JobOutput;
use lego_testkit::prerequisite::require;
use lego_tests::JobFiles;
use std::path::{Path, PathBuf};
use std::time::Duration;

const DISK_BLOCKS: u64 = 256;
const QSD: &str = "/usr/bin/qemu-storage-daemon";
const LOADER: &str = "ld-linux-x86-64.so.2";

/// The job script. `lego_vnode` (the testbed's shell library) restarts a vNode whose guest
/// does not reach its init. Both backends serve the next frontend after a disconnect, so a
/// retried vNode finds its disk again.
const SCRIPT: &str = r#"
. "$LEGO_TESTBED_LIB"
wait_socket() {
    n=0
    while [ ! -S "$1" ] && [ "$n" -lt 200 ]; do sleep 0.1; n=$((n + 1)); done
    [ -S "$1" ]
}
stop_backend() {
    kill "$1" 2> /dev/null
    wait "$1"
    echo $? > "$2.exit"
}

./lego-vhost-blk --socket blk.sock --store file --path data.img > backend.log 2>&1 &
backend=$!
if wait_socket blk.sock; then
    lego_vnode local 3 150 --log-level info --kernel vmlinuz --initrd initramfs.cpio --memory 256M --vcpus 1 \
        --vhost-user-blk socket=blk.sock \
        --cmdline 'console=ttyS0 quiet lego.run="lego-guest-tools disk-verify /dev/vda --seed 1 --blocks 256 && lego-guest-tools disk-write /dev/vda --seed 2 --blocks 256 && cat /sys/block/vda/serial && echo"'
else
    echo "LEGO_BACKEND_NO_SOCKET name=local"
fi
stop_backend "$backend" backend
cat backend.log

# A backend that dies under a running vNode: legovmm says so and keeps running.
./lego-vhost-blk --socket dead.sock --store file --path dead.img > dead-backend.log 2>&1 &
dead_backend=$!
if wait_socket dead.sock; then
    lego_vnode dead 3 150 --log-level info --kernel vmlinuz --initrd initramfs.cpio --memory 256M --vcpus 1 \
        --vhost-user-blk socket=dead.sock \
        --cmdline 'console=ttyS0 quiet lego.run="sleep 4 && lego-guest-tools disk-write /dev/vda --seed 6 --blocks 256 && sync && sleep 1000"' &
    vnode=$!
    n=0
    while ! grep -q LEGO_GUEST_READY dead.console 2> /dev/null && [ "$n" -lt 4600 ]; do
        sleep 0.1
        n=$((n + 1))
    done
    kill -9 "$dead_backend"
    n=0
    while ! grep -q "closed its connection" dead.err && [ "$n" -lt 100 ]; do
        sleep 0.1
        n=$((n + 1))
    done
    # Give the guest time to try its write on the dead disk.
    sleep 8
    if kill -0 "$(cat dead.pid)" 2> /dev/null; then echo yes > dead.alive; else echo no > dead.alive; fi
    kill "$(cat dead.pid)"
    wait "$vnode"
else
    echo "LEGO_BACKEND_NO_SOCKET name=dead"
    kill "$dead_backend"
fi
wait "$dead_backend"

if [ -e qemu-storage-daemon ]; then
    ./ld-linux-x86-64.so.2 --library-path "$JOB_DIR" ./qemu-storage-daemon \
        --blockdev driver=file,node-name=f,filename=qsd.img \
        --export type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path=qsd.sock,writable=on \
        > qsd.log 2>&1 &
    qsd=$!
    if wait_socket qsd.sock; then
        lego_vnode qsd 3 150 --log-level info --kernel vmlinuz --initrd initramfs.cpio --memory 256M --vcpus 1 \
            --vhost-user-blk socket=qsd.sock \
            --cmdline 'console=ttyS0 quiet lego.run="lego-guest-tools disk-verify /dev/vda --seed 3 --blocks 256 && lego-guest-tools disk-write /dev/vda --seed 4 --blocks 256"'
    else
        echo "LEGO_BACKEND_NO_SOCKET name=qsd"
    fi
    stop_backend "$qsd" qsd
    cat qsd.log
fi
exit 0
"#;

struct Results {
    out: JobOutput,
    qsd: bool,
    _dir: tempfile::TempDir,
}

/// Our backend: `$LEGO_VHOST_BLK_BIN`, else the workspace's release build.
fn lego_vhost_blk() -> PathBuf {
    let path = std::env::var_os("LEGO_VHOST_BLK_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            lego_testbed::paths::workspace_root().join("target/release/lego-vhost-blk")
        });
    assert!(
        path.is_file(),
        "{} is not built; run `cargo build --release -p lego-vhost-blk` first",
        path.display()
    );
    path
}

/// qemu-storage-daemon and every library it loads (the loader included), each as a job
/// file under its own file name, the real file (symlinks resolved); empty when QEMU's
/// storage daemon is not installed.
fn qsd_files() -> Vec<(PathBuf, String)> {
    if !Path::new(QSD).is_file() {
        return Vec::new();
    }
    let real = |p: &Path| std::fs::canonicalize(p).expect("a library path resolves");
    let mut files = vec![(real(Path::new(QSD)), "qemu-storage-daemon".to_string())];
    for lib in disk::libraries(Path::new(QSD)).expect("ldd lists qemu-storage-daemon's libraries") {
        let name = lib
            .file_name()
            .expect("a library has a file name")
            .to_string_lossy()
            .into_owned();
        assert!(
            files.iter().all(|(_, n)| *n != name),
            "two libraries named {name}"
        );
        files.push((real(&lib), name));
    }
    assert!(
        files.iter().any(|(_, n)| n == LOADER),
        "ldd named no {LOADER} for {QSD}"
    );
    files
}

lego_tests::shared_results!(fn results() -> Results = run_job);

fn run_job() -> Results {
    let job = lego_tests::guest_job("vhost-user", SCRIPT, Duration::from_secs(900));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data.img");
    lego_guest_tools::disk::write_pattern(&data, 1, DISK_BLOCKS).expect("the host writes the disk");
    let dead_disk = dir.path().join("dead.img");
    lego_guest_tools::disk::write_pattern(&dead_disk, 5, DISK_BLOCKS)
        .expect("the host writes the disk");
    let qsd_disk = dir.path().join("qsd.img");
    lego_guest_tools::disk::write_pattern(&qsd_disk, 3, DISK_BLOCKS)
        .expect("the host writes the disk");

    let testbed = lego_tests::testbed("vhost_user", false);
    let mut job = job
        .file(lego_vhost_blk(), "lego-vhost-blk")
        .file(&data, "data.img")
        .file(&dead_disk, "dead.img");
    let qsd = qsd_files();
    let with_qsd = !qsd.is_empty();
    if with_qsd {
        job = job.file(&qsd_disk, "qsd.img");
        for (path, name) in qsd {
            job = job.file(path, name);
        }
    } else {
        eprintln!(
            "vhost_user: {QSD} is not installed; the interop case will skip (or fail under CI)"
        );
    }
    let out = lego_tests::run_job(&testbed, &job, "vhost_user");
    Results {
        out,
        qsd: with_qsd,
        _dir: dir,
    }
}

#[test]
fn a_guest_reads_and_writes_a_disk_served_by_lego_vhost_blk() {
    let r = results();
    let console = r.out.text("local.console");
    assert!(
        console.contains("LEGO_DISK_VERIFY_OK"),
        "the guest could not read what the host wrote:\n{console}\n{}",
        r.out.text("local.err")
    );
    assert!(console.contains("LEGO_DISK_WRITE_OK"), "{console}");
    assert!(
        console.lines().any(|l| l.trim() == "lego-local:data.img"),
        "the guest did not see the backend's serial:\n{console}"
    );
    r.out.assert_vnode_ran_clean("local");
    assert!(
        r.out.text("local.err").contains("the guest powered off"),
        "{}",
        r.out.text("local.err")
    );
    r.out.assert_disk_holds("data.img", 2, DISK_BLOCKS);
    assert_eq!(
        r.out.vnode_exit("backend"),
        0,
        "lego-vhost-blk did not stop cleanly on SIGTERM: {}",
        r.out.text("backend.log")
    );
}

#[test]
fn a_backend_that_dies_is_reported_and_legovmm_keeps_running() {
    let r = results();
    let err = r.out.text("dead.err");
    assert!(
        r.out.text("dead.console").contains("LEGO_GUEST_READY"),
        "the guest never came up:\n{}\n{err}",
        r.out.text("dead.console")
    );
    assert!(
        err.contains("the vhost-user backend at dead.sock closed its connection; reconnecting"),
        "legovmm did not report the dead backend: {err}"
    );
    assert_eq!(
        r.out.text("dead.alive").trim(),
        "yes",
        "legovmm did not outlive its backend: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    // Stopped by the job's SIGTERM, as a VMM with a live guest is.
    r.out.assert_vnode_exit("dead", 143);
    assert!(err.contains("stopped by signal 15"), "{err}");
}

#[test]
fn a_guest_reads_and_writes_a_disk_served_by_qemu_storage_daemon() {
    let r = results();
    if !require(
        &format!("{QSD} (Debian package qemu-utils from bookworm-backports)"),
        r.qsd,
    ) {
        return;
    }
    let console = r.out.text("qsd.console");
    let err = r.out.text("qsd.err");
    assert!(
        console.contains("LEGO_DISK_VERIFY_OK"),
        "the guest could not read what the host wrote:\n{console}\n{err}\n{}",
        r.out.text("qsd.log")
    );
    assert!(console.contains("LEGO_DISK_WRITE_OK"), "{console}");
    r.out.assert_vnode_ran_clean("qsd");
    r.out.assert_disk_holds("qsd.img", 4, DISK_BLOCKS);
}
