//! The envelope a store sends HQ: who, which period, from which log state, the summary encrypted to HQ,
//! and the store's signature over all of it.
//!
//! Wire form: one version byte, then CBOR. The signature (the store's Ed25519 key, registered at HQ)
//! covers a domain-separation prefix, the version and every other field, so HQ can tell it came from
//! that store unaltered before it spends anything on decryption.

use std::io::Write;

use libp2p_identity::{ed25519, Keypair, PublicKey};
use serde::{Deserialize, Serialize};

use crate::summary::{InvalidSummary, Summary};
use crate::vv::VersionVector;

pub const ENVELOPE_VERSION: u8 = 1;
/// Largest envelope HQ reads (a busy store's hourly summary is a few KiB).
pub const MAX_ENVELOPE_BYTES: usize = 512 * 1024;
const SIGNING_CONTEXT: &[u8] = b"lpmesh/hq-envelope/1";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub store: String,
    pub period_start_ms: i64,
    pub period_secs: u32,
    pub vv: VersionVector,
    #[serde(with = "serde_bytes")]
    pub ciphertext: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

#[derive(Serialize)]
struct Signed<'a> {
    store: &'a str,
    period_start_ms: i64,
    period_secs: u32,
    vv: &'a VersionVector,
    #[serde(with = "serde_bytes")]
    ciphertext: &'a [u8],
}

/// Any error, kept as the source of ours: its own message and its causes stay readable.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why HQ refused an envelope; each is counted separately and has its own HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("envelope of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("malformed envelope: {0}")]
    Malformed(#[source] BoxError),
    #[error("unknown envelope version {0}")]
    Version(u8),
    #[error("store {0:?} is not registered")]
    UnknownStore(String),
    #[error("signature does not verify against the store's registered key")]
    BadSignature,
    #[error("cannot decrypt: {0}")]
    Undecryptable(#[source] BoxError),
    #[error("malformed summary: {0}")]
    BadSummary(#[source] BoxError),
    #[error(transparent)]
    Invalid(#[from] InvalidSummary),
    #[error("cannot seal: {0}")]
    Seal(#[source] BoxError),
}

impl EnvelopeError {
    /// The metric label of this refusal.
    pub fn reason(&self) -> &'static str {
        match self {
            EnvelopeError::TooLarge(_) => "too_large",
            EnvelopeError::Malformed(_) | EnvelopeError::Version(_) => "malformed",
            EnvelopeError::UnknownStore(_) => "unknown_store",
            EnvelopeError::BadSignature => "bad_signature",
            EnvelopeError::Undecryptable(_) => "undecryptable",
            EnvelopeError::BadSummary(_) | EnvelopeError::Invalid(_) => "bad_summary",
            EnvelopeError::Seal(_) => "seal",
        }
    }
}

fn signed_bytes(e: &Envelope) -> Vec<u8> {
    let mut out = Vec::with_capacity(e.ciphertext.len() + 256);
    out.extend_from_slice(SIGNING_CONTEXT);
    out.push(ENVELOPE_VERSION);
    let s = Signed {
        store: &e.store,
        period_start_ms: e.period_start_ms,
        period_secs: e.period_secs,
        vv: &e.vv,
        ciphertext: &e.ciphertext,
    };
    // Writing CBOR into a Vec cannot fail.
    let _ = ciborium::into_writer(&s, &mut out);
    out
}

/// HQ's public age key: what stores encrypt their summaries to.
pub type HqRecipient = age::x25519::Recipient;

/// HQ's age recipient, as configured on the nodes.
pub fn parse_recipient(s: &str) -> Result<HqRecipient, RecipientError> {
    s.trim().parse::<age::x25519::Recipient>().map_err(RecipientError)
}

/// Text that is not an age recipient: age says why only in words.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RecipientError(pub &'static str);

/// Encrypts and signs a summary for HQ.
pub fn seal(summary: &Summary, hq: &age::x25519::Recipient, store_key: &Keypair) -> Result<Envelope, EnvelopeError> {
    let plain = serde_json::to_vec(summary).map_err(|e| EnvelopeError::Seal(e.into()))?;
    let encryptor = age::Encryptor::with_recipients(std::iter::once(hq as &dyn age::Recipient))
        .map_err(|e| EnvelopeError::Seal(e.into()))?;
    let mut ciphertext = Vec::with_capacity(plain.len() + 256);
    let mut w = encryptor
        .wrap_output(&mut ciphertext)
        .map_err(|e| EnvelopeError::Seal(e.into()))?;
    w.write_all(&plain).map_err(|e| EnvelopeError::Seal(e.into()))?;
    w.finish().map_err(|e| EnvelopeError::Seal(e.into()))?;
    let mut env = Envelope {
        store: summary.store.clone(),
        period_start_ms: summary.period_start_ms,
        period_secs: summary.period_secs,
        vv: summary.vv.clone(),
        ciphertext,
        signature: Vec::new(),
    };
    env.signature = store_key
        .sign(&signed_bytes(&env))
        .map_err(|e| EnvelopeError::Seal(e.into()))?;
    Ok(env)
}

impl Envelope {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![ENVELOPE_VERSION];
        let _ = ciborium::into_writer(self, &mut out);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        if bytes.len() > MAX_ENVELOPE_BYTES {
            return Err(EnvelopeError::TooLarge(bytes.len()));
        }
        let (&v, body) = bytes
            .split_first()
            .ok_or_else(|| EnvelopeError::Malformed("empty".into()))?;
        if v != ENVELOPE_VERSION {
            return Err(EnvelopeError::Version(v));
        }
        let mut rest = body;
        let e: Envelope = ciborium::from_reader(&mut rest).map_err(|e| EnvelopeError::Malformed(e.into()))?;
        // One envelope per upload, nothing after it: strict like the mesh's records.
        if !rest.is_empty() {
            return Err(EnvelopeError::Malformed(
                format!("{} bytes after the envelope", rest.len()).into(),
            ));
        }
        // Control characters (a NUL above all, which PostgreSQL refuses in text) are never in a name.
        if e.store.is_empty()
            || e.store.len() > crate::summary::MAX_NAME_LEN
            || e.store.chars().any(char::is_control)
            || !e.vv.is_well_formed()
        {
            return Err(EnvelopeError::Malformed("bad store name or version vector".into()));
        }
        Ok(e)
    }

    pub fn verify(&self, store_key: &PublicKey) -> Result<(), EnvelopeError> {
        if store_key.verify(&signed_bytes(self), &self.signature) {
            Ok(())
        } else {
            Err(EnvelopeError::BadSignature)
        }
    }

    /// Decrypts, parses and checks the summary, and that it says what the envelope says.
    pub fn open(&self, hq: &age::x25519::Identity) -> Result<Summary, EnvelopeError> {
        let plain = age::decrypt(hq, &self.ciphertext).map_err(|e| EnvelopeError::Undecryptable(e.into()))?;
        let s: Summary = serde_json::from_slice(&plain).map_err(|e| EnvelopeError::BadSummary(e.into()))?;
        if s.store != self.store
            || s.period_start_ms != self.period_start_ms
            || s.period_secs != self.period_secs
            || s.vv != self.vv
        {
            return Err(EnvelopeError::BadSummary(
                "the summary's store, period or version vector differ from the envelope's".into(),
            ));
        }
        s.validate()?;
        Ok(s)
    }
}

/// A store's public signing key as text: `ed25519:` and the 32 key bytes in base64url, no padding.
pub fn store_key_to_string(key: &PublicKey) -> Option<String> {
    use base64::Engine;
    let k = key.clone().try_into_ed25519().ok()?;
    Some(format!(
        "ed25519:{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(k.to_bytes())
    ))
}

/// Why a store's signing key, as text, was refused.
#[derive(Debug, thiserror::Error)]
pub enum StoreKeyError {
    #[error("a store key starts with `ed25519:` (print it with `lpmesh store-key --data DIR`)")]
    Prefix,
    #[error("not base64url: {0}")]
    Base64(#[source] base64::DecodeError),
    #[error("not an Ed25519 public key: {0}")]
    Key(#[source] libp2p_identity::DecodingError),
}

/// The inverse of [`store_key_to_string`].
pub fn parse_store_key(s: &str) -> Result<PublicKey, StoreKeyError> {
    use base64::Engine;
    let b64 = s.trim().strip_prefix("ed25519:").ok_or(StoreKeyError::Prefix)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(b64)
        .map_err(StoreKeyError::Base64)?;
    ed25519::PublicKey::try_from_bytes(&bytes)
        .map(PublicKey::from)
        .map_err(StoreKeyError::Key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::summary::{LineCount, Summary};

    fn summary() -> Summary {
        Summary {
            store: "shop-1".into(),
            period_start_ms: 0,
            period_secs: 3600,
            vv: VersionVector([("abc".to_string(), 3)].into_iter().collect()),
            footfall: vec![LineCount {
                camera: "door".into(),
                line: "main".into(),
                entered: 4,
                left: 2,
            }],
            ..Summary::default()
        }
    }

    #[test]
    fn seal_verify_open() {
        let hq = age::x25519::Identity::generate();
        let key = Keypair::generate_ed25519();
        let env = seal(&summary(), &hq.to_public(), &key).unwrap();
        let wire = env.encode();
        let back = Envelope::decode(&wire).unwrap();
        back.verify(&key.public()).unwrap();
        assert_eq!(back.open(&hq).unwrap(), summary());
        // The plaintext figures are not readable on the wire.
        assert!(!wire.windows(4).any(|w| w == b"door"));
        let text = store_key_to_string(&key.public()).unwrap();
        assert_eq!(parse_store_key(&text).unwrap(), key.public());
    }

    #[test]
    fn tampering_is_caught() {
        let hq = age::x25519::Identity::generate();
        let key = Keypair::generate_ed25519();
        let env = seal(&summary(), &hq.to_public(), &key).unwrap();
        let mut t = env.clone();
        t.vv.0.insert("abc".into(), 99);
        assert!(matches!(t.verify(&key.public()), Err(EnvelopeError::BadSignature)));
        let mut t = env.clone();
        let n = t.ciphertext.len();
        t.ciphertext[n - 5] ^= 1;
        assert!(matches!(t.verify(&key.public()), Err(EnvelopeError::BadSignature)));
        let other = Keypair::generate_ed25519();
        assert!(matches!(env.verify(&other.public()), Err(EnvelopeError::BadSignature)));
        // Sealed for another HQ: verifies, cannot be opened.
        let elsewhere = seal(&summary(), &age::x25519::Identity::generate().to_public(), &key).unwrap();
        elsewhere.verify(&key.public()).unwrap();
        assert!(matches!(elsewhere.open(&hq), Err(EnvelopeError::Undecryptable(_))));
        assert!(matches!(Envelope::decode(&[1, 2, 3]), Err(EnvelopeError::Malformed(_))));
        assert!(matches!(Envelope::decode(&[7]), Err(EnvelopeError::Version(7))));
        assert!(matches!(
            Envelope::decode(&vec![1; MAX_ENVELOPE_BYTES + 1]),
            Err(EnvelopeError::TooLarge(_))
        ));
    }
}
