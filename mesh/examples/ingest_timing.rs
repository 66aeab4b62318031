//! Where the time goes when a node takes in a large batch: decode, verify, store.
use std::time::Instant;

use libp2p_identity::Keypair;
use lpmesh_mesh::crypto::StoreSecret;
use lpmesh_mesh::log::Log;
use lpmesh_mesh::record::{Record, RecordKind};

fn main() {
    let root = std::env::temp_dir().join(format!("lpmesh-ingest-{}", std::process::id()));
    let secret = StoreSecret::generate();
    let mut src = Log::open(&root.join("a"), "s", Keypair::generate_ed25519(), secret.recipient()).unwrap();
    let mut dst = Log::open(&root.join("b"), "s", Keypair::generate_ed25519(), secret.recipient()).unwrap();
    let t = Instant::now();
    let items: Vec<(RecordKind, &[u8])> = (0..2000).map(|_| (RecordKind::Event, &[7u8; 400][..])).collect();
    let recs = src.append_batch(&items, 1000).unwrap();
    println!("append 2000 (encrypt+sign+store+flush): {:?}", t.elapsed());
    let t = Instant::now();
    let read = src.range(&src.origin(), 1, 2000).unwrap();
    println!("range read 2000: {:?}", t.elapsed());
    let t = Instant::now();
    let bytes: Vec<Vec<u8>> = read.iter().map(|r| r.encode()).collect();
    println!("encode 2000: {:?}", t.elapsed());
    let t = Instant::now();
    let decoded: Vec<Record> = bytes.iter().map(|b| Record::decode(b).unwrap()).collect();
    println!("decode 2000: {:?}", t.elapsed());
    let t = Instant::now();
    for r in &decoded {
        r.verify("s").unwrap();
    }
    println!("verify 2000 (one thread): {:?}", t.elapsed());
    let t = Instant::now();
    dst.insert_batch(&decoded, 1000).unwrap();
    println!("insert_batch 2000: {:?}", t.elapsed());
    assert_eq!(recs.len(), 2000);
    let _ = std::fs::remove_dir_all(&root);
}
