//! Hot-attached disks, nested: a vNode boots with one disk and an API socket; `legoctl vm
//! add-disk` attaches a second file while it runs, and the guest (a stock kernel, no
//! guest-side script) finds a new block device by itself and writes a record to it.
//! `legoctl vm remove-device` then detaches it: the guest lets go first (the image's init
//! offlines the slot on the kernel's request), and the device is gone from `vm.info` and from
//! the guest. Added again, it comes back in the same slot with the record on it. A second
//! vNode boots with the file as its disk and reads the record back. Bad
//! requests (a missing file, removing a boot disk or an unknown device) get JSON errors.
//!
//! Then a remote disk: with a manager and a storage monitor beside it, a vNode gets one of its
//! volumes attached at run time (`add-remote-disk`: legovmm starts its backend, which places
//! the new volume); the guest makes a file system on it and writes a file, which a relaunch of
//! the vNode with that volume as its remote disk reads back.
//!
//! Last, remote memory: a vNode with 128 MiB of RAM gets 256 MiB of remote memory at run time
//! (`add-remote-memory`); the image swaps on it by itself, a 192 MiB workload that checks
//! every page runs through it while the device's backend is killed with SIGKILL, and removing
//! the device turns the swap off first.

use lego_testbed::JobOutput;
use lego_tests::{marker, JobFiles};
use std::time::Duration;

const SCRIPT: &str = r#"
. "$LEGO_TESTBED_LIB"
ctl() { ./legoctl vm --api-socket api.sock "$@"; }
# wait_console TEXT: waits (up to 120 s) until the guest printed TEXT.
wait_console() {
    n=0
    while ! grep -q "$1" hot.console 2> /dev/null && [ "$n" -lt 1200 ]; do sleep 0.1; n=$((n + 1)); done
}
# The guest's command (one line: it goes on the kernel command line, so no double quotes).
GUEST="n=0; while [ ! -b /dev/vdb ] && [ \$n -lt 1200 ]; do sleep 0.1; n=\$((n + 1)); done; \
echo LEGO_HOT_SEEN=\$([ -b /dev/vdb ] && echo yes || echo no); cat /sys/block/vdb/serial; echo; \
echo LEGO_RECORD=written-through-a-hot-added-disk > /tmp/record; \
dd if=/tmp/record of=/dev/vdb bs=512 count=1 conv=sync,fsync 2> /dev/null; echo LEGO_HOT_WRITTEN=\$?; \
n=0; while [ -b /dev/vdb ] && [ \$n -lt 1200 ]; do sleep 0.1; n=\$((n + 1)); done; \
echo LEGO_HOT_GONE=\$([ -b /dev/vdb ] && echo no || echo yes); \
n=0; while [ ! -b /dev/vdb ] && [ \$n -lt 1200 ]; do sleep 0.1; n=\$((n + 1)); done; \
echo LEGO_HOT_AGAIN=\$([ -b /dev/vdb ] && echo yes || echo no); head -c 64 /dev/vdb | head -1"
lego_vnode hot 1 200 --log-level info --kernel vmlinuz --initrd initramfs.cpio --memory 256M \
    --vcpus 1 --disk boot.img --api-socket api.sock --events events.jsonl \
    --cmdline "console=ttyS0 quiet lego.run=\"$GUEST\"" &
vnode=$!
wait_console LEGO_GUEST_READY
ctl add-disk --path missing.img > add_missing.txt 2>&1; echo "LEGO_ADD_MISSING_RC=$?"
ctl add-disk --path hot.img > added.json 2>&1; echo "LEGO_ADD_RC=$?"
ctl info > info_added.json 2>&1
wait_console LEGO_HOT_WRITTEN
ctl remove-device --id disk0 > remove_boot.txt 2>&1; echo "LEGO_REMOVE_BOOT_RC=$?"
ctl remove-device --id disk9 > remove_unknown.txt 2>&1; echo "LEGO_REMOVE_UNKNOWN_RC=$?"
ctl remove-device --id disk1 > removed.txt 2>&1; echo "LEGO_REMOVE_RC=$?"
ctl info > info_removed.json 2>&1
wait_console LEGO_HOT_GONE
ctl add-disk --path hot.img > readded.json 2>&1; echo "LEGO_READD_RC=$?"
wait $vnode
lego_vnode back 1 200 --kernel vmlinuz --initrd initramfs.cpio --memory 128M --vcpus 1 \
    --disk hot.img --cmdline 'console=ttyS0 quiet lego.run="head -c 64 /dev/vda | head -1"'

# A remote disk added at run time: a manager and a storage monitor place the vNode's new
# volume; the guest (no boot disk: the new one is vda) makes a file system on it and writes a
# file. Relaunched with the volume as its remote disk (which the image mounts at /mnt/remote),
# the vNode reads it back.
ip link set lo up 2> /dev/null || true
export LEGO_VHOST_BLK_BIN="$JOB_DIR/lego-vhost-blk"
MANAGER=127.0.0.1:7300
mkdir -p state volumes
./lego-manager --state-dir state --listen $MANAGER --heartbeat-ms 200 > manager.log 2>&1 &
manager=$!
./lego-storage-monitor --listen 127.0.0.1:7200 --data-dir volumes --capacity 1G --manager $MANAGER \
    --heartbeat-ms 200 > storage-monitor.log 2>&1 &
storage=$!
n=0
while ! ./legoctl --manager $MANAGER status 2> /dev/null | grep -q alive && [ "$n" -lt 300 ]; do
    sleep 0.1; n=$((n + 1))
done
REMOTE="n=0; while [ ! -b /dev/vda ] && [ \$n -lt 1200 ]; do sleep 0.1; n=\$((n + 1)); done; \
cat /sys/block/vda/serial; echo; mke2fs -q /dev/vda && mkdir -p /mnt/x && mount /dev/vda /mnt/x \
&& echo LEGO_REMOTE_RECORD=kept-by-a-storage-monitor > /mnt/x/record && umount /mnt/x; \
echo LEGO_REMOTE_WRITTEN=\$?"
lego_vnode remote 1 200 --kernel vmlinuz --initrd initramfs.cpio --memory 128M --vcpus 1 \
    --vnode 12 --manager $MANAGER --memory-backing shared --api-socket remote.sock \
    --cmdline "console=ttyS0 quiet lego.run=\"$REMOTE\"" &
remote=$!
n=0
while ! grep -q LEGO_GUEST_READY remote.console 2> /dev/null && [ "$n" -lt 1200 ]; do sleep 0.1; n=$((n + 1)); done
./legoctl vm --api-socket remote.sock add-remote-disk --volume nosuch > add_nosuch.txt 2>&1
echo "LEGO_ADD_NOSUCH_RC=$?"
./legoctl vm --api-socket remote.sock add-remote-disk --volume hotvol --size 16M > remote_added.json 2>&1
echo "LEGO_ADD_REMOTE_RC=$?"
wait $remote
lego_vnode remote_back 1 200 --kernel vmlinuz --initrd initramfs.cpio --memory 128M --vcpus 1 \
    --vnode 12 --manager $MANAGER --remote-disk hotvol \
    --cmdline 'console=ttyS0 quiet lego.run="cat /mnt/remote/record"'

# Remote memory added at run time: a memory monitor joins; a vNode with 128 MiB of RAM and no
# remote memory gets 256 MiB of it through the API. The image swaps on it by itself
# (hotplugd), a workload larger than RAM runs through it, and the hot-added device's backend
# is killed with SIGKILL midway (legovmm's supervisor restarts it, the device reconnects).
# Removing the device turns the swap off first.
./lego-memory-monitor --listen 127.0.0.1:7101 --capacity 1G --manager $MANAGER \
    --heartbeat-ms 200 > memory-monitor.log 2>&1 &
memmon=$!
n=0
while [ "$(./legoctl --manager $MANAGER status 2> /dev/null | grep -c alive)" -lt 2 ] && [ "$n" -lt 300 ]; do
    sleep 0.1; n=$((n + 1))
done
MEMORY="n=0; while ! grep -q /dev/vda /proc/swaps && [ \$n -lt 1200 ]; do sleep 0.1; n=\$((n + 1)); done; \
echo LEGO_HOT_SWAP=\$(grep -c /dev/vda /proc/swaps); lego-guest-tools memtest --mib 192; \
n=0; while grep -q /dev/vda /proc/swaps && [ \$n -lt 1200 ]; do sleep 0.1; n=\$((n + 1)); done; \
echo LEGO_HOT_SWAP_GONE=\$(grep -c /dev/vda /proc/swaps)"
lego_vnode memory 1 200 --log-level info --kernel vmlinuz --initrd initramfs.cpio --memory 128M \
    --vcpus 1 --vnode 13 --manager $MANAGER --memory-backing shared --api-socket memory.sock \
    --events memory-events.jsonl --cmdline "console=ttyS0 quiet lego.run=\"$MEMORY\"" &
memvnode=$!
n=0
while ! grep -q LEGO_GUEST_READY memory.console 2> /dev/null && [ "$n" -lt 1200 ]; do sleep 0.1; n=$((n + 1)); done
mctl() { ./legoctl vm --api-socket memory.sock "$@"; }
mctl add-remote-memory --size 1000k > memory_bad_size.txt 2>&1; echo "LEGO_ADD_MEMORY_BAD_SIZE_RC=$?"
mctl add-remote-memory --size 256M > memory_added.json 2>&1; echo "LEGO_ADD_MEMORY_RC=$?"
mctl add-remote-memory --size 64M > memory_again.txt 2>&1; echo "LEGO_ADD_MEMORY_AGAIN_RC=$?"
# The manager lists the hot-added device with the running vNode (announced every interval).
n=0
while ! ./legoctl --manager $MANAGER vnode list 2> /dev/null | grep -q "remote memory, 256 MiB" && [ "$n" -lt 100 ]; do
    sleep 0.1; n=$((n + 1))
done
./legoctl --manager $MANAGER vnode list > memory_vnodes.txt 2>&1
# The remote memory backend's pid.
backend_pid() { lego_pid_with remote-memory.sock lego-vhost-blk; }
n=0
: > memory_killed.txt
while [ "$n" -lt 3000 ]; do
    w=$(./legoctl --manager $MANAGER monitor-stats --kind memory --addr 127.0.0.1:7101 2> /dev/null \
        | grep -m1 '"pages_written":' | sed 's/[^0-9]//g')
    if [ "${w:-0}" -ge 4096 ] && pid=$(backend_pid); then
        kill -9 "$pid"
        echo "pid=$pid pages_written=$w" > memory_killed.txt
        m=0
        while [ "$m" -lt 300 ]; do
            if new=$(backend_pid) && [ "$new" != "$pid" ]; then echo "restarted=$new" >> memory_killed.txt; break; fi
            sleep 0.1; m=$((m + 1))
        done
        break
    fi
    sleep 0.1; n=$((n + 1))
done
n=0
while ! grep -q LEGO_MEMTEST memory.console 2> /dev/null && [ "$n" -lt 3000 ]; do sleep 0.1; n=$((n + 1)); done
./legoctl --manager $MANAGER monitor-stats --kind memory --addr 127.0.0.1:7101 > memory_stats.json 2>&1
mctl remove-device --id disk0 > memory_removed.txt 2>&1; echo "LEGO_REMOVE_MEMORY_RC=$?"
wait $memvnode
kill $manager $storage $memmon 2> /dev/null
exit 0
"#;

struct Results {
    out: JobOutput,
    _dir: tempfile::TempDir,
}

lego_tests::shared_results!(fn results() -> Results = run_job);

fn run_job() -> Results {
    let dir = tempfile::tempdir().unwrap();
    let boot = dir.path().join("boot.img");
    let hot = dir.path().join("hot.img");
    std::fs::write(&boot, vec![0u8; 4 << 20]).unwrap();
    std::fs::write(&hot, vec![0u8; 4 << 20]).unwrap();
    let script = format!(
        "export LEGO_CLUSTER_KEY={}\n{SCRIPT}",
        lego_tests::cluster_key_hex()
    );
    let job = lego_tests::guest_job("hotplug", script, Duration::from_secs(900))
        .file(&boot, "boot.img")
        .file(&hot, "hot.img")
        .file(lego_tests::release_binary("legoctl"), "legoctl")
        .file(lego_tests::release_binary("lego-manager"), "lego-manager")
        .file(
            lego_tests::release_binary("lego-storage-monitor"),
            "lego-storage-monitor",
        )
        .file(
            lego_tests::release_binary("lego-memory-monitor"),
            "lego-memory-monitor",
        )
        .file(
            lego_tests::release_binary("lego-vhost-blk"),
            "lego-vhost-blk",
        );
    let testbed = lego_tests::testbed("hotplug", false);
    let out = lego_tests::run_job(&testbed, &job, "hotplug");
    Results { out, _dir: dir }
}

#[test]
fn an_added_disk_appears_in_the_guest_and_in_vm_info() {
    let r = results();
    let all = r.out.console.clone();
    assert_eq!(marker(&all, "LEGO_ADD_RC"), Some("0"), "{all}");
    let added = r.out.json("added.json");
    assert_eq!(added["id"], "disk1", "{added}");
    assert_eq!(added["backing"], "hot.img");
    let info = r.out.json("info_added.json");
    let ids: Vec<&str> = info["devices"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["id"].as_str())
        .collect();
    assert_eq!(ids, ["disk0", "disk1"]);
    let guest = r.out.consoles("hot");
    assert_eq!(marker(&guest, "LEGO_HOT_SEEN"), Some("yes"), "{guest}");
    assert!(
        guest.contains("lego-hot-disk1"),
        "the serial of the new disk:\n{guest}"
    );
    assert_eq!(marker(&guest, "LEGO_HOT_WRITTEN"), Some("0"), "{guest}");
}

#[test]
fn a_removed_disk_is_let_go_by_the_guest_first_then_detached() {
    let r = results();
    let all = r.out.console.clone();
    assert_eq!(
        marker(&all, "LEGO_REMOVE_RC"),
        Some("0"),
        "{}\n{}",
        r.out.text("removed.txt"),
        r.out.text("hot.err")
    );
    let guest = r.out.consoles("hot");
    assert_eq!(marker(&guest, "LEGO_HOT_GONE"), Some("yes"), "{guest}");
    let devices = r.out.json("info_removed.json")["devices"].clone();
    assert_eq!(devices.as_array().unwrap().len(), 1, "{devices}");
    assert_eq!(devices[0]["id"], "disk0");
    r.out.assert_vnode_ran_clean("hot");
    let events = r.out.text("events.jsonl");
    let devices: Vec<(String, String)> = r
        .out
        .events("events.jsonl")
        .iter()
        .filter(|e| {
            e["event"]
                .as_str()
                .is_some_and(|n| n.starts_with("device_"))
        })
        .map(|e| {
            (
                e["event"].as_str().unwrap().into(),
                e["id"].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    let expected = [
        ("device_added", "disk0"),
        ("device_added", "disk1"),
        ("device_removed", "disk1"),
        ("device_added", "disk2"),
    ]
    .map(|(e, id)| (e.to_string(), id.to_string()));
    assert_eq!(devices, expected, "{events}");
}

#[test]
fn a_slot_that_was_emptied_takes_a_disk_again() {
    let r = results();
    let all = r.out.console.clone();
    assert_eq!(marker(&all, "LEGO_READD_RC"), Some("0"), "{all}");
    let again = r.out.json("readded.json");
    assert_eq!(again["id"], "disk2", "ids are not reused: {again}");
    assert_eq!(
        again["mmio_base"],
        r.out.json("added.json")["mmio_base"],
        "the freed slot is taken again"
    );
    let guest = r.out.consoles("hot");
    assert_eq!(marker(&guest, "LEGO_HOT_AGAIN"), Some("yes"), "{guest}");
    let after_again = guest.split("LEGO_HOT_AGAIN").nth(1).unwrap_or_default();
    assert!(
        after_again.contains("LEGO_RECORD=written-through-a-hot-added-disk"),
        "the re-added disk holds the record:\n{guest}"
    );
}

#[test]
fn what_was_written_to_the_added_disk_reads_back_after_a_relaunch() {
    let r = results();
    let back = r.out.consoles("back");
    assert!(
        back.contains("LEGO_RECORD=written-through-a-hot-added-disk"),
        "{back}"
    );
    r.out.assert_vnode_ran_clean("back");
}

#[test]
fn bad_hotplug_requests_get_sentences_and_change_nothing() {
    let r = results();
    let all = r.out.console.clone();
    assert_eq!(marker(&all, "LEGO_ADD_MISSING_RC"), Some("1"));
    let missing = r.out.text("add_missing.txt");
    assert!(
        missing.contains("cannot add the disk missing.img")
            || missing.contains("Cannot add the disk missing.img"),
        "{missing}"
    );
    assert_eq!(marker(&all, "LEGO_REMOVE_BOOT_RC"), Some("1"));
    assert!(
        r.out.text("remove_boot.txt").contains("attached at boot"),
        "{}",
        r.out.text("remove_boot.txt")
    );
    assert_eq!(marker(&all, "LEGO_REMOVE_UNKNOWN_RC"), Some("1"));
    assert!(r.out.text("remove_unknown.txt").contains("no device disk9"));
}

#[test]
fn a_remote_disk_added_at_run_time_keeps_what_was_written() {
    let r = results();
    let all = r.out.console.clone();
    assert_eq!(
        marker(&all, "LEGO_ADD_REMOTE_RC"),
        Some("0"),
        "{}\n{}",
        r.out.text("remote_added.json"),
        r.out.text("remote.err")
    );
    let added = r.out.json("remote_added.json");
    assert_eq!(added["kind"], "vhost-user-blk", "{added}");
    assert_eq!(added["backing"], "remote volume hotvol");
    let guest = r.out.consoles("remote");
    assert!(
        guest.contains("lego-remote-disk:hot"), // a virtio-blk serial keeps 20 bytes
        "the volume's serial:\n{guest}"
    );
    assert_eq!(marker(&guest, "LEGO_REMOTE_WRITTEN"), Some("0"), "{guest}");
    r.out.assert_vnode_ran_clean("remote");
    let back = r.out.consoles("remote_back");
    assert!(
        back.contains("LEGO_REMOTE_RECORD=kept-by-a-storage-monitor"),
        "{back}"
    );
    // A volume that does not exist is refused with the backend's reason; nothing is added.
    assert_eq!(marker(&all, "LEGO_ADD_NOSUCH_RC"), Some("1"));
    let nosuch = r.out.text("add_nosuch.txt");
    assert!(
        nosuch
            .to_lowercase()
            .contains("cannot add the remote disk nosuch: the remote disk backend did not come up"),
        "{nosuch}"
    );
    assert!(nosuch.contains("has no volume 'nosuch'"), "{nosuch}");
}

#[test]
fn remote_memory_added_at_run_time_becomes_swap_and_survives_its_backend_being_killed() {
    let r = results();
    let all = r.out.console.clone();
    let err = r.out.text("memory.err");
    assert_eq!(
        marker(&all, "LEGO_ADD_MEMORY_RC"),
        Some("0"),
        "{}\n{err}",
        r.out.text("memory_added.json")
    );
    let added = r.out.json("memory_added.json");
    assert_eq!(added["id"], "disk0", "{added}");
    assert_eq!(added["backing"], "remote memory, 256 MiB", "{added}");
    let listed = r.out.text("memory_vnodes.txt");
    assert!(
        listed.contains("disk0: vhost-user-blk remote memory, 256 MiB"),
        "the manager does not list the hot-added device:\n{listed}"
    );
    let guest = r.out.consoles("memory");
    assert!(
        guest.contains("lego-hotplug: swap on /dev/vda (hot-added remote memory)"),
        "the image did not swap on the added memory:\n{guest}"
    );
    assert_eq!(marker(&guest, "LEGO_HOT_SWAP"), Some("1"), "{guest}");
    // The workload (larger than RAM) went through the remote memory and every page was right,
    // across the backend's SIGKILL.
    let memtest = guest
        .lines()
        .find(|l| l.starts_with("LEGO_MEMTEST "))
        .unwrap_or_else(|| panic!("no memtest result:\n{guest}"));
    assert!(memtest.contains("bad=0"), "{memtest}");
    let killed = r.out.text("memory_killed.txt");
    assert!(
        killed.contains("pid=") && killed.contains("restarted="),
        "the backend was not killed and restarted: {killed:?}"
    );
    assert!(!guest.contains("I/O error"), "{guest}");
    let stats = r.out.text("memory_stats.json");
    let written: u64 = stats
        .lines()
        .find(|l| l.contains("\"pages_written\""))
        .and_then(|l| {
            l.trim()
                .trim_end_matches(',')
                .rsplit(' ')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no pages_written:\n{stats}"));
    assert!(
        written >= 4096,
        "the monitor took {written} pages:\n{stats}"
    );
    // Removal: the guest turned the swap off, then the device went.
    assert_eq!(
        marker(&all, "LEGO_REMOVE_MEMORY_RC"),
        Some("0"),
        "{}",
        r.out.text("memory_removed.txt")
    );
    assert_eq!(marker(&guest, "LEGO_HOT_SWAP_GONE"), Some("0"), "{guest}");
    r.out.assert_vnode_ran_clean("memory");
}

#[test]
fn remote_memory_is_added_once_and_in_whole_mib() {
    let r = results();
    let all = r.out.console.clone();
    assert_eq!(marker(&all, "LEGO_ADD_MEMORY_BAD_SIZE_RC"), Some("1"));
    let bad = r.out.text("memory_bad_size.txt");
    assert!(
        bad.contains("Remote memory comes in whole MiB, not 1000k"),
        "{bad}"
    );
    assert_eq!(marker(&all, "LEGO_ADD_MEMORY_AGAIN_RC"), Some("1"));
    let again = r.out.text("memory_again.txt");
    assert!(
        again.contains("The vNode's remote memory is already in use by device disk0"),
        "{again}"
    );
}
