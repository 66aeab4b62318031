//! The tablet UI's router in-process (`ui::app(state)` over a real single-node mesh): every route's
//! authentication and role checks, CSRF, login limits, validation, and the incident flow.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use libp2p_identity::Keypair;
use lpmesh_mesh::crypto::StoreSecret;
use lpmesh_mesh::keys::StoreSecrets;
use lpmesh_mesh::net::{self, MeshConfig};
use lpmesh_mesh::record::RecordKind;
use lpmesh_node::event::{Detail, Event, EventKind, Phase, Severity};
use lpmesh_node::ui::auth::Role;
use lpmesh_node::ui::{self, UiState};
use tower::ServiceExt;

struct Fixture {
    state: Arc<UiState>,
    dir: std::path::PathBuf,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn fixture(secure: bool) -> Fixture {
    let dir = lpmesh_testkit::TempDir::new("ui").into_path();
    let secrets = StoreSecrets::generate("shop-ui").unwrap();
    secrets.save(&dir).unwrap();
    let mut cfg = MeshConfig::new("shop-ui", secrets.psk().unwrap(), dir.join("log"));
    cfg.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    cfg.mdns = false;
    let mesh = net::start(cfg, Keypair::generate_ed25519(), secrets.recipient().unwrap()).unwrap();
    let secret = StoreSecret::parse(&secrets.age_secret).unwrap();
    let state = UiState::new(
        "shop-ui",
        "front",
        dir.clone(),
        mesh,
        secret,
        None,
        Default::default(),
        chrono_tz::Europe::London,
        secure,
    );
    tokio::spawn(ui::feed(state.clone(), None));
    state.users.add("manager", Role::Manager, "manager password").unwrap();
    state.users.add("guard", Role::Security, "guard password").unwrap();
    Fixture { state, dir }
}

async fn send(f: &Fixture, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    // What the real listener records; these requests come from the node itself.
    let mut req = req;
    if req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .is_none()
    {
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((
                [127, 0, 0, 1],
                40000,
            ))));
    }
    let resp = ui::app(f.state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = axum::body::to_bytes(resp.into_body(), 4 << 20).await.unwrap().to_vec();
    (status, headers, body)
}

fn get(path: &str, cookie: Option<&str>) -> Request<Body> {
    let mut r = Request::get(path);
    if let Some(c) = cookie {
        r = r.header(header::COOKIE, c);
    }
    r.body(Body::empty()).unwrap()
}

fn post(path: &str, cookie: Option<&str>, csrf: Option<&str>, body: serde_json::Value) -> Request<Body> {
    let mut r = Request::post(path).header(header::CONTENT_TYPE, "application/json");
    if let Some(c) = cookie {
        r = r.header(header::COOKIE, c);
    }
    if let Some(t) = csrf {
        r = r.header("x-csrf-token", t);
    }
    r.body(Body::from(body.to_string())).unwrap()
}

/// Logs in; returns the cookie and the CSRF token.
async fn login(f: &Fixture, name: &str, password: &str) -> (String, String) {
    let (status, headers, body) = send(
        f,
        post(
            "/api/login",
            None,
            None,
            serde_json::json!({"name": name, "password": password}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let cookie = headers[header::SET_COOKIE].to_str().unwrap().to_string();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    (
        cookie.split(';').next().unwrap().to_string(),
        v["csrf"].as_str().unwrap().to_string(),
    )
}

fn event(id: &str, kind: EventKind, severity: Severity, at: i64) -> Event {
    Event {
        incident: id.into(),
        phase: Phase::Start,
        store: "shop-ui".into(),
        node: "front".into(),
        camera: "door".into(),
        zone: Some("exit".into()),
        kind,
        severity,
        started_at_ms: at,
        at_ms: at,
        ended_at_ms: None,
        track: Some(1),
        bbox: None,
        confidence: 0.8,
        model: "m".into(),
        evidence: None,
        detail: Detail::default(),
    }
}

async fn append(f: &Fixture, e: &Event) {
    f.state
        .mesh
        .append(vec![(RecordKind::Event, serde_json::to_vec(e).unwrap())])
        .await
        .unwrap();
    for _ in 0..100 {
        if f.state.book.read().unwrap().get(&e.incident).is_some() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the UI never saw {}", e.incident);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_but_health_login_and_assets_needs_a_session() {
    let f = fixture(false).await;
    for path in ["/", "/app.js", "/app.css", "/health"] {
        let (status, headers, body) = send(&f, get(path, None)).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(
            csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
            "{csp}"
        );
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        // Nothing is loaded from elsewhere: works with no internet. (The SVG namespace is a name, not
        // an address that is fetched.)
        let text = String::from_utf8(body)
            .unwrap()
            .replace("http://www.w3.org/2000/svg", "");
        assert!(
            !text.contains("http://") && !text.contains("https://"),
            "{path} refers to another site"
        );
    }
    for path in [
        "/api/me",
        "/api/incidents",
        "/api/incidents/x",
        "/api/stream",
        "/api/cameras",
        "/api/mesh",
        "/api/charts/footfall.svg",
        "/api/invite",
        "/api/zones",
        "/api/zones/door",
        "/api/zones/door/still.bmp",
    ] {
        assert_eq!(send(&f, get(path, None)).await.0, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(
            send(&f, get(path, Some("lpmesh_session=forged"))).await.0,
            StatusCode::UNAUTHORIZED,
            "{path}"
        );
    }
    for path in ["/api/logout", "/api/incidents/x/actions"] {
        let (status, _, _) = send(&f, post(path, None, None, serde_json::json!({}))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
    }
    // The first load, everything a tablet fetches before logging in, is small.
    let size: usize = [
        include_str!("../src/ui/assets/index.html"),
        include_str!("../src/ui/assets/app.js"),
        include_str!("../src/ui/assets/app.css"),
    ]
    .iter()
    .map(|s| s.len())
    .sum();
    assert!(size < 300 * 1024, "first load {size} bytes");
    eprintln!("UI first load: {size} bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_sets_a_strict_cookie_and_failures_are_limited() {
    let f = fixture(false).await;
    let (status, headers, _) = send(
        &f,
        post(
            "/api/login",
            None,
            None,
            serde_json::json!({"name": "manager", "password": "manager password"}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let cookie = headers[header::SET_COOKIE].to_str().unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(!cookie.contains("Secure"), "no TLS, no Secure flag");
    // From another site: refused before the password is even checked.
    let mut cross = post(
        "/api/login",
        None,
        None,
        serde_json::json!({"name": "manager", "password": "manager password"}),
    );
    cross
        .headers_mut()
        .insert(header::ORIGIN, "http://evil.example".parse().unwrap());
    cross
        .headers_mut()
        .insert(header::HOST, "10.0.0.5:8080".parse().unwrap());
    assert_eq!(send(&f, cross).await.0, StatusCode::FORBIDDEN);
    for _ in 0..5 {
        let (s, _, _) = send(
            &f,
            post(
                "/api/login",
                None,
                None,
                serde_json::json!({"name": "guard", "password": "guess"}),
            ),
        )
        .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    // Locked now, even with the right password.
    let (s, h, _) = send(
        &f,
        post(
            "/api/login",
            None,
            None,
            serde_json::json!({"name": "guard", "password": "guard password"}),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    assert!(h.contains_key(header::RETRY_AFTER));
    let (s, _, _) = send(&f, post("/api/login", None, None, serde_json::json!({"nam": "x"}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    let tls = fixture(true).await;
    let (_, headers, _) = send(
        &tls,
        post(
            "/api/login",
            None,
            None,
            serde_json::json!({"name": "manager", "password": "manager password"}),
        ),
    )
    .await;
    assert!(headers[header::SET_COOKIE].to_str().unwrap().contains("; Secure"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_need_the_csrf_token_and_security_staff_cannot_invite() {
    let f = fixture(false).await;
    let now = chrono::Utc::now().timestamp_millis();
    append(
        &f,
        &event("front/door/1", EventKind::ExitWithoutCheckout, Severity::High, now),
    )
    .await;
    let (guard, guard_csrf) = login(&f, "guard", "guard password").await;
    let ack = serde_json::json!({"action": "acknowledge"});
    let path = "/api/incidents/front%2Fdoor%2F1/actions";
    assert_eq!(
        send(&f, post(path, Some(&guard), None, ack.clone())).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        send(&f, post(path, Some(&guard), Some("not-the-token"), ack.clone()))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    let (manager, manager_csrf) = login(&f, "manager", "manager password").await;
    assert_eq!(
        send(&f, post(path, Some(&guard), Some(&manager_csrf), ack.clone()))
            .await
            .0,
        StatusCode::FORBIDDEN,
        "another session's token does not do"
    );
    let (s, _, body) = send(&f, post(path, Some(&guard), Some(&guard_csrf), ack)).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let inc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(inc["state"], "acknowledged");
    assert_eq!(inc["acknowledged_by"], "guard");
    // Security staff do incidents, not invites.
    assert_eq!(
        send(&f, get("/api/invite", Some(&guard))).await.0,
        StatusCode::FORBIDDEN
    );
    // A camera that is not on this node: its zones are edited where it is.
    assert_eq!(
        send(&f, get("/api/zones/door", Some(&manager))).await.0,
        StatusCode::NOT_FOUND
    );
    // Over plain HTTP an invitation's one-time secret would cross the shop's network in the clear.
    let (s, _, body) = send(&f, get("/api/invite", Some(&manager))).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("HTTPS"));
    // Logging out ends the session.
    assert_eq!(
        send(
            &f,
            post("/api/logout", Some(&guard), Some(&guard_csrf), serde_json::json!({}))
        )
        .await
        .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(send(&f, get("/api/me", Some(&guard))).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incidents_are_listed_filtered_and_acted_on() {
    let f = fixture(false).await;
    let now = chrono::Utc::now().timestamp_millis();
    append(
        &f,
        &event("front/door/1", EventKind::Loitering, Severity::Low, now - 60_000),
    )
    .await;
    append(
        &f,
        &event(
            "front/door/2",
            EventKind::ExitWithoutCheckout,
            Severity::High,
            now - 30_000,
        ),
    )
    .await;
    let mut crossing = event("front/door/3", EventKind::LineCrossing, Severity::Info, now - 10_000);
    crossing.phase = Phase::Instant;
    append(&f, &crossing).await;
    let (c, csrf) = login(&f, "manager", "manager password").await;
    let list = |q: &'static str| {
        let c = c.clone();
        let f = &f;
        async move {
            let (s, _, b) = send(f, get(&format!("/api/incidents{q}"), Some(&c))).await;
            (s, serde_json::from_slice::<serde_json::Value>(&b).unwrap_or_default())
        }
    };
    let (s, all) = list("").await;
    assert_eq!(s, StatusCode::OK);
    let ids: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        vec!["front/door/2", "front/door/1"],
        "newest first, crossings are not incidents"
    );
    assert_eq!(list("?severity=high").await.1.as_array().unwrap().len(), 1);
    assert_eq!(list("?kind=line_crossing").await.1.as_array().unwrap().len(), 1);
    assert_eq!(list("?camera=elsewhere").await.1.as_array().unwrap().len(), 0);
    assert_eq!(list("?severity=extreme").await.0, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(list("?from=yesterday").await.0, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(list("?state=lost").await.0, StatusCode::UNPROCESSABLE_ENTITY);

    let path = "/api/incidents/front%2Fdoor%2F2/actions";
    let (s, _, _) = send(
        &f,
        post(path, Some(&c), Some(&csrf), serde_json::json!({"action": "resolve"})),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "resolving needs a note");
    let (s, _, _) = send(
        &f,
        post(path, Some(&c), Some(&csrf), serde_json::json!({"action": "explode"})),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let long = "x".repeat(300);
    let (s, _, _) = send(
        &f,
        post(
            path,
            Some(&c),
            Some(&csrf),
            serde_json::json!({"action": "note", "note": long}),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let (s, _, _) = send(
        &f,
        post(
            "/api/incidents/nope/actions",
            Some(&c),
            Some(&csrf),
            serde_json::json!({"action": "acknowledge"}),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _, b) = send(
        &f,
        post(
            path,
            Some(&c),
            Some(&csrf),
            serde_json::json!({"action": "resolve", "note": "bag checked, receipt shown"}),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    assert_eq!(list("?state=resolved").await.1.as_array().unwrap().len(), 1);
    let (s, _, b) = send(&f, get("/api/incidents/front%2Fdoor%2F2", Some(&c))).await;
    assert_eq!(s, StatusCode::OK);
    let inc: serde_json::Value = serde_json::from_slice(&b).unwrap();
    let history: Vec<&str> = inc["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["what"].as_str().unwrap())
        .collect();
    assert_eq!(history, vec!["start", "resolve"]);
    // The action is a record of the mesh, so every node sees it.
    let vv = f.state.mesh.version_vector().await.unwrap();
    assert_eq!(net::count(&vv), 4);

    let (s, h, b) = send(&f, get("/api/charts/footfall.svg?days=7", Some(&c))).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h[header::CONTENT_TYPE], "image/svg+xml");
    assert!(String::from_utf8(b).unwrap().starts_with("<svg"));
    assert_eq!(
        send(&f, get("/api/charts/incidents.svg?days=3", Some(&c))).await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let (s, _, b) = send(&f, get("/api/mesh", Some(&c))).await;
    assert_eq!(s, StatusCode::OK);
    let m: serde_json::Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(m["store"], "shop-ui");
    let resp = ui::app(f.state.clone())
        .oneshot(get("/api/stream", Some(&c)))
        .await
        .unwrap();
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/event-stream");
}

/// With `[ui] tls`, the page is served over HTTPS with the node's own certificate, pinned by the
/// tablet (here: the HQ client, which trusts exactly that certificate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_is_served_over_tls_with_a_pinned_certificate() {
    let f = fixture(true).await;
    let cert = lpmesh_hq::tls::load_or_create_cert(&f.dir.join("ui-tls"), None, None, &["localhost".into()]).unwrap();
    assert_eq!(cert.fingerprint.split(':').count(), 32);
    let running = ui::serve(
        f.state.clone(),
        "127.0.0.1:0".parse().unwrap(),
        Some((cert.cert_pem.clone(), cert.key_pem.clone())),
    )
    .await
    .unwrap();
    let url = format!("https://localhost:{}", running.addr.port());
    let pinned = lpmesh_hq::client::HqClient::new(&url, Some(&cert.cert_path), Duration::from_secs(5)).unwrap();
    pinned.probe().await.unwrap();
    // A client that trusts only another certificate refuses the connection.
    let other = lpmesh_hq::tls::load_or_create_cert(&f.dir.join("other"), None, None, &["localhost".into()]).unwrap();
    let stranger = lpmesh_hq::client::HqClient::new(&url, Some(&other.cert_path), Duration::from_secs(5)).unwrap();
    assert!(stranger.probe().await.is_err());
    running.shutdown(Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_gets_a_single_use_invitation_over_https() {
    let f = fixture(true).await;
    // The running node's enrolment listener writes where it answers.
    std::fs::write(f.dir.join(lpmesh_mesh::enrol::ENROL_ADDR_FILE), "10.0.0.5:7421\n").unwrap();
    let manager = login(&f, "manager", "manager password").await;
    let (s, _, body) = send(&f, get("/api/invite", Some(&manager.0))).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let token = v["token"].as_str().unwrap();
    assert!(token.starts_with("lpmesh-invite-1."));
    assert!(v["qr_svg"].as_str().unwrap().contains("<svg"));
    assert_eq!(v["single_use"], true);
    let t = lpmesh_mesh::enrol::Token::decode(token).unwrap();
    assert_eq!((t.enrol.as_str(), t.store.as_str()), ("10.0.0.5:7421", "shop-ui"));
    let secrets = StoreSecrets::load(&f.dir).unwrap();
    for secret in [&secrets.psk, &secrets.age_secret, &secrets.signing_key] {
        assert!(
            !body.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "the page shows no store secret"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_page_lists_the_stores_members() {
    let f = fixture(false).await;
    let guard = login(&f, "guard", "guard password").await;
    let (_, _, body) = send(&f, get("/api/mesh", Some(&guard.0))).await;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(v["members"].is_null(), "no member list known: {v}");
    let founder = lpmesh_node::members::Member {
        node: "12D3KooWFounder".into(),
        key: "00".repeat(32),
        founder: true,
        admitted_by: None,
        admitted_at_ms: None,
        invitation: None,
        priority: None,
        name: None,
    };
    let (tx, rx) = tokio::sync::watch::channel(vec![founder.clone()]);
    let _ = f.state.clone().with_members(rx);
    let (_, _, body) = send(&f, get("/api/mesh", Some(&guard.0))).await;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["members"][0]["founder"], true, "{v}");
    let joined = lpmesh_node::members::Member {
        node: "12D3KooWJoined".into(),
        key: "00".repeat(32),
        founder: false,
        admitted_by: Some("12D3KooWFounder".into()),
        admitted_at_ms: Some(5),
        invitation: Some("ab".into()),
        priority: Some(3),
        name: Some("back".into()),
    };
    tx.send(vec![founder, joined]).unwrap();
    let (_, _, body) = send(&f, get("/api/mesh", Some(&guard.0))).await;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["members"][1]["admitted_by"], "12D3KooWFounder", "{v}");
    assert_eq!(v["members"][1]["priority"], 3, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_revokes_a_member_from_the_mesh_page() {
    let f = fixture(false).await;
    let other = Keypair::generate_ed25519();
    let other_origin = lpmesh_mesh::record::Origin::of(&other).unwrap();
    let member = |node: String, key: String, founder: bool| lpmesh_node::members::Member {
        node,
        key,
        founder,
        admitted_by: None,
        admitted_at_ms: None,
        invitation: None,
        priority: None,
        name: None,
    };
    let me = f.state.mesh.origin();
    let (_tx, rx) = tokio::sync::watch::channel(vec![
        member(me.to_string(), lpmesh_node::members::hex(&me), true),
        member(
            other_origin.to_string(),
            lpmesh_node::members::hex(&other_origin),
            false,
        ),
    ]);
    let _ = f.state.clone().with_members(rx);
    let (manager, manager_csrf) = login(&f, "manager", "manager password").await;
    let (guard, guard_csrf) = login(&f, "guard", "guard password").await;
    let path = format!("/api/members/{other_origin}/revoke");
    let body = serde_json::json!({});
    assert_eq!(
        send(&f, post(&path, Some(&guard), Some(&guard_csrf), body.clone()))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    let founder_path = format!("/api/members/{me}/revoke");
    assert_eq!(
        send(
            &f,
            post(&founder_path, Some(&manager), Some(&manager_csrf), body.clone())
        )
        .await
        .0,
        StatusCode::CONFLICT
    );
    assert_eq!(
        f.state.mesh.version_vector().await.unwrap().get(&me),
        None,
        "nothing written yet"
    );
    let (s, _, b) = send(&f, post(&path, Some(&manager), Some(&manager_csrf), body)).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    // The revocation is a record of the log, signed by this node, naming the other node's key.
    let recs = f.state.mesh.range(me, 1, 10).await.unwrap();
    assert_eq!(recs.len(), 1);
    let m = f.state.reader.member(&recs[0]).expect("a member record");
    assert!(m.revoked && m.node == lpmesh_node::members::hex(&other_origin));
}

/// After a revocation the node serves a certificate from its new key epoch's CA: swapped on the
/// running listener, so a tablet that installed the new CA connects, with no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_certificate_is_swapped_on_the_running_listener() {
    use lpmesh_web::tls::{issue, new_ca};
    let f = fixture(true).await;
    let (old, new) = (new_ca("shop-ui").unwrap(), new_ca("key epoch 1").unwrap());
    let names = ["localhost".to_string()];
    let (chain, key) = issue("shop-ui", &old, &names, &[]).unwrap();
    let running = ui::serve(f.state.clone(), "127.0.0.1:0".parse().unwrap(), Some((chain, key)))
        .await
        .unwrap();
    let url = format!("https://localhost:{}", running.addr.port());
    let trusting = |ca: &lpmesh_web::tls::CaPem, file: &str| {
        let path = f.dir.join(file);
        std::fs::write(&path, &ca.cert_pem).unwrap();
        lpmesh_hq::client::HqClient::new(&url, Some(&path), Duration::from_secs(5)).unwrap()
    };
    // A fresh client for each look: an open connection keeps the certificate it began with.
    trusting(&old, "old-ca.pem").probe().await.unwrap();
    assert!(
        trusting(&new, "new-ca.pem").probe().await.is_err(),
        "not yet the new CA's"
    );
    let (chain, key) = issue("key epoch 1", &new, &names, &[]).unwrap();
    running.reload_tls(chain, key).await.unwrap();
    trusting(&new, "new-ca.pem").probe().await.unwrap();
    assert!(
        trusting(&old, "old-ca.pem").probe().await.is_err(),
        "the old CA no longer vouches for the node"
    );
    running.shutdown(Duration::from_millis(200)).await;
}
