//! A stock Debian kernel booted by legovmm, on this host's KVM when it can boot stock
//! kernels and otherwise inside the nested-KVM testbed's compute host. One compute-host
//! boot runs several vNodes in turn (booting the compute host under TCG is the slow part);
//! each test below asserts on its own vNode's results.

use lego_testbed::JobOutput;
use lego_tests::{marker, JobFiles};
use std::path::PathBuf;
use std::time::Duration;

const DISK_BLOCKS: u64 = 256;
const MEMORY_MIB: u64 = 256;

/// The job script. `lego_vnode` (the testbed's shell library) restarts a vNode whose guest
/// does not reach its init: QEMU's emulated SVM occasionally hangs an L2 at CPU bring-up.
const SCRIPT: &str = r#"
. "$LEGO_TESTBED_LIB"
lego_vnode boot 3 150 --log-level info --kernel vmlinuz --initrd initramfs.cpio --memory 256M --vcpus 2 --disk data.img \
    --cmdline 'console=ttyS0 quiet lego.run="lego-guest-tools sysinfo && lego-guest-tools disk-verify /dev/vda --seed 1 --blocks 256 && lego-guest-tools disk-write /dev/vda --seed 2 --blocks 256"'
lego_vnode reboot 3 150 --log-level info --config vnode.toml
lego_vnode panic 3 150 --log-level info --kernel vmlinuz --initrd initramfs.cpio --memory 128M \
    --cmdline 'console=ttyS0 quiet lego.run="echo c > /proc/sysrq-trigger"'
exit 0
"#;

const CONFIG: &str = r#"
kernel = "vmlinuz"
initrd = "initramfs.cpio"
memory = "128M"
vcpus = 1
cmdline = 'console=ttyS0 quiet lego.run="reboot -f"'
"#;

struct Results {
    out: JobOutput,
    _dir: tempfile::TempDir,
}

lego_tests::shared_results!(fn results() -> Results = run_job);

fn run_job() -> Results {
    let job = lego_tests::guest_job("vnode-boot", SCRIPT, Duration::from_secs(900));
    let dir = tempfile::tempdir().unwrap();
    let disk: PathBuf = dir.path().join("data.img");
    lego_guest_tools::disk::write_pattern(&disk, 1, DISK_BLOCKS).expect("the host writes the disk");
    let config = dir.path().join("vnode.toml");
    std::fs::write(&config, CONFIG).unwrap();

    let testbed = lego_tests::testbed("vnode_boot", false);
    let job = job.file(&disk, "data.img").file(&config, "vnode.toml");
    let out = lego_tests::run_job(&testbed, &job, "vnode_boot");
    Results { out, _dir: dir }
}

#[test]
fn guest_sees_two_vcpus_and_the_requested_memory_and_exits_zero() {
    let r = results();
    let console = r.out.text("boot.console");
    assert_eq!(marker(&console, "LEGO_CPUS"), Some("2"), "{console}");
    let mem_kb: u64 = marker(&console, "LEGO_MEM_TOTAL_KB")
        .expect("MemTotal")
        .parse()
        .unwrap();
    // MemTotal is RAM less what the kernel keeps for itself: most of 256 MiB, never more.
    assert!(
        mem_kb <= MEMORY_MIB * 1024,
        "MemTotal {mem_kb} kB exceeds the guest's RAM"
    );
    assert!(
        mem_kb >= MEMORY_MIB * 1024 * 3 / 4,
        "MemTotal {mem_kb} kB is far below 256 MiB"
    );
    r.out.assert_vnode_ran_clean("boot");
    assert!(r.out.text("boot.err").contains("the guest powered off"));
}

#[test]
fn the_virtio_disk_is_read_and_written_through() {
    let r = results();
    let console = r.out.text("boot.console");
    assert!(
        console.contains("LEGO_DISK_VERIFY_OK"),
        "the guest could not read what the host wrote:\n{console}"
    );
    assert!(console.contains("LEGO_DISK_WRITE_OK"), "{console}");
    r.out.assert_disk_holds("data.img", 2, DISK_BLOCKS);
}

#[test]
fn a_guest_reboot_ends_legovmm_with_status_zero_and_config_files_work() {
    let r = results();
    r.out.assert_vnode_exit("reboot", 0);
    assert!(
        r.out.text("reboot.err").contains("the guest rebooted"),
        "{}",
        r.out.text("reboot.err")
    );
    assert!(r.out.text("reboot.console").contains("LEGO_GUEST_READY"));
}

#[test]
fn a_guest_panic_ends_legovmm_nonzero_with_the_reason() {
    let r = results();
    let err = r.out.text("panic.err");
    r.out.assert_vnode_exit("panic", 3);
    assert!(
        err.contains("the guest crashed") && err.contains("panic"),
        "{err}"
    );
}
