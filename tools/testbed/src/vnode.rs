//! Booting a vNode and running one command in it: the job that runs
//! `legovmm run` with the lego-image guest, and reading the command's status back.

use std::path::PathBuf;
use std::time::Duration;

use lego_image::guest::{GuestError, GuestImage, GuestOptions};

use crate::job::Job;
use crate::markers;

/// Name of the vNode's disk in the job folder.
pub const DISK_NAME: &str = "vnode-disk.img";

/// Errors from preparing a vNode job.
#[derive(Debug, thiserror::Error)]
pub enum VnodeError {
    /// The guest image could not be built.
    #[error("could not build the guest image")]
    Image(#[from] GuestError),
    /// The command cannot be put on a kernel command line.
    #[error("the guest command {0:?} cannot go on the kernel command line: it must be non-empty and contain no double quote or newline")]
    BadCommand(String),
    /// A size is not understood.
    #[error("memory size {0:?} is not understood; use e.g. 512M, 2G or a number of MiB")]
    BadMemory(String),
}

/// What vNode to boot and what to run in it.
#[derive(Debug, Clone)]
pub struct VnodeSpec {
    /// vCPUs of the vNode.
    pub vcpus: u32,
    /// Memory of the vNode, as legovmm takes it (`512M`, `2G`, MiB).
    pub memory: String,
    /// A disk image attached as the vNode's first virtio disk.
    pub disk: Option<PathBuf>,
    /// The command run by the guest's init (`lego.run=`), with `sh -c`.
    pub command: String,
    /// Extra guest kernel command line words.
    pub extra_cmdline: String,
    /// Overall timeout of the job.
    pub timeout: Duration,
    /// How long to wait for the guest's init to come up before restarting it.
    pub ready_timeout: Duration,
    /// How many restarts of a guest that did not come up.
    pub retries: u32,
}

impl VnodeSpec {
    /// A 1-vCPU 512 MiB vNode running `command`, 600 s timeout, 2 retries within 120 s.
    pub fn new(command: impl Into<String>) -> Self {
        Self {
            vcpus: 1,
            memory: "512M".to_string(),
            disk: None,
            command: command.into(),
            extra_cmdline: String::new(),
            timeout: Duration::from_secs(600),
            ready_timeout: Duration::from_secs(120),
            retries: 2,
        }
    }
}

/// Builds (or reuses) the guest image in `cache`.
pub fn guest_image(cache: &std::path::Path) -> Result<GuestImage, VnodeError> {
    Ok(lego_image::guest::build(&GuestOptions::new(cache))?)
}

/// Returns the guest kernel command line that runs `command`.
pub fn guest_cmdline(command: &str, extra: &str) -> Result<String, VnodeError> {
    if command.trim().is_empty() || command.contains(['"', '\n', '\r', '\0']) {
        return Err(VnodeError::BadCommand(command.to_string()));
    }
    let mut s = format!("console=ttyS0 panic=-1 lego.run=\"{command}\"");
    if !extra.trim().is_empty() {
        s.push(' ');
        s.push_str(extra.trim());
    }
    Ok(s)
}

/// Quotes a string for a POSIX shell.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Checks a memory size: digits with an optional K, M or G suffix.
fn check_memory(memory: &str) -> Result<(), VnodeError> {
    let digits = memory.trim_end_matches(['K', 'k', 'M', 'm', 'G', 'g']);
    let suffix_len = memory.len() - digits.len();
    if digits.is_empty() || suffix_len > 1 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(VnodeError::BadMemory(memory.to_string()));
    }
    Ok(())
}

/// How long the compute host may take to start the job before the whole try is retried.
const HOST_READY: Duration = Duration::from_secs(180);

/// The line the vNode job prints when it starts legovmm (from `lego_vnode`).
pub const START_MARKER: &str = "LEGO_VNODE_START";

/// Returns the job that boots the vNode with `image` and runs the spec's command. Inside
/// the compute host, `lego_vnode` (from `$LEGO_TESTBED_LIB`) restarts a guest that does
/// not come up within `ready_timeout`, up to `retries` times; the job exits with
/// legovmm's status (125 if the guest never came up).
pub fn job(spec: &VnodeSpec, image: &GuestImage) -> Result<Job, VnodeError> {
    check_memory(&spec.memory)?;
    let cmdline = guest_cmdline(&spec.command, &spec.extra_cmdline)?;
    let mut args = format!(
        "--kernel vmlinuz --initrd initramfs.cpio --memory {} --vcpus {}",
        spec.memory,
        spec.vcpus.max(1)
    );
    let mut job = Job::new("vnode", String::new())
        .file(&image.kernel, "vmlinuz")
        .file(&image.initramfs, "initramfs.cpio");
    if let Some(disk) = &spec.disk {
        args.push_str(&format!(" --disk {DISK_NAME}"));
        job = job.file(disk, DISK_NAME);
    }
    job.script = format!(
        ". \"$LEGO_TESTBED_LIB\"\nlego_vnode vnode {} {} {args} --cmdline {}\n",
        spec.retries.saturating_add(1),
        spec.ready_timeout.as_secs().max(1),
        sh_quote(&cmdline)
    );
    job.timeout = spec.timeout;
    job.ready_marker = Some(START_MARKER.to_string());
    job.ready_timeout = HOST_READY;
    job.retries = 1;
    Ok(job)
}

/// Returns the guest command's exit status from the console (`LEGO_RUN_EXIT=<n>`).
pub fn run_exit(console: &str) -> Option<i32> {
    markers::last_value(console, markers::RUN_EXIT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> GuestImage {
        GuestImage {
            kernel: "/c/guest/vmlinuz".into(),
            initramfs: "/c/guest/initramfs.cpio".into(),
            manifest: "/c/guest/manifest.json".into(),
        }
    }

    #[test]
    fn builds_the_legovmm_job() {
        let mut spec = VnodeSpec::new("echo 'hi there'; exit 3");
        spec.vcpus = 2;
        spec.disk = Some("/tmp/d.img".into());
        let j = job(&spec, &image()).unwrap();
        assert!(j.script.contains("lego_vnode vnode 3 120 --kernel vmlinuz --initrd initramfs.cpio --memory 512M --vcpus 2 --disk vnode-disk.img --cmdline 'console=ttyS0 panic=-1 lego.run=\"echo '\\''hi there'\\''; exit 3\"'"), "{}", j.script);
        assert_eq!(j.files.len(), 3);
        assert_eq!(j.ready_marker.as_deref(), Some(START_MARKER));
    }

    #[test]
    fn rejects_unusable_commands_and_sizes() {
        assert!(guest_cmdline("echo \"x\"", "").is_err());
        assert!(guest_cmdline("  ", "").is_err());
        let mut spec = VnodeSpec::new("true");
        spec.memory = "lots".into();
        let err = job(&spec, &image()).unwrap_err();
        assert!(err.to_string().contains("not understood"), "{err}");
        for ok in ["512M", "2G", "1024"] {
            check_memory(ok).unwrap();
        }
    }

    #[test]
    fn reads_the_run_exit() {
        assert_eq!(run_exit("x\nLEGO_RUN_EXIT=7\n"), Some(7));
        assert_eq!(run_exit("nothing"), None);
    }
}
