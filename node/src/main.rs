//! The `lpmesh` command line. `anyhow` lives here only; the library has typed errors.

#[cfg(feature = "vision")]
use lpmesh_node::event::Event;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use lpmesh_node::config::NodeConfig;
#[cfg(feature = "vision")]
use lpmesh_node::output::{write_frame, Format};

#[derive(Parser)]
#[command(
    name = "lpmesh",
    version,
    about = "Offline-first loss-prevention camera mesh for retail stores"
)]
struct Cli {
    /// Log level for diagnostics on stderr (error, warn, info, debug, trace); LPMESH_LOG overrides.
    #[arg(long, global = true, default_value = "warn")]
    log_level: String,
    /// Log lines as text for people (default) or one JSON object per line for log collectors.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Detect and track people in a video file or camera URL; one record per tracked person per frame,
    /// or the loss-prevention events with `--format events`.
    #[cfg(feature = "vision")]
    Detect(DetectArgs),
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
    /// The whole product on this machine: three store nodes, HQ, tablet UIs, alerts, the uplink.
    Demo {
        /// Where the demo keeps its nodes, HQ and logs (emptied at start).
        #[arg(long, default_value = "/tmp/lpmesh-demo")]
        dir: PathBuf,
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Stop after this many seconds and print a report.
        #[arg(long)]
        duration: Option<f64>,
        /// Make HQ unreachable for this many seconds (from 10 s in): the outbox grows, then drains.
        #[arg(long)]
        uplink_down: Option<f64>,
        /// Kill the uplink leader after this many seconds: another takes over.
        #[arg(long)]
        kill_node_after: Option<f64>,
    },
    /// Watch people being detected and tracked, and events raised, live on the demo footage (one camera,
    /// one process).
    #[cfg(feature = "vision")]
    Watch {
        /// Node configuration with the demo camera's zones (default: config/demo/store.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Stop after this many seconds (default: play the video once).
        #[arg(long)]
        duration: Option<f64>,
    },
    /// Check a configuration file without opening cameras or models; exit code 0 only when valid.
    Validate { file: PathBuf },
    /// Create a new store's secrets and this first node's identity in a data directory.
    Init {
        #[arg(long)]
        store: String,
        #[arg(long)]
        data: PathBuf,
        /// Also create the store's first manager (a tablet user of every node), password from the
        /// terminal or, with --password-stdin, the first line of standard input.
        #[arg(long)]
        manager: Option<String>,
        #[arg(long, requires = "manager")]
        password_stdin: bool,
    },
    /// Create a single-use invitation for a new node of this store, answered by the node running on
    /// DATA. The token holds no store secret; it expires (15 minutes unless --expires says otherwise).
    Invite {
        #[arg(long)]
        data: PathBuf,
        /// Addresses of running nodes the new node should dial first (repeatable).
        #[arg(long)]
        bootstrap: Vec<String>,
        /// How long the invitation works: 90s, 15m, 2h, 1d (at most 7 days).
        #[arg(long, default_value = "15m", value_parser = parse_duration)]
        expires: std::time::Duration,
        /// The member's enrolment address as the new node reaches it (default: the running node's).
        #[arg(long, value_name = "HOST:PORT", conflicts_with = "serve")]
        enrol: Option<String>,
        /// Answer the invitation from this command, listening on ADDR (e.g. 0.0.0.0:7421), instead
        /// of the node running on DATA: for a store being set up before its first node runs. Exits
        /// once the new node is admitted (or the invitation expires).
        #[arg(long, value_name = "ADDR")]
        serve: Option<String>,
        /// The new node's rank in the uplink election (higher leads; ties go to the smaller id).
        /// Written into its admission: the node's own `[mesh] priority` is not taken.
        #[arg(long, default_value_t = 0)]
        priority: u8,
        /// The new node's name (`node` in its configuration). The store then takes its events and
        /// actions only under this name, and nobody else's under it.
        #[arg(long, value_name = "NAME")]
        node: Option<String>,
    },
    /// Enrol a new node's data directory into a store. The invitation token is read from standard
    /// input (or --token-file), never from the command line, where `ps` and shell history keep it.
    Join {
        #[arg(long)]
        data: PathBuf,
        /// Read the token from this file instead of standard input.
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
    },
    /// Run a node: join the store's mesh and analyse this node's cameras.
    Run {
        #[arg(long)]
        config: PathBuf,
        /// Also append this many synthetic events per second (camera `synthetic`), beside the real
        /// cameras: for load, soak and crash tests.
        #[arg(long, value_name = "PER_SEC")]
        synthetic: Option<f64>,
        /// Stop the synthetic events at this time (Unix milliseconds), the node running on.
        #[arg(long, value_name = "UNIX_MS", requires = "synthetic")]
        synthetic_until: Option<i64>,
    },
    /// The HQ receiver: `lpmesh hq --config FILE` serves; subcommands set it up.
    #[command(args_conflicts_with_subcommands = true)]
    Hq {
        /// HQ configuration (TOML; see config/hq.example.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        cmd: Option<HqCommand>,
    },
    /// Print this store's public signing key, for `lpmesh hq register-store` at HQ.
    StoreKey {
        #[arg(long)]
        data: PathBuf,
    },
    /// The store's certificate authority for its tablets: prints its fingerprint, and with --out
    /// writes the certificate (PEM) for a device manager to push to the store's tablets.
    StoreCa {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Score the tracker against annotated ground truth.
    Eval {
        #[command(subcommand)]
        what: EvalWhat,
    },
    /// Users of this node's tablet UI (managers and security staff).
    User {
        #[command(subcommand)]
        cmd: UserCommand,
    },
    /// Take a node out of the store for good: every member drops it as soon as it hears (a record
    /// signed by this node). Stop this node first; the record goes out when it runs again.
    Revoke {
        /// The node's peer id (see `lpmesh members`).
        node: String,
        #[arg(long)]
        data: PathBuf,
    },
    /// The store's members (admitted node keys) as this node's log holds them. Stop the node first.
    Members {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// The HQ uplink as this node sees it: leader, last sync, periods waiting. Works while the node runs.
    Status {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// List the store's events as this node holds them (decrypted). Stop the node first.
    Events {
        #[arg(long)]
        data: PathBuf,
        /// Only events at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Only this kind (e.g. loitering).
        #[arg(long)]
        kind: Option<String>,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[cfg(feature = "vision")]
#[derive(clap::Args)]
struct DetectArgs {
    /// A video file, an rtsp:// or http:// URL, or a device (/dev/video0 or 0).
    video: String,
    /// Node configuration (TOML); defaults apply without one.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The camera of the configuration whose zones and rules apply (default: the first one).
    #[arg(long)]
    camera: Option<String>,
    #[arg(long, value_enum, default_value = "jsonl")]
    format: Format,
    /// Stop after this many frames.
    #[arg(long)]
    max_frames: Option<u64>,
    /// Pace a file at its frame rate, as a live camera would deliver it (drops frames when behind).
    #[arg(long)]
    realtime: bool,
    /// Start a file again when it ends.
    #[arg(long = "loop")]
    looping: bool,
    /// Write records here instead of stdout.
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// ONNX model (overrides the configuration).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Wall-clock time of the video's first frame, RFC 3339 (default: now). Events of a file then have
    /// the same times on every run.
    #[arg(long)]
    clock_start: Option<String>,
}

#[derive(Subcommand)]
enum EvalWhat {
    /// CLEAR-MOT and identity scores (MOTChallenge definitions) of tracks against ground truth, both
    /// MOTChallenge text files (`lpmesh detect --format mot` writes the tracks).
    Mot {
        /// Ground truth: frame,id,x,y,w,h,conf,... (rows with conf 0 are not scored).
        #[arg(long)]
        gt: PathBuf,
        /// The tracker's output, same format.
        #[arg(long)]
        tracks: PathBuf,
        /// Only these frames, inclusive: A-B (1-based, as in the files).
        #[arg(long, value_name = "A-B")]
        frames: Option<String>,
        /// Smallest IoU of a match.
        #[arg(long, default_value_t = 0.5)]
        iou: f64,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add a user, or set a new password and role for an existing one (takes effect at once).
    Add {
        #[arg(long)]
        data: PathBuf,
        /// manager (everything) or security (incidents and alerts only).
        #[arg(long)]
        role: String,
        name: String,
        /// Read the password from the first line of standard input (for scripts).
        #[arg(long)]
        password_stdin: bool,
    },
    Remove {
        #[arg(long)]
        data: PathBuf,
        name: String,
    },
    List {
        #[arg(long)]
        data: PathBuf,
    },
}

#[derive(Subcommand)]
enum HqCommand {
    /// Create HQ's identity and certificate (if missing) and print what the stores need.
    Init {
        #[arg(long)]
        config: PathBuf,
    },
    /// Register a store's public signing key (from `lpmesh store-key`); works while HQ runs.
    RegisterStore {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        store: String,
        #[arg(long)]
        key: String,
    },
    /// Refuse a store's uploads from now on (a closed store, a stolen node); its summaries stay.
    /// Works while HQ runs; register it again to undo.
    UnregisterStore {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        store: String,
    },
    /// The people who may log in to HQ's dashboard.
    #[command(subcommand)]
    User(HqUserCommand),
}

#[derive(Subcommand)]
enum HqUserCommand {
    /// Add a user, or replace one (new password, role or stores; their sessions end).
    Add {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        name: String,
        /// admin (every store, metrics) or viewer (only --stores).
        #[arg(long)]
        role: String,
        /// A viewer's stores, comma-separated.
        #[arg(long, value_delimiter = ',')]
        stores: Vec<String>,
        /// Read the password from the first line of standard input (for scripts).
        #[arg(long)]
        password_stdin: bool,
    },
    /// Remove a user; their sessions end at their next request.
    Remove {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        name: String,
    },
    List {
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum BenchWhat {
    /// Incident appended on node B -> MQTT message of its alert route, and -> node A's UI stream.
    Alerts {
        #[arg(long, default_value_t = 200)]
        incidents: usize,
        #[arg(long)]
        json: bool,
    },
    /// Summaries/s one HQ process ingests into PostgreSQL over HTTPS (verify and decrypt included).
    Hq {
        #[arg(long, default_value_t = 500)]
        stores: usize,
        /// Hourly summaries per store.
        #[arg(long, default_value_t = 8)]
        periods: usize,
        /// PostgreSQL to use (default: a throw-away cluster started for the run).
        #[arg(long)]
        database_url: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// N store nodes on loopback in this process: append throughput, propagation, catch-up.
    Mesh {
        #[arg(long, default_value_t = 10)]
        nodes: usize,
        /// Records the returning node has to catch up on.
        #[arg(long, default_value_t = 100_000)]
        records: u64,
        #[arg(long)]
        json: bool,
    },
    /// The model alone versus the whole pipeline, on the same frames.
    #[cfg(feature = "vision")]
    Pipeline {
        #[arg(long)]
        video: Option<PathBuf>,
        #[arg(long, default_value_t = 300)]
        frames: u64,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        model: Option<PathBuf>,
    },
}

fn eval_mot(gt: &Path, tracks: &Path, frames: Option<&str>, iou: f64, json: bool) -> Result<ExitCode> {
    use lpmesh_node::eval;
    if !(iou > 0.0 && iou <= 1.0) {
        anyhow::bail!("--iou {iou}: give a value above 0 and at most 1");
    }
    let range = match frames {
        None => None,
        Some(f) => {
            let (a, b) = f
                .split_once('-')
                .and_then(|(a, b)| Some((a.trim().parse::<u32>().ok()?, b.trim().parse::<u32>().ok()?)))
                .filter(|(a, b)| *a >= 1 && a <= b)
                .with_context(|| format!("--frames {f:?}: give A-B, 1 <= A <= B, like 1-400"))?;
            Some((a, b))
        }
    };
    let read = |p: &Path| -> Result<Vec<eval::Row>> {
        let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        eval::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))
    };
    let s = eval::evaluate(&read(gt)?, &read(tracks)?, range, iou);
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(ExitCode::SUCCESS);
    }
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.1} %", v * 100.0));
    println!(
        "frames {}, ground truth {} boxes of {} people, tracks {} boxes of {} ids (IoU >= {iou})",
        s.frames, s.gt_boxes, s.gt_ids, s.hyp_boxes, s.hyp_ids
    );
    println!(
        "MOTA {}   MOTP {} (mean IoU)   IDF1 {}   IDP {}   IDR {}",
        pct(s.mota),
        pct(s.motp),
        pct(s.idf1),
        pct(s.idp),
        pct(s.idr)
    );
    println!("recall {}   precision {}", pct(s.recall), pct(s.precision));
    println!(
        "id switches {}   fragmentations {}   false positives {}   misses {}",
        s.id_switches, s.fragmentations, s.false_positives, s.misses
    );
    println!(
        "mostly tracked {}   partially tracked {}   mostly lost {}",
        s.mostly_tracked, s.partially_tracked, s.mostly_lost
    );
    Ok(ExitCode::SUCCESS)
}

/// `90s`, `15m`, `2h`, `1d`, or plain seconds.
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: give a number and a unit, like 15m"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => return Err(format!("{s:?}: the unit is s, m, h or d")),
    };
    if secs == 0 {
        return Err("an invitation must last more than zero seconds".into());
    }
    Ok(std::time::Duration::from_secs(secs))
}

fn main() -> ExitCode {
    lpmesh_node::ops::tune_allocator();
    let cli = Cli::parse();
    init_logging(&cli.log_level, cli.log_format);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LPMESH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{level},ort=warn")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).init(),
    }
}

/// A benchmark's figures as one JSON object, with the machine they were measured on.
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

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        #[cfg(feature = "vision")]
        Command::Detect(args) => vision::detect(args),
        #[cfg(feature = "vision")]
        Command::Bench {
            what:
                BenchWhat::Pipeline {
                    video,
                    frames,
                    json,
                    config,
                    model,
                },
        } => vision::bench(video, frames, json, config.as_deref(), model),
        Command::Bench {
            what: BenchWhat::Mesh { nodes, records, json },
        } => {
            let root = std::env::temp_dir().join(format!("lpmesh-bench-mesh-{}", std::process::id()));
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            let machine = lpmesh_node::ops::machine(&std::env::temp_dir());
            let r = rt.block_on(lpmesh_mesh::bench::run(nodes, records, root))?;
            if json {
                println!("{}", bench_json(&r, &machine)?);
            } else {
                println!("{}", machine_line(&machine));
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
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            what:
                BenchWhat::Hq {
                    stores,
                    periods,
                    database_url,
                    json,
                },
        } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            // A database of its own lies in the temp directory; one named by URL is wherever it is.
            let machine = lpmesh_node::ops::Machine {
                data_dir: database_url.as_ref().map_or_else(
                    || std::env::temp_dir().display().to_string(),
                    |_| "the database given".into(),
                ),
                ..lpmesh_node::ops::machine(&std::env::temp_dir())
            };
            let r = rt.block_on(lpmesh_hq::bench::run(stores, periods, database_url))?;
            if json {
                println!("{}", bench_json(&r, &machine)?);
            } else {
                println!("{}", machine_line(&machine));
                println!(
                    "{} summaries from {} stores into {} ({}) over HTTPS, {} concurrent uploads",
                    r.summaries,
                    r.stores,
                    r.database,
                    match r.fsync {
                        Some(true) => "fsync on",
                        Some(false) => "fsync off",
                        None => "its own fsync setting",
                    },
                    r.concurrency
                );
                println!(
                    "ingest           {:>8.0} summaries/s   (p50 {:.1} ms, p99 {:.1} ms per upload; {} B per envelope)",
                    r.summaries_per_s, r.p50_ms, r.p99_ms, r.envelope_bytes
                );
                println!(
                    "10,000 stores    {:.2} summaries/s hourly = {:.3} % of this HQ process (target < 1 %)",
                    r.chain_10k_hourly_per_s,
                    r.chain_10k_share * 100.0
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            what: BenchWhat::Alerts { incidents, json },
        } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            let machine = lpmesh_node::ops::machine(&std::env::temp_dir());
            let r = rt.block_on(lpmesh_node::bench_alerts::run(incidents))?;
            if json {
                println!("{}", bench_json(&r, &machine)?);
            } else {
                println!("{}", machine_line(&machine));
                println!("{} incidents appended on node B, on loopback", r.incidents);
                println!(
                    "-> MQTT message       p50 {:.1} ms   p99 {:.1} ms   ({} received; target p99 < 250 ms)",
                    r.mqtt_p50_ms, r.mqtt_p99_ms, r.mqtt_received
                );
                println!(
                    "-> node A's UI stream p50 {:.1} ms   p99 {:.1} ms   ({} received; target p99 < 250 ms)",
                    r.stream_p50_ms, r.stream_p99_ms, r.stream_received
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Hq { config, cmd } => hq::run(config, cmd),
        Command::StoreKey { data } => {
            let secrets = lpmesh_mesh::keys::StoreSecrets::load(&data)?;
            let key = secrets.signing_key()?.public();
            let text = lpmesh_hq::envelope::store_key_to_string(&key).context("the store key is not Ed25519")?;
            println!("{text}");
            eprintln!(
                "register it at HQ: lpmesh hq register-store --config HQ.toml --store {} --key {text}",
                secrets.store
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::StoreCa { data, out } => {
            let secrets = lpmesh_mesh::keys::StoreSecrets::load(&data)?;
            // What the node serves now (after a revocation, its key epoch's CA), else the store's.
            let current = std::fs::read_to_string(data.join("ui-tls").join(CURRENT_CA_FILE)).ok();
            let Some(cert_pem) = current.or(secrets.ui_ca.map(|c| c.cert_pem)) else {
                eprintln!(
                    "store {} has no certificate authority (made before store CAs): each node's UI shows its own, from https://NODE:PORT/ca.crt",
                    secrets.store
                );
                return Ok(ExitCode::FAILURE);
            };
            let der = lpmesh_web::tls::first_der(&cert_pem).context("the store's CA certificate is not PEM")?;
            println!("SHA-256 {}", lpmesh_web::tls::fingerprint(&der));
            if let Some(out) = out {
                std::fs::write(&out, &cert_pem).with_context(|| format!("cannot write {}", out.display()))?;
                eprintln!("store {}'s CA certificate written to {}", secrets.store, out.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { data, json } => status(&data, json),
        Command::User { cmd } => user(cmd),
        Command::Revoke { node, data } => {
            let revoked = lpmesh_node::node::revoke(&data, &node)?;
            println!("revoked {revoked}: start this node; every member drops it as soon as it hears");
            Ok(ExitCode::SUCCESS)
        }
        Command::Members { data, json } => {
            let Some(list) = lpmesh_node::node::read_members(&data)? else {
                println!("this store has no member list (created before invitations): every holder of its network key can connect");
                return Ok(ExitCode::SUCCESS);
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                for m in &list {
                    let when = m
                        .admitted_at_ms
                        .and_then(chrono::DateTime::from_timestamp_millis)
                        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
                        .unwrap_or_default();
                    match (&m.admitted_by, m.founder) {
                        (_, true) => println!("{}  founder", m.node),
                        (Some(by), _) => println!(
                            "{}  admitted by {by} at {when}, priority {}",
                            m.node,
                            m.priority.unwrap_or(0)
                        ),
                        (None, _) => println!("{}", m.node),
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Eval {
            what:
                EvalWhat::Mot {
                    gt,
                    tracks,
                    frames,
                    iou,
                    json,
                },
        } => eval_mot(&gt, &tracks, frames.as_deref(), iou, json),
        #[cfg(feature = "vision")]
        Command::Watch { config, duration } => vision::demo(config, duration),
        Command::Demo {
            dir,
            nodes,
            duration,
            uplink_down,
            kill_node_after,
        } => cli_demo::run(
            cli_demo::DemoArgs {
                dir,
                nodes,
                duration,
                uplink_down,
                kill_node_after,
            },
            stop_flag(),
        ),
        Command::Init {
            store,
            data,
            manager,
            password_stdin,
        } => {
            // Checked before anything is created: a refused password leaves no half-made store.
            let first = match manager {
                Some(name) => {
                    let password = read_password(password_stdin)?;
                    lpmesh_node::ui::auth::check_new_user(&name, &password)?;
                    Some((name, password))
                }
                None => None,
            };
            let peer = lpmesh_node::node::init(&store, &data)?;
            println!("store {store} created in {}; this node is {peer}", data.display());
            if let Some((name, password)) = first {
                lpmesh_node::ui::auth::Users::new(&data).add(&name, lpmesh_node::ui::auth::Role::Manager, &password)?;
                println!("manager {name} can log in on every node of the store once this node runs");
            }
            println!(
                "next: start this node, then `lpmesh invite --data {}` makes a single-use invitation for each other node",
                data.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Invite {
            data,
            bootstrap,
            expires,
            enrol,
            serve,
            priority,
            node,
        } => {
            let grant = lpmesh_mesh::enrol::Grant { name: node, priority };
            let show = |inv: &lpmesh_mesh::enrol::Invitation, token: &lpmesh_mesh::enrol::Token| {
                eprintln!(
                    "invitation {} for store {}: works once, until {} UTC; on the new node run `lpmesh join --data DIR` and paste it",
                    inv.id,
                    inv.store,
                    chrono::DateTime::from_timestamp_millis(inv.expires_ms as i64)
                        .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
                        .unwrap_or_default()
                );
                println!("{}", token.encode());
                let _ = std::io::Write::flush(&mut std::io::stdout());
            };
            match serve {
                Some(listen) => {
                    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                    let admitted = rt.block_on(lpmesh_node::node::invite_and_serve(
                        &data, bootstrap, expires, grant, &listen, show,
                    ))?;
                    eprintln!("admitted node {}", admitted.node.to_peer_id());
                }
                None => {
                    let (inv, token) = lpmesh_node::node::invite(&data, bootstrap, expires, grant, enrol)?;
                    show(&inv, &token);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Join { data, token_file } => {
            let token = match token_file {
                Some(f) => {
                    std::fs::read_to_string(&f).with_context(|| format!("reading the token from {}", f.display()))?
                }
                None => {
                    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                        eprintln!("paste the invitation token and press Enter:");
                    }
                    let mut line = String::new();
                    std::io::BufRead::read_line(&mut std::io::stdin().lock(), &mut line)
                        .context("reading the token from standard input")?;
                    line
                }
            };
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let admitted_as = lpmesh_mesh::enrol::Token::decode(&token).ok().and_then(|t| t.name);
            let (store, bootstrap, peer) = rt.block_on(lpmesh_node::node::join(&token, &data))?;
            println!("joined store {store} in {}; this node is {peer}", data.display());
            if let Some(name) = admitted_as {
                println!("admitted as node {name:?}: its configuration must say node = {name:?}");
            }
            if !bootstrap.is_empty() {
                println!("add to [mesh] bootstrap in this node's configuration: {bootstrap:?}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            config,
            synthetic,
            synthetic_until,
        } => daemon::run(
            &config,
            synthetic.map(|rate| (rate, synthetic_until.unwrap_or(i64::MAX))),
        ),
        Command::Events {
            data,
            since,
            kind,
            json,
        } => {
            let since_ms = match since {
                Some(s) => Some(
                    chrono::DateTime::parse_from_rfc3339(&s)
                        .with_context(|| format!("--since {s:?} is not an RFC 3339 time"))?
                        .timestamp_millis(),
                ),
                None => None,
            };
            let events = lpmesh_node::node::read_events(&data)?;
            let mut out = std::io::stdout().lock();
            for e in events
                .iter()
                .filter(|e| since_ms.is_none_or(|t| e.at_ms >= t))
                .filter(|e| kind.as_deref().is_none_or(|k| e.kind.as_str() == k))
            {
                if json {
                    writeln!(out, "{}", serde_json::to_string(e)?)?;
                } else {
                    let at = chrono::DateTime::from_timestamp_millis(e.at_ms)
                        .map(|t| t.to_rfc3339())
                        .unwrap_or_default();
                    writeln!(
                        out,
                        "{at}  {:<8} {:<22} {:<8} {}/{}/{}  {}",
                        format!("{:?}", e.severity).to_lowercase(),
                        e.kind.as_str(),
                        format!("{:?}", e.phase).to_lowercase(),
                        e.node,
                        e.camera,
                        e.zone.as_deref().unwrap_or("-"),
                        e.incident
                    )?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate { file } => {
            let checked = if is_hq_config(&file) {
                lpmesh_hq::config::HqConfig::load(&file)
                    .and_then(|c| c.metrics_token().map(|_| "HQ configuration"))
                    .map_err(|e| e.to_string())
            } else {
                NodeConfig::load(&file)
                    .map(|_| "store node configuration")
                    .map_err(|e| e.to_string())
            };
            match checked {
                Ok(what) => {
                    println!("{}: valid {what}", file.display());
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("{e}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
    }
}

/// The CA a node's UI serves now, in `ui-tls/` of its data directory (for `lpmesh store-ca`).
const CURRENT_CA_FILE: &str = "current-ca.pem";

/// Whether a configuration file is HQ's: it names no store and sets a key only HQ has. A file that
/// cannot be read or parsed is checked as a node's, whose reader says what is wrong with it.
fn is_hq_config(file: &Path) -> bool {
    const HQ_ONLY: [&str; 9] = [
        "listen",
        "dashboard_listen",
        "database_url",
        "tls_cert",
        "tls_key",
        "tls_names",
        "max_envelope_bytes",
        "export_max_days",
        "metrics_token_file",
    ];
    std::fs::read_to_string(file)
        .ok()
        .and_then(|t| t.parse::<toml::Table>().ok())
        .is_some_and(|t| !t.contains_key("store") && HQ_ONLY.iter().any(|k| t.contains_key(*k)))
}

fn read_password(from_stdin: bool) -> Result<String> {
    use std::io::{BufRead, IsTerminal};
    let tty = !from_stdin && std::io::stdin().is_terminal();
    if tty {
        eprint!("password: ");
        // Keep the password off the screen.
        let _ = std::process::Command::new("stty").arg("-echo").status();
    }
    let mut line = String::new();
    let read = std::io::stdin().lock().read_line(&mut line);
    if tty {
        let _ = std::process::Command::new("stty").arg("echo").status();
        eprintln!();
    }
    read.context("cannot read the password")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

fn user(cmd: UserCommand) -> Result<ExitCode> {
    use lpmesh_node::ui::auth::{Role, Users};
    match cmd {
        UserCommand::Add {
            data,
            role,
            name,
            password_stdin,
        } => {
            let role = Role::parse(&role).context("--role is manager or security")?;
            let password = read_password(password_stdin)?;
            Users::new(&data).add(&name, role, &password)?;
            println!(
                "user {name} ({role:?}) saved in {}; every node of the store takes it once this node runs",
                data.display()
            );
        }
        UserCommand::Remove { data, name } => {
            let here = Users::new(&data).remove(&name)?;
            let whose = if here {
                ""
            } else {
                " (not in this node's file: removed from the store all the same)"
            };
            println!("user {name} removed{whose}; every node of the store ends its sessions once this node runs");
        }
        UserCommand::List { data } => {
            let view = std::fs::read(data.join(lpmesh_node::ui::auth::VIEW_FILE))
                .ok()
                .and_then(|b| serde_json::from_slice::<lpmesh_node::ui::auth::UsersView>(&b).ok());
            match view {
                Some(v) => {
                    for (name, role) in &v.users {
                        println!("{name:<24} {role:?}");
                    }
                    let at = chrono::DateTime::from_timestamp_millis(v.at_ms)
                        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
                        .unwrap_or_default();
                    eprintln!("the store's users as this node last saw them ({at}); changes made here since appear once it runs");
                }
                None => {
                    for u in Users::new(&data).load()? {
                        println!("{:<24} {:?}", u.name, u.role);
                    }
                    eprintln!("this node's own file: the store's list appears here once the node has run");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn status(data: &Path, json: bool) -> Result<ExitCode> {
    let Some((st, age_ms)) = lpmesh_node::uplink::read_status(data)
        .with_context(|| format!("cannot read the uplink status in {}", data.display()))?
    else {
        println!(
            "no uplink status in {}: the node has not run with an [hq] section yet",
            data.display()
        );
        return Ok(ExitCode::FAILURE);
    };
    if json {
        println!("{}", serde_json::to_string(&st)?);
        return Ok(ExitCode::SUCCESS);
    }
    let when = |ms: Option<i64>| {
        ms.and_then(chrono::DateTime::from_timestamp_millis)
            .map_or("never".to_string(), |t| {
                let ago = (chrono::Utc::now() - t).num_seconds().max(0);
                format!("{} ({ago} s ago)", t.format("%Y-%m-%d %H:%M:%S UTC"))
            })
    };
    println!("node            {}", st.node);
    println!(
        "uplink leader   {}{}",
        st.leader.as_deref().unwrap_or("none (no heartbeats heard)"),
        if st.am_leader { "  (this node)" } else { "" }
    );
    println!(
        "HQ              {} ({})",
        st.hq_url,
        if st.hq_reachable { "reachable" } else { "unreachable" }
    );
    println!("last sync       {}", when(st.last_sync_ms));
    println!(
        "outbox          {} period(s) waiting, {} held by HQ as here",
        st.outbox, st.periods_done
    );
    if let Some(e) = &st.last_error {
        println!("last error      {e}");
    }
    if age_ms > 10_000 {
        println!(
            "(written {} s ago: the node is not running, or is stuck)",
            age_ms / 1000
        );
    }
    Ok(ExitCode::SUCCESS)
}

mod hq {
    use super::*;
    use lpmesh_hq::config::HqConfig;

    fn runtime() -> Result<tokio::runtime::Runtime> {
        Ok(tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?)
    }

    pub fn run(config: Option<PathBuf>, cmd: Option<HqCommand>) -> Result<ExitCode> {
        match cmd {
            Some(HqCommand::Init { config }) => {
                let cfg = HqConfig::load(&config)?;
                let id = lpmesh_hq::service::init(&cfg)?;
                print_identity(&id);
                Ok(ExitCode::SUCCESS)
            }
            Some(HqCommand::RegisterStore { config, store, key }) => {
                let cfg = HqConfig::load(&config)?;
                runtime()?.block_on(lpmesh_hq::service::register_store(&cfg, &store, &key))?;
                println!("store {store} registered");
                Ok(ExitCode::SUCCESS)
            }
            Some(HqCommand::UnregisterStore { config, store }) => {
                let cfg = HqConfig::load(&config)?;
                if runtime()?.block_on(lpmesh_hq::service::unregister_store(&cfg, &store))? {
                    println!(
                        "store {store} unregistered: its uploads are refused within {} s; its summaries stay",
                        lpmesh_hq::store::KEY_TTL.as_secs()
                    );
                    Ok(ExitCode::SUCCESS)
                } else {
                    eprintln!("no registered store named {store}");
                    Ok(ExitCode::FAILURE)
                }
            }
            Some(HqCommand::User(cmd)) => user(cmd),

            None => {
                let config = config.context("lpmesh hq needs --config FILE (see config/hq.example.toml)")?;
                let cfg = HqConfig::load(&config)?;
                serve(&cfg)
            }
        }
    }

    fn user(cmd: HqUserCommand) -> Result<ExitCode> {
        use lpmesh_hq::access::{new_user, HqRole};
        match cmd {
            HqUserCommand::Add {
                config,
                name,
                role,
                stores,
                password_stdin,
            } => {
                let cfg = HqConfig::load(&config)?;
                let role = HqRole::parse(&role).context("--role is admin or viewer")?;
                let stores: Vec<String> = stores.into_iter().filter(|s| !s.is_empty()).collect();
                let password = super::read_password(password_stdin)?;
                let now = chrono::Utc::now().timestamp_millis();
                let user = new_user(&name, role, stores, &password, now)?;
                runtime()?.block_on(lpmesh_hq::service::put_user(&cfg, user))?;
                println!("HQ user {name} ({}) saved; it can log in at once", role.as_str());
            }
            HqUserCommand::Remove { config, name } => {
                let cfg = HqConfig::load(&config)?;
                if !runtime()?.block_on(lpmesh_hq::service::remove_user(&cfg, &name))? {
                    eprintln!("no HQ user named {name}");
                    return Ok(ExitCode::FAILURE);
                }
                println!("HQ user {name} removed; their sessions end at their next request");
            }
            HqUserCommand::List { config } => {
                let cfg = HqConfig::load(&config)?;
                for u in runtime()?.block_on(lpmesh_hq::service::users(&cfg))? {
                    let scope = if u.stores.is_empty() {
                        "every store".to_string()
                    } else {
                        u.stores.join(",")
                    };
                    println!("{:<24} {:<7} {scope}", u.name, u.role.as_str());
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    }

    fn print_identity(id: &lpmesh_hq::service::Identity) {
        println!("HQ recipient    {}", id.recipient);
        println!(
            "certificate     {}{}",
            id.cert_path.display(),
            if id.self_signed { " (self-signed)" } else { "" }
        );
        println!("fingerprint     SHA-256 {}", id.fingerprint);
        println!(
            "stores need:    [hq] url = \"https://HOST:PORT\", recipient = \"{}\"{}",
            id.recipient,
            if id.self_signed {
                ", ca_cert = (a copy of the certificate above)"
            } else {
                ""
            }
        );
    }

    fn serve(cfg: &HqConfig) -> Result<ExitCode> {
        let stop = stop_flag();
        runtime()?.block_on(async {
            let started = lpmesh_hq::service::start(cfg).await?;
            print_identity(&started.identity);
            println!(
                "HQ uploads on https://{} ({} store); dashboard (login) at https://{}/",
                started.running.addr,
                started.state.store.kind(),
                started.dashboard.addr
            );
            if started.users == 0 {
                println!("no HQ user yet: add one with `lpmesh hq user add --config FILE --name NAME --role admin`");
            }
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            started.shutdown(std::time::Duration::from_secs(5)).await;
            println!("HQ stopped");
            Ok(ExitCode::SUCCESS)
        })
    }
}

/// Ctrl-C (and SIGTERM) set the flag; the pipeline drains and the summary is still printed.
fn stop_flag() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    if let Err(e) = ctrlc::set_handler(move || s.store(true, Ordering::Relaxed)) {
        tracing::warn!(error = %e, "cannot install the Ctrl-C handler");
    }
    stop
}

mod cli_demo;

/// How long a stopping node keeps its mesh open after its last records.
const SHUTDOWN_LINGER: std::time::Duration = std::time::Duration::from_millis(1500);

mod daemon {
    use super::*;

    /// How tablets reach this node's UI, for alert links.
    fn ui_url(cfg: &NodeConfig) -> String {
        let scheme = if cfg.ui.tls { "https" } else { "http" };
        cfg.ui
            .public_url
            .clone()
            .unwrap_or_else(|| format!("{scheme}://{}", cfg.ui.listen))
    }

    /// The host name in a URL like `https://front-desk.lan:8443/` (the UI answers to it).
    fn url_host(url: &str) -> Option<String> {
        let rest = url.split_once("://")?.1;
        let authority = rest.split(['/', '?', '#']).next()?;
        let host = match authority.rfind(':') {
            Some(i) if !authority[i..].contains(']') => &authority[..i],
            _ => authority,
        };
        (!host.is_empty()).then(|| host.to_string())
    }

    /// A CA, its name, and whether every node of the store shares it.
    type UiCaChoice = (lpmesh_web::tls::CaPem, String, bool);

    /// The CA tablets trust this node through, its name, and whether every node shares it: the
    /// current key epoch's (a revocation brings a new one), else the store's, else (a store made before
    /// store CAs) one this node makes for itself and keeps.
    fn ui_ca(cfg: &NodeConfig, ring: &lpmesh_mesh::crypto::Keyring, base: &UiCaChoice) -> UiCaChoice {
        ring.current_epoch()
            .and_then(|e| e.ui_ca)
            .map_or_else(|| base.clone(), |ca| store_ui_ca(cfg, ca))
    }

    fn store_ui_ca(cfg: &NodeConfig, ca: lpmesh_mesh::keys::UiCa) -> UiCaChoice {
        let name = if ca.name.is_empty() { cfg.store.clone() } else { ca.name };
        (
            lpmesh_web::tls::CaPem {
                cert_pem: ca.cert_pem,
                key_pem: ca.key_pem,
            },
            name,
            true,
        )
    }

    /// The CA when no key epoch brings one: the store's, read once at start (it never changes).
    fn base_ui_ca(cfg: &NodeConfig) -> Result<UiCaChoice> {
        use lpmesh_web::tls::{new_ca, CaPem};
        if let Some(ca) = StoreSecrets::load(&cfg.data_dir)?.ui_ca {
            return Ok(store_ui_ca(cfg, ca));
        }
        let name = format!("{} node {}", cfg.store, cfg.node);
        let dir = cfg.data_dir.join("ui-tls");
        let (c, k) = (dir.join("node-ca.pem"), dir.join("node-ca.key"));
        let ca = match (std::fs::read_to_string(&c), std::fs::read_to_string(&k)) {
            (Ok(cert_pem), Ok(key_pem)) => CaPem { cert_pem, key_pem },
            _ => {
                let ca = new_ca(&name)?;
                std::fs::create_dir_all(&dir)?;
                lpmesh_mesh::keys::write_private(&k, ca.key_pem.as_bytes())?;
                std::fs::write(&c, &ca.cert_pem)?;
                ca
            }
        };
        Ok((ca, name, false))
    }

    /// A fresh certificate from `ca` for every name and address the UI answers to, and what tablets
    /// install to trust it. The CA served is also written to `ui-tls/current-ca.pem` for `lpmesh
    /// store-ca`.
    fn ui_certificate(
        cfg: &NodeConfig,
        addr: std::net::SocketAddr,
        (ca, name, store_wide): &UiCaChoice,
    ) -> Result<(lpmesh_node::ui::Trust, Vec<u8>, Vec<u8>)> {
        use lpmesh_web::tls::{fingerprint, first_der, issue};
        let mut names = vec!["localhost".to_string()];
        names.extend(lpmesh_node::ui::this_hostname());
        names.extend(cfg.ui.names.iter().cloned());
        let mut ips: Vec<std::net::IpAddr> = vec![[127, 0, 0, 1].into(), std::net::Ipv6Addr::LOCALHOST.into()];
        if let Some(host) = cfg.ui.public_url.as_deref().and_then(url_host) {
            match host.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
                Ok(ip) => ips.push(ip),
                Err(_) => names.push(host),
            }
        }
        if addr.ip().is_unspecified() {
            ips.extend(lpmesh_node::ui::local_addresses());
        } else {
            ips.push(addr.ip());
        }
        let (chain, key) = issue(name, ca, &names, &ips)?;
        let der = first_der(&ca.cert_pem).context("the UI CA certificate is not PEM")?;
        let dir = cfg.data_dir.join("ui-tls");
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join("current-ca.pem.tmp");
        std::fs::write(&tmp, &ca.cert_pem)?;
        std::fs::rename(&tmp, dir.join(CURRENT_CA_FILE))?;
        let trust = lpmesh_node::ui::Trust {
            fingerprint: fingerprint(&der),
            cert_der: der,
            cert_pem: ca.cert_pem.clone(),
            store_wide: *store_wide,
        };
        Ok((trust, chain, key))
    }

    /// Follows the key epochs: when the current one brings another CA (a revocation), the UI's
    /// certificate is issued again from it and served from the next connection on.
    async fn follow_ui_ca(
        cfg: NodeConfig,
        addr: std::net::SocketAddr,
        ring: lpmesh_mesh::crypto::Keyring,
        state: Arc<lpmesh_node::ui::UiState>,
        tls: axum_server::tls_rustls::RustlsConfig,
        base: UiCaChoice,
        serving: String,
    ) {
        // The CA last tried: one that fails is reported once, not every tick.
        let mut last = serving;
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
        loop {
            tick.tick().await;
            let ca = ui_ca(&cfg, &ring, &base);
            if ca.0.cert_pem == last {
                continue;
            }
            last = ca.0.cert_pem.clone();
            match ui_certificate(&cfg, addr, &ca) {
                Ok((trust, chain, key)) => match tls.reload_from_pem(chain, key).await {
                    Ok(()) => {
                        tracing::warn!(
                            ca = %ca.1,
                            fingerprint = %trust.fingerprint,
                            "the store's tablet certificate changed with its key epoch (a node was revoked): every tablet installs the new one from /ca.crt"
                        );
                        state.set_trust(trust);
                    }
                    Err(e) => tracing::error!(error = %e, "cannot serve the new UI certificate"),
                },
                Err(e) => tracing::error!(error = %e, "cannot issue the UI certificate"),
            }
        }
    }

    /// Starts the tablet UI (unless switched off): the incident view fed from the log, the listener.
    async fn start_ui(
        cfg: &NodeConfig,
        mesh: &lpmesh_mesh::net::MeshHandle,
        reader: lpmesh_node::bounds::Reader,
        members: Option<tokio::sync::watch::Receiver<Vec<lpmesh_node::members::Member>>>,
        uplink: Option<tokio::sync::watch::Receiver<lpmesh_node::uplink::UplinkStatus>>,
        board: lpmesh_node::ui::CameraBoard,
        zone_control: Arc<lpmesh_node::ui::zones::ZoneControl>,
    ) -> Result<Option<(lpmesh_node::ui::Running, String)>> {
        if !cfg.ui.enabled {
            return Ok(None);
        }
        let tz = lpmesh_node::schedule::Schedule::parse_tz(&cfg.schedule.timezone).map_err(anyhow::Error::msg)?;
        let reader_ring = reader.ring().clone();
        let state = lpmesh_node::ui::UiState::new(
            &cfg.store,
            &cfg.node,
            cfg.data_dir.clone(),
            mesh.clone(),
            reader,
            uplink,
            board,
            tz,
            cfg.ui.tls,
        )
        .with_zones(zone_control)
        .with_host_names(
            cfg.ui
                .names
                .iter()
                .cloned()
                .chain(cfg.ui.public_url.as_deref().and_then(url_host))
                .collect(),
        );
        let state = match members {
            Some(m) => state.with_members(m),
            None => state,
        };
        let feed_state = state.clone();
        let retention = Some(std::time::Duration::from_secs_f64(cfg.mesh.retention_days * 86_400.0));
        tokio::spawn(async move {
            if let Err(e) = lpmesh_node::ui::feed(feed_state, retention).await {
                tracing::error!(error = %e, "the UI's incident view stopped");
            }
        });
        // `lpmesh user add|remove` on this node reaches every node of the store through the log.
        let users_state = state.clone();
        tokio::spawn(async move {
            if let Err(e) = lpmesh_node::ui::publish_users(users_state).await {
                tracing::error!(error = %e, "user changes are no longer published to the store");
            }
        });
        let addr: std::net::SocketAddr = cfg.ui.listen.parse().context("[ui] listen")?;
        let ring = reader_ring.clone();
        let (state, tls, serving) = if cfg.ui.tls {
            let base = base_ui_ca(cfg)?;
            let ca = ui_ca(cfg, &ring, &base);
            let (trust, chain, key) = ui_certificate(cfg, addr, &ca)?;
            println!(
                "UI certificate issued by {} (SHA-256 {}); tablets install it once from https://<this node>/ca.crt",
                if trust.store_wide {
                    "the store's CA"
                } else {
                    "this node's own CA (the store has none: made before store CAs)"
                },
                trust.fingerprint
            );
            (state.with_trust(trust), Some((chain, key)), Some((base, ca.0.cert_pem)))
        } else {
            tracing::warn!(
                "[ui] tls = false: the tablet UI serves plain HTTP; logins, invitations and camera pictures are refused to anything but this machine"
            );
            eprintln!(
                "warning: [ui] tls = false: the tablet UI serves plain HTTP; logins, invitations and camera pictures only from this machine"
            );
            (state, None, None)
        };
        // A node that cannot serve its page still detects, alerts and replicates: say so loudly, go on.
        let running = match lpmesh_node::ui::serve(state.clone(), addr, tls).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "the tablet UI is not available on this node");
                eprintln!("error: {e}: this node runs without its UI (check [ui] listen)");
                return Ok(None);
            }
        };
        if let (Some(tls), Some((base, serving))) = (running.tls_config(), serving) {
            tokio::spawn(follow_ui_ca(cfg.clone(), addr, ring, state, tls, base, serving));
        }
        let url = ui_url(cfg);
        println!("UI of node {} at {url}", cfg.node);
        if lpmesh_node::ui::auth::Users::new(&cfg.data_dir)
            .load()
            .map(|u| u.is_empty())
            .unwrap_or(true)
        {
            println!(
                "no UI users yet: lpmesh user add --data {} --role manager NAME",
                cfg.data_dir.display()
            );
        }
        Ok(Some((running, url)))
    }
    use lpmesh_mesh::keys::StoreSecrets;
    use lpmesh_node::node::{append_events, start_mesh, EVENT_QUEUE};

    pub fn run(config: &Path, synthetic: Option<(f64, i64)>) -> Result<ExitCode> {
        let cfg = NodeConfig::load(config)?;
        if let Some((r, _)) = synthetic.filter(|(r, _)| !(r.is_finite() && *r > 0.0 && *r <= 10_000.0)) {
            anyhow::bail!("--synthetic {r}: give events per second, more than 0 and at most 10000");
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        rt.block_on(async {
            let mesh = start_mesh(&cfg)?;
            let store_secrets = StoreSecrets::load(&cfg.data_dir)?;
            let node_key = lpmesh_mesh::keys::load_node_key(&cfg.data_dir)?;
            // One keyring for every reader, the enrolment listener and the key-epoch follower.
            let reader = lpmesh_node::bounds::Reader::new(store_secrets.keyring()?, cfg.mesh.time_window_secs);
            // Invitations are answered while the node runs; each admission is logged by the listener.
            let (admitted_tx, mut admitted_rx) = tokio::sync::mpsc::channel(16);
            let enrol_addr =
                lpmesh_node::node::start_enrolment(&cfg, reader.ring().clone(), Default::default(), admitted_tx).await?;
            // Each node admitted here becomes a member of the store with a record signed by this node.
            let admit_mesh = mesh.clone();
            tokio::spawn(async move {
                while let Some(a) = admitted_rx.recv().await {
                    if let Some(item) = lpmesh_node::node::admission(&a) {
                        if let Err(e) = admit_mesh.append(vec![item]).await {
                            tracing::error!(error = %e, node = %a.node.to_peer_id(), "cannot record an admission in the log");
                        }
                    }
                }
            });
            println!("answering invitations on {enrol_addr}");
            let (members_tx, members_rx) = tokio::sync::watch::channel(Vec::new());
            let store_founder = lpmesh_node::node::founder(&store_secrets);
            // The members' names are known before any view reads a record with this reader.
            let initial = lpmesh_node::node::load_members(&mesh, &reader, store_founder, &node_key).await;
            let me = mesh.origin();
            if store_founder == Some(me) {
                // The founder has no admission to carry its name: it records the name itself.
                if let Some(item) = lpmesh_node::node::founder_name_record(&initial, &me, &cfg.node) {
                    mesh.append(vec![item]).await.context("recording this founder's node name")?;
                }
            } else if let Some(admitted_as) = initial.names().get(&me).filter(|n| **n != cfg.node) {
                anyhow::bail!(
                    "this node was admitted as {admitted_as:?}, but {} says node = {:?}: the store takes its events only under its admitted name; set node = {admitted_as:?}",
                    config.display(),
                    cfg.node
                );
            }
            tokio::spawn(lpmesh_node::node::follow_members(mesh.clone(), reader.clone(), store_founder, members_tx, cfg.mesh.priority, cfg.node.clone(), node_key.clone()));
            let stop = stop_flag();
            let (tx, rx) = tokio::sync::mpsc::channel(EVENT_QUEUE);
            let tz = lpmesh_node::schedule::Schedule::parse_tz(&cfg.schedule.timezone).map_err(anyhow::Error::msg)?;
            let alerts = lpmesh_node::alerts::start(&cfg.alerts, &cfg.store, &cfg.node, tz)?;
            let appender = tokio::spawn(append_events(
                mesh.clone(),
                rx,
                Some((alerts.clone(), cfg.node.clone(), ui_url(&cfg))),
            ));
            // A nearly full disk is said, loudly and in the metrics; detection and alerts go on.
            let disk_dir = cfg.data_dir.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
                loop {
                    every.tick().await;
                    if let Some((free, total)) = lpmesh_node::ops::disk_space(&disk_dir) {
                        if lpmesh_node::ops::nearly_full(free, total) {
                            tracing::warn!(free_mb = free / (1024 * 1024), data_dir = %disk_dir.display(), "the disk is nearly full: free space, or events will stop being stored (detection and alerts go on)");
                        }
                    }
                }
            });
            let mut sub = mesh.subscribe();
            let me = mesh.origin();
            let display = reader.clone();
            tokio::spawn(async move {
                loop {
                    match sub.recv().await {
                        Ok(r) => {
                            if let Some(e) = display.event(&r) {
                                let from = if r.origin == me { "here" } else { "peer" };
                                tracing::info!(from, node = %e.node, camera = %e.camera, kind = e.kind.as_str(), phase = ?e.phase, zone = ?e.zone, "event");
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            tracing::warn!(missed = n, "event display fell behind");
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                    }
                }
            });
            // The mesh's counters in the log every minute too (for nodes without a metrics scraper).
            let m = mesh.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
                every.tick().await;
                loop {
                    every.tick().await;
                    match m.stats().await {
                        Ok(s) => tracing::info!(
                            peers = s.peers,
                            log_records = s.records,
                            appended = s.appended,
                            received_gossip = s.received_gossip,
                            received_sync = s.received_sync,
                            sent_sync = s.sent_sync,
                            repaired = s.repaired,
                            sync_rounds = s.sync_rounds,
                            rejected = ?s.rejected,
                            handshake_failures = s.handshake_failures,
                            "mesh"
                        ),
                        Err(_) => break,
                    }
                }
            });
            let uplink = match (&cfg.hq.url, &cfg.hq.recipient) {
                (Some(url), Some(recipient)) => {
                    let secrets = StoreSecrets::load(&cfg.data_dir)?;
                    let settings = lpmesh_node::uplink::UplinkSettings {
                        store: cfg.store.clone(),
                        url: url.clone(),
                        ca_cert: cfg.hq.ca_cert.clone(),
                        recipient: lpmesh_hq::envelope::parse_recipient(recipient).map_err(anyhow::Error::msg)?,
                        period_secs: cfg.hq.period_secs,
                        probe_every: std::time::Duration::from_secs_f64(cfg.hq.probe_secs),
                        resend_every: std::time::Duration::from_secs_f64(cfg.hq.resend_secs),
                        timeout: std::time::Duration::from_secs_f64(cfg.hq.timeout_secs),
                        data_dir: cfg.data_dir.clone(),
                        settle: std::time::Duration::from_secs_f64(cfg.mesh.leader_timeout_secs),
                        retention: Some(std::time::Duration::from_secs_f64(cfg.mesh.retention_days * 86_400.0)),
                    };
                    Some(lpmesh_node::uplink::start(settings, mesh.clone(), reader.clone(), secrets.signing_key()?)?)
                }
                _ => {
                    tracing::info!("no [hq] url: this store sends nothing to HQ");
                    None
                }
            };
            let board: lpmesh_node::ui::CameraBoard = Default::default();
            let node_metrics: Arc<lpmesh_node::ops::NodeMetrics> = Default::default();
            let zone_control = lpmesh_node::ui::zones::ZoneControl::new(config.to_path_buf(), &cfg.cameras);
            let ui = start_ui(&cfg, &mesh, reader.clone(), store_founder.map(|_| members_rx), uplink.as_ref().map(|u| u.watch()), board.clone(), zone_control.clone()).await?;
            tokio::spawn(lpmesh_node::node::follow_alerts(
                mesh.clone(),
                reader.clone(),
                alerts.clone(),
                cfg.node.clone(),
                ui.as_ref().map(|(_, url)| url.clone()).unwrap_or_default(),
            ));
            let ops = if cfg.ops.enabled {
                let addr: std::net::SocketAddr = cfg.ops.listen.parse().context("[ops] listen")?;
                let st = Arc::new(lpmesh_node::ops::OpsState {
                    node: cfg.node.clone(),
                    data_dir: cfg.data_dir.clone(),
                    metrics: node_metrics.clone(),
                    mesh: mesh.clone(),
                    uplink: uplink.as_ref().map(|u| u.watch()),
                    alerts: Some(alerts.clone()),
                    board: board.clone(),
                    cameras: cfg.cameras.iter().map(|c| c.name.clone()).collect(),
                });
                let r = lpmesh_node::ops::serve(st, addr).await;
                if let Some(r) = &r {
                    println!("metrics at http://{}/metrics, health at /health and /ready", r.addr);
                }
                r
            } else {
                None
            };
            // What the other nodes' tablets show about this node: its name and its cameras' health;
            // and each camera's state for the alert routes (MQTT keeps it retained).
            let info_mesh = mesh.clone();
            let info_board = board.clone();
            let info_alerts = alerts.clone();
            let (store_name, node_name) = (cfg.store.clone(), cfg.node.clone());
            let info = lpmesh_node::ui::NodeInfo {
                name: cfg.node.clone(),
                ui: ui.as_ref().map(|(_, url)| url.clone()),
                cameras: Vec::new(),
            };
            tokio::spawn(async move {
                let mut every = tokio::time::interval(std::time::Duration::from_secs(2));
                let mut last_states = std::collections::HashMap::new();
                loop {
                    every.tick().await;
                    let mut i = info.clone();
                    i.cameras = info_board.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
                    for c in &i.cameras {
                        let changed = last_states.get(&c.name).is_none_or(|(online, at): &(bool, std::time::Instant)| {
                            *online != c.online || at.elapsed() >= std::time::Duration::from_secs(60)
                        });
                        if changed {
                            last_states.insert(c.name.clone(), (c.online, std::time::Instant::now()));
                            info_alerts.camera_state(lpmesh_node::alerts::CameraState {
                                store: store_name.clone(),
                                node: node_name.clone(),
                                camera: c.name.clone(),
                                online: c.online,
                                fps: c.fps,
                                last_frame_ms: c.last_frame_ms,
                            });
                        }
                    }
                    let Ok(bytes) = serde_json::to_vec(&i) else { continue };
                    if info_mesh.set_info(bytes).await.is_err() {
                        break;
                    }
                }
            });
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            let addrs = mesh.listen_addrs().await?;
            println!(
                "node {} of store {}: {} listening on {}",
                cfg.node,
                cfg.store,
                mesh.peer_id(),
                addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")
            );
            #[cfg(feature = "vision")]
            let cameras: Vec<_> = cfg.cameras.iter().map(|c| vision::spawn_camera(cfg.clone(), c.clone(), tx.clone(), stop.clone(), board.clone(), zone_control.clone(), node_metrics.clone())).collect();
            let load = synthetic.map(|(rate, until)| {
                let (tx, stop, store, node) = (tx.clone(), stop.clone(), cfg.store.clone(), cfg.node.clone());
                tokio::spawn(async move {
                    let run = chrono::Utc::now().timestamp_millis();
                    let mut every = tokio::time::interval(std::time::Duration::from_secs_f64(1.0 / rate));
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        every.tick().await;
                        if chrono::Utc::now().timestamp_millis() >= until {
                            break;
                        }
                        n += 1;
                        let e = lpmesh_node::event::Event::synthetic(&store, &node, run, n, chrono::Utc::now().timestamp_millis());
                        if tx.send(e).await.is_err() {
                            break;
                        }
                    }
                })
            });
            drop(tx);
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            // Stop in order: cameras (their pipelines drain and close open incidents), then the
            // events they produced, then the mesh.
            #[cfg(feature = "vision")]
            for c in cameras {
                let _ = tokio::task::spawn_blocking(move || c.join()).await;
            }
            if let Some(l) = load {
                let _ = l.await;
            }
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), appender).await;
            // The last records (incidents closed by the stop) go out by gossip now; stay a moment so
            // they reach the other nodes, and so theirs reach this one when the store stops together.
            tokio::time::sleep(SHUTDOWN_LINGER).await;
            // Alerts raised by the cameras' last events go out before the network closes.
            alerts.shutdown(std::time::Duration::from_secs(3)).await;
            if let Some(r) = ops {
                r.shutdown(std::time::Duration::from_millis(500)).await;
            }
            if let Some((running, _)) = ui {
                running.shutdown(std::time::Duration::from_secs(2)).await;
            }
            if let Some(u) = uplink {
                let st = u.status();
                println!(
                    "uplink: leader {}, {} summaries sent, {} period(s) waiting",
                    if st.am_leader { "this node" } else { "another node" },
                    st.summaries_sent,
                    st.outbox
                );
                u.shutdown().await;
            }
            if let Ok(st) = mesh.stats().await {
                println!(
                    "mesh: {} records in the log, {} appended here, {} received ({} repaired by anti-entropy), {} rejected",
                    st.records,
                    st.appended,
                    st.received_gossip + st.received_sync,
                    st.repaired,
                    st.rejected.values().sum::<u64>()
                );
            }
            mesh.shutdown().await?;
            // Nobody answers invitations here any more: `lpmesh invite` says so rather than making a
            // token that points at nothing.
            let _ = std::fs::remove_file(cfg.data_dir.join(lpmesh_mesh::enrol::ENROL_ADDR_FILE));
            println!("node {} stopped", cfg.node);
            Ok(ExitCode::SUCCESS)
        })
    }
}

#[cfg(feature = "vision")]
mod vision {
    use super::*;
    use anyhow::bail;
    use lpmesh_node::config::{default_footage_path, default_model_path};
    use std::io::{BufWriter, IsTerminal};

    fn load_config(path: Option<&Path>) -> Result<NodeConfig> {
        match path {
            Some(p) => Ok(NodeConfig::load(p)?),
            None => Ok(NodeConfig::default()),
        }
    }

    fn model_path(cli: Option<PathBuf>, cfg: &NodeConfig) -> PathBuf {
        cli.or_else(|| cfg.detector.model.clone())
            .unwrap_or_else(default_model_path)
    }

    use lpmesh_node::bench::bench_pipeline;
    use lpmesh_node::camera::{load_detector, open_camera, resolve_source};
    use lpmesh_node::config::CameraConfig;
    use lpmesh_node::event::Phase;
    use lpmesh_node::pipeline::{peak_rss_mb, run, PipelineStats, RunOptions};
    use lpmesh_node::source::opencv::{OpenCvOptions, SourceKind};
    use lpmesh_node::source::FrameSource;
    use std::collections::HashSet;

    fn summary(stats: &PipelineStats) -> String {
        format!(
            "{} frames in {:.1} s ({:.1} frames/s): {} inferred, {} skipped by the motion gate, {} dropped; {} track ids; {} events; peak memory {:.0} MB",
            stats.frames,
            stats.wall.as_secs_f64(),
            stats.fps(),
            stats.inferred,
            stats.skipped_by_motion,
            stats.dropped,
            stats.ids_issued,
            stats.events,
            peak_rss_mb().unwrap_or(0.0)
        )
    }

    fn pick_camera<'c>(cfg: &'c NodeConfig, name: Option<&str>) -> Result<Option<&'c CameraConfig>> {
        match name {
            Some(n) => match cfg.camera(n) {
                Some(c) => Ok(Some(c)),
                None => bail!(
                    "no camera {n:?} in the configuration (cameras: {})",
                    cfg.cameras
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            },
            None => Ok(cfg.cameras.first()),
        }
    }

    fn clock_start(arg: Option<&str>) -> Result<i64> {
        match arg {
            Some(s) => Ok(chrono::DateTime::parse_from_rfc3339(s)
                .with_context(|| format!("--clock-start {s:?} is not an RFC 3339 time like 2026-11-24T10:00:00Z"))?
                .timestamp_millis()),
            None => Ok(chrono::Utc::now().timestamp_millis()),
        }
    }

    pub fn detect(a: DetectArgs) -> Result<ExitCode> {
        let cfg = load_config(a.config.as_deref())?;
        let cam = pick_camera(&cfg, a.camera.as_deref())?;
        if a.format == Format::Events && cam.is_none() {
            bail!("--format events needs --config with a [[camera]] whose zones and rules apply");
        }
        let model = model_path(a.model, &cfg);
        let det = load_detector(&cfg, &model)?;
        let stop = stop_flag();
        let live = a.realtime || SourceKind::parse(&a.video).is_live();
        let (capture, mut analyzer) = open_camera(
            &cfg,
            cam,
            &a.video,
            OpenCvOptions {
                realtime: a.realtime,
                looping: a.looping,
            },
            Box::new(det),
            clock_start(a.clock_start.as_deref())?,
            stop.clone(),
        )?;
        let total = capture.source().frame_count();
        let mut out: Box<dyn Write> = match &a.output {
            Some(p) => Box::new(BufWriter::new(
                std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
            )),
            None => Box::new(BufWriter::new(std::io::stdout().lock())),
        };
        let bar = (std::io::stderr().is_terminal() && !a.realtime).then(|| {
            let bar = indicatif::ProgressBar::new(a.max_frames.or(total).unwrap_or(0));
            bar.set_style(
                indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} frames  {per_sec}  eta {eta}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar
        });
        let opts = RunOptions {
            max_frames: a.max_frames,
            live,
        };
        let stats = run(capture, &mut analyzer, &opts, &stop, |r| {
            write_frame(&mut out, a.format, r).map_err(|e| e.to_string())?;
            if a.realtime || !r.events.is_empty() && live {
                // A reader following live output must not wait for a buffer to fill.
                out.flush().map_err(|e| e.to_string())?;
            }
            if let Some(b) = &bar {
                b.inc(1);
            }
            Ok(true)
        })?;
        out.flush()?;
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        eprintln!("{}", summary(&stats));
        Ok(ExitCode::SUCCESS)
    }

    pub fn bench(
        video: Option<PathBuf>,
        frames: u64,
        json: bool,
        config: Option<&Path>,
        model: Option<PathBuf>,
    ) -> Result<ExitCode> {
        if frames == 0 {
            bail!("--frames must be at least 1");
        }
        let cfg = load_config(config)?;
        let model = model_path(model, &cfg);
        let video = video.unwrap_or_else(default_footage_path);
        let r = bench_pipeline(&video, &cfg, frames, &model)?;
        if json {
            println!("{}", serde_json::to_string(&r)?);
        } else {
            let s = &r.stages_ms;
            println!("video      {} ({} frames)", r.video, r.frames);
            println!(
                "model      {} on {} ({} threads)",
                r.model,
                r.providers.join(", "),
                r.threads
            );
            println!("model alone    {:7.1} frames/s", r.model_fps);
            println!("whole pipeline {:7.1} frames/s   ratio {:.3}", r.pipeline_fps, r.ratio);
            println!(
                "stages (ms/frame): decode {:.2}  preprocess {:.2}  infer {:.2}  postprocess+nms {:.3}  track {:.3}  pixel measures {:.3}  rules {:.3}",
                s.decode, s.preprocess, s.infer, s.postprocess, s.track, s.measure, s.rules
            );
            println!(
                "people/frame {:.2}   track ids {}   events {}   motion gate would skip {} of {} frames",
                r.mean_people_per_frame, r.track_ids, r.events, r.motion_would_skip, r.frames
            );
            println!("peak memory {:.0} MB", r.peak_rss_mb);
        }
        Ok(ExitCode::SUCCESS)
    }

    fn describe(e: &Event, at: &str) -> String {
        let what = e.kind.as_str().replace('_', " ");
        let zone = e.zone.as_deref().map(|z| format!(" in {z}")).unwrap_or_default();
        let who = e.track.map(|t| format!(" (person #{t})")).unwrap_or_default();
        let mut extra = Vec::new();
        if let Some(d) = e.detail.dwell_secs {
            extra.push(format!("{d:.0} s"));
        }
        if let Some(n) = e.detail.people {
            extra.push(format!("{n} people"));
        }
        if let (Some(l), Some(d)) = (&e.detail.line, e.detail.direction) {
            extra.push(format!(
                "{l} {}",
                serde_json::to_value(d)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default()
            ));
        }
        if let Some(r) = e.detail.reason {
            extra.push(format!("{r:?}").to_lowercase());
        }
        let extra = if extra.is_empty() {
            String::new()
        } else {
            format!(" [{}]", extra.join(", "))
        };
        let phase = match e.phase {
            Phase::Start => "started",
            Phase::Update => "continues",
            Phase::End => "ended",
            Phase::Instant => "",
        };
        format!(
            "[{at}] {:>6} {what} {phase}{zone}{who}{extra}",
            format!("{:?}", e.severity).to_uppercase()
        )
    }

    pub fn demo(config: Option<PathBuf>, duration: Option<f64>) -> Result<ExitCode> {
        let config = config.unwrap_or_else(|| PathBuf::from("config/demo/store.toml"));
        let cfg = NodeConfig::load(&config)?;
        let cam = cfg
            .cameras
            .first()
            .with_context(|| format!("{} has no [[camera]]", config.display()))?;
        let video = resolve_source(&cam.source);
        if !Path::new(&video).exists() && !SourceKind::parse(&video).is_live() {
            bail!("demo footage {video} not found; run scripts/setup.sh to install it");
        }
        let model = model_path(None, &cfg);
        let det = load_detector(&cfg, &model)?;
        let stop = stop_flag();
        let (capture, mut analyzer) = open_camera(
            &cfg,
            Some(cam),
            &video,
            OpenCvOptions {
                realtime: true,
                looping: duration.is_some() || cam.looping,
            },
            Box::new(det),
            chrono::Utc::now().timestamp_millis(),
            stop.clone(),
        )?;
        println!(
            "lpmesh demo: store {}, node {}, camera {} ({} zones, {} lines) on {video}, in real time (Ctrl-C to stop)",
            cfg.store,
            cfg.node,
            cam.name,
            cam.zones.len(),
            cam.lines.len()
        );
        let mut announced: HashSet<u64> = HashSet::new();
        let mut next_status = 0.0;
        let opts = RunOptions {
            max_frames: None,
            live: true,
        };
        let mut stdout = std::io::stdout().lock();
        let stats = run(capture, &mut analyzer, &opts, &stop, |r| {
            let at = clock(r.pts);
            let mut lines = Vec::new();
            for p in r.people.iter().filter(|p| p.visible && !announced.contains(&p.id)) {
                let (x, y) = p.bbox.bottom_center();
                lines.push(format!(
                    "[{at}]        person #{} appeared at ({:.2}, {:.2})",
                    p.id,
                    x / r.width.max(1) as f32,
                    y / r.height.max(1) as f32
                ));
            }
            announced.extend(r.people.iter().filter(|p| p.visible).map(|p| p.id));
            for e in r.events {
                lines.push(describe(e, &at));
            }
            if r.pts >= next_status {
                next_status = r.pts + 10.0;
                let ids: Vec<String> = r
                    .people
                    .iter()
                    .filter(|p| p.visible)
                    .map(|p| format!("#{}", p.id))
                    .collect();
                lines.push(format!("[{at}]        in view: {} people {}", ids.len(), ids.join(" ")));
            }
            for l in lines {
                writeln!(stdout, "{l}").map_err(|e| e.to_string())?;
            }
            stdout.flush().map_err(|e| e.to_string())?;
            Ok(duration.is_none_or(|d| r.pts < d))
        })?;
        println!("{}", summary(&stats));
        Ok(ExitCode::SUCCESS)
    }

    /// One camera's pipeline on its own thread; its events go to `tx`. A camera whose pipeline fails
    /// is reported and started again after a pause; the others keep running.
    pub fn spawn_camera(
        cfg: NodeConfig,
        cam: CameraConfig,
        tx: tokio::sync::mpsc::Sender<Event>,
        stop: Arc<AtomicBool>,
        board: lpmesh_node::ui::CameraBoard,
        zone_control: Arc<lpmesh_node::ui::zones::ZoneControl>,
        metrics: Arc<lpmesh_node::ops::NodeMetrics>,
    ) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let model = model_path(None, &cfg);
            let polygons = |cam: &CameraConfig| -> Vec<(String, lpmesh_node::zone::Polygon)> {
                cam.zones
                    .iter()
                    .filter_map(|z| {
                        let pts = z
                            .polygon
                            .iter()
                            .filter(|p| p.len() == 2)
                            .map(|p| [p[0], p[1]])
                            .collect();
                        lpmesh_node::zone::Polygon::new(pts).map(|p| (z.name.clone(), p))
                    })
                    .collect()
            };
            let reload = zone_control.reload_flag(&cam.name).unwrap_or_default();
            let mut cam = cam;
            let mut live = lpmesh_node::ui::CameraLive {
                name: cam.name.clone(),
                ..Default::default()
            };
            let publish = |live: &lpmesh_node::ui::CameraLive| {
                board
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(live.name.clone(), live.clone());
            };
            publish(&live);
            let mut window = (std::time::Instant::now(), 0u32);
            while !stop.load(Ordering::Relaxed) {
                // Zones edited in the UI since the last start apply from here.
                if let Some(c) = zone_control.camera(&cam.name) {
                    cam = c;
                }
                reload.store(false, Ordering::Relaxed);
                let zones = polygons(&cam);
                let source = resolve_source(&cam.source);
                let result = (|| -> Result<()> {
                    let det = load_detector(&cfg, &model)?;
                    let is_file = !SourceKind::parse(&source).is_live();
                    let (capture, mut analyzer) = open_camera(
                        &cfg,
                        Some(&cam),
                        &source,
                        OpenCvOptions {
                            realtime: is_file,
                            looping: cam.looping,
                        },
                        Box::new(det),
                        chrono::Utc::now().timestamp_millis(),
                        stop.clone(),
                    )?;
                    let capture = capture.with_still(zone_control.clone(), &cam.name);
                    let opts = RunOptions {
                        max_frames: None,
                        live: true,
                    };
                    let mut resized = 0;
                    run(capture, &mut analyzer, &opts, &stop, |r| {
                        let size = r.online.then_some((r.width, r.height));
                        metrics.frame(&cam.name, r.counts, size, r.infer, r.events);
                        if r.counts.resized > resized {
                            resized = r.counts.resized;
                            tracing::warn!(camera = %cam.name, width = r.width, height = r.height,
                                tracks_ended = r.ended.len(),
                                "camera frame size changed: its tracks ended, new ones start at the new size");
                        }
                        for e in r.events {
                            tx.blocking_send(e.clone())
                                .map_err(|_| "the node is stopping".to_string())?;
                            if e.kind == lpmesh_node::event::EventKind::CameraTamper {
                                live.tamper = match e.phase {
                                    lpmesh_node::event::Phase::End => None,
                                    _ => Some(
                                        e.detail
                                            .reason
                                            .map_or("tamper".into(), |r| format!("{r:?}").to_lowercase()),
                                    ),
                                };
                            }
                        }
                        if r.online {
                            window.1 += 1;
                            live.last_frame_ms = Some(chrono::Utc::now().timestamp_millis());
                        }
                        // The tablets' view of this camera, refreshed about once a second.
                        let elapsed = window.0.elapsed().as_secs_f32();
                        if elapsed >= 1.0 {
                            live.online = r.online;
                            live.fps = window.1 as f32 / elapsed;
                            window = (std::time::Instant::now(), 0);
                            live.occupancy = zones
                                .iter()
                                .map(|(name, poly)| {
                                    let n = r
                                        .people
                                        .iter()
                                        .filter(|p| {
                                            let (w, h) = (r.width.max(1) as f32, r.height.max(1) as f32);
                                            poly.contains([(p.bbox.x1 + p.bbox.x2) / 2.0 / w, p.bbox.y2 / h])
                                        })
                                        .count() as u32;
                                    (name.clone(), n)
                                })
                                .collect();
                            publish(&live);
                        }
                        // New zones: end this run (its open incidents close) and start again with them.
                        Ok(!reload.load(Ordering::Relaxed))
                    })?;
                    Ok(())
                })();
                live.online = false;
                live.fps = 0.0;
                publish(&live);
                match result {
                    Ok(()) if stop.load(Ordering::Relaxed) => break,
                    Ok(()) if reload.load(Ordering::Relaxed) => {
                        tracing::info!(camera = %cam.name, "restarting the camera with its new zones");
                        continue;
                    }
                    Ok(()) => tracing::warn!(camera = %cam.name, "camera stream ended; starting it again"),
                    Err(e) => {
                        tracing::error!(camera = %cam.name, error = %format!("{e:#}"), "camera failed; retrying in 5 s")
                    }
                }
                for _ in 0..50 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            }
        })
    }

    fn clock(secs: f64) -> String {
        let s = secs.max(0.0);
        format!("{:02}:{:04.1}", (s / 60.0) as u64, s % 60.0)
    }
}
