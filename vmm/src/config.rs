//! The vNode's configuration: a TOML file and command-line flags, merged (flags win).

use crate::memory::MemoryBacking;
use crate::network::config::{NetConfig, NetConfigError, NetTable};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The default guest memory: 512 MiB.
pub const DEFAULT_MEMORY: u64 = 512 << 20;
/// The smallest guest memory a stock kernel can boot in.
pub const MIN_MEMORY: u64 = 32 << 20;
/// The most vCPUs one vNode may have (APIC IDs must fit the MADT's 8-bit fields).
pub const MAX_VCPUS: u8 = 64;
/// The kernel command line used when none is given.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0";

/// Errors in the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read the config file {path}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config file is not valid TOML or has unknown or mistyped keys.
    #[error("the config file {path} is invalid: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (names the key and line).
        message: String,
    },
    /// A size string could not be understood.
    #[error(
        "'{0}' is not a size: use a number of MiB or a number with a unit, such as 512M or 2G"
    )]
    BadSize(String),
    /// The memory size is outside what can be booted.
    #[error("guest memory of {0} bytes is not allowed: it must be at least 32 MiB and a multiple of 4 KiB")]
    BadMemory(u64),
    /// A network device's specification could not be understood.
    #[error(transparent)]
    Net(#[from] NetConfigError),
    /// No kernel was given.
    #[error("no kernel given: pass --kernel PATH or set `kernel` in the config file")]
    NoKernel,
    /// The vCPU count is outside what can be booted.
    #[error("{0} vCPUs is not allowed: use 1 to {MAX_VCPUS}")]
    BadVcpus(u64),
    /// A disk specification could not be understood.
    #[error("'{0}' is not a disk: use PATH or PATH,readonly")]
    BadDisk(String),
    /// A vhost-user-blk specification could not be understood.
    #[error("'{0}' is not a vhost-user-blk device: use socket=PATH[,reconnect=SECS]")]
    BadVhostUserBlk(String),
    /// A remote disk specification could not be understood.
    #[error("'{0}' is not a remote disk: use NAME or NAME,SIZE (for example data,2G)")]
    BadRemoteDisk(String),
    /// Private guest RAM was asked for with a device that must map it.
    #[error("vhost-user devices (--vhost-user-blk, --remote-memory, --remote-disk) map guest RAM, which private memory does not allow: use --memory-backing auto, shared or hugetlb")]
    PrivateMemoryShared,
    /// Hugetlbfs backing with a size that is not a whole number of huge pages.
    #[error("guest memory of {0} bytes cannot be backed by 2 MiB huge pages: make it a multiple of 2 MiB")]
    HugeMemorySize(u64),
    /// Remote devices without a vNode id.
    #[error("--remote-memory, --remote-disk and --local-memory need --vnode N: the vNode whose memory and volumes the manager places (not 0)")]
    NoVnode,
    /// A local memory limit that cannot work.
    #[error("--local-memory {local} must be at least {min} MiB and less than --memory {memory} (both in bytes here), in whole 4 KiB pages")]
    BadLocalMemory {
        /// The limit asked for.
        local: u64,
        /// Guest RAM.
        memory: u64,
        /// The smallest limit, in MiB.
        min: u64,
    },
    /// Paged guest RAM combined with something it cannot work with.
    #[error("--local-memory pages guest RAM to the vNode's remote memory, so it cannot be combined with {0}")]
    LocalMemoryWith(&'static str),
    /// A serial output specification could not be understood.
    #[error("'{0}' is not a serial output: use stdout, none, file:PATH or socket:PATH")]
    BadSerial(String),
}

/// Where the guest's serial console goes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SerialOutput {
    /// The VMM's standard output.
    #[default]
    Stdout,
    /// Discarded.
    None,
    /// Appended to a file.
    File(PathBuf),
    /// Streamed to clients of a Unix socket the VMM listens on.
    Socket(PathBuf),
}

impl std::str::FromStr for SerialOutput {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "stdout" => Ok(Self::Stdout),
            "none" | "off" => Ok(Self::None),
            _ => match s.split_once(':') {
                Some(("file", p)) if !p.is_empty() => Ok(Self::File(p.into())),
                Some(("socket", p)) if !p.is_empty() => Ok(Self::Socket(p.into())),
                _ => Err(ConfigError::BadSerial(s.into())),
            },
        }
    }
}

/// A virtio-blk disk backed by a local file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// The backing file.
    pub path: PathBuf,
    /// Whether the guest may only read it.
    #[serde(default)]
    pub readonly: bool,
}

impl std::str::FromStr for DiskConfig {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split(',');
        let path = parts.next().filter(|p| !p.is_empty());
        let path = path.ok_or_else(|| ConfigError::BadDisk(s.into()))?;
        let mut readonly = false;
        for opt in parts {
            match opt {
                "readonly" | "ro" | "readonly=on" | "readonly=true" => readonly = true,
                "rw" | "readonly=off" | "readonly=false" => readonly = false,
                _ => return Err(ConfigError::BadDisk(s.into())),
            }
        }
        Ok(Self {
            path: path.into(),
            readonly,
        })
    }
}

/// A virtio-blk disk served by a vhost-user-blk backend on a Unix socket.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VhostUserBlkConfig {
    /// The backend's listening socket.
    pub socket: PathBuf,
    /// How many seconds to keep reconnecting when the backend hangs up before failing the
    /// device; `None` (the default) never gives up.
    #[serde(default)]
    pub reconnect: Option<u64>,
}

impl std::str::FromStr for VhostUserBlkConfig {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut socket = None;
        let mut reconnect = None;
        for opt in s.split(',') {
            match opt.split_once('=') {
                Some(("socket", p)) if !p.is_empty() && socket.is_none() => {
                    socket = Some(PathBuf::from(p));
                }
                Some(("reconnect", secs)) if reconnect.is_none() => {
                    let secs = secs
                        .parse::<u64>()
                        .map_err(|_| ConfigError::BadVhostUserBlk(s.into()))?;
                    reconnect = Some(secs);
                }
                _ => return Err(ConfigError::BadVhostUserBlk(s.into())),
            }
        }
        let socket = socket.ok_or_else(|| ConfigError::BadVhostUserBlk(s.into()))?;
        Ok(Self { socket, reconnect })
    }
}

/// A vNode volume on a storage monitor, served to the guest as its remote disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteDisk {
    /// The volume's name.
    pub name: String,
    /// Its size when it must be created (an existing volume keeps its size).
    pub size: Option<u64>,
}

impl std::str::FromStr for RemoteDisk {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ConfigError::BadRemoteDisk(s.into());
        let (name, size) = match s.split_once(',') {
            Some((n, sz)) => (n, Some(parse_size(sz).map_err(|_| bad())?)),
            None => (s, None),
        };
        if name.is_empty() || name.contains(['/', ',', '=']) {
            return Err(bad());
        }
        Ok(Self {
            name: name.into(),
            size,
        })
    }
}

/// The vNode's place in the cluster: its id and manager (legovmm announces the running vNode
/// there), and its devices that live on the cluster, served by `lego-vhost-blk` backends that
/// legovmm starts, placed by the manager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteConfig {
    /// The manager's fabric address.
    pub manager: String,
    /// The vNode id whose memory and volumes these are.
    pub vnode: u64,
    /// Cluster key or credential file passed to the backends (else they read LEGO_CLUSTER_KEY[_FILE]).
    pub key_file: Option<PathBuf>,
    /// Remote memory to place, in bytes (the guest's swap).
    pub memory: Option<u64>,
    /// The remote disk.
    pub disk: Option<RemoteDisk>,
}

impl RemoteConfig {
    /// True when the vNode has remote memory or a remote disk (served by backends that map
    /// guest RAM), not only an id to be announced under.
    pub fn has_devices(&self) -> bool {
        self.memory.is_some() || self.disk.is_some()
    }
}

/// Pages fetched after the faulting one on a sequential fault, by default.
pub const DEFAULT_PAGING_PREFETCH: u64 = 15;
/// The most pages a sequential fault may prefetch (one fabric request).
pub const MAX_PAGING_PREFETCH: u64 = 255;

/// The manager address used when none is given.
pub const DEFAULT_MANAGER: &str = "127.0.0.1:7300";

/// The config file's contents; every field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Kernel image (bzImage or ELF vmlinux).
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: Option<String>,
    /// Guest memory, e.g. "512M" or a number of MiB.
    pub memory: Option<SizeValue>,
    /// Number of vCPUs.
    pub vcpus: Option<u64>,
    /// Local-file virtio-blk disks.
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    /// vhost-user-blk disks (`[[vhost_user_blk]]` tables with `socket`).
    #[serde(default)]
    pub vhost_user_blk: Vec<VhostUserBlkConfig>,
    /// virtio-net devices (`[[net]]` tables with `tap`).
    #[serde(default)]
    pub net: Vec<NetTable>,
    /// Serial output: "stdout", "none", "file:PATH" or "socket:PATH".
    pub serial: Option<String>,
    /// Remote memory on the cluster, e.g. "1G".
    pub remote_memory: Option<SizeValue>,
    /// Guest RAM legovmm keeps resident, e.g. "512M"; the rest is paged to the monitors.
    pub local_memory: Option<SizeValue>,
    /// Pages fetched after the faulting one on a sequential fault of paged guest RAM.
    pub paging_prefetch: Option<u64>,
    /// Remote disk: "NAME" or "NAME,SIZE".
    pub remote_disk: Option<String>,
    /// The manager's address.
    pub manager: Option<String>,
    /// The vNode id.
    pub vnode: Option<u64>,
    /// Cluster key or credential file.
    pub key_file: Option<PathBuf>,
    /// How guest RAM is backed: "auto", "private", "shared" or "hugetlb".
    pub memory_backing: Option<MemoryBacking>,
    /// The API socket's path.
    pub api_socket: Option<PathBuf>,
    /// Where lifecycle events go (a file or a FIFO), as JSON lines.
    pub events: Option<PathBuf>,
}

/// A size as it may appear in TOML: a string with a unit, or a bare number of MiB.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum SizeValue {
    /// A number of MiB.
    Mib(u64),
    /// A string such as "512M".
    Text(String),
}

impl SizeValue {
    fn bytes(&self) -> Result<u64, ConfigError> {
        match self {
            Self::Mib(m) => m
                .checked_mul(1 << 20)
                .ok_or(ConfigError::BadMemory(u64::MAX)),
            Self::Text(t) => parse_size(t),
        }
    }
}

impl FileConfig {
    /// Reads and parses a config file, rejecting unknown keys.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.into(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string().trim_end().to_string(),
        })
    }
}

/// Values given on the command line; each one, when present, overrides the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--kernel`.
    pub kernel: Option<PathBuf>,
    /// `--initrd`.
    pub initrd: Option<PathBuf>,
    /// `--cmdline`.
    pub cmdline: Option<String>,
    /// `--memory`.
    pub memory: Option<String>,
    /// `--vcpus`.
    pub vcpus: Option<u64>,
    /// `--disk` (replaces the file's disks when any is given).
    pub disks: Vec<String>,
    /// `--vhost-user-blk` (replaces the file's when any is given).
    pub vhost_user_blk: Vec<String>,
    /// `--net` (replaces the file's when any is given).
    pub net: Vec<String>,
    /// `--serial`.
    pub serial: Option<String>,
    /// `--remote-memory`.
    pub remote_memory: Option<String>,
    /// `--local-memory`.
    pub local_memory: Option<String>,
    /// `--paging-prefetch`.
    pub paging_prefetch: Option<u64>,
    /// `--remote-disk`.
    pub remote_disk: Option<String>,
    /// `--manager`.
    pub manager: Option<String>,
    /// `--vnode`.
    pub vnode: Option<u64>,
    /// `--key-file`.
    pub key_file: Option<PathBuf>,
    /// `--memory-backing`.
    pub memory_backing: Option<MemoryBacking>,
    /// `--api-socket`.
    pub api_socket: Option<PathBuf>,
    /// `--events`.
    pub events: Option<PathBuf>,
}

/// A complete, validated vNode configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// Kernel image.
    pub kernel: PathBuf,
    /// Initial ramdisk.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// Guest memory in bytes.
    pub memory: u64,
    /// Number of vCPUs.
    pub vcpus: u8,
    /// Local-file disks, in the order the guest sees them (vda, vdb, ...).
    pub disks: Vec<DiskConfig>,
    /// vhost-user-blk disks, seen by the guest after the local disks.
    pub vhost_user_blk: Vec<VhostUserBlkConfig>,
    /// virtio-net devices, after the disks.
    pub net: Vec<NetConfig>,
    /// Remote memory and disk on the cluster, if any.
    pub remote: Option<RemoteConfig>,
    /// Bytes of guest RAM kept resident when legovmm pages guest RAM to the vNode's remote
    /// memory (`--local-memory`); `None` keeps all of it local.
    pub local_memory: Option<u64>,
    /// Pages fetched after the faulting one on a sequential fault (`--paging-prefetch`).
    pub paging_prefetch: u64,
    /// Serial output.
    pub serial: SerialOutput,
    /// How guest RAM is backed, as asked ([`MemoryBacking::Auto`] is decided when the
    /// devices are known: see [`VmConfig::memory_backing_used`]).
    pub memory_backing: MemoryBacking,
    /// Where legovmm serves its API (`--api-socket`), if anywhere.
    pub api_socket: Option<PathBuf>,
    /// Where legovmm writes lifecycle events (`--events`), if anywhere.
    pub events: Option<PathBuf>,
}

impl VmConfig {
    /// The backing guest RAM gets: shared when a vhost-user device (local or remote) must
    /// map it, else private, unless the configuration names one.
    pub fn memory_backing_used(&self) -> MemoryBacking {
        self.memory_backing.resolve(
            !self.vhost_user_blk.is_empty()
                || self.remote.as_ref().is_some_and(RemoteConfig::has_devices)
                || self.local_memory.is_some(),
        )
    }

    /// The guest RAM that must be resident on this host: the local limit when paged.
    pub fn resident_memory(&self) -> u64 {
        self.local_memory.unwrap_or(self.memory)
    }

    /// Merges the file (if any) with the flags, and validates the result.
    pub fn resolve(file: FileConfig, flags: Overrides) -> Result<Self, ConfigError> {
        let kernel = flags.kernel.or(file.kernel).ok_or(ConfigError::NoKernel)?;
        let memory = match flags.memory {
            Some(m) => parse_size(&m)?,
            None => match file.memory {
                Some(m) => m.bytes()?,
                None => DEFAULT_MEMORY,
            },
        };
        if memory < MIN_MEMORY || memory % 4096 != 0 {
            return Err(ConfigError::BadMemory(memory));
        }
        let vcpus = flags.vcpus.or(file.vcpus).unwrap_or(1);
        if vcpus == 0 || vcpus > u64::from(MAX_VCPUS) {
            return Err(ConfigError::BadVcpus(vcpus));
        }
        let disks = if flags.disks.is_empty() {
            file.disks
        } else {
            flags
                .disks
                .iter()
                .map(|d| d.parse())
                .collect::<Result<_, _>>()?
        };
        let vhost_user_blk = if flags.vhost_user_blk.is_empty() {
            file.vhost_user_blk
        } else {
            flags
                .vhost_user_blk
                .iter()
                .map(|d| d.parse())
                .collect::<Result<_, _>>()?
        };
        let net = if flags.net.is_empty() {
            file.net
                .into_iter()
                .map(NetConfig::from_table)
                .collect::<Result<_, _>>()?
        } else {
            flags
                .net
                .iter()
                .map(|n| n.parse())
                .collect::<Result<_, _>>()?
        };
        let serial = match flags.serial.or(file.serial) {
            Some(s) => s.parse()?,
            None => SerialOutput::Stdout,
        };
        let remote_memory = match flags.remote_memory {
            Some(m) => Some(parse_size(&m)?),
            None => file.remote_memory.map(|m| m.bytes()).transpose()?,
        };
        let remote_disk = flags
            .remote_disk
            .or(file.remote_disk)
            .map(|d| d.parse::<RemoteDisk>())
            .transpose()?;
        let local_memory = match flags.local_memory {
            Some(m) => Some(parse_size(&m)?),
            None => file.local_memory.map(|m| m.bytes()).transpose()?,
        };
        if let Some(local) = local_memory {
            let min = crate::paging::MIN_LOCAL;
            if local < min || local >= memory || local % 4096 != 0 {
                return Err(ConfigError::BadLocalMemory {
                    local,
                    memory,
                    min: min >> 20,
                });
            }
            if remote_memory.is_some() {
                return Err(ConfigError::LocalMemoryWith(
                    "--remote-memory (swap on the same vNode's remote memory)",
                ));
            }
        }
        let vnode_given = flags.vnode.or(file.vnode).is_some();
        let remote = if remote_memory.is_some()
            || remote_disk.is_some()
            || local_memory.is_some()
            || vnode_given
        {
            let vnode = flags
                .vnode
                .or(file.vnode)
                .filter(|&v| v != 0)
                .ok_or(ConfigError::NoVnode)?;
            Some(RemoteConfig {
                manager: flags
                    .manager
                    .or(file.manager)
                    .unwrap_or_else(|| DEFAULT_MANAGER.into()),
                vnode,
                key_file: flags.key_file.or(file.key_file),
                memory: remote_memory,
                disk: remote_disk,
            })
        } else {
            None
        };
        let memory_backing = flags
            .memory_backing
            .or(file.memory_backing)
            .unwrap_or_default();
        let shared_needed = !vhost_user_blk.is_empty()
            || remote.as_ref().is_some_and(RemoteConfig::has_devices)
            || local_memory.is_some();
        if local_memory.is_some()
            && matches!(
                memory_backing,
                MemoryBacking::Private | MemoryBacking::Hugetlb
            )
        {
            return Err(ConfigError::LocalMemoryWith(
                "--memory-backing private or hugetlb (paged guest RAM is a shared memfd of 4 KiB pages)",
            ));
        }
        if memory_backing == MemoryBacking::Private && shared_needed {
            return Err(ConfigError::PrivateMemoryShared);
        }
        if memory_backing == MemoryBacking::Hugetlb
            && !memory.is_multiple_of(crate::memory::HUGE_PAGE_SIZE)
        {
            return Err(ConfigError::HugeMemorySize(memory));
        }
        Ok(Self {
            kernel,
            initrd: flags.initrd.or(file.initrd),
            cmdline: flags
                .cmdline
                .or(file.cmdline)
                .unwrap_or_else(|| DEFAULT_CMDLINE.into()),
            memory,
            vcpus: vcpus as u8,
            disks,
            vhost_user_blk,
            net,
            remote,
            local_memory,
            paging_prefetch: flags
                .paging_prefetch
                .or(file.paging_prefetch)
                .unwrap_or(DEFAULT_PAGING_PREFETCH)
                .min(MAX_PAGING_PREFETCH),
            serial,
            memory_backing,
            api_socket: flags.api_socket.or(file.api_socket),
            events: flags.events.or(file.events),
        })
    }
}

/// Parses a size: a bare number is MiB (as QEMU's `-m`); otherwise a number with a
/// binary unit K, M, G or T, optionally followed by `iB` or `B` (`512M`, `2GiB`).
pub fn parse_size(text: &str) -> Result<u64, ConfigError> {
    let bad = || ConfigError::BadSize(text.into());
    let t = text.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    if digits_end == 0 {
        return Err(bad());
    }
    let number: u64 = t[..digits_end].parse().map_err(|_| bad())?;
    let unit = t[digits_end..].trim().to_ascii_uppercase();
    let shift = match unit.trim_end_matches("IB").trim_end_matches('B') {
        "" if unit.is_empty() => 20,
        "" => 0, // "B" alone: bytes
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(bad()),
    };
    number.checked_mul(1u64 << shift).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units_and_reject_nonsense() {
        assert_eq!(parse_size("512").unwrap(), 512 << 20);
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("64k").unwrap(), 64 << 10);
        assert_eq!(parse_size("4096B").unwrap(), 4096);
        for bad in [
            "",
            "M",
            "12Q",
            "1.5G",
            "-1G",
            "99999999999999999999T",
            "1 G B",
        ] {
            assert!(parse_size(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn flags_override_the_file_and_defaults_fill_the_rest() {
        let file: FileConfig = toml::from_str(
            "kernel = \"/k\"\nmemory = \"1G\"\nvcpus = 4\n[[disks]]\npath = \"/d\"\n",
        )
        .unwrap();
        let flags = Overrides {
            vcpus: Some(2),
            ..Default::default()
        };
        let cfg = VmConfig::resolve(file, flags).unwrap();
        assert_eq!(cfg.kernel, PathBuf::from("/k"));
        assert_eq!(cfg.memory, 1 << 30);
        assert_eq!(cfg.vcpus, 2);
        assert_eq!(cfg.cmdline, DEFAULT_CMDLINE);
        assert_eq!(cfg.disks, vec!["/d".parse().unwrap()]);
        assert_eq!(cfg.serial, SerialOutput::Stdout);
    }

    #[test]
    fn vhost_user_blk_disks_come_from_flags_or_the_file() {
        let text = "kernel = \"/k\"\n[[vhost_user_blk]]\nsocket = \"/run/a.sock\"\n";
        let file: FileConfig = toml::from_str(text).unwrap();
        let cfg = VmConfig::resolve(file, Overrides::default()).unwrap();
        assert_eq!(cfg.vhost_user_blk[0].socket, PathBuf::from("/run/a.sock"));
        let file: FileConfig = toml::from_str(text).unwrap();
        let flags = Overrides {
            vhost_user_blk: vec!["socket=/b.sock".into(), "socket=/c.sock".into()],
            ..Default::default()
        };
        let cfg = VmConfig::resolve(file, flags).unwrap();
        let sockets: Vec<_> = cfg
            .vhost_user_blk
            .iter()
            .map(|v| v.socket.clone())
            .collect();
        assert_eq!(
            sockets,
            [PathBuf::from("/b.sock"), PathBuf::from("/c.sock")]
        );
        assert_eq!(
            cfg.vhost_user_blk[0].reconnect, None,
            "never give up by default"
        );
        let spec: VhostUserBlkConfig = "socket=/d.sock,reconnect=30".parse().unwrap();
        assert_eq!(spec.reconnect, Some(30));
        let file: FileConfig =
            toml::from_str("kernel = \"/k\"\n[[vhost_user_blk]]\nsocket = \"/a\"\nreconnect = 5\n")
                .unwrap();
        assert_eq!(file.vhost_user_blk[0].reconnect, Some(5));
        let bad = "kernel = \"/k\"\n[[vhost_user_blk]]\nsocket = \"/a\"\nqueues = 2\n";
        assert!(toml::from_str::<FileConfig>(bad).is_err());
    }

    #[test]
    fn remote_devices_need_a_vnode_and_default_to_the_local_manager() {
        let base = || Overrides {
            kernel: Some("/k".into()),
            remote_memory: Some("1G".into()),
            ..Default::default()
        };
        assert!(matches!(
            VmConfig::resolve(FileConfig::default(), base()),
            Err(ConfigError::NoVnode)
        ));
        let mut o = base();
        o.vnode = Some(7);
        o.remote_disk = Some("data,2G".into());
        let remote = VmConfig::resolve(FileConfig::default(), o)
            .unwrap()
            .remote
            .unwrap();
        assert_eq!(remote.manager, DEFAULT_MANAGER);
        assert_eq!((remote.vnode, remote.memory), (7, Some(1 << 30)));
        assert_eq!(
            remote.disk,
            Some(RemoteDisk {
                name: "data".into(),
                size: Some(2 << 30)
            })
        );
        let file: FileConfig = toml::from_str(
            "kernel = \"/k\"\nremote_disk = \"root\"\nvnode = 3\nmanager = \"10.0.2.2:7300\"\n",
        )
        .unwrap();
        let remote = VmConfig::resolve(file, Overrides::default())
            .unwrap()
            .remote
            .unwrap();
        assert_eq!(
            (remote.vnode, remote.manager.as_str()),
            (3, "10.0.2.2:7300")
        );
        assert_eq!(remote.disk.unwrap().size, None);
        for bad in ["", "a/b", "data,lots", ",1G"] {
            assert!(bad.parse::<RemoteDisk>().is_err(), "{bad}");
        }
        let none = VmConfig::resolve(
            FileConfig::default(),
            Overrides {
                kernel: Some("/k".into()),
                ..Default::default()
            },
        );
        assert_eq!(none.unwrap().remote, None);
    }

    #[test]
    fn memory_backing_follows_the_devices_unless_named() {
        let file: FileConfig =
            toml::from_str("kernel = \"/k\"\nmemory_backing = \"hugetlb\"\n").unwrap();
        let c = VmConfig::resolve(file, Overrides::default()).unwrap();
        assert_eq!(c.memory_backing_used(), MemoryBacking::Hugetlb);
        let plain = VmConfig::resolve(
            FileConfig::default(),
            Overrides {
                kernel: Some("/k".into()),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(plain.memory_backing_used(), MemoryBacking::Private);
        let vhost = Overrides {
            kernel: Some("/k".into()),
            vhost_user_blk: vec!["socket=/run/a.sock".into()],
            ..Overrides::default()
        };
        let c = VmConfig::resolve(FileConfig::default(), vhost.clone()).unwrap();
        assert_eq!(c.memory_backing_used(), MemoryBacking::Shared);
        let err = VmConfig::resolve(
            FileConfig::default(),
            Overrides {
                memory_backing: Some(MemoryBacking::Private),
                ..vhost
            },
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("--memory-backing auto, shared or hugetlb"),
            "{err}"
        );
        let err = VmConfig::resolve(
            FileConfig::default(),
            Overrides {
                kernel: Some("/k".into()),
                memory: Some("33M".into()),
                memory_backing: Some(MemoryBacking::Hugetlb),
                ..Overrides::default()
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("multiple of 2 MiB"), "{err}");
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("vm.toml");
        std::fs::write(&p, "kernel = \"/k\"\nmemroy = \"1G\"\n").unwrap();
        let err = FileConfig::load(&p).unwrap_err().to_string();
        assert!(err.contains("memroy"), "{err}");
    }

    #[test]
    fn invalid_values_are_rejected() {
        let base = || Overrides {
            kernel: Some("/k".into()),
            ..Default::default()
        };
        let mut o = base();
        o.memory = Some("16M".into());
        assert!(matches!(
            VmConfig::resolve(FileConfig::default(), o),
            Err(ConfigError::BadMemory(_))
        ));
        let mut o = base();
        o.vcpus = Some(0);
        assert!(VmConfig::resolve(FileConfig::default(), o).is_err());
        assert!(matches!(
            VmConfig::resolve(FileConfig::default(), Overrides::default()),
            Err(ConfigError::NoKernel)
        ));
        assert!("a,bogus".parse::<DiskConfig>().is_err());
        assert!("/d,readonly".parse::<DiskConfig>().unwrap().readonly);
        assert!("tcp:1".parse::<SerialOutput>().is_err());
        for bad in [
            "bogus",
            "socket=",
            "path=/s",
            "socket=/a,socket=/b",
            "socket=/a,x=1",
            "socket=/a,reconnect=soon",
            "socket=/a,reconnect=1,reconnect=2",
            "",
        ] {
            assert!(
                matches!(
                    bad.parse::<VhostUserBlkConfig>(),
                    Err(ConfigError::BadVhostUserBlk(_))
                ),
                "{bad} should be rejected"
            );
        }
        assert_eq!(
            "file:/x".parse::<SerialOutput>().unwrap(),
            SerialOutput::File("/x".into())
        );
    }
}
