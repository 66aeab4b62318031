//! Gossip: records and bundles received, validated, stored in one commit per burst, and forwarded
//! or rejected.

use super::*;

impl Actor {
    pub(super) fn reject(&mut self, reason: &str) {
        *self.stats.rejected.entry(reason.to_string()).or_insert(0) += 1;
    }

    /// Stores records received from `from`; returns how many were new. Each new one is announced.
    pub(super) fn ingest(&mut self, records: Vec<Record>) -> (u32, Vec<Result<Inserted, crate::log::Rejected>>) {
        let res = tokio::task::block_in_place(|| self.log.insert_batch(&records, now_ms()));
        self.ingested(records, res)
    }

    /// [`Actor::ingest`] for records checked off the actor's thread (only the writes happen here).
    pub(super) fn ingest_checked(
        &mut self,
        checked: crate::log::Checked,
    ) -> (u32, Vec<Result<Inserted, crate::log::Rejected>>) {
        let res = tokio::task::block_in_place(|| self.log.insert_checked(&checked, now_ms()));
        self.ingested(checked.into_records(), res)
    }

    pub(super) fn ingested(
        &mut self,
        records: Vec<Record>,
        res: Result<Vec<Result<Inserted, crate::log::Rejected>>, LogError>,
    ) -> (u32, Vec<Result<Inserted, crate::log::Rejected>>) {
        let outcomes = match res {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(error = %e, "cannot store received records");
                return (0, Vec::new());
            }
        };
        let mut new = 0;
        for (r, o) in records.into_iter().zip(&outcomes) {
            match o {
                Ok(Inserted::New) => {
                    new += 1;
                    let _ = self.records.send(r);
                }
                Ok(Inserted::Duplicate) => self.stats.duplicates += 1,
                Ok(Inserted::Expired) => self.stats.expired_received += 1,
                Err(e) => {
                    tracing::warn!(error = %e, "record refused");
                    self.reject(e.reason());
                }
            }
        }
        (new, outcomes)
    }

    pub(super) fn on_gossip(&mut self, source: PeerId, id: gossipsub::MessageId, message: gossipsub::Message) {
        if message.topic == self.heartbeat_topic.hash() {
            if self.blocked.contains(&source) {
                self.validate(&id, &source, MessageAcceptance::Ignore);
            } else {
                self.on_heartbeat(&id, &source, &message);
            }
            return;
        }
        if self.blocked.contains(&source) {
            self.validate(&id, &source, MessageAcceptance::Ignore);
            return;
        }
        let bundle = message.topic == self.bundle_topic.hash();
        let decoded = if bundle {
            crate::record::decode_bundle(&message.data)
        } else {
            Record::decode(&message.data).map(|r| vec![r])
        };
        // A bundle carries its publisher's own appends, nobody else's: otherwise a member could
        // carry a refused node's records (or an equivocation's other side) along with one of its own.
        // Origins are compared as bytes; the publisher's key is parsed once, not once per record.
        let foreign = |rs: &Vec<Record>| {
            rs.first().is_some_and(|first| {
                rs.iter().any(|r| r.origin != first.origin)
                    || message.source.is_none()
                    || first.origin.peer_id() != message.source
            })
        };
        if bundle && decoded.as_ref().is_ok_and(foreign) {
            self.reject("foreign_bundle");
            self.validate(&id, &source, MessageAcceptance::Reject);
            return;
        }
        match decoded {
            Ok(records) => {
                self.stats.received_gossip += records.len() as u64;
                self.pending_gossip.push((id, source, records));
            }
            Err(e) => {
                self.reject(e.reason());
                self.validate(&id, &source, MessageAcceptance::Reject);
            }
        }
    }

    pub(super) fn validate(&mut self, id: &gossipsub::MessageId, source: &PeerId, acceptance: MessageAcceptance) {
        let _ = self
            .swarm
            .behaviour_mut()
            .gossipsub
            .report_message_validation_result(id, source, acceptance);
    }

    /// Stores the gossiped records received so far in one commit, then lets gossipsub forward the good
    /// ones (a record is passed on only once it is durable here) and penalise senders of bad ones.
    pub(super) fn flush_gossip(&mut self) {
        if self.pending_gossip.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.pending_gossip);
        let records: Vec<Record> = pending.iter().flat_map(|(_, _, r)| r.iter().cloned()).collect();
        let (_, outcomes) = self.ingest(records);
        let mut at = 0;
        for (id, source, records) in &pending {
            let mine = outcomes.get(at..at + records.len()).unwrap_or(&[]);
            at += records.len();
            // A message is forwarded only when it brought something new and nothing in it was refused:
            // a record refused here (from the future, of a node not admitted) is not passed on inside
            // a bundle either. One record its sender is to blame for rejects the bundle.
            let acceptance = if mine.len() < records.len() {
                MessageAcceptance::Ignore
            } else if mine.iter().any(|o| o.as_ref().is_err_and(|e| e.blames(source))) {
                MessageAcceptance::Reject
            } else if mine.iter().any(Result::is_err) {
                MessageAcceptance::Ignore
            } else if mine.iter().any(|o| matches!(o, Ok(Inserted::New))) {
                MessageAcceptance::Accept
            } else {
                // Held already, or expired.
                MessageAcceptance::Ignore
            };
            self.validate(id, source, acceptance);
        }
    }
}
