//! Creates the vNode's devices, places them on the port-I/O and MMIO buses, and wires
//! their interrupts (irqfd) and virtio queue notifications (ioeventfd) into KVM.

use crate::acpi::{MmioDevice, PlatformPorts};
use crate::config::VmConfig;
use crate::console::{Console, ConsoleError};
use crate::console_input::{self, InputError};
use crate::events::EventLog;
use crate::hotplug::registers::{HotplugRegisters, SlotBits};
use crate::hotplug::slot::Slot;
use crate::hotplug::HotplugBoard;
use crate::layout;
use crate::memory::GuestMemory;
use crate::network::PreparedNet;
use kvm_ioctls::{IoEventAddress, VmFd};
use lego_devices::bus::{Bus, BusError, SharedDevice};
use lego_devices::exit::ExitNotifier;
use lego_devices::legacy::{acpi_pm, cmos, i8042, pvpanic, serial};
use lego_devices::vhost_user_frontend::{
    BackendEvent, BackendFaults, BackendWatcher, ReconnectPolicy, VhostUserBlk,
};
use lego_devices::virtio::block::{Block, BlockError};
use lego_devices::virtio::mmio::{MmioError, MmioTransport, MMIO_LEN, NOTIFY_OFFSET};
use lego_devices::virtio::net::{Net, NetError};
use lego_devices::virtio::rings::RingRegistry;
use lego_devices::virtio::VirtioDevice;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Errors creating devices.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The console output could not be opened.
    #[error(transparent)]
    Console(#[from] ConsoleError),
    /// Console input could not be wired.
    #[error(transparent)]
    ConsoleInput(#[from] InputError),
    /// The serial device could not be created.
    #[error("cannot create the serial port")]
    Serial(#[source] serial::SerialError),
    /// A disk's backing file cannot be used.
    #[error("cannot attach disk {path}")]
    DiskFile {
        /// The backing file.
        path: String,
        /// Why.
        source: DiskFileError,
    },
    /// A disk could not be opened.
    #[error("cannot attach disk {path}")]
    Disk {
        /// The backing file.
        path: String,
        /// Why.
        source: BlockError,
    },
    /// A vhost-user-blk backend's socket cannot be examined.
    #[error("the vhost-user backend socket {path} cannot be used")]
    VhostUserSocket {
        /// The socket.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A vhost-user-blk backend's socket path is not a socket.
    #[error("the vhost-user backend socket {path} cannot be used: it is not a Unix socket (is the backend running?)")]
    VhostUserNotSocket {
        /// The socket.
        path: String,
    },
    /// A vhost-user-blk backend could not be connected or set up.
    #[error(transparent)]
    VhostUser(#[from] lego_devices::vhost_user_frontend::VhostUserError),
    /// A virtio-net device could not be created on its tap.
    #[error("cannot create the virtio-net device on tap {tap}")]
    Net {
        /// The tap's name.
        tap: String,
        /// Why.
        #[source]
        source: NetError,
    },
    /// A virtio-mmio transport refused a device.
    #[error("cannot attach {what}")]
    Transport {
        /// The device.
        what: String,
        /// Why.
        source: MmioError,
    },
    /// An eventfd could not be duplicated.
    #[error("cannot duplicate an eventfd of {what}")]
    EventFd {
        /// The device.
        what: String,
        /// Why.
        source: std::io::Error,
    },
    /// Too many virtio devices for the interrupt lines we have.
    #[error("at most {0} virtio devices are supported")]
    TooManyVirtio(usize),
    /// A device range collided on a bus.
    #[error("cannot place a device")]
    Bus(#[from] BusError),
    /// KVM refused an irqfd or ioeventfd.
    #[error("cannot wire {what} into KVM")]
    Kvm {
        /// What was being wired.
        what: String,
        /// KVM's error.
        source: kvm_ioctls::Error,
    },
}

/// The vNode's devices.
pub struct Devices {
    /// The port-I/O bus.
    pub pio: Bus,
    /// The MMIO bus.
    pub mmio: Bus,
    /// The virtio-mmio windows, for the DSDT.
    pub virtio: Vec<MmioDevice>,
    /// Each virtio device as the API shows it, in the same order.
    pub live: Vec<crate::api::control::LiveDevice>,
    /// The empty slots for devices added while the vNode runs (none when the boot devices
    /// took every window).
    pub hotplug: Option<HotplugBoard>,
}

/// The ports the ACPI tables announce, as the devices define them.
pub fn platform_ports() -> PlatformPorts {
    PlatformPorts {
        sleep_control: acpi_pm::SLEEP_CONTROL_PORT,
        sleep_status: acpi_pm::SLEEP_STATUS_PORT,
        reset: acpi_pm::RESET_PORT,
        reset_value: acpi_pm::RESET_VALUE,
        s5_sleep_type: acpi_pm::S5_SLEEP_TYPE,
        pvpanic: pvpanic::PORT,
        serial: (serial::PORT, layout::SERIAL_GSI),
    }
}

fn shared<D: lego_devices::bus::BusDevice + 'static>(d: D) -> Arc<Mutex<D>> {
    Arc::new(Mutex::new(d))
}

/// Why a disk's backing file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DiskFileError {
    /// It cannot be examined (missing, no permission).
    #[error(transparent)]
    Unreadable(#[from] std::io::Error),
    /// It is neither a regular file nor a block device.
    #[error("it is neither a regular file nor a block device")]
    Kind,
}

/// Checks that a disk's backing file exists and is a regular file or a block device (at boot
/// and for a disk added to a running vNode).
pub fn check_disk_file(path: &std::path::Path) -> Result<(), DiskFileError> {
    use std::os::unix::fs::FileTypeExt;
    let meta = std::fs::metadata(path)?;
    if meta.is_file() || meta.file_type().is_block_device() {
        Ok(())
    } else {
        Err(DiskFileError::Kind)
    }
}

/// Checks every disk's backing file ([`check_disk_file`]) before any VM is built.
pub fn check_disks(config: &VmConfig) -> Result<(), DeviceError> {
    for disk in &config.disks {
        check_disk_file(&disk.path).map_err(|source| DeviceError::DiskFile {
            path: disk.path.display().to_string(),
            source,
        })?;
    }
    Ok(())
}

/// Checks that every vhost-user-blk backend's socket exists and is a Unix socket, before
/// any VM is built.
pub fn check_vhost_user(config: &VmConfig) -> Result<(), DeviceError> {
    use std::os::unix::fs::FileTypeExt;
    for dev in &config.vhost_user_blk {
        let path = || dev.socket.display().to_string();
        let meta =
            std::fs::metadata(&dev.socket).map_err(|source| DeviceError::VhostUserSocket {
                path: path(),
                source,
            })?;
        if !meta.file_type().is_socket() {
            return Err(DeviceError::VhostUserNotSocket { path: path() });
        }
    }
    Ok(())
}

/// The `slot`th virtio-mmio window: its base, size and interrupt line.
pub fn virtio_window(slot: usize) -> MmioDevice {
    MmioDevice {
        base: layout::VIRTIO_MMIO_START + slot as u64 * layout::VIRTIO_MMIO_SIZE,
        size: layout::VIRTIO_MMIO_SIZE,
        gsi: layout::VIRTIO_GSIS[slot],
    }
}

/// A virtio device behind its transport, wired into KVM: what must be unregistered to take
/// it out again.
pub struct WiredVirtio {
    /// The transport, for a bus.
    pub device: SharedDevice,
    /// Where it is.
    pub window: MmioDevice,
    /// Its queue-notify eventfds (KVM ioeventfds), queue 0 first.
    pub queue_events: Vec<EventFd>,
    /// Its interrupt eventfd (a KVM irqfd).
    pub interrupt: EventFd,
}

/// Puts `device` behind a virtio-mmio transport for `window` and wires its queue
/// notifications (ioeventfds) and interrupt (irqfd) into KVM.
pub fn wire_virtio<D: VirtioDevice + 'static>(
    vm: &VmFd,
    mem: &GuestMemory,
    window: MmioDevice,
    device: D,
    what: &str,
    rings: &RingRegistry,
) -> Result<WiredVirtio, DeviceError> {
    let kvm_err = |what: String| move |source| DeviceError::Kvm { what, source };
    let transport = MmioTransport::new(device, mem.clone())
        .map_err(|source| DeviceError::Transport {
            what: what.into(),
            source,
        })?
        .with_ring_registry(rings);
    let clone_err = |source| DeviceError::EventFd {
        what: what.into(),
        source,
    };
    let mut queue_events = Vec::new();
    for (q, evt) in transport.queue_events().iter().enumerate() {
        vm.register_ioevent(
            evt,
            &IoEventAddress::Mmio(window.base + NOTIFY_OFFSET),
            q as u32,
        )
        .map_err(kvm_err(format!("queue {q} notifications of {what}")))?;
        queue_events.push(evt.try_clone().map_err(clone_err)?);
    }
    vm.register_irqfd(transport.interrupt_event(), window.gsi)
        .map_err(kvm_err(format!("the interrupt of {what}")))?;
    let interrupt = transport.interrupt_event().try_clone().map_err(clone_err)?;
    tracing::info!(
        base = format_args!("{:#x}", window.base),
        gsi = window.gsi,
        "attached {what}"
    );
    Ok(WiredVirtio {
        device: shared(transport),
        window,
        queue_events,
        interrupt,
    })
}

/// Takes a wired device out of KVM: its queue notifications and its interrupt.
pub fn unwire_virtio(vm: &VmFd, wired: &WiredVirtio) -> Result<(), DeviceError> {
    let kvm_err = |what: String| move |source| DeviceError::Kvm { what, source };
    let notify = IoEventAddress::Mmio(wired.window.base + NOTIFY_OFFSET);
    for (q, evt) in wired.queue_events.iter().enumerate() {
        vm.unregister_ioevent(evt, &notify, q as u32)
            .map_err(kvm_err(format!("queue {q} notifications (removing them)")))?;
    }
    vm.unregister_irqfd(&wired.interrupt, wired.window.gsi)
        .map_err(kvm_err("the interrupt (removing it)".into()))
}

/// Places `device` behind the virtio-mmio window `slot` on the MMIO bus, wired into KVM.
fn attach_virtio<D: VirtioDevice + 'static>(
    vm: &VmFd,
    mmio: &mut Bus,
    mem: &GuestMemory,
    slot: usize,
    device: D,
    what: &str,
    rings: &RingRegistry,
) -> Result<MmioDevice, DeviceError> {
    let wired = wire_virtio(vm, mem, virtio_window(slot), device, what, rings)?;
    mmio.insert(wired.device, wired.window.base, MMIO_LEN)?;
    Ok(wired.window)
}

/// Creates every device of `config`; each virtio device records its live queues in `rings`
/// (the pager keeps the pages they use in guest RAM). `backend_faults` is the pager when
/// legovmm pages guest RAM: each vhost-user backend then hands it its userfaultfd (and must
/// offer PAGEFAULT). Each of `nets` becomes a virtio-net device after the disks.
#[allow(clippy::too_many_arguments)]
pub fn create(
    vm: &VmFd,
    mem: &GuestMemory,
    config: &VmConfig,
    exit: &ExitNotifier,
    rings: &RingRegistry,
    backend_faults: Option<Arc<dyn BackendFaults>>,
    events: &Arc<EventLog>,
    nets: Vec<PreparedNet>,
) -> Result<Devices, DeviceError> {
    let mut pio = Bus::new();
    let mut mmio = Bus::new();
    let kvm_err = |what: String| move |source| DeviceError::Kvm { what, source };

    let (input, typed) = console_input::queue();
    let console = Console::open(&config.serial, exit.clone(), input.clone())?;
    let uart = serial::SerialDevice::new(Box::new(console)).map_err(DeviceError::Serial)?;
    vm.register_irqfd(uart.interrupt_event(), layout::SERIAL_GSI)
        .map_err(kvm_err("the serial interrupt".into()))?;
    let uart = shared(uart);
    console_input::start_pump(typed, uart.clone())?;
    if crate::console::reads_stdin(&config.serial) {
        console_input::start_stdin(input, exit.clone())?;
    }
    pio.insert(uart, u64::from(serial::PORT), serial::LEN)?;
    pio.insert(shared(cmos::Cmos::new()), u64::from(cmos::PORT), cmos::LEN)?;
    pio.insert(
        shared(i8042::I8042::new(exit.clone())),
        u64::from(i8042::PORT),
        i8042::LEN,
    )?;
    pio.insert(
        shared(acpi_pm::AcpiPm::new(exit.clone())),
        u64::from(acpi_pm::PM_BASE),
        acpi_pm::PM_LEN,
    )?;
    pio.insert(
        shared(pvpanic::PvPanic::new(exit.clone())),
        u64::from(pvpanic::PORT),
        pvpanic::LEN,
    )?;

    if config.disks.len() + config.vhost_user_blk.len() + nets.len() > layout::VIRTIO_GSIS.len() {
        return Err(DeviceError::TooManyVirtio(layout::VIRTIO_GSIS.len()));
    }
    let mut virtio = Vec::new();
    let mut live = Vec::new();
    for (i, disk) in config.disks.iter().enumerate() {
        let block = Block::new(&disk.path, disk.readonly, &format!("lego-local-{i}")).map_err(
            |source| DeviceError::Disk {
                path: disk.path.display().to_string(),
                source,
            },
        )?;
        let what = format!(
            "virtio-blk disk {}{}",
            disk.path.display(),
            if disk.readonly { " (read-only)" } else { "" }
        );
        let counters = block.counters();
        let window = attach_virtio(vm, &mut mmio, mem, virtio.len(), block, &what, rings)?;
        live.push(live_device(
            live.len(),
            "virtio-blk",
            &disk.path,
            disk.readonly,
            &window,
            Some(counters),
        ));
        virtio.push(window);
    }
    for dev in &config.vhost_user_blk {
        let blk = VhostUserBlk::connect_with_faults(&dev.socket, backend_faults.clone())?
            .with_reconnect(ReconnectPolicy {
                window: dev.reconnect.map(Duration::from_secs),
            })
            .with_watcher(backend_watcher(
                events.clone(),
                format!("disk{}", live.len()),
            ));
        let what = format!("vhost-user-blk disk at {}", dev.socket.display());
        let window = attach_virtio(vm, &mut mmio, mem, virtio.len(), blk, &what, rings)?;
        live.push(live_device(
            live.len(),
            "vhost-user-blk",
            &dev.socket,
            false,
            &window,
            None,
        ));
        virtio.push(window);
    }
    for net in nets {
        let what = format!("virtio-net on tap {}", net.config.tap);
        let backend = net.backend();
        let device = Net::new(net.taps, net.mac.0, backend).map_err(|source| DeviceError::Net {
            tap: net.config.tap.clone(),
            source,
        })?;
        let window = attach_virtio(vm, &mut mmio, mem, virtio.len(), device, &what, rings)?;
        virtio.push(window);
    }
    let hotplug = hotplug_board(vm, &mut mmio, virtio.len())?;
    Ok(Devices {
        pio,
        mmio,
        virtio,
        live,
        hotplug,
    })
}

/// Puts the empty hotplug slots after the `used` boot windows on the MMIO bus, with the
/// controller's registers and the GED's interrupt.
fn hotplug_board(
    vm: &VmFd,
    mmio: &mut Bus,
    used: usize,
) -> Result<Option<HotplugBoard>, DeviceError> {
    let count = layout::HOTPLUG_SLOTS.min(layout::VIRTIO_GSIS.len() - used);
    if count == 0 {
        return Ok(None);
    }
    let bits = Arc::new(SlotBits::default());
    let mut slots = Vec::with_capacity(count);
    for i in 0..count {
        let window = virtio_window(used + i);
        let slot = Arc::new(Mutex::new(Slot::new(i, bits.clone())));
        mmio.insert(slot.clone(), window.base, MMIO_LEN)?;
        slots.push((window, slot));
    }
    mmio.insert(
        shared(HotplugRegisters::new(bits.clone())),
        layout::HOTPLUG_REGS_START,
        layout::HOTPLUG_REGS_LEN,
    )?;
    let ged = EventFd::new(EFD_NONBLOCK).map_err(|source| DeviceError::EventFd {
        what: "the hotplug interrupt".into(),
        source,
    })?;
    vm.register_irqfd(&ged, layout::GED_GSI)
        .map_err(|source| DeviceError::Kvm {
            what: "the hotplug interrupt".into(),
            source,
        })?;
    Ok(Some(HotplugBoard { slots, bits, ged }))
}

/// Writes a vhost-user device's backend events to the event log.
pub fn backend_watcher(events: Arc<EventLog>, id: String) -> BackendWatcher {
    Arc::new(move |socket: &str, event: &BackendEvent| {
        let (name, detail) = match event {
            BackendEvent::Lost => ("backend_lost", None),
            BackendEvent::Reconnected => ("backend_reconnected", None),
            BackendEvent::Failed(why) => ("backend_failed", Some(why.as_str())),
        };
        events.emit(
            name,
            serde_json::json!({ "device": id, "socket": socket, "detail": detail }),
        );
    })
}

/// The API's view of the `index`th virtio device.
fn live_device(
    index: usize,
    kind: &str,
    backing: &std::path::Path,
    read_only: bool,
    window: &MmioDevice,
    counters: Option<Arc<lego_devices::virtio::block::request::counters::BlockCounters>>,
) -> crate::api::control::LiveDevice {
    crate::api::control::LiveDevice {
        info: crate::api::model::DeviceInfo {
            id: format!("disk{index}"),
            kind: kind.into(),
            backing: backing.display().to_string(),
            read_only,
            mmio_base: window.base,
            gsi: window.gsi,
        },
        counters,
    }
}
