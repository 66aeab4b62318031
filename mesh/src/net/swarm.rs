//! The swarm: transport (TCP, the store's pre-shared key, Noise, Yamux), gossipsub with its peer
//! scores, the sync protocol, identify, ping and mDNS, and the topics' names.

use super::*;

#[derive(NetworkBehaviour)]
pub(super) struct Behaviour {
    pub(super) gossipsub: gossipsub::Behaviour,
    pub(super) sync: request_response::cbor::Behaviour<SyncRequest, SyncResponse>,
    pub(super) identify: identify::Behaviour,
    pub(super) ping: ping::Behaviour,
    pub(super) mdns: Toggle<mdns::tokio::Behaviour>,
}

pub(super) fn build_swarm(cfg: &MeshConfig, key: &Keypair, keys: &NetworkKeys) -> Result<Swarm<Behaviour>, MeshError> {
    let keys = keys.clone();
    let store = cfg.store.clone();
    let mdns_on = cfg.mdns;
    let swarm = SwarmBuilder::with_existing_identity(key.clone())
        .with_tokio()
        .with_other_transport(|key| -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
            // The PSK handshake runs on the raw TCP stream, before Noise: without the key, nothing else
            // of libp2p is ever reached.
            Ok(tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
                .and_then(move |socket, endpoint| {
                    // Read for each connection: a new key epoch applies to the next one.
                    let psk = match &endpoint {
                        libp2p::core::ConnectedPoint::Dialer { address, .. } => keys.dial(address),
                        libp2p::core::ConnectedPoint::Listener { .. } => keys.accept(),
                    };
                    PnetConfig::new(PreSharedKey::new(psk)).handshake(socket)
                })
                .upgrade(Version::V1)
                .authenticate(noise::Config::new(key)?)
                .multiplex(yamux::Config::default())
                // A peer with the wrong key never finishes Noise: give up on it quickly.
                .timeout(Duration::from_secs(5)))
        })
        .map_err(|e| MeshError::Network(e.into()))?
        .with_behaviour(|key| -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
            let gcfg = gossipsub::ConfigBuilder::default()
                .validation_mode(ValidationMode::Strict)
                .validate_messages()
                .heartbeat_interval(Duration::from_millis(500))
                .max_transmit_size(MAX_RECORD_BYTES + 4096)
                .message_id_fn(|m: &gossipsub::Message| {
                    use std::hash::{Hash, Hasher};
                    // Content-addressed: the same record relayed by two peers is one message.
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    m.data.hash(&mut h);
                    let a = h.finish();
                    m.data.len().hash(&mut h);
                    gossipsub::MessageId::from([a.to_be_bytes(), h.finish().to_be_bytes()].concat())
                })
                .build()?;
            let mut gossipsub = gossipsub::Behaviour::new(MessageAuthenticity::Signed(key.clone()), gcfg)?;
            // Load is not misbehaviour: a node busy taking in a burst (a catch-up, a store's cameras
            // all raising events) reads its queue late, answers IWANTs late and re-grafts early. The
            // defaults count each of those, squared, and pushed honest nodes past the ban line within a
            // second of a 10,000-record burst, cutting the store in pieces for a minute (seen in
            // `lpmesh bench mesh`). The cost of a slow peer is bounded by the send queues already.
            let mut params = gossipsub::PeerScoreParams {
                slow_peer_weight: 0.0,
                behaviour_penalty_weight: 0.0,
                ..Default::default()
            };
            // Scores are about misbehaviour, not merit: the rewards for time in the mesh and first
            // deliveries are kept small (the defaults reach +1800 within seconds, more than hundreds
            // of invalid messages cost), while every invalid message costs 100 x their count squared
            // and is forgotten slowly (10 % a second). One invalid message puts a peer below the ban
            // line of the actor; honest nodes never send one (a change of the wire version needs the
            // whole store upgraded together, or the nodes ban each other for a minute at a time).
            let tparams = gossipsub::TopicScoreParams {
                topic_weight: 1.0,
                time_in_mesh_weight: 0.01,
                time_in_mesh_quantum: Duration::from_secs(1),
                time_in_mesh_cap: 600.0,
                first_message_deliveries_weight: 0.1,
                first_message_deliveries_cap: 100.0,
                // A quiet store delivers few messages: that is no fault (the default punishes it).
                mesh_message_deliveries_weight: 0.0,
                mesh_failure_penalty_weight: 0.0,
                invalid_message_deliveries_weight: -100.0,
                invalid_message_deliveries_decay: 0.9,
                ..Default::default()
            };
            for name in [
                topic_name(&store),
                bundle_topic_name(&store),
                heartbeat_topic_name(&store),
            ] {
                params.topics.insert(IdentTopic::new(name).hash(), tparams.clone());
            }
            gossipsub.with_peer_score(params, gossipsub::PeerScoreThresholds::default())?;
            let sync = request_response::Behaviour::with_codec(
                sync_codec(),
                [(StreamProtocol::new(SYNC_PROTOCOL), ProtocolSupport::Full)],
                request_response::Config::default().with_request_timeout(Duration::from_secs(30)),
            );
            let mdns = if mdns_on {
                Some(mdns::tokio::Behaviour::new(
                    mdns::Config::default(),
                    key.public().to_peer_id(),
                )?)
            } else {
                None
            };
            Ok(Behaviour {
                gossipsub,
                sync,
                identify: identify::Behaviour::new(identify::Config::new("/lpmesh/1".into(), key.public())),
                ping: ping::Behaviour::new(ping::Config::new()),
                mdns: Toggle::from(mdns),
            })
        })
        .map_err(|e| MeshError::Network(e.into()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    Ok(swarm)
}

pub(super) fn heartbeat_topic_name(store: &str) -> String {
    format!("/lpmesh/{store}/heartbeat/1")
}

pub(super) fn topic_name(store: &str) -> String {
    format!("/lpmesh/{store}/records/1")
}

pub(super) fn bundle_topic_name(store: &str) -> String {
    format!("/lpmesh/{store}/records/2")
}
