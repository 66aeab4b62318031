//! The MQTT route: QoS 1 publishes, at-least-once across broker outages.
//!
//! Each connection is a fresh rumqttc client and event loop with a clean session. rumqttc would
//! otherwise keep state across reconnects (its pending list, buffered events, packet ids), and with a
//! clean session it drops its pending publishes anyway; owning the resend here means exactly one place
//! decides what was delivered: an alert or state is done when its PubAck arrives, and everything
//! unacknowledged when a connection ends is published again on the next one.
//!
//! The event loop's `poll` future is kept alive across wake-ups (new alerts) instead of being dropped
//! and recreated inside `select!`, so no half-written packet is ever abandoned.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};

use super::config::{parse_broker, RouteConfig};
use super::queue::{close_deadline, pause, sleep_until_opt, CloseSignal, RouteShared};
use super::RouteError;
use super::{Alert, CameraState};
use crate::backoff::Backoff;

/// Publishes outstanding (issued, not yet acknowledged) at once. Far below rumqttc's in-flight limit
/// (100), so packet ids never collide, and below the request channel's capacity, so `try_publish`
/// never finds it full.
pub const WINDOW: usize = 8;
const REQUEST_CAPACITY: usize = WINDOW * 2;
const KEEP_ALIVE: Duration = Duration::from_secs(10);
/// An alert is well under 1 KiB; the bound only protects against a broker sending something huge.
const MAX_PACKET: usize = 64 * 1024;

/// The MQTT route before it runs.
pub struct MqttRoute {
    opts: MqttOptions,
    prefix: String,
    broker: String,
}

enum Item {
    Alert(Alert),
    State(CameraState),
}

/// An item with its place in the order it was first taken, so resends keep that order.
struct Held {
    seq: u64,
    item: Item,
}

/// What one route task holds between its queue and the broker. At most [`WINDOW`] items in total.
#[derive(Default)]
struct Session {
    connected: bool,
    /// Taken from the queue but not handed to rumqttc yet (after a reconnect: the unacknowledged).
    retry: VecDeque<Held>,
    /// Handed to rumqttc, packet id not known yet; rumqttc reports ids in the order it sends.
    issued: VecDeque<Held>,
    /// Sent, waiting for the PubAck.
    inflight: HashMap<u16, Held>,
    seq: u64,
}

impl Session {
    fn outstanding(&self) -> usize {
        self.issued.len() + self.inflight.len()
    }

    fn held(&self) -> usize {
        self.retry.len() + self.outstanding()
    }

    fn take(&mut self, item: Item) -> Held {
        self.seq += 1;
        Held { seq: self.seq, item }
    }

    /// The connection ended: whatever was not acknowledged goes out again, oldest first.
    fn requeue_unacked(&mut self) {
        let mut all: Vec<Held> = self.retry.drain(..).collect();
        all.extend(self.issued.drain(..));
        all.extend(self.inflight.drain().map(|(_, h)| h));
        all.sort_by_key(|h| h.seq);
        self.retry = all.into();
    }

    fn alerts_held(&self) -> usize {
        let is_alert = |h: &&Held| matches!(h.item, Item::Alert(_));
        self.retry.iter().filter(is_alert).count()
            + self.issued.iter().filter(is_alert).count()
            + self.inflight.values().filter(is_alert).count()
    }
}

/// One topic level from a name: MQTT separators and wildcards would change the topic's shape.
fn level(s: &str) -> String {
    if s.is_empty() {
        return "_".into();
    }
    s.chars()
        .map(|c| if matches!(c, '/' | '+' | '#' | '\0') { '_' } else { c })
        .collect()
}

enum Outcome {
    Event(Result<Event, ConnectionError>),
    Done,
}

impl MqttRoute {
    pub fn new(r: &RouteConfig, _store: &str, node: &str) -> Result<MqttRoute, RouteError> {
        let broker = r.broker.clone().ok_or(RouteError::NoBroker)?;
        let (host, port) = parse_broker(&broker)?;
        let id = r.client_id.clone().unwrap_or_else(|| format!("lpmesh-{node}"));
        if id.is_empty() || id.starts_with(' ') {
            return Err(RouteError::ClientId(id));
        }
        let mut opts = MqttOptions::new(id, host, port);
        opts.set_keep_alive(KEEP_ALIVE)
            .set_clean_session(true)
            .set_max_packet_size(MAX_PACKET, MAX_PACKET);
        if let (Some(user), Some(file)) = (&r.username, &r.password_file) {
            let password = super::config::read_secret(file, 1)?;
            let password = String::from_utf8(password).map_err(|source| RouteError::PasswordEncoding {
                file: file.clone(),
                source,
            })?;
            opts.set_credentials(user.clone(), password);
        }
        if r.tls {
            let tls = super::config::client_tls(r.ca_file.as_deref())?;
            opts.set_transport(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(
                tls,
            )));
        }
        Ok(MqttRoute {
            opts,
            prefix: r.topic_prefix.clone(),
            broker,
        })
    }

    /// `{prefix}/{store}/{camera}/{kind}` for alerts, `{prefix}/{store}/{camera}/state` (retained) for states.
    fn topic(&self, item: &Item) -> (String, bool) {
        match item {
            Item::Alert(a) => (
                format!(
                    "{}/{}/{}/{}",
                    self.prefix,
                    level(&a.store),
                    level(&a.camera),
                    a.kind.as_str()
                ),
                false,
            ),
            Item::State(s) => (
                format!("{}/{}/{}/state", self.prefix, level(&s.store), level(&s.camera)),
                true,
            ),
        }
    }

    /// Hands queued work to rumqttc while the window has room. Never waits.
    fn issue(&self, client: &AsyncClient, shared: &RouteShared, s: &mut Session) {
        while s.outstanding() < WINDOW {
            let held = if let Some(h) = s.retry.pop_front() {
                h
            } else if let Some(a) = shared.pop_alert() {
                s.take(Item::Alert(a))
            } else if let Some(st) = shared.pop_state() {
                s.take(Item::State(st))
            } else {
                break;
            };
            let payload = match &held.item {
                Item::Alert(a) => serde_json::to_vec(a),
                Item::State(st) => serde_json::to_vec(st),
            };
            let payload = match payload {
                Ok(p) => p,
                Err(e) => {
                    // Cannot happen for these plain types; if it did, retrying would not help.
                    tracing::error!(route = %shared.name, "cannot encode an alert: {e}");
                    shared.count_dropped(1);
                    continue;
                }
            };
            let (topic, retain) = self.topic(&held.item);
            match client.try_publish(topic, QoS::AtLeastOnce, retain, payload) {
                Ok(()) => s.issued.push_back(held),
                Err(e) => {
                    tracing::debug!(route = %shared.name, "rumqttc request channel refused a publish: {e}");
                    s.retry.push_front(held);
                    break;
                }
            }
        }
    }

    pub async fn run(self, shared: Arc<RouteShared>, mut close: CloseSignal) {
        let mut s = Session::default();
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30), 0.2, rand::random());
        'connection: loop {
            let (client, mut eventloop) = AsyncClient::new(self.opts.clone(), REQUEST_CAPACITY);
            loop {
                let outcome = self
                    .next_outcome(&client, &mut eventloop, &shared, &mut s, &mut close)
                    .await;
                shared.held.store(s.held(), Ordering::Relaxed);
                match outcome {
                    Outcome::Done => {
                        if s.connected {
                            disconnect(&client, &mut eventloop).await;
                        }
                        break 'connection;
                    }
                    Outcome::Event(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                        s.connected = true;
                        shared.connected.store(true, Ordering::Relaxed);
                        let waiting = s.held() + shared.queue_len();
                        tracing::info!(
                            route = %shared.name, broker = %self.broker, attempts = backoff.attempts(), waiting,
                            "connected to the MQTT broker"
                        );
                        backoff.reset();
                    }
                    Outcome::Event(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => {
                        if let Some(h) = s.issued.pop_front() {
                            s.inflight.insert(pkid, h);
                        }
                    }
                    Outcome::Event(Ok(Event::Incoming(Packet::PubAck(ack)))) => {
                        match s.inflight.remove(&ack.pkid).map(|h| h.item) {
                            Some(Item::Alert(a)) => {
                                shared.sent.fetch_add(1, Ordering::Relaxed);
                                tracing::debug!(route = %shared.name, incident = %a.incident, "alert acknowledged");
                            }
                            Some(Item::State(_)) => {
                                shared.states_sent.fetch_add(1, Ordering::Relaxed);
                            }
                            None => {}
                        }
                    }
                    Outcome::Event(Ok(_)) => {}
                    Outcome::Event(Err(e)) => {
                        let was_connected = s.connected;
                        s.connected = false;
                        shared.connected.store(false, Ordering::Relaxed);
                        shared.failed.fetch_add(1, Ordering::Relaxed);
                        s.requeue_unacked();
                        shared.held.store(s.held(), Ordering::Relaxed);
                        let delay = backoff.next_delay();
                        if was_connected {
                            tracing::warn!(route = %shared.name, broker = %self.broker, "lost the MQTT broker: {e}; reconnecting");
                        } else if backoff.attempts() == 1 {
                            tracing::warn!(
                                route = %shared.name, broker = %self.broker,
                                "cannot reach the MQTT broker: {e}; retrying with backoff, alerts wait in the queue"
                            );
                        } else {
                            tracing::debug!(route = %shared.name, "MQTT connect failed again: {e}; next in {delay:?}");
                        }
                        // The old event loop and its socket go; the next connection starts clean.
                        drop(eventloop);
                        if pause(delay, &mut close).await {
                            break 'connection;
                        }
                        continue 'connection;
                    }
                }
            }
        }
        shared.connected.store(false, Ordering::Relaxed);
        let mut left = s.alerts_held();
        while shared.pop_alert().is_some() {
            left += 1;
        }
        while shared.pop_state().is_some() {}
        shared.held.store(0, Ordering::Relaxed);
        if left > 0 {
            shared.count_dropped(left as u64);
            tracing::warn!(route = %shared.name, undelivered = left, "MQTT alert route stopped with alerts undelivered");
        } else {
            tracing::info!(route = %shared.name, "MQTT alert route stopped");
        }
    }

    /// Polls the event loop until it yields, issuing new work whenever the route is woken meanwhile.
    async fn next_outcome(
        &self,
        client: &AsyncClient,
        eventloop: &mut EventLoop,
        shared: &RouteShared,
        s: &mut Session,
        close: &mut CloseSignal,
    ) -> Outcome {
        let poll = eventloop.poll();
        tokio::pin!(poll);
        loop {
            if s.connected {
                self.issue(client, shared, s);
            }
            shared.held.store(s.held(), Ordering::Relaxed);
            let deadline = close_deadline(close);
            if let Some(d) = deadline {
                let flushed = s.held() == 0 && shared.queue_len() == 0 && shared.states_len() == 0;
                if flushed || Instant::now() >= d {
                    return Outcome::Done;
                }
            }
            let sender_alive = close.has_changed().is_ok();
            tokio::select! {
                ev = &mut poll => return Outcome::Event(ev),
                _ = shared.wake.notified() => {}
                r = close.changed(), if sender_alive => { let _ = r; }
                _ = sleep_until_opt(deadline) => {}
            }
        }
    }
}

/// A polite goodbye so the broker does not wait for the keep-alive; bounded, best effort.
async fn disconnect(client: &AsyncClient, eventloop: &mut EventLoop) {
    if client.try_disconnect().is_err() {
        return;
    }
    let _ = tokio::time::timeout(Duration::from_millis(300), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::config::RouteKind;
    use crate::event::{EventKind, Severity};

    fn alert(camera: &str) -> Alert {
        Alert {
            incident: format!("n1/{camera}/1-0"),
            store: "shop/1".into(),
            node: "n1".into(),
            camera: camera.into(),
            zone: None,
            kind: EventKind::ShelfSweep,
            severity: Severity::High,
            started_at_ms: 0,
            at_ms: 0,
            people: None,
            text: String::new(),
            link: String::new(),
            evidence_url: None,
        }
    }

    #[test]
    fn topics_keep_their_shape_whatever_the_names() {
        let r = MqttRoute::new(
            &RouteConfig {
                name: "m".into(),
                kind: RouteKind::Mqtt,
                broker: Some("localhost".into()),
                ..RouteConfig::default()
            },
            "shop/1",
            "n1",
        )
        .unwrap();
        assert_eq!(r.opts.client_id(), "lpmesh-n1");
        assert_eq!(r.opts.broker_address(), ("localhost".to_string(), 1883));
        assert_eq!(
            r.topic(&Item::Alert(alert("door#2"))),
            ("lpmesh/shop_1/door_2/shelf_sweep".to_string(), false)
        );
        let st = CameraState {
            store: "shop/1".into(),
            node: "n1".into(),
            camera: "till+".into(),
            online: true,
            fps: 10.0,
            last_frame_ms: None,
        };
        assert_eq!(
            r.topic(&Item::State(st)),
            ("lpmesh/shop_1/till_/state".to_string(), true)
        );
    }

    #[test]
    fn unacknowledged_items_are_resent_in_their_first_order() {
        let mut s = Session::default();
        let a = s.take(Item::Alert(alert("a")));
        let b = s.take(Item::Alert(alert("b")));
        let c = s.take(Item::Alert(alert("c")));
        let d = s.take(Item::Alert(alert("d")));
        s.inflight.insert(7, b);
        s.inflight.insert(3, a);
        s.issued.push_back(c);
        s.retry.push_back(d);
        s.requeue_unacked();
        let order: Vec<u64> = s.retry.iter().map(|h| h.seq).collect();
        assert_eq!(order, [1, 2, 3, 4]);
        assert_eq!(s.outstanding(), 0);
        assert_eq!(s.alerts_held(), 4);
    }
}
