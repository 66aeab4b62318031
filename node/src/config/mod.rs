//! Node configuration: one TOML file per node (store, cameras, zones, rules, schedule, runtime).
//!
//! Every section has documented defaults, so an empty file is a valid configuration. Unknown keys are
//! errors (a typo must not silently fall back to a default). Errors name the file, the line and the field.

use std::fmt;
use std::path::{Path, PathBuf};

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::event::{EventKind, Severity};
use crate::motion::MotionConfig;
use crate::rules::{RuleSettings, ZoneKind};
use crate::track::TrackerConfig;
use crate::zone::{CountingLine, Heading};

mod check;
mod reader;
mod schema;

pub use check::{check_name, NameError, ZONE_KINDS};
pub(crate) use reader::{field_path, line_of, path, toml_message, Reader};
pub use reader::{ConfigError, ConfigProblem, FieldPath, Seg};
pub use schema::*;

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

/// Alert routes: `[[alerts.route]]` (MQTT, webhook, console); see `crate::alerts`.
pub use crate::alerts::AlertsConfig;

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

    pub fn camera(&self, name: &str) -> Option<&CameraConfig> {
        self.cameras.iter().find(|c| c.name == name)
    }
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
