//! Durable file helpers: atomic replacement (temp + fsync + rename + fsync of the folder).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

/// Errors from durable file operations.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// An I/O step failed.
    #[error("could not {step} '{path}'")]
    Io {
        /// What was being done.
        step: &'static str,
        /// The path concerned.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

fn io<'a>(step: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> FsError + 'a {
    move |source| FsError::Io {
        step,
        path: path.display().to_string(),
        source,
    }
}

/// Fsyncs a folder so that entries created, renamed or removed in it are durable.
pub fn fsync_dir(dir: &Path) -> Result<(), FsError> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io("fsync the folder", dir))
}

/// Replaces `path` with `bytes` atomically and durably: a crash leaves either the old or the
/// new content, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FsError> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io("create the temporary file", &tmp))?;
        f.write_all(bytes).map_err(io("write", &tmp))?;
        f.sync_all().map_err(io("fsync", &tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io("rename into place", path))?;
    fsync_dir(dir)
}

/// Checks that `dir` exists (creating it if needed) and that files can be created in it.
pub fn check_writable_dir(dir: &Path) -> Result<(), FsError> {
    std::fs::create_dir_all(dir).map_err(io("create the folder", dir))?;
    let probe = dir.join(format!(".write-probe.{}", std::process::id()));
    File::create(&probe).map_err(io("create a file in the folder", dir))?;
    std::fs::remove_file(&probe).map_err(io("remove a probe file from the folder", dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_replace() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("state.json");
        write_atomic(&p, b"one").expect("write");
        write_atomic(&p, b"two").expect("write");
        assert_eq!(std::fs::read(&p).expect("read"), b"two");
        assert_eq!(
            std::fs::read_dir(d.path()).expect("ls").count(),
            1,
            "no temp file left"
        );
        check_writable_dir(&d.path().join("sub")).expect("writable");
    }
}
