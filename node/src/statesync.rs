//! State sync: a new or wiped validator fetches the latest stable
//! checkpoint and its state snapshot from peers, verifying everything,
//! before consensus starts; block sync then brings it to the tip.
//!
//! This module owns the `/phalanx/state/1` protocol (one request and one
//! response per stream, both length-prefixed and bounded) and both sides of
//! it. A checkpoint is trusted only with a quorum certificate of the
//! validator set, its block only if the block's id matches and its own
//! commit certificate verifies, the snapshot manifest only if it folds to
//! the certified state root, and each bucket of accounts only if it gives
//! the manifest's summary (`phalanx_storage::StateRestore`).

use std::sync::Arc;
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{PeerId, StreamProtocol};
use phalanx_consensus::{Block, CheckpointCert, QuorumCert, Verifier};
use phalanx_crypto::{decode, encode};
use phalanx_ledger::{Genesis, KeyHash};
use phalanx_storage::{MAX_CHUNK_ACCOUNTS, SnapshotManifest, StateChunk, StateRestore, Store};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

/// The state sync protocol.
pub const STATE_PROTOCOL: StreamProtocol = StreamProtocol::new("/phalanx/state/1");
/// Largest request, bytes.
const MAX_REQUEST_BYTES: usize = 1024;
/// Largest response, bytes (a chunk of 4096 accounts is about 250 KiB; an
/// offer carries a block of up to 4 MiB and a manifest of up to 135 KiB).
const MAX_RESPONSE_BYTES: usize = 16 << 20;
/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
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
}

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

fn answer(store: &Store, req: StateRequest) -> StateResponse {
    let res = (|| -> Result<StateResponse, phalanx_storage::StorageError> {
        match req {
            StateRequest::Checkpoint => {
                let Some(cert) = store.stable_checkpoint()? else {
                    return Ok(StateResponse::Checkpoint(None));
                };
                let h = cert.payload.height;
                let (Some(block), Some(qc), Some(manifest)) =
                    (store.block(h)?, store.cert(h)?, store.snapshot_manifest()?)
                else {
                    return Ok(StateResponse::Checkpoint(None));
                };
                Ok(StateResponse::Checkpoint(Some(Box::new(Offer {
                    cert,
                    block,
                    qc,
                    manifest: (*manifest).clone(),
                }))))
            }
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
        }
    })();
    res.unwrap_or_else(|e| StateResponse::Error(e.to_string()))
}

/// Serves state sync requests from validators until the node stops.
/// Until `store` holds the store (while this node is syncing itself, or
/// opening), there is nothing to offer: checkpoint requests are answered
/// "none" at once, so peers starting together do not wait for each other.
pub async fn serve(
    mut control: libp2p_stream::Control,
    validators: Arc<std::collections::HashSet<PeerId>>,
    store: tokio::sync::watch::Receiver<Option<Arc<Store>>>,
) {
    let mut incoming = match control.accept(STATE_PROTOCOL) {
        Ok(i) => i,
        Err(e) => {
            warn!("state sync protocol not served: {e}");
            return;
        }
    };
    while let Some((peer, mut stream)) = incoming.next().await {
        if !validators.contains(&peer) {
            debug!(%peer, "state request from a non-validator refused");
            continue;
        }
        let store = store.borrow().clone();
        tokio::spawn(async move {
            let Some(req) = read_frame(&mut stream, MAX_REQUEST_BYTES).await else {
                return;
            };
            let Ok(req) = decode::<StateRequest>(&req, MAX_REQUEST_BYTES) else {
                return;
            };
            let resp = match (store, req) {
                (Some(store), req) => tokio::task::spawn_blocking(move || answer(&store, req))
                    .await
                    .unwrap_or_else(|e| StateResponse::Error(e.to_string())),
                (None, StateRequest::Checkpoint) => StateResponse::Checkpoint(None),
                (None, StateRequest::Chunk { .. }) => {
                    StateResponse::Error("this validator is starting; ask another".into())
                }
            };
            let _ = write_frame(&mut stream, &encode(&resp)).await;
            let _ = stream.close().await;
        });
    }
}

async fn request(
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
fn check_offer(offer: &Offer, genesis: &Genesis, verifier: &mut Verifier) -> Result<(), String> {
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

/// If this store is fresh (only genesis) and a peer holds a stable
/// checkpoint, restores it; returns the store either way. `peers` are the
/// other validators' peer ids.
pub async fn sync_if_fresh(
    mut control: libp2p_stream::Control,
    peers: Vec<PeerId>,
    genesis: &Genesis,
    store: Store,
    metrics: &crate::metrics::Metrics,
) -> Result<Store, StateSyncError> {
    if store.head().height != 0 || peers.is_empty() {
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
    // Ask every peer until one answers with a verified offer, or all have
    // answered without one, or time runs out.
    let deadline = tokio::time::Instant::now() + DISCOVERY;
    let mut best: Option<(PeerId, Offer)> = None;
    let mut answered = std::collections::HashSet::new();
    while tokio::time::Instant::now() < deadline && answered.len() < peers.len() {
        for p in &peers {
            if answered.contains(p) {
                continue;
            }
            match request(&mut control, *p, &StateRequest::Checkpoint).await {
                Some(StateResponse::Checkpoint(offer)) => {
                    answered.insert(*p);
                    if let Some(o) = offer {
                        match check_offer(&o, genesis, &mut verifier) {
                            Ok(()) => {
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
    let Some((first, offer)) = best else {
        info!("no stable checkpoint offered; starting from genesis");
        return Ok(store);
    };
    let h = offer.cert.payload.height.0;
    info!(
        height = h,
        accounts = offer.manifest.accounts,
        "state sync starting"
    );
    let mut restore = StateRestore::new(store, offer.cert.clone(), offer.manifest.clone())?;
    // Chunks from the offering peer first, then the others in turn.
    let mut order = vec![first];
    order.extend(peers.iter().copied().filter(|p| *p != first));
    let mut which = 0usize;
    let mut failures = 0usize;
    let mut remaining = offer
        .manifest
        .buckets
        .iter()
        .filter(|b| **b != phalanx_ledger::Subtree::Empty)
        .count();
    metrics.state_sync(remaining, 0);
    while let Some((height, depth, bucket, after)) = restore.next_request() {
        let peer = order[which % order.len()];
        let req = StateRequest::Chunk {
            height,
            depth,
            bucket,
            after,
        };
        match request(&mut control, peer, &req).await {
            Some(StateResponse::Chunk(chunk)) => {
                // A chunk that fails verification poisons the restore: the
                // node stops and asks for a clean data directory rather
                // than trust anything half-written.
                let n = chunk.accounts.len();
                let bucket_done = chunk.bucket_done;
                restore.add_chunk(chunk)?;
                if bucket_done {
                    remaining = remaining.saturating_sub(1);
                }
                metrics.state_sync(remaining, n);
            }
            other => {
                failures += 1;
                which += 1;
                debug!(peer = %peer, "chunk request failed: {other:?}");
                if failures > 20 * order.len() {
                    return Err(StateSyncError::Failed(
                        "peers stopped serving the snapshot".into(),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let accounts = restore.accounts();
    let store = restore.finish(&offer.block, &offer.qc)?;
    info!(height = h, accounts, "state sync complete");
    Ok(store)
}
