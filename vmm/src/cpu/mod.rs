//! vCPU state at boot (CPUID, MSRs, FPU, LAPIC, registers) and the vCPU run loop.

pub mod cpuid;
pub mod msrs;
pub mod regs;
pub mod vcpu;
