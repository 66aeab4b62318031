//! Charts drawn by the node as SVG (no chart service, no script): people counted in/out and incidents
//! by kind, per hour of today or per day of the last 7 days, in the store's time zone.

use std::collections::BTreeMap;
use std::fmt::Write;

use chrono::{Duration, TimeZone};

use crate::event::EventKind;
use crate::incidents::Book;
use crate::zone::Direction;
use lpmesh_web::html::escape as esc;

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

/// Legend rows start under the title, each this high.
const LEGEND_Y: f64 = 20.0;
const LEGEND_ROW: f64 = 14.0;

/// Where each legend entry goes (x, y of its swatch): under the title, left to right, wrapping at
/// the chart's width; and where the plot then starts, so neither overlaps the title or the bars.
fn legend_layout(labels: &[&str]) -> (Vec<(f64, f64)>, f64) {
    let mut out = Vec::with_capacity(labels.len());
    let (mut x, mut row) = (LEFT, 0usize);
    for l in labels {
        let w = 12.0 + 6.2 * l.chars().count() as f64 + 10.0;
        if x + w > W - 8.0 && x > LEFT {
            x = LEFT;
            row += 1;
        }
        out.push((x, LEGEND_Y + LEGEND_ROW * row as f64));
        x += w;
    }
    let rows = if labels.is_empty() { 0 } else { row + 1 };
    (out, TOP + LEGEND_ROW * rows as f64)
}

/// Draws the legend `legend_layout` placed.
fn draw_legend(s: &mut String, entries: &[(&str, &str)]) {
    let labels: Vec<&str> = entries.iter().map(|(_, l)| *l).collect();
    let (at, _) = legend_layout(&labels);
    for ((colour, label), (x, y)) in entries.iter().zip(at) {
        let _ = write!(
            s,
            r#"<rect x="{x:.1}" y="{y:.1}" width="9" height="9" fill="{colour}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            x + 11.0,
            y + 9.0,
            esc(label)
        );
    }
}

fn frame(title: &str, labels: &[(i64, String)], max: u64, top: f64) -> (String, f64, f64) {
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" role="img" aria-label="{t}" font-family="sans-serif" font-size="11"><title>{t}</title>"#,
        t = esc(title)
    );
    let plot_h = H - BOTTOM - top;
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
    let legend = [("#2563eb", "in"), ("#f59e0b", "out")];
    let (_, top) = legend_layout(&["in", "out"]);
    let (mut s, step, plot_h) = frame(title, &b, max, top);
    draw_legend(&mut s, &legend);
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
    s.push_str("</svg>");
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
    let colour = |kind: &str| {
        let i = EventKind::ALL.iter().position(|k| k.as_str() == kind).unwrap_or(0);
        KIND_COLOURS[i % KIND_COLOURS.len()]
    };
    let mut seen: Vec<&str> = counts.iter().flat_map(|m| m.keys().copied()).collect();
    seen.sort();
    seen.dedup();
    let (_, top) = legend_layout(&seen);
    let (mut s, step, plot_h) = frame(title, &b, max, top);
    let entries: Vec<(&str, &str)> = seen.iter().map(|k| (colour(k), *k)).collect();
    draw_legend(&mut s, &entries);
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
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_legend_sits_under_the_title_and_above_the_plot_however_many_kinds() {
        let few = ["in", "out"];
        let all: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
        for labels in [&few[..], &all[..]] {
            let (at, top) = legend_layout(labels);
            for (i, (x, y)) in at.iter().enumerate() {
                // The title's baseline is at 14: every swatch starts below it and ends above the plot.
                assert!(*y >= 18.0 && y + 9.0 < top, "entry {i} at y {y}, plot from {top}");
                let w = 12.0 + 6.2 * labels[i].chars().count() as f64;
                assert!(*x >= LEFT && x + w <= W, "entry {i} runs off the chart");
                // No two entries of one row overlap.
                for (j, (x2, y2)) in at.iter().enumerate().take(i) {
                    let w2 = 12.0 + 6.2 * labels[j].chars().count() as f64;
                    assert!(y2 != y || x2 + w2 <= *x, "entries {j} and {i} overlap");
                }
            }
            assert!(H - BOTTOM - top > 80.0, "the plot keeps most of the chart");
        }
        assert_eq!(legend_layout(&[]).1, TOP);
    }
}
