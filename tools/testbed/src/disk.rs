//! The per-job disk of the compute host: a folder staged with the job's files, the
//! `legovmm` binary and its shared libraries, turned into an ext4 image with
//! `mke2fs -d`, and read back after the run with `debugfs` (no mount needed).
//!
//! Layout inside the image:
//! - `job/`: the job folder (`$JOB_DIR`): `job.sh` and the job's files by name;
//! - `.lego/bin/legovmm`: the VMM (or a stub that fails, when none was given);
//! - `.lego/root/<path>`: each shared library at its host path, listed in `.lego/libs`;
//! - `.lego/lib.sh`: the jobs' shell library (`$LEGO_TESTBED_LIB`).

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Name of the job script inside the job folder.
pub const JOB_SCRIPT: &str = "job.sh";
/// Name of the job folder inside the image.
pub const JOB_DIR: &str = "job";

/// Free space added to every image on top of its contents.
const BASE_MARGIN_BYTES: u64 = 16 << 20;

/// Errors from staging, building or reading a job disk.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// A job file name is unusable.
    #[error("job file name {0:?} is not allowed: use a plain name without '/', quotes or newlines, other than job.sh")]
    BadName(String),
    /// Two job files have the same name.
    #[error("two job files are both named {0:?}")]
    Duplicate(String),
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
    /// A tool could not be run or failed.
    #[error("`{command}` failed: {detail}")]
    Tool {
        /// The command line.
        command: String,
        /// What went wrong.
        detail: String,
    },
    /// A tool could not be started.
    #[error("could not run `{command}`")]
    Run {
        /// The command line.
        command: String,
        /// Why.
        source: io::Error,
    },
    /// A shared library of the VMM was not found on this host.
    #[error("{binary} needs {library}, which ldd could not find")]
    MissingLibrary {
        /// The binary.
        binary: PathBuf,
        /// The library's name.
        library: String,
    },
    /// The requested file is not in the image.
    #[error("the job left no file {name:?} in {image}")]
    NotFound {
        /// The file's name in the job folder.
        name: String,
        /// The image.
        image: PathBuf,
    },
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> DiskError + 'a {
    move |source| DiskError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Checks that `name` can be a file in the job folder.
pub fn check_name(name: &str) -> Result<(), DiskError> {
    let bad = name.is_empty()
        || name == "."
        || name == ".."
        || name == JOB_SCRIPT
        || name.contains(['/', '"', '\'', '\n', '\r', '\0']);
    if bad {
        Err(DiskError::BadName(name.to_string()))
    } else {
        Ok(())
    }
}

/// Places `src` at `dest`: a hard link when possible, else a copy.
fn place(src: &Path, dest: &Path) -> Result<(), DiskError> {
    if std::fs::hard_link(src, dest).is_ok() {
        return Ok(());
    }
    std::fs::copy(src, dest).map_err(io_err("copy", src))?;
    Ok(())
}

/// Writes the job folder into `dir`: `job.sh` with `script`, and each `(host, name)` file.
pub fn stage_job(dir: &Path, script: &str, files: &[(PathBuf, String)]) -> Result<(), DiskError> {
    std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    let mut names = std::collections::BTreeSet::new();
    for (host, name) in files {
        check_name(name)?;
        if !names.insert(name.as_str()) {
            return Err(DiskError::Duplicate(name.clone()));
        }
        place(host, &dir.join(name))?;
    }
    let path = dir.join(JOB_SCRIPT);
    std::fs::write(&path, script).map_err(io_err("write", &path))?;
    Ok(())
}

/// Returns the shared libraries `binary` loads, as ldd reports them (the dynamic loader
/// included); empty for a static binary.
pub fn libraries(binary: &Path) -> Result<Vec<PathBuf>, DiskError> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(|source| DiskError::Run {
            command: format!("ldd {}", binary.display()),
            source,
        })?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if text.contains("not a dynamic executable") || text.contains("statically linked") {
        return Ok(Vec::new());
    }
    if !out.status.success() {
        return Err(DiskError::Tool {
            command: format!("ldd {}", binary.display()),
            detail: text.trim().to_string(),
        });
    }
    parse_ldd(binary, &text)
}

/// Parses ldd's output into library paths.
fn parse_ldd(binary: &Path, text: &str) -> Result<Vec<PathBuf>, DiskError> {
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (name, rest) = match line.split_once(" => ") {
            Some((n, r)) => (n.trim(), r.trim()),
            None => ("", line),
        };
        if rest.starts_with("not found") {
            return Err(DiskError::MissingLibrary {
                binary: binary.to_path_buf(),
                library: name.to_string(),
            });
        }
        let path = rest.split_whitespace().next().unwrap_or("");
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

/// Whether `path` is an ELF file (a binary whose libraries must come along).
pub fn is_elf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == *b"\x7fELF"
}

/// Writes the VMM and its libraries under `<root>/.lego`, with the libraries of `binaries`
/// (the job's own programs); with no VMM, a stub that explains itself and exits 127.
pub fn stage_vmm(
    root: &Path,
    legovmm: Option<&Path>,
    binaries: &[PathBuf],
) -> Result<(), DiskError> {
    let lego = root.join(".lego");
    let bin = lego.join("bin");
    std::fs::create_dir_all(&bin).map_err(io_err("create", &bin))?;
    let dest = bin.join("legovmm");
    let mut manifest = String::new();
    let mut libs = std::collections::BTreeSet::new();
    for b in binaries {
        libs.extend(libraries(b)?);
    }
    match legovmm {
        Some(src) => {
            place(src, &dest)?;
            libs.extend(libraries(src)?);
        }
        None => {
            let stub = "#!/bin/sh\necho 'lego-testbed: this job was given no legovmm binary' >&2\nexit 127\n";
            std::fs::write(&dest, stub).map_err(io_err("write", &dest))?;
            set_mode(&dest, 0o755)?;
        }
    }
    for lib in libs {
        let inner = lego
            .join("root")
            .join(lib.strip_prefix("/").unwrap_or(&lib));
        if let Some(parent) = inner.parent() {
            std::fs::create_dir_all(parent).map_err(io_err("create", parent))?;
        }
        // Copy, following symlinks, so the image holds the real file.
        std::fs::copy(&lib, &inner).map_err(io_err("copy", &lib))?;
        manifest.push_str(&format!("{}\n", lib.display()));
    }
    let list = lego.join("libs");
    std::fs::write(&list, manifest).map_err(io_err("write", &list))?;
    stage_shell_lib(root)
}

/// Records which try of the job the next image is for, in `<root>/.lego/try` (the compute
/// host's init exports it as `$LEGO_TESTBED_TRY`).
pub fn stage_try(root: &Path, attempt: u32) -> Result<(), DiskError> {
    let lego = root.join(".lego");
    std::fs::create_dir_all(&lego).map_err(io_err("create", &lego))?;
    let path = lego.join("try");
    std::fs::write(&path, format!("{attempt}\n")).map_err(io_err("write", &path))
}

/// Writes the jobs' shell library to `<root>/.lego/lib.sh`.
pub fn stage_shell_lib(root: &Path) -> Result<(), DiskError> {
    let path = root.join(crate::shell::LIB_PATH);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io_err("create", parent))?;
    }
    std::fs::write(&path, crate::shell::SHELL_LIB).map_err(io_err("write", &path))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), DiskError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io_err("chmod", path))
}

/// Returns the bytes a folder tree takes, rounding each file up to 4 KiB.
fn tree_bytes(dir: &Path) -> Result<u64, DiskError> {
    let mut total = 4096;
    for entry in std::fs::read_dir(dir).map_err(io_err("read", dir))? {
        let entry = entry.map_err(io_err("read", dir))?;
        let meta = std::fs::symlink_metadata(entry.path()).map_err(io_err("stat", dir))?;
        total += if meta.is_dir() {
            tree_bytes(&entry.path())?
        } else {
            meta.len().div_ceil(4096) * 4096 + 4096
        };
    }
    Ok(total)
}

/// Builds an ext4 image at `image` from the folder `root`, sized to its contents plus
/// 15%, 16 MiB and `extra_mib`. Returns the image size in bytes.
pub fn make_image(root: &Path, image: &Path, extra_mib: u64) -> Result<u64, DiskError> {
    let used = tree_bytes(root)?;
    let size = used + used / 100 * 15 + BASE_MARGIN_BYTES + (extra_mib << 20);
    let size_kib = size.div_ceil(4096) * 4;
    let _ = std::fs::remove_file(image);
    let mut cmd = Command::new("mke2fs");
    cmd.args([
        "-q",
        "-F",
        "-t",
        "ext4",
        "-m",
        "0",
        "-E",
        "root_owner=0:0",
        "-d",
    ])
    .arg(root)
    .arg(image)
    .arg(format!("{size_kib}k"));
    run_tool(cmd)?;
    Ok(size_kib * 1024)
}

/// Runs a tool and turns failure into [`DiskError::Tool`].
fn run_tool(mut cmd: Command) -> Result<String, DiskError> {
    let command = format!("{cmd:?}").replace('"', "");
    let out = cmd.output().map_err(|source| DiskError::Run {
        command: command.clone(),
        source,
    })?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(DiskError::Tool {
            command,
            detail: stderr.trim().to_string(),
        });
    }
    Ok(stderr)
}

/// Copies `job/<name>` out of the ext4 image to `dest` with `debugfs`.
pub fn dump_file(image: &Path, name: &str, dest: &Path) -> Result<(), DiskError> {
    check_name(name)?;
    let dest_text = dest.to_string_lossy();
    if dest_text.contains(['"', '\n']) {
        return Err(DiskError::BadName(dest_text.into_owned()));
    }
    let _ = std::fs::remove_file(dest);
    let mut cmd = Command::new("debugfs");
    cmd.arg("-R")
        .arg(format!("dump \"/{JOB_DIR}/{name}\" \"{dest_text}\""))
        .arg(image);
    run_tool(cmd)?;
    if !dest.is_file() {
        return Err(DiskError::NotFound {
            name: name.to_string(),
            image: image.to_path_buf(),
        });
    }
    Ok(())
}

/// Reads `job/<name>` out of the ext4 image with `debugfs`.
pub fn read_file(image: &Path, name: &str) -> Result<Vec<u8>, DiskError> {
    let tmp = tempfile::tempdir().map_err(io_err("create a temporary folder for", image))?;
    let out = tmp.path().join("out");
    dump_file(image, name, &out)?;
    std::fs::read(&out).map_err(io_err("read", &out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ldd_output() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x7f)\n\t/lib64/ld-linux-x86-64.so.2 (0x7f)\n";
        let libs = parse_ldd(Path::new("x"), text).unwrap();
        assert_eq!(
            libs,
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
        let err = parse_ldd(Path::new("x"), "\tlibfoo.so.1 => not found\n").unwrap_err();
        assert!(err.to_string().contains("libfoo.so.1"), "{err}");
    }

    #[test]
    fn rejects_bad_names() {
        for n in ["", "..", "a/b", "job.sh", "a\"b", "x\ny"] {
            assert!(check_name(n).is_err(), "{n:?}");
        }
        check_name("result.txt").unwrap();
    }

    #[test]
    fn image_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let src = dir.path().join("src.txt");
        std::fs::write(&src, "hello").unwrap();
        stage_job(&root.join(JOB_DIR), "echo hi\n", &[(src, "in.txt".into())]).unwrap();
        stage_vmm(&root, None, &[]).unwrap();
        let image = dir.path().join("disk.img");
        make_image(&root, &image, 1).unwrap();
        assert_eq!(read_file(&image, "in.txt").unwrap(), b"hello");
        assert_eq!(read_file(&image, JOB_SCRIPT).ok(), None);
        let err = read_file(&image, "missing").unwrap_err();
        assert!(matches!(err, DiskError::NotFound { .. }), "{err}");
    }

    #[test]
    fn stages_the_libraries_of_a_dynamic_binary() {
        let dir = tempfile::tempdir().unwrap();
        stage_vmm(dir.path(), Some(Path::new("/bin/sh")), &[]).unwrap();
        let libs = std::fs::read_to_string(dir.path().join(".lego/libs")).unwrap();
        for lib in libs.lines() {
            assert!(
                dir.path().join(".lego/root").join(&lib[1..]).is_file(),
                "{lib}"
            );
        }
    }
}
