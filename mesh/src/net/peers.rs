//! Peers: bans for misbehaviour (gossip scores, invalid answers) and dialling the nodes we heard of
//! and the bootstrap addresses.

use super::*;

/// A peer whose gossip score falls below this is disconnected and refused for [`BAN_MS`]. An invalid
/// message costs 100 (see the topic score parameters), and gossipsub stops listening to a peer at -80
/// and so stops counting: ban before that, at gossipsub's own publish threshold.
pub(super) const BAN_SCORE: f64 = -50.0;

pub(super) const BAN_MS: u64 = 60_000;

impl Actor {
    pub(super) fn ban_misbehaving(&mut self, now: u64) {
        self.banned.retain(|_, until| *until > now);
        let low: Vec<(PeerId, f64)> = self
            .connected
            .iter()
            .filter_map(|p| {
                let score = self.swarm.behaviour().gossipsub.peer_score(p)?;
                (score < BAN_SCORE).then_some((*p, score))
            })
            .collect();
        for (peer, score) in low {
            tracing::warn!(%peer, score, "peer gossiped invalid messages");
            self.ban(peer, now, "invalid_gossip");
        }
    }

    /// Disconnects `peer` and refuses it for [`BAN_MS`]: the one ban path, for invalid gossip (score)
    /// and invalid records in anti-entropy messages alike. Its answer parts not yet checked are dropped.
    pub(super) fn ban(&mut self, peer: PeerId, now: u64, reason: &'static str) {
        if self.banned.get(&peer).is_some_and(|until| *until > now) {
            // Still disconnecting from the first ban: one ban, counted once.
            return;
        }
        tracing::warn!(%peer, reason, "peer misbehaved: disconnected for {} s", BAN_MS / 1000);
        self.banned.insert(peer, now.saturating_add(BAN_MS));
        self.stats.peers_banned += 1;
        *self.stats.peers_banned_by.entry(reason.to_string()).or_insert(0) += 1;
        let before = self.to_check.len();
        self.to_check.retain(|p| p.peer != peer);
        let dropped = before - self.to_check.len();
        self.forget_parts(peer, dropped);
        let _ = self.swarm.disconnect_peer_id(peer);
    }

    pub(super) fn is_banned(&self, peer: &PeerId) -> bool {
        self.banned.get(peer).is_some_and(|until| *until > now_ms())
    }

    /// Dials the members heard of before that are not connected now.
    pub(super) fn redial_known(&mut self) {
        let me = *self.swarm.local_peer_id();
        let idle: Vec<(PeerId, Vec<Multiaddr>)> = self
            .known
            .iter()
            .filter(|(p, _)| {
                **p != me
                    && !self.connected.contains(p)
                    && !self.blocked.contains(p)
                    && !self.is_banned(p)
                    && self.members.as_ref().is_none_or(|m| m.contains(p))
            })
            .map(|(p, a)| (*p, a.clone()))
            .collect();
        for (peer, addrs) in idle {
            let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                .addresses(addrs)
                .build();
            if let Err(e) = self.swarm.dial(opts) {
                tracing::debug!(%peer, error = %e, "cannot dial a known node again");
            }
        }
    }

    pub(super) fn redial_bootstrap(&mut self) {
        let idle: Vec<Multiaddr> = self
            .bootstrap
            .iter()
            .filter(|(_, n)| *n == 0)
            .map(|(a, _)| a.clone())
            .collect();
        for addr in idle {
            // Already connected to the node it names (through another address): nothing to do.
            let named = addr.iter().find_map(|p| match p {
                libp2p::multiaddr::Protocol::P2p(id) => Some(id),
                _ => None,
            });
            if named.is_some_and(|id| self.connected.contains(&id) || self.blocked.contains(&id) || self.is_banned(&id))
            {
                continue;
            }
            if let Err(e) = self.swarm.dial(addr.clone()) {
                tracing::debug!(%addr, error = %e, "cannot dial a bootstrap address again");
            }
        }
    }

    pub(super) fn bootstrap_count(&mut self, endpoint: &libp2p::core::ConnectedPoint, delta: i32) {
        if let libp2p::core::ConnectedPoint::Dialer { address, .. } = endpoint {
            let bare = |a: &Multiaddr| {
                a.iter()
                    .filter(|p| !matches!(p, libp2p::multiaddr::Protocol::P2p(_)))
                    .collect::<Multiaddr>()
            };
            let dialed = bare(address);
            for (a, n) in self.bootstrap.iter_mut() {
                if bare(a) == dialed {
                    *n = n.saturating_add_signed(delta);
                }
            }
        }
    }

    /// Dials a node we hear of but are not connected to (at most every few seconds).
    pub(super) fn maybe_dial(&mut self, peer: PeerId, addrs: &[String], now: u64) {
        if peer != *self.swarm.local_peer_id() && !self.blocked.contains(&peer) {
            let parsed = dialable(addrs);
            if !parsed.is_empty() {
                if self.known.len() >= MAX_KNOWN_PEERS && !self.known.contains_key(&peer) {
                    self.known.clear();
                }
                self.known.insert(peer, parsed);
            }
        }
        if peer == *self.swarm.local_peer_id()
            || self.connected.contains(&peer)
            || self.blocked.contains(&peer)
            || self.is_banned(&peer)
        {
            return;
        }
        if self
            .dialed
            .get(&peer)
            .is_some_and(|t| now.saturating_sub(*t) < REDIAL_MS)
        {
            return;
        }
        if self.dialed.len() > 1024 {
            self.dialed.clear();
        }
        self.dialed.insert(peer, now);
        let addrs = dialable(addrs);
        if addrs.is_empty() {
            return;
        }
        let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
            .addresses(addrs)
            .build();
        if let Err(e) = self.swarm.dial(opts) {
            tracing::debug!(%peer, error = %e, "cannot dial a peer heard of by heartbeat");
        }
    }
}
