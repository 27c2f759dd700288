//! The init's device handling (remote memory as swap, the remote disk at /mnt/remote), run on
//! the host under `busybox sh` (else `sh`) against a fake sysfs and /dev in a temporary folder.
//! The device commands are stubbed as shell functions (busybox sh runs its own applets before
//! anything on PATH): each logs its arguments and fails when named in `$FAIL`; the `mke2fs`
//! stub writes the ext superblock magic, as the real one would.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use lego_image::init::{
    ERROR_PREFIX, FUNCTIONS, REMOTE_DISK_FORMATTED_MARKER, REMOTE_DISK_MOUNTED_MARKER,
    REMOTE_DISK_UNMOUNTED_MARKER, SWAP_ON_MARKER,
};

/// Shell functions standing in for the device commands.
const STUBS: &str = r#"
lego_stub() {
    echo "$*" >> "$LOG"
    case " $FAIL " in
        *" $1 "*)
            echo "$1: simulated failure" >&2
            echo "second line" >&2
            return 1
            ;;
    esac
    return 0
}
mkswap() { lego_stub mkswap "$@"; }
swapon() { lego_stub swapon "$@"; }
swapoff() { lego_stub swapoff "$@"; }
mount() { lego_stub mount "$@"; }
umount() { lego_stub umount "$@"; }
sync() { lego_stub sync "$@"; }
mke2fs() {
    lego_stub mke2fs "$@" || return 1
    eval "_d=\${$#}"
    printf '\123\357' | dd of="$_d" bs=1 seek=1080 conv=notrunc 2>/dev/null
}
"#;

/// What a fake disk holds.
enum Data {
    Zeros,
    Ext,
    /// Something that is not an ext filesystem (a swap signature here).
    Other,
}

/// A fake guest: `sys/block/vdX/{serial,size}`, `dev/vdX` as files, a command log.
struct Fake {
    dir: tempfile::TempDir,
}

struct Run {
    status: i32,
    stdout: String,
    log: String,
}

impl Fake {
    fn new() -> Fake {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("sys/block")).unwrap();
        fs::create_dir_all(dir.path().join("dev")).unwrap();
        Fake { dir }
    }

    fn dev(&self, name: &str) -> PathBuf {
        self.dir.path().join("dev").join(name)
    }

    fn dev_str(&self, name: &str) -> String {
        self.dev(name).to_str().unwrap().to_string()
    }

    fn mount_point(&self) -> String {
        self.dir
            .path()
            .join("mnt/remote")
            .to_str()
            .unwrap()
            .to_string()
    }

    /// Adds a disk; `serial: None` leaves out the serial file. The device file is 128 KiB
    /// whatever `size_kb` says (only sysfs reports the size).
    fn disk(&self, name: &str, serial: Option<&str>, size_kb: u64, data: Data) {
        let sys = self.dir.path().join("sys/block").join(name);
        fs::create_dir_all(&sys).unwrap();
        if let Some(s) = serial {
            // The kernel prints the serial without a newline.
            fs::write(sys.join("serial"), s).unwrap();
        }
        fs::write(sys.join("size"), format!("{}\n", size_kb * 2)).unwrap();
        let mut bytes = vec![0u8; 128 << 10];
        match data {
            Data::Zeros => {}
            Data::Ext => bytes[1080..1082].copy_from_slice(&[0x53, 0xef]),
            Data::Other => bytes[4086..4096].copy_from_slice(b"SWAPSPACE2"),
        }
        fs::write(self.dev(name), bytes).unwrap();
    }

    /// Sources the functions and the stubs and runs `script`; `fail` names stubs that fail.
    fn run(&self, script: &str, fail: &str) -> Run {
        let p = self.dir.path();
        let functions = p.join("functions.sh");
        fs::write(&functions, FUNCTIONS).unwrap();
        let stubs = p.join("stubs.sh");
        fs::write(&stubs, STUBS).unwrap();
        let log = p.join("log");
        let _ = fs::remove_file(&log);
        let out = shell()
            .arg("-c")
            .arg(format!(
                ". '{}'; . '{}'; {script}",
                functions.display(),
                stubs.display()
            ))
            .env("LEGO_SYS", p.join("sys"))
            .env("LEGO_DEV", p.join("dev"))
            .env("LEGO_REMOTE_MOUNT", self.mount_point())
            .env("LOG", &log)
            .env("FAIL", fail)
            .output()
            .unwrap();
        assert!(
            out.stderr.is_empty(),
            "the functions wrote to stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Run {
            status: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            log: fs::read_to_string(&log).unwrap_or_default(),
        }
    }
}

/// Picks `busybox sh` when the host has busybox, else `sh`.
fn shell() -> Command {
    if Path::new("/bin/busybox").exists() {
        let mut c = Command::new("/bin/busybox");
        c.arg("sh");
        c
    } else {
        Command::new("sh")
    }
}

fn lines(s: &str) -> Vec<&str> {
    s.lines().collect()
}

#[test]
fn serials_are_classified() {
    let f = Fake::new();
    let cases = [
        ("lego-remote-memory", "memory"),
        ("lego-remote-disk:dat", "disk"),
        ("lego-remote-disk:", "disk"),
        ("lego-local:disk.img", "local"),
        ("lego-remote-memoryX", "other"),
        ("lego-remote-dis", "other"),
        ("", "other"),
        ("QM00001", "other"),
    ];
    for (serial, kind) in cases {
        let r = f.run(&format!("lego_serial_kind '{serial}'"), "");
        assert_eq!(r.stdout, format!("{kind}\n"), "serial {serial:?}");
    }
}

#[test]
fn devices_are_found_by_serial() {
    let f = Fake::new();
    f.disk("vda", Some("lego-local:root.img"), 1024, Data::Zeros);
    f.disk("vdb", Some("lego-remote-memory"), 1024, Data::Zeros);
    f.disk("vdc", Some("lego-remote-disk:dat"), 1024, Data::Zeros);
    f.disk("vdd", None, 1024, Data::Zeros);
    f.disk("vde", Some("lego-remote-memory"), 1024, Data::Zeros);
    f.disk("sda", Some("lego-remote-memory"), 1024, Data::Zeros);
    let r = f.run(
        "echo M $(lego_devices memory); echo D $(lego_devices disk); echo L $(lego_devices local)",
        "",
    );
    assert_eq!(r.stdout, "M vdb vde\nD vdc\nL vda\n");
    assert_eq!(r.log, "", "looking touched a device");
}

#[test]
fn no_lego_devices_means_nothing_happens() {
    let f = Fake::new();
    let r = f.run("lego_attach_devices; echo rc=$?; lego_detach_devices", "");
    assert_eq!(r.stdout, "rc=0\n");
    f.disk("vda", Some("lego-local:x"), 1024, Data::Zeros);
    f.disk("vdb", None, 1024, Data::Zeros);
    let r = f.run("lego_attach_devices; echo rc=$?", "");
    assert_eq!(r.stdout, "rc=0\n");
    assert_eq!(r.log, "");
}

#[test]
fn filesystem_state_decides_formatting() {
    let f = Fake::new();
    f.disk("vda", None, 1024, Data::Zeros);
    f.disk("vdb", None, 1024, Data::Ext);
    f.disk("vdc", None, 1024, Data::Other);
    // Data past the first 64 KiB does not count.
    let mut late = vec![0u8; 128 << 10];
    late[100 << 10] = 1;
    fs::write(f.dev("vdd"), late).unwrap();
    // A 2 KiB device: too short to be "empty".
    fs::write(f.dev("vde"), vec![0u8; 2048]).unwrap();
    let r = f.run(
        "for d in vda vdb vdc vdd vde missing; do echo $d=$(lego_fs_state \"$LEGO_DEV/$d\"); done",
        "",
    );
    assert_eq!(
        r.stdout,
        "vda=empty\nvdb=ext\nvdc=unknown\nvdd=empty\nvde=unknown\nmissing=unknown\n"
    );
}

#[test]
fn first_boot_swaps_and_formats_second_boot_only_mounts() {
    let f = Fake::new();
    f.disk("vda", Some("lego-remote-memory"), 262_144, Data::Zeros);
    f.disk("vdb", Some("lego-remote-disk:dat"), 65_536, Data::Zeros);
    f.disk("vdc", Some("lego-local:scratch"), 1024, Data::Zeros);
    let (mem, disk, mnt) = (f.dev_str("vda"), f.dev_str("vdb"), f.mount_point());

    let r = f.run("lego_attach_devices; echo rc=$?; lego_detach_devices", "");
    assert_eq!(r.status, 0);
    assert_eq!(
        lines(&r.stdout),
        [
            format!("{SWAP_ON_MARKER} dev={mem} size_kb=262144"),
            format!("{REMOTE_DISK_FORMATTED_MARKER} dev={disk}"),
            format!("{REMOTE_DISK_MOUNTED_MARKER} dev={disk} path={mnt}"),
            "rc=0".to_string(),
            format!("{REMOTE_DISK_UNMOUNTED_MARKER} dev={disk} path={mnt}"),
        ]
    );
    assert_eq!(
        lines(&r.log),
        [
            format!("mkswap {mem}"),
            format!("swapon {mem}"),
            format!("mke2fs -L lego-remote -m 0 {disk}"),
            format!("mount -t ext4 {disk} {mnt}"),
            "sync".to_string(),
            format!("umount {mnt}"),
            format!("swapoff {mem}"),
        ]
    );
    assert!(Path::new(&mnt).is_dir(), "the mount point was not made");

    // The next boot finds the filesystem and mounts it without formatting.
    let r = f.run("lego_attach_devices", "");
    assert_eq!(
        lines(&r.stdout),
        [
            format!("{SWAP_ON_MARKER} dev={mem} size_kb=262144"),
            format!("{REMOTE_DISK_MOUNTED_MARKER} dev={disk} path={mnt}"),
        ]
    );
    assert!(!r.log.contains("mke2fs"), "formatted again: {}", r.log);
}

#[test]
fn a_disk_with_foreign_data_is_neither_formatted_nor_mounted() {
    let f = Fake::new();
    f.disk("vda", Some("lego-remote-disk:dat"), 1024, Data::Other);
    f.disk("vdb", Some("lego-remote-memory"), 2048, Data::Zeros);
    let r = f.run("lego_attach_devices; echo rc=$?; lego_detach_devices", "");
    let out = lines(&r.stdout);
    assert_eq!(out.len(), 3, "{out:?}");
    assert_eq!(
        out[0],
        format!("{SWAP_ON_MARKER} dev={} size_kb=2048", f.dev_str("vdb"))
    );
    assert!(
        out[1].starts_with(&format!(
            "{ERROR_PREFIX} remote disk: {} holds data that is not an ext filesystem",
            f.dev_str("vda")
        )),
        "{out:?}"
    );
    assert_eq!(out[2], "rc=0");
    assert!(
        !r.log.contains("mke2fs") && !r.log.contains("mount"),
        "{}",
        r.log
    );
    assert!(r.log.contains("swapoff"), "{}", r.log);
}

#[test]
fn each_failure_is_one_error_line_and_the_boot_goes_on() {
    // (failing stub, expected error start, markers that must not appear)
    let cases: &[(&str, &str, &[&str])] = &[
        ("mkswap", "remote memory: mkswap ", &[SWAP_ON_MARKER]),
        ("swapon", "remote memory: swapon ", &[SWAP_ON_MARKER]),
        (
            "mke2fs",
            "remote disk: mke2fs ",
            &[REMOTE_DISK_FORMATTED_MARKER, REMOTE_DISK_MOUNTED_MARKER],
        ),
        (
            "mount",
            "remote disk: mount ",
            &[REMOTE_DISK_MOUNTED_MARKER, REMOTE_DISK_UNMOUNTED_MARKER],
        ),
        (
            "umount",
            "remote disk: umount ",
            &[REMOTE_DISK_UNMOUNTED_MARKER],
        ),
        ("swapoff", "remote memory: swapoff ", &[]),
    ];
    for &(fail, error, absent) in cases {
        let f = Fake::new();
        f.disk("vda", Some("lego-remote-memory"), 4096, Data::Zeros);
        f.disk("vdb", Some("lego-remote-disk:dat"), 4096, Data::Zeros);
        let r = f.run(
            "lego_attach_devices; echo rc=$?; lego_detach_devices; echo end=$?",
            fail,
        );
        assert_eq!(r.status, 0, "{fail}");
        let errors: Vec<&str> = r
            .stdout
            .lines()
            .filter(|l| l.starts_with(ERROR_PREFIX))
            .collect();
        assert_eq!(errors.len(), 1, "failing {fail}: {}", r.stdout);
        let want = format!("{ERROR_PREFIX} {error}");
        assert!(errors[0].starts_with(&want), "failing {fail}: {errors:?}");
        assert!(
            errors[0].ends_with(&format!("failed: {fail}: simulated failure second line")),
            "the command's output is not on the error line: {errors:?}"
        );
        for m in absent {
            assert!(!r.stdout.contains(m), "failing {fail} still printed {m}");
        }
        assert!(r.stdout.contains("rc=0\n") && r.stdout.ends_with("end=0\n"));
        // The other device is unaffected.
        if fail.contains("swap") {
            assert!(r.stdout.contains(REMOTE_DISK_MOUNTED_MARKER), "{fail}");
        } else {
            assert!(r.stdout.contains(SWAP_ON_MARKER), "{fail}");
        }
        // Nothing that failed to come up is torn down.
        if matches!(fail, "mkswap" | "swapon") {
            assert!(!r.log.contains("swapoff"), "{}", r.log);
        }
        if matches!(fail, "mke2fs" | "mount") {
            assert!(!r.log.contains("umount"), "{}", r.log);
        }
    }
}

#[test]
fn a_busy_mount_is_left_read_only() {
    let f = Fake::new();
    f.disk("vda", Some("lego-remote-disk:dat"), 4096, Data::Ext);
    let r = f.run("lego_attach_devices; lego_detach_devices", "umount");
    let mnt = f.mount_point();
    assert!(
        r.log.contains(&format!("mount -o remount,ro {mnt}")),
        "{}",
        r.log
    );
    assert!(!r.stdout.contains(REMOTE_DISK_UNMOUNTED_MARKER));
    // Two umount tries, then the remount.
    assert_eq!(r.log.matches("umount ").count(), 2, "{}", r.log);
}

#[test]
fn only_the_first_remote_disk_is_mounted() {
    let f = Fake::new();
    f.disk("vda", Some("lego-remote-disk:one"), 4096, Data::Ext);
    f.disk("vdb", Some("lego-remote-disk:two"), 4096, Data::Ext);
    let r = f.run("lego_attach_devices", "");
    let out = lines(&r.stdout);
    assert_eq!(out.len(), 2, "{out:?}");
    assert!(out[0].starts_with(&format!(
        "{REMOTE_DISK_MOUNTED_MARKER} dev={}",
        f.dev_str("vda")
    )));
    assert!(out[1].starts_with(&format!(
        "{ERROR_PREFIX} remote disk: {} left unmounted",
        f.dev_str("vdb")
    )));
}
