//! The store's member list: which node keys belong to the store.
//!
//! `lpmesh init` makes its node the founder (its key is in `store.secrets`, handed to every node that
//! joins, so it needs no record). Every later node is admitted by the
//! member that answered its invitation, with a signed `member` record (the admitting node is the
//! record's origin). A node is a member when a chain of admissions leads to it from the founder: a
//! pure function of the records, so every node that holds the same records has the same list,
//! whatever order they arrived in. Only members may hold a mesh connection and only their records are
//! stored (`MeshHandle::set_members`); a store created before the list existed has no founder and
//! admits every holder of the network key, as before.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use lpmesh_mesh::record::Origin;
use serde::{Deserialize, Serialize};

/// Member records kept from one signer: a member flooding admissions fills only its own share.
pub const MAX_PER_SIGNER: usize = 256;
/// Admissions kept in all (a store has a handful of nodes). Revocations are not held to it, so one
/// that takes a flooder out is always heard.
pub const MAX_ADMISSIONS: usize = 4096;

/// What a `member` record says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Membership {
    /// The admitted node's key (its Ed25519 public key, hex).
    pub node: String,
    pub at_ms: i64,
    /// The invitation it used (none for the founder).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invitation: Option<String>,
    /// This record takes the node out of the store, for good.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub revoked: bool,
    /// Its rank in the uplink election (higher leads), set by whoever invited it: what its own
    /// heartbeats claim is not taken.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: u8,
    /// Its node name, set by whoever invited it: the store takes its events and actions only under
    /// this name, and nobody else's under it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

fn is_zero(p: &u8) -> bool {
    *p == 0
}

impl Membership {
    pub fn new(node: &Origin, at_ms: i64, invitation: Option<String>) -> Self {
        Membership {
            node: hex(node),
            at_ms,
            invitation,
            revoked: false,
            priority: 0,
            name: None,
        }
    }

    pub fn revocation(node: &Origin, at_ms: i64) -> Self {
        Membership {
            revoked: true,
            ..Membership::new(node, at_ms, None)
        }
    }
}

pub fn hex(o: &Origin) -> String {
    o.0.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn parse_hex(s: &str) -> Option<Origin> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    let o = Origin(out);
    o.public_key().map(|_| o)
}

/// Why a node cannot be revoked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RevokeError {
    #[error("not a member of the store (see `lpmesh members`)")]
    NotMember,
    #[error("the founder is the store's root and cannot be revoked; to replace it, create a new store")]
    Founder,
    #[error("a node does not revoke itself: revoke it from another member")]
    Itself,
}

/// The record that revokes `peer` (a peer id from `list`), to be signed by `by`: the one rule the
/// command line and the UI share.
pub fn revocation(list: &[Member], peer: &str, by: &Origin, at_ms: i64) -> Result<Membership, RevokeError> {
    let m = list
        .iter()
        .find(|m| m.node == peer.trim())
        .ok_or(RevokeError::NotMember)?;
    if m.founder {
        return Err(RevokeError::Founder);
    }
    let node = parse_hex(&m.key).ok_or(RevokeError::NotMember)?;
    if node == *by {
        return Err(RevokeError::Itself);
    }
    Ok(Membership::revocation(&node, at_ms))
}

/// One admitted node, for `lpmesh members` and the UI.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Member {
    /// The node's peer id.
    pub node: String,
    /// Its key (hex), what a revocation names.
    pub key: String,
    pub founder: bool,
    /// Who admitted it (peer id), when, with which invitation.
    pub admitted_by: Option<String>,
    pub admitted_at_ms: Option<i64>,
    pub invitation: Option<String>,
    /// Its election priority from its admission (`None` for the founder: its own setting counts).
    pub priority: Option<u8>,
    /// The node name its admission gives it (`None`: none recorded, or another member holds it).
    pub name: Option<String>,
}

/// One admission of a node, as a member record says.
#[derive(Clone, Debug)]
struct Admission {
    by: Origin,
    /// The admitting record's seq: two admissions by one member at one time are told apart by it,
    /// so every node counts the same one whatever the arrival order.
    seq: u64,
    at_ms: i64,
    invitation: Option<String>,
    priority: u8,
    name: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct Members {
    founder: Option<Origin>,
    /// Per admitted node: (admitted by, when, invitation), as the records say.
    admissions: BTreeMap<Origin, Vec<Admission>>,
    /// Per revoked node: who revoked it.
    revocations: BTreeMap<Origin, BTreeSet<Origin>>,
    seen: HashSet<(Origin, u64)>,
    per_signer: HashMap<Origin, usize>,
    /// The founder's node name, from the latest record it signed about itself (it has no admission).
    /// Ordered by the founder's own seq, not its claimed time: two records with one time would
    /// otherwise leave the name to whichever arrived last, different on different nodes.
    founder_name: Option<(u64, String)>,
}

impl Members {
    pub fn new(founder: Option<Origin>) -> Self {
        Members {
            founder,
            ..Members::default()
        }
    }

    /// Whether the store keeps a member list at all.
    pub fn keeps_list(&self) -> bool {
        self.founder.is_some()
    }

    /// Folds in a member record (its origin signed it); returns whether it was new.
    pub fn add(&mut self, key: (Origin, u64), m: &Membership) -> bool {
        let Some(node) = parse_hex(&m.node) else {
            return false;
        };
        let signed = self.per_signer.get(&key.0).copied().unwrap_or(0);
        let admissions: usize = self.admissions.values().map(Vec::len).sum();
        if signed >= MAX_PER_SIGNER || (!m.revoked && admissions >= MAX_ADMISSIONS) || !self.seen.insert(key) {
            return false;
        }
        self.per_signer.insert(key.0, signed + 1);
        if Some(key.0) == self.founder && Some(node) == self.founder && !m.revoked {
            if let Some(name) = m.name.as_ref().filter(|n| crate::config::check_name(n).is_ok()) {
                if self.founder_name.as_ref().is_none_or(|(seq, _)| key.1 > *seq) {
                    self.founder_name = Some((key.1, name.clone()));
                }
            }
            return true;
        }
        if m.revoked {
            self.revocations.entry(node).or_default().insert(key.0);
        } else {
            self.admissions.entry(node).or_default().push(Admission {
                by: key.0,
                seq: key.1,
                at_ms: m.at_ms,
                invitation: m.invitation.clone(),
                priority: m.priority,
                name: m.name.clone(),
            });
        }
        true
    }

    /// Nodes revoked by a member (the founder cannot be: it is the store's root).
    pub fn revoked(&self) -> BTreeSet<Origin> {
        let chain = self.chain();
        self.revocations
            .iter()
            .filter(|(node, by)| Some(**node) != self.founder && by.iter().any(|o| chain.contains(o)))
            .map(|(node, _)| *node)
            .collect()
    }

    /// The members: the founder and every node an admission chain from it reaches, but for those a
    /// member revoked. An admission made before its admitter was revoked stands.
    pub fn admitted(&self) -> BTreeSet<Origin> {
        let revoked = self.revoked();
        let mut set = self.chain();
        set.retain(|o| !revoked.contains(o));
        set
    }

    fn chain(&self) -> BTreeSet<Origin> {
        let mut set: BTreeSet<Origin> = self.founder.into_iter().collect();
        loop {
            let more: Vec<Origin> = self
                .admissions
                .iter()
                .filter(|(node, by)| !set.contains(*node) && by.iter().any(|a| set.contains(&a.by)))
                .map(|(node, _)| *node)
                .collect();
            if more.is_empty() {
                return set;
            }
            set.extend(more);
        }
    }

    /// The admission of `o` that counts: the earliest by a member other than itself.
    fn counting(&self, o: &Origin, members: &BTreeSet<Origin>) -> Option<&Admission> {
        self.admissions.get(o).and_then(|v| {
            v.iter()
                .filter(|a| members.contains(&a.by) && a.by != *o)
                .min_by_key(|a| (a.at_ms, a.by, a.seq))
        })
    }

    pub fn list(&self) -> Vec<Member> {
        let names = self.names();
        let set = self.admitted();
        set.iter()
            .map(|o| {
                let founder = Some(*o) == self.founder;
                let first = self.counting(o, &set).filter(|_| !founder);
                Member {
                    node: o.to_string(),
                    key: hex(o),
                    founder,
                    admitted_by: first.map(|a| a.by.to_string()),
                    admitted_at_ms: first.map(|a| a.at_ms),
                    invitation: first.and_then(|a| a.invitation.clone()),
                    priority: first.map(|a| a.priority),
                    name: names.get(o).cloned(),
                }
            })
            .collect()
    }

    /// Each member's node name, from its admission. A name belongs to the member admitted under it
    /// first (earliest admission, then smallest key): a later member admitted under a name already
    /// held gets none, so no member can take over another's name by inviting a second box under it.
    pub fn names(&self) -> HashMap<Origin, String> {
        let set = self.admitted();
        let mut holders: BTreeMap<String, (i64, Origin)> = BTreeMap::new();
        // The founder's name is its own before anyone's.
        if let (Some(f), Some((_, name))) = (self.founder, &self.founder_name) {
            holders.insert(name.clone(), (i64::MIN, f));
        }
        for o in set.iter().filter(|o| Some(**o) != self.founder) {
            let Some(a) = self.counting(o, &set) else { continue };
            let Some(name) = a.name.as_ref().filter(|n| crate::config::check_name(n).is_ok()) else {
                continue;
            };
            let key = (a.at_ms, *o);
            holders
                .entry(name.clone())
                .and_modify(|h| *h = (*h).min(key))
                .or_insert(key);
        }
        holders.into_iter().map(|(n, (_, o))| (o, n)).collect()
    }

    /// The founder's node name, as it last recorded it.
    pub fn founder_name(&self) -> Option<&str> {
        self.founder_name.as_ref().map(|(_, n)| n.as_str())
    }

    /// The election priority of every member but the founder, from its admission: the same on every
    /// node that holds the same records.
    pub fn priorities(&self) -> HashMap<Origin, u8> {
        let set = self.admitted();
        set.iter()
            .filter(|o| Some(**o) != self.founder)
            .filter_map(|o| self.counting(o, &set).map(|a| (*o, a.priority)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(i: u8) -> Origin {
        let k = libp2p_identity::ed25519::SecretKey::try_from_bytes([i; 32]).unwrap();
        Origin(libp2p_identity::ed25519::Keypair::from(k).public().to_bytes())
    }

    #[test]
    fn membership_is_a_chain_of_admissions_from_the_founder_in_any_order() {
        let records = [
            ((o(1), 1), Membership::new(&o(1), 10, None)),
            ((o(1), 2), Membership::new(&o(2), 20, Some("a".into()))),
            ((o(2), 1), Membership::new(&o(3), 30, Some("b".into()))),
            // Admitted by a node nobody admitted: not a member, nor is what it admits.
            ((o(8), 1), Membership::new(&o(9), 40, None)),
            ((o(9), 1), Membership::new(&o(7), 50, None)),
        ];
        let expected: BTreeSet<Origin> = [o(1), o(2), o(3)].into();
        for order in [[0, 1, 2, 3, 4], [4, 3, 2, 1, 0], [2, 4, 0, 3, 1]] {
            let mut m = Members::new(Some(o(1)));
            for i in order {
                m.add(records[i].0, &records[i].1);
            }
            assert_eq!(m.admitted(), expected);
        }
        let mut m = Members::new(Some(o(1)));
        for (k, r) in &records {
            m.add(*k, r);
        }
        assert!(!m.add(records[0].0, &records[0].1), "a record counts once");
        let list = m.list();
        assert_eq!(list.len(), 3);
        assert!(list.iter().any(|x| x.founder && x.node == o(1).to_string()));
        let third = list.iter().find(|x| x.node == o(3).to_string()).unwrap();
        assert_eq!(third.admitted_by, Some(o(2).to_string()));
        assert_eq!(third.invitation.as_deref(), Some("b"));
        // A store without a founder keeps no list.
        assert!(!Members::new(None).keeps_list());
        assert!(Members::new(None).admitted().is_empty());
    }

    #[test]
    fn priorities_come_from_the_counting_admission_and_not_for_the_founder() {
        let ranked = |node: u8, at: i64, p: u8| Membership {
            priority: p,
            ..Membership::new(&o(node), at, None)
        };
        let mut m = Members::new(Some(o(1)));
        m.add((o(1), 1), &ranked(2, 20, 5));
        m.add((o(1), 2), &ranked(3, 30, 1));
        // A member that re-admits itself, or a later admission, does not change its rank.
        m.add((o(3), 1), &ranked(3, 40, 255));
        m.add((o(2), 1), &ranked(3, 50, 9));
        // A record naming the founder gives it no rank: its own setting counts.
        m.add((o(2), 2), &ranked(1, 60, 200));
        let p = m.priorities();
        assert_eq!(p.get(&o(2)), Some(&5));
        assert_eq!(p.get(&o(3)), Some(&1));
        assert_eq!(p.get(&o(1)), None);
        let list = m.list();
        assert_eq!(list.iter().find(|x| x.founder).map(|x| x.priority), Some(None));
        // Records without the field (written before priorities) rank 0, and read back the same.
        let old: Membership = serde_json::from_str(&format!("{{\"node\":\"{}\",\"at_ms\":1}}", hex(&o(4)))).unwrap();
        assert_eq!(old.priority, 0);
        let json = serde_json::to_string(&ranked(4, 1, 3)).unwrap();
        assert_eq!(serde_json::from_str::<Membership>(&json).unwrap().priority, 3);
    }

    #[test]
    fn a_name_belongs_to_the_member_admitted_under_it_first() {
        let named = |node: u8, at: i64, name: &str| Membership {
            name: Some(name.into()),
            ..Membership::new(&o(node), at, None)
        };
        let mut m = Members::new(Some(o(1)));
        m.add((o(1), 1), &named(2, 20, "front"));
        m.add((o(1), 2), &named(3, 30, "back"));
        // A second box invited under a name already held gets no name.
        m.add((o(3), 1), &named(4, 40, "front"));
        // A name the configuration would refuse is no name.
        m.add((o(1), 3), &named(5, 50, "../etc"));
        // The founder names itself (later than the others were admitted): its name is its own, and
        // the member admitted under it before loses it.
        m.add((o(1), 4), &named(6, 60, "till"));
        m.add((o(1), 5), &named(1, 70, "till"));
        assert_eq!(m.founder_name(), Some("till"));
        assert_eq!(m.names().get(&o(1)).map(String::as_str), Some("till"));
        assert_eq!(m.names().get(&o(6)), None);
        // Nobody else names the founder.
        m.add((o(2), 1), &named(1, 80, "other"));
        assert_eq!(m.founder_name(), Some("till"));
        m.add((o(1), 6), &named(6, 90, "six"));
        let n = m.names();
        assert_eq!(n.get(&o(2)).map(String::as_str), Some("front"));
        assert_eq!(n.get(&o(3)).map(String::as_str), Some("back"));
        assert_eq!(n.get(&o(4)), None);
        assert_eq!(n.get(&o(5)), None);
        let list = m.list();
        assert_eq!(list.iter().filter(|x| x.name.is_some()).count(), n.len());
    }

    #[test]
    fn a_revoked_node_leaves_for_good_and_the_founder_stays() {
        let mut m = Members::new(Some(o(1)));
        m.add((o(1), 1), &Membership::new(&o(1), 10, None));
        m.add((o(1), 2), &Membership::new(&o(2), 20, None));
        m.add((o(2), 1), &Membership::new(&o(3), 30, None));
        m.add((o(1), 3), &Membership::revocation(&o(2), 40));
        assert_eq!(m.admitted(), [o(1), o(3)].into(), "3 was admitted while 2 was a member");
        // Admitted again: revocation is for good.
        m.add((o(1), 4), &Membership::new(&o(2), 50, None));
        assert!(!m.admitted().contains(&o(2)));
        // Nobody revokes the founder; a stranger revokes nobody.
        m.add((o(3), 1), &Membership::revocation(&o(1), 60));
        m.add((o(9), 1), &Membership::revocation(&o(3), 60));
        assert_eq!(m.admitted(), [o(1), o(3)].into());
        let list = m.list();
        let r = revocation(&list, &o(3).to_string(), &o(1), 70).unwrap();
        assert!(r.revoked && parse_hex(&r.node) == Some(o(3)));
        assert_eq!(
            revocation(&list, &o(2).to_string(), &o(1), 70),
            Err(RevokeError::NotMember)
        );
        assert_eq!(
            revocation(&list, &o(1).to_string(), &o(3), 70),
            Err(RevokeError::Founder)
        );
        assert_eq!(
            revocation(&list, &o(3).to_string(), &o(3), 70),
            Err(RevokeError::Itself)
        );
    }

    #[test]
    fn a_member_flooding_admissions_fills_only_its_share_and_can_still_be_revoked() {
        let mut m = Members::new(Some(o(1)));
        m.add((o(1), 1), &Membership::new(&o(2), 1, None));
        let fake = |i: u64| {
            let k = libp2p_identity::ed25519::SecretKey::try_from_bytes({
                let mut b = [7u8; 32];
                b[..8].copy_from_slice(&i.to_be_bytes());
                b
            })
            .unwrap();
            Origin(libp2p_identity::ed25519::Keypair::from(k).public().to_bytes())
        };
        for i in 0..(MAX_PER_SIGNER as u64 + 50) {
            m.add((o(2), i + 1), &Membership::new(&fake(i), 1, None));
        }
        assert_eq!(m.admitted().len(), 2 + MAX_PER_SIGNER, "the flooder's share, not more");
        // The founder's records still count, and its revocation takes the flooder out.
        assert!(m.add((o(1), 2), &Membership::new(&o(3), 2, None)));
        assert!(m.add((o(1), 3), &Membership::revocation(&o(2), 3)));
        assert!(!m.admitted().contains(&o(2)) && m.admitted().contains(&o(3)));
    }

    #[test]
    fn keys_round_trip_and_bad_ones_are_refused() {
        assert_eq!(parse_hex(&hex(&o(4))), Some(o(4)));
        assert_eq!(parse_hex("zz"), None);
        assert_eq!(parse_hex(&"g".repeat(64)), None);
        let mut m = Members::new(Some(o(1)));
        assert!(!m.add(
            (o(1), 1),
            &Membership {
                node: "nope".into(),
                at_ms: 0,
                invitation: None,
                revoked: false,
                priority: 0,
                name: None,
            }
        ));
    }

    proptest::proptest! {
        /// Whatever records exist and in whatever order they arrive, every node works out the same
        /// members, revocations, names and priorities; the founder is always a member, no revoked
        /// node is, and every other member was admitted by a member.
        #[test]
        fn the_member_list_is_a_function_of_the_records_not_of_their_order(
            records in proptest::collection::vec((1u8..7, 1u8..7, proptest::bool::weighted(0.2), 0u8..3, 0u8..4, 0i64..50), 0..24),
            seed in proptest::prelude::any::<u64>(),
        ) {
            let recs: Vec<((Origin, u64), Membership)> = records
                .iter()
                .enumerate()
                .map(|(i, (by, node, revoked, name, priority, at))| {
                    let m = Membership {
                        revoked: *revoked,
                        priority: *priority,
                        name: (*name > 0).then(|| format!("n{name}")),
                        ..Membership::new(&o(*node), *at, None)
                    };
                    ((o(*by), i as u64), m)
                })
                .collect();
            let fold = |order: &[usize]| {
                let mut m = Members::new(Some(o(1)));
                for &i in order {
                    m.add(recs[i].0, &recs[i].1);
                }
                m
            };
            let forward: Vec<usize> = (0..recs.len()).collect();
            let mut shuffled = forward.clone();
            let mut x = seed | 1;
            for i in (1..shuffled.len()).rev() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                shuffled.swap(i, (x % (i as u64 + 1)) as usize);
            }
            let (a, b) = (fold(&forward), fold(&shuffled));
            proptest::prop_assert_eq!(a.admitted(), b.admitted());
            proptest::prop_assert_eq!(a.revoked(), b.revoked());
            proptest::prop_assert_eq!(a.names(), b.names());
            proptest::prop_assert_eq!(a.priorities(), b.priorities());
            let members = a.admitted();
            proptest::prop_assert!(members.contains(&o(1)));
            proptest::prop_assert!(members.iter().all(|m| !a.revoked().contains(m)));
            for m in members.iter().filter(|m| **m != o(1)) {
                let by_member = recs.iter().any(|((by, _), r)| {
                    !r.revoked && r.node == hex(m) && *by != *m && a.chain().contains(by)
                });
                proptest::prop_assert!(by_member, "{} is a member nobody admitted", m);
            }
        }
    }
}
