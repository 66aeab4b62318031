//! An incident's evidence on the tablets.
//!
//! Any node's page asks its own node for links (`/api/incidents/{id}/evidence`); for evidence kept
//! on another node it gets that node's address with a grant it signed for this user (see
//! [`crate::evidence::token`]), and the browser fetches the still and the clip from the keeping node
//! directly, over HTTPS. The keeping node serves them to its own sessions or to a grant from a
//! current member; a removed user's grant, or one from a revoked node, opens nothing. Security staff
//! and managers view; only managers download, and each download is an action in the store's log
//! (who, when), on every node.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::{client_ip, cookie_token, plain_http_refused, ApiError, Authed, UiState};
use crate::action::{Action, ActionKind};
use crate::event::EvidenceId;
use crate::evidence::store::{EvidenceStore, Part};
use crate::evidence::token::{Grant, GRANT_TTL_MS, MAX_GRANT_LEN};
use crate::ui::auth::Role;

/// This node's evidence and the key its grants are signed with.
pub struct EvidenceSide {
    pub store: Option<Arc<EvidenceStore>>,
    pub key: libp2p_identity::Keypair,
    /// Reads at once: each decrypts a whole part (up to `MAX_PART_BYTES`), so many parallel
    /// requests from one grant cannot take the node's memory.
    pub reads: tokio::sync::Semaphore,
    /// The last download recorded per (user, evidence): a player or a prefetcher asking again
    /// within a grant's life is one download in the log, not a flood of records.
    pub downloads: std::sync::Mutex<std::collections::HashMap<(String, EvidenceId), i64>>,
}

/// Evidence reads at once, per node.
pub const READS_AT_ONCE: usize = 4;
/// Downloads remembered for de-duplication (the oldest are forgotten first).
const DOWNLOADS_REMEMBERED: usize = 1024;

impl EvidenceSide {
    pub fn new(store: Option<Arc<EvidenceStore>>, key: libp2p_identity::Keypair) -> EvidenceSide {
        EvidenceSide {
            store,
            key,
            reads: tokio::sync::Semaphore::new(READS_AT_ONCE),
            downloads: Default::default(),
        }
    }

    /// Whether a download by `user` of `id` at `now_ms` is a new one to record.
    fn first_download(&self, user: &str, id: &EvidenceId, now_ms: i64) -> bool {
        let mut d = self.downloads.lock().unwrap_or_else(|p| p.into_inner());
        let key = (user.to_string(), id.clone());
        if d.get(&key).is_some_and(|t| now_ms - t < GRANT_TTL_MS) {
            return false;
        }
        if d.len() >= DOWNLOADS_REMEMBERED {
            d.retain(|_, t| now_ms - *t < GRANT_TTL_MS);
            if d.len() >= DOWNLOADS_REMEMBERED {
                if let Some(oldest) = d.iter().min_by_key(|(_, t)| **t).map(|(k, _)| k.clone()) {
                    d.remove(&oldest);
                }
            }
        }
        d.insert(key, now_ms);
        true
    }
}

/// A part of this node's evidence, read off the async workers, a few at a time.
async fn read_part(state: &Arc<UiState>, id: &EvidenceId, part: Part) -> Result<Vec<u8>, ApiError> {
    let side = state
        .evidence_side()
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "this node keeps no evidence"))?;
    let _one = side
        .reads
        .acquire()
        .await
        .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "evidence is not served now"))?;
    let (st, id) = (state.clone(), id.clone());
    tokio::task::spawn_blocking(move || read(&st, &id, part))
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "reading evidence failed"))?
}

/// What this node's evidence `id` is of, read off the async workers.
async fn meta_of(state: &UiState, id: &EvidenceId) -> Option<crate::evidence::store::Meta> {
    let store = state.evidence_side()?.store.clone()?;
    let id = id.clone();
    tokio::task::spawn_blocking(move || store.meta(&id))
        .await
        .ok()
        .flatten()
}

use lpmesh_web::clock::now_ms;

/// Where the page finds an incident's evidence, with grants for this user.
pub(super) async fn links(
    State(state): State<Arc<UiState>>,
    Authed(s): Authed,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let r = {
        let book = state.book.read().unwrap_or_else(|p| p.into_inner());
        let inc = book
            .get(&id)
            .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such incident"))?;
        match &inc.evidence {
            Some(r) => r.clone(),
            None => return Ok(Json(serde_json::json!({ "status": "none" }))),
        }
    };
    let side = state.evidence_side();
    let Some(side) = side.as_ref() else {
        return Ok(Json(serde_json::json!({
            "status": "unavailable",
            "owner": r.node,
            "why": "this node serves no evidence links",
        })));
    };
    let base = if r.node == state.node {
        String::new()
    } else {
        let why = if state.member_list().is_none() {
            // Without the store's member list no other node's grant could be checked there.
            Some("this store keeps no member list, so only the node itself shows its evidence")
        } else {
            None
        };
        let found = super::member_uis(&state)
            .await
            .into_iter()
            .find(|(name, _)| *name == r.node);
        match (why, found) {
            (None, Some((_, origin))) => origin,
            (why, _) => {
                return Ok(Json(serde_json::json!({
                    "status": "unavailable",
                    "owner": r.node,
                    "why": why.unwrap_or("that node is not heard from, or has not said where tablets reach it over HTTPS"),
                    // An incident can arrive before its node's first heartbeat says where its UI is:
                    // worth asking again in a moment.
                    "retry": why.is_none(),
                })));
            }
        }
    };
    let grant = |download: bool| {
        Grant {
            issuer: state.node.clone(),
            user: s.user.clone(),
            role: s.role,
            evidence: r.id.clone(),
            download,
            issued_ms: now_ms(),
            expires_ms: now_ms() + GRANT_TTL_MS,
        }
        .sign(&state.store, &side.key)
    };
    let view = grant(false).ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "cannot sign"))?;
    let path = format!("{base}/evidence/{}", r.id);
    let download = (s.role == Role::Manager)
        .then(|| grant(true))
        .flatten()
        .map(|g| format!("{path}/download?grant={g}"));
    Ok(Json(serde_json::json!({
        "status": "ok",
        "owner": r.node,
        "still": format!("{path}/still.jpg?grant={view}"),
        "clip": format!("{path}/clip.mp4?grant={view}"),
        "download": download,
    })))
}

#[derive(Deserialize)]
pub(super) struct GrantQuery {
    grant: Option<String>,
}

/// Who asks, by this node's session or by a grant; `download` asks for the manager's right to.
fn access(
    state: &UiState,
    headers: &HeaderMap,
    grant: Option<&str>,
    id: Option<&EvidenceId>,
    download: bool,
) -> Result<(String, Role), ApiError> {
    if let Some(session) = cookie_token(headers).and_then(|t| state.sessions.get(&t)) {
        if state.users.role_of(&session.user) != Some(session.role) {
            // Removed or given another role elsewhere: the session ends, as on every other route.
            state.sessions.remove_user(&session.user);
        } else {
            if download && session.role != Role::Manager {
                return Err(ApiError::new(StatusCode::FORBIDDEN, "managers only"));
            }
            return Ok((session.user, session.role));
        }
    }
    let Some(text) = grant.filter(|g| g.len() <= MAX_GRANT_LEN) else {
        state.evidence_refused();
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "log in first"));
    };
    let id = id.ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such evidence"))?;
    let me = state.mesh.origin();
    let members = state.member_list();
    let g = Grant::verify(&state.store, text, id, download, now_ms(), |issuer| {
        if issuer == state.node {
            return Some(me);
        }
        members
            .as_ref()?
            .iter()
            .find(|m| m.name.as_deref() == Some(issuer))
            .and_then(|m| crate::members::parse_hex(&m.key))
    })
    .map_err(|e| {
        state.evidence_refused();
        tracing::info!(evidence = %id, reason = %e, "evidence grant refused");
        let status = match e {
            crate::evidence::token::GrantError::NotDownload => StatusCode::FORBIDDEN,
            _ => StatusCode::UNAUTHORIZED,
        };
        ApiError::new(status, format!("grant refused: {e}"))
    })?;
    // The store's user list decides here too: a user removed or given another role since the
    // grant was signed gets nothing.
    if state.users.role_of(&g.user) != Some(g.role) {
        state.evidence_refused();
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "grant refused: no such user now",
        ));
    }
    Ok((g.user, g.role))
}

/// What every evidence route asks first: HTTPS (or the node itself), then a session or a grant for
/// this evidence (`download`: a manager's), then an id that can exist. The id and who asks.
fn admit(
    state: &UiState,
    ext: &axum::http::Extensions,
    headers: &HeaderMap,
    id: &str,
    grant: Option<&str>,
    download: bool,
) -> Result<(EvidenceId, String), ApiError> {
    if let Some(e) = plain_http_refused(state, client_ip(ext), "evidence") {
        return Err(e);
    }
    let id = EvidenceId::parse(id);
    let (user, _) = access(state, headers, grant, id.as_ref(), download)?;
    Ok((id.ok_or_else(not_found)?, user))
}

fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such evidence")
}

fn read(state: &UiState, id: &EvidenceId, part: Part) -> Result<Vec<u8>, ApiError> {
    let side = state.evidence_side();
    let store = side
        .as_ref()
        .and_then(|s| s.store.as_ref())
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "this node keeps no evidence"))?;
    match store.read(id, part) {
        Ok(Some(b)) => Ok(b),
        Ok(None) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no such evidence here (not made yet, or deleted after its retention)",
        )),
        Err(e) => {
            tracing::error!(evidence = %id, error = %e, "cannot read evidence");
            Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "this evidence cannot be read",
            ))
        }
    }
}

/// Pictures cross the shop's network only over HTTPS, and are kept by no cache and no other page.
fn picture(ct: &'static str, body: Vec<u8>, status: StatusCode, extra: &[(header::HeaderName, String)]) -> Response {
    let mut r = (status, [(header::CONTENT_TYPE, ct)], body).into_response();
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    // Other nodes' pages of this store embed it; nothing else needs to.
    h.insert(
        "cross-origin-resource-policy",
        header::HeaderValue::from_static("cross-origin"),
    );
    for (k, v) in extra {
        if let Ok(v) = header::HeaderValue::from_str(v) {
            h.insert(k.clone(), v);
        }
    }
    r
}

pub(super) async fn still(
    State(state): State<Arc<UiState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<GrantQuery>,
    ext: axum::http::Extensions,
) -> Result<Response, ApiError> {
    let (id, _) = admit(&state, &ext, &headers, &id, q.grant.as_deref(), false)?;
    let body = read_part(&state, &id, Part::Still).await?;
    Ok(picture("image/jpeg", body, StatusCode::OK, &[]))
}

/// One `bytes=a-b` range of `len` bytes (what browsers ask of a video), if the request has one.
fn range(headers: &HeaderMap, len: usize) -> Option<Result<(usize, usize), ()>> {
    let v = headers.get(header::RANGE)?.to_str().ok()?;
    let spec = v.strip_prefix("bytes=")?;
    if spec.contains(',') || len == 0 {
        return Some(Err(()));
    }
    let (a, b) = spec.split_once('-')?;
    let r = match (a.trim(), b.trim()) {
        ("", suffix) => suffix.parse::<usize>().ok().map(|n| (len.saturating_sub(n), len - 1)),
        (a, "") => a.parse::<usize>().ok().map(|a| (a, len - 1)),
        (a, b) => a
            .parse::<usize>()
            .ok()
            .zip(b.parse::<usize>().ok())
            .map(|(a, b)| (a, b.min(len - 1))),
    };
    Some(match r {
        Some((a, b)) if a <= b && a < len => Ok((a, b)),
        _ => Err(()),
    })
}

pub(super) async fn clip(
    State(state): State<Arc<UiState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<GrantQuery>,
    ext: axum::http::Extensions,
) -> Result<Response, ApiError> {
    let (id, _) = admit(&state, &ext, &headers, &id, q.grant.as_deref(), false)?;
    let body = read_part(&state, &id, Part::Clip).await?;
    let len = body.len();
    let accept = (header::ACCEPT_RANGES, "bytes".to_string());
    Ok(match range(&headers, len) {
        None => picture("video/mp4", body, StatusCode::OK, &[accept]),
        Some(Ok((a, b))) => picture(
            "video/mp4",
            body[a..=b].to_vec(),
            StatusCode::PARTIAL_CONTENT,
            &[accept, (header::CONTENT_RANGE, format!("bytes {a}-{b}/{len}"))],
        ),
        Some(Err(())) => picture(
            "video/mp4",
            Vec::new(),
            StatusCode::RANGE_NOT_SATISFIABLE,
            &[(header::CONTENT_RANGE, format!("bytes */{len}"))],
        ),
    })
}

/// The clip as a file to hand over (managers only), recorded in the store's log as an action.
pub(super) async fn download(
    State(state): State<Arc<UiState>>,
    method: axum::http::Method,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<GrantQuery>,
    ext: axum::http::Extensions,
) -> Result<Response, ApiError> {
    let (id, user) = admit(&state, &ext, &headers, &id, q.grant.as_deref(), true)?;
    let meta = meta_of(&state, &id)
        .await
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such evidence here"))?;
    let body = read_part(&state, &id, Part::Clip).await?;
    let side = state.evidence_side();
    // Asking for the headers only is no download; asking again within a grant's life is the same
    // one.
    let record =
        method != axum::http::Method::HEAD && side.as_ref().is_some_and(|s| s.first_download(&user, &id, now_ms()));
    if !record {
        return Ok(clip_file(&meta, body));
    }
    // Recorded before a byte is handed over: a download that is not in the log does not happen.
    let started = {
        let book = state.book.read().unwrap_or_else(|p| p.into_inner());
        book.get(&meta.incident).map_or(meta.at_ms, |i| i.started_at_ms)
    };
    let action = Action {
        incident: meta.incident.clone(),
        incident_started_at_ms: started,
        action: ActionKind::EvidenceDownloaded,
        by: user.clone(),
        node: state.node.clone(),
        at_ms: now_ms(),
        note: None,
    };
    state.record_action(&action).await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the download could not be recorded: {}", e.1),
        )
    })?;
    tracing::warn!(incident = %meta.incident, evidence = %id, by = %user, "evidence downloaded");
    Ok(clip_file(&meta, body))
}

/// The clip as a file named after its camera and moment.
fn clip_file(meta: &crate::evidence::store::Meta, body: Vec<u8>) -> Response {
    let name = format!(
        "lpmesh-{}-{}.mp4",
        meta.camera
            .replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_"),
        chrono::DateTime::from_timestamp_millis(meta.at_ms)
            .map(|t| t.format("%Y%m%dT%H%M%SZ").to_string())
            .unwrap_or_default()
    );
    picture(
        "video/mp4",
        body,
        StatusCode::OK,
        &[(header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}\""))],
    )
}

/// The link in an alert: the still for a logged-in tablet, the incident's page (after its login)
/// for anyone else.
pub(super) async fn from_alert(
    State(state): State<Arc<UiState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    ext: axum::http::Extensions,
) -> Result<Response, ApiError> {
    if let Some(e) = plain_http_refused(&state, client_ip(&ext), "evidence") {
        return Err(e);
    }
    let id = EvidenceId::parse(&id);
    let meta = match &id {
        Some(id) => meta_of(&state, id).await,
        None => None,
    };
    let logged_in = cookie_token(&headers)
        .and_then(|t| state.sessions.get(&t))
        .is_some_and(|s| state.users.role_of(&s.user) == Some(s.role));
    match (logged_in, id, meta) {
        (true, Some(id), Some(_)) => Ok(picture(
            "image/jpeg",
            read_part(&state, &id, Part::Still).await?,
            StatusCode::OK,
            &[],
        )),
        (true, _, _) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no such evidence here (not made yet, or deleted after its retention)",
        )),
        // The page logs the tablet in and then shows the incident (or the feed, for evidence this
        // node does not know): whoever is not logged in learns nothing here.
        (false, _, meta) => {
            let to = meta.map_or("/".to_string(), |m| {
                format!("/#/incident/{}", crate::alerts::percent_encode(&m.incident))
            });
            Ok((StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_is_known_by_its_admitted_name_not_the_one_it_claims() {
        use lpmesh_mesh::record::Origin;
        let keys: Vec<libp2p_identity::Keypair> =
            (0..4).map(|_| libp2p_identity::Keypair::generate_ed25519()).collect();
        let origin = |i: usize| Origin::of(&keys[i]).unwrap();
        let member = |i: usize, name: Option<&str>| crate::members::Member {
            node: keys[i].public().to_peer_id().to_string(),
            key: crate::members::hex(&origin(i)),
            founder: i == 0,
            admitted_by: None,
            admitted_at_ms: None,
            invitation: None,
            priority: None,
            name: name.map(str::to_string),
        };
        let list = [member(0, Some("front")), member(1, Some("back")), member(2, None)];
        let name = |i: usize, claimed: &str| super::super::admitted_name(&list, &origin(i), claimed);
        // "back" claiming to be "front" is still "back": its evidence links are its own.
        assert_eq!(name(1, "front").as_deref(), Some("back"));
        // Admitted with no name: what it claims, unless that is another member's admitted name.
        assert_eq!(name(2, "stockroom").as_deref(), Some("stockroom"));
        assert_eq!(name(2, "back"), None);
        // Not a member (never admitted, or revoked): nobody.
        assert_eq!(name(3, "front"), None);
    }

    #[test]
    fn the_pages_policy_takes_one_https_origin_per_node_and_nothing_else() {
        use super::super::{csp, https_origin};
        assert_eq!(
            https_origin("https://10.0.0.5:8443/").as_deref(),
            Some("https://10.0.0.5:8443")
        );
        assert_eq!(
            https_origin("https://[::1]:8443").as_deref(),
            Some("https://[::1]:8443")
        );
        for bad in [
            "http://10.0.0.5:8080",
            "https://",
            "https://x; script-src *",
            "https://evil.example\" img-src *",
            "https://a b",
            "javascript:alert(1)",
        ] {
            assert_eq!(https_origin(bad), None, "{bad}");
        }
        let p = csp(&["https://10.0.0.6:8443".into()]);
        assert!(p.contains("img-src 'self' data: https://10.0.0.6:8443;"), "{p}");
        assert!(p.contains("media-src 'self' https://10.0.0.6:8443;"), "{p}");
        assert!(
            p.contains("script-src 'self';") && p.contains("connect-src 'self';"),
            "{p}"
        );
    }

    #[test]
    fn ranges_as_browsers_ask_for_them() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::RANGE, v.parse().unwrap());
            m
        };
        assert_eq!(range(&HeaderMap::new(), 100), None);
        assert_eq!(range(&h("bytes=0-"), 100), Some(Ok((0, 99))));
        assert_eq!(range(&h("bytes=10-19"), 100), Some(Ok((10, 19))));
        assert_eq!(range(&h("bytes=90-500"), 100), Some(Ok((90, 99))));
        assert_eq!(range(&h("bytes=-10"), 100), Some(Ok((90, 99))));
        assert_eq!(range(&h("bytes=100-"), 100), Some(Err(())));
        assert_eq!(range(&h("bytes=5-2"), 100), Some(Err(())));
        assert_eq!(range(&h("bytes=0-1,5-6"), 100), Some(Err(())));
        assert_eq!(range(&h("bytes=x-y"), 100), Some(Err(())));
    }
}
