//! Validator networking over libp2p: TCP + noise + yamux, with the
//! validator's ed25519 key as its libp2p identity, so a connection proves
//! which validator is on the other end.
//!
//! This module owns the swarm, dialling the configured peers with backoff,
//! one long-lived stream per peer and direction for consensus messages
//! (length-prefixed frames, several coalesced into one write), and the
//! gossipsub topic that spreads transactions in batches. It drops streams
//! from keys outside the validator set and frames over the size bound
//! before anything else looks at them, and rejects (scoring the sender
//! down) gossip that does not decode as a bounded batch. It never decodes a
//! consensus message or verifies a signature: the runtime and the ingress
//! do.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance};
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, identity, noise, tcp, yamux};
use phalanx_consensus::MAX_MESSAGE_BYTES;
use phalanx_crypto::{KeyPair, PublicKey, ValidatorIndex, decode, encode};
use phalanx_ledger::MAX_TX_BYTES;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;

/// The consensus stream protocol.
pub const CONSENSUS_PROTOCOL: StreamProtocol = StreamProtocol::new("/phalanx/consensus/1");
/// Frames waiting for the runtime before readers are slowed down.
pub const INBOUND_QUEUE: usize = 4096;
/// Most bytes coalesced into one write.
const MAX_COALESCED_BYTES: usize = 1 << 20;
/// The transaction gossip topic.
pub const TX_TOPIC: &str = "/phalanx/txs/1";
/// Most transactions in one gossip batch.
pub const MAX_GOSSIP_BATCH_TXS: usize = 1024;
/// Largest gossip message, bytes.
pub const MAX_GOSSIP_BYTES: usize = MAX_GOSSIP_BATCH_TXS * (MAX_TX_BYTES + 8);
/// How long newly admitted transactions wait to fill a gossip batch.
const GOSSIP_BATCH_WINDOW: Duration = Duration::from_millis(10);

#[derive(NetworkBehaviour)]
#[behaviour(prelude = "libp2p::swarm::derive_prelude")]
struct Behaviour {
    stream: libp2p_stream::Behaviour,
    gossip: gossipsub::Behaviour,
}

/// A frame from a validator, not yet decoded.
#[derive(Debug)]
pub struct Inbound {
    /// The authenticated sender.
    pub from: ValidatorIndex,
    /// The frame's bytes (at most [`MAX_MESSAGE_BYTES`]).
    pub bytes: Vec<u8>,
}

/// Settings the network needs.
pub struct NetConfig {
    /// This validator's key (also its libp2p identity).
    pub key: KeyPair,
    /// Listen address.
    pub listen: Multiaddr,
    /// Every validator, by index (this one included).
    pub validators: Vec<PublicKey>,
    /// Addresses of the other validators.
    pub peers: Vec<(PublicKey, Multiaddr)>,
    /// Per-peer outbound queue length.
    pub peer_queue: usize,
    /// Reconnect backoff.
    pub reconnect_base: Duration,
    /// Longest reconnect delay.
    pub reconnect_max: Duration,
    /// Where counts go.
    pub metrics: Arc<Metrics>,
}

/// Errors starting the network.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A key that libp2p refuses.
    #[error("identity: {0}")]
    Identity(String),
    /// The transport or listener could not start.
    #[error("transport: {0}")]
    Transport(String),
}

/// The libp2p peer id of a validator key.
pub fn peer_id_of(key: &PublicKey) -> Result<PeerId, NetError> {
    let pk = identity::ed25519::PublicKey::try_from_bytes(&key.to_bytes())
        .map_err(|e| NetError::Identity(e.to_string()))?;
    Ok(identity::PublicKey::from(pk).to_peer_id())
}

/// The handle the runtime sends with.
#[derive(Clone)]
pub struct Network {
    outbound: Arc<HashMap<ValidatorIndex, mpsc::Sender<Arc<Vec<u8>>>>>,
    metrics: Arc<Metrics>,
    control: libp2p_stream::Control,
    peer_ids: Arc<HashMap<ValidatorIndex, PeerId>>,
    me: PeerId,
}

impl Network {
    /// Queues a frame for one validator; dropped (and counted) if its queue
    /// is full. Consensus tolerates loss; blocking here would stall it.
    pub fn send(&self, to: ValidatorIndex, frame: Arc<Vec<u8>>) {
        if let Some(q) = self.outbound.get(&to)
            && q.try_send(frame).is_err()
        {
            self.metrics.send_queue_drop();
        }
    }

    /// Other validators this node sends to.
    pub fn peer_count(&self) -> usize {
        self.outbound.len()
    }

    /// Queues a frame for every other validator.
    pub fn broadcast(&self, frame: Arc<Vec<u8>>) {
        for to in self.outbound.keys() {
            self.send(*to, frame.clone());
        }
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// A handle for other stream protocols (state sync).
    pub fn control(&self) -> libp2p_stream::Control {
        self.control.clone()
    }

    /// Peer ids of every validator but this one.
    pub fn other_validators(&self) -> Vec<PeerId> {
        let mut v: Vec<(ValidatorIndex, PeerId)> = self
            .peer_ids
            .iter()
            .filter(|(_, p)| **p != self.me)
            .map(|(i, p)| (*i, *p))
            .collect();
        v.sort_by_key(|(i, _)| i.0);
        v.into_iter().map(|(_, p)| p).collect()
    }

    /// Peer ids of every validator.
    pub fn validator_peer_ids(&self) -> std::collections::HashSet<PeerId> {
        self.peer_ids.values().copied().collect()
    }
}

/// The gossip side of the network handle: batches out, batches in.
pub struct Gossip {
    /// Transactions to spread (bytes of each), batched here.
    pub outbound: mpsc::Sender<Vec<u8>>,
    /// Batches received from peers, decoded into transactions.
    pub inbound: mpsc::Receiver<Vec<Vec<u8>>>,
}

/// Starts the swarm and the stream tasks on the current tokio runtime.
/// Returns the send handle, the receiver of inbound consensus frames and
/// the gossip channels; the address actually listened on arrives in the
/// log.
pub fn start(cfg: NetConfig) -> Result<(Network, mpsc::Receiver<Inbound>, Gossip), NetError> {
    let mut seed = cfg.key.seed();
    let id = identity::Keypair::ed25519_from_bytes(&mut seed)
        .map_err(|e| NetError::Identity(e.to_string()))?;
    let me = id.public().to_peer_id();
    let gossip_cfg = gossipsub::ConfigBuilder::default()
        .validation_mode(gossipsub::ValidationMode::Strict)
        // Messages wait for the application's verdict before spreading.
        .validate_messages()
        .max_transmit_size(MAX_GOSSIP_BYTES + 4096)
        .heartbeat_interval(Duration::from_millis(500))
        .build()
        .map_err(|e| NetError::Transport(format!("gossipsub config: {e}")))?;
    let mut gossip = gossipsub::Behaviour::new(
        gossipsub::MessageAuthenticity::Signed(id.clone()),
        gossip_cfg,
    )
    .map_err(|e| NetError::Transport(format!("gossipsub: {e}")))?;
    gossip
        .with_peer_score(
            gossipsub::PeerScoreParams::default(),
            gossipsub::PeerScoreThresholds::default(),
        )
        .map_err(|e| NetError::Transport(format!("gossipsub scoring: {e}")))?;
    let topic = IdentTopic::new(TX_TOPIC);
    gossip
        .subscribe(&topic)
        .map_err(|e| NetError::Transport(format!("gossipsub subscribe: {e}")))?;
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(id)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| NetError::Transport(e.to_string()))?
        .with_behaviour(|_| Behaviour {
            stream: libp2p_stream::Behaviour::new(),
            gossip,
        })
        .map_err(|e| NetError::Transport(e.to_string()))?
        // Validator links are long-lived; idle ones are kept.
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(24 * 3600)))
        .build();
    swarm
        .listen_on(cfg.listen.clone())
        .map_err(|e| NetError::Transport(format!("listen on {}: {e}", cfg.listen)))?;

    let mut index_of: HashMap<PeerId, ValidatorIndex> = HashMap::new();
    for (i, v) in cfg.validators.iter().enumerate() {
        index_of.insert(peer_id_of(v)?, ValidatorIndex(i as u16));
    }
    let mut addrs: HashMap<PeerId, Multiaddr> = HashMap::new();
    for (k, a) in &cfg.peers {
        addrs.insert(peer_id_of(k)?, a.clone());
    }

    let metrics = cfg.metrics.clone();
    let mut control = swarm.behaviour().stream.new_control();
    let incoming = control
        .accept(CONSENSUS_PROTOCOL)
        .map_err(|e| NetError::Transport(e.to_string()))?;
    let (in_tx, in_rx) = mpsc::channel(INBOUND_QUEUE);
    tokio::spawn(accept_loop(
        incoming,
        index_of.clone(),
        in_tx,
        metrics.clone(),
    ));

    let mut outbound = HashMap::new();
    for (peer, idx) in &index_of {
        if *peer == me {
            continue;
        }
        let (tx, rx) = mpsc::channel(cfg.peer_queue);
        outbound.insert(*idx, tx);
        tokio::spawn(writer(
            control.clone(),
            *peer,
            rx,
            cfg.reconnect_base,
            cfg.reconnect_max,
        ));
    }
    let peer_ids: HashMap<ValidatorIndex, PeerId> =
        index_of.iter().map(|(p, i)| (*i, *p)).collect();
    let (gossip_out_tx, gossip_out_rx) = mpsc::channel(crate::ingress::INGRESS_QUEUE);
    let (gossip_in_tx, gossip_in_rx) = mpsc::channel(256);
    tokio::spawn(swarm_loop(
        swarm,
        SwarmCtx {
            addrs,
            index_of,
            base: cfg.reconnect_base,
            max: cfg.reconnect_max,
            metrics: metrics.clone(),
            topic,
            gossip_out: gossip_out_rx,
            gossip_in: gossip_in_tx,
        },
    ));
    Ok((
        Network {
            outbound: Arc::new(outbound),
            metrics,
            control,
            peer_ids: Arc::new(peer_ids),
            me,
        },
        in_rx,
        Gossip {
            outbound: gossip_out_tx,
            inbound: gossip_in_rx,
        },
    ))
}

struct SwarmCtx {
    addrs: HashMap<PeerId, Multiaddr>,
    index_of: HashMap<PeerId, ValidatorIndex>,
    base: Duration,
    max: Duration,
    metrics: Arc<Metrics>,
    topic: IdentTopic,
    gossip_out: mpsc::Receiver<Vec<u8>>,
    gossip_in: mpsc::Sender<Vec<Vec<u8>>>,
}

/// Decodes a gossip batch, enforcing its bounds.
pub fn decode_batch(data: &[u8]) -> Option<Vec<Vec<u8>>> {
    if data.len() > MAX_GOSSIP_BYTES {
        return None;
    }
    let txs: Vec<Vec<u8>> = decode(data, MAX_GOSSIP_BYTES).ok()?;
    let ok = !txs.is_empty()
        && txs.len() <= MAX_GOSSIP_BATCH_TXS
        && txs.iter().all(|t| t.len() <= MAX_TX_BYTES);
    ok.then_some(txs)
}

fn next_backoff(cur: Duration, max: Duration) -> Duration {
    (cur * 2).min(max)
}

/// Drives the swarm: dials every configured peer, and redials with backoff
/// when a dial fails or the last connection closes.
async fn swarm_loop(mut swarm: libp2p::Swarm<Behaviour>, ctx: SwarmCtx) {
    let SwarmCtx {
        addrs,
        index_of,
        base,
        max,
        metrics,
        topic,
        mut gossip_out,
        gossip_in,
    } = ctx;
    let (redial_tx, mut redial_rx) = mpsc::unbounded_channel::<PeerId>();
    let mut backoff: HashMap<PeerId, Duration> = HashMap::new();
    let mut pending: Vec<Vec<u8>> = Vec::new();
    let mut pending_bytes = 0usize;
    let mut flush_at: Option<tokio::time::Instant> = None;
    let dial = |swarm: &mut libp2p::Swarm<Behaviour>, peer: PeerId| {
        if swarm.is_connected(&peer) {
            return;
        }
        if let Some(a) = addrs.get(&peer) {
            let opts = DialOpts::peer_id(peer).addresses(vec![a.clone()]).build();
            if let Err(e) = swarm.dial(opts) {
                debug!(%peer, "dial: {e}");
            }
        }
    };
    for peer in addrs.keys() {
        dial(&mut swarm, *peer);
    }
    let schedule = |backoff: &mut HashMap<PeerId, Duration>, peer: PeerId| {
        let d = *backoff.get(&peer).unwrap_or(&base);
        backoff.insert(peer, next_backoff(d, max));
        let tx = redial_tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            let _ = tx.send(peer);
        });
    };
    loop {
        let flush = async {
            match flush_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => futures::future::pending().await,
            }
        };
        tokio::select! {
            Some(tx) = gossip_out.recv() => {
                pending_bytes += tx.len() + 8;
                pending.push(tx);
                if flush_at.is_none() {
                    flush_at = Some(tokio::time::Instant::now() + GOSSIP_BATCH_WINDOW);
                }
                if pending.len() >= MAX_GOSSIP_BATCH_TXS || pending_bytes + MAX_TX_BYTES >= MAX_GOSSIP_BYTES {
                    publish(&mut swarm, &topic, &mut pending);
                    pending_bytes = 0;
                    flush_at = None;
                }
            }
            _ = flush => {
                publish(&mut swarm, &topic, &mut pending);
                pending_bytes = 0;
                flush_at = None;
            }
            ev = swarm.select_next_some() => match ev {
                SwarmEvent::Behaviour(BehaviourEvent::Gossip(gossipsub::Event::Message {
                    propagation_source,
                    message_id,
                    message,
                })) => {
                    let verdict = match decode_batch(&message.data) {
                        Some(txs) => {
                            // Signatures are checked by the ingress; a full
                            // queue drops the batch (blocks carry the
                            // transactions anyway).
                            let _ = gossip_in.try_send(txs);
                            MessageAcceptance::Accept
                        }
                        None => {
                            metrics.invalid(index_of.get(&propagation_source).map(|i| i.0), "bad_gossip_batch");
                            warn!(peer = %propagation_source, "undecodable gossip batch rejected");
                            MessageAcceptance::Reject
                        }
                    };
                    swarm.behaviour_mut().gossip.report_message_validation_result(
                        &message_id,
                        &propagation_source,
                        verdict,
                    );
                }
                SwarmEvent::NewListenAddr { address, .. } => {
                    info!(%address, "listening");
                }
                SwarmEvent::ConnectionEstablished { peer_id, num_established, .. } => {
                    backoff.remove(&peer_id);
                    if num_established.get() == 1 {
                        if let Some(i) = index_of.get(&peer_id) {
                            metrics.peer_delta(1);
                            info!(peer = i.0, "validator connected");
                        } else {
                            debug!(%peer_id, "non-validator connected");
                        }
                    }
                }
                SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } => {
                    if let Some(i) = index_of.get(&peer_id) {
                        metrics.peer_delta(-1);
                        info!(peer = i.0, "validator disconnected");
                    }
                    if addrs.contains_key(&peer_id) {
                        schedule(&mut backoff, peer_id);
                    }
                }
                SwarmEvent::OutgoingConnectionError { peer_id: Some(peer), error, .. } => {
                    debug!(%peer, "connection failed: {error}");
                    if addrs.contains_key(&peer) && !swarm.is_connected(&peer) {
                        schedule(&mut backoff, peer);
                    }
                }
                _ => {}
            },
            Some(peer) = redial_rx.recv() => dial(&mut swarm, peer),
        }
    }
}

/// Accepts inbound consensus streams: validators only, one reader each.
async fn accept_loop(
    mut incoming: libp2p_stream::IncomingStreams,
    index_of: HashMap<PeerId, ValidatorIndex>,
    tx: mpsc::Sender<Inbound>,
    metrics: Arc<Metrics>,
) {
    while let Some((peer, stream)) = incoming.next().await {
        let Some(idx) = index_of.get(&peer).copied() else {
            metrics.invalid(None, "non_validator_stream");
            warn!(%peer, "consensus stream from a key outside the validator set refused");
            continue;
        };
        tokio::spawn(reader(idx, stream, tx.clone(), metrics.clone()));
    }
}

async fn reader(
    from: ValidatorIndex,
    mut stream: libp2p::Stream,
    tx: mpsc::Sender<Inbound>,
    metrics: Arc<Metrics>,
) {
    loop {
        let mut len = [0u8; 4];
        if stream.read_exact(&mut len).await.is_err() {
            return;
        }
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_MESSAGE_BYTES {
            metrics.invalid(Some(from.0), "oversized_frame");
            warn!(peer = from.0, len, "oversized frame; stream dropped");
            return;
        }
        let mut bytes = vec![0u8; len];
        if stream.read_exact(&mut bytes).await.is_err() {
            return;
        }
        if tx.send(Inbound { from, bytes }).await.is_err() {
            return;
        }
    }
}

/// Keeps one outbound stream to `peer` open and writes queued frames to it,
/// coalescing whatever is queued into one write.
async fn writer(
    mut control: libp2p_stream::Control,
    peer: PeerId,
    mut rx: mpsc::Receiver<Arc<Vec<u8>>>,
    base: Duration,
    max: Duration,
) {
    let mut delay = base;
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let mut stream = match control.open_stream(peer, CONSENSUS_PROTOCOL).await {
            Ok(s) => {
                delay = base;
                s
            }
            Err(e) => {
                debug!(%peer, "open stream: {e}");
                tokio::time::sleep(delay).await;
                delay = next_backoff(delay, max);
                continue;
            }
        };
        loop {
            let Some(first) = rx.recv().await else {
                return;
            };
            buf.clear();
            push_frame(&mut buf, &first);
            while buf.len() < MAX_COALESCED_BYTES {
                match rx.try_recv() {
                    Ok(f) => push_frame(&mut buf, &f),
                    Err(_) => break,
                }
            }
            let ok = stream.write_all(&buf).await.is_ok() && stream.flush().await.is_ok();
            if !ok {
                // The frames in `buf` are lost with the stream; consensus
                // recovers lost messages by its timeouts.
                break;
            }
        }
    }
}

fn publish(swarm: &mut libp2p::Swarm<Behaviour>, topic: &IdentTopic, pending: &mut Vec<Vec<u8>>) {
    if pending.is_empty() {
        return;
    }
    let batch = encode(&*pending);
    let n = pending.len();
    pending.clear();
    if let Err(e) = swarm.behaviour_mut().gossip.publish(topic.clone(), batch) {
        // No peer subscribed yet (or a duplicate): the transactions still
        // reach every validator inside the blocks that carry them.
        debug!(txs = n, "gossip publish: {e}");
    }
}

fn push_frame(buf: &mut Vec<u8>, frame: &[u8]) {
    debug_assert!(frame.len() <= MAX_MESSAGE_BYTES);
    buf.extend_from_slice(&(frame.len() as u32).to_be_bytes());
    buf.extend_from_slice(frame);
}
