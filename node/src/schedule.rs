//! The store's opening schedule, in its own time zone (daylight-saving changes included).

use chrono::{DateTime, Datelike, NaiveDate, NaiveTime, TimeZone, Utc, Weekday};
use chrono_tz::Tz;

use crate::config::{path, FieldPath, WEEKDAYS};

/// Opening hours per weekday plus closed dates. A range that ends at or before it starts runs past
/// midnight and belongs to the day it starts ("22:00-02:00" on Friday covers Saturday 01:00).
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    tz: Tz,
    /// Monday first; minutes since local midnight, `end` may exceed 24*60 for ranges past midnight.
    days: [Vec<(u32, u32)>; 7],
    closed: Vec<NaiveDate>,
}

impl Schedule {
    /// Open all the time (no schedule configured).
    pub fn always_open(tz: Tz) -> Self {
        Self {
            tz,
            days: std::array::from_fn(|_| vec![(0, 24 * 60)]),
            closed: Vec::new(),
        }
    }

    pub fn timezone(&self) -> Tz {
        self.tz
    }

    /// Parses a time zone name (IANA, e.g. "Europe/London").
    pub fn parse_tz(name: &str) -> Result<Tz, UnknownTimeZone> {
        // chrono-tz's own error says no more than this one, so it is not kept.
        name.parse::<Tz>().map_err(|_| UnknownTimeZone(name.to_string()))
    }

    /// Parses "HH:MM-HH:MM" (24:00 allowed as an end).
    pub fn parse_range(s: &str) -> Result<(u32, u32), RangeError> {
        let bad = |source| RangeError {
            text: s.to_string(),
            source,
        };
        let (a, b) = s.split_once('-').ok_or_else(|| bad(None))?;
        let minutes = |t: &str| -> Result<u32, RangeError> {
            let t = t.trim();
            if t == "24:00" {
                return Ok(24 * 60);
            }
            let nt = NaiveTime::parse_from_str(t, "%H:%M").map_err(|e| bad(Some(e)))?;
            Ok(chrono::Timelike::hour(&nt) * 60 + chrono::Timelike::minute(&nt))
        };
        let (start, mut end) = (minutes(a)?, minutes(b)?);
        if start == 24 * 60 {
            return Err(bad(None));
        }
        if end <= start {
            end += 24 * 60;
        }
        Ok((start, end))
    }

    /// `days` Monday first, each a list of ranges as [`Schedule::parse_range`] reads them.
    pub fn new(tz: Tz, days: [Vec<(u32, u32)>; 7], closed: Vec<NaiveDate>) -> Self {
        Self { tz, days, closed }
    }

    pub fn is_open(&self, at_ms: i64) -> bool {
        let Some(utc) = DateTime::<Utc>::from_timestamp_millis(at_ms) else {
            return false;
        };
        let local = self.tz.from_utc_datetime(&utc.naive_utc());
        let date = local.date_naive();
        let minute = chrono::Timelike::hour(&local) * 60 + chrono::Timelike::minute(&local);
        let open_on = |d: NaiveDate, m: u32| {
            !self.closed.contains(&d)
                && self.days[weekday_index(d.weekday())]
                    .iter()
                    .any(|&(s, e)| m >= s && m < e)
        };
        if open_on(date, minute) {
            return true;
        }
        // Yesterday's ranges that run past midnight.
        date.pred_opt().is_some_and(|y| open_on(y, minute + 24 * 60))
    }
}

/// A time zone name that is not in the IANA database (the name as given).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown time zone {0:?} (use an IANA name such as \"Europe/London\")")]
pub struct UnknownTimeZone(pub String);

/// A time range that is not "HH:MM-HH:MM".
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a time range like \"08:30-21:00\"")]
pub struct RangeError {
    pub text: String,
    /// Why a time in it did not parse, when that was the trouble.
    #[source]
    pub source: Option<chrono::ParseError>,
}

fn weekday_index(w: Weekday) -> usize {
    w.num_days_from_monday() as usize
}

/// The configuration's `[schedule]` section compiled into a [`Schedule`].
impl crate::config::ScheduleConfig {
    fn days(&self) -> [&Option<Vec<String>>; 7] {
        [
            &self.monday,
            &self.tuesday,
            &self.wednesday,
            &self.thursday,
            &self.friday,
            &self.saturday,
            &self.sunday,
        ]
    }

    /// The schedule, or every problem with it as (field, message).
    pub fn compile(&self) -> Result<Schedule, Vec<(FieldPath, String)>> {
        let mut problems = Vec::new();
        let tz = Schedule::parse_tz(&self.timezone)
            .map_err(|e| problems.push((path(&["schedule", "timezone"]), e.to_string())));
        let configured = self.days().iter().any(|d| d.is_some());
        let mut days: [Vec<(u32, u32)>; 7] = Default::default();
        for (i, day) in self.days().iter().enumerate() {
            for (j, r) in day.iter().flatten().enumerate() {
                match Schedule::parse_range(r) {
                    Ok(range) => days[i].push(range),
                    Err(e) => problems.push((path(&["schedule", WEEKDAYS[i]]).index(j), e.to_string())),
                }
            }
        }
        let mut closed = Vec::new();
        for (j, d) in self.closed_dates.iter().enumerate() {
            match NaiveDate::parse_from_str(d, "%Y-%m-%d") {
                Ok(d) => closed.push(d),
                Err(_) => problems.push((
                    path(&["schedule", "closed_dates"]).index(j),
                    format!("{d:?} is not a date like \"2026-12-25\""),
                )),
            }
        }
        match tz {
            Ok(tz) if problems.is_empty() => Ok(if configured {
                Schedule::new(tz, days, closed)
            } else {
                Schedule::always_open(tz)
            }),
            _ => Err(problems),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDateTime;

    fn ms(tz: Tz, local: &str) -> i64 {
        let naive = NaiveDateTime::parse_from_str(local, "%Y-%m-%d %H:%M").unwrap();
        tz.from_local_datetime(&naive).earliest().unwrap().timestamp_millis()
    }

    fn weekdays(ranges: &[&str]) -> [Vec<(u32, u32)>; 7] {
        std::array::from_fn(|_| ranges.iter().map(|r| Schedule::parse_range(r).unwrap()).collect())
    }

    #[test]
    fn opening_hours_in_local_time() {
        let tz = Schedule::parse_tz("Europe/London").unwrap();
        let s = Schedule::new(tz, weekdays(&["08:00-21:00"]), vec![]);
        assert!(!s.is_open(ms(tz, "2026-06-10 07:59")));
        assert!(s.is_open(ms(tz, "2026-06-10 08:00")));
        assert!(s.is_open(ms(tz, "2026-06-10 20:59")));
        assert!(!s.is_open(ms(tz, "2026-06-10 21:00")));
    }

    #[test]
    fn a_range_past_midnight_belongs_to_the_day_it_starts() {
        let tz = Schedule::parse_tz("Europe/Berlin").unwrap();
        let mut days: [Vec<(u32, u32)>; 7] = Default::default();
        days[4] = vec![Schedule::parse_range("22:00-02:00").unwrap()]; // Friday night only
        let s = Schedule::new(tz, days, vec![]);
        // 2026-11-27 is a Friday.
        assert!(s.is_open(ms(tz, "2026-11-27 23:30")));
        assert!(s.is_open(ms(tz, "2026-11-28 01:59")));
        assert!(!s.is_open(ms(tz, "2026-11-28 02:00")));
        assert!(!s.is_open(ms(tz, "2026-11-28 23:30")), "Saturday night is closed");
        assert!(!s.is_open(ms(tz, "2026-11-27 01:00")), "Thursday night is closed");
    }

    #[test]
    fn daylight_saving_changes_follow_the_wall_clock() {
        let tz = Schedule::parse_tz("Europe/London").unwrap();
        let s = Schedule::new(tz, weekdays(&["08:00-21:00"]), vec![]);
        // Clocks go forward on 2026-03-29 at 01:00 UTC: 08:00 local is 07:00 UTC that day, 08:00 UTC the day before.
        let before = DateTime::parse_from_rfc3339("2026-03-28T07:30:00Z")
            .unwrap()
            .timestamp_millis();
        let after = DateTime::parse_from_rfc3339("2026-03-29T07:30:00Z")
            .unwrap()
            .timestamp_millis();
        assert!(!s.is_open(before), "07:30 UTC is 07:30 local in winter: closed");
        assert!(s.is_open(after), "07:30 UTC is 08:30 local in summer: open");
        // And back on 2026-10-25.
        let summer = DateTime::parse_from_rfc3339("2026-10-24T20:30:00Z")
            .unwrap()
            .timestamp_millis();
        let winter = DateTime::parse_from_rfc3339("2026-10-25T20:30:00Z")
            .unwrap()
            .timestamp_millis();
        assert!(!s.is_open(summer), "20:30 UTC is 21:30 local in summer: closed");
        assert!(s.is_open(winter), "20:30 UTC is 20:30 local in winter: open");
    }

    #[test]
    fn closed_dates_and_bad_input() {
        let tz = Schedule::parse_tz("UTC").unwrap();
        let xmas = NaiveDate::from_ymd_opt(2026, 12, 25).unwrap();
        let s = Schedule::new(tz, weekdays(&["00:00-24:00"]), vec![xmas]);
        assert!(!s.is_open(ms(tz, "2026-12-25 12:00")));
        assert!(s.is_open(ms(tz, "2026-12-26 12:00")));
        assert!(Schedule::parse_range("8-21").is_err());
        assert!(Schedule::parse_range("25:00-26:00").is_err());
        assert!(Schedule::parse_tz("Mars/Olympus").is_err());
    }
}
