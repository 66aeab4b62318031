//! Anti-entropy carried out: questions answered within their rate, answer parts checked on blocking
//! threads and stored, what `crate::sync` decides sent.

use super::*;

/// An answer being received from a peer: its parts handled so far, whether one was refused (the
/// queue was full: ask again) and whether one held records from the future (do not ask again at once:
/// the same records would come back until our clock catches up).
#[derive(Debug, Default)]
pub(super) struct AnswerState {
    pub(super) answer: u64,
    pub(super) handled: u32,
    pub(super) refused: bool,
    pub(super) future: bool,
}

/// An answer part received, waiting for its records to be checked.
pub(super) struct SyncPart {
    pub(super) peer: PeerId,
    pub(super) records: Vec<serde_bytes::ByteBuf>,
    pub(super) answer: u64,
    pub(super) parts: u32,
    pub(super) full: bool,
    pub(super) channel: request_response::ResponseChannel<SyncResponse>,
}

/// An answer part after decoding and signature checks, ready to be stored by the actor.
pub(super) struct CheckedPart {
    pub(super) undecodable: Vec<crate::record::RecordError>,
    pub(super) checked: crate::log::Checked,
    pub(super) answer: u64,
    pub(super) parts: u32,
    pub(super) full: bool,
    pub(super) channel: request_response::ResponseChannel<SyncResponse>,
}

/// Decodes and checks the records of an answer part: CPU work for a blocking thread.
pub(super) fn check_part(part: SyncPart, store: &str) -> CheckedPart {
    let mut undecodable = Vec::new();
    let mut decoded = Vec::with_capacity(part.records.len());
    for b in part.records {
        match Record::decode(&b) {
            Ok(r) => decoded.push(r),
            Err(e) => undecodable.push(e),
        }
    }
    CheckedPart {
        undecodable,
        checked: crate::log::check(decoded, store),
        answer: part.answer,
        parts: part.parts,
        full: part.full,
        channel: part.channel,
    }
}

impl Actor {
    /// `n` of `peer`'s answer parts left the check queue.
    pub(super) fn forget_parts(&mut self, peer: PeerId, n: usize) {
        if let Some(c) = self.parts_of.get_mut(&peer) {
            *c = c.saturating_sub(n);
            if *c == 0 {
                self.parts_of.remove(&peer);
            }
        }
    }

    /// Counts a part of `peer`'s answer as handled (stored, or refused when `refused`); once every
    /// part has been, whether to ask again at once: the answer was cut short (`full`) or lost a part,
    /// unless it held records from the future (asking again would bring the same ones straight back).
    pub(super) fn answer_part(
        &mut self,
        peer: PeerId,
        answer: u64,
        parts: u32,
        full: bool,
        refused: bool,
        future: bool,
    ) -> Option<bool> {
        if !self.connected.contains(&peer) {
            return None;
        }
        let entry = self.answers.entry(peer).or_default();
        if entry.answer != answer {
            *entry = AnswerState {
                answer,
                ..AnswerState::default()
            };
        }
        // `parts` comes from the peer: count without overflow, whatever it says.
        entry.handled = entry.handled.saturating_add(1);
        entry.refused |= refused;
        entry.future |= future;
        if entry.handled >= parts {
            let again = (full && !entry.future) || entry.refused;
            self.answers.remove(&peer);
            Some(again)
        } else {
            None
        }
    }

    pub(super) fn on_sync_request(
        &mut self,
        peer: PeerId,
        request: SyncRequest,
        channel: request_response::ResponseChannel<SyncResponse>,
    ) {
        // Only over a connection we keep (so the per-peer state below is bounded by the connections).
        if self.blocked.contains(&peer) || self.is_banned(&peer) || !self.connected.contains(&peer) {
            return;
        }
        match request {
            SyncRequest::Summary { vv, reply } => {
                let now = now_ms();
                let allowed = self
                    .sync_limits
                    .entry(peer)
                    .or_insert_with(|| RateLimit::new(SYNC_QUESTIONS_PER_S, SYNC_QUESTION_BURST, now))
                    .allow(now);
                self.respond(channel, 0);
                if !allowed {
                    // Not served: an honest peer never asks this often (see SYNC_QUESTIONS_PER_S), and
                    // one that did will ask again at its next round.
                    self.reject("sync_rate_limited");
                    return;
                }
                self.stats.sync_rounds += 1;
                let vv: VersionVector = vv.into_iter().collect();
                let actions = self
                    .ae
                    .handle(Input::Summary { from: peer, vv, reply }, self.log.version_vector());
                self.carry_out(actions);
            }
            SyncRequest::Records {
                records,
                answer,
                part: _,
                parts,
                full,
            } => {
                let queued = self.to_check.len() + self.checking.len();
                let of_peer = self.parts_of.get(&peer).copied().unwrap_or(0);
                if queued >= SYNC_PARTS_QUEUED || of_peer >= SYNC_PARTS_PER_PEER {
                    self.reject("sync_busy");
                    self.respond(channel, 0);
                    if let Some(again) = self.answer_part(peer, answer, parts, full, true, false) {
                        self.applied(peer, again);
                    }
                    return;
                }
                *self.parts_of.entry(peer).or_insert(0) += 1;
                self.to_check.push_back(SyncPart {
                    peer,
                    records,
                    answer,
                    parts,
                    full,
                    channel,
                });
                self.start_checks();
            }
        }
    }

    pub(super) fn respond(&mut self, channel: request_response::ResponseChannel<SyncResponse>, accepted: u32) {
        // The peer may have gone: nothing to tell it then.
        let _ = self
            .swarm
            .behaviour_mut()
            .sync
            .send_response(channel, SyncResponse { accepted });
    }

    /// Starts checking queued answer parts, up to [`SYNC_CHECKS_RUNNING`] at once.
    pub(super) fn start_checks(&mut self) {
        while self.checking.len() < SYNC_CHECKS_RUNNING {
            let Some(part) = self.to_check.pop_front() else {
                return;
            };
            let peer = part.peer;
            let store = self.log.store().to_string();
            let job = tokio::task::spawn_blocking(move || check_part(part, &store));
            self.checking.push(Box::pin(async move {
                match job.await {
                    Ok(done) => (peer, Some(done)),
                    Err(e) => {
                        tracing::error!(%peer, error = %e, "checking an anti-entropy answer failed");
                        (peer, None)
                    }
                }
            }));
        }
    }

    /// Stores a checked answer part; a peer whose part held an invalid record is banned, as for gossip.
    pub(super) fn on_checked(&mut self, peer: PeerId, done: Option<CheckedPart>) {
        self.forget_parts(peer, 1);
        self.start_checks();
        let Some(done) = done else { return };
        if self.is_banned(&peer) || self.blocked.contains(&peer) {
            // Cut off while this part waited: nothing more of it is taken.
            return;
        }
        let mut offences = done.undecodable.len();
        for e in &done.undecodable {
            self.reject(e.reason());
        }
        self.stats.received_sync += done.checked.records().len() as u64;
        let (new, outcomes) = self.ingest_checked(done.checked);
        self.stats.repaired += u64::from(new);
        offences += outcomes
            .iter()
            .filter(|o| o.as_ref().is_err_and(|e| e.blames(&peer)))
            .count();
        let future = outcomes.iter().any(|o| o.as_ref().is_err_and(|e| !e.is_offence()));
        self.respond(done.channel, new);
        if offences > 0 {
            tracing::warn!(%peer, offences, "anti-entropy message with invalid records");
            self.ban(peer, now_ms(), "invalid_sync");
            return;
        }
        if let Some(again) = self.answer_part(peer, done.answer, done.parts, done.full, false, future) {
            self.applied(peer, again);
        }
    }

    /// Tells anti-entropy that an answer from `peer` has been taken in (`full`: it held all we lacked).
    pub(super) fn applied(&mut self, peer: PeerId, full: bool) {
        let actions = self
            .ae
            .handle(Input::Applied { from: peer, full }, self.log.version_vector());
        self.carry_out(actions);
    }

    pub(super) fn carry_out(&mut self, actions: Vec<Action<PeerId>>) {
        for a in actions {
            match a {
                Action::SendSummary { to, reply } => {
                    let vv = self.log.version_vector().iter().map(|(o, s)| (*o, *s)).collect();
                    self.swarm
                        .behaviour_mut()
                        .sync
                        .send_request(&to, SyncRequest::Summary { vv, reply });
                }
                Action::SendRecords { to, ranges } => {
                    // Messages of at most `batch` records and SYNC_BATCH_BYTES each; the last says
                    // whether the answer was cut short (then the peer asks again for the rest).
                    let requested = ranges.iter().fold(0u64, |n, r| n.saturating_add(r.len()));
                    let batch = self.ae.batch() as usize;
                    let mut chunks: Vec<Vec<serde_bytes::ByteBuf>> = vec![Vec::new()];
                    let mut bytes = 0usize;
                    let mut sent = 0u64;
                    for r in ranges {
                        let recs = match tokio::task::block_in_place(|| {
                            self.log
                                .range_for_peer(&r.origin, r.from, usize::try_from(r.len()).unwrap_or(usize::MAX))
                        }) {
                            Ok(v) => v,
                            Err(e) => {
                                tracing::error!(error = %e, "cannot read records for a peer");
                                continue;
                            }
                        };
                        for rec in recs.into_iter().filter(|x| x.seq <= r.to) {
                            let enc = rec.encode();
                            // The framing counts too, so a part stays under the receiver's limit.
                            let size = enc.len() + RECORD_FRAMING_BYTES;
                            let last = chunks.len() - 1;
                            if chunks[last].len() >= batch || bytes + size > SYNC_BATCH_BYTES {
                                chunks.push(Vec::new());
                                bytes = 0;
                            }
                            bytes += size;
                            sent += 1;
                            let last = chunks.len() - 1;
                            chunks[last].push(serde_bytes::ByteBuf::from(enc));
                        }
                    }
                    let n = chunks.len();
                    self.stats.sent_sync += sent;
                    self.next_answer = self.next_answer.wrapping_add(1);
                    let answer = self.next_answer;
                    let cut_short =
                        requested >= self.ae.batch().saturating_mul(crate::sync::PIPELINE) || sent < requested;
                    // Sent even when empty (nothing to send, one part): the asker waits on it before it
                    // asks another peer.
                    for (i, records) in chunks.into_iter().enumerate() {
                        let request = SyncRequest::Records {
                            records,
                            answer,
                            part: i as u32,
                            parts: n as u32,
                            full: cut_short,
                        };
                        self.swarm.behaviour_mut().sync.send_request(&to, request);
                    }
                }
            }
        }
    }
}
