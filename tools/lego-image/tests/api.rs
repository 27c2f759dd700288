//! The library API the testbed uses, on the real Debian packages: fetch, resolve, cpio.

mod common;

use common::skip_without_apt;
use lego_image::{cpio, debian, modules};

#[test]
fn fetch_and_resolve_on_the_real_kernel_package() {
    if skip_without_apt() {
        return;
    }
    let cache = tempfile::tempdir().unwrap();
    let u = debian::fetch(cache.path(), &["linux-image-cloud-amd64", "busybox-static"]).unwrap();
    assert!(u.kernel_version.starts_with("6."), "{u:?}");
    assert!(u.vmlinuz.is_file() && u.vmlinuz.starts_with(&u.root));
    assert!(u.modules_dir.join("modules.builtin").is_file());
    assert!(u.path("/bin/busybox").is_file());
    // The metapackage was resolved to the versioned kernel package.
    assert!(u
        .packages
        .iter()
        .any(|p| p.name == format!("linux-image-{}", u.kernel_version)));

    // Idempotent: same root, nothing downloaded again.
    let again =
        debian::fetch(cache.path(), &["linux-image-cloud-amd64", "busybox-static"]).unwrap();
    assert_eq!(again, u);

    // Debian ships no modules.dep, so this exercises the .modinfo path on real modules.
    let order = modules::resolve(&u.modules_dir, &["virtio_blk", "pvpanic-mmio"]).unwrap();
    let names: Vec<String> = order
        .iter()
        .map(|p| modules::canonical_name(&p.to_string_lossy()))
        .collect();
    let pos = |n: &str| {
        names
            .iter()
            .position(|x| x == n)
            .unwrap_or_else(|| panic!("{n} in {names:?}"))
    };
    assert!(pos("virtio_ring") < pos("virtio_blk"));
    assert!(pos("virtio") < pos("virtio_blk"));
    assert!(pos("pvpanic") < pos("pvpanic_mmio"));
    assert_eq!(names.len(), 5, "{names:?}");
    assert!(order.iter().all(|p| p.is_file()));
    // ext4 is built into the cloud kernel: nothing to load, not an error.
    assert!(modules::resolve(&u.modules_dir, &["ext4"])
        .unwrap()
        .is_empty());
    assert!(modules::resolve(&u.modules_dir, &["no_such_module"]).is_err());

    // The cpio builder takes host files from the unpacked tree.
    let mut a = cpio::Archive::new();
    a.add_file_from("bin/busybox", &u.path("bin/busybox"), 0o755)
        .unwrap();
    let out = cache.path().join("t.cpio");
    let n = a.write_to_path(&out).unwrap();
    assert!(n > std::fs::metadata(u.path("bin/busybox")).unwrap().len());
}
