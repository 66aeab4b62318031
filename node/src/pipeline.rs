//! One camera's pipeline: capture -> prepare -> detect -> track, on two threads.
//!
//! The capture thread decodes a frame, resizes and normalises it into a pooled tensor, and runs the
//! motion gate on a thumbnail; the full-size pixels never leave that thread. The analysis thread (the
//! caller's) runs the detector and the tracker and hands each result to a sink. Decoding the next frame
//! thus overlaps inference of the current one.
//!
//! The queue between them is bounded ([`FRAME_QUEUE`]). For a file analysed as fast as possible the
//! capture thread waits for room (nothing is lost); for live sources it never waits: a frame that finds
//! the queue full is dropped and counted, and the analysis side always takes the newest queued frame,
//! because a late answer about an old frame is worth less than a fresh one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use serde::Serialize;

use crate::appearance::Appearance;
use crate::detect::{DetectError, Detection, Detector};
use crate::event::Event;
use crate::motion::Decision;
use crate::rules::{CameraRules, Observation, PixelMeasures};
use crate::track::{TrackedPerson, Tracker, TrackerConfig};

/// Frames waiting between capture and analysis.
pub const FRAME_QUEUE: usize = 2;
/// Spare tensors kept for reuse (queue + one in flight on each side).
pub const TENSOR_POOL: usize = FRAME_QUEUE + 2;

/// A frame made ready for the detector by the capture thread.
#[derive(Debug)]
pub struct PreparedFrame {
    pub seq: u64,
    pub pts: f64,
    pub width: u32,
    pub height: u32,
    pub tensor: Vec<f32>,
    pub decision: Decision,
    /// The motion gate judged the scene still (skipped or not).
    pub still: bool,
    /// False for a heartbeat sent while the camera delivers nothing (no tensor, no pixels).
    pub online: bool,
    pub pixels: Option<PixelMeasures>,
    pub decode: Duration,
    pub preprocess: Duration,
    pub measure: Duration,
}

impl PreparedFrame {
    /// A heartbeat for a camera that is not delivering frames, so time-based rules still run.
    pub fn offline(pts: f64, tensor: Vec<f32>) -> Self {
        Self {
            seq: 0,
            pts,
            width: 0,
            height: 0,
            tensor,
            decision: Decision::Skip,
            still: false,
            online: false,
            pixels: None,
            decode: Duration::ZERO,
            preprocess: Duration::ZERO,
            measure: Duration::ZERO,
        }
    }
}

/// What the sink sees for each analysed frame.
#[derive(Debug)]
pub struct FrameResult<'a> {
    pub seq: u64,
    pub pts: f64,
    pub width: u32,
    pub height: u32,
    /// False when the motion gate skipped inference: `people` are then as of the last inferred frame.
    pub inferred: bool,
    pub people: &'a [TrackedPerson],
    /// Every detection of the last inferred frame, confirmed as a person or not (evidence hides
    /// every head it can find, not only tracked people's).
    pub detections: &'a [crate::detect::Detection],
    /// Tracks that ended with this frame.
    pub ended: &'a [TrackedPerson],
    /// Loss-prevention events this frame caused (empty without rules).
    pub events: &'a [Event],
    pub online: bool,
    /// Time the detector took on this frame (zero when it did not run).
    pub infer: Duration,
    /// This run's counters so far, for the node's metrics.
    pub counts: FrameCounts,
}

/// A run's frame counters as they stand (cheap to copy into every result).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameCounts {
    pub frames: u64,
    pub inferred: u64,
    pub skipped_by_motion: u64,
    /// Frames the analysis side found stale and dropped (live sources).
    pub dropped: u64,
    /// Frames on which the camera's frame size changed (its tracks ended there).
    pub resized: u64,
}

/// Counters and time per stage, summed over a run.
#[derive(Clone, Debug, Default)]
pub struct PipelineStats {
    pub frames: u64,
    pub inferred: u64,
    pub skipped_by_motion: u64,
    /// Frames the motion gate judged still; equals `skipped_by_motion` when the gate is on.
    pub still: u64,
    pub dropped: u64,
    /// Frames on which the camera's frame size changed (its tracks ended there).
    pub resized: u64,
    pub ids_issued: u64,
    pub decode: Duration,
    pub preprocess: Duration,
    pub infer: Duration,
    pub postprocess: Duration,
    pub track: Duration,
    pub measure: Duration,
    pub rules: Duration,
    pub wall: Duration,
    pub events: u64,
    pub offline_heartbeats: u64,
}

/// Mean milliseconds per frame of each stage.
#[derive(Clone, Debug, Serialize)]
pub struct StagesMs {
    pub decode: f64,
    pub preprocess: f64,
    pub infer: f64,
    pub postprocess: f64,
    pub track: f64,
    /// Pixel measures for the rules (capture thread).
    pub measure: f64,
    pub rules: f64,
}

impl PipelineStats {
    pub fn fps(&self) -> f64 {
        if self.wall.is_zero() {
            0.0
        } else {
            self.frames as f64 / self.wall.as_secs_f64()
        }
    }

    pub fn stages_ms(&self) -> StagesMs {
        let per = |d: Duration, n: u64| {
            if n == 0 {
                0.0
            } else {
                d.as_secs_f64() * 1e3 / n as f64
            }
        };
        StagesMs {
            decode: per(self.decode, self.frames),
            preprocess: per(self.preprocess, self.frames),
            infer: per(self.infer, self.inferred),
            postprocess: per(self.postprocess, self.inferred),
            track: per(self.track, self.inferred),
            measure: per(self.measure, self.frames),
            rules: per(self.rules, self.frames),
        }
    }
}

/// Detection plus tracking for one camera. Pure apart from the detector.
pub struct Analyzer {
    detector: Box<dyn Detector>,
    tracker: Tracker,
    dets: Vec<Detection>,
    /// What each of `dets` looks like, for the tracker (kept to reuse the allocation).
    looks: Vec<Option<Appearance>>,
    rules: Option<CameraRules>,
    /// Wall-clock time (Unix ms) of stream time 0.
    clock_start_ms: i64,
    events: Vec<Event>,
    stats: PipelineStats,
}

impl Analyzer {
    pub fn new(detector: Box<dyn Detector>, tracker: TrackerConfig) -> Self {
        Self {
            detector,
            tracker: Tracker::new(tracker),
            dets: Vec::with_capacity(64),
            looks: Vec::with_capacity(64),
            rules: None,
            clock_start_ms: 0,
            events: Vec::new(),
            stats: PipelineStats::default(),
        }
    }

    /// Ends every open incident at stream time `pts` (end of stream, shutdown); the events closing them.
    pub fn finish(&mut self, pts: f64) -> &[Event] {
        self.events.clear();
        if let Some(rules) = self.rules.as_mut() {
            rules.finish(self.clock_start_ms + (pts * 1000.0).round() as i64, &mut self.events);
            self.stats.events += self.events.len() as u64;
        }
        &self.events
    }

    /// Adds the loss-prevention rules; stream time `pts` maps to wall time `clock_start_ms + pts`.
    pub fn with_rules(mut self, rules: CameraRules, clock_start_ms: i64) -> Self {
        self.rules = Some(rules);
        self.clock_start_ms = clock_start_ms;
        self
    }

    pub fn detector_mut(&mut self) -> &mut dyn Detector {
        self.detector.as_mut()
    }

    pub fn stats(&self) -> &PipelineStats {
        &self.stats
    }

    pub fn process(&mut self, f: &PreparedFrame) -> Result<FrameResult<'_>, DetectError> {
        if f.online {
            self.stats.frames += 1;
        } else {
            self.stats.offline_heartbeats += 1;
        }
        self.stats.decode += f.decode;
        self.stats.preprocess += f.preprocess;
        self.stats.measure += f.measure;
        self.stats.still += u64::from(f.still);
        let inferred = f.online && f.decision == Decision::Infer;
        let size = (f.width, f.height);
        // A camera reconfigured to another frame size: its tracks end now, even on a frame the motion
        // gate would skip, so that no box is ever reported in the old coordinates.
        let resized = f.online && self.tracker.frame_size().is_some_and(|s| s != size);
        let mut infer = Duration::ZERO;
        if inferred {
            self.dets.clear();
            let t = self.detector.detect(&f.tensor, f.width, f.height, &mut self.dets)?;
            let t0 = Instant::now();
            self.looks.clear();
            let cfg = self.tracker.config();
            if cfg.appearance {
                // The tracker matches and learns looks of confident detections only.
                let (spec, high) = (self.detector.input_spec(), cfg.high_score);
                self.looks.extend(self.dets.iter().map(|d| {
                    (d.score >= high)
                        .then(|| Appearance::from_tensor(&f.tensor, spec, f.width, f.height, &d.bbox))
                        .flatten()
                }));
            }
            self.tracker.update_with(&self.dets, &self.looks, Some(size), f.pts);
            self.stats.track += t0.elapsed();
            self.stats.infer += t.infer;
            infer = t.infer;
            self.stats.postprocess += t.postprocess;
            self.stats.inferred += 1;
        } else {
            if resized {
                self.tracker.update_with(&[], &[], Some(size), f.pts);
                // Nor is a detection of the old size reported with the new one.
                self.dets.clear();
            }
            if f.online {
                self.stats.skipped_by_motion += 1;
            }
        }
        if resized {
            self.stats.resized += 1;
        }
        self.stats.ids_issued = self.tracker.ids_issued();
        let ended = if inferred || resized { self.tracker.ended() } else { &[] };
        self.events.clear();
        if let Some(rules) = self.rules.as_mut() {
            let t0 = Instant::now();
            let obs = Observation {
                now_ms: self.clock_start_ms + (f.pts * 1000.0).round() as i64,
                width: f.width,
                height: f.height,
                people: if f.online { self.tracker.people() } else { &[] },
                ended,
                pixels: f.pixels.as_ref(),
                online: f.online,
            };
            rules.observe(&obs, &mut self.events);
            self.stats.rules += t0.elapsed();
            self.stats.events += self.events.len() as u64;
        }
        Ok(FrameResult {
            seq: f.seq,
            pts: f.pts,
            width: f.width,
            height: f.height,
            inferred,
            people: self.tracker.people(),
            detections: &self.dets,
            ended,
            events: &self.events,
            online: f.online,
            infer,
            counts: FrameCounts {
                frames: self.stats.frames,
                inferred: self.stats.inferred,
                skipped_by_motion: self.stats.skipped_by_motion,
                dropped: self.stats.dropped,
                resized: self.stats.resized,
            },
        })
    }

    pub fn counts(&self) -> FrameCounts {
        FrameCounts {
            frames: self.stats.frames,
            inferred: self.stats.inferred,
            skipped_by_motion: self.stats.skipped_by_motion,
            dropped: self.stats.dropped,
            resized: self.stats.resized,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Detect(#[from] DetectError),
    #[error("capture: {0}")]
    Capture(#[source] BoxError),
    #[error("capture: capture thread panicked")]
    CapturePanicked,
    #[error("output: {0}")]
    Sink(#[source] BoxError),
}

/// A capture's or a sink's own error: each caller brings its own (a camera, an output file), and the
/// pipeline only passes it on.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Options for [`run`].
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    pub max_frames: Option<u64>,
    /// Live source: drop stale frames instead of waiting for the detector.
    pub live: bool,
}

/// The producing half, run on the capture thread: fills a [`PreparedFrame`] per source frame.
pub trait Capture: Send {
    type Error: std::error::Error + Send + Sync + 'static;

    /// The next prepared frame, written into `tensor` (a pooled buffer); `Ok(None)` at the end.
    fn next(&mut self, tensor: Vec<f32>) -> Result<Option<PreparedFrame>, Self::Error>;
}

/// Runs `capture` on its own thread and `analyzer` on this one until the source ends, `max_frames`
/// frames were analysed, `stop` is set, or the sink returns `Ok(false)`.
pub fn run<C, S>(
    capture: C,
    analyzer: &mut Analyzer,
    opts: &RunOptions,
    stop: &Arc<AtomicBool>,
    mut sink: S,
) -> Result<PipelineStats, PipelineError>
where
    C: Capture,
    S: FnMut(&FrameResult<'_>) -> Result<bool, BoxError>,
{
    let started = Instant::now();
    let (tx, rx) = bounded::<PreparedFrame>(FRAME_QUEUE);
    let (pool_tx, pool_rx) = bounded::<Vec<f32>>(TENSOR_POOL);
    let start_frames = analyzer.stats.frames;
    // Set when the consumer is done, so the producer stops without touching the caller's `stop`.
    let done = AtomicBool::new(false);
    let result: Result<u64, PipelineError> = std::thread::scope(|scope| {
        let producer = scope.spawn(|| produce(capture, tx, pool_rx, pool_tx.clone(), opts, stop, &done));
        let consumed = consume(analyzer, rx, &pool_tx, opts, stop, &mut sink, start_frames);
        done.store(true, Ordering::Relaxed);
        let produced = producer.join().map_err(|_| PipelineError::CapturePanicked)?;
        let dropped = produced?;
        consumed?;
        Ok(dropped)
    });
    let dropped = result?;
    analyzer.stats.dropped += dropped;
    analyzer.stats.wall += started.elapsed();
    Ok(analyzer.stats.clone())
}

fn produce<C: Capture>(
    mut capture: C,
    tx: Sender<PreparedFrame>,
    pool_rx: Receiver<Vec<f32>>,
    pool_tx: Sender<Vec<f32>>,
    opts: &RunOptions,
    stop: &AtomicBool,
    done: &AtomicBool,
) -> Result<u64, PipelineError> {
    let mut dropped = 0;
    let mut produced = 0u64;
    while !stop.load(Ordering::Relaxed) && !done.load(Ordering::Relaxed) {
        if opts.max_frames.is_some_and(|m| produced >= m) {
            break;
        }
        let tensor = pool_rx.try_recv().unwrap_or_default();
        let Some(frame) = capture.next(tensor).map_err(|e| PipelineError::Capture(Box::new(e)))? else {
            break;
        };
        produced += 1;
        if opts.live {
            match tx.try_send(frame) {
                Ok(()) => {}
                Err(TrySendError::Full(frame)) => {
                    dropped += 1;
                    let _ = pool_tx.try_send(frame.tensor);
                }
                Err(TrySendError::Disconnected(_)) => break,
            }
        } else if tx.send(frame).is_err() {
            break;
        }
    }
    Ok(dropped)
}

fn consume<S>(
    analyzer: &mut Analyzer,
    rx: Receiver<PreparedFrame>,
    pool_tx: &Sender<Vec<f32>>,
    opts: &RunOptions,
    stop: &AtomicBool,
    sink: &mut S,
    start_frames: u64,
) -> Result<(), PipelineError>
where
    S: FnMut(&FrameResult<'_>) -> Result<bool, BoxError>,
{
    // The latest frame of any kind (an offline camera still sends heartbeats), and the size of the
    // latest real picture: an incident open at the end ends at the latest time known, so a camera
    // offline at shutdown, or never reached, still gets its end, after its start.
    let mut last: Option<(u64, f64, u32, u32, bool)> = None;
    let finish = |analyzer: &mut Analyzer, last: Option<(u64, f64, u32, u32, bool)>, sink: &mut S| {
        let Some((seq, pts, width, height, online)) = last else {
            return Ok(());
        };
        let counts = analyzer.counts();
        let events = analyzer.finish(pts);
        if events.is_empty() {
            return Ok(());
        }
        let r = FrameResult {
            seq,
            pts,
            width,
            height,
            inferred: false,
            people: &[],
            detections: &[],
            ended: &[],
            events,
            online,
            infer: Duration::ZERO,
            counts,
        };
        sink(&r).map(|_| ()).map_err(PipelineError::Sink)
    };
    loop {
        let mut frame = match rx.recv() {
            Ok(f) => f,
            Err(_) => return finish(analyzer, last, sink),
        };
        if opts.live {
            while let Ok(newer) = rx.try_recv() {
                analyzer.stats.dropped += 1;
                let _ = pool_tx.try_send(std::mem::replace(&mut frame, newer).tensor);
            }
        }
        let keep_going = {
            let result = analyzer.process(&frame)?;
            sink(&result).map_err(PipelineError::Sink)?
        };
        let (width, height) = match (frame.online, last) {
            (true, _) => (frame.width, frame.height),
            (false, Some((_, _, w, h, _))) => (w, h),
            (false, None) => (0, 0),
        };
        let pts = last.map_or(frame.pts, |(_, p, _, _, _)| p.max(frame.pts));
        last = Some((frame.seq, pts, width, height, frame.online));
        let _ = pool_tx.try_send(frame.tensor);
        let done = opts
            .max_frames
            .is_some_and(|m| analyzer.stats.frames - start_frames >= m);
        if !keep_going || done || stop.load(Ordering::Relaxed) {
            return finish(analyzer, last, sink);
        }
    }
}

/// The peak resident memory of this process so far, in MiB (Linux `VmHWM`).
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::{DetectTimings, InputSpec};
    use crate::geom::BBox;

    /// A detector that "sees" one person whose position is encoded in the first tensor value.
    struct Scripted {
        spec: InputSpec,
    }

    impl Detector for Scripted {
        fn input_spec(&self) -> &InputSpec {
            &self.spec
        }
        fn detect(
            &mut self,
            input: &[f32],
            _: u32,
            _: u32,
            out: &mut Vec<Detection>,
        ) -> Result<DetectTimings, DetectError> {
            let x = input[0];
            out.push(Detection {
                bbox: BBox::new(x, 10.0, x + 20.0, 60.0),
                score: 0.9,
                class: 0,
            });
            Ok(DetectTimings::default())
        }
        fn run_model_only(&mut self, _: &[f32]) -> Result<(), DetectError> {
            Ok(())
        }
        fn model_version(&self) -> &str {
            "scripted"
        }
    }

    struct Frames {
        n: u64,
        seq: u64,
        skip_every: Option<u64>,
        delay: Duration,
        /// From this frame on the camera delivers pictures of half the size.
        half_from: Option<u64>,
    }

    impl Capture for Frames {
        type Error = std::convert::Infallible;

        fn next(&mut self, mut tensor: Vec<f32>) -> Result<Option<PreparedFrame>, Self::Error> {
            if self.seq == self.n {
                return Ok(None);
            }
            std::thread::sleep(self.delay);
            self.seq += 1;
            tensor.clear();
            tensor.push(self.seq as f32 * 2.0);
            let skip = self.skip_every.is_some_and(|k| self.seq % k == 0);
            let k = if self.half_from.is_some_and(|h| self.seq >= h) {
                2
            } else {
                1
            };
            Ok(Some(PreparedFrame {
                seq: self.seq,
                pts: self.seq as f64 / 10.0,
                width: 640 / k,
                height: 480 / k,
                tensor,
                decision: if skip { Decision::Skip } else { Decision::Infer },
                still: skip,
                online: true,
                pixels: None,
                decode: Duration::ZERO,
                preprocess: Duration::ZERO,
                measure: Duration::ZERO,
            }))
        }
    }

    fn scripted() -> Box<dyn Detector> {
        Box::new(Scripted {
            spec: InputSpec::nanodet_m_416(),
        })
    }

    #[test]
    fn a_file_is_analysed_frame_by_frame_in_order_without_drops() {
        let mut a = Analyzer::new(
            scripted(),
            TrackerConfig {
                high_score: 0.5,
                ..TrackerConfig::default()
            },
        );
        let stop = Arc::new(AtomicBool::new(false));
        let mut seen = Vec::new();
        let stats = run(
            Frames {
                n: 50,
                seq: 0,
                skip_every: Some(5),
                delay: Duration::ZERO,
                half_from: None,
            },
            &mut a,
            &RunOptions::default(),
            &stop,
            |r| {
                seen.push((r.seq, r.inferred, r.people.iter().map(|p| p.id).collect::<Vec<_>>()));
                Ok(true)
            },
        )
        .unwrap();
        assert_eq!(
            seen.iter().map(|s| s.0).collect::<Vec<_>>(),
            (1..=50).collect::<Vec<_>>()
        );
        assert_eq!(
            (stats.frames, stats.inferred, stats.skipped_by_motion, stats.dropped),
            (50, 40, 10, 0)
        );
        // Skipped frames keep reporting the last tracks; the person keeps id 1 throughout.
        assert!(seen[10..].iter().all(|s| s.2 == vec![1]), "{seen:?}");
        assert_eq!(stats.ids_issued, 1);
    }

    #[test]
    fn a_new_frame_size_ends_the_tracks_even_on_a_frame_the_motion_gate_skips() {
        let mut a = Analyzer::new(scripted(), TrackerConfig::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut seen = Vec::new();
        let stats = run(
            Frames {
                n: 30,
                seq: 0,
                skip_every: Some(5),
                delay: Duration::ZERO,
                half_from: Some(20),
            },
            &mut a,
            &RunOptions::default(),
            &stop,
            |r| {
                let ids = |p: &[TrackedPerson]| p.iter().map(|p| p.id).collect::<Vec<_>>();
                seen.push((r.seq, r.width, ids(r.people), ids(r.ended), r.counts.resized));
                Ok(true)
            },
        )
        .unwrap();
        // Frame 20 is skipped by the gate and is the first at 320x240: track 1 ends there.
        assert_eq!(seen[19], (20, 320, vec![], vec![1], 1), "{seen:?}");
        assert!(seen[..19].iter().all(|s| s.3.is_empty() && s.4 == 0), "{seen:?}");
        assert!(
            seen[22..].iter().all(|s| s.2 == vec![2]),
            "a new track at the new size: {seen:?}"
        );
        assert_eq!((stats.resized, stats.skipped_by_motion, stats.ids_issued), (1, 6, 2));
    }

    #[test]
    fn max_frames_and_a_sink_that_stops_end_the_run() {
        let stop = Arc::new(AtomicBool::new(false));
        let mut a = Analyzer::new(scripted(), TrackerConfig::default());
        let opts = RunOptions {
            max_frames: Some(7),
            live: false,
        };
        let s = run(
            Frames {
                n: 100,
                seq: 0,
                skip_every: None,
                delay: Duration::ZERO,
                half_from: None,
            },
            &mut a,
            &opts,
            &stop,
            |_| Ok(true),
        )
        .unwrap();
        assert_eq!(s.frames, 7);
        let stop = Arc::new(AtomicBool::new(false));
        let mut a = Analyzer::new(scripted(), TrackerConfig::default());
        let s = run(
            Frames {
                n: 100,
                seq: 0,
                skip_every: None,
                delay: Duration::ZERO,
                half_from: None,
            },
            &mut a,
            &RunOptions::default(),
            &stop,
            |r| Ok(r.seq < 3),
        )
        .unwrap();
        assert_eq!(s.frames, 3);
    }

    #[test]
    fn a_slow_consumer_of_a_live_source_drops_stale_frames() {
        let stop = Arc::new(AtomicBool::new(false));
        let mut a = Analyzer::new(scripted(), TrackerConfig::default());
        let opts = RunOptions {
            max_frames: None,
            live: true,
        };
        let mut last = 0;
        let s = run(
            Frames {
                n: 60,
                seq: 0,
                skip_every: None,
                delay: Duration::from_millis(1),
                half_from: None,
            },
            &mut a,
            &opts,
            &stop,
            |r| {
                assert!(r.seq > last, "frames stay in order");
                last = r.seq;
                std::thread::sleep(Duration::from_millis(8));
                Ok(true)
            },
        )
        .unwrap();
        assert!(s.dropped > 20, "{s:?}");
        assert_eq!(
            s.frames + s.dropped,
            60,
            "every frame is either analysed or counted as dropped"
        );
    }
}
