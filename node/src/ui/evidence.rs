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
use lpmesh_mesh::record::RecordKind;
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
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

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
        let infos = super::node_infos(&state).await;
        match infos
            .into_iter()
            .find(|(_, i)| i.name == r.node)
            .and_then(|(_, i)| i.ui)
        {
            Some(u) if u.starts_with("https://") => u.trim_end_matches('/').to_string(),
            _ => {
                return Ok(Json(serde_json::json!({
                    "status": "unavailable",
                    "owner": r.node,
                    "why": "that node has not said where tablets reach it over HTTPS",
                })))
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
            expires_ms: now_ms() + GRANT_TTL_MS,
        }
        .sign(&side.key)
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
        if state.users.role_of(&session.user) == Some(session.role) {
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
    let g = Grant::verify(text, id, download, now_ms(), |issuer| {
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
    if let Some(e) = plain_http_refused(&state, client_ip(&ext), "evidence") {
        return Err(e);
    }
    let id = EvidenceId::parse(&id);
    access(&state, &headers, q.grant.as_deref(), id.as_ref(), false)?;
    let id = id.ok_or_else(not_found)?;
    let body = tokio::task::spawn_blocking({
        let state = state.clone();
        let id = id.clone();
        move || read(&state, &id, Part::Still)
    })
    .await
    .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "reading evidence failed"))??;
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
    if let Some(e) = plain_http_refused(&state, client_ip(&ext), "evidence") {
        return Err(e);
    }
    let id = EvidenceId::parse(&id);
    access(&state, &headers, q.grant.as_deref(), id.as_ref(), false)?;
    let id = id.ok_or_else(not_found)?;
    let body = tokio::task::spawn_blocking({
        let state = state.clone();
        let id = id.clone();
        move || read(&state, &id, Part::Clip)
    })
    .await
    .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "reading evidence failed"))??;
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
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<GrantQuery>,
    ext: axum::http::Extensions,
) -> Result<Response, ApiError> {
    if let Some(e) = plain_http_refused(&state, client_ip(&ext), "evidence") {
        return Err(e);
    }
    let id = EvidenceId::parse(&id);
    let (user, _) = access(&state, &headers, q.grant.as_deref(), id.as_ref(), true)?;
    let id = id.ok_or_else(not_found)?;
    let side = state.evidence_side();
    let meta = side
        .as_ref()
        .and_then(|s| s.store.as_ref()?.meta(&id))
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such evidence here"))?;
    let body = tokio::task::spawn_blocking({
        let state = state.clone();
        let id = id.clone();
        move || read(&state, &id, Part::Clip)
    })
    .await
    .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "reading evidence failed"))??;
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
    let bytes =
        serde_json::to_vec(&action).map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let recs = state
        .mesh
        .append(vec![(RecordKind::Action, bytes)])
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the download could not be recorded: {e}"),
            )
        })?;
    for r in &recs {
        state.take(r);
    }
    tracing::warn!(incident = %meta.incident, evidence = %id, by = %user, "evidence downloaded");
    let name = format!(
        "lpmesh-{}-{}.mp4",
        meta.camera
            .replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_"),
        chrono::DateTime::from_timestamp_millis(meta.at_ms)
            .map(|t| t.format("%Y%m%dT%H%M%SZ").to_string())
            .unwrap_or_default()
    );
    Ok(picture(
        "video/mp4",
        body,
        StatusCode::OK,
        &[(header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}\""))],
    ))
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
    let side = state.evidence_side();
    let meta = id
        .as_ref()
        .zip(side.as_ref().and_then(|s| s.store.as_ref()))
        .and_then(|(id, s)| s.meta(id));
    let logged_in = cookie_token(&headers)
        .and_then(|t| state.sessions.get(&t))
        .is_some_and(|s| state.users.role_of(&s.user) == Some(s.role));
    match (logged_in, id, meta) {
        (true, Some(id), Some(_)) => Ok(picture(
            "image/jpeg",
            read(&state, &id, Part::Still)?,
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
            let to = meta.map_or("/".to_string(), |m| format!("/#/incident/{}", percent(&m.incident)));
            Ok((StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
