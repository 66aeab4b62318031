//! The store's key epochs: after a revocation, the store writes under keys the revoked node never had.
//!
//! A member that sees a revocation not yet followed by a key epoch begins one: it draws a new age
//! identity and network key (epoch `n` = the highest it knows + 1) and writes a `keys` record (a
//! [`KeyGrant`]) that hands every key epoch it holds to each remaining member, sealed to that member's
//! node key (`lpmesh_mesh::crypto::seal_to_node`). The record itself is encrypted to the store's first
//! key, so a member that has not learned the epoch yet can read the envelope; only the members it
//! names can open what is inside, and the revoked node is never among them.
//!
//! Which epoch a node writes under is a pure function of the records it holds ([`Epochs::current`]):
//! the grant with the highest epoch (then the smallest recipient) whose signer is a member, that names
//! no revoked node, and whose key this node holds. Two members that begin an epoch at once both do no
//! harm: both grants reach every member, and all pick the same one. A revocation heard late (made
//! concurrently with an epoch that still names the revoked node) makes that grant unusable, and the
//! next member to notice begins another ([`Epochs::needs_rekey`]). Members keep every epoch's key, so
//! they read the whole history; a node that joins later receives them from the member that admits it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit};
use libp2p_identity::Keypair;
use lpmesh_mesh::crypto::{open_with_node_key, seal_to_node, BoxError, Keyring};
use lpmesh_mesh::keys::{EpochKey, MAX_EPOCHS_HELD};
use lpmesh_mesh::record::Origin;
use serde::{Deserialize, Serialize};

use crate::members::{hex, Members};

/// Grants kept from one signer (a member flooding grants fills only its own share), and in all.
pub const MAX_PER_SIGNER: usize = 64;
pub const MAX_GRANTS: usize = 1024;
/// A grant record's ciphertext is never larger than this (a record is at most 64 KiB anyway).
pub const MAX_GRANT_BYTES: usize = 64 * 1024;

/// What a `keys` record says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyGrant {
    /// The epoch it begins.
    pub n: u32,
    /// That epoch's public age recipient: which key of the chain is the new one.
    pub recipient: String,
    /// The revoked nodes (keys, hex) it follows: the revocations it answers.
    pub covers: BTreeSet<String>,
    pub at_ms: i64,
    /// The epochs' keys (JSON), under a key drawn for this grant alone (ChaCha20-Poly1305, base64).
    pub chain: String,
    /// That key sealed to each member's node key (member key hex -> base64).
    pub sealed: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum EpochError {
    #[error("cannot seal the new keys: {0}")]
    Seal(#[source] BoxError),
    #[error("the store has begun {0} key epochs: no more can be numbered")]
    Exhausted(u32),
}

/// The grants a node holds, and which it has opened.
#[derive(Default)]
pub struct Epochs {
    grants: BTreeMap<(Origin, u64), KeyGrant>,
    per_signer: HashMap<Origin, usize>,
    opened: HashSet<(Origin, u64)>,
}

impl Epochs {
    /// Folds in a grant (its origin signed it); whether it was new.
    pub fn add(&mut self, key: (Origin, u64), g: KeyGrant) -> bool {
        let signed = self.per_signer.get(&key.0).copied().unwrap_or(0);
        if signed >= MAX_PER_SIGNER || self.grants.len() >= MAX_GRANTS || self.grants.contains_key(&key) {
            return false;
        }
        self.per_signer.insert(key.0, signed + 1);
        self.grants.insert(key, g);
        true
    }

    /// Opens the grants sealed to `me` not opened yet, adding their keys to `ring`; whether it grew.
    pub fn open_mine(&mut self, me: &Keypair, ring: &Keyring) -> bool {
        let Some(mine) = Origin::of(me).map(|o| hex(&o)) else {
            return false;
        };
        let mut grew = false;
        for (key, g) in &self.grants {
            if self.opened.contains(key) {
                continue;
            }
            self.opened.insert(*key);
            match open(g, &mine, me) {
                Some(chain) => match ring.add(&chain) {
                    Ok(added) => grew |= added > 0,
                    Err(e) => tracing::warn!(signer = %key.0, error = %e, "a key epoch record holds a malformed key"),
                },
                None if g.sealed.contains_key(&mine) => {
                    tracing::warn!(signer = %key.0, "a key epoch record sealed to this node does not open")
                }
                None => {}
            }
        }
        grew
    }

    /// The grant this node writes under: see the module's documentation.
    pub fn current(&self, members: &Members, ring: &Keyring) -> Option<&KeyGrant> {
        let admitted = members.admitted();
        let revoked: BTreeSet<String> = members.revoked().iter().map(hex).collect();
        self.grants
            .iter()
            .filter(|((signer, _), g)| {
                admitted.contains(signer)
                    && !g.sealed.keys().any(|k| revoked.contains(k))
                    && ring.epoch(&g.recipient).is_some_and(|e| e.n == g.n)
            })
            .map(|(_, g)| g)
            .max_by(|a, b| a.n.cmp(&b.n).then_with(|| b.recipient.cmp(&a.recipient)))
    }

    /// Whether a member has been revoked since the epoch this node writes under began.
    pub fn needs_rekey(&self, members: &Members, ring: &Keyring) -> bool {
        let revoked: BTreeSet<String> = members.revoked().iter().map(hex).collect();
        if revoked.is_empty() {
            return false;
        }
        self.current(members, ring)
            .is_none_or(|g| !revoked.is_subset(&g.covers))
    }
}

fn open(g: &KeyGrant, mine: &str, me: &Keypair) -> Option<Vec<EpochKey>> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let sealed = b64.decode(g.sealed.get(mine)?).ok()?;
    let key: [u8; 32] = open_with_node_key(me, &sealed).ok()?.try_into().ok()?;
    let chain = b64.decode(&g.chain).ok()?;
    let plain = chacha20poly1305::ChaCha20Poly1305::new((&key).into())
        .decrypt(&chacha20poly1305::Nonce::default(), chain.as_slice())
        .ok()?;
    let keys: Vec<EpochKey> = serde_json::from_slice(&plain).ok()?;
    // A member's grant is checked like secrets from a file: a CA that is not one is no key at all.
    let well_formed = keys
        .iter()
        .all(|k| k.ui_ca.as_ref().is_none_or(lpmesh_mesh::keys::UiCa::is_well_formed));
    (keys.len() <= MAX_EPOCHS_HELD && well_formed).then_some(keys)
}

/// A new key epoch for the store's members now: the grant to record, and its key.
pub fn begin(members: &Members, ring: &Keyring, at_ms: i64) -> Result<(KeyGrant, EpochKey), EpochError> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let newest = ring.newest();
    let n = newest.checked_add(1).ok_or(EpochError::Exhausted(newest))?;
    let mut epoch = EpochKey::generate(n);
    // A new tablet CA with the new keys: the revoked node held the old one.
    let name = format!("key epoch {n}");
    let ca = lpmesh_web::tls::new_ca(&name).map_err(|e| EpochError::Seal(e.into()))?;
    epoch.ui_ca = Some(lpmesh_mesh::keys::UiCa {
        name,
        cert_pem: ca.cert_pem,
        key_pem: ca.key_pem,
    });
    let mut chain = ring.epochs();
    chain.push(epoch.clone());
    // The newest epochs: older ones stay readable by the members that hold them.
    let skip = chain.len().saturating_sub(MAX_EPOCHS_HELD);
    let chain: Vec<EpochKey> = chain.into_iter().skip(skip).collect();
    let plain = serde_json::to_vec(&chain).map_err(|e| EpochError::Seal(e.into()))?;
    let key: [u8; 32] = rand::random();
    let sealed_chain = chacha20poly1305::ChaCha20Poly1305::new((&key).into())
        .encrypt(&chacha20poly1305::Nonce::default(), plain.as_slice())
        // Its message only: aead's error is no std::error::Error without the `std` feature.
        .map_err(|e| EpochError::Seal(e.to_string().into()))?;
    let mut sealed = BTreeMap::new();
    for m in members.admitted() {
        sealed.insert(
            hex(&m),
            b64.encode(seal_to_node(&m.0, &key).map_err(|e| EpochError::Seal(e.into()))?),
        );
    }
    let recipient = epoch.recipient().map_err(|e| EpochError::Seal(e.into()))?.to_string();
    let grant = KeyGrant {
        n,
        recipient,
        covers: members.revoked().iter().map(hex).collect(),
        at_ms,
        chain: b64.encode(sealed_chain),
        sealed,
    };
    Ok((grant, epoch))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::members::Membership;
    use lpmesh_mesh::crypto::StoreSecret;

    struct Node {
        key: Keypair,
        origin: Origin,
        ring: Keyring,
        epochs: Epochs,
    }

    fn node(base: &StoreSecret) -> Node {
        let key = Keypair::generate_ed25519();
        Node {
            origin: Origin::of(&key).unwrap(),
            key,
            ring: Keyring::from(StoreSecret::parse(&base.expose()).unwrap()),
            epochs: Epochs::default(),
        }
    }

    /// Founder a admits every other node.
    fn store(nodes: &[&Node]) -> Members {
        let mut m = Members::new(Some(nodes[0].origin));
        for (i, n) in nodes.iter().enumerate().skip(1) {
            m.add((nodes[0].origin, i as u64), &Membership::new(&n.origin, 10, None));
        }
        m
    }

    #[test]
    fn a_revocation_begins_an_epoch_the_others_open_and_the_revoked_node_cannot() {
        let base = StoreSecret::generate();
        let (mut a, mut b, mut c) = (node(&base), node(&base), node(&base));
        let mut members = store(&[&a, &b, &c]);
        assert!(!a.epochs.needs_rekey(&members, &a.ring), "no revocation, no epoch");
        members.add((a.origin, 10), &Membership::revocation(&c.origin, 20));
        assert!(a.epochs.needs_rekey(&members, &a.ring));

        let (grant, epoch) = begin(&members, &a.ring, 30).unwrap();
        assert_eq!((grant.n, epoch.n), (1, 1));
        assert!(grant.covers.contains(&hex(&c.origin)) && !grant.sealed.contains_key(&hex(&c.origin)));
        let ao = a.origin;
        for n in [&mut a, &mut b, &mut c] {
            n.epochs.add((ao, 11), grant.clone());
        }
        assert!(a.epochs.open_mine(&a.key, &a.ring) && b.epochs.open_mine(&b.key, &b.ring));
        assert!(!c.epochs.open_mine(&c.key, &c.ring), "the revoked node opens nothing");
        for n in [&a, &b] {
            assert_eq!(n.epochs.current(&members, &n.ring), Some(&grant));
            assert!(!n.epochs.needs_rekey(&members, &n.ring));
            n.ring.set_current(Some(grant.recipient.clone()));
        }
        let secret = b.ring.current().encrypt(b"after the revocation").unwrap();
        assert_eq!(a.ring.decrypt(&secret).unwrap(), b"after the revocation");
        assert!(c.ring.decrypt(&secret).is_err());
        // Opened once: a second look adds nothing.
        assert!(!b.epochs.open_mine(&b.key, &b.ring));
    }

    #[test]
    fn a_revocation_heard_late_makes_the_epoch_that_names_the_node_unusable() {
        let base = StoreSecret::generate();
        let (mut a, b, c, d) = (node(&base), node(&base), node(&base), node(&base));
        let mut members = store(&[&a, &b, &c, &d]);
        // a revokes c and begins epoch 1 (sealed to d too); b revoked d at the same time.
        members.add((a.origin, 10), &Membership::revocation(&c.origin, 20));
        let (g1, _) = begin(&members, &a.ring, 30).unwrap();
        assert!(g1.sealed.contains_key(&hex(&d.origin)));
        a.epochs.add((a.origin, 11), g1.clone());
        a.epochs.open_mine(&a.key, &a.ring);
        assert_eq!(a.epochs.current(&members, &a.ring), Some(&g1));
        members.add((b.origin, 1), &Membership::revocation(&d.origin, 25));
        assert_eq!(a.epochs.current(&members, &a.ring), None, "d holds epoch 1");
        assert!(a.epochs.needs_rekey(&members, &a.ring));
        let (g2, _) = begin(&members, &a.ring, 40).unwrap();
        assert_eq!(g2.n, 2);
        assert_eq!(g2.sealed.len(), 2, "a and b only");
        a.epochs.add((a.origin, 12), g2.clone());
        a.epochs.open_mine(&a.key, &a.ring);
        assert_eq!(a.epochs.current(&members, &a.ring), Some(&g2));
        assert!(!a.epochs.needs_rekey(&members, &a.ring));
        // b, which never saw epoch 1, gets it with epoch 2: it reads what was written under it.
        let mut b = b;
        b.epochs.add((a.origin, 12), g2);
        assert!(b.epochs.open_mine(&b.key, &b.ring));
        assert_eq!(b.ring.newest(), 2);
        assert_eq!(b.ring.epochs().len(), 2);
    }

    #[test]
    fn only_a_members_grant_counts_and_two_at_once_resolve_alike_everywhere() {
        let base = StoreSecret::generate();
        let (mut a, mut b, c) = (node(&base), node(&base), node(&base));
        let outsider = node(&base);
        let mut members = store(&[&a, &b, &c]);
        members.add((a.origin, 10), &Membership::revocation(&c.origin, 20));
        // An outsider's grant (sealed to the members, so they could open it) is never written under.
        let (forged, _) = begin(&members, &outsider.ring, 30).unwrap();
        a.epochs.add((outsider.origin, 1), forged);
        a.epochs.open_mine(&a.key, &a.ring);
        assert_eq!(a.epochs.current(&members, &a.ring), None);
        // a and b both begin epoch 1 at once: both grants reach both, and both pick the same one.
        let (ga, _) = begin(&members, &a.ring, 30).unwrap();
        let (gb, _) = begin(&members, &b.ring, 30).unwrap();
        assert_eq!((ga.n, gb.n), (2, 1), "a held the outsider's epoch 1 already");
        let (ao, bo) = (a.origin, b.origin);
        for n in [&mut a, &mut b] {
            n.epochs.add((ao, 11), ga.clone());
            n.epochs.add((bo, 11), gb.clone());
            n.epochs.open_mine(&n.key, &n.ring);
        }
        let pick_a = a.epochs.current(&members, &a.ring).cloned();
        assert!(pick_a.is_some());
        assert_eq!(pick_a.as_ref(), b.epochs.current(&members, &b.ring));
        // A flood of grants from one member fills only its own share.
        let mut e = Epochs::default();
        let (g, _) = begin(&members, &a.ring, 30).unwrap();
        let taken = (0..MAX_PER_SIGNER as u64 + 10)
            .filter(|i| e.add((a.origin, *i), g.clone()))
            .count();
        assert_eq!(taken, MAX_PER_SIGNER);
        assert!(e.add((b.origin, 1), g));
    }
}
