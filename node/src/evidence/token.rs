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
/// A grant claiming more than this much time left is refused (a node's clock a little ahead is
/// fine, a grant for ever is not).
const MAX_AHEAD_MS: i64 = GRANT_TTL_MS + 60_000;
/// The longest grant text taken from a URL.
pub const MAX_GRANT_LEN: usize = 1024;
const DOMAIN: &[u8] = b"lpmesh evidence grant v1\n";

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
    #[error("valid for longer than any grant")]
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
    /// The grant as URL-safe text, signed with `key`.
    pub fn sign(&self, key: &libp2p_identity::Keypair) -> Option<String> {
        let body = serde_json::to_vec(self).ok()?;
        let mut msg = DOMAIN.to_vec();
        msg.extend_from_slice(&body);
        let sig = key.sign(&msg).ok()?;
        Some(format!("{}.{}", b64().encode(&body), b64().encode(sig)))
    }

    /// Checks `text` for `evidence` at `now_ms`; `issuer_key` finds a member's key by node name.
    pub fn verify(
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
        let mut msg = DOMAIN.to_vec();
        msg.extend_from_slice(&body);
        if !key.verify(&msg, &sig) {
            return Err(GrantError::BadSignature);
        }
        if g.expires_ms <= now_ms {
            return Err(GrantError::Expired);
        }
        if g.expires_ms > now_ms.saturating_add(MAX_AHEAD_MS) {
            return Err(GrantError::TooLong);
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
            expires_ms,
        }
    }

    #[test]
    fn a_grant_opens_its_evidence_for_its_time_and_nothing_else() {
        let key = libp2p_identity::Keypair::generate_ed25519();
        let me = Origin::of(&key).unwrap();
        let other = Origin::of(&libp2p_identity::Keypair::generate_ed25519()).unwrap();
        let members = |name: &str| (name == "front").then_some(me);
        let id = EvidenceId::random();
        let now = 1_800_000_000_000;
        let t = grant(&id, false, Role::Security, now + GRANT_TTL_MS)
            .sign(&key)
            .unwrap();
        assert!(t.len() < MAX_GRANT_LEN && !t.contains(['/', '+', '=', '&', '?']), "{t}");
        let g = Grant::verify(&t, &id, false, now, members).unwrap();
        assert_eq!((g.user.as_str(), g.role), ("sam", Role::Security));
        let check = |t: &str, id: &EvidenceId, dl: bool, now: i64| Grant::verify(t, id, dl, now, members);
        assert_eq!(check(&t, &id, false, now + GRANT_TTL_MS), Err(GrantError::Expired));
        assert_eq!(
            check(&t, &EvidenceId::random(), false, now),
            Err(GrantError::OtherEvidence)
        );
        // Viewing is not downloading; a security user's grant never downloads, even if it says so.
        assert_eq!(check(&t, &id, true, now), Err(GrantError::NotDownload));
        let t2 = grant(&id, true, Role::Security, now + 1000).sign(&key).unwrap();
        assert_eq!(check(&t2, &id, true, now), Err(GrantError::NotDownload));
        let t3 = grant(&id, true, Role::Manager, now + 1000).sign(&key).unwrap();
        assert!(check(&t3, &id, true, now).is_ok());
        // A grant for a day is refused even when correctly signed.
        let long = grant(&id, false, Role::Manager, now + 86_400_000).sign(&key).unwrap();
        assert_eq!(check(&long, &id, false, now), Err(GrantError::TooLong));
        // Signed by a key that is not the named member's (a revoked or foreign node), or edited.
        let forged = grant(&id, false, Role::Manager, now + 1000)
            .sign(&libp2p_identity::Keypair::generate_ed25519())
            .unwrap();
        assert_eq!(check(&forged, &id, false, now), Err(GrantError::BadSignature));
        let by_other = |name: &str| (name == "front").then_some(other);
        assert_eq!(
            Grant::verify(&t, &id, false, now, by_other),
            Err(GrantError::BadSignature)
        );
        assert_eq!(
            Grant::verify(&t, &id, false, now, |_| None),
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
