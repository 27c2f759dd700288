//! The files a boot benchmark needs on the compute host: the guest image, legovmm, the
//! static timer (`lego-guest-tools`), and QEMU with its shared libraries and qboot, all
//! as job files with plain names (see [`crate::script::files`]).

use std::collections::BTreeSet;
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
    #[error("could not list QEMU's libraries: {0}")]
    Libraries(#[from] DiskError),
    /// A file QEMU needs is missing.
    #[error("{what} {path} does not exist; install qemu-system-x86 or pass its path")]
    Missing {
        /// What the file is.
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// A path could not be resolved.
    #[error("could not resolve {path}: {source}")]
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
    for (what, path) in [("the QEMU binary", binary), ("the qboot firmware", qboot)] {
        if !path.is_file() {
            return Err(AssetsError::Missing {
                what,
                path: path.to_path_buf(),
            });
        }
    }
    let mut out = vec![
        (real_path(binary)?, files::QEMU.to_string()),
        (real_path(qboot)?, files::QBOOT.to_string()),
    ];
    let mut names = BTreeSet::new();
    for lib in disk::libraries(binary)? {
        let name = lib
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !names.insert(name.clone()) {
            return Err(AssetsError::DuplicateLibrary(name));
        }
        out.push((real_path(&lib)?, name));
    }
    if !names.contains(files::LOADER) {
        return Err(AssetsError::NoLoader(binary.to_path_buf()));
    }
    Ok(out)
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
}
