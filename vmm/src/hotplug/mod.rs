//! Devices added to and removed from a running vNode (`vm.add-disk`, `vm.remove-device`).
//!
//! The mechanism is ACPI hotplug of virtio-mmio windows, which a stock kernel handles by
//! itself. At boot the DSDT declares [`layout::HOTPLUG_SLOTS`] empty slots (containers
//! holding one `LNRO0005` window each, see [`crate::acpi::HotplugAml`]) and a Generic Event
//! Device. Adding a device puts its transport in a free slot, wires it into KVM, marks the
//! slot present and raises the GED's interrupt: the guest's `_EVT` bus-checks the slots,
//! Linux enumerates the new one and virtio-mmio probes it. Removing sends the slot an eject
//! request, which Linux's container driver turns into a uevent for user space; the guest
//! image's `lego-guest-tools hotplugd` (a full distribution would use a udev rule) unmounts
//! the disk and unbinds it from virtio-mmio, whose driver resets the device on the way out.
//! That reset, after the request, is the guest letting go: only then does legovmm unwire and
//! drop the device. The slot container itself is never ejected (Linux would orphan the
//! window's platform device and never enumerate the slot again); a device put in the slot
//! later is probed by `hotplugd` when the kernel says the slots' container is online.
//!
//! [`registers`] are the controller's registers; [`slot`] is one window.

pub mod registers;
pub mod slot;

use crate::acpi::{HotplugAml, MmioDevice};
use crate::api::control::LiveDevice;
use crate::api::model::DeviceInfo;
use crate::backends::RemoteDevices;
use crate::config::{RemoteConfig, RemoteDisk};
use crate::device_manager::{self, DeviceError, WiredVirtio};
use crate::events::EventLog;
use crate::layout;
use crate::memory::GuestMemory;
use kvm_ioctls::VmFd;
use lego_devices::vhost_user_frontend::{BackendFaults, ReconnectPolicy, VhostUserBlk};
use lego_devices::virtio::block::request::counters::BlockCounters;
use lego_devices::virtio::block::{Block, BlockError};
use lego_devices::virtio::rings::RingRegistry;
use registers::SlotBits;
use slot::Slot;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use vmm_sys_util::eventfd::EventFd;

/// How long `vm.remove-device` waits for the guest to let go of a device.
pub const REMOVE_PATIENCE: Duration = Duration::from_secs(20);

/// Errors adding or removing a device.
#[derive(Debug, thiserror::Error)]
pub enum HotplugError {
    /// The disk's backing file is missing or unusable.
    #[error("cannot add the disk {path}")]
    BadDisk {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: device_manager::DiskFileError,
    },
    /// The disk could not be opened.
    #[error("cannot add the disk {path}")]
    Disk {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: BlockError,
    },
    /// Every slot holds a device.
    #[error("every hotplug slot ({0}) holds a device; remove one first")]
    NoFreeSlot(usize),
    /// No device has that id.
    #[error("there is no device {0} (vm.info lists the devices)")]
    UnknownDevice(String),
    /// The device was there at boot: only hot-added devices can be removed.
    #[error("{0} was attached at boot; only devices added through the API can be removed")]
    NotHotplugged(String),
    /// The guest did not let go of the device in time.
    #[error("the guest did not let go of {id} within {secs} s (is it still mounted?); it stays attached")]
    GuestKeeps {
        /// The device.
        id: String,
        /// How long legovmm waited.
        secs: u64,
    },
    /// The vNode has no id and manager to place a remote device with.
    #[error("this vNode has no --vnode and --manager, which remote disks and remote memory need")]
    NoCluster,
    /// Guest RAM is private: no backend can map it.
    #[error("a remote device's backend must map guest RAM, which is private here; start the vNode with --memory-backing shared")]
    PrivateRam,
    /// The vNode's remote memory already has a user.
    #[error("the vNode's remote memory is already in use by {0}; a vNode has one remote memory space, so it can be added only once and only when the vNode has no other")]
    RemoteMemoryTaken(String),
    /// A remote device's backend did not come up.
    #[error("cannot add {what}")]
    Backend {
        /// The device ("the remote disk NAME", "remote memory").
        what: String,
        /// Why.
        #[source]
        source: crate::backends::BackendError,
    },
    /// The backend came up but the device could not be set up.
    #[error("cannot add {what}")]
    VhostUser {
        /// The device.
        what: String,
        /// Why.
        #[source]
        source: lego_devices::vhost_user_frontend::VhostUserError,
    },
    /// KVM refused to wire or unwire the device.
    #[error(transparent)]
    Wiring(#[from] DeviceError),
    /// The GED interrupt could not be raised.
    #[error("cannot raise the hotplug interrupt")]
    Interrupt(#[source] std::io::Error),
}

/// The hotplug slots made at boot: their windows and bus devices, the controller's bits and
/// the GED's interrupt.
pub struct HotplugBoard {
    /// Each slot's window and its device on the MMIO bus.
    pub slots: Vec<(MmioDevice, Arc<Mutex<Slot>>)>,
    /// The controller's registers' state.
    pub bits: Arc<SlotBits>,
    /// The GED's interrupt (a KVM irqfd on [`layout::GED_GSI`]).
    pub ged: EventFd,
}

impl HotplugBoard {
    /// What the DSDT must say about these slots.
    pub fn aml(&self) -> HotplugAml {
        HotplugAml {
            slots: self.slots.iter().map(|(w, _)| *w).collect(),
            registers: layout::HOTPLUG_REGS_START,
            ged_gsi: layout::GED_GSI,
        }
    }
}

/// The devices of the running vNode, boot-time and hot-added, as the API lists them.
pub type DeviceList = Arc<Mutex<Vec<LiveDevice>>>;

/// What a hot-added device occupies.
struct Occupant {
    id: String,
    wired: WiredVirtio,
    /// The backend of a remote device, stopped after the device is gone.
    backend: Option<RemoteDevices>,
    /// Whether it is the vNode's remote memory.
    remote_memory: bool,
}

/// What serves a hot-added device besides legovmm: a remote device's backend.
#[derive(Default)]
struct Placed {
    backend: Option<RemoteDevices>,
    remote_memory: bool,
}

/// A remote device to add.
enum RemoteKind {
    /// The vNode's remote memory, this many bytes.
    Memory(u64),
    /// One of its volumes.
    Disk(RemoteDisk),
}

/// What a remote disk added at run time needs: the vNode's place in the cluster, guest RAM a
/// backend can map, and (when legovmm pages guest RAM) where backends hand their faults.
#[derive(Clone, Default)]
pub struct RemoteSetup {
    /// The vNode's id, manager and key (its devices are ignored).
    pub cluster: Option<RemoteConfig>,
    /// Whether guest RAM is a shared memfd.
    pub shared_ram: bool,
    /// The pager, when it pages guest RAM.
    pub backend_faults: Option<Arc<dyn BackendFaults>>,
}

/// Adds and removes devices on the running vNode.
pub struct Hotplug {
    vm: Arc<VmFd>,
    mem: GuestMemory,
    rings: RingRegistry,
    events: Arc<EventLog>,
    board: HotplugBoard,
    occupants: Mutex<Vec<Option<Occupant>>>,
    devices: DeviceList,
    next_id: Mutex<usize>,
    remote: RemoteSetup,
}

/// A disk to add.
#[derive(Debug, Clone)]
pub struct NewDisk {
    /// The backing file (or block device).
    pub path: PathBuf,
    /// Whether the guest may only read it.
    pub read_only: bool,
}

impl Hotplug {
    /// The hotplug controller of the vNode whose VM is `vm`; `devices` lists the boot
    /// devices and gets the added ones.
    pub fn new(
        vm: Arc<VmFd>,
        mem: GuestMemory,
        rings: RingRegistry,
        events: Arc<EventLog>,
        board: HotplugBoard,
        devices: DeviceList,
        remote: RemoteSetup,
    ) -> Self {
        let next_id = lock(&devices).len();
        let occupants = (0..board.slots.len()).map(|_| None).collect();
        Self {
            vm,
            mem,
            rings,
            events,
            board,
            occupants: Mutex::new(occupants),
            devices,
            next_id: Mutex::new(next_id),
            remote,
        }
    }

    /// Adds a virtio-blk disk backed by `disk.path`; the guest sees it at once.
    pub fn add_disk(&self, disk: &NewDisk) -> Result<DeviceInfo, HotplugError> {
        device_manager::check_disk_file(&disk.path).map_err(|source| HotplugError::BadDisk {
            path: disk.path.clone(),
            source,
        })?;
        let mut occupants = lock(&self.occupants);
        self.reap(&mut occupants);
        let n = free_slot(&occupants)?;
        let id = self.new_id();
        let block = Block::new(&disk.path, disk.read_only, &format!("lego-hot-{id}")).map_err(
            |source| HotplugError::Disk {
                path: disk.path.clone(),
                source,
            },
        )?;
        let counters = block.counters();
        let what = format!("hot-added virtio-blk disk {} as {id}", disk.path.display());
        let window = self.board.slots[n].0;
        let wired =
            device_manager::wire_virtio(&self.vm, &self.mem, window, block, &what, &self.rings)?;
        let info = DeviceInfo {
            id,
            kind: "virtio-blk".into(),
            backing: disk.path.display().to_string(),
            read_only: disk.read_only,
            mmio_base: window.base,
            gsi: window.gsi,
        };
        self.plug(
            &mut occupants,
            n,
            wired,
            Placed::default(),
            info,
            Some(counters),
        )
    }

    /// Adds a remote disk: starts a `lego-vhost-blk` backend for the vNode's volume `volume`
    /// (created with `size` bytes when given, else it must exist), then attaches its socket.
    pub fn add_remote_disk(
        &self,
        volume: &str,
        size: Option<u64>,
    ) -> Result<DeviceInfo, HotplugError> {
        let disk = RemoteDisk {
            name: volume.into(),
            size,
        };
        self.add_remote(
            RemoteKind::Disk(disk),
            format!("the remote disk {volume}"),
            format!("remote volume {volume}"),
        )
    }

    /// Adds `size` bytes of the vNode's remote memory, placed by the manager, as a block
    /// device the guest image swaps on (as on boot with `--remote-memory`). Only a vNode
    /// whose remote memory has no other user can: it is one page space per vNode.
    pub fn add_remote_memory(&self, size: u64) -> Result<DeviceInfo, HotplugError> {
        let cluster = self
            .remote
            .cluster
            .as_ref()
            .ok_or(HotplugError::NoCluster)?;
        if cluster.memory.is_some() {
            return Err(HotplugError::RemoteMemoryTaken(
                "its boot-time swap (--remote-memory)".into(),
            ));
        }
        if self.remote.backend_faults.is_some() {
            return Err(HotplugError::RemoteMemoryTaken(
                "legovmm's paging of guest RAM (--local-memory)".into(),
            ));
        }
        let mib = size >> 20;
        self.add_remote(
            RemoteKind::Memory(size),
            format!("{mib} MiB of remote memory"),
            format!("remote memory, {mib} MiB"),
        )
    }

    /// Starts the backend of a remote device and hot-adds its vhost-user-blk device.
    fn add_remote(
        &self,
        kind: RemoteKind,
        what: String,
        backing: String,
    ) -> Result<DeviceInfo, HotplugError> {
        let cluster = self
            .remote
            .cluster
            .as_ref()
            .ok_or(HotplugError::NoCluster)?;
        if !self.remote.shared_ram {
            return Err(HotplugError::PrivateRam);
        }
        let mut occupants = lock(&self.occupants);
        self.reap(&mut occupants);
        let is_memory = matches!(kind, RemoteKind::Memory(_));
        if is_memory {
            if let Some(o) = occupants.iter().flatten().find(|o| o.remote_memory) {
                return Err(HotplugError::RemoteMemoryTaken(format!("device {}", o.id)));
            }
        }
        let n = free_slot(&occupants)?;
        let id = self.new_id();
        let (memory, disk) = match kind {
            RemoteKind::Memory(size) => (Some(size), None),
            RemoteKind::Disk(d) => (None, Some(d)),
        };
        let config = RemoteConfig {
            memory,
            disk,
            ..cluster.clone()
        };
        let dir = std::env::temp_dir().join(format!("legovmm-{}-{id}", std::process::id()));
        let backend =
            crate::backends::start_in(&config, dir).map_err(|source| HotplugError::Backend {
                what: what.clone(),
                source,
            })?;
        let vhost_err = |source| HotplugError::VhostUser {
            what: what.clone(),
            source,
        };
        let socket = backend.sockets[0].socket.clone();
        let blk = VhostUserBlk::connect_with_faults(&socket, self.remote.backend_faults.clone())
            .map_err(vhost_err)?
            .with_reconnect(ReconnectPolicy::default())
            .with_watcher(device_manager::backend_watcher(
                self.events.clone(),
                id.clone(),
            ));
        let wiring = format!("hot-added {what} as {id}");
        let window = self.board.slots[n].0;
        let wired =
            device_manager::wire_virtio(&self.vm, &self.mem, window, blk, &wiring, &self.rings)?;
        let info = DeviceInfo {
            id,
            kind: "vhost-user-blk".into(),
            backing,
            read_only: false,
            mmio_base: window.base,
            gsi: window.gsi,
        };
        let placed = Placed {
            backend: Some(backend),
            remote_memory: is_memory,
        };
        self.plug(&mut occupants, n, wired, placed, info, None)
    }

    /// A new device id (never reused while the vNode runs).
    fn new_id(&self) -> String {
        let mut next = lock(&self.next_id);
        *next += 1;
        format!("disk{}", *next - 1)
    }

    /// Puts a wired device in slot `n`, lists it and tells the guest.
    fn plug(
        &self,
        occupants: &mut [Option<Occupant>],
        n: usize,
        wired: WiredVirtio,
        placed: Placed,
        info: DeviceInfo,
        counters: Option<Arc<BlockCounters>>,
    ) -> Result<DeviceInfo, HotplugError> {
        lock(&self.board.slots[n].1).fill(wired.device.clone());
        self.board.bits.set_present(n);
        occupants[n] = Some(Occupant {
            id: info.id.clone(),
            wired,
            backend: placed.backend,
            remote_memory: placed.remote_memory,
        });
        lock(&self.devices).push(LiveDevice {
            info: info.clone(),
            counters,
        });
        self.board.ged.write(1).map_err(HotplugError::Interrupt)?;
        self.events.emit(
            "device_added",
            serde_json::to_value(&info).unwrap_or_default(),
        );
        Ok(info)
    }

    /// Presses the vNode's ACPI power button: a guest that acts on it powers off by itself.
    pub fn press_power_button(&self) -> Result<(), HotplugError> {
        self.board.bits.press_power_button();
        self.board.ged.write(1).map_err(HotplugError::Interrupt)
    }

    /// Asks the guest to let go of the hot-added device `id`, waits until it has (up to
    /// [`REMOVE_PATIENCE`]), then takes the device out.
    pub fn remove(&self, id: &str) -> Result<(), HotplugError> {
        let n = {
            let mut occupants = lock(&self.occupants);
            self.reap(&mut occupants);
            let found = occupants
                .iter()
                .position(|o| o.as_ref().is_some_and(|o| o.id == id));
            match found {
                Some(n) => n,
                None if lock(&self.devices).iter().any(|d| d.info.id == id) => {
                    return Err(HotplugError::NotHotplugged(id.into()))
                }
                None => return Err(HotplugError::UnknownDevice(id.into())),
            }
        };
        self.board.bits.request_eject(n);
        self.board.ged.write(1).map_err(HotplugError::Interrupt)?;
        if !self.board.bits.wait_released(n, REMOVE_PATIENCE) {
            return Err(HotplugError::GuestKeeps {
                id: id.into(),
                secs: REMOVE_PATIENCE.as_secs(),
            });
        }
        let mut occupants = lock(&self.occupants);
        self.reap(&mut occupants);
        Ok(())
    }

    /// Takes out every device the guest let go of.
    fn reap(&self, occupants: &mut [Option<Occupant>]) {
        let released = self.board.bits.take_released();
        for (n, occupant) in occupants.iter_mut().enumerate() {
            if released & (1 << n) == 0 {
                continue;
            }
            let Some(o) = occupant.take() else {
                continue;
            };
            lock(&self.board.slots[n].1).empty();
            if let Err(e) = device_manager::unwire_virtio(&self.vm, &o.wired) {
                tracing::warn!("{}", lego_report::error_chain(&e));
            }
            let Occupant {
                id, wired, backend, ..
            } = o;
            // The device goes before its backend: a remote disk's backend stops last.
            drop(wired);
            drop(backend);
            lock(&self.devices).retain(|d| d.info.id != id);
            tracing::info!(device = %id, slot = n, "removed a hot-added device");
            self.events
                .emit("device_removed", serde_json::json!({ "id": id }));
        }
    }
}

/// The first empty slot.
fn free_slot(occupants: &[Option<Occupant>]) -> Result<usize, HotplugError> {
    occupants
        .iter()
        .position(Option::is_none)
        .ok_or(HotplugError::NoFreeSlot(occupants.len()))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
