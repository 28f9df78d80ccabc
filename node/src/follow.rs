//! Full nodes: following the chain from validators without voting.
//!
//! This module owns the follower: it asks validators (over the state sync
//! protocol, which they serve to keys outside the set under a bound of
//! their own) for committed blocks after its head, and applies a block only
//! once the blocks themselves prove it committed: each carries a quorum
//! certificate of the genesis validators, its parent is the block before
//! it, its payload is the one its header commits to, and a certified
//! child in the next view follows it (the two-chain commit rule, P10). It
//! then checks the execution results later headers certify (P22) against
//! its own: a difference stops it, loudly.
//!
//! It never trusts a validator's word: a Byzantine one can only stall it
//! (it asks the next), send junk (refused, and asked last from then on),
//! or withhold the newest blocks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use phalanx_consensus::{Block, CheckpointCert, ExecResult, QuorumCert, commits_parent};
use phalanx_crypto::{ChainId, Digest, ValidatorSet};
use phalanx_ledger::Genesis;
use phalanx_storage::{StorageError, Store};
use thiserror::Error;
use tracing::{error, info, warn};

use crate::shared::{CommitNotice, Shared};
use crate::statesync::{self, MAX_FOLLOW_BLOCKS, StateRequest, StateResponse};

/// How long the follower waits before asking again when no new block is
/// proven committed.
pub const FOLLOW_POLL: Duration = Duration::from_millis(100);
/// At most one warning per peer this often.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Why a batch of blocks is refused, or the follower stops.
#[derive(Debug, Error)]
pub enum FollowError {
    /// A block's certificate does not verify, or is not its own.
    #[error("block at height {height}: {why}")]
    BadBlock {
        /// Its height.
        height: u64,
        /// What is wrong.
        why: String,
    },
    /// This node's execution differs from a certified result.
    #[error(
        "height {height}: this node's execution result differs from the one the validators certified (ours: state root {ours}, certified: {theirs}); its binary or data diverged"
    )]
    Diverged {
        /// The height.
        height: u64,
        /// Our state root.
        ours: String,
        /// The certified one.
        theirs: String,
    },
    /// The store failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Checks blocks served as the chain after `(head_height, head_id)`;
/// returns how many of them, from the first, are proven committed.
pub fn provably_committed(
    validators: &ValidatorSet,
    chain: &ChainId,
    (head_height, head_id): (u64, Digest),
    blocks: &[(Block, QuorumCert)],
) -> Result<usize, FollowError> {
    let (mut prev_h, mut prev_id) = (head_height, head_id);
    let bad = |height: u64, why: &str| FollowError::BadBlock {
        height,
        why: why.to_string(),
    };
    for (b, c) in blocks {
        let h = b.height().0;
        let id = b.id();
        if h != prev_h + 1 || b.header.parent != prev_id {
            return Err(bad(h, "does not extend the block before it"));
        }
        if b.header.justify.payload.block_id != b.header.parent {
            return Err(bad(h, "its justify is not its parent's certificate"));
        }
        if Digest::of(&b.payload) != b.header.payload_digest {
            return Err(bad(h, "payload is not the one its header commits to"));
        }
        if c.payload.block_id != id || c.payload.height != b.height() || c.payload.view != b.view()
        {
            return Err(bad(h, "certificate is for another block"));
        }
        c.verify(validators, chain)
            .map_err(|e| bad(h, &format!("certificate: {e}")))?;
        (prev_h, prev_id) = (h, id);
    }
    // A certified block whose justify is its parent's certificate from the
    // view just before commits that parent, and with it every block below.
    Ok(blocks
        .iter()
        .enumerate()
        .skip(1)
        .rev()
        .find(|(_, (b, _))| commits_parent(b))
        .map_or(0, |(i, _)| i))
}

/// Checks the execution results `header_exec` certifies against this
/// node's own, for the heights it has executed.
fn check_certified(store: &Store, certified: &[ExecResult]) -> Result<(), FollowError> {
    for r in certified {
        if let Some(ours) = store.exec_result(r.height)?
            && ours != *r
        {
            return Err(FollowError::Diverged {
                height: r.height.0,
                ours: ours.state_root.to_hex(),
                theirs: r.state_root.to_hex(),
            });
        }
    }
    Ok(())
}

/// Follows the chain from `peers` into `store` until an error: applies
/// every block proven committed, publishes each commit to `shared`, and
/// records the stable checkpoints peers show (which prune the store).
pub async fn follow(
    mut control: libp2p_stream::Control,
    peers: Vec<PeerId>,
    genesis: Genesis,
    store: Arc<Store>,
    shared: Arc<Shared>,
) -> Result<(), FollowError> {
    let validators = genesis.validator_set().map_err(|e| FollowError::BadBlock {
        height: 0,
        why: e.to_string(),
    })?;
    let chain = genesis.consensus_chain();
    // Peers that sent junk or stalled: asked after the others.
    let mut suspects: Vec<PeerId> = Vec::new();
    let mut warned: std::collections::HashMap<PeerId, Instant> = Default::default();
    let mut next = 0usize;
    let mut last_progress = Instant::now();
    loop {
        if peers.is_empty() {
            tokio::time::sleep(FOLLOW_POLL).await;
            continue;
        }
        let mut order: Vec<PeerId> = peers.clone();
        order.rotate_left(next % peers.len());
        order.sort_by_key(|p| suspects.contains(p));
        next += 1;
        let peer = order[0];
        let head = store.head();
        let req = StateRequest::Blocks {
            from: head.height + 1,
            max: MAX_FOLLOW_BLOCKS as u16,
        };
        let mut warn_peer = |peer: PeerId, why: String| {
            let now = Instant::now();
            if warned
                .get(&peer)
                .is_none_or(|t| now.duration_since(*t) >= WARN_EVERY)
            {
                warned.insert(peer, now);
                warn!(%peer, "follow: {why}; asking another validator");
            }
        };
        let (blocks, stable) = match statesync::request(&mut control, peer, &req).await {
            Some(StateResponse::Blocks { blocks, stable, .. }) => (blocks, stable),
            Some(StateResponse::Error(e)) => {
                warn_peer(peer, format!("peer answered: {e}"));
                tokio::time::sleep(FOLLOW_POLL).await;
                continue;
            }
            Some(_) | None => {
                if !suspects.contains(&peer) {
                    suspects.push(peer);
                }
                warn_peer(peer, "no answer or an answer of the wrong kind".into());
                tokio::time::sleep(FOLLOW_POLL).await;
                continue;
            }
        };
        let proven =
            match provably_committed(&validators, &chain, (head.height, head.block_id), &blocks) {
                Ok(n) => n,
                Err(e) => {
                    if !suspects.contains(&peer) {
                        suspects.push(peer);
                    }
                    warn_peer(peer, format!("refused its blocks: {e}"));
                    continue;
                }
            };
        suspects.retain(|p| *p != peer);
        for (b, c) in blocks.iter().take(proven) {
            let res = store.apply_block(b, c)?;
            check_certified(&store, &b.header.exec)?;
            let h = b.height().0;
            shared.note_commit(h);
            // No subscriber is not an error.
            let _ = shared.commits.send(CommitNotice {
                height: h,
                block_id: res.head.block_id,
                state_root: res.head.state_root,
                receipts: Arc::new(res.receipts),
            });
        }
        // The newest blocks' certified results, for heights applied above.
        for (b, _) in blocks.iter().skip(proven) {
            check_certified(&store, &b.header.exec)?;
        }
        if let Some(cp) = stable {
            note_checkpoint(&store, &validators, &chain, &cp);
        }
        if proven > 0 {
            if last_progress.elapsed() >= Duration::from_secs(10) {
                info!(height = store.head().height, "following");
            }
            last_progress = Instant::now();
        } else {
            tokio::time::sleep(FOLLOW_POLL).await;
        }
    }
}

/// Records a peer's stable checkpoint when it verifies and this node has
/// the same block and state at its height (it prunes what it keeps).
fn note_checkpoint(store: &Store, validators: &ValidatorSet, chain: &ChainId, cp: &CheckpointCert) {
    let h = cp.payload.height;
    let newer = store
        .stable_checkpoint()
        .ok()
        .flatten()
        .is_none_or(|s| s.payload.height < h);
    if !newer || h.0 > store.head().height || cp.verify(validators, chain).is_err() {
        return;
    }
    match store.exec_result(h) {
        Ok(Some(r))
            if r.block_id == cp.payload.block_id && r.state_root == cp.payload.state_root =>
        {
            if let Err(e) = store.put_stable_checkpoint(cp) {
                warn!("recording stable checkpoint {}: {e}", h.0);
            }
        }
        Ok(Some(_)) => {
            error!(
                height = h.0,
                "a stable checkpoint of the validators differs from this node's own block or state"
            );
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use phalanx_consensus::{BlockHeader, Height, Idleness, View, Vote, genesis_qc};
    use phalanx_crypto::{Certificate, KeyPair, ValidatorIndex, Verified, encode};

    struct Chain {
        set: ValidatorSet,
        chain: ChainId,
        genesis: Block,
        blocks: Vec<(Block, QuorumCert)>,
    }

    /// Genesis and blocks in `views`, each certified by three of four.
    fn chain(views: &[u64]) -> Chain {
        let keys: Vec<KeyPair> = (0..4u8).map(|i| KeyPair::from_seed([i + 31; 32])).collect();
        let set = ValidatorSet::new(keys.iter().map(|k| k.public()).collect()).unwrap();
        let chain = ChainId::new("follow").unwrap();
        let genesis = Block::genesis(&chain, 1_000);
        let mut parent = genesis.clone();
        let mut justify = genesis_qc(&genesis);
        let mut blocks = Vec::new();
        for (i, v) in views.iter().enumerate() {
            let payload = vec![i as u8; 3];
            let b = Block {
                header: BlockHeader {
                    parent: parent.id(),
                    height: Height(i as u64 + 1),
                    view: View(*v),
                    proposer: ValidatorIndex(0),
                    timestamp_ms: 2_000 + i as u64,
                    payload_digest: Digest::of(&payload),
                    justify: justify.clone(),
                    idle: Idleness::default(),
                    exec_next: Height(1),
                    exec: vec![],
                },
                payload,
            };
            let vote = Vote {
                view: b.view(),
                height: b.height(),
                block_id: Digest::of(&encode(&b.header)),
            };
            let votes: Vec<_> = (0..3u16)
                .map(|k| Verified::sign(&keys[k as usize], ValidatorIndex(k), &chain, vote))
                .collect();
            let qc = Certificate::aggregate(&votes, &set).unwrap();
            blocks.push((b.clone(), qc.clone()));
            parent = b;
            justify = qc;
        }
        Chain {
            set,
            chain,
            genesis,
            blocks,
        }
    }

    fn proven(c: &Chain) -> Result<usize, FollowError> {
        provably_committed(&c.set, &c.chain, (0, c.genesis.id()), &c.blocks)
    }

    #[test]
    fn only_blocks_below_a_two_chain_of_consecutive_views_are_applied() {
        // Views 1 2 3 5: block 3 (view 3) commits block 2; block 4 (view
        // 5, after a timeout) commits nothing; 3 and 4 wait.
        assert_eq!(proven(&chain(&[1, 2, 3, 5])).unwrap(), 2);
        assert_eq!(proven(&chain(&[1, 3, 5, 7])).unwrap(), 0);
        assert_eq!(proven(&chain(&[1, 2])).unwrap(), 1);
        assert_eq!(proven(&chain(&[1])).unwrap(), 0);
    }

    #[test]
    fn a_forged_or_altered_block_is_refused() {
        let mut c = chain(&[1, 2, 3]);
        c.blocks[1].0.payload.push(0);
        assert!(matches!(
            proven(&c),
            Err(FollowError::BadBlock { height: 2, .. })
        ));
        let mut c = chain(&[1, 2, 3]);
        c.blocks[2].1.signatures.pop();
        assert!(matches!(
            proven(&c),
            Err(FollowError::BadBlock { height: 3, .. })
        ));
        let mut c = chain(&[1, 2, 3]);
        c.blocks.swap(0, 1);
        assert!(proven(&c).is_err());
        let mut c = chain(&[1, 2, 3]);
        let other = chain(&[1, 2, 3]);
        c.blocks[1].1 = other.blocks[0].1.clone();
        assert!(proven(&c).is_err());
    }
}
