//! The vNode address pool: the manager's `--vnode-subnet` (IPv4 CIDR) and the choice of a
//! free address in it.
//!
//! The subnet's first host address is the gateway (the compute host's bridge) and is never
//! handed out; vNodes get the addresses from the second host address to the last before the
//! broadcast address, the lowest free one first. Which vNode holds which address is kept in
//! the vNodes' records (`VnodeRecord::address`), so this module only reads the addresses held.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use lego_monitor_client::proto::manager::{pool_exhausted, VnodeAddress};

/// The subnet vNodes get their addresses from unless the manager is told otherwise.
pub const DEFAULT_VNODE_SUBNET: VnodeSubnet = VnodeSubnet {
    network: Ipv4Addr::new(10, 99, 0, 0),
    prefix_len: 24,
};

/// The longest prefix that leaves room for a vNode: a /30 has a network address, the
/// gateway, one vNode address and the broadcast address.
pub const LONGEST_PREFIX: u8 = 30;

/// Errors of the vNode subnet and its pool.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// The text is not `A.B.C.D/N`.
    #[error("'{0}' is not an IPv4 subnet in CIDR notation such as 10.99.0.0/24")]
    NotCidr(String),
    /// The prefix length is more than 32.
    #[error("the prefix length of '{0}' is more than 32 bits")]
    PrefixTooLong(String),
    /// The address has bits set outside the prefix.
    #[error("'{text}' is not a subnet's first address; the subnet it lies in is {subnet}")]
    HostBitsSet {
        /// The text given.
        text: String,
        /// The subnet the address lies in.
        subnet: String,
    },
    /// The subnet has no address for a vNode besides the gateway.
    #[error(
        "the subnet {0} is too small for a vNode: its first host address is the gateway, so a \
         vNode subnet needs a prefix of /{LONGEST_PREFIX} or shorter"
    )]
    TooSmall(String),
    /// Every vNode address of the subnet is held.
    #[error("{}", pool_exhausted(subnet, *addresses))]
    Exhausted {
        /// The subnet.
        subnet: String,
        /// How many vNode addresses it has.
        addresses: u64,
    },
}

/// The IPv4 subnet vNodes get their addresses from; valid by construction (a network
/// address with room for at least one vNode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct VnodeSubnet {
    network: Ipv4Addr,
    prefix_len: u8,
}

impl Default for VnodeSubnet {
    fn default() -> Self {
        DEFAULT_VNODE_SUBNET
    }
}

impl VnodeSubnet {
    /// The subnet `network/prefix_len`; refuses host bits set in `network` and a subnet too
    /// small to hold a vNode.
    pub fn new(network: Ipv4Addr, prefix_len: u8) -> Result<Self, AddressError> {
        let text = format!("{network}/{prefix_len}");
        if prefix_len > 32 {
            return Err(AddressError::PrefixTooLong(text));
        }
        let subnet = Self {
            network: Ipv4Addr::from(u32::from(network) & mask(prefix_len)),
            prefix_len,
        };
        if subnet.network != network {
            return Err(AddressError::HostBitsSet {
                text,
                subnet: subnet.to_string(),
            });
        }
        if prefix_len > LONGEST_PREFIX {
            return Err(AddressError::TooSmall(text));
        }
        Ok(subnet)
    }

    /// The network address (`10.99.0.0`).
    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    /// The prefix length (`24`).
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// The gateway: the first host address, which belongs to the compute host's bridge.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    /// The lowest address handed to vNodes (the second host address) and the broadcast
    /// address: vNodes get `first..broadcast`.
    fn range(&self) -> (u32, u32) {
        let net = u32::from(self.network);
        (net + 2, net | !mask(self.prefix_len))
    }

    /// How many vNodes the subnet can hold (a /24 holds 253).
    pub fn capacity(&self) -> u64 {
        let (first, broadcast) = self.range();
        u64::from(broadcast - first)
    }

    /// Whether `ip` is one of the addresses handed to vNodes.
    pub fn holds(&self, ip: Ipv4Addr) -> bool {
        let (first, broadcast) = self.range();
        (first..broadcast).contains(&u32::from(ip))
    }

    /// The lowest vNode address not in `held`; [`AddressError::Exhausted`] if there is none.
    pub fn allocate(
        &self,
        held: impl IntoIterator<Item = Ipv4Addr>,
    ) -> Result<Ipv4Addr, AddressError> {
        let (first, broadcast) = self.range();
        let held: BTreeSet<u32> = held
            .into_iter()
            .map(u32::from)
            .filter(|ip| (first..broadcast).contains(ip))
            .collect();
        let mut candidate = first;
        for ip in held {
            if ip != candidate {
                break;
            }
            candidate += 1;
        }
        if candidate < broadcast {
            Ok(Ipv4Addr::from(candidate))
        } else {
            Err(AddressError::Exhausted {
                subnet: self.to_string(),
                addresses: self.capacity(),
            })
        }
    }

    /// `ip` as a vNode of this subnet sees it: prefix length, gateway, MAC.
    pub fn describe(&self, ip: Ipv4Addr) -> VnodeAddress {
        VnodeAddress::new(ip, self.prefix_len, self.gateway())
    }
}

/// The netmask of a prefix of `prefix_len` bits (at most 32).
fn mask(prefix_len: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(prefix_len))
        .unwrap_or(0)
}

impl fmt::Display for VnodeSubnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

impl FromStr for VnodeSubnet {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, AddressError> {
        let text = s.trim();
        let not_cidr = || AddressError::NotCidr(text.to_string());
        let (ip, len) = text.split_once('/').ok_or_else(not_cidr)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| not_cidr())?;
        if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
            return Err(not_cidr());
        }
        let len: u8 = len
            .parse()
            .map_err(|_| AddressError::PrefixTooLong(text.to_string()))?;
        Self::new(ip, len)
    }
}

impl TryFrom<String> for VnodeSubnet {
    type Error = AddressError;

    fn try_from(s: String) -> Result<Self, AddressError> {
        s.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("ip")
    }

    #[test]
    fn subnets_parse_and_bad_ones_are_refused_clearly() {
        let s: VnodeSubnet = "10.99.0.0/24".parse().expect("default");
        assert_eq!(s, VnodeSubnet::default());
        assert_eq!(s.to_string(), "10.99.0.0/24");
        assert_eq!(s.gateway(), ip("10.99.0.1"));
        assert_eq!(s.capacity(), 253);
        assert!(s.holds(ip("10.99.0.2")) && s.holds(ip("10.99.0.254")));
        for not in ["10.99.0.0", "10.99.0.1", "10.99.0.255", "10.98.0.2"] {
            assert!(!s.holds(ip(not)), "{not}");
        }
        let s30: VnodeSubnet = " 192.168.4.0/30 ".parse().expect("/30");
        assert_eq!(s30.capacity(), 1);
        let big: VnodeSubnet = "0.0.0.0/0".parse().expect("/0");
        assert_eq!(big.capacity(), (1 << 32) - 3);

        let err = |t: &str| t.parse::<VnodeSubnet>().expect_err(t).to_string();
        for bad in [
            "",
            "10.99.0.0",
            "10.99.0/24",
            "10.99.0.0/",
            "10.99.0.0/+4",
            "x/24",
        ] {
            assert!(
                err(bad).contains("is not an IPv4 subnet in CIDR notation"),
                "{bad}"
            );
        }
        assert_eq!(
            err("10.99.0.0/33"),
            "the prefix length of '10.99.0.0/33' is more than 32 bits"
        );
        assert!(err("10.99.0.0/300").contains("more than 32 bits"));
        assert_eq!(
            err("10.99.0.5/24"),
            "'10.99.0.5/24' is not a subnet's first address; the subnet it lies in is 10.99.0.0/24"
        );
        for small in ["10.99.0.0/31", "10.99.0.1/32"] {
            assert!(err(small).contains("is too small for a vNode"), "{small}");
        }
        let toml: Result<VnodeSubnet, _> = serde_json::from_str("\"10.1.0.0/16\"");
        assert_eq!(toml.expect("serde").capacity(), 65533);
        assert!(serde_json::from_str::<VnodeSubnet>("\"10.1.0.0/31\"").is_err());
    }

    #[test]
    fn the_lowest_free_address_is_allocated_and_the_gateway_never() {
        let s = VnodeSubnet::default();
        assert_eq!(s.allocate([]), Ok(ip("10.99.0.2")));
        assert_eq!(
            s.allocate([ip("10.99.0.2"), ip("10.99.0.3")]),
            Ok(ip("10.99.0.4"))
        );
        // A freed hole is filled first; addresses outside the pool do not count.
        assert_eq!(
            s.allocate([ip("10.99.0.3"), ip("10.99.0.2"), ip("10.99.0.5")]),
            Ok(ip("10.99.0.4"))
        );
        assert_eq!(
            s.allocate([ip("10.99.0.1"), ip("10.7.0.2"), ip("10.99.0.3")]),
            Ok(ip("10.99.0.2"))
        );
        let full: Vec<Ipv4Addr> = (2..=254).map(|i| Ipv4Addr::new(10, 99, 0, i)).collect();
        assert_eq!(
            s.allocate(full.clone()),
            Err(AddressError::Exhausted {
                subnet: "10.99.0.0/24".into(),
                addresses: 253
            })
        );
        assert_eq!(s.allocate(full[1..].to_vec()), Ok(ip("10.99.0.2")));

        let s30: VnodeSubnet = "10.99.7.0/30".parse().expect("/30");
        assert_eq!(s30.allocate([]), Ok(ip("10.99.7.2")));
        let e = s30.allocate([ip("10.99.7.2")]).expect_err("full");
        assert_eq!(
            e.to_string(),
            "the vNode address pool 10.99.7.0/30 is exhausted (1 address, all held); release a \
             vNode or give the manager a larger --vnode-subnet"
        );
        let a = s30.describe(ip("10.99.7.2"));
        assert_eq!(
            (a.prefix_len, a.gateway, a.mac_text().as_str()),
            (30, ip("10.99.7.1"), "02:4c:47:63:07:02")
        );
    }
}
