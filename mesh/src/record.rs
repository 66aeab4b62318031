//! Records of the replicated log: immutable, self-certifying, and of bounded size.
//!
//! On the wire and on disk a record is one version byte followed by its CBOR encoding. The origin's
//! Ed25519 signature covers the version and every other field, so any node can relay a record and any
//! node can check it came, unaltered, from its origin.

use std::fmt;
use std::sync::Arc;

use libp2p_identity::{ed25519, Keypair, PeerId, PublicKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::hlc::Timestamp;

pub const WIRE_VERSION: u8 = 1;
/// Largest encoded record accepted from anyone.
pub const MAX_RECORD_BYTES: usize = 64 * 1024;
/// Largest payload a node will seal (leaves room for the envelope).
pub const MAX_CIPHERTEXT_BYTES: usize = 60 * 1024;
pub const MAX_STORE_ID_BYTES: usize = 64;

/// The first byte of a bundle: records a node appended together, gossiped as one message so that
/// gossipsub signs and checks one message, not one per record (500 records appended at once meant
/// 500 gossipsub signatures of about 18 µs each). Each record in it is still signed by its origin and checked.
pub const BUNDLE_TAG: u8 = 0xB1;
/// At most this many records in a bundle.
pub const MAX_BUNDLE_RECORDS: usize = 256;
/// A bundle's encoded size: one record of the largest size fits, with its framing.
pub const MAX_BUNDLE_BYTES: usize = MAX_RECORD_BYTES + 64;
/// Bundles are packed to this size (a larger record goes alone): gossip messages near the 64 KiB
/// limit were lost between two nodes on loopback (some bundles of a 600-record append never
/// arrived; anti-entropy brought their records a second later), 16 KiB ones never were.
const BUNDLE_TARGET_BYTES: usize = 16 * 1024;
/// Framing per record in a bundle (its length).
const BUNDLE_LEN_BYTES: usize = 4;

/// Packs encoded records into bundles: in order, each of about 16 KiB and at most
/// [`MAX_BUNDLE_RECORDS`]. Records are at most [`MAX_RECORD_BYTES`], so each fits one.
pub fn bundles<'a>(encoded: impl IntoIterator<Item = &'a [u8]>) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut n = 0usize;
    let start = |b: &mut Vec<u8>| b.extend([BUNDLE_TAG, 0, 0]);
    for r in encoded {
        if n > 0 && (n == MAX_BUNDLE_RECORDS || cur.len() + BUNDLE_LEN_BYTES + r.len() > BUNDLE_TARGET_BYTES) {
            out.push(finish_bundle(std::mem::take(&mut cur), n));
            n = 0;
        }
        if n == 0 {
            start(&mut cur);
        }
        cur.extend((r.len() as u32).to_be_bytes());
        cur.extend_from_slice(r);
        n += 1;
    }
    if n > 0 {
        out.push(finish_bundle(cur, n));
    }
    out
}

fn finish_bundle(mut b: Vec<u8>, n: usize) -> Vec<u8> {
    // n <= MAX_BUNDLE_RECORDS, within u16.
    b[1..3].copy_from_slice(&(n as u16).to_be_bytes());
    b
}

/// Reads a bundle's records. Anything malformed refuses the whole bundle: one node made it from
/// its own records, so a bad part is its fault.
pub fn decode_bundle(bytes: &[u8]) -> Result<Vec<Record>, RecordError> {
    if bytes.len() > MAX_BUNDLE_BYTES {
        return Err(RecordError::TooLarge(bytes.len()));
    }
    let bad = |why: &str| RecordError::Malformed(format!("bundle: {why}").into());
    let (&tag, rest) = bytes.split_first().ok_or(RecordError::Empty)?;
    if tag != BUNDLE_TAG {
        return Err(RecordError::Version(tag));
    }
    let (n, mut rest) = rest.split_first_chunk::<2>().ok_or_else(|| bad("no count"))?;
    let n = u16::from_be_bytes(*n) as usize;
    if n == 0 || n > MAX_BUNDLE_RECORDS {
        return Err(bad("count out of range"));
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let (len, tail) = rest.split_first_chunk::<4>().ok_or_else(|| bad("truncated"))?;
        let len = u32::from_be_bytes(*len) as usize;
        if len > tail.len() {
            return Err(bad("truncated"));
        }
        let (r, tail) = tail.split_at(len);
        out.push(Record::decode(r)?);
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(bad("trailing bytes"));
    }
    Ok(out)
}

/// An origin's key as record signatures are checked: Ed25519 under the ZIP 215 rules (the cofactored
/// equation RFC 8032 allows, canonical `s`), with which a batch check agrees exactly with checking
/// each signature alone, so every node takes the same records however it checks them. Signatures
/// made by any Ed25519 signer (libp2p's, here) are valid under both rules; only a crafted one with a
/// small-order component tells them apart, and nodes of one version all apply the same.
pub type VerifyingKey = ed25519_zebra::VerificationKey;

/// A node's identity in the log: its Ed25519 public key (the key behind its libp2p PeerId).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Origin(pub [u8; 32]);

impl Origin {
    pub fn of(keypair: &Keypair) -> Option<Self> {
        keypair
            .clone()
            .try_into_ed25519()
            .ok()
            .map(|k| Origin(k.public().to_bytes()))
    }

    pub fn public_key(&self) -> Option<PublicKey> {
        ed25519::PublicKey::try_from_bytes(&self.0).ok().map(PublicKey::from)
    }

    /// The key this origin's signatures are checked with: `None` for bytes that are not a point,
    /// or a point of small order (for which anyone could forge a signature that checks).
    pub fn verifying_key(&self) -> Option<VerifyingKey> {
        let point = curve25519_dalek::edwards::CompressedEdwardsY(self.0).decompress()?;
        if point.is_small_order() {
            return None;
        }
        VerifyingKey::try_from(ed25519_zebra::VerificationKeyBytes::from(self.0)).ok()
    }

    pub fn peer_id(&self) -> Option<PeerId> {
        self.public_key().map(|k| k.to_peer_id())
    }
}

impl fmt::Debug for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.peer_id() {
            Some(p) => write!(f, "{p}"),
            None => write!(f, "invalid-origin"),
        }
    }
}

impl Serialize for Origin {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Origin {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let b: serde_bytes::ByteBuf = Deserialize::deserialize(d)?;
        let arr: [u8; 32] = b
            .as_ref()
            .try_into()
            .map_err(|_| serde::de::Error::custom("origin must be 32 bytes"))?;
        Ok(Origin(arr))
    }
}

/// What a record's (encrypted) payload is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    /// A loss-prevention event from a camera.
    Event,
    /// An operator action on an incident (acknowledge, resolve, note).
    Action,
    /// A node admitted to the store, signed by the member that admitted it.
    Member,
    /// The store's keys of a new key epoch, sealed to each member's node key (written after a
    /// revocation).
    Keys,
    /// A tablet user of the whole store (name, role, argon2 hash), set or removed on one node.
    User,
}

impl RecordKind {
    /// Kept past the retention period: who belongs to the store, the keys it writes under and its
    /// users are needed for as long as the store exists, not for 30 days.
    pub fn is_kept(self) -> bool {
        matches!(self, RecordKind::Member | RecordKind::Keys | RecordKind::User)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub store: String,
    pub origin: Origin,
    /// Per origin, gap-free, from 1.
    pub seq: u64,
    pub hlc: Timestamp,
    pub kind: RecordKind,
    #[serde(with = "serde_bytes")]
    pub ciphertext: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

/// Why a record was refused. Each reason is counted separately in the node's metrics.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("empty record")]
    Empty,
    #[error("unknown wire version {0}")]
    Version(u8),
    #[error("malformed record: {0}")]
    Malformed(#[source] Cause),
    #[error("record belongs to store {0:?}")]
    WrongStore(String),
    #[error("origin is not an Ed25519 public key")]
    BadOrigin,
    #[error("signature does not verify")]
    BadSignature,
    #[error("sequence numbers start at 1")]
    ZeroSeq,
    #[error("payload too large")]
    PayloadTooLarge,
    #[error("the signing key is not Ed25519")]
    UnsupportedKey,
}

/// Why a record is malformed, kept as the source of [`RecordError::Malformed`]: shared, so that the
/// verdict stays `Clone` (one is copied to every record of a batch) and comparable (two are equal when
/// they say the same).
#[derive(Clone, Debug)]
pub struct Cause(Arc<dyn std::error::Error + Send + Sync>);

impl Cause {
    pub fn new(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Cause(Arc::new(e))
    }
}

impl From<&str> for Cause {
    fn from(why: &str) -> Self {
        Cause(Arc::from(Box::<dyn std::error::Error + Send + Sync>::from(why)))
    }
}

impl From<String> for Cause {
    fn from(why: String) -> Self {
        Cause(Arc::from(Box::<dyn std::error::Error + Send + Sync>::from(why)))
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

// In a chain it stands for the error it holds: that error's causes come next.
impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl PartialEq for Cause {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

impl Eq for Cause {}

impl RecordError {
    /// A short stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            RecordError::TooLarge(_) | RecordError::PayloadTooLarge => "too_large",
            RecordError::Empty | RecordError::Version(_) | RecordError::Malformed(_) => "malformed",
            RecordError::WrongStore(_) => "wrong_store",
            RecordError::BadOrigin | RecordError::BadSignature | RecordError::UnsupportedKey => "bad_signature",
            RecordError::ZeroSeq => "malformed",
        }
    }
}

/// The bytes the origin signs: every field but the signature, after the version.
#[derive(Serialize)]
struct Signed<'a> {
    version: u8,
    store: &'a str,
    origin: &'a Origin,
    seq: u64,
    hlc: &'a Timestamp,
    kind: RecordKind,
    #[serde(with = "serde_bytes")]
    ciphertext: &'a [u8],
}

/// `v` as CBOR after `prefix`, into a buffer of `capacity`: grown from empty, a record's encoding
/// was reallocated and copied eight times (a tenth of a catch-up's time went there).
fn cbor<T: Serialize>(prefix: &[u8], v: &T, capacity: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(capacity);
    out.extend_from_slice(prefix);
    // Writing CBOR into a Vec cannot fail for these plain types.
    let _ = ciborium::into_writer(v, &mut out);
    out
}

impl Record {
    /// Signs a new record with the origin's key.
    pub fn seal(
        store: &str,
        key: &Keypair,
        seq: u64,
        hlc: Timestamp,
        kind: RecordKind,
        ciphertext: Vec<u8>,
    ) -> Result<Self, RecordError> {
        if ciphertext.len() > MAX_CIPHERTEXT_BYTES {
            return Err(RecordError::PayloadTooLarge);
        }
        let origin = Origin::of(key).ok_or(RecordError::UnsupportedKey)?;
        let mut r = Record {
            store: store.to_string(),
            origin,
            seq,
            hlc,
            kind,
            ciphertext,
            signature: Vec::new(),
        };
        r.signature = key.sign(&r.signed_bytes()).map_err(|_| RecordError::UnsupportedKey)?;
        Ok(r)
    }

    fn signed_bytes(&self) -> Vec<u8> {
        let signed = Signed {
            version: WIRE_VERSION,
            store: &self.store,
            origin: &self.origin,
            seq: self.seq,
            hlc: &self.hlc,
            kind: self.kind,
            ciphertext: &self.ciphertext,
        };
        cbor(&[], &signed, self.encoded_size_hint())
    }

    pub fn encode(&self) -> Vec<u8> {
        cbor(&[WIRE_VERSION], self, self.encoded_size_hint())
    }

    /// At least the encoded size: the variable fields, and the field names and fixed fields.
    fn encoded_size_hint(&self) -> usize {
        self.ciphertext.len() + self.store.len() + self.signature.len() + 192
    }

    /// Parses bytes from the wire or disk. Does not verify; see [`Record::verify`].
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(RecordError::TooLarge(bytes.len()));
        }
        let (&version, body) = bytes.split_first().ok_or(RecordError::Empty)?;
        if version != WIRE_VERSION {
            return Err(RecordError::Version(version));
        }
        ciborium::from_reader(body).map_err(|e| RecordError::Malformed(Cause::new(e)))
    }

    /// Checks that the record belongs to `store`, is well-formed, and is signed by its origin.
    pub fn verify(&self, store: &str) -> Result<(), RecordError> {
        self.verify_with(store, self.origin.verifying_key().as_ref())
    }

    /// [`Record::verify`] with the origin's key already parsed (`None`: not a key), for checking
    /// many records of few origins: parsing a key costs a third of a signature check.
    pub fn verify_with(&self, store: &str, key: Option<&VerifyingKey>) -> Result<(), RecordError> {
        self.check_fields(store)?;
        let key = key.ok_or(RecordError::BadOrigin)?;
        let sig = ed25519_zebra::Signature::from_slice(&self.signature).map_err(|_| RecordError::BadSignature)?;
        key.verify(&sig, &self.signed_bytes())
            .map_err(|_| RecordError::BadSignature)
    }

    /// Everything [`Record::verify_with`] checks but the signature equation, and what that equation
    /// needs (for [`ed25519_zebra::batch::Verifier`]).
    pub fn batch_item(
        &self,
        store: &str,
        key: Option<&VerifyingKey>,
    ) -> Result<ed25519_zebra::batch::Item, RecordError> {
        self.check_fields(store)?;
        let key = key.ok_or(RecordError::BadOrigin)?;
        let sig = ed25519_zebra::Signature::from_slice(&self.signature).map_err(|_| RecordError::BadSignature)?;
        let bytes = ed25519_zebra::VerificationKeyBytes::from(*key);
        Ok(ed25519_zebra::batch::Item::from((bytes, sig, &self.signed_bytes())))
    }

    fn check_fields(&self, store: &str) -> Result<(), RecordError> {
        if self.store != store {
            return Err(RecordError::WrongStore(
                self.store.chars().take(MAX_STORE_ID_BYTES).collect(),
            ));
        }
        if self.seq == 0 {
            return Err(RecordError::ZeroSeq);
        }
        if self.ciphertext.len() > MAX_CIPHERTEXT_BYTES {
            return Err(RecordError::PayloadTooLarge);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(key: &Keypair) -> Record {
        Record::seal(
            "store-1",
            key,
            7,
            Timestamp {
                wall_ms: 1000,
                logical: 2,
            },
            RecordKind::Event,
            vec![1, 2, 3],
        )
        .unwrap()
    }

    #[test]
    fn the_encoding_fits_the_buffer_made_for_it() {
        let key = Keypair::generate_ed25519();
        for size in [0, 3, 400, MAX_CIPHERTEXT_BYTES] {
            let hlc = Timestamp {
                wall_ms: u64::MAX,
                logical: u32::MAX,
            };
            let r = Record::seal(
                &"s".repeat(MAX_STORE_ID_BYTES),
                &key,
                u64::MAX,
                hlc,
                RecordKind::Event,
                vec![7; size],
            )
            .unwrap();
            assert!(
                r.encode().len() <= r.encoded_size_hint(),
                "{} > {}",
                r.encode().len(),
                r.encoded_size_hint()
            );
            assert!(r.signed_bytes().len() <= r.encoded_size_hint());
        }
    }

    #[test]
    fn sealed_records_round_trip_and_verify() {
        let key = Keypair::generate_ed25519();
        let r = sample(&key);
        let bytes = r.encode();
        assert_eq!(bytes[0], WIRE_VERSION);
        let back = Record::decode(&bytes).unwrap();
        assert_eq!(back, r);
        back.verify("store-1").unwrap();
        assert_eq!(back.origin.peer_id(), Some(key.public().to_peer_id()));
    }

    #[test]
    fn bundles_carry_records_in_order_within_their_bounds() {
        let key = Keypair::generate_ed25519();
        let seal = |seq: u64, size: usize| {
            let hlc = Timestamp {
                wall_ms: 1000,
                logical: 0,
            };
            Record::seal("store-1", &key, seq, hlc, RecordKind::Event, vec![9; size]).unwrap()
        };
        // 600 small records, then a run of the largest ones.
        let mut records: Vec<Record> = (1..=600).map(|s| seal(s, 100)).collect();
        records.extend((601..=606).map(|s| seal(s, MAX_CIPHERTEXT_BYTES)));
        let encoded: Vec<Vec<u8>> = records.iter().map(Record::encode).collect();
        let packed = bundles(encoded.iter().map(Vec::as_slice));
        let mut back = Vec::new();
        for (i, b) in packed.iter().enumerate() {
            assert!(b.len() <= MAX_BUNDLE_BYTES);
            let part = decode_bundle(b).unwrap();
            assert!(!part.is_empty() && part.len() <= MAX_BUNDLE_RECORDS);
            if part.iter().any(|r| r.ciphertext.len() == MAX_CIPHERTEXT_BYTES) {
                assert_eq!(part.len(), 1, "a large record goes alone");
            } else if let Some(next) = packed.get(i + 1) {
                // Full: the next bundle's first record would not have fitted.
                let first = decode_bundle(next).unwrap()[0].encode().len();
                assert!(
                    b.len() + BUNDLE_LEN_BYTES + first > BUNDLE_TARGET_BYTES,
                    "bundle {i} was not full"
                );
                assert!(b.len() <= BUNDLE_TARGET_BYTES);
            }
            back.extend(part);
        }
        assert_eq!(back, records, "every record, in order");
        assert!(packed.len() > 6 + 1, "the small records took several bundles");
        assert!(bundles(std::iter::empty()).is_empty());
    }

    #[test]
    fn a_malformed_bundle_is_refused_whole() {
        let key = Keypair::generate_ed25519();
        let good = bundles([sample(&key).encode().as_slice(), sample(&key).encode().as_slice()]);
        let good = &good[0];
        assert_eq!(decode_bundle(good).unwrap().len(), 2);
        let mut wrong_count = good.clone();
        wrong_count[2] = 3;
        let mut zero = good.clone();
        zero[1..3].copy_from_slice(&[0, 0]);
        let mut long = good.clone();
        long[3..7].copy_from_slice(&u32::MAX.to_be_bytes());
        let mut bad_record = good.clone();
        bad_record[7] = 99;
        let trailing = [good.as_slice(), &[0]].concat();
        for b in [
            Vec::new(),
            vec![BUNDLE_TAG],
            sample(&key).encode(),
            wrong_count,
            zero,
            long,
            bad_record,
            trailing,
            good[..good.len() - 1].to_vec(),
            vec![BUNDLE_TAG; MAX_BUNDLE_BYTES + 1],
        ] {
            assert!(decode_bundle(&b).is_err(), "{:?}", &b[..b.len().min(12)]);
        }
    }

    #[test]
    fn tampering_with_any_field_breaks_the_signature() {
        let key = Keypair::generate_ed25519();
        let r = sample(&key);
        let mut variants = vec![r.clone(), r.clone(), r.clone(), r.clone(), r.clone()];
        variants[0].seq = 8;
        variants[1].hlc.logical = 3;
        variants[2].kind = RecordKind::Action;
        variants[3].ciphertext[0] ^= 1;
        variants[4].origin = Origin::of(&Keypair::generate_ed25519()).unwrap();
        for v in variants {
            assert_eq!(v.verify("store-1"), Err(RecordError::BadSignature), "{v:?}");
        }
        assert!(matches!(r.verify("store-2"), Err(RecordError::WrongStore(_))));
    }

    #[test]
    fn a_malformed_record_keeps_the_decoders_error_as_its_source() {
        let Err(e) = Record::decode(&[WIRE_VERSION, 0xff, 0x00]) else {
            panic!("decoded garbage");
        };
        let cause = std::error::Error::source(&e).map(|s| s.to_string());
        assert_eq!(Some(e.to_string()), cause.map(|c| format!("malformed record: {c}")));
        assert_eq!(e.clone(), e);
        assert_ne!(e, RecordError::Malformed("something else".into()));
    }

    #[test]
    fn malformed_oversized_and_unknown_version_are_refused() {
        let key = Keypair::generate_ed25519();
        let mut bytes = sample(&key).encode();
        assert_eq!(Record::decode(&[]), Err(RecordError::Empty));
        assert!(matches!(
            Record::decode(&bytes[..bytes.len() - 3]),
            Err(RecordError::Malformed(_))
        ));
        assert_eq!(
            Record::decode(&vec![WIRE_VERSION; MAX_RECORD_BYTES + 1]),
            Err(RecordError::TooLarge(MAX_RECORD_BYTES + 1))
        );
        bytes[0] = 9;
        assert_eq!(Record::decode(&bytes), Err(RecordError::Version(9)));
        assert!(matches!(
            Record::decode(&[WIRE_VERSION, 0xff, 0x00]),
            Err(RecordError::Malformed(_))
        ));
        let big = Record::seal(
            "s",
            &key,
            1,
            Timestamp::default(),
            RecordKind::Event,
            vec![0; MAX_CIPHERTEXT_BYTES + 1],
        );
        assert_eq!(big, Err(RecordError::PayloadTooLarge));
    }
}
