//! Building the vNode guest image: the stock Debian kernel plus a small uncompressed newc
//! initramfs with busybox, `/init`, the virtio/pvpanic modules and `lego-guest-tools`.
//!
//! Outputs go to `<cache>/guest/` (`vmlinuz`, `initramfs.cpio`, `manifest.json`) and are
//! reused while the hash of the inputs is unchanged.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cpio::{Archive, CpioError};
use crate::debian::{self, DebianError, Package};
use crate::guest_tools::{self, GuestToolsError};
use crate::lock::{CacheLock, LockError};
use crate::modules::{self, ModulesError};
use crate::{init, progress};

/// The Debian packages the guest is built from.
pub const DEFAULT_PACKAGES: &[&str] = &["linux-image-cloud-amd64", "busybox-static"];

/// The modules the guest loads (dependencies are added; built-ins are skipped).
pub const DEFAULT_MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_mmio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "virtio_blk",
    // The vNode's network device.
    "failover",
    "net_failover",
    "virtio_net",
    "pvpanic",
    "pvpanic-mmio",
    // The ACPI power button and its input device, for `lego-guest-tools powerd`.
    "button",
    "evdev",
    "crc32c_generic",
    "ext4",
];

/// Bumped when the archive layout changes, so old caches are rebuilt.
const FORMAT: &str = "lego-image guest format 1";

/// Path of the guest tools inside the initramfs.
pub const GUEST_TOOLS_PATH: &str = "/bin/lego-guest-tools";

/// Errors from building the guest image.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// Fetching the Debian packages failed.
    #[error(transparent)]
    Debian(#[from] DebianError),
    /// Module resolution failed.
    #[error(transparent)]
    Modules(#[from] ModulesError),
    /// The guest tools could not be built or are unusable.
    #[error(transparent)]
    GuestTools(#[from] GuestToolsError),
    /// The archive could not be built.
    #[error(transparent)]
    Cpio(#[from] CpioError),
    /// The cache lock could not be taken.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// busybox is missing from the unpacked packages.
    #[error("busybox was not found at {0}; is busybox-static among the packages?")]
    NoBusybox(PathBuf),
    /// The busybox applet list could not be read.
    #[error("could not list the busybox applets by running {path}: {detail}")]
    BusyboxApplets {
        /// The busybox binary.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// busybox could not be run to list its applets.
    #[error("could not run {path} to list the busybox applets")]
    BusyboxRun {
        /// The busybox binary.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A resolved module is compressed, which the guest's insmod cannot load.
    #[error("the module {0} is compressed; the guest's busybox insmod needs plain .ko files")]
    CompressedModule(PathBuf),
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
    /// The manifest could not be encoded.
    #[error("could not encode the manifest")]
    Manifest(#[from] serde_json::Error),
}

/// What to build and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestOptions {
    /// The cache folder (outputs in `<cache>/guest`).
    pub cache: PathBuf,
    /// Rebuild even if the outputs are up to date.
    pub force: bool,
    /// A prebuilt static guest tools binary; `None` builds it with cargo into
    /// `<cache>/guest-tools-target`.
    pub guest_tools: Option<PathBuf>,
    /// Debian packages to fetch (a kernel and busybox-static).
    pub packages: Vec<String>,
    /// Kernel modules to load at boot.
    pub modules: Vec<String>,
}

impl GuestOptions {
    /// Default options for a cache folder.
    pub fn new(cache: impl Into<PathBuf>) -> Self {
        Self {
            cache: cache.into(),
            force: false,
            guest_tools: None,
            packages: DEFAULT_PACKAGES.iter().map(|s| s.to_string()).collect(),
            modules: DEFAULT_MODULES.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// The built guest image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestImage {
    /// The stock bzImage.
    pub kernel: PathBuf,
    /// The uncompressed newc initramfs.
    pub initramfs: PathBuf,
    /// The JSON manifest describing the inputs.
    pub manifest: PathBuf,
}

/// The contents of `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Layout version of the builder.
    pub format: String,
    /// Kernel release, e.g. `6.1.0-56-cloud-amd64`.
    pub kernel_version: String,
    /// The exact packages used.
    pub packages: Vec<Package>,
    /// Modules in load order, paths inside the initramfs.
    pub modules: Vec<String>,
    /// SHA-256 of the guest tools binary.
    pub guest_tools_sha256: String,
    /// SHA-256 over all inputs; decides whether outputs are reused.
    pub input_hash: String,
    /// Size of the initramfs in bytes.
    pub initramfs_bytes: u64,
    /// Size of the kernel in bytes.
    pub kernel_bytes: u64,
}

/// Returns the output paths for a cache folder (they may not exist yet).
pub fn output_paths(cache: &Path) -> GuestImage {
    let dir = cache.join("guest");
    GuestImage {
        kernel: dir.join("vmlinuz"),
        initramfs: dir.join("initramfs.cpio"),
        manifest: dir.join("manifest.json"),
    }
}

/// Reads the manifest of a built image, if there is a readable one.
pub fn read_manifest(cache: &Path) -> Option<Manifest> {
    let text = std::fs::read_to_string(output_paths(cache).manifest).ok()?;
    serde_json::from_str(&text).ok()
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> GuestError + 'a {
    move |source| GuestError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Lists busybox applets (`usr/bin/[`, `sbin/acpid`, ...) by running the static busybox.
fn busybox_applets(busybox: &Path) -> Result<Vec<String>, GuestError> {
    let out = Command::new(busybox)
        .arg("--list-full")
        .output()
        .map_err(|source| GuestError::BusyboxRun {
            path: busybox.to_path_buf(),
            source,
        })?;
    if !out.status.success() {
        return Err(GuestError::BusyboxApplets {
            path: busybox.to_path_buf(),
            detail: out.status.to_string(),
        });
    }
    let list: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().trim_start_matches('/').to_string())
        .filter(|l| !l.is_empty() && l != "bin/busybox")
        .collect();
    if !list.iter().any(|l| l == "bin/sh") {
        return Err(GuestError::BusyboxApplets {
            path: busybox.to_path_buf(),
            detail: "the applet list has no bin/sh".to_string(),
        });
    }
    Ok(list)
}

/// Everything the archive is made of, gathered before hashing.
struct Inputs {
    unpacked: debian::Unpacked,
    modules: Vec<modules::Module>,
    guest_tools: PathBuf,
    guest_tools_sha256: String,
    applets: Vec<String>,
    init: String,
}

impl Inputs {
    /// Paths of the modules inside the initramfs, in load order.
    fn module_paths(&self) -> Vec<String> {
        self.modules
            .iter()
            .map(|m| {
                format!(
                    "/lib/modules/{}/{}",
                    self.unpacked.kernel_version,
                    m.relative.display()
                )
            })
            .collect()
    }

    /// The hash that decides whether the outputs are reused.
    fn hash(&self) -> String {
        let mut h = Sha256::new();
        h.update(FORMAT.as_bytes());
        for p in &self.unpacked.packages {
            h.update(format!("package {}={}\n", p.name, p.version).as_bytes());
        }
        h.update(format!("kernel {}\n", self.unpacked.kernel_version).as_bytes());
        for m in self.module_paths() {
            h.update(format!("module {m}\n").as_bytes());
        }
        h.update(format!("guest-tools {}\n", self.guest_tools_sha256).as_bytes());
        h.update(format!("init {}\n", self.init.len()).as_bytes());
        h.update(self.init.as_bytes());
        hex(&h.finalize())
    }
}

/// Gathers the inputs: packages, modules, guest tools, applets, init script.
fn gather(opts: &GuestOptions) -> Result<Inputs, GuestError> {
    // Check a given binary first, so a wrong path fails before any download.
    if let Some(p) = &opts.guest_tools {
        guest_tools::check_static(p)?;
    }
    let names: Vec<&str> = opts.packages.iter().map(String::as_str).collect();
    let unpacked = debian::fetch(&opts.cache, &names)?;
    let wanted: Vec<&str> = opts.modules.iter().map(String::as_str).collect();
    let modules = modules::resolve_modules(&unpacked.modules_dir, &wanted)?;
    if let Some(m) = modules.iter().find(|m| modules::is_compressed(&m.path)) {
        return Err(GuestError::CompressedModule(m.path.clone()));
    }
    let guest_tools = match &opts.guest_tools {
        Some(p) => p.clone(),
        None => guest_tools::build(&opts.cache.join("guest-tools-target"))?,
    };
    let bytes = std::fs::read(&guest_tools).map_err(io_err("read", &guest_tools))?;
    let guest_tools_sha256 = hex(&Sha256::digest(&bytes));
    let busybox = unpacked.path("bin/busybox");
    if !busybox.is_file() {
        return Err(GuestError::NoBusybox(busybox));
    }
    let applets = busybox_applets(&busybox)?;
    Ok(Inputs {
        unpacked,
        modules,
        guest_tools,
        guest_tools_sha256,
        applets,
        init: init::script(),
    })
}

/// Assembles the initramfs archive description.
fn archive(inputs: &Inputs) -> Result<Archive, GuestError> {
    let mut a = Archive::new();
    for dir in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc/lego", "proc", "sys", "dev", "run", "root",
    ] {
        a.add_dir(dir, 0o755)?;
    }
    a.add_dir("tmp", 0o1777)?;
    a.add_char_device("dev/console", 0o600, 5, 1)?;
    a.add_char_device("dev/null", 0o666, 1, 3)?;
    a.add_file("init", inputs.init.clone(), 0o755)?;
    a.add_file_from("bin/busybox", &inputs.unpacked.path("bin/busybox"), 0o755)?;
    for applet in &inputs.applets {
        if !a.contains(applet) {
            a.add_symlink(applet, "/bin/busybox")?;
        }
    }
    a.add_file_from(GUEST_TOOLS_PATH, &inputs.guest_tools, 0o755)?;
    let kdir = format!("lib/modules/{}", inputs.unpacked.kernel_version);
    a.add_dir(&kdir, 0o755)?;
    for (m, inside) in inputs.modules.iter().zip(inputs.module_paths()) {
        a.add_file_from(&inside, &m.path, 0o644)?;
    }
    let mut list = inputs.module_paths().join("\n");
    list.push('\n');
    a.add_file(init::MODULE_LIST_PATH, list, 0o644)?;
    a.add_file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n", 0o644)?;
    a.add_file("etc/group", "root:x:0:\n", 0o644)?;
    Ok(a)
}

/// Copies a file to `dest` through a temporary name, so readers never see a partial file.
fn install_file(src: &Path, dest: &Path) -> Result<u64, GuestError> {
    let tmp = dest.with_extension("tmp");
    let n = std::fs::copy(src, &tmp).map_err(io_err("copy", src))?;
    std::fs::rename(&tmp, dest).map_err(io_err("move", &tmp))?;
    Ok(n)
}

/// Builds the guest image into `<cache>/guest`, or reuses it when the inputs are unchanged
/// and `force` is off.
pub fn build(opts: &GuestOptions) -> Result<GuestImage, GuestError> {
    let out = output_paths(&opts.cache);
    let dir = opts.cache.join("guest");
    std::fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
    let _lock = CacheLock::acquire(&dir.join(".lock"))?;

    let inputs = gather(opts)?;
    let input_hash = inputs.hash();
    let up_to_date = read_manifest(&opts.cache).is_some_and(|m| m.input_hash == input_hash)
        && out.kernel.is_file()
        && out.initramfs.is_file();
    if up_to_date && !opts.force {
        progress::step(&format!(
            "guest image is up to date ({})",
            out.initramfs.display()
        ));
        return Ok(out);
    }

    progress::step(&format!(
        "building the initramfs ({} modules, kernel {})",
        inputs.modules.len(),
        inputs.unpacked.kernel_version
    ));
    let _ = std::fs::remove_file(&out.manifest);
    let tmp = out.initramfs.with_extension("cpio.tmp");
    let initramfs_bytes = archive(&inputs)?.write_to_path(&tmp)?;
    std::fs::rename(&tmp, &out.initramfs).map_err(io_err("move", &tmp))?;
    let kernel_bytes = install_file(&inputs.unpacked.vmlinuz, &out.kernel)?;

    let manifest = Manifest {
        format: FORMAT.to_string(),
        kernel_version: inputs.unpacked.kernel_version.clone(),
        packages: inputs.unpacked.packages.clone(),
        modules: inputs.module_paths(),
        guest_tools_sha256: inputs.guest_tools_sha256.clone(),
        input_hash,
        initramfs_bytes,
        kernel_bytes,
    };
    let text = serde_json::to_string_pretty(&manifest)?;
    std::fs::write(&out.manifest, text + "\n").map_err(io_err("write", &out.manifest))?;
    progress::step(&format!(
        "built {} ({} KiB) and {} ({} KiB)",
        out.kernel.display(),
        kernel_bytes / 1024,
        out.initramfs.display(),
        initramfs_bytes / 1024
    ));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_paths_are_under_guest() {
        let p = output_paths(Path::new("/c"));
        assert_eq!(p.kernel, Path::new("/c/guest/vmlinuz"));
        assert_eq!(p.initramfs, Path::new("/c/guest/initramfs.cpio"));
        assert_eq!(p.manifest, Path::new("/c/guest/manifest.json"));
    }

    #[test]
    fn default_options_cover_the_needed_modules() {
        let o = GuestOptions::new("/c");
        for m in [
            "virtio_mmio",
            "virtio_pci",
            "virtio_blk",
            "pvpanic-mmio",
            // The ACPI power button and its input device, for `lego-guest-tools powerd`.
            "button",
            "evdev",
            "ext4",
        ] {
            assert!(o.modules.iter().any(|x| x == m), "{m}");
        }
        assert!(!o.force && o.guest_tools.is_none());
    }

    #[test]
    fn busybox_applets_come_from_the_binary() {
        let busybox = Path::new("/bin/busybox").exists();
        if !lego_testkit::prerequisite::require(
            "/bin/busybox (Debian package busybox-static)",
            busybox,
        ) {
            return;
        }
        let list = busybox_applets(Path::new("/bin/busybox")).unwrap();
        assert!(list.iter().any(|l| l == "sbin/insmod"));
        assert!(list.iter().any(|l| l == "sbin/poweroff"));
        assert!(!list.iter().any(|l| l.starts_with('/')));
        assert!(busybox_applets(Path::new("/bin/true")).is_err());
    }
}
