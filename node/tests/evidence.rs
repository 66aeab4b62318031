//! An incident's evidence through the tablet UI of the node that keeps it: its own sessions and
//! grants from another member open it; nothing else does; only managers download, and a download is
//! an action in the store's log. The router in-process over a real single-node mesh (as `ui.rs`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderMap, Request, StatusCode};
use libp2p_identity::Keypair;
use lpmesh_mesh::crypto::StoreSecret;
use lpmesh_mesh::keys::StoreSecrets;
use lpmesh_mesh::net::{self, MeshConfig};
use lpmesh_mesh::record::{Origin, RecordKind};
use lpmesh_node::event::{Detail, Event, EventKind, EvidenceId, EvidenceRef, Phase, Severity};
use lpmesh_node::evidence::store::{EvidenceStore, Meta};
use lpmesh_node::evidence::token::{Grant, GRANT_TTL_MS};
use lpmesh_node::members::{hex, Member};
use lpmesh_node::ui::auth::Role;
use lpmesh_node::ui::{self, UiState};
use serde_json::{json, Value};
use tower::ServiceExt;

const INCIDENT: &str = "back/stockroom/1-0";
const STILL: &[u8] = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00 the moment";

struct Node {
    state: Arc<UiState>,
    dir: PathBuf,
    evidence: EvidenceId,
    /// The other member ("front"): its key signs grants this node takes.
    front: Keypair,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Node "back": one incident with evidence kept here, users, and "front" as a fellow member.
async fn back_node() -> Node {
    let dir = lpmesh_testkit::TempDir::new("evidence-ui").into_path();
    let secrets = StoreSecrets::generate("shop-ev").unwrap();
    secrets.save(&dir).unwrap();
    let mut cfg = MeshConfig::new("shop-ev", secrets.psk().unwrap(), dir.join("log"));
    cfg.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    cfg.mdns = false;
    let key = Keypair::generate_ed25519();
    let mesh = net::start(cfg, key.clone(), secrets.recipient().unwrap()).unwrap();
    let front = Keypair::generate_ed25519();
    let member = |k: &Keypair, name: &str| Member {
        node: k.public().to_peer_id().to_string(),
        key: hex(&Origin::of(k).unwrap()),
        founder: name == "back",
        admitted_by: None,
        admitted_at_ms: None,
        invitation: None,
        priority: None,
        name: Some(name.into()),
    };
    let (_tx, members) = tokio::sync::watch::channel(vec![member(&key, "back"), member(&front, "front")]);
    // The sender lives as long as the test: leak it rather than thread it through.
    std::mem::forget(_tx);
    let store = Arc::new(EvidenceStore::open(&dir, 72.0, 100).unwrap());
    let evidence = EvidenceId::random();
    let t = now();
    store
        .put(
            &Meta {
                id: evidence.clone(),
                incident: INCIDENT.into(),
                camera: "stockroom".into(),
                at_ms: t,
                created_ms: t,
                still_bytes: 0,
                clip_bytes: 0,
                clip_from_ms: t - 5000,
                clip_to_ms: t + 5000,
                faces_hidden: true,
            },
            STILL,
            Some(&clip_bytes()),
            t,
        )
        .unwrap();
    let state = UiState::new(
        "shop-ev",
        "back",
        dir.clone(),
        mesh,
        StoreSecret::parse(&secrets.age_secret).unwrap(),
        None,
        Default::default(),
        chrono_tz::Europe::London,
        true,
    )
    .with_members(members)
    .with_evidence(Some(store), key);
    tokio::spawn(ui::feed(state.clone(), None));
    state.users.add("manager", Role::Manager, "manager password").unwrap();
    state.users.add("guard", Role::Security, "guard password").unwrap();
    let e = Event {
        incident: INCIDENT.into(),
        phase: Phase::Start,
        store: "shop-ev".into(),
        node: "back".into(),
        camera: "stockroom".into(),
        zone: Some("stockroom".into()),
        kind: EventKind::RestrictedEntry,
        severity: Severity::Medium,
        started_at_ms: t,
        at_ms: t,
        ended_at_ms: None,
        track: Some(3),
        bbox: Some([0.4, 0.2, 0.1, 0.5]),
        confidence: 0.8,
        model: "m".into(),
        evidence: Some(EvidenceRef {
            node: "back".into(),
            id: evidence.clone(),
        }),
        detail: Detail::default(),
    };
    state
        .mesh
        .append(vec![(RecordKind::Event, serde_json::to_vec(&e).unwrap())])
        .await
        .unwrap();
    for _ in 0..200 {
        if state.book.read().unwrap().get(INCIDENT).is_some() {
            return Node {
                state,
                dir,
                evidence,
                front,
            };
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the UI never saw the incident");
}

/// Bytes that start like an MP4 (the router serves what the store holds; encoding is `clip`'s test).
fn clip_bytes() -> Vec<u8> {
    let mut b = b"\x00\x00\x00\x18ftypmp42".to_vec();
    b.extend((0..5000u32).map(|i| (i % 251) as u8));
    b
}

async fn get(
    n: &Node,
    path: &str,
    cookie: Option<&str>,
    extra: &[(header::HeaderName, &str)],
) -> (StatusCode, HeaderMap, Vec<u8>) {
    let mut r = Request::builder().uri(path);
    if let Some(c) = cookie {
        r = r.header(header::COOKIE, c);
    }
    for (k, v) in extra {
        r = r.header(k, *v);
    }
    let mut r = r.body(Body::empty()).unwrap();
    r.extensions_mut()
        .insert(ConnectInfo(std::net::SocketAddr::from(([10, 0, 0, 7], 40000))));
    let resp = ui::app(n.state.clone()).oneshot(r).await.unwrap();
    let (s, h) = (resp.status(), resp.headers().clone());
    (
        s,
        h,
        axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap().to_vec(),
    )
}

async fn login(n: &Node, name: &str, password: &str) -> (String, String) {
    let mut r = Request::builder()
        .method("POST")
        .uri("/api/login")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(json!({"name": name, "password": password}).to_string()))
        .unwrap();
    r.extensions_mut()
        .insert(ConnectInfo(std::net::SocketAddr::from(([10, 0, 0, 7], 40000))));
    let resp = ui::app(n.state.clone()).oneshot(r).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let cookie = resp.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let v: Value = serde_json::from_slice(&axum::body::to_bytes(resp.into_body(), 1 << 16).await.unwrap()).unwrap();
    (cookie, v["csrf"].as_str().unwrap().to_string())
}

fn grant(n: &Node, signer: &Keypair, user: &str, role: Role, download: bool, expires_ms: i64) -> String {
    Grant {
        issuer: "front".into(),
        user: user.into(),
        role,
        evidence: n.evidence.clone(),
        download,
        issued_ms: expires_ms.min(now() + GRANT_TTL_MS) - GRANT_TTL_MS,
        expires_ms,
    }
    .sign("shop-ev", signer)
    .unwrap()
}

fn refused() -> u64 {
    lpmesh_node::evidence::REFUSED.load(std::sync::atomic::Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_members_grant_opens_the_evidence_it_names_and_nothing_else() {
    let n = back_node().await;
    let id = n.evidence.clone();
    let (still, clip) = (format!("/evidence/{id}/still.jpg"), format!("/evidence/{id}/clip.mp4"));
    // Without a session or a grant: nothing.
    for p in [&still, &clip, &format!("/evidence/{id}/download")] {
        assert_eq!(get(&n, p, None, &[]).await.0, StatusCode::UNAUTHORIZED, "{p}");
    }
    // A guard logged in on "front": front's grant opens the still and the clip here.
    let g = grant(&n, &n.front, "guard", Role::Security, false, now() + GRANT_TTL_MS);
    let (s, h, body) = get(&n, &format!("{still}?grant={g}"), None, &[]).await;
    assert_eq!((s, body.as_slice()), (StatusCode::OK, STILL));
    assert_eq!(h[header::CONTENT_TYPE], "image/jpeg");
    assert_eq!(h[header::CACHE_CONTROL], "no-store");
    assert_eq!(h["cross-origin-resource-policy"], "cross-origin");
    let (s, h, body) = get(&n, &format!("{clip}?grant={g}"), None, &[]).await;
    assert_eq!((s, body), (StatusCode::OK, clip_bytes()));
    assert_eq!(h[header::ACCEPT_RANGES], "bytes");
    // A browser's video asks in ranges.
    let (s, h, body) = get(&n, &format!("{clip}?grant={g}"), None, &[(header::RANGE, "bytes=4-11")]).await;
    assert_eq!((s, body.as_slice()), (StatusCode::PARTIAL_CONTENT, &b"ftypmp42"[..]));
    assert_eq!(h[header::CONTENT_RANGE], format!("bytes 4-11/{}", clip_bytes().len()));
    let before = refused();
    // The same grant does not download, nor open other evidence; forged, edited, expired, or for
    // a day: refused, and counted.
    let other = EvidenceId::random();
    let forged = grant(
        &n,
        &Keypair::generate_ed25519(),
        "manager",
        Role::Manager,
        true,
        now() + 60_000,
    );
    let expired = grant(&n, &n.front, "guard", Role::Security, false, now() - 3 * 60_000);
    let long = grant(&n, &n.front, "guard", Role::Security, false, now() + 86_400_000);
    let cases = [
        (format!("/evidence/{id}/download?grant={g}"), StatusCode::FORBIDDEN),
        (
            format!("/evidence/{other}/still.jpg?grant={g}"),
            StatusCode::UNAUTHORIZED,
        ),
        (format!("{still}?grant={forged}"), StatusCode::UNAUTHORIZED),
        (
            format!("/evidence/{id}/download?grant={forged}"),
            StatusCode::UNAUTHORIZED,
        ),
        (format!("{still}?grant={expired}"), StatusCode::UNAUTHORIZED),
        (format!("{still}?grant={long}"), StatusCode::UNAUTHORIZED),
        (format!("{still}?grant={}", "A".repeat(4000)), StatusCode::UNAUTHORIZED),
        (format!("{still}?grant=..%2F..%2Fkey"), StatusCode::UNAUTHORIZED),
        (
            "/evidence/..%2Fkey/still.jpg?grant=x".to_string(),
            StatusCode::NOT_FOUND,
        ),
    ];
    for (path, want) in &cases {
        let (s, _, body) = get(&n, path, None, &[]).await;
        assert_eq!(s, *want, "{path}");
        assert!(!body.windows(4).any(|w| w == b"JFIF"), "{path}");
    }
    assert_eq!(refused() - before, cases.len() as u64 - 1, "each refusal counted");
    // A user removed from the store since: their grant opens nothing.
    n.state.users.remove("guard").unwrap();
    assert_eq!(
        get(&n, &format!("{still}?grant={g}"), None, &[]).await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_managers_download_and_each_download_is_in_the_log() {
    let n = back_node().await;
    let id = n.evidence.clone();
    let guard = login(&n, "guard", "guard password").await;
    let manager = login(&n, "manager", "manager password").await;
    // This node's own sessions: both roles view, a guard cannot download.
    assert_eq!(
        get(&n, &format!("/evidence/{id}/still.jpg"), Some(&guard.0), &[])
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        get(&n, &format!("/evidence/{id}/download"), Some(&guard.0), &[])
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    let records = net::count(&n.state.mesh.version_vector().await.unwrap());
    let (s, h, body) = get(&n, &format!("/evidence/{id}/download"), Some(&manager.0), &[]).await;
    assert_eq!((s, body), (StatusCode::OK, clip_bytes()));
    let cd = h[header::CONTENT_DISPOSITION].to_str().unwrap();
    assert!(
        cd.starts_with("attachment; filename=\"lpmesh-stockroom-") && cd.ends_with(".mp4\""),
        "{cd}"
    );
    // The same manager again (a player asking twice, or through the other node's grant): one
    // download in the log. Another manager's, through a grant from the other node: a second.
    let g = grant(&n, &n.front, "manager", Role::Manager, true, now() + 60_000);
    assert_eq!(
        get(&n, &format!("/evidence/{id}/download?grant={g}"), None, &[])
            .await
            .0,
        StatusCode::OK
    );
    n.state.users.add("boss", Role::Manager, "boss password").unwrap();
    let g = grant(&n, &n.front, "boss", Role::Manager, true, now() + 60_000);
    let head = Request::builder()
        .method("HEAD")
        .uri(format!("/evidence/{id}/download?grant={g}"))
        .body(Body::empty())
        .unwrap();
    let mut head = head;
    head.extensions_mut()
        .insert(ConnectInfo(std::net::SocketAddr::from(([10, 0, 0, 7], 40000))));
    assert_eq!(
        ui::app(n.state.clone()).oneshot(head).await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        net::count(&n.state.mesh.version_vector().await.unwrap()),
        records + 1,
        "asking for the headers is no download"
    );
    assert_eq!(
        get(&n, &format!("/evidence/{id}/download?grant={g}"), None, &[])
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        net::count(&n.state.mesh.version_vector().await.unwrap()),
        records + 2,
        "two downloads in the log"
    );
    let inc = serde_json::to_value(n.state.book.read().unwrap().get(INCIDENT).unwrap()).unwrap();
    let downloads: Vec<&Value> = inc["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["what"] == "evidence_downloaded")
        .collect();
    assert_eq!(downloads.len(), 2, "{inc}");
    assert_eq!(downloads[0]["by"], "manager");
    assert_eq!(downloads[1]["by"], "boss");
    assert_eq!(inc["state"], "open", "a download decides nothing about the incident");
    // Nobody claims a download through the actions route.
    let mut r = Request::builder()
        .method("POST")
        .uri(format!("/api/incidents/{}/actions", INCIDENT.replace('/', "%2F")))
        .header(header::COOKIE, &manager.0)
        .header("x-csrf-token", &manager.1)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(json!({"action": "evidence_downloaded"}).to_string()))
        .unwrap();
    r.extensions_mut()
        .insert(ConnectInfo(std::net::SocketAddr::from(([10, 0, 0, 7], 40000))));
    let resp = ui::app(n.state.clone()).oneshot(r).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    // The page's links: this node's own evidence, with a download link for managers only.
    let (s, _, body) = get(
        &n,
        &format!("/api/incidents/{}/evidence", INCIDENT.replace('/', "%2F")),
        Some(&manager.0),
        &[],
    )
    .await;
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (s, v["status"].as_str(), v["owner"].as_str()),
        (StatusCode::OK, Some("ok"), Some("back")),
        "{v}"
    );
    let still_link = v["still"].as_str().unwrap();
    assert!(
        still_link.starts_with(&format!("/evidence/{id}/still.jpg?grant=")),
        "{v}"
    );
    assert_eq!(
        get(&n, still_link, None, &[]).await.0,
        StatusCode::OK,
        "the link's own grant works"
    );
    assert!(v["download"].as_str().unwrap().contains("/download?grant="));
    let (_, _, body) = get(
        &n,
        &format!("/api/incidents/{}/evidence", INCIDENT.replace('/', "%2F")),
        Some(&guard.0),
        &[],
    )
    .await;
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["download"], Value::Null, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alerts_link_shows_the_still_to_a_logged_in_tablet_and_the_login_to_anyone_else() {
    let n = back_node().await;
    let id = n.evidence.clone();
    let (s, h, body) = get(&n, &format!("/evidence/{id}"), None, &[]).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert_eq!(h[header::LOCATION], "/#/incident/back%2Fstockroom%2F1-0");
    assert!(body.is_empty());
    let guard = login(&n, "guard", "guard password").await;
    let (s, h, body) = get(&n, &format!("/evidence/{id}"), Some(&guard.0), &[]).await;
    assert_eq!((s, body.as_slice()), (StatusCode::OK, STILL));
    assert_eq!(h[header::CONTENT_TYPE], "image/jpeg");
    // Unknown evidence says nothing to anyone not logged in.
    let (s, h, _) = get(&n, &format!("/evidence/{}", EvidenceId::random()), None, &[]).await;
    assert_eq!(
        (s, &h[header::LOCATION]),
        (StatusCode::SEE_OTHER, &"/".parse::<header::HeaderValue>().unwrap())
    );
}
