//! Charts drawn by the node as SVG (no chart service, no script): people counted in/out and incidents
//! by kind, per hour of today or per day of the last 7 days, in the store's time zone.

use std::collections::BTreeMap;
use std::fmt::Write;

use chrono::{Duration, TimeZone};

use crate::event::EventKind;
use crate::incidents::Book;
use crate::zone::Direction;

const W: f64 = 640.0;
const H: f64 = 220.0;
const LEFT: f64 = 36.0;
const BOTTOM: f64 = 24.0;
const TOP: f64 = 22.0;

/// The bins of the chart: their start (Unix ms) and label. Today by hour, or 7 days by day.
fn bins(tz: chrono_tz::Tz, now_ms: i64, days: u32) -> Vec<(i64, String)> {
    let now = tz
        .timestamp_millis_opt(now_ms)
        .single()
        .unwrap_or_else(|| tz.timestamp_millis_opt(0).unwrap());
    let midnight = now.date_naive().and_hms_opt(0, 0, 0).unwrap_or_default();
    let start = tz.from_local_datetime(&midnight).earliest().unwrap_or(now);
    if days == 1 {
        (0..24)
            .map(|h| ((start + Duration::hours(h)).timestamp_millis(), format!("{h:02}")))
            .collect()
    } else {
        (0..days as i64)
            .rev()
            .map(|d| {
                let t = start - Duration::days(d);
                (t.timestamp_millis(), t.format("%a %d").to_string())
            })
            .collect()
    }
}

fn bin_of(bins: &[(i64, String)], width_ms: i64, t: i64) -> Option<usize> {
    let first = bins.first()?.0;
    if t < first || t >= first + width_ms * bins.len() as i64 {
        return None;
    }
    Some(bins.partition_point(|(s, _)| *s <= t) - 1)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn frame(title: &str, labels: &[(i64, String)], max: u64) -> (String, f64, f64) {
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" role="img" aria-label="{t}" font-family="sans-serif" font-size="11"><title>{t}</title>"#,
        t = esc(title)
    );
    let plot_h = H - BOTTOM - TOP;
    let step = (W - LEFT - 8.0) / labels.len().max(1) as f64;
    let _ = write!(
        s,
        r##"<text x="{LEFT}" y="14" font-size="12" fill="#333">{}</text>"##,
        esc(title)
    );
    for k in 0..=4 {
        let v = (max as f64 * k as f64 / 4.0).round();
        let y = H - BOTTOM - plot_h * k as f64 / 4.0;
        let _ = write!(
            s,
            r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#e5e7eb"/><text x="{}" y="{:.1}" text-anchor="end" fill="#666">{v}</text>"##,
            W - 8.0,
            LEFT - 4.0,
            y + 4.0
        );
    }
    let every = if labels.len() > 12 { 3 } else { 1 };
    for (i, (_, l)) in labels.iter().enumerate() {
        if i % every == 0 {
            let _ = write!(
                s,
                r##"<text x="{:.1}" y="{}" text-anchor="middle" fill="#666">{}</text>"##,
                LEFT + step * (i as f64 + 0.5),
                H - 8.0,
                esc(l)
            );
        }
    }
    (s, step, plot_h)
}

/// People counted in and out (line crossings).
pub fn footfall(book: &Book, tz: chrono_tz::Tz, now_ms: i64, days: u32) -> String {
    let b = bins(tz, now_ms, days);
    let width = if days == 1 { 3_600_000 } else { 86_400_000 };
    let mut counts = vec![(0u64, 0u64); b.len()];
    for i in book.all().filter(|i| i.kind == EventKind::LineCrossing) {
        if let Some(k) = bin_of(&b, width, i.started_at_ms) {
            match i.detail.direction {
                Some(Direction::Out) => counts[k].1 += 1,
                _ => counts[k].0 += 1,
            }
        }
    }
    let max = counts.iter().map(|(a, b)| (*a).max(*b)).max().unwrap_or(0).max(4);
    let title = if days == 1 {
        "People in / out per hour, today"
    } else {
        "People in / out per day, last 7 days"
    };
    let (mut s, step, plot_h) = frame(title, &b, max);
    let bw = step * 0.38;
    for (k, (inn, out)) in counts.iter().enumerate() {
        let x = LEFT + step * k as f64 + step * 0.1;
        for (j, (v, colour)) in [(*inn, "#2563eb"), (*out, "#f59e0b")].iter().enumerate() {
            let h = plot_h * *v as f64 / max as f64;
            let _ = write!(
                s,
                r#"<rect x="{:.1}" y="{:.1}" width="{bw:.1}" height="{h:.1}" fill="{colour}"><title>{v}</title></rect>"#,
                x + bw * j as f64,
                H - BOTTOM - h
            );
        }
    }
    let _ = write!(
        s,
        r##"<rect x="{}" y="6" width="10" height="10" fill="#2563eb"/><text x="{}" y="15">in</text><rect x="{}" y="6" width="10" height="10" fill="#f59e0b"/><text x="{}" y="15">out</text></svg>"##,
        W - 110.0,
        W - 96.0,
        W - 70.0,
        W - 56.0
    );
    s
}

const KIND_COLOURS: [&str; 10] = [
    "#dc2626", "#ea580c", "#ca8a04", "#16a34a", "#0891b2", "#2563eb", "#7c3aed", "#db2777", "#4b5563", "#65a30d",
];

/// Incidents by kind, stacked (line crossings are footfall, not incidents).
pub fn incidents(book: &Book, tz: chrono_tz::Tz, now_ms: i64, days: u32) -> String {
    let b = bins(tz, now_ms, days);
    let width = if days == 1 { 3_600_000 } else { 86_400_000 };
    let mut counts: Vec<BTreeMap<&'static str, u64>> = vec![BTreeMap::new(); b.len()];
    for i in book.all().filter(|i| i.kind != EventKind::LineCrossing) {
        if let Some(k) = bin_of(&b, width, i.started_at_ms) {
            *counts[k].entry(i.kind.as_str()).or_insert(0) += 1;
        }
    }
    let max = counts.iter().map(|m| m.values().sum::<u64>()).max().unwrap_or(0).max(4);
    let title = if days == 1 {
        "Incidents per hour, today"
    } else {
        "Incidents per day, last 7 days"
    };
    let (mut s, step, plot_h) = frame(title, &b, max);
    let colour = |kind: &str| {
        let i = EventKind::ALL.iter().position(|k| k.as_str() == kind).unwrap_or(0);
        KIND_COLOURS[i % KIND_COLOURS.len()]
    };
    for (k, m) in counts.iter().enumerate() {
        let x = LEFT + step * k as f64 + step * 0.15;
        let mut y = H - BOTTOM;
        for (kind, v) in m {
            let h = plot_h * *v as f64 / max as f64;
            y -= h;
            let _ = write!(
                s,
                r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{h:.1}" fill="{}"><title>{} {v}</title></rect>"#,
                step * 0.7,
                colour(kind),
                esc(kind)
            );
        }
    }
    let mut seen: Vec<&str> = counts.iter().flat_map(|m| m.keys().copied()).collect();
    seen.sort();
    seen.dedup();
    let mut lx = W - 8.0;
    for kind in seen.iter().rev() {
        lx -= 12.0 + 6.2 * kind.len() as f64;
        let _ = write!(
            s,
            r#"<rect x="{lx:.1}" y="6" width="9" height="9" fill="{}"/><text x="{:.1}" y="15">{}</text>"#,
            colour(kind),
            lx + 11.0,
            esc(kind)
        );
    }
    s.push_str("</svg>");
    s
}
