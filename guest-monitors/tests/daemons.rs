//! The daemons' command-line behaviour: help, config files, start-up errors, clean shutdown.

mod common;

use std::process::Command;

use common::*;
use lego_monitor_client::client::ManagerClient;

fn run_to_exit(net: &Net, name: &str, bin: &str, host: &Host, a: &[String]) -> (bool, String) {
    let mut d = Daemon::start(net, name, bin, host, a, &key());
    let st = d.wait_exit();
    (st.success(), d.log_text())
}

#[test]
fn help_lists_flags() {
    for (bin, flags) in [
        (
            MEMORY_BIN,
            &[
                "--capacity",
                "--config",
                "--listen",
                "--manager",
                "--metrics",
                "--poll-us",
            ][..],
        ),
        (
            STORAGE_BIN,
            &[
                "--data-dir",
                "--config",
                "--listen",
                "--manager",
                "--metrics",
            ][..],
        ),
        (
            MANAGER_BIN,
            &[
                "--state-dir",
                "--region-size",
                "--missed-heartbeats",
                "--config",
            ][..],
        ),
    ] {
        let out = Command::new(bin)
            .arg("--help")
            .output()
            .expect("run --help");
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        for f in flags {
            assert!(text.contains(f), "{bin} --help lacks {f}:\n{text}");
        }
    }
}

#[test]
fn bad_config_and_start_up_errors_are_clear() {
    let mut net = Net::new("startup_errors");
    let h = net.host("x");

    let cfg = net.path("bad.toml");
    std::fs::write(&cfg, "listen = \"127.0.0.1:1\"\ncapasity = \"1G\"\n").expect("write");
    let (ok, log) = run_to_exit(
        &net,
        "unknown-key",
        MEMORY_BIN,
        &h,
        &args(&["--config", cfg.to_str().expect("utf8")]),
    );
    assert!(
        !ok && log.contains("capasity") && log.contains("unknown field"),
        "{log}"
    );

    std::fs::write(&cfg, "capacity = \"lots\"\n").expect("write");
    let (ok, log) = run_to_exit(
        &net,
        "bad-size",
        MEMORY_BIN,
        &h,
        &args(&["--config", cfg.to_str().expect("utf8")]),
    );
    assert!(!ok && log.contains("not a size"), "{log}");

    let (ok, log) = run_to_exit(
        &net,
        "long-poll",
        MEMORY_BIN,
        &h,
        &args(&["--listen", &h.addr, "--poll-us", "20000"]),
    );
    assert!(
        !ok && log.contains("a poll of 20000 µs is more than the 10000 µs allowed"),
        "{log}"
    );

    let (ok, log) = run_to_exit(
        &net,
        "no-file",
        MANAGER_BIN,
        &h,
        &args(&["--config", "/nonexistent/lego.toml"]),
    );
    assert!(
        !ok && log.contains("could not read the config file"),
        "{log}"
    );

    // A data folder that cannot be created (its parent is a regular file).
    let file = net.path("plain-file");
    std::fs::write(&file, b"x").expect("write");
    let bad_dir = file.join("vols");
    let (ok, log) = run_to_exit(
        &net,
        "bad-dir",
        STORAGE_BIN,
        &h,
        &args(&[
            "--listen",
            &h.addr,
            "--data-dir",
            bad_dir.to_str().expect("utf8"),
        ]),
    );
    assert!(!ok && log.contains("data folder is not usable"), "{log}");

    // An address already in use.
    let mut first = Daemon::start(
        &net,
        "first",
        MEMORY_BIN,
        &h,
        &args(&["--listen", &h.addr, "--capacity", "16M"]),
        &key(),
    );
    first.wait_ready(&key());
    let (ok, log) = run_to_exit(
        &net,
        "second",
        MEMORY_BIN,
        &h,
        &args(&["--listen", &h.addr]),
    );
    assert!(!ok && log.contains("already in use"), "{log}");
    drop(first);

    // No cluster key at all.
    let mut cmd = match &h.ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, MANAGER_BIN]);
            c
        }
        None => Command::new(MANAGER_BIN),
    };
    let out = cmd
        .args([
            "--listen",
            &h.addr,
            "--state-dir",
            net.path("m").to_str().expect("utf8"),
        ])
        .env_remove("LEGO_CLUSTER_KEY")
        .env_remove("LEGO_CLUSTER_KEY_FILE")
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("cluster key"),
        "{err}"
    );
}

#[test]
fn config_file_is_used_and_flags_override_it() {
    let mut net = Net::new("config_file");
    let h = net.host("m");
    let cfg = net.path("manager.toml");
    let state = net.path("state");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"{}\"\nstate_dir = \"{}\"\nregion_size = \"4M\"\nheartbeat_ms = 5000\n",
            h.addr,
            state.display()
        ),
    )
    .expect("write");
    let mut d = Daemon::start(
        &net,
        "manager",
        MANAGER_BIN,
        &h,
        &args(&[
            "--config",
            cfg.to_str().expect("utf8"),
            "--region-size",
            "8M",
        ]),
        &key(),
    );
    d.wait_ready(&key());
    let st = ManagerClient::connect(d.addr(), key(), client_config())
        .expect("connect")
        .status()
        .expect("status");
    assert_eq!(st.region_size, 8 << 20, "the flag overrides the file");
    assert_eq!(st.heartbeat_interval_ms, 5000, "the file is read");
    let status = d.terminate();
    assert!(status.success(), "SIGTERM exits cleanly: {status}");
    assert!(d.log_text().contains("manager stopped"));
}

#[test]
fn monitors_stop_cleanly_on_sigterm() {
    let mut net = Net::new("sigterm");
    let h1 = net.host("mem");
    let h2 = net.host("st");
    let dir = net.path("vols");
    let mut m = Daemon::start(
        &net,
        "mem",
        MEMORY_BIN,
        &h1,
        &args(&["--listen", &h1.addr, "--capacity", "8M"]),
        &key(),
    );
    let mut s = Daemon::start(
        &net,
        "st",
        STORAGE_BIN,
        &h2,
        &args(&[
            "--listen",
            &h2.addr,
            "--data-dir",
            dir.to_str().expect("utf8"),
        ]),
        &key(),
    );
    m.wait_ready(&key());
    s.wait_ready(&key());
    assert!(m.terminate().success(), "{}", m.log_text());
    assert!(s.terminate().success(), "{}", s.log_text());
    assert!(m.log_text().contains("memory monitor stopped"));
}
