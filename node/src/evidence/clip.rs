//! Evidence made from a camera's ring: every person's head pixelated, the subject's box drawn, the
//! still as JPEG and the clip as H.264 in MP4 (what tablets' browsers play), then sealed into the
//! store. Runs on a worker thread per camera, never on the capture or analysis threads.

use std::io::{Read, Seek};
use std::os::fd::FromRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use opencv::core::{Mat, MatTraitConst, MatTraitConstManual, Rect, Scalar, Size, Vector, VectorToVec};
use opencv::{imgcodecs, imgproc};

use super::ring::{Ring, Windowed};
use super::store::{EvidenceStore, Meta};
use super::{EvidenceConfig, EvidenceStats};
use crate::event::EvidenceId;

#[derive(Debug, thiserror::Error)]
pub enum ClipError {
    #[error("OpenCV: {0}")]
    OpenCv(#[from] opencv::Error),
    #[error("no frame of the moment is kept{0}")]
    NoFrame(&'static str),
    #[error("the clip encoder: {0}")]
    Encoder(String),
    #[error("the clip encoder: {what}: {source}")]
    EncoderIo {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// JPEG quality of ring frames and stills.
const JPEG_QUALITY: i32 = 82;
/// Boxes farther than this in time from a frame are not its people.
pub const NEAR_SECS: f64 = 0.6;
/// The part of a person's box hidden as the head: the top quarter (people bend, boxes are loose),
/// widened a little on each side.
const HEAD_FRACTION: f32 = 0.25;
const HEAD_MARGIN: f32 = 0.1;
/// Blocks across a hidden head: too coarse to recognise anyone, fine enough to see where they look.
const HEAD_BLOCKS: i32 = 5;

/// A frame (BGR, `width` x `height`) at most `max_width` wide, as JPEG, for the ring.
pub fn ring_jpeg(bgr: &[u8], width: u32, height: u32, max_width: u32) -> Result<(Vec<u8>, u32, u32), ClipError> {
    let rows = height as i32;
    let flat = Mat::new_rows_cols_with_data(rows, width as i32 * 3, bgr)?;
    let img = flat.reshape(3, rows)?;
    let (w, h) = if width > max_width {
        (
            max_width,
            ((height as u64 * max_width as u64) / width as u64).max(1) as u32,
        )
    } else {
        (width, height)
    };
    if (w, h) == (width, height) {
        return Ok((jpeg(&img)?, w, h));
    }
    let mut small = Mat::default();
    imgproc::resize(
        &img,
        &mut small,
        Size::new(w as i32, h as i32),
        0.0,
        0.0,
        imgproc::INTER_AREA,
    )?;
    Ok((jpeg(&small)?, w, h))
}

fn jpeg(img: &impl opencv::core::ToInputArray) -> Result<Vec<u8>, ClipError> {
    let mut out = Vector::<u8>::new();
    let params = Vector::from_slice(&[imgcodecs::IMWRITE_JPEG_QUALITY, JPEG_QUALITY]);
    imgcodecs::imencode(".jpg", img, &mut out, &params)?;
    Ok(out.to_vec())
}

/// Pixelates the heads of `people` (boxes as fractions x1, y1, x2, y2) in `img`.
fn hide_heads(img: &mut Mat, people: &[(u64, [f32; 4])]) -> Result<(), ClipError> {
    let (w, h) = (img.cols(), img.rows());
    for (_, b) in people {
        let bw = b[2] - b[0];
        let x1 = ((b[0] - HEAD_MARGIN * bw) * w as f32).floor().max(0.0) as i32;
        let x2 = ((b[2] + HEAD_MARGIN * bw) * w as f32).ceil().min(w as f32) as i32;
        let y1 = (b[1] * h as f32).floor().max(0.0) as i32;
        let y2 = ((b[1] + HEAD_FRACTION * (b[3] - b[1])) * h as f32).ceil().min(h as f32) as i32;
        if x2 - x1 < 2 || y2 - y1 < 2 {
            continue;
        }
        let rect = Rect::new(x1, y1, x2 - x1, y2 - y1);
        let blocks = Size::new(HEAD_BLOCKS.min(rect.width), HEAD_BLOCKS.min(rect.height).max(1));
        let mut tiny = Mat::default();
        let mut back = Mat::default();
        {
            let roi = Mat::roi(img, rect)?;
            imgproc::resize(&roi, &mut tiny, blocks, 0.0, 0.0, imgproc::INTER_AREA)?;
        }
        imgproc::resize(&tiny, &mut back, rect.size(), 0.0, 0.0, imgproc::INTER_NEAREST)?;
        let mut roi = Mat::roi_mut(img, rect)?;
        back.copy_to(&mut roi)?;
    }
    Ok(())
}

/// Pixelates the heads of `people` in a BGR image held as bytes (the zone editor's still).
pub fn hide_heads_bgr(bgr: &mut [u8], width: u32, height: u32, people: &[(u64, [f32; 4])]) -> Result<(), ClipError> {
    if people.is_empty() {
        return Ok(());
    }
    let rows = height as i32;
    let mut img = Mat::new_rows_cols_with_data(rows, width as i32 * 3, bgr)?
        .reshape(3, rows)?
        .try_clone()?;
    hide_heads(&mut img, people)?;
    let out = img.data_bytes()?;
    if out.len() == bgr.len() {
        bgr.copy_from_slice(out);
    }
    Ok(())
}

fn draw_box(img: &mut Mat, b: [f32; 4]) -> Result<(), ClipError> {
    let (w, h) = (img.cols() as f32, img.rows() as f32);
    let rect = Rect::new(
        (b[0] * w) as i32,
        (b[1] * h) as i32,
        ((b[2] - b[0]) * w).max(1.0) as i32,
        ((b[3] - b[1]) * h).max(1.0) as i32,
    );
    let thick = ((w / 320.0).round() as i32).max(2);
    imgproc::rectangle(img, rect, Scalar::new(0.0, 0.0, 255.0, 0.0), thick, imgproc::LINE_8, 0)?;
    Ok(())
}

/// What [`build`] made.
pub struct Built {
    pub still: Vec<u8>,
    pub clip: Option<Vec<u8>>,
    /// Why there is no clip, when one was due.
    pub clip_error: Option<ClipError>,
    /// The most memory its encoder used, KB.
    pub encoder_kb: u64,
    pub at_ms: i64,
    pub clip_from_ms: i64,
    pub clip_to_ms: i64,
}

/// Whom the evidence is about: their track, or failing that their box at the moment.
#[derive(Clone, Copy, Debug, Default)]
pub struct Subject {
    pub track: Option<u64>,
    /// x1, y1, x2, y2 as fractions.
    pub bbox: Option<[f32; 4]>,
}

/// The still (the frame nearest `moment`) and the clip from `frames`. With `hide_faces`, a frame
/// with no analysis near it in time is left out: nobody's face is shown unhidden.
pub fn build(
    frames: &[Windowed],
    moment: f64,
    subject: Subject,
    hide_faces: bool,
    fps: f64,
    ffmpeg: &str,
) -> Result<Built, ClipError> {
    let usable: Vec<&Windowed> = frames.iter().filter(|(_, p)| !hide_faces || p.is_some()).collect();
    let still_at = usable
        .iter()
        .enumerate()
        .min_by(|a, b| (a.1 .0.pts - moment).abs().total_cmp(&(b.1 .0.pts - moment).abs()))
        .map(|(i, _)| i)
        .ok_or(ClipError::NoFrame(if frames.is_empty() {
            ""
        } else {
            " with its people analysed"
        }))?;
    let first = usable
        .first()
        .map(|(f, _)| (f.width as i32, f.height as i32))
        .unwrap_or_default();
    // Frames go to the encoder one by one as they are drawn: a clip is never held decoded whole.
    let mut encoder = match usable.len() >= 2 {
        true => Some(Encoder::start(Size::new(first.0, first.1), fps, ffmpeg, usable.len())),
        false => None,
    };
    let mut still = None;
    let mut shown: Vec<i64> = Vec::with_capacity(usable.len());
    for (i, (f, people)) in usable.iter().enumerate() {
        let mut img = imgcodecs::imdecode(&Vector::<u8>::from_slice(&f.jpeg), imgcodecs::IMREAD_COLOR)?;
        if img.empty() {
            continue;
        }
        let people = people.as_deref().unwrap_or_default();
        if hide_faces {
            hide_heads(&mut img, people)?;
        }
        let by_track = subject
            .track
            .and_then(|t| people.iter().find(|(id, _)| *id == t).map(|(_, b)| *b));
        if let Some(b) = by_track.or(if i == still_at { subject.bbox } else { None }) {
            draw_box(&mut img, b)?;
        }
        if i == still_at {
            still = Some((jpeg(&img)?, f.at_ms));
        }
        shown.push(f.at_ms);
        // A clip that cannot be made leaves the still: the moment is what a guard needs first.
        if let Some(Ok(e)) = &mut encoder {
            if let Err(err) = e.push(&img) {
                encoder = Some(Err(err));
            }
        }
    }
    let (still, at_ms) = still.ok_or(ClipError::NoFrame(" that decodes"))?;
    let (clip, clip_error, encoder_kb) = match encoder.map(|e| e.and_then(Encoder::finish)) {
        Some(Ok((c, kb))) => (Some(c), None, kb),
        Some(Err(e)) => (None, Some(e), 0),
        None => (None, None, 0),
    };
    Ok(Built {
        still,
        clip,
        clip_error,
        encoder_kb,
        at_ms,
        clip_from_ms: shown.first().copied().unwrap_or(at_ms),
        clip_to_ms: shown.last().copied().unwrap_or(at_ms),
    })
}

/// The longest a clip may take to encode before its encoder is stopped: half a minute, and a fifth of
/// a second more per frame (an edge box's CPU, shared with its cameras).
fn encode_timeout(frames: usize) -> Duration {
    Duration::from_secs(30) + Duration::from_millis(200) * frames as u32
}

/// H.264 in MP4 (yuv420p, the moov box first so a browser starts playing before the end), encoded by
/// FFmpeg's libx264 in a child process, frames in through a pipe, the file out into a memory-only
/// file: the plain clip never touches a disk, and the encoder's memory (tens of MB) is the child's
/// and is gone when it exits. OpenCV's own writer (4.6) cannot be told x264's settings: at its
/// defaults it held about 130 MB more in the node and spent more CPU.
pub struct Encoder {
    child: Arc<std::sync::Mutex<std::process::Child>>,
    stdin: Option<std::process::ChildStdin>,
    mem: std::fs::File,
    size: Size,
    done: Arc<std::sync::atomic::AtomicBool>,
    watchdog: Option<std::thread::JoinHandle<()>>,
    stderr: Option<std::thread::JoinHandle<Vec<u8>>>,
}

fn enc(what: impl Into<String>, source: std::io::Error) -> ClipError {
    ClipError::EncoderIo {
        what: what.into(),
        source,
    }
}

impl Encoder {
    fn start(size: Size, fps: f64, ffmpeg: &str, frames: usize) -> Result<Encoder, ClipError> {
        let timeout = encode_timeout(frames);
        // SAFETY: memfd_create takes a NUL-terminated name and flags; the descriptor it returns is
        // ours alone and is owned by the File from here on.
        let fd = unsafe { libc::memfd_create(c"lpmesh-clip".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(enc("memfd_create", std::io::Error::last_os_error()));
        }
        let mem = unsafe { std::fs::File::from_raw_fd(fd) };
        let out = mem.try_clone().map_err(|e| enc("memfd", e))?;
        let mut child = std::process::Command::new(ffmpeg)
            .args([
                "-hide_banner",
                "-loglevel",
                "error",
                "-f",
                "rawvideo",
                "-pix_fmt",
                "bgr24",
                "-s",
            ])
            .arg(format!("{}x{}", size.width, size.height))
            .arg("-r")
            .arg(format!("{fps}"))
            .args([
                "-i",
                "pipe:0",
                "-an",
                "-c:v",
                "libx264",
                "-preset",
                "veryfast",
                "-tune",
                "zerolatency",
            ])
            .args([
                "-threads",
                "1",
                "-pix_fmt",
                "yuv420p",
                "-crf",
                "26",
                "-movflags",
                "+faststart",
            ])
            // The child's standard output is the memory file; opened again by path it is seekable,
            // which the moov-first rewrite needs.
            .args(["-f", "mp4", "-y", "/proc/self/fd/1"])
            .stdin(std::process::Stdio::piped())
            .stdout(out)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| enc(format!("{ffmpeg} (apt install ffmpeg)"), e))?;
        let stdin = child.stdin.take();
        // What it says is read as it says it (a full pipe would stall it), the first few KB kept.
        let stderr = child.stderr.take().map(|mut e| {
            std::thread::spawn(move || {
                let mut kept = Vec::new();
                let _ = std::io::Read::read_to_end(&mut std::io::Read::take(&mut e, 4096), &mut kept);
                let _ = std::io::copy(&mut e, &mut std::io::sink());
                kept
            })
        });
        let child = Arc::new(std::sync::Mutex::new(child));
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // A stuck encoder is stopped, whatever the thread feeding it is blocked on.
        let (c, d) = (child.clone(), done.clone());
        let watchdog = std::thread::spawn(move || {
            let t0 = std::time::Instant::now();
            while !d.load(Ordering::Relaxed) {
                if t0.elapsed() > timeout {
                    let _ = c.lock().unwrap_or_else(|p| p.into_inner()).kill();
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Ok(Encoder {
            child,
            stdin,
            mem,
            size,
            done,
            watchdog: Some(watchdog),
            stderr,
        })
    }

    fn push(&mut self, img: &Mat) -> Result<(), ClipError> {
        if img.size()? != self.size || !img.is_continuous() {
            return Ok(());
        }
        let stdin = self
            .stdin
            .as_mut()
            .ok_or(ClipError::Encoder("no pipe to ffmpeg".into()))?;
        std::io::Write::write_all(stdin, img.data_bytes()?).map_err(|e| enc("feeding ffmpeg", e))
    }

    /// The clip, and the most memory the encoder used (KB, its own after `exec`: what a fork
    /// shared with the node does not count).
    fn finish(mut self) -> Result<(Vec<u8>, u64), ClipError> {
        drop(self.stdin.take());
        let pid = self.child.lock().unwrap_or_else(|p| p.into_inner()).id();
        let mut peak_kb = 0;
        let status = loop {
            peak_kb = peak_kb.max(high_water_kb(pid).unwrap_or(0));
            let polled = self.child.lock().unwrap_or_else(|p| p.into_inner()).try_wait();
            match polled {
                Ok(Some(st)) => break st,
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => break Err(enc("waiting for ffmpeg", e))?,
            }
        };
        self.done.store(true, Ordering::Relaxed);
        if let Some(w) = self.watchdog.take() {
            let _ = w.join();
        }
        if !status.success() {
            let err = self.stderr.take().and_then(|h| h.join().ok()).unwrap_or_default();
            return Err(ClipError::Encoder(format!(
                "ffmpeg {status}: {}",
                String::from_utf8_lossy(&err).trim()
            )));
        }
        let mut out = Vec::new();
        self.mem
            .rewind()
            .and_then(|_| self.mem.read_to_end(&mut out))
            .map_err(|e| enc("reading the clip", e))?;
        if out.len() < 8 || &out[4..8] != b"ftyp" {
            return Err(ClipError::Encoder(format!("{} bytes that are not MP4", out.len())));
        }
        Ok((out, peak_kb))
    }
}

/// A running process's peak resident memory (`VmHWM`), KB.
fn high_water_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

impl Drop for Encoder {
    /// An encoder given up on (its clip failed halfway) is stopped and reaped, not left running.
    fn drop(&mut self) {
        if !self.done.swap(true, Ordering::Relaxed) {
            drop(self.stdin.take());
            let mut c = self.child.lock().unwrap_or_else(|p| p.into_inner());
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One incident's evidence to make.
#[derive(Clone, Debug)]
pub struct Job {
    pub id: EvidenceId,
    pub incident: String,
    pub camera: String,
    /// The moment in stream time, and in wall time.
    pub pts: f64,
    pub at_ms: i64,
    pub subject: Subject,
}

/// Jobs queued per camera; one more is refused and counted (a burst of incidents in one second).
pub const JOB_QUEUE: usize = 8;

/// A camera's evidence worker: makes each job's evidence once the clip's end is in the ring.
pub struct Worker {
    tx: Option<crossbeam_channel::Sender<Job>>,
    ring: Arc<Ring>,
    handle: Option<std::thread::JoinHandle<()>>,
    stats: Arc<EvidenceStats>,
}

impl Worker {
    pub fn spawn(cfg: EvidenceConfig, store: Arc<EvidenceStore>, ring: Arc<Ring>, stats: Arc<EvidenceStats>) -> Worker {
        let (tx, rx) = crossbeam_channel::bounded::<Job>(JOB_QUEUE);
        let (r, s) = (ring.clone(), stats.clone());
        let handle = std::thread::Builder::new()
            .name("evidence".into())
            .spawn(move || {
                for job in rx {
                    r.wait_for(job.pts + cfg.after_secs, Duration::from_secs_f64(cfg.after_secs + 10.0));
                    let frames = r.window(job.pts - cfg.before_secs, job.pts + cfg.after_secs, NEAR_SECS);
                    let t0 = std::time::Instant::now();
                    match build(&frames, job.pts, job.subject, cfg.blur_faces, cfg.fps, &cfg.ffmpeg) {
                        Ok(b) => {
                            s.encoder_peak_kb.fetch_max(b.encoder_kb, Ordering::Relaxed);
                            if let Some(e) = &b.clip_error {
                                s.failed.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(incident = %job.incident, error = %e, "the still is kept, the clip could not be made");
                            }
                            let meta = Meta {
                                id: job.id.clone(),
                                incident: job.incident.clone(),
                                camera: job.camera.clone(),
                                at_ms: b.at_ms,
                                created_ms: chrono::Utc::now().timestamp_millis(),
                                still_bytes: 0,
                                clip_bytes: 0,
                                clip_from_ms: b.clip_from_ms,
                                clip_to_ms: b.clip_to_ms,
                                faces_hidden: cfg.blur_faces,
                            };
                            match store.put(&meta, &b.still, b.clip.as_deref(), meta.created_ms) {
                                Ok(_) => {
                                    s.stills.fetch_add(1, Ordering::Relaxed);
                                    s.clips.fetch_add(u64::from(b.clip.is_some()), Ordering::Relaxed);
                                    tracing::info!(incident = %job.incident, evidence = %job.id,
                                        still_kb = b.still.len() / 1024, clip_kb = b.clip.as_ref().map_or(0, |c| c.len() / 1024),
                                        ms = t0.elapsed().as_millis() as u64, "evidence kept");
                                }
                                Err(e) => {
                                    s.failed.fetch_add(1, Ordering::Relaxed);
                                    tracing::error!(incident = %job.incident, error = %e, "cannot keep evidence");
                                }
                            }
                        }
                        Err(e) => {
                            s.failed.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(incident = %job.incident, error = %e, "no evidence for this incident");
                        }
                    }
                }
            })
            .ok();
        Worker {
            tx: Some(tx),
            ring,
            handle,
            stats,
        }
    }

    /// Queues a job; `false` (and counted) when the worker is too far behind to take it.
    pub fn offer(&self, job: Job) -> bool {
        let ok = self.handle.is_some() && self.tx.as_ref().is_some_and(|tx| tx.try_send(job).is_ok());
        if !ok {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    /// The camera stopped: what is queued is made from what the ring holds, then the worker ends.
    pub fn finish(mut self) {
        self.ring.close();
        self.tx = None;
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.ring.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::ring::RingFrame;
    use opencv::videoio::{self, VideoCaptureTrait, VideoCaptureTraitConst};

    /// A noisy frame (every pixel differs from its neighbours), so hidden regions show as blocks.
    fn noise(w: u32, h: u32, seed: u32) -> Vec<u8> {
        let mut x = seed.wrapping_mul(2_654_435_761).max(1);
        (0..w * h * 3)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x >> 24) as u8
            })
            .collect()
    }

    fn distinct_colours(img: &Mat, r: Rect) -> usize {
        let mut seen = std::collections::HashSet::new();
        for y in r.y..r.y + r.height {
            for x in r.x..r.x + r.width {
                let p = *img.at_2d::<opencv::core::Vec3b>(y, x).unwrap();
                seen.insert((p[0], p[1], p[2]));
            }
        }
        seen.len()
    }

    #[test]
    fn heads_are_pixelated_the_subject_boxed_and_the_clip_plays_back() {
        let (w, h) = (800u32, 600u32);
        let person = [0.4f32, 0.2, 0.6, 0.9];
        let frames: Vec<_> = (0..12)
            .map(|i| {
                let (jpeg, fw, fh) = ring_jpeg(&noise(w, h, i + 1), w, h, 640).unwrap();
                assert_eq!((fw, fh), (640, 480));
                let f = RingFrame {
                    pts: i as f64 * 0.2,
                    at_ms: 1000 + i as i64 * 200,
                    width: fw,
                    height: fh,
                    jpeg: jpeg.into(),
                };
                // The first two frames had no analysis near them.
                (f, (i >= 2).then(|| vec![(7u64, person)]))
            })
            .collect();
        let b = build(
            &frames,
            1.0,
            Subject {
                track: Some(7),
                bbox: None,
            },
            true,
            5.0,
            "ffmpeg",
        )
        .unwrap();
        assert_eq!(b.at_ms, 2000, "the still is the frame of the moment");
        assert_eq!(
            (b.clip_from_ms, b.clip_to_ms),
            (1400, 3200),
            "unanalysed frames left out"
        );
        let still = imgcodecs::imdecode(&Vector::<u8>::from_slice(&b.still), imgcodecs::IMREAD_COLOR).unwrap();
        assert_eq!((still.cols(), still.rows()), (640, 480));
        // The head: at most 25 blocks (plus JPEG's ringing at their edges); beside it, noise.
        let head = Rect::new(262, 100, 112, 80);
        let beside = Rect::new(40, 100, 112, 80);
        let (hidden, open) = (distinct_colours(&still, head), distinct_colours(&still, beside));
        assert!(hidden * 10 < open, "head {hidden} colours, beside {open}");
        // The subject's box is drawn in red on its edge.
        let edge = *still.at_2d::<opencv::core::Vec3b>(300, 256).unwrap();
        assert!(edge[2] > 180 && edge[0] < 90 && edge[1] < 90, "{edge:?}");
        // The clip is MP4 and plays back: every analysed frame, at the clip's size.
        let clip = b.clip.unwrap();
        assert_eq!(&clip[4..8], b"ftyp");
        // The index first: a browser plays it while the rest arrives.
        let at = |box_name: &[u8]| clip.windows(4).position(|w| w == box_name).unwrap();
        assert!(at(b"moov") < at(b"mdat"));
        let path = std::env::temp_dir().join(format!("lpmesh-clip-test-{}.mp4", std::process::id()));
        std::fs::write(&path, &clip).unwrap();
        let mut cap = videoio::VideoCapture::from_file(path.to_str().unwrap(), videoio::CAP_FFMPEG).unwrap();
        let mut n = 0;
        let mut m = Mat::default();
        while cap.read(&mut m).unwrap() && !m.empty() {
            assert_eq!((m.cols(), m.rows()), (640, 480));
            n += 1;
        }
        let _ = std::fs::remove_file(&path);
        assert_eq!(n, 10);
        // Kept by the store, the files on disk are neither an image nor a video to OpenCV.
        let dir = std::env::temp_dir().join(format!("lpmesh-clip-store-{}", std::process::id()));
        let store = crate::evidence::store::EvidenceStore::open(&dir, 1.0, 100).unwrap();
        let id = crate::event::EvidenceId::random();
        let meta = crate::evidence::store::Meta {
            id: id.clone(),
            incident: "n/cam/1-0".into(),
            camera: "cam".into(),
            at_ms: b.at_ms,
            created_ms: 0,
            still_bytes: 0,
            clip_bytes: 0,
            clip_from_ms: b.clip_from_ms,
            clip_to_ms: b.clip_to_ms,
            faces_hidden: true,
        };
        store.put(&meta, &b.still, Some(&clip), 0).unwrap();
        let on_disk = std::fs::read(dir.join("evidence").join(format!("{id}.still"))).unwrap();
        let img = imgcodecs::imdecode(&Vector::<u8>::from_slice(&on_disk), imgcodecs::IMREAD_COLOR);
        assert!(img.map_or(true, |m| m.empty()), "the sealed still decodes as an image");
        let sealed_clip = dir.join("evidence").join(format!("{id}.clip"));
        let mut cap = videoio::VideoCapture::from_file(sealed_clip.to_str().unwrap(), videoio::CAP_FFMPEG).unwrap();
        // FFmpeg's probing may take random bytes for some headerless format and show noise; what
        // must not happen is seeing the clip: its frames, at its size.
        let mut m = Mat::default();
        let frame = cap.is_opened().unwrap() && cap.read(&mut m).unwrap_or(false) && !m.empty();
        assert!(
            !(frame && (m.cols(), m.rows()) == (640, 480)),
            "the sealed clip plays as the clip"
        );
        let _ = std::fs::remove_dir_all(&dir);
        // The zone editor's still, held as bytes: the same blocks over the head.
        let (sw, sh) = (640u32, 480u32);
        let mut raw = noise(sw, sh, 99);
        let before = raw.clone();
        hide_heads_bgr(&mut raw, sw, sh, &[(1, person)]).unwrap();
        let at = |x: u32, y: u32| ((y * sw + x) * 3) as usize;
        assert_ne!(raw, before);
        assert_eq!(
            raw[at(40, 300)..at(40, 300) + 3],
            before[at(40, 300)..at(40, 300) + 3],
            "beside: untouched"
        );
        let head_px: std::collections::HashSet<&[u8]> = (100..180)
            .flat_map(|y| (262..374).map(move |x| (x, y)))
            .map(|(x, y)| &raw[at(x, y)..at(x, y) + 3])
            .collect();
        assert!(head_px.len() <= 25, "{} colours over the head", head_px.len());
        // Without hidden faces every frame is used; with no frame at all, nothing is made.
        let all = build(&frames, 1.0, Subject::default(), false, 5.0, "ffmpeg").unwrap();
        assert_eq!(all.clip_from_ms, 1000);
        assert!(matches!(
            build(&frames[..2], 0.0, Subject::default(), true, 5.0, "ffmpeg"),
            Err(ClipError::NoFrame(_))
        ));
        // No encoder on this node: the still is kept, and the clip's absence says why.
        let none = build(&frames, 1.0, Subject::default(), true, 5.0, "/nonexistent/ffmpeg").unwrap();
        assert!(none.clip.is_none() && none.still.starts_with(&[0xFF, 0xD8]));
        let why = none.clip_error.unwrap().to_string();
        assert!(why.contains("apt install ffmpeg"), "{why}");
    }
}
