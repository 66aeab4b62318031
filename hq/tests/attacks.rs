//! Attacks on HQ over its real HTTPS listener, each refused: oversized and endless uploads, broken and
//! forged envelopes, uploads in a crowd of garbage, traversal and SQL in the dashboard's store ids (on
//! PostgreSQL), bad export ranges, huge request heads, and the counters that must show all of it. The
//! dashboard's routes are reached on its own listener, logged in through the real form; the upload
//! listener serves none of them.
//! What `receiver.rs` already proves (each refusal's status once, the tie-break) is not repeated.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Bytes, Frame};
use libp2p_identity::Keypair;
use lpmesh_hq::client::{ClientError, HqClient};
use lpmesh_hq::envelope::{seal, store_key_to_string, Envelope};
use lpmesh_hq::server::{serve, serve_dashboard, HqState, Running};
use lpmesh_hq::store::{Embedded, Filter, HqStore, Postgres, StoredSummary};
use lpmesh_hq::summary::{LineCount, Summary};
use lpmesh_hq::testpg::TestPg;
use lpmesh_hq::vv::VersionVector;
use serde::Serialize;

const HOUR: i64 = 3_600_000;
const LIMIT: usize = 64 * 1024;
/// What the receiver reads of an oversized body before it answers (server.rs `DRAIN_LIMIT`).
const DRAIN: usize = 8 * 1024 * 1024;
const STORES: [&str; 2] = ["shop-1", "shop-2"];

struct Hq {
    state: Arc<HqState>,
    _running: Running,
    _dashboard: Running,
    /// The upload listener.
    addr: SocketAddr,
    /// The dashboard listener, and an admin's session cookie there.
    dash: SocketAddr,
    cookie: String,
    tls: Arc<rustls::ClientConfig>,
    client: HqClient,
    recipient: age::x25519::Recipient,
    /// The signing keys of `STORES`, in order.
    keys: [Keypair; 2],
    dir: PathBuf,
    _pg: Option<TestPg>,
}

impl Drop for Hq {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn temp_dir() -> PathBuf {
    // The fixture that holds it removes it when it drops.
    lpmesh_testkit::TempDir::new("hq-attacks").into_path()
}

async fn embedded() -> Hq {
    let dir = temp_dir();
    start(HqStore::Embedded(Embedded::open(&dir.join("db")).unwrap()), dir, None).await
}

async fn postgres() -> Hq {
    let pg = tokio::task::spawn_blocking(TestPg::start).await.unwrap().unwrap();
    let store = HqStore::Postgres(Postgres::connect(&pg.url(), 4).await.unwrap());
    start(store, temp_dir(), Some(pg)).await
}

async fn start(store: HqStore, dir: PathBuf, pg: Option<TestPg>) -> Hq {
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public();
    let keys = [Keypair::generate_ed25519(), Keypair::generate_ed25519()];
    for (name, key) in STORES.iter().zip(&keys) {
        store
            .register_store(name, &store_key_to_string(&key.public()).unwrap(), 0)
            .await
            .unwrap();
    }
    let cert = lpmesh_hq::tls::load_or_create_cert(&dir.join("tls"), None, None, &["localhost".into()]).unwrap();
    let state = HqState::new(store, identity, LIMIT);
    let running = serve(
        state.clone(),
        "127.0.0.1:0".parse().unwrap(),
        cert.cert_pem.clone(),
        cert.key_pem.clone(),
    )
    .await
    .unwrap();
    let addr = running.addr;
    let dashboard = serve_dashboard(
        state.clone(),
        "127.0.0.1:0".parse().unwrap(),
        cert.cert_pem.clone(),
        cert.key_pem.clone(),
    )
    .await
    .unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    let admin =
        lpmesh_hq::access::new_user("ana", lpmesh_hq::access::HqRole::Admin, vec![], ADMIN_PASSWORD, now).unwrap();
    state.store.put_user(admin).await.unwrap();
    let tls = tls_config(&cert.cert_pem);
    let cookie = login(dashboard.addr, &tls, "ana", ADMIN_PASSWORD)
        .await
        .expect("the admin logs in");
    let client = HqClient::new(
        &format!("https://localhost:{}", addr.port()),
        Some(&cert.cert_path),
        Duration::from_secs(20),
    )
    .unwrap();
    client.probe().await.unwrap();
    Hq {
        state,
        _running: running,
        dash: dashboard.addr,
        _dashboard: dashboard,
        cookie,
        addr,
        tls,
        client,
        recipient,
        keys,
        dir,
        _pg: pg,
    }
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

impl Hq {
    /// `summary` sealed by store `i` (an index into `STORES`).
    fn sealed(&self, i: usize, s: &Summary) -> Envelope {
        seal(s, &self.recipient, &self.keys[i]).unwrap()
    }

    async fn stored(&self) -> Vec<StoredSummary> {
        self.state.store.summaries(&Filter::default()).await.unwrap()
    }

    async fn refused(&self, body: Vec<u8>) -> (u16, String) {
        match self.client.post(body).await {
            Err(ClientError::Refused { status, error, .. }) => (status, error),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    async fn metrics(&self) -> String {
        let (status, body) = self.get("/metrics").await;
        assert_eq!(status, 200);
        body
    }

    /// A GET on the dashboard listener, logged in as the admin.
    async fn get(&self, target: &str) -> (u16, String) {
        let head = format!(
            "GET {target} HTTP/1.1\r\nHost: localhost\r\nCookie: {}\r\nConnection: close\r\n\r\n",
            self.cookie
        );
        self.exchange(head.into_bytes()).await
    }

    /// A GET on the upload listener, with the admin's cookie all the same.
    async fn get_upload(&self, target: &str) -> (u16, String) {
        let head = format!(
            "GET {target} HTTP/1.1\r\nHost: localhost\r\nCookie: {}\r\nConnection: close\r\n\r\n",
            self.cookie
        );
        let (status, _, body) = raw(self.addr, self.tls.clone(), head.into_bytes()).await;
        (status, body)
    }

    async fn post_raw(&self, body: &[u8]) -> (u16, String) {
        let mut req = format!(
            "POST /api/v1/summaries HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/octet-stream\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        let (status, _, body) = raw(self.addr, self.tls.clone(), req).await;
        (status, body)
    }

    /// Raw bytes to the dashboard listener: (status, body).
    async fn exchange(&self, request: Vec<u8>) -> (u16, String) {
        let (status, _, body) = raw(self.dash, self.tls.clone(), request).await;
        (status, body)
    }
}

const ADMIN_PASSWORD: &str = "a long admin password";

/// Logs in through the dashboard's form; the session cookie (`name=value`), if it worked.
async fn login(dash: SocketAddr, tls: &Arc<rustls::ClientConfig>, name: &str, password: &str) -> Option<String> {
    let form = format!("name={name}&password={}", password.replace(' ', "+"));
    let req = format!(
        "POST /login HTTP/1.1\r\nHost: localhost:{port}\r\nOrigin: https://localhost:{port}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}",
        form.len(),
        port = dash.port()
    );
    let (status, head, _) = raw(dash, tls.clone(), req.into_bytes()).await;
    if status != 303 {
        return None;
    }
    head.lines()
        .find_map(|l| {
            l.strip_prefix("set-cookie: ")
                .or_else(|| l.strip_prefix("Set-Cookie: "))
        })
        .and_then(|c| c.split(';').next())
        .map(str::to_string)
}

/// Writes raw bytes over TLS and reads the answer: (status, head, body); status 0 if the server
/// closed without one.
async fn raw(addr: SocketAddr, tls: Arc<rustls::ClientConfig>, request: Vec<u8>) -> (u16, String, String) {
    tokio::task::spawn_blocking(move || {
        let mut s = connect(addr, &tls);
        // The server may answer and close before it read everything (that is the point of some).
        let _ = s.write_all(&request).and_then(|_| s.flush());
        let mut out = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .map(|(h, b)| (h.to_string(), b.to_string()))
            .unwrap_or_default();
        (status, head, body)
    })
    .await
    .unwrap()
}

fn tls_config(cert_pem: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &cert_pem[..]) {
        roots.add(c.unwrap()).unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>;

fn connect(addr: SocketAddr, tls: &Arc<rustls::ClientConfig>) -> Tls {
    let tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    rustls::StreamOwned::new(rustls::ClientConnection::new(tls.clone(), name).unwrap(), tcp)
}

fn counter(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

fn rejected(metrics: &str, reason: &str) -> u64 {
    counter(metrics, &format!("lpmesh_hq_rejected_total{{reason=\"{reason}\"}}"))
}

fn error_of(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body).unwrap()["error"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_oversized_or_endless_upload_is_cut_off_and_the_next_good_upload_is_stored() {
    let hq = embedded().await;
    let garbage = |n: usize| (0..n).map(|_| rand::random::<u8>()).collect::<Vec<u8>>();
    let (s, b) = hq.post_raw(&garbage(LIMIT + 1)).await;
    assert_eq!((s, error_of(&b).as_str()), (413, "too_large"));
    // At the limit it is read and judged: the limit is the body's size.
    let mut at_limit = garbage(LIMIT);
    at_limit[0] = 1;
    let (s, b) = hq.post_raw(&at_limit).await;
    assert_eq!((s, error_of(&b).as_str()), (400, "malformed"));

    // A chunked body that never ends: HQ stops reading after its drain limit and answers, or
    // drops the connection; either way the sender is not read from forever.
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config((*hq.tls).clone())
        .https_only()
        .enable_http1()
        .build();
    let raw: hyper_util::client::legacy::Client<_, http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(https);
    let sent = Arc::new(AtomicUsize::new(0));
    let counted = sent.clone();
    let endless = futures::stream::repeat_with(move || {
        counted.fetch_add(64 * 1024, Ordering::Relaxed);
        Ok::<_, std::io::Error>(Frame::data(Bytes::from(vec![0x41u8; 64 * 1024])))
    });
    let req = hyper::Request::post(format!("https://localhost:{}/api/v1/summaries", hq.addr.port()))
        .header(hyper::header::CONTENT_TYPE, "application/octet-stream")
        .body(StreamBody::new(endless).boxed_unsync())
        .unwrap();
    let started = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(20), raw.request(req))
        .await
        .expect("HQ kept reading an endless body");
    let how = match answer {
        Ok(resp) => {
            assert_eq!(resp.status(), 413);
            "413".to_string()
        }
        Err(e) => format!("a closed connection ({e})"),
    };
    let sent = sent.load(Ordering::Relaxed);
    assert!((DRAIN..=DRAIN + (16 << 20)).contains(&sent), "sent {sent} bytes");
    eprintln!("endless upload: {how} after {sent} bytes in {:?}", started.elapsed());

    let good = summary("shop-1", 490_000 * HOUR, vv(&[("a", 1)]), 7);
    let ack = hq.client.post(hq.sealed(0, &good).encode()).await.unwrap();
    assert_eq!(ack.status, "stored");
    let m = hq.metrics().await;
    assert_eq!((rejected(&m, "too_large"), rejected(&m, "malformed")), (2, 1), "{m}");
    assert_eq!(hq.stored().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_reversioned_and_malformed_envelopes_are_refused_as_malformed() {
    let hq = embedded().await;
    let p = 490_000 * HOUR;
    let wire = hq.sealed(0, &summary("shop-1", p, vv(&[("a", 1)]), 1)).encode();
    let mut bad: Vec<(String, Vec<u8>)> = Vec::new();
    for cut in [1, 2, 9, wire.len() / 2, wire.len() - 1] {
        bad.push((format!("cut at {cut}"), wire[..cut].to_vec()));
    }
    for v in [0u8, 2, 0x7f, 0xff] {
        let mut w = wire.clone();
        w[0] = v;
        bad.push((format!("version {v}"), w));
    }
    // CBOR that is well-formed but not an envelope, or built to exhaust the decoder.
    let mut value: ciborium::Value = ciborium::from_reader(&wire[1..]).unwrap();
    if let ciborium::Value::Map(m) = &mut value {
        m.push(("admin".into(), true.into()));
    }
    let mut extra = vec![1u8];
    ciborium::into_writer(&value, &mut extra).unwrap();
    bad.push(("an unknown field".into(), extra));
    let mut nested = vec![1u8];
    nested.extend(std::iter::repeat_n(0x81u8, 50_000));
    bad.push(("arrays nested 50000 deep".into(), nested));
    let mut huge_len = vec![1u8, 0xa1, 0x65];
    huge_len.extend_from_slice(b"store");
    huge_len.extend_from_slice(&[0x7b, 0x3f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
    bad.push(("a string claiming 2^62 bytes".into(), huge_len));
    let mut long_name = hq.sealed(0, &summary("shop-1", p, vv(&[("a", 1)]), 1));
    long_name.store = "s".repeat(97);
    bad.push(("a 97-byte store name".into(), long_name.encode()));
    let mut bad_vv = hq.sealed(0, &summary("shop-1", p, vv(&[("a", 1)]), 1));
    bad_vv.vv = vv(&[("no/slash", 1)]);
    bad.push(("a bad version vector key".into(), bad_vv.encode()));

    let n = bad.len() as u64;
    for (what, body) in bad {
        let (s, b) = hq.post_raw(&body).await;
        assert_eq!((s, error_of(&b).as_str()), (400, "malformed"), "{what}");
    }
    assert!(hq.stored().await.is_empty());
    let m = hq.metrics().await;
    assert_eq!(rejected(&m, "malformed"), n, "{m}");
    // The server is none the worse: the intact envelope is stored.
    assert_eq!(hq.client.post(wire).await.unwrap().status, "stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_old_envelope_is_refused_as_stale_and_changes_nothing() {
    let hq = embedded().await;
    let p = 490_000 * HOUR;
    let old = hq.sealed(0, &summary("shop-1", p, vv(&[("a", 3)]), 10)).encode();
    let new = summary("shop-1", p, vv(&[("a", 5)]), 12);
    let new_wire = hq.sealed(0, &new).encode();
    assert_eq!(hq.client.post(old.clone()).await.unwrap().status, "stored");
    assert_eq!(hq.client.post(new_wire.clone()).await.unwrap().status, "replaced");
    let before = hq.stored().await;
    assert_eq!(before[0].updates, 2);
    tokio::time::sleep(Duration::from_millis(5)).await;

    // The exact bytes once sent, captured and sent again.
    let (s, body) = hq.post_raw(&old).await;
    assert_eq!(s, 409);
    let ack: lpmesh_hq::server::Ack = serde_json::from_str(&body).unwrap();
    assert_eq!((ack.status.as_str(), &ack.stored_vv), ("stale", &new.vv));
    // The current one again: a no-op, not an update.
    let (s, body) = hq.post_raw(&new_wire).await;
    assert_eq!(s, 200);
    assert!(body.contains("\"unchanged\""), "{body}");
    assert_eq!(
        hq.stored().await,
        before,
        "summary, received time and update count are unchanged"
    );
    let m = hq.metrics().await;
    assert_eq!(counter(&m, "lpmesh_hq_summaries_total{outcome=\"stale\"}"), 1, "{m}");
    assert_eq!(
        counter(&m, "lpmesh_hq_summaries_total{outcome=\"unchanged\"}"),
        1,
        "{m}"
    );
}

/// What an envelope's signature covers (envelope.rs `signed_bytes`), to build envelopes a store
/// could really sign.
#[derive(Serialize)]
struct Signed<'a> {
    store: &'a str,
    period_start_ms: i64,
    period_secs: u32,
    vv: &'a VersionVector,
    #[serde(with = "serde_bytes")]
    ciphertext: &'a [u8],
}

fn sign(env: &mut Envelope, key: &Keypair) {
    let mut bytes = b"lpmesh/hq-envelope/1".to_vec();
    bytes.push(lpmesh_hq::envelope::ENVELOPE_VERSION);
    let s = Signed {
        store: &env.store,
        period_start_ms: env.period_start_ms,
        period_secs: env.period_secs,
        vv: &env.vv,
        ciphertext: &env.ciphertext,
    };
    ciborium::into_writer(&s, &mut bytes).unwrap();
    env.signature = key.sign(&bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_cannot_write_another_stores_figures() {
    let hq = embedded().await;
    let p = 490_000 * HOUR;
    let genuine = summary("shop-1", p, vv(&[("a", 2)]), 5);
    assert_eq!(
        hq.client.post(hq.sealed(0, &genuine).encode()).await.unwrap().status,
        "stored"
    );
    let before = hq.stored().await;
    let forged = summary("shop-1", p, vv(&[("a", 99)]), 100_000);

    // shop-2 (index 1) signs a summary that names shop-1.
    let as_shop_1 = hq.sealed(1, &forged);
    assert_eq!(hq.refused(as_shop_1.encode()).await, (401, "bad_signature".into()));
    // shop-2's own envelope relabelled, and then re-signed by shop-2.
    let mut relabelled = hq.sealed(1, &summary("shop-2", p, vv(&[("a", 99)]), 100_000));
    relabelled.store = "shop-1".into();
    assert_eq!(hq.refused(relabelled.encode()).await, (401, "bad_signature".into()));
    sign(&mut relabelled, &hq.keys[1]);
    assert_eq!(hq.refused(relabelled.encode()).await, (401, "bad_signature".into()));
    // Signed correctly as shop-2, but carrying shop-1's figures inside: caught once decrypted.
    let mut smuggled = hq.sealed(1, &summary("shop-2", p, vv(&[("a", 99)]), 1));
    smuggled.ciphertext = hq.sealed(1, &forged).ciphertext;
    sign(&mut smuggled, &hq.keys[1]);
    assert_eq!(hq.refused(smuggled.encode()).await, (422, "bad_summary".into()));
    // Names close to a registered one are other stores, and unregistered: refused before any
    // signature or decryption work (garbage ciphertext and signature still get 403).
    for name in ["Shop-1", "shop-1 ", " shop-1", "shop-1\n", "shop_1", "shop-3"] {
        let mut e = hq.sealed(1, &summary("shop-2", p, vv(&[("a", 1)]), 1));
        e.store = name.into();
        e.ciphertext = vec![0; 64];
        e.signature = vec![0; 64];
        // A control character is never in a store name: malformed before any lookup.
        let want = if name.chars().any(char::is_control) {
            (400, "malformed".into())
        } else {
            (403, "unknown_store".into())
        };
        assert_eq!(hq.refused(e.encode()).await, want, "{name:?}");
    }
    assert_eq!(hq.stored().await, before, "shop-1's figures are its own");
    // The signing replica above is right: the same construction by shop-1 itself is accepted.
    let mut own = hq.sealed(0, &summary("shop-1", p, vv(&[("a", 3)]), 6));
    sign(&mut own, &hq.keys[0]);
    assert_eq!(hq.client.post(own.encode()).await.unwrap().status, "replaced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn a_crowd_of_concurrent_garbage_uploads_does_not_disturb_good_ones() {
    let hq = embedded().await;
    let base = 490_000 * HOUR;
    let mut jobs: Vec<(Option<&'static str>, Vec<u8>)> = Vec::new();
    let mut good = Vec::new();
    for i in 0..20 {
        let s = summary(
            STORES[i % 2],
            base + i as i64 * HOUR,
            vv(&[("a", 1 + i as u64)]),
            i as u64,
        );
        jobs.push((None, hq.sealed(i % 2, &s).encode()));
        good.push(s);
    }
    for i in 0..200usize {
        let s = summary("shop-1", base + (i % 20) as i64 * HOUR, vv(&[("a", 1000)]), 999);
        let (reason, body) = match i % 5 {
            0 => ("malformed", (0..1 + i * 7).map(|_| rand::random::<u8>()).collect()),
            1 => ("too_large", vec![1u8; LIMIT + 1 + i]),
            2 => ("malformed", hq.sealed(0, &s).encode()[..40 + i].to_vec()),
            3 => {
                let mut e = hq.sealed(0, &s);
                e.ciphertext[10] ^= 1;
                ("bad_signature", e.encode())
            }
            _ => (
                "unknown_store",
                hq.sealed(0, &summary("shop-9", s.period_start_ms, s.vv.clone(), 1))
                    .encode(),
            ),
        };
        // The random ones could by chance start with the version byte; they are malformed either way.
        jobs.push((Some(reason), body));
    }
    // Mixed, so good uploads land among the garbage.
    let n = jobs.len();
    for i in 0..n {
        jobs.swap(i, rand::random::<usize>() % n);
    }
    let mut tasks = Vec::new();
    for (expect, body) in jobs {
        let c = hq.client.clone();
        tasks.push(tokio::spawn(async move { (expect, c.post(body).await) }));
    }
    let mut counts = std::collections::BTreeMap::new();
    for t in tasks {
        match t.await.unwrap() {
            (None, r) => assert_eq!(r.unwrap().status, "stored"),
            (Some(reason), Err(ClientError::Refused { error, .. })) => {
                assert_eq!(error, reason);
                *counts.entry(reason).or_insert(0u64) += 1;
            }
            (Some(reason), other) => panic!("{reason}: {other:?}"),
        }
    }
    let stored: Vec<Summary> = hq.stored().await.into_iter().map(|s| s.summary).collect();
    let mut expect = good.clone();
    expect.sort_by(|a, b| (&a.store, a.period_start_ms).cmp(&(&b.store, b.period_start_ms)));
    assert_eq!(stored, expect, "exactly the good uploads, untouched");
    let m = hq.metrics().await;
    for (reason, n) in &counts {
        assert_eq!(rejected(&m, reason), *n, "{reason}: {m}");
    }
    assert_eq!(counter(&m, "lpmesh_hq_envelopes_received_total"), 220);
    assert_eq!(counter(&m, "lpmesh_hq_summaries_total{outcome=\"stored\"}"), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_ids_with_traversal_or_sql_reach_no_other_store_on_postgresql() {
    let hq = postgres().await;
    let p = 490_000 * HOUR;
    let now = chrono::Utc::now().timestamp_millis();
    let recent = now - now.rem_euclid(HOUR) - HOUR;
    for (i, footfall) in [(0, 4242u64), (1, 1717)] {
        for period in [p, recent] {
            let s = summary(STORES[i], period, vv(&[("a", 1)]), footfall);
            hq.client.post(hq.sealed(i, &s).encode()).await.unwrap();
        }
    }
    let before = hq.stored().await;
    assert_eq!(before.len(), 4);
    let (s, page) = hq.get("/stores/shop-1").await;
    assert_eq!(s, 200);
    assert!(
        page.contains("4242") && !page.contains("1717"),
        "the page itself is right"
    );

    for id in [
        "../shop-1",
        "..%2Fshop-1",
        "%2e%2e%2fshop-1",
        "%252e%252e%252fshop-1",
        "shop-2%2F..%2Fshop-1",
        "shop-2/../shop-1",
        "shop-2%5C..%5Cshop-1",
        "shop-2\\..\\shop-1",
        "shop-1%2F",
        "shop-1%00",
        "shop-1%20",
        "SHOP-1",
        "%2Fshop-1",
        "%27%20OR%201%3D1%20--",
        "shop-1%27%20OR%20%271%27%3D%271",
        "shop-1%27--",
        "shop-1%3B%20DROP%20TABLE%20stores%3B--",
        "%25",
        "%",
        "%ff",
        "shop-%",
        "",
    ] {
        let (s, body) = hq.get(&format!("/stores/{id}")).await;
        assert!(s == 404 || s == 400, "/stores/{id}: {s}");
        assert!(
            !body.contains("4242") && !body.contains("1717") && !body.contains("Periods from"),
            "/stores/{id} showed a store: {body}"
        );
    }
    // The page's own query cannot widen it to another store either.
    let (_, body) = hq.get("/stores/shop-1?store=shop-2").await;
    assert!(!body.contains("1717"));
    for store in [
        "%27%20OR%201%3D1%20--",
        "shop-1%27%20OR%20%271%27%3D%271",
        "shop-1%27%3B%20DELETE%20FROM%20summaries%3B--",
        "%25",
        "shop-_",
        "shop-1%20",
    ] {
        let (s, csv) = hq.get(&format!("/export.csv?store={store}")).await;
        assert_eq!(s, 200, "{store}");
        assert_eq!(csv.lines().count(), 1, "store={store} exported rows: {csv}");
        let (s, json) = hq.get(&format!("/export.json?store={store}")).await;
        assert_eq!((s, json.as_str()), (200, "{\"summaries\":[],\"next\":null}"), "{store}");
    }
    assert_eq!(hq.stored().await, before, "nothing was changed through an id");
    assert_eq!(hq.state.store.stores().await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_export_ranges_are_refused_with_400_not_500() {
    let hq = postgres().await;
    let s = summary("shop-1", 490_000 * HOUR, vv(&[("a", 1)]), 3);
    hq.client.post(hq.sealed(0, &s).encode()).await.unwrap();
    let long = "1".repeat(2000);
    let values = [
        "abc",
        "yesterday",
        "9223372036854775808",
        "-9223372036854775809",
        "9223372036854775807",
        "-9223372036854775808",
        "8210266876800000",
        "1e12",
        "0x10",
        "NaN",
        "2024-13-01T00:00:00Z",
        "2024-02-30T00:00:00Z",
        "2024-01-01",
        "2024-01-01T00:00:00",
        "%00",
        "%ff%fe",
        "%27%20OR%201%3D1--",
        long.as_str(),
    ];
    for path in ["/export.csv", "/export.json", "/stores/shop-1"] {
        for field in ["from", "to"] {
            for v in values {
                let (status, body) = hq.get(&format!("{path}?{field}={v}")).await;
                assert_eq!(status, 400, "{path}?{field}={v}: {body}");
                assert!(body.contains(&format!("`{field}`")), "{path}?{field}={v}: {body}");
            }
        }
        // Repeated parameters are refused by the query parser, also as a client error.
        for q in ["from=1&from=2", "to=1&to=2", "store=a&store=b"] {
            let (status, _) = hq.get(&format!("{path}?{q}")).await;
            assert_eq!(status, 400, "{path}?{q}");
        }
        // The largest time there is, and an empty range, are fine.
        let (status, _) = hq.get(&format!("{path}?from=8210266876799999&to=0")).await;
        assert_eq!(status, 200, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_query_strings_and_request_heads_are_refused() {
    let hq = embedded().await;
    // Beyond the longest URI the HTTP layer takes.
    let (s, _) = hq.get(&format!("/export.csv?store={}", "a".repeat(70_000))).await;
    assert_eq!(s, 414);
    let (s, _) = hq.get(&format!("/stores/{}", "a".repeat(70_000))).await;
    assert_eq!(s, 414);
    // Beyond the request head's buffer: refused, or the connection dropped, never served. hyper's
    // ~400 KiB head limit is soft (one read may overshoot it; a 500 KB header was served at times),
    // so these are well past it.
    let (s, _) = hq.get(&format!("/export.json?from={}", "1".repeat(1 << 20))).await;
    assert!(s == 414 || s == 431 || s == 0, "1 MiB query: {s}");
    let big_header = format!(
        "GET /export.csv HTTP/1.1\r\nHost: localhost\r\nX-Pad: {}\r\nConnection: close\r\n\r\n",
        "p".repeat(4 << 20)
    );
    let (s, _) = hq.exchange(big_header.into_bytes()).await;
    assert!(s == 431 || s == 0, "4 MiB header: {s}");
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let (s, _) = hq
        .exchange(
            format!("GET /export.csv HTTP/1.1\r\nHost: localhost\r\n{many}Connection: close\r\n\r\n").into_bytes(),
        )
        .await;
    assert_eq!(s, 431, "200 headers");
    // Still serving, and none of it reached the handlers.
    assert_eq!(hq.get("/health").await, (200, "ok\n".to_string()));
    let (s, csv) = hq.get("/export.csv").await;
    assert_eq!((s, csv.lines().count()), (200, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_every_refusal_by_reason() {
    let hq = embedded().await;
    let p = 490_000 * HOUR;
    let before = hq.metrics().await;
    let old = summary("shop-1", p, vv(&[("a", 1)]), 1);
    hq.client.post(hq.sealed(0, &old).encode()).await.unwrap();
    hq.client
        .post(hq.sealed(0, &summary("shop-1", p, vv(&[("a", 2)]), 2)).encode())
        .await
        .unwrap();
    let mut unsigned = hq.sealed(0, &summary("shop-1", p, vv(&[("a", 3)]), 3));
    unsigned.signature = vec![0; 64];
    let mut long_name = summary("shop-1", p, vv(&[("a", 3)]), 3);
    long_name.footfall[0].camera = "c".repeat(200);
    let misaligned = summary("shop-1", p + 1, vv(&[("a", 3)]), 3);
    let elsewhere = age::x25519::Identity::generate().to_public();
    let attacks: Vec<(&str, Vec<u8>)> = vec![
        ("too_large", vec![1u8; LIMIT * 2]),
        ("malformed", vec![9u8, 1, 2, 3]),
        ("malformed", Vec::new()),
        (
            "unknown_store",
            hq.sealed(0, &summary("shop-7", p, vv(&[("a", 1)]), 1)).encode(),
        ),
        ("bad_signature", unsigned.encode()),
        ("undecryptable", seal(&old, &elsewhere, &hq.keys[0]).unwrap().encode()),
        ("bad_summary", hq.sealed(0, &long_name).encode()),
        ("misaligned_period", hq.sealed(0, &misaligned).encode()),
    ];
    for (reason, body) in &attacks {
        let (_, b) = hq.post_raw(body).await;
        assert_eq!(error_of(&b), *reason);
    }
    let (s, _) = hq.post_raw(&hq.sealed(0, &old).encode()).await;
    assert_eq!(s, 409);
    let after = hq.metrics().await;
    for reason in [
        "too_large",
        "malformed",
        "unknown_store",
        "bad_signature",
        "undecryptable",
        "bad_summary",
        "misaligned_period",
    ] {
        let sent = attacks.iter().filter(|a| a.0 == reason).count() as u64;
        assert_eq!(
            rejected(&after, reason) - rejected(&before, reason),
            sent,
            "{reason}: {after}"
        );
    }
    assert_eq!(rejected(&after, "storage"), 0);
    let outcome = |m: &str, o: &str| counter(m, &format!("lpmesh_hq_summaries_total{{outcome=\"{o}\"}}"));
    assert_eq!(
        (
            outcome(&after, "stored"),
            outcome(&after, "replaced"),
            outcome(&after, "stale")
        ),
        (1, 1, 1)
    );
    let received = |m: &str| counter(m, "lpmesh_hq_envelopes_received_total");
    assert_eq!(received(&after) - received(&before), 2 + attacks.len() as u64 + 1);
    // Served as Prometheus text, with its type lines.
    assert!(after.contains("# TYPE lpmesh_hq_rejected_total counter"), "{after}");
}

/// Whoever holds a store's key (every member of the store does) signs envelopes HQ must take as the
/// store's; it must not be able to pin the store: a period far ahead, or a version vector entry no
/// node could have reached, would make HQ refuse the store's real summaries as stale for ever.
async fn a_store_key_cannot_pin_the_store(hq: Hq) {
    let now = chrono::Utc::now().timestamp_millis();
    let p = now - now.rem_euclid(HOUR);
    let day = now - now.rem_euclid(24 * HOUR);
    let send = |s: &Summary| hq.sealed(0, s).encode();
    // The store's real last period: HQ now knows its period length and node a's frontier.
    let real = summary("shop-1", p - HOUR, vv(&[("a", 40)]), 3);
    assert_eq!(hq.client.post(send(&real)).await.unwrap().status, "stored");
    let before = hq.stored().await;

    let forged = |period: i64, v: VersionVector| summary("shop-1", period, v, 1_000_000);
    let mut attacks: Vec<(&str, Summary)> = vec![
        ("future_period", forged(p + 24 * 365 * HOUR, vv(&[("a", 41)]))),
        // Two periods ahead (three, so that the hour turning during the test changes nothing).
        ("future_period", forged(p + 3 * HOUR, vv(&[("a", 41)]))),
        ("implausible_vv", forged(p, vv(&[("a", u64::MAX - 1)]))),
        // A made-up node that would win every tie-break.
        ("implausible_vv", forged(p, vv(&[("a", 41), ("zz", 1 << 39)]))),
        // Entries whose sum overflows u64: refused, and nothing panics on the way.
        ("implausible_vv", forged(p, vv(&[("a", u64::MAX), ("b", u64::MAX)]))),
    ];
    // A day-long period starting at midnight would take the key of the hour starting at midnight.
    let mut daily = forged(day, vv(&[("a", 41)]));
    daily.period_secs = 86_400;
    attacks.push(("period_length", daily));
    for (reason, s) in &attacks {
        let (status, body) = hq.post_raw(&send(s)).await;
        assert_eq!((status, error_of(&body).as_str()), (422, *reason), "{body}");
    }
    assert_eq!(hq.stored().await, before, "nothing impossible was stored");
    let m = hq.metrics().await;
    for reason in ["future_period", "implausible_vv", "period_length"] {
        let sent = attacks.iter().filter(|a| a.0 == reason).count() as u64;
        assert_eq!(rejected(&m, reason), sent, "{reason}: {m}");
    }

    // The store's real summaries go on being taken: this period, then its growth.
    let current = summary("shop-1", p, vv(&[("a", 55), ("b", 3)]), 4);
    assert_eq!(hq.client.post(send(&current)).await.unwrap().status, "stored");
    let grown = summary("shop-1", p, vv(&[("a", 70), ("b", 9)]), 6);
    assert_eq!(hq.client.post(send(&grown)).await.unwrap().status, "replaced");
    // The next period is fine too (a node clock a little ahead).
    let next = summary("shop-1", p + HOUR, vv(&[("a", 70), ("b", 9)]), 0);
    assert_eq!(hq.client.post(send(&next)).await.unwrap().status, "stored");
    let held: Vec<Summary> = hq.stored().await.into_iter().map(|s| s.summary).collect();
    assert_eq!(held, vec![real, grown, next]);

    // What the checks were given, derived from what the backend stored.
    let h = hq.state.store.history("shop-1").await.unwrap();
    assert_eq!(h.period_secs, Some(3600));
    assert_eq!(
        h.frontier.iter().map(|(k, f)| (k.as_str(), f.seq)).collect::<Vec<_>>(),
        vec![("a", 70), ("b", 9)]
    );
    let rows = hq.stored().await;
    assert_eq!(
        h.frontier["a"].since_ms,
        rows[1].received_at_ms.min(rows[2].received_at_ms),
        "the first time a=70 was stored"
    );
    assert_eq!(hq.state.store.history("shop-2").await.unwrap(), Default::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_key_cannot_pin_the_store_embedded() {
    a_store_key_cannot_pin_the_store(embedded().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_key_cannot_pin_the_store_postgresql() {
    a_store_key_cannot_pin_the_store(postgres().await).await;
}

// Found by these tests and fixed since.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_name_with_a_nul_byte_is_refused_as_the_clients_fault_not_a_storage_failure() {
    let hq = postgres().await;
    let mut e = hq.sealed(0, &summary("shop-1", 490_000 * HOUR, vv(&[("a", 1)]), 1));
    e.store = "shop-1\0".into();
    let (s, b) = hq.post_raw(&e.encode()).await;
    assert!(s == 400 || s == 403, "upload naming \"shop-1\\0\": {s} {b}");
    let (s, b) = hq.get("/export.csv?store=shop-1%00").await;
    assert!(
        s == 400 || (s == 200 && b.lines().count() == 1),
        "export store=shop-1%00: {s} {b}"
    );
    assert_eq!(rejected(&hq.metrics().await, "storage"), 0, "HQ's storage never failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_after_the_envelope_are_refused_as_malformed() {
    let hq = embedded().await;
    let mut w = hq
        .sealed(0, &summary("shop-1", 490_000 * HOUR, vv(&[("a", 1)]), 1))
        .encode();
    w.extend_from_slice(b"trailing junk");
    let (s, b) = hq.post_raw(&w).await;
    assert_eq!((s, b.contains("\"malformed\"")), (400, true), "{b}");
    assert!(hq.stored().await.is_empty());
}

/// Sends `start`, then `drip` every 250 ms; how long until the server answered or closed, if it
/// did within `patience`.
fn trickle(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    start: &[u8],
    drip: &[u8],
    patience: Duration,
) -> Option<Duration> {
    let mut s = connect(addr, &tls);
    s.get_ref().set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let t = Instant::now();
    if s.write_all(start).and_then(|_| s.flush()).is_err() {
        return Some(t.elapsed());
    }
    while t.elapsed() < patience {
        if s.write_all(drip).and_then(|_| s.flush()).is_err() {
            return Some(t.elapsed());
        }
        let mut buf = [0u8; 256];
        match s.read(&mut buf) {
            Ok(_) => return Some(t.elapsed()),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return Some(t.elapsed()),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_trickles_its_request_is_cut_off() {
    let hq = embedded().await;
    // HQ cuts a request head after 15 s and a body after 30 s.
    let patience = Duration::from_secs(40);
    let cases: [(&str, &'static [u8], &'static [u8]); 3] = [
        (
            "request head",
            b"GET /health HTTP/1.1\r\nHost: localhost\r\n",
            b"X-Slow: 1\r\n",
        ),
        (
            "chunked body",
            b"POST /api/v1/summaries HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"1\r\nA\r\n",
        ),
        (
            "body declared far over the limit",
            b"POST /api/v1/summaries HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000000000\r\n\r\n",
            b"A",
        ),
    ];
    let mut tasks = Vec::new();
    for (what, start, drip) in cases {
        let (addr, tls) = (hq.addr, hq.tls.clone());
        tasks.push((
            what,
            tokio::task::spawn_blocking(move || trickle(addr, tls, start, drip, patience)),
        ));
    }
    let mut held = Vec::new();
    for (what, t) in tasks {
        if t.await.unwrap().is_none() {
            held.push(what);
        }
    }
    assert!(held.is_empty(), "held open for {patience:?} while trickled: {held:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upload_listener_has_no_dashboard_and_the_dashboard_needs_a_login() {
    let hq = embedded().await;
    let s = summary("shop-1", 490_000 * HOUR, vv(&[("a", 1)]), 4242);
    hq.client.post(hq.sealed(0, &s).encode()).await.unwrap();
    // Whoever reaches the stores' port, even holding an admin's cookie, finds nothing to read.
    for path in [
        "/",
        "/stores/shop-1",
        "/export.csv",
        "/export.json?from=0",
        "/metrics",
        "/login",
    ] {
        let (status, body) = hq.get_upload(path).await;
        assert_eq!(status, 404, "{path} on the upload listener: {body}");
        assert!(!body.contains("4242"));
    }
    assert_eq!(hq.get_upload("/health").await, (200, "ok\n".to_string()));
    // The dashboard listener without a session.
    for (path, want) in [
        ("/", 303),
        ("/stores/shop-1", 303),
        ("/export.csv", 401),
        ("/metrics", 401),
    ] {
        let head = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        let (status, body) = hq.exchange(head.into_bytes()).await;
        assert_eq!(status, want, "{path}: {body}");
        assert!(!body.contains("4242") && !body.contains("shop-1"), "{path}: {body}");
    }
    // Wrong passwords slow the guesser down; the admin, from the same test, still logs in once the
    // short wait has passed.
    for _ in 0..5 {
        assert!(login(hq.dash, &hq.tls, "ana", "not the password").await.is_none());
    }
    assert!(
        login(hq.dash, &hq.tls, "ana", ADMIN_PASSWORD).await.is_none(),
        "waits first"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let cookie = login(hq.dash, &hq.tls, "ana", ADMIN_PASSWORD).await.expect("logs in");
    assert_ne!(cookie, hq.cookie, "a session of its own");
    let m = hq.metrics().await;
    assert_eq!(counter(&m, "lpmesh_hq_logins_total{outcome=\"wrong\"}"), 5);
    assert_eq!(counter(&m, "lpmesh_hq_logins_total{outcome=\"backoff\"}"), 1);
    assert_eq!(counter(&m, "lpmesh_hq_logins_total{outcome=\"ok\"}"), 2);
}

async fn get_with(addr: SocketAddr, tls: &Arc<rustls::ClientConfig>, cookie: &str, path: &str) -> (u16, String) {
    let head = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n");
    let (status, _, body) = raw(addr, tls.clone(), head.into_bytes()).await;
    (status, body)
}

/// Two HQ processes on one PostgreSQL, as behind a load balancer: users, sessions and the registry
/// live in the database, so a login made on one works on the other, and removing a user or
/// unregistering a store takes effect on both without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_on_one_hq_process_works_on_another_and_changes_reach_both() {
    let a = postgres().await;
    let url = a._pg.as_ref().unwrap().url();
    let b = HqState::new(
        HqStore::Postgres(Postgres::connect(&url, 2).await.unwrap()),
        age::x25519::Identity::generate(),
        LIMIT,
    );
    let cert = lpmesh_hq::tls::load_or_create_cert(&a.dir.join("tls"), None, None, &["localhost".into()]).unwrap();
    let b_dash = serve_dashboard(b.clone(), "127.0.0.1:0".parse().unwrap(), cert.cert_pem, cert.key_pem)
        .await
        .unwrap();
    let (status, body) = get_with(b_dash.addr, &a.tls, &a.cookie, "/").await;
    assert_eq!(status, 200, "A's session on B");
    assert!(body.contains("ana (admin)"), "{body}");
    let on_b = login(b_dash.addr, &a.tls, "ana", ADMIN_PASSWORD)
        .await
        .expect("logs in on B");
    assert_eq!(
        get_with(a.dash, &a.tls, &on_b, "/export.json").await.0,
        200,
        "B's session on A"
    );

    // Removed through B: every session ends on both.
    assert!(b.store.remove_user("ana").await.unwrap());
    for (addr, cookie) in [
        (a.dash, &a.cookie),
        (a.dash, &on_b),
        (b_dash.addr, &a.cookie),
        (b_dash.addr, &on_b),
    ] {
        assert_eq!(get_with(addr, &a.tls, cookie, "/export.json").await.0, 401);
    }

    // Unregistered through B while A holds the store's key in its cache: A refuses the store's
    // uploads within the cache's lifetime, with no restart.
    let now = chrono::Utc::now().timestamp_millis();
    let first = summary("shop-1", 490_000 * HOUR, vv(&[("a", 1)]), 1);
    a.client.post(a.sealed(0, &first).encode()).await.unwrap();
    assert!(b.store.unregister_store("shop-1", now).await.unwrap());
    assert!(!b.store.unregister_store("shop-1", now).await.unwrap(), "once");
    tokio::time::sleep(lpmesh_hq::store::KEY_TTL + Duration::from_millis(200)).await;
    let next = summary("shop-1", 490_001 * HOUR, vv(&[("a", 2)]), 1);
    let (status, error) = a.refused(a.sealed(0, &next).encode()).await;
    assert_eq!((status, error.as_str()), (403, "unknown_store"));
    let row = a
        .state
        .store
        .stores()
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.store == "shop-1")
        .unwrap();
    assert!(
        row.unregistered_at_ms.is_some() && row.periods == 1,
        "its history stays"
    );
    // Registered again (a new key, say): accepted at once.
    let key = store_key_to_string(&a.keys[0].public()).unwrap();
    b.store.register_store("shop-1", &key, now).await.unwrap();
    a.client.post(a.sealed(0, &next).encode()).await.unwrap();
    assert_eq!(a.stored().await.len(), 2);
}
