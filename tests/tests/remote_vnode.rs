//! A vNode whose swap is remote memory and whose second disk is a remote volume, through
//! `legovmm --remote-memory/--remote-disk`: legovmm starts the `lego-vhost-blk` backends,
//! they ask the manager for placement, and the guest's init makes the remote memory its swap
//! and mounts the remote disk. One compute-host boot runs the manager and both monitors (as
//! real processes), a memory-hungry vNode with small RAM, and a second launch of the vNode
//! that finds the file the first one wrote on its remote disk.

use lego_testbed::JobOutput;
use lego_tests::{json_number, marker, release_binary, JobFiles};
use std::time::Duration;

/// The guest's RAM and the memory its workload touches: twice the RAM.
const GUEST_RAM_MIB: u64 = 128;
const WORKLOAD_MIB: u64 = 256;
const _: () = assert!(
    WORKLOAD_MIB >= 2 * GUEST_RAM_MIB,
    "the workload must not fit in RAM"
);

/// The demo's job script (`tools/demo.sh` runs it with a 512 MiB workload); the test runs it
/// smaller so that CI stays quick.
const SCRIPT: &str = include_str!("../../tools/demo/remote-vnode.sh");

/// Bad input against the running cluster: a manager nobody answers at, and a volume that
/// does not exist. legovmm must say so clearly and the cluster must lose nothing.
const BAD_INPUT: &str = r#"
lego_extra_checks() {
    $LEGOVMM run --kernel vmlinuz --initrd initramfs.cpio --memory 128M \
        --vnode 9 --manager 127.0.0.1:1 --remote-memory 64M > unreachable.out 2> unreachable.err
    echo $? > unreachable.exit
    $LEGOVMM run --kernel vmlinuz --initrd initramfs.cpio --memory 128M \
        --vnode "$VNODE" --manager "$MANAGER" --remote-disk nosuch > novolume.out 2> novolume.err
    echo $? > novolume.exit
}
"#;

struct Results {
    out: JobOutput,
}

lego_tests::shared_results!(fn results() -> Results = run_job);

fn run_job() -> Results {
    let key = lego_tests::cluster_key_hex();
    let script = format!(
        "export LEGO_CLUSTER_KEY={}\nexport GUEST_RAM={GUEST_RAM_MIB}M REMOTE_MEMORY=512M \
         WORKLOAD_MIB={WORKLOAD_MIB} VOLUME_SIZE=64M\n{BAD_INPUT}\n{SCRIPT}",
        key.trim()
    );
    let mut job = lego_tests::guest_job("remote-vnode", script, Duration::from_secs(900))
        .file(lego_tests::vnode_bridge_script(), "vnode-bridge.sh");
    let testbed = lego_tests::testbed("remote_vnode", false);
    for bin in [
        "lego-vhost-blk",
        "lego-manager",
        "lego-memory-monitor",
        "lego-storage-monitor",
        "legoctl",
    ] {
        job = job.file(release_binary(bin), bin);
    }
    let out = lego_tests::run_job(&testbed, &job, "remote_vnode");
    Results { out }
}

#[test]
fn a_small_vnode_runs_a_workload_twice_its_ram_on_remote_memory_with_no_bad_pages() {
    let r = results();
    let console = r.out.text("first.console");
    assert!(
        console.contains("LEGO_SWAP_ON dev="),
        "the init did not make remote memory swap:\n{console}"
    );
    let line = console
        .lines()
        .find(|l| l.contains("LEGO_MEMTEST"))
        .unwrap_or_else(|| panic!("no memtest result:\n{console}"));
    assert_eq!(marker(line, "bad"), Some("0"), "{line}");
    let pages: u64 = marker(line, "pages").expect("pages").parse().unwrap();
    assert_eq!(pages, WORKLOAD_MIB * 256, "{line}");
    r.out.assert_vnode_ran_clean("first");
    // Pages really went to the memory monitor and came back: the workload cannot fit in RAM,
    // so at least half of the excess was written out, and the verify pass read pages in.
    let stats = r.out.text("memory-stats.txt");
    let written = json_number(&stats, "pages_written");
    let read = json_number(&stats, "pages_read");
    assert!(
        written >= (WORKLOAD_MIB - GUEST_RAM_MIB) * 256 / 2,
        "only {written} pages written:\n{stats}"
    );
    assert!(read > 0, "no page came back from the monitor:\n{stats}");
}

#[test]
fn the_remote_disk_keeps_a_file_across_launches_of_the_vnode() {
    let r = results();
    // A first launch restarted after a triple fault finds the disk it already formatted:
    // the format shows on the console of its first try.
    let first = r.out.consoles("first");
    assert!(first.contains("LEGO_REMOTE_DISK_FORMATTED"), "{first}");
    assert!(first.contains("LEGO_REMOTE_DISK_MOUNTED"), "{first}");
    let second = r.out.text("second.console");
    assert!(
        second.contains("written-by-vnode-1"),
        "the file did not survive:\n{second}"
    );
    assert!(
        !second.contains("LEGO_REMOTE_DISK_FORMATTED"),
        "the disk was formatted again:\n{second}"
    );
    r.out.assert_vnode_exit("second", 0);
}

#[test]
fn an_unreachable_manager_and_a_missing_volume_are_clear_errors() {
    let r = results();
    let err = r.out.text("unreachable.err");
    assert_eq!(r.out.text("unreachable.exit").trim(), "1", "{err}");
    assert!(
        err.contains("remote memory backend did not come up") && err.contains("127.0.0.1:1"),
        "{err}"
    );
    let err = r.out.text("novolume.err");
    assert_eq!(r.out.text("novolume.exit").trim(), "1", "{err}");
    assert!(
        err.contains("remote disk backend did not come up") && err.contains("nosuch"),
        "{err}"
    );
    // Nothing was lost: the vNode's volume is still placed after the failed launches.
    assert!(r.out.text("status.txt").contains("data"));
}

#[test]
fn the_manager_shows_the_vnodes_placements() {
    let r = results();
    let status = r.out.text("status.txt");
    assert!(
        status.contains("data"),
        "the volume is not placed:\n{status}"
    );
    assert!(status.contains("VNODE MEMORY"), "{status}");
    // The demo's summary came out whole.
    let console = &r.out.console;
    assert!(
        console.contains("LEGO_DEMO_DONE first=0 second=0"),
        "{console}"
    );
    assert!(
        console.contains("of page data over the fabric"),
        "{console}"
    );
    let first_err = r.out.text("first.err");
    assert!(
        first_err.contains("remote memory is served")
            || first_err.contains("started remote device backend"),
        "{first_err}"
    );
}

#[test]
fn the_demo_vnode_has_an_address_from_the_manager_and_keeps_it_across_launches() {
    let r = results();
    let ip = |name: &str| {
        let console = r.out.text(name);
        let line = console
            .lines()
            .find(|l| l.contains("LEGO_NET_UP"))
            .unwrap_or_else(|| panic!("{name}: the guest configured no interface:\n{console}"))
            .to_string();
        marker(&line, "ip").expect("ip").to_string()
    };
    let first = ip("first.console");
    assert!(
        first.starts_with("10.99.0."),
        "{first} is not from the manager's pool"
    );
    assert_eq!(
        ip("second.console"),
        first,
        "the relaunched vNode changed address"
    );
    let console = r.out.text("first.console");
    assert!(
        console.contains("2 packets transmitted, 2 packets received"),
        "the vNode did not reach its compute host:\n{console}"
    );
    assert!(
        r.out
            .console
            .contains(&format!("network: vNode 1 at {first}")),
        "the summary does not show the address:\n{}",
        r.out.console_tail(40)
    );
}
