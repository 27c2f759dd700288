//! legovmm's clear errors for bad input, run as a real process on this host. None of these
//! needs a KVM that boots guests: every one is caught before or while KVM is opened.

use lego_testkit::prerequisite::require;
use lego_tests::{run_legovmm, stderr};
use std::path::Path;

fn assert_fails_with(args: &[&str], needles: &[&str]) {
    let out = run_legovmm(args);
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "legovmm {args:?} should exit 1; stderr: {err}"
    );
    for n in needles {
        assert!(
            err.contains(n),
            "legovmm {args:?}: expected {n:?} in stderr: {err}"
        );
    }
    assert!(
        !err.contains("panicked"),
        "legovmm {args:?} panicked: {err}"
    );
}

#[test]
fn help_lists_the_run_flags() {
    let out = run_legovmm(&["run", "--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--kernel",
        "--initrd",
        "--cmdline",
        "--memory",
        "--vcpus",
        "--config",
        "--disk",
        "--vhost-user-blk",
        "--serial",
    ] {
        assert!(text.contains(flag), "run --help lacks {flag}: {text}");
    }
}

#[test]
fn a_missing_kernel_is_named() {
    assert_fails_with(
        &["run", "--kernel", "/nonexistent/vmlinuz"],
        &[
            "cannot read the kernel /nonexistent/vmlinuz",
            "No such file",
        ],
    );
}

#[test]
fn a_kernel_that_is_a_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    assert_fails_with(
        &["run", "--kernel", path],
        &["cannot read the kernel", "directory"],
    );
}

#[test]
fn no_kernel_at_all_says_how_to_give_one() {
    assert_fails_with(&["run"], &["no kernel given", "--kernel"]);
}

#[test]
fn bad_size_strings_are_explained() {
    for bad in ["12X", "lots", "1.5G"] {
        assert_fails_with(
            &["run", "--kernel", "/bin/sh", "--memory", bad],
            &[&format!("'{bad}' is not a size")],
        );
    }
    assert_fails_with(
        &["run", "--kernel", "/bin/sh", "--memory", "8M"],
        &["at least 32 MiB"],
    );
    assert_fails_with(
        &["run", "--kernel", "/bin/sh", "--vcpus", "0"],
        &["0 vCPUs is not allowed"],
    );
}

#[test]
fn memory_the_host_cannot_give_is_refused() {
    assert_fails_with(
        &["run", "--kernel", "/bin/sh", "--memory", "64T"],
        &["the host cannot give 67108864 MiB"],
    );
}

#[test]
fn unknown_and_malformed_config_keys_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("vnode.toml");
    std::fs::write(&cfg, "kernel = \"/bin/sh\"\nmemroy = \"1G\"\n").unwrap();
    assert_fails_with(
        &["run", "--config", cfg.to_str().unwrap()],
        &["is invalid", "memroy"],
    );
    std::fs::write(&cfg, "kernel = [\n").unwrap();
    assert_fails_with(&["run", "--config", cfg.to_str().unwrap()], &["is invalid"]);
    assert_fails_with(
        &["run", "--config", "/nonexistent.toml"],
        &["cannot read the config file /nonexistent.toml"],
    );
}

#[test]
fn a_missing_disk_is_named() {
    assert_fails_with(
        &["run", "--kernel", "/bin/sh", "--disk", "/nonexistent.img"],
        &["cannot attach disk /nonexistent.img"],
    );
}

#[test]
fn vhost_user_blk_sockets_are_checked_and_malformed_specs_explained() {
    assert_fails_with(
        &[
            "run",
            "--kernel",
            "/bin/sh",
            "--vhost-user-blk",
            "socket=/nonexistent.sock",
        ],
        &[
            "the vhost-user backend socket /nonexistent.sock cannot be used",
            "No such file",
        ],
    );
    // A regular file is not a backend.
    assert_fails_with(
        &[
            "run",
            "--kernel",
            "/bin/sh",
            "--vhost-user-blk",
            "socket=/bin/sh",
        ],
        &["/bin/sh cannot be used", "not a Unix socket"],
    );
    for bad in ["bogus", "socket=", "path=/x.sock"] {
        assert_fails_with(
            &["run", "--kernel", "/bin/sh", "--vhost-user-blk", bad],
            &[&format!(
                "'{bad}' is not a vhost-user-blk device: use socket=PATH"
            )],
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("vnode.toml");
    std::fs::write(
        &cfg,
        "kernel = \"/bin/sh\"\n[[vhost_user_blk]]\nsocket = \"/x.sock\"\nsokcet = 1\n",
    )
    .unwrap();
    assert_fails_with(
        &["run", "--config", cfg.to_str().unwrap()],
        &["is invalid", "sokcet"],
    );
}

#[test]
fn a_missing_kvm_device_points_at_the_testbed() {
    assert_fails_with(
        &["probe", "--kvm-device", "/nonexistent/kvm"],
        &["no KVM device at /nonexistent/kvm", "testbed"],
    );
    assert_fails_with(
        &[
            "run",
            "--kernel",
            "/bin/sh",
            "--kvm-device",
            "/nonexistent/kvm",
        ],
        &["no KVM device"],
    );
}

#[test]
fn kvm_without_permission_says_so() {
    if !require("/dev/kvm", Path::new("/dev/kvm").exists())
        || !require(
            "/usr/sbin/runuser (Debian package util-linux)",
            Path::new("/usr/sbin/runuser").exists(),
        )
    {
        return;
    }
    let out = std::process::Command::new("/usr/sbin/runuser")
        .args(["-u", "nobody", "--"])
        .arg(lego_tests::legovmm())
        .arg("probe")
        .output()
        .unwrap();
    let err = stderr(&out);
    if out.status.success() {
        // Not a missing prerequisite but how this host is set up (/dev/kvm open to every
        // user): there is no refusal to test, under CI too.
        eprintln!("skipped: user nobody may open /dev/kvm here");
        return;
    }
    assert!(err.contains("permission denied opening /dev/kvm"), "{err}");
}

#[test]
fn a_kvm_that_cannot_boot_stock_kernels_says_so_and_points_at_the_testbed() {
    let out = run_legovmm(&["probe"]);
    if out.status.success() {
        // Not a missing prerequisite but the kind of host: the refusal is PVM's (a KVM that
        // cannot boot stock kernels), and a KVM that boots them has nothing to refuse, under
        // CI too.
        eprintln!("skipped: this host's KVM boots stock kernels");
        return;
    }
    let err = stderr(&out);
    if !require("/dev/kvm", !err.contains("no KVM device")) {
        return;
    }
    assert!(
        err.contains("cannot boot a stock kernel") && err.contains("testbed"),
        "{err}"
    );
    // `run` refuses the same way, before touching the kernel.
    let out = run_legovmm(&["run", "--kernel", "/bin/sh"]);
    assert!(
        stderr(&out).contains("cannot boot a stock kernel"),
        "{}",
        stderr(&out)
    );
}
