//! Shared by the integration tests: the daemon process, an in-process cluster, the
//! vhost-user test frontend of `lego-testkit` that drives it, and a test pager serving a
//! backend's userfaultfd.

#![allow(dead_code)]

pub mod cluster;
pub mod pager;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use lego_testkit::process::ChildGuard;
use lego_testkit::wait;

/// The daemon process; killed if a test fails before stopping it.
pub struct Daemon {
    child: ChildGuard,
    /// Its socket.
    pub socket: PathBuf,
}

impl Daemon {
    pub fn start(dir: &Path, extra: &[&str]) -> Daemon {
        Self::start_env(dir, extra, &[])
    }

    /// Starts the daemon with the file store on `disk` of `size`, then the `extra` arguments.
    pub fn start_file(dir: &Path, disk: &Path, size: &str, extra: &[&str]) -> Daemon {
        let mut args = vec![
            "--store",
            "file",
            "--path",
            disk.to_str().expect("utf-8"),
            "--size",
            size,
        ];
        args.extend_from_slice(extra);
        Self::start(dir, &args)
    }

    /// Starts the daemon with its store on remote memory of `size` for vNode `vnode`, placed
    /// through the manager of `cluster`.
    pub fn start_remote_memory(
        dir: &Path,
        cluster: &cluster::Cluster,
        vnode: &str,
        size: &str,
    ) -> Daemon {
        let key = cluster.key_hex();
        Self::start_env(
            dir,
            &[
                "--store",
                "remote-memory",
                "--manager",
                &cluster.manager_addr,
                "--vnode",
                vnode,
                "--size",
                size,
            ],
            &[("LEGO_CLUSTER_KEY", &key)],
        )
    }

    /// Starts the daemon with its store on vNode `vnode`'s volume `volume` (created with
    /// `size` if missing), placed through the manager of `cluster`.
    pub fn start_remote_disk(
        dir: &Path,
        cluster: &cluster::Cluster,
        vnode: &str,
        volume: &str,
        size: &str,
    ) -> Daemon {
        let key = cluster.key_hex();
        Self::start_env(
            dir,
            &[
                "--store",
                "remote-disk",
                "--manager",
                &cluster.manager_addr,
                "--vnode",
                vnode,
                "--volume",
                volume,
                "--size",
                size,
            ],
            &[("LEGO_CLUSTER_KEY", &key)],
        )
    }

    /// Starts the daemon with extra environment variables.
    pub fn start_env(dir: &Path, extra: &[&str], envs: &[(&str, &str)]) -> Daemon {
        let socket = dir.join("blk.sock");
        let mut child = ChildGuard::spawn(
            "lego-vhost-blk",
            Command::new(env!("CARGO_BIN_EXE_lego-vhost-blk"))
                .arg("--socket")
                .arg(&socket)
                .args(extra)
                .envs(envs.iter().copied())
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(Stdio::inherit()),
        );
        let poll = Duration::from_millis(10);
        wait::until("the daemon to create its socket", TIMEOUT, poll, || {
            if let Some(status) = child.try_wait() {
                panic!("the daemon exited with {status} before creating its socket");
            }
            is_listening(&socket).then_some(())
        });
        Daemon { child, socket }
    }

    /// CPU time the daemon has used so far (user and system, all threads).
    #[allow(dead_code)] // not every test file uses it
    pub fn cpu_time(&self) -> std::time::Duration {
        self.child.cpu_time()
    }

    /// Sends SIGKILL (the daemon runs no code of its own) and reaps it.
    pub fn kill(mut self) {
        self.child.kill();
    }

    /// Sends SIGTERM and returns the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        self.child
            .terminate(TIMEOUT)
            .expect("the daemon ignored SIGTERM")
    }
}

/// How long the daemon may take to start or to stop.
const TIMEOUT: Duration = Duration::from_secs(20);

/// Whether a Unix socket at `path` accepts connections: listed in /proc/net/unix with the
/// listening flag. The file alone is not enough: it exists from `bind`, before `listen`, and a
/// connect in between is refused.
pub fn is_listening(path: &Path) -> bool {
    const SO_ACCEPTCON: u32 = 0x0001_0000;
    let Ok(table) = std::fs::read_to_string("/proc/net/unix") else {
        return path.exists();
    };
    let want = path.to_string_lossy();
    table.lines().skip(1).any(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        cols.len() >= 8
            && cols[7] == want
            && u32::from_str_radix(cols[3], 16).is_ok_and(|f| f & SO_ACCEPTCON != 0)
    })
}
