//! Alert routes: telling security staff, as it happens, over MQTT, webhooks or the console.
//!
//! ```text
//! rules -> Event --is_alertable--> Alert::from_event --> Alerts::submit
//!                                                          | per route: Filter (severity, kinds, hours, cooldown)
//!                                                          v
//!                                     [bounded queue, 256] -> route task -> broker / URL / stdout
//!                                     [bounded queue, 256] -> route task -> ...
//! ```
//!
//! Decisions:
//!
//! - **Which node sends.** A node alerts only for events of its own cameras ([`is_alertable`]): every
//!   node of a store sees the whole replicated log, so if each alerted for everything one incident would
//!   page the guards once per node. The camera's own node is also the one that knows first. One incident
//!   is therefore one alert per store (per route). Only the first record of an incident (`start`) or an
//!   `instant` one alerts; updates and ends do not page anyone again.
//! - **One queue and one task per route.** Routes fail independently (a webhook receiver that answers
//!   500, a broker that is rebooting); with a queue each, a slow or broken route only ever delays its own
//!   alerts. [`Alerts::submit`] filters and pushes into each queue under a short lock and returns: the
//!   camera pipeline that calls it never waits on the network. Each queue holds [`QUEUE_CAPACITY`]
//!   alerts; when it is full the *oldest* waiting alert is dropped (and counted): after a long outage
//!   the newest incidents matter most.
//! - **Cooldown per camera + zone + kind.** The rules already make one event per incident, but a busy
//!   door can produce a stream of separate `exit_without_checkout` incidents in a minute; the guard
//!   needs one page ("door, exit zone, exits without checkout") not twenty. Keying by camera and zone as
//!   well keeps an incident elsewhere from being swallowed by that burst. Filtered alerts do not start
//!   a cooldown, and the memory is bounded ([`filter::COOLDOWN_KEYS_MAX`], expired keys swept).
//! - **Hours are judged at delivery time**, in the store's time zone: they say when someone reads the
//!   route (a night-shift phone), not when the incident happened.
//! - **MQTT is at-least-once.** Alerts are published with QoS 1 and leave the route only when the
//!   broker acknowledged them (PubAck). A lost connection puts every unacknowledged alert back in front
//!   of the queue; they are published again after the reconnect (exponential backoff, 0.5 s doubling to
//!   30 s, ±20 % jitter). Sessions are clean, so rumqttc does not resend on its own and each alert is
//!   resent only by this module; a receiver may see an alert twice after a reconnect and can
//!   de-duplicate by `incident`. At most [`mqtt::WINDOW`] publishes are outstanding, which keeps
//!   rumqttc's bounded request channel from ever filling (no deadlock between publishing and polling).
//!   Camera states are retained on `{prefix}/{store}/{camera}/state`, so a console that connects later
//!   sees at once which cameras are up; only the newest state per camera is kept waiting.
//! - **Webhooks retry the same alert** (1 s doubling to 60 s, ±20 % jitter, 5 s timeout per attempt)
//!   while later alerts wait in the bounded queue, so the receiver sees alerts in order.
//! - **Shutdown** gives the routes a grace period to flush, then stops and logs what was left.

pub mod config;
mod console;
pub mod filter;
pub mod mqtt;
mod queue;
pub mod webhook;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::event::{Event, EventKind, Phase, Severity};

pub use config::{AlertsConfig, RouteConfig, RouteKind};
pub use filter::{Decision, Filter};
use queue::RouteShared;
pub use queue::QUEUE_CAPACITY;

/// What every route receives about one incident.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Alert {
    /// The incident id (`node/camera/<ms>-<n>`): the same for every phase and every resend.
    pub incident: String,
    pub store: String,
    pub node: String,
    pub camera: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    pub kind: EventKind,
    pub severity: Severity,
    /// Unix ms when the incident started.
    pub started_at_ms: i64,
    /// Unix ms of the record that raised the alert.
    pub at_ms: i64,
    /// People counted, for the kinds that count them (crowding).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub people: Option<u32>,
    /// One human line, e.g. "HIGH exit_without_checkout at camera door, zone exit".
    pub text: String,
    /// The incident in the store UI.
    pub link: String,
    /// The incident's still on the node that keeps it (that node's UI asks for a login first):
    /// a link, never the picture.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence_url: Option<String>,
}

impl Alert {
    /// The alert for an event; `link_base` is the store UI's base URL (`http://host:port`).
    pub fn from_event(e: &Event, link_base: &str) -> Alert {
        let people = e.detail.people;
        let mut text = format!(
            "{} {} at camera {}",
            severity_word(e.severity),
            e.kind.as_str(),
            e.camera
        );
        if let Some(z) = &e.zone {
            text.push_str(&format!(", zone {z}"));
        }
        if let Some(p) = people {
            text.push_str(&format!(", {p} people"));
        }
        Alert {
            incident: e.incident.clone(),
            store: e.store.clone(),
            node: e.node.clone(),
            camera: e.camera.clone(),
            zone: e.zone.clone(),
            kind: e.kind,
            severity: e.severity,
            started_at_ms: e.started_at_ms,
            at_ms: e.at_ms,
            people,
            text,
            link: format!(
                "{}/#/incident/{}",
                link_base.trim_end_matches('/'),
                percent_encode(&e.incident)
            ),
            // A node alerts only for its own cameras, so the evidence is on this node's UI; a UI
            // on plain HTTP shows pictures to nobody but itself, so it gets no link.
            evidence_url: e
                .evidence
                .as_ref()
                .filter(|r| r.node == e.node && link_base.starts_with("https://"))
                .map(|r| format!("{}/evidence/{}", link_base.trim_end_matches('/'), r.id)),
        }
    }
}

/// Whether this node should raise an alert for `e`: its own camera, and the first record of the
/// incident (see the module docs).
pub fn is_alertable(e: &Event, node: &str) -> bool {
    e.node == node && matches!(e.phase, Phase::Start | Phase::Instant)
}

fn severity_word(s: Severity) -> &'static str {
    match s {
        Severity::Info => "INFO",
        Severity::Low => "LOW",
        Severity::Medium => "MEDIUM",
        Severity::High => "HIGH",
        Severity::Critical => "CRITICAL",
    }
}

/// RFC 3986 unreserved characters stay, everything else is %XX (an incident id has slashes).
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Whether a camera is delivering frames; MQTT routes publish it retained.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CameraState {
    pub store: String,
    pub node: String,
    pub camera: String,
    pub online: bool,
    pub fps: f32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_frame_ms: Option<i64>,
}

/// Alerts held back by a route's filter, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FilteredStats {
    pub below_severity: u64,
    pub kind: u64,
    pub outside_hours: u64,
    pub cooldown: u64,
}

/// One route's counters, for metrics.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RouteStats {
    pub name: String,
    pub kind: RouteKind,
    /// Alerts delivered (MQTT: acknowledged by the broker; webhook: answered 2xx).
    pub sent: u64,
    /// Camera states delivered (MQTT).
    pub states_sent: u64,
    /// Failed attempts: connection failures and losses (MQTT), errors and non-2xx answers (webhook).
    pub failed: u64,
    /// Alerts lost: pushed out of a full queue, or still undelivered when the route stopped.
    pub dropped: u64,
    pub filtered: FilteredStats,
    /// Alerts and states waiting or in flight.
    pub queued: usize,
    /// MQTT: connected to the broker; webhook: the last attempt succeeded (false before any).
    pub connected: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AlertsError {
    #[error("invalid alert routes: {}", .0.iter().map(|(f, m)| format!("{f}: {m}")).collect::<Vec<_>>().join("; "))]
    Config(Vec<(String, String)>),
    #[error("alert routes need a Tokio runtime (start them from inside one)")]
    NoRuntime,
    #[error("alert route {route}: {source}")]
    Route {
        route: String,
        #[source]
        source: RouteError,
    },
}

/// Why one route could not be built from its checked configuration: mostly the files it names (a
/// secret, a CA certificate), read again here.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error(transparent)]
    Filter(#[from] filter::FilterError),
    #[error("an mqtt route needs `broker`")]
    NoBroker,
    #[error(transparent)]
    Broker(#[from] config::BrokerError),
    #[error("invalid MQTT client id {0:?}")]
    ClientId(String),
    #[error("{file}: the password is not UTF-8")]
    PasswordEncoding {
        file: String,
        #[source]
        source: std::string::FromUtf8Error,
    },
    #[error("a webhook route needs `url`")]
    NoUrl,
    #[error(transparent)]
    Url(#[from] config::UrlError),
    #[error(transparent)]
    Secret(#[from] config::SecretError),
    #[error(transparent)]
    Tls(#[from] config::TlsError),
}

struct Inner {
    routes: Vec<Arc<RouteShared>>,
    tz: Tz,
    store: String,
    close: watch::Sender<Option<Instant>>,
    tasks: Mutex<Vec<(String, JoinHandle<()>)>>,
}

/// The running routes. Cheap to clone; every clone feeds the same routes.
#[derive(Clone)]
pub struct Alerts {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Alerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Alerts")
            .field("store", &self.inner.store)
            .field("routes", &self.inner.routes.iter().map(|r| &r.name).collect::<Vec<_>>())
            .finish()
    }
}

/// Starts one delivery task per route (on the current Tokio runtime). `tz` is the store's time zone,
/// for the routes' `hours`. With no routes nothing is started and no runtime is needed.
pub fn start(cfg: &AlertsConfig, store: &str, node: &str, tz: Tz) -> Result<Alerts, AlertsError> {
    let problems = cfg.check();
    if !problems.is_empty() {
        return Err(AlertsError::Config(problems));
    }
    let (close_tx, close_rx) = watch::channel(None);
    let mut routes = Vec::new();
    let mut tasks = Vec::new();
    if cfg.route.is_empty() {
        return Ok(Alerts {
            inner: Arc::new(Inner {
                routes,
                tz,
                store: store.to_string(),
                close: close_tx,
                tasks: Mutex::new(tasks),
            }),
        });
    }
    let rt = tokio::runtime::Handle::try_current().map_err(|_| AlertsError::NoRuntime)?;
    // Build every route before spawning any, so a failure leaves nothing running.
    let mut ready = Vec::new();
    for r in &cfg.route {
        let err = |source: RouteError| AlertsError::Route {
            route: r.name.clone(),
            source,
        };
        let filter = Filter::new(r).map_err(|e| err(e.into()))?;
        let shared = Arc::new(RouteShared::new(r.name.clone(), r.kind, filter));
        let task = match r.kind {
            RouteKind::Mqtt => RouteTask::Mqtt(mqtt::MqttRoute::new(r, store, node).map_err(err)?),
            RouteKind::Webhook => RouteTask::Webhook(webhook::WebhookRoute::new(r).map_err(err)?),
            RouteKind::Console => RouteTask::Console(console::ConsoleRoute::new(tz)),
        };
        ready.push((shared, task));
    }
    for (shared, task) in ready {
        let close = close_rx.clone();
        let s = shared.clone();
        let handle = match task {
            RouteTask::Mqtt(m) => rt.spawn(m.run(s, close)),
            RouteTask::Webhook(w) => rt.spawn(w.run(s, close)),
            RouteTask::Console(c) => rt.spawn(c.run(s, close)),
        };
        tracing::info!(route = %shared.name, kind = shared.kind.as_str(), "alert route started");
        tasks.push((shared.name.clone(), handle));
        routes.push(shared);
    }
    Ok(Alerts {
        inner: Arc::new(Inner {
            routes,
            tz,
            store: store.to_string(),
            close: close_tx,
            tasks: Mutex::new(tasks),
        }),
    })
}

enum RouteTask {
    Mqtt(mqtt::MqttRoute),
    Webhook(webhook::WebhookRoute),
    Console(console::ConsoleRoute),
}

use lpmesh_web::clock::now_ms;

impl Alerts {
    /// Offers an alert to every route: each filters it and queues it. Never waits on delivery.
    pub fn submit(&self, alert: Alert) {
        self.submit_at(alert, now_ms());
    }

    /// [`Alerts::submit`] with the filters judging at `now_ms` (tests, replays).
    pub fn submit_at(&self, alert: Alert, now_ms: i64) {
        let closing = self.inner.close.borrow().is_some();
        for r in &self.inner.routes {
            if closing {
                r.count_dropped(1);
                continue;
            }
            let d = r.offer(&alert, now_ms, self.inner.tz);
            tracing::debug!(route = %r.name, incident = %alert.incident, decision = ?d, "alert offered");
        }
        if closing && !self.inner.routes.is_empty() {
            tracing::warn!(incident = %alert.incident, "alert submitted after shutdown began: dropped");
        }
    }

    /// A camera's state; MQTT routes publish it retained (the others ignore it).
    pub fn camera_state(&self, s: CameraState) {
        if self.inner.close.borrow().is_some() {
            return;
        }
        for r in &self.inner.routes {
            if r.kind == RouteKind::Mqtt {
                r.offer_state(s.clone());
            }
        }
    }

    /// Counters of every route, in configuration order.
    pub fn stats(&self) -> Vec<RouteStats> {
        self.inner.routes.iter().map(|r| r.stats()).collect()
    }

    /// Stops accepting alerts, lets the routes deliver what is queued for up to `grace`, then stops
    /// them. What could not be delivered is logged by each route (and counted as dropped).
    pub async fn shutdown(self, grace: Duration) {
        let deadline = Instant::now() + grace;
        let _ = self.inner.close.send(Some(deadline));
        let tasks = std::mem::take(&mut *self.inner.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        // The routes watch the deadline themselves; the margin is for a task that fails to.
        let hard = deadline + Duration::from_millis(500);
        for (name, mut task) in tasks {
            tokio::select! {
                r = &mut task => {
                    if let Err(e) = r {
                        tracing::warn!(route = %name, "alert route task ended abnormally: {e}");
                    }
                }
                _ = tokio::time::sleep_until(hard.into()) => {
                    task.abort();
                    tracing::warn!(route = %name, "alert route did not stop in time: aborted");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Detail;

    fn event() -> Event {
        Event {
            incident: "n1/door/1717416000000-0".into(),
            phase: Phase::Instant,
            store: "shop-1".into(),
            node: "n1".into(),
            camera: "door".into(),
            zone: Some("exit".into()),
            kind: EventKind::ExitWithoutCheckout,
            severity: Severity::High,
            started_at_ms: 1_717_416_000_000,
            at_ms: 1_717_416_000_000,
            ended_at_ms: None,
            track: Some(4),
            bbox: Some([0.1, 0.2, 0.3, 0.4]),
            confidence: 0.9,
            model: "nanodet".into(),
            evidence: None,
            detail: Detail::default(),
        }
    }

    #[test]
    fn an_alert_from_an_event() {
        let a = Alert::from_event(&event(), "http://10.0.0.5:8080/");
        assert_eq!(a.text, "HIGH exit_without_checkout at camera door, zone exit");
        assert_eq!(a.link, "http://10.0.0.5:8080/#/incident/n1%2Fdoor%2F1717416000000-0");
        assert_eq!(a.evidence_url, None);
        let mut with = event();
        let id = crate::event::EvidenceId::random();
        with.evidence = Some(crate::event::EvidenceRef {
            node: "n1".into(),
            id: id.clone(),
        });
        let b = Alert::from_event(&with, "https://10.0.0.5:8443/");
        assert_eq!(b.evidence_url, Some(format!("https://10.0.0.5:8443/evidence/{id}")));
        assert_eq!(
            serde_json::to_value(&b).unwrap()["evidence_url"],
            b.evidence_url.clone().unwrap()
        );
        assert_eq!(Alert::from_event(&with, "http://10.0.0.5:8080/").evidence_url, None);
        assert_eq!(a.camera, "door");
        assert_eq!(a.zone.as_deref(), Some("exit"));
        assert_eq!(a.people, None);
        let js = serde_json::to_value(&a).unwrap();
        assert_eq!(js["kind"], "exit_without_checkout");
        assert_eq!(js["severity"], "high");
        assert_eq!(serde_json::from_value::<Alert>(js).unwrap(), a);

        let mut crowd = event();
        crowd.kind = EventKind::Crowding;
        crowd.severity = Severity::Medium;
        crowd.zone = None;
        crowd.detail.people = Some(7);
        let a = Alert::from_event(&crowd, "http://ui");
        assert_eq!(a.text, "MEDIUM crowding at camera door, 7 people");
        assert_eq!(a.people, Some(7));
    }

    #[test]
    fn a_node_alerts_only_for_its_own_cameras_and_first_records() {
        let mut e = event();
        assert!(is_alertable(&e, "n1"));
        assert!(!is_alertable(&e, "n2"));
        e.phase = Phase::Start;
        assert!(is_alertable(&e, "n1"));
        e.phase = Phase::Update;
        assert!(!is_alertable(&e, "n1"));
        e.phase = Phase::End;
        assert!(!is_alertable(&e, "n1"));
    }

    #[test]
    fn no_routes_needs_no_runtime() {
        let a = start(&AlertsConfig::default(), "s", "n", chrono_tz::UTC).unwrap();
        a.submit(Alert::from_event(&event(), "http://ui"));
        assert!(a.stats().is_empty());
    }

    #[test]
    fn routes_outside_a_runtime_are_an_error_not_a_panic() {
        let cfg = AlertsConfig {
            route: vec![RouteConfig {
                name: "c".into(),
                ..RouteConfig::default()
            }],
        };
        assert!(matches!(
            start(&cfg, "s", "n", chrono_tz::UTC),
            Err(AlertsError::NoRuntime)
        ));
    }

    #[test]
    fn bad_config_is_refused_with_every_problem() {
        let cfg = AlertsConfig {
            route: vec![
                RouteConfig {
                    name: "m".into(),
                    kind: RouteKind::Mqtt,
                    ..RouteConfig::default()
                },
                RouteConfig {
                    name: "w".into(),
                    kind: RouteKind::Webhook,
                    url: Some("ftp://x".into()),
                    ..RouteConfig::default()
                },
            ],
        };
        let Err(AlertsError::Config(p)) = start(&cfg, "s", "n", chrono_tz::UTC) else {
            panic!("expected a config error");
        };
        let fields: Vec<&str> = p.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["alerts.route[0].broker", "alerts.route[1].url"]);
    }

    fn parse(toml_text: &str) -> Result<AlertsConfig, String> {
        toml::from_str(toml_text).map_err(|e| e.to_string())
    }

    #[test]
    fn config_defaults_from_toml() {
        let cfg = parse(
            r#"
            [[route]]
            name = "guards"
            type = "mqtt"
            broker = "10.0.0.2"
            "#,
        )
        .unwrap();
        let r = &cfg.route[0];
        assert_eq!(r.kind, RouteKind::Mqtt);
        assert_eq!(r.topic_prefix, "lpmesh");
        assert_eq!(r.min_severity, Severity::Medium);
        assert_eq!(r.cooldown_secs, 60.0);
        assert!(r.kinds.is_empty() && r.hours.is_empty() && r.client_id.is_none());
        assert!(cfg.check().is_empty(), "{:?}", cfg.check());
        assert_eq!(config::parse_broker("10.0.0.2").unwrap(), ("10.0.0.2".into(), 1883));

        let cfg = parse(
            r#"
            [[route]]
            name = "phone"
            type = "webhook"
            url = "https://hooks.example.com/lp"
            min_severity = "high"
            kinds = ["exit_without_checkout", "after_hours"]
            hours = ["22:00-06:00"]
            cooldown_secs = 0
            "#,
        )
        .unwrap();
        assert_eq!(cfg.route[0].cooldown_secs, 0.0);
        assert_eq!(
            cfg.route[0].kinds,
            [EventKind::ExitWithoutCheckout, EventKind::AfterHours]
        );
        assert!(cfg.check().is_empty(), "{:?}", cfg.check());
    }

    #[test]
    fn unknown_keys_and_types_are_rejected() {
        assert!(parse("[[route]]\nname = \"a\"\ntype = \"console\"\ncolour = \"red\"\n")
            .unwrap_err()
            .contains("colour"));
        assert!(parse("[[route]]\nname = \"a\"\ntype = \"pager\"\n").is_err());
        assert!(parse("[[route]]\nname = \"a\"\n").unwrap_err().contains("type"));
        assert!(parse("[[route]]\nname = \"a\"\ntype = \"console\"\nkinds = [\"theft\"]\n").is_err());
        assert!(parse("routes = []\n").is_err());
    }

    #[test]
    fn config_check_names_each_field() {
        let r = |name: &str, kind: RouteKind| RouteConfig {
            name: name.into(),
            kind,
            ..RouteConfig::default()
        };
        let cfg = AlertsConfig {
            route: vec![
                RouteConfig {
                    broker: Some("broker:notaport".into()),
                    topic_prefix: "lp/#".into(),
                    url: Some("http://x".into()),
                    ..r("a", RouteKind::Mqtt)
                },
                RouteConfig {
                    url: Some("ftp://files".into()),
                    broker: Some("b:1883".into()),
                    hours: vec!["08:00-09:00".into(), "25:00-26:00".into()],
                    ..r("a", RouteKind::Webhook)
                },
                RouteConfig {
                    cooldown_secs: -1.0,
                    client_id: Some("x".into()),
                    ..r("", RouteKind::Console)
                },
                r("w", RouteKind::Webhook),
                RouteConfig {
                    broker: Some("Broker:1883".into()),
                    ..r("m1", RouteKind::Mqtt)
                },
                RouteConfig {
                    broker: Some("broker".into()),
                    ..r("m2", RouteKind::Mqtt)
                },
                RouteConfig {
                    broker: Some("broker".into()),
                    client_id: Some("other".into()),
                    cooldown_secs: f64::NAN,
                    ..r("m3", RouteKind::Mqtt)
                },
                RouteConfig {
                    broker: Some("::1".into()),
                    ..r("m4", RouteKind::Mqtt)
                },
                RouteConfig {
                    broker: Some("[::1]:1884".into()),
                    ..r("m5", RouteKind::Mqtt)
                },
            ],
        };
        let got: Vec<String> = cfg.check().into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            got,
            [
                "alerts.route[0].broker",
                "alerts.route[0].topic_prefix",
                "alerts.route[0].url",
                "alerts.route[1].name",
                "alerts.route[1].url",
                "alerts.route[1].broker",
                "alerts.route[1].hours[1]",
                "alerts.route[2].name",
                "alerts.route[2].client_id",
                "alerts.route[2].cooldown_secs",
                "alerts.route[3].url",
                "alerts.route[5].client_id",
                "alerts.route[6].cooldown_secs",
                "alerts.route[7].broker",
            ]
        );
        assert_eq!(config::parse_broker("[::1]:1884").unwrap(), ("[::1]".into(), 1884));
        assert!(config::parse_broker("mqtt://b:1883").is_err());
        assert!(config::parse_broker("b:0").is_err());
        assert!(AlertsConfig::default().check().is_empty());
    }
}
