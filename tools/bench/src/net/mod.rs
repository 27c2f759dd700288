//! `net-bench`: TCP between a vNode and its compute host, three ways, side by side in one
//! compute host of the testbed (issue 13):
//!
//! - `legovmm-vhost-net`: legovmm's virtio-net device with the host kernel's vhost-net
//!   moving the packets (`--net tap=lgb0,bridge=lego0,backend=vhost-net`);
//! - `legovmm-in-process`: the same device with legovmm's own threads moving them
//!   (`backend=in-process`);
//! - `qemu-vhost-net`: QEMU with a tap (`vhost=on`) and a virtio-net device (PCI by default).
//!
//! The compute host joins each run's tap to a bridge that holds its own address
//! ([`HOST_IP`]); the guest's init gives the guest [`GUEST_IP`] from the `lego.net=` word of
//! its command line. In every run the guest times round trips to an echo server on the
//! compute host (`lego-guest-tools net-rtt`), sends it a pattern stream (`net-send`, checked
//! by the host's `net-recv`), then receives one from it (`net-recv`, fed by the host's
//! `net-send`); each VMM runs under `lego-guest-tools boot-timer`.
//!
//! - [`script`]: the job script;
//! - [`results`]: parsing its result lines;
//! - [`report`]: medians per setup and the ratios against QEMU as markdown, and every try.

pub mod report;
pub mod results;
pub mod script;

/// The bridge on the compute host that joins the taps and the host.
pub const BRIDGE: &str = "lego0";
/// The compute host's address on the bridge (the guest's gateway), without the prefix.
pub const HOST_IP: &str = "10.99.0.1";
/// The guest's address, without the prefix.
pub const GUEST_IP: &str = "10.99.0.10";
/// The prefix length of the bridge's network.
pub const PREFIX: u8 = 24;
/// The port of the compute host's echo server (round trips).
pub const ECHO_PORT: u16 = 9001;
/// The port of the compute host's receiver (guest → host).
pub const HOST_RECV_PORT: u16 = 9000;
/// The port of the guest's receiver (host → guest).
pub const GUEST_RECV_PORT: u16 = 9002;
/// The pattern seed of the guest → host stream.
pub const GUEST_TO_HOST_SEED: u64 = 1;
/// The pattern seed of the host → guest stream.
pub const HOST_TO_GUEST_SEED: u64 = 2;
/// legovmm's tap (both backends; legovmm creates it and joins it to the bridge).
pub const LEGOVMM_TAP: &str = "lgb0";
/// QEMU's tap (the job creates it and joins it to the bridge).
pub const QEMU_TAP: &str = "lgq0";
/// The guest's MAC by default (the same in every setup, so that the compute host's
/// neighbour entry stays right from one run to the next).
pub const DEFAULT_MAC: &str = "02:4c:47:00:00:0a";

/// One way of giving the guest its network device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Setup {
    /// legovmm, the host kernel's vhost-net.
    LegovmmVhostNet,
    /// legovmm, its own threads.
    LegovmmInProcess,
    /// QEMU with vhost-net.
    QemuVhostNet,
}

impl Setup {
    /// Every setup, in the order each round runs them.
    pub const ALL: [Setup; 3] = [
        Setup::LegovmmVhostNet,
        Setup::LegovmmInProcess,
        Setup::QemuVhostNet,
    ];

    /// The name in result lines and file names.
    pub fn name(self) -> &'static str {
        match self {
            Setup::LegovmmVhostNet => "legovmm-vhost-net",
            Setup::LegovmmInProcess => "legovmm-in-process",
            Setup::QemuVhostNet => "qemu-vhost-net",
        }
    }

    /// The column title in the report.
    pub fn title(self) -> &'static str {
        match self {
            Setup::LegovmmVhostNet => "legovmm, vhost-net",
            Setup::LegovmmInProcess => "legovmm, in-process",
            Setup::QemuVhostNet => "QEMU, vhost-net",
        }
    }

    /// legovmm's `--net` backend for the setup; `None` for QEMU's.
    pub fn legovmm_backend(self) -> Option<&'static str> {
        match self {
            Setup::LegovmmVhostNet => Some("vhost-net"),
            Setup::LegovmmInProcess => Some("in-process"),
            Setup::QemuVhostNet => None,
        }
    }

    /// True if QEMU runs the setup.
    pub fn is_qemu(self) -> bool {
        self.legovmm_backend().is_none()
    }
}

crate::setup::named_setups!(Setup);

/// Checks a unicast MAC address written as six pairs of hex digits joined by `:` and
/// returns it in lower case, as the guest's sysfs shows it (the guest's init finds its
/// interface by comparing the two).
pub fn parse_mac(s: &str) -> Result<String, String> {
    let bad = || format!("{s:?} is not a MAC address such as {DEFAULT_MAC}");
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6
        || parts
            .iter()
            .any(|p| p.len() != 2 || !p.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(bad());
    }
    let first = u8::from_str_radix(parts[0], 16).map_err(|_| bad())?;
    if first & 1 != 0 {
        return Err(format!("{s} is a multicast address, not a device's"));
    }
    Ok(s.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in Setup::ALL {
            assert_eq!(s.name().parse::<Setup>().unwrap(), s);
            assert!(!s.shell_name().contains('-'));
        }
        assert_eq!(Setup::LegovmmInProcess.shell_name(), "legovmm_in_process");
        assert!(Setup::QemuVhostNet.is_qemu() && !Setup::LegovmmVhostNet.is_qemu());
        let err = "qemu".parse::<Setup>().unwrap_err();
        assert!(
            err.contains("legovmm-vhost-net, legovmm-in-process, qemu-vhost-net"),
            "{err}"
        );
    }

    #[test]
    fn macs_are_checked_and_lowered() {
        assert_eq!(parse_mac("02:4C:47:00:00:0A").unwrap(), "02:4c:47:00:00:0a");
        for bad in [
            "",
            "02:4c:47:00:00",
            "02:4c:47:00:00:0a:01",
            "02-4c-47-00-00-0a",
            "0g:00:00:00:00:00",
            "2:4c:47:00:00:0a",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad}");
        }
        assert!(parse_mac("03:00:00:00:00:01")
            .unwrap_err()
            .contains("multicast"));
    }
}
