//! State sync: a new or wiped validator, or one that fell further behind
//! than its peers keep blocks, fetches the latest stable checkpoint and its
//! state snapshot from peers, verifying everything, before consensus
//! starts; block sync then brings it to the tip.
//!
//! This module owns the `/phalanx/state/2` protocol (one request and one
//! response per stream, both length-prefixed and bounded) and both sides of
//! it. A checkpoint is trusted only with a quorum certificate of the
//! validator set, its block only if the block's id matches and its own
//! commit certificate verifies, the snapshot manifest only if it folds to
//! the certified state root, and each bucket of accounts only if it gives
//! the manifest's summary (`phalanx_storage::StateRestore`), before any of
//! it is written. A peer that sends junk, stalls or cannot serve the
//! snapshot is dropped (log line and metric) and the sync goes on with the
//! others.
//!
//! The restore is built in its own directory (`db.restore`, next to the
//! store's `db`) and swapped in only when complete, so a validator that
//! stops mid-restore keeps its store and starts the restore again by
//! itself; [`settle`] finishes or discards an interrupted swap at start.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{PeerId, StreamProtocol};
use phalanx_consensus::{Block, CheckpointCert, Height, QuorumCert, Verifier};
use phalanx_crypto::{decode, encode};
use phalanx_ledger::{Genesis, KeyHash};
use phalanx_storage::{
    MAX_CHUNK_ACCOUNTS, SnapshotManifest, StateChunk, StateRestore, Store, StoreOptions,
};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

/// The state sync protocol.
pub const STATE_PROTOCOL: StreamProtocol = StreamProtocol::new("/phalanx/state/2");
/// Largest request, bytes.
pub const MAX_REQUEST_BYTES: usize = 1024;
/// Largest response, bytes (a chunk of 4096 accounts is about 250 KiB; an
/// offer carries a block of up to 4 MiB and a manifest of up to 135 KiB).
pub const MAX_RESPONSE_BYTES: usize = 16 << 20;
/// How long one request may take; a peer slower than this is dropped as
/// stalled.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// State requests one validator may have served at once; a syncing
/// validator asks one peer one chunk at a time.
pub const MAX_REQUESTS_IN_FLIGHT: usize = 4;
/// Rounds of asking every peer again after all were dropped.
const MAX_ROUNDS: usize = 5;
/// Progress is logged this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// The store's directory inside the data directory.
pub const DB_DIR: &str = "db";
/// Where a restore is built.
const RESTORE_DIR: &str = "db.restore";
/// Where the replaced store waits to be deleted.
const OLD_DIR: &str = "db.old";
/// How long to look for peers' checkpoints before giving up on state sync.
const DISCOVERY: Duration = Duration::from_secs(20);

/// A request.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum StateRequest {
    /// The peer's latest stable checkpoint, with what restoring it needs.
    Checkpoint,
    /// Accounts of one snapshot bucket.
    Chunk {
        /// Checkpoint height.
        height: u64,
        /// Manifest depth.
        depth: u8,
        /// Bucket.
        bucket: u32,
        /// Resume after this key.
        after: Option<KeyHash>,
    },
    /// Committed blocks from a height on, with their certificates (what a
    /// full node follows the chain by).
    Blocks {
        /// The first height wanted.
        from: u64,
        /// Most blocks wanted (the answer holds at most
        /// [`MAX_FOLLOW_BLOCKS`] and [`MAX_RESPONSE_BYTES`]).
        max: u16,
    },
}

/// Most blocks in one [`StateResponse::Blocks`].
pub const MAX_FOLLOW_BLOCKS: usize = 256;
/// State requests answered at once for all keys outside the validator set
/// together (full nodes): they share this bound, validators are never
/// held behind it.
pub const MAX_OUTSIDER_REQUESTS_IN_FLIGHT: usize = 8;

/// What a checkpoint offer carries.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Offer {
    /// The checkpoint certificate.
    pub cert: CheckpointCert,
    /// The checkpoint's block.
    pub block: Block,
    /// The certificate that committed it.
    pub qc: QuorumCert,
    /// The snapshot's manifest.
    pub manifest: SnapshotManifest,
    /// The lowest height above genesis whose block the peer still serves:
    /// a validator whose head is below it cannot block-sync from this peer.
    pub retained_from: u64,
}

/// A response.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum StateResponse {
    /// The latest checkpoint, if the peer has one.
    Checkpoint(Option<Box<Offer>>),
    /// A chunk.
    Chunk(StateChunk),
    /// The request cannot be served.
    Error(String),
    /// Committed blocks, each with its own certificate, ascending from the
    /// height asked for.
    Blocks {
        /// The peer's head.
        head: u64,
        /// The blocks.
        blocks: Vec<(Block, QuorumCert)>,
        /// The peer's latest stable checkpoint.
        stable: Option<CheckpointCert>,
    },
}

async fn read_frame(s: &mut libp2p::Stream, max: usize) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.ok()?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return None;
    }
    let mut buf = vec![0u8; len];
    s.read_exact(&mut buf).await.ok()?;
    Some(buf)
}

async fn write_frame(s: &mut libp2p::Stream, bytes: &[u8]) -> Option<()> {
    s.write_all(&(bytes.len() as u32).to_be_bytes())
        .await
        .ok()?;
    s.write_all(bytes).await.ok()?;
    s.flush().await.ok()?;
    Some(())
}

/// The offer `store` makes: its latest stable checkpoint with what
/// restoring it needs (`None` before the first).
pub fn offer(store: &Store) -> Result<Option<Offer>, phalanx_storage::StorageError> {
    let Some(cert) = store.stable_checkpoint()? else {
        return Ok(None);
    };
    let h = cert.payload.height;
    let (Some(block), Some(qc), Some(manifest)) =
        (store.block(h)?, store.cert(h)?, store.snapshot_manifest()?)
    else {
        return Ok(None);
    };
    Ok(Some(Offer {
        cert,
        block,
        qc,
        manifest: (*manifest).clone(),
        retained_from: store.first_retained_block()?.0,
    }))
}

/// The answer `store` gives a peer's request (run off the async workers:
/// it reads the store).
pub fn answer(store: &Store, req: StateRequest) -> StateResponse {
    let res = (|| -> Result<StateResponse, phalanx_storage::StorageError> {
        match req {
            StateRequest::Checkpoint => Ok(StateResponse::Checkpoint(offer(store)?.map(Box::new))),
            StateRequest::Chunk {
                height,
                depth,
                bucket,
                after,
            } => Ok(StateResponse::Chunk(store.snapshot_chunk(
                height,
                depth,
                bucket,
                after,
                MAX_CHUNK_ACCOUNTS,
            )?)),
            StateRequest::Blocks { from, max } => {
                let head = store.head().height;
                let mut blocks = Vec::new();
                // Room for the response's own framing besides the blocks.
                let mut bytes = 1024;
                let last = head.min(
                    from.saturating_add(u64::from(max).min(MAX_FOLLOW_BLOCKS as u64))
                        .saturating_sub(1),
                );
                for h in from.max(1)..=last {
                    let (Some(b), Some(c)) = (store.block(Height(h))?, store.cert(Height(h))?)
                    else {
                        break;
                    };
                    bytes += b.payload.len() + 1024;
                    if bytes > MAX_RESPONSE_BYTES && !blocks.is_empty() {
                        break;
                    }
                    blocks.push((b, c));
                }
                Ok(StateResponse::Blocks {
                    head,
                    blocks,
                    stable: store.stable_checkpoint()?,
                })
            }
        }
    })();
    res.unwrap_or_else(|e| StateResponse::Error(e.to_string()))
}

/// Requests being answered, per peer: at most [`MAX_REQUESTS_IN_FLIGHT`]
/// each. Keyed by validators only (the caller refuses other keys first),
/// so the map is bounded by the validator set.
#[derive(Default)]
pub struct PeerSlots(std::collections::HashMap<PeerId, Arc<tokio::sync::Semaphore>>);

impl PeerSlots {
    /// A slot for one request from `peer`, held until the answer is
    /// written; `None` while the peer has its bound in flight.
    pub fn take(&mut self, peer: PeerId) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.0
            .entry(peer)
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(MAX_REQUESTS_IN_FLIGHT)))
            .clone()
            .try_acquire_owned()
            .ok()
    }
}

/// Serves state sync requests from validators until the node stops.
/// Until `store` holds the store (while this node is syncing itself, or
/// opening), there is nothing to offer: checkpoint requests are answered
/// "none" at once, so peers starting together do not wait for each other.
pub async fn serve(
    mut control: libp2p_stream::Control,
    validators: Arc<std::collections::HashSet<PeerId>>,
    store: tokio::sync::watch::Receiver<Option<Arc<Store>>>,
    outsiders_seen: crate::net::OutsiderActivity,
) {
    let mut incoming = match control.accept(STATE_PROTOCOL) {
        Ok(i) => i,
        Err(e) => {
            warn!("state sync protocol not served: {e}");
            return;
        }
    };
    let mut in_flight = PeerSlots::default();
    let outsiders = Arc::new(tokio::sync::Semaphore::new(MAX_OUTSIDER_REQUESTS_IN_FLIGHT));
    while let Some((peer, mut stream)) = incoming.next().await {
        // Each request may read megabytes: a validator has at most a few
        // answered at once, and its extra streams are dropped unread. Keys
        // outside the validator set (full nodes; the network layer bounds
        // their connections) share one bound of their own.
        let slot = if validators.contains(&peer) {
            in_flight.take(peer)
        } else {
            outsiders_seen.note(peer);
            outsiders.clone().try_acquire_owned().ok()
        };
        let Some(slot) = slot else {
            debug!(%peer, "state request over the in-flight bound dropped");
            continue;
        };
        let store = store.borrow().clone();
        tokio::spawn(async move {
            let _slot = slot;
            let Some(req) = read_frame(&mut stream, MAX_REQUEST_BYTES).await else {
                return;
            };
            let Ok(req) = decode::<StateRequest>(&req, MAX_REQUEST_BYTES) else {
                return;
            };
            #[cfg(feature = "byzantine")]
            match crate::byzantine::state_lie(&req) {
                Some(crate::byzantine::StateLie::Stall) => {
                    tokio::time::sleep(crate::byzantine::STALL).await;
                    return;
                }
                Some(crate::byzantine::StateLie::Answer(lie)) => {
                    let _ = write_frame(&mut stream, &encode(&lie)).await;
                    let _ = stream.close().await;
                    return;
                }
                None => {}
            }
            let resp = match (store, req) {
                (Some(store), req) => tokio::task::spawn_blocking(move || answer(&store, req))
                    .await
                    .unwrap_or_else(|e| StateResponse::Error(e.to_string())),
                (None, StateRequest::Checkpoint) => StateResponse::Checkpoint(None),
                (None, StateRequest::Chunk { .. } | StateRequest::Blocks { .. }) => {
                    StateResponse::Error("this validator is starting; ask another".into())
                }
            };
            let _ = write_frame(&mut stream, &encode(&resp)).await;
            let _ = stream.close().await;
        });
    }
}

/// Sends one state request to `peer` and reads its answer (bounded in
/// size and time; `None` on any failure).
pub async fn request(
    control: &mut libp2p_stream::Control,
    peer: PeerId,
    req: &StateRequest,
) -> Option<StateResponse> {
    let fut = async {
        let mut s = control.open_stream(peer, STATE_PROTOCOL).await.ok()?;
        write_frame(&mut s, &encode(req)).await?;
        let bytes = read_frame(&mut s, MAX_RESPONSE_BYTES).await?;
        decode::<StateResponse>(&bytes, MAX_RESPONSE_BYTES).ok()
    };
    tokio::time::timeout(REQUEST_TIMEOUT, fut)
        .await
        .ok()
        .flatten()
}

/// Errors of a state sync.
#[derive(Debug, thiserror::Error)]
pub enum StateSyncError {
    /// The store failed or refused a chunk.
    #[error(transparent)]
    Storage(#[from] phalanx_storage::StorageError),
    /// No peer could deliver a verified snapshot.
    #[error("state sync: {0}")]
    Failed(String),
}

/// Checks an offer against the validator set: certificate, block, commit
/// certificate, manifest.
pub fn check_offer(
    offer: &Offer,
    genesis: &Genesis,
    verifier: &mut Verifier,
) -> Result<(), String> {
    let set = genesis.validator_set().map_err(|e| e.to_string())?;
    offer
        .cert
        .verify(&set, &genesis.consensus_chain())
        .map_err(|e| format!("checkpoint certificate: {e}"))?;
    let id = offer.block.id();
    if id != offer.cert.payload.block_id || offer.block.height() != offer.cert.payload.height {
        return Err("block is not the checkpoint's".into());
    }
    if offer.qc.payload.block_id != id {
        return Err("commit certificate is for another block".into());
    }
    verifier
        .verify_qc(&offer.qc)
        .map_err(|e| format!("commit certificate: {e}"))?;
    offer
        .manifest
        .verify(offer.cert.payload.height.0, offer.cert.payload.state_root)
        .map_err(|e| e.to_string())
}

/// Finishes or discards what an interrupted restore left in data
/// directory `data`, before the store is opened: a complete restore whose
/// swap was cut short is put in place; a restore that was still running is
/// deleted (the next sync starts it again).
pub fn settle(data: &Path) -> std::io::Result<()> {
    let (db, restore, old) = (
        data.join(DB_DIR),
        data.join(RESTORE_DIR),
        data.join(OLD_DIR),
    );
    if restore.exists() {
        if db.exists() {
            warn!(path = %restore.display(), "an interrupted state restore is discarded; it starts again");
            std::fs::remove_dir_all(&restore)?;
        } else {
            // Cut between the two renames of the swap: the restore was
            // complete (its last batch was written before the swap began).
            info!("completing an interrupted state restore swap");
            std::fs::rename(&restore, &db)?;
        }
    }
    if old.exists() {
        std::fs::remove_dir_all(&old)?;
    }
    Ok(())
}

/// Why a peer was dropped from a sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PeerFault {
    /// It sent a chunk that failed verification, or an answer of the
    /// wrong kind.
    Junk,
    /// It did not answer in time (or the stream failed).
    Stalled,
    /// It no longer serves the snapshot being restored.
    NotRetained,
}

impl PeerFault {
    fn label(self) -> &'static str {
        match self {
            PeerFault::Junk => "junk",
            PeerFault::Stalled => "stalled",
            PeerFault::NotRetained => "not_retained",
        }
    }
}

/// Asks every peer for its latest stable checkpoint until one answers with
/// a verified offer, or all have answered, or time runs out; returns the
/// highest verified offer, who made it, and the `retained_from` of every
/// verified offer (see [`needs_restore`]).
async fn discover(
    control: &mut libp2p_stream::Control,
    peers: &[PeerId],
    genesis: &Genesis,
    verifier: &mut Verifier,
) -> Option<(PeerId, Offer, Vec<u64>)> {
    let deadline = tokio::time::Instant::now() + DISCOVERY;
    let mut best: Option<(PeerId, Offer)> = None;
    let mut retained_from = Vec::new();
    let mut answered = std::collections::HashSet::new();
    while tokio::time::Instant::now() < deadline && answered.len() < peers.len() {
        for p in peers {
            if answered.contains(p) {
                continue;
            }
            match request(control, *p, &StateRequest::Checkpoint).await {
                Some(StateResponse::Checkpoint(offer)) => {
                    answered.insert(*p);
                    if let Some(o) = offer {
                        match check_offer(&o, genesis, verifier) {
                            Ok(()) => {
                                retained_from.push(o.retained_from);
                                let h = o.cert.payload.height;
                                if best.as_ref().is_none_or(|(_, b)| b.cert.payload.height < h) {
                                    best = Some((*p, *o));
                                }
                            }
                            Err(e) => warn!(peer = %p, "checkpoint offer refused: {e}"),
                        }
                    }
                }
                _ => debug!(peer = %p, "no checkpoint answer yet"),
            }
        }
        if best.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    best.map(|(p, o)| (p, o, retained_from))
}

/// Whether a store whose head is `head` restores a checkpoint at
/// `checkpoint`: never backwards, and only for a store at genesis or one
/// below the lowest block the peers still keep, which block sync cannot
/// close. Of the `retained_from` the peers offered, the highest counts:
/// one peer's low claim must not hide that the others no longer keep this
/// node's gap (it would keep a far-behind node restarting for good).
pub fn needs_restore(head: u64, checkpoint: u64, retained_from: &[u64]) -> bool {
    let kept_from = retained_from.iter().copied().max().unwrap_or(0);
    checkpoint > head && (head == 0 || head + 1 < kept_from)
}

/// Restores a peer's latest stable checkpoint if this store needs it: a
/// store at genesis, or one whose head is below the lowest block the peer
/// still serves (it cannot block-sync that gap). Returns the store to run
/// on: `store` itself, or the restored one, swapped in at `data`/`db`.
/// `peers` are the other validators' peer ids.
pub async fn catch_up(
    mut control: libp2p_stream::Control,
    peers: Vec<PeerId>,
    genesis: &Genesis,
    store: Store,
    (data, options): (&Path, &StoreOptions),
    metrics: &crate::metrics::Metrics,
) -> Result<Store, StateSyncError> {
    if peers.is_empty() {
        return Ok(store);
    }
    let genesis_block = Block::genesis(&genesis.consensus_chain(), genesis.genesis_time_ms);
    let set = genesis
        .validator_set()
        .map_err(|e| StateSyncError::Failed(e.to_string()))?;
    let mut verifier = Verifier::new(
        set,
        genesis.consensus_chain(),
        &genesis_block,
        genesis.params.max_block_bytes as usize,
    );
    let head = store.head().height;
    let mut attempts = 0;
    // Peers that stalled or sent junk in an earlier attempt: asked last.
    let mut suspects = std::collections::HashSet::new();
    let restored = loop {
        attempts += 1;
        let Some((first, offer, retained_from)) =
            discover(&mut control, &peers, genesis, &mut verifier).await
        else {
            if head == 0 {
                info!("no stable checkpoint offered; starting from genesis");
            }
            return Ok(store);
        };
        let h = offer.cert.payload.height.0;
        if !needs_restore(head, h, &retained_from) {
            return Ok(store);
        }
        info!(
            height = h,
            head,
            accounts = offer.manifest.accounts,
            reason = if head == 0 {
                "new store"
            } else {
                "peers no longer keep the blocks after this head"
            },
            "state sync starting"
        );
        let target = (genesis, data, options);
        let order = peer_order(&peers, first, &suspects);
        match restore_offer(&mut control, &order, &mut suspects, &offer, target, metrics).await {
            Ok(r) => break (r, offer),
            Err(e) if attempts < MAX_ROUNDS => {
                warn!("state sync of checkpoint {h} failed ({e}); asking for a newer checkpoint");
            }
            Err(e) => return Err(e),
        }
    };
    let (restored, offer) = restored;
    let h = offer.cert.payload.height.0;
    // Swap: the old store out, the restored one in.
    drop(store);
    drop(restored);
    let (db, restore, old) = (
        data.join(DB_DIR),
        data.join(RESTORE_DIR),
        data.join(OLD_DIR),
    );
    let io = |e: std::io::Error| StateSyncError::Failed(format!("swapping in the restore: {e}"));
    std::fs::rename(&db, &old).map_err(io)?;
    std::fs::rename(&restore, &db).map_err(io)?;
    std::fs::remove_dir_all(&old).map_err(io)?;
    let store = Store::open(&db, genesis, options.clone())?;
    info!(height = h, "state sync complete");
    Ok(store)
}

/// The order peers are asked for a snapshot's chunks: `first` (whose
/// offer is restored), then the rest, except that peers in `suspects`
/// (they stalled or sent junk in an earlier attempt) go last. Snapshots
/// are served only for two checkpoint intervals: a liar asked first on
/// every attempt could stall each one until its snapshot is gone.
pub fn peer_order(
    peers: &[PeerId],
    first: PeerId,
    suspects: &std::collections::HashSet<PeerId>,
) -> Vec<PeerId> {
    let mut order = vec![first];
    order.extend(peers.iter().copied().filter(|p| *p != first));
    // Stable: the order among honest-looking peers is kept.
    order.sort_by_key(|p| suspects.contains(p));
    order
}

/// Restores `offer` into a new store in `data`/`db.restore`, asking the
/// peers in `order` in turn, dropping peers that fail; those that stall or
/// send junk join `suspects`.
async fn restore_offer(
    control: &mut libp2p_stream::Control,
    order: &[PeerId],
    suspects: &mut std::collections::HashSet<PeerId>,
    offer: &Offer,
    (genesis, data, options): (&Genesis, &Path, &StoreOptions),
    metrics: &crate::metrics::Metrics,
) -> Result<Store, StateSyncError> {
    let dir = data.join(RESTORE_DIR);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .map_err(|e| StateSyncError::Failed(format!("clearing {}: {e}", dir.display())))?;
    }
    let fresh = Store::open(&dir, genesis, options.clone())?;
    let mut restore = StateRestore::new(fresh, offer.cert.clone(), offer.manifest.clone())?;
    let mut dropped: std::collections::HashMap<PeerId, PeerFault> = Default::default();
    let mut which = 0usize;
    let mut rounds = 0usize;
    let started = std::time::Instant::now();
    let mut last_log = started;
    let (_, total) = restore.progress();
    metrics.state_sync(0, total, 0, 0);
    while let Some((height, depth, bucket, after)) = restore.next_request() {
        let live: Vec<PeerId> = order
            .iter()
            .copied()
            .filter(|p| !dropped.contains_key(p))
            .collect();
        if live.is_empty() {
            rounds += 1;
            if rounds >= MAX_ROUNDS {
                return Err(StateSyncError::Failed(format!(
                    "every peer failed to serve checkpoint {height} ({} rounds)",
                    MAX_ROUNDS
                )));
            }
            // A peer that no longer serves it has a newer one: ask for
            // that rather than wait on peers that failed otherwise.
            if dropped.values().any(|d| *d == PeerFault::NotRetained) {
                return Err(StateSyncError::Failed(format!(
                    "checkpoint {height} is no longer served"
                )));
            }
            warn!(
                round = rounds,
                "every peer was dropped; asking them all again"
            );
            dropped.clear();
            tokio::time::sleep(Duration::from_secs(2)).await;
            continue;
        }
        let peer = live[which % live.len()];
        let req = StateRequest::Chunk {
            height,
            depth,
            bucket,
            after,
        };
        let (accounts0, bytes0) = (restore.accounts(), restore.bytes());
        let outcome = match request(control, peer, &req).await {
            Some(StateResponse::Chunk(chunk)) => match restore.add_chunk(chunk) {
                Ok(()) => None,
                Err(e) => Some((PeerFault::Junk, e.to_string())),
            },
            Some(StateResponse::Error(e)) if e.contains("nothing retained") => {
                Some((PeerFault::NotRetained, e))
            }
            Some(other) => Some((PeerFault::Junk, format!("unexpected answer {other:?}"))),
            None => Some((PeerFault::Stalled, "no answer in time".into())),
        };
        if let Some((why, detail)) = outcome {
            // The bucket starts over with the next peer: nothing this peer
            // sent of it is kept.
            restore.restart_bucket();
            metrics.state_sync_peer_drop(why.label());
            warn!(peer = %peer, reason = why.label(), "state sync peer dropped: {detail}");
            if why != PeerFault::NotRetained {
                suspects.insert(peer);
            }
            dropped.insert(peer, why);
            which += 1;
            continue;
        }
        let (done, total) = restore.progress();
        metrics.state_sync(
            done,
            total,
            restore.accounts() - accounts0,
            restore.bytes() - bytes0,
        );
        if last_log.elapsed() >= PROGRESS_EVERY {
            last_log = std::time::Instant::now();
            let secs = started.elapsed().as_secs_f64().max(0.001);
            info!(
                buckets_done = done,
                buckets_total = total,
                bytes = restore.bytes(),
                bytes_per_second = (restore.bytes() as f64 / secs) as u64,
                "state sync progress"
            );
        }
    }
    let accounts = restore.accounts();
    let (done, total) = restore.progress();
    let store = restore.finish(&offer.block, &offer.qc)?;
    info!(
        height = offer.cert.payload.height.0,
        accounts,
        buckets_done = done,
        buckets_total = total,
        secs = started.elapsed().as_secs_f64(),
        "state restored"
    );
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::{MAX_REQUESTS_IN_FLIGHT, PeerSlots, needs_restore, peer_order};

    #[test]
    fn peers_that_failed_an_earlier_attempt_are_asked_last() {
        let p: Vec<libp2p::PeerId> = (0..4).map(|_| libp2p::PeerId::random()).collect();
        let none = Default::default();
        assert_eq!(peer_order(&p, p[2], &none), vec![p[2], p[0], p[1], p[3]]);
        // The liar made the best offer again: it still goes last.
        let liar = std::collections::HashSet::from([p[2]]);
        assert_eq!(peer_order(&p, p[2], &liar), vec![p[0], p[1], p[3], p[2]]);
        let two = std::collections::HashSet::from([p[0], p[2]]);
        assert_eq!(peer_order(&p, p[3], &two), vec![p[3], p[1], p[0], p[2]]);
    }

    #[test]
    fn each_peer_has_at_most_its_bound_of_requests_answered_at_once() {
        let (a, b) = (libp2p::PeerId::random(), libp2p::PeerId::random());
        let mut slots = PeerSlots::default();
        let mut held: Vec<_> = (0..MAX_REQUESTS_IN_FLIGHT)
            .map(|i| slots.take(a).unwrap_or_else(|| panic!("slot {i} refused")))
            .collect();
        assert!(slots.take(a).is_none(), "one over the bound");
        // Another peer is not held up by the first.
        assert!(slots.take(b).is_some());
        // An answered request frees its slot.
        held.pop();
        let again = slots.take(a);
        assert!(again.is_some());
        assert!(slots.take(a).is_none());
    }

    #[test]
    fn a_restore_is_decided_on_the_highest_retained_from_and_never_goes_back() {
        // A new store restores any checkpoint.
        assert!(needs_restore(0, 100, &[]));
        // Head 50; peers keep blocks from 200 on: only a restore closes it.
        assert!(needs_restore(50, 300, &[200]));
        // They keep block 51 on: block sync closes it.
        assert!(!needs_restore(50, 300, &[51]));
        // Never backwards.
        assert!(!needs_restore(400, 300, &[1000]));
        // One peer claiming to keep everything (1) cannot hold a far-behind
        // node back when the others keep from 200, in whatever order the
        // offers came.
        assert!(needs_restore(50, 300, &[1, 200, 200]));
        assert!(needs_restore(50, 300, &[200, 1, 200]));
    }
}
