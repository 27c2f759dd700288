//! Building the static `lego-guest-tools` binary with cargo, and checking that a given
//! binary is static (the guest has no C library).

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{elf, progress};

/// The target triple the guest binary is built for.
pub const TARGET: &str = "x86_64-unknown-linux-gnu";

/// The package name of the guest tools in the workspace.
pub const PACKAGE: &str = "lego-guest-tools";

/// Errors from building or checking the guest tools.
#[derive(Debug, thiserror::Error)]
pub enum GuestToolsError {
    /// The workspace sources were not found.
    #[error("the workspace with {PACKAGE} was not found at {0}; pass --guest-tools PATH instead")]
    NoWorkspace(PathBuf),
    /// cargo could not be started.
    #[error("could not run cargo ({cargo})")]
    Spawn {
        /// The cargo executable.
        cargo: String,
        /// The underlying error.
        source: io::Error,
    },
    /// cargo failed.
    #[error("cargo could not build {PACKAGE} ({0}); see its output above")]
    Build(String),
    /// The binary could not be read.
    #[error("could not read the guest tools binary {path}")]
    Read {
        /// The binary.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The binary is not an ELF file.
    #[error("{path} is not a usable ELF executable")]
    Elf {
        /// The binary.
        path: PathBuf,
        /// The parse error.
        source: elf::ElfError,
    },
    /// The binary needs a dynamic loader, which the guest does not have.
    #[error("{0} is dynamically linked; the guest needs a static binary (build with -C target-feature=+crt-static)")]
    NotStatic(PathBuf),
}

/// Returns the workspace root this crate was built from.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Checks that `path` is a statically linked ELF executable.
pub fn check_static(path: &Path) -> Result<(), GuestToolsError> {
    let bytes = std::fs::read(path).map_err(|source| GuestToolsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let is_static = elf::is_static(&bytes).map_err(|source| GuestToolsError::Elf {
        path: path.to_path_buf(),
        source,
    })?;
    if is_static {
        Ok(())
    } else {
        Err(GuestToolsError::NotStatic(path.to_path_buf()))
    }
}

/// Builds the guest tools statically with cargo into `target_dir` and returns the binary,
/// after checking that it is static. Cargo's own output goes to standard error.
pub fn build(target_dir: &Path) -> Result<PathBuf, GuestToolsError> {
    let root = workspace_root();
    if !root.join("tools/guest-tools/Cargo.toml").is_file() {
        return Err(GuestToolsError::NoWorkspace(root));
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    progress::step(&format!(
        "building {PACKAGE} (static, {TARGET}) into {}",
        target_dir.display()
    ));
    let status = Command::new(&cargo)
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            PACKAGE,
            "--target",
            TARGET,
        ])
        .current_dir(&root)
        .env("CARGO_TARGET_DIR", target_dir)
        .env(
            "RUSTFLAGS",
            "-C target-feature=+crt-static -C strip=symbols",
        )
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .status()
        .map_err(|source| GuestToolsError::Spawn {
            cargo: cargo.clone(),
            source,
        })?;
    if !status.success() {
        return Err(GuestToolsError::Build(status.to_string()));
    }
    let bin = target_dir.join(TARGET).join("release").join(PACKAGE);
    check_static(&bin)?;
    Ok(bin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_and_missing_binaries_are_rejected() {
        assert!(matches!(
            check_static(Path::new("/bin/sh")),
            Err(GuestToolsError::NotStatic(_))
        ));
        assert!(matches!(
            check_static(Path::new("/nonexistent/bin")),
            Err(GuestToolsError::Read { .. })
        ));
        if Path::new("/bin/busybox").exists() {
            // Debian's busybox-static is static.
            check_static(Path::new("/bin/busybox")).unwrap();
        }
    }

    #[test]
    fn workspace_root_has_the_guest_tools() {
        assert!(workspace_root()
            .join("tools/guest-tools/Cargo.toml")
            .is_file());
    }
}
