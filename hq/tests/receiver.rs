//! The HQ receiver over real HTTPS, against the embedded store and a real PostgreSQL: what it keeps
//! per (store, period), and everything it must refuse without changing anything.

use std::path::PathBuf;
use std::time::Duration;

use libp2p_identity::Keypair;
use lpmesh_hq::client::{ClientError, HqClient};
use lpmesh_hq::envelope::{seal, store_key_to_string};
use lpmesh_hq::server::{serve, HqState};
use lpmesh_hq::store::{Embedded, Filter, HqStore, Postgres};
use lpmesh_hq::summary::{LineCount, Summary};
use lpmesh_hq::testpg::TestPg;
use lpmesh_hq::vv::VersionVector;

const HOUR: i64 = 3_600_000;

fn temp_dir(tag: &str) -> PathBuf {
    // Each test removes its directory at its end (kept after a failure, to look into).
    lpmesh_testkit::TempDir::new(&format!("hq-{tag}")).into_path()
}

fn vv(pairs: &[(&str, u64)]) -> VersionVector {
    VersionVector(pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect())
}

fn summary(store: &str, period: i64, v: VersionVector, footfall_in: u64) -> Summary {
    Summary {
        store: store.into(),
        period_start_ms: period,
        period_secs: 3600,
        vv: v,
        footfall: vec![LineCount {
            camera: "door".into(),
            line: "main".into(),
            entered: footfall_in,
            left: 1,
        }],
        ..Summary::default()
    }
}

async fn stored(state: &HqState, store: &str) -> Vec<Summary> {
    state
        .store
        .summaries(&Filter {
            store: Some(store.into()),
            ..Filter::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.summary)
        .collect()
}

async fn refused(client: &HqClient, body: Vec<u8>) -> (u16, String) {
    match client.post(body).await {
        Err(ClientError::Refused { status, error, .. }) => (status, error),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

async fn suite(store: HqStore) {
    let dir = temp_dir("suite");
    let hq = age::x25519::Identity::generate();
    let recipient = hq.to_public();
    let cert = lpmesh_hq::tls::load_or_create_cert(&dir, None, None, &["localhost".into()]).unwrap();
    let key = Keypair::generate_ed25519();
    store
        .register_store("shop-1", &store_key_to_string(&key.public()).unwrap(), 0)
        .await
        .unwrap();
    let state = HqState::new(store, hq, 64 * 1024);
    let running = serve(
        state.clone(),
        "127.0.0.1:0".parse().unwrap(),
        cert.cert_pem,
        cert.key_pem,
    )
    .await
    .unwrap();
    let url = format!("https://localhost:{}", running.addr.port());
    let client = HqClient::new(&url, Some(&cert.cert_path), Duration::from_secs(10)).unwrap();
    client.probe().await.unwrap();
    let p = 490_000 * HOUR;
    let post = |s: &Summary| seal(s, &recipient, &key).unwrap().encode();

    // First upload, then the same again (a retry, or the other leader): stored once.
    let s1 = summary("shop-1", p, vv(&[("a", 3)]), 10);
    let ack = client.post(post(&s1)).await.unwrap();
    assert_eq!((ack.status.as_str(), &ack.stored_vv), ("stored", &s1.vv));
    assert_eq!(client.post(post(&s1)).await.unwrap().status, "unchanged");
    // Later state of the log: replaces.
    let s2 = summary("shop-1", p, vv(&[("a", 5)]), 12);
    assert_eq!(client.post(post(&s2)).await.unwrap().status, "replaced");
    // The old one replayed: refused as stale, HQ says what it holds.
    let replay = client.post(post(&s1)).await.unwrap();
    assert_eq!((replay.status.as_str(), &replay.stored_vv), ("stale", &s2.vv));
    assert_eq!(stored(&state, "shop-1").await, vec![s2.clone()]);

    // Two sides of a partition: the tie-break keeps the same one whatever the order.
    let left = summary("shop-1", p, vv(&[("a", 5), ("b", 1)]), 13);
    let right = summary("shop-1", p, vv(&[("a", 4), ("c", 9)]), 14);
    client.post(post(&left)).await.unwrap();
    let second = client.post(post(&right)).await.unwrap();
    assert_eq!(second.status, "concurrent_replaced", "more records win the tie-break");
    let again = client.post(post(&left)).await.unwrap();
    assert_eq!(
        (again.status.as_str(), &again.stored_vv),
        ("concurrent_kept", &right.vv)
    );
    // The merged log dominates both.
    let merged = summary("shop-1", p, vv(&[("a", 5), ("b", 1), ("c", 9)]), 15);
    assert_eq!(client.post(post(&merged)).await.unwrap().status, "replaced");

    // Hostile and broken uploads: refused with their own status, nothing changes.
    let before = stored(&state, "shop-1").await;
    let newer = summary("shop-1", p, vv(&[("a", 99), ("b", 1), ("c", 9)]), 999);
    let mut tampered = seal(&newer, &recipient, &key).unwrap();
    let n = tampered.ciphertext.len();
    tampered.ciphertext[n / 2] ^= 0x40;
    assert_eq!(refused(&client, tampered.encode()).await, (401, "bad_signature".into()));
    let mut relabelled = seal(&newer, &recipient, &key).unwrap();
    relabelled.period_start_ms += HOUR;
    assert_eq!(
        refused(&client, relabelled.encode()).await,
        (401, "bad_signature".into())
    );
    let stranger = Keypair::generate_ed25519();
    assert_eq!(
        refused(&client, seal(&newer, &recipient, &stranger).unwrap().encode()).await,
        (401, "bad_signature".into())
    );
    let unknown = summary("shop-404", p, vv(&[("a", 1)]), 1);
    assert_eq!(refused(&client, post(&unknown)).await, (403, "unknown_store".into()));
    let elsewhere = age::x25519::Identity::generate().to_public();
    assert_eq!(
        refused(&client, seal(&newer, &elsewhere, &key).unwrap().encode()).await,
        (422, "undecryptable".into())
    );
    let mut huge = summary("shop-1", p, vv(&[("a", 100)]), 1);
    huge.footfall = (0..999)
        .map(|i| LineCount {
            camera: format!("camera-{i:04}-with-a-long-name-to-take-room"),
            line: "l".repeat(90),
            entered: 1,
            left: 1,
        })
        .collect();
    assert_eq!(refused(&client, post(&huge)).await, (413, "too_large".into()));
    assert_eq!(refused(&client, vec![1, 0xff, 0x00]).await, (400, "malformed".into()));
    assert_eq!(refused(&client, Vec::new()).await, (400, "malformed".into()));
    assert_eq!(stored(&state, "shop-1").await, before, "nothing refused was stored");
    let rejected = state.metrics.rejections();
    assert_eq!(rejected.get("bad_signature"), Some(&3));
    assert_eq!(rejected.get("unknown_store"), Some(&1));
    assert_eq!(rejected.get("undecryptable"), Some(&1));
    assert_eq!(rejected.get("too_large"), Some(&1));
    assert_eq!(rejected.get("malformed"), Some(&2));
    let metrics = state.metrics.prometheus().unwrap();
    assert!(
        metrics.contains("lpmesh_hq_rejected_total{reason=\"bad_signature\"} 3"),
        "{metrics}"
    );

    // Many uploads of one period at once (leaders racing): HQ ends with the newest, once.
    let q = p + HOUR;
    let mut tasks = Vec::new();
    for k in 1..=20u64 {
        let body = post(&summary("shop-1", q, vv(&[("a", k)]), k));
        let c = client.clone();
        tasks.push(tokio::spawn(async move { c.post(body).await }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let all = stored(&state, "shop-1").await;
    assert_eq!(all.len(), 2, "one summary per period");
    assert_eq!(all[1].vv, vv(&[("a", 20)]));
    let rows = state.store.stores().await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].periods, 2);
    assert!(rows[0].last_sync_ms.is_some());

    running.shutdown(Duration::from_secs(2)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store() {
    let dir = temp_dir("embedded");
    suite(HqStore::Embedded(Embedded::open(&dir).unwrap())).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_store() {
    let pg = tokio::task::spawn_blocking(TestPg::start).await.unwrap().unwrap();
    let store = HqStore::Postgres(Postgres::connect(&pg.url(), 4).await.unwrap());
    suite(store).await;
    // Migrations run once: a second HQ process on the same database starts cleanly.
    let again = Postgres::connect(&pg.url(), 1).await.unwrap();
    assert_eq!(HqStore::Postgres(again).stores().await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_registered_while_hq_runs_are_accepted() {
    let dir = temp_dir("register");
    let embedded = Embedded::open(&dir).unwrap();
    let key = Keypair::generate_ed25519();
    let text = store_key_to_string(&key.public()).unwrap();
    assert!(lpmesh_hq::store::register_in_file(&dir, "s", "ed25519:nope", 0).is_err());
    // What `lpmesh hq register-store` does while HQ holds the database open.
    lpmesh_hq::store::register_in_file(&dir, "late-store", &text, 0).unwrap();
    let store = HqStore::Embedded(embedded);
    assert_eq!(store.store_key("late-store").await.unwrap(), Some(text));
    let _ = std::fs::remove_dir_all(&dir);
}
