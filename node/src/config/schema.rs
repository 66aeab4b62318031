//! The configuration's sections as they are written: every key, its type and its default.

use super::*;

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
pub(crate) struct CameraRaw {
    pub(crate) name: String,
    pub(crate) source: String,
    #[serde(default = "default_detect_fps")]
    pub(crate) detect_fps: f64,
    #[serde(default)]
    pub(crate) score_threshold: Option<f32>,
    #[serde(default, rename = "loop")]
    pub(crate) looping: bool,
    #[serde(default)]
    pub(crate) zone: Vec<toml::Value>,
    #[serde(default)]
    pub(crate) line: Vec<toml::Value>,
    #[serde(default)]
    pub(crate) rule: Vec<toml::Value>,
}

pub(crate) fn default_detect_fps() -> f64 {
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
    /// How a frame is fitted into the model's input: `letterbox` (proportions kept) or `stretch`.
    pub fit: crate::detect::Fit,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            model: None,
            score_threshold: 0.5,
            nms_iou: 0.5,
            fit: crate::detect::Fit::default(),
        }
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
}
