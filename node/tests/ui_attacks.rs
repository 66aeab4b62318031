//! Attacks on the tablet UI, each refused: the router in-process over a real single-node mesh (as in
//! `ui.rs`), and the real listener where the bytes on the wire matter (path traversal).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use libp2p_identity::Keypair;
use lpmesh_mesh::crypto::StoreSecret;
use lpmesh_mesh::keys::StoreSecrets;
use lpmesh_mesh::net::{self, MeshConfig};
use lpmesh_mesh::record::RecordKind;
use lpmesh_node::config::NodeConfig;
use lpmesh_node::event::{Detail, Event, EventKind, Phase, Severity};
use lpmesh_node::ui::auth::{self, Role};
use lpmesh_node::ui::{self, UiState};
use lpmesh_node::zone_control::ZoneControl;
use serde_json::{json, Value};
use tower::ServiceExt;

const INCIDENT: &str = "front/door/1";
const INCIDENT_PATH: &str = "front%2Fdoor%2F1";
const CONFIG: &str = "store = \"shop-ui\"\nnode = \"front\"\n\n[[camera]]\nname = \"door\"\nsource = \"door.avi\"\n\n\
[[camera.zone]]\nname = \"exit\"\nkind = \"exit\"\npolygon = [[0.0, 0.0], [0.5, 0.0], [0.5, 0.5]]\n";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Access {
    Open,
    Session,
    Manager,
    /// Answers anyone without a session with a redirect to the page's login (an alert's link).
    ToLogin,
}
use Access::*;

/// Every route of `ui::app` and who may use it. `the_route_table_is_the_routers` keeps it equal to
/// the router's source, so a route added there without a row here fails the suite.
const ROUTES: &[(&str, &str, Access)] = &[
    ("GET", "/", Open),
    ("GET", "/app.js", Open),
    ("GET", "/app.css", Open),
    ("GET", "/health", Open),
    ("GET", "/ca.pem", Open),
    ("GET", "/ca.crt", Open),
    ("GET", "/api/trust", Open),
    ("POST", "/api/login", Open),
    ("POST", "/api/logout", Session),
    ("GET", "/api/me", Session),
    ("GET", "/api/incidents", Session),
    ("GET", "/api/incidents/{id}", Session),
    ("POST", "/api/incidents/{id}/actions", Session),
    ("GET", "/api/stream", Session),
    ("GET", "/api/cameras", Session),
    ("GET", "/api/mesh", Session),
    ("GET", "/api/charts/{which}", Session),
    ("GET", "/api/invite", Manager),
    ("GET", "/api/users", Manager),
    ("POST", "/api/users", Manager),
    ("DELETE", "/api/users/{name}", Manager),
    ("POST", "/api/members/{node}/revoke", Manager),
    ("GET", "/api/zones", Manager),
    ("GET", "/api/zones/{camera}", Manager),
    ("PUT", "/api/zones/{camera}", Manager),
    ("GET", "/api/zones/{camera}/still.bmp", Manager),
    ("GET", "/api/incidents/{id}/evidence", Session),
    ("GET", "/evidence/{id}", ToLogin),
    ("GET", "/evidence/{id}/still.jpg", Session),
    ("GET", "/evidence/{id}/clip.mp4", Session),
    ("GET", "/evidence/{id}/download", Manager),
];

/// A route's path with its parameters filled in with things that exist.
fn concrete(path: &str) -> String {
    path.replace("{id}", INCIDENT_PATH)
        .replace("{which}", "footfall.svg")
        .replace("{camera}", "door")
        .replace("{node}", "12D3KooWNobody")
        .replace("{name}", "nobody-here")
}

/// A body each changing route would accept.
fn good_body(path: &str) -> Value {
    match path {
        "/api/incidents/{id}/actions" => json!({"action": "acknowledge"}),
        "/api/users" => json!({"name": "newcomer", "role": "security", "password": "long enough"}),
        "/api/zones/{camera}" => json!({"zones": [{"name": "till", "kind": "checkout",
            "polygon": [[0.1, 0.1], [0.9, 0.1], [0.9, 0.9]]}]}),
        _ => json!({}),
    }
}

struct Fixture {
    state: Arc<UiState>,
    dir: PathBuf,
    config: PathBuf,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Fixture {
    fn config_text(&self) -> String {
        std::fs::read_to_string(&self.config).unwrap()
    }

    fn incident(&self) -> Value {
        let book = self.state.book.read().unwrap();
        serde_json::to_value(book.get(INCIDENT).unwrap()).unwrap()
    }

    async fn records(&self) -> u64 {
        net::count(&self.state.mesh.version_vector().await.unwrap())
    }
}

/// A node with users, one open incident and one camera whose zones can be edited.
async fn fixture(secure: bool) -> Fixture {
    let dir = lpmesh_testkit::TempDir::new("ui-attacks").into_path();
    let secrets = StoreSecrets::generate("shop-ui").unwrap();
    secrets.save(&dir).unwrap();
    let mut cfg = MeshConfig::new("shop-ui", secrets.psk().unwrap(), dir.join("log"));
    cfg.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    cfg.mdns = false;
    let mesh = net::start(cfg, Keypair::generate_ed25519(), secrets.recipient().unwrap()).unwrap();
    let config = dir.join("node.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let cameras = NodeConfig::parse(CONFIG, &config).unwrap().cameras;
    let state = UiState::new(
        "shop-ui",
        "front",
        dir.clone(),
        mesh,
        StoreSecret::parse(&secrets.age_secret).unwrap(),
        None,
        Default::default(),
        chrono_tz::Europe::London,
        secure,
    )
    .with_zones(ZoneControl::new(config.clone(), &cameras));
    // Over HTTPS the node hands out the store's CA, as a running node does.
    let state = if secure {
        let ca = lpmesh_web::tls::new_ca("shop-ui").unwrap();
        let der = lpmesh_web::tls::first_der(&ca.cert_pem).unwrap();
        state.with_trust(ui::Trust {
            fingerprint: lpmesh_web::tls::fingerprint(&der),
            cert_der: der,
            cert_pem: ca.cert_pem,
            store_wide: true,
        })
    } else {
        state
    };
    tokio::spawn(ui::feed(state.clone(), None));
    state.users.add("manager", Role::Manager, "manager password").unwrap();
    state.users.add("guard", Role::Security, "guard password").unwrap();
    let f = Fixture { state, dir, config };
    let now = chrono::Utc::now().timestamp_millis();
    let e = Event {
        incident: INCIDENT.into(),
        phase: Phase::Start,
        store: "shop-ui".into(),
        node: "front".into(),
        camera: "door".into(),
        zone: Some("exit".into()),
        kind: EventKind::ExitWithoutCheckout,
        severity: Severity::High,
        started_at_ms: now,
        at_ms: now,
        ended_at_ms: None,
        track: Some(1),
        bbox: None,
        confidence: 0.8,
        model: "m".into(),
        evidence: None,
        detail: Detail::default(),
    };
    f.state
        .mesh
        .append(vec![(RecordKind::Event, serde_json::to_vec(&e).unwrap())])
        .await
        .unwrap();
    for _ in 0..200 {
        if f.state.book.read().unwrap().get(INCIDENT).is_some() {
            return f;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the UI never saw the incident");
}

async fn send(f: &Fixture, req: Request<Body>) -> (StatusCode, HeaderMap, Vec<u8>) {
    let resp = ui::app(f.state.clone()).oneshot(req).await.unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    if headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v == "text/event-stream")
    {
        // The live stream never ends: its head is the answer.
        return (status, headers, Vec::new());
    }
    let body = axum::body::to_bytes(resp.into_body(), 4 << 20).await.unwrap().to_vec();
    (status, headers, body)
}

struct Req {
    method: Method,
    path: String,
    cookie: Option<String>,
    csrf: Option<String>,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    headers: Vec<(header::HeaderName, String)>,
    from: Option<SocketAddr>,
}

fn req(method: &str, path: &str) -> Req {
    Req {
        method: method.parse().unwrap(),
        path: path.to_string(),
        cookie: None,
        csrf: None,
        content_type: None,
        body: Vec::new(),
        headers: Vec::new(),
        from: None,
    }
}

impl Req {
    fn cookie(mut self, c: &str) -> Self {
        self.cookie = Some(c.to_string());
        self
    }
    fn csrf(mut self, t: &str) -> Self {
        self.csrf = Some(t.to_string());
        self
    }
    fn session(self, s: &(String, String)) -> Self {
        self.cookie(&s.0).csrf(&s.1)
    }
    fn json(mut self, v: &Value) -> Self {
        self.content_type = Some("application/json");
        self.body = v.to_string().into_bytes();
        self
    }
    fn raw(mut self, content_type: Option<&'static str>, body: impl Into<Vec<u8>>) -> Self {
        self.content_type = content_type;
        self.body = body.into();
        self
    }
    fn header(mut self, name: header::HeaderName, v: &str) -> Self {
        self.headers.push((name, v.to_string()));
        self
    }
    fn peer(mut self, addr: &str) -> Self {
        self.from = Some(addr.parse().unwrap());
        self
    }
    fn build(self) -> Request<Body> {
        let mut r = Request::builder().method(self.method).uri(&self.path);
        if let Some(c) = &self.cookie {
            r = r.header(header::COOKIE, c);
        }
        if let Some(t) = &self.csrf {
            r = r.header("x-csrf-token", t);
        }
        if let Some(ct) = self.content_type {
            r = r.header(header::CONTENT_TYPE, ct);
        }
        for (k, v) in &self.headers {
            r = r.header(k, v);
        }
        let mut r = r.body(Body::from(self.body)).unwrap();
        // What the real listener puts there (the login limits are per address); a request that
        // names no peer comes from the node itself.
        let from = self.from.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 40000)));
        r.extensions_mut().insert(ConnectInfo(from));
        r
    }
}

fn login_body(name: &str, password: &str) -> Value {
    json!({"name": name, "password": password})
}

/// Logs in; returns the cookie (`name=token`) and the CSRF token.
async fn login(f: &Fixture, name: &str, password: &str) -> (String, String) {
    let (status, headers, body) = send(f, req("POST", "/api/login").json(&login_body(name, password)).build()).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let cookie = headers[header::SET_COOKIE].to_str().unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    (
        cookie.split(';').next().unwrap().to_string(),
        v["csrf"].as_str().unwrap().to_string(),
    )
}

async fn status(f: &Fixture, r: Req) -> StatusCode {
    send(f, r.build()).await.0
}

fn routes_in_source() -> Vec<(String, String)> {
    let src = include_str!("../src/ui/mod.rs");
    let start = src.find("pub fn app(").expect("ui::app is gone");
    let body = &src[start..start + src[start..].find("\n}\n").unwrap()];
    // Routes added any other way would escape the table: make them fail here.
    for other in [".nest(", ".merge(", ".fallback(", ".route_service(", ".nest_service("] {
        assert!(
            !body.contains(other),
            "ui::app uses {other}: extend ROUTES and this parser"
        );
    }
    let mut found = Vec::new();
    for chunk in body.split(".route(").skip(1) {
        let chunk = chunk.split(".layer(").next().unwrap();
        let path = chunk.split('"').nth(1).unwrap().to_string();
        for m in ["get", "post", "put", "delete", "patch"] {
            let token = format!("{m}(");
            for (i, _) in chunk.match_indices(&token) {
                let before = chunk[..i].chars().last().unwrap_or(' ');
                if !(before.is_alphanumeric() || before == '_') {
                    found.push((m.to_uppercase(), path.clone()));
                }
            }
        }
    }
    found.sort();
    found
}

#[test]
fn the_route_table_is_the_routers() {
    let mut table: Vec<(String, String)> = ROUTES.iter().map(|(m, p, _)| (m.to_string(), p.to_string())).collect();
    table.sort();
    assert_eq!(routes_in_source(), table, "ROUTES must list every route of ui::app");
    let open: Vec<&str> = ROUTES.iter().filter(|r| r.2 == Open).map(|r| r.1).collect();
    assert_eq!(
        open,
        [
            "/",
            "/app.js",
            "/app.css",
            "/health",
            "/ca.pem",
            "/ca.crt",
            "/api/trust",
            "/api/login"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_but_health_login_and_assets_refuses_a_request_without_a_session() {
    let f = fixture(true).await;
    let before = (f.records().await, f.config_text());
    for (method, path, access) in ROUTES {
        let uri = concrete(path);
        let body = good_body(path);
        match access {
            Open if *path == "/api/login" => {
                // Open, so a bad body gets past the door to the body check.
                let s = status(&f, req(method, &uri).raw(Some("application/json"), "{")).await;
                assert_eq!(s, StatusCode::BAD_REQUEST, "{method} {path}");
            }
            Open => assert_eq!(status(&f, req(method, &uri)).await, StatusCode::OK, "{method} {path}"),
            ToLogin => {
                let (s, h, _) = send(&f, req(method, &uri).build()).await;
                assert_eq!(s, StatusCode::SEE_OTHER, "{method} {path}");
                assert_eq!(
                    h[header::LOCATION],
                    "/",
                    "{method} {path}: nothing said of unknown evidence"
                );
            }
            Session | Manager => {
                let (s, _, b) = send(&f, req(method, &uri).json(&body).build()).await;
                assert_eq!(s, StatusCode::UNAUTHORIZED, "{method} {path}");
                assert_eq!(
                    serde_json::from_slice::<Value>(&b).unwrap(),
                    json!({"error": "log in first"})
                );
                // A CSRF token alone is no session either.
                let s = status(&f, req(method, &uri).csrf("whatever").json(&body)).await;
                assert_eq!(s, StatusCode::UNAUTHORIZED, "{method} {path} with a token only");
                if *method == "GET" {
                    assert_eq!(
                        status(&f, req("HEAD", &uri)).await,
                        StatusCode::UNAUTHORIZED,
                        "HEAD {path}"
                    );
                }
            }
        }
    }
    assert_eq!((f.records().await, f.config_text()), before, "nothing changed");
    assert_eq!(f.incident()["state"], "open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_security_role_is_refused_on_every_manager_route() {
    let f = fixture(true).await;
    let guard = login(&f, "guard", "guard password").await;
    let manager = login(&f, "manager", "manager password").await;
    let before = f.config_text();
    let manager_routes: Vec<_> = ROUTES.iter().filter(|r| r.2 == Manager).collect();
    assert_eq!(manager_routes.len(), 10);
    for (method, path, _) in &manager_routes {
        let uri = concrete(path);
        let (s, _, b) = send(&f, req(method, &uri).session(&guard).json(&good_body(path)).build()).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{method} {path}");
        let text = String::from_utf8_lossy(&b);
        assert!(
            !text.contains("lpmesh-invite") && !text.contains("zones\""),
            "{path}: {text}"
        );
    }
    assert_eq!(
        f.config_text(),
        before,
        "the guard's zone save changed the configuration"
    );
    // The same requests from a manager get through, so the 403s above are the role check.
    let (s, _, b) = send(&f, req("GET", "/api/zones").session(&manager).build()).await;
    assert_eq!(
        (s, serde_json::from_slice::<Value>(&b).unwrap()),
        (StatusCode::OK, json!(["door"]))
    );
    assert_eq!(
        status(&f, req("GET", "/api/zones/door").session(&manager)).await,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_without_the_sessions_own_csrf_token_are_refused_and_change_nothing() {
    let f = fixture(true).await;
    let (cookie, _) = login(&f, "manager", "manager password").await;
    // Same user, another tablet: its token is valid, but not for this session.
    let (_, other_csrf) = login(&f, "manager", "manager password").await;
    let (_, guard_csrf) = login(&f, "guard", "guard password").await;
    let before = (f.records().await, f.config_text(), f.incident());
    let changing: Vec<_> = ROUTES.iter().filter(|r| r.0 != "GET" && r.1 != "/api/login").collect();
    assert_eq!(
        changing.len(),
        6,
        "logout, incident actions, revocation, zone save, user add and removal"
    );
    for (method, path, _) in &changing {
        let uri = concrete(path);
        let body = good_body(path);
        let attempts = [
            ("no token", None),
            ("an empty token", Some(String::new())),
            ("another session's token", Some(other_csrf.clone())),
            ("another user's token", Some(guard_csrf.clone())),
            (
                "the session token itself",
                Some(cookie.split_once('=').unwrap().1.to_string()),
            ),
        ];
        for (what, token) in attempts {
            let mut r = req(method, &uri).cookie(&cookie).json(&body);
            if let Some(t) = &token {
                r = r.csrf(t);
            }
            assert_eq!(
                status(&f, r).await,
                StatusCode::FORBIDDEN,
                "{method} {path} with {what}"
            );
        }
        // The token somewhere other than its header does not count.
        let r = req(method, &format!("{uri}?csrf={other_csrf}"))
            .cookie(&format!("{cookie}; x-csrf-token={other_csrf}"))
            .json(&body);
        assert_eq!(
            status(&f, r).await,
            StatusCode::FORBIDDEN,
            "{method} {path}, token in query/cookie"
        );
    }
    assert_eq!(
        (f.records().await, f.config_text(), f.incident()),
        before,
        "a refused change changed something"
    );
    // The refused logout did not end the session.
    let (s, _, b) = send(&f, req("GET", "/api/me").cookie(&cookie).build()).await;
    assert_eq!(s, StatusCode::OK);
    let me: Value = serde_json::from_slice(&b).unwrap();
    // With its own token the same change goes through: the refusals above were the CSRF check.
    let own = (cookie.clone(), me["csrf"].as_str().unwrap().to_string());
    let path = format!("/api/incidents/{INCIDENT_PATH}/actions");
    let (s, _, _) = send(
        &f,
        req("POST", &path)
            .session(&own)
            .json(&json!({"action": "acknowledge"}))
            .build(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(f.incident()["state"], "acknowledged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_origin_login_is_refused_and_opens_no_session() {
    let f = fixture(true).await;
    let host = "10.0.0.5:8080";
    let good = login_body("manager", "manager password");
    for origin in [
        "http://evil.example",
        "https://evil.example",
        "null",
        "http://10.0.0.5:8080.evil.example",
        "http://10.0.0.5:8081",
        "http://10.0.0.5",
        "http://evil.example/http://10.0.0.5:8080",
        "10.0.0.5:8080",
    ] {
        let r = req("POST", "/api/login")
            .json(&good)
            .header(header::HOST, host)
            .header(header::ORIGIN, origin)
            .peer("192.0.2.7:5000");
        let (s, h, _) = send(&f, r.build()).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "Origin {origin}");
        assert!(h.get(header::SET_COOKIE).is_none(), "Origin {origin} got a cookie");
    }
    // A request claiming an origin must say which host it is for.
    let r = req("POST", "/api/login")
        .json(&good)
        .header(header::ORIGIN, "http://10.0.0.5:8080");
    assert_eq!(status(&f, r).await, StatusCode::FORBIDDEN, "Origin without Host");
    // The page's own origin logs in, and the refusals above counted as no failure.
    let r = req("POST", "/api/login")
        .json(&good)
        .header(header::HOST, host)
        .header(header::ORIGIN, "http://10.0.0.5:8080")
        .peer("192.0.2.7:5000");
    assert_eq!(status(&f, r).await, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_rebinding_host_name_is_refused_and_the_origin_check_works_over_http2() {
    let f = fixture(true).await;
    let _ = f.state.clone().with_host_names(vec!["front-desk.lan".into()]);
    // A page on evil.example whose name now resolves to the node: the browser sends its own name.
    for host in [
        "evil.example",
        "evil.example:8080",
        "10.0.0.5.evil.example:8080",
        "front-desk.lan.evil.example",
    ] {
        let r = req("GET", "/health").header(header::HOST, host);
        assert_eq!(status(&f, r).await, StatusCode::MISDIRECTED_REQUEST, "Host {host}");
        let r = req("POST", "/api/login")
            .json(&login_body("manager", "manager password"))
            .header(header::HOST, host)
            .header(header::ORIGIN, &format!("http://{host}"));
        assert_eq!(
            status(&f, r).await,
            StatusCode::MISDIRECTED_REQUEST,
            "login at Host {host}"
        );
    }
    // Addresses, localhost and the names it was given are answered.
    for host in [
        "10.0.0.5:8080",
        "[fe80::1]:8443",
        "localhost:8080",
        "FRONT-DESK.lan:8443",
        "front-desk.lan",
    ] {
        let r = req("GET", "/health").header(header::HOST, host);
        assert_eq!(status(&f, r).await, StatusCode::OK, "Host {host}");
    }
    // HTTP/2 carries no Host header, only the request's authority: the same checks hold.
    let h2 = |authority: &str, origin: &str| {
        let mut r = req("POST", "/api/login")
            .json(&login_body("manager", "manager password"))
            .header(header::ORIGIN, origin)
            .peer("192.0.2.8:5000")
            .build();
        *r.uri_mut() = format!("https://{authority}/api/login").parse().unwrap();
        *r.version_mut() = axum::http::Version::HTTP_2;
        r
    };
    assert_eq!(
        send(&f, h2("10.0.0.5:8443", "https://evil.example")).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        send(&f, h2("evil.example:8443", "https://evil.example:8443")).await.0,
        StatusCode::MISDIRECTED_REQUEST
    );
    let (s, h, _) = send(&f, h2("10.0.0.5:8443", "https://10.0.0.5:8443")).await;
    assert_eq!(s, StatusCode::OK, "the page's own origin logs in over HTTP/2");
    assert_eq!(
        h.get(header::STRICT_TRANSPORT_SECURITY).map(|v| v.to_str().unwrap()),
        Some("max-age=31536000")
    );
    let plain = fixture(false).await;
    let (_, h, _) = send(&plain, req("GET", "/health").build()).await;
    assert!(
        h.get(header::STRICT_TRANSPORT_SECURITY).is_none(),
        "plain HTTP sends no HSTS"
    );
}

/// The store's CA is there for a tablet to take before it logs in: as the file it installs, and as
/// the fingerprint and QR code the login page shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tablet_can_fetch_the_stores_certificate_and_its_fingerprint_before_logging_in() {
    let f = fixture(true).await;
    let (s, h, der) = send(&f, req("GET", "/ca.crt").build()).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h[header::CONTENT_TYPE], "application/x-x509-ca-cert");
    let (_, _, pem) = send(&f, req("GET", "/ca.pem").build()).await;
    let pem = String::from_utf8(pem).unwrap();
    assert_eq!(
        lpmesh_web::tls::first_der(&pem).unwrap(),
        der,
        "one certificate, two forms"
    );
    let (s, _, b) = send(
        &f,
        req("GET", "/api/trust").header(header::HOST, "10.0.0.5:8080").build(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let t: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(t["https"], true);
    assert_eq!(t["fingerprint"], lpmesh_web::tls::fingerprint(&der));
    assert_eq!(t["url"], "https://10.0.0.5:8080/ca.crt");
    assert!(t["qr_svg"].as_str().unwrap().starts_with("<?xml"));
    // No key in anything it hands out.
    assert!(!pem.contains("PRIVATE") && !String::from_utf8_lossy(&b).contains("PRIVATE"));
}

/// `[ui] tls = false`: the page still works on the node itself, but nobody on the shop's network can
/// send a password, take a session or see a camera's picture over it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_takes_logins_and_pictures_only_from_the_node_itself() {
    let f = fixture(false).await;
    let from_floor = req("POST", "/api/login")
        .json(&login_body("manager", "manager password"))
        .peer("10.0.0.77:50000");
    let (s, h, b) = send(&f, from_floor.build()).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(h.get(header::SET_COOKIE).is_none());
    assert!(String::from_utf8_lossy(&b).contains("HTTPS"));
    // On the node itself (an installer's browser there, or a local proxy) it works.
    let (cookie, _) = login(&f, "manager", "manager password").await;
    let still = |peer: &str| {
        req("GET", "/api/zones/door/still.bmp")
            .cookie(&cookie)
            .peer(peer)
            .build()
    };
    assert_eq!(send(&f, still("10.0.0.77:50001")).await.0, StatusCode::FORBIDDEN);
    // An incident's evidence neither, whoever asks and however.
    let id = lpmesh_node::event::EvidenceId::random();
    for part in ["", "/still.jpg", "/clip.mp4", "/download"] {
        let r = req("GET", &format!("/evidence/{id}{part}?grant=x"))
            .cookie(&cookie)
            .peer("10.0.0.77:50003");
        let (s, _, b) = send(&f, r.build()).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{part}");
        assert!(String::from_utf8_lossy(&b).contains("HTTPS"));
    }
    // Past the refusal: the camera has given no frame yet.
    assert_eq!(
        send(&f, still("127.0.0.1:50002")).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // No certificate to hand out over plain HTTP.
    assert_eq!(send(&f, req("GET", "/ca.pem").build()).await.0, StatusCode::NOT_FOUND);
    let (s, _, b) = send(&f, req("GET", "/api/trust").build()).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(serde_json::from_slice::<Value>(&b).unwrap()["https"], false);
}

async fn login_from(f: &Fixture, addr: &str, name: &str, password: &str) -> (StatusCode, HeaderMap) {
    let (s, h, _) = send(
        f,
        req("POST", "/api/login")
            .json(&login_body(name, password))
            .peer(addr)
            .build(),
    )
    .await;
    (s, h)
}

fn retry_after(h: &HeaderMap) -> u64 {
    h.get(header::RETRY_AFTER)
        .expect("429 without Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passwords_make_the_next_attempt_wait_and_the_real_user_still_gets_in() {
    let f = fixture(true).await;
    let a = "192.0.2.10:40000";
    for i in 1..=auth::FREE_FAILURES {
        let (s, _) = login_from(&f, a, "guard", &format!("guess {i}")).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    let (s, h) = login_from(&f, a, "guard", "guess 6").await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after(&h), 1, "the first wait is a second, not a lockout");
    // The user name waits a moment from anywhere (its password is not even checked meanwhile), and
    // so does the guessing address for any user; other users elsewhere do not.
    let (s, h) = login_from(&f, "198.51.100.20:1234", "guard", "guard password").await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    assert!(retry_after(&h) <= 1);
    assert!(f.state.limiter.blocked("guard", None).is_some());
    assert_eq!(
        login_from(&f, a, "manager", "manager password").await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        login_from(&f, "198.51.100.21:1234", "manager", "manager password")
            .await
            .0,
        StatusCode::OK
    );
    // After the wait it was told, the real user gets in.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        login_from(&f, "198.51.100.20:1234", "guard", "guard password").await.0,
        StatusCode::OK
    );
    assert!(
        f.state.limiter.blocked("guard", None).is_none(),
        "a login clears the name's count"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_flood_runs_argon2_a_few_at_a_time_and_the_real_user_gets_in_after_it() {
    let f = fixture(true).await;
    // Hundreds of wrong logins at once, each from its own address and name (so no backoff stops
    // them before argon2): at most HASHING_SLOTS checks (19 MiB each) run at once, the rest wait in
    // a short queue or are turned away with 503 and Retry-After.
    let flood: Vec<_> = (0..200)
        .map(|i| {
            let request = req("POST", "/api/login")
                .json(&login_body(&format!("n{i}"), "guess"))
                .peer(&format!("10.9.0.{}:{}", i % 250, 4000 + i))
                .build();
            let state = f.state.clone();
            // Each its own task, as the server runs them: they compete for the slots for real.
            tokio::spawn(async move {
                let resp = ui::app(state).oneshot(request).await.unwrap();
                (resp.status(), resp.headers().clone())
            })
        })
        .collect();
    let mut answers = Vec::new();
    for t in flood {
        answers.push(t.await.unwrap());
    }
    let refused = answers.iter().filter(|(s, _)| *s == StatusCode::UNAUTHORIZED).count();
    let busy: Vec<_> = answers
        .iter()
        .filter(|(s, _)| *s == StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    assert_eq!(refused + busy.len(), 200, "only wrong-password and busy answers");
    assert!(!busy.is_empty(), "the queue is bounded");
    assert!(busy.iter().all(|(_, h)| retry_after(h) == 1));
    assert!(
        f.state.hashing.peak() <= auth::HASHING_SLOTS,
        "peak {}",
        f.state.hashing.peak()
    );
    assert!(f.state.hashing.turned_away() >= busy.len() as u64);
    eprintln!(
        "login flood of 200: {refused} checked (401), {} turned away (503), at most {} argon2 at once",
        busy.len(),
        f.state.hashing.peak()
    );
    assert_eq!(
        login_from(&f, "198.51.100.30:1234", "manager", "manager password")
            .await
            .0,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_guessing_many_users_is_limited() {
    let f = fixture(true).await;
    let b = "203.0.113.9:50000";
    for i in 1..=auth::FREE_FAILURES {
        let (s, _) = login_from(&f, b, &format!("user{i}"), "guess").await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "user{i}");
    }
    // A sixth name from the same address: locked, whichever user, even with a right password.
    for (name, password) in [("user6", "guess"), ("manager", "manager password")] {
        let (s, h) = login_from(&f, b, name, password).await;
        assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{name}");
        assert!(retry_after(&h) >= 1);
    }
    // The address' guesses did not lock those users out elsewhere.
    assert_eq!(
        login_from(&f, "203.0.113.10:50000", "manager", "manager password")
            .await
            .0,
        StatusCode::OK
    );

    // A successful login of an account the guesser holds does not clear the address' count.
    let c = "203.0.113.11:50000";
    for i in 1..auth::FREE_FAILURES {
        assert_eq!(
            login_from(&f, c, &format!("other{i}"), "guess").await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(login_from(&f, c, "guard", "guard password").await.0, StatusCode::OK);
    assert_eq!(login_from(&f, c, "other9", "guess").await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        login_from(&f, c, "other10", "guess").await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
}

/// Sends raw bytes to a listener and reads the whole answer (the server closes after it).
fn raw_http(addr: SocketAddr, request: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_asset_paths_cannot_reach_files_on_disk() {
    let f = fixture(true).await;
    // A real file with tell-tale contents: a traversal that worked would show it.
    std::fs::write(f.dir.join("secret.txt"), "root:x:0:0 [package]").unwrap();
    let secret = f.dir.join("secret.txt").display().to_string();
    let running = ui::serve(f.state.clone(), "127.0.0.1:0".parse().unwrap(), None)
        .await
        .unwrap();
    let targets = [
        "/../Cargo.toml".to_string(),
        "/../../Cargo.toml".to_string(),
        "/assets/../../etc/passwd".to_string(),
        "/app.js/../../../etc/passwd".to_string(),
        "/%2e%2e/%2e%2e/etc/passwd".to_string(),
        "/%2e%2e%2f%2e%2e%2fetc%2fpasswd".to_string(),
        "/%2E%2E%2FCargo.toml".to_string(),
        "/%252e%252e%252f%252e%252e%252fetc%252fpasswd".to_string(),
        "/..%c0%af..%c0%afetc/passwd".to_string(),
        "/..%5c..%5cCargo.toml".to_string(),
        "/..\\..\\Cargo.toml".to_string(),
        "/assets\\..\\..\\etc\\passwd".to_string(),
        "/etc/passwd".to_string(),
        "//etc/passwd".to_string(),
        format!("/{secret}"),
        format!("/{}", secret.replace('/', "%2f")),
        "/src/ui/assets/app.js".to_string(),
        "/assets/app.js".to_string(),
        "/app.js%00../../etc/passwd".to_string(),
        "/./app.js/..".to_string(),
        "http://127.0.0.1/../../etc/passwd".to_string(),
        "file:///etc/passwd".to_string(),
    ];
    let addr = running.addr;
    for t in targets {
        let request = format!("GET {t} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        let answer = tokio::task::spawn_blocking(move || raw_http(addr, request.as_bytes()))
            .await
            .unwrap();
        let status_line = answer.lines().next().unwrap_or("").to_string();
        assert!(
            status_line.contains(" 404 ") || status_line.contains(" 400 ") || answer.is_empty(),
            "{t}: {status_line}"
        );
        for leak in ["[package]", "root:", "[workspace]", "secret"] {
            assert!(!answer.contains(leak), "{t} returned file contents: {answer}");
        }
    }
    running.shutdown(Duration::from_millis(200)).await;

    // Camera names are path segments too: they never name a file.
    let manager = login(&f, "manager", "manager password").await;
    let before = f.config_text();
    for camera in [
        "..",
        "..%2f..%2fetc%2fpasswd",
        "%2e%2e",
        "door%2f..%2f..",
        "door%00",
        "%2fetc%2fpasswd",
    ] {
        for (method, suffix) in [("GET", ""), ("GET", "/still.bmp"), ("PUT", "")] {
            let r = req(method, &format!("/api/zones/{camera}{suffix}"))
                .session(&manager)
                .json(&good_body("/api/zones/{camera}"));
            let (s, _, b) = send(&f, r.build()).await;
            assert!(
                s == StatusCode::NOT_FOUND || s == StatusCode::BAD_REQUEST,
                "{method} {camera}{suffix}: {s}"
            );
            assert!(!String::from_utf8_lossy(&b).contains("root:"));
        }
    }
    assert_eq!(f.config_text(), before);
    let mut left: Vec<String> = std::fs::read_dir(&f.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".toml") || n.ends_with(".saving"))
        .collect();
    left.sort();
    assert_eq!(left, ["node.toml"], "a zone save wrote a file elsewhere");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_body_over_8_kib_is_refused_with_413() {
    let f = fixture(true).await;
    const LOGIN_LIMIT: usize = 8 * 1024;
    let padded = |total: usize| {
        let mut v = login_body("manager", "manager password");
        let so_far = v.to_string().len() + r#","pad":"""#.len();
        v["pad"] = Value::String("x".repeat(total - so_far));
        let s = v.to_string();
        assert_eq!(s.len(), total);
        s
    };
    let (s, h, _) = send(
        &f,
        req("POST", "/api/login")
            .raw(Some("application/json"), padded(LOGIN_LIMIT + 1))
            .build(),
    )
    .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(h.get(header::SET_COOKIE).is_none());
    // A body without a declared length is cut off at the same size.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..64).map(|_| Ok(vec![b' '; 1024])).collect();
    let streamed = Request::post("/api/login")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(futures::stream::iter(chunks)))
        .unwrap();
    assert_eq!(send(&f, streamed).await.0, StatusCode::PAYLOAD_TOO_LARGE);
    // At the limit it is read (and logs in): the limit is the body's size, not a guess.
    let (s, _, _) = send(
        &f,
        req("POST", "/api/login")
            .raw(Some("application/json"), padded(LOGIN_LIMIT))
            .build(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn action_and_zone_bodies_over_64_kib_are_refused_and_change_nothing() {
    let f = fixture(true).await;
    const API_LIMIT: usize = 64 * 1024;
    let manager = login(&f, "manager", "manager password").await;
    let before = (f.records().await, f.config_text(), f.incident());
    let action = format!("{{\"action\":\"note\",\"note\":\"{}\"}}", " ".repeat(API_LIMIT));
    let zones = format!("{} {}", good_body("/api/zones/{camera}"), " ".repeat(API_LIMIT));
    for (method, path, body) in [
        ("POST", format!("/api/incidents/{INCIDENT_PATH}/actions"), action),
        ("PUT", "/api/zones/door".to_string(), zones),
    ] {
        assert!(body.len() > API_LIMIT);
        let (s, _, _) = send(
            &f,
            req(method, &path)
                .session(&manager)
                .raw(Some("application/json"), body)
                .build(),
        )
        .await;
        // Any refusal: it is 422 today where 413 would say why; that nothing is applied is what counts.
        assert!(s.is_client_error(), "{method} {path}: {s}");
    }
    assert_eq!((f.records().await, f.config_text(), f.incident()), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_and_wrong_content_types_get_a_4xx_never_a_5xx() {
    let f = fixture(true).await;
    let manager = login(&f, "manager", "manager password").await;
    let before = (f.records().await, f.config_text(), f.incident());
    let deep = format!("{}{}", "[".repeat(3000), "]".repeat(3000));
    let bodies: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"{".to_vec(),
        b"null".to_vec(),
        b"[]".to_vec(),
        b"\"x\"".to_vec(),
        b"{\"name\": 1, \"password\": []}".to_vec(),
        b"{\"action\": \"acknowledge\", \"extra\": 1}".to_vec(),
        b"{\"action\": \"note\", \"note\": 123}".to_vec(),
        b"{\"zones\": \"all\"}".to_vec(),
        b"{\"zones\": [{\"name\": \"x\", \"kind\": \"exit\", \"polygon\": [[1e999, 0]]}]}".to_vec(),
        b"{\"zones\": [{\"name\": \"x\", \"kind\": \"exit\", \"polygon\": [[0, 0]]}]}".to_vec(),
        b"{\"zones\": [{\"name\": \"x\\\"\\n[ops]\", \"kind\": \"exit\", \"polygon\": [[0,0],[1,0],[1,1]]}]}".to_vec(),
        b"{\"zones\": [{\"name\": \"a\", \"kind\": \"exit\", \"polygon\": [[0,0],[9,0],[1,1]]}]}".to_vec(),
        vec![0xff, 0xfe, b'{', 0x80],
        deep.into_bytes(),
    ];
    let targets = [
        ("POST", "/api/login".to_string()),
        ("POST", format!("/api/incidents/{INCIDENT_PATH}/actions")),
        ("PUT", "/api/zones/door".to_string()),
    ];
    for (method, path) in &targets {
        for body in &bodies {
            for ct in [Some("application/json"), Some("text/plain"), None] {
                let r = req(method, path).session(&manager).raw(ct, body.clone());
                let s = status(&f, r).await;
                assert!(
                    s.is_client_error(),
                    "{method} {path} {ct:?} {:?}: {s}",
                    String::from_utf8_lossy(body)
                );
            }
        }
        // A valid body under a form's content type: not taken as JSON by the API routes.
        if *path != "/api/login" {
            let route = if *method == "PUT" {
                "/api/zones/{camera}"
            } else {
                "/api/incidents/{id}/actions"
            };
            let good = good_body(route);
            let r = req(method, path)
                .session(&manager)
                .raw(Some("application/x-www-form-urlencoded"), good.to_string());
            assert!(status(&f, r).await.is_client_error(), "{method} {path} as a form");
        }
    }
    for q in [
        "/api/incidents?limit=-1",
        "/api/incidents?limit=abc",
        "/api/incidents?limit=18446744073709551616",
        "/api/incidents?from=99999999999999999999",
        "/api/incidents?to=%ff%fe",
        "/api/incidents?severity=%00",
        "/api/incidents?kind[]=x&kind=y",
        "/api/charts/footfall.svg?days=-1",
        "/api/charts/footfall.svg?days=4294967296",
        "/api/charts/..%2f..%2fetc%2fpasswd",
        "/api/incidents/%ff",
    ] {
        let s = status(&f, req("GET", q).session(&manager)).await;
        assert!(s.is_client_error(), "{q}: {s}");
    }
    assert_eq!((f.records().await, f.config_text(), f.incident()), before);
    // Still one camera with its one zone: no body got text into the configuration.
    let cfg = NodeConfig::parse(&f.config_text(), &f.config).unwrap();
    assert_eq!(cfg.cameras.len(), 1);
    assert_eq!(cfg.cameras[0].zones.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_session_cookies_are_refused_and_logout_ends_the_session_on_the_server() {
    let f = fixture(true).await;
    let manager = login(&f, "manager", "manager password").await;
    let token = manager.0.split_once('=').unwrap().1.to_string();
    let mut flipped = token.clone().into_bytes();
    flipped[10] = if flipped[10] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).unwrap();
    for cookie in [
        format!("lpmesh_session={}", auth::token()),
        format!("lpmesh_session={}", &token[..token.len() - 1]),
        format!("lpmesh_session={}", &token[..8]),
        format!("lpmesh_session={token}x"),
        format!("lpmesh_session={flipped}"),
        format!("lpmesh_session=\"{token}\""),
        format!("lpmesh_session={}", token.to_uppercase()),
        format!("LPMESH_SESSION={token}"),
        format!("lpmesh_session_x={token}"),
        // The CSRF token is a random string of the same shape, but not a session.
        format!("lpmesh_session={}", manager.1),
        "lpmesh_session=".to_string(),
        "lpmesh_session".to_string(),
        // The first cookie of that name is the one used: a forged one in front wins nothing.
        format!("lpmesh_session=forged; lpmesh_session={token}"),
    ] {
        let s = status(&f, req("GET", "/api/me").cookie(&cookie)).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{cookie}");
        let act = req("POST", &format!("/api/incidents/{INCIDENT_PATH}/actions"))
            .cookie(&cookie)
            .csrf(&manager.1)
            .json(&json!({"action": "acknowledge"}));
        assert_eq!(status(&f, act).await, StatusCode::UNAUTHORIZED, "{cookie}");
    }
    assert_eq!(f.incident()["state"], "open");
    // A cookie the client brings to login is not adopted (no session fixation).
    let planted = auth::token();
    let (s, h, _) = send(
        &f,
        req("POST", "/api/login")
            .cookie(&format!("lpmesh_session={planted}"))
            .json(&login_body("guard", "guard password"))
            .build(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(!h[header::SET_COOKIE].to_str().unwrap().contains(&planted));
    assert!(f.state.sessions.get(&planted).is_none());

    let (s, h, _) = send(&f, req("POST", "/api/logout").session(&manager).build()).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let cleared = h[header::SET_COOKIE].to_str().unwrap();
    assert!(
        cleared.starts_with("lpmesh_session=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
    // The browser would forget the cookie; one that kept it is refused by the server.
    assert!(f.state.sessions.get(&token).is_none(), "the session outlived logout");
    let before = f.records().await;
    for (method, path) in ROUTES
        .iter()
        .filter(|r| matches!(r.2, Session | Manager))
        .map(|r| (r.0, r.1))
    {
        let r = req(method, &concrete(path)).session(&manager).json(&good_body(path));
        assert_eq!(
            status(&f, r).await,
            StatusCode::UNAUTHORIZED,
            "{method} {path} after logout"
        );
    }
    assert_eq!(f.records().await, before);
    assert_eq!(f.incident()["state"], "open");
}

fn assert_security_headers(what: &str, h: &HeaderMap) {
    let csp = h
        .get(header::CONTENT_SECURITY_POLICY)
        .unwrap_or_else(|| panic!("{what}: no CSP"))
        .to_str()
        .unwrap();
    for d in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
        "form-action 'self'",
        "base-uri 'none'",
    ] {
        assert!(csp.contains(d), "{what}: CSP lacks {d}: {csp}");
    }
    for weak in ["unsafe-inline", "unsafe-eval", "*", "http:", "https:"] {
        assert!(!csp.contains(weak), "{what}: CSP allows {weak}: {csp}");
    }
    assert_eq!(h[header::X_FRAME_OPTIONS], "DENY", "{what}");
    assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{what}");
    assert_eq!(h[header::REFERRER_POLICY], "no-referrer", "{what}");
    assert!(h.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none(), "{what}: CORS");
    assert!(
        h.get(header::ACCESS_CONTROL_ALLOW_CREDENTIALS).is_none(),
        "{what}: CORS"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_carries_the_security_headers_and_the_cookie_is_strict() {
    let f = fixture(true).await;
    let (s, h, _) = send(
        &f,
        req("POST", "/api/login")
            .json(&login_body("manager", "manager password"))
            .build(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_security_headers("login", &h);
    let cookie = h[header::SET_COOKIE].to_str().unwrap();
    let attrs: Vec<&str> = cookie.split("; ").skip(1).collect();
    assert_eq!(
        attrs,
        [
            "Path=/",
            "HttpOnly",
            "SameSite=Strict",
            format!("Max-Age={}", auth::SESSION_IDLE.as_secs()).as_str(),
            "Secure"
        ],
        "{cookie}"
    );
    let manager = (cookie.split(';').next().unwrap().to_string(), String::new());
    let evil = |r: Req| r.header(header::ORIGIN, "http://evil.example");
    let cases = [
        ("index", evil(req("GET", "/")), StatusCode::OK),
        ("script", evil(req("GET", "/app.js")), StatusCode::OK),
        (
            "API with a session",
            evil(req("GET", "/api/me").cookie(&manager.0)),
            StatusCode::OK,
        ),
        (
            "chart",
            req("GET", "/api/charts/incidents.svg").cookie(&manager.0),
            StatusCode::OK,
        ),
        ("401", evil(req("GET", "/api/incidents")), StatusCode::UNAUTHORIZED),
        (
            "403",
            req("POST", "/api/logout").cookie(&manager.0).json(&json!({})),
            StatusCode::FORBIDDEN,
        ),
        ("404", req("GET", "/nothing-here"), StatusCode::NOT_FOUND),
        (
            "405",
            req("DELETE", "/api/me").cookie(&manager.0),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            "413",
            req("POST", "/api/login").raw(Some("application/json"), vec![b' '; 9000]),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "preflight",
            evil(req("OPTIONS", "/api/me")).header(header::ACCESS_CONTROL_REQUEST_METHOD, "GET"),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
    ];
    for (what, r, expect) in cases {
        let (s, h, _) = send(&f, r.build()).await;
        assert_eq!(s, expect, "{what}");
        assert_security_headers(what, &h);
    }
    // Answers that carry data are never cached; the assets may be, but are revalidated.
    let (_, h, _) = send(&f, req("GET", "/api/me").cookie(&manager.0).build()).await;
    assert_eq!(h[header::CACHE_CONTROL], "no-store");
    assert_eq!(h[header::CONTENT_TYPE], "application/json");
    let (_, h, _) = send(&f, req("GET", "/api/zones/door/still.bmp").cookie(&manager.0).build()).await;
    assert_eq!(h[header::CACHE_CONTROL], "no-store");
    let (_, h, _) = send(&f, req("GET", "/app.js").build()).await;
    assert_eq!(h[header::CACHE_CONTROL], "no-cache");
    assert_eq!(h[header::CONTENT_TYPE], "text/javascript; charset=utf-8");

    // With TLS the cookie is Secure too.
    let tls = fixture(true).await;
    let (_, h, _) = send(
        &tls,
        req("POST", "/api/login")
            .json(&login_body("manager", "manager password"))
            .build(),
    )
    .await;
    let cookie = h[header::SET_COOKIE].to_str().unwrap();
    for a in ["HttpOnly", "SameSite=Strict", "Secure"] {
        assert!(cookie.split("; ").any(|x| x == a), "{cookie} lacks {a}");
    }
}

// Found by these tests and fixed since.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn action_and_zone_bodies_over_64_kib_are_refused_with_413() {
    let f = fixture(true).await;
    let manager = login(&f, "manager", "manager password").await;
    let action = format!("{{\"action\":\"note\",\"note\":\"{}\"}}", " ".repeat(64 * 1024));
    let zones = format!("{} {}", good_body("/api/zones/{camera}"), " ".repeat(64 * 1024));
    for (method, path, body) in [
        ("POST", format!("/api/incidents/{INCIDENT_PATH}/actions"), action),
        ("PUT", "/api/zones/door".to_string(), zones),
    ] {
        let r = req(method, &path).session(&manager).raw(Some("application/json"), body);
        assert_eq!(status(&f, r).await, StatusCode::PAYLOAD_TOO_LARGE, "{method} {path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_that_is_not_declared_json_is_refused() {
    let f = fixture(true).await;
    let body = login_body("manager", "manager password").to_string();
    for ct in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data"),
        None,
    ] {
        let (s, h, _) = send(&f, req("POST", "/api/login").raw(ct, body.clone()).build()).await;
        assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE, "Content-Type {ct:?}");
        assert!(h.get(header::SET_COOKIE).is_none(), "Content-Type {ct:?} logged in");
    }
}

/// Sends `head`, then `drip` every `every` until the server closes the connection or `patience` runs
/// out: how long the connection lasted, and what the server answered.
async fn trickle(
    addr: SocketAddr,
    head: &'static [u8],
    drip: &'static [u8],
    every: Duration,
    patience: Duration,
) -> (Duration, String) {
    use std::io::{Read, Write};
    tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        s.write_all(head).unwrap();
        let t = std::time::Instant::now();
        let mut got = Vec::new();
        while t.elapsed() < patience {
            if s.write_all(drip).is_err() {
                break;
            }
            let mut buf = [0u8; 512];
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(_) => break,
            }
            std::thread::sleep(every);
        }
        (t.elapsed(), String::from_utf8_lossy(&got).into_owned())
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_trickles_its_request_head_is_cut_off() {
    let f = fixture(true).await;
    let running = ui::serve(f.state.clone(), "127.0.0.1:0".parse().unwrap(), None)
        .await
        .unwrap();
    // The UI cuts a request head after 15 s.
    let patience = Duration::from_secs(25);
    let head = b"GET /health HTTP/1.1\r\nHost: x\r\n";
    let (took, _) = trickle(
        running.addr,
        head,
        b"X-Slow: 1\r\n",
        Duration::from_millis(200),
        patience,
    )
    .await;
    assert!(
        took < patience,
        "a request head trickled for {patience:?} kept its connection"
    );
    running.shutdown(Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_trickles_its_request_body_gets_408_and_loses_the_connection() {
    let f = fixture(true).await;
    let running = ui::serve(f.state.clone(), "127.0.0.1:0".parse().unwrap(), None)
        .await
        .unwrap();
    // The UI gives a body 30 s, as HQ does.
    let patience = lpmesh_web::body::BODY_DEADLINE + Duration::from_secs(15);
    let head =
        b"POST /api/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 4000\r\n\r\n{";
    let (took, text) = trickle(running.addr, head, b" ", Duration::from_millis(500), patience).await;
    assert!(took < patience, "a body trickled for {took:?} kept its connection");
    assert!(text.starts_with("HTTP/1.1 408"), "answer to a trickled body: {text:?}");
    running.shutdown(Duration::from_millis(200)).await;
}
