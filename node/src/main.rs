//! The `lpmesh` command line. `anyhow` lives here only; the library has typed errors.

use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use lpmesh_node::config::{default_footage_path, default_model_path, NodeConfig};
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
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Detect and track people in a video file or camera URL; one record per tracked person per frame.
    #[cfg(feature = "vision")]
    Detect {
        /// A video file, an rtsp:// or http:// URL, or a device (/dev/video0 or 0).
        video: String,
        /// Node configuration (TOML); defaults apply without one.
        #[arg(long)]
        config: Option<PathBuf>,
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
    },
    /// Benchmarks.
    #[cfg(feature = "vision")]
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
    /// Watch people being detected and tracked live on the demo footage.
    #[cfg(feature = "vision")]
    Demo {
        /// Video to play (default: vtest.avi from the cache, installed by scripts/setup.sh).
        #[arg(long)]
        video: Option<PathBuf>,
        /// Stop after this many seconds (default: play the video once).
        #[arg(long)]
        duration: Option<f64>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Check a configuration file without opening cameras or models; exit code 0 only when valid.
    Validate { file: PathBuf },
}

#[cfg(feature = "vision")]
#[derive(Subcommand)]
enum BenchWhat {
    /// The model alone versus the whole pipeline, on the same frames.
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_level);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LPMESH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{level},ort=warn")));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        #[cfg(feature = "vision")]
        Command::Detect {
            video,
            config,
            format,
            max_frames,
            realtime,
            looping,
            output,
            model,
        } => vision::detect(
            &video,
            config.as_deref(),
            format,
            max_frames,
            realtime,
            looping,
            output.as_deref(),
            model,
        ),
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
        #[cfg(feature = "vision")]
        Command::Demo {
            video,
            duration,
            config,
        } => vision::demo(video, duration, config.as_deref()),
        Command::Validate { file } => match NodeConfig::load(&file) {
            Ok(_) => {
                println!("{}: valid", file.display());
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{e}");
                Ok(ExitCode::FAILURE)
            }
        },
    }
}

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

/// Ctrl-C (and SIGTERM) set the flag; the pipeline drains and the summary is still printed.
fn stop_flag() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    if let Err(e) = ctrlc::set_handler(move || s.store(true, Ordering::Relaxed)) {
        tracing::warn!(error = %e, "cannot install the Ctrl-C handler");
    }
    stop
}

#[cfg(feature = "vision")]
mod vision {
    use super::*;
    use lpmesh_node::bench::bench_pipeline;
    use lpmesh_node::capture::OpenCvCapture;
    use lpmesh_node::detect::onnx::{OnnxDetector, OnnxOptions};
    use lpmesh_node::detect::Detector;
    use lpmesh_node::pipeline::{peak_rss_mb, run, Analyzer, PipelineStats, RunOptions};
    use lpmesh_node::source::opencv::{OpenCvOptions, SourceKind};
    use lpmesh_node::source::FrameSource;
    use std::collections::HashSet;

    fn detector(cfg: &NodeConfig, model: &Path) -> Result<Box<dyn Detector>> {
        let opts = OnnxOptions {
            score_threshold: cfg.decode_threshold(),
            nms_iou: cfg.detector.nms_iou,
        };
        Ok(Box::new(OnnxDetector::load(model, &cfg.runtime, &opts)?))
    }

    fn summary(stats: &PipelineStats) -> String {
        format!(
            "{} frames in {:.1} s ({:.1} frames/s): {} inferred, {} skipped by the motion gate, {} dropped; {} track ids; peak memory {:.0} MB",
            stats.frames,
            stats.wall.as_secs_f64(),
            stats.fps(),
            stats.inferred,
            stats.skipped_by_motion,
            stats.dropped,
            stats.ids_issued,
            peak_rss_mb().unwrap_or(0.0)
        )
    }

    #[allow(clippy::too_many_arguments)]
    pub fn detect(
        video: &str,
        config: Option<&Path>,
        format: Format,
        max_frames: Option<u64>,
        realtime: bool,
        looping: bool,
        output: Option<&Path>,
        model: Option<PathBuf>,
    ) -> Result<ExitCode> {
        let cfg = load_config(config)?;
        let model = model_path(model, &cfg);
        let det = detector(&cfg, &model)?;
        let stop = stop_flag();
        let live = realtime || SourceKind::parse(video).is_live();
        let capture = OpenCvCapture::open(
            video,
            OpenCvOptions { realtime, looping },
            det.input_spec().clone(),
            cfg.motion.clone(),
            stop.clone(),
        )?;
        let total = capture.source().frame_count();
        let mut out: Box<dyn Write> = match output {
            Some(p) => Box::new(BufWriter::new(
                std::fs::File::create(p)
                    .with_context(|| format!("cannot create {}", p.display()))?,
            )),
            None => Box::new(BufWriter::new(std::io::stdout().lock())),
        };
        let bar = (std::io::stderr().is_terminal() && !realtime).then(|| {
            let len = max_frames.or(total).unwrap_or(0);
            let bar = indicatif::ProgressBar::new(len);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} frames  {per_sec}  eta {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar
        });
        let mut analyzer = Analyzer::new(det, cfg.tracker_config());
        let opts = RunOptions { max_frames, live };
        let stats = run(capture, &mut analyzer, &opts, &stop, |r| {
            write_frame(&mut out, format, r).map_err(|e| e.to_string())?;
            if realtime {
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
            println!(
                "whole pipeline {:7.1} frames/s   ratio {:.3}",
                r.pipeline_fps, r.ratio
            );
            println!(
                "stages (ms/frame): decode {:.2}  preprocess {:.2}  infer {:.2}  postprocess+nms {:.3}  track {:.3}",
                s.decode, s.preprocess, s.infer, s.postprocess, s.track
            );
            println!(
                "people/frame {:.2}   track ids {}   motion gate would skip {} of {} frames",
                r.mean_people_per_frame, r.track_ids, r.motion_would_skip, r.frames
            );
            println!("peak memory {:.0} MB", r.peak_rss_mb);
        }
        Ok(ExitCode::SUCCESS)
    }

    pub fn demo(
        video: Option<PathBuf>,
        duration: Option<f64>,
        config: Option<&Path>,
    ) -> Result<ExitCode> {
        let cfg = load_config(config)?;
        let model = model_path(None, &cfg);
        let video = video.unwrap_or_else(default_footage_path);
        if !video.exists() {
            bail!(
                "demo footage {} not found; run scripts/setup.sh to install it",
                video.display()
            );
        }
        let det = detector(&cfg, &model)?;
        let stop = stop_flag();
        let capture = OpenCvCapture::open(
            &video.to_string_lossy(),
            OpenCvOptions {
                realtime: true,
                looping: duration.is_some(),
            },
            det.input_spec().clone(),
            cfg.motion.clone(),
            stop.clone(),
        )?;
        println!(
            "lpmesh demo: detecting and tracking people in {} in real time (Ctrl-C to stop)",
            video.display()
        );
        let mut analyzer = Analyzer::new(det, cfg.tracker_config());
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
            for p in r
                .people
                .iter()
                .filter(|p| p.visible && !announced.contains(&p.id))
            {
                let (x, y) = p.bbox.bottom_center();
                lines.push(format!(
                    "[{at}] person #{} appeared at ({:.2}, {:.2})",
                    p.id,
                    x / r.width as f32,
                    y / r.height as f32
                ));
            }
            announced.extend(r.people.iter().filter(|p| p.visible).map(|p| p.id));
            for p in r.ended {
                lines.push(format!(
                    "[{at}] person #{} left after {:.1} s in view",
                    p.id,
                    p.last_seen - p.first_seen
                ));
            }
            if r.pts >= next_status {
                next_status = r.pts + 5.0;
                let ids: Vec<String> = r
                    .people
                    .iter()
                    .filter(|p| p.visible)
                    .map(|p| format!("#{}", p.id))
                    .collect();
                lines.push(format!(
                    "[{at}] in view: {} people {}",
                    ids.len(),
                    ids.join(" ")
                ));
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

    fn clock(secs: f64) -> String {
        let s = secs.max(0.0);
        format!("{:02}:{:04.1}", (s / 60.0) as u64, s % 60.0)
    }
}
