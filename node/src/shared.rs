//! What the node's tasks share: the store, the mempool, consensus status and
//! the stream of commits.
//!
//! This module owns nothing but the handles; every rule lives with the task
//! that applies it (admission in `ingress`, ordering in `runtime`, answers
//! in `rpc`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use phalanx_crypto::{ChainId, Digest, PublicKey};
use phalanx_ledger::Receipt;
use phalanx_storage::Store;
use tokio::sync::{Notify, broadcast, watch};

use crate::mempool::Mempool;
use crate::metrics::Metrics;
use crate::runtime::Status;

/// Commit notices buffered per subscriber before it counts as lagging.
pub const COMMIT_CHANNEL: usize = 1024;

/// One committed block, as subscribers see it.
#[derive(Clone, Debug)]
pub struct CommitNotice {
    /// Height.
    pub height: u64,
    /// Block id.
    pub block_id: Digest,
    /// State root after it.
    pub state_root: Digest,
    /// One receipt per payload item, in order.
    pub receipts: Arc<Vec<Receipt>>,
}

/// Handles shared by the node's tasks.
pub struct Shared {
    /// The store.
    pub store: Arc<Store>,
    /// The chain.
    pub chain: ChainId,
    /// This validator's key.
    pub validator: PublicKey,
    /// Validators in the set.
    pub validators: usize,
    /// The mempool.
    pub mempool: Mutex<Mempool>,
    /// Least amount a leg may move into a new account (genesis).
    pub min_account_balance: u64,
    /// Signalled when transactions enter the mempool.
    pub new_txs: Notify,
    /// Consensus status.
    pub status: watch::Receiver<Status>,
    /// Committed blocks, in order.
    pub commits: broadcast::Sender<CommitNotice>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Highest block height seen in a verified proposal.
    pub best_seen_height: AtomicU64,
    /// Wall-clock ms of the last commit.
    pub last_commit_ms: AtomicU64,
}

impl Shared {
    /// The handles for a node on `store` of the chain `genesis`, with its
    /// mempool bounded by `limits`; returns the sender side of the status
    /// channel too.
    pub fn new(
        store: Arc<Store>,
        genesis: &phalanx_ledger::Genesis,
        validator: PublicKey,
        limits: crate::mempool::MempoolLimits,
        metrics: Arc<Metrics>,
    ) -> (Shared, watch::Sender<Status>) {
        let (status_tx, status) = watch::channel(Status::default());
        let (commits, _) = broadcast::channel(COMMIT_CHANNEL);
        let best = store.head().height;
        let shared = Shared {
            store,
            chain: genesis.chain_id.clone(),
            validator,
            validators: genesis.validators.len(),
            mempool: Mutex::new(Mempool::new(limits)),
            min_account_balance: genesis.params.min_account_balance,
            new_txs: Notify::new(),
            status,
            commits,
            metrics,
            best_seen_height: AtomicU64::new(best),
            last_commit_ms: AtomicU64::new(0),
        };
        (shared, status_tx)
    }

    /// The mempool, locked. A panic while holding the lock leaves a pool
    /// whose maps may disagree; the node stops on panics, so the poison is
    /// not inherited by anything that matters.
    pub fn pool(&self) -> MutexGuard<'_, Mempool> {
        self.mempool.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a commit for readiness.
    pub fn note_commit(&self, height: u64) {
        self.last_commit_ms.store(now_ms(), Ordering::Relaxed);
        self.best_seen_height.fetch_max(height, Ordering::Relaxed);
    }

    /// Publishes the mempool's occupancy to the metrics.
    pub fn publish_mempool(&self) {
        let pool = self.pool();
        let l = pool.limits();
        self.metrics
            .set_mempool(pool.len(), pool.bytes(), l.max_txs, l.max_bytes);
    }

    /// Records the chain's tip as a peer showed it.
    pub fn note_seen(&self, height: u64) {
        self.best_seen_height.fetch_max(height, Ordering::Relaxed);
        self.metrics.sync_target(height);
    }

    /// Ready: committed within `max_lag` blocks of the best height seen and
    /// within `max_silence_ms` of now.
    pub fn ready(&self, max_lag: u64, max_silence_ms: u64) -> Result<(), String> {
        let h = self.store.head().height;
        let best = self.best_seen_height.load(Ordering::Relaxed);
        if best > h + max_lag {
            return Err(format!("syncing: at height {h}, peers at {best}"));
        }
        let last = self.last_commit_ms.load(Ordering::Relaxed);
        let age = now_ms().saturating_sub(last);
        if last == 0 || age > max_silence_ms {
            return Err(format!("no commit for {age} ms"));
        }
        Ok(())
    }
}

/// The node's clock, in milliseconds since the Unix epoch: the wall clock
/// read once, at the first call, moved on by the monotonic clock. A step of
/// the system clock (an operator's `date`, a jump at NTP sync) then neither
/// stalls the core's timers nor fires them all at once, nor makes a node
/// look unready; block timestamps stay within the drift between the two
/// clocks since the process started.
pub fn now_ms() -> u64 {
    CLOCK
        .get_or_init(|| {
            let offset = OFFSET_MS.get().copied().unwrap_or(0);
            SteadyClock::new(wall_ms().saturating_add_signed(offset))
        })
        .now()
}

static CLOCK: std::sync::OnceLock<SteadyClock> = std::sync::OnceLock::new();
static OFFSET_MS: std::sync::OnceLock<i64> = std::sync::OnceLock::new();

/// The node's clock was read before [`set_clock_offset`].
#[derive(Debug, thiserror::Error)]
#[error("the clock offset must be set before the node's clock is first read")]
pub struct ClockAlreadyRead;

/// Shifts the node's clock by `ms` (config `clock_offset_ms`: a skewed
/// clock for tests, since clocks cannot be set per network namespace).
/// Must come before the first [`now_ms`].
pub fn set_clock_offset(ms: i64) -> Result<(), ClockAlreadyRead> {
    if CLOCK.get().is_some() || OFFSET_MS.set(ms).is_err() {
        return Err(ClockAlreadyRead);
    }
    Ok(())
}

struct SteadyClock {
    wall_at_start: u64,
    start: Instant,
}

impl SteadyClock {
    fn new(wall_ms: u64) -> SteadyClock {
        SteadyClock {
            wall_at_start: wall_ms,
            start: Instant::now(),
        }
    }

    fn at(&self, since_start: Duration) -> u64 {
        self.wall_at_start
            .saturating_add(since_start.as_millis() as u64)
    }

    fn now(&self) -> u64 {
        self.at(self.start.elapsed())
    }
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_clock_follows_elapsed_time_not_the_wall_clock() {
        // Read once at the start; later readings depend only on the time
        // elapsed, so a step of the system clock cannot reach them.
        let c = SteadyClock::new(1_000_000);
        assert_eq!(c.at(Duration::ZERO), 1_000_000);
        assert_eq!(c.at(Duration::from_millis(1_500)), 1_001_500);
        let a = c.now();
        assert!(c.now() >= a, "never goes back");
        assert!(
            now_ms().abs_diff(wall_ms()) < 60_000,
            "starts at the wall clock"
        );
    }
}
