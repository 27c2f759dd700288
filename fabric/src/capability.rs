//! Capabilities: a cluster-key-signed grant of rights on one vNode until a deadline.
//!
//! Wire form (52 bytes): vnode u64 LE, rights u32 LE, expires_unix u64 LE, mac [u8; 32],
//! where `mac = HMAC-SHA256(key, "lego-fabric/v1 capability" | first 20 bytes)`.
//! Its text form is the same bytes in lowercase hex.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::auth::{decode_hex, encode_hex, ClusterKey};

/// Size of a capability's wire form.
pub const CAPABILITY_LEN: usize = 52;
const LABEL: &[u8] = b"lego-fabric/v1 capability";

bitflags::bitflags! {
    /// What a capability allows on its vNode.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct Rights: u32 {
        /// Read and write the vNode's remote memory.
        const MEMORY = 1 << 0;
        /// Read, write and flush the vNode's volumes.
        const STORAGE = 1 << 1;
    }
}

/// Why a capability was refused or could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapabilityError {
    /// The signature does not match (wrong cluster or tampered fields).
    #[error("the capability's signature is not valid for this cluster")]
    BadSignature,
    /// The capability expired.
    #[error("the capability expired at {expires_unix} (now {now_unix})")]
    Expired {
        /// When it expired (Unix seconds).
        expires_unix: u64,
        /// The time it was checked (Unix seconds).
        now_unix: u64,
    },
    /// The capability grants rights this side does not know.
    #[error("the capability grants unknown rights {0:#x}")]
    UnknownRights(u32),
    /// The bytes or text have the wrong length.
    #[error("a capability is {CAPABILITY_LEN} bytes (twice as many hex digits), not {0}")]
    BadLength(usize),
    /// The text is not hexadecimal.
    #[error("a capability token must be hexadecimal")]
    BadHex,
}

/// A grant of `rights` on `vnode` until `expires_unix`, signed with the cluster key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capability {
    /// The vNode this capability is for.
    pub vnode: u64,
    /// What it allows.
    pub rights: Rights,
    /// Expiry, in seconds since the Unix epoch.
    pub expires_unix: u64,
    /// HMAC-SHA256 over the fields above.
    pub mac: [u8; 32],
}

/// Seconds since the Unix epoch now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Capability {
    fn body(vnode: u64, rights: Rights, expires_unix: u64) -> [u8; 20] {
        let mut b = [0u8; 20];
        b[0..8].copy_from_slice(&vnode.to_le_bytes());
        b[8..12].copy_from_slice(&rights.bits().to_le_bytes());
        b[12..20].copy_from_slice(&expires_unix.to_le_bytes());
        b
    }

    /// Issues a capability for `vnode` with `rights`, valid for `ttl` from now.
    pub fn issue(key: &ClusterKey, vnode: u64, rights: Rights, ttl: Duration) -> Capability {
        Capability::issue_until(key, vnode, rights, unix_now().saturating_add(ttl.as_secs()))
    }

    /// Issues a capability valid until `expires_unix`.
    pub fn issue_until(
        key: &ClusterKey,
        vnode: u64,
        rights: Rights,
        expires_unix: u64,
    ) -> Capability {
        let mac = key.mac(&[LABEL, &Capability::body(vnode, rights, expires_unix)]);
        Capability {
            vnode,
            rights,
            expires_unix,
            mac,
        }
    }

    /// Checks the signature against `key` and the expiry against `now_unix` (seconds).
    pub fn verify(&self, key: &ClusterKey, now_unix: u64) -> Result<(), CapabilityError> {
        let body = Capability::body(self.vnode, self.rights, self.expires_unix);
        if !key.verify_mac(&[LABEL, &body], &self.mac) {
            return Err(CapabilityError::BadSignature);
        }
        if now_unix >= self.expires_unix {
            return Err(CapabilityError::Expired {
                expires_unix: self.expires_unix,
                now_unix,
            });
        }
        Ok(())
    }

    /// The 52-byte wire form.
    pub fn to_bytes(&self) -> [u8; CAPABILITY_LEN] {
        let mut b = [0u8; CAPABILITY_LEN];
        b[..20].copy_from_slice(&Capability::body(
            self.vnode,
            self.rights,
            self.expires_unix,
        ));
        b[20..].copy_from_slice(&self.mac);
        b
    }

    /// Parses the wire form (the signature is checked by [`Capability::verify`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Capability, CapabilityError> {
        let b: &[u8; CAPABILITY_LEN] = bytes
            .try_into()
            .map_err(|_| CapabilityError::BadLength(bytes.len()))?;
        let mut vnode = [0u8; 8];
        vnode.copy_from_slice(&b[0..8]);
        let mut rights = [0u8; 4];
        rights.copy_from_slice(&b[8..12]);
        let mut exp = [0u8; 8];
        exp.copy_from_slice(&b[12..20]);
        let mut mac = [0u8; 32];
        mac.copy_from_slice(&b[20..]);
        let raw_rights = u32::from_le_bytes(rights);
        let rights =
            Rights::from_bits(raw_rights).ok_or(CapabilityError::UnknownRights(raw_rights))?;
        Ok(Capability {
            vnode: u64::from_le_bytes(vnode),
            rights,
            expires_unix: u64::from_le_bytes(exp),
            mac,
        })
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&encode_hex(&self.to_bytes()))
    }
}

impl FromStr for Capability {
    type Err = CapabilityError;

    fn from_str(s: &str) -> Result<Capability, CapabilityError> {
        let s = s.trim();
        if s.len() != CAPABILITY_LEN * 2 {
            return Err(CapabilityError::BadLength(s.len()));
        }
        let bytes = decode_hex(s).ok_or(CapabilityError::BadHex)?;
        Capability::from_bytes(&bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_flipped_bit_is_refused(vnode in any::<u64>(), pos in 0usize..CAPABILITY_LEN, bit in 0u8..8) {
            let cap = Capability::issue_until(&key(), vnode, Rights::MEMORY, u64::MAX);
            let mut bytes = cap.to_bytes();
            bytes[pos] ^= 1 << bit;
            let refused = match Capability::from_bytes(&bytes) {
                Err(_) => true,
                Ok(c) => c.verify(&key(), 0).is_err(),
            };
            prop_assert!(refused);
        }

        #[test]
        fn text_round_trip(vnode in any::<u64>(), rights in 0u32..4, exp in any::<u64>()) {
            let rights = Rights::from_bits_truncate(rights);
            let cap = Capability::issue_until(&key(), vnode, rights, exp);
            prop_assert_eq!(cap.to_string().parse::<Capability>(), Ok(cap));
        }

        #[test]
        fn garbage_text_never_panics(text in ".{0,120}") {
            let _ = text.parse::<Capability>();
        }
    }

    fn key() -> ClusterKey {
        ClusterKey::from_bytes([7; 32])
    }

    #[test]
    fn issue_verify_and_round_trip() {
        let cap = Capability::issue(&key(), 42, Rights::MEMORY, Duration::from_secs(60));
        cap.verify(&key(), unix_now()).expect("valid");
        assert_eq!(Capability::from_bytes(&cap.to_bytes()).expect("bytes"), cap);
        let token = cap.to_string();
        assert_eq!(token.len(), CAPABILITY_LEN * 2);
        assert_eq!(token.parse::<Capability>().expect("token"), cap);
    }

    #[test]
    fn expiry() {
        let cap = Capability::issue_until(&key(), 1, Rights::STORAGE, 1000);
        cap.verify(&key(), 999).expect("still valid");
        assert_eq!(
            cap.verify(&key(), 1000),
            Err(CapabilityError::Expired {
                expires_unix: 1000,
                now_unix: 1000
            })
        );
    }

    #[test]
    fn tampering_and_wrong_key_are_caught() {
        let cap = Capability::issue_until(&key(), 5, Rights::MEMORY, u64::MAX);
        let wrong = ClusterKey::from_bytes([8; 32]);
        assert_eq!(cap.verify(&wrong, 0), Err(CapabilityError::BadSignature));
        for tampered in [
            Capability { vnode: 6, ..cap },
            Capability {
                rights: Rights::all(),
                ..cap
            },
            Capability {
                expires_unix: 1,
                ..cap
            },
        ] {
            assert_eq!(
                tampered.verify(&key(), 0),
                Err(CapabilityError::BadSignature)
            );
        }
        let mut bytes = cap.to_bytes();
        bytes[30] ^= 1;
        let flipped = Capability::from_bytes(&bytes).expect("parses");
        assert_eq!(
            flipped.verify(&key(), 0),
            Err(CapabilityError::BadSignature)
        );
    }

    #[test]
    fn bad_text_and_bytes() {
        assert_eq!(
            "abc".parse::<Capability>(),
            Err(CapabilityError::BadLength(3))
        );
        assert_eq!(
            "zz".repeat(CAPABILITY_LEN).parse::<Capability>(),
            Err(CapabilityError::BadHex)
        );
        assert_eq!(
            Capability::from_bytes(&[0; 3]),
            Err(CapabilityError::BadLength(3))
        );
        let mut b = [0u8; CAPABILITY_LEN];
        b[8] = 0x80;
        assert_eq!(
            Capability::from_bytes(&b),
            Err(CapabilityError::UnknownRights(0x80))
        );
    }
}
