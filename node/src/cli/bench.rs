//! `lpmesh bench mesh|hq|alerts`: the mesh's, HQ's and the alerts' benchmarks, printed for people or as JSON.

use crate::*;

pub fn mesh(nodes: usize, records: u64, json: bool) -> Result<ExitCode> {
    let root = std::env::temp_dir().join(format!("lpmesh-bench-mesh-{}", std::process::id()));
    let rt = super::runtime()?;
    let machine = lpmesh_node::ops::machine(&std::env::temp_dir());
    let r = rt.block_on(lpmesh_mesh::bench::run(nodes, records, root))?;
    report(&r, &machine, json, |r| {
        println!("{} nodes on loopback", r.nodes);
        println!(
            "durable appends  {:>9.0} records/s in batches of {} ({:.0}/s one commit each), one node alone",
            r.append_records_per_s, r.append_batch, r.append_single_records_per_s
        );
        println!(
            "propagation      p50 {:.1} ms   p99 {:.1} ms   (append to receipt on all nodes, {} records)",
            r.propagation_p50_ms, r.propagation_p99_ms, r.propagation_samples
        );
        println!(
            "catch-up         {} records in {:.2} s ({:.0} records/s; {} received, copies included)",
            r.catch_up_records, r.catch_up_s, r.catch_up_records_per_s, r.catch_up_received
        );
        let p = &r.parts;
        println!(
            "per record, one core: encrypt {:.1} µs, sign {:.1} µs, decode {:.1} µs, verify {:.1} µs alone or {:.1} µs in a batch, store {:.1} µs (batches of 500, flushed and fsynced), decrypt {:.1} µs",
            p.encrypt_us, p.sign_us, p.decode_us, p.verify_us, p.verify_batch_us, p.store_us, p.decrypt_us
        );
    })
}

pub fn hq(
    stores: usize,
    periods: usize,
    database_url: Option<String>,
    fresh: bool,
    database_connections: usize,
    json: bool,
) -> Result<ExitCode> {
    if !(1..=lpmesh_hq::config::MAX_DATABASE_CONNECTIONS).contains(&database_connections) {
        anyhow::bail!(
            "--database-connections {database_connections}: give 1..={}",
            lpmesh_hq::config::MAX_DATABASE_CONNECTIONS
        );
    }
    let rt = super::runtime()?;
    // A database of its own lies in the temp directory; one named by URL is wherever it is.
    let machine = lpmesh_node::ops::Machine {
        data_dir: database_url.as_ref().map_or_else(
            || std::env::temp_dir().display().to_string(),
            |_| "the database given".into(),
        ),
        ..lpmesh_node::ops::machine(&std::env::temp_dir())
    };
    let r = rt.block_on(lpmesh_hq::bench::run(
        stores,
        periods,
        database_url,
        fresh,
        database_connections,
    ))?;
    report(&r, &machine, json, |r| {
        println!(
            "{} summaries from {} stores into {} ({}) over HTTPS, {} concurrent uploads, {}",
            r.summaries,
            r.stores,
            r.database,
            match r.fsync {
                Some(true) => "fsync on",
                Some(false) => "fsync off",
                None => "its own fsync setting",
            },
            r.concurrency,
            if r.fresh_connections {
                format!("each on a connection and TLS handshake of its own ({})", r.connections)
            } else {
                format!("on {} kept connections", r.connections)
            }
        );
        println!("HQ holds {} connections to PostgreSQL", r.database_connections);
        println!(
            "ingest           {:>8.0} summaries/s   (p50 {:.1} ms, p99 {:.1} ms per upload; {} B per envelope)",
            r.summaries_per_s, r.p50_ms, r.p99_ms, r.envelope_bytes
        );
        println!(
            "10,000 stores    {:.2} summaries/s hourly = {:.3} % of this HQ process (target < 1 %)",
            r.chain_10k_hourly_per_s,
            r.chain_10k_share * 100.0
        );
        println!(
            "chain overview   {:.1} ms to read (the whole week's summaries decoded, as before schema 4: {:.1} ms)",
            r.overview_ms, r.week_decoded_ms
        );
    })
}

/// `from_frame`: how long the camera runs, and the configuration whose first camera it is.
pub fn alerts(incidents: usize, from_frame: Option<(f64, Option<PathBuf>)>, json: bool) -> Result<ExitCode> {
    let rt = super::runtime()?;
    let machine = lpmesh_node::ops::machine(&std::env::temp_dir());
    let r = match from_frame {
        None => rt.block_on(lpmesh_node::bench_alerts::run(incidents))?,
        #[cfg(feature = "vision")]
        Some((seconds, config)) => rt.block_on(lpmesh_node::bench_alerts::from_frame(seconds, config.as_deref()))?,
        #[cfg(not(feature = "vision"))]
        Some(_) => anyhow::bail!("--from-frame needs a build with the vision feature (OpenCV, ONNX Runtime)"),
    };
    // From the frame, the camera's own work is in the figure: the target is the 150 ms.
    let target = if r.camera.is_some() { 150 } else { 250 };
    report(&r, &machine, json, |r| {
        match &r.camera {
            Some(c) => {
                let kinds: Vec<String> = c.kinds.iter().map(|(k, n)| format!("{n} {k}")).collect();
                println!(
                    "{} incidents seen by node B's camera on {} at {} frames/s in {:.0} s ({}), on loopback; from the frame",
                    r.incidents,
                    c.source,
                    c.detect_fps,
                    c.seconds,
                    kinds.join(", ")
                );
            }
            None => println!("{} incidents appended on node B, on loopback", r.incidents),
        }
        println!(
            "-> MQTT message       p50 {:.1} ms   p99 {:.1} ms   ({} received; target p99 < {target} ms)",
            r.mqtt_p50_ms, r.mqtt_p99_ms, r.mqtt_received
        );
        println!(
            "-> node A's UI stream p50 {:.1} ms   p99 {:.1} ms   ({} received; target p99 < {target} ms)",
            r.stream_p50_ms, r.stream_p99_ms, r.stream_received
        );
    })
}

/// A benchmark's figures as one JSON object, with the machine they were measured on.
/// Prints a benchmark's figures: one JSON object with the machine it ran on, or the machine's line then
/// `human`'s lines.
fn report<R: serde::Serialize>(
    r: &R,
    machine: &lpmesh_node::ops::Machine,
    json: bool,
    human: impl FnOnce(&R),
) -> Result<ExitCode> {
    if json {
        println!("{}", bench_json(r, machine)?);
    } else {
        println!("{}", machine_line(machine));
        human(r);
    }
    Ok(ExitCode::SUCCESS)
}

fn bench_json(report: &impl serde::Serialize, machine: &lpmesh_node::ops::Machine) -> Result<String> {
    let mut v = serde_json::to_value(report)?;
    v["machine"] = serde_json::to_value(machine)?;
    Ok(v.to_string())
}

/// The machine line a benchmark prints above its figures.
fn machine_line(m: &lpmesh_node::ops::Machine) -> String {
    format!(
        "machine          {} cores; data in {} ({}{})",
        m.cores,
        m.data_dir,
        if m.filesystem.is_empty() {
            "filesystem unknown"
        } else {
            &m.filesystem
        },
        if m.on_tmpfs {
            ": memory, fsyncs cost nothing"
        } else {
            ""
        }
    )
}
