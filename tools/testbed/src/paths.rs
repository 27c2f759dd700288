//! Where things are: the workspace, the shared cache folder and the `legovmm` binary.

use std::path::{Path, PathBuf};

/// The environment variable naming the `legovmm` binary.
pub const LEGOVMM_ENV: &str = "LEGOVMM_BIN";

/// Errors from locating files.
#[derive(Debug, thiserror::Error)]
pub enum PathsError {
    /// No `legovmm` binary was found in any of the places searched.
    #[error("no legovmm binary found (looked at {0}); build it with `cargo build -p legovmm` or pass --legovmm / set LEGOVMM_BIN")]
    NoLegovmm(String),
    /// A `legovmm` path was given but it is not a file.
    #[error("the legovmm binary {0} does not exist or is not a file")]
    MissingLegovmm(PathBuf),
}

/// Returns the workspace root this crate was built from (shared with `lego-image`).
pub use lego_image::guest_tools::workspace_root;

/// Returns the cache folder shared with `lego-image`: `$LEGO_CACHE` or `<workspace>/.cache`.
pub fn default_cache() -> PathBuf {
    lego_image::default_cache()
}

/// Returns the places searched for `legovmm`, in order: `$LEGOVMM_BIN`, then the
/// workspace's `target/release/legovmm` and `target/debug/legovmm`.
pub fn legovmm_candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(v) = std::env::var_os(LEGOVMM_ENV).filter(|v| !v.is_empty()) {
        out.push(PathBuf::from(v));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    out.push(target.join("release/legovmm"));
    out.push(target.join("debug/legovmm"));
    let ws_target = workspace_root().join("target");
    if ws_target != target {
        out.push(ws_target.join("release/legovmm"));
        out.push(ws_target.join("debug/legovmm"));
    }
    out
}

/// Locates `legovmm`: `explicit` if given (it must exist), else the first existing
/// candidate of [`legovmm_candidates`].
pub fn locate_legovmm(explicit: Option<&Path>) -> Result<PathBuf, PathsError> {
    if let Some(p) = explicit {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(PathsError::MissingLegovmm(p.to_path_buf()))
        };
    }
    let candidates = legovmm_candidates();
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| {
            PathsError::NoLegovmm(
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_root_holds_the_workspace_manifest() {
        assert!(workspace_root().join("Cargo.toml").is_file());
    }

    #[test]
    fn an_explicit_missing_legovmm_is_an_error() {
        let err = locate_legovmm(Some(Path::new("/nonexistent/legovmm"))).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
    }
}
