//! HQ's dashboard and export, on the dashboard listener, for logged-in users only ([`crate::signin`]).
//! Plain server-rendered HTML with an inline stylesheet and no scripts: HQ may have no internet and
//! analysts' browsers may be locked down, so nothing is fetched from elsewhere.
//!
//! - `GET /`: the chain at a glance (last 24 h per store) and serious incidents of the last 7 days.
//! - `GET /stores/{store}`: one store period by period (`?from=&to=`, by default the last 7 days).
//! - `GET /export.csv`, `GET /export.json`: `?store=&from=&to=&limit=&after=`, times as RFC 3339 or
//!   Unix milliseconds. A page holds at most `limit` summaries (default 1,000, at most 5,000); the next
//!   page's address comes in the `Link` header (`rel="next"`) and, in JSON, as `next`. Without `to` the
//!   range ends now; without `from` it starts 7 days before `to`; it may span at most `export_max_days`.
//! - `GET /metrics`: HQ's counters, for admins or a scraper holding the metrics token.
//!
//! A viewer sees only the stores they are scoped to: another store is "not found" to them, on every
//! page and in every export. Periods are selected by their start: `from` is inclusive, `to` exclusive.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, SecondsFormat};
use serde::{Deserialize, Serialize};

use crate::server::HqState;
use crate::signin::{Analyst, NeedLogin};
use crate::store::{Filter, StoreError, StoredSummary, Totals};
use crate::summary::{Incident, Summary, MAX_INCIDENTS};
pub(crate) use lpmesh_web::html::escape as esc;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;
/// Bounds a page's size when a store floods HQ with incidents.
const MAX_SERIOUS_ROWS: usize = 200;
/// In rising order; also the CSV's per-severity columns.
const SEVERITIES: [&str; 5] = ["info", "low", "medium", "high", "critical"];
const CSP: &str =
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'";
const CSV_HEADER: &str = "store,period_start,period_secs,footfall_in,footfall_out,incidents,info,low,medium,high,\
critical,acknowledged,resolved,false_alarms,ack_secs_mean,camera_uptime_min,serious_total,received_at,updates";

const STYLE: &str = "body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;color:#1d2330;\
background:#f5f6f8}header{background:#1d2330;padding:.6rem 1.5rem;display:flex;gap:1.5rem;align-items:baseline}\
header a{color:#fff;text-decoration:none}header .brand{font-weight:600;font-size:1.1rem}main{padding:1rem 1.5rem}\
h1{font-size:1.4rem;margin:.2rem 0 1rem}h2{font-size:1.1rem;margin:1.8rem 0 .5rem}a{color:#1849a9}\
table{border-collapse:collapse;background:#fff;font-variant-numeric:tabular-nums;border:1px solid #e3e6ea}\
th,td{padding:.35rem .6rem;border-bottom:1px solid #e3e6ea;text-align:left;vertical-align:top;white-space:nowrap}\
th{background:#eef0f3;font-size:.85rem}td.n{text-align:right}tr:hover td{background:#f9fafb}.scroll{overflow-x:auto}\
.cards{display:flex;flex-wrap:wrap;gap:.8rem}.card{background:#fff;border:1px solid #e3e6ea;border-radius:6px;\
padding:.6rem 1rem;min-width:9rem}.card b{display:block;font-size:1.5rem}.muted{color:#6b7280}\
.sev-hi{background:#fde8e7;color:#a21c12;font-weight:600}.sev-med{background:#fef3dc;color:#93500a;font-weight:600}\
form{margin:.5rem 0 1rem}input{font:inherit;padding:.2rem .4rem;margin-right:.5rem}\
header .who{color:#c9ced6;margin-left:auto}header form.out{margin:0}header form.out button{font:inherit}\
form.login{display:flex;flex-direction:column;gap:.6rem;max-width:20rem}form.login input{display:block;width:100%}\
.error{color:#a21c12;font-weight:600}";

/// Summaries in one export page unless `limit` says otherwise, and the most it may say.
pub const EXPORT_PAGE: usize = 1_000;
pub const EXPORT_PAGE_MAX: usize = 5_000;
/// Forms are small: a login, a logout.
const FORM_LIMIT: usize = 16 * 1024;

/// Every route of the dashboard listener.
pub fn app(state: Arc<HqState>) -> Router {
    Router::new()
        .route("/", get(overview))
        .route("/stores/{store}", get(store_page))
        .route("/export.csv", get(export_csv))
        .route("/export.json", get(export_json))
        .route("/metrics", get(metrics))
        .route("/health", get(crate::server::health))
        .route("/login", get(crate::signin::get_login).post(crate::signin::post_login))
        .route("/logout", post(crate::signin::post_logout))
        .layer(DefaultBodyLimit::max(FORM_LIMIT))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

/// On every answer of the dashboard listener: HTTPS only from now on, never framed, no referrer
/// carrying a store's name elsewhere.
async fn security_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    r
}

#[derive(Debug, Default, Deserialize)]
struct RangeQuery {
    store: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: Option<String>,
    /// `<period start ms>:<store>`: the last row of the previous page.
    after: Option<String>,
}

/// Why a request failed; kept small so that every `Result` here stays cheap to return.
enum Fail {
    /// A query parameter that is neither RFC 3339 nor Unix milliseconds.
    Param(&'static str),
    /// A parameter out of its range, with what it may be.
    Bad(String),
    /// A store this user may not see (or that does not exist): the same answer for both.
    NotFound,
    Store(StoreError),
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Fail {
        Fail::Store(e)
    }
}

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        match self {
            Fail::Param(p) => plain(
                StatusCode::BAD_REQUEST,
                format!("bad `{p}`: expected RFC 3339 or Unix milliseconds\n"),
            ),
            Fail::Bad(m) => plain(StatusCode::BAD_REQUEST, format!("{m}\n")),
            Fail::NotFound => plain(StatusCode::NOT_FOUND, "no such store\n"),
            Fail::Store(e) => {
                tracing::error!(error = %e, "dashboard: storage failed");
                plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "HQ storage is unavailable; try again shortly\n",
                )
            }
        }
    }
}

impl RangeQuery {
    fn range(&self) -> Result<(Option<i64>, Option<i64>), Fail> {
        Ok((
            parse_time("from", self.from.as_deref())?,
            parse_time("to", self.to.as_deref())?,
        ))
    }
}

fn parse_time(param: &'static str, value: Option<&str>) -> Result<Option<i64>, Fail> {
    // Empty fields are what a form sends for "no bound".
    let v = match value.map(str::trim) {
        None | Some("") => return Ok(None),
        Some(v) => v,
    };
    let bad = || Fail::Param(param);
    if let Ok(ms) = v.parse::<i64>() {
        return DateTime::from_timestamp_millis(ms).map(|_| Some(ms)).ok_or_else(bad);
    }
    // A `+` typed into a URL by hand arrives as a space; give the offset its sign back.
    let plus = v.rsplit_once(' ').map(|(a, b)| format!("{a}+{b}"));
    DateTime::parse_from_rfc3339(v)
        .or_else(|e| plus.as_deref().map_or(Err(e), DateTime::parse_from_rfc3339))
        .map(|t| Some(t.timestamp_millis()))
        .map_err(|_| bad())
}

use lpmesh_web::clock::now_ms;

fn plain(status: StatusCode, msg: impl Into<String>) -> Response {
    let headers = [
        (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
        (header::CACHE_CONTROL, "no-store"),
    ];
    (status, headers, msg.into()).into_response()
}

/// A page; `who` (the logged-in user) gets the navigation and the logout button.
pub(crate) fn html(status: StatusCode, heading: &str, body: &str, who: Option<&Analyst>) -> Response {
    let nav = who.map_or_else(String::new, |a| {
        format!(
            "<a href=\"/\">Chain overview</a><a href=\"/export.csv\">Export CSV</a><a href=\"/export.json\">Export JSON</a>\
             <span class=\"who\">{} ({})</span><form method=\"post\" action=\"/logout\" class=\"out\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\"><button type=\"submit\">Log out</button></form>",
            esc(&a.user.name),
            a.user.role.as_str(),
            esc(&a.csrf)
        )
    });
    let doc = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>lpmesh HQ</title>\
         <style>{STYLE}</style></head><body><header><a class=\"brand\" href=\"/\">lpmesh HQ</a>{nav}\
         </header><main><h1>{}</h1>{body}</main></body></html>\n",
        esc(heading)
    );
    let headers = [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::CACHE_CONTROL, "no-store"),
    ];
    (status, headers, doc).into_response()
}

/// Percent-encodes everything but unreserved characters, for a path segment or a query value.
pub(crate) fn enc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            o.push(char::from(b));
        } else {
            let _ = write!(o, "%{b:02X}");
        }
    }
    o
}

fn store_link(store: &str) -> String {
    format!("<a href=\"/stores/{}\">{}</a>", enc(store), esc(store))
}

fn utc(ms: i64, fmt: &str) -> String {
    DateTime::from_timestamp_millis(ms).map_or_else(|| ms.to_string(), |t| t.format(fmt).to_string())
}

fn minute(ms: i64) -> String {
    utc(ms, "%Y-%m-%d %H:%M")
}

fn rfc3339(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms).map_or_else(|| ms.to_string(), |t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
}

fn ago(now: i64, ms: i64) -> String {
    match now.saturating_sub(ms) / 1000 {
        s if s < 0 => "in the future".into(),
        0..=59 => "just now".into(),
        s @ 60..=3599 => format!("{} min ago", s / 60),
        s @ 3600..=86_399 => format!("{} h ago", s / 3600),
        s => format!("{} d ago", s / 86_400),
    }
}

fn duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "–".into();
    }
    let s = secs.round() as u64;
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, s % 3600 / 60),
    }
}

/// The class attribute for a severity; data never reaches the attribute itself.
fn sev_class(sev: &str) -> &'static str {
    match sev {
        "critical" | "high" => " class=\"sev-hi\"",
        "medium" => " class=\"sev-med\"",
        _ => "",
    }
}

fn compact<'a>(it: impl Iterator<Item = (&'a String, &'a u64)>) -> String {
    let parts: Vec<String> = it.map(|(k, n)| format!("{} {n}", esc(k))).collect();
    if parts.is_empty() {
        "–".into()
    } else {
        parts.join(", ")
    }
}

fn by_severity(m: &BTreeMap<String, u64>) -> String {
    let mut v: Vec<_> = m.iter().collect();
    // Worst first; severities HQ does not know go last.
    v.sort_by_key(|(k, _)| std::cmp::Reverse(SEVERITIES.iter().position(|s| s == k)));
    compact(v.into_iter())
}

/// (min, mean) uptime over cameras, 0..1.
fn uptime(s: &Summary) -> Option<(f64, f64)> {
    if s.cameras.is_empty() {
        return None;
    }
    let min = s.cameras.iter().map(|c| c.uptime).fold(f64::INFINITY, f64::min);
    Some((
        min,
        s.cameras.iter().map(|c| c.uptime).sum::<f64>() / s.cameras.len() as f64,
    ))
}

fn num(n: impl std::fmt::Display) -> String {
    format!("<td class=\"n\">{n}</td>")
}

/// What a serious-incident table was given.
enum Read {
    /// Every summary of the span: the table says how many they list and how many the stores counted.
    All,
    /// Only the summaries with the newest incidents (the chain overview): the table says how many
    /// the stores counted in the span.
    Newest { counted: u64 },
}

/// The serious incidents of `rows`, newest first.
fn serious_table(rows: &[StoredSummary], read: Read) -> String {
    let mut all: Vec<(&str, &Incident)> = rows
        .iter()
        .flat_map(|r| r.summary.serious.iter().map(move |i| (r.summary.store.as_str(), i)))
        .collect();
    all.sort_by(|a, b| b.1.started_at_ms.cmp(&a.1.started_at_ms).then_with(|| a.0.cmp(b.0)));
    let mut h = String::new();
    if all.is_empty() {
        h.push_str("<p class=\"muted\">None.</p>");
    } else {
        h.push_str(
            "<div class=\"scroll\"><table><tr><th>Started (UTC)</th><th>Store</th><th>Camera</th><th>Zone</th>\
             <th>Kind</th><th>Severity</th><th>State</th><th>Time to acknowledge</th><th>Ended</th></tr>",
        );
        for (store, i) in all.iter().take(MAX_SERIOUS_ROWS) {
            let ack = i.acknowledged_at_ms.map_or_else(String::new, |a| {
                duration(a.saturating_sub(i.started_at_ms) as f64 / 1e3)
            });
            let ended = i
                .ended_at_ms
                .map_or_else(|| "ongoing".to_string(), |e| format!("ended {}", minute(e)));
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td{}>{}</td><td>{}</td><td>{ack}</td>\
                 <td>{ended}</td></tr>",
                utc(i.started_at_ms, "%Y-%m-%d %H:%M:%S"),
                store_link(store),
                esc(&i.camera),
                esc(i.zone.as_deref().unwrap_or("")),
                esc(&i.kind),
                sev_class(&i.severity),
                esc(&i.severity),
                esc(&i.state),
            );
        }
        h.push_str("</table></div>");
    }
    let shown = all.len().min(MAX_SERIOUS_ROWS);
    match read {
        Read::All => {
            if all.len() > shown {
                let _ = write!(h, "<p class=\"muted\">Newest {shown} of {} listed.</p>", all.len());
            }
            let counted = rows.iter().fold(0u64, |t, r| t.saturating_add(r.summary.serious_total));
            if counted > all.len() as u64 {
                let _ = write!(
                    h,
                    "<p class=\"muted\">Stores counted {counted} serious incidents; each lists at most \
                     {MAX_INCIDENTS} a period.</p>"
                );
            }
        }
        Read::Newest { counted } if counted > shown as u64 => {
            let _ = write!(
                h,
                "<p class=\"muted\">Newest {shown} shown of the {counted} serious incidents the stores counted.</p>"
            );
        }
        Read::Newest { .. } => {}
    }
    h
}

async fn overview(State(st): State<Arc<HqState>>, who: Analyst) -> Result<Response, Fail> {
    let now = now_ms();
    let mut stores = st.store.stores().await?;
    stores.retain(|r| who.user.may_see(&r.store));
    let week_from = now - 7 * DAY_MS;
    // Totals and the newest serious incidents only: not every summary of every store.
    let view = st
        .store
        .overview(now - DAY_MS, week_from, who.user.scope(), MAX_SERIOUS_ROWS)
        .await?;
    let mut chain = Totals::default();
    for t in view.day.values() {
        chain.add(t);
    }
    let synced = stores
        .iter()
        .filter(|r| r.last_sync_ms.is_some_and(|t| t >= now - 2 * HOUR_MS))
        .count();
    let cards = [
        (stores.len() as u64, "stores"),
        (synced as u64, "synced in the last 2 h"),
        (chain.footfall_in, "footfall in"),
        (chain.incidents, "incidents"),
        (chain.serious, "serious incidents"),
    ];
    let mut h = String::from("<h2>Last 24 hours</h2><div class=\"cards\">");
    for (n, label) in cards {
        let _ = write!(
            h,
            "<div class=\"card\"><b>{n}</b><span class=\"muted\">{label}</span></div>"
        );
    }
    h.push_str(
        "</div><h2>Stores</h2><div class=\"scroll\"><table><tr><th>Store</th><th>Registered (UTC)</th>\
         <th>Last sync (UTC)</th><th>Periods held</th><th>Footfall in, 24 h</th><th>Footfall out, 24 h</th>\
         <th>Incidents, 24 h</th></tr>",
    );
    for r in &stores {
        let t = view.day.get(&r.store).copied().unwrap_or_default();
        let (i, o, n) = (t.footfall_in, t.footfall_out, t.incidents);
        let mut sync = r
            .last_sync_ms
            .map_or_else(|| "never".into(), |t| format!("{} ({})", minute(t), ago(now, t)));
        if let Some(u) = r.unregistered_at_ms {
            let _ = write!(sync, " · unregistered {}", minute(u));
        }
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{sync}</td>{}{}{}{}</tr>",
            store_link(&r.store),
            minute(r.registered_at_ms),
            num(r.periods),
            num(i),
            num(o),
            num(n)
        );
    }
    if stores.is_empty() {
        let none = if who.is_admin() {
            "No store is registered yet."
        } else {
            "None of your stores is registered."
        };
        let _ = write!(h, "<tr><td colspan=\"7\" class=\"muted\">{none}</td></tr>");
    }
    let _ = write!(
        h,
        "</table></div><h2>Serious incidents across stores, last 7 days</h2>{}\
         <p>Export the last 7 days: <a href=\"/export.csv?from={week_from}\">CSV</a> · \
         <a href=\"/export.json?from={week_from}\">JSON</a>.</p>",
        serious_table(
            &view.serious,
            Read::Newest {
                counted: view.serious_counted
            }
        )
    );
    Ok(html(StatusCode::OK, "Chain overview", &h, Some(&who)))
}

async fn store_page(
    State(st): State<Arc<HqState>>,
    who: Analyst,
    Path(store): Path<String>,
    Query(q): Query<RangeQuery>,
) -> Result<Response, Fail> {
    let (from, to) = q.range()?;
    let now = now_ms();
    let row = st.store.store_row(&store).await?;
    let Some(row) = row.filter(|r| who.user.may_see(&r.store)) else {
        let body = format!(
            "<p>No store named <code>{}</code> is registered. <a href=\"/\">Back to the chain overview</a>.</p>",
            esc(&store)
        );
        return Ok(html(StatusCode::NOT_FOUND, "Unknown store", &body, Some(&who)));
    };
    let from = from.unwrap_or(now - 7 * DAY_MS);
    // A page is for reading: a store's periods over at most the export's span.
    let to_cap = to.unwrap_or(now + DAY_MS);
    if to_cap.saturating_sub(from) > max_span_ms(&st) {
        return Err(span_error(&st));
    }
    let filter = Filter {
        store: Some(store.clone()),
        from_ms: Some(from),
        to_ms: to,
        ..Filter::default()
    };
    let mut rows = st.store.summaries(&filter).await?;
    rows.reverse();
    let sync = row
        .last_sync_ms
        .map_or_else(|| "never".into(), |t| format!("{} UTC ({})", minute(t), ago(now, t)));
    let to_q = to.map_or_else(String::new, |t| format!("&to={t}"));
    let export = format!("store={}&from={from}{to_q}", enc(&store));
    let mut h = format!(
        "<p>Registered {} UTC · last sync {sync} · {} periods held.</p>\
         <form method=\"get\"><label>From <input name=\"from\" value=\"{}\" placeholder=\"RFC 3339 or Unix ms\"></label>\
         <label>To <input name=\"to\" value=\"{}\" placeholder=\"RFC 3339 or Unix ms\"></label>\
         <button type=\"submit\">Show</button></form>\
         <h2>Periods from {} UTC{}</h2>",
        minute(row.registered_at_ms),
        row.periods,
        esc(&rfc3339(from)),
        esc(&to.map(rfc3339).unwrap_or_default()),
        minute(from),
        to.map_or_else(String::new, |t| format!(" to {} UTC", minute(t))),
    );
    if rows.is_empty() {
        h.push_str("<p class=\"muted\">No summaries in this range.</p>");
    } else {
        h.push_str(
            "<div class=\"scroll\"><table><tr><th>Period (UTC)</th><th>In</th><th>Out</th><th>Incidents</th>\
             <th>By kind</th><th>By severity</th><th>Acknowledged</th><th>Mean time to ack</th><th>Resolved</th>\
             <th>False alarms</th><th>Uptime min</th><th>Uptime mean</th><th>Peak occupancy</th><th>Updates</th>\
             <th>Received (UTC)</th></tr>",
        );
        for r in &rows {
            let s = &r.summary;
            let (i, o) = s.footfall_totals();
            let a = &s.acknowledgements;
            let (umin, umean) = uptime(s).map_or_else(
                || ("–".into(), "–".into()),
                |(m, avg)| (format!("{:.1} %", m * 100.0), format!("{:.1} %", avg * 100.0)),
            );
            let peak = s
                .peak_occupancy
                .values()
                .max()
                .map_or_else(|| "–".into(), u32::to_string);
            let _ = write!(
                h,
                "<tr><td>{}</td>{}{}{}<td>{}</td><td>{}</td>{}{}{}{}{}{}{}{}<td>{}</td></tr>",
                minute(s.period_start_ms),
                num(i),
                num(o),
                num(s.incidents_total()),
                compact(s.incidents_by_kind.iter()),
                by_severity(&s.incidents_by_severity),
                num(a.acknowledged),
                num(a.ack_secs_mean.map_or_else(|| "–".into(), duration)),
                num(a.resolved),
                num(a.false_alarms),
                num(umin),
                num(umean),
                num(peak),
                num(r.updates),
                minute(r.received_at_ms),
            );
        }
        h.push_str("</table></div>");
    }
    let _ = write!(
        h,
        "<h2>Serious incidents</h2>{}<p>Export these periods: <a href=\"/export.csv?{export}\">CSV</a> · \
         <a href=\"/export.json?{export}\">JSON</a>.</p>",
        serious_table(&rows, Read::All)
    );
    Ok(html(StatusCode::OK, &format!("Store {store}"), &h, Some(&who)))
}

fn max_span_ms(st: &HqState) -> i64 {
    i64::from(st.dashboard.export_max_days) * DAY_MS
}

fn span_error(st: &HqState) -> Fail {
    Fail::Bad(format!(
        "the range may span at most {} days: page through longer periods",
        st.dashboard.export_max_days
    ))
}

/// One page of an export, and the query of the next one if there is more.
struct Page {
    rows: Vec<StoredSummary>,
    next: Option<String>,
}

async fn load(st: &HqState, who: &Analyst, q: &RangeQuery) -> Result<Page, Fail> {
    let (from_ms, to_ms) = q.range()?;
    let to = to_ms.unwrap_or_else(now_ms);
    let from = from_ms.unwrap_or(to - 7 * DAY_MS);
    if to.saturating_sub(from) > max_span_ms(st) {
        return Err(span_error(st));
    }
    let store = q.store.clone().filter(|s| !s.is_empty());
    if store.as_deref().is_some_and(|s| s.chars().any(char::is_control)) {
        return Err(Fail::Param("store"));
    }
    if store.as_deref().is_some_and(|s| !who.user.may_see(s)) {
        return Err(Fail::NotFound);
    }
    let limit = match q.limit.as_deref().map(str::trim) {
        None | Some("") => EXPORT_PAGE,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=EXPORT_PAGE_MAX).contains(&n) => n,
            _ => return Err(Fail::Bad(format!("`limit` is 1 to {EXPORT_PAGE_MAX}"))),
        },
    };
    let after = match q.after.as_deref().filter(|a| !a.is_empty()) {
        None => None,
        Some(a) => {
            let (period, store) = a
                .split_once(':')
                .ok_or_else(|| Fail::Bad("`after` is <period start ms>:<store>, from a `next` link".into()))?;
            let period = period
                .parse::<i64>()
                .map_err(|_| Fail::Bad("`after` is <period start ms>:<store>, from a `next` link".into()))?;
            Some((store.to_string(), period))
        }
    };
    let mut rows = st
        .store
        .summaries(&Filter {
            store: store.clone(),
            stores: who.user.scope().map(<[String]>::to_vec),
            from_ms: Some(from),
            to_ms: Some(to),
            after,
            limit: Some(limit + 1),
        })
        .await?;
    let next = if rows.len() > limit {
        rows.truncate(limit);
        rows.last().map(|last| {
            let s = &last.summary;
            let mut q = format!("from={from}&to={to}&limit={limit}");
            if let Some(st) = &store {
                let _ = write!(q, "&store={}", enc(st));
            }
            let _ = write!(q, "&after={}", enc(&format!("{}:{}", s.period_start_ms, s.store)));
            q
        })
    } else {
        None
    };
    Ok(Page { rows, next })
}

fn csv_field(s: &str) -> String {
    // A cell a spreadsheet would run as a formula is kept as text.
    let guarded;
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) && s.parse::<f64>().is_err() {
        guarded = format!("'{s}");
        guarded.as_str()
    } else {
        s
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn csv_row(r: &StoredSummary) -> String {
    let s = &r.summary;
    let (i, o) = s.footfall_totals();
    let a = &s.acknowledgements;
    let mut f = vec![
        s.store.clone(),
        rfc3339(s.period_start_ms),
        s.period_secs.to_string(),
        i.to_string(),
        o.to_string(),
        s.incidents_total().to_string(),
    ];
    f.extend(
        SEVERITIES
            .iter()
            .map(|k| s.incidents_by_severity.get(*k).copied().unwrap_or(0).to_string()),
    );
    f.extend([
        a.acknowledged.to_string(),
        a.resolved.to_string(),
        a.false_alarms.to_string(),
        a.ack_secs_mean.map(|m| m.to_string()).unwrap_or_default(),
        uptime(s).map(|(m, _)| m.to_string()).unwrap_or_default(),
        s.serious_total.to_string(),
        rfc3339(r.received_at_ms),
        r.updates.to_string(),
    ]);
    f.iter().map(|x| csv_field(x)).collect::<Vec<_>>().join(",")
}

fn with_next(mut r: Response, path: &str, next: &Option<String>) -> Response {
    if let Some(v) = next
        .as_ref()
        .and_then(|q| HeaderValue::from_str(&format!("<{path}?{q}>; rel=\"next\"")).ok())
    {
        r.headers_mut().insert(header::LINK, v);
    }
    r
}

async fn export_csv(
    State(st): State<Arc<HqState>>,
    who: Analyst,
    Query(q): Query<RangeQuery>,
) -> Result<Response, Fail> {
    let page = load(&st, &who, &q).await?;
    // RFC 4180 line ends.
    let mut out = format!("{CSV_HEADER}\r\n");
    for r in &page.rows {
        out.push_str(&csv_row(r));
        out.push_str("\r\n");
    }
    let headers = [
        (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
        (
            header::CONTENT_DISPOSITION,
            "attachment; filename=\"lpmesh-summaries.csv\"",
        ),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ];
    Ok(with_next((headers, out).into_response(), "/export.csv", &page.next))
}

/// `/export.json`'s body.
#[derive(Debug, Serialize, Deserialize)]
pub struct ExportPage {
    pub summaries: Vec<StoredSummary>,
    /// The next page's address (path and query), while there is more.
    pub next: Option<String>,
}

async fn export_json(
    State(st): State<Arc<HqState>>,
    who: Analyst,
    Query(q): Query<RangeQuery>,
) -> Result<Response, Fail> {
    let page = load(&st, &who, &q).await?;
    let next = page.next.as_ref().map(|n| format!("/export.json?{n}"));
    let body = ExportPage {
        summaries: page.rows,
        next,
    };
    Ok(with_next(
        ([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response(),
        "/export.json",
        &page.next,
    ))
}

/// For an admin's session, or a scraper that holds the metrics token; anyone else is refused.
async fn metrics(State(st): State<Arc<HqState>>, headers: HeaderMap, who: Result<Analyst, NeedLogin>) -> Response {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let scraper = match (bearer, &st.dashboard.metrics_token) {
        (Some(b), Some(t)) => lpmesh_web::login::same_secret(b.trim(), t),
        _ => false,
    };
    if !scraper {
        match who {
            Ok(a) if a.is_admin() => {}
            Ok(_) => return plain(StatusCode::FORBIDDEN, "metrics are for HQ admins\n"),
            Err(e) => return e.into_response(),
        }
    }
    match st.metrics.prometheus() {
        Ok(text) => ([(header::CONTENT_TYPE, lpmesh_web::metrics::CONTENT_TYPE)], text).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "metrics could not be written");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use axum::body::Body;
    use axum::http::{HeaderMap, Request};
    use tower::ServiceExt;

    use super::*;
    use crate::access::{HqRole, HqSession};
    use crate::store::{Embedded, HqStore};
    use crate::summary::{AckStats, CameraUptime, LineCount};
    use crate::vv::VersionVector;

    const EVIL: &str = "<script>alert('x')</script>";

    struct Fixture {
        state: Arc<HqState>,
        dir: PathBuf,
        period: i64,
        /// Session cookies of the admin and of a viewer of shop-1.
        admin: String,
        viewer: String,
    }

    const METRICS_TOKEN: &str = "scraper-token-0123456789";

    /// A user and a session for them, straight into the store; the cookie header that presents it.
    async fn session_for(state: &HqState, name: &str, role: HqRole, stores: &[&str]) -> String {
        let now = now_ms();
        let stores = stores.iter().map(|s| s.to_string()).collect();
        let user = crate::access::new_user(name, role, stores, "correct horse battery", now).unwrap();
        state.store.put_user(user).await.unwrap();
        let user = state.store.user(name).await.unwrap().unwrap();
        let t = lpmesh_web::login::token();
        let s = HqSession {
            user: name.into(),
            user_changed_ms: user.changed_ms,
            csrf: "csrf-of-".to_string() + name,
            created_ms: now,
            last_used_ms: now,
        };
        state
            .store
            .open_session(&lpmesh_web::login::token_key(&t), &s)
            .await
            .unwrap();
        format!("{}={t}", crate::signin::COOKIE)
    }

    impl Fixture {
        async fn new(name: &str) -> Fixture {
            let nanos = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default();
            let dir = std::env::temp_dir().join(format!("lpmesh-dash-{name}-{}-{nanos}", std::process::id()));
            let store = HqStore::Embedded(Embedded::open(&dir).unwrap());
            let options = crate::server::DashboardOptions {
                metrics_token: Some(METRICS_TOKEN.into()),
                ..Default::default()
            };
            let state = HqState::with_dashboard(store, age::x25519::Identity::generate(), 512 * 1024, options);
            let now = now_ms();
            for s in ["shop-1", EVIL] {
                let key = libp2p_identity::Keypair::generate_ed25519().public();
                let key = crate::envelope::store_key_to_string(&key).unwrap();
                state.store.register_store(s, &key, now - DAY_MS).await.unwrap();
            }
            let period = now - now.rem_euclid(HOUR_MS) - HOUR_MS;
            state.store.upsert(&summary("shop-1", period, 12), now).await.unwrap();
            state.store.upsert(&summary(EVIL, period, 3), now).await.unwrap();
            let admin = session_for(&state, "ana", HqRole::Admin, &[]).await;
            let viewer = session_for(&state, "vic", HqRole::Viewer, &["shop-1"]).await;
            Fixture {
                state,
                dir,
                period,
                admin,
                viewer,
            }
        }

        async fn get(&self, uri: &str) -> (StatusCode, HeaderMap, String) {
            self.get_as(uri, &[("cookie", &self.admin)]).await
        }

        async fn get_as(&self, uri: &str, headers: &[(&str, &str)]) -> (StatusCode, HeaderMap, String) {
            let mut req = Request::get(uri);
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            self.send(req.body(Body::empty()).unwrap()).await
        }

        async fn post_form(&self, uri: &str, headers: &[(&str, &str)], form: &str) -> (StatusCode, HeaderMap, String) {
            let mut req = Request::post(uri).header("content-type", "application/x-www-form-urlencoded");
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            self.send(req.body(Body::from(form.to_string())).unwrap()).await
        }

        async fn send(&self, req: Request<Body>) -> (StatusCode, HeaderMap, String) {
            let resp = app(self.state.clone()).oneshot(req).await.unwrap();
            let (status, headers) = (resp.status(), resp.headers().clone());
            let body = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
            (status, headers, String::from_utf8(body.to_vec()).unwrap())
        }

        fn done(self) {
            let dir = self.dir.clone();
            drop(self);
            std::fs::remove_dir_all(dir).unwrap();
        }
    }

    fn summary(store: &str, period: i64, entered: u64) -> Summary {
        let s = Summary {
            store: store.into(),
            period_start_ms: period,
            period_secs: 3600,
            vv: VersionVector([("12D3KooWabc".to_string(), 5)].into_iter().collect()),
            footfall: vec![LineCount {
                camera: "door".into(),
                line: "main".into(),
                entered,
                left: 10,
            }],
            peak_occupancy: [("door/entrance".to_string(), 7)].into(),
            incidents_by_kind: [("exit_without_checkout".to_string(), 1), ("loitering".to_string(), 2)].into(),
            incidents_by_severity: [("high".to_string(), 1), ("low".to_string(), 2)].into(),
            acknowledgements: AckStats {
                acknowledged: 1,
                resolved: 1,
                ack_secs_mean: Some(42.0),
                ..AckStats::default()
            },
            cameras: vec![
                CameraUptime {
                    camera: "door".into(),
                    offline_secs: 360.0,
                    uptime: 0.9,
                },
                CameraUptime {
                    camera: "till".into(),
                    offline_secs: 0.0,
                    uptime: 1.0,
                },
            ],
            serious: vec![Incident {
                incident: format!("{store}/door/1"),
                camera: "door".into(),
                zone: Some("exit".into()),
                kind: "exit_without_checkout".into(),
                severity: "high".into(),
                started_at_ms: period + 60_000,
                state: "acknowledged".into(),
                acknowledged_at_ms: Some(period + 102_000),
                ..Incident::default()
            }],
            serious_total: 1,
            ..Summary::default()
        };
        s.validate().unwrap();
        s
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pages_list_stores_and_incidents_and_escape_data() {
        let fx = Fixture::new("pages").await;
        let (status, headers, body) = fx.get("/").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_SECURITY_POLICY], CSP);
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(headers[header::CACHE_CONTROL], "no-store");
        assert!(body.contains("<title>lpmesh HQ</title>"));
        assert!(body.contains("<a href=\"/stores/shop-1\">shop-1</a>"));
        assert!(body.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"));
        assert!(!body.contains(EVIL) && !body.contains("<script"));
        assert!(body.contains("<b>15</b><span class=\"muted\">footfall in</span>"));
        assert!(body.contains("exit_without_checkout") && body.contains(" class=\"sev-hi\">high<"));
        assert!(body.contains("<td>42 s</td><td>ongoing</td>"));

        let (status, headers, body) = fx.get("/stores/shop-1").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_SECURITY_POLICY], CSP);
        assert!(body.contains(&format!("<tr><td>{}</td><td class=\"n\">12</td>", minute(fx.period))));
        assert!(body.contains("exit_without_checkout 1, loitering 2") && body.contains("high 1, low 2"));
        assert!(body.contains("90.0 %") && body.contains("95.0 %"));

        let (status, _, body) = fx.get(&format!("/stores/{}", enc(EVIL))).await;
        assert_eq!(status, StatusCode::OK);
        assert!(!body.contains("<script"));

        let (status, headers, body) = fx.get("/stores/unknown").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(headers[header::CONTENT_SECURITY_POLICY], CSP);
        assert!(body.contains("<code>unknown</code>"));
        fx.done();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn exports_carry_the_stored_summaries() {
        let fx = Fixture::new("export").await;
        let (status, headers, body) = fx.get("/export.csv?store=shop-1").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_TYPE], "text/csv; charset=utf-8");
        assert_eq!(
            headers[header::CONTENT_DISPOSITION],
            "attachment; filename=\"lpmesh-summaries.csv\""
        );
        let lines: Vec<&str> = body.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0], CSV_HEADER);
        let names: Vec<&str> = CSV_HEADER.split(',').collect();
        let row: std::collections::HashMap<&str, &str> = names.iter().copied().zip(lines[1].split(',')).collect();
        assert_eq!(row.len(), names.len());
        assert_eq!(row["store"], "shop-1");
        assert_eq!(row["period_start"], rfc3339(fx.period));
        let expect = [
            ("footfall_in", "12"),
            ("footfall_out", "10"),
            ("incidents", "3"),
            ("high", "1"),
            ("low", "2"),
        ];
        for (k, v) in expect
            .into_iter()
            .chain([("critical", "0"), ("ack_secs_mean", "42"), ("updates", "1")])
        {
            assert_eq!(row[k], v, "{k}");
        }
        assert_eq!((row["camera_uptime_min"], row["serious_total"]), ("0.9", "1"));

        let (_, _, all) = fx.get("/export.csv").await;
        assert_eq!(all.lines().count(), 3);
        let after = rfc3339(fx.period + HOUR_MS);
        let (_, _, none) = fx.get(&format!("/export.csv?from={}", enc(&after))).await;
        assert_eq!(none.lines().count(), 1);
        let (_, _, one) = fx
            .get(&format!("/export.csv?from={}&to={}", fx.period, fx.period + 1))
            .await;
        assert_eq!(one.lines().count(), 3);

        let (status, _, body) = fx.get("/export.json").await;
        assert_eq!(status, StatusCode::OK);
        let parsed: ExportPage = serde_json::from_str(&body).unwrap();
        assert_eq!(
            parsed.summaries,
            fx.state.store.summaries(&Filter::default()).await.unwrap()
        );
        assert_eq!(parsed.summaries.len(), 2);
        assert_eq!(parsed.next, None);
        fx.done();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_times_are_refused_by_name() {
        let fx = Fixture::new("bad").await;
        for (uri, param) in [
            ("/export.csv?from=garbage", "`from`"),
            ("/export.json?to=yesterday", "`to`"),
            ("/stores/shop-1?from=garbage", "`from`"),
        ] {
            let (status, _, body) = fx.get(uri).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
            assert!(body.contains(param), "{uri}: {body}");
        }
        let two_days_ago = utc(now_ms() - 2 * DAY_MS, "%Y-%m-%dT%H:%M:%S");
        let (status, _, _) = fx.get(&format!("/export.csv?from={two_days_ago}%2B01:00&to=")).await;
        assert_eq!(status, StatusCode::OK);
        fx.done();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nothing_is_shown_without_a_login_and_a_viewer_sees_only_their_stores() {
        let fx = Fixture::new("scope").await;
        // Anonymous: a person is sent to the form (and back afterwards), a script is refused.
        let (status, headers, _) = fx.get_as("/stores/shop-1?from=1", &[]).await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        assert_eq!(headers[header::LOCATION], "/login?next=%2Fstores%2Fshop-1%3Ffrom%3D1");
        for uri in ["/export.json", "/export.csv?store=shop-1", "/metrics"] {
            let (status, _, body) = fx.get_as(uri, &[]).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}");
            assert!(!body.contains("shop-1"), "{uri}: {body}");
        }
        let forged = format!("{}=forged-token", crate::signin::COOKIE);
        let (status, _, _) = fx.get_as("/export.json", &[("cookie", &forged)]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, headers, body) = fx.get_as("/login", &[]).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("name=\"password\"") && !body.contains("shop-1"));
        assert_eq!(headers[header::STRICT_TRANSPORT_SECURITY], "max-age=31536000");

        // The viewer of shop-1.
        let v = [("cookie", fx.viewer.as_str())];
        let (status, _, body) = fx.get_as("/", &v).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("/stores/shop-1") && body.contains("vic (viewer)"));
        assert!(!body.contains("&lt;script"), "another store's name leaked: {body}");
        assert!(
            body.contains("<b>12</b><span class=\"muted\">footfall in</span>"),
            "only shop-1's figures"
        );
        let (status, _, body) = fx.get_as(&format!("/stores/{}", enc(EVIL)), &v).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(!body.contains("<td class=\"n\">3</td>"));
        let (status, _, _) = fx.get_as(&format!("/export.json?store={}", enc(EVIL)), &v).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (_, _, body) = fx.get_as("/export.json", &v).await;
        let page: ExportPage = serde_json::from_str(&body).unwrap();
        assert_eq!(page.summaries.len(), 1);
        assert_eq!(page.summaries[0].summary.store, "shop-1");
        let (_, _, csv) = fx.get_as("/export.csv", &v).await;
        assert_eq!(csv.lines().count(), 2, "{csv}");
        let (status, _, _) = fx.get_as("/metrics", &v).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "metrics are for admins");

        // The admin and the scraper read the metrics; a wrong token does not.
        let (status, _, body) = fx.get("/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("lpmesh_hq_envelopes_received_total"));
        let bearer = format!("Bearer {METRICS_TOKEN}");
        let (status, _, _) = fx.get_as("/metrics", &[("authorization", &bearer)]).await;
        assert_eq!(status, StatusCode::OK);
        let (status, _, _) = fx
            .get_as("/metrics", &[("authorization", "Bearer scraper-token-0123456780")])
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);

        // The viewer's scope changes: the session opened for the old one ends.
        let user = crate::access::new_user(
            "vic",
            HqRole::Viewer,
            vec![EVIL.to_string()],
            "correct horse battery",
            now_ms(),
        )
        .unwrap();
        fx.state.store.put_user(user).await.unwrap();
        let (status, _, _) = fx.get_as("/export.json", &v).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        // Removed: the admin's session ends too.
        assert!(fx.state.store.remove_user("ana").await.unwrap());
        let (status, _, _) = fx.get("/export.json").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        fx.done();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn logging_in_and_out_through_the_form() {
        let fx = Fixture::new("login").await;
        let origin = [("host", "hq.example:8444"), ("origin", "https://hq.example:8444")];
        let (status, _, body) = fx
            .post_form("/login", &origin, "name=ana&password=wrong+password&next=%2F")
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(body.contains("Wrong name or password"));
        let (status, _, _) = fx
            .post_form("/login", &origin, "name=nobody&password=correct+horse+battery")
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        // From another site: refused before the password is looked at.
        let evil = [("host", "hq.example:8444"), ("origin", "https://evil.example")];
        let (status, _, _) = fx
            .post_form("/login", &evil, "name=ana&password=correct+horse+battery")
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, headers, _) = fx
            .post_form(
                "/login",
                &origin,
                "name=ana&password=correct+horse+battery&next=%2Fstores%2Fshop-1",
            )
            .await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        assert_eq!(headers[header::LOCATION], "/stores/shop-1");
        let set = headers[header::SET_COOKIE].to_str().unwrap().to_string();
        for attr in ["Secure", "HttpOnly", "SameSite=Lax", "Path=/"] {
            assert!(set.contains(attr), "{set}");
        }
        let cookie = set.split(';').next().unwrap().to_string();
        assert!(cookie.starts_with("__Host-lpmesh_hq="));
        let (status, _, page) = fx.get_as("/stores/shop-1", &[("cookie", &cookie)]).await;
        assert_eq!(status, StatusCode::OK);
        // The token itself is nowhere in the store: only its digest.
        let token = cookie.split_once('=').unwrap().1;
        assert!(fx.state.store.session(token).await.unwrap().is_none());
        // Logging out needs the session's CSRF token, from HQ's page.
        let csrf = page
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap()
            .to_string();
        let with_cookie = [origin[0], origin[1], ("cookie", cookie.as_str())];
        let (status, _, _) = fx.post_form("/logout", &with_cookie, "csrf=not-it").await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, _, _) = fx.get_as("/export.json", &[("cookie", &cookie)]).await;
        assert_eq!(status, StatusCode::OK, "still logged in");
        let (status, headers, _) = fx.post_form("/logout", &with_cookie, &format!("csrf={csrf}")).await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        assert!(headers[header::SET_COOKIE].to_str().unwrap().contains("Max-Age=0"));
        let (status, _, _) = fx.get_as("/export.json", &[("cookie", &cookie)]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let logins = fx.state.metrics.logins();
        assert_eq!(
            (logins.get("ok"), logins.get("wrong"), logins.get("cross_origin")),
            (Some(&1), Some(&2), Some(&1))
        );
        fx.done();
    }

    /// A flood of logins (each a new name from a new address, so no backoff stops them first) runs
    /// argon2 two at a time and turns the rest away at once; the real admin logs in right after.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_login_flood_runs_argon2_a_few_at_a_time_and_the_admin_gets_in_after_it() {
        let fx = Fixture::new("flood").await;
        let origin = [("host", "hq:8444"), ("origin", "https://hq:8444")];
        let login = |name: String, password: &'static str, peer: std::net::SocketAddr| {
            let mut req = Request::post("/login").header("content-type", "application/x-www-form-urlencoded");
            for (k, v) in origin {
                req = req.header(k, v);
            }
            let mut req = req
                .body(Body::from(format!(
                    "name={name}&password={}",
                    password.replace(' ', "+")
                )))
                .unwrap();
            req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
            app(fx.state.clone()).oneshot(req)
        };
        let n = 300;
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let peer = std::net::SocketAddr::from(([10, 9, (i / 250) as u8, (i % 250) as u8], 4000));
                tokio::spawn(login(format!("n{i}"), "a wrong guess", peer))
            })
            .collect();
        let mut statuses = BTreeMap::new();
        for t in tasks {
            *statuses.entry(t.await.unwrap().unwrap().status().as_u16()).or_insert(0) += 1;
        }
        assert!(
            fx.state.gate.peak() <= lpmesh_web::login::HASHING_SLOTS,
            "peak {}",
            fx.state.gate.peak()
        );
        assert!(
            statuses.get(&503).copied().unwrap_or(0) > 0,
            "the queue is bounded: {statuses:?}"
        );
        assert_eq!(statuses.values().sum::<usize>(), n, "{statuses:?}");
        let logins = fx.state.metrics.logins();
        assert_eq!(logins.get("busy").copied().unwrap_or(0), statuses[&503] as u64);
        let admin = login(
            "ana".into(),
            "correct horse battery",
            std::net::SocketAddr::from(([192, 0, 2, 1], 5000)),
        )
        .await
        .unwrap();
        assert_eq!(
            admin.status(),
            StatusCode::SEE_OTHER,
            "the admin logs in after the flood"
        );
        eprintln!(
            "HQ login flood of {n}: {statuses:?}, peak {} argon2 at once",
            fx.state.gate.peak()
        );
        fx.done();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn exports_come_in_pages_that_neither_skip_nor_repeat_and_their_span_is_capped() {
        let fx = Fixture::new("pages").await;
        let now = now_ms();
        for h in 2..9 {
            let p = fx.period - h * HOUR_MS;
            fx.state
                .store
                .upsert(&summary("shop-1", p, h as u64), now)
                .await
                .unwrap();
            fx.state
                .store
                .upsert(&summary("shop-2", p, h as u64), now)
                .await
                .unwrap();
        }
        let all = fx.state.store.summaries(&Filter::default()).await.unwrap();
        assert_eq!(all.len(), 2 + 14);
        let mut got: Vec<StoredSummary> = Vec::new();
        let mut uri = "/export.json?limit=3".to_string();
        let mut pages = 0;
        loop {
            let (status, headers, body) = fx.get(&uri).await;
            assert_eq!(status, StatusCode::OK, "{uri}: {body}");
            let page: ExportPage = serde_json::from_str(&body).unwrap();
            assert!(page.summaries.len() <= 3);
            got.extend(page.summaries);
            pages += 1;
            match page.next {
                Some(next) => {
                    let link = headers[header::LINK].to_str().unwrap();
                    assert!(link.contains("rel=\"next\""), "{link}");
                    uri = next;
                }
                None => break,
            }
        }
        assert_eq!(got, all, "every summary once, in order");
        assert_eq!(pages, 6);
        // The CSV pages the same way.
        let (_, headers, csv) = fx.get("/export.csv?store=shop-2&limit=5").await;
        assert_eq!(csv.lines().count(), 6);
        let link = headers[header::LINK].to_str().unwrap();
        assert!(
            link.starts_with("</export.csv?") && link.contains("store=shop-2"),
            "{link}"
        );
        // Whole history at once: refused, with what is allowed.
        for uri in [
            "/export.json?from=0",
            "/export.csv?from=0&to=9999999999999",
            "/stores/shop-1?from=0",
        ] {
            let (status, _, body) = fx.get(uri).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
            assert!(body.contains("at most 93 days"), "{uri}: {body}");
        }
        for uri in [
            "/export.json?limit=0",
            "/export.json?limit=5001",
            "/export.json?after=garbage",
        ] {
            let (status, _, _) = fx.get(uri).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
        }
        fx.done();
    }

    #[test]
    fn helpers_quote_and_format() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\"\n"), "\"say \"\"hi\"\"\n\"");
        assert_eq!(esc("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
        assert_eq!(enc("a b/c"), "a%20b%2Fc");
        assert_eq!(
            parse_time("from", Some("1700000000000")).ok(),
            Some(Some(1_700_000_000_000))
        );
        assert_eq!(
            parse_time("from", Some("2023-11-14T22:13:20 00:00")).ok(),
            Some(Some(1_700_000_000_000))
        );
        assert_eq!(rfc3339(1_700_000_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(
            (ago(200_000, 20_000), duration(185.0)),
            ("3 min ago".to_string(), "3 min 5 s".to_string())
        );
    }

    /// The overview says how many serious incidents it shows of how many the stores counted; a store's
    /// page, which reads all of its span, how many its summaries list.
    #[test]
    fn serious_tables_say_what_they_leave_out() {
        let stored = |n: usize, total: u64| StoredSummary {
            summary: Summary {
                store: "shop-1".into(),
                serious: (0..n)
                    .map(|i| Incident {
                        incident: format!("i{i}"),
                        camera: "door".into(),
                        kind: "restricted_entry".into(),
                        severity: "high".into(),
                        started_at_ms: i as i64,
                        state: "open".into(),
                        ..Incident::default()
                    })
                    .collect(),
                serious_total: total,
                ..Summary::default()
            },
            received_at_ms: 0,
            updates: 1,
        };
        let rows = [stored(150, 150), stored(100, 130)];
        let page = serious_table(&rows, Read::All);
        assert!(page.contains("Newest 200 of 250 listed."), "{page}");
        assert!(page.contains("Stores counted 280 serious incidents"), "{page}");
        let overview = serious_table(&rows, Read::Newest { counted: 900 });
        assert!(
            overview.contains("Newest 200 shown of the 900 serious incidents the stores counted."),
            "{overview}"
        );
        assert_eq!(overview.matches("<tr>").count(), 201, "a heading and 200 rows");
        let small = serious_table(&rows[1..], Read::Newest { counted: 100 });
        assert!(!small.contains("muted"), "nothing left out: {small}");
    }
}
