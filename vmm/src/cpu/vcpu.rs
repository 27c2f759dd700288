//! One vCPU: its boot configuration and its run loop, which routes port and MMIO exits to
//! the buses and turns guest-ending exits into a [`GuestExit`].

use super::{cpuid, msrs, regs};
use crate::boot::BootEntry;
use crate::memory::GuestMemory;
use crate::paging::pause::PauseGate;
use kvm_bindings::{
    kvm_fpu, CpuId, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use lego_devices::bus::Bus;
use lego_devices::exit::{ExitNotifier, GuestExit};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// Errors configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// A KVM ioctl failed.
    #[error("cannot {what} for vCPU {id}")]
    Kvm {
        /// The step.
        what: &'static str,
        /// The vCPU.
        id: u8,
        /// KVM's error.
        source: kvm_ioctls::Error,
    },
    /// Writing boot state failed.
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
    /// KVM took fewer MSRs than asked.
    #[error("KVM accepted only {set} of {wanted} boot MSRs for vCPU {id}")]
    Msrs {
        /// How many were set.
        set: usize,
        /// How many were asked.
        wanted: usize,
        /// The vCPU.
        id: u8,
    },
    /// Building the MSR list failed.
    #[error("cannot build the boot MSR list: {0:?}")]
    MsrList(vmm_sys_util::fam::Error),
}

/// A vCPU ready to run.
pub struct Vcpu {
    fd: VcpuFd,
    id: u8,
    pio: Bus,
    mmio: Bus,
    exit: ExitNotifier,
    gate: Arc<PauseGate>,
}

/// Everything shared by every vCPU.
pub struct VcpuShared<'a> {
    /// The VM.
    pub vm: &'a VmFd,
    /// Guest memory.
    pub mem: &'a GuestMemory,
    /// KVM's supported CPUID.
    pub cpuid: &'a CpuId,
    /// The vCPU count.
    pub vcpus: u8,
    /// How the boot vCPU starts.
    pub entry: BootEntry,
    /// Port I/O bus.
    pub pio: Bus,
    /// MMIO bus.
    pub mmio: Bus,
    /// Where guest-ending exits are reported.
    pub exit: ExitNotifier,
    /// The pause gate, passed before each KVM_RUN (the pager's evictions and an operator's
    /// `vm.pause` park the vCPUs there).
    pub gate: Arc<PauseGate>,
}

impl Vcpu {
    /// Creates and configures vCPU `id`. Only vCPU 0 gets boot registers; the others wait
    /// for the guest's INIT/SIPI in the in-kernel LAPIC.
    pub fn new(id: u8, shared: &VcpuShared) -> Result<Self, VcpuError> {
        let kvm = |what| move |source| VcpuError::Kvm { what, id, source };
        let fd = shared
            .vm
            .create_vcpu(u64::from(id))
            .map_err(kvm("create the vCPU"))?;

        let mut cpuid = shared.cpuid.clone();
        cpuid::patch(cpuid.as_mut_slice(), id, shared.vcpus);
        fd.set_cpuid2(&cpuid).map_err(kvm("set CPUID"))?;

        let msrs = msrs::boot_msrs().map_err(VcpuError::MsrList)?;
        let set = fd.set_msrs(&msrs).map_err(kvm("set MSRs"))?;
        if set != msrs.as_slice().len() {
            return Err(VcpuError::Msrs {
                set,
                wanted: msrs.as_slice().len(),
                id,
            });
        }
        let fpu = kvm_fpu {
            fcw: 0x37f,
            mxcsr: 0x1f80,
            ..Default::default()
        };
        fd.set_fpu(&fpu).map_err(kvm("set the FPU"))?;

        let mut lapic = fd.get_lapic().map_err(kvm("read the LAPIC"))?;
        set_lvt_mode(&mut lapic.regs, APIC_LVT0, APIC_MODE_EXTINT);
        set_lvt_mode(&mut lapic.regs, APIC_LVT1, APIC_MODE_NMI);
        fd.set_lapic(&lapic).map_err(kvm("set the LAPIC"))?;

        if id == 0 {
            let sregs = fd.get_sregs().map_err(kvm("read special registers"))?;
            let sregs = regs::boot_sregs(shared.mem, shared.entry, sregs)?;
            fd.set_sregs(&sregs).map_err(kvm("set special registers"))?;
            fd.set_regs(&regs::boot_regs(shared.entry))
                .map_err(kvm("set registers"))?;
        }
        Ok(Self {
            fd,
            id,
            pio: shared.pio.clone(),
            mmio: shared.mmio.clone(),
            exit: shared.exit.clone(),
            gate: shared.gate.clone(),
        })
    }

    /// Runs the vCPU until the guest ends, an error occurs, or `stop` is set (and the thread
    /// is kicked out of KVM_RUN with a signal).
    pub fn run(mut self, stop: Arc<AtomicBool>) {
        let id = self.id;
        let mut crashed = false;
        self.gate.register();
        while !stop.load(Ordering::Acquire) {
            self.gate.checkpoint();
            let outcome = match self.fd.run() {
                Ok(exit) => handle_exit(id, exit, &self.pio, &self.mmio),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => None,
                Err(e) => Some(GuestExit::Crashed(format!(
                    "KVM_RUN failed on vCPU {id}: {e}"
                ))),
            };
            if let Some(exit) = outcome {
                tracing::debug!(vcpu = id, ?exit, "vCPU stopped the guest");
                crashed = matches!(exit, GuestExit::Crashed(_));
                self.exit.notify(exit);
                break;
            }
        }
        self.gate.unregister();
        self.log_state(crashed);
    }

    /// Logs where the vCPU stopped: at debug level normally, as a warning after a crash (the
    /// registers are what a triple fault leaves to go on).
    fn log_state(&self, crashed: bool) {
        let id = self.id;
        match (self.fd.get_regs(), self.fd.get_sregs()) {
            (Ok(regs), Ok(sregs)) => {
                let state = format!(
                    "rip={:#x} rsp={:#x} rflags={:#x} cs={:#x} cr0={:#x} cr2={:#x} cr3={:#x} \
                     cr4={:#x} efer={:#x} idt={:#x}+{:#x}",
                    regs.rip,
                    regs.rsp,
                    regs.rflags,
                    sregs.cs.selector,
                    sregs.cr0,
                    sregs.cr2,
                    sregs.cr3,
                    sregs.cr4,
                    sregs.efer,
                    sregs.idt.base,
                    sregs.idt.limit
                );
                // After a triple fault KVM on AMD resets the vCPU: its state then says nothing
                // about the fault.
                let reset = regs.rip == 0xfff0 && sregs.cs.selector == 0xf000;
                if crashed && reset {
                    tracing::warn!(
                        vcpu = id,
                        "KVM reset the vCPU at the crash; its state before the fault is lost"
                    );
                } else if crashed {
                    tracing::warn!(vcpu = id, "vCPU state at the crash: {state}");
                } else {
                    tracing::debug!(vcpu = id, "vCPU stopped: {state}");
                }
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::debug!(vcpu = id, "vCPU stopped; its registers are unreadable: {e}")
            }
        }
    }
}

/// Routes one exit; returns the guest's end if this exit ends it.
fn handle_exit(id: u8, exit: VcpuExit, pio: &Bus, mmio: &Bus) -> Option<GuestExit> {
    match exit {
        VcpuExit::IoIn(port, data) => {
            if !pio.read(u64::from(port), data) {
                tracing::trace!(port, "read from an unmapped port");
            }
            None
        }
        VcpuExit::IoOut(port, data) => {
            if !pio.write(u64::from(port), data) {
                tracing::trace!(port, "write to an unmapped port");
            }
            None
        }
        VcpuExit::MmioRead(addr, data) => {
            if !mmio.read(addr, data) {
                tracing::debug!(addr, "read from unmapped MMIO");
            }
            None
        }
        VcpuExit::MmioWrite(addr, data) => {
            if !mmio.write(addr, data) {
                tracing::debug!(addr, "write to unmapped MMIO");
            }
            None
        }
        VcpuExit::Hlt | VcpuExit::IrqWindowOpen | VcpuExit::Intr => None,
        VcpuExit::Shutdown => Some(GuestExit::Crashed(format!(
            "vCPU {id} triple-faulted (KVM_EXIT_SHUTDOWN): the guest hit a fatal CPU exception"
        ))),
        VcpuExit::SystemEvent(kind, _) => Some(match kind {
            KVM_SYSTEM_EVENT_SHUTDOWN => GuestExit::PowerOff,
            KVM_SYSTEM_EVENT_RESET => GuestExit::Reset,
            KVM_SYSTEM_EVENT_CRASH => GuestExit::Crashed(format!("vCPU {id} reported a guest crash")),
            other => GuestExit::Crashed(format!("vCPU {id} reported system event {other}")),
        }),
        VcpuExit::FailEntry(reason, cpu) => Some(GuestExit::Crashed(format!(
            "KVM could not enter vCPU {id} (hardware entry failure {reason:#x} on host CPU {cpu})"
        ))),
        VcpuExit::InternalError => Some(GuestExit::Crashed(format!(
            "KVM reported an internal error on vCPU {id}; if this KVM cannot run stock kernels, `legovmm probe` says so"
        ))),
        other => Some(GuestExit::Crashed(format!(
            "vCPU {id} stopped on an exit the VMM does not handle: {other:?}"
        ))),
    }
}

/// Sets the delivery mode of a LAPIC LVT register.
fn set_lvt_mode(regs: &mut [std::os::raw::c_char], offset: usize, mode: u32) {
    let mut bytes = [0u8; 4];
    for (b, r) in bytes.iter_mut().zip(&regs[offset..offset + 4]) {
        *b = *r as u8;
    }
    let value = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
    for (r, b) in regs[offset..offset + 4].iter_mut().zip(value.to_le_bytes()) {
        *r = b as std::os::raw::c_char;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lvt_mode_replaces_only_the_delivery_mode_bits() {
        let mut regs = [0 as std::os::raw::c_char; 0x400];
        regs[APIC_LVT0] = 0x10;
        regs[APIC_LVT0 + 1] = 0x05; // mode 5 and a mask bit above it
        regs[APIC_LVT0 + 2] = 0x01;
        set_lvt_mode(&mut regs, APIC_LVT0, APIC_MODE_EXTINT);
        assert_eq!(regs[APIC_LVT0] as u8, 0x10);
        assert_eq!(regs[APIC_LVT0 + 1] as u8, 0x07);
        assert_eq!(regs[APIC_LVT0 + 2] as u8, 0x01);
    }

    #[test]
    fn guest_ending_exits_are_classified() {
        let bus = Bus::new();
        assert_eq!(handle_exit(0, VcpuExit::Hlt, &bus, &bus), None);
        assert!(
            matches!(handle_exit(1, VcpuExit::Shutdown, &bus, &bus), Some(GuestExit::Crashed(m)) if m.contains("triple"))
        );
        assert_eq!(
            handle_exit(
                0,
                VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN, &[]),
                &bus,
                &bus
            ),
            Some(GuestExit::PowerOff)
        );
        let mut data = [0u8; 1];
        assert_eq!(
            handle_exit(0, VcpuExit::IoIn(0x80, &mut data), &bus, &bus),
            None
        );
        assert_eq!(data[0], 0xff);
    }
}
