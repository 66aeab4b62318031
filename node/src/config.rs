//! Node configuration: one TOML file per node (store, cameras, zones, rules, schedule, runtime).
//!
//! Every section has documented defaults, so an empty file is a valid configuration. Unknown keys are
//! errors (a typo must not silently fall back to a default). Errors name the file, the line and the field.

use std::fmt;
use std::path::{Path, PathBuf};

use std::collections::{BTreeMap, HashMap};

use chrono::NaiveDate;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::event::{EventKind, Severity};
use crate::motion::MotionConfig;
use crate::rules::{CameraSpec, LineSpec, RuleSettings, ZoneKind, ZoneSpec};
use crate::schedule::Schedule;
use crate::track::TrackerConfig;
use crate::zone::{CountingLine, Heading, Polygon};

/// One node's configuration file. See `config/store.example.toml` for every option and its default.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeConfig {
    /// The store this node belongs to (required; goes into every event).
    pub store: String,
    /// This node's name within the store (required; goes into every event).
    pub node: String,
    /// Where the node keeps its database and keys.
    pub data_dir: PathBuf,
    pub runtime: RuntimeConfig,
    pub detector: DetectorConfig,
    pub motion: MotionConfig,
    pub tracker: TrackerConfig,
    pub rules: RuleSettings,
    pub schedule: ScheduleConfig,
    pub cameras: Vec<CameraConfig>,
    pub mesh: MeshConfig,
    pub alerts: AlertsConfig,
    pub hq: HqConfig,
    pub ui: UiConfig,
    pub ops: OpsConfig,
    pub evidence: crate::evidence::EvidenceConfig,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            store: String::new(),
            node: String::new(),
            data_dir: PathBuf::from("/var/lib/lpmesh"),
            runtime: RuntimeConfig::default(),
            detector: DetectorConfig::default(),
            motion: MotionConfig::default(),
            tracker: TrackerConfig::default(),
            rules: RuleSettings::default(),
            schedule: ScheduleConfig::default(),
            cameras: Vec::new(),
            mesh: MeshConfig::default(),
            alerts: AlertsConfig::default(),
            hq: HqConfig::default(),
            ui: UiConfig::default(),
            ops: OpsConfig::default(),
            evidence: Default::default(),
        }
    }
}

/// `/metrics`, `/health` and `/ready` on their own listener: loopback by default, so the counters
/// need no login; open it to the monitoring host if there is one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpsConfig {
    pub listen: String,
    pub enabled: bool,
}

impl Default for OpsConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9420".into(),
            enabled: true,
        }
    }
}

/// The tablet UI this node serves on the store LAN.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UiConfig {
    /// Address of the UI's listener; `enabled = false` serves none.
    pub listen: String,
    pub enabled: bool,
    /// HTTPS (the default), with a certificate issued at every start by the store's CA for every
    /// name and address the node answers to. `false` serves plain HTTP, which logs a warning at every
    /// start and refuses logins, invitations and camera pictures to anything but the node itself.
    pub tls: bool,
    /// The address tablets use for this node, for links in alerts (default: http(s)://<listen>).
    pub public_url: Option<String>,
    /// Host names tablets may use for this node, besides its IP addresses, `localhost`, its hostname
    /// and `public_url`'s host: a request for any other name is refused (DNS rebinding).
    pub names: Vec<String>,
}

impl Default for UiConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".into(),
            enabled: true,
            tls: true,
            public_url: None,
            names: Vec::new(),
        }
    }
}

/// How this node joins the store's mesh.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MeshConfig {
    /// Addresses to listen on (libp2p multiaddrs, TCP only).
    pub listen: Vec<String>,
    /// Nodes to dial at start, and again whenever no connection through them is open (other subnets;
    /// mDNS finds nodes on the same LAN).
    pub bootstrap: Vec<String>,
    /// What this node tells the others to dial (default: its listen addresses). Behind NAT or port
    /// forwarding, the outside address; `[]`: the others reach it only through their bootstrap lists.
    pub announce: Option<Vec<String>>,
    /// Find the store's other nodes on the LAN by multicast DNS.
    pub mdns: bool,
    /// Interval of anti-entropy rounds with a random peer.
    pub anti_entropy_secs: f64,
    /// Preference of this node as the store's HQ uplink (higher wins among nodes that reach HQ).
    pub priority: u8,
    /// How often this node announces itself for the uplink election.
    pub heartbeat_secs: f64,
    /// A node silent this long stops being a candidate: the uplink leader's failover time.
    pub leader_timeout_secs: f64,
    /// Event metadata and actions older than this are removed from the log, on every node by the same
    /// rule (the records' own signed times). Set the same value on every node of the store. HQ keeps
    /// the summaries of those days.
    pub retention_days: f64,
    /// How far a time inside a record (an event's, an action's) may lie after the record's signed
    /// time. Records claiming later times are refused by every node's views and summaries.
    pub time_window_secs: f64,
    /// Where this node answers invitations (`lpmesh invite`): a new node proves its one-time secret
    /// here and receives the store's secrets. Taken: a free port is used (the invitation names it).
    pub enrol_listen: String,
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self {
            listen: vec!["/ip4/0.0.0.0/tcp/7420".into()],
            bootstrap: Vec::new(),
            announce: None,
            mdns: true,
            anti_entropy_secs: 5.0,
            priority: 0,
            heartbeat_secs: 5.0,
            leader_timeout_secs: 15.0,
            retention_days: 30.0,
            time_window_secs: crate::bounds::DEFAULT_WINDOW_SECS,
            enrol_listen: "0.0.0.0:7421".into(),
        }
    }
}

/// Alert routes: `[[alerts.route]]` (MQTT, webhook, console); see `crate::alerts`.
pub use crate::alerts::AlertsConfig;

/// The HQ uplink: where the store's elected leader sends its summaries. Without `url` the node never
/// claims to reach HQ and sends nothing (an offline store).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HqConfig {
    /// HQ's base URL, `https://host:port`.
    pub url: Option<String>,
    /// HQ's age recipient (`age1...`), printed by `lpmesh hq init`: summaries are encrypted to it.
    pub recipient: Option<String>,
    /// Certificates to trust for HQ (PEM), e.g. HQ's self-signed `cert.pem`; else the system's roots.
    pub ca_cert: Option<PathBuf>,
    /// Length of a summary period; periods are aligned to UTC midnight. Must divide a day.
    pub period_secs: u32,
    /// How often the node checks that HQ answers.
    pub probe_secs: f64,
    /// The least time between two uploads of the same period while it keeps changing.
    pub resend_secs: f64,
    /// How long one request to HQ may take.
    pub timeout_secs: f64,
    /// The uplink leader is demoted when it reaches HQ but gets nothing acknowledged for this many
    /// `resend_secs` windows while it owes HQ summaries and another node reaches HQ: leadership passes
    /// on, and the demoted node leads again only after ten times as long. 0: never demote; else at
    /// least 2 (a healthy leader may wait one window before sending a changing period again). Set the
    /// same on every node of the store.
    pub leader_stall_windows: u32,
}

impl Default for HqConfig {
    fn default() -> Self {
        Self {
            url: None,
            recipient: None,
            ca_cert: None,
            period_secs: 3600,
            probe_secs: 10.0,
            resend_secs: 60.0,
            timeout_secs: 10.0,
            leader_stall_windows: 4,
        }
    }
}

/// Opening hours. Without any weekday set the store counts as always open (no `after_hours` events).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleConfig {
    /// IANA time zone of the store, e.g. "Europe/London".
    pub timezone: String,
    pub monday: Option<Vec<String>>,
    pub tuesday: Option<Vec<String>>,
    pub wednesday: Option<Vec<String>>,
    pub thursday: Option<Vec<String>>,
    pub friday: Option<Vec<String>>,
    pub saturday: Option<Vec<String>>,
    pub sunday: Option<Vec<String>>,
    /// Whole days closed, "YYYY-MM-DD".
    pub closed_dates: Vec<String>,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            timezone: "UTC".into(),
            monday: None,
            tuesday: None,
            wednesday: None,
            thursday: None,
            friday: None,
            saturday: None,
            sunday: None,
            closed_dates: Vec::new(),
        }
    }
}

pub const WEEKDAYS: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

impl ScheduleConfig {
    fn days(&self) -> [&Option<Vec<String>>; 7] {
        [
            &self.monday,
            &self.tuesday,
            &self.wednesday,
            &self.thursday,
            &self.friday,
            &self.saturday,
            &self.sunday,
        ]
    }

    /// The schedule, or every problem with it as (field, message).
    pub fn compile(&self) -> Result<Schedule, Vec<(FieldPath, String)>> {
        let mut problems = Vec::new();
        let tz = Schedule::parse_tz(&self.timezone).map_err(|e| problems.push((path(&["schedule", "timezone"]), e)));
        let configured = self.days().iter().any(|d| d.is_some());
        let mut days: [Vec<(u32, u32)>; 7] = Default::default();
        for (i, day) in self.days().iter().enumerate() {
            for (j, r) in day.iter().flatten().enumerate() {
                match Schedule::parse_range(r) {
                    Ok(range) => days[i].push(range),
                    Err(e) => problems.push((path(&["schedule", WEEKDAYS[i]]).index(j), e)),
                }
            }
        }
        let mut closed = Vec::new();
        for (j, d) in self.closed_dates.iter().enumerate() {
            match NaiveDate::parse_from_str(d, "%Y-%m-%d") {
                Ok(d) => closed.push(d),
                Err(_) => problems.push((
                    path(&["schedule", "closed_dates"]).index(j),
                    format!("{d:?} is not a date like \"2026-12-25\""),
                )),
            }
        }
        match tz {
            Ok(tz) if problems.is_empty() => Ok(if configured {
                Schedule::new(tz, days, closed)
            } else {
                Schedule::always_open(tz)
            }),
            _ => Err(problems),
        }
    }
}

/// One camera of this node.
#[derive(Clone, Debug, PartialEq)]
pub struct CameraConfig {
    pub name: String,
    /// A file, an rtsp:// or http:// URL, or a device (/dev/video0).
    pub source: String,
    /// Frames per second to run detection on (frames in between are not analysed).
    pub detect_fps: f64,
    /// Overrides `detector.score_threshold` for this camera.
    pub score_threshold: Option<f32>,
    /// Files only: start again at the end (demo cameras).
    pub looping: bool,
    pub zones: Vec<ZoneConfig>,
    pub lines: Vec<LineConfig>,
    pub rules: Vec<RuleOverride>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CameraRaw {
    name: String,
    source: String,
    #[serde(default = "default_detect_fps")]
    detect_fps: f64,
    #[serde(default)]
    score_threshold: Option<f32>,
    #[serde(default, rename = "loop")]
    looping: bool,
    #[serde(default)]
    zone: Vec<toml::Value>,
    #[serde(default)]
    line: Vec<toml::Value>,
    #[serde(default)]
    rule: Vec<toml::Value>,
}

fn default_detect_fps() -> f64 {
    10.0
}

/// A zone: a polygon in normalised image coordinates (0..1, y down) with a kind.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneConfig {
    pub name: String,
    pub kind: ZoneKind,
    /// At least three [x, y] points; the last connects back to the first.
    pub polygon: Vec<Vec<f32>>,
    /// Detections below this score do not change who is in the zone (default: the detector threshold).
    #[serde(default)]
    pub min_confidence: Option<f32>,
}

/// A counting line; crossing it heading `in` counts as an entry, the other way as an exit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineConfig {
    pub name: String,
    pub from: Vec<f32>,
    pub to: Vec<f32>,
    #[serde(rename = "in")]
    pub in_heading: Heading,
}

/// Changes one rule for this camera, or for one of its zones.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleOverride {
    pub kind: EventKind,
    /// A zone of this camera; without it the override applies to the whole camera.
    #[serde(default)]
    pub zone: Option<String>,
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub severity: Option<Severity>,
    /// Duration threshold: `loitering` dwell, `shelf_interaction` reach.
    #[serde(default)]
    pub secs: Option<f64>,
    /// People threshold: `crowding`.
    #[serde(default)]
    pub people: Option<u32>,
}

/// Where ONNX Runtime comes from and how it runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Path to `libonnxruntime.so`; else `$ORT_DYLIB_PATH`; else the copy `scripts/setup.sh` puts in
    /// the cache. A vendor build (OpenVINO, QNN, TensorRT...) is selected by pointing this at it.
    pub onnxruntime: Option<PathBuf>,
    /// Execution providers in order of preference. One that is not available in the loaded library is
    /// logged and skipped; the CPU is always the last resort.
    pub execution_providers: Vec<String>,
    /// Threads for one inference; 0 = one per core, at most 4.
    pub intra_threads: usize,
    /// Let inference threads spin while waiting for work. Off by default: spinning makes the model
    /// alone ~5% faster on 2 cores but starves the capture thread and other cameras, and the whole
    /// pipeline ends up slower (measured, see ARCHITECTURE.md).
    pub spin_wait: bool,
    /// The OpenVINO execution provider (Intel CPUs, GPUs and NPUs), used when `execution_providers`
    /// names `openvino`.
    pub openvino: OpenVinoConfig,
}

/// ONNX Runtime's OpenVINO execution provider as Intel ships it: a plugin library registered at run
/// time (`python3 models/build.py openvino` fetches it). An ONNX Runtime built with OpenVINO inside
/// (`runtime.onnxruntime` pointing at a vendor build) is used as it is, without the plugin.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpenVinoConfig {
    /// The plugin library; default: where `python3 models/build.py openvino` installs it.
    pub plugin: Option<PathBuf>,
    /// The OpenVINO device: `CPU`, `GPU` or `NPU` (an NPU needs Intel's NPU driver).
    pub device: String,
    /// Inference precision: `auto` (the default) lets OpenVINO choose: bf16 on CPUs with AMX, about 4.5x
    /// the f32 speed on this project's machine with the same recall and MOTA on the scored footage
    /// (within 0.2 point), f16 on NPUs; `f32` computes as ONNX Runtime's CPU provider does (the same
    /// boxes, within a pixel); or `bf16`/`f16`.
    pub precision: Option<String>,
    /// Further OpenVINO properties for the device, e.g. `PERFORMANCE_HINT = "LATENCY"`. A property the
    /// device refuses makes the provider fail to load; the node then runs on the next one.
    pub settings: BTreeMap<String, String>,
}

impl Default for OpenVinoConfig {
    fn default() -> Self {
        Self {
            plugin: None,
            device: "CPU".into(),
            precision: None,
            settings: BTreeMap::new(),
        }
    }
}

/// What `runtime.openvino.precision` may say.
pub const OPENVINO_PRECISIONS: &[&str] = &["f32", "bf16", "f16", "auto"];
/// What `runtime.openvino.device` may say.
pub const OPENVINO_DEVICES: &[&str] = &["CPU", "GPU", "NPU"];

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            onnxruntime: None,
            execution_providers: vec!["cpu".into()],
            intra_threads: 0,
            spin_wait: false,
            openvino: OpenVinoConfig::default(),
        }
    }
}

/// The execution providers lpmesh knows by name.
pub const EXECUTION_PROVIDERS: &[&str] = &[
    "cpu", "cuda", "tensorrt", "openvino", "qnn", "rknpu", "nnapi", "xnnpack", "acl", "vsinpu", "rocm", "migraphx",
    "onednn", "cann", "vitis",
];

impl RuntimeConfig {
    pub fn threads(&self) -> usize {
        if self.intra_threads > 0 {
            return self.intra_threads;
        }
        std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectorConfig {
    /// The ONNX model; default: the NanoDet-m 416 that `scripts/setup.sh` produces in the cache.
    pub model: Option<PathBuf>,
    /// A detection at or above this score is a person (and may start a track).
    pub score_threshold: f32,
    /// Overlapping detections above this IoU are merged by non-maximum suppression.
    pub nms_iou: f32,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            model: None,
            score_threshold: 0.5,
            nms_iou: 0.5,
        }
    }
}

/// Where in the file a problem is: `camera[0].zone[2].polygon`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldPath(pub Vec<Seg>);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// `alerts.route[0].url` as a field path.
fn field_path(dotted: &str) -> FieldPath {
    let mut at = FieldPath(Vec::new());
    for part in dotted.split('.').filter(|p| !p.is_empty()) {
        let mut rest = part;
        if let Some(i) = rest.find('[') {
            at = at.key(&rest[..i]);
            rest = &rest[i..];
            while let Some(end) = rest.find(']') {
                if let Ok(n) = rest[1..end].parse() {
                    at = at.index(n);
                }
                rest = &rest[end + 1..];
            }
        } else {
            at = at.key(rest);
        }
    }
    at
}

fn path(keys: &[&str]) -> FieldPath {
    FieldPath(keys.iter().map(|k| Seg::Key((*k).to_string())).collect())
}

impl FieldPath {
    pub fn key(mut self, k: &str) -> Self {
        self.0.push(Seg::Key(k.to_string()));
        self
    }

    pub fn index(mut self, i: usize) -> Self {
        self.0.push(Seg::Index(i));
        self
    }

    /// Appends a dotted path as serde reports it (`inner.a`).
    fn dotted(mut self, d: &str) -> Self {
        for k in d.split('.').filter(|k| !k.is_empty()) {
            self.0.push(Seg::Key(k.to_string()));
        }
        self
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            match s {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

impl HqConfig {
    /// The election's stall limit (`leader_stall_windows` x `resend_secs`); zero: off.
    pub fn leader_stall(&self) -> std::time::Duration {
        use std::time::Duration;
        if self.leader_stall_windows == 0 {
            return Duration::ZERO;
        }
        // Only reached with a checked configuration; a value out of range cannot demote anyone early.
        Duration::try_from_secs_f64(self.resend_secs * f64::from(self.leader_stall_windows)).unwrap_or(Duration::MAX)
    }

    fn check(&self) -> Vec<(FieldPath, String)> {
        let mut p = Vec::new();
        match (&self.url, &self.recipient) {
            (Some(url), Some(r)) => {
                if !url.starts_with("https://") || url.len() <= "https://".len() {
                    p.push((
                        path(&["hq", "url"]),
                        "must be https://host[:port]: summaries only travel over TLS".into(),
                    ));
                }
                if let Err(e) = lpmesh_hq::envelope::parse_recipient(r) {
                    p.push((
                        path(&["hq", "recipient"]),
                        format!("not an age recipient (age1...): {e}"),
                    ));
                }
            }
            (Some(_), None) => p.push((
                path(&["hq", "recipient"]),
                "required with url: HQ's age recipient".into(),
            )),
            (None, Some(_)) => p.push((path(&["hq", "url"]), "required with recipient".into())),
            (None, None) => {}
        }
        if self.period_secs < 60 || 86_400 % self.period_secs != 0 {
            p.push((
                path(&["hq", "period_secs"]),
                "must be at least 60 and divide a day (86400)".into(),
            ));
        }
        for (key, v) in [
            ("probe_secs", self.probe_secs),
            ("resend_secs", self.resend_secs),
            ("timeout_secs", self.timeout_secs),
        ] {
            if v.is_nan() || v <= 0.0 {
                p.push((path(&["hq", key]), "must be more than zero".into()));
            }
        }
        if self.leader_stall_windows == 1 || self.leader_stall_windows > 1000 {
            p.push((
                path(&["hq", "leader_stall_windows"]),
                "must be 0 (never demote a stalled leader) or 2 to 1000: a healthy leader may wait one \
                 resend_secs window before sending a changing period again"
                    .into(),
            ));
        }
        p
    }
}

/// One problem in a configuration file.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfigProblem {
    pub file: PathBuf,
    /// 1-based, when known.
    pub line: Option<usize>,
    /// Dotted path of the field, when known.
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid configuration ({} problem{}):\n{}", problems.len(), if problems.len() == 1 { "" } else { "s" },
        problems.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid { problems: Vec<ConfigProblem> },
}

/// Collects problems while a file is read, and finds their lines.
struct Reader<'a> {
    file: &'a Path,
    text: &'a str,
    doc: toml_edit::ImDocument<&'a str>,
    problems: Vec<ConfigProblem>,
}

impl Reader<'_> {
    fn problem(&mut self, at: FieldPath, message: impl Into<String>) {
        let line = self.line_of(&at);
        let field = (!at.0.is_empty()).then(|| at.to_string());
        self.problems.push(ConfigProblem {
            file: self.file.to_path_buf(),
            line,
            field,
            message: message.into(),
        });
    }

    /// The line of the deepest part of `at` that exists in the document.
    fn line_of(&self, at: &FieldPath) -> Option<usize> {
        use toml_edit::{Item, Table, Value};
        #[derive(Clone, Copy)]
        enum Node<'d> {
            Table(&'d Table),
            Value(&'d Value),
            Other,
        }
        fn of_item(i: &Item) -> Node<'_> {
            match i {
                Item::Table(t) => Node::Table(t),
                Item::Value(v) => Node::Value(v),
                _ => Node::Other,
            }
        }
        let mut node = Node::Table(self.doc.as_table());
        let mut parent_item: Option<&Item> = None;
        let mut span = None;
        for seg in &at.0 {
            let next = match (node, seg) {
                (Node::Table(t), Seg::Key(k)) => {
                    span = t.key(k).and_then(|k| k.span()).map(|s| s.start).or(span);
                    t.get(k).map(|i| {
                        parent_item = Some(i);
                        of_item(i)
                    })
                }
                (Node::Value(Value::InlineTable(t)), Seg::Key(k)) => {
                    span = t.key(k).and_then(|k| k.span()).map(|s| s.start).or(span);
                    t.get(k).map(Node::Value)
                }
                (Node::Value(Value::Array(a)), Seg::Index(i)) => a.get(*i).map(|v| {
                    span = v.span().map(|s| s.start).or(span);
                    Node::Value(v)
                }),
                (Node::Other, Seg::Index(i)) => match parent_item {
                    Some(Item::ArrayOfTables(a)) => a.get(*i).map(|t| {
                        span = t.span().map(|s| s.start).or(span);
                        Node::Table(t)
                    }),
                    _ => None,
                },
                _ => None,
            };
            match next {
                Some(n) => node = n,
                None => break,
            }
        }
        span.map(|s| line_of(self.text, s))
    }
}

impl Reader<'_> {
    /// Deserialises one value; on failure records where and why, and returns `None`.
    fn value<T: DeserializeOwned>(&mut self, at: FieldPath, v: &toml::Value) -> Option<T> {
        match v.clone().try_into::<T>() {
            Ok(t) => Some(t),
            Err(e) => {
                let msg = e.to_string();
                let mut lines = msg.lines();
                let first = lines.next().unwrap_or("invalid value").trim().to_string();
                // serde names the offending field: "unknown field `x`" or a trailing "in `a.b`".
                let field = lines.find_map(|l| {
                    l.trim()
                        .strip_prefix("in `")
                        .and_then(|r| r.strip_suffix('`'))
                        .map(str::to_string)
                });
                let unknown = first
                    .strip_prefix("unknown field `")
                    .and_then(|r| r.split('`').next())
                    .map(str::to_string);
                let missing = first.starts_with("missing field");
                let at = match (unknown, field) {
                    (Some(k), _) => at.key(&k),
                    (None, Some(f)) => at.dotted(&f),
                    (None, None) => at,
                };
                let message = if missing { format!("{first} (required)") } else { first };
                self.problem(at, message);
                None
            }
        }
    }

    /// Each of a camera's `[[camera.KEY]]` tables on its own, so one bad entry does not hide the others.
    fn items<T: DeserializeOwned>(&mut self, at: &FieldPath, key: &str, values: &[toml::Value]) -> Vec<T> {
        values
            .iter()
            .enumerate()
            .filter_map(|(j, v)| self.value(at.clone().key(key).index(j), v))
            .collect()
    }

    fn cameras(&mut self, v: &toml::Value) -> Vec<CameraConfig> {
        let Some(items) = v.as_array() else {
            self.problem(path(&["camera"]), "must be a list of [[camera]] tables");
            return Vec::new();
        };
        let mut cams = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let at = path(&["camera"]).index(i);
            let Some(raw) = self.value::<CameraRaw>(at.clone(), item) else {
                continue;
            };
            let zones = self.items(&at, "zone", &raw.zone);
            let lines = self.items(&at, "line", &raw.line);
            let rules = self.items(&at, "rule", &raw.rule);
            cams.push(CameraConfig {
                name: raw.name,
                source: raw.source,
                detect_fps: raw.detect_fps,
                score_threshold: raw.score_threshold,
                looping: raw.looping,
                zones,
                lines,
                rules,
            });
        }
        cams
    }
}

/// The TOML parser's reason, or one of ours where it gives none (a control character, even in a
/// comment, comes back without a message; found by the `node_config` fuzz target).
fn toml_message(m: &str) -> String {
    match m.trim() {
        "" => "invalid character: TOML allows no control characters, not even in comments".to_string(),
        m => m.to_string(),
    }
}

impl NodeConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and checks `text`, naming `file` in errors. Every problem is reported, not just the first.
    pub fn parse(text: &str, file: &Path) -> Result<Self, ConfigError> {
        let doc = match toml_edit::ImDocument::parse(text) {
            Ok(d) => d,
            Err(e) => {
                return Err(ConfigError::Invalid {
                    problems: vec![ConfigProblem {
                        file: file.to_path_buf(),
                        line: e.span().map(|s| line_of(text, s.start)),
                        field: None,
                        message: toml_message(e.message()),
                    }],
                })
            }
        };
        let table: toml::Table = match toml::from_str(text) {
            Ok(t) => t,
            Err(e) => {
                return Err(ConfigError::Invalid {
                    problems: vec![ConfigProblem {
                        file: file.to_path_buf(),
                        line: e.span().map(|s| line_of(text, s.start)),
                        field: None,
                        message: toml_message(e.message()),
                    }],
                })
            }
        };
        let mut r = Reader {
            file,
            text,
            doc,
            problems: Vec::new(),
        };
        let mut cfg = NodeConfig::default();
        for (key, v) in &table {
            let at = path(&[key]);
            match key.as_str() {
                "store" => cfg.store = r.value(at, v).unwrap_or_default(),
                "node" => cfg.node = r.value(at, v).unwrap_or_default(),
                "data_dir" => cfg.data_dir = r.value(at, v).unwrap_or(cfg.data_dir),
                "runtime" => cfg.runtime = r.value(at, v).unwrap_or_default(),
                "detector" => cfg.detector = r.value(at, v).unwrap_or_default(),
                "motion" => cfg.motion = r.value(at, v).unwrap_or_default(),
                "tracker" => cfg.tracker = r.value(at, v).unwrap_or_default(),
                "rules" => cfg.rules = r.value(at, v).unwrap_or_default(),
                "schedule" => cfg.schedule = r.value(at, v).unwrap_or_default(),
                "camera" => cfg.cameras = r.cameras(v),
                "mesh" => cfg.mesh = r.value(at, v).unwrap_or_default(),
                "alerts" => cfg.alerts = r.value(at, v).unwrap_or_default(),
                "hq" => cfg.hq = r.value(at, v).unwrap_or_default(),
                "ui" => cfg.ui = r.value(at, v).unwrap_or_default(),
                "ops" => cfg.ops = r.value(at, v).unwrap_or_default(),
                "evidence" => cfg.evidence = r.value(at, v).unwrap_or_default(),
                other => r.problem(
                    at,
                    format!("unknown key `{other}`; expected one of store, node, data_dir, runtime, detector, motion, tracker, rules, schedule, camera, mesh, alerts, hq, ui, ops, evidence"),
                ),
            }
        }
        for (at, message) in cfg.check(&table) {
            r.problem(at, message);
        }
        if r.problems.is_empty() {
            Ok(cfg)
        } else {
            // In file order, so the list reads top to bottom.
            r.problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
            Err(ConfigError::Invalid { problems: r.problems })
        }
    }

    /// Semantic checks that types alone cannot express.
    fn check(&self, table: &toml::Table) -> Vec<(FieldPath, String)> {
        let mut p = Vec::new();
        let unit = |p: &mut Vec<(FieldPath, String)>, at: FieldPath, v: f32| {
            if !(0.0..=1.0).contains(&v) {
                p.push((at, format!("must be between 0 and 1, got {v}")));
            }
        };
        for (key, v) in [("store", &self.store), ("node", &self.node)] {
            if !table.contains_key(key) {
                p.push((path(&[key]), "required".into()));
            } else if let Err(e) = check_name(v) {
                p.push((path(&[key]), e));
            }
        }
        unit(
            &mut p,
            path(&["detector", "score_threshold"]),
            self.detector.score_threshold,
        );
        unit(&mut p, path(&["detector", "nms_iou"]), self.detector.nms_iou);
        unit(&mut p, path(&["tracker", "low_score"]), self.tracker.low_score);
        unit(&mut p, path(&["tracker", "match_iou"]), self.tracker.match_iou);
        unit(&mut p, path(&["tracker", "low_match_iou"]), self.tracker.low_match_iou);
        unit(
            &mut p,
            path(&["motion", "min_changed_fraction"]),
            self.motion.min_changed_fraction,
        );
        if self.tracker.low_score > self.detector.score_threshold {
            p.push((
                path(&["tracker", "low_score"]),
                format!(
                    "must not exceed detector.score_threshold ({}), got {}",
                    self.detector.score_threshold, self.tracker.low_score
                ),
            ));
        }
        if self.tracker.min_hits == 0 {
            p.push((path(&["tracker", "min_hits"]), "must be at least 1".into()));
        }
        if self.tracker.max_lost_secs.is_nan() || self.tracker.max_lost_secs < 0.0 {
            p.push((path(&["tracker", "max_lost_secs"]), "must be zero or more".into()));
        }
        if self.motion.max_skip_secs.is_nan() || self.motion.max_skip_secs <= 0.0 {
            p.push((path(&["motion", "max_skip_secs"]), "must be more than zero".into()));
        }
        let ov = &self.runtime.openvino;
        if !OPENVINO_DEVICES.contains(&ov.device.as_str()) {
            p.push((
                path(&["runtime", "openvino", "device"]),
                format!("must be one of {}", OPENVINO_DEVICES.join(", ")),
            ));
        }
        if let Some(pr) = ov.precision.as_deref().filter(|pr| !OPENVINO_PRECISIONS.contains(pr)) {
            p.push((
                path(&["runtime", "openvino", "precision"]),
                format!("{pr:?}: must be one of {}", OPENVINO_PRECISIONS.join(", ")),
            ));
        }
        for (i, ep) in self.runtime.execution_providers.iter().enumerate() {
            if !EXECUTION_PROVIDERS.contains(&ep.to_ascii_lowercase().as_str()) {
                p.push((
                    path(&["runtime", "execution_providers"]).index(i),
                    format!(
                        "unknown execution provider {ep:?}; known: {}",
                        EXECUTION_PROVIDERS.join(", ")
                    ),
                ));
            }
        }
        let r = &self.rules;
        unit(&mut p, path(&["rules", "hysteresis"]), r.hysteresis);
        unit(&mut p, path(&["rules", "shelf_min_overlap"]), r.shelf_min_overlap);
        unit(&mut p, path(&["rules", "sweep_min_changed"]), r.sweep_min_changed);
        unit(&mut p, path(&["rules", "tamper_blur_ratio"]), r.tamper_blur_ratio);
        unit(
            &mut p,
            path(&["rules", "tamper_min_similarity"]),
            r.tamper_min_similarity,
        );
        for (key, v) in [
            ("loitering_secs", r.loitering_secs),
            ("update_secs", r.update_secs),
            ("shelf_interaction_secs", r.shelf_interaction_secs),
            ("grace_secs", r.grace_secs),
            ("sweep_window_secs", r.sweep_window_secs),
            ("sweep_hold_secs", r.sweep_hold_secs),
            ("crowding_clear_secs", r.crowding_clear_secs),
            ("after_hours_clear_secs", r.after_hours_clear_secs),
            ("tamper_secs", r.tamper_secs),
            ("offline_secs", r.offline_secs),
        ] {
            if v.is_nan() || v < 0.0 {
                p.push((path(&["rules", key]), format!("must be zero or more seconds, got {v}")));
            }
        }
        if r.crowding_min_people < 2 {
            p.push((
                path(&["rules", "crowding_min_people"]),
                "a crowd is at least 2 people".into(),
            ));
        }
        if let Err(errs) = self.schedule.compile() {
            p.extend(errs);
        }
        let no_announce = Vec::new();
        for (key, list) in [
            ("listen", &self.mesh.listen),
            ("bootstrap", &self.mesh.bootstrap),
            ("announce", self.mesh.announce.as_ref().unwrap_or(&no_announce)),
        ] {
            for (i, a) in list.iter().enumerate() {
                match a.parse::<lpmesh_mesh::net::Addr>() {
                    Ok(addr) if addr.to_string().contains("/quic") || addr.to_string().contains("/udp") => p.push((
                        path(&["mesh", key]).index(i),
                        "only TCP addresses: the store's private network cannot protect QUIC or UDP".into(),
                    )),
                    Ok(_) => {}
                    Err(e) => p.push((
                        path(&["mesh", key]).index(i),
                        format!("not a multiaddr like /ip4/10.0.0.5/tcp/7420: {e}"),
                    )),
                }
            }
        }
        for (key, v) in [
            ("anti_entropy_secs", self.mesh.anti_entropy_secs),
            ("heartbeat_secs", self.mesh.heartbeat_secs),
            ("leader_timeout_secs", self.mesh.leader_timeout_secs),
            ("retention_days", self.mesh.retention_days),
            ("time_window_secs", self.mesh.time_window_secs),
        ] {
            if v.is_nan() || v <= 0.0 {
                p.push((path(&["mesh", key]), "must be more than zero".into()));
            }
        }
        if self.mesh.enrol_listen.parse::<std::net::SocketAddr>().is_err() {
            p.push((
                path(&["mesh", "enrol_listen"]),
                "not an address like 0.0.0.0:7421".into(),
            ));
        }
        if self.mesh.time_window_secs > 86_400.0 {
            p.push((
                path(&["mesh", "time_window_secs"]),
                "must be at most 86400 (a day): it is how far a record may claim the future".into(),
            ));
        }
        if self.mesh.retention_days > 36_500.0 {
            p.push((
                path(&["mesh", "retention_days"]),
                "must be at most 36500 (100 years)".into(),
            ));
        }
        if self.mesh.leader_timeout_secs < 2.0 * self.mesh.heartbeat_secs {
            p.push((
                path(&["mesh", "leader_timeout_secs"]),
                "must be at least twice heartbeat_secs, or one late heartbeat changes the leader".into(),
            ));
        }
        p.extend(self.hq.check());
        for (field, message) in self.alerts.check().into_iter().chain(self.evidence.check()) {
            p.push((field_path(&field), message));
        }
        if self.ops.listen.parse::<std::net::SocketAddr>().is_err() {
            p.push((path(&["ops", "listen"]), "not an address like 127.0.0.1:9420".into()));
        }
        if self.ui.listen.parse::<std::net::SocketAddr>().is_err() {
            p.push((path(&["ui", "listen"]), "not an address like 0.0.0.0:8080".into()));
        }
        if let Some(u) = &self.ui.public_url {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                p.push((
                    path(&["ui", "public_url"]),
                    "must start with http:// or https://".into(),
                ));
            }
        }
        for (i, n) in self.ui.names.iter().enumerate() {
            let dns = n.len() <= 253
                && !n.is_empty()
                && n.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && !l.starts_with('-')
                        && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                });
            if !dns {
                p.push((
                    path(&["ui", "names"]).index(i),
                    format!("{n:?} is not a host name (letters, digits and '-', dot-separated)"),
                ));
            }
        }
        let mut camera_names = std::collections::HashSet::new();
        for (ci, cam) in self.cameras.iter().enumerate() {
            let at = path(&["camera"]).index(ci);
            if let Err(e) = check_name(&cam.name) {
                p.push((at.clone().key("name"), e));
            } else if !camera_names.insert(cam.name.as_str()) {
                p.push((
                    at.clone().key("name"),
                    format!("camera name {:?} is used twice", cam.name),
                ));
            }
            if cam.source.trim().is_empty() {
                p.push((at.clone().key("source"), "must not be empty".into()));
            }
            if !(cam.detect_fps > 0.0 && cam.detect_fps <= 60.0) {
                p.push((
                    at.clone().key("detect_fps"),
                    format!("must be more than 0 and at most 60, got {}", cam.detect_fps),
                ));
            }
            if let Some(t) = cam.score_threshold {
                unit(&mut p, at.clone().key("score_threshold"), t);
            }
            let mut names = std::collections::HashSet::new();
            for (zi, z) in cam.zones.iter().enumerate() {
                let zat = at.clone().key("zone").index(zi);
                if let Err(e) = check_name(&z.name) {
                    p.push((zat.clone().key("name"), e));
                } else if !names.insert(z.name.as_str()) {
                    p.push((
                        zat.clone().key("name"),
                        format!("{:?} is already the name of a zone or line of this camera", z.name),
                    ));
                }
                if z.polygon.len() < 3 {
                    p.push((
                        zat.clone().key("polygon"),
                        format!("a polygon needs at least 3 points, got {}", z.polygon.len()),
                    ));
                }
                for (k, pt) in z.polygon.iter().enumerate() {
                    check_point(&mut p, zat.clone().key("polygon").index(k), pt);
                }
                if let Some(c) = z.min_confidence {
                    unit(&mut p, zat.clone().key("min_confidence"), c);
                }
            }
            for (li, l) in cam.lines.iter().enumerate() {
                let lat = at.clone().key("line").index(li);
                if let Err(e) = check_name(&l.name) {
                    p.push((lat.clone().key("name"), e));
                } else if !names.insert(l.name.as_str()) {
                    p.push((
                        lat.clone().key("name"),
                        format!("{:?} is already the name of a zone or line of this camera", l.name),
                    ));
                }
                let ok_from = check_point(&mut p, lat.clone().key("from"), &l.from);
                let ok_to = check_point(&mut p, lat.clone().key("to"), &l.to);
                if ok_from
                    && ok_to
                    && CountingLine::new([l.from[0], l.from[1]], [l.to[0], l.to[1]], l.in_heading).is_none()
                {
                    p.push((
                        lat.clone().key("in"),
                        "the line is too short, or runs along the `in` heading (it could never be crossed that way)"
                            .into(),
                    ));
                }
            }
            for (ri, o) in cam.rules.iter().enumerate() {
                let rat = at.clone().key("rule").index(ri);
                if let Some(z) = &o.zone {
                    if !cam.zones.iter().any(|zc| &zc.name == z) {
                        let known: Vec<&str> = cam.zones.iter().map(|z| z.name.as_str()).collect();
                        p.push((
                            rat.clone().key("zone"),
                            format!("no zone {z:?} on camera {:?} (zones: {})", cam.name, known.join(", ")),
                        ));
                    }
                    if !ZONE_KINDS.contains(&o.kind) {
                        p.push((
                            rat.clone().key("zone"),
                            format!("{} is not a per-zone rule", o.kind.as_str()),
                        ));
                    }
                }
                if o.secs.is_some() && !matches!(o.kind, EventKind::Loitering | EventKind::ShelfInteraction) {
                    p.push((
                        rat.clone().key("secs"),
                        format!("{} has no duration threshold", o.kind.as_str()),
                    ));
                }
                if o.secs.is_some_and(|s| s.is_nan() || s <= 0.0) {
                    p.push((rat.clone().key("secs"), "must be more than zero".into()));
                }
                if o.people.is_some() && o.kind != EventKind::Crowding {
                    p.push((
                        rat.clone().key("people"),
                        format!("{} has no people threshold", o.kind.as_str()),
                    ));
                }
                if o.people.is_some_and(|n| n < 2) {
                    p.push((rat.clone().key("people"), "a crowd is at least 2 people".into()));
                }
            }
        }
        p
    }

    /// The tracker settings with the detector's threshold as the one that starts tracks.
    pub fn tracker_config(&self) -> TrackerConfig {
        TrackerConfig {
            high_score: self.detector.score_threshold,
            ..self.tracker.clone()
        }
    }

    /// The lowest score any stage uses: the detector decodes down to here so the tracker sees weak boxes.
    pub fn decode_threshold(&self) -> f32 {
        self.detector.score_threshold.min(self.tracker.low_score)
    }

    pub fn camera(&self, name: &str) -> Option<&CameraConfig> {
        self.cameras.iter().find(|c| c.name == name)
    }

    /// Compiles a (validated) camera's zones, lines and rule overrides for the rules engine.
    pub fn camera_spec(&self, cam: &CameraConfig, model: &str) -> Result<CameraSpec, String> {
        let schedule = self.schedule.compile().map_err(|e| {
            e.iter()
                .map(|(a, m)| format!("{a}: {m}"))
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        let threshold = cam.score_threshold.unwrap_or(self.detector.score_threshold);
        let applies = |o: &RuleOverride, kind: EventKind, zone: Option<&str>| {
            o.kind == kind && (o.zone.is_none() || o.zone.as_deref() == zone)
        };
        // Later overrides win; a zone-specific one is listed after a camera-wide one by convention,
        // but specificity decides regardless of order.
        let pick = |kind: EventKind, zone: Option<&str>| -> Vec<&RuleOverride> {
            let mut v: Vec<&RuleOverride> = cam.rules.iter().filter(|o| applies(o, kind, zone)).collect();
            v.sort_by_key(|o| o.zone.is_some());
            v
        };
        let mut zones = Vec::new();
        for z in &cam.zones {
            let polygon = Polygon::new(z.polygon.iter().map(|p| [p[0], p[1]]).collect())
                .ok_or_else(|| format!("zone {:?} has fewer than 3 points", z.name))?;
            let mut spec = ZoneSpec {
                name: z.name.clone(),
                kind: z.kind,
                polygon,
                min_confidence: z.min_confidence.unwrap_or(threshold),
                loiter_secs: (z.kind != ZoneKind::Checkout).then_some(self.rules.loitering_secs),
                crowd_min: (z.kind != ZoneKind::Checkout).then_some(self.rules.crowding_min_people),
                interaction_secs: self.rules.shelf_interaction_secs,
                severity: HashMap::new(),
                disabled: Vec::new(),
            };
            for kind in ZONE_KINDS {
                for o in pick(kind, Some(&z.name)) {
                    if let Some(en) = o.enabled {
                        spec.disabled.retain(|k| *k != kind);
                        if !en {
                            spec.disabled.push(kind);
                        } else if kind == EventKind::Loitering && spec.loiter_secs.is_none() {
                            spec.loiter_secs = Some(self.rules.loitering_secs);
                        } else if kind == EventKind::Crowding && spec.crowd_min.is_none() {
                            spec.crowd_min = Some(self.rules.crowding_min_people);
                        }
                    }
                    if let Some(sev) = o.severity {
                        spec.severity.insert(kind, sev);
                    }
                    match kind {
                        EventKind::Loitering if o.secs.is_some() => spec.loiter_secs = o.secs,
                        EventKind::ShelfInteraction => {
                            if let Some(secs) = o.secs {
                                spec.interaction_secs = secs;
                            }
                        }
                        EventKind::Crowding if o.people.is_some() => spec.crowd_min = o.people,
                        _ => {}
                    }
                }
            }
            zones.push(spec);
        }
        let lines = cam
            .lines
            .iter()
            .filter_map(|l| {
                CountingLine::new([l.from[0], l.from[1]], [l.to[0], l.to[1]], l.in_heading).map(|line| LineSpec {
                    name: l.name.clone(),
                    line,
                })
            })
            .collect();
        let mut settings = self.rules.clone();
        let mut disabled = Vec::new();
        for kind in EventKind::ALL {
            for o in pick(kind, None).into_iter().filter(|o| o.zone.is_none()) {
                if let Some(sev) = o.severity {
                    settings.severity.insert(kind, sev);
                }
                if o.enabled == Some(false) {
                    disabled.push(kind);
                } else if o.enabled == Some(true) {
                    disabled.retain(|k| *k != kind);
                }
            }
        }
        Ok(CameraSpec {
            store: self.store.clone(),
            node: self.node.clone(),
            camera: cam.name.clone(),
            model: model.to_string(),
            zones,
            lines,
            settings,
            schedule,
            disabled,
        })
    }
}

/// Rules that belong to a zone (as opposed to the whole camera).
pub const ZONE_KINDS: [EventKind; 6] = [
    EventKind::Loitering,
    EventKind::ShelfInteraction,
    EventKind::ShelfSweep,
    EventKind::ExitWithoutCheckout,
    EventKind::RestrictedEntry,
    EventKind::Crowding,
];

/// Names travel in every event: short, printable, no separators that would confuse ids or topics.
/// A store or node name: what the configuration, invitations and member records accept.
pub fn check_name(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > 64 {
        return Err(format!("at most 64 characters, got {}", s.len()));
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!("{s:?}: use letters, digits, '-', '_' and '.' only"));
    }
    Ok(())
}

fn check_point(p: &mut Vec<(FieldPath, String)>, at: FieldPath, pt: &[f32]) -> bool {
    if pt.len() != 2 {
        p.push((at, format!("a point is [x, y], got {} numbers", pt.len())));
        return false;
    }
    if !pt.iter().all(|v| (0.0..=1.0).contains(v)) {
        p.push((
            at,
            format!(
                "coordinates are fractions of the image (0 to 1), got [{}, {}]",
                pt[0], pt[1]
            ),
        ));
        return false;
    }
    true
}

fn line_of(text: &str, byte: usize) -> usize {
    text[..byte.min(text.len())].matches('\n').count() + 1
}

/// The cache directory shared with `models/build.py`: `$LPMESH_CACHE`, else `$XDG_CACHE_HOME/lpmesh`,
/// else `~/.cache/lpmesh`.
pub fn cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("LPMESH_CACHE").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("XDG_CACHE_HOME").filter(|p| !p.is_empty()) {
        return PathBuf::from(p).join("lpmesh");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/var/cache"), PathBuf::from);
    home.join(".cache").join("lpmesh")
}

/// The default detector as produced by `models/build.py`.
pub fn default_model_path() -> PathBuf {
    cache_dir().join("models").join("nanodet-m-416.onnx")
}

/// The ONNX Runtime library as fetched by `models/build.py`.
pub fn default_onnxruntime_path() -> PathBuf {
    cache_dir()
        .join("onnxruntime")
        .join("1.31.1")
        .join("libonnxruntime.so.1.31.1")
}

/// The OpenVINO execution-provider plugin as installed by `python3 models/build.py openvino`.
pub fn default_openvino_plugin_path() -> PathBuf {
    cache_dir()
        .join("onnxruntime-ep")
        .join("openvino")
        .join("1.8.1")
        .join("libonnxruntime_providers_openvino_plugin.so")
}

/// The demo and test footage as extracted by `models/build.py`.
pub fn default_footage_path() -> PathBuf {
    cache_dir().join("data").join("vtest.avi")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<NodeConfig, ConfigError> {
        NodeConfig::parse(text, Path::new("store.toml"))
    }

    fn problems(text: &str) -> Vec<(Option<usize>, Option<String>, String)> {
        match parse(text) {
            Err(ConfigError::Invalid { problems }) => {
                problems.into_iter().map(|p| (p.line, p.field, p.message)).collect()
            }
            other => panic!("expected problems, got {other:?}"),
        }
    }

    const HEAD: &str = "store = \"s1\"\nnode = \"n1\"\n";

    #[test]
    fn a_control_character_in_a_comment_is_named_not_left_blank() {
        // Found by the node_config fuzz target (fuzz/regressions/node_config/).
        for text in ["#\0", "#\u{1}", "#\u{7f}"] {
            let p = problems(text);
            assert_eq!(p.len(), 1, "{p:?}");
            assert_eq!(p[0].0, Some(1));
            assert!(p[0].2.contains("control characters"), "{p:?}");
        }
    }

    #[test]
    fn store_and_node_are_all_that_is_required() {
        let cfg = parse(HEAD).unwrap();
        assert_eq!((cfg.store.as_str(), cfg.node.as_str()), ("s1", "n1"));
        assert_eq!(cfg.detector, DetectorConfig::default());
        let p = problems("");
        assert_eq!(
            p.iter().map(|p| p.1.as_deref()).collect::<Vec<_>>(),
            vec![Some("store"), Some("node")]
        );
    }

    #[test]
    fn unknown_key_names_file_and_line() {
        let err = parse(&format!(
            "{HEAD}[detector]\nscore_threshold = 0.4\nscore_treshold = 0.4\n"
        ))
        .unwrap_err();
        let ConfigError::Invalid { problems } = err else {
            panic!("{err}")
        };
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].line, Some(5));
        assert_eq!(problems[0].field.as_deref(), Some("detector.score_treshold"));
        assert!(
            problems[0]
                .to_string()
                .starts_with("store.toml:5: detector.score_treshold: unknown field"),
            "{}",
            problems[0]
        );
    }

    #[test]
    fn wrong_types_are_reported_with_their_lines() {
        let p = problems(&format!(
            "{HEAD}[motion]\nenabled = \"yes\"\n[tracker]\nmin_hits = \"three\"\n"
        ));
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!((p[0].0, p[0].1.as_deref()), (Some(4), Some("motion.enabled")));
        assert_eq!((p[1].0, p[1].1.as_deref()), (Some(6), Some("tracker.min_hits")));
    }

    #[test]
    fn a_syntax_error_has_a_line() {
        let p = problems(&format!("{HEAD}[detector\n"));
        assert_eq!(p[0].0, Some(3));
    }

    /// A configuration with one mistake of each kind, all reported at once, in file order.
    #[test]
    fn every_problem_is_reported_at_once() {
        let text = r#"store = "s1"
node = "n 1"
[detector]
score_threshold = 1.5

[schedule]
timezone = "Mars/Olympus"
monday = ["08:00-21:00", "late"]

[[camera]]
name = "front"
source = "rtsp://cam1/stream"

[[camera.zone]]
name = "tiny"
kind = "shelf"
polygon = [[0.1, 0.1], [0.2, 0.2]]

[[camera.zone]]
name = "tiny"
kind = "exit"
polygon = [[0.1, 0.1], [1.2, 0.1], [0.1, 0.3]]

[[camera.zone]]
name = "odd"
kind = "stockroom"
polygon = [[0.1, 0.1], [0.2, 0.1], [0.1, 0.3]]

[[camera.rule]]
kind = "loitering"
zone = "nowhere"
secs = 30

[[camera.line]]
name = "walk"
from = [0.1, 0.5]
to = [0.9, 0.5]
in = "left"
"#;
        let p = problems(text);
        let got: Vec<(Option<usize>, &str)> = p.iter().map(|p| (p.0, p.1.as_deref().unwrap_or(""))).collect();
        assert_eq!(
            got,
            vec![
                (Some(2), "node"),
                (Some(4), "detector.score_threshold"),
                (Some(7), "schedule.timezone"),
                (Some(8), "schedule.monday[1]"),
                (Some(17), "camera[0].zone[0].polygon"),
                (Some(20), "camera[0].zone[1].name"),
                (Some(22), "camera[0].zone[1].polygon[1]"),
                (Some(26), "camera[0].zone[2].kind"),
                (Some(31), "camera[0].rule[0].zone"),
                (Some(38), "camera[0].line[0].in"),
            ],
            "{p:#?}"
        );
        assert!(p[5].2.contains("already the name"), "{}", p[5].2);
        assert!(p[8].2.contains("no zone \"nowhere\""), "{}", p[8].2);
    }

    #[test]
    fn mesh_addresses_must_be_tcp_multiaddrs() {
        let p = problems(&format!(
            "{HEAD}[mesh]\nlisten = [\"/ip4/0.0.0.0/udp/7420/quic-v1\", \"/ip4/0.0.0.0/tcp/7420\"]\nbootstrap = [\"10.0.0.5:7420\"]\n"
        ));
        let got: Vec<(Option<usize>, Option<&str>)> = p.iter().map(|p| (p.0, p.1.as_deref())).collect();
        assert_eq!(
            got,
            vec![(Some(4), Some("mesh.listen[0]")), (Some(5), Some("mesh.bootstrap[0]"))],
            "{p:?}"
        );
        assert!(p[0].2.contains("only TCP"), "{}", p[0].2);
    }

    #[test]
    fn tracker_starts_tracks_at_the_detector_threshold() {
        let cfg = parse(&format!(
            "{HEAD}[detector]\nscore_threshold = 0.6\n[tracker]\nlow_score = 0.25\n"
        ))
        .unwrap();
        assert_eq!(cfg.tracker_config().high_score, 0.6);
        assert_eq!(cfg.decode_threshold(), 0.25);
    }

    #[test]
    fn rule_overrides_compile_into_the_camera_spec() {
        let text = format!(
            r#"{HEAD}
[rules]
loitering_secs = 90
[rules.severity]
crowding = "high"

[[camera]]
name = "front"
source = "x.avi"

[[camera.zone]]
name = "perfume"
kind = "shelf"
polygon = [[0.1, 0.1], [0.3, 0.1], [0.3, 0.3], [0.1, 0.3]]

[[camera.zone]]
name = "till"
kind = "checkout"
polygon = [[0.5, 0.1], [0.7, 0.1], [0.7, 0.3]]

[[camera.rule]]
kind = "loitering"
zone = "perfume"
secs = 20
severity = "medium"

[[camera.rule]]
kind = "line_crossing"
enabled = false
"#
        );
        let cfg = parse(&text).unwrap();
        let spec = cfg.camera_spec(&cfg.cameras[0], "m").unwrap();
        assert_eq!(spec.zones[0].loiter_secs, Some(20.0));
        assert_eq!(
            spec.zones[0].severity.get(&EventKind::Loitering),
            Some(&Severity::Medium)
        );
        assert_eq!(
            spec.zones[1].loiter_secs, None,
            "no loitering at the checkout by default"
        );
        assert_eq!(spec.settings.severity_of(EventKind::Crowding), Severity::High);
        assert_eq!(spec.disabled, vec![EventKind::LineCrossing]);
        assert_eq!(cfg.rules.loitering_secs, 90.0);
    }

    #[test]
    fn the_hq_section_is_checked() {
        let text = format!(
            "{HEAD}[mesh]\nheartbeat_secs = 5.0\nleader_timeout_secs = 6.0\n[hq]\nurl = \"http://hq.example.com\"\nrecipient = \"age1nope\"\nperiod_secs = 7000\n"
        );
        let got: Vec<(Option<usize>, Option<String>)> = problems(&text).into_iter().map(|p| (p.0, p.1)).collect();
        assert_eq!(
            got,
            vec![
                (Some(5), Some("mesh.leader_timeout_secs".into())),
                (Some(7), Some("hq.url".into())),
                (Some(8), Some("hq.recipient".into())),
                (Some(9), Some("hq.period_secs".into())),
            ]
        );
        let half = problems(&format!("{HEAD}[hq]\nurl = \"https://hq:8443\"\n"));
        assert_eq!(half[0].1.as_deref(), Some("hq.recipient"));
        let r = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";
        let ok = parse(&format!("{HEAD}[hq]\nurl = \"https://hq:8443\"\nrecipient = \"{r}\"\n")).unwrap();
        assert_eq!(ok.hq.url.as_deref(), Some("https://hq:8443"));
        assert_eq!(ok.hq.period_secs, 3600);
        assert_eq!(
            ok.hq.leader_stall(),
            std::time::Duration::from_secs(240),
            "4 windows of 60 s"
        );
    }

    #[test]
    fn the_leader_stall_limit_is_checked() {
        for (windows, ok) in [(0, true), (1, false), (2, true), (1000, true), (1001, false)] {
            let text = format!("{HEAD}[hq]\nresend_secs = 30.0\nleader_stall_windows = {windows}\n");
            if ok {
                assert!(parse(&text).is_ok(), "{windows}");
            } else {
                let got = problems(&text);
                assert_eq!(
                    (got[0].0, got[0].1.as_deref()),
                    (Some(5), Some("hq.leader_stall_windows")),
                    "{windows}: {got:?}"
                );
            }
        }
        let off = parse(&format!("{HEAD}[hq]\nleader_stall_windows = 0\n")).unwrap();
        assert_eq!(off.hq.leader_stall(), std::time::Duration::ZERO);
        let two = parse(&format!("{HEAD}[hq]\nresend_secs = 30.0\nleader_stall_windows = 2\n")).unwrap();
        assert_eq!(two.hq.leader_stall(), std::time::Duration::from_secs(60));
        let negative = problems(&format!("{HEAD}[hq]\nleader_stall_windows = -1\n"));
        assert_eq!(
            negative[0].1.as_deref(),
            Some("hq.leader_stall_windows"),
            "{negative:?}"
        );
    }

    #[test]
    fn alert_routes_are_checked_with_their_lines() {
        let text = format!(
            "{HEAD}[[alerts.route]]\nname = \"radio\"\ntype = \"mqtt\"\n\n[[alerts.route]]\nname = \"hook\"\ntype = \"webhook\"\nurl = \"ftp://x\"\n"
        );
        let got = problems(&text);
        assert!(
            got.iter()
                .any(|p| p.1.as_deref() == Some("alerts.route[0].broker") && p.0 == Some(3)),
            "{got:?}"
        );
        assert!(
            got.iter()
                .any(|p| p.1.as_deref() == Some("alerts.route[1].url") && p.0 == Some(10)),
            "{got:?}"
        );
        let ok = parse(&format!(
            "{HEAD}[[alerts.route]]\nname = \"radio\"\ntype = \"mqtt\"\nbroker = \"10.0.0.2\"\nmin_severity = \"high\"\n"
        ))
        .unwrap();
        assert_eq!(ok.alerts.route.len(), 1);
    }
}
