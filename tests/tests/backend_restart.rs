//! A vNode's `lego-vhost-blk` killed with SIGKILL mid-workload: one compute-host boot runs
//! the manager and two memory monitors (real processes) and a vNode with 128 MiB of RAM
//! through a workload of twice that which checks every page (it swaps to remote memory);
//! a watcher kills the remote memory backend (SIGKILL) once the vNode has paged out 40 MiB.
//! legovmm must restart the backend, its frontend reconnect and re-submit what was in
//! flight, the backend keep the vNode's pages (same incarnations), and the workload end with
//! every page right and no I/O error in the guest.

use lego_testbed::JobOutput;
use lego_tests::{marker, JobFiles};
use std::time::Duration;

const GUEST_RAM_MIB: u64 = 128;
const WORKLOAD_MIB: u64 = 256;
/// Pages the monitors must have taken before the backend is killed (40 MiB).
const KILL_AFTER_PAGES: u64 = 10_240;

const SCRIPT: &str = r#"
. "$LEGO_TESTBED_LIB"
ip link set lo up 2> /dev/null || true
export LEGO_VHOST_BLK_BIN="$JOB_DIR/lego-vhost-blk"
MANAGER=127.0.0.1:7300
mkdir -p state
./lego-manager --state-dir state --listen $MANAGER --heartbeat-ms 200 --region-size 32M > manager.log 2>&1 &
manager=$!
sleep 0.5
for i in 1 2; do
    ./lego-memory-monitor --listen 127.0.0.1:710$i --capacity 1G --manager $MANAGER --heartbeat-ms 200 > memory-$i.log 2>&1 &
    echo $! > memory-$i.pid
done
n=0
while [ "$(./legoctl --manager $MANAGER status 2> /dev/null | grep -c alive)" -lt 2 ] && [ "$n" -lt 300 ]; do
    sleep 0.1; n=$((n + 1))
done

# The remote memory backend's pid.
backend_pid() { lego_pid_with remote-memory.sock lego-vhost-blk; }

# The watcher: once the monitors took KILL_AFTER_PAGES pages, kill -9 the backend.
(
    n=0
    while [ "$n" -lt 6000 ]; do
        w=0
        for i in 1 2; do
            p=$(./legoctl --manager $MANAGER monitor-stats --kind memory --addr 127.0.0.1:710$i 2> /dev/null \
                | grep -m1 '"pages_written":' | sed 's/[^0-9]//g')
            w=$((w + ${p:-0}))
        done
        if [ "$w" -ge KILL_AFTER_PAGES ] && pid=$(backend_pid); then
            kill -9 "$pid"
            echo "pid=$pid pages_written=$w" > killed.txt
            echo "LEGO_SAY killed lego-vhost-blk (pid $pid, SIGKILL) after $w pages"
            # Its successor must appear.
            m=0
            while [ "$m" -lt 300 ]; do
                if new=$(backend_pid) && [ "$new" != "$pid" ]; then
                    echo "restarted=$new" >> killed.txt
                    break
                fi
                sleep 0.1; m=$((m + 1))
            done
            exit 0
        fi
        sleep 0.1
        n=$((n + 1))
    done
    echo "never reached KILL_AFTER_PAGES pages" > killed.txt
) &
watcher=$!

lego_vnode first 3 150 --log-level info --kernel vmlinuz --initrd initramfs.cpio --memory GUEST_RAMM --vcpus 1 \
    --vnode 1 --manager $MANAGER --remote-memory 512M --events events.jsonl \
    --cmdline "console=ttyS0 quiet lego.run=\"lego-guest-tools memtest --mib WORKLOAD_MIB\""
wait $watcher
cp first.err legovmm.log 2> /dev/null
./legoctl --manager $MANAGER status > status.txt 2>&1
kill $manager $(cat memory-*.pid) 2> /dev/null
exit 0
"#;

struct Results {
    out: JobOutput,
}

lego_tests::shared_results!(fn results() -> Results = run_job);

fn run_job() -> Results {
    let out = lego_tests::run_cluster_job(
        "backend-restart",
        "backend_restart",
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
fn a_killed_backend_is_restarted_and_the_guest_sees_no_error_and_no_bad_page() {
    let r = results();
    let killed = r.out.text("killed.txt");
    assert!(
        killed.contains("pid=") && killed.contains("restarted="),
        "the backend was not killed and restarted: {killed}\n{}",
        r.out.console_tail(80)
    );
    let console = r.out.consoles("first");
    let line = console
        .lines()
        .find(|l| l.contains("LEGO_MEMTEST"))
        .unwrap_or_else(|| panic!("no memtest result:\n{console}"));
    assert_eq!(marker(line, "bad"), Some("0"), "{line}");
    let pages: u64 = marker(line, "pages").expect("pages").parse().unwrap();
    assert_eq!(pages, WORKLOAD_MIB * 256, "{line}");
    for sign in ["I/O error", "Read-error", "Write-error", "Bad page"] {
        assert!(
            !console.contains(sign),
            "the guest saw {sign:?}:\n{console}"
        );
    }
    r.out.assert_vnode_ran_clean("first");
}

#[test]
fn the_event_log_tells_the_backend_was_lost_then_reconnected() {
    let r = results();
    let text = r.out.text("events.jsonl");
    let events = r.out.events("events.jsonl");
    let names: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    let lost = names
        .iter()
        .rposition(|n| *n == "backend_lost")
        .unwrap_or_else(|| panic!("no backend_lost event:\n{text}"));
    assert_eq!(
        names.get(lost + 1),
        Some(&"backend_reconnected"),
        "the lost backend was not reconnected next:\n{text}"
    );
    assert_eq!(events[lost]["device"], events[lost + 1]["device"]);
    assert!(events[lost]["socket"]
        .as_str()
        .is_some_and(|s| s.contains("remote-memory")));
    let last = events.last().unwrap();
    assert_eq!(last["event"], "stopped", "{text}");
    assert_eq!(last["reason"], "poweroff", "{text}");
}

#[test]
fn legovmm_logs_the_restart_and_the_reconnection() {
    let r = results();
    let log = r.out.text("legovmm.log");
    for expected in [
        "the remote memory backend died",
        "restarted the remote memory backend",
        "reconnected to the vhost-user backend",
        "asking the remote memory backend to release",
    ] {
        assert!(log.contains(expected), "no {expected:?} in:\n{log}");
    }
    let reconnected = log
        .lines()
        .find(|l| l.contains("reconnected to the vhost-user backend"))
        .unwrap_or_default();
    eprintln!("backend_restart: {reconnected}");
}
