//! The init's network set-up (`lego.net=` words), run on the host under `busybox sh` (else
//! `sh`) against a fake `/sys/class/net` in a temporary folder, with `ip` stubbed as a shell
//! function that logs its arguments (and fails when its subcommand is named in `$FAIL`).

use std::fs;
use std::process::Command;

use lego_image::init::{ERROR_PREFIX, FUNCTIONS, NET_UP_MARKER};

const STUBS: &str = r#"
ip() {
    echo "ip $*" >> "$LOG"
    case " $FAIL " in
        *" $1 "*) echo "ip: simulated failure" >&2; return 1 ;;
    esac
    return 0
}
"#;

struct Run {
    stdout: String,
    log: String,
}

/// Runs `lego_net_up CMDLINE` with interfaces `ifaces` (name, MAC) in the fake sysfs.
fn net_up(ifaces: &[(&str, &str)], cmdline: &str, fail: &str) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let sys = dir.path().join("net");
    for (name, mac) in ifaces {
        fs::create_dir_all(sys.join(name)).unwrap();
        fs::write(sys.join(name).join("address"), format!("{mac}\n")).unwrap();
    }
    let script = dir.path().join("f.sh");
    fs::write(&script, format!("{FUNCTIONS}\n{STUBS}")).unwrap();
    let log = dir.path().join("log");
    fs::write(&log, "").unwrap();
    let mut sh = if std::path::Path::new("/bin/busybox").exists() {
        let mut c = Command::new("/bin/busybox");
        c.arg("sh");
        c
    } else {
        Command::new("sh")
    };
    let out = sh
        .arg("-c")
        .arg(format!(". '{}'; lego_net_up \"$1\"", script.display()))
        .arg("sh")
        .arg(cmdline)
        .env("LEGO_NET_SYS", &sys)
        .env("LOG", &log)
        .env("FAIL", fail)
        .env("LEGO_NET_WAIT_TRIES", "2")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    Run {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        log: fs::read_to_string(&log).unwrap(),
    }
}

#[test]
fn the_interface_with_the_mac_gets_the_address_and_the_route() {
    let r = net_up(
        &[
            ("lo", "00:00:00:00:00:00"),
            ("eth0", "52:54:00:12:34:56"),
            ("eth1", "02:4c:47:00:00:07"),
        ],
        "console=ttyS0 lego.net=02:4c:47:00:00:07,10.99.0.7/24,10.99.0.1 quiet",
        "",
    );
    assert_eq!(
        r.stdout,
        format!("{NET_UP_MARKER} dev=eth1 ip=10.99.0.7/24 mac=02:4c:47:00:00:07 gw=10.99.0.1\n")
    );
    assert_eq!(
        r.log,
        "ip link set lo up\nip link set eth1 up\nip addr add 10.99.0.7/24 dev eth1\nip route add default via 10.99.0.1 dev eth1\n"
    );
}

#[test]
fn without_a_gateway_there_is_no_route_and_without_words_nothing_but_lo() {
    let r = net_up(
        &[("eth0", "02:00:00:00:00:01")],
        "lego.net=02:00:00:00:00:01,192.168.5.2/30",
        "",
    );
    assert!(
        r.stdout.contains("dev=eth0 ip=192.168.5.2/30"),
        "{}",
        r.stdout
    );
    assert!(!r.log.contains("route"), "{}", r.log);
    let r = net_up(
        &[("eth0", "02:00:00:00:00:01")],
        "console=ttyS0 lego.run=\"echo *\"",
        "",
    );
    assert_eq!(
        (r.stdout.as_str(), r.log.as_str()),
        ("", "ip link set lo up\n")
    );
}

#[test]
fn failures_are_reported_and_the_boot_goes_on() {
    // No interface with the MAC.
    let r = net_up(
        &[("eth0", "02:00:00:00:00:01")],
        "lego.net=02:00:00:00:00:09,10.0.0.2/24",
        "",
    );
    assert!(
        r.stdout.starts_with(&format!(
            "{ERROR_PREFIX} network: no interface has the MAC 02:00:00:00:00:09"
        )),
        "{}",
        r.stdout
    );
    // A malformed word, then a good one: the good one is still configured.
    let r = net_up(
        &[("eth0", "02:00:00:00:00:01")],
        "lego.net=garbage lego.net=02:00:00:00:00:01,10.0.0.2/24",
        "",
    );
    assert!(
        r.stdout.contains("lego.net=garbage is not MAC,IP/PREFIX"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains(&format!("{NET_UP_MARKER} dev=eth0")),
        "{}",
        r.stdout
    );
    // `ip addr` fails: an error line naming the device, no LEGO_NET_UP.
    let r = net_up(
        &[("eth0", "02:00:00:00:00:01")],
        "lego.net=02:00:00:00:00:01,10.0.0.2/24,10.0.0.1",
        "addr",
    );
    assert!(
        r.stdout
            .contains("network: configuring eth0 with 10.0.0.2/24 failed: ip: simulated failure"),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains(NET_UP_MARKER), "{}", r.stdout);
}
