//! The checks a configuration must pass, section by section, each problem with its field.

use super::*;

impl HqConfig {
    pub(crate) fn check(&self) -> Vec<(FieldPath, String)> {
        let mut p = Vec::new();
        match (&self.url, &self.recipient) {
            (Some(url), Some(r)) => {
                if !url.starts_with("https://") || url.len() <= "https://".len() {
                    p.push((
                        path(&["hq", "url"]),
                        "must be https://host[:port]: summaries only travel over TLS".into(),
                    ));
                }
                if let Err(e) = lpmesh_hq::envelope::parse_recipient(r) {
                    p.push((
                        path(&["hq", "recipient"]),
                        format!("not an age recipient (age1...): {e}"),
                    ));
                }
            }
            (Some(_), None) => p.push((
                path(&["hq", "recipient"]),
                "required with url: HQ's age recipient".into(),
            )),
            (None, Some(_)) => p.push((path(&["hq", "url"]), "required with recipient".into())),
            (None, None) => {}
        }
        if self.period_secs < 60 || 86_400 % self.period_secs != 0 {
            p.push((
                path(&["hq", "period_secs"]),
                "must be at least 60 and divide a day (86400)".into(),
            ));
        }
        for (key, v) in [
            ("probe_secs", self.probe_secs),
            ("resend_secs", self.resend_secs),
            ("timeout_secs", self.timeout_secs),
        ] {
            if v.is_nan() || v <= 0.0 {
                p.push((path(&["hq", key]), "must be more than zero".into()));
            }
        }
        if self.leader_stall_windows == 1 || self.leader_stall_windows > 1000 {
            p.push((
                path(&["hq", "leader_stall_windows"]),
                "must be 0 (never demote a stalled leader) or 2 to 1000: a healthy leader may wait one \
                 resend_secs window before sending a changing period again"
                    .into(),
            ));
        }
        p
    }
}

/// A fraction: between 0 and 1.
fn unit(p: &mut Vec<(FieldPath, String)>, at: FieldPath, v: f32) {
    if !(0.0..=1.0).contains(&v) {
        p.push((at, format!("must be between 0 and 1, got {v}")));
    }
}

impl NodeConfig {
    /// Semantic checks that types alone cannot express, section by section.
    pub(crate) fn check(&self, table: &toml::Table) -> Vec<(FieldPath, String)> {
        let mut p = Vec::new();
        self.check_identity(&mut p, table);
        self.check_vision(&mut p);
        self.check_runtime(&mut p);
        self.check_rules(&mut p);
        if let Err(errs) = self.schedule.compile() {
            p.extend(errs);
        }
        self.check_mesh(&mut p);
        p.extend(self.hq.check());
        for (field, message) in self.alerts.check().into_iter().chain(self.evidence.check()) {
            p.push((field_path(&field), message));
        }
        self.check_services(&mut p);
        self.check_cameras(&mut p);
        p
    }

    /// The store and node names: present and well formed.
    fn check_identity(&self, p: &mut Vec<(FieldPath, String)>, table: &toml::Table) {
        for (key, v) in [("store", &self.store), ("node", &self.node)] {
            if !table.contains_key(key) {
                p.push((path(&[key]), "required".into()));
            } else if let Err(e) = check_name(v) {
                p.push((path(&[key]), e.to_string()));
            }
        }
    }

    /// The detector, the tracker and the motion gate.
    fn check_vision(&self, p: &mut Vec<(FieldPath, String)>) {
        unit(p, path(&["detector", "score_threshold"]), self.detector.score_threshold);
        unit(p, path(&["detector", "nms_iou"]), self.detector.nms_iou);
        unit(p, path(&["tracker", "low_score"]), self.tracker.low_score);
        unit(p, path(&["tracker", "match_iou"]), self.tracker.match_iou);
        unit(p, path(&["tracker", "low_match_iou"]), self.tracker.low_match_iou);
        unit(
            p,
            path(&["motion", "min_changed_fraction"]),
            self.motion.min_changed_fraction,
        );
        if self.tracker.low_score > self.detector.score_threshold {
            p.push((
                path(&["tracker", "low_score"]),
                format!(
                    "must not exceed detector.score_threshold ({}), got {}",
                    self.detector.score_threshold, self.tracker.low_score
                ),
            ));
        }
        if self.tracker.min_hits == 0 {
            p.push((path(&["tracker", "min_hits"]), "must be at least 1".into()));
        }
        if self.tracker.max_lost_secs.is_nan() || self.tracker.max_lost_secs < 0.0 {
            p.push((path(&["tracker", "max_lost_secs"]), "must be zero or more".into()));
        }
        if self.motion.max_skip_secs.is_nan() || self.motion.max_skip_secs <= 0.0 {
            p.push((path(&["motion", "max_skip_secs"]), "must be more than zero".into()));
        }
    }

    /// ONNX Runtime: execution providers and OpenVINO.
    fn check_runtime(&self, p: &mut Vec<(FieldPath, String)>) {
        let ov = &self.runtime.openvino;
        if !OPENVINO_DEVICES.contains(&ov.device.as_str()) {
            p.push((
                path(&["runtime", "openvino", "device"]),
                format!("must be one of {}", OPENVINO_DEVICES.join(", ")),
            ));
        }
        if let Some(pr) = ov.precision.as_deref().filter(|pr| !OPENVINO_PRECISIONS.contains(pr)) {
            p.push((
                path(&["runtime", "openvino", "precision"]),
                format!("{pr:?}: must be one of {}", OPENVINO_PRECISIONS.join(", ")),
            ));
        }
        for (i, ep) in self.runtime.execution_providers.iter().enumerate() {
            if !EXECUTION_PROVIDERS.contains(&ep.to_ascii_lowercase().as_str()) {
                p.push((
                    path(&["runtime", "execution_providers"]).index(i),
                    format!(
                        "unknown execution provider {ep:?}; known: {}",
                        EXECUTION_PROVIDERS.join(", ")
                    ),
                ));
            }
        }
    }

    /// The rules' thresholds.
    fn check_rules(&self, p: &mut Vec<(FieldPath, String)>) {
        let r = &self.rules;
        unit(p, path(&["rules", "hysteresis"]), r.hysteresis);
        unit(p, path(&["rules", "shelf_min_overlap"]), r.shelf_min_overlap);
        unit(p, path(&["rules", "sweep_min_changed"]), r.sweep_min_changed);
        unit(p, path(&["rules", "tamper_blur_ratio"]), r.tamper_blur_ratio);
        unit(p, path(&["rules", "tamper_min_similarity"]), r.tamper_min_similarity);
        for (key, v) in [
            ("loitering_secs", r.loitering_secs),
            ("update_secs", r.update_secs),
            ("shelf_interaction_secs", r.shelf_interaction_secs),
            ("grace_secs", r.grace_secs),
            ("sweep_window_secs", r.sweep_window_secs),
            ("sweep_hold_secs", r.sweep_hold_secs),
            ("crowding_clear_secs", r.crowding_clear_secs),
            ("after_hours_clear_secs", r.after_hours_clear_secs),
            ("tamper_secs", r.tamper_secs),
            ("offline_secs", r.offline_secs),
        ] {
            if v.is_nan() || v < 0.0 {
                p.push((path(&["rules", key]), format!("must be zero or more seconds, got {v}")));
            }
        }
        if r.crowding_min_people < 2 {
            p.push((
                path(&["rules", "crowding_min_people"]),
                "a crowd is at least 2 people".into(),
            ));
        }
    }

    /// The mesh: addresses, enrolment, time window, retention, leader timing.
    fn check_mesh(&self, p: &mut Vec<(FieldPath, String)>) {
        let no_announce = Vec::new();
        for (key, list) in [
            ("listen", &self.mesh.listen),
            ("bootstrap", &self.mesh.bootstrap),
            ("announce", self.mesh.announce.as_ref().unwrap_or(&no_announce)),
        ] {
            for (i, a) in list.iter().enumerate() {
                match a.parse::<lpmesh_mesh::net::Addr>() {
                    Ok(addr) if addr.to_string().contains("/quic") || addr.to_string().contains("/udp") => p.push((
                        path(&["mesh", key]).index(i),
                        "only TCP addresses: the store's private network cannot protect QUIC or UDP".into(),
                    )),
                    Ok(_) => {}
                    Err(e) => p.push((
                        path(&["mesh", key]).index(i),
                        format!("not a multiaddr like /ip4/10.0.0.5/tcp/7420: {e}"),
                    )),
                }
            }
        }
        for (key, v) in [
            ("anti_entropy_secs", self.mesh.anti_entropy_secs),
            ("heartbeat_secs", self.mesh.heartbeat_secs),
            ("leader_timeout_secs", self.mesh.leader_timeout_secs),
            ("retention_days", self.mesh.retention_days),
            ("time_window_secs", self.mesh.time_window_secs),
        ] {
            if v.is_nan() || v <= 0.0 {
                p.push((path(&["mesh", key]), "must be more than zero".into()));
            }
        }
        if self.mesh.enrol_listen.parse::<std::net::SocketAddr>().is_err() {
            p.push((
                path(&["mesh", "enrol_listen"]),
                "not an address like 0.0.0.0:7421".into(),
            ));
        }
        if self.mesh.time_window_secs > 86_400.0 {
            p.push((
                path(&["mesh", "time_window_secs"]),
                "must be at most 86400 (a day): it is how far a record may claim the future".into(),
            ));
        }
        if self.mesh.retention_days > 36_500.0 {
            p.push((
                path(&["mesh", "retention_days"]),
                "must be at most 36500 (100 years)".into(),
            ));
        }
        if self.mesh.leader_timeout_secs < 2.0 * self.mesh.heartbeat_secs {
            p.push((
                path(&["mesh", "leader_timeout_secs"]),
                "must be at least twice heartbeat_secs, or one late heartbeat changes the leader".into(),
            ));
        }
    }

    /// The operations endpoint and the tablet UI.
    fn check_services(&self, p: &mut Vec<(FieldPath, String)>) {
        if self.ops.listen.parse::<std::net::SocketAddr>().is_err() {
            p.push((path(&["ops", "listen"]), "not an address like 127.0.0.1:9420".into()));
        }
        if self.ui.listen.parse::<std::net::SocketAddr>().is_err() {
            p.push((path(&["ui", "listen"]), "not an address like 0.0.0.0:8080".into()));
        }
        if let Some(u) = &self.ui.public_url {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                p.push((
                    path(&["ui", "public_url"]),
                    "must start with http:// or https://".into(),
                ));
            }
        }
        for (i, n) in self.ui.names.iter().enumerate() {
            let dns = n.len() <= 253
                && !n.is_empty()
                && n.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && !l.starts_with('-')
                        && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                });
            if !dns {
                p.push((
                    path(&["ui", "names"]).index(i),
                    format!("{n:?} is not a host name (letters, digits and '-', dot-separated)"),
                ));
            }
        }
    }

    /// Each camera: its name, source, zones, lines and rule overrides.
    fn check_cameras(&self, p: &mut Vec<(FieldPath, String)>) {
        let mut camera_names = std::collections::HashSet::new();
        for (ci, cam) in self.cameras.iter().enumerate() {
            let at = path(&["camera"]).index(ci);
            if let Err(e) = check_name(&cam.name) {
                p.push((at.clone().key("name"), e.to_string()));
            } else if !camera_names.insert(cam.name.as_str()) {
                p.push((
                    at.clone().key("name"),
                    format!("camera name {:?} is used twice", cam.name),
                ));
            }
            if cam.source.trim().is_empty() {
                p.push((at.clone().key("source"), "must not be empty".into()));
            }
            if !(cam.detect_fps > 0.0 && cam.detect_fps <= 60.0) {
                p.push((
                    at.clone().key("detect_fps"),
                    format!("must be more than 0 and at most 60, got {}", cam.detect_fps),
                ));
            }
            if let Some(t) = cam.score_threshold {
                unit(p, at.clone().key("score_threshold"), t);
            }
            let mut names = std::collections::HashSet::new();
            for (zi, z) in cam.zones.iter().enumerate() {
                let zat = at.clone().key("zone").index(zi);
                if let Err(e) = check_name(&z.name) {
                    p.push((zat.clone().key("name"), e.to_string()));
                } else if !names.insert(z.name.as_str()) {
                    p.push((
                        zat.clone().key("name"),
                        format!("{:?} is already the name of a zone or line of this camera", z.name),
                    ));
                }
                if z.polygon.len() < 3 {
                    p.push((
                        zat.clone().key("polygon"),
                        format!("a polygon needs at least 3 points, got {}", z.polygon.len()),
                    ));
                }
                for (k, pt) in z.polygon.iter().enumerate() {
                    check_point(p, zat.clone().key("polygon").index(k), pt);
                }
                if let Some(c) = z.min_confidence {
                    unit(p, zat.clone().key("min_confidence"), c);
                }
            }
            for (li, l) in cam.lines.iter().enumerate() {
                let lat = at.clone().key("line").index(li);
                if let Err(e) = check_name(&l.name) {
                    p.push((lat.clone().key("name"), e.to_string()));
                } else if !names.insert(l.name.as_str()) {
                    p.push((
                        lat.clone().key("name"),
                        format!("{:?} is already the name of a zone or line of this camera", l.name),
                    ));
                }
                let ok_from = check_point(p, lat.clone().key("from"), &l.from);
                let ok_to = check_point(p, lat.clone().key("to"), &l.to);
                if ok_from
                    && ok_to
                    && CountingLine::new([l.from[0], l.from[1]], [l.to[0], l.to[1]], l.in_heading).is_none()
                {
                    p.push((
                        lat.clone().key("in"),
                        "the line is too short, or runs along the `in` heading (it could never be crossed that way)"
                            .into(),
                    ));
                }
            }
            for (ri, o) in cam.rules.iter().enumerate() {
                let rat = at.clone().key("rule").index(ri);
                if let Some(z) = &o.zone {
                    if !cam.zones.iter().any(|zc| &zc.name == z) {
                        let known: Vec<&str> = cam.zones.iter().map(|z| z.name.as_str()).collect();
                        p.push((
                            rat.clone().key("zone"),
                            format!("no zone {z:?} on camera {:?} (zones: {})", cam.name, known.join(", ")),
                        ));
                    }
                    if !ZONE_KINDS.contains(&o.kind) {
                        p.push((
                            rat.clone().key("zone"),
                            format!("{} is not a per-zone rule", o.kind.as_str()),
                        ));
                    }
                }
                if o.secs.is_some() && !matches!(o.kind, EventKind::Loitering | EventKind::ShelfInteraction) {
                    p.push((
                        rat.clone().key("secs"),
                        format!("{} has no duration threshold", o.kind.as_str()),
                    ));
                }
                if o.secs.is_some_and(|s| s.is_nan() || s <= 0.0) {
                    p.push((rat.clone().key("secs"), "must be more than zero".into()));
                }
                if o.people.is_some() && o.kind != EventKind::Crowding {
                    p.push((
                        rat.clone().key("people"),
                        format!("{} has no people threshold", o.kind.as_str()),
                    ));
                }
                if o.people.is_some_and(|n| n < 2) {
                    p.push((rat.clone().key("people"), "a crowd is at least 2 people".into()));
                }
            }
        }
    }
}

/// Rules that belong to a zone (as opposed to the whole camera).
pub const ZONE_KINDS: [EventKind; 6] = [
    EventKind::Loitering,
    EventKind::ShelfInteraction,
    EventKind::ShelfSweep,
    EventKind::ExitWithoutCheckout,
    EventKind::RestrictedEntry,
    EventKind::Crowding,
];

/// Names travel in every event: short, printable, no separators that would confuse ids or topics.
/// A store or node name: what the configuration, invitations and member records accept.
pub fn check_name(s: &str) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::Empty);
    }
    if s.len() > 64 {
        return Err(NameError::TooLong(s.len()));
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(NameError::Characters(s.to_string()));
    }
    Ok(())
}

/// Why [`check_name`] refused a name. The message follows the field it is reported against, so it
/// does not repeat what kind of name it is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("must not be empty")]
    Empty,
    /// The length in bytes.
    #[error("at most 64 characters, got {0}")]
    TooLong(usize),
    #[error("{0:?}: use letters, digits, '-', '_' and '.' only")]
    Characters(String),
}

pub(crate) fn check_point(p: &mut Vec<(FieldPath, String)>, at: FieldPath, pt: &[f32]) -> bool {
    if pt.len() != 2 {
        p.push((at, format!("a point is [x, y], got {} numbers", pt.len())));
        return false;
    }
    if !pt.iter().all(|v| (0.0..=1.0).contains(v)) {
        p.push((
            at,
            format!(
                "coordinates are fractions of the image (0 to 1), got [{}, {}]",
                pt[0], pt[1]
            ),
        ));
        return false;
    }
    true
}
