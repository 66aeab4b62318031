//! Records of the replicated log: immutable, self-certifying, and of bounded size.
//!
//! On the wire and on disk a record is one version byte followed by its CBOR encoding. The origin's
//! Ed25519 signature covers the version and every other field, so any node can relay a record and any
//! node can check it came, unaltered, from its origin.

use std::fmt;

use libp2p_identity::{ed25519, Keypair, PeerId, PublicKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::hlc::Timestamp;

pub const WIRE_VERSION: u8 = 1;
/// Largest encoded record accepted from anyone.
pub const MAX_RECORD_BYTES: usize = 64 * 1024;
/// Largest payload a node will seal (leaves room for the envelope).
pub const MAX_CIPHERTEXT_BYTES: usize = 60 * 1024;
pub const MAX_STORE_ID_BYTES: usize = 64;

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
    Malformed(String),
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

fn cbor<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
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
        cbor(&Signed {
            version: WIRE_VERSION,
            store: &self.store,
            origin: &self.origin,
            seq: self.seq,
            hlc: &self.hlc,
            kind: self.kind,
            ciphertext: &self.ciphertext,
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![WIRE_VERSION];
        out.extend(cbor(self));
        out
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
        ciborium::from_reader(body).map_err(|e| RecordError::Malformed(e.to_string()))
    }

    /// Checks that the record belongs to `store`, is well-formed, and is signed by its origin.
    pub fn verify(&self, store: &str) -> Result<(), RecordError> {
        self.verify_with(store, self.origin.public_key().as_ref())
    }

    /// [`Record::verify`] with the origin's key already parsed (`None`: not a key), for checking
    /// many records of few origins: parsing a key costs a third of a signature check.
    pub fn verify_with(&self, store: &str, key: Option<&PublicKey>) -> Result<(), RecordError> {
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
        let key = key.ok_or(RecordError::BadOrigin)?;
        if key.verify(&self.signed_bytes(), &self.signature) {
            Ok(())
        } else {
            Err(RecordError::BadSignature)
        }
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
