//! The HQ path as an installer sets it up, with the real binaries: `lpmesh hq init`, `lpmesh store-key`,
//! `lpmesh hq register-store` while HQ runs, two `lpmesh run` nodes with an `[hq]` section, `lpmesh
//! status` while they run, and at the end HQ's summaries agree with the events the store holds.

use std::path::Path;
use std::time::{Duration, Instant};

use lpmesh_hq::store::{Embedded, Filter, HqStore};
use lpmesh_tests::{free_port, hq_recipient, http_get, interrupt, lpmesh, ok, prometheus, spawn, TempDir};

fn sample(m: &[(String, f64)], series: &str) -> f64 {
    m.iter().find(|(s, _)| s == series).map(|(_, v)| *v).unwrap_or(-1.0)
}

fn status(data: &Path) -> serde_json::Value {
    let out = lpmesh()
        .args(["status", "--data", &data.to_string_lossy(), "--json"])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

#[test]
fn a_store_reports_to_hq_through_its_elected_leader() {
    let dir = TempDir::new("hq-e2e");
    let hq_dir = dir.join("hq");
    let hq_port = free_port();
    let hq_setup = lpmesh_tests::hq_setup(&dir.0, hq_port, "dashboard_listen = \"127.0.0.1:0\"\n");
    let (hq_cfg, init, recipient) = (
        hq_setup.config.clone(),
        hq_setup.init.clone(),
        hq_setup.recipient.clone(),
    );
    assert!(recipient.starts_with("age1"), "{init}");
    assert!(init.contains("fingerprint     SHA-256 "), "{init}");
    let mut hq = spawn(&["hq", "--config", &hq_cfg], &dir.join("hq.log"));

    let (n1, n2) = (dir.join("n1"), dir.join("n2"));
    ok(&["init", "--store", "shop-e2e", "--data", &n1.to_string_lossy()]);
    lpmesh_tests::enrol(&n1, &n2);
    // Registered while HQ is already running.
    hq_setup.register("shop-e2e", &n2);
    let bad = lpmesh()
        .args([
            "hq",
            "register-store",
            "--config",
            &hq_cfg,
            "--store",
            "x",
            "--key",
            "ed25519:AAAA",
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());

    let (p1, p2) = (free_port(), free_port());
    let ops_port = free_port();
    let hq_section = format!(
        "[hq]\nurl = \"https://localhost:{hq_port}\"\nrecipient = \"{recipient}\"\nca_cert = \"{}\"\nprobe_secs = 0.5\nresend_secs = 1.0\n",
        hq_dir.join("cert.pem").display()
    );
    let mesh = |port: u16, boot: &str| {
        format!("[ui]\nlisten = \"127.0.0.1:{}\"\n[mesh]\nlisten = [\"/ip4/127.0.0.1/tcp/{port}\"]\n{boot}mdns = false\nheartbeat_secs = 0.5\nleader_timeout_secs = 2.0\n", free_port())
    };
    let c1 = dir.join("n1.toml");
    std::fs::write(
        &c1,
        format!(
            "store = \"shop-e2e\"\nnode = \"front\"\ndata_dir = \"{}\"\n[ops]\nlisten = \"127.0.0.1:{ops_port}\"\n{}{hq_section}[[camera]]\nname = \"plaza\"\nsource = \"cache:data/vtest.avi\"\n[[camera.line]]\nname = \"walkway\"\nfrom = [0.45, 0.28]\nto = [0.45, 0.66]\nin = \"left\"\n",
            n1.display(),
            mesh(p1, "")
        ),
    )
    .unwrap();
    let c2 = dir.join("n2.toml");
    std::fs::write(
        &c2,
        format!(
            "store = \"shop-e2e\"\nnode = \"back\"\ndata_dir = \"{}\"\n[ops]\nenabled = false\n{}{hq_section}",
            n2.display(),
            mesh(p2, &format!("bootstrap = [\"/ip4/127.0.0.1/tcp/{p1}\"]\n"))
        ),
    )
    .unwrap();
    for c in [&c1, &c2] {
        ok(&["validate", &c.to_string_lossy()]);
    }
    let mut a = spawn(&["run", "--config", &c1.to_string_lossy()], &dir.join("n1.log"));
    std::thread::sleep(Duration::from_millis(300));
    let mut b = spawn(&["run", "--config", &c2.to_string_lossy()], &dir.join("n2.log"));

    // While they run: both name the same leader, and the leader has synced with HQ.
    let t = Instant::now();
    let synced = loop {
        let (s1, s2) = (status(&n1), status(&n2));
        let leader = s1["leader"].as_str().map(str::to_string);
        let agreed = leader.is_some() && s2["leader"].as_str().map(str::to_string) == leader;
        let leading = if s1["am_leader"] == true { &s1 } else { &s2 };
        if agreed && leading["last_sync_ms"].is_i64() && leading["hq_reachable"] == true {
            break leading.clone();
        }
        assert!(
            t.elapsed() < Duration::from_secs(40),
            "no sync within 40 s: {s1} / {s2}\n{}",
            std::fs::read_to_string(dir.join("n1.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(synced["summaries_sent"].as_u64().unwrap() >= 1);
    let human = ok(&["status", "--data", &n2.to_string_lossy()]);
    assert!(
        human.contains("uplink leader") && human.contains("reachable"),
        "{human}"
    );
    // The node's metrics parse as Prometheus text, and its counters move while it runs.
    let t = Instant::now();
    while http_get(ops_port, "/ready").0 != 200 {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "node never ready: {}",
            http_get(ops_port, "/ready").1
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(http_get(ops_port, "/health"), (200, "ok\n".to_string()));
    let first = prometheus(&http_get(ops_port, "/metrics").1);
    // Long enough for people to cross the walkway.
    std::thread::sleep(Duration::from_secs(10));
    let second = prometheus(&http_get(ops_port, "/metrics").1);
    let frames = "lpmesh_camera_frames_detected_total{camera=\"plaza\"}";
    assert!(
        sample(&second, frames) > sample(&first, frames) && sample(&first, frames) >= 0.0,
        "{second:?}"
    );
    assert!(sample(&second, "lpmesh_inference_seconds_count{camera=\"plaza\"}") > 0.0);
    assert_eq!(sample(&second, "lpmesh_mesh_peers"), 1.0);
    assert!(sample(&second, "lpmesh_log_records") > sample(&first, "lpmesh_log_records"));
    assert!(second.iter().any(|(s, _)| s.starts_with("lpmesh_events_total{")));
    assert!(sample(&second, "lpmesh_data_dir_bytes") > 0.0 && sample(&second, "lpmesh_disk_free_bytes") > 0.0);
    // Whether this machine's disk is nearly full is not the test's business; that it is said is.
    assert!([0.0, 1.0].contains(&sample(&second, "lpmesh_disk_nearly_full")));
    interrupt(&mut a, "node front");
    std::thread::sleep(Duration::from_millis(1500));
    interrupt(&mut b, "node back");
    interrupt(&mut hq, "HQ");

    // HQ's figures are the store's: every crossing counted once, every incident once.
    let events: Vec<serde_json::Value> = ok(&["events", "--data", &n2.to_string_lossy(), "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let crossings = events.iter().filter(|e| e["kind"] == "line_crossing").count() as u64;
    assert!(crossings > 0, "the camera counted people");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let at_hq = rt.block_on(async {
        let store = HqStore::Embedded(Embedded::open(&hq_dir).unwrap());
        store.summaries(&Filter::default()).await.unwrap()
    });
    assert!(!at_hq.is_empty());
    let footfall: u64 = at_hq
        .iter()
        .map(|s| {
            let (i, o) = s.summary.footfall_totals();
            i + o
        })
        .sum();
    assert_eq!(footfall, crossings, "HQ's footfall is the log's");
    let mut incidents: Vec<&str> = events
        .iter()
        .filter(|e| e["kind"] != "line_crossing")
        .filter_map(|e| e["incident"].as_str())
        .collect();
    incidents.sort();
    incidents.dedup();
    let at_hq_incidents: u64 = at_hq.iter().map(|s| s.summary.incidents_total()).sum();
    assert_eq!(at_hq_incidents, incidents.len() as u64);
    // The leader flushed its outbox on the way down.
    let leader_dir = if status(&n1)["am_leader"] == true { &n1 } else { &n2 };
    let final_status = status(leader_dir);
    assert_eq!(final_status["outbox"], 0, "nothing left waiting: {final_status}");
}

/// Raw bytes over TLS to `port`, trusting only `cert` (PEM): (status, head, body).
fn tls_exchange(port: u16, cert: &Path, request: &str) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut std::fs::read(cert).unwrap().as_slice()) {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut s = rustls::StreamOwned::new(rustls::ClientConnection::new(cfg, name).unwrap(), tcp);
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|x| x.parse().ok()).unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (status, head.to_string(), body.to_string())
}

/// Two `lpmesh hq` processes on one PostgreSQL, as behind an ordinary load balancer: three stores
/// upload three versions of each of eight periods to both at once, in no particular order. Every
/// period is stored once, as its most complete version (the dominance rule across processes), and
/// an analyst who logs in on one process is logged in on the other.
#[test]
fn two_hq_processes_on_one_postgresql_take_uploads_at_once_and_share_logins() {
    use lpmesh_hq::envelope::{seal, store_key_to_string};
    use lpmesh_hq::summary::{LineCount, Summary};
    use lpmesh_hq::vv::VersionVector;
    let dir = TempDir::new("hq-two");
    let pg = lpmesh_hq::testpg::TestPg::start().expect("PostgreSQL (scripts/setup.sh installs it)");
    let (ports, dash): (Vec<u16>, Vec<u16>) = (
        (0..2).map(|_| free_port()).collect(),
        (0..2).map(|_| free_port()).collect(),
    );
    let mut cfgs = Vec::new();
    for i in 0..2 {
        let data = dir.join(format!("hq-{i}"));
        if i == 1 {
            // The second receiver decrypts with the same identity: a copy of the first's.
            std::fs::create_dir_all(&data).unwrap();
            std::fs::copy(dir.join("hq-0/hq.identity"), data.join("hq.identity")).unwrap();
        }
        let cfg = dir.join(format!("hq-{i}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "listen = \"127.0.0.1:{}\"\ndashboard_listen = \"127.0.0.1:{}\"\ndata_dir = \"{}\"\ndatabase_url = \"{}\"\n",
                ports[i],
                dash[i],
                data.display(),
                pg.url()
            ),
        )
        .unwrap();
        let c = cfg.to_string_lossy().to_string();
        ok(&["hq", "init", "--config", &c]);
        cfgs.push(c);
    }
    let recipient: age::x25519::Recipient = hq_recipient(&ok(&["hq", "init", "--config", &cfgs[1]]))
        .parse()
        .unwrap();
    let stores: Vec<(String, libp2p_identity::Keypair)> = (0..3)
        .map(|i| (format!("shop-{i}"), libp2p_identity::Keypair::generate_ed25519()))
        .collect();
    for (name, key) in &stores {
        let k = store_key_to_string(&key.public()).unwrap();
        ok(&[
            "hq",
            "register-store",
            "--config",
            &cfgs[0],
            "--store",
            name,
            "--key",
            &k,
        ]);
    }
    {
        use std::io::Write;
        let mut add = lpmesh()
            .args([
                "hq",
                "user",
                "add",
                "--config",
                &cfgs[1],
                "--name",
                "ana",
                "--role",
                "admin",
                "--password-stdin",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        add.stdin.take().unwrap().write_all(b"a long admin password\n").unwrap();
        assert!(add.wait().unwrap().success());
    }
    let mut procs: Vec<_> = (0..2)
        .map(|i| spawn(&["hq", "--config", &cfgs[i]], &dir.join(format!("hq-{i}.log"))))
        .collect();
    let certs: Vec<_> = (0..2).map(|i| dir.join(format!("hq-{i}/cert.pem"))).collect();

    let hour = 3_600_000i64;
    let now = chrono_now();
    let this_hour = now - now.rem_euclid(hour);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let clients: Vec<_> = (0..2)
        .map(|i| {
            lpmesh_hq::client::HqClient::new(
                &format!("https://localhost:{}", ports[i]),
                Some(&certs[i]),
                Duration::from_secs(20),
            )
            .unwrap()
        })
        .collect();
    rt.block_on(async {
        for c in &clients {
            let t = Instant::now();
            while c.probe().await.is_err() {
                assert!(t.elapsed() < Duration::from_secs(30), "an HQ did not come up");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    // Every version of every period, each to one receiver, all at once in a shuffled order.
    let mut jobs = Vec::new();
    for (s, (name, key)) in stores.iter().enumerate() {
        for p in 0..8i64 {
            for v in 1..=3u64 {
                let summary = Summary {
                    store: name.clone(),
                    period_start_ms: this_hour - (p + 1) * hour,
                    period_secs: 3600,
                    vv: VersionVector([("n1".to_string(), 10 * p as u64 + v)].into_iter().collect()),
                    footfall: vec![LineCount {
                        camera: "door".into(),
                        line: "main".into(),
                        entered: v,
                        left: 0,
                    }],
                    ..Summary::default()
                };
                let env = seal(&summary, &recipient, key).unwrap().encode();
                jobs.push(((s + p as usize + v as usize) % 2, env));
            }
        }
    }
    let mut rng = lpmesh_tests::Rng(7);
    for i in (1..jobs.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        jobs.swap(i, j);
    }
    let clients = std::sync::Arc::new(clients);
    let outcomes: Vec<String> = rt.block_on(async {
        let tasks: Vec<_> = jobs
            .into_iter()
            .map(|(to, env)| {
                let clients = clients.clone();
                tokio::spawn(async move {
                    let outcome = match clients[to].post(env.clone()).await {
                        Ok(ack) => ack.status,
                        Err(lpmesh_hq::client::ClientError::Refused { error, .. }) => error,
                        Err(e) => format!("error: {e}"),
                    };
                    // A write that lost every optimistic retry is the sender's to repeat, as a
                    // node's uplink does.
                    if outcome == "storage" {
                        return match clients[to].post(env).await {
                            Ok(ack) => ack.status,
                            Err(e) => format!("error: {e}"),
                        };
                    }
                    outcome
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    eprintln!(
        "outcomes: {:?}",
        outcomes
            .iter()
            .fold(std::collections::BTreeMap::<&str, u32>::new(), |mut m, o| {
                *m.entry(o.as_str()).or_default() += 1;
                m
            })
    );
    assert!(outcomes.iter().all(|o| !o.starts_with("error")), "{outcomes:?}");
    let held = rt.block_on(async {
        let store =
            lpmesh_hq::store::HqStore::Postgres(lpmesh_hq::store::Postgres::connect(&pg.url(), 1).await.unwrap());
        store.summaries(&Filter::default()).await.unwrap()
    });
    assert_eq!(held.len(), 3 * 8, "every period once");
    for r in &held {
        let p = (this_hour - r.summary.period_start_ms) / hour - 1;
        assert_eq!(
            r.summary.vv.0["n1"],
            10 * p as u64 + 3,
            "the most complete version of {}",
            r.summary.store
        );
        assert_eq!(r.summary.footfall[0].entered, 3);
    }

    // Logged in on one process, logged in on the other.
    let form = "name=ana&password=a+long+admin+password";
    let login = format!(
        "POST /login HTTP/1.1\r\nHost: localhost:{d}\r\nOrigin: https://localhost:{d}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}",
        form.len(),
        d = dash[0]
    );
    let (status, head, _) = tls_exchange(dash[0], &certs[0], &login);
    assert_eq!(status, 303, "{head}");
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|c| c.split(';').next())
        .expect("a session cookie")
        .to_string();
    let get = format!(
        "GET /export.json?from={} HTTP/1.1\r\nHost: localhost\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n",
        this_hour - 24 * hour
    );
    let (status, _, body) = tls_exchange(dash[1], &certs[1], &get);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.matches("\"period_start_ms\"").count(), 3 * 8, "{body}");
    // Without the cookie, neither shows anything.
    let anon = "GET /export.json HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    assert_eq!(tls_exchange(dash[1], &certs[1], anon).0, 401);
    for (i, p) in procs.iter_mut().enumerate() {
        interrupt(p, &format!("hq {i}"));
    }
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}
