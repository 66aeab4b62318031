//! An lpmesh store node: cameras, detection, tracking, and the `lpmesh` command line.
//!
//! # Layout
//!
//! Pure cores (no I/O, no OpenCV, no ONNX Runtime; time is an input), tested on their own:
//! - [`geom`]: boxes and IoU.
//! - [`detect`]: the [`detect::Detector`] trait, pixel normalisation, NanoDet decoding and NMS.
//! - [`assign`]: optimal assignment for matching tracks to detections.
//! - [`track`]: the multi-person tracker.
//! - [`motion`]: the motion gate that skips inference on still scenes.
//! - [`pipeline`]: the two-thread capture/analysis loop with its bounded queue and stats.
//! - [`config`]: the node's TOML configuration and its checks.
//! - [`zone`], [`schedule`], [`event`], [`rules`]: zones and lines, opening hours, loss-prevention
//!   events, and the rules engine that turns tracks and pixel measures into events.
//! - [`measure`]: the pixel measures (tamper, shelf change) computed on small grey images.
//! - [`source`]: the [`source::FrameSource`] trait; [`backoff`]: the one retry backoff.
//!
//! Behind the default `vision` feature (OpenCV and ONNX Runtime):
//! - `source::opencv`: files, streams and devices through OpenCV.
//! - `capture`: resize/normalise/thumbnail/pixel measures on the capture thread.
//! - `camera`: one camera assembled from the configuration (source, detector, tracker, rules), and
//!   its supervisor (a thread per camera, started again after a failure).
//! - `detect::onnx`: loading ONNX Runtime and the NanoDet detector.
//! - `bench`: `lpmesh bench pipeline`.
//!
//! HQ uplink (no OpenCV):
//! - [`action`]: operator actions on incidents (records of the mesh).
//! - [`summary`]: HQ summaries computed from the log, a pure function of its records.
//! - [`uplink`]: the outbox and the leader's uploads to HQ.
//!
//! [`output`] writes tracks as JSON lines or MOTChallenge text.

pub mod action;
pub mod alerts;
pub mod appearance;
pub mod assign;
pub mod backoff;
#[cfg(feature = "vision")]
pub mod bench;
pub mod bench_alerts;
pub mod board;
pub mod bounds;
#[cfg(feature = "vision")]
pub mod camera;
#[cfg(feature = "vision")]
pub mod capture;
pub mod config;
pub mod detect;
pub mod epochs;
pub mod eval;
pub mod event;
pub mod evidence;
pub mod geom;
pub mod incidents;
pub mod measure;
pub mod members;
pub mod motion;
pub mod node;
pub mod ops;
pub mod output;
pub mod pipeline;
pub mod rules;
pub mod runtime;
pub mod schedule;
pub mod source;
pub mod summary;
pub mod track;
pub mod ui;
pub mod uplink;
pub mod zone;
pub mod zone_control;
