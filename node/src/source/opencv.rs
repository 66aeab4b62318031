//! OpenCV video sources: files (optionally looped and paced in real time), RTSP/HTTP streams and local
//! devices. Live sources reconnect with backoff and jitter when the stream fails; files do not (a file
//! that cannot be read is an error the user must see at once).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use opencv::core::{Mat, MatTraitConst, MatTraitConstManual, CV_8UC1, CV_8UC3, CV_8UC4};
use opencv::imgproc;
use opencv::videoio::{self, VideoCapture, VideoCaptureTrait, VideoCaptureTraitConst};

use crate::backoff::Backoff;

/// How long opening a network camera, and waiting for its next packet, may take.
const OPEN_TIMEOUT_MS: i32 = 5_000;
const READ_TIMEOUT_MS: i32 = 3_000;
use super::{BoxError, Frame, FrameSource, ReadError, SourceError};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceKind {
    File(std::path::PathBuf),
    Url(String),
    Device(i32),
}

impl SourceKind {
    /// `rtsp://`, `http(s)://` -> stream; a number or `/dev/videoN` -> device; anything else -> file.
    pub fn parse(s: &str) -> Self {
        let lower = s.to_ascii_lowercase();
        if [
            "rtsp://", "rtsps://", "http://", "https://", "rtmp://", "udp://", "tcp://",
        ]
        .iter()
        .any(|p| lower.starts_with(p))
        {
            return Self::Url(s.to_string());
        }
        if let Ok(n) = s.parse::<i32>() {
            return Self::Device(n);
        }
        if let Some(n) = s.strip_prefix("/dev/video").and_then(|n| n.parse::<i32>().ok()) {
            return Self::Device(n);
        }
        Self::File(s.into())
    }

    pub fn is_live(&self) -> bool {
        !matches!(self, Self::File(_))
    }

    /// For logs: a URL's user-info (`user:password@`) is replaced by `***@`.
    pub fn display_name(&self) -> String {
        match self {
            Self::File(p) => p.display().to_string(),
            Self::Device(n) => format!("/dev/video{n}"),
            Self::Url(u) => redact_url(u),
        }
    }
}

fn redact_url(u: &str) -> String {
    let Some((scheme, rest)) = u.split_once("://") else {
        return u.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => u.to_string(),
    }
}

#[derive(Clone, Debug, Default)]
pub struct OpenCvOptions {
    /// Deliver file frames at the file's frame rate instead of as fast as possible.
    pub realtime: bool,
    /// Start a file again at its end (demo cameras).
    pub looping: bool,
}

/// Counters a camera's owner can read while the source runs on its thread.
#[derive(Debug, Default)]
pub struct SourceStats {
    pub frames: AtomicU64,
    pub reconnects: AtomicU64,
    pub failures: AtomicU64,
    pub connected: AtomicBool,
}

pub struct OpenCvSource {
    kind: SourceKind,
    name: String,
    opts: OpenCvOptions,
    cap: Option<VideoCapture>,
    mat: Mat,
    converted: Mat,
    fps: Option<f64>,
    frame_count: Option<u64>,
    seq: u64,
    /// Frames of the file delivered before the current loop, so stream time keeps increasing.
    loop_offset: u64,
    frames_this_loop: u64,
    started: Instant,
    backoff: Backoff,
    next_attempt: Option<Instant>,
    stop: Arc<AtomicBool>,
    stats: Arc<SourceStats>,
}

impl OpenCvSource {
    /// Opens the source now. A file that cannot be opened is an error; a live source that cannot be
    /// reached yet is not (it is retried on the first `next_frame`).
    pub fn open(kind: SourceKind, opts: OpenCvOptions, stop: Arc<AtomicBool>) -> Result<Self, SourceError> {
        let name = kind.display_name();
        let mut s = Self {
            backoff: Backoff::for_camera(seed_from(&name)),
            next_attempt: None,
            kind,
            name,
            opts,
            cap: None,
            mat: Mat::default(),
            converted: Mat::default(),
            fps: None,
            frame_count: None,
            seq: 0,
            loop_offset: 0,
            frames_this_loop: 0,
            started: Instant::now(),
            stop,
            stats: Arc::new(SourceStats::default()),
        };
        match s.connect() {
            Ok(()) => {}
            Err(e) if s.kind.is_live() => {
                tracing::warn!(camera = %s.name, error = %e, "camera not reachable yet; will retry");
            }
            Err(e) => return Err(e),
        }
        Ok(s)
    }

    pub fn stats(&self) -> Arc<SourceStats> {
        self.stats.clone()
    }

    fn open_err(&self, reason: impl Into<BoxError>) -> SourceError {
        SourceError::Open {
            source_name: self.name.clone(),
            reason: reason.into(),
        }
    }

    fn connect(&mut self) -> Result<(), SourceError> {
        if let SourceKind::File(p) = &self.kind {
            if !p.exists() {
                return Err(self.open_err("no such file"));
            }
        }
        let cap = match &self.kind {
            SourceKind::File(p) => VideoCapture::from_file(p.as_os_str(), videoio::CAP_ANY),
            // OpenCV's defaults wait 30 s to open and 30 s per read: a frozen camera would look alive
            // for a minute and a half. A live stream with nothing for 3 s has stalled.
            SourceKind::Url(u) => {
                let params = opencv::core::Vector::<i32>::from_slice(&[
                    videoio::CAP_PROP_OPEN_TIMEOUT_MSEC,
                    OPEN_TIMEOUT_MS,
                    videoio::CAP_PROP_READ_TIMEOUT_MSEC,
                    READ_TIMEOUT_MS,
                ]);
                VideoCapture::from_file_with_params(u, videoio::CAP_FFMPEG, &params)
            }
            SourceKind::Device(n) => VideoCapture::new(*n, videoio::CAP_ANY),
        }
        .map_err(|e| self.open_err(e))?;
        if !cap.is_opened().unwrap_or(false) {
            return Err(self.open_err("OpenCV could not open it (not a video, unsupported codec, or unreachable)"));
        }
        let mut cap = cap;
        if self.kind.is_live() {
            // Keep the driver's queue short: an old frame is worth less than a dropped one.
            let _ = cap.set(videoio::CAP_PROP_BUFFERSIZE, 1.0);
        }
        let fps = cap.get(videoio::CAP_PROP_FPS).unwrap_or(0.0);
        self.fps = (fps.is_finite() && fps > 0.0 && fps < 1000.0).then_some(fps);
        let n = cap.get(videoio::CAP_PROP_FRAME_COUNT).unwrap_or(0.0);
        self.frame_count = (!self.kind.is_live() && n.is_finite() && n > 0.0).then_some(n as u64);
        self.cap = Some(cap);
        self.stats.connected.store(true, Ordering::Relaxed);
        Ok(())
    }

    fn unavailable(&self, reason: impl Into<BoxError>) -> SourceError {
        SourceError::Unavailable {
            source_name: self.name.clone(),
            reason: reason.into(),
        }
    }

    fn disconnect(&mut self, why: &str) {
        self.cap = None;
        self.stats.connected.store(false, Ordering::Relaxed);
        self.stats.failures.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(camera = %self.name, reason = why, "camera stream lost");
    }

    /// Sleeps up to `d`, waking early when asked to stop. Returns false if stopping.
    fn sleep(&self, d: Duration) -> bool {
        let until = Instant::now() + d;
        while Instant::now() < until {
            if self.stop.load(Ordering::Relaxed) {
                return false;
            }
            std::thread::sleep((until - Instant::now()).min(Duration::from_millis(50)));
        }
        !self.stop.load(Ordering::Relaxed)
    }

    /// Reads one raw frame into `self.mat`; Ok(false) at the end of the stream.
    fn read_raw(&mut self) -> Result<bool, ReadError> {
        let cap = self.cap.as_mut().ok_or(ReadError::NotConnected)?;
        match cap.read(&mut self.mat) {
            Ok(true) if !self.mat.empty() => Ok(true),
            Ok(_) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    fn rewind(&mut self) -> Result<(), ReadError> {
        self.loop_offset += self.frames_this_loop;
        self.frames_this_loop = 0;
        let cap = self.cap.as_mut().ok_or(ReadError::NotConnected)?;
        match cap.set(videoio::CAP_PROP_POS_FRAMES, 0.0) {
            Ok(true) => Ok(()),
            // Some containers cannot seek: open the file again instead.
            _ => {
                self.cap = None;
                self.connect().map_err(|e| ReadError::Reopen(Box::new(e)))
            }
        }
    }

    /// Copies `self.mat` (any of grey, BGR, BGRA) into `buf` as packed BGR.
    fn copy_bgr(&mut self, mut buf: Vec<u8>) -> Result<(u32, u32, Vec<u8>), ReadError> {
        let typ = self.mat.typ();
        let src = match typ {
            t if t == CV_8UC3 => &self.mat,
            t if t == CV_8UC1 || t == CV_8UC4 => {
                let code = if t == CV_8UC1 {
                    imgproc::COLOR_GRAY2BGR
                } else {
                    imgproc::COLOR_BGRA2BGR
                };
                imgproc::cvt_color_def(&self.mat, &mut self.converted, code)?;
                &self.converted
            }
            other => return Err(ReadError::PixelType(other)),
        };
        let size = src.size()?;
        let bytes = if src.is_continuous() {
            src.data_bytes()?
        } else {
            return Err(ReadError::NotContiguous);
        };
        buf.clear();
        buf.extend_from_slice(bytes);
        Ok((size.width as u32, size.height as u32, buf))
    }
}

impl FrameSource for OpenCvSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn next_frame(&mut self, buf: Vec<u8>) -> Result<Option<Frame>, SourceError> {
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return Err(SourceError::Stopped);
            }
            if self.cap.is_none() {
                if !self.kind.is_live() {
                    self.connect()?;
                } else {
                    // While waiting for the next attempt, report every second so the node's rules
                    // see the outage as it lasts.
                    let now = Instant::now();
                    if let Some(at) = self.next_attempt.filter(|at| *at > now) {
                        if !self.sleep((at - now).min(Duration::from_secs(1))) {
                            return Err(SourceError::Stopped);
                        }
                        return Err(self.unavailable("waiting to reconnect"));
                    }
                    if let Err(e) = self.connect() {
                        let delay = self.backoff.next_delay();
                        self.next_attempt = Some(Instant::now() + delay);
                        tracing::warn!(camera = %self.name, error = %e, attempt = self.backoff.attempts(),
                            retry_in_ms = delay.as_millis() as u64, "camera reconnect failed");
                        return Err(self.unavailable(e));
                    }
                    self.next_attempt = None;
                    if self.stats.failures.load(Ordering::Relaxed) > 0 {
                        self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(camera = %self.name, "camera reconnected");
                    }
                }
            }
            match self.read_raw() {
                Ok(true) => {}
                Ok(false) if !self.kind.is_live() => {
                    if self.opts.looping && self.frames_this_loop > 0 {
                        self.rewind().map_err(|source| SourceError::Read {
                            source_name: self.name.clone(),
                            source,
                        })?;
                        continue;
                    }
                    return Ok(None);
                }
                Ok(false) => {
                    self.disconnect("end of stream");
                    continue;
                }
                Err(source) if !self.kind.is_live() => {
                    return Err(SourceError::Read {
                        source_name: self.name.clone(),
                        source,
                    });
                }
                Err(e) => {
                    self.disconnect(&e.to_string());
                    continue;
                }
            }
            let (width, height, bgr) = match self.copy_bgr(buf) {
                Ok(v) => v,
                Err(source) => {
                    return Err(SourceError::Read {
                        source_name: self.name.clone(),
                        source,
                    })
                }
            };
            self.backoff.reset();
            self.seq += 1;
            self.frames_this_loop += 1;
            self.stats.frames.fetch_add(1, Ordering::Relaxed);
            let pts = match (&self.kind, self.fps) {
                (SourceKind::File(_), fps) => {
                    let index = self.loop_offset + self.frames_this_loop - 1;
                    index as f64 / fps.unwrap_or(10.0)
                }
                _ => self.started.elapsed().as_secs_f64(),
            };
            if self.opts.realtime && !self.kind.is_live() {
                let due = self.started + Duration::from_secs_f64(pts);
                let now = Instant::now();
                if due > now && !self.sleep(due - now) {
                    return Err(SourceError::Stopped);
                }
            }
            return Ok(Some(Frame {
                seq: self.seq,
                pts,
                width,
                height,
                bgr,
            }));
        }
    }

    fn nominal_fps(&self) -> Option<f64> {
        self.fps
    }

    fn clock(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    fn frame_count(&self) -> Option<u64> {
        if self.opts.looping {
            None
        } else {
            self.frame_count
        }
    }
}

fn seed_from(name: &str) -> u64 {
    // Different cameras get different jitter sequences; stable per camera for reproducible logs.
    name.bytes()
        .fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_recognised() {
        assert_eq!(
            SourceKind::parse("rtsp://cam1/stream"),
            SourceKind::Url("rtsp://cam1/stream".into())
        );
        assert_eq!(SourceKind::parse("0"), SourceKind::Device(0));
        assert_eq!(SourceKind::parse("/dev/video2"), SourceKind::Device(2));
        assert_eq!(SourceKind::parse("clips/a.avi"), SourceKind::File("clips/a.avi".into()));
    }

    #[test]
    fn passwords_never_reach_the_logs() {
        let k = SourceKind::parse("rtsp://admin:hunter2@10.0.0.5:554/h264");
        assert_eq!(k.display_name(), "rtsp://***@10.0.0.5:554/h264");
        assert_eq!(SourceKind::parse("http://cam/mjpg").display_name(), "http://cam/mjpg");
    }
}
