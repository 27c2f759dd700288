//! A vNode whose remote memory has two copies of every vRegion on three memory monitors
//! survives the loss of one of them mid-workload: one compute-host boot runs the manager and
//! three memory monitors (real processes), a vNode with 128 MiB of RAM through a workload of
//! twice that which checks every page, and a watcher that kills (SIGKILL) the monitor
//! holding the first vRegion's first copy once the vNode has paged out 40 MiB to it. The
//! workload must end with every page right and the guest must see no I/O error, and the lost
//! copies must be repaired onto the third monitor while the vNode runs.

use lego_testbed::JobOutput;
use lego_tests::{json_number, marker, JobFiles};
use std::time::Duration;

const GUEST_RAM_MIB: u64 = 128;
const WORKLOAD_MIB: u64 = 256;
/// Pages the victim must have taken before it is killed (40 MiB: inside the write pass).
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
for i in 1 2 3; do
    ./lego-memory-monitor --listen 127.0.0.1:710$i --capacity 1G --manager $MANAGER --heartbeat-ms 200 > memory-$i.log 2>&1 &
    echo $! > memory-$i.pid
done
n=0
while [ "$(./legoctl --manager $MANAGER status 2> /dev/null | grep -c alive)" -lt 3 ] && [ "$n" -lt 300 ]; do
    sleep 0.1; n=$((n + 1))
done
./legoctl --manager $MANAGER status > cluster.txt 2>&1

# The watcher: once the vNode is placed, find the monitor holding region 0's first copy and
# kill it (SIGKILL) when it has taken KILL_AFTER_PAGES pages.
(
    victim=""
    n=0
    while [ -z "$victim" ] && [ "$n" -lt 3000 ]; do
        victim=$(./legoctl --manager $MANAGER status --json 2> /dev/null \
            | grep -A1 '"index": 0,' | grep -m1 '"monitor"' \
            | sed 's/.*"monitor": "\([^"]*\)".*/\1/')
        [ -n "$victim" ] || sleep 0.2
        n=$((n + 1))
    done
    port=${victim##*:}
    i=${port#710}
    while [ "$n" -lt 6000 ]; do
        w=$(./legoctl --manager $MANAGER monitor-stats --kind memory --addr "$victim" 2> /dev/null \
            | grep -m1 '"pages_written":' | sed 's/[^0-9]//g')
        if [ -n "$w" ] && [ "$w" -ge KILL_AFTER_PAGES ]; then
            kill -9 "$(cat memory-$i.pid)"
            echo "victim=$victim pages_written=$w" > killed.txt
            echo "LEGO_SAY killed the memory monitor $victim (SIGKILL) after $w pages"
            # The manager sees it dead, the region degraded, then repairing onto the third
            # monitor while the vNode runs, then healthy again.
            unhealthy=0
            m=0
            while [ "$m" -lt 600 ]; do
                s=$(./legoctl --manager $MANAGER status 2> /dev/null)
                if echo "$s" | grep -q "degraded\|repairing"; then
                    unhealthy=1
                    echo "$s" > status-unhealthy.txt
                elif [ "$unhealthy" = 1 ] && echo "$s" | grep -q healthy; then
                    ./legoctl --manager $MANAGER status --json > status-repaired.json 2>&1
                    echo "repaired after $((m / 5)) s" > repaired.txt
                    echo "LEGO_SAY the vNode's memory is healthy again after $((m / 5)) s"
                    exit 0
                fi
                sleep 0.2
                m=$((m + 1))
            done
            echo "not repaired in 120 s (unhealthy seen: $unhealthy)" > repaired.txt
            exit 0
        fi
        sleep 0.1
        n=$((n + 1))
    done
    echo "victim=$victim never reached KILL_AFTER_PAGES pages" > killed.txt
) &
watcher=$!

lego_vnode first 3 150 --log-level info --kernel vmlinuz --initrd initramfs.cpio --memory GUEST_RAMM --vcpus 1 \
    --vnode 1 --manager $MANAGER --remote-memory 512M \
    --cmdline "console=ttyS0 quiet lego.run=\"lego-guest-tools memtest --mib WORKLOAD_MIB\""
wait $watcher
sleep 1
./legoctl --manager $MANAGER status > status.txt 2>&1
for i in 1 2 3; do
    ./legoctl --manager $MANAGER monitor-stats --kind memory --addr 127.0.0.1:710$i > stats-$i.txt 2>&1
done
kill $manager $(cat memory-*.pid) 2> /dev/null
exit 0
"#;

struct Results {
    out: JobOutput,
}

lego_tests::shared_results!(fn results() -> Results = run_job);

fn run_job() -> Results {
    let out = lego_tests::run_cluster_job(
        "memory-copies",
        "memory_copies",
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
fn every_page_survives_the_loss_of_a_monitor_holding_a_copy() {
    let r = results();
    let killed = r.out.text("killed.txt");
    assert!(
        killed.contains("pages_written="),
        "the watcher never killed a monitor: {killed}\n{}",
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
fn the_region_is_repaired_onto_the_third_monitor_while_the_vnode_runs() {
    let r = results();
    let repaired = r.out.text("repaired.txt");
    assert!(
        repaired.starts_with("repaired after"),
        "{repaired}\n{}",
        r.out.console_tail(60)
    );
    let unhealthy = r.out.text("status-unhealthy.txt");
    assert!(
        unhealthy.contains("degraded") || unhealthy.contains("repairing"),
        "{unhealthy}"
    );
    let victim = victim(&r.out);
    let status: serde_json::Value =
        serde_json::from_str(&r.out.text("status-repaired.json")).expect("status JSON");
    let vnode = status["vnodes"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["vnode"] == 1))
        .unwrap_or_else(|| panic!("vNode 1 is not in the status: {status}"));
    let regions = vnode["memory"]["regions"].as_array().expect("regions");
    assert!(!regions.is_empty(), "{vnode}");
    for region in regions {
        let mut holders = vec![region["monitor"].as_str().expect("monitor").to_string()];
        for r in region["replicas"].as_array().into_iter().flatten() {
            holders.push(r.as_str().expect("replica").to_string());
        }
        assert_eq!(holders.len(), 2, "region without two copies: {region}");
        assert!(
            !holders.contains(&victim),
            "a region is still on the killed monitor {victim}: {region}"
        );
        assert_ne!(region["health"], "degraded", "{region}");
        assert_ne!(region["health"], "lost", "{region}");
    }
}

/// The address of the monitor the watcher killed.
fn victim(out: &JobOutput) -> String {
    out.text("killed.txt")
        .split_whitespace()
        .find_map(|w| w.strip_prefix("victim="))
        .expect("victim")
        .to_string()
}

#[test]
fn the_survivors_served_the_pages_and_the_manager_shows_the_loss() {
    let r = results();
    let status = r.out.text("status.txt");
    assert!(
        status.contains("dead"),
        "the killed monitor is not dead:\n{status}"
    );
    // The two survivors together read back at least the pages the guest swapped in.
    let victim = victim(&r.out);
    let mut survivors_read = 0;
    for i in 1..=3 {
        let stats = r.out.text(&format!("stats-{i}.txt"));
        if victim.ends_with(&format!(":710{i}")) {
            continue;
        }
        survivors_read += json_number(&stats, "pages_read");
    }
    assert!(survivors_read > 0, "no page came back from a survivor");
}
