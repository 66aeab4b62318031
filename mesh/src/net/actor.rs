//! The actor that owns the swarm and the log: its state, its start, its loop, its commands and the
//! swarm's events. Its other duties live beside it: peers, heartbeats, gossip, sync.

use super::*;

/// The election's stall limit: the configured one plus the most that heartbeats lag behind the uplink
/// (one heartbeat interval and one progress report interval), so a leader that makes progress just
/// within the limit is never demoted on stale news. Zero stays zero (off).
fn stall_limit_ms(cfg: &MeshConfig) -> u64 {
    let stall = u64::try_from(cfg.leader_stall.as_millis()).unwrap_or(u64::MAX);
    if stall == 0 {
        return 0;
    }
    let lag = u64::try_from(cfg.heartbeat_interval.as_millis())
        .unwrap_or(u64::MAX)
        .saturating_add(PROGRESS_REPORT_MS);
    stall.saturating_add(lag)
}

/// Starts the mesh actor on the current tokio runtime (multi-threaded: log writes block in place).
pub fn start(cfg: MeshConfig, key: Keypair, recipient: StoreRecipient) -> Result<MeshHandle, MeshError> {
    let mut log = Log::open(&cfg.data_dir, &cfg.store, key.clone(), recipient)?;
    log.set_retention(cfg.retention.map(|r| r.as_millis() as u64));
    let net_keys = NetworkKeys::new(cfg.psk);
    let mut swarm = build_swarm(&cfg, &key, &net_keys)?;
    let topic = IdentTopic::new(topic_name(&cfg.store));
    let heartbeat_topic = IdentTopic::new(heartbeat_topic_name(&cfg.store));
    let bundle_topic = IdentTopic::new(bundle_topic_name(&cfg.store));
    for t in [&topic, &bundle_topic, &heartbeat_topic] {
        swarm
            .behaviour_mut()
            .gossipsub
            .subscribe(t)
            .map_err(|e| MeshError::Network(e.into()))?;
    }
    for addr in &cfg.listen {
        swarm.listen_on(addr.clone()).map_err(|e| {
            // libp2p's own message for an operating-system error is empty ("address in use" is
            // what an installer needs to read).
            let source: BoxError = match e {
                libp2p::TransportError::Other(io) => io.into(),
                e @ libp2p::TransportError::MultiaddrNotSupported(_) => e.into(),
            };
            MeshError::Listen {
                addr: addr.clone(),
                source,
            }
        })?;
    }
    for addr in &cfg.bootstrap {
        if let Err(e) = swarm.dial(addr.clone()) {
            tracing::warn!(%addr, error = %e, "cannot dial bootstrap address");
        }
    }
    let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
    let (records, _) = broadcast::channel(RECORD_BROADCAST);
    let peer_id = key.public().to_peer_id();
    let origin = log.origin();
    let seed = u64::from_be_bytes(origin.0[..8].try_into().unwrap_or([0; 8]));
    let mut stats = MeshStats {
        records: log.len(),
        ..MeshStats::default()
    };
    stats.peers = 0;
    let actor = Actor {
        swarm,
        net_keys,
        log,
        topic,
        bundle_topic,
        ae: AntiEntropy::new(cfg.anti_entropy_interval.as_millis() as u64, cfg.sync_batch, seed),
        heartbeat_topic,
        election: Election::new(origin, cfg.leader_timeout.as_millis() as u64).with_stall(stall_limit_ms(&cfg)),
        priority: cfg.priority,
        hq_reachable: false,
        hq_progress_ms: 0,
        demotions_logged: 0,
        heartbeat_every_ms: cfg.heartbeat_interval.as_millis() as u64,
        next_heartbeat_ms: 0,
        records: records.clone(),
        stats,
        connected: HashSet::new(),
        blocked: HashSet::new(),
        members: None,
        priorities: HashMap::new(),
        listen: Vec::new(),
        pending_gossip: Vec::new(),
        next_answer: 0,
        answers: Default::default(),
        sync_limits: Default::default(),
        to_check: Default::default(),
        checking: futures::stream::FuturesUnordered::new(),
        parts_of: Default::default(),
        dialed: Default::default(),
        known: Default::default(),
        info: Vec::new(),
        infos: Default::default(),
        expire_every_ms: cfg.retention.map(expire_interval_ms),
        next_expire_ms: 0,
        next_reopen_ms: 0,
        announce: cfg.announce.clone(),
        bootstrap: cfg.bootstrap.iter().map(|a| (a.clone(), 0)).collect(),
        next_bootstrap_ms: now_ms() + REDIAL_MS,
        banned: Default::default(),
        next_score_check_ms: 0,
    };
    tokio::spawn(actor.run(cmd_rx));
    Ok(MeshHandle {
        cmd: cmd_tx,
        records,
        peer_id,
        origin,
    })
}

pub(super) struct Actor {
    pub(super) swarm: Swarm<Behaviour>,
    /// The network keys the transport reads for each connection.
    pub(super) net_keys: NetworkKeys,
    pub(super) log: Log,
    pub(super) topic: IdentTopic,
    pub(super) bundle_topic: IdentTopic,
    pub(super) heartbeat_topic: IdentTopic,
    pub(super) election: Election,
    pub(super) priority: u8,
    pub(super) hq_reachable: bool,
    /// What the uplink last said of its progress (wall ms, 0: nothing yet), for our heartbeats.
    pub(super) hq_progress_ms: u64,
    /// The election's demotion count last logged.
    pub(super) demotions_logged: u64,
    pub(super) heartbeat_every_ms: u64,
    pub(super) next_heartbeat_ms: u64,
    pub(super) ae: AntiEntropy<PeerId>,
    pub(super) records: broadcast::Sender<Record>,
    pub(super) stats: MeshStats,
    pub(super) connected: HashSet<PeerId>,
    pub(super) blocked: HashSet<PeerId>,
    /// Admitted nodes, when the store keeps a member list.
    pub(super) members: Option<HashSet<PeerId>>,
    /// Election priorities from the member records (see [`MeshHandle::set_priorities`]).
    pub(super) priorities: HashMap<Origin, u8>,
    pub(super) listen: Vec<Multiaddr>,
    /// Gossiped records decoded but not yet committed (at most one burst).
    /// Gossip messages (one record, or a bundle's) waiting to be stored in one commit.
    pub(super) pending_gossip: Vec<(gossipsub::MessageId, PeerId, Vec<Record>)>,
    pub(super) next_answer: u64,
    /// Per connected peer: the answer being received and how many of its parts have been handled.
    pub(super) answers: std::collections::HashMap<PeerId, AnswerState>,
    /// Per connected peer: its budget of version-vector questions (dropped when it disconnects).
    pub(super) sync_limits: std::collections::HashMap<PeerId, RateLimit>,
    /// Answer parts waiting for their records to be checked (at most [`SYNC_PARTS_QUEUED`] with
    /// those being checked), and those being checked (at most [`SYNC_CHECKS_RUNNING`]).
    pub(super) to_check: std::collections::VecDeque<SyncPart>,
    pub(super) checking:
        futures::stream::FuturesUnordered<futures::future::BoxFuture<'static, (PeerId, Option<CheckedPart>)>>,
    /// Per peer: its parts waiting or being checked (at most [`SYNC_PARTS_PER_PEER`]).
    pub(super) parts_of: std::collections::HashMap<PeerId, usize>,
    /// When each peer heard of by heartbeat was last dialled.
    pub(super) dialed: std::collections::HashMap<PeerId, u64>,
    /// Where each node we heard of said it listens: dialed again while it is not connected, so a
    /// member that missed a change of the network key (and cannot reach us under it) is reached.
    pub(super) known: std::collections::HashMap<PeerId, Vec<Multiaddr>>,
    pub(super) info: Vec<u8>,
    pub(super) infos: std::collections::HashMap<Origin, Vec<u8>>,
    pub(super) expire_every_ms: Option<u64>,
    pub(super) next_expire_ms: u64,
    pub(super) next_reopen_ms: u64,
    pub(super) announce: Option<Vec<Multiaddr>>,
    /// Bootstrap addresses, each with the connections now open through it: one with none is dialled
    /// again every few seconds, so a node whose network came back rejoins without mDNS.
    pub(super) bootstrap: Vec<(Multiaddr, u32)>,
    pub(super) next_bootstrap_ms: u64,
    /// Peers scored down for invalid messages, cut off until the time given.
    pub(super) banned: std::collections::HashMap<PeerId, u64>,
    pub(super) next_score_check_ms: u64,
}

/// How often a log that failed to write (a full disk) is tried again.
const REOPEN_EVERY_MS: u64 = 2000;

/// How often expired records are looked for: a minute, or sooner for a short retention (tests), so
/// nothing outlives the period by more than a small fraction of it.
fn expire_interval_ms(retention: Duration) -> u64 {
    (retention.as_millis() as u64 / 20).clamp(250, 60_000)
}

/// Records removed per pass, so one pass never holds the actor for long.
const EXPIRE_PER_PASS: usize = 5000;

impl Actor {
    pub(super) async fn run(mut self, mut cmd_rx: mpsc::Receiver<Command>) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                cmd = cmd_rx.recv() => match cmd {
                    Some(Command::Shutdown(done)) => {
                        // sled flushes on every commit already; dropping closes the database cleanly.
                        drop(self);
                        let _ = done.send(());
                        return;
                    }
                    Some(c) => self.on_command(c),
                    None => return,
                },
                ev = self.swarm.select_next_some() => {
                    self.on_swarm(ev);
                    // Take whatever else is ready, then store the gossiped records of the whole burst
                    // with one flush (group commit on the receiving side too).
                    for _ in 0..GOSSIP_BURST {
                        if self.pending_gossip.iter().map(|(_, _, r)| r.len()).sum::<usize>() >= GOSSIP_BURST_RECORDS {
                            break;
                        }
                        match futures::FutureExt::now_or_never(self.swarm.select_next_some()) {
                            Some(ev) => self.on_swarm(ev),
                            None => break,
                        }
                    }
                    self.flush_gossip();
                }
                Some((peer, done)) = self.checking.next(), if !self.checking.is_empty() => {
                    self.on_checked(peer, done);
                }
                _ = tick.tick() => {
                    let now = now_ms();
                    let actions = self.ae.handle(Input::Tick { now_ms: now }, self.log.version_vector());
                    self.carry_out(actions);
                    if now >= self.next_heartbeat_ms {
                        self.next_heartbeat_ms = now + self.heartbeat_every_ms;
                        self.heartbeat(now);
                    }
                    if now >= self.next_score_check_ms {
                        self.next_score_check_ms = now + 1000;
                        self.ban_misbehaving(now);
                    }
                    if now >= self.next_bootstrap_ms {
                        self.next_bootstrap_ms = now + REDIAL_MS;
                        self.redial_bootstrap();
                        self.redial_known();
                    }
                    if self.log.is_failed() && now >= self.next_reopen_ms {
                        self.next_reopen_ms = now + REOPEN_EVERY_MS;
                        self.reopen();
                    }
                    if let Some(every) = self.expire_every_ms.filter(|_| now >= self.next_expire_ms) {
                        self.next_expire_ms = now + every;
                        self.expire(now);
                    }
                }
            }
        }
    }

    pub(super) fn on_command(&mut self, c: Command) {
        match c {
            Command::Append { items, reply } => {
                let refs: Vec<(RecordKind, &[u8])> = items.iter().map(|(k, p)| (*k, p.as_slice())).collect();
                let res = tokio::task::block_in_place(|| self.log.append_batch(&refs, now_ms()));
                match res {
                    Ok(recs) => {
                        self.stats.appended += recs.len() as u64;
                        // No peer yet is fine: anti-entropy delivers them when one appears.
                        let encoded: Vec<Vec<u8>> = recs.iter().map(Record::encode).collect();
                        let (topic, messages) = match encoded.as_slice() {
                            [one] => (self.topic.clone(), vec![one.clone()]),
                            many => (
                                self.bundle_topic.clone(),
                                crate::record::bundles(many.iter().map(Vec::as_slice)),
                            ),
                        };
                        for m in messages {
                            let _ = self.swarm.behaviour_mut().gossipsub.publish(topic.clone(), m);
                        }
                        for r in &recs {
                            let _ = self.records.send(r.clone());
                        }
                        let _ = reply.send(Ok(recs));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.into()));
                    }
                }
            }
            Command::VersionVector(reply) => {
                let _ = reply.send(self.log.version_vector().clone());
            }
            Command::Floors(reply) => {
                let _ = reply.send(self.log.floors());
            }
            Command::Range {
                origin,
                from,
                limit,
                reply,
            } => {
                let _ = reply.send(self.log.range(&origin, from, limit).map_err(Into::into));
            }
            Command::Stats(reply) => {
                self.stats.peers = self.connected.len();
                self.stats.records = self.log.len();
                self.stats.log_failed = self.log.is_failed();
                let _ = reply.send(self.stats.clone());
            }
            Command::ListenAddrs(reply) => {
                let _ = reply.send(self.listen.clone());
            }
            Command::Peers(reply) => {
                let _ = reply.send(self.connected.iter().copied().collect());
            }
            Command::Dial(addr) => {
                if let Err(e) = self.swarm.dial(addr.clone()) {
                    tracing::warn!(%addr, error = %e, "dial failed");
                }
            }
            Command::Block(peers) => {
                for p in peers {
                    self.blocked.insert(p);
                    let _ = self.swarm.disconnect_peer_id(p);
                }
            }
            Command::SetPriorities(p) => {
                self.priorities = p;
                // Our own rank may have changed: say so now, so every node names the same leader.
                self.heartbeat(now_ms());
            }
            Command::SetWriteRecipient(r) => self.log.set_write_recipient(r),
            Command::SetNetworkKeys(keys) => {
                if self.net_keys.set(&keys) {
                    tracing::info!(keys = self.net_keys.count(), "the store's network key changed");
                }
            }
            Command::SetMembers(members) => {
                let peers: Option<HashSet<PeerId>> =
                    members.as_ref().map(|m| m.iter().filter_map(|o| o.peer_id()).collect());
                self.log
                    .set_members(members.map(|m| m.into_iter().collect::<HashSet<Origin>>()));
                if let Some(allowed) = &peers {
                    let me = *self.swarm.local_peer_id();
                    let outsiders: Vec<PeerId> = self
                        .connected
                        .iter()
                        .filter(|p| **p != me && !allowed.contains(p))
                        .copied()
                        .collect();
                    for p in outsiders {
                        tracing::warn!(peer = %p, "not a member of the store: disconnected");
                        self.reject("not_member_connection");
                        let _ = self.swarm.disconnect_peer_id(p);
                    }
                }
                self.members = peers;
            }
            Command::Unblock(peers) => {
                for p in peers {
                    self.blocked.remove(&p);
                }
            }
            Command::Shutdown(_) => {}
            Command::SetHqReachable(r) => {
                if r != self.hq_reachable {
                    self.hq_reachable = r;
                    // Tell the others now rather than at the next beat: leadership may move.
                    self.heartbeat(now_ms());
                }
            }
            Command::SetHqProgress(ms) => {
                if ms != self.hq_progress_ms {
                    self.hq_progress_ms = ms;
                    // Our own view at once (the others hear it at the next regular beat, which the
                    // stall limit allows for): a leader that recovers must not demote itself meanwhile.
                    let now = now_ms();
                    let hb = self.own_heartbeat();
                    self.election.heard(hb, now);
                }
            }
            Command::Leader(reply) => {
                let leader = self.leader_now(now_ms());
                let _ = reply.send(leader);
            }
            // Carried by the next regular heartbeat: the info (frames/s, last frame) changes all the
            // time, and beating on every change would multiply the heartbeat rate.
            Command::SetInfo(info) => self.info = info,
            Command::Nodes(reply) => {
                let now = now_ms();
                let timeout = self.election.timeout_ms();
                let me = self.log.origin();
                let list = self
                    .election
                    .seen()
                    .map(|(hb, at)| NodeSeen {
                        origin: hb.node,
                        hq_reachable: hb.hq_reachable,
                        priority: hb.priority,
                        silent_ms: now.saturating_sub(at),
                        live: now.saturating_sub(at) <= timeout,
                        info: if hb.node == me {
                            self.info.clone()
                        } else {
                            self.infos.get(&hb.node).cloned().unwrap_or_default()
                        },
                    })
                    .collect();
                let _ = reply.send(list);
            }
            Command::PublishRaw(bytes) => {
                let topic = if bytes.first() == Some(&crate::record::BUNDLE_TAG) {
                    self.bundle_topic.clone()
                } else {
                    self.topic.clone()
                };
                if let Err(e) = self.swarm.behaviour_mut().gossipsub.publish(topic, bytes) {
                    tracing::debug!(error = %e, "raw publish refused locally");
                }
            }
            Command::SyncRaw(to, request) => {
                self.swarm.behaviour_mut().sync.send_request(&to, request);
            }
        }
    }

    pub(super) fn reopen(&mut self) {
        match tokio::task::block_in_place(|| self.log.reopen()) {
            Ok(()) => {
                self.stats.log_reopened += 1;
                self.stats.records = self.log.len();
                tracing::info!(
                    records = self.log.len(),
                    "the log is writable again (reopened after a failed write)"
                );
            }
            Err(e) => tracing::debug!(error = %e, "the log still cannot be reopened"),
        }
    }

    pub(super) fn expire(&mut self, now: u64) {
        match tokio::task::block_in_place(|| self.log.expire(now, EXPIRE_PER_PASS)) {
            Ok(e) => {
                if e.removed > 0 {
                    self.stats.expired += e.removed;
                    self.stats.records = self.log.len();
                    tracing::info!(removed = e.removed, "removed records older than the retention period");
                }
                if e.more {
                    // More to remove: come back on the next tick rather than at the next interval.
                    self.next_expire_ms = now;
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot remove expired records"),
        }
    }

    pub(super) fn on_swarm(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => self.listen.push(address),
            SwarmEvent::ConnectionEstablished {
                peer_id,
                num_established,
                endpoint,
                ..
            } => {
                self.bootstrap_count(&endpoint, 1);
                if self.blocked.contains(&peer_id) || self.is_banned(&peer_id) {
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                    return;
                }
                // The network key lets a device in; only an admitted node key may stay.
                if self.members.as_ref().is_some_and(|m| !m.contains(&peer_id)) {
                    tracing::warn!(peer = %peer_id, "a node the store has not admitted tried to connect");
                    self.reject("not_member_connection");
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                    return;
                }
                if num_established.get() == 1 {
                    self.connected.insert(peer_id);
                    // Tell the newcomer who we are soon (once gossipsub has joined the topic), rather
                    // than at the next regular beat: the store's pages and the election see it sooner.
                    self.next_heartbeat_ms = self.next_heartbeat_ms.min(now_ms() + 1000);
                    let actions = self.ae.handle(Input::Connected(peer_id), self.log.version_vector());
                    self.carry_out(actions);
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                endpoint,
                ..
            } => {
                self.bootstrap_count(&endpoint, -1);
                if num_established == 0 {
                    self.connected.remove(&peer_id);
                    // Per-peer anti-entropy state lives only while the peer is connected (bounded by
                    // the connections); parts already queued are still checked and stored.
                    self.sync_limits.remove(&peer_id);
                    self.answers.remove(&peer_id);
                    self.ae.handle(Input::Disconnected(peer_id), self.log.version_vector());
                }
            }
            SwarmEvent::IncomingConnectionError { error, .. } => {
                self.stats.handshake_failures += 1;
                tracing::debug!(%error, "incoming connection failed (a device without the store key looks like this)");
            }
            SwarmEvent::OutgoingConnectionError { error, .. } => {
                self.stats.handshake_failures += 1;
                if let libp2p::swarm::DialError::Transport(failed) = &error {
                    for (addr, e) in failed {
                        // Refused: nobody listens there, which says nothing of the key.
                        let refused = matches!(e, libp2p::TransportError::Other(io) if io.kind() == std::io::ErrorKind::ConnectionRefused);
                        if !refused {
                            self.net_keys.failed(addr);
                        }
                    }
                }
                tracing::debug!(%error, "outgoing connection failed");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                for (peer, addr) in found {
                    if !self.connected.contains(&peer) && !self.blocked.contains(&peer) {
                        let _ = self.swarm.dial(addr);
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            })) => self.on_gossip(propagation_source, message_id, message),
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::SlowPeer {
                peer_id,
                failed_messages,
            })) => {
                let n = failed_messages.priority + failed_messages.non_priority;
                self.stats.gossip_dropped += n as u64;
                tracing::debug!(peer = %peer_id, dropped = n, "gossip to a slow peer dropped; anti-entropy carries it");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Sync(request_response::Event::Message {
                peer,
                message: request_response::Message::Request { request, channel, .. },
                ..
            })) => self.on_sync_request(peer, request, channel),
            SwarmEvent::Behaviour(BehaviourEvent::Sync(request_response::Event::OutboundFailure {
                peer,
                error,
                ..
            })) => {
                tracing::debug!(%peer, %error, "anti-entropy request failed");
            }
            _ => {}
        }
    }
}
