//! ACPI tables (RSDP, XSDT, FADT, MADT, DSDT) for a hardware-reduced x86 platform, built with
//! the `acpi_tables` crate. The DSDT is how a stock kernel finds our virtio-mmio devices
//! (`LNRO0005`), the serial port and the pvpanic device; the FADT's sleep and reset
//! registers are how it powers off and reboots.

use crate::layout;
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::{aml, fadt, madt, rsdp::Rsdp, sdt::Sdt, xsdt::XSDT, Aml};

const OEM_ID: [u8; 6] = *b"LEGOVM";
const OEM_TABLE_ID: [u8; 8] = *b"LEGOVMM ";
const OEM_REVISION: u32 = 1;
/// Tables are placed on this alignment.
const TABLE_ALIGN: u64 = 16;

/// IA-PC boot architecture flag: no VGA.
const IAPC_BOOT_ARCH_VGA_NOT_PRESENT: u16 = 1 << 2;
/// IA-PC boot architecture flag: MSIs must not be enabled.
const IAPC_BOOT_ARCH_MSI_NOT_SUPPORTED: u16 = 1 << 3;

/// A virtio-mmio device window as the DSDT describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioDevice {
    /// Base guest-physical address.
    pub base: u64,
    /// Window size.
    pub size: u64,
    /// Its interrupt line.
    pub gsi: u32,
}

/// The fixed I/O ports the platform devices answer on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlatformPorts {
    /// Hardware-reduced ACPI sleep control register.
    pub sleep_control: u16,
    /// Hardware-reduced ACPI sleep status register.
    pub sleep_status: u16,
    /// ACPI reset register.
    pub reset: u16,
    /// The value the guest writes to `reset`.
    pub reset_value: u8,
    /// The sleep type the `\_S5` package announces for power-off.
    pub s5_sleep_type: u8,
    /// The pvpanic port.
    pub pvpanic: u16,
    /// The serial port base and its interrupt.
    pub serial: (u16, u32),
}

/// What the tables describe.
#[derive(Debug, Clone)]
pub struct AcpiInputs {
    /// Number of vCPUs (APIC IDs 0..vcpus).
    pub vcpus: u8,
    /// virtio-mmio devices.
    pub virtio: Vec<MmioDevice>,
    /// Platform ports.
    pub ports: PlatformPorts,
    /// The hotplug slots and their controller, if the vNode has any.
    pub hotplug: Option<HotplugAml>,
}

/// What the DSDT says about hotplug: the slots (empty virtio-mmio windows), the controller's
/// registers and the Generic Event Device's interrupt.
///
/// The slots live in a container device (`\_SB.HPC0`, `ACPI0004`), each slot a container
/// (`S0n_`) holding one `LNRO0005` window. A slot is present when its bit in the controller's
/// PRES register is set. On the GED's interrupt, `_EVT` sends the whole container a bus check
/// (Linux then enumerates the slots that became present, and virtio-mmio probes them) and an
/// eject request to each slot whose bit is set in EJRQ (read-to-clear), which Linux hands to
/// user space as a uevent (see [`crate::hotplug`]).
#[derive(Debug, Clone)]
pub struct HotplugAml {
    /// The slots' windows, slot 0 first.
    pub slots: Vec<MmioDevice>,
    /// The registers' base address.
    pub registers: u64,
    /// The GED's GSI.
    pub ged_gsi: u32,
}

/// The offsets of the hotplug controller's 32-bit registers.
pub mod hotplug_regs {
    /// Bit n set: slot n holds a device (read).
    pub const PRESENT: u64 = 0;
    /// Bit n set: the VMM asks the guest to let go of slot n (read, and cleared by the read).
    pub const EJECT_REQUEST: u64 = 4;
    /// Platform events for the GED (read, and cleared by the read): see [`POWER_BUTTON`].
    pub const EVENTS: u64 = 8;
    /// The bit in [`EVENTS`] that says the power button was pressed.
    pub const POWER_BUTTON: u32 = 1;
}

/// The built tables and where each goes.
pub struct AcpiTables {
    /// `(guest address, bytes)` for each table, RSDP first.
    pub blobs: Vec<(u64, Vec<u8>)>,
    /// Where the RSDP is.
    pub rsdp_addr: u64,
}

/// Errors building the tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// The tables would not fit in the BIOS area.
    #[error("the ACPI tables need {0} bytes, more than the BIOS area holds")]
    TooLarge(u64),
}

fn to_bytes(table: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    table.to_aml_bytes(&mut v);
    v
}

/// Builds the DSDT: `\_S5`, and under `\_SB` the serial port, pvpanic and virtio devices.
pub fn dsdt(inputs: &AcpiInputs) -> Vec<u8> {
    let p = inputs.ports;
    let s5 = aml::Package::new(vec![&p.s5_sleep_type, &0u8, &0u8, &0u8]);
    let s5 = aml::Name::new("_S5_".into(), &s5);

    let (serial_port, serial_gsi) = p.serial;
    let com1_res = [
        &aml::IO::new(serial_port, serial_port, 1, 8) as &dyn Aml,
        &aml::Interrupt::new(true, true, false, false, serial_gsi),
    ];
    let com1_crs = aml::ResourceTemplate::new(com1_res.to_vec());
    let com1_hid = aml::EISAName::new("PNP0501");
    let com1_names = [
        aml::Name::new("_HID".into(), &com1_hid),
        aml::Name::new("_UID".into(), &aml::ZERO),
        aml::Name::new("_CRS".into(), &com1_crs),
    ];
    let com1 = aml::Device::new(
        "COM1".into(),
        com1_names.iter().map(|n| n as &dyn Aml).collect(),
    );

    let pvpanic_io = aml::IO::new(p.pvpanic, p.pvpanic, 1, 1);
    let pvpanic_crs = aml::ResourceTemplate::new(vec![&pvpanic_io]);
    let pvpanic_names = [
        aml::Name::new("_HID".into(), &"QEMU0001"),
        aml::Name::new("_CRS".into(), &pvpanic_crs),
    ];
    let pvpanic = aml::Device::new(
        "PEVT".into(),
        pvpanic_names.iter().map(|n| n as &dyn Aml).collect(),
    );

    struct VirtioAml {
        name: String,
        uid: u32,
        mem: aml::Memory32Fixed,
        irq: aml::Interrupt,
    }
    let virtio: Vec<VirtioAml> = inputs
        .virtio
        .iter()
        .enumerate()
        .map(|(i, d)| VirtioAml {
            name: format!("V{i:03X}"),
            uid: i as u32,
            mem: aml::Memory32Fixed::new(true, d.base as u32, d.size as u32),
            irq: aml::Interrupt::new(true, true, false, false, d.gsi),
        })
        .collect();
    let virtio_crs: Vec<_> = virtio
        .iter()
        .map(|v| aml::ResourceTemplate::new(vec![&v.mem, &v.irq]))
        .collect();
    let virtio_names: Vec<_> = virtio
        .iter()
        .zip(&virtio_crs)
        .map(|(v, crs)| {
            (
                aml::Name::new("_HID".into(), &"LNRO0005"),
                aml::Name::new("_UID".into(), &v.uid),
                aml::Name::new("_CRS".into(), crs),
            )
        })
        .collect();
    let virtio_devices: Vec<_> = virtio
        .iter()
        .zip(&virtio_names)
        .map(|(v, (hid, uid, crs))| {
            aml::Device::new(v.name.as_str().into(), vec![hid as &dyn Aml, uid, crs])
        })
        .collect();

    let mut sb_children: Vec<&dyn Aml> = vec![&com1, &pvpanic];
    sb_children.extend(virtio_devices.iter().map(|d| d as &dyn Aml));
    let sb = aml::Scope::new("_SB_".into(), sb_children);

    let mut table = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    let mut body = Vec::new();
    s5.to_aml_bytes(&mut body);
    sb.to_aml_bytes(&mut body);
    if let Some(h) = &inputs.hotplug {
        hotplug_aml(h, &mut body);
    }
    table.append_slice(&body);
    table.as_slice().to_vec()
}

/// Appends `Scope(\_SB)` with the hotplug container `HPC0` and the Generic Event Device
/// `GED0` (see [`HotplugAml`]).
fn hotplug_aml(h: &HotplugAml, body: &mut Vec<u8>) {
    use aml::{FieldAccessType, FieldEntry, FieldLockRule, FieldUpdateRule, OpRegionSpace};
    let present = aml::Name::new("_STA".into(), &0x0fu8);
    let container_hid = aml::Name::new("_HID".into(), &"ACPI0004");
    let base = h.registers;
    let len = 12u32;
    let region = aml::OpRegion::new("HPR_".into(), OpRegionSpace::SystemMemory, &base, &len);
    let field = aml::Field::new(
        "HPR_".into(),
        FieldAccessType::DWord,
        FieldLockRule::NoLock,
        FieldUpdateRule::Preserve,
        vec![
            FieldEntry::Named(*b"PRES", 32),
            FieldEntry::Named(*b"EJRQ", 32),
            FieldEntry::Named(*b"EVNT", 32),
        ],
    );

    struct SlotAml {
        slot: String,
        window: String,
        bit: u32,
        number: u32,
        uid: u32,
        mem: aml::Memory32Fixed,
        irq: aml::Interrupt,
    }
    let slots: Vec<SlotAml> = h
        .slots
        .iter()
        .enumerate()
        .map(|(n, d)| SlotAml {
            slot: format!("S{n:02X}_"),
            window: format!("H{n:03X}"),
            bit: 1 << n,
            number: n as u32,
            uid: 0x100 + n as u32,
            mem: aml::Memory32Fixed::new(true, d.base as u32, d.size as u32),
            irq: aml::Interrupt::new(true, true, false, false, d.gsi),
        })
        .collect();
    let pres: aml::Path = "PRES".into();
    let local0 = aml::Local(0);
    let crs: Vec<_> = slots
        .iter()
        .map(|s| aml::ResourceTemplate::new(vec![&s.mem, &s.irq]))
        .collect();
    let window_names: Vec<_> = slots
        .iter()
        .zip(&crs)
        .map(|(s, crs)| {
            [
                aml::Name::new("_HID".into(), &"LNRO0005"),
                aml::Name::new("_UID".into(), &s.uid),
                aml::Name::new("_CRS".into(), crs),
            ]
        })
        .collect();
    let windows: Vec<_> = slots
        .iter()
        .zip(&window_names)
        .map(|(s, names)| {
            aml::Device::new(
                s.window.as_str().into(),
                names.iter().map(|n| n as &dyn Aml).collect(),
            )
        })
        .collect();
    let slot_and: Vec<_> = slots
        .iter()
        .map(|s| aml::And::new(&local0, &pres, &s.bit))
        .collect();
    let sta_checks: Vec<_> = slot_and
        .iter()
        .map(|a| (a, aml::NotEqual::new(&local0, &aml::ZERO)))
        .collect();
    let ret_present = aml::Return::new(&0x0fu8);
    let ret_absent = aml::Return::new(&aml::ZERO);
    let sta_ifs: Vec<_> = sta_checks
        .iter()
        .map(|(_, ne)| aml::If::new(ne, vec![&ret_present]))
        .collect();
    let sta_methods: Vec<_> = sta_checks
        .iter()
        .zip(&sta_ifs)
        .map(|((and, _), ifp)| {
            aml::Method::new(
                "_STA".into(),
                0,
                false,
                vec![*and as &dyn Aml, ifp, &ret_absent],
            )
        })
        .collect();
    let slot_uids: Vec<u32> = slots.iter().map(|s| s.number + 1).collect();
    let slot_uid_names: Vec<_> = slot_uids
        .iter()
        .map(|u| aml::Name::new("_UID".into(), u))
        .collect();
    let slot_devices: Vec<_> = (0..slots.len())
        .map(|i| {
            aml::Device::new(
                slots[i].slot.as_str().into(),
                vec![
                    &container_hid as &dyn Aml,
                    &slot_uid_names[i],
                    &sta_methods[i],
                    &windows[i],
                ],
            )
        })
        .collect();
    let hpc_uid = aml::Name::new("_UID".into(), &0u32);
    let mut hpc_children: Vec<&dyn Aml> = vec![&container_hid, &hpc_uid, &present, &region, &field];
    hpc_children.extend(slot_devices.iter().map(|d| d as &dyn Aml));
    let hpc = aml::Device::new("HPC0".into(), hpc_children);

    // The GED: _EVT takes the eject requests, bus-checks the container, and asks each
    // requested slot to eject.
    let ejrq: aml::Path = "\\_SB_.HPC0.EJRQ".into();
    let take_requests = aml::Store::new(&local0, &ejrq);
    let hpc_path: aml::Path = "\\_SB_.HPC0".into();
    let bus_check = aml::Notify::new(&hpc_path, &aml::ZERO);
    let slot_paths: Vec<aml::Path> = slots
        .iter()
        .map(|s| format!("\\_SB_.HPC0.{}", s.slot).as_str().into())
        .collect();
    let eject_value = 3u8;
    let requested: Vec<_> = slots
        .iter()
        .map(|s| aml::And::new(&aml::ZERO, &local0, &s.bit))
        .collect();
    let notifies: Vec<_> = slot_paths
        .iter()
        .map(|p| aml::Notify::new(p, &eject_value))
        .collect();
    let eject_ifs: Vec<_> = requested
        .iter()
        .zip(&notifies)
        .map(|(r, n)| aml::If::new(r, vec![n as &dyn Aml]))
        .collect();
    let mut evt_body: Vec<&dyn Aml> = vec![&take_requests, &bus_check];
    evt_body.extend(eject_ifs.iter().map(|i| i as &dyn Aml));
    // The power button: a notify 0x80 ("status change") on a PNP0C0C device is a press.
    let local1 = aml::Local(1);
    let evnt: aml::Path = "\\_SB_.HPC0.EVNT".into();
    let take_events = aml::Store::new(&local1, &evnt);
    let power_bit = hotplug_regs::POWER_BUTTON;
    let pressed = aml::And::new(&aml::ZERO, &local1, &power_bit);
    let pwrb_path: aml::Path = "\\_SB_.PWRB".into();
    let press_value = 0x80u8;
    let press = aml::Notify::new(&pwrb_path, &press_value);
    let if_pressed = aml::If::new(&pressed, vec![&press]);
    evt_body.push(&take_events);
    evt_body.push(&if_pressed);
    let evt = aml::Method::new("_EVT".into(), 1, true, evt_body);
    let ged_irq = aml::Interrupt::new(true, true, false, false, h.ged_gsi);
    let ged_crs = aml::ResourceTemplate::new(vec![&ged_irq]);
    let ged_hid = aml::Name::new("_HID".into(), &"ACPI0013");
    let ged_uid = aml::Name::new("_UID".into(), &0u32);
    let ged_crs = aml::Name::new("_CRS".into(), &ged_crs);
    let ged = aml::Device::new("GED0".into(), vec![&ged_hid, &ged_uid, &ged_crs, &evt]);

    let pwrb_hid = aml::Name::new("_HID".into(), &"PNP0C0C");
    let pwrb_uid = aml::Name::new("_UID".into(), &0u32);
    let pwrb = aml::Device::new("PWRB".into(), vec![&pwrb_hid, &pwrb_uid]);

    aml::Scope::new("_SB_".into(), vec![&hpc, &ged, &pwrb]).to_aml_bytes(body);
}

/// Builds the MADT: one enabled local APIC per vCPU and the I/O APIC.
pub fn madt(vcpus: u8) -> Vec<u8> {
    let mut table = madt::MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        madt::LocalInterruptController::Address(layout::APIC_START as u32),
    );
    for id in 0..vcpus {
        table.add_structure(madt::ProcessorLocalApic::new(
            id,
            id,
            madt::EnabledStatus::Enabled,
        ));
    }
    table.add_structure(madt::IoApic::new(0, layout::IOAPIC_START as u32, 0));
    to_bytes(&table)
}

fn io_register(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(port),
    )
}

/// Builds the FADT of a hardware-reduced platform pointing at the DSDT.
pub fn fadt(ports: &PlatformPorts, dsdt_addr: u64) -> Vec<u8> {
    let mut b = fadt::FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(fadt::Flags::HwReducedAcpi)
        .flag(fadt::Flags::ResetRegSup)
        .flag(fadt::Flags::PwrButton)
        .flag(fadt::Flags::SlpButton);
    b.reset_reg = io_register(ports.reset);
    b.reset_value = ports.reset_value;
    b.sleep_control_reg = io_register(ports.sleep_control);
    b.sleep_status_reg = io_register(ports.sleep_status);
    b.iapc_boot_arch = (IAPC_BOOT_ARCH_VGA_NOT_PRESENT | IAPC_BOOT_ARCH_MSI_NOT_SUPPORTED).into();
    to_bytes(&b.finalize())
}

fn align(addr: u64) -> u64 {
    addr.div_ceil(TABLE_ALIGN) * TABLE_ALIGN
}

/// Builds every table and lays them out from [`layout::ACPI_START`].
pub fn build(inputs: &AcpiInputs) -> Result<AcpiTables, AcpiError> {
    let dsdt = dsdt(inputs);
    let madt = madt(inputs.vcpus);
    let rsdp_addr = layout::ACPI_START;
    let xsdt_addr = align(rsdp_addr + Rsdp::len() as u64);
    let xsdt_len = 36 + 2 * 8;
    let fadt_addr = align(xsdt_addr + xsdt_len);
    let fadt_len = fadt::FADT::len() as u64;
    let madt_addr = align(fadt_addr + fadt_len);
    let dsdt_addr = align(madt_addr + madt.len() as u64);
    let end = dsdt_addr + dsdt.len() as u64;
    if end > layout::HIGH_MEMORY_START {
        return Err(AcpiError::TooLarge(end - layout::ACPI_START));
    }
    let fadt = fadt(&inputs.ports, dsdt_addr);
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let rsdp = Rsdp::new(OEM_ID, xsdt_addr);
    Ok(AcpiTables {
        blobs: vec![
            (rsdp_addr, to_bytes(&rsdp)),
            (xsdt_addr, to_bytes(&xsdt)),
            (fadt_addr, fadt),
            (madt_addr, madt),
            (dsdt_addr, dsdt),
        ],
        rsdp_addr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(n: usize) -> AcpiInputs {
        AcpiInputs {
            vcpus: 2,
            virtio: (0..n)
                .map(|i| MmioDevice {
                    base: layout::VIRTIO_MMIO_START + i as u64 * 0x1000,
                    size: 0x1000,
                    gsi: layout::VIRTIO_GSIS[i],
                })
                .collect(),
            ports: PlatformPorts {
                sleep_control: 0x600,
                sleep_status: 0x601,
                reset: 0x602,
                reset_value: 1,
                s5_sleep_type: 5,
                pvpanic: 0x505,
                serial: (0x3f8, 4),
            },
            hotplug: None,
        }
    }

    fn sums_to_zero(b: &[u8]) -> bool {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x)) == 0
    }

    fn table_at(t: &AcpiTables, addr: u64) -> &[u8] {
        &t.blobs
            .iter()
            .find(|(a, _)| *a == addr)
            .expect("table at address")
            .1
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    #[test]
    fn every_table_checksums_and_the_chain_links_up() {
        let t = build(&inputs(3)).unwrap();
        let rsdp = table_at(&t, t.rsdp_addr);
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert!(sums_to_zero(&rsdp[..20]) && sums_to_zero(rsdp));
        let xsdt = table_at(&t, u64_at(rsdp, 24));
        assert_eq!(&xsdt[..4], b"XSDT");
        for (_, blob) in &t.blobs[1..] {
            assert!(sums_to_zero(blob), "{:?}", &blob[..4]);
            let len = u32::from_le_bytes(blob[4..8].try_into().unwrap()) as usize;
            assert_eq!(len, blob.len());
        }
        let fadt = table_at(&t, u64_at(xsdt, 36));
        let madt = table_at(&t, u64_at(xsdt, 44));
        assert_eq!(&fadt[..4], b"FACP");
        assert_eq!(&madt[..4], b"APIC");
        let dsdt = table_at(&t, u64_at(fadt, 140)); // X_DSDT
        assert_eq!(&dsdt[..4], b"DSDT");
        // FADT flags: hardware-reduced (bit 20) and reset register supported (bit 10).
        let flags = u32::from_le_bytes(fadt[112..116].try_into().unwrap());
        assert_ne!(flags & (1 << 20), 0);
        assert_ne!(flags & (1 << 10), 0);
        // Tables stay inside the BIOS area and do not overlap.
        let mut spans: Vec<_> = t
            .blobs
            .iter()
            .map(|(a, b)| (*a, a + b.len() as u64))
            .collect();
        spans.sort();
        for w in spans.windows(2) {
            assert!(w[0].1 <= w[1].0);
        }
        assert!(spans.last().unwrap().1 <= layout::HIGH_MEMORY_START);
    }

    #[test]
    fn dsdt_describes_each_virtio_device_pvpanic_and_s5() {
        let d = dsdt(&inputs(3));
        let count = |needle: &[u8]| d.windows(needle.len()).filter(|w| *w == needle).count();
        assert_eq!(count(b"LNRO0005"), 3);
        assert_eq!(count(b"QEMU0001"), 1);
        assert_eq!(count(b"_S5_"), 1);
        assert_eq!(count(b"V002"), 1);
        // The third device's window base appears as a Memory32Fixed address.
        let base = (layout::VIRTIO_MMIO_START as u32 + 0x2000).to_le_bytes();
        assert_eq!(count(&base), 1);
        assert_eq!(
            dsdt(&inputs(0))
                .windows(8)
                .filter(|w| *w == b"LNRO0005")
                .count(),
            0
        );
    }

    #[test]
    fn dsdt_describes_the_hotplug_slots_their_controller_the_ged_and_the_power_button() {
        let mut i = inputs(2);
        i.hotplug = Some(HotplugAml {
            slots: (2..6)
                .map(|n| MmioDevice {
                    base: layout::VIRTIO_MMIO_START + n * 0x1000,
                    size: 0x1000,
                    gsi: layout::VIRTIO_GSIS[n as usize],
                })
                .collect(),
            registers: layout::HOTPLUG_REGS_START,
            ged_gsi: layout::GED_GSI,
        });
        let d = dsdt(&i);
        let count = |needle: &[u8]| d.windows(needle.len()).filter(|w| *w == needle).count();
        assert_eq!(count(b"LNRO0005"), 2 + 4, "boot windows and slot windows");
        assert_eq!(count(b"ACPI0004"), 1 + 4, "the container and one per slot");
        assert_eq!(count(b"ACPI0013"), 1);
        assert_eq!(count(b"_STA"), 1 + 4, "the container's and one per slot");
        assert_eq!(count(b"_EVT"), 1);
        assert_eq!(count(b"PNP0C0C"), 1, "the power button");
        for name in [
            b"S00_", b"S03_", b"H003", b"PRES", b"EJRQ", b"EVNT", b"PWRB",
        ] {
            assert!(count(name) >= 1, "{}", String::from_utf8_lossy(name));
        }
        let regs = (layout::HOTPLUG_REGS_START as u32).to_le_bytes();
        assert_eq!(count(&regs), 1);
        assert!(sums_to_zero(&d));
    }

    #[test]
    fn madt_lists_every_vcpu_and_the_ioapic() {
        let m = madt(4);
        // Header (44 bytes), then 4 local APICs of 8 bytes and one I/O APIC of 12.
        assert_eq!(m.len(), 44 + 4 * 8 + 12);
        for i in 0..4 {
            let e = &m[44 + i * 8..44 + (i + 1) * 8];
            assert_eq!((e[0], e[1], e[2], e[3]), (0, 8, i as u8, i as u8));
            assert_eq!(e[4] & 1, 1, "enabled");
        }
        assert_eq!(m[44 + 32], 1, "I/O APIC entry type");
    }
}
