//! Fetching and unpacking Debian packages with `apt-get download` and `dpkg-deb -x`.
//!
//! Layout under the cache folder:
//! - `debs/<name>_<version>.deb`: downloaded packages, reused when present;
//! - `debian/<key>/`: the packages unpacked together, `key` derived from the exact
//!   package versions, with a `.complete` marker written last.
//!
//! A kernel metapackage such as `linux-image-cloud-amd64` is resolved to the versioned
//! `linux-image-<abi>-cloud-amd64` package it depends on, which is fetched as well.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::lock::{CacheLock, LockError};
use crate::progress;

/// Where apt keeps its package lists.
pub const APT_LISTS_DIR: &str = "/var/lib/apt/lists";

/// Errors from fetching or unpacking packages.
#[derive(Debug, thiserror::Error)]
pub enum DebianError {
    /// apt has no package lists, so it cannot find any package.
    #[error("apt has no package lists in {0}; run `apt-get update` first")]
    NoAptLists(PathBuf),
    /// A command could not be started.
    #[error("could not run `{command}`")]
    Spawn {
        /// The command line.
        command: String,
        /// The underlying error.
        source: io::Error,
    },
    /// A command ran but failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// The tail of its standard error.
        stderr: String,
    },
    /// apt does not know a package.
    #[error("apt knows no package named {0:?}; check the name or run `apt-get update`")]
    UnknownPackage(String),
    /// apt-get download produced no file.
    #[error("`apt-get download {0}` did not produce a .deb file")]
    NoDebFile(String),
    /// A file operation in the cache failed.
    #[error("could not {action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The unpacked packages contain no kernel.
    #[error("none of the packages {0:?} contains a kernel (boot/vmlinuz-* and lib/modules/*)")]
    NoKernel(Vec<String>),
    /// The cache lock could not be taken.
    #[error(transparent)]
    Lock(#[from] LockError),
}

/// A package at an exact version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Package {
    /// Package name, e.g. `busybox-static`.
    pub name: String,
    /// Exact Debian version, e.g. `1:1.35.0-4+deb12u1+b1`.
    pub version: String,
}

/// Packages unpacked into one root, with the kernel found among them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    /// The folder all packages were unpacked into.
    pub root: PathBuf,
    /// Every package fetched, including resolved kernel metapackage dependencies.
    pub packages: Vec<Package>,
    /// Kernel release, e.g. `6.1.0-56-cloud-amd64`.
    pub kernel_version: String,
    /// The stock bzImage (`<root>/boot/vmlinuz-<version>`).
    pub vmlinuz: PathBuf,
    /// The kernel's modules folder (`<root>/lib/modules/<version>`).
    pub modules_dir: PathBuf,
}

impl Unpacked {
    /// Returns the path of a file inside the unpacked root (leading `/` optional).
    pub fn path(&self, relative: &str) -> PathBuf {
        self.root.join(relative.trim_start_matches('/'))
    }
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> DebianError + 'a {
    move |source| DebianError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Runs a command and returns its standard output.
fn run(cmd: &mut Command) -> Result<String, DebianError> {
    let command = format!("{cmd:?}").replace('"', "");
    let out = cmd.output().map_err(|source| DebianError::Spawn {
        command: command.clone(),
        source,
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        return Err(DebianError::Command {
            command,
            status: out.status.to_string(),
            stderr: tail.into_iter().rev().collect::<Vec<_>>().join("; "),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Returns true if apt has package lists (`apt-get update` has run).
pub fn apt_lists_present() -> bool {
    lists_in(Path::new(APT_LISTS_DIR))
}

/// Returns true if `lists` holds at least one `*_Packages*` file.
fn lists_in(lists: &Path) -> bool {
    std::fs::read_dir(lists)
        .map(|rd| {
            rd.flatten()
                .any(|e| e.file_name().to_string_lossy().contains("_Packages"))
        })
        .unwrap_or(false)
}

/// Fails with a clear message if apt has no package lists.
fn check_apt_lists(lists: &Path) -> Result<(), DebianError> {
    if lists_in(lists) {
        Ok(())
    } else {
        Err(DebianError::NoAptLists(lists.to_path_buf()))
    }
}

/// The candidate version and dependency field of a package, as apt sees it.
struct Candidate {
    version: String,
    depends: String,
}

/// Asks apt for the candidate record of a package.
fn candidate(name: &str) -> Result<Candidate, DebianError> {
    let out = Command::new("apt-cache")
        .args(["show", "--no-all-versions", name])
        .output()
        .map_err(|source| DebianError::Spawn {
            command: format!("apt-cache show --no-all-versions {name}"),
            source,
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || text.trim().is_empty() {
        return Err(DebianError::UnknownPackage(name.to_string()));
    }
    parse_candidate(&text).ok_or_else(|| DebianError::UnknownPackage(name.to_string()))
}

/// Parses the first record of `apt-cache show` output.
fn parse_candidate(text: &str) -> Option<Candidate> {
    let record = text.split("\n\n").next()?;
    let field = |key: &str| {
        record
            .lines()
            .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
    };
    Some(Candidate {
        version: field("Version:")?,
        depends: field("Depends:").unwrap_or_default(),
    })
}

/// If `name` is a kernel metapackage, returns the versioned kernel package it depends on
/// (name, exact version if pinned with `=`).
fn kernel_dependency(name: &str, depends: &str) -> Option<(String, Option<String>)> {
    if !name.starts_with("linux-image-") {
        return None;
    }
    depends.split(',').find_map(|alt| {
        let dep = alt.split('|').next()?.trim();
        let (dep_name, rest) = dep.split_once(' ').unwrap_or((dep, ""));
        let abi = dep_name.strip_prefix("linux-image-")?;
        if !abi.starts_with(|c: char| c.is_ascii_digit()) {
            return None;
        }
        let version = rest
            .trim()
            .strip_prefix("(=")
            .and_then(|v| v.strip_suffix(')'))
            .map(|v| v.trim().to_string());
        Some((dep_name.to_string(), version))
    })
}

/// Resolves the requested names to exact packages, adding kernel metapackage targets.
fn resolve_packages(names: &[&str]) -> Result<Vec<Package>, DebianError> {
    let mut out: Vec<Package> = Vec::new();
    for name in names {
        let c = candidate(name)?;
        let dep = kernel_dependency(name, &c.depends);
        out.push(Package {
            name: name.to_string(),
            version: c.version,
        });
        if let Some((dep_name, version)) = dep {
            let version = match version {
                Some(v) => v,
                None => candidate(&dep_name)?.version,
            };
            out.push(Package {
                name: dep_name,
                version,
            });
        }
    }
    out.dedup();
    Ok(out)
}

/// Returns the cache file name of a package.
fn deb_file_name(p: &Package) -> String {
    format!("{}_{}.deb", p.name, p.version.replace(':', "%3a"))
}

/// Downloads one package into `debs` unless it is there already.
fn download(debs: &Path, p: &Package) -> Result<PathBuf, DebianError> {
    let dest = debs.join(deb_file_name(p));
    if dest.is_file() {
        progress::step(&format!("using cached {}", dest.display()));
        return Ok(dest);
    }
    progress::step(&format!("fetching {} {}", p.name, p.version));
    let staging = debs.join(format!(".partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(io_err("create", &staging))?;
    let spec = format!("{}={}", p.name, p.version);
    let result = run(Command::new("apt-get")
        .args(["download", "-q", &spec])
        .current_dir(&staging));
    let found = result.and_then(|_| {
        std::fs::read_dir(&staging)
            .map_err(io_err("read", &staging))?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .ok_or_else(|| DebianError::NoDebFile(spec.clone()))
    });
    let moved = found.and_then(|f| std::fs::rename(&f, &dest).map_err(io_err("move", &f)));
    let _ = std::fs::remove_dir_all(&staging);
    moved?;
    Ok(dest)
}

/// Finds the kernel release in an unpacked root.
fn find_kernel(root: &Path) -> Option<(String, PathBuf, PathBuf)> {
    for modules in ["lib/modules", "usr/lib/modules"] {
        let Ok(rd) = std::fs::read_dir(root.join(modules)) else {
            continue;
        };
        let mut versions: Vec<String> = rd
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        versions.sort();
        for v in versions {
            let vmlinuz = root.join("boot").join(format!("vmlinuz-{v}"));
            if vmlinuz.is_file() {
                let dir = root.join(modules).join(&v);
                return Some((v, vmlinuz, dir));
            }
        }
    }
    None
}

/// Returns a short stable key for a set of exact packages.
fn packages_key(packages: &[Package]) -> String {
    let mut h = Sha256::new();
    for p in packages {
        h.update(p.name.as_bytes());
        h.update(b"=");
        h.update(p.version.as_bytes());
        h.update(b"\n");
    }
    let digest = h.finalize();
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Fetches the candidate versions of `packages` (resolving a kernel metapackage to the
/// real kernel package), unpacks them together under `cache` and finds the kernel.
/// Idempotent: downloads and the unpacked tree are reused while versions are unchanged.
pub fn fetch(cache: &Path, packages: &[&str]) -> Result<Unpacked, DebianError> {
    fetch_with_lists(cache, packages, Path::new(APT_LISTS_DIR))
}

/// [`fetch`] with the apt lists folder given (for tests).
fn fetch_with_lists(cache: &Path, names: &[&str], lists: &Path) -> Result<Unpacked, DebianError> {
    check_apt_lists(lists)?;
    let packages = resolve_packages(names)?;
    let debs = cache.join("debs");
    let base = cache.join("debian");
    std::fs::create_dir_all(&debs).map_err(io_err("create", &debs))?;
    std::fs::create_dir_all(&base).map_err(io_err("create", &base))?;
    let _lock = CacheLock::acquire(&base.join(".lock"))?;

    let root = base.join(packages_key(&packages));
    let marker = root.join(".complete");
    if !marker.is_file() {
        let files = packages
            .iter()
            .map(|p| download(&debs, p))
            .collect::<Result<Vec<_>, _>>()?;
        let tmp = base.join(format!(".unpack-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(io_err("create", &tmp))?;
        for (p, f) in packages.iter().zip(&files) {
            progress::step(&format!("unpacking {} {}", p.name, p.version));
            run(Command::new("dpkg-deb").arg("-x").arg(f).arg(&tmp))?;
        }
        let _ = std::fs::remove_dir_all(&root);
        std::fs::rename(&tmp, &root).map_err(io_err("move", &tmp))?;
        let list: String = packages
            .iter()
            .map(|p| format!("{}={}\n", p.name, p.version))
            .collect();
        std::fs::write(&marker, list).map_err(io_err("write", &marker))?;
    } else {
        progress::step(&format!("using unpacked packages in {}", root.display()));
    }
    let (kernel_version, vmlinuz, modules_dir) = find_kernel(&root)
        .ok_or_else(|| DebianError::NoKernel(names.iter().map(|s| s.to_string()).collect()))?;
    Ok(Unpacked {
        root,
        packages,
        kernel_version,
        vmlinuz,
        modules_dir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_apt_lists_say_to_run_apt_get_update() {
        let cache = tempfile::tempdir().unwrap();
        let lists = tempfile::tempdir().unwrap();
        let err = fetch_with_lists(cache.path(), &["busybox-static"], lists.path()).unwrap_err();
        assert!(matches!(err, DebianError::NoAptLists(_)));
        assert!(err.to_string().contains("run `apt-get update`"), "{err}");
    }

    #[test]
    fn finds_the_kernel_dependency_of_a_metapackage() {
        let d = "linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)";
        assert_eq!(
            kernel_dependency("linux-image-cloud-amd64", d),
            Some((
                "linux-image-6.1.0-56-cloud-amd64".into(),
                Some("6.1.192-2".into())
            ))
        );
        assert_eq!(kernel_dependency("busybox-static", d), None);
        assert_eq!(
            kernel_dependency(
                "linux-image-6.1.0-56-cloud-amd64",
                "kmod, linux-base (>= 4.3~)"
            ),
            None
        );
        assert_eq!(
            kernel_dependency("linux-image-x", "foo, linux-image-6.12.9-amd64"),
            Some(("linux-image-6.12.9-amd64".into(), None))
        );
    }

    #[test]
    fn parses_apt_cache_show() {
        let text = "Package: linux-image-cloud-amd64\nVersion: 6.1.192-2\nDepends: a (= 1)\n\nPackage: x\nVersion: 9\n";
        let c = parse_candidate(text).unwrap();
        assert_eq!(c.version, "6.1.192-2");
        assert_eq!(c.depends, "a (= 1)");
        assert!(parse_candidate("Package: x\n").is_none());
    }

    #[test]
    fn finds_kernel_in_a_fake_root() {
        let root = tempfile::tempdir().unwrap();
        assert!(find_kernel(root.path()).is_none());
        std::fs::create_dir_all(root.path().join("lib/modules/6.1.0-9-cloud-amd64")).unwrap();
        std::fs::create_dir_all(root.path().join("boot")).unwrap();
        std::fs::write(root.path().join("boot/vmlinuz-6.1.0-9-cloud-amd64"), b"k").unwrap();
        let (v, k, m) = find_kernel(root.path()).unwrap();
        assert_eq!(v, "6.1.0-9-cloud-amd64");
        assert!(k.ends_with("boot/vmlinuz-6.1.0-9-cloud-amd64"));
        assert!(m.ends_with("lib/modules/6.1.0-9-cloud-amd64"));
    }

    #[test]
    fn deb_names_and_keys_are_stable() {
        let p = Package {
            name: "busybox-static".into(),
            version: "1:1.35".into(),
        };
        assert_eq!(deb_file_name(&p), "busybox-static_1%3a1.35.deb");
        let k1 = packages_key(std::slice::from_ref(&p));
        assert_eq!(k1.len(), 16);
        let q = Package {
            version: "1:1.36".into(),
            ..p.clone()
        };
        assert_ne!(k1, packages_key(&[q]));
    }
}
