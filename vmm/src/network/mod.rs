//! The vNode's network devices, made ready before the guest boots: the vNode's address and
//! MAC from the manager (when the vNode has an id), the taps opened (created when missing and
//! legovmm may) and joined to their bridge, and the `lego.net=` words the guest's init reads
//! to configure the interface. Every failure here is a clear error before any guest code runs.
//! The virtio-net device itself is `lego_devices::virtio::net`; `device_manager` wires it.

pub mod config;

use lego_devices::net::tap::{Tap, TapError};
use lego_devices::virtio::net::NetBackend;
use lego_monitor_client::client::{CallError, ManagerClient};
use lego_monitor_client::proto::manager::VnodeAddress;

use crate::config::VmConfig;
pub use config::{MacAddr, NetBackendChoice, NetConfig};

/// Errors making the vNode's network ready.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The tap could not be opened or created (the error names the tap).
    #[error(transparent)]
    Tap(TapError),
    /// The tap could not be brought up or joined to its bridge (the error names both).
    #[error("the vNode's tap could not join its bridge (tools/vnode-bridge.sh sets one up)")]
    Bridge(#[source] TapError),
    /// The manager did not give the vNode an address.
    #[error("cannot get vNode {vnode}'s network address from the manager at {manager}")]
    Address {
        /// The vNode.
        vnode: u64,
        /// The manager's address.
        manager: String,
        /// Why.
        #[source]
        source: CallError,
    },
    /// The vNode has an id and a network device, but no manager to take its address from.
    #[error("vNode {vnode} has a network device but the manager at {manager} could not be reached, so it has no address; start the manager, or run without --vnode and give the guest an address yourself (lego.net=MAC,IP/PREFIX on the command line)")]
    NoManager {
        /// The vNode.
        vnode: u64,
        /// The manager's address.
        manager: String,
    },
    /// A random MAC could not be drawn.
    #[error("cannot draw a random MAC address")]
    Random(#[source] std::io::Error),
}

/// One network device, ready to be wired: its taps (one per queue pair), MAC and address.
pub struct PreparedNet {
    /// Its configuration.
    pub config: NetConfig,
    /// The tap's queues, one per queue pair.
    pub taps: Vec<Tap>,
    /// The guest's MAC.
    pub mac: MacAddr,
    /// The vNode's address on this device (the first device of a vNode with an id).
    pub address: Option<VnodeAddress>,
}

impl PreparedNet {
    /// The device's data path as the devices crate names it.
    pub fn backend(&self) -> NetBackend {
        match self.config.backend {
            NetBackendChoice::Auto => NetBackend::Auto,
            NetBackendChoice::VhostNet => NetBackend::VhostNet,
            NetBackendChoice::InProcess => NetBackend::InProcess,
        }
    }

    /// The `lego.net=MAC,IP/PREFIX,GATEWAY` word for the guest's init, when it has an address.
    pub fn cmdline_word(&self) -> Option<String> {
        self.address.as_ref().map(|a| {
            format!(
                "lego.net={},{}/{},{}",
                self.mac, a.ip, a.prefix_len, a.gateway
            )
        })
    }
}

/// Makes every network device of `config` ready. The first device of a vNode with an id gets
/// the vNode's address (and MAC, unless one is given) from the manager `manager`, the
/// claim's connection; `None` when it could not be reached.
pub fn prepare(
    config: &VmConfig,
    manager: Option<&ManagerClient>,
) -> Result<Vec<PreparedNet>, NetworkError> {
    let mut out = Vec::with_capacity(config.net.len());
    for (i, net) in config.net.iter().enumerate() {
        let address = match (&config.remote, i) {
            (Some(remote), 0) => {
                let client = manager.ok_or_else(|| NetworkError::NoManager {
                    vnode: remote.vnode,
                    manager: remote.manager.clone(),
                })?;
                let a =
                    client
                        .vnode_address(remote.vnode)
                        .map_err(|source| NetworkError::Address {
                            vnode: remote.vnode,
                            manager: remote.manager.clone(),
                            source,
                        })?;
                Some(a)
            }
            _ => None,
        };
        let mac = match (net.mac, &address) {
            (Some(m), _) => m,
            (None, Some(a)) => MacAddr(a.mac),
            (None, None) => random_mac()?,
        };
        let taps = Tap::open(&net.tap, net.queues).map_err(NetworkError::Tap)?;
        if let Some(bridge) = &net.bridge {
            taps[0]
                .attach_to_bridge(bridge)
                .map_err(NetworkError::Bridge)?;
        }
        if let Some(first) = taps.first() {
            first.set_up().map_err(NetworkError::Tap)?;
        }
        tracing::info!(
            tap = %net.tap,
            mac = %mac,
            queues = net.queues,
            bridge = net.bridge.as_deref().unwrap_or("-"),
            address = %address
                .as_ref()
                .map(|a| format!("{}/{} via {}", a.ip, a.prefix_len, a.gateway))
                .unwrap_or_else(|| "none".into()),
            "network device ready"
        );
        out.push(PreparedNet {
            config: net.clone(),
            taps,
            mac,
            address,
        });
    }
    Ok(out)
}

/// `cmdline` with the `lego.net=` words of `nets` appended.
pub fn cmdline_with_addresses(cmdline: &str, nets: &[PreparedNet]) -> String {
    nets.iter()
        .filter_map(PreparedNet::cmdline_word)
        .fold(cmdline.to_string(), |s, w| format!("{s} {w}"))
}

/// A random locally administered unicast MAC (`02:4c:56:xx:xx:xx`), for a device with
/// neither a configured MAC nor an address from the manager.
fn random_mac() -> Result<MacAddr, NetworkError> {
    use std::io::Read;
    let mut b = [0u8; 3];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(NetworkError::Random)?;
    Ok(MacAddr([0x02, 0x4c, 0x56, b[0], b[1], b[2]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prepared(address: Option<VnodeAddress>) -> PreparedNet {
        PreparedNet {
            config: "tap=t0".parse().unwrap(),
            taps: Vec::new(),
            mac: MacAddr([2, 0x4c, 0x47, 0x63, 0, 2]),
            address,
        }
    }

    #[test]
    fn the_guest_is_told_the_address_of_each_device_that_has_one() {
        let a = VnodeAddress::new(
            "10.99.0.2".parse().unwrap(),
            24,
            "10.99.0.1".parse().unwrap(),
        );
        let nets = [prepared(Some(a)), prepared(None)];
        assert_eq!(
            cmdline_with_addresses("console=ttyS0 lego.run=\"x\"", &nets),
            "console=ttyS0 lego.run=\"x\" lego.net=02:4c:47:63:00:02,10.99.0.2/24,10.99.0.1"
        );
        assert_eq!(cmdline_with_addresses("quiet", &[]), "quiet");
    }

    #[test]
    fn a_random_mac_is_local_and_unicast() {
        let m = random_mac().unwrap();
        assert_eq!(m.0[0], 0x02);
        assert_eq!(m.0[..3], [0x02, 0x4c, 0x56]);
    }
}
