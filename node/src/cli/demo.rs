//! `lpmesh demo`: the whole product on one machine. Three store nodes as separate processes (each its
//! own data directory, camera on the looped demo footage and zones from `config/demo/node-N.toml`),
//! enrolled with the real `init`/`invite`/`join`, an HQ receiver with the embedded store, tablet UIs,
//! alert routes, and the uplink. Every step runs this same binary, as an installer would.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// HQ's demo admin (its password is drawn for each run and printed).
const DEMO_ANALYST: &str = "analyst";
pub const DEMO_MANAGER: (&str, &str) = ("manager", "demo-manager");
pub const DEMO_GUARD: (&str, &str) = ("guard", "demo-guard");
const STORE: &str = "demo-store";

pub struct DemoArgs {
    pub dir: PathBuf,
    pub nodes: usize,
    pub duration: Option<f64>,
    pub uplink_down: Option<f64>,
    pub kill_node_after: Option<f64>,
    pub evidence: bool,
}

fn free_port() -> Result<u16> {
    Ok(lpmesh_web::clock::free_loopback_port()?)
}

fn exe() -> Result<PathBuf> {
    std::env::current_exe().context("cannot find the lpmesh binary")
}

/// Runs `lpmesh ARGS` to completion; its stdout.
fn step(args: &[&str], stdin: Option<&str>) -> Result<String> {
    let mut c = Command::new(exe()?);
    c.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c.env_remove("LPMESH_LOG");
    let mut child = c.spawn()?;
    if let (Some(s), Some(mut w)) = (stdin, child.stdin.take()) {
        w.write_all(s.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "lpmesh {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Enrols `joiner` into `member`'s store with a one-time invitation, as an installer setting up a
/// store does before its first node runs: `invite --serve` answers it, `join` reads it on stdin.
fn enrol(member: &Path, joiner: &Path, name: &str) -> Result<()> {
    let mut inviter = Command::new(exe()?)
        .args(["invite", "--data", &member.to_string_lossy(), "--serve", "127.0.0.1:0"])
        .args(["--node", name])
        .env_remove("LPMESH_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut token = String::new();
    if let Some(out) = inviter.stdout.take() {
        std::io::BufReader::new(out).read_line(&mut token)?;
    }
    let joined = step(&["join", "--data", &joiner.to_string_lossy()], Some(&token));
    let served = inviter.wait_with_output()?;
    joined?;
    if !served.status.success() {
        bail!("lpmesh invite: {}", String::from_utf8_lossy(&served.stderr).trim());
    }
    Ok(())
}

struct Proc {
    name: String,
    child: Option<Child>,
}

impl Proc {
    fn spawn(name: &str, args: &[String], dir: &Path) -> Result<Proc> {
        let out = dir.join(format!("{name}.out"));
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(exe()?)
            .args(args)
            .env("LPMESH_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::from(std::fs::File::create(&out)?))
            .stderr(Stdio::from(std::fs::File::create(&log)?))
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        Ok(Proc {
            name: name.to_string(),
            child: Some(child),
        })
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGINT, then wait (bounded); true when it exited cleanly.
    fn stop(&mut self, within: Duration) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
        let t = Instant::now();
        while t.elapsed() < within {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn alive(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.stop(Duration::from_secs(10));
        }
    }
}

/// Proportional and private (anonymous) memory of a process, MB: shared libraries count once across
/// the nodes in PSS, not at all in the private figure.
fn memory_detail(pid: u32) -> Option<(f64, f64)> {
    let kb = |text: &str, key: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(key))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some((kb(&rollup, "Pss:")? / 1024.0, kb(&status, "RssAnon:")? / 1024.0))
}

/// CPU seconds and resident memory of a process, from /proc.
fn usage(pid: u32) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // The node's own time and that of the children it waited for (its clip encoders).
    let ticks: f64 = fields
        .get(11..15)?
        .iter()
        .map(|f| f.parse::<f64>().unwrap_or(0.0))
        .sum();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((ticks / 100.0, rss_kb / 1024.0))
}

fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}

/// Sum of a metric's samples (all label sets) in Prometheus text.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

struct Node {
    name: String,
    data: PathBuf,
    config: PathBuf,
    ui: u16,
    ops: u16,
    proc: Option<Proc>,
    cpu0: Option<(Instant, f64)>,
    cpu_s: f64,
    wall_s: f64,
    max_rss_mb: f64,
    max_pss_mb: f64,
    max_anon_mb: f64,
    frames0: Option<f64>,
    frames_detected: f64,
    /// The most memory one of its clip encoders (child processes) used, MB.
    encoder_mb: f64,
    killed: bool,
}

fn node_config(
    template: &Path,
    node: &Node,
    mesh_port: u16,
    boot: Option<u16>,
    hq: &HqInfo,
    mqtt: bool,
    evidence: bool,
) -> Result<String> {
    use toml_edit::{value, Array, ArrayOfTables, DocumentMut, Table};
    let text = std::fs::read_to_string(template).with_context(|| format!("demo template {}", template.display()))?;
    let mut doc: DocumentMut = text.parse().with_context(|| template.display().to_string())?;
    doc["store"] = value(STORE);
    doc["node"] = value(node.name.as_str());
    doc["data_dir"] = value(node.data.to_string_lossy().as_ref());
    let mut mesh = Table::new();
    let mut listen = Array::new();
    listen.push(format!("/ip4/127.0.0.1/tcp/{mesh_port}"));
    mesh.insert("listen", value(listen));
    let mut b = Array::new();
    if let Some(p) = boot {
        b.push(format!("/ip4/127.0.0.1/tcp/{p}"));
    }
    mesh.insert("bootstrap", value(b));
    // Everything is on loopback: no multicast; quick heartbeats so a failover shows within seconds.
    mesh.insert("mdns", value(false));
    mesh.insert("heartbeat_secs", value(1.0));
    mesh.insert("leader_timeout_secs", value(4.0));
    doc["mesh"] = toml_edit::Item::Table(mesh);
    let mut ui = Table::new();
    ui.insert("listen", value(format!("0.0.0.0:{}", node.ui)));
    ui.insert("public_url", value(format!("https://127.0.0.1:{}", node.ui)));
    doc["ui"] = toml_edit::Item::Table(ui);
    let mut ops = Table::new();
    ops.insert("listen", value(format!("127.0.0.1:{}", node.ops)));
    doc["ops"] = toml_edit::Item::Table(ops);
    let mut h = Table::new();
    h.insert("url", value(format!("https://localhost:{}", hq.port)));
    h.insert("recipient", value(hq.recipient.as_str()));
    h.insert("ca_cert", value(hq.cert.to_string_lossy().as_ref()));
    h.insert("probe_secs", value(2.0));
    h.insert("resend_secs", value(5.0));
    h.insert("timeout_secs", value(3.0));
    doc["hq"] = toml_edit::Item::Table(h);
    let mut ev = Table::new();
    ev.insert("enabled", value(evidence));
    doc["evidence"] = toml_edit::Item::Table(ev);
    let mut route = Table::new();
    if mqtt {
        route.insert("name", value("mqtt"));
        route.insert("type", value("mqtt"));
        route.insert("broker", value("127.0.0.1:1883"));
        route.insert("min_severity", value("medium"));
    } else {
        route.insert("name", value("console"));
        route.insert("type", value("console"));
        route.insert("min_severity", value("high"));
    }
    let mut routes = ArrayOfTables::new();
    routes.push(route);
    let mut alerts = Table::new();
    alerts.insert("route", toml_edit::Item::ArrayOfTables(routes));
    doc["alerts"] = toml_edit::Item::Table(alerts);
    Ok(doc.to_string())
}

struct HqInfo {
    port: u16,
    recipient: String,
    cert: PathBuf,
}

fn leader_of(data: &Path) -> Option<String> {
    let text = std::fs::read_to_string(data.join("uplink-status.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["leader"].as_str().map(String::from)
}

fn node_id_of(data: &Path) -> Option<String> {
    let text = std::fs::read_to_string(data.join("uplink-status.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["node"].as_str().map(String::from)
}

pub fn run(a: DemoArgs, stop: Arc<AtomicBool>) -> Result<ExitCode> {
    // The templates: beside the working directory (the repository), else beside the binary's build tree.
    let repo_config = [PathBuf::from("config/demo")]
        .into_iter()
        .chain(exe()?.ancestors().nth(3).map(|r| r.join("config/demo")))
        .find(|p| p.join("node-1.toml").is_file())
        .context("config/demo/node-1.toml not found: run the demo from the lpmesh repository")?;
    if a.nodes == 0 || a.nodes > 3 {
        bail!("--nodes is 1 to 3 (one template per node in config/demo/)");
    }
    if a.dir.exists() {
        std::fs::remove_dir_all(&a.dir).with_context(|| format!("cannot clear {}", a.dir.display()))?;
    }
    std::fs::create_dir_all(&a.dir)?;
    let dir = a.dir.canonicalize()?;
    println!("lpmesh demo in {}", dir.display());

    // HQ: its identity and certificate, then the store registered with it.
    let hq_port = free_port()?;
    let dash_port = free_port()?;
    let hq_dir = dir.join("hq");
    let hq_toml = dir.join("hq.toml");
    std::fs::write(
        &hq_toml,
        format!(
            "listen = \"127.0.0.1:{hq_port}\"\ndashboard_listen = \"127.0.0.1:{dash_port}\"\ndata_dir = \"{}\"\n",
            hq_dir.display()
        ),
    )?;
    let hq_cfg = hq_toml.to_string_lossy().to_string();
    step(&["validate", &hq_cfg], None)?;
    let init = step(&["hq", "init", "--config", &hq_cfg], None)?;
    // HQ's dashboard needs a login: an admin with a password drawn for this run.
    let analyst_password = lpmesh_web::login::token()[..16].to_string();
    step(
        &[
            "hq",
            "user",
            "add",
            "--config",
            &hq_cfg,
            "--name",
            DEMO_ANALYST,
            "--role",
            "admin",
            "--password-stdin",
        ],
        Some(&format!("{analyst_password}\n")),
    )?;
    let recipient = init
        .lines()
        .find_map(|l| l.strip_prefix("HQ recipient"))
        .map(|r| r.trim().to_string())
        .context("hq init printed no recipient")?;
    let hq = HqInfo {
        port: hq_port,
        recipient,
        cert: hq_dir.join("cert.pem"),
    };

    // The store: the first node creates it, the others join with its invitation.
    let mut nodes: Vec<Node> = Vec::new();
    for i in 1..=a.nodes {
        let name = format!("node-{i}");
        let data = dir.join(&name);
        nodes.push(Node {
            config: dir.join(format!("{name}.toml")),
            name,
            data,
            ui: free_port()?,
            ops: free_port()?,
            proc: None,
            cpu0: None,
            cpu_s: 0.0,
            wall_s: 0.0,
            max_rss_mb: 0.0,
            max_pss_mb: 0.0,
            max_anon_mb: 0.0,
            frames0: None,
            frames_detected: 0.0,
            encoder_mb: 0.0,
            killed: false,
        });
    }
    step(
        &["init", "--store", STORE, "--data", &nodes[0].data.to_string_lossy()],
        None,
    )?;
    for n in &nodes[1..] {
        enrol(&nodes[0].data, &n.data, &n.name)?;
    }
    let key = step(&["store-key", "--data", &nodes[0].data.to_string_lossy()], None)?;
    step(
        &[
            "hq",
            "register-store",
            "--config",
            &hq_cfg,
            "--store",
            STORE,
            "--key",
            key.trim(),
        ],
        None,
    )?;
    for n in &nodes {
        let d = n.data.to_string_lossy().to_string();
        for (user, pass, role) in [
            (DEMO_MANAGER.0, DEMO_MANAGER.1, "manager"),
            (DEMO_GUARD.0, DEMO_GUARD.1, "security"),
        ] {
            step(
                &["user", "add", "--data", &d, "--role", role, "--password-stdin", user],
                Some(&format!("{pass}\n")),
            )?;
        }
    }
    let mqtt = std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], 1883).into(), Duration::from_millis(300)).is_ok();
    let first_mesh = free_port()?;
    for (i, n) in nodes.iter().enumerate() {
        let template = repo_config.join(format!("{}.toml", n.name));
        let mesh_port = if i == 0 { first_mesh } else { free_port()? };
        let text = node_config(
            &template,
            n,
            mesh_port,
            (i > 0).then_some(first_mesh),
            &hq,
            mqtt,
            a.evidence,
        )?;
        std::fs::write(&n.config, text)?;
        step(&["validate", &n.config.to_string_lossy()], None)?;
    }

    let mut hq_proc = Some(Proc::spawn(
        "hq",
        &["hq".into(), "--config".into(), hq_cfg.clone()],
        &dir,
    )?);
    for n in nodes.iter_mut() {
        n.proc = Some(Proc::spawn(
            &n.name,
            &["run".into(), "--config".into(), n.config.to_string_lossy().into_owned()],
            &dir,
        )?);
        std::thread::sleep(Duration::from_millis(300));
    }
    println!();
    let ca = dir.join("store-ca.pem");
    let fp = step(
        &[
            "store-ca",
            "--data",
            &nodes[0].data.to_string_lossy(),
            "--out",
            &ca.to_string_lossy(),
        ],
        None,
    )?;
    println!(
        "  store CA      {}   ({}; install it on a tablet once, or take it from any node's /ca.crt)",
        ca.display(),
        fp.trim()
    );
    println!(
        "  tablet UI     https://127.0.0.1:{}/   (node-1; node-2 :{}, node-3 :{})",
        nodes[0].ui,
        nodes.get(1).map_or(0, |n| n.ui),
        nodes.get(2).map_or(0, |n| n.ui)
    );
    println!(
        "  log in        {} / {}   (security staff: {} / {})",
        DEMO_MANAGER.0, DEMO_MANAGER.1, DEMO_GUARD.0, DEMO_GUARD.1
    );
    println!(
        "  HQ dashboard  https://localhost:{dash_port}/   log in {DEMO_ANALYST} / {analyst_password}   (self-signed certificate: {})",
        hq.cert.display()
    );
    println!("  HQ uploads    https://localhost:{hq_port}/api/v1/summaries   (the stores' side: no dashboard there)");
    println!(
        "  alerts        {}",
        if mqtt {
            "MQTT broker on 127.0.0.1:1883, topics lpmesh/demo-store/#"
        } else {
            "console (no MQTT broker on 127.0.0.1:1883), high severity"
        }
    );
    println!("  metrics       http://127.0.0.1:{}/metrics", nodes[0].ops);
    println!(
        "  Ctrl-C stops everything{}",
        a.duration
            .map_or(String::new(), |d| format!("; stopping by itself after {d:.0} s"))
    );
    println!();

    let started = Instant::now();
    let mut leaders: Vec<(f64, String)> = Vec::new();
    let mut hq_down_at: Option<Instant> = None;
    let mut hq_restarted = false;
    let mut last_progress = Instant::now();
    let mut alert_lines = 0usize;
    let mut out_offsets: BTreeMap<String, u64> = BTreeMap::new();
    let mut failures: Vec<String> = Vec::new();
    // Node ids (as the status files name leaders) to demo names.
    let mut ids: BTreeMap<String, String> = BTreeMap::new();
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let t = started.elapsed().as_secs_f64();
        if stop.load(Ordering::Relaxed) || a.duration.is_some_and(|d| t >= d) {
            break;
        }
        for n in nodes.iter_mut() {
            if let Some(id) = node_id_of(&n.data) {
                ids.entry(id).or_insert_with(|| n.name.clone());
            }
            let Some(p) = n.proc.as_mut() else { continue };
            if !p.alive() && !n.killed {
                failures.push(format!("{} exited on its own (see {}.log)", n.name, n.name));
                n.proc = None;
                continue;
            }
            if let Some(pid) = p.pid() {
                if let Some((cpu, rss)) = usage(pid) {
                    let now = Instant::now();
                    match n.cpu0 {
                        None => n.cpu0 = Some((now, cpu)),
                        Some((t0, c0)) => {
                            n.wall_s = now.duration_since(t0).as_secs_f64();
                            n.cpu_s = cpu - c0;
                        }
                    }
                    n.max_rss_mb = n.max_rss_mb.max(rss);
                }
                if let Some((pss, anon)) = memory_detail(pid) {
                    n.max_pss_mb = n.max_pss_mb.max(pss);
                    n.max_anon_mb = n.max_anon_mb.max(anon);
                }
            }
            if let Some(m) = http_get(n.ops, "/metrics") {
                let f = metric_sum(&m, "lpmesh_camera_frames_detected_total");
                if n.frames0.is_none() && f > 0.0 {
                    n.frames0 = Some(f);
                }
                n.frames_detected = f - n.frames0.unwrap_or(f);
                n.encoder_mb = metric_sum(&m, "lpmesh_evidence_encoder_peak_rss_bytes") / (1024.0 * 1024.0);
            }
        }
        // Who leads, as the live nodes see it; changes are counted.
        let leader = nodes
            .iter()
            .filter(|n| n.proc.is_some())
            .find_map(|n| leader_of(&n.data));
        // Counted once the nodes have heard each other (the first leader timeout after start).
        if let Some(l) = leader.filter(|_| t >= 6.0) {
            if leaders.last().is_none_or(|(_, prev)| *prev != l) {
                let who = ids.get(&l).cloned().unwrap_or_else(|| l.clone());
                println!("[{t:5.0}s] uplink leader: {who}");
                leaders.push((t, l));
            }
        }
        // Offline-first at work: HQ away for a while.
        if let Some(down) = a.uplink_down {
            if hq_down_at.is_none() && !hq_restarted && t >= 10.0 {
                if let Some(mut p) = hq_proc.take() {
                    p.stop(Duration::from_secs(10));
                }
                hq_down_at = Some(Instant::now());
                println!("[{t:5.0}s] HQ is unreachable for {down:.0} s: summaries wait in the outbox");
            }
            if let Some(at) = hq_down_at {
                if at.elapsed().as_secs_f64() >= down {
                    hq_proc = Some(Proc::spawn(
                        "hq",
                        &["hq".into(), "--config".into(), hq_cfg.clone()],
                        &dir,
                    )?);
                    hq_down_at = None;
                    hq_restarted = true;
                    println!("[{t:5.0}s] HQ is back: the outbox drains");
                }
            }
        }
        if let Some(k) = a.kill_node_after {
            if t >= k && !nodes.iter().any(|n| n.killed) {
                let target = leaders
                    .last()
                    .and_then(|(_, l)| ids.get(l).cloned())
                    .unwrap_or_else(|| "node-1".into());
                if let Some(n) = nodes.iter_mut().find(|n| n.name == target) {
                    if let Some(mut p) = n.proc.take() {
                        p.kill();
                    }
                    n.killed = true;
                    println!(
                        "[{t:5.0}s] {} (the uplink leader) went away (killed); its history stays in the store",
                        n.name
                    );
                }
            }
        }
        // Console alerts, as the guards' screen would show them.
        for n in &nodes {
            let out = dir.join(format!("{}.out", n.name));
            let from = out_offsets.get(&n.name).copied().unwrap_or(0);
            if let Ok(f) = std::fs::File::open(&out) {
                use std::io::{Seek, SeekFrom};
                let mut r = std::io::BufReader::new(f);
                if r.seek(SeekFrom::Start(from)).is_ok() {
                    let mut line = String::new();
                    let mut pos = from;
                    while r.read_line(&mut line).unwrap_or(0) > 0 {
                        if !line.ends_with('\n') {
                            break;
                        }
                        pos += line.len() as u64;
                        if line.starts_with("ALERT ") {
                            alert_lines += 1;
                            print!("[{t:5.0}s] {}: {line}", n.name);
                        }
                        line.clear();
                    }
                    out_offsets.insert(n.name.clone(), pos);
                }
            }
        }
        if last_progress.elapsed() >= Duration::from_secs(15) {
            last_progress = Instant::now();
            let live = nodes.iter().find(|n| n.proc.is_some());
            let records = live
                .and_then(|n| http_get(n.ops, "/metrics"))
                .map_or(0.0, |m| metric_sum(&m, "lpmesh_log_records"));
            let outbox = nodes.iter().filter(|n| n.proc.is_some()).find_map(|n| {
                let text = std::fs::read_to_string(n.data.join("uplink-status.json")).ok()?;
                let v: serde_json::Value = serde_json::from_str(&text).ok()?;
                (v["am_leader"] == true).then(|| v["outbox"].as_u64().unwrap_or(0))
            });
            println!(
                "[{t:5.0}s] {records:.0} records in the store's log; {}",
                outbox.map_or("no leader".to_string(), |o| format!(
                    "{o} period(s) in the leader's outbox"
                ))
            );
        }
    }

    // Alerts delivered, from the nodes' own counters, before they stop.
    let mut alerts_sent = 0.0;
    for n in &nodes {
        if n.proc.is_some() {
            alerts_sent += http_get(n.ops, "/metrics").map_or(0.0, |m| metric_sum(&m, "lpmesh_alerts_sent_total"));
        }
    }
    let ran = started.elapsed().as_secs_f64();
    println!("stopping: cameras, pipelines, alerts, uplink, databases, network ...");
    // All at once, as a store's power switch would: each node stops its cameras, hands its last
    // records to the others while they are still there, and closes.
    for n in nodes.iter() {
        if let Some(p) = &n.proc {
            if let Some(pid) = p.pid() {
                let _ = Command::new("kill").args(["-INT", &pid.to_string()]).status();
            }
        }
    }
    for n in nodes.iter_mut() {
        if let Some(mut p) = n.proc.take() {
            if !p.stop(Duration::from_secs(30)) {
                failures.push(format!("{} did not stop cleanly within 30 s", p.name));
            }
        }
    }
    if let Some(mut p) = hq_proc.take() {
        if !p.stop(Duration::from_secs(10)) {
            failures.push("HQ did not stop cleanly".into());
        }
    }
    report(
        &dir,
        &nodes,
        &hq_dir,
        ran,
        &leaders,
        alerts_sent,
        alert_lines,
        &mut failures,
    )?;
    if failures.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        for f in &failures {
            eprintln!("problem: {f}");
        }
        Ok(ExitCode::FAILURE)
    }
}

#[allow(clippy::too_many_arguments)]
fn report(
    dir: &Path,
    nodes: &[Node],
    hq_dir: &Path,
    ran: f64,
    leaders: &[(f64, String)],
    alerts_sent: f64,
    alert_lines: usize,
    failures: &mut Vec<String>,
) -> Result<()> {
    // Every node's copy of the store's events (the dead node's too: its history stays).
    let mut logs: Vec<(String, String)> = Vec::new();
    for n in nodes {
        logs.push((
            n.name.clone(),
            step(&["events", "--data", &n.data.to_string_lossy(), "--json"], None)?,
        ));
    }
    let reference = logs
        .iter()
        .find(|(name, _)| nodes.iter().any(|n| &n.name == name && !n.killed));
    let Some((_, reference)) = reference else {
        bail!("no node survived");
    };
    let identical = logs
        .iter()
        .filter(|(name, _)| nodes.iter().any(|n| &n.name == name && !n.killed))
        .all(|(_, l)| l == reference);
    if !identical {
        failures.push("the surviving nodes' logs differ".into());
    }
    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_node: BTreeMap<String, u64> = BTreeMap::new();
    for line in reference.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if matches!(v["phase"].as_str(), Some("start") | Some("instant")) {
            *kinds.entry(v["kind"].as_str().unwrap_or("?").to_string()).or_insert(0) += 1;
            *by_node
                .entry(v["node"].as_str().unwrap_or("?").to_string())
                .or_insert(0) += 1;
        }
    }
    let records = reference.lines().count();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let at_hq = rt.block_on(async {
        let store = lpmesh_hq::store::HqStore::Embedded(lpmesh_hq::store::Embedded::open(hq_dir)?);
        store.summaries(&lpmesh_hq::store::Filter::default()).await
    })?;
    let now = chrono::Utc::now().timestamp_millis();
    let hour_of = |ms: i64| ms.div_euclid(3_600_000) * 3_600_000;
    let hour = hour_of(now);
    // A run that crossed an hour boundary had the earlier hour as its current one for most of its
    // time; the new hour's first summary waits for its first events to settle, after the run ends.
    let started_hour = hour_of(now - (ran * 1000.0) as i64);
    let current = at_hq
        .iter()
        .any(|s| s.summary.period_start_ms == hour || s.summary.period_start_ms == started_hour);
    if at_hq.is_empty() {
        failures.push("HQ holds no summary".into());
    }
    let footfall: u64 = at_hq
        .iter()
        .map(|s| s.summary.footfall_totals().0 + s.summary.footfall_totals().1)
        .sum();
    let crossings = kinds.get("line_crossing").copied().unwrap_or(0);
    if footfall != crossings {
        failures.push(format!("HQ counts {footfall} people, the store's log {crossings}"));
    }
    println!();
    println!("lpmesh demo: {ran:.0} s, {} nodes, store {STORE}", nodes.len());
    println!(
        "  events        {} incidents and crossings in {records} records; {:.1} per minute",
        kinds.values().sum::<u64>(),
        kinds.values().sum::<u64>() as f64 / (ran / 60.0)
    );
    for (k, n) in &kinds {
        println!("                {n:>5}  {k}");
    }
    println!(
        "  per node      {}",
        by_node
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  logs          {}",
        if identical {
            "identical on every surviving node"
        } else {
            "DIFFER"
        }
    );
    println!(
        "  alerts        {alerts_sent:.0} delivered by the nodes' routes{}",
        if alert_lines > 0 {
            format!(" ({alert_lines} on the console)")
        } else {
            String::new()
        }
    );
    println!(
        "  HQ            {} period summaries (current hour {}), footfall {footfall} ({})",
        at_hq.len(),
        if current { "present" } else { "MISSING" },
        if footfall == crossings {
            "equal to the log"
        } else {
            "DIFFERENT from the log"
        }
    );
    println!("  leader        {} change(s)", leaders.len().saturating_sub(1));
    // Evidence stays on the node whose camera saw the incident; the log carries only where it is.
    let referenced = reference.lines().filter(|l| l.contains("\"evidence\":{")).count();
    let kept: Vec<(String, lpmesh_node::evidence::store::Usage)> = nodes
        .iter()
        .map(|n| (n.name.clone(), lpmesh_node::evidence::store::usage_in(&n.data)))
        .filter(|(_, u)| u.stills > 0)
        .collect();
    let (stills, clips, bytes) = kept
        .iter()
        .fold((0, 0, 0), |(s, c, b), (_, u)| (s + u.stills, c + u.clips, b + u.bytes));
    println!(
        "  evidence      {stills} stills and {clips} clips kept on their camera nodes, {:.1} MB encrypted ({}); {referenced} incidents point to theirs",
        bytes as f64 / 1e6,
        kept.iter()
            .map(|(n, u)| format!("{n} {}/{} {:.1} MB", u.stills, u.clips, u.bytes as f64 / 1e6))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if referenced > 0 && stills == 0 {
        failures.push("incidents point to evidence, but no node kept any".into());
    }
    for n in nodes {
        let cpu = if n.wall_s > 0.0 {
            100.0 * n.cpu_s / n.wall_s
        } else {
            0.0
        };
        let fps = if n.wall_s > 0.0 {
            n.frames_detected / n.wall_s
        } else {
            0.0
        };
        println!(
            "  {:<12}  CPU {cpu:5.1} %   memory max: RSS {:5.1} MB, PSS {:5.1} MB, private {:5.1} MB{}   detected {fps:4.1} frames/s{}",
            n.name,
            n.max_rss_mb,
            n.max_pss_mb,
            n.max_anon_mb,
            if n.encoder_mb > 0.0 {
                format!(" (+ clip encoder {:.0} MB while it runs)", n.encoder_mb)
            } else {
                String::new()
            },
            if n.killed { "   (killed)" } else { "" }
        );
    }
    println!("  files         {}", dir.display());
    Ok(())
}
