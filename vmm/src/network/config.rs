//! A network device's configuration: `--net tap=NAME[,mac=MAC][,queues=N][,bridge=BR][,backend=B]`
//! on the command line, or a `[[net]]` table with the same keys in the config file.

use serde::Deserialize;

/// The most queue pairs one network device may have.
pub const MAX_QUEUE_PAIRS: u16 = 8;
/// The longest interface name Linux takes (IFNAMSIZ less the NUL).
pub const MAX_IFNAME: usize = 15;

/// Errors in a network device's configuration.
#[derive(Debug, thiserror::Error)]
pub enum NetConfigError {
    /// An option of `--net` could not be understood.
    #[error("'{spec}' is not a network device: {why}; use tap=NAME[,mac=02:..][,queues=N][,bridge=BR][,backend=auto|vhost-net|in-process]")]
    Bad {
        /// The whole specification.
        spec: String,
        /// What is wrong with it.
        why: String,
    },
}

/// Who moves the device's packets between its queues and the tap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NetBackendChoice {
    /// The host kernel's vhost-net when `/dev/vhost-net` opens, else legovmm's own threads.
    #[default]
    Auto,
    /// The host kernel's vhost-net (fails when `/dev/vhost-net` cannot be opened).
    VhostNet,
    /// legovmm's own threads.
    InProcess,
}

impl std::str::FromStr for NetBackendChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "vhost-net" => Ok(Self::VhostNet),
            "in-process" => Ok(Self::InProcess),
            _ => Err(format!(
                "backend '{s}' is not one of auto, vhost-net, in-process"
            )),
        }
    }
}

/// A MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MacAddr(pub [u8; 6]);

impl std::str::FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("'{s}' is not a MAC address such as 02:4c:47:00:00:02");
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        if out[0] & 1 != 0 {
            return Err(format!("{s} is a multicast address, not a device's"));
        }
        Ok(Self(out))
    }
}

impl std::fmt::Display for MacAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// One virtio-net device of the vNode, on a tap of the compute host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// The tap's name (created when it does not exist and legovmm may).
    pub tap: String,
    /// The guest's MAC; `None` takes the vNode's from the manager, else a random one.
    pub mac: Option<MacAddr>,
    /// Queue pairs (multi-queue when more than one).
    pub queues: u16,
    /// A bridge to join the tap to, if any.
    pub bridge: Option<String>,
    /// Who moves the packets.
    pub backend: NetBackendChoice,
}

/// A `[[net]]` table of the config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetTable {
    tap: String,
    #[serde(default)]
    mac: Option<String>,
    #[serde(default)]
    queues: Option<u16>,
    #[serde(default)]
    bridge: Option<String>,
    #[serde(default)]
    backend: Option<NetBackendChoice>,
}

impl NetConfig {
    fn checked(self, spec: &str) -> Result<Self, NetConfigError> {
        let bad = |why: String| NetConfigError::Bad {
            spec: spec.into(),
            why,
        };
        for (what, name) in [("tap", Some(&self.tap)), ("bridge", self.bridge.as_ref())] {
            let Some(name) = name else { continue };
            if name.is_empty()
                || name.len() > MAX_IFNAME
                || name.contains(['/', ' ', ',', '=', ':'])
            {
                return Err(bad(format!(
                    "the {what} name '{name}' must be 1 to {MAX_IFNAME} characters without '/', ' ', ',', '=' or ':'"
                )));
            }
        }
        if self.queues == 0 || self.queues > MAX_QUEUE_PAIRS {
            return Err(bad(format!(
                "queues={} is not 1 to {MAX_QUEUE_PAIRS}",
                self.queues
            )));
        }
        Ok(self)
    }

    /// Converts a `[[net]]` table of the config file.
    pub fn from_table(t: NetTable) -> Result<Self, NetConfigError> {
        let spec = format!("[[net]] tap = \"{}\"", t.tap);
        let bad = |why: String| NetConfigError::Bad {
            spec: spec.clone(),
            why,
        };
        Self {
            tap: t.tap,
            mac: t.mac.map(|m| m.parse()).transpose().map_err(bad)?,
            queues: t.queues.unwrap_or(1),
            bridge: t.bridge,
            backend: t.backend.unwrap_or_default(),
        }
        .checked(&spec)
    }
}

impl std::str::FromStr for NetConfig {
    type Err = NetConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: String| NetConfigError::Bad {
            spec: s.into(),
            why,
        };
        let (mut tap, mut mac, mut queues, mut bridge, mut backend) =
            (None, None, None, None, None);
        for opt in s.split(',') {
            let Some((k, v)) = opt.split_once('=') else {
                return Err(bad(format!("'{opt}' is not KEY=VALUE")));
            };
            let slot_taken = match k {
                "tap" => tap.replace(v.to_string()).is_some(),
                "mac" => mac.replace(v.parse::<MacAddr>().map_err(bad)?).is_some(),
                "queues" => queues
                    .replace(
                        v.parse::<u16>()
                            .map_err(|_| bad(format!("queues={v} is not a number")))?,
                    )
                    .is_some(),
                "bridge" => bridge.replace(v.to_string()).is_some(),
                "backend" => backend
                    .replace(v.parse::<NetBackendChoice>().map_err(bad)?)
                    .is_some(),
                _ => return Err(bad(format!("'{k}' is not an option"))),
            };
            if slot_taken {
                return Err(bad(format!("{k} is given twice")));
            }
        }
        Self {
            tap: tap.ok_or_else(|| bad("tap=NAME is missing".into()))?,
            mac,
            queues: queues.unwrap_or(1),
            bridge,
            backend: backend.unwrap_or_default(),
        }
        .checked(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_spec_parses() {
        let n: NetConfig =
            "tap=lego7,mac=02:4c:47:00:00:07,queues=2,bridge=lego0,backend=in-process"
                .parse()
                .unwrap();
        assert_eq!(n.tap, "lego7");
        assert_eq!(n.mac, Some(MacAddr([2, 0x4c, 0x47, 0, 0, 7])));
        assert_eq!(n.queues, 2);
        assert_eq!(n.bridge.as_deref(), Some("lego0"));
        assert_eq!(n.backend, NetBackendChoice::InProcess);
        assert_eq!(n.mac.unwrap().to_string(), "02:4c:47:00:00:07");
        let d: NetConfig = "tap=t0".parse().unwrap();
        assert_eq!(
            (d.queues, d.backend, d.mac),
            (1, NetBackendChoice::Auto, None)
        );
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        for (spec, says) in [
            ("mac=02:00:00:00:00:01", "tap=NAME is missing"),
            ("tap=a,tap=b", "tap is given twice"),
            ("tap=a,speed=10", "'speed' is not an option"),
            ("tap=a,mac=01:00:00:00:00:01", "multicast"),
            ("tap=a,mac=02:00:00:00:01", "not a MAC address"),
            ("tap=a,queues=0", "queues=0 is not 1 to 8"),
            ("tap=a,queues=9", "queues=9 is not 1 to 8"),
            ("tap=a,backend=dpdk", "backend 'dpdk'"),
            ("tap=waytoolongname01", "must be 1 to 15 characters"),
            ("tap=", "must be 1 to 15"),
            ("tap=a,bridge=b/r", "the bridge name"),
            ("tap", "'tap' is not KEY=VALUE"),
        ] {
            let e = spec.parse::<NetConfig>().unwrap_err().to_string();
            assert!(e.contains(says), "{spec}: {e}");
        }
    }

    #[test]
    fn a_table_converts_and_is_checked() {
        let t: NetTable =
            toml::from_str("tap = \"t1\"\nmac = \"02:00:00:00:00:09\"\nqueues = 4\n").unwrap();
        let n = NetConfig::from_table(t).unwrap();
        assert_eq!((n.queues, n.mac), (4, Some(MacAddr([2, 0, 0, 0, 0, 9]))));
        let t: NetTable = toml::from_str("tap = \"t1\"\nqueues = 0\n").unwrap();
        assert!(NetConfig::from_table(t).is_err());
        assert!(toml::from_str::<NetTable>("tap = \"t\"\nmtu = 9000\n").is_err());
    }
}
