//! Editing a camera's zones from the tablet: the still frame it is drawn on, and saving.
//!
//! The still is taken by the camera thread of the node that owns the camera (a downscaled copy of a
//! recent frame, refreshed every few seconds, kept in memory only, people's heads hidden as in
//! evidence when `[evidence]` is on) and served only by that node to a logged-in manager over HTTPS;
//! it never enters the mesh or the log. Saving writes the camera's zones into the
//! node's configuration file (the rest of the file, comments included, is kept), checks the whole file
//! as `lpmesh validate` would, and applies the zones by restarting that camera's pipeline: its open
//! incidents end, the node and its other cameras go on.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::config::{CameraConfig, ConfigError, NodeConfig, ZoneConfig};

/// Widest still kept (pixels); zones are in fractions of the frame, so any size does.
pub const STILL_MAX_WIDTH: u32 = 640;
/// How often a camera refreshes its still.
pub const STILL_EVERY_SECS: f64 = 3.0;

/// A recent frame of a camera, downscaled, BGR.
#[derive(Clone)]
pub struct Still {
    pub width: u32,
    pub height: u32,
    pub bgr: Vec<u8>,
    pub at_ms: i64,
}

impl Still {
    /// A copy of `bgr` (width x height) at most [`STILL_MAX_WIDTH`] wide, by sampling.
    pub fn downscale(bgr: &[u8], width: u32, height: u32, at_ms: i64) -> Option<Still> {
        if width == 0 || height == 0 || bgr.len() < (width * height * 3) as usize {
            return None;
        }
        let step = width.div_ceil(STILL_MAX_WIDTH).max(1);
        let (w, h) = (width / step, height / step);
        let mut out = Vec::with_capacity((w * h * 3) as usize);
        for y in 0..h {
            let row = ((y * step) * width * 3) as usize;
            for x in 0..w {
                let i = row + (x * step * 3) as usize;
                out.extend_from_slice(&bgr[i..i + 3]);
            }
        }
        Some(Still {
            width: w,
            height: h,
            bgr: out,
            at_ms,
        })
    }

    /// As a BMP file (24-bit, bottom-up): every browser shows it, and it needs no encoder.
    pub fn to_bmp(&self) -> Vec<u8> {
        let row = (self.width * 3).div_ceil(4) * 4;
        let size = 54 + row * self.height;
        let mut b = Vec::with_capacity(size as usize);
        b.extend_from_slice(b"BM");
        b.extend_from_slice(&size.to_le_bytes());
        b.extend_from_slice(&[0; 4]);
        b.extend_from_slice(&54u32.to_le_bytes());
        b.extend_from_slice(&40u32.to_le_bytes());
        b.extend_from_slice(&(self.width as i32).to_le_bytes());
        b.extend_from_slice(&(self.height as i32).to_le_bytes());
        b.extend_from_slice(&1u16.to_le_bytes());
        b.extend_from_slice(&24u16.to_le_bytes());
        b.extend_from_slice(&[0; 24]);
        let pad = (row - self.width * 3) as usize;
        for y in (0..self.height).rev() {
            let start = (y * self.width * 3) as usize;
            b.extend_from_slice(&self.bgr[start..start + (self.width * 3) as usize]);
            b.extend(std::iter::repeat_n(0u8, pad));
        }
        b
    }
}

/// This node's cameras as the zone editor and the camera threads share them.
pub struct ZoneControl {
    /// The node's configuration file, rewritten on save.
    pub config_path: PathBuf,
    cameras: RwLock<BTreeMap<String, CameraConfig>>,
    reload: HashMap<String, Arc<AtomicBool>>,
    stills: RwLock<HashMap<String, Still>>,
    /// Saves are read-modify-write of one file: one at a time.
    save: std::sync::Mutex<()>,
}

#[derive(Debug, thiserror::Error)]
pub enum ZoneError {
    #[error("no camera {0:?} on this node")]
    NoCamera(String),
    /// The file's text cannot take the zones.
    #[error(transparent)]
    Edit(#[from] EditError),
    /// The file with the new zones is not a valid configuration.
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Why [`replace_zones`] could not edit the configuration text.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error(transparent)]
    Toml(#[from] toml_edit::TomlError),
    #[error("the configuration has no [[camera]] tables")]
    NoCameras,
    /// The camera's name.
    #[error("no [[camera]] named {0:?} in the file")]
    NoCamera(String),
}

/// The editable part of a camera: its zones (lines are shown, not edited here).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZonesBody {
    pub zones: Vec<ZoneConfig>,
}

impl ZoneControl {
    pub fn new(config_path: PathBuf, cameras: &[CameraConfig]) -> Arc<ZoneControl> {
        Arc::new(ZoneControl {
            config_path,
            reload: cameras
                .iter()
                .map(|c| (c.name.clone(), Arc::new(AtomicBool::new(false))))
                .collect(),
            cameras: RwLock::new(cameras.iter().map(|c| (c.name.clone(), c.clone())).collect()),
            stills: RwLock::new(HashMap::new()),
            save: std::sync::Mutex::new(()),
        })
    }

    pub fn camera(&self, name: &str) -> Option<CameraConfig> {
        self.cameras
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    pub fn names(&self) -> Vec<String> {
        self.cameras
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// Set when the camera's zones changed: its thread restarts the pipeline and clears it.
    pub fn reload_flag(&self, name: &str) -> Option<Arc<AtomicBool>> {
        self.reload.get(name).cloned()
    }

    pub fn set_still(&self, camera: &str, still: Still) {
        self.stills
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(camera.to_string(), still);
    }

    pub fn still(&self, camera: &str) -> Option<Still> {
        self.stills
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(camera)
            .cloned()
    }

    /// Writes the camera's zones into the configuration file, checks it whole, and applies them.
    pub fn save_zones(&self, camera: &str, zones: Vec<ZoneConfig>) -> Result<(), ZoneError> {
        let _one = self.save.lock().unwrap_or_else(|p| p.into_inner());
        if self.camera(camera).is_none() {
            return Err(ZoneError::NoCamera(camera.to_string()));
        }
        let file = |source: std::io::Error| ZoneError::File {
            path: self.config_path.clone(),
            source,
        };
        let text = std::fs::read_to_string(&self.config_path).map_err(file)?;
        let new_text = replace_zones(&text, camera, &zones)?;
        let cfg = NodeConfig::parse(&new_text, &self.config_path)?;
        let cam = cfg
            .cameras
            .into_iter()
            .find(|c| c.name == camera)
            .ok_or_else(|| ZoneError::NoCamera(camera.to_string()))?;
        let tmp = self.config_path.with_extension("toml.saving");
        std::fs::write(&tmp, &new_text).map_err(file)?;
        std::fs::rename(&tmp, &self.config_path).map_err(file)?;
        self.cameras
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(camera.to_string(), cam);
        if let Some(f) = self.reload.get(camera) {
            f.store(true, Ordering::Relaxed);
        }
        tracing::info!(camera, zones = zones.len(), "zones saved and applied");
        Ok(())
    }
}

/// The configuration text with camera `camera`'s `[[camera.zone]]` tables replaced.
pub fn replace_zones(text: &str, camera: &str, zones: &[ZoneConfig]) -> Result<String, EditError> {
    use toml_edit::{value, Array, ArrayOfTables, DocumentMut, Item, Table, Value};
    let mut doc: DocumentMut = text.parse()?;
    let cams = doc
        .get_mut("camera")
        .and_then(Item::as_array_of_tables_mut)
        .ok_or(EditError::NoCameras)?;
    let cam = cams
        .iter_mut()
        .find(|t| t.get("name").and_then(Item::as_str) == Some(camera))
        .ok_or_else(|| EditError::NoCamera(camera.to_string()))?;
    let mut list = ArrayOfTables::new();
    for z in zones {
        let mut t = Table::new();
        t.insert("name", value(z.name.as_str()));
        let kind = serde_json::to_value(z.kind)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        t.insert("kind", value(kind));
        let mut poly = Array::new();
        for p in &z.polygon {
            let mut pt = Array::new();
            for c in p {
                // Three decimals: a thousandth of the frame is finer than anyone draws on a tablet.
                pt.push(((*c as f64) * 1000.0).round() / 1000.0);
            }
            poly.push(Value::Array(pt));
        }
        t.insert("polygon", value(poly));
        if let Some(m) = z.min_confidence {
            t.insert("min_confidence", value(m as f64));
        }
        list.push(t);
    }
    if zones.is_empty() {
        cam.remove("zone");
    } else {
        cam.insert("zone", Item::ArrayOfTables(list));
    }
    Ok(doc.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::ZoneKind;

    #[test]
    fn zones_are_replaced_and_the_rest_of_the_file_kept() {
        let text = "# the front door\nstore = \"s\"\nnode = \"n\"\n\n[[camera]]\nname = \"door\"\nsource = \"x.avi\"\n# old zone\n[[camera.zone]]\nname = \"old\"\nkind = \"exit\"\npolygon = [[0.0, 0.0], [0.5, 0.0], [0.5, 0.5]]\n\n[[camera]]\nname = \"till\"\nsource = \"y.avi\"\n";
        let z = ZoneConfig {
            name: "spirits".into(),
            kind: ZoneKind::Shelf,
            polygon: vec![vec![0.1, 0.1], vec![0.4, 0.1], vec![0.4, 0.3333333]],
            min_confidence: None,
        };
        let out = replace_zones(text, "door", &[z]).unwrap();
        assert!(out.starts_with("# the front door"), "{out}");
        assert!(
            out.contains("name = \"spirits\"") && out.contains("kind = \"shelf\"") && !out.contains("\"old\""),
            "{out}"
        );
        assert!(out.contains("0.333"), "{out}");
        assert!(out.contains("name = \"till\""));
        let cfg = NodeConfig::parse(&out, std::path::Path::new("n.toml")).unwrap();
        assert_eq!(cfg.cameras[0].zones[0].name, "spirits");
        assert!(cfg.cameras[1].zones.is_empty());
        assert!(replace_zones(text, "nope", &[]).is_err());
    }

    #[test]
    fn a_still_downscales_and_encodes_as_bmp() {
        let (w, h) = (1280u32, 720u32);
        let bgr: Vec<u8> = (0..w * h * 3).map(|i| (i % 251) as u8).collect();
        let s = Still::downscale(&bgr, w, h, 0).unwrap();
        assert_eq!((s.width, s.height), (640, 360));
        let bmp = s.to_bmp();
        assert_eq!(&bmp[..2], b"BM");
        assert_eq!(bmp.len(), 54 + 640 * 3 * 360);
        assert!(Still::downscale(&bgr[..10], w, h, 0).is_none());
    }
}
