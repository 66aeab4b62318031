//! One account for the whole store: a user added on one node logs in on another, and a user removed
//! on any node is logged out on every node within seconds (two real meshes, each with its UI).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use libp2p_identity::Keypair;
use lpmesh_mesh::keys::StoreSecrets;
use lpmesh_mesh::net::{self, MeshConfig, MeshHandle};
use lpmesh_node::ui::auth::{Role, Users};
use lpmesh_node::ui::{self, UiState};
use tower::ServiceExt;

struct Node {
    state: Arc<UiState>,
    mesh: MeshHandle,
    dir: std::path::PathBuf,
}

/// A node; `file_users` are in its users file from before store-wide users (nothing queued).
async fn node(secrets: &StoreSecrets, name: &str, bootstrap: Vec<String>, file_users: &[(&str, Role, &str)]) -> Node {
    let dir = lpmesh_testkit::TempDir::new(&format!("users-{name}")).into_path();
    for (user, role, password) in file_users {
        Users::new(&dir).add(user, *role, password).unwrap();
    }
    let _ = std::fs::remove_file(dir.join(lpmesh_node::ui::auth::OUTBOX_FILE));
    let mut cfg = MeshConfig::new("shop-users", secrets.psk().unwrap(), dir.join("log"));
    cfg.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    cfg.mdns = false;
    cfg.bootstrap = bootstrap.iter().map(|a| a.parse().unwrap()).collect();
    cfg.anti_entropy_interval = Duration::from_millis(500);
    let mesh = net::start(cfg, Keypair::generate_ed25519(), secrets.recipient().unwrap()).unwrap();
    let state = UiState::new(
        "shop-users",
        name,
        dir.clone(),
        mesh.clone(),
        secrets.keyring().unwrap(),
        None,
        Default::default(),
        chrono_tz::Europe::London,
        true,
    );
    tokio::spawn(ui::feed(state.clone(), None));
    tokio::spawn(ui::publish_users(state.clone()));
    Node { state, mesh, dir }
}

async fn send(n: &Node, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let resp = ui::app(n.state.clone()).oneshot(req).await.unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap().to_vec();
    (status, headers, body)
}

async fn login(n: &Node, name: &str, password: &str) -> (StatusCode, Option<String>) {
    let req = Request::post("/api/login")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(
            serde_json::json!({"name": name, "password": password}).to_string(),
        ))
        .unwrap();
    let (s, h, _) = send(n, req).await;
    let cookie = h
        .get(header::SET_COOKIE)
        .map(|c| c.to_str().unwrap().split(';').next().unwrap().to_string());
    (s, cookie)
}

async fn me(n: &Node, cookie: &str) -> StatusCode {
    let req = Request::get("/api/me")
        .header(header::COOKIE, cookie)
        .body(Body::empty())
        .unwrap();
    send(n, req).await.0
}

/// Every wait of this file: a user change crosses the store within seconds; 20 s means it never will.
/// Checked every 100 ms: a check may be a login, and failed logins slow the next ones down.
async fn eventually(what: &str, check: impl AsyncFnMut() -> bool) -> Duration {
    lpmesh_testkit::eventually_every(what, Duration::from_secs(20), Duration::from_millis(100), check).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_added_on_one_node_logs_in_on_another_and_a_removal_anywhere_logs_them_out_everywhere() {
    let secrets = StoreSecrets::generate("shop-users").unwrap();
    // A user from before store-wide users, in node A's file only: published when A starts.
    let a = node(
        &secrets,
        "front",
        vec![],
        &[("old-manager", Role::Manager, "from the file")],
    )
    .await;
    let a_addr = loop {
        if let Some(x) = a.mesh.listen_addrs().await.unwrap().first() {
            break format!("{x}/p2p/{}", a.mesh.peer_id());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let b = node(&secrets, "back", vec![a_addr], &[]).await;

    // Added with `lpmesh user add` on A: B takes the login.
    Users::new(&a.dir).add("sam", Role::Security, "night shift 1").unwrap();
    let took = eventually("sam logs in on B", async || {
        login(&b, "sam", "night shift 1").await.0 == StatusCode::OK
    })
    .await;
    eprintln!("added on A: sam logged in on B after {took:?}");
    eventually("the file's user logs in on B", async || {
        login(&b, "old-manager", "from the file").await.0 == StatusCode::OK
    })
    .await;
    assert_eq!(login(&b, "sam", "wrong password").await.0, StatusCode::UNAUTHORIZED);

    // Logged in on A (with a live stream open), removed on B: A logs them out within seconds.
    let (s, cookie) = login(&a, "sam", "night shift 1").await;
    assert_eq!(s, StatusCode::OK);
    let cookie = cookie.unwrap();
    assert_eq!(me(&a, &cookie).await, StatusCode::OK);
    let stream_req = Request::get("/api/stream")
        .header(header::COOKIE, &cookie)
        .body(Body::empty())
        .unwrap();
    let stream = ui::app(a.state.clone()).oneshot(stream_req).await.unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    let mut body = stream.into_body().into_data_stream();
    let stream_end = tokio::spawn(async move {
        use futures::StreamExt;
        while body.next().await.is_some() {}
        Instant::now()
    });
    let removed = Users::new(&b.dir).remove("sam").unwrap();
    assert!(!removed, "B's file never had sam: removed from the store all the same");
    let t = Instant::now();
    let took = eventually("A logged sam out", async || {
        me(&a, &cookie).await == StatusCode::UNAUTHORIZED
    })
    .await;
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let ended = tokio::time::timeout(Duration::from_secs(10), stream_end)
        .await
        .expect("the live stream of a removed user ended")
        .unwrap();
    assert!(ended.duration_since(t) < Duration::from_secs(10));
    eprintln!(
        "removed on B: A refused the session after {took:?}, its live stream ended after {:?}",
        ended.duration_since(t)
    );
    for n in [&a, &b] {
        assert_eq!(login(n, "sam", "night shift 1").await.0, StatusCode::UNAUTHORIZED);
    }
    // Given another role on A: B's sessions of that user end too.
    let (_, cookie_b) = login(&b, "old-manager", "from the file").await;
    let cookie_b = cookie_b.unwrap();
    Users::new(&a.dir)
        .add("old-manager", Role::Security, "from the file")
        .unwrap();
    eventually("B logged old-manager out", async || {
        me(&b, &cookie_b).await == StatusCode::UNAUTHORIZED
    })
    .await;
    let (s, _) = login(&b, "old-manager", "from the file").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        b.state.users.store().list(),
        vec![("old-manager".to_string(), Role::Security)]
    );
    for n in [a, b] {
        let _ = n.mesh.shutdown().await;
        let _ = std::fs::remove_dir_all(&n.dir);
    }
}

/// Logs in; the cookie and the CSRF token.
async fn session(n: &Node, name: &str, password: &str) -> (String, String) {
    let req = Request::post("/api/login")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(
            serde_json::json!({"name": name, "password": password}).to_string(),
        ))
        .unwrap();
    let (s, h, b) = send(n, req).await;
    assert_eq!(s, StatusCode::OK, "{name}: {}", String::from_utf8_lossy(&b));
    let cookie = h[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
    (cookie, v["csrf"].as_str().unwrap().to_string())
}

async fn call(
    n: &Node,
    method: &str,
    path: &str,
    who: &(String, String),
    body: Option<serde_json::Value>,
) -> (StatusCode, serde_json::Value) {
    let mut r = Request::builder()
        .method(method)
        .uri(path)
        .header(header::COOKIE, &who.0)
        .header("x-csrf-token", &who.1);
    if body.is_some() {
        r = r.header(header::CONTENT_TYPE, "application/json");
    }
    let req = r
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap();
    let (s, _, b) = send(n, req).await;
    (s, serde_json::from_slice(&b).unwrap_or_default())
}

/// The managers' Users page: a person added on node A's tablet logs in on node B; removed from B's
/// tablet, they are logged out on A. A manager cannot remove themselves, the last manager stays,
/// security staff cannot manage people, and `lpmesh user list` sees the store's list, no hashes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_manages_the_stores_people_from_any_tablet() {
    let secrets = StoreSecrets::generate("shop-users").unwrap();
    let a = node(&secrets, "front", vec![], &[]).await;
    Users::new(&a.dir).add("boss", Role::Manager, "corner office").unwrap();
    let a_addr = loop {
        if let Some(x) = a.mesh.listen_addrs().await.unwrap().first() {
            break format!("{x}/p2p/{}", a.mesh.peer_id());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let b = node(&secrets, "back", vec![a_addr], &[]).await;
    let boss_a = session(&a, "boss", "corner office").await;
    let (s, v) = call(
        &a,
        "POST",
        "/api/users",
        &boss_a,
        Some(serde_json::json!({"name": "kim", "role": "security", "password": "short"})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = call(
        &a,
        "POST",
        "/api/users",
        &boss_a,
        Some(serde_json::json!({"name": "kim", "role": "security", "password": "night shift 2"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    eventually("kim logs in on B", async || {
        login(&b, "kim", "night shift 2").await.0 == StatusCode::OK
    })
    .await;
    let kim_a = session(&a, "kim", "night shift 2").await;
    let (s, _) = call(&a, "GET", "/api/users", &kim_a, None).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "security staff do not manage people");
    let boss_b = eventually_session(&b, "boss", "corner office").await;
    let (s, v) = call(&b, "GET", "/api/users", &boss_b, None).await;
    assert_eq!(s, StatusCode::OK);
    let names: Vec<&str> = v["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["boss", "kim"]);
    // Nobody removes themselves; the store keeps a manager.
    let (s, _) = call(&b, "DELETE", "/api/users/boss", &boss_b, None).await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, _) = call(
        &b,
        "POST",
        "/api/users",
        &boss_b,
        Some(serde_json::json!({"name": "boss", "role": "security", "password": "corner office"})),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "no manager demotes themselves");
    // Removed from B's tablet: kim's session on A ends.
    let (s, _) = call(&b, "DELETE", "/api/users/kim", &boss_b, None).await;
    assert_eq!(s, StatusCode::OK);
    eventually("A logged kim out", async || {
        me(&a, &kim_a.0).await == StatusCode::UNAUTHORIZED
    })
    .await;
    // The list `lpmesh user list` prints, as the node saw it: names and roles only.
    let view = std::fs::read_to_string(a.dir.join(lpmesh_node::ui::auth::VIEW_FILE)).unwrap();
    assert!(view.contains("boss") && !view.contains("kim"), "{view}");
    assert!(!view.contains("argon2"), "{view}");
}

async fn eventually_session(n: &Node, name: &str, password: &str) -> (String, String) {
    eventually("the login works", async || {
        login(n, name, password).await.0 == StatusCode::OK
    })
    .await;
    session(n, name, password).await
}
