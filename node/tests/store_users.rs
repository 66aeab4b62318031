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
    let dir = std::env::temp_dir().join(format!(
        "lpmesh-users-{name}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
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

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) -> Duration {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(20) {
        if check().await {
            return t.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not within 20 s");
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
