//! Logging in to HQ's dashboard: the login form, sessions in a cookie, logout, and the [`Analyst`]
//! every dashboard route asks for.
//!
//! - The cookie (`__Host-lpmesh_hq`) is Secure, HttpOnly and SameSite=Lax: a link from a report opens
//!   the page logged in, while no other site can post to HQ with it. Only its SHA-256 is stored.
//! - A POST whose `Origin` (or `Sec-Fetch-Site`) names another site is refused; a browser always sends
//!   one of them, so only a script (holding no one's cookie but its own) sends neither. Logout also
//!   carries the session's CSRF token.
//! - Passwords are checked behind [`lpmesh_web::login::HashGate`] and slowed down per name and per
//!   address by [`lpmesh_web::login::LoginLimiter`]: a guesser waits, the real user is never locked out.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;
use serde::Deserialize;

use crate::access::{HqRole, HqSession, HqUser};
use crate::server::HqState;
use crate::store::StoreError;
use lpmesh_web::login::{name_for_log, token, token_key, verify_password};

pub const COOKIE: &str = "__Host-lpmesh_hq";

/// Who is asking: a logged-in HQ user, as they are now (role and stores re-read at each request).
#[derive(Clone, Debug)]
pub struct Analyst {
    pub user: HqUser,
    pub csrf: String,
    key: String,
}

impl Analyst {
    pub fn is_admin(&self) -> bool {
        self.user.role == HqRole::Admin
    }
}

/// Why a request has no [`Analyst`].
pub enum NeedLogin {
    /// No session, an expired one, or one whose user changed or was removed.
    Anonymous {
        page: bool,
        path: String,
    },
    Store(StoreError),
}

impl IntoResponse for NeedLogin {
    fn into_response(self) -> Response {
        match self {
            // A person at a page goes to the form and comes back; a script is told plainly.
            NeedLogin::Anonymous { page: true, path } => {
                let to = format!("/login?next={}", crate::dashboard::enc(&path));
                (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response()
            }
            NeedLogin::Anonymous { page: false, .. } => (
                StatusCode::UNAUTHORIZED,
                [(header::CACHE_CONTROL, "no-store")],
                "log in first: POST /login, then send the session cookie\n",
            )
                .into_response(),
            NeedLogin::Store(e) => {
                tracing::error!(error = %e, "HQ sessions: storage failed");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "HQ storage is unavailable; try again shortly\n",
                )
                    .into_response()
            }
        }
    }
}

use lpmesh_web::clock::now_ms;

pub fn cookie_token(headers: &HeaderMap) -> Option<String> {
    lpmesh_web::login::cookie(headers, COOKIE)
}

/// The analyst behind the request's cookie, if their session and user are still valid.
pub async fn analyst(state: &HqState, headers: &HeaderMap) -> Result<Option<Analyst>, StoreError> {
    let Some(t) = cookie_token(headers) else {
        return Ok(None);
    };
    let key = token_key(&t);
    let Some(s) = state.store.session(&key).await? else {
        return Ok(None);
    };
    let now = now_ms();
    if s.expired(now) {
        state.store.close_session(&key).await?;
        return Ok(None);
    }
    let Some(user) = state.store.user(&s.user).await? else {
        state.store.close_session(&key).await?;
        return Ok(None);
    };
    if user.changed_ms != s.user_changed_ms {
        // Removed and added again, or role, stores or password changed: log in again.
        state.store.close_session(&key).await?;
        return Ok(None);
    }
    state.store.touch_session(&key, &s, now).await?;
    Ok(Some(Analyst {
        user,
        csrf: s.csrf,
        key,
    }))
}

impl FromRequestParts<Arc<HqState>> for Analyst {
    type Rejection = NeedLogin;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<HqState>) -> Result<Self, Self::Rejection> {
        match analyst(state, &parts.headers).await {
            Ok(Some(a)) => Ok(a),
            Ok(None) => {
                let path = parts.uri.path();
                let page = !(path.starts_with("/export") || path == "/metrics");
                let path = parts
                    .uri
                    .path_and_query()
                    .map_or_else(|| "/".to_string(), |p| p.as_str().to_string());
                Err(NeedLogin::Anonymous { page, path })
            }
            Err(e) => Err(NeedLogin::Store(e)),
        }
    }
}

/// Whether a state-changing request comes from HQ's own pages. Browsers send `Origin` with every
/// POST (and `Sec-Fetch-Site`); a request with neither comes from a script, which holds no one's
/// cookie but its own.
pub fn same_origin(headers: &HeaderMap, authority: Option<&str>) -> bool {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).or(authority);
    if let Some(origin) = headers.get(header::ORIGIN) {
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        return match (origin.strip_prefix("https://"), host) {
            (Some(o), Some(h)) => o.eq_ignore_ascii_case(h),
            _ => false,
        };
    }
    match headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        Some(site) => site == "same-origin" || site == "none",
        None => true,
    }
}

/// Where to go after logging in: a path on this site only (never `//elsewhere` or a full URL).
fn safe_next(next: Option<&str>) -> String {
    match next {
        // Printable ASCII only: a browser drops tabs and newlines from a URL, so "/\t/evil" would
        // go to //evil.
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.contains('\\')
                && n.len() <= 2048
                && n.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            n.to_string()
        }
        _ => "/".to_string(),
    }
}

#[derive(Deserialize, Default)]
pub struct NextQuery {
    next: Option<String>,
}

fn login_page(status: StatusCode, next: &str, message: Option<&str>) -> Response {
    use crate::dashboard::esc;
    let note = message.map_or_else(String::new, |m| {
        format!("<p class=\"error\" role=\"alert\">{}</p>", esc(m))
    });
    let body = format!(
        "{note}<form method=\"post\" action=\"/login\" class=\"login\">\
         <input type=\"hidden\" name=\"next\" value=\"{}\">\
         <label>Name <input name=\"name\" autocomplete=\"username\" required autofocus></label>\
         <label>Password <input name=\"password\" type=\"password\" autocomplete=\"current-password\" required></label>\
         <button type=\"submit\">Log in</button></form>",
        esc(next)
    );
    crate::dashboard::html(status, "Log in to lpmesh HQ", &body, None)
}

pub async fn get_login(State(st): State<Arc<HqState>>, headers: HeaderMap, Query(q): Query<NextQuery>) -> Response {
    let next = safe_next(q.next.as_deref());
    if let Ok(Some(_)) = analyst(&st, &headers).await {
        return (StatusCode::SEE_OTHER, [(header::LOCATION, next)]).into_response();
    }
    login_page(StatusCode::OK, &next, None)
}

#[derive(Deserialize)]
pub struct LoginForm {
    name: String,
    password: String,
    #[serde(default)]
    next: Option<String>,
}

/// The client's address, when the listener recorded it.
fn client_ip(req: &Request) -> Option<IpAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(a)| a.ip())
}

pub async fn post_login(State(st): State<Arc<HqState>>, req: Request) -> Response {
    let ip = client_ip(&req);
    if !same_origin(req.headers(), req.uri().authority().map(|a| a.as_str())) {
        st.metrics.login("cross_origin");
        return (StatusCode::FORBIDDEN, "cross-origin login refused\n").into_response();
    }
    let Ok(Form(f)) = Form::<LoginForm>::from_request(req, &()).await else {
        st.metrics.login("malformed");
        return login_page(StatusCode::BAD_REQUEST, "/", Some("Name and password, please."));
    };
    let next = safe_next(f.next.as_deref());
    if let Some(wait) = st.limiter.blocked(&f.name, ip) {
        st.metrics.login("backoff");
        let secs = wait.as_secs().max(1);
        let mut r = login_page(
            StatusCode::TOO_MANY_REQUESTS,
            &next,
            Some(&format!("Too many wrong passwords: try again in {secs} s.")),
        );
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return r;
    }
    let user = match st.store.user(&f.name).await {
        Ok(u) => u,
        Err(e) => return NeedLogin::Store(e).into_response(),
    };
    // An unknown name costs the same argon2 run as a known one: timing tells nothing.
    let hash = user.as_ref().map_or(st.dummy_hash.clone(), |u| u.hash.clone());
    let password = f.password;
    let Some(ok) = st.gate.run(move || verify_password(&hash, &password)).await else {
        st.metrics.login("busy");
        let mut r = login_page(
            StatusCode::SERVICE_UNAVAILABLE,
            &next,
            Some("HQ is busy checking other logins: try again in a moment."),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return r;
    };
    let user = match (ok, user) {
        (true, Some(u)) => u,
        (_, known) => {
            st.limiter.failed(&f.name, ip);
            st.metrics.login("wrong");
            match known {
                Some(u) => tracing::warn!(user = %u.name, ?ip, "HQ: wrong password"),
                None => tracing::warn!(typed = %name_for_log(&f.name), ?ip, "HQ: login with a name that is nobody's"),
            }
            return login_page(StatusCode::UNAUTHORIZED, &next, Some("Wrong name or password."));
        }
    };
    st.limiter.succeeded(&user.name);
    let now = now_ms();
    let t = token();
    let session = HqSession {
        user: user.name.clone(),
        user_changed_ms: user.changed_ms,
        csrf: token(),
        created_ms: now,
        last_used_ms: now,
    };
    if let Err(e) = st.store.open_session(&token_key(&t), &session).await {
        return NeedLogin::Store(e).into_response();
    }
    st.metrics.login("ok");
    tracing::info!(user = %user.name, role = user.role.as_str(), ?ip, "HQ: logged in");
    let cookie = format!(
        "{COOKIE}={t}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={}",
        crate::access::SESSION_MAX_MS / 1000
    );
    (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, next), (header::SET_COOKIE, cookie)],
    )
        .into_response()
}

#[derive(Deserialize)]
pub struct LogoutForm {
    csrf: String,
}

pub async fn post_logout(State(st): State<Arc<HqState>>, who: Analyst, req: Request) -> Response {
    if !same_origin(req.headers(), req.uri().authority().map(|a| a.as_str())) {
        return (StatusCode::FORBIDDEN, "cross-origin request refused\n").into_response();
    }
    let Ok(Form(f)) = Form::<LogoutForm>::from_request(req, &()).await else {
        return (StatusCode::BAD_REQUEST, "missing csrf\n").into_response();
    };
    if !lpmesh_web::login::same_secret(&f.csrf, &who.csrf) {
        return (StatusCode::FORBIDDEN, "bad csrf token\n").into_response();
    }
    if let Err(e) = st.store.close_session(&who.key).await {
        return NeedLogin::Store(e).into_response();
    }
    let clear = format!("{COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0");
    (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, "/login".to_string()), (header::SET_COOKIE, clear)],
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_origin_may_post_and_next_stays_on_the_site() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, HeaderValue::from_static(v));
            }
            m
        };
        assert!(same_origin(
            &h(&[("host", "hq:8444"), ("origin", "https://hq:8444")]),
            None
        ));
        assert!(!same_origin(
            &h(&[("host", "hq:8444"), ("origin", "https://evil:8444")]),
            None
        ));
        assert!(!same_origin(
            &h(&[("host", "hq:8444"), ("origin", "http://hq:8444")]),
            None
        ));
        assert!(!same_origin(&h(&[("host", "hq:8444"), ("origin", "null")]), None));
        // HTTP/2: no Host header, the authority instead.
        assert!(same_origin(&h(&[("origin", "https://hq:8444")]), Some("hq:8444")));
        assert!(!same_origin(&h(&[("sec-fetch-site", "cross-site")]), Some("hq:8444")));
        assert!(same_origin(&h(&[]), None), "a script without a browser's headers");
        assert_eq!(safe_next(Some("/stores/a?x=1")), "/stores/a?x=1");
        for bad in [
            "//evil.example/",
            "https://evil.example/",
            "/\\evil",
            "stores",
            "/\t/evil.example",
            "/\n/evil",
        ] {
            assert_eq!(safe_next(Some(bad)), "/", "{bad}");
        }
        let mut m = HeaderMap::new();
        m.insert(
            header::COOKIE,
            HeaderValue::from_static("a=b; __Host-lpmesh_hq=tok; c=d"),
        );
        assert_eq!(cookie_token(&m).as_deref(), Some("tok"));
    }
}
