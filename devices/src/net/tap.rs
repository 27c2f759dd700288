//! [`Tap`]: one queue of a kernel tap interface, opened through `/dev/net/tun` with
//! `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` (and `IFF_MULTI_QUEUE` for more than one queue pair),
//! a 12-byte virtio-net header on every frame (`TUNSETVNETHDRSZ`) and non-blocking I/O.
//!
//! A tap exists in the network namespace of the thread that created it; the file
//! descriptors keep working from any thread. [`Tap::set_up`] and [`Tap::attach_to_bridge`]
//! act in the calling thread's network namespace, so call them where the tap lives.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicBool, Ordering};

use vmm_sys_util::ioctl::{ioctl_with_mut_ref, ioctl_with_ref, ioctl_with_val};

/// The longest interface name the kernel accepts, in bytes (IFNAMSIZ minus the NUL).
pub const MAX_NAME_LEN: usize = libc::IFNAMSIZ - 1;
/// The most queues a tap can have (the kernel's MAX_TAP_QUEUES).
pub const MAX_QUEUE_PAIRS: u16 = 256;
/// The size of the virtio-net header on every frame read from or written to the tap
/// (`struct virtio_net_hdr_mrg_rxbuf`: the modern header).
pub const VNET_HDR_LEN: usize = 12;
/// The tun driver's character device.
pub const TUN_PATH: &str = "/dev/net/tun";

/// Offload flag for [`Tap::set_offload`]: the guest takes frames with partial checksums.
pub const TUN_F_CSUM: u32 = libc::TUN_F_CSUM;
/// Offload flag for [`Tap::set_offload`]: the guest takes TCP/IPv4 segmentation offload frames.
pub const TUN_F_TSO4: u32 = libc::TUN_F_TSO4;
/// Offload flag for [`Tap::set_offload`]: the guest takes TCP/IPv6 segmentation offload frames.
pub const TUN_F_TSO6: u32 = libc::TUN_F_TSO6;
/// Offload flag for [`Tap::set_offload`]: the guest takes TSO frames with ECN.
pub const TUN_F_TSO_ECN: u32 = libc::TUN_F_TSO_ECN;

/// `SIOCBRADDIF` (linux/sockios.h): add an interface to a bridge.
const SIOCBRADDIF: libc::c_ulong = 0x89a2;

/// Errors opening or configuring a tap.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name cannot be an interface name.
    #[error("{name:?} is not a valid tap name: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The queue-pair count is out of range.
    #[error("a tap has 1 to {MAX_QUEUE_PAIRS} queue pairs, not {0}")]
    QueuePairs(u16),
    /// `/dev/net/tun` does not exist (or the tun driver is not loaded).
    #[error("{TUN_PATH} is missing: this host has no tun/tap driver (load the tun module, or create the device node)")]
    NoTunDevice(#[source] io::Error),
    /// The process may not open or create the tap.
    #[error("cannot open tap {name}: this needs CAP_NET_ADMIN or a tap owned by this user")]
    PermissionDenied {
        /// The tap.
        name: String,
    },
    /// The tap exists and another process holds it.
    #[error("tap {name} is in use by another process")]
    Busy {
        /// The tap.
        name: String,
    },
    /// A network device of that name exists but is not a tap with the needed flags.
    #[error("tap {name} is busy: a network device of that name exists but is not a {} tap without packet information, which legovmm needs (delete it, or choose another name)", if *.multi_queue { "multi-queue" } else { "single-queue" })]
    Incompatible {
        /// The tap.
        name: String,
        /// Whether legovmm asked for a multi-queue tap.
        multi_queue: bool,
    },
    /// The process may not change the tap's link or bridge.
    #[error("cannot {what} tap {name}: this needs CAP_NET_ADMIN")]
    NotPermitted {
        /// The tap.
        name: String,
        /// What was refused.
        what: &'static str,
    },
    /// The bridge to join does not exist.
    #[error("the bridge {bridge} does not exist, so tap {name} cannot join it")]
    BridgeMissing {
        /// The tap.
        name: String,
        /// The bridge.
        bridge: String,
    },
    /// The device to join is not a bridge.
    #[error("{bridge} is not a bridge, so tap {name} cannot join it")]
    NotABridge {
        /// The tap.
        name: String,
        /// The device named as the bridge.
        bridge: String,
    },
    /// Any other failure, with the OS error.
    #[error("could not {what} tap {name}")]
    Io {
        /// The tap.
        name: String,
        /// What was being done.
        what: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// `struct ifreq`: an interface name and a union (flags, index, ...), 40 bytes on 64-bit.
#[repr(C, align(8))]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: [u8; 24],
}

impl IfReq {
    fn new(name: &str) -> Self {
        let mut req = Self {
            name: [0; libc::IFNAMSIZ],
            data: [0; 24],
        };
        // Names are validated to fit with their NUL.
        let n = name.len().min(MAX_NAME_LEN);
        req.name[..n].copy_from_slice(&name.as_bytes()[..n]);
        req
    }

    fn name(&self) -> String {
        let end = self
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.name.len());
        String::from_utf8_lossy(&self.name[..end]).into_owned()
    }

    fn set_short(&mut self, v: libc::c_short) {
        self.data[..2].copy_from_slice(&v.to_ne_bytes());
    }

    fn short(&self) -> libc::c_short {
        libc::c_short::from_ne_bytes([self.data[0], self.data[1]])
    }

    fn set_int(&mut self, v: libc::c_int) {
        self.data[..4].copy_from_slice(&v.to_ne_bytes());
    }

    fn int(&self) -> libc::c_int {
        libc::c_int::from_ne_bytes([self.data[0], self.data[1], self.data[2], self.data[3]])
    }
}

/// Checks `name` as the kernel's `dev_valid_name` does.
pub fn validate_name(name: &str) -> Result<(), TapError> {
    let bad = |reason| {
        Err(TapError::InvalidName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("interface names are at most 15 bytes long");
    }
    if name == "." || name == ".." {
        return bad("\".\" and \"..\" are not interface names");
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace())
    {
        return bad("interface names cannot hold '/', ':', NUL or white space");
    }
    Ok(())
}

/// One queue of a tap interface: a non-blocking file descriptor carrying Ethernet frames,
/// each preceded by a [`VNET_HDR_LEN`]-byte virtio-net header.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    multi_queue: bool,
    /// Whether the queue is attached (only multi-queue taps detach queues).
    attached: AtomicBool,
}

/// The error of the last failed system call, as an `io::Error`.
fn errno() -> io::Error {
    io::Error::last_os_error()
}

impl Tap {
    /// Opens (or creates, when the process may) the tap `name` with `queue_pairs` queues,
    /// one file descriptor each: `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, plus
    /// `IFF_MULTI_QUEUE` when `queue_pairs > 1`; a 12-byte vnet header; non-blocking.
    /// A name holding `%d` lets the kernel pick the number; [`Tap::name`] tells the result.
    pub fn open(name: &str, queue_pairs: u16) -> Result<Vec<Tap>, TapError> {
        validate_name(name)?;
        if queue_pairs == 0 || queue_pairs > MAX_QUEUE_PAIRS {
            return Err(TapError::QueuePairs(queue_pairs));
        }
        let multi_queue = queue_pairs > 1;
        let mut flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
        if multi_queue {
            flags |= libc::IFF_MULTI_QUEUE;
        }
        let mut taps = Vec::with_capacity(usize::from(queue_pairs));
        let mut name = name.to_string();
        for _ in 0..queue_pairs {
            let tap = Self::open_queue(&name, flags, multi_queue)?;
            name = tap.name.clone();
            taps.push(tap);
        }
        Ok(taps)
    }

    fn open_queue(name: &str, flags: libc::c_int, multi_queue: bool) -> Result<Tap, TapError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_PATH)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENOENT | libc::ENODEV | libc::ENXIO) => TapError::NoTunDevice(e),
                Some(libc::EACCES | libc::EPERM) => TapError::PermissionDenied {
                    name: name.to_string(),
                },
                _ => TapError::Io {
                    name: name.to_string(),
                    what: "open /dev/net/tun for",
                    source: e,
                },
            })?;
        let mut req = IfReq::new(name);
        // The flags fit in the short the kernel reads.
        req.set_short(flags as libc::c_short);
        // SAFETY: TUNSETIFF reads and writes one `struct ifreq`; `req` has its size and
        // layout and lives across the call; the fd is the tun device just opened.
        let r = unsafe { ioctl_with_mut_ref(&file, libc::TUNSETIFF as _, &mut req) };
        if r < 0 {
            let e = errno();
            let name = name.to_string();
            return Err(match e.raw_os_error() {
                Some(libc::EPERM | libc::EACCES) => TapError::PermissionDenied { name },
                Some(libc::EBUSY) => TapError::Busy { name },
                Some(libc::EINVAL) => TapError::Incompatible { name, multi_queue },
                _ => TapError::Io {
                    name,
                    what: "set up (TUNSETIFF)",
                    source: e,
                },
            });
        }
        let tap = Tap {
            file,
            name: req.name(),
            multi_queue,
            attached: AtomicBool::new(true),
        };
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which is valid for the
        // call; the fd is an attached tap.
        let r = unsafe { ioctl_with_ref(&tap.file, libc::TUNSETVNETHDRSZ as _, &hdr_len) };
        if r < 0 {
            return Err(tap.io_error("set the virtio-net header size (TUNSETVNETHDRSZ) of"));
        }
        Ok(tap)
    }

    fn io_error(&self, what: &'static str) -> TapError {
        TapError::Io {
            name: self.name.clone(),
            what,
            source: errno(),
        }
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the tap was opened with `IFF_MULTI_QUEUE`.
    pub fn multi_queue(&self) -> bool {
        self.multi_queue
    }

    /// The queue's file (for the kernel's vhost-net, which reads and writes it).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Tells the kernel which offloads the reader of this tap takes (`TUN_F_*` flags): with
    /// `TUN_F_CSUM` it may hand over frames with partial checksums, with `TUN_F_TSO4/6`
    /// large TCP segments. Frames written to the tap may use any offload regardless.
    pub fn set_offload(&self, flags: u32) -> Result<(), TapError> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value and touches no memory of ours.
        let r = unsafe {
            ioctl_with_val(
                &self.file,
                libc::TUNSETOFFLOAD as _,
                libc::c_ulong::from(flags),
            )
        };
        if r < 0 {
            return Err(self.io_error("set the offloads (TUNSETOFFLOAD) of"));
        }
        Ok(())
    }

    /// Attaches or detaches this queue of a multi-queue tap (`TUNSETQUEUE`): the kernel
    /// steers frames only to attached queues. A no-op when already in that state, and for a
    /// single-queue tap (always attached).
    pub fn set_queue_enabled(&self, enabled: bool) -> Result<(), TapError> {
        if !self.multi_queue || self.attached.load(Ordering::SeqCst) == enabled {
            return Ok(());
        }
        let mut req = IfReq::new("");
        let flag = if enabled {
            libc::IFF_ATTACH_QUEUE
        } else {
            libc::IFF_DETACH_QUEUE
        };
        req.set_short(flag as libc::c_short);
        // SAFETY: TUNSETQUEUE reads one `struct ifreq`; `req` has its layout and outlives
        // the call.
        let r = unsafe { ioctl_with_ref(&self.file, libc::TUNSETQUEUE as _, &req) };
        if r < 0 {
            return Err(self.io_error(if enabled {
                "attach a queue of"
            } else {
                "detach a queue of"
            }));
        }
        self.attached.store(enabled, Ordering::SeqCst);
        Ok(())
    }

    /// Whether this queue is attached (see [`Tap::set_queue_enabled`]).
    pub fn queue_enabled(&self) -> bool {
        self.attached.load(Ordering::SeqCst)
    }

    /// Reads one frame (with its virtio-net header) into `buf`; `WouldBlock` when none waits.
    pub fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the call.
        let n = unsafe { libc::read(self.file.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(errno());
        }
        Ok(n as usize)
    }

    /// Writes one frame (with its virtio-net header) gathered from `iovecs`.
    ///
    /// # Safety
    ///
    /// Each iovec must point to memory readable for its length for the duration of the call.
    pub unsafe fn writev_frame(&self, iovecs: &[libc::iovec]) -> io::Result<usize> {
        let count = libc::c_int::try_from(iovecs.len())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: the caller guarantees every iovec is readable; the array outlives the call.
        let n = unsafe { libc::writev(self.file.as_raw_fd(), iovecs.as_ptr(), count) };
        if n < 0 {
            return Err(errno());
        }
        Ok(n as usize)
    }

    /// Brings the interface up (`SIOCSIFFLAGS` with `IFF_UP`), in the calling thread's
    /// network namespace.
    pub fn set_up(&self) -> Result<(), TapError> {
        let sock = self.control_socket()?;
        let mut req = IfReq::new(&self.name);
        // SAFETY: SIOCGIFFLAGS reads and writes one `struct ifreq`, which `req` is.
        let r = unsafe { ioctl_with_mut_ref(&sock, libc::SIOCGIFFLAGS as _, &mut req) };
        if r < 0 {
            return Err(self.link_error("read the link flags of"));
        }
        req.set_short(req.short() | libc::IFF_UP as libc::c_short);
        // SAFETY: SIOCSIFFLAGS reads one `struct ifreq`, which `req` is.
        let r = unsafe { ioctl_with_ref(&sock, libc::SIOCSIFFLAGS as _, &req) };
        if r < 0 {
            return Err(self.link_error("bring up"));
        }
        Ok(())
    }

    /// Enslaves the interface to the bridge `bridge` (`SIOCBRADDIF`), in the calling
    /// thread's network namespace.
    pub fn attach_to_bridge(&self, bridge: &str) -> Result<(), TapError> {
        validate_name(bridge)?;
        let sock = self.control_socket()?;
        let mut req = IfReq::new(&self.name);
        // SAFETY: SIOCGIFINDEX reads and writes one `struct ifreq`, which `req` is.
        let r = unsafe { ioctl_with_mut_ref(&sock, libc::SIOCGIFINDEX as _, &mut req) };
        if r < 0 {
            return Err(self.link_error("find the interface index of"));
        }
        let index = req.int();
        let mut req = IfReq::new(bridge);
        req.set_int(index);
        // SAFETY: SIOCBRADDIF reads one `struct ifreq` (bridge name and interface index),
        // which `req` is.
        let r = unsafe { ioctl_with_ref(&sock, SIOCBRADDIF, &req) };
        if r < 0 {
            let e = errno();
            let (name, bridge) = (self.name.clone(), bridge.to_string());
            return Err(match e.raw_os_error() {
                Some(libc::ENODEV) => TapError::BridgeMissing { name, bridge },
                Some(libc::EOPNOTSUPP | libc::EINVAL) => TapError::NotABridge { name, bridge },
                Some(libc::EPERM | libc::EACCES) => TapError::NotPermitted {
                    name,
                    what: "add to a bridge",
                },
                _ => TapError::Io {
                    name,
                    what: "add to the bridge (SIOCBRADDIF)",
                    source: e,
                },
            });
        }
        Ok(())
    }

    fn control_socket(&self) -> Result<OwnedFd, TapError> {
        // SAFETY: plain socket creation; the result is checked before use.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(self.io_error("open a control socket for"));
        }
        // SAFETY: `fd` is a socket just created and owned by nothing else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    fn link_error(&self, what: &'static str) -> TapError {
        let e = errno();
        match e.raw_os_error() {
            Some(libc::EPERM | libc::EACCES) => TapError::NotPermitted {
                name: self.name.clone(),
                what,
            },
            _ => TapError::Io {
                name: self.name.clone(),
                what,
                source: e,
            },
        }
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_as_the_kernel_does() {
        for good in ["tap0", "lg-net.1", "tap%d", "a23456789012345"] {
            validate_name(good).unwrap();
        }
        for bad in ["", ".", "..", "a/b", "a:b", "a b", "a234567890123456"] {
            let e = validate_name(bad).unwrap_err();
            assert!(matches!(e, TapError::InvalidName { .. }), "{bad}: {e}");
        }
        let e = Tap::open("a234567890123456", 1).unwrap_err();
        assert!(e.to_string().contains("at most 15 bytes"), "{e}");
        let e = Tap::open("tap0", 0).unwrap_err();
        assert!(matches!(e, TapError::QueuePairs(0)), "{e}");
    }

    #[test]
    fn ifreq_has_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
        let mut r = IfReq::new("tap0");
        r.set_short(0x1234);
        assert_eq!(r.short(), 0x1234);
        r.set_int(-7);
        assert_eq!(r.int(), -7);
        assert_eq!(r.name(), "tap0");
    }
}
