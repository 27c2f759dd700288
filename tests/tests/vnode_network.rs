//! vNodes on the network (issue 13): two vNodes on one compute host, each with a virtio-net
//! device on its own tap (A served by the host kernel's vhost-net, B by legovmm's in-process
//! data path) joined to the compute host's bridge (set up by the documented
//! `tools/vnode-bridge.sh`), each given its address and MAC by the manager. vNode B listens;
//! vNode A pings B and the compute host, sends B 4 MiB of pattern blocks and sends the same
//! to a receiver on the compute host; B checks every block, then pings A back. A is then
//! relaunched and must come up with the same address. Bad input is tried against the same
//! cluster: a bridge that does not exist, and a vNode the small address pool cannot serve.

use lego_testbed::JobOutput;
use lego_tests::{marker, release_binary, JobFiles};
use std::time::Duration;

/// MiB each transfer moves.
const TRANSFER_MIB: u64 = 4;

const SCRIPT: &str = r#"
. "$LEGO_TESTBED_LIB"
ip link set lo up 2> /dev/null || true
M=127.0.0.1:7300
mkdir -p state
# A /29: the gateway (.1) and six vNode addresses (.2 to .7).
./lego-manager --state-dir state --listen $M --heartbeat-ms 200 --vnode-subnet 10.99.0.0/29 > manager.log 2>&1 &
manager=$!
sh ./vnode-bridge.sh --bridge lego0 --gateway 10.99.0.1/29 > bridge.txt 2>&1 || { cat bridge.txt; exit 1; }
n=0
until ./legoctl --manager $M status > /dev/null 2>&1 || [ "$n" -ge 100 ]; do sleep 0.1; n=$((n + 1)); done
# A receiver on the compute host, for vNode A's second transfer.
./lego-guest-tools net-recv 9000 --seed 3 > host-recv.txt 2>&1 &
receiver=$!
run() { lego_vnode "$@" --log-level info --kernel vmlinuz --initrd initramfs.cpio --memory 128M --manager $M; }
# vNode B (legovmm's own data path): receives A's stream, then pings whoever sent it and
# sends it 1 MiB back (A waits for that before it powers off).
( run b 3 150 --vnode 2 --net tap=lgv2,bridge=lego0,backend=in-process \
    --cmdline 'console=ttyS0 quiet lego.run="lego-guest-tools net-recv 9100 --seed 5 --peer-file /tmp/peer && ping -c 3 -W 5 $(cat /tmp/peer) && lego-guest-tools net-send $(cat /tmp/peer):9200 --seed 9 --mib 1"' ) &
vnode_b=$!
n=0
until grep -q LEGO_NET_UP b.console 2> /dev/null || [ "$n" -ge 300 ]; do sleep 1; n=$((n + 1)); done
B_IP=$(grep -m1 LEGO_NET_UP b.console | sed 's/.* ip=\([0-9.]*\).*/\1/')
echo "LEGO_SAY vNode B is up at ${B_IP:-?}"
# vNode A (the default: the kernel's vhost-net here; two vCPUs and two queue pairs): reaches
# B and the compute host.
run a 3 150 --vnode 1 --vcpus 2 --net tap=lgv1,bridge=lego0,queues=2 \
    --cmdline "console=ttyS0 quiet lego.run=\"echo LEGO_QUEUES \$(ls /sys/class/net/eth0/queues) && ping -c 3 -W 5 $B_IP && ping -c 3 -W 5 10.99.0.1 && lego-guest-tools net-send $B_IP:9100 --seed 5 --mib MIB && lego-guest-tools net-send 10.99.0.1:9000 --seed 3 --mib MIB && lego-guest-tools net-recv 9200 --seed 9\""
wait $vnode_b
wait $receiver
# A relaunched keeps its address.
run again 3 150 --vnode 1 --net tap=lgv1,bridge=lego0 --cmdline 'console=ttyS0 quiet lego.run="true"'
# Bad input: a bridge that is not there (vNode 3 keeps the address it was given, as it keeps
# any placement, until it is released); then the pool's six addresses are all taken and an
# eighth vNode is refused.
$LEGOVMM run --kernel vmlinuz --initrd initramfs.cpio --memory 128M --vnode 3 --manager $M \
    --net tap=lgv3,bridge=nosuch > nobridge.out 2> nobridge.err
echo $? > nobridge.exit
for v in 4 5 6 7; do ./legoctl --manager $M vnode address --vnode $v >> filled.txt 2>&1; done
$LEGOVMM run --kernel vmlinuz --initrd initramfs.cpio --memory 128M --vnode 8 --manager $M \
    --net tap=lgv8,bridge=lego0 > exhausted.out 2> exhausted.err
echo $? > exhausted.exit
ip link show lgv8 > lgv8.txt 2>&1
./legoctl --manager $M status > status.txt 2>&1
kill $manager 2> /dev/null
exit 0
"#;

struct Results {
    out: JobOutput,
}

lego_tests::shared_results!(fn results() -> Results = run_job);

fn run_job() -> Results {
    let script = SCRIPT.replace("MIB", &TRANSFER_MIB.to_string());
    let script = format!(
        "export LEGO_CLUSTER_KEY={}\n{script}",
        lego_tests::cluster_key_hex().trim()
    );
    let mut job = lego_tests::guest_job("vnode-network", script, Duration::from_secs(1200))
        .file(lego_tests::vnode_bridge_script(), "vnode-bridge.sh")
        .file(lego_tests::static_guest_tools(), "lego-guest-tools");
    for bin in ["lego-manager", "legoctl"] {
        job = job.file(release_binary(bin), bin);
    }
    let out = lego_tests::run_job(
        &lego_tests::testbed("vnode_network", false),
        &job,
        "vnode_network",
    );
    Results { out }
}

/// The `ip=` and `mac=` of the guest's LEGO_NET_UP line on `console`.
fn address(console: &str) -> (String, String) {
    let line = console
        .lines()
        .find(|l| l.contains("LEGO_NET_UP"))
        .unwrap_or_else(|| panic!("the guest configured no interface:\n{console}"));
    (
        marker(line, "ip").expect("ip").to_string(),
        marker(line, "mac").expect("mac").to_string(),
    )
}

#[test]
fn two_vnodes_get_distinct_addresses_from_the_manager_and_reach_each_other() {
    let r = results();
    let (a_ip, a_mac) = address(&r.out.text("a.console"));
    let (b_ip, b_mac) = address(&r.out.text("b.console"));
    assert_ne!(a_ip, b_ip, "two vNodes got one address");
    assert_ne!(a_mac, b_mac, "two vNodes got one MAC");
    for ip in [&a_ip, &b_ip] {
        assert!(
            ip.starts_with("10.99.0.") && ip.ends_with("/29"),
            "{ip} is not from the pool"
        );
        assert_ne!(ip.as_str(), "10.99.0.1/29", "a vNode got the gateway");
    }
    let a = r.out.text("a.console");
    assert!(
        a.contains("3 packets transmitted, 3 packets received"),
        "A's pings:\n{a}"
    );
    r.out.assert_vnode_ran_clean("a");
    // B got the whole stream, every block in place, from A; then pinged A back.
    let b = r.out.text("b.console");
    let recv = b
        .lines()
        .find(|l| l.contains("LEGO_NET_RECV"))
        .unwrap_or_else(|| panic!("{b}"));
    assert_eq!(marker(recv, "pattern"), Some("ok"), "{recv}");
    assert_eq!(
        marker(recv, "bytes"),
        Some((TRANSFER_MIB << 20).to_string().as_str()),
        "{recv}"
    );
    assert_eq!(
        Some(marker(recv, "from").unwrap()),
        a_ip.split('/').next(),
        "{recv}"
    );
    let sent = a
        .lines()
        .find(|l| {
            l.contains(&format!(
                "LEGO_NET_SENT to={}",
                b_ip.split('/').next().unwrap()
            ))
        })
        .unwrap_or_else(|| panic!("{a}"));
    assert_eq!(
        marker(sent, "crc32c"),
        marker(recv, "crc32c"),
        "checksums differ"
    );
    assert!(
        b.contains("3 packets transmitted, 3 packets received"),
        "B's pings of A:\n{b}"
    );
    r.out.assert_vnode_ran_clean("b");
    // A's guest took both queue pairs (its driver asks for one per vCPU).
    let queues = a
        .lines()
        .find(|l| l.starts_with("LEGO_QUEUES"))
        .unwrap_or_else(|| panic!("{a}"));
    for q in ["rx-0", "rx-1", "tx-0", "tx-1"] {
        assert!(queues.split_whitespace().any(|w| w == q), "{queues}");
    }
    // A's packets went through the host kernel's vhost-net, B's through legovmm's threads.
    let (a_err, b_err) = (r.out.text("a.err"), r.out.text("b.err"));
    assert!(
        a_err.contains("virtio-net active") && a_err.contains("backend=vhost-net"),
        "{a_err}"
    );
    assert!(
        b_err.contains("virtio-net active") && b_err.contains("backend=in-process"),
        "{b_err}"
    );
}

#[test]
fn a_vnode_reaches_a_server_on_its_compute_host() {
    let r = results();
    let host = r.out.text("host-recv.txt");
    assert!(host.contains("pattern=ok"), "{host}");
    assert!(
        host.contains(&format!("bytes={}", TRANSFER_MIB << 20)),
        "{host}"
    );
    let (a_ip, _) = address(&r.out.text("a.console"));
    assert_eq!(marker(&host, "from"), a_ip.split('/').next(), "{host}");
    let a = r.out.text("a.console");
    let sent = a
        .lines()
        .find(|l| l.contains("LEGO_NET_SENT to=10.99.0.1:9000"))
        .unwrap_or_else(|| panic!("{a}"));
    assert_eq!(marker(sent, "crc32c"), marker(&host, "crc32c"));
}

#[test]
fn a_relaunched_vnode_keeps_its_address() {
    let r = results();
    let first = address(&r.out.text("a.console"));
    let again = address(&r.out.text("again.console"));
    assert_eq!(first, again);
    r.out.assert_vnode_ran_clean("again");
    let status = r.out.text("status.txt");
    assert!(
        status.contains(first.0.split('/').next().unwrap()),
        "{status}"
    );
}

#[test]
fn a_missing_bridge_and_an_exhausted_pool_stop_legovmm_before_the_guest_boots() {
    let r = results();
    let err = r.out.text("nobridge.err");
    assert_eq!(r.out.text("nobridge.exit").trim(), "1", "{err}");
    assert!(
        err.contains("the bridge nosuch does not exist, so tap lgv3 cannot join it"),
        "{err}"
    );
    assert!(
        !r.out.text("nobridge.out").contains("Linux version"),
        "the guest booted"
    );
    let err = r.out.text("exhausted.err");
    assert_eq!(r.out.text("exhausted.exit").trim(), "1", "{err}");
    assert!(err.contains("exhausted"), "{err}");
    assert!(
        !r.out.text("exhausted.out").contains("Linux version"),
        "the guest booted"
    );
    // The failed launch left no tap behind.
    assert!(
        !r.out.text("lgv8.txt").contains("lgv8:"),
        "{}",
        r.out.text("lgv8.txt")
    );
}
