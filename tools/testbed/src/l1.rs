//! The compute host's (L1's) boot files: the stock Debian cloud kernel and a small
//! initramfs with busybox, the testbed's `/init` and the modules for virtio-mmio disks,
//! KVM on AMD and (loaded only on request) virtio-net. Cached in `<cache>/testbed/l1/` and rebuilt only when the inputs change.

use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use lego_image::cpio::{Archive, CpioError};
use lego_image::debian::{self, DebianError};
use lego_image::lock::{CacheLock, LockError};
use lego_image::modules::{self, ModulesError};

/// The Debian packages L1 is built from.
pub const L1_PACKAGES: &[&str] = &["linux-image-cloud-amd64", "busybox-static"];

/// The modules L1 loads (dependencies are added in load order; built-ins are skipped).
pub const L1_MODULES: &[&str] = &[
    "virtio_mmio",
    "virtio_blk",
    "ext4",
    "irqbypass",
    "kvm",
    "kvm_amd",
    // vNode networks: taps, the kernel's vhost-net data path, and the bridge joining them.
    "tun",
    "vhost_net",
    "bridge",
];

/// The modules L1 loads only when the job asks for the network (dependencies already in
/// [`L1_MODULES`] are not repeated).
pub const L1_NET_MODULES: &[&str] = &["failover", "net_failover", "virtio_net"];

/// L1's `/init`.
pub const INIT_SCRIPT: &str = include_str!("l1_init.sh");

/// Bumped when the layout of the initramfs changes.
const FORMAT: &str = "lego-testbed l1 format 2";

/// Errors from preparing L1's boot files.
#[derive(Debug, thiserror::Error)]
pub enum L1Error {
    /// The Debian packages could not be fetched.
    #[error("could not fetch the compute host's packages")]
    Debian(#[from] DebianError),
    /// A module could not be resolved.
    #[error("could not resolve the compute host's kernel modules")]
    Modules(#[from] ModulesError),
    /// The initramfs could not be written.
    #[error("could not build the compute host's initramfs")]
    Cpio(#[from] CpioError),
    /// The cache lock could not be taken.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The busybox package has no `/bin/busybox`.
    #[error("the unpacked busybox-static has no binary at {0}")]
    NoBusybox(PathBuf),
    /// A file operation failed.
    #[error("could not {action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> L1Error + 'a {
    move |source| L1Error::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// L1's boot files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L1Assets {
    /// The stock bzImage.
    pub kernel: PathBuf,
    /// The uncompressed newc initramfs.
    pub initramfs: PathBuf,
    /// Kernel release, e.g. `6.1.0-56-cloud-amd64`.
    pub kernel_version: String,
    /// Size of the initramfs in bytes.
    pub initramfs_bytes: u64,
    /// True if the files were rebuilt by this call, false if reused.
    pub rebuilt: bool,
}

/// Returns the folder holding L1's files.
pub fn l1_dir(cache: &Path) -> PathBuf {
    cache.join("testbed").join("l1")
}

/// What goes into the initramfs, described as text so that a change of any input shows.
struct Inputs {
    unpacked: debian::Unpacked,
    busybox: PathBuf,
    modules: Vec<PathBuf>,
    net_modules: Vec<PathBuf>,
}

impl Inputs {
    fn gather(cache: &Path) -> Result<Self, L1Error> {
        let unpacked = debian::fetch(cache, L1_PACKAGES)?;
        let busybox = unpacked.path("bin/busybox");
        if !busybox.is_file() {
            return Err(L1Error::NoBusybox(busybox));
        }
        let modules = modules::resolve(&unpacked.modules_dir, L1_MODULES)?;
        let net_modules = modules::resolve(&unpacked.modules_dir, L1_NET_MODULES)?
            .into_iter()
            .filter(|m| !modules.contains(m))
            .collect();
        Ok(Self {
            unpacked,
            busybox,
            modules,
            net_modules,
        })
    }

    fn describe(&self) -> String {
        let mut s = format!("{FORMAT}\nkernel {}\n", self.unpacked.kernel_version);
        for p in &self.unpacked.packages {
            s.push_str(&format!("package {}={}\n", p.name, p.version));
        }
        for m in &self.modules {
            s.push_str(&format!("module {}\n", m.display()));
        }
        for m in &self.net_modules {
            s.push_str(&format!("net-module {}\n", m.display()));
        }
        s.push_str(&format!("busybox {}\n", self.busybox.display()));
        s.push_str(&format!("init {:016x}\n", fnv1a(INIT_SCRIPT.as_bytes())));
        s
    }

    fn archive(&self) -> Result<Archive, L1Error> {
        let mut a = Archive::new();
        for d in [
            "bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "mnt", "run",
        ] {
            a.add_dir(d, 0o755)?;
        }
        a.add_char_device("dev/console", 0o600, 5, 1)?;
        a.add_file_from("bin/busybox", &self.busybox, 0o755)?;
        a.add_file("init", INIT_SCRIPT, 0o755)?;
        for (list, modules) in [
            ("etc/lego/l1-modules", &self.modules),
            ("etc/lego/l1-net-modules", &self.net_modules),
        ] {
            let mut order = String::new();
            for m in modules {
                let name = m
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                a.add_file_from(&format!("lib/modules/l1/{name}"), m, 0o644)?;
                order.push_str(&name);
                order.push('\n');
            }
            a.add_file(list, order, 0o644)?;
        }
        Ok(a)
    }
}

/// FNV-1a, 64 bits: a stable fingerprint for cache keys.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Describes the inputs that do not come from apt.
fn local_inputs() -> String {
    format!(
        "{FORMAT}\nmodules {}\nnet-modules {}\ninit {:016x}\n",
        L1_MODULES.join(","),
        L1_NET_MODULES.join(","),
        fnv1a(INIT_SCRIPT.as_bytes())
    )
}

/// Returns the newest modification time of apt's package lists.
fn apt_lists_mtime() -> Option<SystemTime> {
    std::fs::read_dir(debian::APT_LISTS_DIR)
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("_Packages"))
        .filter_map(|e| e.metadata().ok()?.modified().ok())
        .max()
}

/// Returns the cached files without asking apt, if they were built from the same local
/// inputs after apt's package lists last changed (so apt would pick the same versions).
fn reuse_without_apt(dir: &Path) -> Option<L1Assets> {
    let stamp = dir.join("inputs.txt");
    let local = std::fs::read_to_string(dir.join("local.txt")).ok()?;
    if local != local_inputs() {
        return None;
    }
    let built = std::fs::metadata(&stamp).ok()?.modified().ok()?;
    if apt_lists_mtime()? >= built {
        return None;
    }
    let text = std::fs::read_to_string(&stamp).ok()?;
    // The stamp records the init the initramfs was built from: trust it, not local.txt alone.
    let init_line = format!("init {:016x}", fnv1a(INIT_SCRIPT.as_bytes()));
    if !text.lines().any(|l| l == init_line) {
        return None;
    }
    let kernel_version = text
        .lines()
        .find_map(|l| l.strip_prefix("kernel "))?
        .to_string();
    let kernel = dir.join("vmlinuz");
    let initramfs = dir.join("initramfs.cpio");
    let initramfs_bytes = std::fs::metadata(&initramfs).ok()?.len();
    kernel.is_file().then_some(L1Assets {
        kernel,
        initramfs,
        kernel_version,
        initramfs_bytes,
        rebuilt: false,
    })
}

/// Fetches the packages and builds L1's kernel and initramfs into `<cache>/testbed/l1/`,
/// or reuses them when the inputs are unchanged. Apt is not consulted when the files were
/// built from the same local inputs after its package lists last changed.
pub fn prepare(cache: &Path) -> Result<L1Assets, L1Error> {
    let dir = l1_dir(cache);
    std::fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
    {
        let _lock = CacheLock::acquire(&dir.join(".lock"))?;
        if let Some(assets) = reuse_without_apt(&dir) {
            return Ok(assets);
        }
    }
    let inputs = Inputs::gather(cache)?;
    let _lock = CacheLock::acquire(&dir.join(".lock"))?;
    let kernel = dir.join("vmlinuz");
    let initramfs = dir.join("initramfs.cpio");
    let stamp = dir.join("inputs.txt");
    let description = inputs.describe();
    let fresh = std::fs::read_to_string(&stamp).is_ok_and(|s| s == description)
        && kernel.is_file()
        && initramfs.is_file();
    let kernel_version = inputs.unpacked.kernel_version.clone();
    if fresh {
        let local = dir.join("local.txt");
        std::fs::write(&local, local_inputs()).map_err(io_err("write", &local))?;
        // Touch the stamp so the next call can skip apt.
        std::fs::write(&stamp, &description).map_err(io_err("write", &stamp))?;
        let initramfs_bytes = std::fs::metadata(&initramfs)
            .map_err(io_err("read", &initramfs))?
            .len();
        return Ok(L1Assets {
            kernel,
            initramfs,
            kernel_version,
            initramfs_bytes,
            rebuilt: false,
        });
    }
    eprintln!(
        "lego-testbed: building the compute host initramfs ({} modules, kernel {kernel_version})",
        inputs.modules.len() + inputs.net_modules.len()
    );
    let _ = std::fs::remove_file(&stamp);
    let local = dir.join("local.txt");
    let _ = std::fs::remove_file(&local);
    let tmp = dir.join("initramfs.cpio.tmp");
    let initramfs_bytes = inputs.archive()?.write_to_path(&tmp)?;
    std::fs::rename(&tmp, &initramfs).map_err(io_err("move", &tmp))?;
    let ktmp = dir.join("vmlinuz.tmp");
    std::fs::copy(&inputs.unpacked.vmlinuz, &ktmp).map_err(io_err("copy", &ktmp))?;
    std::fs::rename(&ktmp, &kernel).map_err(io_err("move", &ktmp))?;
    std::fs::write(&local, local_inputs()).map_err(io_err("write", &local))?;
    std::fs::write(&stamp, &description).map_err(io_err("write", &stamp))?;
    Ok(L1Assets {
        kernel,
        initramfs,
        kernel_version,
        initramfs_bytes,
        rebuilt: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_prints_the_markers_the_testbed_reads() {
        for m in [
            crate::markers::L1_INIT,
            crate::markers::L1_KVM_YES,
            crate::markers::L1_JOB_EXIT,
        ] {
            assert!(INIT_SCRIPT.contains(m), "{m}");
        }
        assert!(INIT_SCRIPT.contains("poweroff -f"));
    }

    #[test]
    fn local_inputs_name_every_module_list() {
        let local = local_inputs();
        assert!(local.contains(&L1_MODULES.join(",")), "{local}");
        assert!(local.contains(&L1_NET_MODULES.join(",")), "{local}");
        assert!(INIT_SCRIPT.contains("/etc/lego/l1-net-modules"));
        assert!(INIT_SCRIPT.contains(crate::qemu::NET_CMDLINE));
        assert!(INIT_SCRIPT.contains(crate::markers::L1_NET_UP));
    }

    #[test]
    fn fnv_is_stable() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_ne!(fnv1a(b"a"), fnv1a(b"b"));
    }
}
