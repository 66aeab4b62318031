//! Node configuration: one TOML file per node.
//!
//! Every section has documented defaults, so an empty file is a valid configuration. Unknown keys are
//! errors (a typo must not silently fall back to a default). Errors name the file, the line and the field.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::motion::MotionConfig;
use crate::track::TrackerConfig;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    pub runtime: RuntimeConfig,
    pub detector: DetectorConfig,
    pub motion: MotionConfig,
    pub tracker: TrackerConfig,
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
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            onnxruntime: None,
            execution_providers: vec!["cpu".into()],
            intra_threads: 0,
        }
    }
}

/// The execution providers lpmesh knows by name.
pub const EXECUTION_PROVIDERS: &[&str] = &[
    "cpu", "cuda", "tensorrt", "openvino", "qnn", "rknpu", "nnapi", "xnnpack", "acl", "vsinpu",
    "rocm", "migraphx", "onednn", "cann", "vitis",
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
    #[error("invalid configuration:\n{}", problems.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid { problems: Vec<ConfigProblem> },
}

impl NodeConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and checks `text`, naming `path` in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let cfg: NodeConfig = toml::from_str(text).map_err(|e| ConfigError::Invalid {
            problems: vec![ConfigProblem {
                file: path.to_path_buf(),
                line: e.span().map(|s| line_of(text, s.start)),
                field: None,
                message: e.message().trim().to_string(),
            }],
        })?;
        let problems: Vec<ConfigProblem> = cfg
            .check()
            .into_iter()
            .map(|(field, message)| ConfigProblem {
                file: path.to_path_buf(),
                line: find_key_line(text, &field),
                field: Some(field),
                message,
            })
            .collect();
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError::Invalid { problems })
        }
    }

    /// Semantic checks that types alone cannot express; every problem, not just the first.
    fn check(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        let unit = |p: &mut Vec<(String, String)>, field: &str, v: f32| {
            if !(0.0..=1.0).contains(&v) {
                p.push((
                    field.to_string(),
                    format!("must be between 0 and 1, got {v}"),
                ));
            }
        };
        unit(
            &mut p,
            "detector.score_threshold",
            self.detector.score_threshold,
        );
        unit(&mut p, "detector.nms_iou", self.detector.nms_iou);
        unit(&mut p, "tracker.low_score", self.tracker.low_score);
        unit(&mut p, "tracker.match_iou", self.tracker.match_iou);
        unit(&mut p, "tracker.low_match_iou", self.tracker.low_match_iou);
        unit(
            &mut p,
            "motion.min_changed_fraction",
            self.motion.min_changed_fraction,
        );
        if self.tracker.low_score > self.detector.score_threshold {
            p.push((
                "tracker.low_score".into(),
                format!(
                    "must not exceed detector.score_threshold ({}), got {}",
                    self.detector.score_threshold, self.tracker.low_score
                ),
            ));
        }
        if self.tracker.min_hits == 0 {
            p.push(("tracker.min_hits".into(), "must be at least 1".into()));
        }
        if self.tracker.max_lost_secs.is_nan() || self.tracker.max_lost_secs < 0.0 {
            p.push((
                "tracker.max_lost_secs".into(),
                "must be zero or more".into(),
            ));
        }
        if self.motion.max_skip_secs.is_nan() || self.motion.max_skip_secs <= 0.0 {
            p.push((
                "motion.max_skip_secs".into(),
                "must be more than zero".into(),
            ));
        }
        for (i, ep) in self.runtime.execution_providers.iter().enumerate() {
            if !EXECUTION_PROVIDERS.contains(&ep.to_ascii_lowercase().as_str()) {
                p.push((
                    format!("runtime.execution_providers[{i}]"),
                    format!(
                        "unknown execution provider {ep:?}; known: {}",
                        EXECUTION_PROVIDERS.join(", ")
                    ),
                ));
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
}

fn line_of(text: &str, byte: usize) -> usize {
    text[..byte.min(text.len())].matches('\n').count() + 1
}

/// The line where a dotted field (`section.key`, `section.key[3]`) is set, if it is set at all.
fn find_key_line(text: &str, field: &str) -> Option<usize> {
    let field = field.split('[').next().unwrap_or(field);
    let (section, key) = field.rsplit_once('.').unwrap_or(("", field));
    let mut in_section = section.is_empty();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('[') {
            in_section = t.trim_matches(|c| c == '[' || c == ']').trim() == section;
            continue;
        }
        if in_section {
            if let Some((k, _)) = t.split_once('=') {
                if k.trim() == key {
                    return Some(i + 1);
                }
            }
        }
    }
    None
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

/// The demo and test footage as extracted by `models/build.py`.
pub fn default_footage_path() -> PathBuf {
    cache_dir().join("data").join("vtest.avi")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<NodeConfig, ConfigError> {
        NodeConfig::parse(text, Path::new("node.toml"))
    }

    #[test]
    fn empty_file_is_all_defaults() {
        assert_eq!(parse("").unwrap(), NodeConfig::default());
    }

    #[test]
    fn unknown_key_names_file_and_line() {
        let err = parse("[detector]\nscore_threshold = 0.4\nscore_treshold = 0.4\n").unwrap_err();
        let ConfigError::Invalid { problems } = err else {
            panic!("{err}")
        };
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].line, Some(3));
        assert!(
            problems[0].message.contains("score_treshold"),
            "{}",
            problems[0]
        );
        assert!(
            problems[0].to_string().starts_with("node.toml:3"),
            "{}",
            problems[0]
        );
    }

    #[test]
    fn wrong_type_is_reported_with_its_line() {
        let err = parse("[motion]\nenabled = \"yes\"\n").unwrap_err();
        let ConfigError::Invalid { problems } = err else {
            panic!("{err}")
        };
        assert_eq!(problems[0].line, Some(2));
    }

    #[test]
    fn every_semantic_problem_is_reported_at_once() {
        let text = "[detector]\nscore_threshold = 1.5\nnms_iou = -0.1\n\n[runtime]\nexecution_providers = [\"cpu\", \"warp-drive\"]\n[tracker]\nmin_hits = 0\n";
        let ConfigError::Invalid { problems } = parse(text).unwrap_err() else {
            panic!()
        };
        let got: Vec<(Option<usize>, Option<&str>)> = problems
            .iter()
            .map(|p| (p.line, p.field.as_deref()))
            .collect();
        assert_eq!(
            got,
            vec![
                (Some(2), Some("detector.score_threshold")),
                (Some(3), Some("detector.nms_iou")),
                (Some(8), Some("tracker.min_hits")),
                (Some(6), Some("runtime.execution_providers[1]")),
            ]
        );
    }

    #[test]
    fn tracker_starts_tracks_at_the_detector_threshold() {
        let cfg =
            parse("[detector]\nscore_threshold = 0.6\n[tracker]\nlow_score = 0.25\n").unwrap();
        assert_eq!(cfg.tracker_config().high_score, 0.6);
        assert_eq!(cfg.decode_threshold(), 0.25);
    }
}
