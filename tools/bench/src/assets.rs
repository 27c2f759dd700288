//! The files a boot benchmark needs on the compute host: the guest image, legovmm, the
//! static timer (`lego-guest-tools`), and QEMU with its shared libraries and qboot, all
//! as job files with plain names (see [`crate::script::files`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lego_image::guest_tools::{self, GuestToolsError};
use lego_testbed::disk::{self, DiskError};
use lego_testbed::paths::{self, PathsError};
use lego_testbed::vnode::{self, VnodeError};

use crate::script::files;

/// Errors from gathering the benchmark's files.
#[derive(Debug, thiserror::Error)]
pub enum AssetsError {
    /// The guest image could not be built.
    #[error(transparent)]
    Guest(#[from] VnodeError),
    /// legovmm was not found.
    #[error(transparent)]
    Legovmm(#[from] PathsError),
    /// The static timer could not be built or is not static.
    #[error(transparent)]
    Timer(#[from] GuestToolsError),
    /// QEMU's libraries could not be listed.
    #[error("could not list QEMU's libraries")]
    Libraries(#[from] DiskError),
    /// A file QEMU needs is missing.
    #[error("{what} {path} does not exist; install it (qemu-system-x86, qemu-utils, cargo build --release --workspace) or pass its path")]
    Missing {
        /// What the file is.
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// A path could not be resolved.
    #[error("could not resolve {path}")]
    Resolve {
        /// The path as given or as ldd named it.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Two of QEMU's libraries have the same file name.
    #[error("QEMU needs two libraries named {0:?}; they cannot share the job folder")]
    DuplicateLibrary(String),
    /// ldd did not name the dynamic loader.
    #[error("ldd named no dynamic loader (ld-linux-x86-64.so.2) for {0}")]
    NoLoader(PathBuf),
}

/// The guest's kernel and initramfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guest {
    /// The bzImage.
    pub kernel: PathBuf,
    /// The initramfs.
    pub initramfs: PathBuf,
}

/// Returns the guest image in `cache`: the one already built there, unless `rebuild` or
/// it is missing, in which case lego-image (re)builds it.
pub fn guest(cache: &Path, rebuild: bool) -> Result<Guest, AssetsError> {
    let built = lego_image::guest::output_paths(cache);
    let present = built.kernel.is_file() && built.initramfs.is_file();
    let image = if present && !rebuild {
        built
    } else {
        vnode::guest_image(cache)?
    };
    Ok(Guest {
        kernel: image.kernel,
        initramfs: image.initramfs,
    })
}

/// Returns the guest image in `cache` built with `guest_tools` (a static lego-guest-tools)
/// as its tools, rebuilt when any input changed since the image in the cache was made (the
/// kernel modules, the init scripts, the tools) or when `rebuild`: for a benchmark whose
/// guest runs programs that a cached image of an older workspace may lack, and which must
/// run the very tools the compute host runs.
pub fn current_guest(
    cache: &Path,
    guest_tools: &Path,
    rebuild: bool,
) -> Result<Guest, AssetsError> {
    let mut opts = lego_image::guest::GuestOptions::new(cache);
    opts.guest_tools = Some(guest_tools.to_path_buf());
    opts.force = rebuild;
    let image = lego_image::guest::build(&opts).map_err(VnodeError::from)?;
    Ok(Guest {
        kernel: image.kernel,
        initramfs: image.initramfs,
    })
}

/// Returns the legovmm to measure: `explicit`, else the workspace's release build, else
/// the testbed's usual search.
pub fn legovmm(explicit: Option<&Path>) -> Result<PathBuf, AssetsError> {
    if explicit.is_none() {
        let release = paths::workspace_root().join("target/release/legovmm");
        if release.is_file() {
            return Ok(release);
        }
    }
    Ok(paths::locate_legovmm(explicit)?)
}

/// Returns the static timer: `explicit` (checked to be static), else built by cargo into
/// `target_dir`.
pub fn timer(explicit: Option<&Path>, target_dir: &Path) -> Result<PathBuf, AssetsError> {
    match explicit {
        Some(p) => {
            guest_tools::check_static(p)?;
            Ok(p.to_path_buf())
        }
        None => Ok(guest_tools::build(target_dir)?),
    }
}

/// Where the static timer is built by default: `$CARGO_TARGET_DIR/guest-tools-static`,
/// else `<cache>/guest-tools-target`.
pub fn default_tools_target(cache: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .filter(|v| !v.is_empty())
        .map(|t| PathBuf::from(t).join("guest-tools-static"))
        .unwrap_or_else(|| cache.join("guest-tools-target"))
}

/// Resolves symlinks, so that the job disk gets the file itself (the testbed hard-links
/// job files, and a hard link to a symlink would stay a symlink).
fn real_path(path: &Path) -> Result<PathBuf, AssetsError> {
    std::fs::canonicalize(path).map_err(|source| AssetsError::Resolve {
        path: path.to_path_buf(),
        source,
    })
}

/// Returns QEMU's job files: the binary, qboot, and every shared library under its own
/// file name (the real file, symlinks resolved), the loader included.
pub fn qemu(binary: &Path, qboot: &Path) -> Result<Vec<(PathBuf, String)>, AssetsError> {
    qemu_with(binary, qboot, &[])
}

/// Returns QEMU's job files as [`qemu`] does, plus `others` (programs such as qemu-nbd,
/// under their job names) and their libraries, each library once.
pub fn qemu_with(
    binary: &Path,
    qboot: &Path,
    others: &[(&Path, &str)],
) -> Result<Vec<(PathBuf, String)>, AssetsError> {
    for (what, path) in [("the QEMU binary", binary), ("the qboot firmware", qboot)] {
        if !path.is_file() {
            return Err(AssetsError::Missing {
                what,
                path: path.to_path_buf(),
            });
        }
    }
    let mut binaries = vec![(binary, files::QEMU)];
    binaries.extend_from_slice(others);
    let mut out = dynamic_binaries(&binaries)?;
    out.insert(1, (real_path(qboot)?, files::QBOOT.to_string()));
    Ok(out)
}

/// Returns the job files of dynamically linked programs run through the loader on the
/// compute host (`./ld-linux-x86-64.so.2 --library-path $JOB_DIR ./NAME`): each binary
/// under its job name, then the union of their shared libraries, each under its own file
/// name (the real file, symlinks resolved), the loader included. A library several
/// binaries need is staged once; two different files with one name are an error.
pub fn dynamic_binaries(binaries: &[(&Path, &str)]) -> Result<Vec<(PathBuf, String)>, AssetsError> {
    let mut out = Vec::new();
    for (binary, name) in binaries {
        if !binary.is_file() {
            return Err(AssetsError::Missing {
                what: "the program",
                path: binary.to_path_buf(),
            });
        }
        out.push((real_path(binary)?, name.to_string()));
    }
    let mut libs: BTreeMap<String, PathBuf> = BTreeMap::new();
    for (binary, _) in binaries {
        let mut has_loader = false;
        for lib in disk::libraries(binary)? {
            let name = lib
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            has_loader |= name == files::LOADER;
            let real = real_path(&lib)?;
            match libs.get(&name) {
                Some(seen) if *seen == real => {}
                Some(_) => return Err(AssetsError::DuplicateLibrary(name)),
                None => {
                    libs.insert(name.clone(), real.clone());
                    out.push((real, name));
                }
            }
        }
        if !has_loader {
            return Err(AssetsError::NoLoader(binary.to_path_buf()));
        }
    }
    Ok(out)
}

/// Returns `dir/NAME` for each name, checking that each is a file (the workspace's
/// release binaries a job runs, e.g. the manager and the memory monitor).
pub fn binaries_in(dir: &Path, names: &[&str]) -> Result<Vec<(PathBuf, String)>, AssetsError> {
    names
        .iter()
        .map(|name| {
            let path = dir.join(name);
            if path.is_file() {
                Ok((path, name.to_string()))
            } else {
                Err(AssetsError::Missing {
                    what: "the program",
                    path,
                })
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_a_dynamic_binary_with_its_loader() {
        let files = qemu(Path::new("/bin/sh"), Path::new("/bin/sh")).unwrap();
        let names: Vec<&str> = files.iter().map(|(_, n)| n.as_str()).collect();
        assert!(names.contains(&files::LOADER), "{names:?}");
        assert!(names.contains(&"libc.so.6"), "{names:?}");
        for (path, _) in &files {
            assert!(
                !std::fs::symlink_metadata(path)
                    .unwrap()
                    .file_type()
                    .is_symlink(),
                "{}",
                path.display()
            );
        }
    }

    #[test]
    fn missing_files_are_reported() {
        let err = qemu(Path::new("/nonexistent/qemu"), Path::new("/bin/sh")).unwrap_err();
        assert!(err.to_string().contains("QEMU binary"), "{err}");
        let err = timer(Some(Path::new("/bin/sh")), Path::new("/tmp")).unwrap_err();
        assert!(err.to_string().contains("dynamically linked"), "{err}");
    }

    #[test]
    fn shared_libraries_are_staged_once() {
        let one = dynamic_binaries(&[(Path::new("/bin/sh"), "a")]).unwrap();
        let two =
            dynamic_binaries(&[(Path::new("/bin/sh"), "a"), (Path::new("/bin/ls"), "b")]).unwrap();
        let names: Vec<&str> = two.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(&names[..2], ["a", "b"]);
        let libc = names.iter().filter(|n| **n == "libc.so.6").count();
        assert_eq!(libc, 1, "{names:?}");
        assert!(two.len() > one.len());
        let err = dynamic_binaries(&[(Path::new("/nonexistent/qemu-nbd"), "n")]).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/qemu-nbd"), "{err}");
    }

    #[test]
    fn release_binaries_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("lego-manager"), "").unwrap();
        let got = binaries_in(dir.path(), &["lego-manager"]).unwrap();
        assert_eq!(got[0].1, "lego-manager");
        let err = binaries_in(dir.path(), &["lego-manager", "legoctl"]).unwrap_err();
        assert!(err.to_string().contains("legoctl"), "{err}");
    }
}
