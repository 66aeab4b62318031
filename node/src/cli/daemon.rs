//! `lpmesh run`: starts the node's runtime (`lpmesh_node::runtime`) and tells the person who started
//! it where everything is, and at the stop what happened.

use crate::*;
use lpmesh_node::runtime::{self, Notice, Started, Stopped};

pub fn run(config: &Path, synthetic: Option<(f64, i64)>) -> Result<ExitCode> {
    let cfg = NodeConfig::load(config)?;
    if let Some((r, _)) = synthetic.filter(|(r, _)| !(r.is_finite() && *r > 0.0 && *r <= 10_000.0)) {
        anyhow::bail!("--synthetic {r}: give events per second, more than 0 and at most 10000");
    }
    let (node, data_dir) = (cfg.node.clone(), cfg.data_dir.clone());
    let rt = cli::runtime()?;
    let stop = stop_signal();
    let opts = runtime::Options {
        config_path: config.to_path_buf(),
        synthetic,
    };
    rt.block_on(async {
        // A stop while the node starts (a slow log, a stuck peer) is honoured at once, as before the
        // runtime watched the signal: what started is dropped with the runtime.
        let running = tokio::select! {
            r = runtime::start(cfg, opts, stop.clone()) => r?,
            _ = stop.stopped() => {
                println!("node {node} stopped while starting");
                return Ok(ExitCode::SUCCESS);
            }
        };
        say_started(running.started(), &data_dir);
        let stopped = running.run().await;
        say_stopped(&stopped);
        stopped.mesh_closed.context("closing the mesh")?;
        println!("node {node} stopped");
        Ok(ExitCode::SUCCESS)
    })
}

fn say_started(s: &Started, data_dir: &Path) {
    println!("answering invitations on {}", s.enrol_addr);
    for n in &s.notices {
        match n {
            Notice::Warning(w) => eprintln!("warning: {w}"),
            Notice::Error(e) => eprintln!("error: {e}"),
        }
    }
    if let Some(ui) = &s.ui {
        if let Some((fingerprint, store_wide)) = &ui.trust {
            println!(
                "UI certificate issued by {} (SHA-256 {fingerprint}); tablets install it once from https://<this node>/ca.crt",
                if *store_wide {
                    "the store's CA"
                } else {
                    "this node's own CA (the store has none: made before store CAs)"
                },
            );
        }
        println!("UI of node {} at {}", s.node, ui.url);
        if ui.no_users {
            println!(
                "no UI users yet: lpmesh user add --data {} --role manager NAME",
                data_dir.display()
            );
        }
    }
    if let Some(addr) = s.ops_addr {
        println!("metrics at http://{addr}/metrics, health at /health and /ready");
    }
    println!(
        "node {} of store {}: {} listening on {}",
        s.node,
        s.store,
        s.peer_id,
        s.listen.join(", ")
    );
}

fn say_stopped(s: &Stopped) {
    if let Some(st) = &s.uplink {
        println!(
            "uplink: leader {}, {} summaries sent, {} period(s) waiting",
            if st.am_leader { "this node" } else { "another node" },
            st.summaries_sent,
            st.outbox
        );
    }
    if let Some(st) = &s.mesh {
        println!(
            "mesh: {} records in the log, {} appended here, {} received ({} repaired by anti-entropy), {} rejected",
            st.records,
            st.appended,
            st.received_gossip + st.received_sync,
            st.repaired,
            st.rejected.values().sum::<u64>()
        );
    }
}
