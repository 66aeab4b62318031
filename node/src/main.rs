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
        /// Keep no evidence (stills and clips) of incidents: to measure what evidence costs.
        #[arg(long)]
        no_evidence: bool,
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
        /// Every record of the log (events, actions, members, users, keys) with its decrypted
        /// contents, one JSON object per line: what crossed the store's links, for audits.
        #[arg(long, conflicts_with_all = ["since", "kind"])]
        records: bool,
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
    /// The summaries HQ holds, as received and decrypted, one JSON object per line (the embedded
    /// store: stop HQ first; PostgreSQL: any time).
    Summaries {
        #[arg(long)]
        config: PathBuf,
        /// Only this store's.
        #[arg(long)]
        store: Option<String>,
    },
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
    /// Incident appended on node B -> MQTT message of its alert route, and -> node A's UI stream;
    /// with --from-frame, from the camera frame in which it happened (real footage, real detector).
    Alerts {
        #[arg(long, default_value_t = 200)]
        incidents: usize,
        /// Time from the frame in which each incident happened: node B runs a camera on its footage.
        #[arg(long)]
        from_frame: bool,
        /// With --from-frame: how long the camera runs.
        #[arg(long, default_value_t = 60.0, requires = "from_frame")]
        seconds: f64,
        /// With --from-frame: a node configuration whose first camera runs (default: the demo's
        /// first camera, on the demo footage).
        #[arg(long, requires = "from_frame")]
        config: Option<PathBuf>,
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
        /// Every upload opens its own connection and TLS handshake, as stores' hourly uploads do.
        #[arg(long)]
        fresh_connections: bool,
        /// HQ's connections to PostgreSQL, as `database_connections` in its configuration.
        #[arg(long, default_value_t = lpmesh_hq::config::DEFAULT_DATABASE_CONNECTIONS)]
        database_connections: usize,
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

/// Why a duration given on the command line was refused (clap prints it beside the option).
#[derive(Debug, thiserror::Error)]
enum DurationError {
    #[error("{0:?}: give a number and a unit, like 15m")]
    Number(String),
    #[error("{0:?}: the unit is s, m, h or d")]
    Unit(String),
    #[error("an invitation must last more than zero seconds")]
    Zero,
}

/// `90s`, `15m`, `2h`, `1d`, or plain seconds.
fn parse_duration(s: &str) -> Result<std::time::Duration, DurationError> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| DurationError::Number(s.to_string()))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => return Err(DurationError::Unit(s.to_string())),
    };
    if secs == 0 {
        return Err(DurationError::Zero);
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
            eprintln!("error: {}", cli::report(&e));
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
        } => bench::mesh(nodes, records, json),
        Command::Bench {
            what:
                BenchWhat::Hq {
                    stores,
                    periods,
                    database_url,
                    fresh_connections,
                    database_connections,
                    json,
                },
        } => bench::hq(
            stores,
            periods,
            database_url,
            fresh_connections,
            database_connections,
            json,
        ),
        Command::Bench {
            what:
                BenchWhat::Alerts {
                    incidents,
                    from_frame,
                    seconds,
                    config,
                    json,
                },
        } => bench::alerts(incidents, from_frame.then_some((seconds, config)), json),
        Command::Hq { config, cmd } => hq::run(config, cmd),
        Command::StoreKey { data } => store::store_key(&data),
        Command::StoreCa { data, out } => store::store_ca(&data, out),
        Command::Status { data, json } => store::status(&data, json),
        Command::User { cmd } => store::user(cmd),
        Command::Revoke { node, data } => store::revoke(&node, &data),
        Command::Members { data, json } => store::members(&data, json),
        Command::Eval {
            what:
                EvalWhat::Mot {
                    gt,
                    tracks,
                    frames,
                    iou,
                    json,
                },
        } => records::eval_mot(&gt, &tracks, frames.as_deref(), iou, json),
        #[cfg(feature = "vision")]
        Command::Watch { config, duration } => vision::demo(config, duration),
        Command::Demo {
            dir,
            nodes,
            duration,
            uplink_down,
            kill_node_after,
            no_evidence,
        } => demo::run(
            demo::DemoArgs {
                dir,
                nodes,
                duration,
                uplink_down,
                kill_node_after,
                evidence: !no_evidence,
            },
            stop_flag(),
        ),
        Command::Init {
            store,
            data,
            manager,
            password_stdin,
        } => store::init(&store, &data, manager, password_stdin),
        Command::Invite {
            data,
            bootstrap,
            expires,
            enrol,
            serve,
            priority,
            node,
        } => store::invite(data, bootstrap, expires, enrol, serve, priority, node),
        Command::Join { data, token_file } => store::join(&data, token_file),
        Command::Run {
            config,
            synthetic,
            synthetic_until,
        } => daemon::run(
            &config,
            synthetic.map(|rate| (rate, synthetic_until.unwrap_or(i64::MAX))),
        ),
        Command::Events {
            data, records: true, ..
        } => records::all_records(&data),
        Command::Events {
            data,
            since,
            kind,
            json,
            records: false,
        } => records::events(&data, since, kind, json),
        Command::Validate { file } => records::validate(&file),
    }
}

/// Ctrl-C (and SIGTERM) set the flag; the pipeline drains and the summary is still printed.
fn stop_flag() -> Arc<AtomicBool> {
    stop_signal().flag()
}

/// The one stop signal, given by Ctrl-C (and SIGTERM): camera threads read its flag between frames,
/// and the async side awaits it, so nothing polls.
fn stop_signal() -> lpmesh_node::runtime::Stop {
    let stop = lpmesh_node::runtime::Stop::new();
    let on_signal = stop.clone();
    if let Err(e) = ctrlc::set_handler(move || on_signal.stop()) {
        tracing::warn!(error = %e, "cannot install the Ctrl-C handler");
    }
    stop
}

mod cli;
#[cfg(feature = "vision")]
use cli::vision;
use cli::{bench, daemon, demo, hq, records, store};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_a_unit_and_refuse_zero_and_nonsense() {
        let secs = |s| parse_duration(s).map(|d| d.as_secs());
        assert_eq!(secs("90").unwrap(), 90);
        assert_eq!(secs(" 15m ").unwrap(), 900);
        assert_eq!(secs("2h").unwrap(), 7200);
        assert_eq!(secs("1d").unwrap(), 86_400);
        assert!(matches!(parse_duration("0m"), Err(DurationError::Zero)));
        assert!(matches!(parse_duration("5w"), Err(DurationError::Unit(s)) if s == "5w"));
        let e = parse_duration("soon").unwrap_err();
        assert_eq!(e.to_string(), "\"soon\": give a number and a unit, like 15m");
    }
}
