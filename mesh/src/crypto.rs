//! The store's encryption: every record payload is age-encrypted to the store's X25519 recipient, so
//! only nodes of the store (which hold its identity) can read it, whoever relays or stores it.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::{Arc, RwLock};

use curve25519_dalek::edwards::CompressedEdwardsY;
use curve25519_dalek::montgomery::MontgomeryPoint;

use crate::keys::EpochKey;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("not a valid store secret key")]
    BadSecret,
    #[error("not a valid store recipient")]
    BadRecipient,
    #[error("encryption failed: {0}")]
    Encrypt(String),
    #[error("cannot decrypt: {0}")]
    Decrypt(String),
}

/// The store's secret (every node of the store holds it). Its text form is an age secret key.
pub struct StoreSecret(age::x25519::Identity);

impl StoreSecret {
    pub fn generate() -> Self {
        Self(age::x25519::Identity::generate())
    }

    pub fn parse(s: &str) -> Result<Self, CryptoError> {
        age::x25519::Identity::from_str(s.trim())
            .map(Self)
            .map_err(|_| CryptoError::BadSecret)
    }

    /// The secret as text, for the node's key file (owner-only permissions; never logged).
    pub fn expose(&self) -> String {
        use age::secrecy::ExposeSecret;
        self.0.to_string().expose_secret().to_string()
    }

    pub fn recipient(&self) -> StoreRecipient {
        StoreRecipient(self.0.to_public())
    }

    pub fn decrypt(&self, ciphertext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        age::decrypt(&self.0, ciphertext).map_err(|e| CryptoError::Decrypt(e.to_string()))
    }
}

/// Where payloads are encrypted to.
#[derive(Clone)]
pub struct StoreRecipient(age::x25519::Recipient);

impl StoreRecipient {
    pub fn parse(s: &str) -> Result<Self, CryptoError> {
        age::x25519::Recipient::from_str(s.trim())
            .map(Self)
            .map_err(|_| CryptoError::BadRecipient)
    }

    pub fn encrypt(&self, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        age::encrypt(&self.0, plaintext).map_err(|e| CryptoError::Encrypt(e.to_string()))
    }
}

impl std::fmt::Display for StoreRecipient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Every key the store's records may be encrypted under: the store's first identity and those of the
/// key epochs begun since (each after a revocation, see `lpmesh_node::epochs`). Shared by the node's
/// readers: a key learned by one is used by all.
#[derive(Clone)]
pub struct Keyring(Arc<RwLock<Ring>>);

struct Ring {
    base: Arc<StoreSecret>,
    /// By (epoch number, recipient): two members that begin an epoch at once both count.
    epochs: BTreeMap<(u32, String), (Arc<StoreSecret>, EpochKey)>,
    /// The recipient records are written to now, tried first.
    current: Option<String>,
    /// The store's first network key, when known (see [`Keyring::network_keys`]).
    base_psk: Option<[u8; 32]>,
}

impl From<StoreSecret> for Keyring {
    fn from(base: StoreSecret) -> Self {
        Keyring(Arc::new(RwLock::new(Ring {
            base: Arc::new(base),
            epochs: BTreeMap::new(),
            current: None,
            base_psk: None,
        })))
    }
}

impl Keyring {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Ring> {
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Ring> {
        self.0.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds the epochs' keys; how many were new. A malformed key is refused before any is added.
    pub fn add(&self, keys: &[EpochKey]) -> Result<usize, CryptoError> {
        let parsed = keys
            .iter()
            .map(|k| Ok((StoreSecret::parse(&k.age_secret)?, k.clone())))
            .collect::<Result<Vec<_>, CryptoError>>()?;
        let mut ring = self.write();
        let mut added = 0;
        for (secret, k) in parsed {
            let id = (k.n, secret.recipient().to_string());
            if let std::collections::btree_map::Entry::Vacant(v) = ring.epochs.entry(id) {
                v.insert((Arc::new(secret), k));
                added += 1;
            }
        }
        Ok(added)
    }

    /// The epoch key whose public recipient is `recipient`, if held.
    pub fn epoch(&self, recipient: &str) -> Option<EpochKey> {
        self.read()
            .epochs
            .iter()
            .find(|((_, r), _)| r == recipient)
            .map(|(_, (_, k))| k.clone())
    }

    /// The epoch records are written under now, if it is one (not the store's first key).
    pub fn current_epoch(&self) -> Option<EpochKey> {
        let ring = self.read();
        let current = ring.current.as_ref()?;
        ring.epochs
            .iter()
            .find(|((_, r), _)| r == current)
            .map(|(_, (_, k))| k.clone())
    }

    /// The highest epoch number held (0: only the store's first key).
    pub fn newest(&self) -> u32 {
        self.read().epochs.keys().next_back().map_or(0, |(n, _)| *n)
    }

    /// The epochs held, oldest first (what a member hands a node it admits).
    pub fn epochs(&self) -> Vec<EpochKey> {
        self.read().epochs.values().map(|(_, k)| k.clone()).collect()
    }

    /// The store's first network key, the last one [`Keyring::network_keys`] gives.
    pub fn with_base_psk(self, psk: [u8; 32]) -> Self {
        self.write().base_psk = Some(psk);
        self
    }

    /// The network keys to connect with: the current epoch's first, then the other epochs' from the
    /// newest, then the store's first.
    pub fn network_keys(&self) -> Vec<[u8; 32]> {
        let ring = self.read();
        let current = ring
            .current
            .as_ref()
            .and_then(|c| ring.epochs.iter().find(|((_, r), _)| r == c))
            .and_then(|(_, (_, k))| k.psk().ok());
        current
            .into_iter()
            .chain(ring.epochs.values().rev().filter_map(|(_, k)| k.psk().ok()))
            .chain(ring.base_psk)
            .collect()
    }

    /// Records are written to `recipient` from now on (`None`: the store's first key).
    pub fn set_current(&self, recipient: Option<String>) {
        self.write().current = recipient;
    }

    /// Where records are written now.
    pub fn current(&self) -> StoreRecipient {
        let ring = self.read();
        ring.current
            .as_ref()
            .and_then(|c| ring.epochs.iter().find(|((_, r), _)| r == c))
            .map_or_else(|| ring.base.recipient(), |(_, (s, _))| s.recipient())
    }

    /// The store's first key, which key-epoch records themselves are encrypted to: a member that has
    /// not yet learned an epoch must be able to read the record that hands it over.
    pub fn base(&self) -> Arc<StoreSecret> {
        self.read().base.clone()
    }

    /// Decrypts with whichever key the payload was encrypted to: the current one first, then the
    /// newest epochs, then the store's first key.
    pub fn decrypt(&self, ciphertext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let ring = self.read();
        let current = ring
            .current
            .as_ref()
            .and_then(|c| ring.epochs.iter().find(|((_, r), _)| r == c))
            .map(|(_, (s, _))| s.clone());
        let rest = ring
            .epochs
            .values()
            .rev()
            .filter(|(s, _)| !current.as_ref().is_some_and(|c| Arc::ptr_eq(c, s)))
            .map(|(s, _)| s.clone());
        let order = current
            .clone()
            .into_iter()
            .chain(rest)
            .chain(std::iter::once(ring.base.clone()));
        let mut last = CryptoError::Decrypt("no key".into());
        for secret in order {
            match secret.decrypt(ciphertext) {
                Ok(plain) => return Ok(plain),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

const SEAL_INFO: &[u8] = b"lpmesh sealed to a node key v1";

/// A member's node key (Ed25519 public) as the X25519 key the same secret opens.
fn node_x25519(node: &[u8; 32]) -> Result<MontgomeryPoint, CryptoError> {
    CompressedEdwardsY(*node)
        .decompress()
        .filter(|p| !p.is_small_order())
        .map(|p| p.to_montgomery())
        .ok_or(CryptoError::BadRecipient)
}

fn seal_key(
    shared: &MontgomeryPoint,
    ephemeral: &MontgomeryPoint,
    to: &MontgomeryPoint,
) -> Result<[u8; 32], CryptoError> {
    // A low-order point gives an all-zero secret anyone can compute: refused on both sides.
    if shared.as_bytes().iter().all(|b| *b == 0) {
        return Err(CryptoError::BadRecipient);
    }
    let salt = [ephemeral.as_bytes().as_slice(), to.as_bytes().as_slice()].concat();
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(&salt), shared.as_bytes());
    let mut key = [0u8; 32];
    hk.expand(SEAL_INFO, &mut key)
        .map_err(|e| CryptoError::Encrypt(e.to_string()))?;
    Ok(key)
}

/// Seals `plaintext` so that only the holder of the node key `node` (an Ed25519 public key) can open
/// it: an ephemeral X25519 exchange with the node key's X25519 form, then ChaCha20-Poly1305 under a
/// key used once (so the nonce is fixed).
pub fn seal_to_node(node: &[u8; 32], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    use chacha20poly1305::aead::{Aead, KeyInit};
    let to = node_x25519(node)?;
    let ephemeral_secret: [u8; 32] = rand::random();
    let ephemeral = MontgomeryPoint::mul_base_clamped(ephemeral_secret);
    let key = seal_key(&to.mul_clamped(ephemeral_secret), &ephemeral, &to)?;
    let sealed = chacha20poly1305::ChaCha20Poly1305::new((&key).into())
        .encrypt(&chacha20poly1305::Nonce::default(), plaintext)
        .map_err(|e| CryptoError::Encrypt(e.to_string()))?;
    Ok([ephemeral.as_bytes().as_slice(), &sealed].concat())
}

/// Opens what [`seal_to_node`] sealed to this node's key.
pub fn open_with_node_key(key: &libp2p_identity::Keypair, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
    use chacha20poly1305::aead::{Aead, KeyInit};
    use sha2::Digest;
    let bad = |why: &str| CryptoError::Decrypt(why.to_string());
    let ed = key
        .clone()
        .try_into_ed25519()
        .map_err(|_| bad("the node key is not Ed25519"))?;
    // The X25519 secret of an Ed25519 key: the first half of the SHA-512 of its seed (clamped when
    // used), whose base point multiple is the public key's Montgomery form.
    let hash = sha2::Sha512::digest(ed.secret().as_ref());
    let mut scalar = [0u8; 32];
    scalar.copy_from_slice(&hash[..32]);
    let (head, body) = sealed.split_at_checked(32).ok_or_else(|| bad("too short"))?;
    let ephemeral = MontgomeryPoint(head.try_into().map_err(|_| bad("too short"))?);
    let me = MontgomeryPoint::mul_base_clamped(scalar);
    let key = seal_key(&ephemeral.mul_clamped(scalar), &ephemeral, &me)?;
    chacha20poly1305::ChaCha20Poly1305::new((&key).into())
        .decrypt(&chacha20poly1305::Nonce::default(), body)
        .map_err(|_| bad("not sealed to this node's key"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_to_a_node_key_opens_with_that_key_only() {
        let a = libp2p_identity::Keypair::generate_ed25519();
        let b = libp2p_identity::Keypair::generate_ed25519();
        let pub_a = a.public().try_into_ed25519().unwrap().to_bytes();
        let sealed = seal_to_node(&pub_a, b"epoch 2 keys").unwrap();
        assert!(!sealed.windows(5).any(|w| w == b"epoch"));
        assert_eq!(open_with_node_key(&a, &sealed).unwrap(), b"epoch 2 keys");
        assert!(
            open_with_node_key(&b, &sealed).is_err(),
            "another node's key opens nothing"
        );
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(open_with_node_key(&a, &tampered).is_err());
        assert!(open_with_node_key(&a, &sealed[..20]).is_err());
        // A low-order point (the identity): refused, never sealed under a key anyone can compute.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(seal_to_node(&identity, b"x").is_err());
    }

    #[test]
    fn a_keyring_reads_every_epoch_and_writes_to_the_current_one() {
        let base = StoreSecret::generate();
        let old = base.recipient().encrypt(b"before").unwrap();
        let ring = Keyring::from(StoreSecret::parse(&base.expose()).unwrap());
        let e1 = EpochKey::generate(1);
        assert_eq!(ring.add(&[e1.clone(), e1.clone()]).unwrap(), 1);
        assert_eq!(ring.newest(), 1);
        let r1 = StoreSecret::parse(&e1.age_secret).unwrap().recipient().to_string();
        assert_eq!(ring.current().to_string(), base.recipient().to_string());
        ring.set_current(Some(r1.clone()));
        assert_eq!(ring.current().to_string(), r1);
        let new = ring.current().encrypt(b"after").unwrap();
        assert_eq!(ring.decrypt(&old).unwrap(), b"before");
        assert_eq!(ring.decrypt(&new).unwrap(), b"after");
        assert!(base.decrypt(&new).is_err(), "the first key does not read the new epoch");
        assert_eq!(ring.epoch(&r1), Some(e1));
        let mut bad = EpochKey::generate(2);
        bad.age_secret = "AGE-SECRET-KEY-1NOPE".into();
        assert!(ring.add(&[EpochKey::generate(3), bad]).is_err());
        assert_eq!(ring.newest(), 1, "nothing of a malformed set is added");
    }

    #[test]
    fn round_trip_and_wrong_key() {
        let s = StoreSecret::generate();
        let c = s.recipient().encrypt(b"loitering in aisle 3").unwrap();
        assert!(
            !c.windows(9).any(|w| w == b"loitering"),
            "ciphertext does not carry the plaintext"
        );
        assert_eq!(s.decrypt(&c).unwrap(), b"loitering in aisle 3");
        let other = StoreSecret::generate();
        assert!(other.decrypt(&c).is_err());
        let again = StoreSecret::parse(&s.expose()).unwrap();
        assert_eq!(again.decrypt(&c).unwrap(), b"loitering in aisle 3");
        assert!(StoreSecret::parse("AGE-SECRET-KEY-1NOPE").is_err());
        assert!(StoreRecipient::parse(&s.recipient().to_string()).is_ok());
    }
}
