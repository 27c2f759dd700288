//! A vNode whose only copy of its remote memory dies gets I/O errors, never a page of zeros:
//! one compute-host boot runs the manager and one memory monitor (`--copies 1`), a vNode with
//! 128 MiB of RAM runs a workload of twice that which checks every page, and a watcher kills
//! the monitor (SIGKILL) once it holds 40 MiB of the vNode's pages and starts it again at once,
//! empty, with the same flags. The fabric client reconnects to the new incarnation; every page
//! the old one held is lost. The guest must see read errors on its swap device, and the
//! workload's checksums must never see wrong data (a page of zeros would be one).

use lego_testbed::JobOutput;
use lego_tests::{marker, JobFiles};
use std::time::Duration;

const GUEST_RAM_MIB: u64 = 128;
const WORKLOAD_MIB: u64 = 256;
/// Pages the monitor must have taken before it is killed (40 MiB: inside the write pass).
const KILL_AFTER_PAGES: u64 = 10_240;

const SCRIPT: &str = r#"
. "$LEGO_TESTBED_LIB"
ip link set lo up 2> /dev/null || true
export LEGO_VHOST_BLK_BIN="$JOB_DIR/lego-vhost-blk"
MANAGER=127.0.0.1:7300
MONITOR=127.0.0.1:7101
mkdir -p state
./lego-manager --state-dir state --listen $MANAGER --heartbeat-ms 200 --region-size 32M --copies 1 > manager.log 2>&1 &
manager=$!
sleep 0.5
monitor() {
    ./lego-memory-monitor --listen $MONITOR --capacity 1G --manager $MANAGER --heartbeat-ms 200 >> memory.log 2>&1 &
    echo $! > memory.pid
}
monitor
n=0
while [ "$(./legoctl --manager $MANAGER status 2> /dev/null | grep -c alive)" -lt 1 ] && [ "$n" -lt 300 ]; do
    sleep 0.1; n=$((n + 1))
done

# The watcher: kill the monitor (SIGKILL) once it has taken KILL_AFTER_PAGES pages, and start
# it again, empty, at the same address.
(
    n=0
    while [ "$n" -lt 6000 ]; do
        w=$(./legoctl --manager $MANAGER monitor-stats --kind memory --addr $MONITOR 2> /dev/null \
            | grep -m1 '"pages_written":' | sed 's/[^0-9]//g')
        if [ -n "$w" ] && [ "$w" -ge KILL_AFTER_PAGES ]; then
            kill -9 "$(cat memory.pid)"
            monitor
            echo "pages_written=$w" > killed.txt
            echo "LEGO_SAY killed the memory monitor (SIGKILL) after $w pages and started it again empty"
            exit 0
        fi
        sleep 0.1
        n=$((n + 1))
    done
    echo "the monitor never reached KILL_AFTER_PAGES pages" > killed.txt
) &
watcher=$!

lego_vnode lost 1 150 --log-level info --kernel vmlinuz --initrd initramfs.cpio --memory GUEST_RAMM --vcpus 1 \
    --vnode 1 --manager $MANAGER --remote-memory 512M \
    --cmdline "console=ttyS0 quiet panic=-1 lego.run=\"lego-guest-tools memtest --mib WORKLOAD_MIB\""
wait $watcher
kill $manager $(cat memory.pid) 2> /dev/null
exit 0
"#;

struct Results {
    out: JobOutput,
}

lego_tests::shared_results!(fn results() -> Results = run_job);

fn run_job() -> Results {
    let out = lego_tests::run_cluster_job(
        "memory-lost",
        "memory_lost",
        SCRIPT,
        &[
            ("KILL_AFTER_PAGES", KILL_AFTER_PAGES.to_string()),
            ("GUEST_RAM", GUEST_RAM_MIB.to_string()),
            ("WORKLOAD_MIB", WORKLOAD_MIB.to_string()),
        ],
        Duration::from_secs(900),
    );
    Results { out }
}

#[test]
fn pages_lost_with_the_only_copy_are_read_errors_never_wrong_data() {
    let r = results();
    let killed = r.out.text("killed.txt");
    assert!(
        killed.contains("pages_written="),
        "the watcher never killed the monitor: {killed}\n{}",
        r.out.console_tail(80)
    );
    let console = r.out.consoles("lost");
    // The loss reached the guest as errors on its swap device...
    assert!(
        ["I/O error", "Read-error"]
            .iter()
            .any(|sign| console.contains(sign)),
        "the guest saw no read error after losing its pages:\n{console}"
    );
    // ...and never as data: no check of the workload found a wrong page, and it did not
    // claim to have finished clean.
    for line in console.lines().filter(|l| l.contains("LEGO_MEMTEST")) {
        assert_eq!(
            marker(line, "bad"),
            Some("0"),
            "wrong data reached the workload: {line}"
        );
    }
    assert_ne!(
        marker(&console, "LEGO_RUN_EXIT"),
        Some("0"),
        "the workload ended clean although its pages were lost:\n{console}"
    );
}
