//! The crash test, shared by the `crash_loop` example and the test suite: a
//! child process commits blocks of transfers and reports each acknowledged
//! height; the parent SIGKILLs it at random moments, reopens the store, and
//! checks that nothing acknowledged is lost, no partial block is visible,
//! the state root equals a replay of every block from genesis, and the
//! supply is conserved. Test support: panics freely.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use phalanx_consensus::Height;
use phalanx_ledger::{StateTree, StateView, execute_block};

use crate::testkit::{genesis, mix, next_block, transfers};
use crate::{Store, StoreOptions};

const ACCOUNTS: u64 = 300;
const TXS_PER_BLOCK: usize = 40;

/// The result of a crash loop.
pub struct Report {
    /// Kills after which every check passed.
    pub passed: u64,
    /// One line per failed kill.
    pub failures: Vec<String>,
    /// Height acknowledged last.
    pub acked: u64,
}

/// Runs `kills` rounds on a fresh store in a temporary directory. `spawn`
/// builds the command that runs [`child`] on the given directory.
pub fn run(kills: u64, seed: u64, spawn: &dyn Fn(&Path) -> Command) -> Report {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("db");
    let mut report = Report {
        passed: 0,
        failures: vec![],
        acked: 0,
    };
    for round in 0..kills {
        match one_round(&dir, seed, round, spawn) {
            Ok(acked) => {
                report.passed += 1;
                report.acked = acked;
            }
            Err(e) => {
                // The store is damaged; later rounds would only repeat it.
                report
                    .failures
                    .push(format!("FAIL kill {round} (seed {seed}): {e}"));
                break;
            }
        }
    }
    report
}

/// Starts a child, kills it at a random moment, then checks the store.
fn one_round(
    dir: &Path,
    seed: u64,
    round: u64,
    spawn: &dyn Fn(&Path) -> Command,
) -> Result<u64, String> {
    let mut child = spawn(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("spawn: {e}"))?;
    let stdout = child.stdout.take().ok_or("no child stdout")?;
    let (tx, rx) = mpsc::channel::<(u64, String)>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let mut parts = line.split_whitespace();
            if parts.next() == Some("ACK")
                && let (Some(h), Some(root)) = (parts.next(), parts.next())
                && let Ok(h) = h.parse()
            {
                let _ = tx.send((h, root.to_string()));
            }
        }
    });
    // Wait for the child to acknowledge a few blocks (it must make progress),
    // then kill it after a random extra delay.
    let r = mix(seed ^ mix(round));
    let want = 1 + r % 5;
    let mut acks = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while (acks.len() as u64) < want {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(a) => acks.push(a),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("child made no progress within 120 s".into());
            }
        }
    }
    std::thread::sleep(Duration::from_millis(mix(r) % 40));
    child.kill().map_err(|e| format!("kill: {e}"))?; // SIGKILL
    let _ = child.wait();
    let _ = reader.join();
    acks.extend(rx.try_iter());
    let (last_acked, _) = *acks.last().ok_or("no acknowledgement")?;
    verify(dir, &acks)?;
    Ok(last_acked)
}

/// The child: commits blocks forever, printing `ACK height root` after each
/// synced commit. With `planted`, commits are deliberately non-atomic.
pub fn child(dir: &Path, seed: u64, planted: bool) -> ! {
    let g = genesis(ACCOUNTS);
    let opts = StoreOptions {
        planted_split_commit: planted,
        ..StoreOptions::default()
    };
    let store = Store::open(dir, &g, opts).expect("open store");
    let out = std::io::stdout();
    loop {
        let h = store.head().height + 1;
        let txs = transfers(&store, &g.chain_id, ACCOUNTS, h, seed, TXS_PER_BLOCK).expect("txs");
        let (block, cert) = next_block(&store, &txs);
        let res = store.apply_block(&block, &cert).expect("commit");
        let mut lock = out.lock();
        let _ = writeln!(lock, "ACK {} {}", res.head.height, res.head.state_root);
        let _ = lock.flush();
    }
}

/// Reopens the store and checks every promise.
pub fn verify(dir: &Path, acks: &[(u64, String)]) -> Result<(), String> {
    let g = genesis(ACCOUNTS);
    // Opening checks the head record against the head block and tree root.
    let store =
        Store::open(dir, &g, StoreOptions::default()).map_err(|e| format!("reopen: {e}"))?;
    let head = store.head();
    let (last, _) = acks.last().ok_or("no acks")?;
    if head.height < *last {
        return Err(format!(
            "acknowledged height {last} lost: head is {}",
            head.height
        ));
    }
    // Replay every block from genesis in memory and compare roots.
    let mut replay = Replay::new(&g);
    for h in 1..=head.height {
        let block = store
            .block(Height(h))
            .map_err(|e| e.to_string())?
            .ok_or(format!("block {h} missing below the head"))?;
        store
            .cert(Height(h))
            .map_err(|e| e.to_string())?
            .ok_or(format!("certificate {h} missing: partial block"))?;
        let root = replay.apply(&g, &block.payload);
        let stored = store.state_root_at(Height(h)).map_err(|e| e.to_string())?;
        if root != stored {
            return Err(format!("state root at {h} differs from a replay"));
        }
        if let Some((_, acked_root)) = acks.iter().find(|(ah, _)| *ah == h)
            && *acked_root != root.to_hex()
        {
            return Err(format!("acknowledged root at {h} differs from a replay"));
        }
        // Every transaction of the block is indexed: no half-written block.
        for item in phalanx_ledger::decode_payload(&block.payload).map_err(|e| e.to_string())? {
            // Filed under the transfer's hash, or under the bytes' hash
            // (malformed, bad signature).
            let mut keys = vec![phalanx_crypto::Digest::of(&item)];
            if let Ok(t) = phalanx_ledger::SignedTransfer::decode(&item) {
                keys.push(t.hash());
            }
            let mut filed = false;
            for k in &keys {
                filed |= store.transaction(k).map_err(|e| e.to_string())?.is_some();
            }
            if !filed {
                return Err(format!("transaction of block {h} missing from the index"));
            }
        }
    }
    if store
        .block(Height(head.height + 1))
        .map_err(|e| e.to_string())?
        .is_some()
    {
        return Err("a block above the head is visible".into());
    }
    // Supply conserved; account records agree with the replay.
    let mut supply: u128 = 0;
    for i in 0..ACCOUNTS {
        let k = crate::testkit::account_key(i).public();
        let a = store
            .account(&k)
            .map_err(|e| e.to_string())?
            .unwrap_or_default();
        if Some(a) != replay.accounts.get(&k).copied() {
            return Err(format!("account {i} differs from the replay"));
        }
        supply += a.balance as u128;
    }
    if supply != g.total_supply() as u128 {
        return Err(format!("supply {supply} != {}", g.total_supply()));
    }
    Ok(())
}

/// An in-memory ledger that re-executes blocks.
struct Replay {
    accounts: std::collections::BTreeMap<phalanx_crypto::PublicKey, phalanx_ledger::Account>,
    committed: std::collections::BTreeSet<phalanx_crypto::Digest>,
    tree: StateTree,
    version: u64,
}

impl Replay {
    fn new(g: &phalanx_ledger::Genesis) -> Replay {
        let accounts: std::collections::BTreeMap<_, _> = g
            .accounts
            .iter()
            .map(|a| {
                (
                    a.address,
                    phalanx_ledger::Account {
                        balance: a.balance,
                        nonce: 0,
                    },
                )
            })
            .collect();
        let mut tree = StateTree::new();
        tree.apply(0, &accounts);
        Replay {
            accounts,
            committed: Default::default(),
            tree,
            version: 0,
        }
    }

    fn apply(&mut self, g: &phalanx_ledger::Genesis, payload: &[u8]) -> phalanx_crypto::Digest {
        let out = execute_block(&*self, &g.rules(), payload).unwrap();
        self.version += 1;
        let root = self
            .tree
            .apply(self.version, out.changes.iter().map(|(k, a)| (k, a)));
        self.committed.extend(out.applied().copied());
        self.accounts.extend(out.changes);
        root
    }
}

impl StateView for Replay {
    fn account(
        &self,
        a: &phalanx_crypto::PublicKey,
    ) -> Result<Option<phalanx_ledger::Account>, phalanx_ledger::LedgerError> {
        Ok(self.accounts.get(a).copied())
    }
    fn tx_committed(
        &self,
        h: &phalanx_crypto::Digest,
    ) -> Result<bool, phalanx_ledger::LedgerError> {
        Ok(self.committed.contains(h))
    }
}
