//! VMM-paged guest RAM (`--local-memory`), nested: legovmm keeps a bounded part of a stock
//! guest's RAM resident and pages the rest to a memory monitor, with no swap in the guest.
//!
//! One compute-host boot runs a manager, a memory monitor and a storage monitor, then:
//! 1. vNode 2, `--memory 1G --local-memory 64M`, boots and checks 16 MiB: a guest that touches
//!    little of its RAM places little remote memory (the monitor's pages written);
//! 2. vNode 1, `--memory 1G --local-memory 128M` with a remote disk, checks every page of a
//!    512 MiB workload, then writes a 32 MiB file on the remote disk, drops the guest's page
//!    cache and reads it back (the vhost-user backend reads and writes guest buffers that the
//!    pager may have evicted: it faults them in through its own userfaultfd);
//!
//! while a sampler records the largest size of legovmm's guest RAM memfd (allocated blocks,
//! from /proc/PID/fd). A second boot kills the only memory monitor (SIGKILL, not restarted)
//! in the middle of a workload: legovmm must stop the vNode with a clear error, and the
//! workload must never see a wrong page.

use lego_testbed::JobOutput;
use lego_tests::{marker, JobFiles};
use std::time::Duration;

/// Pages legovmm may hold beyond the limit: runs the fault threads checked for room at the
/// same moment (4 threads × 64 pages), single pages installed during eviction pauses, and
/// rounding.
const SLACK_MIB: u64 = 2;

const CLUSTER: &str = r#"
. "$LEGO_TESTBED_LIB"
ip link set lo up 2> /dev/null || true
export LEGO_VHOST_BLK_BIN="$JOB_DIR/lego-vhost-blk"
MANAGER=127.0.0.1:7300
MONITOR=127.0.0.1:7101
mkdir -p state volumes
./lego-manager --state-dir state --listen $MANAGER --heartbeat-ms 200 --region-size 32M --copies 1 > manager.log 2>&1 &
manager=$!
./lego-memory-monitor --listen $MONITOR --capacity 2G --manager $MANAGER --heartbeat-ms 200 > memory.log 2>&1 &
echo $! > memory.pid
./lego-storage-monitor --listen 127.0.0.1:7200 --data-dir volumes --capacity 1G --manager $MANAGER --heartbeat-ms 200 > storage.log 2>&1 &
n=0
while [ "$(./legoctl --manager $MANAGER status 2> /dev/null | grep -c alive)" -lt 2 ] && [ "$n" -lt 300 ]; do
    sleep 0.1; n=$((n + 1))
done
written() {
    ./legoctl --manager $MANAGER monitor-stats --kind memory --addr $MONITOR 2> /dev/null \
        | grep -m1 '"pages_written":' | sed 's/[^0-9]//g'
}
# The largest size of a vNode's guest RAM memfd, in 512-byte blocks, into NAME.maxblocks.
sample() {
    (
        max=0
        while [ ! -e "$1.rc" ]; do
            pid=$(cat "$1.pid" 2> /dev/null)
            for f in /proc/$pid/fd/*; do
                case "$(readlink "$f" 2> /dev/null)" in
                    *memfd:*)
                        b=$(stat -L -c %b "$f" 2> /dev/null)
                        if [ -n "$b" ] && [ "$b" -gt "$max" ]; then max=$b; echo "$max" > "$1.maxblocks"; fi
                        ;;
                esac
            done
            sleep 0.1
        done
    ) &
}
"#;

const PAGED: &str = r#"
sample small
lego_vnode small 1 200 --log-level info --kernel vmlinuz --initrd initramfs.cpio --memory 1G --local-memory 64M \
    --vcpus 1 --vnode 2 --manager $MANAGER \
    --cmdline "console=ttyS0 quiet panic=-1 lego.run=\"lego-guest-tools memtest --mib 16\""
echo "LEGO_SMALL_WRITTEN pages=$(written)"
sample paged
lego_vnode paged 1 200 --log-level info --kernel vmlinuz --initrd initramfs.cpio --memory 1G --local-memory 128M \
    --vcpus 1 --vnode 1 --manager $MANAGER --remote-disk data,128M \
    --cmdline "console=ttyS0 quiet panic=-1 lego.run=\"lego-guest-tools memtest --mib 512 && dd if=/dev/urandom of=/mnt/remote/f bs=1M count=32 2>/dev/null && md5sum /mnt/remote/f > /tmp/a && sync && echo 3 > /proc/sys/vm/drop_caches && md5sum /mnt/remote/f > /tmp/b && cmp /tmp/a /tmp/b && echo LEGO_FILE_READBACK=ok\""
echo "LEGO_MAXBLOCKS small=$(cat small.maxblocks) paged=$(cat paged.maxblocks)"
kill $manager $(cat memory.pid) 2> /dev/null
exit 0
"#;

const KILLED: &str = r#"
(
    n=0
    while [ "$n" -lt 6000 ]; do
        w=$(written)
        if [ -n "$w" ] && [ "$w" -ge 20000 ]; then
            kill -9 "$(cat memory.pid)"
            echo "LEGO_SAY killed the only memory monitor (SIGKILL) after $w pages"
            exit 0
        fi
        sleep 0.1
        n=$((n + 1))
    done
) &
lego_vnode killed 1 200 --log-level info --kernel vmlinuz --initrd initramfs.cpio --memory 1G --local-memory 64M \
    --vcpus 1 --vnode 3 --manager $MANAGER \
    --cmdline "console=ttyS0 quiet panic=-1 lego.run=\"lego-guest-tools memtest --mib 384\""
kill $manager 2> /dev/null
exit 0
"#;

struct Results {
    out: JobOutput,
}

lego_tests::shared_results!(fn paged() -> Results = run_paged);
lego_tests::shared_results!(fn killed() -> Results = run_killed);

fn run_paged() -> Results {
    let script = format!("{CLUSTER}{PAGED}");
    let out = lego_tests::run_cluster_job(
        "paged-memory",
        "paged_memory",
        &script,
        &[],
        Duration::from_secs(900),
    );
    Results { out }
}

fn run_killed() -> Results {
    let script = format!("{CLUSTER}{KILLED}");
    let out = lego_tests::run_cluster_job(
        "paged-memory-killed",
        "paged_memory_killed",
        &script,
        &[],
        Duration::from_secs(600),
    );
    Results { out }
}

fn console(r: &Results) -> String {
    r.out.console.clone()
}

/// The `key=value` figure of legovmm's pager summary in `err`.
fn summary_figure(err: &str, key: &str) -> u64 {
    let line = err
        .lines()
        .find(|l| l.contains("pager summary:"))
        .unwrap_or_else(|| panic!("no pager summary in:\n{err}"));
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .and_then(|v| {
            v.trim_end_matches(|c: char| !c.is_ascii_digit())
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no {key} in {line}"))
}

#[test]
fn a_guest_checks_512_mib_with_128_mib_resident_and_no_bad_page() {
    let r = paged();
    r.out.assert_vnode_ran_clean("paged");
    let console = r.out.text("paged.console");
    let memtest = console
        .lines()
        .find(|l| l.contains("LEGO_MEMTEST"))
        .unwrap_or_else(|| panic!("no memtest result:\n{console}"));
    assert!(memtest.contains("pages=131072 bad=0"), "{memtest}");
    // The guest saw all of its RAM, and no swap.
    assert!(!console.contains("LEGO_SWAP_ON"), "{console}");
    let err = r.out.text("paged.err");
    assert!(
        summary_figure(&err, "fetch_faults") > 1000,
        "the workload should have come back from the monitor: {err}"
    );
    assert!(summary_figure(&err, "evicted_dirty") > 10_000, "{err}");
    assert!(summary_figure(&err, "evicted_clean") > 0, "{err}");
}

#[test]
fn resident_guest_ram_never_exceeds_the_limit_by_more_than_the_slack() {
    let r = paged();
    let all = console(r);
    let line = all
        .lines()
        .find(|l| l.contains("LEGO_MAXBLOCKS"))
        .unwrap_or_else(|| panic!("no sample:\n{all}"));
    let blocks = |name: &str| -> u64 {
        marker(line, name)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {line}"))
    };
    let mib = |b: u64| (b * 512) >> 20;
    let err = r.out.text("paged.err");
    let summary = err
        .lines()
        .find(|l| l.contains("pager summary:"))
        .unwrap_or("(no pager summary)");
    assert!(
        mib(blocks("paged")) <= 128 + SLACK_MIB,
        "guest RAM memfd reached {} MiB with --local-memory 128M: {line}\n{summary}",
        mib(blocks("paged"))
    );
    assert!(
        mib(blocks("paged")) >= 100,
        "the limit was never approached: {line}"
    );
    assert!(mib(blocks("small")) <= 64 + SLACK_MIB, "{line}");
    assert!(
        summary_figure(&err, "max_resident_pages") <= (128 + SLACK_MIB) * 256,
        "{err}"
    );
}

#[test]
fn the_remote_disk_reads_back_what_was_written_through_evicted_buffers() {
    let r = paged();
    let console = r.out.text("paged.console");
    assert!(console.contains("LEGO_FILE_READBACK=ok"), "{console}");
    let err = r.out.text("paged.err");
    assert!(
        err.contains("serving guest RAM faults of a vhost-user backend"),
        "the disk's backend never handed its userfaultfd over: {err}"
    );
}

#[test]
fn a_guest_that_touches_little_places_little_remote_memory() {
    let r = paged();
    r.out.assert_vnode_ran_clean("small");
    let all = console(r);
    let written: u64 = all
        .lines()
        .find_map(|l| l.split("LEGO_SMALL_WRITTEN pages=").nth(1))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no count:\n{all}"));
    // 1 GiB of guest RAM is 262,144 pages; the boot (the kernel unpacks its initramfs,
    // builds its page structures) and a 16 MiB workload with 64 MiB resident write out about
    // 90 MiB (measured: 23,754 pages); never-touched pages are never written.
    assert!(
        written < 32_768,
        "a vNode touching little of its 1 GiB wrote {written} pages to the monitor"
    );
    let err = r.out.text("small.err");
    assert!(summary_figure(&err, "zero_pages") > 0, "{err}");
}

#[test]
fn a_dead_monitor_stops_the_vnode_with_a_clear_error_and_no_wrong_page() {
    let r = killed();
    let console = r.out.text("killed.console");
    let err = r.out.text("killed.err");
    assert!(
        console.contains("killed the only memory monitor")
            || r.out
                .console
                .clone()
                .contains("killed the only memory monitor"),
        "the monitor was never killed: {console}"
    );
    assert_eq!(r.out.vnode_exit("killed"), 1, "legovmm: {err}");
    assert!(
        err.contains("could not be fetched") || err.contains("could not be written"),
        "no clear error: {err}"
    );
    // Whatever the workload got to check, it never saw a wrong page.
    if let Some(line) = console.lines().find(|l| l.contains("LEGO_MEMTEST")) {
        assert!(line.contains(" bad=0 "), "{line}");
    }
}
