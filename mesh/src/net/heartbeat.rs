//! Heartbeats and the election: what this node says of itself, what it hears, who leads.

use super::*;

impl Actor {
    /// A node's election priority: its member record's when the store gives one, else `claimed`.
    pub(super) fn rank(&self, node: &Origin, claimed: u8) -> u8 {
        self.priorities.get(node).copied().unwrap_or(claimed)
    }

    pub(super) fn own_heartbeat(&self) -> Heartbeat {
        Heartbeat {
            node: self.log.origin(),
            hq_reachable: self.hq_reachable,
            priority: self.rank(&self.log.origin(), self.priority),
            last_progress_ms: self.hq_progress_ms,
        }
    }

    /// The election's leader now; logs the demotion of a stalled leader. Asked at every beat as well
    /// as by the uplink, so the election notes when each leader took the lead even on a node without
    /// an uplink.
    pub(super) fn leader_now(&mut self, now: u64) -> Option<Origin> {
        let leader = self.election.leader(now);
        if self.election.demotions() != self.demotions_logged {
            self.demotions_logged = self.election.demotions();
            let demoted: Vec<String> = self.election.demoted(now).map(|(o, _)| o.to_string()).collect();
            tracing::warn!(
                ?demoted,
                leader = ?leader.map(|o| o.to_string()),
                stall_ms = self.election.stall_ms(),
                "uplink leader reached HQ but made no progress within the stall limit; demoted"
            );
        }
        leader
    }

    pub(super) fn heartbeat(&mut self, now: u64) {
        let hb = self.own_heartbeat();
        self.election.heard(hb, now);
        self.election.prune(now);
        let _ = self.leader_now(now);
        let addrs = self
            .announce
            .as_ref()
            .unwrap_or(&self.listen)
            .iter()
            .filter(|a| !a.to_string().starts_with("/ip4/0.0.0.0"))
            .take(MAX_HEARTBEAT_ADDRS)
            .map(|a| a.to_string())
            .collect();
        let msg = HeartbeatMsg {
            hb,
            sent_ms: now,
            addrs,
            info: self.info.clone(),
        };
        if let Some(bytes) = msg.encode() {
            // Nobody to tell yet is fine.
            let _ = self
                .swarm
                .behaviour_mut()
                .gossipsub
                .publish(self.heartbeat_topic.clone(), bytes);
        }
    }

    pub(super) fn on_heartbeat(&mut self, id: &gossipsub::MessageId, source: &PeerId, message: &gossipsub::Message) {
        let parsed = crate::wire::decode_heartbeat(&message.data);
        // A heartbeat speaks for the node that signed the gossip message, no other.
        let valid = parsed.filter(|m| message.source.is_some() && m.hb.node.peer_id() == message.source);
        match valid {
            Some(m) => {
                let now = now_ms();
                let mut hb = m.hb;
                hb.last_progress_ms = crate::election::progress_on_our_clock(hb.last_progress_ms, m.sent_ms, now);
                hb.priority = self.rank(&hb.node, hb.priority);
                self.election.heard(hb, now);
                self.validate(id, source, MessageAcceptance::Accept);
                if self.infos.len() < 256 || self.infos.contains_key(&m.hb.node) {
                    let mut info = m.info;
                    info.truncate(MAX_NODE_INFO_BYTES);
                    self.infos.insert(m.hb.node, info);
                }
                if let Some(peer) = m.hb.node.peer_id() {
                    self.maybe_dial(peer, &m.addrs, now);
                }
            }
            None => {
                self.reject("bad_heartbeat");
                self.validate(id, source, MessageAcceptance::Reject);
            }
        }
    }
}
