//! The store's tablet UI, served by every node (axum): a single page embedded in the binary (no CDN,
//! no external fonts, works with no internet), a JSON API behind a session, and a live stream of
//! incident changes (server-sent events).
//!
//! Security: every route but `/health`, `/api/login` and the static assets needs a session (cookie
//! `lpmesh_session`: HttpOnly, SameSite=Strict, Secure when TLS is on); every change also needs the
//! session's CSRF token in `X-CSRF-Token`; login refuses cross-origin requests and is rate-limited per
//! user and per address; the security role cannot edit zones or see invites; a strict
//! Content-Security-Policy (scripts and styles only from the node itself) on every response.

pub mod auth;
pub mod charts;
pub mod evidence;

pub use crate::board::{CameraBoard, CameraLive};
use crate::zone_control as zones;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::{FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use lpmesh_mesh::net::{MeshError, MeshHandle};
use lpmesh_mesh::record::{Record, RecordKind};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};

use crate::action::{Action, ActionKind, MAX_NOTE_LEN};
use crate::event::{EventKind, Severity};
use crate::incidents::{Book, Change, Incident};
use crate::summary::Entry;
use crate::uplink::UplinkStatus;
use auth::{LoginLimiter, Role, Session, Sessions, Users, SESSION_COOKIE};

/// Incident changes waiting for each open page before it is told to reload.
pub const LIVE_QUEUE: usize = 1024;
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
media-src 'self'; connect-src 'self'; font-src 'none'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'";

/// What a node tells the others about itself in its heartbeats, for their UI.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    pub ui: Option<String>,
    pub cameras: Vec<CameraLive>,
}

pub struct UiState {
    pub store: String,
    pub node: String,
    pub data_dir: PathBuf,
    pub mesh: MeshHandle,
    /// Reads the log's records; its refusals are the node's count (this view reads every record).
    pub reader: crate::bounds::Reader,
    pub users: Users,
    pub sessions: Sessions,
    pub limiter: LoginLimiter,
    /// Where login checks run (argon2: a few at once).
    pub hashing: auth::HashGate,
    pub book: RwLock<Book>,
    pub live: broadcast::Sender<Arc<str>>,
    pub uplink: Option<watch::Receiver<UplinkStatus>>,
    pub cameras: CameraBoard,
    pub tz: chrono_tz::Tz,
    /// Cookies get `Secure` (TLS is on).
    pub secure: bool,
    /// Host names it answers to (lower case), besides IP addresses and `localhost`.
    host_names: RwLock<Vec<String>>,
    /// This node's cameras for the zone editor (none in tests that do not need it).
    pub zones: RwLock<Option<Arc<zones::ZoneControl>>>,
    /// This node's evidence and its grant key (none: no evidence served, and no grants signed).
    evidence: RwLock<Option<Arc<evidence::EvidenceSide>>>,
    /// The store's member list as this node knows it (none: the store keeps none, or not known yet).
    pub members: RwLock<Option<watch::Receiver<Vec<crate::members::Member>>>>,
    /// The certificate authority tablets trust this node through (none: plain HTTP).
    trust: RwLock<Option<Trust>>,
}

/// What a tablet installs once to trust the store's nodes over HTTPS.
#[derive(Clone, Debug)]
pub struct Trust {
    pub cert_pem: String,
    pub cert_der: Vec<u8>,
    /// SHA-256 of the certificate, as browsers show it.
    pub fingerprint: String,
    /// The store's CA (every node); `false`: this node's own, in a store made before store CAs.
    pub store_wide: bool,
}

impl UiState {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: &str,
        node: &str,
        data_dir: PathBuf,
        mesh: MeshHandle,
        reader: impl Into<crate::bounds::Reader>,
        uplink: Option<watch::Receiver<UplinkStatus>>,
        cameras: CameraBoard,
        tz: chrono_tz::Tz,
        secure: bool,
    ) -> Arc<UiState> {
        let (live, _) = broadcast::channel(LIVE_QUEUE);
        Arc::new(UiState {
            store: store.to_string(),
            node: node.to_string(),
            users: Users::new(&data_dir),
            sessions: Sessions::open(&data_dir),
            data_dir,
            mesh,
            reader: reader.into().counting(),
            limiter: LoginLimiter::default(),
            hashing: Default::default(),
            book: RwLock::new(Book::new()),
            live,
            uplink,
            cameras,
            tz,
            secure,
            zones: RwLock::new(None),
            evidence: RwLock::new(None),
            members: RwLock::new(None),
            host_names: RwLock::new(this_hostname().into_iter().collect()),
            trust: RwLock::new(None),
        })
    }

    pub fn with_trust(self: Arc<Self>, t: Trust) -> Arc<Self> {
        self.set_trust(t);
        self
    }

    /// The CA tablets should install from now on (a new key epoch brings a new one).
    pub fn set_trust(&self, t: Trust) {
        *self.trust.write().unwrap_or_else(|p| p.into_inner()) = Some(t);
    }

    fn trust(&self) -> Option<Trust> {
        self.trust.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn with_zones(self: Arc<Self>, z: Arc<zones::ZoneControl>) -> Arc<Self> {
        *self.zones.write().unwrap_or_else(|p| p.into_inner()) = Some(z);
        self
    }

    /// Host names this node answers to besides IP addresses, `localhost` and its hostname.
    pub fn with_host_names(self: Arc<Self>, names: Vec<String>) -> Arc<Self> {
        self.host_names
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .extend(names.into_iter().map(|n| n.to_ascii_lowercase()));
        self
    }

    /// Whether a request for `host` (a Host header or an HTTP/2 authority, port included) is meant
    /// for this node: an IP address, `localhost`, or a name it was given. Any other name is what a
    /// DNS-rebinding page uses to reach the node from a tablet's browser under its own origin.
    fn answers_to(&self, host: &str) -> bool {
        let name = strip_port(host);
        if name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok()
        {
            return true;
        }
        let name = name.to_ascii_lowercase();
        name == "localhost"
            || name.ends_with(".localhost")
            || self
                .host_names
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&name)
    }

    pub fn with_members(self: Arc<Self>, m: watch::Receiver<Vec<crate::members::Member>>) -> Arc<Self> {
        *self.members.write().unwrap_or_else(|p| p.into_inner()) = Some(m);
        self
    }

    /// The store's members as this node knows them now (`None`: the store keeps no member list).
    fn member_list(&self) -> Option<Vec<crate::members::Member>> {
        self.members
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|m| m.borrow().clone())
    }

    /// Serves this node's evidence (`None`: none kept here) and signs grants for the evidence other
    /// nodes keep, with this node's key.
    pub fn with_evidence(
        self: Arc<Self>,
        store: Option<Arc<crate::evidence::store::EvidenceStore>>,
        key: libp2p_identity::Keypair,
    ) -> Arc<Self> {
        *self.evidence.write().unwrap_or_else(|p| p.into_inner()) =
            Some(Arc::new(evidence::EvidenceSide::new(store, key)));
        self
    }

    fn evidence_side(&self) -> Option<Arc<evidence::EvidenceSide>> {
        self.evidence.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn evidence_refused(&self) {
        crate::evidence::REFUSED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Appends an operator action to the store's log and applies it here at once, so the answer
    /// shows it (the subscription sees it again: a no-op).
    async fn record_action(&self, action: &Action) -> Result<(), ApiError> {
        let bytes =
            serde_json::to_vec(action).map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        let recs = self
            .mesh
            .append(vec![(RecordKind::Action, bytes)])
            .await
            .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
        for r in &recs {
            self.take(r);
        }
        Ok(())
    }

    fn zone_control(&self) -> Option<Arc<zones::ZoneControl>> {
        self.zones.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Folds one record into the incident view and tells open pages.
    pub fn take(&self, r: &Record) -> Option<Change> {
        if r.kind == RecordKind::User {
            self.take_user(r);
            return None;
        }
        // Decrypted and parsed before the lock: pages reading the view do not wait on it.
        let entry = self.reader.open(r)?;
        let change = {
            let mut book = self.book.write().unwrap_or_else(|p| p.into_inner());
            match &entry {
                Entry::Event(e) => book.event((r.origin, r.seq), e),
                Entry::Action(a) => {
                    book.action_signed((r.origin, r.seq), a, i64::try_from(r.hlc.wall_ms).unwrap_or(i64::MAX))
                }
            }
        }?;
        let json = {
            let book = self.book.read().unwrap_or_else(|p| p.into_inner());
            let inc = book.get(change.id())?;
            serde_json::to_string(&LiveMsg {
                new: matches!(change, Change::New(_)),
                incident: inc,
            })
            .ok()?
        };
        let _ = self.live.send(Arc::from(json));
        Some(change)
    }
}

#[derive(Serialize)]
struct LiveMsg<'a> {
    new: bool,
    incident: &'a Incident,
}

/// Reads the whole log into the view, then follows new records. Runs until the mesh stops. With a
/// retention, incidents the log no longer holds leave the view too.
impl UiState {
    /// Folds in a store user record; a user removed, or given another role or password, is logged
    /// out on this node at once (their live stream ends within [`STREAM_CHECK`]).
    fn take_user(&self, r: &Record) {
        let Some(u) = self.reader.user(r) else {
            return;
        };
        let name = u.name.clone();
        let before = self.users.find(&name);
        if !self.users.store().apply((r.hlc.wall_ms, r.hlc.logical), r.origin.0, u) {
            return;
        }
        if before.is_some() && self.users.find(&name) != before {
            self.sessions.remove_user(&name);
            tracing::info!(user = %name, "a store user was removed or changed: their sessions on this node ended");
        }
        self.users.save_view(&self.users.store().list());
    }
}

/// Publishes this node's user changes to the store: at start the users of its file the store has no
/// record of (they predate store-wide users), then whatever `lpmesh user` queues, every second.
pub async fn publish_users(state: Arc<UiState>) -> Result<(), MeshError> {
    // The store's list first, so a user removed elsewhere is not published again from this file.
    crate::node::read_log(&state.mesh, |r| {
        if r.kind == RecordKind::User {
            state.take_user(r);
        }
    })
    .await?;
    let mut first = state.users.unpublished();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
        let mut batch = std::mem::take(&mut first);
        batch.extend(state.users.take_outbox());
        if batch.is_empty() {
            continue;
        }
        let items: Vec<(RecordKind, Vec<u8>)> = batch
            .iter()
            .filter_map(|u| Some((RecordKind::User, serde_json::to_vec(u).ok()?)))
            .collect();
        match state.mesh.append(items).await {
            Ok(_) => tracing::info!(changes = batch.len(), "user changes published to the store"),
            Err(e) => {
                // Queued again, after anything `lpmesh user` queued meanwhile: tried next second.
                tracing::error!(error = %e, "cannot publish user changes to the store yet");
                if let Err(e) = state.users.requeue(&batch) {
                    tracing::error!(error = %e, "user changes lost: run `lpmesh user` again");
                }
            }
        }
    }
}

/// A live stream whose session ended (logout, user removed) is closed within this.
pub const STREAM_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

pub async fn feed(state: Arc<UiState>, retention: Option<std::time::Duration>) -> Result<(), MeshError> {
    let mut sub = state.mesh.subscribe();
    scan(&state).await?;
    let mut expiry = tokio::time::interval(std::time::Duration::from_secs(5));
    expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let r = tokio::select! {
            r = sub.recv() => r,
            _ = expiry.tick() => {
                if let Some(keep) = retention {
                    let floors = state.mesh.floors().await?;
                    let cutoff = chrono::Utc::now().timestamp_millis() - keep.as_millis().min(i64::MAX as u128) as i64;
                    let removed = state.book.write().unwrap_or_else(|p| p.into_inner()).expire(&floors, cutoff);
                    if removed > 0 {
                        tracing::debug!(removed, "expired incidents left the UI");
                    }
                }
                continue;
            }
        };
        match r {
            Ok(r) => {
                state.take(&r);
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "UI fell behind the log; reading it again");
                scan(&state).await?;
            }
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}

async fn scan(state: &UiState) -> Result<(), MeshError> {
    crate::node::read_log(&state.mesh, |r| {
        state.take(r);
    })
    .await
}

// ---------------------------------------------------------------------------------------------------------
// Errors and auth

#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl ApiError {
    fn new(status: StatusCode, msg: impl Into<String>) -> Self {
        ApiError(status, msg.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

fn cookie_token(headers: &HeaderMap) -> Option<String> {
    lpmesh_web::login::cookie(headers, SESSION_COOKIE)
}

/// A logged-in request; for anything but GET/HEAD the CSRF token was checked too.
pub struct Authed(pub Session);

impl FromRequestParts<Arc<UiState>> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<UiState>) -> Result<Self, Self::Rejection> {
        let token = cookie_token(&parts.headers);
        let session = token
            .as_deref()
            .and_then(|t| state.sessions.get(t))
            .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "log in first"))?;
        // The store's user list decides: removed or given another role elsewhere, the session ends.
        if state.users.role_of(&session.user) != Some(session.role) {
            state.sessions.remove_user(&session.user);
            return Err(ApiError::new(StatusCode::UNAUTHORIZED, "log in again"));
        }
        if !matches!(parts.method, Method::GET | Method::HEAD) {
            let sent = parts.headers.get("x-csrf-token").and_then(|v| v.to_str().ok());
            if sent != Some(session.csrf.as_str()) {
                return Err(ApiError::new(StatusCode::FORBIDDEN, "missing or wrong CSRF token"));
            }
        }
        Ok(Authed(session))
    }
}

/// A body that is not the JSON asked for: too large is 413, the rest keeps axum's own status (415 for
/// another content type, 400 for bad syntax, 422 for the wrong shape).
fn json_refusal(e: axum::extract::rejection::JsonRejection) -> ApiError {
    ApiError::new(e.status(), e.body_text())
}

/// Only managers.
pub struct Manager(pub Session);

impl FromRequestParts<Arc<UiState>> for Manager {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<UiState>) -> Result<Self, Self::Rejection> {
        let Authed(s) = Authed::from_request_parts(parts, state).await?;
        if s.role != Role::Manager {
            return Err(ApiError::new(StatusCode::FORBIDDEN, "managers only"));
        }
        Ok(Manager(s))
    }
}

// ---------------------------------------------------------------------------------------------------------
// Routes

pub fn app(state: Arc<UiState>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/app.js", get(app_js))
        .route("/app.css", get(app_css))
        .route("/health", get(|| async { "ok\n" }))
        .route("/ca.pem", get(ca_pem))
        .route("/ca.crt", get(ca_crt))
        .route("/api/trust", get(trust_info))
        .route("/api/login", post(login))
        .route("/api/logout", post(logout))
        .route("/api/me", get(me))
        .route("/api/incidents", get(incidents))
        .route("/api/incidents/{id}", get(incident))
        .route("/api/incidents/{id}/actions", post(act))
        .route("/api/stream", get(stream))
        .route("/api/cameras", get(cameras))
        .route("/api/mesh", get(mesh_status))
        .route("/api/charts/{which}", get(chart))
        .route("/api/invite", get(invite))
        .route("/api/users", get(list_users).post(add_user))
        .route("/api/users/{name}", delete(remove_user))
        .route("/api/members/{node}/revoke", post(revoke_member))
        .route("/api/zones", get(zone_cameras))
        .route("/api/zones/{camera}", get(get_zones).put(put_zones))
        .route("/api/zones/{camera}/still.bmp", get(still))
        .route("/api/incidents/{id}/evidence", get(evidence::links))
        .route("/evidence/{id}", get(evidence::from_alert))
        .route("/evidence/{id}/still.jpg", get(evidence::still))
        .route("/evidence/{id}/clip.mp4", get(evidence::clip))
        .route("/evidence/{id}/download", get(evidence::download))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn(body_deadline))
        .layer(middleware::from_fn_with_state(state.clone(), known_host))
        .layer(middleware::from_fn_with_state(state.clone(), security_headers))
        .with_state(state)
}

/// The largest request body any route takes (actions, zones); login takes less.
const MAX_BODY: usize = 64 * 1024;

/// Reads a request's body before any handler sees it, within HQ's body deadline: a tablet sends its
/// few kilobytes at once, and a client that trickles one would otherwise hold a connection (and a
/// handler) for as long as it likes.
async fn body_deadline(req: Request, next: Next) -> Response {
    use lpmesh_web::body::{read_body, BodyEnd};
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let read = read_body(body, MAX_BODY, MAX_BODY).await;
    if read.seen > MAX_BODY {
        return ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "request body too large").into_response();
    }
    match read.end {
        BodyEnd::Complete => {
            next.run(Request::from_parts(parts, axum::body::Body::from(read.bytes)))
                .await
        }
        BodyEnd::Deadline => {
            ApiError::new(StatusCode::REQUEST_TIMEOUT, "the request body took too long to arrive").into_response()
        }
        BodyEnd::Broken => ApiError::new(StatusCode::BAD_REQUEST, "the request body broke off").into_response(),
    }
}

async fn security_headers(State(state): State<Arc<UiState>>, req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    if state.secure {
        // A tablet that once reached the node over HTTPS never falls back to plain HTTP for it.
        h.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
    }
    if !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    }
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

fn asset(ct: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, ct), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

/// The page, with a policy that lets it show pictures from the store's other nodes (an incident's
/// evidence is fetched from the node that keeps it) and from nowhere else.
async fn index(State(state): State<Arc<UiState>>) -> Response {
    let origins: Vec<String> = member_uis(&state).await.into_iter().map(|(_, o)| o).collect();
    // The page learns which nodes its policy lets it show pictures from (a node that joins later
    // needs the page loaded again).
    let html = include_str!("assets/index.html").replacen(
        "<head>",
        &format!(
            "<head>\n<meta name=\"lpmesh-evidence-origins\" content=\"{}\">",
            origins.join(" ")
        ),
        1,
    );
    let mut r = (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        html,
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&csp(&origins)) {
        r.headers_mut().insert(header::CONTENT_SECURITY_POLICY, v);
    }
    r
}

/// The page's policy, with `origins` (checked by [`https_origin`]) allowed for images and video.
fn csp(origins: &[String]) -> String {
    let extra: String = origins.iter().map(|o| format!(" {o}")).collect();
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:{extra}; \
         media-src 'self'{extra}; connect-src 'self'; font-src 'none'; frame-ancestors 'none'; form-action 'self'; \
         base-uri 'none'"
    )
}

/// The store's members' tablet addresses (HTTPS origins) as their heartbeats announce them, under
/// the names their admissions give them, as the store's records are taken (`bounds`): a member
/// admitted under a name is only that name; one admitted without a name is the name it announces
/// unless another member was admitted under it. So a member cannot pose as another to serve its
/// evidence. A node that is no member (revoked) is left out. (A store made before member records has
/// no list: there the heartbeat's name is all there is.)
async fn member_uis(state: &UiState) -> Vec<(String, String)> {
    let members = state.member_list();
    node_infos(state)
        .await
        .into_iter()
        .filter_map(|(n, info)| {
            let origin = info.ui.as_deref().and_then(https_origin)?;
            let name = match &members {
                Some(list) => admitted_name(list, &n.origin, &info.name)?,
                None => info.name,
            };
            Some((name, origin))
        })
        .collect()
}

/// The name a node speaks under in the store: its admitted name; for a member admitted without one,
/// the name it claims unless another member was admitted under it; for anyone else, none.
fn admitted_name(
    list: &[crate::members::Member],
    origin: &lpmesh_mesh::record::Origin,
    claimed: &str,
) -> Option<String> {
    let me = list
        .iter()
        .find(|m| crate::members::parse_hex(&m.key).as_ref() == Some(origin))?;
    match &me.name {
        Some(admitted) => Some(admitted.clone()),
        None if list.iter().any(|m| m.name.as_deref() == Some(claimed)) => None,
        None => Some(claimed.to_string()),
    }
}

/// `https://host[:port]` of a URL another node announced, or `None` for anything else: what a node
/// says about itself must not widen the page's policy beyond one HTTPS origin.
fn https_origin(url: &str) -> Option<String> {
    let rest = url.strip_prefix("https://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let ok = !authority.is_empty()
        && authority.len() <= 255
        && authority
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b':' | b'[' | b']'));
    ok.then(|| format!("https://{authority}"))
}

async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", include_str!("assets/app.js"))
}

async fn app_css() -> Response {
    asset("text/css; charset=utf-8", include_str!("assets/app.css"))
}

#[derive(Deserialize)]
struct LoginBody {
    name: String,
    password: String,
}

#[derive(Serialize)]
struct Me<'a> {
    name: &'a str,
    role: Role,
    csrf: &'a str,
    store: &'a str,
    node: &'a str,
}

/// The host a request names: its Host header (HTTP/1.1) or its authority (HTTP/2 sends no Host).
fn request_host(req: &Request) -> Option<&str> {
    req.headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
}

/// `host` without its port (`[::1]:8080` -> `[::1]`).
fn strip_port(host: &str) -> &str {
    match host.rfind(':') {
        Some(i) if !host[i..].contains(']') => &host[..i],
        _ => host,
    }
}

/// The machine's hostname, which tablets on the store LAN may use for the node.
/// Every address of this machine's interfaces (a UI listening on 0.0.0.0 answers on all of them,
/// and its certificate names them all).
pub fn local_addresses() -> Vec<std::net::IpAddr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we only read, then free once with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: the family says which sockaddr this is.
            let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
            if family == libc::AF_INET {
                // SAFETY: an AF_INET address is a sockaddr_in.
                let a = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                out.push(std::net::IpAddr::from(u32::from_be(a.sin_addr.s_addr).to_be_bytes()));
            } else if family == libc::AF_INET6 {
                // SAFETY: an AF_INET6 address is a sockaddr_in6.
                let a = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                out.push(std::net::IpAddr::from(a.sin6_addr.s6_addr));
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: the list from getifaddrs, freed once.
    unsafe { libc::freeifaddrs(head) };
    out.sort();
    out.dedup();
    out
}

/// This machine's host name, lower case.
pub fn this_hostname() -> Option<String> {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let h = h.trim().to_ascii_lowercase();
    (!h.is_empty()).then_some(h)
}

/// A browser always says where a request comes from on POST: refuse other origins (login CSRF).
fn same_origin(req: &Request) -> bool {
    let Some(origin) = req.headers().get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = request_host(req).unwrap_or("");
    origin
        .split_once("://")
        .is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(host))
}

/// Refuses requests for host names this node was not given (see [`UiState::answers_to`]).
async fn known_host(State(state): State<Arc<UiState>>, req: Request, next: Next) -> Response {
    match request_host(&req) {
        Some(h) if !state.answers_to(h) => ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            "this node does not answer to that host name: use its address, or add the name to [ui] names",
        )
        .into_response(),
        _ => next.run(req).await,
    }
}

/// The client's address, when the listener recorded it.
fn client_ip(req_ext: &axum::http::Extensions) -> Option<std::net::IpAddr> {
    req_ext
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

/// Over plain HTTP (`[ui] tls = false`) a password, a session cookie or a camera's picture would
/// cross the shop's network in clear: only the node itself may ask for them.
fn plain_http_refused(state: &UiState, ip: Option<std::net::IpAddr>, what: &str) -> Option<ApiError> {
    (!state.secure && !ip.is_some_and(|i| i.is_loopback())).then(|| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            format!("{what} only over HTTPS: this node serves plain HTTP ([ui] tls = false), which only the node itself may use for that"),
        )
    })
}

async fn login(State(state): State<Arc<UiState>>, req: Request) -> Result<Response, ApiError> {
    let ip = client_ip(req.extensions());
    if let Some(e) = plain_http_refused(&state, ip, "logins") {
        return Err(e);
    }
    if !same_origin(&req) {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "cross-origin login refused"));
    }
    // JSON only: a browser will not send that across sites without asking first, so a forged form
    // cannot log anyone in even where the Origin check is missing (older browsers).
    let json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("application/json"));
    if !json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the login as application/json",
        ));
    }
    let bytes = axum::body::to_bytes(req.into_body(), 8 * 1024)
        .await
        .map_err(|_| ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "request too large"))?;
    let body: LoginBody = serde_json::from_slice(&bytes)
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "send {\"name\": ..., \"password\": ...}"))?;
    let retry = |status: StatusCode, wait: u64, why: String| {
        let mut r = ApiError::new(status, why).into_response();
        if let Ok(v) = HeaderValue::from_str(&wait.to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        r
    };
    if let Some(wait) = state.limiter.blocked(&body.name, ip) {
        // Whole seconds, rounded up: a client that waits what it is told is let through.
        let wait = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        return Ok(retry(
            StatusCode::TOO_MANY_REQUESTS,
            wait,
            format!("too many failed logins; try again in {wait} s"),
        ));
    }
    let users = &state.users;
    let (name, password) = (body.name.clone(), body.password.clone());
    // argon2 takes tens of milliseconds and 19 MiB on purpose: a few at once, off the async workers.
    let Some(role) = state.hashing.run(|| users.check(&name, &password)).await else {
        return Ok(retry(
            StatusCode::SERVICE_UNAVAILABLE,
            1,
            "too many logins at once; try again in a second".into(),
        ));
    };
    let Some(role) = role else {
        state.limiter.failed(&body.name, ip);
        if users.has(&body.name) {
            tracing::warn!(user = %body.name, ?ip, "failed login");
        } else {
            // Never the typed text: it is often a password typed into the name field.
            tracing::warn!(typed = %auth::name_for_log(&body.name), ?ip, "failed login with a name that is nobody's");
        }
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "wrong name or password"));
    };
    state.limiter.succeeded(&body.name);
    let (token, session) = state.sessions.create(&body.name, role);
    let cookie = format!(
        "{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        auth::SESSION_IDLE.as_secs(),
        if state.secure { "; Secure" } else { "" }
    );
    let me = Me {
        name: &session.user,
        role: session.role,
        csrf: &session.csrf,
        store: &state.store,
        node: &state.node,
    };
    let mut r = Json(me).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(r)
}

async fn logout(State(state): State<Arc<UiState>>, headers: HeaderMap, Authed(_): Authed) -> Response {
    if let Some(t) = cookie_token(&headers) {
        state.sessions.remove(&t);
    }
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("lpmesh_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    r
}

async fn me(State(state): State<Arc<UiState>>, Authed(s): Authed) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "name": s.user, "role": s.role, "csrf": s.csrf, "store": state.store, "node": state.node,
    }))
}

#[derive(Deserialize, Default)]
struct IncidentQuery {
    from: Option<String>,
    to: Option<String>,
    camera: Option<String>,
    zone: Option<String>,
    kind: Option<String>,
    severity: Option<String>,
    state: Option<String>,
    limit: Option<usize>,
}

fn parse_time(field: &str, v: &Option<String>) -> Result<Option<i64>, ApiError> {
    let Some(s) = v.as_deref().filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(Some(ms));
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| Some(t.timestamp_millis()))
        .map_err(|_| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("{field}: not a time")))
}

fn parse_enum<T: serde::de::DeserializeOwned>(field: &str, v: &Option<String>) -> Result<Option<T>, ApiError> {
    match v.as_deref().filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => serde_json::from_value(serde_json::Value::String(s.to_string()))
            .map(Some)
            .map_err(|_| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("{field}: unknown value {s:?}"),
                )
            }),
    }
}

async fn incidents(
    State(state): State<Arc<UiState>>,
    Authed(_): Authed,
    Query(q): Query<IncidentQuery>,
) -> Result<Json<Vec<Incident>>, ApiError> {
    let from = parse_time("from", &q.from)?;
    let to = parse_time("to", &q.to)?;
    let kind: Option<EventKind> = parse_enum("kind", &q.kind)?;
    let min_sev: Option<Severity> = parse_enum("severity", &q.severity)?;
    let st = q.state.as_deref().filter(|s| !s.is_empty());
    if let Some(s) = st {
        if !["open", "acknowledged", "resolved", "false_alarm"].contains(&s) {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("state: unknown value {s:?}"),
            ));
        }
    }
    let limit = q.limit.unwrap_or(200).clamp(1, 1000);
    let book = state.book.read().unwrap_or_else(|p| p.into_inner());
    let mut list: Vec<&Incident> = book
        .all()
        .filter(|i| from.is_none_or(|f| i.last_at_ms >= f))
        .filter(|i| to.is_none_or(|t| i.started_at_ms < t))
        .filter(|i| q.camera.as_deref().is_none_or(|c| c.is_empty() || i.camera == c))
        .filter(|i| {
            q.zone
                .as_deref()
                .is_none_or(|z| z.is_empty() || i.zone.as_deref() == Some(z))
        })
        // Crossings are counting, not incidents: only when asked for by kind.
        .filter(|i| match kind {
            Some(k) => i.kind == k,
            None => i.kind != EventKind::LineCrossing,
        })
        .filter(|i| min_sev.is_none_or(|m| i.severity >= m))
        .filter(|i| st.is_none_or(|s| i.state.as_str() == s))
        .collect();
    list.sort_by(|a, b| (b.started_at_ms, &b.id).cmp(&(a.started_at_ms, &a.id)));
    Ok(Json(list.into_iter().take(limit).cloned().collect()))
}

async fn incident(
    State(state): State<Arc<UiState>>,
    Authed(_): Authed,
    Path(id): Path<String>,
) -> Result<Json<Incident>, ApiError> {
    let book = state.book.read().unwrap_or_else(|p| p.into_inner());
    book.get(&id)
        .cloned()
        .map(Json)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such incident"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActBody {
    action: ActionKind,
    #[serde(default)]
    note: Option<String>,
}

async fn act(
    State(state): State<Arc<UiState>>,
    Authed(s): Authed,
    Path(id): Path<String>,
    body: Result<Json<ActBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Incident>, ApiError> {
    let Json(body) = body.map_err(json_refusal)?;
    let note = body.note.map(|n| n.trim().to_string()).filter(|n| !n.is_empty());
    if note.as_ref().is_some_and(|n| n.len() > MAX_NOTE_LEN) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("note: at most {MAX_NOTE_LEN} bytes"),
        ));
    }
    if body.action == ActionKind::EvidenceDownloaded {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "action: a download is recorded by the node that hands the clip over, not claimed",
        ));
    }
    if matches!(body.action, ActionKind::Resolve | ActionKind::Note) && note.is_none() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "note: required to resolve or annotate",
        ));
    }
    let started = {
        let book = state.book.read().unwrap_or_else(|p| p.into_inner());
        book.get(&id)
            .map(|i| i.started_at_ms)
            .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such incident"))?
    };
    let action = Action {
        incident: id.clone(),
        incident_started_at_ms: started,
        action: body.action,
        by: s.user.clone(),
        node: state.node.clone(),
        at_ms: chrono::Utc::now().timestamp_millis(),
        note,
    };
    state.record_action(&action).await?;
    tracing::info!(incident = %id, action = action.action.as_str(), by = %s.user, "operator action");
    let book = state.book.read().unwrap_or_else(|p| p.into_inner());
    book.get(&id)
        .cloned()
        .map(Json)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such incident"))
}

async fn stream(
    State(state): State<Arc<UiState>>,
    headers: HeaderMap,
    Authed(_): Authed,
) -> Sse<impl futures::Stream<Item = Result<SseEvent, std::convert::Infallible>>> {
    let rx = state.live.subscribe();
    let token = cookie_token(&headers).unwrap_or_default();
    let mut check = tokio::time::interval(STREAM_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let s = futures::stream::unfold(
        (rx, check, state, token),
        |(mut rx, mut check, state, token)| async move {
            let ev = loop {
                tokio::select! {
                    r = rx.recv() => break match r {
                        Ok(json) => SseEvent::default().event("incident").data(json.as_ref()),
                        // Too slow to keep up: the page reloads its list rather than miss changes.
                        Err(broadcast::error::RecvError::Lagged(_)) => SseEvent::default().event("resync").data("{}"),
                        Err(broadcast::error::RecvError::Closed) => return None,
                    },
                    // A session that ended (logout, the user removed on any node) stops its stream.
                    _ = check.tick() => if !state.sessions.alive(&token) {
                        return None;
                    },
                }
            };
            Some((Ok(ev), (rx, check, state, token)))
        },
    );
    Sse::new(s).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

#[derive(Serialize)]
struct CameraRow {
    node: String,
    node_live: bool,
    #[serde(flatten)]
    camera: CameraLive,
}

async fn node_infos(state: &UiState) -> Vec<(lpmesh_mesh::net::NodeSeen, NodeInfo)> {
    let mut out = Vec::new();
    for n in state.mesh.nodes().await.unwrap_or_default() {
        let info: NodeInfo = serde_json::from_slice(&n.info).unwrap_or_default();
        out.push((n, info));
    }
    out
}

async fn cameras(State(state): State<Arc<UiState>>, Authed(_): Authed) -> Json<Vec<CameraRow>> {
    let mut rows: Vec<CameraRow> = state
        .cameras
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .map(|c| CameraRow {
            node: state.node.clone(),
            node_live: true,
            camera: c.clone(),
        })
        .collect();
    let me = state.mesh.origin();
    for (n, info) in node_infos(&state).await {
        if n.origin == me {
            continue;
        }
        for c in info.cameras {
            rows.push(CameraRow {
                node: info.name.clone(),
                node_live: n.live,
                camera: CameraLive {
                    // A node that stopped beating cannot vouch for its cameras.
                    online: c.online && n.live,
                    ..c
                },
            });
        }
    }
    rows.sort_by(|a, b| (&a.node, &a.camera.name).cmp(&(&b.node, &b.camera.name)));
    Json(rows)
}

async fn mesh_status(State(state): State<Arc<UiState>>, Authed(_): Authed) -> Json<serde_json::Value> {
    let me = state.mesh.origin();
    let leader = state.mesh.leader().await.ok().flatten();
    let nodes: Vec<serde_json::Value> = node_infos(&state)
        .await
        .into_iter()
        .map(|(n, info)| {
            serde_json::json!({
                "id": n.origin.to_string(),
                "name": if info.name.is_empty() { n.origin.to_string() } else { info.name },
                "online": n.live,
                "silent_secs": n.silent_ms / 1000,
                "hq_reachable": n.hq_reachable,
                "priority": n.priority,
                "leader": leader == Some(n.origin),
                "this": n.origin == me,
                "cameras": info.cameras.len(),
            })
        })
        .collect();
    let uplink = state.uplink.as_ref().map(|u| u.borrow().clone());
    let stats = state.mesh.stats().await.ok();
    let members = state.member_list();
    Json(serde_json::json!({
        "store": state.store,
        "node": state.node,
        "leader": leader.map(|l| l.to_string()),
        "nodes": nodes,
        "peers": stats.as_ref().map_or(0, |s| s.peers),
        "records": stats.as_ref().map_or(0, |s| s.records),
        "uplink": uplink,
        "members": members,
    }))
}

#[derive(Deserialize)]
struct ChartQuery {
    days: Option<u32>,
}

async fn chart(
    State(state): State<Arc<UiState>>,
    Authed(_): Authed,
    Path(which): Path<String>,
    Query(q): Query<ChartQuery>,
) -> Result<Response, ApiError> {
    let days = q.days.unwrap_or(1);
    if days != 1 && days != 7 {
        return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "days: 1 or 7"));
    }
    let now = chrono::Utc::now().timestamp_millis();
    let svg = {
        let book = state.book.read().unwrap_or_else(|p| p.into_inner());
        match which.as_str() {
            "footfall.svg" => charts::footfall(&book, state.tz, now, days),
            "incidents.svg" => charts::incidents(&book, state.tz, now, days),
            _ => return Err(ApiError::new(StatusCode::NOT_FOUND, "no such chart")),
        }
    };
    Ok(([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response())
}

#[derive(serde::Deserialize)]
struct InviteQuery {
    /// The new node's rank in the uplink election, recorded in its admission.
    #[serde(default)]
    priority: u8,
    /// The new node's name, recorded in its admission (empty: none).
    #[serde(default)]
    node: Option<String>,
}

async fn invite(
    State(state): State<Arc<UiState>>,
    Manager(s): Manager,
    Query(q): Query<InviteQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    // The token holds a one-time secret: over plain HTTP anyone on the shop's network could read it
    // and race the installer to it.
    if !state.secure {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "invitations are shown only over HTTPS ([ui] tls = true); on the node itself, `lpmesh invite` makes one",
        ));
    }
    let name = q.node.map(|n| n.trim().to_string()).filter(|n| !n.is_empty());
    if let Some(n) = &name {
        crate::config::check_name(n).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("node name {e}")))?;
        let taken = state
            .member_list()
            .is_some_and(|list| list.iter().any(|x| x.name.as_deref() == Some(n.as_str())));
        if taken {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("a member of the store is named {n:?} already"),
            ));
        }
    }
    let grant = lpmesh_mesh::enrol::Grant {
        name,
        priority: q.priority,
    };
    let peer = state.mesh.peer_id();
    let boot: Vec<String> = state
        .mesh
        .listen_addrs()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|a| !a.to_string().contains("/127.0.0.1/"))
        .map(|a| format!("{a}/p2p/{peer}"))
        .collect();
    let (inv, token) = crate::node::invite(&state.data_dir, boot, lpmesh_mesh::enrol::DEFAULT_EXPIRY, grant, None)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let token = token.encode();
    let svg = qrcode::QrCode::new(token.as_bytes())
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .render::<qrcode::render::svg::Color>()
        .min_dimensions(320, 320)
        .build();
    tracing::info!(by = %s.user, invitation = %inv.id, "invitation created in the UI");
    Ok(Json(
        serde_json::json!({ "token": token, "qr_svg": svg, "expires_ms": inv.expires_ms, "single_use": true }),
    ))
}

/// A manager takes a node out of the store: a revocation signed by this node, which every member
/// acts on as soon as it hears it.
async fn revoke_member(
    State(state): State<Arc<UiState>>,
    Manager(s): Manager,
    Path(node): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let list = state
        .member_list()
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "this store keeps no member list"))?;
    let now = chrono::Utc::now().timestamp_millis();
    let revocation = crate::members::revocation(&list, &node, &state.mesh.origin(), now).map_err(|e| {
        let status = match e {
            crate::members::RevokeError::NotMember => StatusCode::NOT_FOUND,
            _ => StatusCode::CONFLICT,
        };
        ApiError::new(status, e.to_string())
    })?;
    let json =
        serde_json::to_vec(&revocation).map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    state
        .mesh
        .append(vec![(RecordKind::Member, json)])
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    tracing::warn!(by = %s.user, %node, "a node was revoked from the UI");
    Ok(Json(serde_json::json!({ "revoked": node })))
}

/// The cameras whose zones this node can edit (its own).
async fn zone_cameras(State(state): State<Arc<UiState>>, Manager(_): Manager) -> Json<Vec<String>> {
    Json(state.zone_control().map(|z| z.names()).unwrap_or_default())
}

fn local_camera(
    state: &UiState,
    camera: &str,
) -> Result<(Arc<zones::ZoneControl>, crate::config::CameraConfig), ApiError> {
    let z = state
        .zone_control()
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "this node has no cameras"))?;
    let c = z.camera(camera).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("camera {camera:?} is not on this node: edit its zones on the UI of the node that has it"),
        )
    })?;
    Ok((z, c))
}

async fn get_zones(
    State(state): State<Arc<UiState>>,
    Manager(_): Manager,
    Path(camera): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (_, c) = local_camera(&state, &camera)?;
    Ok(Json(
        serde_json::json!({ "camera": c.name, "zones": c.zones, "lines": c.lines }),
    ))
}

async fn put_zones(
    State(state): State<Arc<UiState>>,
    Manager(s): Manager,
    Path(camera): Path<String>,
    body: Result<Json<zones::ZonesBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Json(body) = body.map_err(json_refusal)?;
    let (z, _) = local_camera(&state, &camera)?;
    let n = body.zones.len();
    tokio::task::block_in_place(|| z.save_zones(&camera, body.zones)).map_err(|e| match e {
        zones::ZoneError::NoCamera(_) => ApiError::new(StatusCode::NOT_FOUND, e.to_string()),
        zones::ZoneError::Edit(_) | zones::ZoneError::Invalid(_) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
        }
        zones::ZoneError::File { .. } => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    })?;
    tracing::info!(camera = %camera, zones = n, by = %s.user, "zones edited in the UI");
    Ok(Json(serde_json::json!({ "saved": n })))
}

/// The still frame of one of this node's cameras; never cached, never sent anywhere else.
async fn still(
    State(state): State<Arc<UiState>>,
    Manager(_): Manager,
    Path(camera): Path<String>,
    ext: axum::http::Extensions,
) -> Result<Response, ApiError> {
    if let Some(e) = plain_http_refused(&state, client_ip(&ext), "camera pictures") {
        return Err(e);
    }
    let (z, _) = local_camera(&state, &camera)?;
    let still = z
        .still(&camera)
        .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no frame from this camera yet"))?;
    Ok(([(header::CONTENT_TYPE, "image/bmp")], still.to_bmp()).into_response())
}

/// The store's users (names and roles), for the managers' Users page: the store's records, and users
/// of this node's file the store has no record of yet (added here a moment ago, or from before
/// store-wide users).
fn store_user_list(state: &UiState) -> BTreeMap<String, Role> {
    let mut all: BTreeMap<String, Role> = state.users.store().list().into_iter().collect();
    for u in state.users.load().unwrap_or_default() {
        if state.users.store().get(&u.name).is_none() {
            all.entry(u.name).or_insert(u.role);
        }
    }
    all
}

async fn list_users(State(state): State<Arc<UiState>>, Manager(_): Manager) -> Json<serde_json::Value> {
    let users: Vec<serde_json::Value> = store_user_list(&state)
        .into_iter()
        .map(|(name, role)| serde_json::json!({ "name": name, "role": role }))
        .collect();
    Json(serde_json::json!({ "users": users }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    name: String,
    role: Role,
    password: String,
}

/// Adds a user to the whole store, or gives one a new role and password (their sessions end on
/// every node). Hashing runs behind the login's gate: this route cannot be used to flood argon2.
async fn add_user(
    State(state): State<Arc<UiState>>,
    Manager(s): Manager,
    body: Result<Json<NewUser>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let Json(u) = body.map_err(json_refusal)?;
    auth::check_new_user(&u.name, &u.password).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    if u.name == s.user && u.role != Role::Manager {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "a manager cannot take away their own manager role: ask another manager",
        ));
    }
    let (name, role) = (u.name.clone(), u.role);
    let st = state.clone();
    state
        .hashing
        .run(move || st.users.add(&u.name, u.role, &u.password))
        .await
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy checking logins: try again in a moment",
            )
        })?
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    tracing::info!(by = %s.user, user = %name, ?role, "store user added or changed in the UI");
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "saved": name, "role": role })),
    ))
}

/// Removes a user from the whole store: their sessions and live pages end on every node within
/// seconds. Nobody removes themselves, and the store keeps at least one manager.
async fn remove_user(
    State(state): State<Arc<UiState>>,
    Manager(s): Manager,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if name == s.user {
        return Err(ApiError::new(StatusCode::CONFLICT, "you cannot remove yourself"));
    }
    let all = store_user_list(&state);
    let managers_left = all.iter().filter(|(n, r)| **r == Role::Manager && **n != name).count();
    if all.get(&name) == Some(&Role::Manager) && managers_left == 0 {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "the store keeps at least one manager",
        ));
    }
    state
        .users
        .remove(&name)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    tracing::info!(by = %s.user, user = %name, "store user removed in the UI");
    Ok(Json(serde_json::json!({ "removed": name })))
}

/// The certificate a tablet installs to trust the store (public: it is what every TLS handshake
/// shows anyway), as `body` makes it from the trust.
fn ca_file(
    state: &UiState,
    kind: &'static str,
    name: &'static str,
    body: fn(Trust) -> Vec<u8>,
) -> Result<Response, ApiError> {
    let t = state
        .trust()
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "this node serves plain HTTP: no certificate"))?;
    Ok((
        [(header::CONTENT_TYPE, kind), (header::CONTENT_DISPOSITION, name)],
        body(t),
    )
        .into_response())
}

async fn ca_pem(State(state): State<Arc<UiState>>) -> Result<Response, ApiError> {
    ca_file(
        &state,
        "application/x-pem-file",
        "attachment; filename=\"lpmesh-store-ca.pem\"",
        |t| t.cert_pem.into_bytes(),
    )
}

/// The same in DER, the form phones and tablets offer to install when they open it.
async fn ca_crt(State(state): State<Arc<UiState>>) -> Result<Response, ApiError> {
    ca_file(
        &state,
        "application/x-x509-ca-cert",
        "attachment; filename=\"lpmesh-store-ca.crt\"",
        |t| t.cert_der,
    )
}

/// For the login page: where to get the store's certificate, its fingerprint to check, and a QR
/// code of its address for a phone.
async fn trust_info(
    State(state): State<Arc<UiState>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Some(t) = state.trust() else {
        return Ok(Json(serde_json::json!({ "https": false })));
    };
    // The Host header passed `known_host`: it is one of this node's own names.
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let url = format!("https://{host}/ca.crt");
    let qr = qrcode::QrCode::new(url.as_bytes())
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .render::<qrcode::render::svg::Color>()
        .min_dimensions(200, 200)
        .build();
    Ok(Json(serde_json::json!({
        "https": true,
        "store": state.store,
        "store_wide": t.store_wide,
        "fingerprint": t.fingerprint,
        "url": url,
        "qr_svg": qr,
    })))
}

// ---------------------------------------------------------------------------------------------------------
// Serving

pub use lpmesh_web::serve::Running;

#[derive(Debug, thiserror::Error)]
pub enum UiError {
    #[error("UI: {0}")]
    Serve(#[from] lpmesh_web::serve::ServeError),
}

/// Serves the UI on `addr`, over TLS when `tls` holds a PEM certificate and key.
pub async fn serve(state: Arc<UiState>, addr: SocketAddr, tls: Option<(Vec<u8>, Vec<u8>)>) -> Result<Running, UiError> {
    Ok(lpmesh_web::serve::serve(app(state), addr, tls, "UI").await?)
}
