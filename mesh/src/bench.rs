//! `lpmesh bench mesh`: N real nodes on loopback in one process; append throughput, propagation
//! latency, and catch-up time of a node that was away.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use libp2p_identity::Keypair;
use serde::Serialize;

use crate::crypto::StoreSecret;
use crate::net::{self, MeshConfig, MeshError, MeshHandle};
use crate::record::{Origin, RecordKind};

#[derive(Debug, Serialize)]
pub struct MeshBenchReport {
    pub nodes: usize,
    /// Durable appends (signed, encrypted, flushed) per second, in batches of `append_batch`, on a
    /// node of its own: in a store its peers run on their own machines, and here they would share this
    /// process's cores and be measured along with it.
    pub append_records_per_s: f64,
    pub append_batch: usize,
    /// The same with one commit per record (the worst case).
    pub append_single_records_per_s: f64,
    /// From the append call to receipt on every other node.
    pub propagation_p50_ms: f64,
    pub propagation_p99_ms: f64,
    pub propagation_samples: usize,
    pub catch_up_records: u64,
    pub catch_up_s: f64,
    pub catch_up_records_per_s: f64,
    /// Records the returning node received while catching up (copies included): ideally
    /// `catch_up_records`; more means peers sent the same records twice.
    pub catch_up_received: u64,
    /// Where a record's time goes, on one core.
    pub parts: WritePathParts,
}

/// Microseconds per record for each step of the write path, on one core, over 2,000 records of
/// 400 bytes: what a durable append and a catch-up are made of.
#[derive(Debug, Serialize)]
pub struct WritePathParts {
    pub encrypt_us: f64,
    /// Sealing: the origin's Ed25519 signature over the record.
    pub sign_us: f64,
    /// Each signature checked alone (gossip of single records).
    pub verify_us: f64,
    /// The same signatures checked as one batch equation (a catch-up, a gossiped bundle).
    pub verify_batch_us: f64,
    pub decode_us: f64,
    /// Storing received records (checked already) in batches of 500, each flushed and fsynced.
    pub store_us: f64,
    pub decrypt_us: f64,
}

fn write_path_parts(b: &Bench) -> Result<WritePathParts, MeshError> {
    use crate::hlc::Timestamp;
    use crate::log::Log;
    use crate::record::Record;
    let fail = |e: &dyn std::fmt::Display| MeshError::Network(format!("write path: {e}").into());
    let n = 2000usize;
    let per = |t: Instant| t.elapsed().as_secs_f64() * 1e6 / n as f64;
    let key = Keypair::generate_ed25519();
    let writer = b.secret.recipient();
    let t = Instant::now();
    let sealed = (0..n)
        .map(|_| writer.encrypt(&[3u8; 400]))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(&e))?;
    let encrypt_us = per(t);
    let t = Instant::now();
    let records = sealed
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let hlc = Timestamp {
                wall_ms: 1_000 + i as u64,
                logical: 0,
            };
            Record::seal("bench-store", &key, i as u64 + 1, hlc, RecordKind::Event, c)
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(&e))?;
    let sign_us = per(t);
    let bytes: Vec<Vec<u8>> = records.iter().map(Record::encode).collect();
    let t = Instant::now();
    let decoded = bytes
        .iter()
        .map(|b| Record::decode(b))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(&e))?;
    let decode_us = per(t);
    let t = Instant::now();
    for r in &decoded {
        r.verify("bench-store").map_err(|e| fail(&e))?;
    }
    let verify_us = per(t);
    let t = Instant::now();
    let vk = crate::record::Origin::of(&key).and_then(|o| o.verifying_key());
    let mut batch = ed25519_zebra::batch::Verifier::new();
    for r in &decoded {
        batch.queue(r.batch_item("bench-store", vk.as_ref()).map_err(|e| fail(&e))?);
    }
    batch.verify(rand::thread_rng()).map_err(|e| fail(&e))?;
    let verify_batch_us = per(t);
    let t = Instant::now();
    for r in &decoded {
        b.secret.decrypt(&r.ciphertext).map_err(|e| fail(&e))?;
    }
    let decrypt_us = per(t);
    let dir = b.root.join("write-path");
    let mut log =
        Log::open(&dir, "bench-store", Keypair::generate_ed25519(), b.secret.recipient()).map_err(|e| fail(&e))?;
    let checked: Vec<_> = decoded
        .chunks(500)
        .map(|c| crate::log::check(c.to_vec(), "bench-store"))
        .collect();
    let t = Instant::now();
    for c in &checked {
        log.insert_checked(c, 10_000).map_err(|e| fail(&e))?;
    }
    let store_us = per(t);
    drop(log);
    Ok(WritePathParts {
        encrypt_us,
        sign_us,
        verify_us,
        verify_batch_us,
        decode_us,
        store_us,
        decrypt_us,
    })
}

struct Bench {
    secret: StoreSecret,
    psk: [u8; 32],
    root: PathBuf,
}

impl Bench {
    fn start(&self, i: usize, key: &Keypair, bootstrap: Vec<net::Addr>) -> Result<MeshHandle, MeshError> {
        let mut cfg = MeshConfig::new("bench-store", self.psk, self.root.join(format!("node-{i}")));
        cfg.listen = vec!["/ip4/127.0.0.1/tcp/0"
            .parse::<net::Addr>()
            .map_err(|e| MeshError::Network(e.into()))?];
        cfg.mdns = false;
        cfg.bootstrap = bootstrap;
        cfg.anti_entropy_interval = Duration::from_secs(2);
        net::start(cfg, key.clone(), self.secret.recipient())
    }
}

async fn addr(h: &MeshHandle) -> Result<net::Addr, MeshError> {
    for _ in 0..500 {
        if let Some(a) = h.listen_addrs().await?.first() {
            return format!("{a}/p2p/{}", h.peer_id())
                .parse::<net::Addr>()
                .map_err(|e| MeshError::Network(e.into()));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(MeshError::Network("node did not start listening".into()))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs the benchmark in `root` (a scratch directory, removed afterwards).
pub async fn run(nodes: usize, catch_up_records: u64, root: PathBuf) -> Result<MeshBenchReport, MeshError> {
    let nodes = nodes.max(2);
    let b = Bench {
        secret: StoreSecret::generate(),
        psk: rand::random(),
        root: root.clone(),
    };
    let parts = write_path_parts(&b)?;
    // A node's own write path, alone.
    let (append_rate, single_rate, batch) = {
        let key = Keypair::generate_ed25519();
        let lone = b.start(nodes, &key, Vec::new())?;
        let single = 300;
        let t = Instant::now();
        for _ in 0..single {
            lone.append(vec![(RecordKind::Event, vec![1u8; 400])]).await?;
        }
        let single_rate = single as f64 / t.elapsed().as_secs_f64();
        let (batch, total) = (500usize, 50_000usize);
        let t = Instant::now();
        for _ in 0..total / batch {
            lone.append((0..batch).map(|_| (RecordKind::Event, vec![2u8; 400])).collect())
                .await?;
        }
        let rate = total as f64 / t.elapsed().as_secs_f64();
        lone.shutdown().await?;
        (rate, single_rate, batch)
    };
    let keys: Vec<Keypair> = (0..nodes).map(|_| Keypair::generate_ed25519()).collect();
    let mut handles: Vec<MeshHandle> = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let mut boot = Vec::new();
        for h in handles.iter().rev().take(3) {
            boot.push(addr(h).await?);
        }
        handles.push(b.start(i, key, boot)?);
    }
    let t = Instant::now();
    loop {
        let mut ok = true;
        for h in &handles {
            ok &= !h.peers().await?.is_empty();
        }
        if ok {
            break;
        }
        if t.elapsed() > Duration::from_secs(30) {
            return Err(MeshError::Network("nodes did not connect".into()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Propagation: single records from rotating nodes, one every 20 ms.
    let mut subs: Vec<_> = handles.iter().map(|h| h.subscribe()).collect();
    let samples = 200;
    let mut sent: HashMap<(Origin, u64), (Instant, usize)> = HashMap::new();
    let collector = {
        let mut subs = std::mem::take(&mut subs);
        tokio::spawn(async move {
            let mut got: HashMap<(Origin, u64), Vec<Instant>> = HashMap::new();
            let deadline = Instant::now() + Duration::from_secs(30);
            let total = samples * subs.len();
            let mut n = 0;
            while n < total && Instant::now() < deadline {
                for s in subs.iter_mut() {
                    while let Ok(r) = s.try_recv() {
                        got.entry((r.origin, r.seq)).or_default().push(Instant::now());
                        n += 1;
                    }
                }
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            got
        })
    };
    for i in 0..samples {
        let h = &handles[i % nodes];
        let t0 = Instant::now();
        let r = h.append(vec![(RecordKind::Event, vec![0u8; 400])]).await?;
        if let Some(r) = r.first() {
            sent.insert((r.origin, r.seq), (t0, i % nodes));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = collector.await.map_err(|e| MeshError::Network(e.into()))?;
    let mut lat: Vec<f64> = Vec::new();
    for (k, (t0, _)) in &sent {
        match got.get(k) {
            Some(times) if times.len() >= nodes => {
                let last = times.iter().max().copied().unwrap_or(*t0);
                lat.push(last.duration_since(*t0).as_secs_f64() * 1000.0);
            }
            _ => lat.push(f64::INFINITY),
        }
    }
    lat.sort_by(f64::total_cmp);

    // Catch-up: the last node goes away while the first appends, then comes back.
    let away = nodes - 1;
    handles[away].shutdown().await?;
    let mut appended = 0u64;
    while appended < catch_up_records {
        let n = batch.min((catch_up_records - appended) as usize);
        handles[0]
            .append((0..n).map(|_| (RecordKind::Event, vec![2u8; 400])).collect())
            .await?;
        appended += n as u64;
    }
    let target = handles[0].version_vector().await?;
    // Let every other node finish taking in the appends before timing the returning node alone
    // (they share this process's two cores).
    let t = Instant::now();
    for h in handles.iter().take(away) {
        while h.version_vector().await? != target && t.elapsed() < Duration::from_secs(300) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let t = Instant::now();
    let boot = vec![addr(&handles[0]).await?];
    let back = b.start(away, &keys[away], boot)?;
    while back.version_vector().await? != target {
        if t.elapsed() > Duration::from_secs(300) {
            return Err(MeshError::Network("catch-up did not finish in 5 minutes".into()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let catch_up_s = t.elapsed().as_secs_f64();
    let caught = back.stats().await?;
    let _ = back.shutdown().await;
    for h in handles.iter().take(away) {
        let _ = h.shutdown().await;
    }
    let _ = std::fs::remove_dir_all(&root);
    Ok(MeshBenchReport {
        nodes,
        append_records_per_s: append_rate,
        append_batch: batch,
        append_single_records_per_s: single_rate,
        propagation_p50_ms: percentile(&lat, 0.5),
        propagation_p99_ms: percentile(&lat, 0.99),
        propagation_samples: lat.len(),
        catch_up_records: appended,
        catch_up_s,
        catch_up_records_per_s: appended as f64 / catch_up_s.max(f64::EPSILON),
        catch_up_received: caught.received_sync + caught.received_gossip,
        parts,
    })
}
