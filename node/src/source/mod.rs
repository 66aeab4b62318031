//! Where frames come from: the [`FrameSource`] trait, the reconnect policy, and (with the `vision`
//! feature) the OpenCV implementation for files, RTSP/HTTP streams and local devices.

#[cfg(feature = "vision")]
pub mod opencv;

use crate::pipeline::BoxError;

/// One decoded frame: packed 8-bit BGR, `width * height * 3` bytes.
#[derive(Debug)]
pub struct Frame {
    /// Frames delivered by this source so far, from 1.
    pub seq: u64,
    /// Stream time in seconds: from the frame rate for files (deterministic, whatever the processing
    /// speed), from the wall clock since the source started for live streams.
    pub pts: f64,
    pub width: u32,
    pub height: u32,
    pub bgr: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot open video source {source_name}: {reason}")]
    Open {
        source_name: String,
        #[source]
        reason: BoxError,
    },
    #[error("reading from {source_name} failed: {source}")]
    Read {
        source_name: String,
        #[source]
        source: ReadError,
    },
    /// A live source could not be (re)connected this time; it will be tried again.
    #[error("{source_name} is unavailable: {reason}")]
    Unavailable {
        source_name: String,
        #[source]
        reason: BoxError,
    },
    #[error("stopped")]
    Stopped,
}

/// Why a source that was opened gave no frame.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("not connected")]
    NotConnected,
    #[cfg(feature = "vision")]
    #[error(transparent)]
    OpenCv(#[from] ::opencv::Error),
    #[error("unsupported pixel type {0}")]
    PixelType(i32),
    #[error("frame is not contiguous in memory")]
    NotContiguous,
    /// A file that cannot seek back to its start is opened again to loop it, and that failed.
    #[error(transparent)]
    Reopen(Box<SourceError>),
}

/// A camera or video. Blocking: each source runs on its own thread.
pub trait FrameSource: Send {
    /// A human-readable name for logs (a URL's password is never included).
    fn name(&self) -> &str;

    /// The next frame, decoded into `buf` (reused to avoid an allocation per frame). `Ok(None)` at the
    /// end of a finite source.
    fn next_frame(&mut self, buf: Vec<u8>) -> Result<Option<Frame>, SourceError>;

    /// Frames per second the source claims, when it does.
    fn nominal_fps(&self) -> Option<f64>;

    /// Total frames, for files that know it (progress bars).
    fn frame_count(&self) -> Option<u64>;

    /// Stream time now, for reporting while no frame arrives.
    fn clock(&self) -> f64;
}
