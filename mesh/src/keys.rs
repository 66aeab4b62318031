//! A node's keys on disk, and the join token that enrols a new node into a store.
//!
//! In the data directory, each file owner-only (0600):
//! - `node.key`: this node's libp2p identity (Ed25519, protobuf encoding); its public half is the node's
//!   origin in the log.
//! - `store.secrets`: the store's secrets shared by all its nodes: the private-network key, the age
//!   identity payloads are encrypted to, and the store's signing key (for HQ summaries).
//!
//! `lpmesh init` creates both. A new node gets `store.secrets` through a one-time invitation (see
//! [`crate::enrol`]): the invitation itself holds no secret.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use libp2p_identity::Keypair;
use serde::{Deserialize, Serialize};

use crate::crypto::{BoxError, StoreRecipient, StoreSecret};

pub const NODE_KEY_FILE: &str = "node.key";
pub const STORE_SECRETS_FILE: &str = "store.secrets";
/// Key epochs a node takes from a member when it joins (one per revocation; a store has a handful).
pub const MAX_EPOCHS_HELD: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a valid key file: {reason}", path.display())]
    Invalid {
        path: PathBuf,
        #[source]
        reason: BoxError,
    },
    #[error("{} already exists: this data directory already belongs to a node", path.display())]
    Exists { path: PathBuf },
    #[error("{} is missing: run `lpmesh init` (first node) or `lpmesh join` (other nodes)", path.display())]
    Missing { path: PathBuf },
    #[error("{} is readable by others (mode {mode:o}); run chmod 600 on it", path.display())]
    Permissions { path: PathBuf, mode: u32 },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to a new file readable only by its owner; refuses to overwrite.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    if path.exists() {
        return Err(KeyError::Exists {
            path: path.to_path_buf(),
        });
    }
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

fn read_private(path: &Path) -> Result<Vec<u8>, KeyError> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(KeyError::Missing {
                path: path.to_path_buf(),
            })
        }
        Err(e) => {
            return Err(KeyError::Io {
                path: path.to_path_buf(),
                source: e,
            })
        }
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    fs::read(path).map_err(io(path))
}

/// This node's identity, created on first use.
pub fn create_node_key(dir: &Path) -> Result<Keypair, KeyError> {
    let key = Keypair::generate_ed25519();
    let path = dir.join(NODE_KEY_FILE);
    let bytes = key.to_protobuf_encoding().map_err(|e| KeyError::Invalid {
        path: path.clone(),
        reason: e.into(),
    })?;
    write_private(&path, &bytes)?;
    Ok(key)
}

/// Writes an identity made elsewhere (a joining node's, once admitted).
pub fn save_node_key(dir: &Path, key: &Keypair) -> Result<(), KeyError> {
    let path = dir.join(NODE_KEY_FILE);
    let bytes = key.to_protobuf_encoding().map_err(|e| KeyError::Invalid {
        path: path.clone(),
        reason: e.into(),
    })?;
    write_private(&path, &bytes)
}

pub fn load_node_key(dir: &Path) -> Result<Keypair, KeyError> {
    let path = dir.join(NODE_KEY_FILE);
    let bytes = read_private(&path)?;
    Keypair::from_protobuf_encoding(&bytes).map_err(|e| KeyError::Invalid { path, reason: e.into() })
}

/// The secrets every node of a store shares.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSecrets {
    pub store: String,
    /// Private-network key, hex.
    pub psk: String,
    /// The store's age identity (AGE-SECRET-KEY-1...).
    pub age_secret: String,
    /// The store's Ed25519 signing key (protobuf encoding, base64), for HQ summaries.
    pub signing_key: String,
    /// The first node (its peer id): the root of the store's member list. Absent in stores created
    /// before the member list, which admit every holder of the network key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub founder: Option<String>,
    /// The key epochs begun since the store was created (one after each revocation), as the member
    /// that admitted this node held them: a node joins able to read the store's whole history.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub epochs: Vec<EpochKey>,
    /// The store's certificate authority for its nodes' tablet UIs (made at `lpmesh init`): a tablet
    /// that trusts it trusts every node. Absent in stores created before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ui_ca: Option<UiCa>,
}

/// A certificate authority as PEM: its certificate (public) and its key (secret).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UiCa {
    /// What the CA's name says it is for (the store's name, or its key epoch).
    #[serde(default)]
    pub name: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl UiCa {
    /// Both texts PEM of the right kind, and small.
    pub fn is_well_formed(&self) -> bool {
        let pem = |t: &str, what: &str| t.len() <= MAX_CA_PEM && t.contains(&format!("-----BEGIN {what}"));
        self.name.len() <= 256 && pem(&self.cert_pem, "CERTIFICATE") && pem(&self.key_pem, "PRIVATE KEY")
    }
}

impl std::fmt::Debug for UiCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UiCa").finish_non_exhaustive()
    }
}

/// A CA's PEM texts are a few hundred bytes; anything far larger is not one.
const MAX_CA_PEM: usize = 16 * 1024;

/// One key epoch's secrets: a private-network key and the age identity records are written to.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EpochKey {
    pub n: u32,
    /// Private-network key, hex.
    pub psk: String,
    /// AGE-SECRET-KEY-1...
    pub age_secret: String,
    /// The tablet CA of this epoch: after a revocation the nodes' certificates come from a CA the
    /// revoked node never held (it could otherwise issue certificates for the store's names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ui_ca: Option<UiCa>,
}

impl std::fmt::Debug for EpochKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EpochKey").field("n", &self.n).finish_non_exhaustive()
    }
}

impl EpochKey {
    pub fn generate(n: u32) -> Self {
        let psk: [u8; 32] = rand::random();
        EpochKey {
            n,
            psk: psk.iter().map(|b| format!("{b:02x}")).collect(),
            age_secret: StoreSecret::generate().expose(),
            ui_ca: None,
        }
    }

    pub fn psk(&self) -> Result<[u8; 32], KeyError> {
        parse_psk(&self.psk)
    }

    pub fn recipient(&self) -> Result<StoreRecipient, KeyError> {
        StoreSecret::parse(&self.age_secret)
            .map(|s| s.recipient())
            .map_err(|e| KeyError::Invalid {
                path: PathBuf::from(STORE_SECRETS_FILE),
                reason: e.into(),
            })
    }
}

fn parse_psk(hex: &str) -> Result<[u8; 32], KeyError> {
    let bad = || KeyError::Invalid {
        path: PathBuf::from(STORE_SECRETS_FILE),
        reason: "psk must be 64 hex digits".into(),
    };
    if hex.len() != 64 || !hex.is_ascii() {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

impl std::fmt::Debug for StoreSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secrets themselves.
        f.debug_struct("StoreSecrets")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl StoreSecrets {
    pub fn generate(store: &str) -> Result<Self, KeyError> {
        let psk: [u8; 32] = rand::random();
        let signing = Keypair::generate_ed25519();
        let signing = signing.to_protobuf_encoding().map_err(|e| KeyError::Invalid {
            path: PathBuf::from("signing key"),
            reason: e.into(),
        })?;
        Ok(Self {
            store: store.to_string(),
            psk: psk.iter().map(|b| format!("{b:02x}")).collect(),
            age_secret: StoreSecret::generate().expose(),
            signing_key: base64::engine::general_purpose::STANDARD.encode(signing),
            founder: None,
            epochs: Vec::new(),
            ui_ca: None,
        })
    }

    pub fn psk(&self) -> Result<[u8; 32], KeyError> {
        parse_psk(&self.psk)
    }

    /// Every key the store's records may be under: its first one and the epochs this node holds.
    pub fn keyring(&self) -> Result<crate::crypto::Keyring, KeyError> {
        let ring = crate::crypto::Keyring::from(self.store_secret()?).with_base_psk(self.psk()?);
        ring.add(&self.epochs).map_err(|e| KeyError::Invalid {
            path: PathBuf::from(STORE_SECRETS_FILE),
            reason: e.into(),
        })?;
        Ok(ring)
    }

    pub fn store_secret(&self) -> Result<StoreSecret, KeyError> {
        StoreSecret::parse(&self.age_secret).map_err(|e| KeyError::Invalid {
            path: PathBuf::from(STORE_SECRETS_FILE),
            reason: e.into(),
        })
    }

    pub fn recipient(&self) -> Result<StoreRecipient, KeyError> {
        Ok(self.store_secret()?.recipient())
    }

    pub fn signing_key(&self) -> Result<Keypair, KeyError> {
        let bad = |reason: BoxError| KeyError::Invalid {
            path: PathBuf::from(STORE_SECRETS_FILE),
            reason,
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&self.signing_key)
            .map_err(|e| bad(e.into()))?;
        Keypair::from_protobuf_encoding(&bytes).map_err(|e| bad(e.into()))
    }

    /// The secrets, if every one of them is well formed (secrets received from a member).
    pub fn checked(self) -> Result<Self, KeyError> {
        self.validate(Path::new("received secrets"))
    }

    fn validate(self, path: &Path) -> Result<Self, KeyError> {
        self.psk().map_err(|_| KeyError::Invalid {
            path: path.to_path_buf(),
            reason: "bad psk".into(),
        })?;
        self.store_secret().map_err(|_| KeyError::Invalid {
            path: path.to_path_buf(),
            reason: "bad age secret".into(),
        })?;
        self.signing_key().map_err(|_| KeyError::Invalid {
            path: path.to_path_buf(),
            reason: "bad signing key".into(),
        })?;
        if self.epochs.len() > MAX_EPOCHS_HELD {
            return Err(KeyError::Invalid {
                path: path.to_path_buf(),
                reason: format!("more than {MAX_EPOCHS_HELD} key epochs").into(),
            });
        }
        for e in &self.epochs {
            e.psk().and(e.recipient()).map_err(|_| KeyError::Invalid {
                path: path.to_path_buf(),
                reason: format!("bad key of epoch {}", e.n).into(),
            })?;
        }
        let epoch_cas = self.epochs.iter().filter_map(|e| e.ui_ca.as_ref());
        for ca in self.ui_ca.iter().chain(epoch_cas) {
            if !ca.is_well_formed() {
                return Err(KeyError::Invalid {
                    path: path.to_path_buf(),
                    reason: "bad UI certificate authority".into(),
                });
            }
        }
        Ok(self)
    }

    pub fn save(&self, dir: &Path) -> Result<(), KeyError> {
        let path = dir.join(STORE_SECRETS_FILE);
        let json = serde_json::to_vec_pretty(self).map_err(|e| KeyError::Invalid {
            path: path.clone(),
            reason: e.into(),
        })?;
        write_private(&path, &json)
    }

    pub fn load(dir: &Path) -> Result<Self, KeyError> {
        let path = dir.join(STORE_SECRETS_FILE);
        let bytes = read_private(&path)?;
        let s: StoreSecrets = serde_json::from_slice(&bytes).map_err(|e| KeyError::Invalid {
            path: path.clone(),
            reason: e.into(),
        })?;
        s.validate(&path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!(
            "lpmesh-keys-{tag}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ))
    }

    #[test]
    fn init_then_join_gives_two_nodes_of_one_store() {
        let (a, b) = (dir("a"), dir("b"));
        let key_a = create_node_key(&a).unwrap();
        let secrets = StoreSecrets::generate("store-9").unwrap();
        secrets.save(&a).unwrap();
        assert_eq!(
            fs::metadata(a.join(NODE_KEY_FILE)).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::metadata(a.join(STORE_SECRETS_FILE)).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(
            matches!(secrets.save(&a), Err(KeyError::Exists { .. })),
            "never overwritten"
        );
        assert_eq!(load_node_key(&a).unwrap().public(), key_a.public());

        // What a member hands a new node once it is admitted (crate::enrol).
        let received: StoreSecrets =
            serde_json::from_slice(&serde_json::to_vec(&StoreSecrets::load(&a).unwrap()).unwrap()).unwrap();
        received.checked().unwrap().save(&b).unwrap();
        create_node_key(&b).unwrap();
        let sb = StoreSecrets::load(&b).unwrap();
        assert_eq!(
            (sb.store.as_str(), sb.psk().unwrap()),
            ("store-9", secrets.psk().unwrap())
        );
        let c = sb.recipient().unwrap().encrypt(b"x").unwrap();
        assert_eq!(secrets.store_secret().unwrap().decrypt(&c).unwrap(), b"x");
        assert_ne!(
            load_node_key(&b).unwrap().public(),
            key_a.public(),
            "each node has its own identity"
        );
        assert!(
            !format!("{secrets:?}").contains(&secrets.psk),
            "secrets never appear in debug output"
        );
        let _ = fs::remove_dir_all(&a);
        let _ = fs::remove_dir_all(&b);
    }

    #[test]
    fn bad_tokens_and_loose_permissions_are_refused() {
        let d = dir("perm");
        create_node_key(&d).unwrap();
        fs::set_permissions(d.join(NODE_KEY_FILE), fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(load_node_key(&d), Err(KeyError::Permissions { .. })));
        assert!(matches!(StoreSecrets::load(&d), Err(KeyError::Missing { .. })));
        let _ = fs::remove_dir_all(&d);
    }
}
