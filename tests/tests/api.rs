//! legovmm's API socket, nested: a vNode boots with `--api-socket` and a local disk its guest
//! writes in a loop; `legoctl vm` (the API's client) then asks for `vm.info` (it must match
//! the command line), reads `vm.counters` twice (they must grow with the workload), sends bad
//! requests (JSON errors, nothing changes), tries a second legovmm on the same socket (refused
//! before any VM is built), pauses the vNode (the guest's ticks stop) and resumes it, scrapes
//! `/metrics`, and ends it with `legoctl vnode stop` (a `vm.shutdown` through the socket the
//! manager lists; legovmm exits 0).
//!
//! A third vNode has its console on a socket and runs the image's shell: a command typed
//! through `legoctl console` runs in the guest and its answer comes back.
//!
//! A manager runs beside it: the vNode (`--vnode 5`) is in `legoctl vnode list` while it runs
//! and gone once it stopped; a second vNode whose legovmm is killed with SIGKILL (it cannot
//! say it stopped) is forgotten by the manager within a few heartbeat intervals.

use lego_testbed::JobOutput;
use lego_tests::{marker, JobFiles};
use serde_json::Value;
use std::time::Duration;

const SCRIPT: &str = r#"
. "$LEGO_TESTBED_LIB"
ctl() { ./legoctl vm --api-socket api.sock "$@"; }
ip link set lo up 2> /dev/null || true
MANAGER=127.0.0.1:7300
mkdir -p state
./lego-manager --state-dir state --listen $MANAGER --heartbeat-ms 200 > manager.log 2>&1 &
manager=$!
vnodes() { ./legoctl --manager $MANAGER vnode list --json 2> /dev/null; }
# wait_listed VNODE yes|no: waits (up to 60 s) until VNODE is (or is not) listed running.
wait_listed() {
    n=0
    while [ "$n" -lt 600 ]; do
        if vnodes | grep -q "\"vnode\": $1,"; then l=yes; else l=no; fi
        [ "$l" = "$2" ] && return 0
        sleep 0.1; n=$((n + 1))
    done
    return 1
}
ticks() { t=$(grep -c LEGO_TICK= api.console 2> /dev/null); echo "${t:-0}"; }
# wait_ticks N: waits (up to 120 s) until the guest has printed more than N ticks.
wait_ticks() {
    n=0
    while [ "$(ticks)" -le "$1" ] && [ "$n" -lt 1200 ]; do sleep 0.1; n=$((n + 1)); done
}
lego_vnode api 1 200 --log-level info --kernel vmlinuz --initrd initramfs.cpio --memory 256M \
    --vcpus 1 --disk data.img --api-socket api.sock --vnode 5 --manager $MANAGER --events events.jsonl \
    --cmdline 'console=ttyS0 quiet lego.run="i=0; while true; do dd if=/dev/urandom of=/dev/vda bs=64k count=16 oflag=direct 2> /dev/null; echo LEGO_TICK=$i; i=$((i + 1)); sleep 0.3; done"' &
vnode=$!
wait_ticks 2
ctl ping > ping.json 2>&1; echo "LEGO_PING_RC=$?"
ctl info > info.json 2>&1
if wait_listed 5 yes; then echo "LEGO_LISTED_RC=0"; else
    echo "LEGO_LISTED_RC=1"
    tail -20 manager.log; ./legoctl --manager $MANAGER vnode list --json; grep -iE "announce|manager" api.err
fi
vnodes > vnodes_running.json
./legoctl --manager $MANAGER vnode list > vnodes_running.txt 2>&1
./legoctl --manager $MANAGER status > status.txt 2>&1
ctl counters > counters1.json 2>&1
wait_ticks $(( $(ticks) + 4 ))
ctl counters > counters2.json 2>&1
ctl request GET /api/v1/vm.nothing > bad_path.txt 2>&1
ctl request PUT /api/v1/vm.pause '{not json' > bad_json.txt 2>&1
ctl request GET /api/v1/vm.shutdown > bad_method.txt 2>&1
ctl resume > resume_unpaused.txt 2>&1; echo "LEGO_RESUME_UNPAUSED_RC=$?"
$LEGOVMM run --kernel vmlinuz --memory 128M --api-socket api.sock > second.txt 2>&1; echo "LEGO_SECOND_RC=$?"
# A vNode runs once: a second legovmm for vNode 5 is refused before it touches anything.
$LEGOVMM run --kernel vmlinuz --initrd initramfs.cpio --memory 128M --vnode 5 --manager $MANAGER \
    > twin.txt 2>&1; echo "LEGO_TWIN_RC=$?"
ctl pause > pause.txt 2>&1; echo "LEGO_PAUSE_RC=$?"
ctl info > paused.json 2>&1
sleep 0.5; before=$(ticks); sleep 4; after=$(ticks)
echo "LEGO_PAUSED_TICKS before=$before after=$after"
ctl resume > resume.txt 2>&1; echo "LEGO_RESUME_RC=$?"
wait_ticks "$after"
echo "LEGO_RESUMED_TICKS=$(ticks)"
ctl metrics > metrics.txt 2>&1
start=$(date +%s)
./legoctl --manager $MANAGER vnode stop --vnode 5 > shutdown.txt 2>&1; echo "LEGO_SHUTDOWN_RC=$?"
# The guest powers off by itself (its power button); never leave the vNode running when it
# does not (the test fails).
n=0; while [ -e api.sock ] && [ "$n" -lt 900 ]; do sleep 0.1; n=$((n + 1)); done
echo "LEGO_GRACEFUL_STOP_S=$(( $(date +%s) - start ))"
[ -e api.sock ] && ctl shutdown --grace 0
wait $vnode
echo "LEGO_SOCKET_LEFT=$([ -e api.sock ] && echo yes || echo no)"
vnodes > vnodes_after.json
lego_vnode killme 1 200 --kernel vmlinuz --initrd initramfs.cpio --memory 128M --vcpus 1 \
    --vnode 6 --manager $MANAGER --cmdline 'console=ttyS0 quiet lego.run="sleep 600"' > /dev/null &
killme=$!
wait_listed 6 yes; echo "LEGO_KILLME_LISTED_RC=$?"
kill -9 "$(cat killme.pid 2> /dev/null)" 2> /dev/null
start=$(date +%s)
wait_listed 6 no; echo "LEGO_KILLME_FORGOTTEN_RC=$? after=$(( $(date +%s) - start ))s"
kill $manager 2> /dev/null
kill -9 "$(cat killme.pid 2> /dev/null)" 2> /dev/null
wait $killme
# Console input: a vNode whose console is a socket and whose guest runs the image's shell (no
# lego.run). A line typed through `legoctl console` must run there: its answer is computed
# by the guest's shell, so the echo of the typed line cannot pass for it.
$LEGOVMM run --kernel vmlinuz --initrd initramfs.cpio --memory 128M --vcpus 1 \
    --serial socket:console.sock --api-socket console-api.sock --cmdline 'console=ttyS0 quiet' \
    2> console-vnode.err &
console_vnode=$!
n=0
while [ "$n" -lt 60 ]; do
    n=$((n + 1))
    if [ -S console.sock ]; then
        printf 'echo LEGO_TYPED=$((6 * 7))\n' \
            | ./legoctl console --socket console.sock --linger 3 >> typed.txt 2>&1
    else
        sleep 1
    fi
    grep -q "LEGO_TYPED=42" typed.txt 2> /dev/null && break
done
echo "LEGO_TYPED_TRIES=$n"
./legoctl vm --api-socket console-api.sock shutdown --grace 0 > forced.json 2>&1 || kill $console_vnode
wait $console_vnode; echo "LEGO_CONSOLE_VNODE_RC=$?"
exit 0
"#;

struct Results {
    out: JobOutput,
    _dir: tempfile::TempDir,
}

lego_tests::shared_results!(fn results() -> Results = run_job);

fn run_job() -> Results {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("data.img");
    std::fs::write(&disk, vec![0u8; 16 << 20]).unwrap();
    let script = format!(
        "export LEGO_CLUSTER_KEY={}\n{SCRIPT}",
        lego_tests::cluster_key_hex()
    );
    let job = lego_tests::guest_job("api", script, Duration::from_secs(900))
        .file(&disk, "data.img")
        .file(lego_tests::release_binary("legoctl"), "legoctl")
        .file(lego_tests::release_binary("lego-manager"), "lego-manager");
    let testbed = lego_tests::testbed("api", false);
    let out = lego_tests::run_job(&testbed, &job, "api");
    Results { out, _dir: dir }
}

fn console(r: &Results) -> String {
    r.out.console.clone()
}

#[test]
fn info_matches_the_command_line() {
    let r = results();
    let ping = r.out.json("ping.json");
    let info = r.out.json("info.json");
    assert_eq!(
        info["pid"], ping["pid"],
        "ping and info come from one legovmm"
    );
    assert_eq!(info["state"], "running");
    assert_eq!(info["config"]["vcpus"], 1);
    assert_eq!(info["config"]["kernel"], "vmlinuz");
    assert!(info["config"]["cmdline"]
        .as_str()
        .unwrap()
        .contains("LEGO_TICK"));
    assert_eq!(info["memory"]["total_bytes"], 256u64 << 20);
    assert!(info["memory"]["local_limit_bytes"].is_null());
    let devices = info["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 1, "{info}");
    assert_eq!(devices[0]["id"], "disk0");
    assert_eq!(devices[0]["kind"], "virtio-blk");
    assert_eq!(devices[0]["backing"], "data.img");
}

#[test]
fn counters_grow_with_the_workload() {
    let r = results();
    let written = |name: &str| {
        r.out.json(name)["devices"]["disk0"]["written_bytes"]
            .as_u64()
            .unwrap_or_else(|| panic!("no disk0 counters in {name}"))
    };
    let (a, b) = (written("counters1.json"), written("counters2.json"));
    // Each tick writes 1 MiB with O_DIRECT; at least four ticks passed between the reads.
    assert!(a >= 2 << 20, "the first read saw {a} bytes written");
    assert!(b >= a + (4 << 20), "{a} then {b} bytes written");
    let requests = r.out.json("counters2.json")["devices"]["disk0"]["requests"]
        .as_u64()
        .unwrap();
    assert!(requests > 0);
    let metrics = r.out.text("metrics.txt");
    let line = metrics
        .lines()
        .find(|l| l.starts_with("lego_blk_written_bytes_total{device=\"disk0\"}"))
        .unwrap_or_else(|| panic!("no disk0 bytes in the metrics:\n{metrics}"));
    let scraped: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(scraped >= b, "{line} after {b}");
}

#[test]
fn pause_stops_the_guest_and_resume_lets_it_run() {
    let r = results();
    let all = console(r);
    assert_eq!(marker(&all, "LEGO_PAUSE_RC"), Some("0"), "{all}");
    assert_eq!(r.out.json("paused.json")["state"], "paused");
    let line = all
        .lines()
        .find(|l| l.contains("LEGO_PAUSED_TICKS"))
        .unwrap_or_else(|| panic!("no pause record:\n{all}"));
    assert_eq!(
        marker(line, "before"),
        marker(line, "after"),
        "the guest ran while paused: {line}"
    );
    assert_eq!(marker(&all, "LEGO_RESUME_RC"), Some("0"), "{all}");
    let after: u64 = marker(line, "after").unwrap().parse().unwrap();
    let resumed: u64 = marker(&all, "LEGO_RESUMED_TICKS").unwrap().parse().unwrap();
    assert!(
        resumed > after,
        "the guest did not run again: {resumed} ticks"
    );
}

#[test]
fn bad_requests_get_json_errors_and_the_vnode_keeps_running() {
    let r = results();
    let bad = |name: &str, status: &str, words: &str| {
        let text = r.out.text(name);
        assert!(
            text.starts_with(&format!("HTTP {status}")),
            "{name}: {text}"
        );
        let body: Value = serde_json::from_str(text.lines().nth(1).unwrap_or(""))
            .unwrap_or_else(|e| panic!("{name}: not a JSON error ({e}): {text}"));
        assert!(
            body["error"].as_str().unwrap_or("").contains(words),
            "{name}: {text}"
        );
    };
    bad("bad_path.txt", "404", "no endpoint at /api/v1/vm.nothing");
    bad("bad_json.txt", "400", "not valid JSON");
    bad("bad_method.txt", "405", "answers PUT, not GET");
    let all = console(r);
    assert_eq!(marker(&all, "LEGO_RESUME_UNPAUSED_RC"), Some("1"), "{all}");
    assert!(r
        .out
        .text("resume_unpaused.txt")
        .contains("the API answered 409: The vNode is not paused."));
    // The malformed pause did not pause: the paused state only came from the real one.
    assert_eq!(r.out.json("info.json")["state"], "running");
}

#[test]
fn a_second_legovmm_cannot_take_the_socket() {
    let r = results();
    let all = console(r);
    assert_eq!(marker(&all, "LEGO_SECOND_RC"), Some("1"), "{all}");
    let second = r.out.text("second.txt");
    assert!(
        second.contains("the API socket api.sock is in use by another process"),
        "{second}"
    );
}

#[test]
fn the_manager_lists_the_running_vnode_and_forgets_it_when_it_stops() {
    let r = results();
    let all = console(r);
    assert_eq!(marker(&all, "LEGO_LISTED_RC"), Some("0"), "{all}");
    let running = r.out.json("vnodes_running.json");
    let listed = running.as_array().unwrap();
    assert_eq!(listed.len(), 1, "{running}");
    let info = r.out.json("info.json");
    assert_eq!(listed[0]["vnode"], 5);
    assert_eq!(
        listed[0]["pid"], info["pid"],
        "the listed legovmm is the one started"
    );
    assert!(listed[0]["api_socket"]
        .as_str()
        .unwrap()
        .ends_with("/api.sock"));
    assert_eq!(listed[0]["devices"][0], "disk0: virtio-blk data.img");
    let table = r.out.text("vnodes_running.txt");
    assert!(
        table.contains("API SOCKET") && table.contains("api.sock"),
        "{table}"
    );
    let status = r.out.text("status.txt");
    assert!(status.contains("RUNNING VNODES"), "{status}");
    // It said it stopped: gone at once, not after a timeout.
    assert_eq!(r.out.json("vnodes_after.json"), serde_json::json!([]));
}

#[test]
fn a_vnode_whose_legovmm_is_killed_is_forgotten() {
    let r = results();
    let all = console(r);
    assert_eq!(marker(&all, "LEGO_KILLME_LISTED_RC"), Some("0"), "{all}");
    assert_eq!(marker(&all, "LEGO_KILLME_FORGOTTEN_RC"), Some("0"), "{all}");
    let manager = r.out.text("manager.log");
    assert!(
        manager.contains("forgot vNode 6: its legovmm"),
        "the manager did not say why:\n{manager}"
    );
}

#[test]
fn shutdown_ends_the_vnode_with_status_zero_and_removes_the_socket() {
    let r = results();
    let all = console(r);
    assert_eq!(marker(&all, "LEGO_SHUTDOWN_RC"), Some("0"), "{all}");
    let said = r.out.text("shutdown.txt");
    assert!(
        said.contains("vNode 5 (pid") && said.contains("30 s to power off"),
        "{said}"
    );
    r.out.assert_vnode_exit("api", 0);
    // The guest acted on the power button: its workload was stopped, /init went on to
    // unmount and power off, and legovmm never had to force it.
    let guest = r.out.consoles("api");
    assert!(
        guest.contains("lego-power: power button pressed")
            && guest.contains("LEGO_POWER_BUTTON_STOP"),
        "the guest did not act on the power button:\n{guest}"
    );
    let err = r.out.text("api.err");
    assert!(
        err.contains("power button pressed through the API"),
        "{err}"
    );
    assert!(
        !err.contains("did not power off"),
        "legovmm had to force it:\n{err}"
    );
    assert!(err.contains("legovmm: the guest powered off"), "{err}");
    assert_eq!(marker(&all, "LEGO_SOCKET_LEFT"), Some("no"), "{all}");
}

#[test]
fn a_shutdown_without_grace_stops_the_vnode_at_once() {
    let r = results();
    let all = console(r);
    let forced = r.out.json("forced.json");
    assert_eq!(forced["power_button"], false, "{forced}");
    assert_eq!(forced["grace_s"], 0, "{forced}");
    assert_eq!(marker(&all, "LEGO_CONSOLE_VNODE_RC"), Some("0"), "{all}");
    assert!(r
        .out
        .text("console-vnode.err")
        .contains("the vNode was shut down through the API"));
}

#[test]
fn a_command_typed_on_the_serial_socket_runs_in_the_guest() {
    let r = results();
    let all = console(r);
    let typed = r.out.text("typed.txt");
    assert!(
        typed.lines().any(|l| l.trim_end() == "LEGO_TYPED=42"),
        "the guest's shell never answered the typed line ({:?} tries):\n{typed}\n{}",
        marker(&all, "LEGO_TYPED_TRIES"),
        r.out.text("console-vnode.err")
    );
    assert_eq!(
        marker(&all, "LEGO_CONSOLE_VNODE_RC"),
        Some("0"),
        "{}",
        r.out.text("console-vnode.err")
    );
}

#[test]
fn lifecycle_events_are_json_lines_in_order() {
    let r = results();
    let text = r.out.text("events.jsonl");
    let events = r.out.events("events.jsonl");
    let names: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    // lego_vnode may have launched the vNode more than once; the last launch is what counts.
    let first = names
        .iter()
        .rposition(|n| *n == "device_added")
        .unwrap_or_else(|| {
            panic!("no device_added event:\n{text}");
        });
    assert_eq!(
        &names[first..],
        [
            "device_added",
            "started",
            "paused",
            "resumed",
            "power_button",
            "stopped"
        ],
        "{text}"
    );
    assert_eq!(events[first]["id"], "disk0");
    assert_eq!(events[first + 1]["pid"], r.out.json("ping.json")["pid"]);
    assert_eq!(events[first + 1]["vnode"], 5);
    assert_eq!(events[first + 4]["grace_s"], 30);
    assert_eq!(
        events[first + 5]["reason"],
        "poweroff",
        "the guest powered off by itself"
    );
    let times: Vec<u64> = events[first..]
        .iter()
        .map(|e| e["time_ms"].as_u64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
}

#[test]
fn a_second_legovmm_for_a_running_vnode_is_refused() {
    let r = results();
    let all = console(r);
    assert_eq!(marker(&all, "LEGO_TWIN_RC"), Some("1"), "{all}");
    let twin = r.out.text("twin.txt");
    let pid = r.out.json("ping.json")["pid"].clone();
    assert!(
        twin.contains(&format!("vNode 5 already runs: pid {pid} on ")),
        "{twin}"
    );
    assert!(twin.contains("a vNode runs once"), "{twin}");
    // The running vNode was not disturbed: it went on to pause, resume and stop cleanly.
    r.out.assert_vnode_exit("api", 0);
}
