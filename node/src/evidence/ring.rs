//! A camera's recent past, for evidence: frames (downscaled, JPEG) and where people were, for a few
//! seconds, bounded by time and by bytes. The capture thread adds frames, the analysis thread adds
//! boxes, the evidence worker reads both once an incident's clip is due.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// The id of a box that belongs to no track (a detection not, or not yet, confirmed as a person).
pub const NO_TRACK: u64 = u64::MAX;

/// Hard cap on the JPEG bytes one camera's ring holds, whatever the configuration.
pub const MAX_RING_BYTES: usize = 48 * 1024 * 1024;

/// One kept frame.
#[derive(Clone)]
pub struct RingFrame {
    /// Stream time (seconds), as the pipeline's.
    pub pts: f64,
    /// Wall time it was taken (Unix ms).
    pub at_ms: i64,
    pub width: u32,
    pub height: u32,
    pub jpeg: Arc<[u8]>,
}

/// People in a frame: (camera-local track id or [`NO_TRACK`], box as fractions x1, y1, x2, y2).
pub type People = Vec<(u64, [f32; 4])>;

/// A kept frame with the people seen nearest to it in time, if any were.
pub type Windowed = (RingFrame, Option<People>);

/// People seen in one analysed frame: (camera-local track id, box as fractions x1, y1, x2, y2).
#[derive(Clone, Debug, PartialEq)]
pub struct RingBoxes {
    pub pts: f64,
    pub people: People,
}

#[derive(Default)]
struct Inner {
    frames: VecDeque<RingFrame>,
    boxes: VecDeque<RingBoxes>,
    bytes: usize,
    closed: bool,
}

/// The ring, shared between a camera's threads.
pub struct Ring {
    inner: Mutex<Inner>,
    more: Condvar,
    keep_secs: f64,
    max_bytes: usize,
}

impl Ring {
    pub fn new(keep_secs: f64, max_bytes: usize) -> Arc<Ring> {
        Arc::new(Ring {
            inner: Mutex::new(Inner::default()),
            more: Condvar::new(),
            keep_secs,
            max_bytes: max_bytes.min(MAX_RING_BYTES),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a frame. A frame earlier than the newest, or of another size, starts the ring afresh (a
    /// restarted stream, a reconfigured camera): a clip never mixes two.
    pub fn push_frame(&self, f: RingFrame) {
        let mut g = self.lock();
        if let Some(last) = g.frames.back() {
            if f.pts < last.pts || (last.width, last.height) != (f.width, f.height) {
                g.frames.clear();
                g.bytes = 0;
            }
        }
        g.bytes += f.jpeg.len();
        g.frames.push_back(f);
        let newest = g.frames.back().map_or(0.0, |f| f.pts);
        while let Some(first) = g.frames.front() {
            if newest - first.pts <= self.keep_secs && g.bytes <= self.max_bytes {
                break;
            }
            g.bytes -= first.jpeg.len();
            g.frames.pop_front();
        }
        drop(g);
        self.more.notify_all();
    }

    /// Where people were in an analysed frame.
    pub fn push_boxes(&self, b: RingBoxes) {
        let mut g = self.lock();
        if g.boxes.back().is_some_and(|last| b.pts < last.pts) {
            g.boxes.clear();
        }
        g.boxes.push_back(b);
        let newest = g.boxes.back().map_or(0.0, |b| b.pts);
        while g.boxes.front().is_some_and(|first| newest - first.pts > self.keep_secs) {
            g.boxes.pop_front();
        }
        // Bounded whatever the frame rate: the boxes of far more frames than the frames kept.
        while g.boxes.len() > 4096 {
            g.boxes.pop_front();
        }
    }

    /// The stream has ended: whoever waits for more stops waiting.
    pub fn close(&self) {
        self.lock().closed = true;
        self.more.notify_all();
    }

    /// Waits until a frame at or after `pts` is kept, the ring is closed, or `timeout` passes.
    pub fn wait_for(&self, pts: f64, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        let mut g = self.lock();
        while !g.closed && g.frames.back().is_none_or(|f| f.pts < pts) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return;
            }
            g = self.more.wait_timeout(g, left).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// The frames from `from` to `to` (stream seconds), each with the people seen nearest to it in
    /// time (within `near` seconds; `None` when nobody was analysed that close).
    pub fn window(&self, from: f64, to: f64, near: f64) -> Vec<Windowed> {
        let g = self.lock();
        g.frames
            .iter()
            .filter(|f| f.pts >= from && f.pts <= to)
            .map(|f| {
                let nearest = g
                    .boxes
                    .iter()
                    .filter(|b| (b.pts - f.pts).abs() <= near)
                    .min_by(|a, b| (a.pts - f.pts).abs().total_cmp(&(b.pts - f.pts).abs()))
                    .map(|b| b.people.clone());
                (f.clone(), nearest)
            })
            .collect()
    }

    /// The people seen nearest in time to `pts`, within `near` seconds (`None`: nobody analysed
    /// that close).
    pub fn people_near(&self, pts: f64, near: f64) -> Option<People> {
        let g = self.lock();
        g.boxes
            .iter()
            .filter(|b| (b.pts - pts).abs() <= near)
            .min_by(|a, b| (a.pts - pts).abs().total_cmp(&(b.pts - pts).abs()))
            .map(|b| b.people.clone())
    }

    /// Bytes of frames held now.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    pub fn len(&self) -> usize {
        self.lock().frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(pts: f64, w: u32, bytes: usize) -> RingFrame {
        RingFrame {
            pts,
            at_ms: (pts * 1000.0) as i64,
            width: w,
            height: 10,
            jpeg: vec![0u8; bytes].into(),
        }
    }

    #[test]
    fn keeps_only_the_last_seconds_and_at_most_its_bytes() {
        let r = Ring::new(2.0, 1000);
        for i in 0..50 {
            r.push_frame(frame(i as f64 * 0.1, 10, 10));
        }
        // 4.9 s of frames pushed, 2 s kept.
        let w = r.window(0.0, 10.0, 0.0);
        assert!((w[0].0.pts - 2.9).abs() < 1e-9, "{}", w[0].0.pts);
        assert_eq!(w.len(), 21);
        // Big frames: the byte cap wins.
        for i in 50..60 {
            r.push_frame(frame(i as f64 * 0.1, 10, 300));
        }
        assert!(
            r.bytes() <= 1000 && r.len() == 3,
            "{} bytes, {} frames",
            r.bytes(),
            r.len()
        );
        // A restarted stream (time back) or a new size starts afresh.
        r.push_frame(frame(0.0, 10, 1));
        assert_eq!(r.len(), 1);
        r.push_frame(frame(0.1, 20, 1));
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn each_frame_gets_the_people_seen_nearest_in_time() {
        let r = Ring::new(10.0, 10_000);
        for i in 0..10 {
            r.push_frame(frame(i as f64 * 0.2, 10, 1));
        }
        r.push_boxes(RingBoxes {
            pts: 0.45,
            people: vec![(1, [0.1, 0.1, 0.2, 0.5])],
        });
        r.push_boxes(RingBoxes {
            pts: 1.0,
            people: vec![(2, [0.5, 0.1, 0.6, 0.5])],
        });
        let w = r.window(0.3, 1.3, 0.25);
        let ids: Vec<Option<u64>> = w.iter().map(|(_, b)| b.as_ref().map(|p| p[0].0)).collect();
        // Frames at 0.4, 0.6, 0.8, 1.0, 1.2.
        assert_eq!(ids, vec![Some(1), Some(1), Some(2), Some(2), Some(2)]);
        // Nobody analysed near enough: the frame says so (it is left out of a clip that hides faces).
        assert_eq!(r.window(1.8, 1.8, 0.25)[0].1, None);
        assert_eq!(r.people_near(0.5, 0.1).map(|p| p[0].0), Some(1));
        assert_eq!(r.people_near(3.0, 0.25), None);
    }

    #[test]
    fn a_waiting_worker_wakes_for_the_frame_it_needs_or_the_end() {
        let r = Ring::new(10.0, 10_000);
        let w = r.clone();
        let t = std::thread::spawn(move || {
            let t0 = std::time::Instant::now();
            w.wait_for(1.0, Duration::from_secs(30));
            t0.elapsed()
        });
        std::thread::sleep(Duration::from_millis(50));
        r.push_frame(frame(0.5, 10, 1));
        r.push_frame(frame(1.0, 10, 1));
        assert!(t.join().unwrap() < Duration::from_secs(5));
        let w = r.clone();
        let t = std::thread::spawn(move || w.wait_for(99.0, Duration::from_secs(30)));
        std::thread::sleep(Duration::from_millis(50));
        r.close();
        t.join().unwrap();
        // A timeout ends the wait too.
        Ring::new(1.0, 10).wait_for(5.0, Duration::from_millis(20));
    }
}
