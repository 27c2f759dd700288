//! `swap-bench`: the same swap-heavy workload in a vNode with little RAM, three ways, side
//! by side in one compute host of the testbed, plus the all-local baseline under QEMU:
//!
//! - `local`: legovmm with enough RAM for the workload and no swap (the baseline);
//! - `qemu-local`: QEMU with the same all-local RAM and no swap (QEMU's default RAM:
//!   private anonymous memory), so that the workload's write pass, the guest's first touch
//!   of every page, compares legovmm's RAM with QEMU's (goal: legovmm ≤ 1.1× QEMU);
//! - `remote`: legovmm with little RAM plus remote memory (`--remote-memory`: lego-vhost-blk
//!   and a memory monitor, with a manager, on the compute host's loopback) as swap;
//! - `remote-relay`: the same with the backend's interrupts through legovmm's relay thread
//!   (`LEGOVMM_VHOST_INTERRUPTS=relay`) instead of straight to KVM;
//! - `remote-poll`: the same as `remote` with the backend's queue worker and the memory
//!   monitor polling (`--poll-us`, the bench's `--poll-us`);
//! - `paged`: legovmm with all the RAM the workload needs as guest RAM, of which it keeps only
//!   the swapping setups' little RAM resident (`--local-memory`), paging the rest to a memory
//!   monitor itself: no swap in the guest;
//! - `nbd`: QEMU with the same little RAM and a virtio-blk disk whose backend is NBD
//!   (`qemu-nbd` serving a raw file on a tmpfs of the compute host) as swap.
//!
//! The workload is `lego-guest-tools memtest` (write every page, then verify every page);
//! each VMM runs under `lego-guest-tools boot-timer` for the wall time.
//!
//! - [`script`]: the job script;
//! - [`results`]: parsing its result lines;
//! - [`report`]: medians and slowdown ratios as markdown, and legovmm against QEMU on first
//!   touch when both all-local setups ran.

pub mod report;
pub mod results;
pub mod script;

/// One way of giving the guest its memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Setup {
    /// legovmm, all the memory local, no swap.
    Local,
    /// QEMU, all the memory local (QEMU's default RAM), no swap.
    QemuLocal,
    /// legovmm, little RAM plus remote memory as swap.
    Remote,
    /// `Remote` with the backend's interrupts relayed by a thread of legovmm.
    RemoteRelay,
    /// `Remote` with the backend and the memory monitor polling.
    RemotePoll,
    /// QEMU, little RAM plus swap on an NBD-backed virtio-blk disk.
    Nbd,
    /// legovmm, all-local-sized guest RAM of which only the little RAM stays resident, the
    /// rest paged to a memory monitor by legovmm (`--local-memory`).
    Paged,
}

impl Setup {
    /// Every setup, in the order each round runs them (the two all-local ones side by side).
    pub const ALL: [Setup; 7] = [
        Setup::Local,
        Setup::QemuLocal,
        Setup::Remote,
        Setup::RemoteRelay,
        Setup::RemotePoll,
        Setup::Nbd,
        Setup::Paged,
    ];

    /// The name in result lines and file names.
    pub fn name(self) -> &'static str {
        match self {
            Setup::Local => "local",
            Setup::QemuLocal => "qemu-local",
            Setup::Remote => "remote",
            Setup::RemoteRelay => "remote-relay",
            Setup::RemotePoll => "remote-poll",
            Setup::Nbd => "nbd",
            Setup::Paged => "paged",
        }
    }

    /// True if QEMU runs the setup.
    pub fn is_qemu(self) -> bool {
        matches!(self, Setup::QemuLocal | Setup::Nbd)
    }

    /// True if the guest swaps to remote memory (one of the `remote*` setups).
    pub fn is_remote_memory(self) -> bool {
        matches!(self, Setup::Remote | Setup::RemoteRelay | Setup::RemotePoll)
    }

    /// True if the setup needs the manager and a memory monitor on L1.
    pub fn needs_cluster(self) -> bool {
        self.is_remote_memory() || self == Setup::Paged
    }
}

crate::setup::named_setups!(Setup);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in Setup::ALL {
            assert_eq!(s.name().parse::<Setup>().unwrap(), s);
        }
        assert_eq!("qemu-local".parse::<Setup>().unwrap(), Setup::QemuLocal);
        assert_eq!(Setup::QemuLocal.shell_name(), "qemu_local");
        let err = "swap".parse::<Setup>().unwrap_err();
        assert!(
            err.contains("local, qemu-local, remote, remote-relay, remote-poll, nbd, paged"),
            "{err}"
        );
    }
}
