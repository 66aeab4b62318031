//! The store's incidents as the tablet UI and the alert routes see them: every event and operator
//! action of the log folded into one view per incident (its latest phase, severity, state and history).
//! Pure: fed with decrypted records, whatever their order; the same records give the same view.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use lpmesh_mesh::record::Origin;

use serde::Serialize;

use crate::action::Action;
use crate::event::{Detail, Event, EventKind, Phase, Severity};

/// Incidents kept in memory (oldest dropped first); the log keeps them all.
pub const MAX_INCIDENTS: usize = 20_000;
/// Incidents one node's records may hold in the view: a member flooding the store with incidents
/// only pushes out its own, never the other nodes'.
pub const MAX_INCIDENTS_PER_ORIGIN: usize = MAX_INCIDENTS / 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Open,
    Acknowledged,
    Resolved,
    FalseAlarm,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Open => "open",
            State::Acknowledged => "acknowledged",
            State::Resolved => "resolved",
            State::FalseAlarm => "false_alarm",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HistoryItem {
    pub at_ms: i64,
    /// `start`, `update`, `end`, `instant`, or an action (`acknowledge`, `resolve`, ...).
    pub what: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub people: Option<u32>,
    /// The record's signed time: decisive actions are ordered by it, not by the time they claim.
    #[serde(skip)]
    pub signed_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Incident {
    pub id: String,
    pub kind: EventKind,
    pub severity: Severity,
    pub node: String,
    pub camera: String,
    pub zone: Option<String>,
    pub started_at_ms: i64,
    pub last_at_ms: i64,
    pub ended_at_ms: Option<i64>,
    /// Still going on (started, not ended; instants are never ongoing).
    pub ongoing: bool,
    pub state: State,
    pub acknowledged_by: Option<String>,
    pub confidence: f32,
    /// The first record's figures (line and direction of a crossing, people of a crowd, ...).
    pub detail: Detail,
    pub history: Vec<HistoryItem>,
    /// Where its still and clip are kept (the camera's node), when they are.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evidence: Option<crate::event::EvidenceRef>,
    /// The node whose record opened it here (what the per-node bound counts).
    #[serde(skip)]
    pub origin: Origin,
}

#[derive(Default)]
pub struct Book {
    incidents: BTreeMap<String, Incident>,
    /// Actions for incidents not seen yet (their events are still on their way), with signed times.
    orphans: BTreeMap<String, Vec<(Action, i64)>>,
    seen: HashSet<(Origin, u64)>,
    /// Per origin, seqs at or below this have expired from the log: never folded in again.
    floors: BTreeMap<Origin, u64>,
    /// Per origin, its incidents by start: which to drop first when it holds too many.
    by_origin: HashMap<Origin, BTreeSet<(i64, String)>>,
}

/// What changed, for live pushes.
#[derive(Clone, Debug)]
pub enum Change {
    /// The first record of an incident (an alert may be due).
    New(String),
    Updated(String),
}

impl Change {
    pub fn id(&self) -> &str {
        match self {
            Change::New(i) | Change::Updated(i) => i,
        }
    }
}

impl Book {
    pub fn new() -> Self {
        Self::default()
    }

    fn fresh(&mut self, key: (lpmesh_mesh::record::Origin, u64)) -> bool {
        key.1 > self.floors.get(&key.0).copied().unwrap_or(0) && self.seen.insert(key)
    }

    /// Forgets what the log no longer holds: incidents whose last record is older than `cutoff_ms`
    /// and the records below each origin's expiry floor. Returns the incidents removed.
    pub fn expire(&mut self, floors: &BTreeMap<lpmesh_mesh::record::Origin, u64>, cutoff_ms: i64) -> usize {
        for (o, f) in floors {
            let e = self.floors.entry(*o).or_insert(0);
            *e = (*e).max(*f);
        }
        let fl = &self.floors;
        self.seen.retain(|(o, s)| *s > fl.get(o).copied().unwrap_or(0));
        let before = self.incidents.len();
        let by_origin = &mut self.by_origin;
        self.incidents.retain(|_, i| {
            let last = i.history.iter().map(|h| h.at_ms).max().unwrap_or(i.last_at_ms);
            let keep = last.max(i.last_at_ms) >= cutoff_ms;
            if !keep {
                if let Some(set) = by_origin.get_mut(&i.origin) {
                    set.remove(&(i.started_at_ms, i.id.clone()));
                }
            }
            keep
        });
        self.by_origin.retain(|_, set| !set.is_empty());
        self.orphans.retain(|_, v| {
            v.retain(|(a, _)| a.at_ms >= cutoff_ms);
            !v.is_empty()
        });
        before - self.incidents.len()
    }

    /// Folds in an event; `None` when the record was seen already.
    pub fn event(&mut self, key: (Origin, u64), e: &Event) -> Option<Change> {
        if !self.fresh(key) {
            return None;
        }
        let item = HistoryItem {
            at_ms: e.at_ms,
            what: format!("{:?}", e.phase).to_lowercase(),
            by: None,
            note: None,
            people: e.detail.people,
            signed_ms: e.at_ms,
        };
        let ended = (e.phase == Phase::End).then(|| e.ended_at_ms.unwrap_or(e.at_ms));
        let change = match self.incidents.get_mut(&e.incident) {
            Some(i) => {
                i.severity = i.severity.max(e.severity);
                i.last_at_ms = i.last_at_ms.max(e.at_ms);
                if ended.is_some() {
                    i.ended_at_ms = ended;
                    i.ongoing = false;
                }
                // The start may arrive after a later record of the incident.
                if i.evidence.is_none() {
                    i.evidence = e.evidence.clone();
                }
                insert_sorted(&mut i.history, item);
                Change::Updated(e.incident.clone())
            }
            None => {
                let mut inc = Incident {
                    id: e.incident.clone(),
                    kind: e.kind,
                    severity: e.severity,
                    node: e.node.clone(),
                    camera: e.camera.clone(),
                    zone: e.zone.clone(),
                    started_at_ms: e.started_at_ms,
                    last_at_ms: e.at_ms,
                    ended_at_ms: ended,
                    ongoing: matches!(e.phase, Phase::Start | Phase::Update),
                    state: State::Open,
                    acknowledged_by: None,
                    confidence: e.confidence,
                    detail: e.detail.clone(),
                    history: vec![item],
                    evidence: e.evidence.clone(),
                    origin: key.0,
                };
                for (a, signed_ms) in self.orphans.remove(&e.incident).unwrap_or_default() {
                    apply(&mut inc, &a, signed_ms);
                }
                self.by_origin
                    .entry(key.0)
                    .or_default()
                    .insert((inc.started_at_ms, inc.id.clone()));
                self.incidents.insert(e.incident.clone(), inc);
                self.bound(key.0);
                Change::New(e.incident.clone())
            }
        };
        Some(change)
    }

    /// [`Book::action_signed`] for an action signed at the time it claims (tests and tools).
    pub fn action(&mut self, key: (Origin, u64), a: &Action) -> Option<Change> {
        self.action_signed(key, a, a.at_ms)
    }

    /// Folds in an action whose record was signed at `signed_ms`; `None` when seen already or its
    /// incident is not here yet.
    pub fn action_signed(&mut self, key: (Origin, u64), a: &Action, signed_ms: i64) -> Option<Change> {
        if !self.fresh(key) {
            return None;
        }
        match self.incidents.get_mut(&a.incident) {
            Some(i) => {
                apply(i, a, signed_ms);
                Some(Change::Updated(a.incident.clone()))
            }
            None => {
                let list = self.orphans.entry(a.incident.clone()).or_default();
                if list.len() < 64 {
                    list.push((a.clone(), signed_ms));
                }
                None
            }
        }
    }

    /// Drops the earliest-started incident of `origin`.
    fn drop_oldest_of(&mut self, origin: Origin) -> bool {
        let Some(set) = self.by_origin.get_mut(&origin) else {
            return false;
        };
        let Some((_, id)) = set.pop_first() else {
            self.by_origin.remove(&origin);
            return false;
        };
        if set.is_empty() {
            self.by_origin.remove(&origin);
        }
        self.incidents.remove(&id);
        true
    }

    /// Keeps the view bounded after `origin` added an incident: first by origin, then overall, taking
    /// from whichever node holds the most, so one node's flood never pushes the others' out.
    fn bound(&mut self, origin: Origin) {
        while self.by_origin.get(&origin).map_or(0, |s| s.len()) > MAX_INCIDENTS_PER_ORIGIN {
            if !self.drop_oldest_of(origin) {
                break;
            }
        }
        while self.incidents.len() > MAX_INCIDENTS {
            let largest = self
                .by_origin
                .iter()
                .max_by_key(|(o, s)| (s.len(), **o))
                .map(|(o, _)| *o);
            match largest {
                Some(o) if self.drop_oldest_of(o) => {}
                _ => break,
            }
        }
        while self.orphans.len() > 1024 {
            if self.orphans.pop_first().is_none() {
                break;
            }
        }
    }

    pub fn get(&self, id: &str) -> Option<&Incident> {
        self.incidents.get(id)
    }

    pub fn all(&self) -> impl Iterator<Item = &Incident> {
        self.incidents.values()
    }

    pub fn len(&self) -> usize {
        self.incidents.len()
    }

    pub fn is_empty(&self) -> bool {
        self.incidents.is_empty()
    }
}

fn insert_sorted(h: &mut Vec<HistoryItem>, item: HistoryItem) {
    let pos = h.partition_point(|x| (x.at_ms, &x.what) <= (item.at_ms, &item.what));
    h.insert(pos, item);
}

fn apply(i: &mut Incident, a: &Action, signed_ms: i64) {
    insert_sorted(
        &mut i.history,
        HistoryItem {
            at_ms: a.at_ms,
            what: a.action.as_str().to_string(),
            by: Some(a.by.clone()),
            note: a.note.clone(),
            people: None,
            signed_ms,
        },
    );
    // The latest decisive action by signed time wins, whatever order the records arrived in and
    // whatever time they claim.
    let last = i
        .history
        .iter()
        .filter(|h| matches!(h.what.as_str(), "acknowledge" | "resolve" | "false_alarm"))
        .max_by(|x, y| (x.signed_ms, x.at_ms, &x.what).cmp(&(y.signed_ms, y.at_ms, &y.what)));
    if let Some(h) = last {
        i.state = match h.what.as_str() {
            "resolve" => State::Resolved,
            "false_alarm" => State::FalseAlarm,
            _ => State::Acknowledged,
        };
    }
    // Who acknowledged first, by signed time: the same on every node whatever the arrival order.
    i.acknowledged_by = i
        .history
        .iter()
        .filter(|h| matches!(h.what.as_str(), "acknowledge" | "resolve" | "false_alarm"))
        .min_by(|x, y| (x.signed_ms, x.at_ms, &x.by).cmp(&(y.signed_ms, y.at_ms, &y.by)))
        .and_then(|h| h.by.clone());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::ActionKind;
    use crate::event::Detail;
    use lpmesh_mesh::record::Origin;

    fn ev(phase: Phase, at: i64) -> Event {
        Event {
            incident: "n/c/1".into(),
            phase,
            store: "s".into(),
            node: "n".into(),
            camera: "c".into(),
            zone: Some("z".into()),
            kind: EventKind::Loitering,
            severity: Severity::Low,
            started_at_ms: 100,
            at_ms: at,
            ended_at_ms: (phase == Phase::End).then_some(at),
            track: None,
            bbox: None,
            confidence: 0.7,
            model: "m".into(),
            evidence: None,
            detail: Detail::default(),
        }
    }

    fn act(kind: ActionKind, at: i64) -> Action {
        Action {
            incident: "n/c/1".into(),
            incident_started_at_ms: 100,
            action: kind,
            by: "sam".into(),
            node: "n".into(),
            at_ms: at,
            note: None,
        }
    }

    #[test]
    fn expired_incidents_leave_and_expired_records_do_not_come_back() {
        let o = Origin([1; 32]);
        let mut b = Book::new();
        b.event((o, 1), &ev(Phase::Start, 100));
        b.action((o, 2), &act(ActionKind::Acknowledge, 200));
        let mut late = ev(Phase::Start, 5000);
        late.incident = "n/c/2".into();
        b.event((o, 3), &late);
        let floors: BTreeMap<Origin, u64> = [(o, 2)].into();
        assert_eq!(b.expire(&floors, 1000), 1);
        assert!(b.get("n/c/1").is_none() && b.get("n/c/2").is_some());
        assert!(b.event((o, 1), &ev(Phase::Start, 100)).is_none(), "below the floor");
        assert_eq!(b.len(), 1);
    }

    #[test]
    fn folds_phases_and_actions_in_any_order() {
        let o = Origin([1; 32]);
        let mut a = Book::new();
        assert!(matches!(a.event((o, 1), &ev(Phase::Start, 100)), Some(Change::New(_))));
        assert!(
            a.event((o, 1), &ev(Phase::Start, 100)).is_none(),
            "a repeat changes nothing"
        );
        a.action((o, 2), &act(ActionKind::Acknowledge, 150));
        a.event((o, 3), &ev(Phase::End, 200));
        a.action((o, 4), &act(ActionKind::Resolve, 250));
        let i = a.get("n/c/1").unwrap();
        assert_eq!((i.state, i.ongoing, i.ended_at_ms), (State::Resolved, false, Some(200)));
        assert_eq!(i.history.len(), 4);

        // Actions first (from another node), events later: same result.
        let mut b = Book::new();
        b.action((o, 4), &act(ActionKind::Resolve, 250));
        b.action((o, 2), &act(ActionKind::Acknowledge, 150));
        b.event((o, 3), &ev(Phase::End, 200));
        b.event((o, 1), &ev(Phase::Start, 100));
        assert_eq!(b.get("n/c/1").unwrap().state, State::Resolved);
        assert_eq!(b.get("n/c/1").unwrap().history, i.history);
    }
    #[test]
    fn later_actions_win_by_signed_time_not_by_claimed_time() {
        let o = Origin([1; 32]);
        let mut b = Book::new();
        b.event((o, 1), &ev(Phase::Start, 100));
        // Signed at 200 but claiming a later time than the resolve signed at 300.
        b.action_signed((o, 2), &act(ActionKind::FalseAlarm, 900), 200);
        b.action_signed((o, 3), &act(ActionKind::Resolve, 300), 300);
        assert_eq!(b.get("n/c/1").unwrap().state, State::Resolved);
    }

    #[test]
    fn one_node_flooding_incidents_pushes_out_only_its_own() {
        let (honest, flood) = (Origin([1; 32]), Origin([2; 32]));
        let mut b = Book::new();
        for n in 0..100u64 {
            let mut e = ev(Phase::Start, 1_000 + n as i64);
            e.incident = format!("honest/c/{n}");
            b.event((honest, n + 1), &e);
        }
        for n in 0..(MAX_INCIDENTS as u64 + 5_000) {
            let mut e = ev(Phase::Start, 2_000_000 + n as i64);
            e.incident = format!("flood/c/{n}");
            e.started_at_ms = 2_000_000 + n as i64;
            b.event((flood, n + 1), &e);
        }
        assert!(b.len() <= MAX_INCIDENTS);
        assert_eq!(
            (0..100).filter(|n| b.get(&format!("honest/c/{n}")).is_some()).count(),
            100,
            "every honest incident is still in view"
        );
        assert!(b.all().filter(|i| i.origin == flood).count() <= MAX_INCIDENTS_PER_ORIGIN);
        assert!(
            b.get(&format!("flood/c/{}", MAX_INCIDENTS + 4_999)).is_some(),
            "the newest stay"
        );
    }
}
