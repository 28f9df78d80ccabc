//! Screening of validators' frames on threads of their own (driver D16).
//!
//! Decoding a frame and checking its signatures and certificates is most
//! of what a consensus message costs; a Byzantine validator can make every
//! frame it sends cost that. This module runs the driver's [`Screen`]s on
//! dedicated threads, so the consensus task spends its time on votes,
//! proposals and timers whatever peers send, and verification uses the
//! cores the consensus task does not.
//!
//! It owns the threads and the bounded queues between the network, the
//! threads and the consensus task. It never changes consensus state: every
//! outcome — verified, refused or dropped — goes to the consensus task,
//! which hands it to the driver ([`phalanx_consensus::Driver::on_screened`])
//! in the order the outcomes arrive. One peer's frames always go to the
//! same thread, so they reach the driver in the order they came.
//!
//! Memory: a frame keeps its share of the sender's inbound byte budget
//! ([`crate::net::PEER_INBOUND_BYTES`]) until the consensus task has taken
//! its outcome, so the bytes a peer can have queued here are bounded as on
//! the network side; the frame's bytes themselves are freed once screened.

use std::sync::Arc;
use std::time::Instant;

use phalanx_consensus::{Admission, Screen, Screened, Time};
use phalanx_crypto::ValidatorIndex;
use tokio::sync::{mpsc, watch};
use tracing::debug;

use crate::metrics::{Metrics, VerifyWhat};
use crate::net::Inbound;

/// Most screening threads, whatever the machine offers.
pub const SCREEN_THREADS_MAX: usize = 4;

/// Frames queued for one screening thread.
pub const SCREEN_QUEUE: usize = 256;

/// Screened frames waiting for the consensus task.
pub const SCREENED_QUEUE: usize = 256;

/// A frame's outcome, for the consensus task.
#[derive(Debug)]
pub struct ScreenedFrame {
    /// The authenticated sender.
    pub from: ValidatorIndex,
    /// What became of the frame.
    pub outcome: Screened,
    /// The frame's length in bytes.
    pub len: usize,
    /// The frame, its bytes freed, holding its share of the sender's
    /// inbound byte budget until this outcome is taken.
    _frame: Inbound,
}

/// Screening threads for this machine: one per core up to
/// [`SCREEN_THREADS_MAX`].
pub fn thread_count() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, SCREEN_THREADS_MAX)
}

/// Starts one thread per screen, and a task handing each frame of
/// `inbound` to the thread of its sender. Each screen admits frames under
/// the latest value of `admission`. The returned queue ends once `inbound`
/// has ended and every thread has finished.
pub fn start(
    screens: Vec<Screen>,
    admission: watch::Receiver<Arc<Admission>>,
    mut inbound: mpsc::Receiver<Inbound>,
    metrics: Arc<Metrics>,
) -> std::io::Result<mpsc::Receiver<ScreenedFrame>> {
    assert!(!screens.is_empty(), "screening needs at least one screen");
    let (out_tx, out_rx) = mpsc::channel(SCREENED_QUEUE);
    let mut queues = Vec::with_capacity(screens.len());
    for (i, screen) in screens.into_iter().enumerate() {
        let (tx, rx) = mpsc::channel(SCREEN_QUEUE);
        let (adm, out, metrics) = (admission.clone(), out_tx.clone(), metrics.clone());
        std::thread::Builder::new()
            .name(format!("phalanx-screen-{i}"))
            .spawn(move || screen_frames(screen, rx, adm, out, metrics))?;
        queues.push(tx);
    }
    drop(out_tx);
    tokio::spawn(async move {
        while let Some(frame) = inbound.recv().await {
            let q = &queues[frame.from.as_usize() % queues.len()];
            if q.send(frame).await.is_err() {
                return;
            }
        }
    });
    Ok(out_rx)
}

fn screen_frames(
    mut screen: Screen,
    mut frames: mpsc::Receiver<Inbound>,
    admission: watch::Receiver<Arc<Admission>>,
    out: mpsc::Sender<ScreenedFrame>,
    metrics: Arc<Metrics>,
) {
    while let Some(mut frame) = frames.blocking_recv() {
        // A clone of the pointer: the consensus task never waits for a
        // screening thread to publish a new admission.
        let adm = admission.borrow().clone();
        let started = Instant::now();
        let now = Time(crate::shared::now_ms());
        let outcome = screen.screen(now, frame.from, &frame.bytes, &adm);
        if !matches!(outcome, Screened::Dropped) {
            metrics.verified(VerifyWhat::ConsensusMessage, started.elapsed());
        }
        let len = frame.bytes.len();
        frame.bytes = Vec::new();
        let screened = ScreenedFrame {
            from: frame.from,
            outcome,
            len,
            _frame: frame,
        };
        if out.blocking_send(screened).is_err() {
            debug!("consensus task gone; screening thread ends");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use phalanx_consensus::{Block, Message, Verifier, View, Vote};
    use phalanx_crypto::{ChainId, Digest, KeyPair, ValidatorSet, Verified, encode};
    use tokio::sync::Semaphore;

    const PEERS: u16 = 4;

    fn setup() -> (Vec<KeyPair>, ValidatorSet, ChainId) {
        let keys: Vec<KeyPair> = (0..PEERS as u8)
            .map(|i| KeyPair::from_seed([i + 1; 32]))
            .collect();
        let set = ValidatorSet::new(keys.iter().map(|k| k.public()).collect()).unwrap();
        (keys, set, ChainId::new("screening").unwrap())
    }

    fn vote(keys: &[KeyPair], chain: &ChainId, from: u16, view: u64) -> Vec<u8> {
        let v = Vote {
            view: View(view),
            height: phalanx_consensus::Height(view),
            block_id: Digest::of(&view.to_le_bytes()),
        };
        let signed = Verified::sign(&keys[from as usize], ValidatorIndex(from), chain, v);
        encode(&Message::Vote(signed.into_signed()))
    }

    /// Every frame's outcome comes back, one peer's in the order sent,
    /// forged ones refused; and each frame holds its share of the byte
    /// budget until its outcome is taken.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn outcomes_keep_each_peers_order_and_hold_the_byte_budget() {
        let (keys, set, chain) = setup();
        let genesis = Block::genesis(&chain, 1_000);
        let screens = (0..2)
            .map(|_| Screen::new(Verifier::new(set.clone(), chain.clone(), &genesis, 1 << 20)))
            .collect();
        let (_adm_tx, adm_rx) = watch::channel(Arc::new(Admission::new(View(0), 64)));
        let (in_tx, in_rx) = mpsc::channel(1024);
        let metrics = Arc::new(Metrics::new(PEERS as usize, &[]));
        let mut out = start(screens, adm_rx, in_rx, metrics).unwrap();
        let budget = Arc::new(Semaphore::new(1 << 24));
        // Inside the view window: none refused for being far ahead.
        let per_peer = 50u64;
        let mut sent_bytes = 0usize;
        for view in 1..=per_peer {
            for from in 0..PEERS {
                // Peer 3 forges: signs as itself, claims to be peer 2's vote.
                let bytes = if from == 3 {
                    let mut b = vote(&keys, &chain, 2, view);
                    let last = b.len() - 1;
                    b[last] ^= 1;
                    b
                } else {
                    vote(&keys, &chain, from, view)
                };
                sent_bytes += bytes.len();
                let permit = budget
                    .clone()
                    .acquire_many_owned(bytes.len() as u32)
                    .await
                    .unwrap();
                in_tx
                    .send(Inbound::new(ValidatorIndex(from), bytes, permit))
                    .await
                    .unwrap();
            }
        }
        drop(in_tx);
        let mut seen: Vec<Vec<u64>> = vec![Vec::new(); PEERS as usize];
        let mut refused = 0;
        let mut held = Vec::new();
        while let Some(f) = out.recv().await {
            match &f.outcome {
                Screened::Verified(m) => {
                    let phalanx_consensus::VerifiedMessage::Vote(v) = &**m else {
                        panic!("not a vote: {m:?}");
                    };
                    assert_eq!(v.signer, f.from);
                    seen[f.from.as_usize()].push(v.payload.view.0);
                }
                Screened::Refused(_) => {
                    assert_eq!(f.from, ValidatorIndex(3));
                    refused += 1;
                }
                other => panic!("unexpected outcome {other:?}"),
            }
            held.push(f);
        }
        let in_order: Vec<u64> = (1..=per_peer).collect();
        for (p, views) in seen.iter().take(3).enumerate() {
            assert_eq!(views, &in_order, "peer {p}");
        }
        assert_eq!(refused, per_peer);
        // Screened, bytes freed, outcomes not yet dropped: still held.
        assert_eq!(budget.available_permits(), (1 << 24) - sent_bytes);
        drop(held);
        assert_eq!(budget.available_permits(), 1 << 24);
    }
}
