//! What a record's contents may claim. A member signs its records, but signs whatever it likes inside
//! them: an event that ends in the year 292 million, an acknowledgement dated for ever, an incident
//! that started in 1970. Each of those pinned a view or made a node walk millions of periods. Every
//! time inside a record is checked against the record's own signed hybrid-logical time (`hlc`), which
//! the mesh already refuses when it lies far in the future, so the check is a pure function of the
//! record: every node refuses the same records, and views stay identical across the store.
//!
//! The rules (`window` is `[mesh] time_window_secs`, default 10 minutes):
//! - nothing lies later than `hlc + window` (a clock slightly ahead of its peers is fine; the future
//!   is not);
//! - the record's own time (`at_ms`) lies no earlier than `hlc - MAX_HOLD_MS`: an event held back
//!   while the disk was full keeps the time it happened, for up to a week;
//! - an incident started no earlier than `MAX_INCIDENT_MS` before the record (a camera offline for a
//!   year is the longest incident a store has), and ends no earlier than it started.
//!
//! A refused record stays in the log (it is validly signed, and the log's version vectors must stay
//! gap-free); the views and the summaries ignore it, and it is counted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use lpmesh_mesh::crypto::Keyring;
use lpmesh_mesh::record::{Origin, Record, RecordKind};

use crate::event::Event;
use crate::summary::Entry;

/// Default of `[mesh] time_window_secs`.
pub const DEFAULT_WINDOW_SECS: f64 = 600.0;
/// How long an event may wait in memory for a full disk and still be taken by the store.
pub const MAX_HOLD_MS: i64 = 7 * 86_400_000;
/// The longest incident (a camera offline for a year).
pub const MAX_INCIDENT_MS: i64 = 366 * 86_400_000;

/// Why a record's contents were refused (a metrics label each).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// It could not be decrypted or parsed.
    Unreadable,
    /// A time later than the record's signed time allows.
    Future,
    /// A time earlier than the record's signed time allows.
    Past,
    /// An end before the start, or a record before its incident began.
    Disordered,
    /// It speaks for a node its signer is not: an event or action under another member's name, or
    /// (for a named member) under any name but its own.
    ForeignNode,
}

impl Refusal {
    pub const ALL: [Refusal; 5] = [
        Refusal::Unreadable,
        Refusal::Future,
        Refusal::Past,
        Refusal::Disordered,
        Refusal::ForeignNode,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Unreadable => "unreadable",
            Refusal::Future => "future",
            Refusal::Past => "past",
            Refusal::Disordered => "disordered",
            Refusal::ForeignNode => "foreign_node",
        }
    }
}

/// Records refused by this node's incident view, by reason (one count per record: only the view that
/// reads every record counts; see [`Reader::counting`]).
static REFUSED: [AtomicU64; 5] = [
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
];

pub fn refused() -> [(Refusal, u64); 5] {
    Refusal::ALL.map(|r| (r, REFUSED[r as usize].load(Ordering::Relaxed)))
}

/// Checks an entry's times against its record's signed wall time.
pub fn check(entry: &Entry, hlc_ms: i64, window_ms: i64) -> Result<(), Refusal> {
    let latest = hlc_ms.saturating_add(window_ms);
    let (started, at, ended) = match entry {
        Entry::Event(e) => (e.started_at_ms, e.at_ms, e.ended_at_ms),
        Entry::Action(a) => (a.incident_started_at_ms, a.at_ms, None),
    };
    if started > latest || at > latest || ended.is_some_and(|t| t > latest) {
        return Err(Refusal::Future);
    }
    if at < hlc_ms.saturating_sub(MAX_HOLD_MS) || started < at.saturating_sub(MAX_INCIDENT_MS) {
        return Err(Refusal::Past);
    }
    // An event's own time is never before its incident began; an action may be (a note on an
    // incident whose start record was held back) only by the clock window.
    if started > at.saturating_add(window_ms) || ended.is_some_and(|t| t < started) {
        return Err(Refusal::Disordered);
    }
    Ok(())
}

/// Reads the store's records: decrypts them and refuses contents their signer could not have written.
#[derive(Clone)]
pub struct Reader {
    /// Every key the store's records may be under (shared by every clone; grows with key epochs).
    ring: Keyring,
    window_ms: i64,
    count: bool,
    /// The members' names (shared by every clone, kept current by the member list's follower).
    names: std::sync::Arc<std::sync::RwLock<Names>>,
}

/// Which member speaks under which node name.
#[derive(Debug, Default)]
struct Names {
    by_origin: HashMap<Origin, String>,
    by_name: HashMap<String, Origin>,
}

impl Names {
    /// Whether `signer` may write an entry for `node` (an event's incident id begins with its node).
    fn allows(&self, signer: &Origin, entry: &Entry) -> bool {
        let (node, incident) = match entry {
            Entry::Event(e) => (&e.node, Some(e.incident.split('/').next().unwrap_or_default())),
            Entry::Action(a) => (&a.node, None),
        };
        match self.by_origin.get(signer) {
            Some(own) => own == node && incident.is_none_or(|i| i == own),
            // A member without a recorded name (the founder) may use any name nobody holds.
            None => !self.by_name.contains_key(node) && incident.is_none_or(|i| !self.by_name.contains_key(i)),
        }
    }
}

impl Reader {
    pub fn new(keys: impl Into<Keyring>, window_secs: f64) -> Self {
        Reader {
            ring: keys.into(),
            window_ms: (window_secs * 1000.0).clamp(0.0, i64::MAX as f64) as i64,
            count: false,
            names: Default::default(),
        }
    }

    /// The members' node names from now on (for this reader and every clone of it).
    pub fn set_names(&self, names: HashMap<Origin, String>) {
        let by_name = names.iter().map(|(o, n)| (n.clone(), *o)).collect();
        let mut w = self.names.write().unwrap_or_else(|p| p.into_inner());
        *w = Names {
            by_origin: names,
            by_name,
        };
    }

    /// This reader's refusals go to the node's metrics (one reader per node does: the incident view).
    pub fn counting(mut self) -> Self {
        self.count = true;
        self
    }

    /// The keys this reader decrypts with.
    pub fn ring(&self) -> &Keyring {
        &self.ring
    }

    /// A member record's admission (`None` for other records, or one dated beyond its signature).
    pub fn member(&self, r: &Record) -> Option<crate::members::Membership> {
        if r.kind != RecordKind::Member {
            return None;
        }
        let plain = self.ring.decrypt(&r.ciphertext).ok()?;
        let m: crate::members::Membership = serde_json::from_slice(&plain).ok()?;
        let hlc = i64::try_from(r.hlc.wall_ms).unwrap_or(i64::MAX);
        (m.at_ms <= hlc.saturating_add(self.window_ms)).then_some(m)
    }

    /// A user record (`None` for other records, a malformed one, or one dated beyond its signature).
    pub fn user(&self, r: &Record) -> Option<crate::ui::auth::UserRecord> {
        if r.kind != RecordKind::User {
            return None;
        }
        let plain = self.ring.decrypt(&r.ciphertext).ok()?;
        let u: crate::ui::auth::UserRecord = serde_json::from_slice(&plain).ok()?;
        let hlc = i64::try_from(r.hlc.wall_ms).unwrap_or(i64::MAX);
        (u.at_ms <= hlc.saturating_add(self.window_ms) && u.is_well_formed()).then_some(u)
    }

    /// A key-epoch record's grant (`None` for other records, or one dated beyond its signature).
    pub fn grant(&self, r: &Record) -> Option<crate::epochs::KeyGrant> {
        if r.kind != RecordKind::Keys || r.ciphertext.len() > crate::epochs::MAX_GRANT_BYTES {
            return None;
        }
        let plain = self.ring.base().decrypt(&r.ciphertext).ok()?;
        let g: crate::epochs::KeyGrant = serde_json::from_slice(&plain).ok()?;
        let hlc = i64::try_from(r.hlc.wall_ms).unwrap_or(i64::MAX);
        (g.at_ms <= hlc.saturating_add(self.window_ms)).then_some(g)
    }

    /// The record's contents, or why they are refused.
    pub fn check(&self, r: &Record) -> Result<Entry, Refusal> {
        let verdict = self.decode(r).and_then(|e| {
            let hlc = i64::try_from(r.hlc.wall_ms).unwrap_or(i64::MAX);
            check(&e, hlc, self.window_ms)?;
            let names = self.names.read().unwrap_or_else(|p| p.into_inner());
            if names.allows(&r.origin, &e) {
                Ok(e)
            } else {
                Err(Refusal::ForeignNode)
            }
        });
        if let (Err(why), true) = (&verdict, self.count) {
            REFUSED[*why as usize].fetch_add(1, Ordering::Relaxed);
            tracing::debug!(origin = %r.origin, seq = r.seq, reason = why.as_str(), "record contents refused");
        }
        verdict
    }

    fn decode(&self, r: &Record) -> Result<Entry, Refusal> {
        let plain = self.ring.decrypt(&r.ciphertext).map_err(|_| Refusal::Unreadable)?;
        match r.kind {
            // The evidence of an event is kept by the event's own node: a record cannot point
            // tablets at another node's evidence.
            RecordKind::Event => match serde_json::from_slice::<Event>(&plain) {
                Ok(e) if e.evidence.as_ref().is_some_and(|r| r.node != e.node) => return Err(Refusal::ForeignNode),
                other => other.map(Entry::Event),
            },
            RecordKind::Action => serde_json::from_slice(&plain).map(Entry::Action),
            RecordKind::Member | RecordKind::Keys | RecordKind::User => return Err(Refusal::Unreadable),
        }
        .map_err(|_| Refusal::Unreadable)
    }

    /// An event or action (member records are read by [`Reader::member`]).
    pub fn open(&self, r: &Record) -> Option<Entry> {
        if r.kind.is_kept() {
            return None;
        }
        self.check(r).ok()
    }

    pub fn event(&self, r: &Record) -> Option<Event> {
        match self.open(r)? {
            Entry::Event(e) => Some(e),
            Entry::Action(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::{Action, ActionKind};
    use crate::event::{Detail, EventKind, Phase};

    const W: i64 = 600_000;
    const NOW: i64 = 1_800_000_000_000;

    fn ev(start: i64, at: i64, end: Option<i64>) -> Entry {
        Entry::Event(Event {
            incident: "n/cam/1-0".into(),
            phase: if end.is_some() { Phase::End } else { Phase::Start },
            store: "s".into(),
            node: "n".into(),
            camera: "cam".into(),
            zone: None,
            kind: EventKind::CameraOffline,
            severity: EventKind::CameraOffline.default_severity(),
            started_at_ms: start,
            at_ms: at,
            ended_at_ms: end,
            track: None,
            bbox: None,
            confidence: 1.0,
            model: "m".into(),
            evidence: None,
            detail: Detail::default(),
        })
    }

    fn act(started: i64, at: i64) -> Entry {
        Entry::Action(Action {
            incident: "n/cam/1-0".into(),
            incident_started_at_ms: started,
            action: ActionKind::Resolve,
            by: "sam".into(),
            node: "n".into(),
            at_ms: at,
            note: None,
        })
    }

    fn named(node: &str, incident: &str) -> Entry {
        let Entry::Event(mut e) = ev(NOW - 5_000, NOW, None) else {
            unreachable!()
        };
        e.node = node.into();
        e.incident = incident.into();
        Entry::Event(e)
    }

    #[test]
    fn a_member_speaks_only_under_its_own_name_and_nobody_under_anothers() {
        let (back, front, old) = (Origin([1; 32]), Origin([2; 32]), Origin([3; 32]));
        let names = Names {
            by_origin: [(back, "back".to_string()), (front, "front".to_string())].into(),
            by_name: [("back".to_string(), back), ("front".to_string(), front)].into(),
        };
        assert!(names.allows(&back, &named("back", "back/door/1-0")));
        // Another node's name, or its own name on another node's incident.
        assert!(!names.allows(&back, &named("front", "front/door/1-0")));
        assert!(!names.allows(&back, &named("back", "front/door/1-0")));
        // A member without a recorded name uses any name nobody holds, never a held one.
        assert!(names.allows(&old, &named("till", "till/cam/1-0")));
        assert!(!names.allows(&old, &named("front", "front/cam/1-0")));
        assert!(!names.allows(&old, &named("till", "front/cam/1-0")));
        // Actions too: signed by the node that served the user.
        let Entry::Action(mut a) = act(NOW - 60_000, NOW) else {
            unreachable!()
        };
        a.node = "front".into();
        assert!(!names.allows(&back, &Entry::Action(a.clone())));
        assert!(names.allows(&front, &Entry::Action(a)));
        // With no names known (a store without them), nothing is refused for its name.
        assert!(Names::default().allows(&back, &named("front", "front/door/1-0")));
    }

    #[test]
    fn honest_records_pass() {
        assert_eq!(check(&ev(NOW - 5_000, NOW, None), NOW, W), Ok(()));
        // A camera offline for three days ends; the clock 5 minutes ahead of its signer's.
        assert_eq!(
            check(&ev(NOW - 3 * 86_400_000, NOW, Some(NOW)), NOW - 300_000, W),
            Ok(())
        );
        // Held back two days by a full disk.
        assert_eq!(
            check(&ev(NOW - 10_000, NOW, Some(NOW)), NOW + 2 * 86_400_000, W),
            Ok(())
        );
        assert_eq!(check(&act(NOW - 60_000, NOW), NOW, W), Ok(()));
    }

    #[test]
    fn the_future_the_distant_past_and_disorder_are_refused() {
        // 1970 to for ever.
        assert_eq!(check(&ev(0, NOW, Some(i64::MAX)), NOW, W), Err(Refusal::Future));
        assert_eq!(check(&ev(0, NOW, Some(NOW)), NOW, W), Err(Refusal::Past));
        assert_eq!(check(&act(NOW, i64::MAX), NOW, W), Err(Refusal::Future));
        assert_eq!(check(&act(NOW, NOW + W + 1), NOW, W), Err(Refusal::Future));
        assert_eq!(check(&act(NOW, NOW + W), NOW, W), Ok(()));
        assert_eq!(check(&act(i64::MIN, NOW), NOW, W), Err(Refusal::Past));
        assert_eq!(check(&ev(NOW, NOW - 8 * 86_400_000, None), NOW, W), Err(Refusal::Past));
        assert_eq!(check(&ev(NOW, NOW, Some(NOW - 1)), NOW, W), Err(Refusal::Disordered));
        assert_eq!(
            check(&ev(i64::MIN, i64::MIN, Some(i64::MIN)), i64::MAX, i64::MAX),
            Err(Refusal::Past)
        );
        assert_eq!(check(&ev(i64::MAX, i64::MAX, None), i64::MAX, i64::MAX), Ok(()));
    }
}
