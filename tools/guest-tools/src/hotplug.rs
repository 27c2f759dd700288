//! `hotplugd`: lets go of hot-added devices when legovmm asks for them back, and probes
//! devices put in a slot again.
//!
//! legovmm removes a device by sending an ACPI eject request for its slot, an ACPI container.
//! Linux's container driver does not act on it by itself: it sends a uevent
//! (`SUBSYSTEM=container`, `EVENT=offline`) for user space, which is what udev rules handle
//! on a full distribution. This daemon plays that part in the LegoVMM image: on the uevent it
//! unmounts (or turns off swap on) the slot's block devices and unbinds the slot's virtio-mmio
//! device from its driver. The driver resets the device on the way out, which tells legovmm
//! the guest has let go. The slot itself stays (ejecting the container would orphan the
//! window's platform device, and Linux would never enumerate the slot again).
//!
//! When a slot is filled again, Linux finds the platform device it kept, unbound, and does
//! not probe it: on the slots' container's `online` uevent (sent at every bus check) the
//! daemon asks the platform bus to probe it.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

/// Errors of the uevent listener.
#[derive(Debug, thiserror::Error)]
pub enum HotplugError {
    /// The netlink socket could not be opened or read.
    #[error("cannot listen for kernel uevents")]
    Netlink(#[source] io::Error),
}

/// One kernel uevent: its action, device path and variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uevent {
    /// e.g. `change`.
    pub action: String,
    /// e.g. `/devices/system/container/ACPI0004:01`.
    pub devpath: String,
    /// The `KEY=VALUE` variables.
    pub vars: HashMap<String, String>,
}

impl Uevent {
    /// Parses a kernel uevent message (`ACTION@DEVPATH\0KEY=VALUE\0...`); `None` for anything
    /// else (e.g. udev's own messages).
    pub fn parse(msg: &[u8]) -> Option<Self> {
        let mut parts = msg.split(|&b| b == 0).filter(|p| !p.is_empty());
        let head = std::str::from_utf8(parts.next()?).ok()?;
        let (action, devpath) = head.split_once('@')?;
        let vars = parts
            .filter_map(|p| std::str::from_utf8(p).ok()?.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Some(Self {
            action: action.into(),
            devpath: devpath.into(),
            vars,
        })
    }

    /// Whether the kernel asks user space to take a container offline (an eject request).
    pub fn wants_container_offline(&self) -> bool {
        self.action == "change"
            && self.is_container()
            && self.vars.get("EVENT").map(String::as_str) == Some("offline")
    }

    /// Whether a container came online (a slot was filled).
    pub fn container_online(&self) -> bool {
        self.action == "online" && self.is_container()
    }

    /// The kernel name (e.g. `vdb`) of a whole disk that appeared.
    pub fn disk_added(&self) -> Option<&str> {
        let var = |k: &str| self.vars.get(k).map(String::as_str);
        (self.action == "add"
            && var("SUBSYSTEM") == Some("block")
            && var("DEVTYPE") == Some("disk"))
        .then(|| var("DEVNAME"))
        .flatten()
    }

    fn is_container(&self) -> bool {
        self.vars.get("SUBSYSTEM").map(String::as_str) == Some("container")
    }
}

/// Listens for uevents forever, letting go of each container the kernel wants offline.
pub fn run() -> Result<(), HotplugError> {
    let fd = open_uevent_socket().map_err(HotplugError::Netlink)?;
    let mut buf = vec![0u8; 16 << 10];
    loop {
        // SAFETY: `buf` is valid for writes of its length; `fd` is our socket.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(HotplugError::Netlink(e));
        }
        let Some(event) = Uevent::parse(&buf[..n as usize]) else {
            continue;
        };
        let sys = Path::new("/sys");
        if event.container_online() {
            match probe_unbound(sys, &event.devpath) {
                Ok(probed) if !probed.is_empty() => {
                    println!(
                        "lego-hotplug: probed {} in a refilled slot",
                        probed.join(", ")
                    )
                }
                Ok(_) => {}
                Err(e) => println!("lego-hotplug: cannot probe {}: {e}", event.devpath),
            }
        }
        if let Some(name) = event.disk_added() {
            if is_hot_remote_memory(sys, &event.devpath, name) {
                match swap_on(name) {
                    Ok(()) => {
                        println!("lego-hotplug: swap on /dev/{name} (hot-added remote memory)")
                    }
                    Err(e) => println!("lego-hotplug: cannot swap on /dev/{name}: {e}"),
                }
            }
        }
        if event.wants_container_offline() {
            match let_go(sys, &event.devpath) {
                Ok(devices) => println!(
                    "lego-hotplug: let go of {} ({})",
                    event.devpath,
                    if devices.is_empty() {
                        "no block device".into()
                    } else {
                        devices.join(", ")
                    }
                ),
                Err(e) => println!("lego-hotplug: cannot let go of {}: {e}", event.devpath),
            }
        }
    }
}

/// Opens a netlink socket bound to the kernel's uevent group.
fn open_uevent_socket() -> io::Result<i32> {
    // SAFETY: plain socket(2) call.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_KOBJECT_UEVENT,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: sockaddr_nl is plain data; zeroed is a valid value.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as u16;
    addr.nl_groups = 1;
    // SAFETY: `addr` is a valid sockaddr_nl and the length is its size.
    let rc = unsafe {
        libc::bind(
            fd,
            (&addr as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        // SAFETY: we own `fd`.
        unsafe { libc::close(fd) };
        return Err(e);
    }
    Ok(fd)
}

/// Lets go of the container at `devpath` (under `sys`): releases its block devices, offlines
/// it and asks for its ejection. Returns the block devices released.
pub fn let_go(sys: &Path, devpath: &str) -> io::Result<Vec<String>> {
    let container = sys.join(devpath.trim_start_matches('/'));
    let firmware = std::fs::canonicalize(container.join("firmware_node"))?;
    let devices = block_devices_under(&firmware);
    for dev in &devices {
        release(dev);
    }
    for node in physical_nodes(&firmware) {
        let driver = node.join("driver");
        if driver.exists() {
            std::fs::write(driver.join("unbind"), node_name(&node)?)?;
        }
    }
    Ok(devices)
}

/// Asks the platform bus to probe each platform device under the container at `devpath`
/// that no driver holds, skipping slots that are not present (a slot filled again). Linux
/// sends `online` for the slots' parent container at every bus check, so this walks the
/// whole tree. Returns the devices probed.
pub fn probe_unbound(sys: &Path, devpath: &str) -> io::Result<Vec<String>> {
    let container = sys.join(devpath.trim_start_matches('/'));
    let firmware = std::fs::canonicalize(container.join("firmware_node"))?;
    let mut probed = Vec::new();
    probe_under(sys, &firmware, &mut probed)?;
    Ok(probed)
}

/// [`probe_unbound`] for the ACPI node `node` and its children.
fn probe_under(sys: &Path, node: &Path, probed: &mut Vec<String>) -> io::Result<()> {
    if !acpi_present(node) {
        if std::env::var_os("LEGO_HOTPLUG_DEBUG").is_some() {
            println!("lego-hotplug: {} not present", node.display());
        }
        return Ok(());
    }
    if let Ok(dev) = std::fs::canonicalize(node.join("physical_node")) {
        let platform =
            std::fs::canonicalize(dev.join("subsystem")).is_ok_and(|s| s.ends_with("bus/platform"));
        if std::env::var_os("LEGO_HOTPLUG_DEBUG").is_some() {
            println!(
                "lego-hotplug: {} -> {} platform={platform} bound={}",
                node.display(),
                dev.display(),
                dev.join("driver").exists()
            );
        }
        if platform && !dev.join("driver").exists() {
            let name = node_name(&dev)?;
            std::fs::write(sys.join("bus/platform/drivers_probe"), &name)?;
            probed.push(name);
        }
    }
    for child in acpi_children(node) {
        probe_under(sys, &child, probed)?;
    }
    Ok(())
}

/// The ACPI device nodes under `node` (sysfs names them `HID:NN`).
fn acpi_children(node: &Path) -> Vec<PathBuf> {
    dir_entries(node)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.contains(':'))
                && !p.is_symlink()
                && p.is_dir()
        })
        .collect()
}

/// Whether an ACPI node's `_STA` says present (a node without `status` is present).
fn acpi_present(node: &Path) -> bool {
    match std::fs::read_to_string(node.join("status")) {
        Ok(s) => s.trim().parse::<u32>().is_ok_and(|v| v & 1 != 0),
        Err(_) => true,
    }
}

/// The device each child of an ACPI node is the companion of (its `physical_node`).
fn physical_nodes(firmware: &Path) -> Vec<PathBuf> {
    dir_entries(firmware)
        .into_iter()
        .filter_map(|child| std::fs::canonicalize(child.join("physical_node")).ok())
        .collect()
}

fn node_name(node: &Path) -> io::Result<String> {
    node.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "a device without a name"))
}

/// The block devices (e.g. `vdb`) of the virtio windows in an ACPI slot: each child ACPI
/// device's physical node, its virtio device, its block device.
fn block_devices_under(firmware: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for child in dir_entries(firmware) {
        let node = child.join("physical_node");
        for virtio in dir_entries(&node) {
            let is_virtio = virtio
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("virtio"));
            if !is_virtio {
                continue;
            }
            for block in dir_entries(&virtio.join("block")) {
                if let Some(name) = block.file_name().and_then(|n| n.to_str()) {
                    found.push(name.to_string());
                }
            }
        }
    }
    found.sort();
    found
}

fn dir_entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// Whether the disk `name` at `devpath` (under `sys`) is remote memory (its virtio serial)
/// in a hotplug slot (an ancestor's ACPI node sits in a container). Remote memory attached at
/// boot is `/init`'s to swap on, not this daemon's.
pub fn is_hot_remote_memory(sys: &Path, devpath: &str, name: &str) -> bool {
    let serial = std::fs::read_to_string(sys.join("block").join(name).join("serial"));
    if serial.map(|s| s.trim_end().to_string()).ok().as_deref() != Some(REMOTE_MEMORY_SERIAL) {
        return false;
    }
    let mut dir = sys.join(devpath.trim_start_matches('/'));
    while dir.starts_with(sys) && dir != sys {
        if let Ok(node) = std::fs::canonicalize(dir.join("firmware_node")) {
            return node
                .components()
                .any(|c| c.as_os_str().to_string_lossy().starts_with("ACPI0004:"));
        }
        if !dir.pop() {
            break;
        }
    }
    false
}

/// The serial `lego-vhost-blk` gives remote memory devices.
const REMOTE_MEMORY_SERIAL: &str = "lego-remote-memory";

/// Formats `/dev/<name>` as swap and turns it on (waiting up to 2 s for the node).
fn swap_on(name: &str) -> io::Result<()> {
    let dev = format!("/dev/{name}");
    for _ in 0..20 {
        if Path::new(&dev).exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    for (tool, args) in [("mkswap", [dev.as_str()]), ("swapon", [dev.as_str()])] {
        let out = std::process::Command::new(tool).args(args).output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "{tool} {dev}: {}",
                String::from_utf8_lossy(&out.stderr).trim_end()
            )));
        }
    }
    Ok(())
}

/// Unmounts every file system on `/dev/<name>` (and its partitions) and turns off swap on it.
fn release(name: &str) {
    let dev = format!("/dev/{name}");
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    for line in mounts.lines() {
        let mut f = line.split_whitespace();
        let (Some(source), Some(target)) = (f.next(), f.next()) else {
            continue;
        };
        if source == dev || source.starts_with(&dev) {
            if let Ok(t) = std::ffi::CString::new(target) {
                // SAFETY: `t` is a valid NUL-terminated path.
                unsafe { libc::umount2(t.as_ptr(), 0) };
            }
        }
    }
    let swaps = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
    if swaps
        .lines()
        .any(|l| l.split_whitespace().next() == Some(&dev))
    {
        if let Ok(d) = std::ffi::CString::new(dev) {
            // SAFETY: `d` is a valid NUL-terminated path.
            unsafe { libc::swapoff(d.as_ptr()) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_container_offline_request_is_recognised() {
        let msg = b"change@/devices/system/container/ACPI0004:01\0ACTION=change\0\
DEVPATH=/devices/system/container/ACPI0004:01\0SUBSYSTEM=container\0EVENT=offline\0SEQNUM=9\0";
        let e = Uevent::parse(msg).unwrap();
        assert_eq!(e.devpath, "/devices/system/container/ACPI0004:01");
        assert!(e.wants_container_offline());
        let online = b"online@/devices/system/container/ACPI0004:01\0SUBSYSTEM=container\0";
        assert!(Uevent::parse(online).unwrap().container_online());
        let add = b"add@/devices/virtual/block/loop0\0ACTION=add\0SUBSYSTEM=block\0";
        assert!(!Uevent::parse(add).unwrap().wants_container_offline());
        assert!(Uevent::parse(b"libudev\0\xfe\xed").is_none());
        assert!(Uevent::parse(b"").is_none());
    }

    #[test]
    fn letting_go_unbinds_the_slots_device_and_refilling_probes_it() {
        // A fake sysfs: the slots' container HPC (ACPI0004:00) holding slot ACPI0004:01,
        // whose virtio window LNRO0005:01 is platform device LNRO0005:01 with block device
        // vdz (not mounted anywhere), bound to virtio-mmio.
        let sys = tempfile::tempdir().unwrap();
        let s = sys.path();
        let hpc_firmware = s.join("devices/LNXSYSTM:00/ACPI0004:00");
        let firmware = hpc_firmware.join("ACPI0004:01");
        let hpc = s.join("devices/system/container/ACPI0004:00");
        let container = s.join("devices/system/container/ACPI0004:01");
        let platform = s.join("devices/platform/LNRO0005:01");
        let platform_bus = s.join("bus/platform");
        let driver = platform_bus.join("drivers/virtio-mmio");
        for d in [&hpc, &container, &driver] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::create_dir_all(firmware.join("LNRO0005:01")).unwrap();
        std::fs::create_dir_all(platform.join("virtio3/block/vdz")).unwrap();
        let link = |to: &std::path::Path, at: std::path::PathBuf| {
            std::os::unix::fs::symlink(to, at).unwrap()
        };
        link(&hpc_firmware, hpc.join("firmware_node"));
        link(&firmware, container.join("firmware_node"));
        link(&container, firmware.join("physical_node"));
        link(&platform, firmware.join("LNRO0005:01/physical_node"));
        link(&platform_bus, platform.join("subsystem"));
        link(&driver, platform.join("driver"));
        std::fs::write(firmware.join("status"), "15\n").unwrap();
        let read = |p: std::path::PathBuf| std::fs::read_to_string(p).unwrap();

        let hpc_path = "/devices/system/container/ACPI0004:00";
        let path = "/devices/system/container/ACPI0004:01";
        assert!(
            probe_unbound(s, hpc_path).unwrap().is_empty(),
            "a bound device is left alone"
        );
        assert_eq!(let_go(s, path).unwrap(), ["vdz"]);
        assert_eq!(read(driver.join("unbind")), "LNRO0005:01");
        assert!(let_go(s, "/devices/system/container/ACPI0004:02").is_err());
        // Let go and emptied: the slot is not present and its unbound device is not probed.
        std::fs::remove_file(platform.join("driver")).unwrap();
        std::fs::write(firmware.join("status"), "0\n").unwrap();
        assert!(probe_unbound(s, hpc_path).unwrap().is_empty());
        // The slot is filled again: the kept platform device is probed.
        std::fs::write(firmware.join("status"), "15\n").unwrap();
        assert_eq!(probe_unbound(s, hpc_path).unwrap(), ["LNRO0005:01"]);
        assert_eq!(read(s.join("bus/platform/drivers_probe")), "LNRO0005:01");
    }

    #[test]
    fn only_remote_memory_in_a_slot_is_hot_remote_memory() {
        let sys = tempfile::tempdir().unwrap();
        let s = sys.path();
        let acpi = s.join("devices/LNXSYSTM:00/ACPI0004:00/ACPI0004:01/LNRO0005:04");
        let boot_acpi = s.join("devices/LNXSYSTM:00/LNRO0005:00");
        std::fs::create_dir_all(&acpi).unwrap();
        std::fs::create_dir_all(&boot_acpi).unwrap();
        let disk = |platform: &str, firmware: &Path, name: &str, serial: &str| {
            let pdev = s.join("devices/platform").join(platform);
            std::fs::create_dir_all(pdev.join("virtio1/block").join(name)).unwrap();
            std::os::unix::fs::symlink(firmware, pdev.join("firmware_node")).unwrap();
            let b = s.join("block").join(name);
            std::fs::create_dir_all(&b).unwrap();
            std::fs::write(b.join("serial"), serial).unwrap();
            format!("/devices/platform/{platform}/virtio1/block/{name}")
        };
        let hot = disk("LNRO0005:04", &acpi, "vdb", "lego-remote-memory\n");
        let boot = disk("LNRO0005:00", &boot_acpi, "vda", "lego-remote-memory");
        let hot_disk = disk("LNRO0005:05", &acpi, "vdc", "lego-vol-data");
        assert!(is_hot_remote_memory(s, &hot, "vdb"));
        assert!(
            !is_hot_remote_memory(s, &boot, "vda"),
            "boot-time memory is /init's"
        );
        assert!(
            !is_hot_remote_memory(s, &hot_disk, "vdc"),
            "a disk is not memory"
        );
        let add = Uevent::parse(
            b"add@/devices/x/block/vdb\0ACTION=add\0SUBSYSTEM=block\0DEVTYPE=disk\0DEVNAME=vdb\0",
        )
        .unwrap();
        assert_eq!(add.disk_added(), Some("vdb"));
        let part = Uevent::parse(
            b"add@/devices/x/block/vdb/vdb1\0ACTION=add\0SUBSYSTEM=block\0DEVTYPE=partition\0DEVNAME=vdb1\0",
        )
        .unwrap();
        assert_eq!(part.disk_added(), None);
    }
}
