//! The vNode's remote devices: legovmm starts one `lego-vhost-blk` backend per remote device
//! (remote memory, remote disk), each asking the manager for placement and serving the
//! device on a Unix socket in a private runtime folder; the device manager then attaches
//! those sockets like any `--vhost-user-blk`. A backend that dies is restarted with the same
//! arguments ([`crate::supervisor`]); the remote memory backend keeps the state it needs to
//! trust the vNode's pages across its restarts in the runtime folder (`--state-file`). The
//! backends end with the vNode, told to release its remote resources.

use crate::config::{RemoteConfig, VhostUserBlkConfig};
use crate::supervisor::{Recipe, SuperviseError, Supervised, Supervisor};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

/// How long a backend may take to place its device and open its socket.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Environment variable naming the backend binary.
pub const BACKEND_ENV: &str = "LEGO_VHOST_BLK_BIN";
/// The backend binary's name, looked up next to legovmm, then in PATH.
const BACKEND_NAME: &str = "lego-vhost-blk";

/// Errors starting the remote devices' backends.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The backend binary is nowhere to be found.
    #[error("cannot find {BACKEND_NAME}: set {BACKEND_ENV}, put it next to legovmm, or in PATH")]
    NoBinary,
    /// The runtime folder could not be made.
    #[error("cannot create the runtime folder {path}")]
    RuntimeDir {
        /// The folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The backend could not be started.
    #[error(transparent)]
    Spawn(#[from] SuperviseError),
    /// The backend exited before serving, or did not open its socket in time.
    #[error("the {what} backend did not come up: {reason}; its log says: {log}")]
    NotServing {
        /// Which device.
        what: &'static str,
        /// What happened.
        reason: String,
        /// The tail of its log.
        log: String,
    },
}

/// The running backends and their sockets; stopping them (on drop) tells each to release
/// the vNode's resources and removes the folder.
pub struct RemoteDevices {
    supervisor: Supervisor,
    dir: PathBuf,
    /// The sockets to attach, remote memory first.
    pub sockets: Vec<VhostUserBlkConfig>,
}

impl RemoteDevices {
    /// The runtime folder (sockets, logs, the backends' state files).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for RemoteDevices {
    fn drop(&mut self) {
        self.supervisor.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Finds the backend binary: `$LEGO_VHOST_BLK_BIN`, next to this executable, or in PATH.
fn backend_binary() -> Result<PathBuf, BackendError> {
    if let Some(p) = std::env::var_os(BACKEND_ENV) {
        return Ok(PathBuf::from(p));
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(BACKEND_NAME)))
        .filter(|p| p.is_file());
    let in_path = || {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(BACKEND_NAME))
                .find(|p| p.is_file())
        })
    };
    beside.or_else(in_path).ok_or(BackendError::NoBinary)
}

/// The backend arguments for each remote device of `remote`, with the socket each serves.
pub fn backend_args(
    remote: &RemoteConfig,
    dir: &Path,
) -> Vec<(&'static str, PathBuf, Vec<String>)> {
    let mut common = vec![
        "--manager".to_string(),
        remote.manager.clone(),
        "--vnode".into(),
        remote.vnode.to_string(),
    ];
    if let Some(k) = &remote.key_file {
        common.push("--key-file".into());
        common.push(k.display().to_string());
    }
    let mut out = Vec::new();
    if let Some(size) = remote.memory {
        let socket = dir.join("remote-memory.sock");
        let mut args = vec![
            "--socket".into(),
            socket.display().to_string(),
            "--store".into(),
            "remote-memory".into(),
            "--state-file".into(),
            dir.join("remote-memory.state").display().to_string(),
        ];
        args.extend(common.clone());
        args.extend(["--size".into(), size.to_string()]);
        out.push(("remote memory", socket, args));
    }
    if let Some(disk) = &remote.disk {
        let socket = dir.join("remote-disk.sock");
        let mut args = vec![
            "--socket".into(),
            socket.display().to_string(),
            "--store".into(),
            "remote-disk".into(),
        ];
        args.extend(common.clone());
        args.extend(["--volume".into(), disk.name.clone()]);
        match disk.size {
            Some(size) => args.extend(["--size".into(), size.to_string()]),
            None => args.push("--no-create".into()),
        }
        out.push(("remote disk", socket, args));
    }
    out
}

/// Starts a backend per remote device and waits until each serves its socket.
pub fn start(remote: &RemoteConfig) -> Result<RemoteDevices, BackendError> {
    start_in(
        remote,
        std::env::temp_dir().join(format!("legovmm-{}", std::process::id())),
    )
}

/// [`start`], with the runtime folder `dir` (removed when the devices stop).
pub fn start_in(remote: &RemoteConfig, dir: PathBuf) -> Result<RemoteDevices, BackendError> {
    let binary = backend_binary()?;
    std::fs::create_dir_all(&dir).map_err(|source| BackendError::RuntimeDir {
        path: dir.clone(),
        source,
    })?;
    let mut devices = RemoteDevices {
        supervisor: Supervisor::start(Vec::new())?,
        dir: dir.clone(),
        sockets: Vec::new(),
    };
    for (what, socket, args) in backend_args(remote, &dir) {
        let log = dir.join(format!("{}.log", what.replace(' ', "-")));
        let recipe = Recipe {
            what,
            binary: binary.clone(),
            args,
            log,
        };
        let mut child = recipe.spawn()?;
        tracing::info!(device = what, pid = child.id(), socket = %socket.display(), "started remote device backend");
        if let Err(e) = wait_for_socket(what, &mut child, &socket, &recipe.log) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        devices.supervisor.add(Supervised::new(recipe, child));
        devices.sockets.push(VhostUserBlkConfig {
            socket,
            reconnect: None,
        });
    }
    Ok(devices)
}

fn wait_for_socket(
    what: &'static str,
    child: &mut Child,
    socket: &Path,
    log: &Path,
) -> Result<(), BackendError> {
    let started = Instant::now();
    let not_serving = |reason: String| BackendError::NotServing {
        what,
        reason,
        log: log_tail(log),
    };
    loop {
        if socket.exists() {
            tracing::info!(
                device = what,
                ms = started.elapsed().as_millis() as u64,
                "remote device is served"
            );
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(not_serving(format!("it exited with {status}")));
        }
        if started.elapsed() > START_TIMEOUT {
            return Err(not_serving(format!(
                "no socket after {} s",
                START_TIMEOUT.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The last few lines of a backend's log, on one line.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(3).collect();
    let tail: Vec<&str> = lines.into_iter().rev().map(str::trim).collect();
    if tail.is_empty() {
        "(nothing)".into()
    } else {
        tail.join(" | ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RemoteDisk;

    fn remote() -> RemoteConfig {
        RemoteConfig {
            manager: "10.0.2.2:7300".into(),
            vnode: 7,
            key_file: Some("/k".into()),
            memory: Some(1 << 30),
            disk: Some(RemoteDisk {
                name: "data".into(),
                size: None,
            }),
        }
    }

    #[test]
    fn each_remote_device_gets_its_backend_and_socket() {
        let args = backend_args(&remote(), Path::new("/run/x"));
        assert_eq!(args.len(), 2);
        let (what, socket, mem) = &args[0];
        assert_eq!(
            (*what, socket.as_path()),
            ("remote memory", Path::new("/run/x/remote-memory.sock"))
        );
        let joined = mem.join(" ");
        assert!(joined.contains("--store remote-memory"), "{joined}");
        assert!(
            joined.contains("--manager 10.0.2.2:7300 --vnode 7 --key-file /k"),
            "{joined}"
        );
        assert!(joined.contains("--size 1073741824"), "{joined}");
        assert!(
            joined.contains("--state-file /run/x/remote-memory.state"),
            "{joined}"
        );
        let disk = args[1].2.join(" ");
        assert!(
            disk.contains("--store remote-disk") && disk.contains("--volume data --no-create"),
            "{disk}"
        );
    }

    #[test]
    fn a_backend_that_dies_at_once_is_reported_with_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("b.log");
        std::fs::write(&log, "error: cannot reach the manager at 10.0.2.2:7300\n").unwrap();
        let mut child = std::process::Command::new("false").spawn().unwrap();
        let err = wait_for_socket(
            "remote memory",
            &mut child,
            &dir.path().join("none.sock"),
            &log,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("remote memory backend did not come up")
                && err.contains("cannot reach the manager"),
            "{err}"
        );
    }
}
