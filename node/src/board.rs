//! What this node's camera pipelines publish about themselves for the rest of the node (the UI, the
//! heartbeats to other nodes, `/metrics`): each camera's health, as its pipeline last saw it.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

/// A camera's health as its node sees it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CameraLive {
    pub name: String,
    pub online: bool,
    pub fps: f32,
    pub last_frame_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tamper: Option<String>,
    /// People in each zone now.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub occupancy: BTreeMap<String, u32>,
}

/// This node's cameras, updated by their pipelines.
pub type CameraBoard = Arc<RwLock<BTreeMap<String, CameraLive>>>;
