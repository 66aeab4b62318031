//! Grants to fetch evidence from the node that keeps it.
//!
//! A tablet is logged in on the node whose page it shows; the evidence may sit on another node of the
//! store. The serving node signs a grant with its node key (the key its mesh records are signed
//! with): who, in which role, which evidence, whether to download, until when (a few minutes). The
//! keeping node takes it only from a current member of the store (a revoked node's grants are
//! refused with its membership), checks the signature and the time, and serves that evidence and
//! nothing else. The user's password and session never leave the node they logged in on.

use base64::Engine;
use lpmesh_mesh::record::Origin;
use serde::{Deserialize, Serialize};

use crate::event::EvidenceId;
use crate::ui::auth::Role;

/// How long a grant lasts: long enough to watch a clip, short enough that a copied link dies soon.
pub const GRANT_TTL_MS: i64 = 5 * 60_000;
/// How far apart two nodes' clocks may be for their grants to work (a store offline for weeks
/// drifts seconds, not minutes): a grant is taken from this long before it was issued to this long
/// after it expired, by the keeping node's clock.
pub const CLOCK_SKEW_MS: i64 = 2 * 60_000;
/// The longest grant text taken from a URL.
pub const MAX_GRANT_LEN: usize = 1024;
const DOMAIN: &[u8] = b"lpmesh evidence grant v1\n";

/// What is signed: the domain, the store (a grant from one store's node opens nothing in another
/// store, whatever names they share), then the grant.
fn message(store: &str, body: &[u8]) -> Vec<u8> {
    let mut msg = DOMAIN.to_vec();
    msg.extend_from_slice(store.as_bytes());
    msg.push(b'\n');
    msg.extend_from_slice(body);
    msg
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// The node that signed it (its admitted name).
    pub issuer: String,
    pub user: String,
    pub role: Role,
    pub evidence: EvidenceId,
    /// Download (managers only) rather than view.
    pub download: bool,
    pub issued_ms: i64,
    pub expires_ms: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    #[error("not a grant")]
    Malformed,
    #[error("signed by no member of this store")]
    UnknownIssuer,
    #[error("the signature does not match")]
    BadSignature,
    #[error("expired")]
    Expired,
    #[error("valid for longer than any grant, or issued later than now")]
    TooLong,
    #[error("for other evidence")]
    OtherEvidence,
    #[error("not for downloading")]
    NotDownload,
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
}

impl Grant {
    /// The grant as URL-safe text, signed with `key` for `store`.
    pub fn sign(&self, store: &str, key: &libp2p_identity::Keypair) -> Option<String> {
        let body = serde_json::to_vec(self).ok()?;
        let sig = key.sign(&message(store, &body)).ok()?;
        Some(format!("{}.{}", b64().encode(&body), b64().encode(sig)))
    }

    /// Checks `text` for `evidence` of `store` at `now_ms`; `issuer_key` finds a member's key by
    /// node name.
    pub fn verify(
        store: &str,
        text: &str,
        evidence: &EvidenceId,
        download: bool,
        now_ms: i64,
        issuer_key: impl Fn(&str) -> Option<Origin>,
    ) -> Result<Grant, GrantError> {
        if text.len() > MAX_GRANT_LEN {
            return Err(GrantError::Malformed);
        }
        let (body, sig) = text.split_once('.').ok_or(GrantError::Malformed)?;
        let body = b64().decode(body).map_err(|_| GrantError::Malformed)?;
        let sig = b64().decode(sig).map_err(|_| GrantError::Malformed)?;
        let g: Grant = serde_json::from_slice(&body).map_err(|_| GrantError::Malformed)?;
        let key = issuer_key(&g.issuer)
            .and_then(|o| o.public_key())
            .ok_or(GrantError::UnknownIssuer)?;
        if !key.verify(&message(store, &body), &sig) {
            return Err(GrantError::BadSignature);
        }
        if g.expires_ms.saturating_sub(g.issued_ms) > GRANT_TTL_MS
            || g.expires_ms < g.issued_ms
            || g.issued_ms > now_ms.saturating_add(CLOCK_SKEW_MS)
        {
            return Err(GrantError::TooLong);
        }
        if g.expires_ms.saturating_add(CLOCK_SKEW_MS) <= now_ms {
            return Err(GrantError::Expired);
        }
        if &g.evidence != evidence {
            return Err(GrantError::OtherEvidence);
        }
        if download && !(g.download && g.role == Role::Manager) {
            return Err(GrantError::NotDownload);
        }
        Ok(g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(id: &EvidenceId, download: bool, role: Role, expires_ms: i64) -> Grant {
        Grant {
            issuer: "front".into(),
            user: "sam".into(),
            role,
            evidence: id.clone(),
            download,
            issued_ms: expires_ms - GRANT_TTL_MS,
            expires_ms,
        }
    }

    const STORE: &str = "shop-1";

    #[test]
    fn a_grant_opens_its_evidence_for_its_time_and_nothing_else() {
        let key = libp2p_identity::Keypair::generate_ed25519();
        let me = Origin::of(&key).unwrap();
        let other = Origin::of(&libp2p_identity::Keypair::generate_ed25519()).unwrap();
        let members = |name: &str| (name == "front").then_some(me);
        let id = EvidenceId::random();
        let now = 1_800_000_000_000;
        let t = grant(&id, false, Role::Security, now + GRANT_TTL_MS)
            .sign(STORE, &key)
            .unwrap();
        assert!(t.len() < MAX_GRANT_LEN && !t.contains(['/', '+', '=', '&', '?']), "{t}");
        let g = Grant::verify(STORE, &t, &id, false, now, members).unwrap();
        assert_eq!((g.user.as_str(), g.role), ("sam", Role::Security));
        let check = |t: &str, id: &EvidenceId, dl: bool, now: i64| Grant::verify(STORE, t, id, dl, now, members);
        // Clocks a minute apart either way are fine; past its life and the skew, it is expired.
        assert!(check(&t, &id, false, now - 60_000).is_ok());
        assert!(check(&t, &id, false, now + GRANT_TTL_MS + 60_000).is_ok());
        assert_eq!(
            check(&t, &id, false, now + GRANT_TTL_MS + CLOCK_SKEW_MS),
            Err(GrantError::Expired)
        );
        assert_eq!(check(&t, &id, false, now - CLOCK_SKEW_MS - 1), Err(GrantError::TooLong));
        // Another store's node signed it: nothing, whatever the names.
        assert_eq!(
            Grant::verify("shop-2", &t, &id, false, now, members),
            Err(GrantError::BadSignature)
        );
        assert_eq!(
            check(&t, &EvidenceId::random(), false, now),
            Err(GrantError::OtherEvidence)
        );
        // Viewing is not downloading; a security user's grant never downloads, even if it says so.
        assert_eq!(check(&t, &id, true, now), Err(GrantError::NotDownload));
        let t2 = grant(&id, true, Role::Security, now + 1000).sign(STORE, &key).unwrap();
        assert_eq!(check(&t2, &id, true, now), Err(GrantError::NotDownload));
        let t3 = grant(&id, true, Role::Manager, now + 1000).sign(STORE, &key).unwrap();
        assert!(check(&t3, &id, true, now).is_ok());
        // A grant for a day is refused even when correctly signed.
        let long = Grant {
            issued_ms: now,
            ..grant(&id, false, Role::Manager, now + 86_400_000)
        }
        .sign(STORE, &key)
        .unwrap();
        assert_eq!(check(&long, &id, false, now), Err(GrantError::TooLong));
        // Signed by a key that is not the named member's (a revoked or foreign node), or edited.
        let forged = grant(&id, false, Role::Manager, now + 1000)
            .sign(STORE, &libp2p_identity::Keypair::generate_ed25519())
            .unwrap();
        assert_eq!(check(&forged, &id, false, now), Err(GrantError::BadSignature));
        let by_other = |name: &str| (name == "front").then_some(other);
        assert_eq!(
            Grant::verify(STORE, &t, &id, false, now, by_other),
            Err(GrantError::BadSignature)
        );
        assert_eq!(
            Grant::verify(STORE, &t, &id, false, now, |_| None),
            Err(GrantError::UnknownIssuer)
        );
        let (body, sig) = t.split_once('.').unwrap();
        let mut v: serde_json::Value = serde_json::from_slice(&b64().decode(body).unwrap()).unwrap();
        v["role"] = "manager".into();
        let edited = format!("{}.{sig}", b64().encode(serde_json::to_vec(&v).unwrap()));
        assert_eq!(check(&edited, &id, false, now), Err(GrantError::BadSignature));
        for junk in ["", ".", "x.y", &"a".repeat(5000), "eyJ9.AAAA"] {
            assert_eq!(check(junk, &id, false, now), Err(GrantError::Malformed), "{junk}");
        }
    }
}
