//! Credentials by role: what a host that is not trusted with the cluster key holds.
//!
//! The cluster key is for the hosts that run fabric servers (managers, monitors) and for the
//! single-machine demo. Every other host gets a [`Credential`] issued from the cluster key
//! ([`ClusterKey::issue_credential`]): a role, a name, and a secret
//! `HMAC-SHA256(cluster key, "lego-fabric/v1 credential" | role byte | name)`. A server, which
//! holds the cluster key, derives the same secret from the role and name a client announces,
//! so the handshake proves both ([`crate::auth`]), and the services see them in
//! [`crate::RequestContext`]. A credential cannot be turned into the cluster key nor into
//! another name's or role's credential.
//!
//! Its file form is text:
//!
//! ```text
//! lego-credential v1
//! role compute
//! name host-a
//! secret <64 hex digits>
//! ```
//!
//! A client loads an [`Identity`] ([`Identity::load`]): the cluster key or a credential, from
//! the same file or environment variables that used to hold the cluster key only.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::auth::{decode_hex, encode_hex, AuthError, ClusterKey, ProofKey, KEY_LEN};

/// The first line of a credential file.
pub const CREDENTIAL_HEADER: &str = "lego-credential v1";
/// The longest credential name.
pub const MAX_NAME_LEN: usize = 64;
const CREDENTIAL_LABEL: &[u8] = b"lego-fabric/v1 credential";

/// Why a credential could not be made, parsed or loaded.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The name is empty, too long or has a character outside `[A-Za-z0-9._-]`.
    #[error("a credential name is 1 to {MAX_NAME_LEN} characters of A-Z, a-z, 0-9, '.', '_' and '-', not {0:?}")]
    BadName(String),
    /// The role is not one a credential may have.
    #[error("a credential's role is monitor, compute or operator, not {0:?}")]
    BadRole(String),
    /// The text is not a credential file.
    #[error("the credential is malformed: {0}")]
    Malformed(String),
    /// The credential file could not be read or written.
    #[error("the credential file {path} could not be read or written")]
    File {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// What a peer may do. The fabric only authenticates it; services decide what each role
/// may ask (the manager's checks are in `guest-monitors/src/manager/service.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Holds the cluster key itself: managers, monitors, the single-machine demo. Full trust.
    Cluster,
    /// A memory or storage monitor.
    Monitor,
    /// A compute host (legovmm, lego-vhost-blk): its own vNodes only.
    Compute,
    /// An operator (legoctl): everything the manager offers, no server role.
    Operator,
}

impl Role {
    /// The byte that stands for the role on the wire and in the secret's derivation.
    pub fn to_byte(self) -> u8 {
        match self {
            Role::Cluster => 0,
            Role::Monitor => 1,
            Role::Compute => 2,
            Role::Operator => 3,
        }
    }

    /// The role a wire byte stands for.
    pub fn from_byte(b: u8) -> Option<Role> {
        Some(match b {
            0 => Role::Cluster,
            1 => Role::Monitor,
            2 => Role::Compute,
            3 => Role::Operator,
            _ => return None,
        })
    }

    /// Its lowercase name (`cluster`, `monitor`, `compute`, `operator`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Cluster => "cluster",
            Role::Monitor => "monitor",
            Role::Compute => "compute",
            Role::Operator => "operator",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = CredentialError;

    /// Parses a credential's role: `monitor`, `compute` or `operator` (never `cluster`: the
    /// cluster key is not a credential).
    fn from_str(s: &str) -> Result<Role, CredentialError> {
        match s {
            "monitor" => Ok(Role::Monitor),
            "compute" => Ok(Role::Compute),
            "operator" => Ok(Role::Operator),
            other => Err(CredentialError::BadRole(other.into())),
        }
    }
}

/// Checks a credential name: 1 to [`MAX_NAME_LEN`] characters of `[A-Za-z0-9._-]`.
pub fn check_name(name: &str) -> Result<(), CredentialError> {
    let ok = (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(CredentialError::BadName(name.into()))
    }
}

/// An authenticated peer as a server sees it: its role and name (empty for the cluster key).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Peer {
    /// Its role.
    pub role: Role,
    /// Its credential's name; empty for [`Role::Cluster`].
    pub name: Arc<str>,
}

impl Peer {
    /// A holder of the cluster key.
    pub fn cluster() -> Peer {
        Peer {
            role: Role::Cluster,
            name: Arc::from(""),
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.role == Role::Cluster {
            f.write_str("a holder of the cluster key")
        } else {
            write!(f, "{} {}", self.role, self.name)
        }
    }
}

/// A host's credential: a role, a name and the secret derived from both by the cluster key.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    role: Role,
    name: String,
    secret: [u8; KEY_LEN],
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Credential({} {}, <secret redacted>)",
            self.role, self.name
        )
    }
}

/// The secret of the credential `role`/`name` under `key`.
pub(crate) fn derive_secret(key: &ClusterKey, role: Role, name: &str) -> [u8; KEY_LEN] {
    key.mac(&[CREDENTIAL_LABEL, &[role.to_byte()], name.as_bytes()])
}

impl ClusterKey {
    /// Issues the credential of `role` for the host `name`.
    pub fn issue_credential(&self, role: Role, name: &str) -> Result<Credential, CredentialError> {
        if role == Role::Cluster {
            return Err(CredentialError::BadRole("cluster".into()));
        }
        check_name(name)?;
        Ok(Credential {
            role,
            name: name.into(),
            secret: derive_secret(self, role, name),
        })
    }
}

impl Credential {
    /// Its role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The peer it authenticates as.
    pub fn peer(&self) -> Peer {
        Peer {
            role: self.role,
            name: Arc::from(self.name.as_str()),
        }
    }

    /// Its file form (see the module doc); it holds the secret.
    pub fn to_text(&self) -> String {
        format!(
            "{CREDENTIAL_HEADER}\nrole {}\nname {}\nsecret {}\n",
            self.role,
            self.name,
            encode_hex(&self.secret)
        )
    }

    /// Parses the file form.
    pub fn from_text(text: &str) -> Result<Credential, CredentialError> {
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        if lines.next() != Some(CREDENTIAL_HEADER) {
            return Err(CredentialError::Malformed(format!(
                "it does not start with {CREDENTIAL_HEADER:?}"
            )));
        }
        let (mut role, mut name, mut secret) = (None, None, None);
        for line in lines {
            let (k, v) = line.split_once(' ').ok_or_else(|| {
                CredentialError::Malformed(format!("the line {line:?} is not `key value`"))
            })?;
            let v = v.trim();
            let slot = match k {
                "role" => &mut role,
                "name" => &mut name,
                "secret" => &mut secret,
                other => {
                    return Err(CredentialError::Malformed(format!(
                        "it has an unknown key {other:?}"
                    )))
                }
            };
            if slot.replace(v).is_some() {
                return Err(CredentialError::Malformed(format!("it names {k} twice")));
            }
        }
        let missing = |k: &str| CredentialError::Malformed(format!("it has no {k} line"));
        let role: Role = role.ok_or_else(|| missing("role"))?.parse()?;
        let name = name.ok_or_else(|| missing("name"))?;
        check_name(name)?;
        let secret = decode_hex(secret.ok_or_else(|| missing("secret"))?)
            .and_then(|b| <[u8; KEY_LEN]>::try_from(b).ok())
            .ok_or_else(|| {
                CredentialError::Malformed("its secret is not 64 hexadecimal digits".into())
            })?;
        Ok(Credential {
            role,
            name: name.into(),
            secret,
        })
    }

    /// Reads a credential file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Credential, CredentialError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| CredentialError::File {
            path: path.to_path_buf(),
            source,
        })?;
        Credential::from_text(&text)
    }

    /// Writes the credential to a new file `path` readable by its owner only (mode 0600);
    /// an existing file is not overwritten.
    pub fn write_file(&self, path: impl AsRef<Path>) -> Result<(), CredentialError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = path.as_ref();
        let err = |source| CredentialError::File {
            path: path.to_path_buf(),
            source,
        };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(err)?;
        f.write_all(self.to_text().as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)
    }

    pub(crate) fn proof_key(&self) -> ProofKey {
        ProofKey::from_bytes(self.secret)
    }
}

/// What a client authenticates with: the cluster key, or a credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// The cluster key itself ([`Role::Cluster`]).
    ClusterKey(ClusterKey),
    /// A credential issued from it.
    Credential(Credential),
}

impl From<ClusterKey> for Identity {
    fn from(k: ClusterKey) -> Identity {
        Identity::ClusterKey(k)
    }
}

impl From<Credential> for Identity {
    fn from(c: Credential) -> Identity {
        Identity::Credential(c)
    }
}

impl Identity {
    /// The peer a server sees.
    pub fn peer(&self) -> Peer {
        match self {
            Identity::ClusterKey(_) => Peer::cluster(),
            Identity::Credential(c) => c.peer(),
        }
    }

    /// Its role.
    pub fn role(&self) -> Role {
        match self {
            Identity::ClusterKey(_) => Role::Cluster,
            Identity::Credential(c) => c.role,
        }
    }

    /// The cluster key, if this is it.
    pub fn cluster_key(&self) -> Option<&ClusterKey> {
        match self {
            Identity::ClusterKey(k) => Some(k),
            Identity::Credential(_) => None,
        }
    }

    /// The key both sides' handshake proofs use (see [`crate::auth::proof_key`]).
    pub fn proof_key(&self) -> ProofKey {
        match self {
            Identity::ClusterKey(k) => ProofKey::from_bytes(*k.as_bytes()),
            Identity::Credential(c) => c.proof_key(),
        }
    }

    /// Parses the text of a key file or variable: a credential file, or a cluster key (64
    /// hex digits).
    pub fn from_text(text: &str) -> Result<Identity, AuthError> {
        if text.trim_start().starts_with("lego-credential") {
            Ok(Identity::Credential(Credential::from_text(text)?))
        } else {
            Ok(Identity::ClusterKey(ClusterKey::from_hex(text)?))
        }
    }

    /// Reads a file holding a credential, or a cluster key (hex or 32 raw bytes).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Identity, AuthError> {
        let path = path.as_ref();
        let data = std::fs::read(path).map_err(|source| AuthError::KeyFile {
            path: path.to_path_buf(),
            source,
        })?;
        if let Ok(raw) = <[u8; KEY_LEN]>::try_from(data.as_slice()) {
            return Ok(Identity::ClusterKey(ClusterKey::from_bytes(raw)));
        }
        let bad = || AuthError::BadKeyFile {
            path: path.to_path_buf(),
        };
        let text = std::str::from_utf8(&data).map_err(|_| bad())?;
        Identity::from_text(text).map_err(|e| match e {
            AuthError::BadHex(_) => bad(),
            e => e,
        })
    }

    /// The cluster key this identity is; a credential is refused, naming `what` held it
    /// (servers need the cluster key itself).
    pub fn into_cluster_key(self, what: impl FnOnce() -> String) -> Result<ClusterKey, AuthError> {
        match self {
            Identity::ClusterKey(k) => Ok(k),
            Identity::Credential(c) => Err(AuthError::CredentialForServer {
                what: what(),
                role: c.role(),
                name: c.name().into(),
            }),
        }
    }

    /// Loads the identity from `file` if one is given, else from `LEGO_CLUSTER_KEY` (a hex
    /// key or a credential's text), else from the file `LEGO_CLUSTER_KEY_FILE` names: how
    /// every client (legoctl, legovmm, lego-vhost-blk) finds what it authenticates with.
    pub fn load(file: Option<&Path>) -> Result<Identity, AuthError> {
        if let Some(f) = file {
            return Identity::from_file(f);
        }
        if let Ok(text) = std::env::var(crate::auth::KEY_ENV) {
            return Identity::from_text(&text);
        }
        if let Some(path) = std::env::var_os(crate::auth::KEY_FILE_ENV) {
            return Identity::from_file(PathBuf::from(path));
        }
        Err(AuthError::NotConfigured)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ClusterKey {
        ClusterKey::from_bytes([3; 32])
    }

    #[test]
    fn credentials_round_trip_through_text_and_files() {
        let c = key()
            .issue_credential(Role::Compute, "host-a")
            .expect("issue");
        assert_eq!(Credential::from_text(&c.to_text()).expect("parse"), c);
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("cred");
        c.write_file(&f).expect("write");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&f).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(c.write_file(&f).is_err(), "an existing file is kept");
        match Identity::from_file(&f).expect("load") {
            Identity::Credential(l) => assert_eq!(l, c),
            other => panic!("{other:?}"),
        }
        assert!(!format!("{c:?}").contains(&encode_hex(&c.secret)));
    }

    #[test]
    fn secrets_depend_on_role_name_and_key() {
        let a = key().issue_credential(Role::Compute, "a").expect("a");
        let b = key().issue_credential(Role::Compute, "b").expect("b");
        let a_op = key().issue_credential(Role::Operator, "a").expect("a op");
        let other = ClusterKey::from_bytes([4; 32])
            .issue_credential(Role::Compute, "a")
            .expect("other");
        assert_ne!(a.secret, b.secret);
        assert_ne!(a.secret, a_op.secret);
        assert_ne!(a.secret, other.secret);
        assert_ne!(&a.secret, key().as_bytes());
    }

    #[test]
    fn bad_names_roles_and_texts_are_refused() {
        for bad in ["", "a b", "é", &"x".repeat(65), "a/b"] {
            assert!(matches!(
                key().issue_credential(Role::Compute, bad),
                Err(CredentialError::BadName(_))
            ));
        }
        assert!(key()
            .issue_credential(Role::Compute, &"x".repeat(64))
            .is_ok());
        assert!(matches!(
            key().issue_credential(Role::Cluster, "a"),
            Err(CredentialError::BadRole(_))
        ));
        let good = key()
            .issue_credential(Role::Monitor, "m")
            .expect("m")
            .to_text();
        for bad in [
            "",
            "lego-credential v2\n",
            &good.replace("role monitor", "role cluster"),
            &good.replace("role monitor\n", ""),
            &good.replace("name m", "name m\nname n"),
            &good.replace("secret ", "secret 00"),
            &format!("{good}color blue\n"),
        ] {
            assert!(Credential::from_text(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn identities_parse_keys_and_credentials() {
        let k = key();
        assert_eq!(
            Identity::from_text(&k.to_hex()).expect("key"),
            Identity::ClusterKey(k.clone())
        );
        let c = k.issue_credential(Role::Operator, "ops").expect("issue");
        let id = Identity::from_text(&c.to_text()).expect("credential");
        assert_eq!(id.role(), Role::Operator);
        assert_eq!(id.peer().name.as_ref(), "ops");
        assert!(id.cluster_key().is_none());
    }
}
