//! Which alerts a route sends: severity, kinds, staffed hours, cooldown. Pure: `now` is an input.

use std::collections::HashMap;

use chrono::{DateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

use super::config::RouteConfig;
use super::Alert;
use crate::event::{EventKind, Severity};
use crate::schedule::{RangeError, Schedule};

/// At most this many (camera, zone, kind) keys are remembered per route. A store has tens of cameras
/// with a handful of zones and ten kinds, so this is only reached by something pathological (zone names
/// churning); then the oldest keys go first, which at worst lets one extra alert through.
pub const COOLDOWN_KEYS_MAX: usize = 10_000;

/// Expired keys are swept every this many decisions, so the map does not grow with history.
const PRUNE_EVERY: u32 = 1024;

/// What a route's filter decided for one alert.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Decision {
    Send,
    BelowSeverity,
    KindFiltered,
    OutsideHours,
    /// Same camera + zone + kind was sent less than the cooldown ago.
    Cooldown,
}

type Key = (String, Option<String>, EventKind);

/// One route's filter and its cooldown memory.
#[derive(Debug)]
pub struct Filter {
    min_severity: Severity,
    kinds: Vec<EventKind>,
    /// Minutes since local midnight, end exclusive; `end` may pass 24*60 (the range runs past midnight).
    hours: Vec<(u32, u32)>,
    cooldown_ms: i64,
    /// When each key last got an alert through.
    last_sent: HashMap<Key, i64>,
    since_prune: u32,
}

/// Why [`Filter::new`] refused a route's filter.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error(transparent)]
    Hours(#[from] RangeError),
    #[error("cooldown_secs {0} must be >= 0")]
    Cooldown(f64),
}

impl Filter {
    /// The filter of a route; fails only on what [`super::AlertsConfig::check`] reports too.
    pub fn new(route: &RouteConfig) -> Result<Filter, FilterError> {
        let hours = route
            .hours
            .iter()
            .map(|h| Schedule::parse_range(h))
            .collect::<Result<Vec<_>, _>>()?;
        if !route.cooldown_secs.is_finite() || route.cooldown_secs < 0.0 {
            return Err(FilterError::Cooldown(route.cooldown_secs));
        }
        Ok(Filter {
            min_severity: route.min_severity,
            kinds: route.kinds.clone(),
            hours,
            cooldown_ms: (route.cooldown_secs * 1000.0).round() as i64,
            last_sent: HashMap::new(),
            since_prune: 0,
        })
    }

    /// Decides for one alert at `now_ms` (Unix ms). `Send` also starts the cooldown for its key, so
    /// the caller must deliver (or at least queue) what it is told to send.
    ///
    /// Hours are judged at `now`, not at the incident's time: they say when someone is there to read
    /// this route.
    pub fn should_send(&mut self, alert: &Alert, now_ms: i64, tz: Tz) -> Decision {
        if alert.severity < self.min_severity {
            return Decision::BelowSeverity;
        }
        if !self.kinds.is_empty() && !self.kinds.contains(&alert.kind) {
            return Decision::KindFiltered;
        }
        if !self.in_hours(now_ms, tz) {
            return Decision::OutsideHours;
        }
        if self.cooldown_ms > 0 {
            self.since_prune += 1;
            if self.since_prune >= PRUNE_EVERY {
                self.prune(now_ms);
            }
            let key = (alert.camera.clone(), alert.zone.clone(), alert.kind);
            if let Some(&last) = self.last_sent.get(&key) {
                // A clock that stepped backwards must not silence a camera until it catches up.
                if now_ms >= last && now_ms - last < self.cooldown_ms {
                    return Decision::Cooldown;
                }
            }
            if self.last_sent.len() >= COOLDOWN_KEYS_MAX && !self.last_sent.contains_key(&key) {
                self.prune(now_ms);
                if self.last_sent.len() >= COOLDOWN_KEYS_MAX {
                    self.evict_oldest();
                }
            }
            self.last_sent.insert(key, now_ms);
        }
        Decision::Send
    }

    /// How many cooldown keys are remembered.
    pub fn tracked_keys(&self) -> usize {
        self.last_sent.len()
    }

    fn in_hours(&self, now_ms: i64, tz: Tz) -> bool {
        if self.hours.is_empty() {
            return true;
        }
        let Some(utc) = DateTime::<Utc>::from_timestamp_millis(now_ms) else {
            return false;
        };
        let local = tz.from_utc_datetime(&utc.naive_utc());
        let m = local.hour() * 60 + local.minute();
        // A range past midnight covers the early minutes of the next day as m + 24 h.
        self.hours
            .iter()
            .any(|&(s, e)| (m >= s && m < e) || (m + 24 * 60 >= s && m + 24 * 60 < e))
    }

    fn prune(&mut self, now_ms: i64) {
        self.since_prune = 0;
        let cd = self.cooldown_ms;
        self.last_sent.retain(|_, &mut t| now_ms < t || now_ms - t < cd);
    }

    fn evict_oldest(&mut self) {
        if let Some(k) = self.last_sent.iter().min_by_key(|(_, &t)| t).map(|(k, _)| k.clone()) {
            self.last_sent.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::config::RouteKind;

    fn alert(camera: &str, zone: Option<&str>, kind: EventKind, severity: Severity) -> Alert {
        Alert {
            incident: format!("n1/{camera}/1-0"),
            store: "shop-1".into(),
            node: "n1".into(),
            camera: camera.into(),
            zone: zone.map(str::to_string),
            kind,
            severity,
            started_at_ms: 0,
            at_ms: 0,
            people: None,
            text: String::new(),
            link: String::new(),
            evidence_url: None,
        }
    }

    fn route() -> RouteConfig {
        RouteConfig {
            name: "r".into(),
            kind: RouteKind::Console,
            ..RouteConfig::default()
        }
    }

    const UTC: Tz = chrono_tz::UTC;
    /// 2024-06-03 12:00:00 UTC (a Monday).
    const NOON: i64 = 1_717_416_000_000;

    #[test]
    fn severity_below_the_minimum_is_not_sent() {
        let mut f = Filter::new(&route()).unwrap(); // default min: medium
        let low = alert("door", None, EventKind::Loitering, Severity::Low);
        assert_eq!(f.should_send(&low, NOON, UTC), Decision::BelowSeverity);
        let med = alert("door", None, EventKind::Crowding, Severity::Medium);
        assert_eq!(f.should_send(&med, NOON, UTC), Decision::Send);
        let crit = alert("door", None, EventKind::AfterHours, Severity::Critical);
        assert_eq!(f.should_send(&crit, NOON, UTC), Decision::Send);
    }

    #[test]
    fn only_listed_kinds_when_kinds_are_given() {
        let mut f = Filter::new(&RouteConfig {
            kinds: vec![EventKind::ExitWithoutCheckout, EventKind::ShelfSweep],
            ..route()
        })
        .unwrap();
        let a = alert("door", None, EventKind::AfterHours, Severity::High);
        assert_eq!(f.should_send(&a, NOON, UTC), Decision::KindFiltered);
        let b = alert("door", None, EventKind::ShelfSweep, Severity::High);
        assert_eq!(f.should_send(&b, NOON, UTC), Decision::Send);
        // Severity is judged first.
        let c = alert("door", None, EventKind::AfterHours, Severity::Info);
        assert_eq!(f.should_send(&c, NOON, UTC), Decision::BelowSeverity);
    }

    #[test]
    fn hours_across_midnight_in_the_store_time_zone() {
        let tz: Tz = "America/New_York".parse().unwrap(); // UTC-4 in June
        let mut f = Filter::new(&RouteConfig {
            hours: vec!["22:00-06:00".into()],
            cooldown_secs: 0.0,
            ..route()
        })
        .unwrap();
        let a = alert("door", None, EventKind::AfterHours, Severity::High);
        let hour = 3_600_000;
        // 12:00 UTC = 08:00 local: outside.
        assert_eq!(f.should_send(&a, NOON, tz), Decision::OutsideHours);
        // 02:30 UTC next day = 22:30 local: inside (the evening part).
        assert_eq!(f.should_send(&a, NOON + 14 * hour + hour / 2, tz), Decision::Send);
        // 07:00 UTC next day = 03:00 local: inside (past midnight).
        assert_eq!(f.should_send(&a, NOON + 19 * hour, tz), Decision::Send);
        // 09:59 UTC = 05:59 local: inside; 10:00 UTC = 06:00 local: outside (end exclusive).
        assert_eq!(f.should_send(&a, NOON + 22 * hour - 60_000, tz), Decision::Send);
        assert_eq!(f.should_send(&a, NOON + 22 * hour, tz), Decision::OutsideHours);
        // The same instants in UTC would be judged differently: the zone matters.
        assert_eq!(f.should_send(&a, NOON + 14 * hour + hour / 2, UTC), Decision::Send); // 02:30
        assert_eq!(f.should_send(&a, NOON + 19 * hour, UTC), Decision::OutsideHours);
        // 07:00
    }

    #[test]
    fn several_ranges_and_empty_hours() {
        let mut f = Filter::new(&RouteConfig {
            hours: vec!["08:00-09:00".into(), "17:00-18:30".into()],
            cooldown_secs: 0.0,
            ..route()
        })
        .unwrap();
        let a = alert("door", None, EventKind::AfterHours, Severity::High);
        assert_eq!(f.should_send(&a, NOON, UTC), Decision::OutsideHours);
        assert_eq!(f.should_send(&a, NOON - 3 * 3_600_000 - 1, UTC), Decision::Send); // 08:59:59
        assert_eq!(f.should_send(&a, NOON + 6 * 3_600_000, UTC), Decision::Send); // 18:00
        let mut always = Filter::new(&route()).unwrap();
        assert_eq!(always.should_send(&a, NOON, UTC), Decision::Send);
    }

    #[test]
    fn a_burst_is_one_alert_per_cooldown_window_per_camera_zone_kind() {
        let mut f = Filter::new(&route()).unwrap(); // 60 s
        let a = alert("door", Some("exit"), EventKind::ExitWithoutCheckout, Severity::High);
        // 10 identical alerts within 5 s: one goes out.
        let sends = (0..10)
            .filter(|i| f.should_send(&a, NOON + i * 500, UTC) == Decision::Send)
            .count();
        assert_eq!(sends, 1);
        assert_eq!(f.should_send(&a, NOON + 5_000, UTC), Decision::Cooldown);
        // Another zone, another camera, another kind: each is its own key.
        let z = alert("door", Some("entrance"), EventKind::ExitWithoutCheckout, Severity::High);
        assert_eq!(f.should_send(&z, NOON + 5_000, UTC), Decision::Send);
        let c = alert("till", Some("exit"), EventKind::ExitWithoutCheckout, Severity::High);
        assert_eq!(f.should_send(&c, NOON + 5_000, UTC), Decision::Send);
        let k = alert("door", Some("exit"), EventKind::Crowding, Severity::High);
        assert_eq!(f.should_send(&k, NOON + 5_000, UTC), Decision::Send);
        let nz = alert("door", None, EventKind::ExitWithoutCheckout, Severity::High);
        assert_eq!(f.should_send(&nz, NOON + 5_000, UTC), Decision::Send);
        // The window runs from the alert that went out, not from the last one held back.
        assert_eq!(f.should_send(&a, NOON + 59_999, UTC), Decision::Cooldown);
        assert_eq!(f.should_send(&a, NOON + 60_000, UTC), Decision::Send);
        assert_eq!(f.should_send(&a, NOON + 60_001, UTC), Decision::Cooldown);
    }

    #[test]
    fn filtered_alerts_do_not_start_a_cooldown() {
        let mut f = Filter::new(&RouteConfig {
            hours: vec!["09:00-10:00".into()],
            ..route()
        })
        .unwrap();
        let a = alert("door", None, EventKind::AfterHours, Severity::High);
        assert_eq!(f.should_send(&a, NOON - 3 * 3_600_000 - 1, UTC), Decision::OutsideHours); // 08:59:59
        assert_eq!(f.should_send(&a, NOON - 3 * 3_600_000, UTC), Decision::Send); // 09:00
        assert_eq!(f.tracked_keys(), 1);
    }

    #[test]
    fn zero_cooldown_sends_everything_and_remembers_nothing() {
        let mut f = Filter::new(&RouteConfig {
            cooldown_secs: 0.0,
            ..route()
        })
        .unwrap();
        let a = alert("door", None, EventKind::AfterHours, Severity::High);
        for i in 0..5 {
            assert_eq!(f.should_send(&a, NOON + i, UTC), Decision::Send);
        }
        assert_eq!(f.tracked_keys(), 0);
    }

    #[test]
    fn a_clock_stepping_back_does_not_silence_a_camera() {
        let mut f = Filter::new(&route()).unwrap();
        let a = alert("door", None, EventKind::AfterHours, Severity::High);
        assert_eq!(f.should_send(&a, NOON, UTC), Decision::Send);
        assert_eq!(f.should_send(&a, NOON - 3_600_000, UTC), Decision::Send);
    }

    #[test]
    fn the_cooldown_memory_is_bounded_and_pruned() {
        let mut f = Filter::new(&route()).unwrap();
        // Churning zone names: never more than the cap, and everything still goes out.
        for i in 0..(COOLDOWN_KEYS_MAX as i64 + 500) {
            let z = format!("z{i}");
            let a = alert("door", Some(&z), EventKind::Crowding, Severity::High);
            assert_eq!(f.should_send(&a, NOON + i, UTC), Decision::Send);
            assert!(f.tracked_keys() <= COOLDOWN_KEYS_MAX);
        }
        // Once the cooldown has passed, old keys are swept out as decisions go by.
        let later = NOON + 10 * 60_000;
        let a = alert("door", None, EventKind::Crowding, Severity::High);
        for i in 0..PRUNE_EVERY as i64 {
            f.should_send(&a, later + i, UTC);
        }
        assert!(f.tracked_keys() <= 2, "{}", f.tracked_keys());
    }
}
