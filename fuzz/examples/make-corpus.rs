//! Writes the seed corpora under `fuzz/corpus/<target>/`: real, valid messages, each checked through the
//! decoder its target fuzzes before it is written, so a seed that no longer reads shows here, not as a
//! quietly useless corpus.
//!
//!     cargo run --manifest-path fuzz/Cargo.toml --example make-corpus
//!
//! Records and heartbeats come out byte-identical on every run (fixed keys, Ed25519 is deterministic);
//! envelopes do not (age encrypts with a fresh ephemeral key), so regenerate only when a format changes.

use std::fs;
use std::path::{Path, PathBuf};

use lpmesh_fuzz::{hq_identity, node_key, store_key, HeartbeatMsg, SyncRequest, STORE};
use lpmesh_hq::config::HqConfig;
use lpmesh_hq::envelope::{seal, Envelope};
use lpmesh_hq::summary::{AckStats, CameraUptime, Incident, LineCount, Summary};
use lpmesh_hq::vv::VersionVector;
use lpmesh_mesh::election::Heartbeat;
use lpmesh_mesh::hlc::Timestamp;
use lpmesh_mesh::record::{Origin, Record, RecordKind};
use lpmesh_mesh::wire::{self, SyncMessage};
use lpmesh_node::config::NodeConfig;

fn main() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR"));
    let corpus = fuzz.join("corpus");
    let repo = fuzz.parent().expect("fuzz/ is inside the repository");

    let records = records();
    for (name, r) in &records {
        let bytes = r.encode();
        assert_eq!(wire::gossip_record(&bytes, STORE).as_ref(), Ok(r), "seed record {name}");
        write(&corpus, "record", name, &bytes);
    }
    // A record of another store still decodes: it seeds the paths behind the signature check's refusals.
    let foreign = Record::seal(
        "another-store",
        node_key(),
        1,
        Timestamp::default(),
        RecordKind::Event,
        vec![9; 16],
    )
    .expect("seal");
    write(&corpus, "record", "other-store", &foreign.encode());
    // The same records as one gossiped bundle.
    let encoded: Vec<Vec<u8>> = records.iter().map(|(_, r)| r.encode()).collect();
    let bundle = lpmesh_mesh::record::bundles(encoded.iter().map(Vec::as_slice));
    assert_eq!(bundle.len(), 1, "the seed records fit one bundle");
    assert_eq!(
        wire::gossip_bundle(&bundle[0], STORE).map(|v| v.len()),
        Ok(records.len()),
        "seed bundle"
    );
    write(&corpus, "record", "bundle", &bundle[0]);

    for (name, req) in sync_requests(&records) {
        let bytes = cbor4ii::serde::to_vec(Vec::new(), &req).expect("CBOR into a Vec");
        let read = wire::sync_request(&bytes).unwrap_or_else(|e| panic!("seed sync request {name}: {e}"));
        match (&req, read) {
            (SyncRequest::Summary { vv, reply }, SyncMessage::Summary { origins, reply: r }) => {
                assert_eq!((vv.len(), *reply), (origins, r), "{name}")
            }
            (SyncRequest::Records { records, .. }, SyncMessage::Records { decoded, refused }) => {
                assert_eq!(decoded.len() + refused, records.len(), "{name}")
            }
            (_, read) => panic!("seed sync request {name} read as {read:?}"),
        }
        write(&corpus, "sync_request", &name, &bytes);
    }

    for (name, msg) in heartbeats() {
        let bytes = msg.encode().expect("a heartbeat encodes");
        let (hb, addrs, info) = wire::heartbeat(&bytes).unwrap_or_else(|| panic!("seed heartbeat {name}"));
        assert_eq!((hb, &addrs, info), (msg.hb, &msg.addrs, msg.info.len()), "{name}");
        write(&corpus, "heartbeat", &name, &bytes);
    }

    // Grants as a tablet's URL brings them (the target's member "front" signs with this key).
    let front = libp2p_identity::Keypair::ed25519_from_bytes([7; 32]).expect("a key");
    let other = libp2p_identity::Keypair::ed25519_from_bytes([8; 32]).expect("a key");
    let id = lpmesh_node::event::EvidenceId::parse("0123456789abcdef0123456789abcdef").expect("an id");
    let now = 1_800_000_000_000;
    let grant = |download: bool, expires_ms: i64| lpmesh_node::evidence::token::Grant {
        issuer: "front".into(),
        user: "sam".into(),
        role: lpmesh_node::ui::auth::Role::Manager,
        evidence: id.clone(),
        download,
        issued_ms: expires_ms - 300_000,
        expires_ms,
    };
    for (name, g, key) in [
        ("view", grant(false, now + 60_000), &front),
        ("download", grant(true, now + 60_000), &front),
        ("expired", grant(false, now - 200_000), &front),
        ("foreign-key", grant(false, now + 60_000), &other),
    ] {
        let text = g.sign("shop-1", key).expect("sign");
        write(&corpus, "evidence_grant", name, text.as_bytes());
    }
    write(&corpus, "evidence_grant", "id", id.as_str().as_bytes());

    for (name, s) in summaries() {
        s.validate().unwrap_or_else(|e| panic!("seed summary {name}: {e}"));
        let env = seal(&s, &hq_identity().to_public(), store_key()).expect("seal");
        let bytes = env.encode();
        let back = Envelope::decode(&bytes).expect("decode");
        back.verify(&store_key().public()).expect("verify");
        assert_eq!(back.open(hq_identity()).expect("open"), s, "{name}");
        write(&corpus, "hq_envelope", &format!("{name}.envelope"), &bytes);
        // The target's second mode: the plaintext a store encrypts.
        let json = serde_json::to_vec(&s).expect("JSON");
        write(&corpus, "hq_envelope", &format!("{name}.json"), &json);
    }

    let mut node_configs = vec![repo.join("config/store.example.toml")];
    node_configs.extend(toml_files(&repo.join("config/demo")));
    for path in node_configs {
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        NodeConfig::parse(&text, &path).unwrap_or_else(|e| panic!("{e}"));
        let name = path.file_name().expect("a file").to_string_lossy().into_owned();
        let name = if path.parent().is_some_and(|p| p.ends_with("demo")) {
            format!("demo-{name}")
        } else {
            name
        };
        write(&corpus, "node_config", &name, text.as_bytes());
    }

    let path = repo.join("config/hq.example.toml");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    HqConfig::parse(&text, &path).unwrap_or_else(|e| panic!("{e}"));
    write(&corpus, "hq_config", "hq.example.toml", text.as_bytes());
    // The example sets only defaults and leaves the optional keys commented out: one seed that sets them all.
    let full = "listen = \"127.0.0.1:9443\"\ndata_dir = \"/srv/hq\"\n\
                database_url = \"host=/run/postgresql user=lpmesh dbname=lpmesh\"\n\
                tls_cert = \"/etc/lpmesh/hq.crt\"\ntls_key = \"/etc/lpmesh/hq.key\"\n\
                tls_names = [\"hq.example.com\", \"10.0.0.1\"]\nmax_envelope_bytes = 65536\n";
    HqConfig::parse(full, Path::new("hq.toml")).unwrap_or_else(|e| panic!("{e}"));
    write(&corpus, "hq_config", "all-keys.toml", full.as_bytes());
}

fn write(corpus: &Path, target: &str, name: &str, bytes: &[u8]) {
    let dir = corpus.join(target);
    fs::create_dir_all(&dir).expect("create the corpus directory");
    fs::write(dir.join(name), bytes).expect("write a seed");
    println!("{target}/{name}: {} bytes", bytes.len());
}

fn toml_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    v.sort();
    v
}

fn records() -> Vec<(String, Record)> {
    let at = |wall_ms, logical| Timestamp { wall_ms, logical };
    // The payloads are opaque to the mesh (encrypted to the store): any bytes are realistic.
    let cases = [
        (
            "event-seq1",
            1,
            at(1_764_000_000_000, 0),
            RecordKind::Event,
            vec![0xa5; 48],
        ),
        (
            "event-seq7",
            7,
            at(1_764_000_000_123, 3),
            RecordKind::Event,
            (0..=255).collect(),
        ),
        (
            "action",
            2,
            at(1_764_000_050_000, 0),
            RecordKind::Action,
            b"age-encryption.org/v1".to_vec(),
        ),
        ("empty-payload", 3, at(0, 0), RecordKind::Event, Vec::new()),
    ];
    cases
        .into_iter()
        .map(|(name, seq, hlc, kind, ct)| {
            let r = Record::seal(STORE, node_key(), seq, hlc, kind, ct).expect("seal");
            (name.to_string(), r)
        })
        .collect()
}

fn sync_requests(records: &[(String, Record)]) -> Vec<(String, SyncRequest)> {
    let me = Origin::of(node_key()).expect("an Ed25519 key");
    let other = Origin::of(store_key()).expect("an Ed25519 key");
    let bytes = |r: &Record| serde_bytes::ByteBuf::from(r.encode());
    vec![
        (
            "summary-empty".into(),
            SyncRequest::Summary {
                vv: Vec::new(),
                reply: true,
            },
        ),
        (
            "summary-two-origins".into(),
            SyncRequest::Summary {
                vv: vec![(me, 7), (other, 1)],
                reply: false,
            },
        ),
        (
            "records".into(),
            SyncRequest::Records {
                records: records.iter().map(|(_, r)| bytes(r)).collect(),
                answer: 3,
                part: 0,
                parts: 1,
                full: false,
            },
        ),
        (
            "records-one-refused".into(),
            SyncRequest::Records {
                records: vec![bytes(&records[0].1), serde_bytes::ByteBuf::from(vec![1, 0xff])],
                answer: 4,
                part: 1,
                parts: 2,
                full: true,
            },
        ),
    ]
}

fn heartbeats() -> Vec<(String, HeartbeatMsg)> {
    let node = Origin::of(node_key()).expect("an Ed25519 key");
    vec![
        (
            "minimal".into(),
            HeartbeatMsg {
                hb: Heartbeat {
                    node,
                    hq_reachable: false,
                    priority: 0,
                    // Unknown: left out on the wire, so this seed is what nodes wrote before the field.
                    last_progress_ms: 0,
                },
                sent_ms: 1_764_000_000_000,
                addrs: Vec::new(),
                info: Vec::new(),
            },
        ),
        (
            "with-addrs-and-info".into(),
            HeartbeatMsg {
                hb: Heartbeat {
                    node,
                    hq_reachable: true,
                    priority: 10,
                    last_progress_ms: 0,
                },
                sent_ms: 1_764_000_002_500,
                addrs: vec!["/ip4/10.0.0.5/tcp/7420".into(), "/ip6/fe80::1/tcp/7420".into()],
                info: br#"{"name":"till-1","cameras":[{"name":"door","ok":true}]}"#.to_vec(),
            },
        ),
        (
            "with-progress".into(),
            HeartbeatMsg {
                hb: Heartbeat {
                    node,
                    hq_reachable: true,
                    priority: 10,
                    last_progress_ms: 1_764_000_001_000,
                },
                sent_ms: 1_764_000_002_500,
                addrs: Vec::new(),
                info: Vec::new(),
            },
        ),
    ]
}

fn summaries() -> Vec<(String, Summary)> {
    let node = Origin::of(node_key())
        .and_then(|o| o.peer_id())
        .expect("an Ed25519 key")
        .to_base58();
    let start = 3_600_000 * 490_000;
    let minimal = Summary {
        store: "shop-1".into(),
        period_start_ms: start,
        period_secs: 3600,
        vv: VersionVector([(node.clone(), 1)].into_iter().collect()),
        ..Summary::default()
    };
    let busy = Summary {
        store: "shop-1".into(),
        period_start_ms: start,
        period_secs: 3600,
        vv: VersionVector(
            [(node, 42), ("12D3KooWQvjd6uK5f1HxJv8mKPcX4rqG3m1N".into(), 17)]
                .into_iter()
                .collect(),
        ),
        footfall: vec![
            LineCount {
                camera: "door".into(),
                line: "main".into(),
                entered: 120,
                left: 117,
            },
            LineCount {
                camera: "back".into(),
                line: "staff".into(),
                entered: 3,
                left: 2,
            },
        ],
        peak_occupancy: [("door/entrance".to_string(), 14)].into_iter().collect(),
        incidents_by_kind: [("loitering".to_string(), 2), ("exit_without_checkout".to_string(), 1)]
            .into_iter()
            .collect(),
        incidents_by_severity: [("medium".to_string(), 2), ("high".to_string(), 1)]
            .into_iter()
            .collect(),
        incidents_by_camera: [("door".to_string(), 3)].into_iter().collect(),
        incidents_by_zone: [("door/entrance".to_string(), 3)].into_iter().collect(),
        acknowledgements: AckStats {
            acknowledged: 2,
            resolved: 1,
            false_alarms: 1,
            ack_secs_mean: Some(42.5),
            ack_secs_p90: Some(80.0),
            ack_secs_max: Some(95.25),
        },
        cameras: vec![CameraUptime {
            camera: "door".into(),
            offline_secs: 12.0,
            uptime: 0.996,
        }],
        serious: vec![Incident {
            incident: "till-1/door/1764000000000-0".into(),
            camera: "door".into(),
            zone: Some("entrance".into()),
            kind: "exit_without_checkout".into(),
            severity: "high".into(),
            started_at_ms: start + 1_234_000,
            ended_at_ms: Some(start + 1_240_000),
            state: "acknowledged".into(),
            acknowledged_at_ms: Some(start + 1_236_500),
            note: Some("customer paid at the kiosk".into()),
        }],
        serious_total: 1,
    };
    vec![("minimal".into(), minimal), ("busy".into(), busy)]
}
