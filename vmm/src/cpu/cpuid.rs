//! The CPUID a vCPU sees: what KVM supports, with this vCPU's topology, the hypervisor bit,
//! and no PMU (the nested testbed's emulated CPU has none worth probing).

use kvm_bindings::kvm_cpuid_entry2;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_TOPOLOGY: u32 = 0x4;
const LEAF_PMU: u32 = 0xa;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_V2_EXT_TOPOLOGY: u32 = 0x1f;
const LEAF_AMD_FEATURES: u32 = 0x8000_0001;
const LEAF_AMD_SIZES: u32 = 0x8000_0008;
const LEAF_AMD_PERFMON_V2: u32 = 0x8000_0022;

const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;
/// AMD core, northbridge and last-level-cache performance counter extensions.
const AMD_ECX_PERFCTR_BITS: u32 = (1 << 23) | (1 << 24) | (1 << 28);

/// Topology level types in leaves 0xB/0x1F.
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// Rewrites `entries` (from `KVM_GET_SUPPORTED_CPUID`) for vCPU `id` of `vcpus`: one socket,
/// one thread per core, APIC ID = vCPU index.
pub fn patch(entries: &mut [kvm_cpuid_entry2], id: u8, vcpus: u8) {
    let apic_id = u32::from(id);
    let count = u32::from(vcpus.max(1));
    let core_bits = 32 - (count - 1).leading_zeros();
    for e in entries.iter_mut() {
        match e.function {
            LEAF_FEATURES => {
                e.ebx = (e.ebx & 0x0000_00ff) | (8 << 8) | (count << 16) | (apic_id << 24);
                e.ecx |= ECX_HYPERVISOR;
                if count > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            // Cache leaves with a type (low five bits) say how many cores share them.
            LEAF_CACHE_TOPOLOGY if e.eax & 0x1f != 0 => {
                e.eax = (e.eax & 0x03ff_ffff) | ((count - 1) << 26);
            }
            LEAF_PMU | LEAF_AMD_PERFMON_V2 => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            LEAF_EXT_TOPOLOGY | LEAF_V2_EXT_TOPOLOGY => {
                e.edx = apic_id;
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = (LEVEL_SMT << 8) | e.index;
                    }
                    1 => {
                        e.eax = core_bits;
                        e.ebx = count;
                        e.ecx = (LEVEL_CORE << 8) | e.index;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            LEAF_AMD_FEATURES => e.ecx &= !AMD_ECX_PERFCTR_BITS,
            LEAF_AMD_SIZES => e.ecx = (e.ecx & !0xf0ff) | (count - 1),
            _ => {}
        }
    }
}

/// Whether the KVM paravirtual leaves (kvm-clock and friends) are present.
pub fn has_kvm_leaves(entries: &[kvm_cpuid_entry2]) -> bool {
    entries
        .iter()
        .any(|e| e.function == 0x4000_0000 && e.ebx == u32::from_le_bytes(*b"KVMK"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: 0xffff_ffff,
            ebx: 0xffff_ffff,
            ecx: 0x7fff_ffff,
            edx: 0xffff_ffff,
            ..Default::default()
        }
    }

    #[test]
    fn each_vcpu_gets_its_apic_id_and_the_topology() {
        let mut e = vec![leaf(1, 0), leaf(0xb, 0), leaf(0xb, 1), leaf(0x8000_0008, 0)];
        patch(&mut e, 3, 4);
        assert_eq!(e[0].ebx >> 24, 3);
        assert_eq!((e[0].ebx >> 16) & 0xff, 4);
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e[0].edx & EDX_HTT, 0);
        assert_eq!(e[1].edx, 3);
        assert_eq!((e[2].eax, e[2].ebx), (2, 4));
        assert_eq!(e[3].ecx & 0xff, 3);
    }

    #[test]
    fn pmu_is_hidden() {
        let mut e = vec![leaf(0xa, 0), leaf(0x8000_0001, 0), leaf(0x8000_0022, 0)];
        patch(&mut e, 0, 1);
        assert_eq!((e[0].eax, e[0].ebx, e[0].ecx, e[0].edx), (0, 0, 0, 0));
        assert_eq!(e[1].ecx & AMD_ECX_PERFCTR_BITS, 0);
        assert_eq!(e[2].eax, 0);
    }

    #[test]
    fn kvm_leaves_are_recognised() {
        let mut sig = leaf(0x4000_0000, 0);
        assert!(!has_kvm_leaves(&[sig]));
        sig.ebx = u32::from_le_bytes(*b"KVMK");
        assert!(has_kvm_leaves(&[sig]));
    }
}
