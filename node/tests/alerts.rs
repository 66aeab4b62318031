//! Alert routes against real endpoints: a real Mosquitto broker (started per test as a child process)
//! subscribed to with a real MQTT client, and local HTTP receivers (axum) for webhooks.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use lpmesh_node::alerts::{self, Alert, Alerts, AlertsConfig, CameraState, RouteConfig, RouteKind, RouteStats};
use lpmesh_node::event::{Detail, Event, EventKind, Phase, Severity};
use rumqttc::{AsyncClient, Event as MqttEvent, MqttOptions, Packet, QoS};

const STORE: &str = "shop-1";
const NODE: &str = "n1";

// ---------------------------------------------------------------------------------------------
// Helpers

use lpmesh_testkit::TempDir as Dir;

use lpmesh_testkit::free_port;

fn mosquitto_binary() -> PathBuf {
    let fixed = Path::new("/usr/sbin/mosquitto");
    if fixed.is_file() {
        return fixed.to_path_buf();
    }
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            let p = d.join("mosquitto");
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "mosquitto not found (looked at /usr/sbin/mosquitto and on PATH): these tests need a real MQTT \
         broker; install it with scripts/setup.sh (Debian package `mosquitto`)"
    );
}

/// A Mosquitto child process on 127.0.0.1:`port`, killed on drop. With `persistent`, sessions and
/// queued messages survive a restart (saved in its directory on SIGTERM).
struct Mosquitto {
    child: Option<Child>,
    port: u16,
    conf: PathBuf,
    log: PathBuf,
}

impl Mosquitto {
    fn start(dir: &Path, port: u16, persistent: bool) -> Mosquitto {
        let conf = dir.join("mosquitto.conf");
        let log = dir.join("mosquitto.log");
        let mut text = format!("listener {port} 127.0.0.1\nallow_anonymous true\n");
        if persistent {
            text.push_str(&format!("persistence true\npersistence_location {}/\n", dir.display()));
        } else {
            text.push_str("persistence false\n");
        }
        // Started as root, Mosquitto would switch to the `mosquitto` user and could not write here.
        text.push_str("user root\n");
        std::fs::write(&conf, text).unwrap();
        let mut m = Mosquitto {
            child: None,
            port,
            conf,
            log,
        };
        m.spawn();
        m
    }

    /// A Mosquitto with the configuration given (it must listen on 127.0.0.1:`port`).
    fn with_conf(dir: &Path, port: u16, text: &str) -> Mosquitto {
        let conf = dir.join("mosquitto.conf");
        std::fs::write(&conf, format!("{text}user root\npersistence false\n")).unwrap();
        let mut m = Mosquitto {
            child: None,
            port,
            conf,
            log: dir.join("mosquitto.log"),
        };
        m.spawn();
        m
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(mosquitto_binary())
            .arg("-c")
            .arg(&self.conf)
            .arg("-v")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start mosquitto: {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("mosquitto exited ({status}): {}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen on port {} within 10 s: {}",
                self.port,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A clean stop (SIGTERM): a persistent broker writes its sessions to disk.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Gone means not accepting connections any more.
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err(),
            "port {} still accepts connections after mosquitto stopped",
            self.port
        );
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[derive(Clone, Debug)]
struct Msg {
    topic: String,
    payload: Vec<u8>,
    retain: bool,
}

/// A test MQTT subscriber collecting every message it receives.
struct Sub {
    client: AsyncClient,
    msgs: Arc<Mutex<Vec<Msg>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sub {
    async fn connect(port: u16, id: &str, clean: bool, filter: &str) -> Sub {
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(5)).set_clean_session(clean);
        let (client, mut eventloop) = AsyncClient::new(opts, 16);
        client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
        let msgs = Arc::new(Mutex::new(Vec::new()));
        let subscribed = Arc::new(AtomicUsize::new(0));
        let (m, s) = (msgs.clone(), subscribed.clone());
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(MqttEvent::Incoming(Packet::Publish(p))) => m.lock().unwrap().push(Msg {
                        topic: p.topic.clone(),
                        payload: p.payload.to_vec(),
                        retain: p.retain,
                    }),
                    Ok(MqttEvent::Incoming(Packet::SubAck(_))) => {
                        s.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        wait_for(
            &format!("subscriber {id} to be subscribed"),
            Duration::from_secs(5),
            || (subscribed.load(Ordering::SeqCst) > 0).then_some(()),
        )
        .await;
        Sub { client, msgs, task }
    }

    fn on(&self, topic: &str) -> Vec<Msg> {
        self.msgs
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m.topic == topic)
            .cloned()
            .collect()
    }

    fn all(&self) -> Vec<Msg> {
        self.msgs.lock().unwrap().clone()
    }

    /// Disconnects cleanly (a persistent session stays on the broker).
    async fn leave(self) {
        let _ = self.client.disconnect().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.task.abort();
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Polls `f` until it yields, failing the test with `what` at the deadline.
async fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn route_stats(a: &Alerts, name: &str) -> RouteStats {
    a.stats().into_iter().find(|s| s.name == name).unwrap()
}

async fn wait_stats(a: &Alerts, name: &str, what: &str, timeout: Duration, f: impl Fn(&RouteStats) -> bool) {
    wait_for(&format!("route {name}: {what}"), timeout, || {
        let s = route_stats(a, name);
        f(&s).then_some(())
    })
    .await;
}

fn event(n: usize, camera: &str, zone: Option<&str>, kind: EventKind, severity: Severity) -> Event {
    let t = 1_717_416_000_000 + n as i64;
    Event {
        incident: format!("{NODE}/{camera}/{t}-{n}"),
        phase: Phase::Instant,
        store: STORE.into(),
        node: NODE.into(),
        camera: camera.into(),
        zone: zone.map(str::to_string),
        kind,
        severity,
        started_at_ms: t,
        at_ms: t,
        ended_at_ms: None,
        track: Some(n as u64),
        bbox: Some([0.1, 0.2, 0.3, 0.4]),
        confidence: 0.9,
        model: "nanodet".into(),
        evidence: None,
        detail: Detail::default(),
    }
}

fn alert(n: usize, camera: &str, zone: Option<&str>) -> Alert {
    let e = event(n, camera, zone, EventKind::ExitWithoutCheckout, Severity::High);
    assert!(alerts::is_alertable(&e, NODE));
    Alert::from_event(&e, "http://192.168.1.10:8080")
}

fn mqtt_route(name: &str, port: u16) -> RouteConfig {
    RouteConfig {
        name: name.into(),
        kind: RouteKind::Mqtt,
        broker: Some(format!("127.0.0.1:{port}")),
        ..RouteConfig::default()
    }
}

fn webhook_route(name: &str, url: &str) -> RouteConfig {
    RouteConfig {
        name: name.into(),
        kind: RouteKind::Webhook,
        url: Some(url.into()),
        ..RouteConfig::default()
    }
}

/// Logs of the routes, when wanted: `LPMESH_TEST_LOG=lpmesh_node::alerts=debug`.
fn init_logs() {
    if std::env::var_os("LPMESH_TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env("LPMESH_TEST_LOG"))
            .with_test_writer()
            .try_init();
    }
}

fn start(routes: Vec<RouteConfig>) -> Alerts {
    init_logs();
    alerts::start(&AlertsConfig { route: routes }, STORE, NODE, chrono_tz::UTC).unwrap()
}

/// An accepted request: content type and body.
type Accepted = (String, Vec<u8>);

/// A local webhook receiver: answers 500 to the first `fail_first` requests, then 200.
#[derive(Clone)]
struct Receiver {
    url: String,
    fail_first: usize,
    attempts: Arc<AtomicUsize>,
    got: Arc<Mutex<Vec<Accepted>>>,
}

impl Receiver {
    async fn start(fail_first: usize) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let r = Receiver {
            url: format!("http://{addr}/hooks/lp"),
            fail_first,
            attempts: Arc::new(AtomicUsize::new(0)),
            got: Arc::new(Mutex::new(Vec::new())),
        };
        let app = axum::Router::new()
            .route("/hooks/lp", axum::routing::post(hook))
            .with_state(r.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        r
    }

    fn alerts(&self) -> Vec<Alert> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|(_, b)| serde_json::from_slice(b).unwrap())
            .collect()
    }

    fn attempts(&self) -> usize {
        self.attempts.load(Ordering::SeqCst)
    }
}

async fn hook(State(r): State<Receiver>, headers: HeaderMap, body: axum::body::Bytes) -> StatusCode {
    let n = r.attempts.fetch_add(1, Ordering::SeqCst);
    if n < r.fail_first {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    r.got.lock().unwrap().push((ct, body.to_vec()));
    StatusCode::OK
}

// ---------------------------------------------------------------------------------------------
// Tests

/// (a) An alert arrives on `{prefix}/{store}/{camera}/{kind}` with the alert as JSON; a camera state is
/// retained, so a subscriber that connects afterwards still receives it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_alert_topic_payload_and_retained_camera_state() {
    let dir = Dir::new("a");
    let port = free_port();
    let _broker = Mosquitto::start(&dir.0, port, false);
    let sub = Sub::connect(port, "test-sub-a", true, "lpmesh/#").await;
    let a = start(vec![mqtt_route("guards", port)]);

    let al = alert(1, "door", Some("exit"));
    assert_eq!(al.text, "HIGH exit_without_checkout at camera door, zone exit");
    a.submit(al.clone());
    let topic = "lpmesh/shop-1/door/exit_without_checkout";
    let got = wait_for("the alert on its topic", Duration::from_secs(10), || {
        sub.on(topic).into_iter().next()
    })
    .await;
    assert!(!got.retain, "alerts are not retained");
    let decoded: Alert = serde_json::from_slice(&got.payload).unwrap();
    assert_eq!(decoded, al);
    let js: serde_json::Value = serde_json::from_slice(&got.payload).unwrap();
    assert_eq!(js["kind"], "exit_without_checkout");
    assert_eq!(
        js["link"],
        "http://192.168.1.10:8080/#/incident/n1%2Fdoor%2F1717416000001-1"
    );

    let state = CameraState {
        store: STORE.into(),
        node: NODE.into(),
        camera: "door".into(),
        online: true,
        fps: 9.5,
        last_frame_ms: Some(1_717_416_000_500),
    };
    a.camera_state(state.clone());
    wait_stats(
        &a,
        "guards",
        "the camera state acknowledged",
        Duration::from_secs(10),
        |s| s.states_sent == 1,
    )
    .await;

    let late = Sub::connect(port, "test-sub-a-late", true, "lpmesh/+/+/state").await;
    let st = wait_for(
        "the retained state for a late subscriber",
        Duration::from_secs(10),
        || late.on("lpmesh/shop-1/door/state").into_iter().next(),
    )
    .await;
    assert!(st.retain, "a late subscriber gets the state as a retained message");
    assert_eq!(serde_json::from_slice::<CameraState>(&st.payload).unwrap(), state);
    assert!(late.on(topic).is_empty());

    let s = route_stats(&a, "guards");
    assert_eq!((s.sent, s.states_sent, s.dropped, s.queued), (1, 1, 0, 0), "{s:?}");
    assert!(s.connected);
    assert_eq!(sub.on(topic).len(), 1);
    a.shutdown(Duration::from_secs(2)).await;
}

/// (b) 20 identical events within the cooldown are one MQTT message; another zone still gets its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_within_the_cooldown_is_one_mqtt_message() {
    let dir = Dir::new("b");
    let port = free_port();
    let _broker = Mosquitto::start(&dir.0, port, false);
    let sub = Sub::connect(port, "test-sub-b", true, "lpmesh/#").await;
    let a = start(vec![mqtt_route("guards", port)]);

    for n in 0..20 {
        a.submit(alert(n, "door", Some("exit")));
    }
    wait_stats(&a, "guards", "one alert acknowledged", Duration::from_secs(10), |s| {
        s.sent == 1
    })
    .await;
    // Give anything extra time to show up.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let topic = "lpmesh/shop-1/door/exit_without_checkout";
    let msgs = sub.on(topic);
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    let first: Alert = serde_json::from_slice(&msgs[0].payload).unwrap();
    assert_eq!(
        first.incident,
        alert(0, "door", Some("exit")).incident,
        "the first of the burst goes out"
    );
    let s = route_stats(&a, "guards");
    assert_eq!((s.sent, s.filtered.cooldown), (1, 19), "{s:?}");

    a.submit(alert(20, "door", Some("entrance")));
    wait_for("the other zone's alert", Duration::from_secs(10), || {
        (sub.on(topic).len() == 2).then_some(())
    })
    .await;
    a.shutdown(Duration::from_secs(2)).await;
}

/// (c) With the broker down, alerts wait and are delivered when it is back, while a webhook route in the
/// same `Alerts` keeps delivering throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_loses_no_alerts_and_does_not_hold_up_webhooks() {
    let dir = Dir::new("c");
    let port = free_port();
    // Persistent, so the guard's session (subscription and queued messages) survives the outage: the
    // proof of delivery does not race the route's reconnect.
    let mut broker = Mosquitto::start(&dir.0, port, true);
    let guard = Sub::connect(port, "test-guard-c", false, "lpmesh/#").await;
    guard.leave().await;

    let hook = Receiver::start(0).await;
    let a = start(vec![
        RouteConfig {
            cooldown_secs: 0.0,
            ..mqtt_route("guards", port)
        },
        RouteConfig {
            cooldown_secs: 0.0,
            ..webhook_route("phone", &hook.url)
        },
    ]);
    let mut sent = vec![alert(0, "door", Some("exit"))];
    a.submit(sent[0].clone());
    wait_stats(
        &a,
        "guards",
        "the first alert acknowledged",
        Duration::from_secs(10),
        |s| s.sent == 1,
    )
    .await;

    broker.stop();
    wait_stats(
        &a,
        "guards",
        "the route noticing the broker is gone",
        Duration::from_secs(10),
        |s| !s.connected,
    )
    .await;
    let t = Instant::now();
    for n in 1..=5 {
        let al = alert(n, &format!("cam{n}"), None);
        a.submit(al.clone());
        sent.push(al);
    }
    assert!(
        t.elapsed() < Duration::from_millis(50),
        "submit waited: {:?}",
        t.elapsed()
    );
    wait_for(
        "the webhook to get every alert during the outage",
        Duration::from_secs(10),
        || (hook.alerts().len() == 6).then_some(()),
    )
    .await;
    assert_eq!(hook.alerts(), sent);
    let s = route_stats(&a, "guards");
    assert!(!s.connected, "{s:?}");
    assert_eq!((s.sent, s.queued, s.dropped), (1, 5, 0), "{s:?}");
    assert!(s.failed >= 1, "{s:?}");

    // Let the route fail a few reconnects (backoff) before the broker returns.
    wait_stats(
        &a,
        "guards",
        "reconnect attempts failing",
        Duration::from_secs(10),
        |s| s.failed >= 3,
    )
    .await;
    assert_eq!(hook.alerts().len(), 6);
    broker.spawn();
    wait_stats(
        &a,
        "guards",
        "the 5 waiting alerts acknowledged after the broker returned",
        Duration::from_secs(20),
        |s| s.sent == 6,
    )
    .await;
    let s = route_stats(&a, "guards");
    assert!(s.connected && s.queued == 0 && s.dropped == 0, "{s:?}");

    // The guard comes back to its session and finds everything, in order.
    let guard = Sub::connect(port, "test-guard-c", false, "lpmesh/#").await;
    let got = wait_for("the guard to receive all 6 alerts", Duration::from_secs(10), || {
        let msgs = guard.all();
        let incidents: Vec<String> = msgs
            .iter()
            .filter_map(|m| serde_json::from_slice::<Alert>(&m.payload).ok())
            .map(|al| al.incident)
            .collect();
        sent.iter().all(|al| incidents.contains(&al.incident)).then_some(msgs)
    })
    .await;
    for al in &sent {
        let topic = format!("lpmesh/shop-1/{}/exit_without_checkout", al.camera);
        let m = got
            .iter()
            .find(|m| m.topic == topic && serde_json::from_slice::<Alert>(&m.payload).unwrap() == *al);
        assert!(m.is_some(), "{} missing on {topic}: {got:?}", al.incident);
    }
    assert_eq!(route_stats(&a, "phone").sent, 6);
    a.shutdown(Duration::from_secs(2)).await;
}

/// (c') A broker that is not up when the node starts: alerts wait (the queue keeps the newest 256 of 300)
/// and all those are acknowledged once it comes up; many at once go through the publish window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_down_at_start_gets_the_waiting_alerts_when_it_comes_up() {
    let dir = Dir::new("c2");
    let port = free_port();
    let a = start(vec![RouteConfig {
        cooldown_secs: 0.0,
        ..mqtt_route("guards", port)
    }]);
    let t = Instant::now();
    for n in 0..300 {
        a.submit(alert(n, &format!("cam{}", n % 7), None));
    }
    assert!(
        t.elapsed() < Duration::from_millis(100),
        "300 submits took {:?}",
        t.elapsed()
    );
    wait_stats(&a, "guards", "connect attempts failing", Duration::from_secs(10), |s| {
        s.failed >= 2
    })
    .await;
    let s = route_stats(&a, "guards");
    assert_eq!(
        (s.sent, s.queued, s.dropped, s.connected),
        (0, alerts::QUEUE_CAPACITY, 300 - alerts::QUEUE_CAPACITY as u64, false),
        "{s:?}"
    );

    let _broker = Mosquitto::start(&dir.0, port, false);
    wait_stats(
        &a,
        "guards",
        "every queued alert acknowledged",
        Duration::from_secs(20),
        |s| s.sent == alerts::QUEUE_CAPACITY as u64,
    )
    .await;
    let s = route_stats(&a, "guards");
    assert!(s.connected && s.queued == 0, "{s:?}");
    a.shutdown(Duration::from_secs(2)).await;
}

/// (d) Webhooks: the JSON alert is POSTed; a receiver failing twice gets the alert on the third attempt;
/// meanwhile `submit` returns at once and the healthy route delivers everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_deliver_json_and_retry_without_blocking_anyone() {
    let good = Receiver::start(0).await;
    let flaky = Receiver::start(2).await;
    let a = start(vec![
        RouteConfig {
            cooldown_secs: 0.0,
            ..webhook_route("ok", &good.url)
        },
        RouteConfig {
            cooldown_secs: 0.0,
            ..webhook_route("flaky", &flaky.url)
        },
    ]);

    let first = alert(0, "door", Some("exit"));
    a.submit(first.clone());
    wait_for("the good receiver's first alert", Duration::from_secs(5), || {
        good.got.lock().unwrap().first().cloned()
    })
    .await;
    let (ct, body) = good.got.lock().unwrap()[0].clone();
    assert_eq!(ct, "application/json");
    assert_eq!(serde_json::from_slice::<Alert>(&body).unwrap(), first);

    wait_for(
        "the flaky receiver's first (failed) attempt",
        Duration::from_secs(5),
        || (flaky.attempts() >= 1).then_some(()),
    )
    .await;
    let t = Instant::now();
    let mut more = Vec::new();
    for n in 1..=100 {
        let al = alert(n, "aisle", Some("shelf"));
        more.push(al.clone());
        a.submit(al);
    }
    let took = t.elapsed();
    assert!(took < Duration::from_millis(50), "100 submits took {took:?}");

    wait_for(
        "the good receiver to get all 101 alerts",
        Duration::from_secs(10),
        || (good.alerts().len() == 101).then_some(()),
    )
    .await;
    // Still retrying (the third attempt comes ~3 s after the first): the healthy route did not wait.
    assert!(flaky.got.lock().unwrap().is_empty(), "flaky receiver already succeeded");
    assert!(flaky.attempts() <= 2);
    let s = route_stats(&a, "flaky");
    assert!(!s.connected && s.queued == 101, "{s:?}");

    wait_for(
        "the flaky receiver to get all 101 alerts",
        Duration::from_secs(15),
        || (flaky.alerts().len() == 101).then_some(()),
    )
    .await;
    assert_eq!(flaky.attempts(), 103, "2 failures, then one attempt per alert");
    let mut expected = vec![first];
    expected.extend(more);
    assert_eq!(flaky.alerts(), expected, "in order, the failed one first");
    assert_eq!(good.alerts(), expected);
    let s = route_stats(&a, "flaky");
    assert_eq!((s.sent, s.failed, s.dropped, s.queued), (101, 2, 0, 0), "{s:?}");
    assert!(s.connected);
    a.shutdown(Duration::from_secs(2)).await;
}

/// Shutdown flushes what it can within the grace period, then stops even with a dead route; filtering
/// is counted per reason; the console route prints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_then_stops_within_the_grace_period() {
    let good = Receiver::start(0).await;
    let dead = format!("http://127.0.0.1:{}/nobody", free_port());
    let a = start(vec![
        webhook_route("ok", &good.url),
        webhook_route("dead", &dead),
        RouteConfig {
            name: "screen".into(),
            kind: RouteKind::Console,
            kinds: vec![EventKind::ExitWithoutCheckout],
            ..RouteConfig::default()
        },
    ]);
    for n in 0..3 {
        a.submit(alert(n, &format!("cam{n}"), None));
    }
    let low = Alert::from_event(
        &event(9, "cam0", None, EventKind::Loitering, Severity::Low),
        "http://ui",
    );
    a.submit(low);
    let handle = a.clone();
    let t = Instant::now();
    a.shutdown(Duration::from_millis(800)).await;
    let took = t.elapsed();
    assert!(took < Duration::from_millis(1500), "shutdown took {took:?}");
    assert_eq!(good.alerts().len(), 3);

    let ok = route_stats(&handle, "ok");
    assert_eq!((ok.sent, ok.dropped, ok.filtered.below_severity), (3, 0, 1), "{ok:?}");
    let dead = route_stats(&handle, "dead");
    assert_eq!((dead.sent, dead.dropped, dead.queued), (0, 3, 0), "{dead:?}");
    assert!(dead.failed >= 1);
    let screen = route_stats(&handle, "screen");
    assert_eq!((screen.sent, screen.filtered.below_severity), (3, 1), "{screen:?}");

    // After shutdown, nothing is accepted (and that is counted).
    handle.submit(alert(10, "cam9", None));
    assert_eq!(route_stats(&handle, "ok").dropped, 1);
}

/// Each request's headers and body.
type Received = Arc<Mutex<Vec<(HeaderMap, Vec<u8>)>>>;

/// Receives webhooks over https with a certificate of its own CA, keeping each request's headers.
struct TlsReceiver {
    url: String,
    ca_pem: PathBuf,
    got: Received,
    _dir: lpmesh_testkit::TempDir,
}

async fn tls_receiver() -> TlsReceiver {
    let dir = lpmesh_testkit::TempDir::new("hook-tls").into_path();
    let cert = lpmesh_hq::tls::load_or_create_cert(&dir, None, None, &["127.0.0.1".to_string()]).unwrap();
    let ca_pem = dir.join("receiver-ca.pem");
    std::fs::write(&ca_pem, &cert.cert_pem).unwrap();
    let got: Received = Arc::default();
    let keep = got.clone();
    let app = axum::Router::new().route(
        "/hooks/lp",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let keep = keep.clone();
            async move {
                keep.lock().unwrap().push((headers, body.to_vec()));
                StatusCode::OK
            }
        }),
    );
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls = axum_server::tls_rustls::RustlsConfig::from_pem(cert.cert_pem.clone(), cert.key_pem.clone())
        .await
        .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum_server::from_tcp_rustls(listener, tls)
            .unwrap()
            .serve(app.into_make_service())
            .await;
    });
    TlsReceiver {
        url: format!("https://127.0.0.1:{}/hooks/lp", addr.port()),
        ca_pem,
        got,
        _dir: lpmesh_testkit::TempDir(dir),
    }
}

/// A security team's receiver: https with its own CA, and every alert signed with the shared secret
/// over its time and body; a route that does not trust that CA delivers nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_signed_and_reach_an_https_receiver_of_its_own_ca() {
    let rx = tls_receiver().await;
    let secret_file = rx.ca_pem.with_file_name("hook.secret");
    std::fs::write(&secret_file, "  3f1b9c0e8a7d6c5b4a392817f6e5d4c3\n").unwrap();
    let a = start(vec![
        RouteConfig {
            cooldown_secs: 0.0,
            secret_file: Some(secret_file.display().to_string()),
            ca_file: Some(rx.ca_pem.display().to_string()),
            ..webhook_route("signed", &rx.url)
        },
        RouteConfig {
            cooldown_secs: 0.0,
            ..webhook_route("system-roots", &rx.url)
        },
    ]);
    let sent = alert(0, "door", Some("exit"));
    a.submit(sent.clone());
    let (headers, body) = wait_for("the signed alert", Duration::from_secs(10), || {
        rx.got.lock().unwrap().first().cloned()
    })
    .await;
    assert_eq!(serde_json::from_slice::<Alert>(&body).unwrap(), sent);
    let at: i64 = headers[lpmesh_node::alerts::webhook::TIMESTAMP_HEADER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((chrono::Utc::now().timestamp() - at).abs() < 60);
    let sig = headers[lpmesh_node::alerts::webhook::SIGNATURE_HEADER]
        .to_str()
        .unwrap();
    // What the receiver computes with the secret (trimmed as the node trims it).
    let secret = b"3f1b9c0e8a7d6c5b4a392817f6e5d4c3";
    assert_eq!(sig, lpmesh_node::alerts::webhook::signature(secret, at, &body));
    assert_ne!(
        sig,
        lpmesh_node::alerts::webhook::signature(secret, at + 1, &body),
        "bound to its time"
    );
    assert_ne!(
        sig,
        lpmesh_node::alerts::webhook::signature(b"another secret, as long", at, &body)
    );
    let mut tampered = body.clone();
    tampered[2] ^= 1;
    assert_ne!(
        sig,
        lpmesh_node::alerts::webhook::signature(secret, at, &tampered),
        "bound to its body"
    );
    // The route that trusts only the system's CAs refused the receiver's certificate.
    wait_for("the untrusting route to fail", Duration::from_secs(10), || {
        (route_stats(&a, "system-roots").failed > 0).then_some(())
    })
    .await;
    assert_eq!(route_stats(&a, "system-roots").sent, 0);
    assert_eq!(rx.got.lock().unwrap().len(), 1, "only the signed route delivered");
}

#[test]
fn a_webhook_secret_that_is_short_missing_or_for_another_route_kind_is_a_config_error() {
    let dir = lpmesh_testkit::TempDir::new("hook-cfg").into_path();
    let short = dir.join("short");
    std::fs::write(&short, "letmein").unwrap();
    let problems = |r: RouteConfig| AlertsConfig { route: vec![r] }.check();
    let fields = |r: RouteConfig| problems(r).into_iter().map(|(f, _)| f).collect::<Vec<_>>().join(" ");
    let hook = webhook_route("h", "https://hooks.example/lp");
    assert!(fields(RouteConfig {
        secret_file: Some(short.display().to_string()),
        ..hook.clone()
    })
    .contains("secret_file"));
    assert!(fields(RouteConfig {
        secret_file: Some("/nonexistent/secret".into()),
        ..hook.clone()
    })
    .contains("secret_file"));
    assert!(fields(RouteConfig {
        ca_file: Some("/x.pem".into()),
        ..webhook_route("p", "http://10.0.0.9/lp")
    })
    .contains("ca_file"));
    assert!(fields(RouteConfig {
        secret_file: Some(short.display().to_string()),
        ..mqtt_route("m", 1883)
    })
    .contains("secret_file"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// MQTT as a security team runs it: TLS with the store's CA and a password file. A Mosquitto whose TLS
/// listener admits only the user in its password file (and a plain loopback listener for the test's
/// subscriber): the route with the password over TLS delivers; one without a password is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_over_tls_with_a_password_delivers_and_a_route_without_one_is_refused() {
    let dir = lpmesh_testkit::TempDir::new("mqtt-tls").into_path();
    let _cleanup = lpmesh_testkit::TempDir(dir.clone());
    let cert = lpmesh_hq::tls::load_or_create_cert(&dir, None, None, &["127.0.0.1".to_string()]).unwrap();
    let (cert_file, key_file) = (dir.join("broker.pem"), dir.join("broker.key"));
    std::fs::write(&cert_file, &cert.cert_pem).unwrap();
    std::fs::write(&key_file, &cert.key_pem).unwrap();
    let passwd = dir.join("passwd");
    let made = Command::new("mosquitto_passwd")
        .arg("-b")
        .arg("-c")
        .arg(&passwd)
        .args(["lpmesh-front", "broker password 1"])
        .output()
        .expect("mosquitto_passwd (Debian package mosquitto)");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let password_file = dir.join("front.password");
    std::fs::write(&password_file, "broker password 1\n").unwrap();
    let (plain, tls) = (free_port(), free_port());
    let _broker = Mosquitto::with_conf(
        &dir,
        plain,
        &format!(
            "per_listener_settings true\nlistener {plain} 127.0.0.1\nallow_anonymous true\n\
             listener {tls} 127.0.0.1\ncertfile {}\nkeyfile {}\nallow_anonymous false\npassword_file {}\n",
            cert_file.display(),
            key_file.display(),
            passwd.display()
        ),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", tls)).is_err() {
        assert!(Instant::now() < deadline, "the TLS listener did not open");
        std::thread::sleep(Duration::from_millis(50));
    }
    let sub = Sub::connect(plain, "watcher", true, "lpmesh/#").await;
    let secured = RouteConfig {
        cooldown_secs: 0.0,
        tls: true,
        ca_file: Some(cert_file.display().to_string()),
        username: Some("lpmesh-front".into()),
        password_file: Some(password_file.display().to_string()),
        client_id: Some("secured".into()),
        ..mqtt_route("secured", tls)
    };
    let anonymous = RouteConfig {
        cooldown_secs: 0.0,
        tls: true,
        ca_file: Some(cert_file.display().to_string()),
        client_id: Some("anonymous".into()),
        ..mqtt_route("anonymous", tls)
    };
    assert!(AlertsConfig {
        route: vec![secured.clone(), anonymous.clone()]
    }
    .check()
    .is_empty());
    let a = start(vec![secured, anonymous]);
    a.submit(alert(0, "door", Some("exit")));
    wait_for("the alert over TLS", Duration::from_secs(10), || {
        (!sub.all().is_empty()).then_some(())
    })
    .await;
    wait_for("the anonymous route to be refused", Duration::from_secs(10), || {
        (route_stats(&a, "anonymous").failed > 0).then_some(())
    })
    .await;
    assert_eq!(route_stats(&a, "anonymous").sent, 0);
    assert_eq!(route_stats(&a, "secured").sent, 1);
    assert_eq!(sub.all().len(), 1, "one alert, from the route with the password");
    // A password to a broker across the network without TLS is a configuration error.
    let clear = RouteConfig {
        broker: Some("10.0.0.30:1883".into()),
        username: Some("lpmesh-front".into()),
        password_file: Some(password_file.display().to_string()),
        ..mqtt_route("clear", 1883)
    };
    let problems = AlertsConfig { route: vec![clear] }.check();
    assert!(problems.iter().any(|(f, _)| f.ends_with(".tls")), "{problems:?}");
}
