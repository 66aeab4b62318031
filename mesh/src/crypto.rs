//! The store's encryption: every record payload is encrypted to the store's age (X25519) recipient,
//! so only nodes of the store (which hold its identity) can read it, whoever relays or stores it.
//!
//! # Records: one age exchange per writer, not per record
//!
//! age encrypts each message to a recipient with a fresh X25519 exchange: 66 µs to write and 66 µs
//! to read on this project's reference machine, two thirds of a durable append's cost and the bound
//! on how fast a node can read a catch-up. So a payload is sealed the way age seals a file, with the
//! exchange shared: each writer (each [`StoreRecipient`]) draws one random data key and age-encrypts
//! it to the store's recipient once; every record it writes carries that wrapped key and its payload
//! under XChaCha20-Poly1305 with the data key and a random 24-byte nonce:
//!
//! ```text
//! "lpm1" | len (u16, big-endian) | wrapped data key (an age file, len bytes) | nonce (24) | sealed payload
//! ```
//!
//! The wrapped key and the header are the AEAD's associated data, so a payload cannot be moved under
//! another header. A reader unwraps each data key once (with whichever of its store keys opens it)
//! and keeps it in a bounded cache, refusals included; a record is still readable on its own, by any
//! holder of the store's identity, and writing still needs only the public recipient. Payloads that
//! are whole age files (written before this format) are read as before.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::Digest;

use curve25519_dalek::edwards::CompressedEdwardsY;
use curve25519_dalek::montgomery::MontgomeryPoint;

use crate::keys::EpochKey;

/// Any error, kept as the source of ours: its own message and its causes stay readable.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("not a valid store secret key")]
    BadSecret,
    #[error("not a valid store recipient")]
    BadRecipient,
    #[error("encryption failed: {0}")]
    Encrypt(#[source] BoxError),
    #[error("cannot decrypt: {0}")]
    Decrypt(#[source] BoxError),
}

/// What starts a payload in the shared-exchange format (see the module's notes). An age file starts
/// with `age-encryption.org/`, so the two never meet.
const SEALED_MAGIC: &[u8; 4] = b"lpm1";
const NONCE_BYTES: usize = 24;
/// Data keys a reader keeps unwrapped (and wrapped keys it knows it cannot open), per store key. A
/// store has a few dozen writers at most, each with one data key per start and key epoch.
const DATA_KEY_CACHE: usize = 1024;
/// Longer than any wrapped 32-byte key age writes (about 230 bytes), and within the u16 length.
const MAX_WRAPPED_BYTES: usize = 1024;

/// The store's secret (every node of the store holds it). Its text form is an age secret key.
pub struct StoreSecret {
    identity: age::x25519::Identity,
    /// Unwrapped data keys by the SHA-256 of their wrapped form; `None`: not this key's.
    cache: Mutex<DataKeyCache>,
}

#[derive(Default)]
struct DataKeyCache {
    keys: HashMap<[u8; 32], Option<[u8; 32]>>,
    order: VecDeque<[u8; 32]>,
}

impl DataKeyCache {
    fn get(&self, id: &[u8; 32]) -> Option<Option<[u8; 32]>> {
        self.keys.get(id).copied()
    }

    fn put(&mut self, id: [u8; 32], key: Option<[u8; 32]>) {
        if self.keys.insert(id, key).is_none() {
            self.order.push_back(id);
        }
        while self.order.len() > DATA_KEY_CACHE {
            if let Some(old) = self.order.pop_front() {
                self.keys.remove(&old);
            }
        }
    }
}

impl StoreSecret {
    fn new(identity: age::x25519::Identity) -> Self {
        Self {
            identity,
            cache: Mutex::new(DataKeyCache::default()),
        }
    }

    pub fn generate() -> Self {
        Self::new(age::x25519::Identity::generate())
    }

    pub fn parse(s: &str) -> Result<Self, CryptoError> {
        age::x25519::Identity::from_str(s.trim())
            .map(Self::new)
            .map_err(|_| CryptoError::BadSecret)
    }

    /// The secret as text, for the node's key file (owner-only permissions; never logged).
    pub fn expose(&self) -> String {
        use age::secrecy::ExposeSecret;
        self.identity.to_string().expose_secret().to_string()
    }

    pub fn recipient(&self) -> StoreRecipient {
        StoreRecipient::from(self.identity.to_public())
    }

    pub fn decrypt(&self, ciphertext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let Some(sealed) = Sealed::parse(ciphertext)? else {
            return age::decrypt(&self.identity, ciphertext).map_err(|e| CryptoError::Decrypt(e.into()));
        };
        let id: [u8; 32] = sha2::Sha256::digest(sealed.wrapped).into();
        let cached = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(&id);
        let key = match cached {
            Some(k) => k,
            None => {
                let k = age::decrypt(&self.identity, sealed.wrapped)
                    .ok()
                    .and_then(|k| <[u8; 32]>::try_from(k.as_slice()).ok());
                self.cache.lock().unwrap_or_else(|p| p.into_inner()).put(id, k);
                k
            }
        };
        let key = key.ok_or_else(|| CryptoError::Decrypt("the data key is not sealed to this store key".into()))?;
        sealed.open(&key)
    }
}

/// A payload in the shared-exchange format, split into its parts (borrowed).
struct Sealed<'a> {
    header: &'a [u8],
    wrapped: &'a [u8],
    nonce: &'a [u8],
    body: &'a [u8],
}

impl<'a> Sealed<'a> {
    /// `None`: not this format (an age file, or anything else age will refuse).
    fn parse(c: &'a [u8]) -> Result<Option<Self>, CryptoError> {
        let Some(rest) = c.strip_prefix(SEALED_MAGIC.as_slice()) else {
            return Ok(None);
        };
        let bad = || CryptoError::Decrypt("malformed sealed payload".into());
        let (len, rest) = rest.split_first_chunk::<2>().ok_or_else(bad)?;
        let len = u16::from_be_bytes(*len) as usize;
        if len > MAX_WRAPPED_BYTES || rest.len() < len + NONCE_BYTES {
            return Err(bad());
        }
        let (wrapped, rest) = rest.split_at(len);
        let (nonce, body) = rest.split_at(NONCE_BYTES);
        Ok(Some(Sealed {
            header: &c[..SEALED_MAGIC.len() + 2 + len],
            wrapped,
            nonce,
            body,
        }))
    }

    fn open(&self, key: &[u8; 32]) -> Result<Vec<u8>, CryptoError> {
        XChaCha20Poly1305::new(key.into())
            .decrypt(
                XNonce::from_slice(self.nonce),
                Payload {
                    msg: self.body,
                    aad: self.header,
                },
            )
            .map_err(|_| CryptoError::Decrypt("the payload does not open with its data key".into()))
    }
}

/// Where payloads are encrypted to. Clones share one data key (see the module's notes).
#[derive(Clone)]
pub struct StoreRecipient {
    age: age::x25519::Recipient,
    data: Arc<OnceLock<DataKey>>,
}

struct DataKey {
    cipher: XChaCha20Poly1305,
    /// Magic, length and the wrapped key: the start of every payload, and its associated data.
    header: Vec<u8>,
}

impl From<age::x25519::Recipient> for StoreRecipient {
    fn from(age: age::x25519::Recipient) -> Self {
        Self {
            age,
            data: Arc::new(OnceLock::new()),
        }
    }
}

impl StoreRecipient {
    pub fn parse(s: &str) -> Result<Self, CryptoError> {
        age::x25519::Recipient::from_str(s.trim())
            .map(Self::from)
            .map_err(|_| CryptoError::BadRecipient)
    }

    fn data_key(&self) -> Result<&DataKey, CryptoError> {
        if let Some(d) = self.data.get() {
            return Ok(d);
        }
        let key: [u8; 32] = rand::random();
        let wrapped = age::encrypt(&self.age, &key).map_err(|e| CryptoError::Encrypt(e.into()))?;
        let len = u16::try_from(wrapped.len())
            .ok()
            .filter(|l| usize::from(*l) <= MAX_WRAPPED_BYTES)
            .ok_or_else(|| CryptoError::Encrypt("the wrapped data key is too long".into()))?;
        let header = [SEALED_MAGIC.as_slice(), &len.to_be_bytes(), &wrapped].concat();
        // Two threads may both draw a key here; one wins and both use it.
        Ok(self.data.get_or_init(|| DataKey {
            cipher: XChaCha20Poly1305::new((&key).into()),
            header,
        }))
    }

    pub fn encrypt(&self, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let d = self.data_key()?;
        let nonce: [u8; NONCE_BYTES] = rand::random();
        let body = d
            .cipher
            .encrypt(
                (&nonce).into(),
                Payload {
                    msg: plaintext,
                    aad: &d.header,
                },
            )
            // Its message only: aead's error is no std::error::Error without the `std` feature.
            .map_err(|e| CryptoError::Encrypt(e.to_string().into()))?;
        Ok([d.header.as_slice(), &nonce, &body].concat())
    }
}

impl std::fmt::Display for StoreRecipient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.age)
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
    // Its message only: hkdf's error is no std::error::Error without the `std` feature.
    hk.expand(SEAL_INFO, &mut key)
        .map_err(|e| CryptoError::Encrypt(e.to_string().into()))?;
    Ok(key)
}

/// Seals `plaintext` so that only the holder of the node key `node` (an Ed25519 public key) can open
/// it: an ephemeral X25519 exchange with the node key's X25519 form, then ChaCha20-Poly1305 under a
/// key used once (so the nonce is fixed).
pub fn seal_to_node(node: &[u8; 32], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let to = node_x25519(node)?;
    let ephemeral_secret: [u8; 32] = rand::random();
    let ephemeral = MontgomeryPoint::mul_base_clamped(ephemeral_secret);
    let key = seal_key(&to.mul_clamped(ephemeral_secret), &ephemeral, &to)?;
    let sealed = chacha20poly1305::ChaCha20Poly1305::new((&key).into())
        .encrypt(&chacha20poly1305::Nonce::default(), plaintext)
        // Its message only: aead's error is no std::error::Error without the `std` feature.
        .map_err(|e| CryptoError::Encrypt(e.to_string().into()))?;
    Ok([ephemeral.as_bytes().as_slice(), &sealed].concat())
}

/// Opens what [`seal_to_node`] sealed to this node's key.
pub fn open_with_node_key(key: &libp2p_identity::Keypair, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let bad = |why: &str| CryptoError::Decrypt(why.into());
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
    fn a_writer_wraps_its_data_key_once_and_each_record_opens_on_its_own() {
        let s = StoreSecret::generate();
        let writer = s.recipient();
        let a = writer.encrypt(b"loitering in aisle 3").unwrap();
        let b = writer.clone().encrypt(b"loitering in aisle 3").unwrap();
        assert!(a.starts_with(SEALED_MAGIC));
        let header = Sealed::parse(&a).unwrap().unwrap().header.to_vec();
        assert!(b.starts_with(&header), "clones share one wrapped data key");
        assert_ne!(a, b, "a fresh nonce per payload");
        assert!(!a.windows(9).any(|w| w == b"loitering"));
        // A reader that has never seen this writer: a fresh secret from the same text.
        let reader = StoreSecret::parse(&s.expose()).unwrap();
        assert_eq!(reader.decrypt(&b).unwrap(), b"loitering in aisle 3");
        assert_eq!(reader.decrypt(&a).unwrap(), b"loitering in aisle 3");
        // Another writer of the same store has its own data key; both read.
        let other = s.recipient().encrypt(b"x").unwrap();
        assert!(!other.starts_with(&header));
        assert_eq!(reader.decrypt(&other).unwrap(), b"x");
        // Payloads age wrote whole (before this format) still open.
        let old = age::encrypt(&s.identity.to_public(), b"before").unwrap();
        assert_eq!(reader.decrypt(&old).unwrap(), b"before");
    }

    #[test]
    fn sealed_payloads_refuse_other_keys_edits_and_malformed_headers() {
        let s = StoreSecret::generate();
        let c = s.recipient().encrypt(b"exit without checkout").unwrap();
        let stranger = StoreSecret::generate();
        for _ in 0..2 {
            // Twice: the second refusal comes from the cache of keys that are not this one's.
            assert!(stranger.decrypt(&c).is_err());
        }
        assert_eq!(s.decrypt(&c).unwrap(), b"exit without checkout");
        for i in [0, 5, 40, c.len() - 30, c.len() - 1] {
            let mut t = c.clone();
            t[i] ^= 1;
            assert!(s.decrypt(&t).is_err(), "a change at byte {i} is refused");
        }
        // Another writer's header in front of this payload: refused (the header is bound in).
        let mine = Sealed::parse(&c).unwrap().unwrap();
        let other = s.recipient().encrypt(b"x").unwrap();
        let theirs = Sealed::parse(&other).unwrap().unwrap();
        let spliced = [theirs.header, mine.nonce, mine.body].concat();
        assert!(s.decrypt(&spliced).is_err());
        for bad in [
            b"lpm1".to_vec(),
            b"lpm1\xff\xff".to_vec(),
            [b"lpm1".as_slice(), &[0, 10], &[0; 20]].concat(),
            c[..c.len().min(100)].to_vec(),
            Vec::new(),
        ] {
            assert!(s.decrypt(&bad).is_err());
        }
    }

    #[test]
    fn the_data_key_cache_stays_bounded() {
        let s = StoreSecret::generate();
        let stranger = StoreSecret::generate();
        for _ in 0..DATA_KEY_CACHE + 10 {
            // Every recipient value draws its own data key.
            let c = stranger.recipient().encrypt(b"x").unwrap();
            assert!(s.decrypt(&c).is_err());
        }
        let cache = s.cache.lock().unwrap();
        assert_eq!(cache.keys.len(), DATA_KEY_CACHE);
        assert_eq!(cache.order.len(), DATA_KEY_CACHE);
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
