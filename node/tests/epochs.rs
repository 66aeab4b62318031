//! A running node that hears a revocation (from the UI's button, or from another member) begins a key
//! epoch by itself, and writes under it from then on.

use std::time::{Duration, Instant};

use libp2p_identity::Keypair;
use lpmesh_mesh::keys::StoreSecrets;
use lpmesh_mesh::net::{self, MeshConfig};
use lpmesh_mesh::record::{Origin, RecordKind};
use lpmesh_node::bounds::Reader;
use lpmesh_node::members::{hex, Membership};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_hears_a_revocation_begins_a_key_epoch_and_writes_under_it() {
    let dir = lpmesh_testkit::TempDir::new("epochs").into_path();
    let key = Keypair::generate_ed25519();
    let me = Origin::of(&key).unwrap();
    let mut secrets = StoreSecrets::generate("shop-epochs").unwrap();
    secrets.founder = Some(hex(&me));
    let mut cfg = MeshConfig::new("shop-epochs", secrets.psk().unwrap(), dir.join("log"));
    cfg.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    cfg.mdns = false;
    let mesh = net::start(cfg, key.clone(), secrets.recipient().unwrap()).unwrap();
    let reader = Reader::new(secrets.keyring().unwrap(), 600.0);
    let (tx, _rx) = tokio::sync::watch::channel(Vec::new());
    tokio::spawn(lpmesh_node::node::follow_members(
        mesh.clone(),
        reader.clone(),
        Some(me),
        tx,
        0,
        "front".into(),
        key.clone(),
    ));
    let other = Origin::of(&Keypair::generate_ed25519()).unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    let record = |m: Membership| (RecordKind::Member, serde_json::to_vec(&m).unwrap());
    mesh.append(vec![record(Membership::new(&other, now, Some("inv".into())))])
        .await
        .unwrap();
    let before = mesh
        .append(vec![(RecordKind::Event, b"before".to_vec())])
        .await
        .unwrap();
    let base = secrets.store_secret().unwrap();
    assert_eq!(base.decrypt(&before[0].ciphertext).unwrap(), b"before");
    // Revoked as the UI's button does it: a record appended through the running mesh.
    mesh.append(vec![record(Membership::revocation(&other, now))])
        .await
        .unwrap();

    let t = Instant::now();
    let probe = loop {
        let probe = mesh.append(vec![(RecordKind::Event, b"after".to_vec())]).await.unwrap();
        if base.decrypt(&probe[0].ciphertext).is_err() {
            break probe;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "still writing under the store's first key"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(reader.ring().decrypt(&probe[0].ciphertext).unwrap(), b"after");
    assert_eq!(
        reader.ring().decrypt(&before[0].ciphertext).unwrap(),
        b"before",
        "history still reads"
    );
    let records = mesh.range(me, 1, 1000).await.unwrap();
    let grants: Vec<_> = records.iter().filter_map(|r| reader.grant(r)).collect();
    assert_eq!(grants.len(), 1, "one epoch for one revocation");
    assert!(grants[0].covers.contains(&hex(&other)));
    assert!(!grants[0].sealed.contains_key(&hex(&other)));
    assert!(grants[0].sealed.contains_key(&hex(&me)));
    let _ = mesh.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
