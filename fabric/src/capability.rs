//! Capabilities: a manager-signed grant of rights on one vNode until a deadline.
//!
//! Wire form (84 bytes): vnode u64 LE, rights u32 LE, expires_unix u64 LE, signature
//! [u8; 64], the Ed25519 signature of `"lego-fabric/v1 capability" | first 20 bytes` by the
//! managers' [`CapabilityKey`]. Monitors verify with its public half
//! ([`CapabilityPublicKey`]), so holding what a monitor holds does not let one mint a
//! capability. Its text form is the same bytes in lowercase hex.
//!
//! Where no key is given, both halves are derived from the cluster key
//! ([`CapabilityKey::derive`]): the single-machine set-up needs nothing more, and compute
//! hosts and operators, which hold credentials and never the cluster key, still cannot sign.
//! In production give the managers the key file (`lego-manager --capability-key-file`) and
//! the monitors only the public key (`--capability-public-key`).

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ed25519_dalek::Signer;

use crate::auth::{decode_hex, encode_hex, ClusterKey};

/// Size of a capability's wire form.
pub const CAPABILITY_LEN: usize = 20 + SIGNATURE_LEN;
/// Size of its signature.
pub const SIGNATURE_LEN: usize = 64;
const LABEL: &[u8] = b"lego-fabric/v1 capability";
const DERIVE_LABEL: &[u8] = b"lego-fabric/v1 capability signing key";

/// The managers' secret Ed25519 key that signs capabilities. Redacted in `Debug`.
#[derive(Clone)]
pub struct CapabilityKey(ed25519_dalek::SigningKey);

impl fmt::Debug for CapabilityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CapabilityKey(public {})", self.public())
    }
}

/// The public half of a [`CapabilityKey`]: what monitors verify capabilities with.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CapabilityPublicKey(ed25519_dalek::VerifyingKey);

impl fmt::Debug for CapabilityPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CapabilityPublicKey({self})")
    }
}

impl fmt::Display for CapabilityPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&encode_hex(self.0.as_bytes()))
    }
}

impl CapabilityKey {
    /// The key of the 32-byte seed `seed`.
    pub fn from_seed(seed: [u8; 32]) -> CapabilityKey {
        CapabilityKey(ed25519_dalek::SigningKey::from_bytes(&seed))
    }

    /// The key derived from the cluster key (the default when none is configured).
    pub fn derive(cluster: &ClusterKey) -> CapabilityKey {
        CapabilityKey::from_seed(cluster.mac(&[DERIVE_LABEL]))
    }

    /// A fresh random key.
    pub fn generate() -> Result<CapabilityKey, CapabilityError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|_| CapabilityError::Random)?;
        Ok(CapabilityKey::from_seed(seed))
    }

    /// Its seed as 64 hex digits (what a key file holds).
    pub fn to_hex(&self) -> String {
        encode_hex(&self.0.to_bytes())
    }

    /// Parses a seed of 64 hex digits (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Result<CapabilityKey, CapabilityError> {
        Ok(CapabilityKey::from_seed(hex32(text)?))
    }

    /// Reads a key file holding the seed in hex.
    pub fn from_file(path: &Path) -> Result<CapabilityKey, CapabilityError> {
        let text = std::fs::read_to_string(path).map_err(|e| CapabilityError::KeyFile {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        CapabilityKey::from_hex(&text)
    }

    /// Its public half.
    pub fn public(&self) -> CapabilityPublicKey {
        CapabilityPublicKey(self.0.verifying_key())
    }
}

impl CapabilityPublicKey {
    /// The public key derived from the cluster key (the default when none is configured).
    pub fn derive(cluster: &ClusterKey) -> CapabilityPublicKey {
        CapabilityKey::derive(cluster).public()
    }

    /// Parses 64 hex digits.
    pub fn from_hex(text: &str) -> Result<CapabilityPublicKey, CapabilityError> {
        let bytes = hex32(text)?;
        ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .map(CapabilityPublicKey)
            .map_err(|_| CapabilityError::BadKey("it is not a valid Ed25519 public key".into()))
    }

    /// Parses `text` as 64 hex digits, else reads it as a file holding them (how the
    /// `--capability-public-key` flag is read).
    pub fn from_hex_or_file(text: &str) -> Result<CapabilityPublicKey, CapabilityError> {
        if let Ok(k) = CapabilityPublicKey::from_hex(text) {
            return Ok(k);
        }
        let data = std::fs::read_to_string(text).map_err(|e| CapabilityError::KeyFile {
            path: text.into(),
            reason: format!("it is no public key in hex, and reading it as a file failed: {e}"),
        })?;
        CapabilityPublicKey::from_hex(&data)
    }
}

fn hex32(text: &str) -> Result<[u8; 32], CapabilityError> {
    decode_hex(text.trim())
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| CapabilityError::BadKey("a key is 64 hexadecimal digits".into()))
}

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
    /// The signature does not match (another signer or tampered fields).
    #[error("the capability's signature is not valid for this cluster's managers")]
    BadSignature,
    /// A signing or public key is malformed.
    #[error("the capability key is malformed: {0}")]
    BadKey(String),
    /// A key file could not be read.
    #[error("the capability key file {path} could not be read: {reason}")]
    KeyFile {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The operating system's random generator failed.
    #[error("the random number generator failed")]
    Random,
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

/// A grant of `rights` on `vnode` until `expires_unix`, signed by the managers' key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capability {
    /// The vNode this capability is for.
    pub vnode: u64,
    /// What it allows.
    pub rights: Rights,
    /// Expiry, in seconds since the Unix epoch.
    pub expires_unix: u64,
    /// The Ed25519 signature over the fields above.
    pub signature: [u8; SIGNATURE_LEN],
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
    pub fn issue(key: &CapabilityKey, vnode: u64, rights: Rights, ttl: Duration) -> Capability {
        Capability::issue_until(key, vnode, rights, unix_now().saturating_add(ttl.as_secs()))
    }

    /// Issues a capability valid until `expires_unix`.
    pub fn issue_until(
        key: &CapabilityKey,
        vnode: u64,
        rights: Rights,
        expires_unix: u64,
    ) -> Capability {
        let msg = Capability::message(vnode, rights, expires_unix);
        Capability {
            vnode,
            rights,
            expires_unix,
            signature: key.0.sign(&msg).to_bytes(),
        }
    }

    fn message(vnode: u64, rights: Rights, expires_unix: u64) -> Vec<u8> {
        let mut m = LABEL.to_vec();
        m.extend_from_slice(&Capability::body(vnode, rights, expires_unix));
        m
    }

    /// Checks the signature against `key` and the expiry against `now_unix` (seconds).
    pub fn verify(&self, key: &CapabilityPublicKey, now_unix: u64) -> Result<(), CapabilityError> {
        let msg = Capability::message(self.vnode, self.rights, self.expires_unix);
        let sig = ed25519_dalek::Signature::from_bytes(&self.signature);
        if key.0.verify_strict(&msg, &sig).is_err() {
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

    /// The 84-byte wire form.
    pub fn to_bytes(&self) -> [u8; CAPABILITY_LEN] {
        let mut b = [0u8; CAPABILITY_LEN];
        b[..20].copy_from_slice(&Capability::body(
            self.vnode,
            self.rights,
            self.expires_unix,
        ));
        b[20..].copy_from_slice(&self.signature);
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
        let mut signature = [0u8; SIGNATURE_LEN];
        signature.copy_from_slice(&b[20..]);
        let raw_rights = u32::from_le_bytes(rights);
        let rights =
            Rights::from_bits(raw_rights).ok_or(CapabilityError::UnknownRights(raw_rights))?;
        Ok(Capability {
            vnode: u64::from_le_bytes(vnode),
            rights,
            expires_unix: u64::from_le_bytes(exp),
            signature,
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
                Ok(c) => c.verify(&public(), 0).is_err(),
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

    fn key() -> CapabilityKey {
        CapabilityKey::derive(&ClusterKey::from_bytes([7; 32]))
    }

    fn public() -> CapabilityPublicKey {
        key().public()
    }

    #[test]
    fn keys_round_trip_and_derive_the_same_on_both_sides() {
        let cluster = ClusterKey::from_bytes([7; 32]);
        assert_eq!(
            CapabilityPublicKey::derive(&cluster),
            CapabilityKey::derive(&cluster).public()
        );
        let k = CapabilityKey::generate().expect("key");
        let again = CapabilityKey::from_hex(&k.to_hex()).expect("hex");
        assert_eq!(again.public(), k.public());
        let p = CapabilityPublicKey::from_hex(&k.public().to_string()).expect("public hex");
        assert_eq!(p, k.public());
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("pub");
        std::fs::write(&f, format!("{p}\n")).expect("write");
        assert_eq!(
            CapabilityPublicKey::from_hex_or_file(f.to_str().expect("utf-8")).expect("file"),
            p
        );
        assert!(
            !format!("{k:?}").contains(&k.to_hex()),
            "the seed is redacted"
        );
    }

    #[test]
    fn a_capability_signed_with_a_credential_secret_or_another_key_is_refused() {
        // What a compute host could make: an HMAC with its credential's secret in the
        // signature's place, or a signature with an Ed25519 key of its own.
        let cluster = ClusterKey::from_bytes([7; 32]);
        let cred = cluster
            .issue_credential(crate::credential::Role::Compute, "host-a")
            .expect("issue");
        let mut forged = Capability::issue_until(&key(), 9, Rights::MEMORY, u64::MAX);
        let mac = crate::credential::Identity::from(cred)
            .proof_key()
            .mac(&[LABEL, &Capability::body(9, Rights::MEMORY, u64::MAX)]);
        forged.signature = [0; SIGNATURE_LEN];
        forged.signature[..32].copy_from_slice(&mac);
        assert_eq!(
            forged.verify(&public(), 0),
            Err(CapabilityError::BadSignature)
        );
        let own = CapabilityKey::generate().expect("key");
        let minted = Capability::issue_until(&own, 9, Rights::MEMORY, u64::MAX);
        assert_eq!(
            minted.verify(&public(), 0),
            Err(CapabilityError::BadSignature)
        );
    }

    #[test]
    fn issue_verify_and_round_trip() {
        let cap = Capability::issue(&key(), 42, Rights::MEMORY, Duration::from_secs(60));
        cap.verify(&public(), unix_now()).expect("valid");
        assert_eq!(Capability::from_bytes(&cap.to_bytes()).expect("bytes"), cap);
        let token = cap.to_string();
        assert_eq!(token.len(), CAPABILITY_LEN * 2);
        assert_eq!(token.parse::<Capability>().expect("token"), cap);
    }

    #[test]
    fn expiry() {
        let cap = Capability::issue_until(&key(), 1, Rights::STORAGE, 1000);
        cap.verify(&public(), 999).expect("still valid");
        assert_eq!(
            cap.verify(&public(), 1000),
            Err(CapabilityError::Expired {
                expires_unix: 1000,
                now_unix: 1000
            })
        );
    }

    #[test]
    fn tampering_and_wrong_key_are_caught() {
        let cap = Capability::issue_until(&key(), 5, Rights::MEMORY, u64::MAX);
        let wrong = CapabilityPublicKey::derive(&ClusterKey::from_bytes([8; 32]));
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
                tampered.verify(&public(), 0),
                Err(CapabilityError::BadSignature)
            );
        }
        let mut bytes = cap.to_bytes();
        bytes[30] ^= 1;
        let flipped = Capability::from_bytes(&bytes).expect("parses");
        assert_eq!(
            flipped.verify(&public(), 0),
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
