//! Runs the real `lego-image build` into a temporary cache and checks the outputs.
//! Needs apt lists (`apt-get update`) and network access to Debian's mirror.

mod common;

use std::path::Path;
use std::process::Command;

use common::{lego_image, skip_without_apt, stderr, temp_cache};

fn cpio_list(path: &Path) -> Vec<String> {
    let out = Command::new("cpio")
        .args(["-it", "--quiet", "-F"])
        .arg(path)
        .output()
        .expect("cpio is installed");
    assert!(out.status.success(), "cpio -it failed: {}", stderr(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn build_produces_a_bootable_looking_guest_image() {
    if skip_without_apt() {
        return;
    }
    let cache = temp_cache();
    let c = cache.path().to_str().unwrap();

    let out = lego_image(&["build", "--cache", c]);
    assert!(out.status.success(), "build failed: {}", stderr(&out));
    let err = stderr(&out);
    for step in [
        "fetching linux-image-6.",
        "unpacking busybox-static",
        "building the initramfs",
    ] {
        assert!(err.contains(step), "no progress line {step:?} in:\n{err}");
    }

    let img = lego_image::guest::output_paths(cache.path());
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        stdout,
        format!("{}\n{}\n", img.kernel.display(), img.initramfs.display())
    );

    // The kernel is a bzImage.
    let kernel = std::fs::read(&img.kernel).unwrap();
    assert!(kernel.len() > 1 << 20);
    assert_eq!(&kernel[0x202..0x206], b"HdrS", "vmlinuz is not a bzImage");

    // The manifest names the kernel and the packages.
    let manifest = lego_image::guest::read_manifest(cache.path()).expect("manifest.json");
    assert!(manifest.kernel_version.starts_with("6."), "{manifest:?}");
    assert!(manifest.kernel_version.ends_with("-cloud-amd64"));
    assert!(manifest.packages.iter().any(|p| p.name == "busybox-static"));
    assert!(manifest
        .packages
        .iter()
        .any(|p| p.name == format!("linux-image-{}", manifest.kernel_version)));
    assert_eq!(
        manifest.initramfs_bytes,
        std::fs::metadata(&img.initramfs).unwrap().len()
    );

    // The initramfs holds init, busybox with applets, the modules in load order, the tools.
    let names = cpio_list(&img.initramfs);
    let has = |n: &str| names.iter().any(|x| x == n);
    let kdir = format!("lib/modules/{}/kernel/drivers", manifest.kernel_version);
    for want in [
        "init".to_string(),
        "bin/busybox".to_string(),
        "bin/sh".to_string(),
        "sbin/insmod".to_string(),
        "sbin/poweroff".to_string(),
        "bin/lego-guest-tools".to_string(),
        "dev/console".to_string(),
        "etc/lego/modules".to_string(),
        format!("{kdir}/block/virtio_blk.ko"),
        format!("{kdir}/virtio/virtio_mmio.ko"),
        format!("{kdir}/virtio/virtio_pci.ko"),
        format!("{kdir}/misc/pvpanic/pvpanic-mmio.ko"),
    ] {
        assert!(has(&want), "{want} missing from the initramfs");
    }
    let pos = |n: &str| {
        manifest
            .modules
            .iter()
            .position(|m| m.ends_with(n))
            .unwrap()
    };
    assert!(pos("/virtio_ring.ko") < pos("/virtio_blk.ko"));
    assert!(pos("/virtio.ko") < pos("/virtio_mmio.ko"));
    assert!(pos("/pvpanic.ko") < pos("/pvpanic-mmio.ko"));
    // Small enough for TCG: busybox + tools + a few modules.
    assert!(
        manifest.initramfs_bytes < 8 << 20,
        "initramfs is {} bytes",
        manifest.initramfs_bytes
    );

    // A second build reuses the outputs; --force rebuilds.
    let before = std::fs::metadata(&img.initramfs)
        .unwrap()
        .modified()
        .unwrap();
    let again = lego_image(&["build", "--cache", c]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(stderr(&again).contains("up to date"), "{}", stderr(&again));
    assert!(!stderr(&again).contains("building the initramfs"));
    assert_eq!(
        std::fs::metadata(&img.initramfs)
            .unwrap()
            .modified()
            .unwrap(),
        before
    );
    let forced = lego_image(&["build", "--cache", c, "--force"]);
    assert!(forced.status.success(), "{}", stderr(&forced));
    assert!(stderr(&forced).contains("building the initramfs"));

    // `path` prints the same outputs.
    let paths = lego_image(&["path", "--cache", c]);
    let text = String::from_utf8_lossy(&paths.stdout).into_owned();
    assert!(
        text.contains(&format!("initramfs={}", img.initramfs.display())),
        "{text}"
    );
    assert!(
        text.contains(&format!("kernel={}", img.kernel.display())),
        "{text}"
    );
}

#[test]
fn a_dynamic_guest_tools_binary_is_refused() {
    if skip_without_apt() {
        return;
    }
    let cache = tempfile::tempdir().unwrap();
    let out = lego_image(&[
        "build",
        "--cache",
        cache.path().to_str().unwrap(),
        "--guest-tools",
        "/bin/sh",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("dynamically linked"),
        "{}",
        stderr(&out)
    );
}
