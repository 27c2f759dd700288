//! The command line: which store to serve, where to listen, how many queues.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use lego_fabric::server::MAX_POLL_US;
use lego_monitor_client::size::ByteSize;

use crate::open::StoreSpec;
use crate::server::QueueSettings;
use crate::store::file::FileStoreOptions;

/// Errors in a combination of flags.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CliError {
    /// A flag the store needs is missing.
    #[error("--store {store} needs --{flag}")]
    Missing {
        /// The store kind.
        store: &'static str,
        /// The missing flag.
        flag: &'static str,
    },
    /// A flag does not apply to the chosen store.
    #[error("--{flag} does not apply to --store {store}")]
    NotFor {
        /// The store kind.
        store: &'static str,
        /// The stray flag.
        flag: &'static str,
    },
    /// A value is out of range.
    #[error("{0}")]
    Invalid(String),
}

/// The kind of store served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    /// A local file (or block device): --path, optionally --size to create or grow it.
    File,
    /// The vNode's remote memory on memory monitors: --manager, --vnode, --size.
    RemoteMemory,
    /// A vNode volume on a storage monitor: --manager, --vnode, --volume, --size to create.
    RemoteDisk,
}

impl StoreKind {
    fn name(self) -> &'static str {
        match self {
            StoreKind::File => "file",
            StoreKind::RemoteMemory => "remote-memory",
            StoreKind::RemoteDisk => "remote-disk",
        }
    }
}

/// `lego-vhost-blk`: serves a block device to one vhost-user frontend at a time.
#[derive(Debug, Parser)]
#[command(name = "lego-vhost-blk", version, about, long_about = None)]
pub struct Cli {
    /// Unix socket to listen on for the vhost-user frontend (QEMU's vhost-user-blk, legovmm).
    #[arg(long)]
    pub socket: PathBuf,
    /// What the device stores its blocks in.
    #[arg(long, value_enum)]
    pub store: StoreKind,
    /// File store: the file or block device.
    #[arg(long)]
    pub path: Option<PathBuf>,
    /// Device size such as 512M or 8G (file: create or grow to it; remote-memory: memory to
    /// place; remote-disk: size of a volume to create).
    #[arg(long)]
    pub size: Option<ByteSize>,
    /// Serve the device read-only (file and remote-disk).
    #[arg(long)]
    pub read_only: bool,
    /// Remote stores: the manager's fabric address, e.g. 127.0.0.1:7300.
    #[arg(long)]
    pub manager: Option<String>,
    /// Remote stores: the vNode whose memory or volume this is (not 0).
    #[arg(long)]
    pub vnode: Option<u64>,
    /// Remote disk: the volume name.
    #[arg(long)]
    pub volume: Option<String>,
    /// Remote disk: fail if the volume does not exist instead of creating it.
    #[arg(long)]
    pub no_create: bool,
    /// Remote memory: a file recording each memory monitor's incarnation, so that this
    /// backend, restarted for the same vNode, keeps using the pages it wrote (a monitor that
    /// restarted meanwhile lost them: reading them is an error, never zeros). Without it a
    /// restarted backend cannot tell. legovmm passes one in its runtime folder. SIGTERM or
    /// SIGINT release the vNode's pages (the vNode ended); a crash keeps them.
    #[arg(long)]
    pub state_file: Option<PathBuf>,
    /// Cluster key or compute credential file (else LEGO_CLUSTER_KEY or LEGO_CLUSTER_KEY_FILE).
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// Number of request queues (1 to 64), each served by its own thread.
    #[arg(long, default_value_t = 1)]
    pub queues: u16,
    /// Largest queue size offered to the frontend (a power of two up to 32768).
    #[arg(long, default_value_t = 256)]
    pub queue_size: u16,
    /// Poll each queue's ring for up to this many µs after serving a batch before sleeping
    /// until the next kick (adaptive: the window opens while requests follow each other
    /// closely and closes when they do not, so an idle device costs no CPU). 0 turns polling
    /// off; at most 10000.
    #[arg(
        long,
        value_name = "US",
        env = "LEGO_VHOST_POLL_US",
        default_value_t = 0
    )]
    pub poll_us: u64,
    /// Serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9102 [default: none].
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
}

impl Cli {
    /// The store the flags describe.
    pub fn store_spec(&self) -> Result<StoreSpec, CliError> {
        let store = self.store.name();
        let stray = |flag: &'static str, set: bool| {
            if set {
                Err(CliError::NotFor { store, flag })
            } else {
                Ok(())
            }
        };
        let need = |flag: &'static str| CliError::Missing { store, flag };
        match self.store {
            StoreKind::File => {
                stray("manager", self.manager.is_some())?;
                stray("vnode", self.vnode.is_some())?;
                stray("volume", self.volume.is_some())?;
                stray("no-create", self.no_create)?;
                stray("state-file", self.state_file.is_some())?;
                Ok(StoreSpec::File(FileStoreOptions {
                    path: self.path.clone().ok_or_else(|| need("path"))?,
                    read_only: self.read_only,
                    size: self.size.map(ByteSize::bytes),
                }))
            }
            StoreKind::RemoteMemory => {
                stray("path", self.path.is_some())?;
                stray("volume", self.volume.is_some())?;
                stray("no-create", self.no_create)?;
                stray("read-only", self.read_only)?;
                let size = self.size.ok_or_else(|| need("size"))?.bytes();
                if size < 4096 {
                    return Err(CliError::Invalid(format!(
                        "--size {size} is smaller than one 4096-byte page"
                    )));
                }
                Ok(StoreSpec::RemoteMemory {
                    manager: self.manager.clone().ok_or_else(|| need("manager"))?,
                    vnode: self.vnode()?,
                    size,
                    state_file: self.state_file.clone(),
                })
            }
            StoreKind::RemoteDisk => {
                stray("path", self.path.is_some())?;
                stray("state-file", self.state_file.is_some())?;
                Ok(StoreSpec::RemoteDisk {
                    manager: self.manager.clone().ok_or_else(|| need("manager"))?,
                    vnode: self.vnode()?,
                    volume: self.volume.clone().ok_or_else(|| need("volume"))?,
                    size: self.size.map(ByteSize::bytes),
                    create: !self.no_create,
                    read_only: self.read_only,
                })
            }
        }
    }

    fn vnode(&self) -> Result<u64, CliError> {
        match self.vnode {
            None => Err(CliError::Missing {
                store: self.store.name(),
                flag: "vnode",
            }),
            Some(0) => Err(CliError::Invalid(
                "--vnode 0 is reserved for the cluster; use 1 or more".into(),
            )),
            Some(v) => Ok(v),
        }
    }

    /// The queue settings the flags describe.
    pub fn queue_settings(&self) -> Result<QueueSettings, CliError> {
        if !(1..=64).contains(&self.queues) {
            return Err(CliError::Invalid(format!(
                "--queues {} is not between 1 and 64",
                self.queues
            )));
        }
        if !self.queue_size.is_power_of_two() || self.queue_size < 2 || self.queue_size > 32768 {
            return Err(CliError::Invalid(format!(
                "--queue-size {} is not a power of two between 2 and 32768",
                self.queue_size
            )));
        }
        if self.poll_us > MAX_POLL_US {
            return Err(CliError::Invalid(format!(
                "--poll-us {} is more than {MAX_POLL_US}",
                self.poll_us
            )));
        }
        Ok(QueueSettings {
            queues: self.queues,
            queue_size: self.queue_size,
            poll: Duration::from_micros(self.poll_us),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("lego-vhost-blk").chain(args.iter().copied()))
            .expect("parse")
    }

    #[test]
    fn file_store_flags() {
        let c = parse(&[
            "--socket", "/s", "--store", "file", "--path", "/d", "--size", "1M",
        ]);
        match c.store_spec().expect("spec") {
            StoreSpec::File(o) => {
                assert_eq!(o.size, Some(1 << 20));
                assert!(!o.read_only);
            }
            other => panic!("wrong spec {other:?}"),
        }
        let c = parse(&["--socket", "/s", "--store", "file"]);
        assert_eq!(
            c.store_spec().expect_err("no path").to_string(),
            "--store file needs --path"
        );
        let c = parse(&[
            "--socket", "/s", "--store", "file", "--path", "/d", "--vnode", "3",
        ]);
        assert!(c.store_spec().is_err());
    }

    #[test]
    fn remote_store_flags() {
        let c = parse(&[
            "--socket",
            "/s",
            "--store",
            "remote-memory",
            "--manager",
            "127.0.0.1:7300",
            "--vnode",
            "7",
            "--size",
            "64M",
        ]);
        assert!(matches!(
            c.store_spec(),
            Ok(StoreSpec::RemoteMemory { vnode: 7, size, .. }) if size == 64 << 20
        ));
        let c = parse(&[
            "--socket",
            "/s",
            "--store",
            "remote-disk",
            "--manager",
            "m",
            "--vnode",
            "7",
            "--volume",
            "root",
            "--no-create",
        ]);
        assert!(matches!(
            c.store_spec(),
            Ok(StoreSpec::RemoteDisk {
                create: false,
                size: None,
                ..
            })
        ));
        let c = parse(&[
            "--socket",
            "/s",
            "--store",
            "remote-disk",
            "--manager",
            "m",
            "--vnode",
            "0",
            "--volume",
            "v",
        ]);
        assert!(c.store_spec().is_err());
        let c = parse(&[
            "--socket",
            "/s",
            "--store",
            "remote-memory",
            "--vnode",
            "1",
            "--size",
            "1M",
        ]);
        assert_eq!(
            c.store_spec().expect_err("no manager"),
            CliError::Missing {
                store: "remote-memory",
                flag: "manager"
            }
        );
    }

    #[test]
    fn queue_flags_are_checked() {
        let c = parse(&["--socket", "/s", "--store", "file", "--queues", "4"]);
        assert_eq!(c.queue_settings().expect("ok").queues, 4);
        for bad in [
            ["--queues", "0"],
            ["--queues", "65"],
            ["--queue-size", "100"],
        ] {
            let c = parse(&["--socket", "/s", "--store", "file", bad[0], bad[1]]);
            assert!(c.queue_settings().is_err(), "{bad:?}");
        }
    }
}
