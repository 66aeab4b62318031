//! The camera commands (`detect`, `bench pipeline`, `watch`).

use crate::*;
use anyhow::bail;
use lpmesh_node::config::default_footage_path;
use std::io::{BufWriter, IsTerminal};

fn load_config(path: Option<&Path>) -> Result<NodeConfig> {
    match path {
        Some(p) => Ok(NodeConfig::load(p)?),
        None => Ok(NodeConfig::default()),
    }
}

fn model_path(cli: Option<PathBuf>, cfg: &NodeConfig) -> PathBuf {
    cli.unwrap_or_else(|| lpmesh_node::camera::supervisor::model_path(cfg))
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
        write_frame(&mut out, a.format, r)?;
        if a.realtime || !r.events.is_empty() && live {
            // A reader following live output must not wait for a buffer to fill.
            out.flush()?;
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
            writeln!(stdout, "{l}")?;
        }
        stdout.flush()?;
        Ok(duration.is_none_or(|d| r.pts < d))
    })?;
    println!("{}", summary(&stats));
    Ok(ExitCode::SUCCESS)
}

fn clock(secs: f64) -> String {
    let s = secs.max(0.0);
    format!("{:02}:{:04.1}", (s / 60.0) as u64, s % 60.0)
}
