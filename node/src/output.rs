//! Writing tracked people: JSON lines (one object per person per frame) or MOTChallenge text.

use std::io::Write;

use serde::Serialize;

use crate::pipeline::FrameResult;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One JSON object per tracked person per frame.
    Jsonl,
    /// MOTChallenge: `frame,id,x,y,w,h,score,-1,-1,-1`, frames from 1, pixels.
    Mot,
    /// Loss-prevention events as JSON lines, as they start, update and end (needs zones in --config).
    Events,
}

#[derive(Serialize)]
struct Record {
    frame: u64,
    time_s: f64,
    id: u64,
    /// x, y, width, height in pixels
    bbox: [f32; 4],
    /// the same, as fractions of the frame size
    bbox_norm: [f32; 4],
    score: f32,
}

fn round(v: f32, places: i32) -> f32 {
    let k = 10f32.powi(places);
    (v * k).round() / k
}

/// Writes the people *seen* in this frame (predictions during a miss are not detections).
pub fn write_frame(out: &mut dyn Write, format: Format, r: &FrameResult<'_>) -> std::io::Result<()> {
    if format == Format::Events {
        for e in r.events {
            serde_json::to_writer(&mut *out, e)?;
            out.write_all(b"\n")?;
        }
        return Ok(());
    }
    for p in r.people.iter().filter(|p| p.visible) {
        let b = p.bbox;
        let (x, y, w, h) = (b.x1, b.y1, b.width(), b.height());
        match format {
            Format::Mot => writeln!(
                out,
                "{},{},{:.2},{:.2},{:.2},{:.2},{:.4},-1,-1,-1",
                r.seq, p.id, x, y, w, h, p.score
            )?,
            Format::Events => {}
            Format::Jsonl => {
                let fw = r.width.max(1) as f32;
                let fh = r.height.max(1) as f32;
                let rec = Record {
                    frame: r.seq,
                    time_s: (r.pts * 1000.0).round() / 1000.0,
                    id: p.id,
                    bbox: [round(x, 1), round(y, 1), round(w, 1), round(h, 1)],
                    bbox_norm: [round(x / fw, 4), round(y / fh, 4), round(w / fw, 4), round(h / fh, 4)],
                    score: round(p.score, 4),
                };
                serde_json::to_writer(&mut *out, &rec)?;
                out.write_all(b"\n")?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geom::BBox;
    use crate::track::TrackedPerson;

    fn person(id: u64, visible: bool) -> TrackedPerson {
        TrackedPerson {
            id,
            bbox: BBox::new(10.0, 20.0, 40.0, 100.0),
            score: 0.8765,
            visible,
            first_seen: 0.0,
            last_seen: 0.0,
        }
    }

    #[test]
    fn mot_lines_and_json_records() {
        let people = [person(3, true), person(4, false)];
        let r = FrameResult {
            seq: 7,
            pts: 0.6,
            width: 200,
            height: 100,
            inferred: true,
            people: &people,
            detections: &[],
            ended: &[],
            events: &[],
            online: true,
            infer: std::time::Duration::ZERO,
            counts: Default::default(),
        };
        let mut mot = Vec::new();
        write_frame(&mut mot, Format::Mot, &r).unwrap();
        assert_eq!(
            String::from_utf8(mot).unwrap(),
            "7,3,10.00,20.00,30.00,80.00,0.8765,-1,-1,-1\n"
        );
        let mut js = Vec::new();
        write_frame(&mut js, Format::Jsonl, &r).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&js).unwrap();
        assert_eq!(v["frame"], 7);
        assert_eq!(v["id"], 3);
        assert_eq!(v["bbox"], serde_json::json!([10.0, 20.0, 30.0, 80.0]));
        assert_eq!(v["bbox_norm"], serde_json::json!([0.05, 0.2, 0.15, 0.8]));
    }
}
