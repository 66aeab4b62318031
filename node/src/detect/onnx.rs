//! ONNX Runtime: finding and loading the library, choosing execution providers, and the NanoDet detector.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use ort::device::Device;
use ort::environment::Environment;
use ort::ep::{self, ExecutionProvider, ExecutionProviderDispatch};
use ort::memory::DeviceType;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::TensorRef;

use super::nanodet::{Level, NanoDetDecoder};
use super::nms::nms;
use super::{BoxError, DetectError, DetectTimings, Detection, Detector, Fit, InputSpec};
use crate::config::{default_onnxruntime_path, default_openvino_plugin_path, OpenVinoConfig, RuntimeConfig};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "ONNX Runtime library not found (looked for {}). Install it with `scripts/setup.sh` (or \
         `python3 models/build.py runtime`), or point `runtime.onnxruntime` in the config or ORT_DYLIB_PATH at \
         a libonnxruntime.so",
        .looked.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    NotFound { looked: Vec<PathBuf> },
    #[error("cannot load ONNX Runtime from {}: {source}", path.display())]
    Load {
        path: PathBuf,
        #[source]
        source: ort::LoadDynamicError,
    },
    #[error("ONNX Runtime environment: {0}")]
    Environment(#[source] BoxError),
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("model file not found: {}. Produce it with `scripts/setup.sh` (or `python3 models/build.py models`)", .0.display())]
    NotFound(PathBuf),
    #[error("cannot load model {}: {source}", path.display())]
    Load {
        path: PathBuf,
        #[source]
        source: ort::Error,
    },
    #[error("model {} does not look like NanoDet: {reason}", path.display())]
    Unsupported { path: PathBuf, reason: String },
}

static ENVIRONMENT: OnceLock<Environment> = OnceLock::new();

/// The library path the configuration resolves to: config, then `ORT_DYLIB_PATH`, then the cache.
pub fn library_candidates(cfg: &RuntimeConfig) -> Vec<PathBuf> {
    if let Some(p) = &cfg.onnxruntime {
        return vec![p.clone()];
    }
    let mut v = Vec::new();
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        v.push(PathBuf::from(p));
    }
    v.push(default_onnxruntime_path());
    v
}

/// Loads ONNX Runtime once per process. Never panics when the library is missing or wrong.
pub fn environment(cfg: &RuntimeConfig) -> Result<&'static Environment, RuntimeError> {
    if let Some(env) = ENVIRONMENT.get() {
        return Ok(env);
    }
    let looked = library_candidates(cfg);
    let path = looked
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or(RuntimeError::NotFound { looked })?;
    let builder = ort::init_from(&path).map_err(|source| RuntimeError::Load {
        path: path.clone(),
        source,
    })?;
    let env = builder
        .with_name("lpmesh")
        .build()
        .map_err(|e| RuntimeError::Environment(e.into()))?;
    tracing::info!(library = %path.display(), "ONNX Runtime loaded");
    Ok(ENVIRONMENT.get_or_init(|| env))
}

fn provider(name: &str) -> Option<(ExecutionProviderDispatch, bool)> {
    fn d<E: ExecutionProvider + Default + 'static>(e: E) -> Option<(ExecutionProviderDispatch, bool)>
    where
        ExecutionProviderDispatch: From<E>,
    {
        let available = E::is_available().unwrap_or(false);
        Some((ExecutionProviderDispatch::from(e).error_on_failure(), available))
    }
    match name.to_ascii_lowercase().as_str() {
        // ort's `CPU::default()` turns ONNX Runtime's arena off: every inference then mallocs (and the
        // kernel zeroes) a fresh ~17 MB activation block, which cost a demo node about a third of its CPU.
        "cpu" => d(ep::CPU::default().with_arena_allocator(true)),
        "cuda" => d(ep::CUDA::default()),
        "tensorrt" => d(ep::TensorRT::default()),
        "openvino" => d(ep::OpenVINO::default()),
        "qnn" => d(ep::QNN::default()),
        "rknpu" => d(ep::RKNPU::default()),
        "nnapi" => d(ep::NNAPI::default()),
        "xnnpack" => d(ep::XNNPACK::default()),
        "acl" => d(ep::ACL::default()),
        "vsinpu" => d(ep::VSINPU),
        "rocm" => d(ep::ROCm::default()),
        "migraphx" => d(ep::MIGraphX::default()),
        "onednn" => d(ep::OneDNN::default()),
        "cann" => d(ep::CANN::default()),
        "vitis" => d(ep::Vitis::default()),
        _ => None,
    }
}

/// The OpenVINO provider's name in ONNX Runtime, as its plugin registers it.
const OPENVINO_EP: &str = "OpenVINOExecutionProvider";

/// Plugin libraries registered with the environment, by path, and how that went: ONNX Runtime takes
/// a library once per process.
/// `Arc`: a failure is reported again to every later session, and `ort::Error` cannot be cloned.
static PLUGINS: Mutex<BTreeMap<PathBuf, Result<(), Arc<ort::Error>>>> = Mutex::new(BTreeMap::new());

/// Why a plugin library could not be registered.
#[derive(Debug, thiserror::Error)]
enum PluginError {
    #[error("{}: {source}", path.display())]
    Path {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{} not found: fetch it with `python3 models/build.py openvino`, or set runtime.openvino.plugin",
        .0.display()
    )]
    NotFound(PathBuf),
    #[error("ONNX Runtime cannot load {}: {source}", path.display())]
    Load {
        path: PathBuf,
        #[source]
        source: Arc<ort::Error>,
    },
}

fn register_plugin(env: &Environment, path: &Path) -> Result<(), PluginError> {
    // Absolute, so the file checked is the file loaded (a bare name would send the loader searching the
    // library path) and one file is registered once however it is spelled.
    let path = &std::path::absolute(path).map_err(|source| PluginError::Path {
        path: path.to_path_buf(),
        source,
    })?;
    if !path.is_file() {
        return Err(PluginError::NotFound(path.clone()));
    }
    let mut plugins = PLUGINS.lock().unwrap_or_else(|p| p.into_inner());
    let r = match plugins.get(path) {
        Some(r) => r.clone(),
        None => {
            let name = format!("lpmesh-plugin-{}", plugins.len());
            let r = env.register_ep_library(name, path).map_err(Arc::new);
            plugins.insert(path.to_path_buf(), r.clone());
            r
        }
    };
    r.map_err(|source| PluginError::Load {
        path: path.clone(),
        source,
    })
}

/// Why the OpenVINO plugin gives a session no device (the next provider in the list takes over).
#[derive(Debug, thiserror::Error)]
enum OpenVinoError {
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error("OpenVINO offers no {device} device here (it offers: {offered})")]
    NoDevice { device: String, offered: String },
}

/// The devices of one provider a session is given: those the environment lists under `ep` with this
/// hardware type (looked up again for each session: `Device` is a borrowed handle).
#[derive(Clone, Copy)]
struct DeviceChoice {
    ep: &'static str,
    ty: DeviceType,
}

impl DeviceChoice {
    fn devices<'e>(&self, env: &'e Environment) -> impl Iterator<Item = Device<'e>> + 'e {
        let me = *self;
        env.devices()
            .filter(move |d| d.ep().is_ok_and(|ep| ep == me.ep) && d.hardware_device().ty() == me.ty)
    }
}

/// The OpenVINO devices to attach for `cfg` and their options, or why there are none.
fn openvino_devices(
    env: &Environment,
    cfg: &OpenVinoConfig,
    threads: usize,
) -> Result<(DeviceChoice, Vec<(String, String)>), OpenVinoError> {
    let plugin = cfg.plugin.clone().unwrap_or_else(default_openvino_plugin_path);
    register_plugin(env, &plugin)?;
    let want = match cfg.device.as_str() {
        "GPU" => DeviceType::GPU,
        "NPU" => DeviceType::NPU,
        _ => DeviceType::CPU,
    };
    // The `.AUTO` entry is OpenVINO choosing for itself; the device asked for is named.
    let choice = DeviceChoice {
        ep: OPENVINO_EP,
        ty: want,
    };
    if choice.devices(env).next().is_none() {
        let seen: Vec<String> = env
            .devices()
            .filter_map(|d| {
                let ep = d.ep().ok().filter(|ep| ep.starts_with(OPENVINO_EP))?;
                Some(format!("{ep} on {:?}", d.hardware_device().ty()))
            })
            .collect();
        return Err(OpenVinoError::NoDevice {
            device: cfg.device.clone(),
            offered: if seen.is_empty() {
                "none".into()
            } else {
                seen.join(", ")
            },
        });
    }
    // OpenVINO takes its device settings as one JSON object, per device.
    let mut settings = serde_json::Map::new();
    if let Some(p) = cfg.precision.as_deref().filter(|p| *p != "auto") {
        settings.insert("INFERENCE_PRECISION_HINT".into(), p.into());
    }
    if cfg.device == "CPU" {
        settings.insert("INFERENCE_NUM_THREADS".into(), threads.to_string().into());
    }
    for (k, v) in &cfg.settings {
        settings.insert(k.clone(), v.clone().into());
    }
    let mut options = Vec::new();
    if !settings.is_empty() {
        let load_config = serde_json::json!({ cfg.device.as_str(): settings });
        options.push((format!("{OPENVINO_EP}.load_config"), load_config.to_string()));
    }
    Ok((choice, options))
}

/// One entry of the session's provider list.
enum Planned {
    Classic(String, ExecutionProviderDispatch),
    /// A plugin's devices, with their options.
    Devices(String, DeviceChoice, Vec<(String, String)>),
}

/// A session for `model` with the providers of `plan`, in its order.
fn commit(env: &Environment, runtime: &RuntimeConfig, model: &Path, plan: &[Planned]) -> Result<Session, ort::Error> {
    let mut b = Session::builder(env)?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(ort::Error::<()>::from)?
        .with_intra_threads(runtime.threads())
        .map_err(ort::Error::<()>::from)?
        .with_intra_op_spinning(runtime.spin_wait)
        .map_err(ort::Error::<()>::from)?;
    for p in plan {
        b = match p {
            Planned::Classic(_, d) => b
                .with_execution_providers([d.clone()])
                .map_err(ort::Error::<()>::from)?,
            Planned::Devices(_, choice, options) => b
                .with_devices(choice.devices(env), Some(options))
                .map_err(ort::Error::<()>::from)?,
        };
    }
    b.commit_from_file(model)
}

/// Where to find each head in the session's outputs, per stride.
#[derive(Clone, Debug)]
struct LevelIndex {
    stride: u32,
    scores: String,
    boxes: String,
}

pub struct OnnxDetector {
    session: Session,
    spec: InputSpec,
    decoder: NanoDetDecoder,
    levels: Vec<LevelIndex>,
    nms_iou: f32,
    version: String,
    providers: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct OnnxOptions {
    pub score_threshold: f32,
    pub nms_iou: f32,
    pub fit: Fit,
}

impl OnnxDetector {
    pub fn load(model: &Path, runtime: &RuntimeConfig, opts: &OnnxOptions) -> Result<Self, ModelError> {
        let env = environment(runtime)?;
        if !model.is_file() {
            return Err(ModelError::NotFound(model.to_path_buf()));
        }
        let load_err = |source: ort::Error| ModelError::Load {
            path: model.to_path_buf(),
            source,
        };
        let mut plan = Vec::new();
        for name in &runtime.execution_providers {
            let name = name.to_ascii_lowercase();
            match provider(&name) {
                Some((p, true)) => {
                    if name == "openvino" && runtime.openvino != OpenVinoConfig::default() {
                        tracing::warn!(
                            "this ONNX Runtime has OpenVINO built in: it runs with its own defaults, and \
                             [runtime.openvino] (device, precision, settings) applies to the plugin only"
                        );
                    }
                    plan.push(Planned::Classic(name, p))
                }
                // Not built into this library: OpenVINO comes as Intel's plugin instead.
                Some((_, false)) if name == "openvino" => {
                    match openvino_devices(env, &runtime.openvino, runtime.threads()) {
                        Ok((devices, options)) => plan.push(Planned::Devices(name, devices, options)),
                        Err(why) => tracing::warn!(
                            provider = %name, reason = %why,
                            "execution provider unavailable; the next one in the list (at last the CPU) takes over"
                        ),
                    }
                }
                Some((_, false)) => {
                    tracing::warn!(provider = %name, "execution provider not available in this ONNX Runtime build; skipped")
                }
                None => tracing::warn!(provider = %name, "unknown execution provider; skipped"),
            }
        }
        // The CPU is always the last resort, with its arena on (see `provider`).
        if !plan.iter().any(|p| matches!(p, Planned::Classic(n, _) if n == "cpu")) {
            if let Some((p, _)) = provider("cpu") {
                plan.push(Planned::Classic("cpu".into(), p));
            }
        }
        let session = match commit(env, runtime, model, &plan) {
            Ok(s) => s,
            // A plugin that registered but cannot take this model or its options (an unknown device
            // setting, a device that fails to compile it): without it, rather than no detector.
            Err(e) if plan.iter().any(|p| matches!(p, Planned::Devices(..))) => {
                let dropped: Vec<String> = plan
                    .iter()
                    .filter_map(|p| match p {
                        Planned::Devices(n, ..) => Some(n.clone()),
                        Planned::Classic(..) => None,
                    })
                    .collect();
                tracing::warn!(
                    providers = ?dropped, error = %e,
                    "execution provider failed to load the model; loading it without"
                );
                plan.retain(|p| matches!(p, Planned::Classic(..)));
                commit(env, runtime, model, &plan).map_err(load_err)?
            }
            Err(e) => return Err(load_err(e)),
        };
        let chosen: Vec<String> = plan
            .iter()
            .map(|p| match p {
                Planned::Classic(n, _) | Planned::Devices(n, ..) => n.clone(),
            })
            .collect();
        let unsupported = |reason: String| ModelError::Unsupported {
            path: model.to_path_buf(),
            reason,
        };
        let spec = InputSpec {
            fit: opts.fit,
            ..InputSpec::nanodet_m_416()
        };
        let input = session.inputs().first().ok_or_else(|| unsupported("no input".into()))?;
        let in_shape: Vec<i64> = input.dtype().tensor_shape().map(|s| s.to_vec()).unwrap_or_default();
        if in_shape.len() != 4
            || in_shape[1] != 3
            || in_shape[2] != spec.height as i64
            || in_shape[3] != spec.width as i64
        {
            return Err(unsupported(format!(
                "input shape {in_shape:?}, expected [1, 3, 416, 416]"
            )));
        }
        let decoder = NanoDetDecoder::nanodet_m_416(opts.score_threshold);
        // Outputs are matched by shape, not by name: names depend on the converter.
        let mut scores = Vec::new();
        let mut boxes = Vec::new();
        for out in session.outputs() {
            let shape: Vec<i64> = out.dtype().tensor_shape().map(|s| s.to_vec()).unwrap_or_default();
            let (Some(&cells), Some(&channels)) = (shape.get(1), shape.get(2)) else {
                continue;
            };
            let g = (cells as f64).sqrt().round() as u32;
            if g == 0 || (g * g) as i64 != cells {
                continue;
            }
            let stride = spec.width / g;
            if channels == decoder.num_classes as i64 {
                scores.push((stride, out.name().to_string()));
            } else if channels == 4 * (decoder.reg_max as i64 + 1) {
                boxes.push((stride, out.name().to_string()));
            }
        }
        let mut levels = Vec::new();
        for (stride, s) in scores {
            if let Some((_, b)) = boxes.iter().find(|(st, _)| *st == stride) {
                levels.push(LevelIndex {
                    stride,
                    scores: s,
                    boxes: b.clone(),
                });
            }
        }
        levels.sort_by_key(|l| l.stride);
        if levels.len() != 3 {
            return Err(unsupported(format!(
                "found {} score/box output pairs, expected 3",
                levels.len()
            )));
        }
        let version = model
            .file_stem()
            .map_or_else(|| "unknown".into(), |s| s.to_string_lossy().into_owned());
        tracing::info!(model = %model.display(), providers = ?chosen, threads = runtime.threads(), "detector ready");
        Ok(Self {
            session,
            spec,
            decoder,
            levels,
            nms_iou: opts.nms_iou,
            version,
            providers: chosen,
        })
    }

    /// Execution providers in use, in order.
    pub fn providers(&self) -> &[String] {
        &self.providers
    }

    fn input_shape(&self) -> [usize; 4] {
        [1, 3, self.spec.height as usize, self.spec.width as usize]
    }

    fn check_input(&self, input: &[f32]) -> Result<(), DetectError> {
        if input.len() != self.spec.tensor_len() {
            return Err(DetectError::InputSize {
                got: input.len(),
                want: self.spec.tensor_len(),
            });
        }
        Ok(())
    }
}

impl Detector for OnnxDetector {
    fn input_spec(&self) -> &InputSpec {
        &self.spec
    }

    fn detect(
        &mut self,
        input: &[f32],
        frame_width: u32,
        frame_height: u32,
        out: &mut Vec<Detection>,
    ) -> Result<DetectTimings, DetectError> {
        self.check_input(input)?;
        let shape = self.input_shape();
        let t0 = Instant::now();
        let tensor = TensorRef::from_array_view((shape, input)).map_err(|e| DetectError::Inference(e.into()))?;
        let outputs = self
            .session
            .run(ort::inputs![tensor])
            .map_err(|e| DetectError::Inference(e.into()))?;
        let t1 = Instant::now();
        let mut heads = Vec::with_capacity(self.levels.len());
        for l in &self.levels {
            let scores = outputs
                .get(&l.scores)
                .ok_or_else(|| DetectError::Output(format!("missing output {}", l.scores).into()))?
                .try_extract_tensor::<f32>()
                .map_err(|e| DetectError::Output(e.into()))?
                .1;
            let boxes = outputs
                .get(&l.boxes)
                .ok_or_else(|| DetectError::Output(format!("missing output {}", l.boxes).into()))?
                .try_extract_tensor::<f32>()
                .map_err(|e| DetectError::Output(e.into()))?
                .1;
            heads.push(Level {
                stride: l.stride,
                scores,
                boxes,
            });
        }
        let start = out.len();
        let at = self.spec.placement(frame_width, frame_height);
        self.decoder
            .decode(&heads, &at, out)
            .map_err(|e| DetectError::Output(e.into()))?;
        let mut mine = out.split_off(start);
        nms(&mut mine, self.nms_iou);
        out.extend(mine);
        Ok(DetectTimings {
            infer: t1 - t0,
            postprocess: t1.elapsed(),
        })
    }

    fn run_model_only(&mut self, input: &[f32]) -> Result<(), DetectError> {
        self.check_input(input)?;
        let tensor =
            TensorRef::from_array_view((self.input_shape(), input)).map_err(|e| DetectError::Inference(e.into()))?;
        self.session
            .run(ort::inputs![tensor])
            .map_err(|e| DetectError::Inference(e.into()))?;
        Ok(())
    }

    fn model_version(&self) -> &str {
        &self.version
    }
}
