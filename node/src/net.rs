//! Validator networking over libp2p: TCP + noise + yamux, with the
//! validator's ed25519 key as its libp2p identity, so a connection proves
//! which validator is on the other end.
//!
//! This module owns the swarm, dialling the configured peers with backoff,
//! and two kinds of long-lived stream per peer and direction, each carrying
//! length-prefixed frames (several coalesced into one write): consensus
//! messages, and batches of transactions (gossip). It drops streams from
//! keys outside the validator set and frames over the size bound before
//! anything else looks at them, and drops the stream of a peer whose
//! transaction batch does not decode as a bounded batch. It never decodes a
//! consensus message or verifies a signature: the runtime and the ingress
//! do.
//!
//! # Bounds
//! Every resource a peer can make this module hold is bounded:
//! * connections from keys outside the validator set: a total and a
//!   number per IP address, and each is closed after a short grace (no
//!   protocol serves such a key); handshakes in progress are bounded for
//!   everyone ([`ConnLimits`]);
//! * a validator's consensus frames read but not yet handled, in bytes,
//!   over all its streams ([`PEER_INBOUND_BYTES`]): past it, its streams
//!   are not read, which slows only that validator down;
//! * frames queued for a validator, in frames and in bytes
//!   ([`PEER_OUTBOUND_BYTES`]): past either, new frames to it are dropped;
//! * transaction batches waiting for admission, in batches of at most
//!   [`MAX_GOSSIP_BYTES`] ([`INBOUND_TX_BATCHES`]), shared by all peers.
//!
//! # Why not gossipsub
//! Transactions used to spread over a gossipsub topic. Every validator is
//! directly connected to every other, so a relay mesh adds nothing but
//! cost: in a 4-validator cluster each batch arrived three times (once from
//! its author, twice relayed) and each copy carried a signature that was
//! verified, which made gossipsub 17 % of a validator's CPU at 5,000
//! transfers per second. A batch is now written once to each validator on
//! a stream of its own and never relayed; a validator that missed one gets
//! its transactions inside the block that orders them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{ConnectionId, NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, identity, noise, tcp, yamux};
use phalanx_consensus::MAX_MESSAGE_BYTES;
use phalanx_crypto::{
    Digest, KeyPair, PublicKey, ValidatorIndex, decode_byte_list, encode_byte_list,
};
use phalanx_ledger::MAX_TX_BYTES;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tracing::{debug, info, warn};

use crate::metrics::{Metrics, TX_BATCH_KIND};

/// The consensus stream protocol.
pub const CONSENSUS_PROTOCOL: StreamProtocol = StreamProtocol::new("/phalanx/consensus/1");
/// The transaction gossip stream protocol.
pub const TX_PROTOCOL: StreamProtocol = StreamProtocol::new("/phalanx/txs/1");
/// Frames waiting for the runtime before readers are slowed down.
pub const INBOUND_QUEUE: usize = 4096;
/// Bytes of one validator's consensus frames read and not yet handled by
/// the runtime, over all its streams: past this its streams are not read
/// (TCP pushes back on it alone). Two of the largest messages, so that
/// one can wait while the next is read; at most `n` times this in all.
pub const PEER_INBOUND_BYTES: usize = 2 * MAX_MESSAGE_BYTES;
/// Bytes queued for one validator before further frames to it are dropped
/// (as with a full frame queue: consensus recovers lost messages).
pub const PEER_OUTBOUND_BYTES: usize = 2 * MAX_MESSAGE_BYTES;
/// Transaction batches waiting for admission before readers are slowed
/// down.
pub const INBOUND_TX_BATCHES: usize = 256;
/// Transaction batches queued for one peer before new ones are dropped.
pub const TX_PEER_QUEUE: usize = 64;
/// Most bytes coalesced into one write.
const MAX_COALESCED_BYTES: usize = 1 << 20;
/// Most transactions in one gossip batch.
pub const MAX_GOSSIP_BATCH_TXS: usize = 1024;
/// Largest gossip batch, bytes.
pub const MAX_GOSSIP_BYTES: usize = MAX_GOSSIP_BATCH_TXS * (MAX_TX_BYTES + 8);
/// How long newly admitted transactions wait to fill a gossip batch.
const GOSSIP_BATCH_WINDOW: Duration = Duration::from_millis(5);

/// Connections being set up (TCP accepted, handshake not done), from
/// anyone: validators pass this bound too.
pub const MAX_PENDING_INCOMING: u32 = 64;
/// Established connections from keys outside the validator set, in all
/// (validators are never counted).
pub const MAX_NON_VALIDATOR_CONNECTIONS: u32 = 32;
/// Connections from keys outside the validator set per IP address.
pub const MAX_NON_VALIDATOR_PER_IP: usize = 4;
/// How long a connection from a key outside the validator set stays open
/// without a state request (the only protocol served to such a key: full
/// nodes follow the chain by it). Each request of its keeps it open for
/// this long again.
pub const NON_VALIDATOR_GRACE: Duration = Duration::from_secs(10);

/// When each key outside the validator set last made a state request, for
/// the grace of its connection. Entries go with the connection, so the map
/// is bounded by the connection limits.
#[derive(Clone, Default)]
pub struct OutsiderActivity(Arc<std::sync::Mutex<HashMap<PeerId, std::time::Instant>>>);

impl OutsiderActivity {
    /// `peer` made a request now.
    pub fn note(&self, peer: PeerId) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = m.get_mut(&peer) {
            *t = std::time::Instant::now();
        }
    }

    fn connected(&self, peer: PeerId) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.insert(peer, std::time::Instant::now());
    }

    fn gone(&self, peer: &PeerId) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.remove(peer);
    }

    /// How long ago `peer` last made a request (or connected).
    fn idle_for(&self, peer: &PeerId) -> Option<Duration> {
        let m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.get(peer).map(|t| t.elapsed())
    }
}

/// Limits on connections from keys outside the validator set.
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    /// See [`MAX_PENDING_INCOMING`].
    pub max_pending_incoming: u32,
    /// See [`MAX_NON_VALIDATOR_CONNECTIONS`].
    pub max_non_validators: u32,
    /// See [`MAX_NON_VALIDATOR_PER_IP`].
    pub max_per_ip: usize,
    /// See [`NON_VALIDATOR_GRACE`].
    pub grace: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            max_pending_incoming: MAX_PENDING_INCOMING,
            max_non_validators: MAX_NON_VALIDATOR_CONNECTIONS,
            max_per_ip: MAX_NON_VALIDATOR_PER_IP,
            grace: NON_VALIDATOR_GRACE,
        }
    }
}

#[derive(NetworkBehaviour)]
#[behaviour(prelude = "libp2p::swarm::derive_prelude")]
struct Behaviour {
    /// Validators bypass it; everyone else is bounded in number.
    limits: libp2p::connection_limits::Behaviour,
    stream: libp2p_stream::Behaviour,
}

/// A frame from a validator, not yet decoded.
#[derive(Debug)]
pub struct Inbound {
    /// The authenticated sender.
    pub from: ValidatorIndex,
    /// The frame's bytes (at most [`MAX_MESSAGE_BYTES`]).
    pub bytes: Vec<u8>,
    /// Its share of the sender's [`PEER_INBOUND_BYTES`], given back when
    /// the frame is dropped.
    _budget: OwnedSemaphorePermit,
}

impl Inbound {
    /// A frame from `from` holding `budget` until it is dropped.
    pub fn new(from: ValidatorIndex, bytes: Vec<u8>, budget: OwnedSemaphorePermit) -> Inbound {
        Inbound {
            from,
            bytes,
            _budget: budget,
        }
    }
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
    /// The hash of this chain's genesis: every stream opens with it, and a
    /// peer's stream that opens with another is refused.
    pub genesis: Digest,
    /// Bounds on connections from keys outside the validator set.
    pub limits: ConnLimits,
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
    outbound: Arc<HashMap<ValidatorIndex, PeerQueue>>,
    metrics: Arc<Metrics>,
    control: libp2p_stream::Control,
    peer_ids: Arc<HashMap<ValidatorIndex, PeerId>>,
    me: PeerId,
    activity: OutsiderActivity,
}

impl Network {
    /// Where the state sync server notes requests of keys outside the
    /// validator set (which keeps their connections open).
    pub fn outsider_activity(&self) -> OutsiderActivity {
        self.activity.clone()
    }

    /// Queues a frame for one validator; dropped (and counted) if its queue
    /// is full. Consensus tolerates loss; blocking here would stall it.
    pub fn send(&self, to: ValidatorIndex, frame: Arc<Vec<u8>>) {
        if let Some(q) = self.outbound.get(&to)
            && !q.push(frame)
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

/// One peer's outbound frames: bounded in frames by the channel and in
/// bytes by [`PEER_OUTBOUND_BYTES`].
#[derive(Clone)]
struct PeerQueue {
    tx: mpsc::Sender<Arc<Vec<u8>>>,
    /// Bytes in the channel; the writer takes off what it dequeues.
    bytes: Arc<std::sync::atomic::AtomicUsize>,
    max_bytes: usize,
}

impl PeerQueue {
    fn new(frames: usize, max_bytes: usize) -> (PeerQueue, QueueReader) {
        let (tx, rx) = mpsc::channel(frames);
        let bytes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let q = PeerQueue {
            tx,
            bytes: bytes.clone(),
            max_bytes,
        };
        (q, QueueReader { rx, bytes })
    }

    /// Queues `frame`; false (nothing queued) when the queue is full in
    /// frames or bytes.
    fn push(&self, frame: Arc<Vec<u8>>) -> bool {
        use std::sync::atomic::Ordering;
        let len = frame.len();
        let reserved = self
            .bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                (b + len <= self.max_bytes).then_some(b + len)
            });
        if reserved.is_err() {
            return false;
        }
        if self.tx.try_send(frame).is_err() {
            self.bytes.fetch_sub(len, Ordering::AcqRel);
            return false;
        }
        true
    }
}

/// The writer's end of a [`PeerQueue`].
struct QueueReader {
    rx: mpsc::Receiver<Arc<Vec<u8>>>,
    bytes: Arc<std::sync::atomic::AtomicUsize>,
}

impl QueueReader {
    fn took(&self, frame: &[u8]) {
        self.bytes
            .fetch_sub(frame.len(), std::sync::atomic::Ordering::AcqRel);
    }

    async fn recv(&mut self) -> Option<Arc<Vec<u8>>> {
        let f = self.rx.recv().await?;
        self.took(&f);
        Some(f)
    }

    fn try_recv(&mut self) -> Option<Arc<Vec<u8>>> {
        let f = self.rx.try_recv().ok()?;
        self.took(&f);
        Some(f)
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
    let mut index_of: HashMap<PeerId, ValidatorIndex> = HashMap::new();
    for (i, v) in cfg.validators.iter().enumerate() {
        index_of.insert(peer_id_of(v)?, ValidatorIndex(i as u16));
    }
    let mut limits = libp2p::connection_limits::Behaviour::new(
        libp2p::connection_limits::ConnectionLimits::default()
            .with_max_pending_incoming(Some(cfg.limits.max_pending_incoming))
            // Validators are counted here though never refused: room for
            // two connections from each (both sides may dial at once).
            .with_max_established_incoming(Some(
                cfg.limits
                    .max_non_validators
                    .saturating_add(2 * index_of.len() as u32),
            ))
            .with_max_established_per_peer(Some(1)),
    );
    for p in index_of.keys() {
        limits.bypass_peer_id(p);
    }
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(id)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| NetError::Transport(e.to_string()))?
        .with_behaviour(|_| Behaviour {
            limits,
            stream: libp2p_stream::Behaviour::new(),
        })
        .map_err(|e| NetError::Transport(e.to_string()))?
        // Validator links are long-lived; idle ones are kept.
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(24 * 3600)))
        .build();
    swarm
        .listen_on(cfg.listen.clone())
        .map_err(|e| NetError::Transport(format!("listen on {}: {e}", cfg.listen)))?;

    let mut addrs: HashMap<PeerId, Multiaddr> = HashMap::new();
    for (k, a) in &cfg.peers {
        addrs.insert(peer_id_of(k)?, a.clone());
    }

    let metrics = cfg.metrics.clone();
    let mut control = swarm.behaviour().stream.new_control();
    let (in_tx, in_rx) = mpsc::channel(INBOUND_QUEUE);
    let genesis = cfg.genesis;
    let budgets: HashMap<ValidatorIndex, Arc<Semaphore>> = index_of
        .values()
        .map(|i| (*i, Arc::new(Semaphore::new(PEER_INBOUND_BYTES))))
        .collect();
    accept_streams(
        &mut control,
        CONSENSUS_PROTOCOL,
        &index_of,
        &metrics,
        genesis,
        move |from, stream, metrics| {
            let budget = budgets[&from].clone();
            consensus_reader(from, stream, in_tx.clone(), budget, metrics)
        },
    )?;
    let (gossip_in_tx, gossip_in_rx) = mpsc::channel(INBOUND_TX_BATCHES);
    accept_streams(
        &mut control,
        TX_PROTOCOL,
        &index_of,
        &metrics,
        genesis,
        move |from, stream, metrics| tx_reader(from, stream, gossip_in_tx.clone(), metrics),
    )?;

    // One writer per peer and protocol, each with its own bounded queue.
    let open = |peer: PeerId, protocol: StreamProtocol, len: usize, max_bytes: usize| {
        let (tx, rx) = PeerQueue::new(len, max_bytes);
        tokio::spawn(writer(
            control.clone(),
            peer,
            protocol,
            rx,
            hello(&cfg.genesis),
            cfg.reconnect_base,
            cfg.reconnect_max,
        ));
        tx
    };
    let mut outbound = HashMap::new();
    let mut tx_queues = Vec::new();
    // A full node (a key outside the set) opens no consensus or gossip
    // streams: validators refuse them. It only dials, for state requests.
    let is_validator = index_of.contains_key(&me);
    for (peer, idx) in index_of.iter().filter(|(p, _)| **p != me && is_validator) {
        outbound.insert(
            *idx,
            open(
                *peer,
                CONSENSUS_PROTOCOL,
                cfg.peer_queue,
                PEER_OUTBOUND_BYTES,
            ),
        );
        tx_queues.push(open(*peer, TX_PROTOCOL, TX_PEER_QUEUE, usize::MAX));
    }
    let peer_ids: HashMap<ValidatorIndex, PeerId> =
        index_of.iter().map(|(p, i)| (*i, *p)).collect();
    let (gossip_out_tx, gossip_out_rx) = mpsc::channel(crate::ingress::INGRESS_QUEUE);
    tokio::spawn(tx_batcher(gossip_out_rx, tx_queues, metrics.clone()));
    let activity = OutsiderActivity::default();
    tokio::spawn(swarm_loop(
        swarm,
        SwarmCtx {
            addrs,
            index_of,
            base: cfg.reconnect_base,
            max: cfg.reconnect_max,
            metrics: metrics.clone(),
            limits: cfg.limits,
            activity: activity.clone(),
        },
    ));
    Ok((
        Network {
            outbound: Arc::new(outbound),
            metrics,
            control,
            peer_ids: Arc::new(peer_ids),
            me,
            activity,
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
    limits: ConnLimits,
    activity: OutsiderActivity,
}

/// Decodes a gossip batch, enforcing its bounds.
pub fn decode_batch(data: &[u8]) -> Option<Vec<Vec<u8>>> {
    if data.len() > MAX_GOSSIP_BYTES {
        return None;
    }
    let txs = decode_byte_list(data, MAX_GOSSIP_BYTES).ok()?;
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
        limits,
        activity,
    } = ctx;
    let (redial_tx, mut redial_rx) = mpsc::unbounded_channel::<PeerId>();
    // Connections from keys outside the validator set, by IP, and their
    // closing times.
    let mut outsiders: HashMap<ConnectionId, (std::net::IpAddr, PeerId)> = HashMap::new();
    let (expire_tx, mut expire_rx) = mpsc::unbounded_channel::<ConnectionId>();
    let mut refused_warned: Option<std::time::Instant> = None;
    let mut backoff: HashMap<PeerId, Duration> = HashMap::new();
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
        tokio::select! {
            ev = swarm.select_next_some() => match ev {
                SwarmEvent::NewListenAddr { address, .. } => {
                    info!(%address, "listening");
                }
                SwarmEvent::ConnectionEstablished { peer_id, connection_id, endpoint, num_established, .. } => {
                    backoff.remove(&peer_id);
                    if let Some(i) = index_of.get(&peer_id) {
                        if num_established.get() == 1 {
                            metrics.peer_delta(1);
                            info!(peer = i.0, "validator connected");
                        }
                        continue;
                    }
                    let ip = ip_of(endpoint.get_remote_address());
                    let from_ip = outsiders.values().filter(|(a, _)| Some(*a) == ip).count();
                    if ip.is_none() || from_ip >= limits.max_per_ip {
                        metrics.invalid(None, "connection_limit");
                        if refused_warned.is_none_or(|t| t.elapsed() >= LIMIT_WARN_INTERVAL) {
                            refused_warned = Some(std::time::Instant::now());
                            warn!(?ip, max = limits.max_per_ip, "connection from a non-validator refused: too many from its address");
                        }
                        swarm.close_connection(connection_id);
                        continue;
                    }
                    debug!(%peer_id, "non-validator connected");
                    if let Some(ip) = ip {
                        outsiders.insert(connection_id, (ip, peer_id));
                        activity.connected(peer_id);
                    }
                    let tx = expire_tx.clone();
                    let grace = limits.grace;
                    tokio::spawn(async move {
                        tokio::time::sleep(grace).await;
                        let _ = tx.send(connection_id);
                    });
                }
                SwarmEvent::ConnectionClosed { connection_id, .. } if outsiders.contains_key(&connection_id) => {
                    if let Some((_, peer)) = outsiders.remove(&connection_id) {
                        activity.gone(&peer);
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
                SwarmEvent::IncomingConnectionError { error: libp2p::swarm::ListenError::Denied { .. }, send_back_addr, .. } => {
                    metrics.invalid(None, "connection_limit");
                    if refused_warned.is_none_or(|t| t.elapsed() >= LIMIT_WARN_INTERVAL) {
                        refused_warned = Some(std::time::Instant::now());
                        warn!(from = %send_back_addr, "incoming connection refused: connection limit reached");
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
            Some(conn) = expire_rx.recv() => {
                let Some((_, peer)) = outsiders.get(&conn) else { continue };
                // A key that made a state request within its grace (a
                // full node following the chain) keeps its connection for
                // another grace from that request.
                match activity.idle_for(peer) {
                    Some(idle) if idle < limits.grace => {
                        let tx = expire_tx.clone();
                        let wait = limits.grace - idle;
                        tokio::spawn(async move {
                            tokio::time::sleep(wait).await;
                            let _ = tx.send(conn);
                        });
                    }
                    _ => {
                        metrics.invalid(None, "non_validator_idle");
                        swarm.close_connection(conn);
                    }
                }
            }
        }
    }
}

/// At most one warning per peer and kind this often for what a peer can
/// repeat at will (every occurrence is counted in metrics).
const PEER_WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Whether a warning of `what` about `peer` may be logged now.
fn may_warn(peer: ValidatorIndex, what: &'static str) -> bool {
    type Last = std::sync::Mutex<HashMap<(ValidatorIndex, &'static str), std::time::Instant>>;
    static LAST: std::sync::OnceLock<Last> = std::sync::OnceLock::new();
    let mut last = LAST
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let now = std::time::Instant::now();
    match last.get(&(peer, what)) {
        Some(t) if now.duration_since(*t) < PEER_WARN_INTERVAL => false,
        _ => {
            last.insert((peer, what), now);
            true
        }
    }
}

/// At most one log line this often for connections refused by address.
const LIMIT_WARN_INTERVAL: Duration = Duration::from_secs(10);

/// The IP address in a multiaddr, if it has one.
fn ip_of(addr: &Multiaddr) -> Option<std::net::IpAddr> {
    addr.iter().find_map(|p| match p {
        libp2p::multiaddr::Protocol::Ip4(a) => Some(a.into()),
        libp2p::multiaddr::Protocol::Ip6(a) => Some(a.into()),
        _ => None,
    })
}

/// The first frame of every stream: a tag and the genesis hash.
pub(crate) fn hello(genesis: &Digest) -> Vec<u8> {
    let mut h = HELLO_TAG.to_vec();
    h.extend_from_slice(&genesis.0);
    h
}

const HELLO_TAG: &[u8; 8] = b"PHXGEN1\0";
/// The hello frame's size.
const HELLO_BYTES: usize = HELLO_TAG.len() + 32;
/// How long to wait for a stream's hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// At most one log line per peer this often for refused hellos.
const HELLO_WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Accepts inbound streams of `protocol` from now on: validators only,
/// whose first frame names this chain's genesis; one `reader` task each.
fn accept_streams<F, R>(
    control: &mut libp2p_stream::Control,
    protocol: StreamProtocol,
    index_of: &HashMap<PeerId, ValidatorIndex>,
    metrics: &Arc<Metrics>,
    genesis: Digest,
    reader: F,
) -> Result<(), NetError>
where
    F: Fn(ValidatorIndex, libp2p::Stream, Arc<Metrics>) -> R + Send + Sync + 'static,
    R: std::future::Future<Output = ()> + Send + 'static,
{
    let mut incoming = control
        .accept(protocol.clone())
        .map_err(|e| NetError::Transport(e.to_string()))?;
    let index_of = index_of.clone();
    let metrics = metrics.clone();
    let reader = Arc::new(reader);
    let warned: Arc<std::sync::Mutex<HashMap<ValidatorIndex, std::time::Instant>>> = Arc::default();
    tokio::spawn(async move {
        while let Some((peer, mut stream)) = incoming.next().await {
            let Some(idx) = index_of.get(&peer).copied() else {
                metrics.invalid(None, "non_validator_stream");
                warn!(%peer, %protocol, "stream from a key outside the validator set refused");
                continue;
            };
            let (reader, metrics, warned) = (reader.clone(), metrics.clone(), warned.clone());
            tokio::spawn(async move {
                let first = tokio::time::timeout(
                    HELLO_TIMEOUT,
                    read_frame(idx, &mut stream, HELLO_BYTES, &metrics),
                )
                .await
                .ok()
                .flatten();
                match first {
                    Some(h) if h == hello(&genesis) => reader(idx, stream, metrics).await,
                    other => {
                        metrics.invalid(Some(idx.0), "genesis_mismatch");
                        let theirs = other
                            .filter(|h| h.len() == HELLO_BYTES && h.starts_with(HELLO_TAG))
                            .map_or_else(|| "none".to_string(), |h| hex::encode(&h[8..]));
                        let now = std::time::Instant::now();
                        let mut w = warned.lock().unwrap_or_else(|e| e.into_inner());
                        if w.get(&idx)
                            .is_none_or(|t| now.duration_since(*t) >= HELLO_WARN_INTERVAL)
                        {
                            w.insert(idx, now);
                            warn!(
                                peer = idx.0,
                                theirs,
                                ours = %genesis.to_hex(),
                                "peer runs a different genesis; its streams are refused (every validator must use the same genesis file)"
                            );
                        }
                    }
                }
            });
        }
    });
    Ok(())
}

/// Reads one length-prefixed frame of at most `max` bytes. `None`: the
/// stream ended, or the frame was oversized (counted; the stream is then
/// to be dropped, since its framing can no longer be trusted).
async fn read_frame(
    from: ValidatorIndex,
    stream: &mut libp2p::Stream,
    max: usize,
    metrics: &Metrics,
) -> Option<Vec<u8>> {
    let len = read_len(from, stream, max, metrics).await?;
    read_body(stream, len).await
}

/// Reads a frame's length prefix; `None` as [`read_frame`].
async fn read_len(
    from: ValidatorIndex,
    stream: &mut libp2p::Stream,
    max: usize,
    metrics: &Metrics,
) -> Option<usize> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await.ok()?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        metrics.invalid(Some(from.0), "oversized_frame");
        if may_warn(from, "oversized_frame") {
            warn!(peer = from.0, len, "oversized frame; stream dropped");
        }
        return None;
    }
    Some(len)
}

async fn read_body(stream: &mut libp2p::Stream, len: usize) -> Option<Vec<u8>> {
    let mut bytes = vec![0u8; len];
    stream.read_exact(&mut bytes).await.ok()?;
    Some(bytes)
}

/// Reads consensus frames from one of `from`'s streams. A frame's bytes
/// are taken from the peer's budget before they are allocated and given
/// back when the runtime is done with it.
async fn consensus_reader(
    from: ValidatorIndex,
    mut stream: libp2p::Stream,
    tx: mpsc::Sender<Inbound>,
    budget: Arc<Semaphore>,
    metrics: Arc<Metrics>,
) {
    const _: () =
        assert!(PEER_INBOUND_BYTES >= MAX_MESSAGE_BYTES && MAX_MESSAGE_BYTES <= u32::MAX as usize);
    while let Some(len) = read_len(from, &mut stream, MAX_MESSAGE_BYTES, &metrics).await {
        // Fits in u32: at most MAX_MESSAGE_BYTES (asserted above).
        let Ok(permit) = budget.clone().acquire_many_owned(len as u32).await else {
            return;
        };
        let Some(bytes) = read_body(&mut stream, len).await else {
            return;
        };
        let frame = Inbound {
            from,
            bytes,
            _budget: permit,
        };
        if tx.send(frame).await.is_err() {
            return;
        }
    }
}

async fn tx_reader(
    from: ValidatorIndex,
    mut stream: libp2p::Stream,
    tx: mpsc::Sender<Vec<Vec<u8>>>,
    metrics: Arc<Metrics>,
) {
    while let Some(bytes) = read_frame(from, &mut stream, MAX_GOSSIP_BYTES, &metrics).await {
        let Some(txs) = decode_batch(&bytes) else {
            metrics.invalid(Some(from.0), "bad_gossip_batch");
            if may_warn(from, "bad_gossip_batch") {
                warn!(
                    peer = from.0,
                    "undecodable transaction batch; stream dropped"
                );
            }
            return;
        };
        metrics.received(TX_BATCH_KIND, bytes.len());
        // Waiting here slows the peer's writer down, whose queue then drops
        // batches: their transactions still arrive inside blocks.
        if tx.send(txs).await.is_err() {
            return;
        }
    }
}

/// Gathers transactions admitted from RPC for up to `GOSSIP_BATCH_WINDOW`
/// and queues each batch once for every other validator.
async fn tx_batcher(mut rx: mpsc::Receiver<Vec<u8>>, peers: Vec<PeerQueue>, metrics: Arc<Metrics>) {
    let mut pending: Vec<Vec<u8>> = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut bytes = first.len() + 8;
        pending.push(first);
        let deadline = tokio::time::Instant::now() + GOSSIP_BATCH_WINDOW;
        while pending.len() < MAX_GOSSIP_BATCH_TXS && bytes + MAX_TX_BYTES + 8 <= MAX_GOSSIP_BYTES {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(tx)) => {
                    bytes += tx.len() + 8;
                    pending.push(tx);
                }
                Ok(None) | Err(_) => break,
            }
        }
        let frame = Arc::new(encode_byte_list(&pending));
        debug_assert!(decode_batch(&frame).is_some());
        pending.clear();
        metrics.sent(TX_BATCH_KIND, frame.len(), peers.len());
        for q in &peers {
            if !q.push(frame.clone()) {
                metrics.send_queue_drop();
            }
        }
    }
}

/// Keeps one outbound stream to `peer` open and writes queued frames to it,
/// coalescing whatever is queued into one write.
async fn writer(
    mut control: libp2p_stream::Control,
    peer: PeerId,
    protocol: StreamProtocol,
    mut rx: QueueReader,
    hello: Vec<u8>,
    base: Duration,
    max: Duration,
) {
    let mut delay = base;
    let mut buf: Vec<u8> = Vec::new();
    let mut opened_at: Option<tokio::time::Instant> = None;
    loop {
        if let Some(at) = opened_at.take() {
            // A stream that broke soon after it opened (a peer refusing
            // this chain's genesis, say) is retried with backoff.
            if at.elapsed() < STABLE_STREAM {
                tokio::time::sleep(delay).await;
                delay = next_backoff(delay, max);
            } else {
                delay = base;
            }
        }
        let mut stream = match control.open_stream(peer, protocol.clone()).await {
            Ok(s) => s,
            Err(e) => {
                debug!(%peer, "open stream: {e}");
                tokio::time::sleep(delay).await;
                delay = next_backoff(delay, max);
                continue;
            }
        };
        opened_at = Some(tokio::time::Instant::now());
        buf.clear();
        push_frame(&mut buf, &hello);
        if stream.write_all(&buf).await.is_err() || stream.flush().await.is_err() {
            continue;
        }
        loop {
            let Some(first) = rx.recv().await else {
                return;
            };
            buf.clear();
            push_frame(&mut buf, &first);
            while buf.len() < MAX_COALESCED_BYTES {
                match rx.try_recv() {
                    Some(f) => push_frame(&mut buf, &f),
                    None => break,
                }
            }
            let ok = stream.write_all(&buf).await.is_ok() && stream.flush().await.is_ok();
            if !ok {
                // The frames in `buf` are lost with the stream; consensus
                // recovers lost messages by its timeouts, and blocks carry
                // lost transactions.
                break;
            }
        }
    }
}

/// A stream that lasted this long broke for reasons of its own; one that
/// broke sooner is retried with backoff.
const STABLE_STREAM: Duration = Duration::from_secs(5);

fn push_frame(buf: &mut Vec<u8>, frame: &[u8]) {
    debug_assert!(frame.len() <= MAX_MESSAGE_BYTES);
    buf.extend_from_slice(&(frame.len() as u32).to_be_bytes());
    buf.extend_from_slice(frame);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    struct Node {
        net: Network,
        gossip: Gossip,
        metrics: Arc<Metrics>,
    }

    /// Starts validator `i` of `keys`, dialling the validators in `dial`.
    fn node(keys: &[KeyPair], ports: &[u16], i: usize, dial: &[usize]) -> Node {
        node_of(keys, ports, i, dial, b"net test genesis")
    }

    /// [`node`] for the chain whose genesis hashes from `genesis`.
    fn node_of(keys: &[KeyPair], ports: &[u16], i: usize, dial: &[usize], genesis: &[u8]) -> Node {
        node_with_inbound(keys, ports, i, dial, genesis).0
    }

    /// [`node_of`], with the receiver of its inbound consensus frames.
    fn node_with_inbound(
        keys: &[KeyPair],
        ports: &[u16],
        i: usize,
        dial: &[usize],
        genesis: &[u8],
    ) -> (Node, mpsc::Receiver<Inbound>) {
        let addr =
            |j: usize| -> Multiaddr { format!("/ip4/127.0.0.1/tcp/{}", ports[j]).parse().unwrap() };
        let metrics = Arc::new(Metrics::new(keys.len(), &[]));
        let (net, inbound, gossip) = start(NetConfig {
            key: keys[i].clone(),
            listen: addr(i),
            validators: keys.iter().map(|k| k.public()).collect(),
            peers: dial.iter().map(|&j| (keys[j].public(), addr(j))).collect(),
            peer_queue: 64,
            reconnect_base: Duration::from_millis(50),
            reconnect_max: Duration::from_millis(500),
            metrics: metrics.clone(),
            genesis: Digest::of(genesis),
            limits: ConnLimits {
                grace: Duration::from_millis(300),
                max_per_ip: 2,
                ..ConnLimits::default()
            },
        })
        .unwrap();
        (
            Node {
                net,
                gossip,
                metrics,
            },
            inbound,
        )
    }

    fn series(m: &Metrics, name: &str) -> f64 {
        m.encode()
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(-1.0)
    }

    async fn eventually(what: &str, mut ok: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while !ok() {
            assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[test]
    fn a_peer_queue_is_bounded_in_bytes_as_well_as_frames() {
        let (q, mut r) = PeerQueue::new(8, 1000);
        assert!(q.push(Arc::new(vec![0; 600])));
        assert!(!q.push(Arc::new(vec![0; 401])), "past the byte bound");
        assert!(q.push(Arc::new(vec![0; 400])), "up to it exactly");
        assert_eq!(r.try_recv().map(|f| f.len()), Some(600));
        assert!(
            q.push(Arc::new(vec![0; 600])),
            "room again once the writer takes one"
        );
        // The frame bound still holds for small frames.
        let (q, _r) = PeerQueue::new(2, usize::MAX);
        assert!(q.push(Arc::new(vec![1])) && q.push(Arc::new(vec![2])));
        assert!(!q.push(Arc::new(vec![3])));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_validator_whose_frames_are_not_handled_is_no_longer_read_past_its_byte_budget() {
        let keys: Vec<KeyPair> = (0..2u8).map(|i| KeyPair::from_seed([i + 1; 32])).collect();
        let ports: Vec<u16> = (0..2).map(|_| free_port()).collect();
        let (_a, mut inbound) = node_with_inbound(&keys, &ports, 0, &[], b"net test genesis");
        let b = node(&keys, &ports, 1, &[0]);
        let frame = Arc::new(vec![9u8; MAX_MESSAGE_BYTES / 2]);
        let per_budget = PEER_INBOUND_BYTES / frame.len();
        let held = |inbound: &mpsc::Receiver<Inbound>| inbound.len();
        // Frames until a holds a budget's worth (early ones may be lost
        // while the link comes up).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while held(&inbound) < per_budget {
            assert!(
                tokio::time::Instant::now() < deadline,
                "frames never arrived"
            );
            b.net.send(ValidatorIndex(0), frame.clone());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for _ in 0..4 {
            b.net.send(ValidatorIndex(0), frame.clone());
        }
        // More is on the wire, but a reads no further.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(held(&inbound), per_budget);
        // Handling one frame gives its bytes back: one more is read.
        drop(inbound.recv().await);
        eventually("the next frame is read", || held(&inbound) == per_budget).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keys_outside_the_validator_set_are_bounded_per_address_and_closed_when_idle() {
        // Validators 0 and 1, and three outsiders that each take validator
        // 0 for a peer of theirs; every one dials from 127.0.0.1.
        let keys: Vec<KeyPair> = (0..2u8).map(|i| KeyPair::from_seed([i + 1; 32])).collect();
        let ports: Vec<u16> = (0..2).map(|_| free_port()).collect();
        let a = node(&keys, &ports, 0, &[]);
        let _b = node(&keys, &ports, 1, &[0]);
        let mut outsiders = Vec::new();
        for i in 0..3u8 {
            let pair = [keys[0].clone(), KeyPair::from_seed([0x40 + i; 32])];
            outsiders.push(node(&pair, &[ports[0], free_port()], 1, &[0]));
        }
        let reason = |r: &str| {
            series(
                &a.metrics,
                &format!("phalanx_invalid_messages_total{{peer=\"unknown\",reason=\"{r}\"}}"),
            )
        };
        // Two per address (this test's bound): the third is closed at once.
        eventually("a third outsider from one address is refused", || {
            reason("connection_limit") >= 1.0
        })
        .await;
        // The others are closed once their grace is over.
        eventually("idle outsiders are closed", || {
            reason("non_validator_idle") >= 2.0
        })
        .await;
        // The validator on the same address is neither.
        assert_eq!(a.metrics.peers(), 1, "validator 1 stays connected");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_peer_with_another_genesis_is_refused_when_its_stream_opens() {
        let keys: Vec<KeyPair> = (0..2u8).map(|i| KeyPair::from_seed([i + 1; 32])).collect();
        let ports: Vec<u16> = (0..2).map(|_| free_port()).collect();
        let mut a = node_of(&keys, &ports, 0, &[], b"genesis A");
        let b = node_of(&keys, &ports, 1, &[0], b"genesis B");
        let refused = "phalanx_invalid_messages_total{peer=\"1\",reason=\"genesis_mismatch\"}";
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while series(&a.metrics, refused) < 1.0 {
            assert!(tokio::time::Instant::now() < deadline, "never refused");
            let _ = b.gossip.outbound.send(vec![7u8; 50]).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            a.gossip.inbound.try_recv().is_err(),
            "nothing from the other chain gets through"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn transaction_batches_reach_each_validator_once_and_bad_ones_drop_the_stream() {
        let keys: Vec<KeyPair> = (0..3u8).map(|i| KeyPair::from_seed([i + 1; 32])).collect();
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mut a = node(&keys, &ports, 0, &[]);
        let mut b = node(&keys, &ports, 1, &[0]);
        let c = node(&keys, &ports, 2, &[0, 1]);

        // Until every link is up, batches may be dropped: resend until both
        // peers have one, then check what they got.
        let txs = vec![vec![1u8; 100], vec![2u8; 120], vec![3u8; 90]];
        let mut got_a = None;
        let mut got_b = None;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while got_a.is_none() || got_b.is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "batches never arrived"
            );
            for t in &txs {
                c.gossip.outbound.send(t.clone()).await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            if let Ok(batch) = a.gossip.inbound.try_recv() {
                got_a = Some(batch);
            }
            if let Ok(batch) = b.gossip.inbound.try_recv() {
                got_b = Some(batch);
            }
        }
        assert_eq!(got_a.unwrap(), txs);
        assert_eq!(got_b.unwrap(), txs);
        assert!(series(&c.metrics, "phalanx_messages_sent_total{kind=\"tx_batch\"}") >= 2.0);
        assert!(
            series(
                &a.metrics,
                "phalanx_messages_received_total{kind=\"tx_batch\"}"
            ) >= 1.0
        );
        // Never relayed: a sent no batch of its own after receiving c's.
        assert_eq!(
            series(&a.metrics, "phalanx_messages_sent_total{kind=\"tx_batch\"}"),
            0.0
        );

        // Validator c writes a frame that is not a batch straight onto a
        // transaction stream to a: counted against c, and the stream goes.
        let bad = "phalanx_invalid_messages_total{peer=\"2\",reason=\"bad_gossip_batch\"}";
        assert_eq!(series(&a.metrics, bad), 0.0);
        let a_id = peer_id_of(&keys[0].public()).unwrap();
        let mut s = c
            .net
            .control()
            .open_stream(a_id, TX_PROTOCOL)
            .await
            .unwrap();
        let mut frame = Vec::new();
        push_frame(&mut frame, &hello(&Digest::of(b"net test genesis")));
        push_frame(&mut frame, b"not a batch");
        s.write_all(&frame).await.unwrap();
        s.flush().await.unwrap();
        eventually("the bad batch is counted", || {
            series(&a.metrics, bad) == 1.0
        })
        .await;
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut rest)).await;
        assert!(
            matches!(closed, Ok(Ok(0))),
            "a closes the stream: {closed:?}"
        );

        // An oversized length prefix is refused before any allocation.
        let big = "phalanx_invalid_messages_total{peer=\"2\",reason=\"oversized_frame\"}";
        let mut s = c
            .net
            .control()
            .open_stream(a_id, TX_PROTOCOL)
            .await
            .unwrap();
        s.write_all(&((MAX_GOSSIP_BYTES + 1) as u32).to_be_bytes())
            .await
            .unwrap();
        s.flush().await.unwrap();
        eventually("the oversized frame is counted", || {
            series(&a.metrics, big) == 1.0
        })
        .await;
        drop(b.net);
    }
}
