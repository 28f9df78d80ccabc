//! A seeded, deterministic simulator for the consensus core (test support;
//! compiled only with the `sim` feature).
//!
//! It drives `n` validators through a virtual clock and a simulated network
//! with random delays, drops, duplicates and reordering, partitions (halves,
//! an isolated validator, one-way) that heal at the global stabilisation time
//! (GST), crashes that lose everything not yet persisted (including in the
//! middle of an action list), and Byzantine validators ([`Behaviour`]).
//! Messages cross the simulated wire as bytes and are verified by the real
//! [`Verifier`], with real ed25519 signatures.
//!
//! Every run checks agreement, chain integrity, validity, liveness after
//! GST, checkpoint agreement and the absence of evidence against honest keys;
//! a failure names the seed, which replays it exactly.
//!
//! Each validator runs the same [`Driver`] as the node, over in-memory
//! ports: its disk keeps block writes unsynced until the next sync and
//! loses them at a crash, the safety record is a durable path of its own,
//! execution is asynchronous (results come back after a random delay), and
//! a crash can strike between any two port calls of an action list.
//!
//! Fakes live only here: the clock, the network and a disk that is a struct.

mod rng;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;

use phalanx_crypto::{ChainId, Digest, KeyPair, ValidatorIndex, ValidatorSet, Verified, encode};

pub use rng::Rng;

use crate::core::{Config, EXEC_RESULTS_KEPT, Evidence, Flaw, PayloadValidator, Restore};
use crate::driver::{
    BlockStore, Driver, DriverConfig, DriverError, Executor, Monitor, Outbox, PayloadRequest,
    PayloadSource, PortError, SafetyStore,
};
use crate::safety::SafetyState;
use crate::types::{
    Block, CheckpointCert, ExecResult, Height, Message, Proposal, QuorumCert, Time, Timeout, View,
    Vote, genesis_qc,
};
use crate::verify::{VerifiedMessage, VerifyError};

/// What a Byzantine validator does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Behaviour {
    /// Sends nothing.
    Silent,
    /// As leader, sends one block to half the validators and a conflicting
    /// one (reordered or forged payload) to the others.
    Equivocate,
    /// Sends a second, conflicting vote in every view it votes in.
    DoubleVote,
    /// Corrupts the signature of half its messages.
    BadSignatures,
    /// Replays old messages it has received to random validators.
    Replay,
    /// Floods validly signed timeouts and votes for future views, near and
    /// far beyond the window.
    FutureFlood,
    /// As leader, extends a certificate two below its highest, forking off
    /// a block that may already be committed (the vote rule must stop it).
    StaleFork,
    /// Two honest instances sharing this validator's key, placed in
    /// different partitions.
    Twins,
    /// As leader, tries to burn pending items: proposes a copy of one with
    /// its authentication broken, and a sender's items out of order (the
    /// validity rule must refuse the block).
    Burn,
    /// As leader, shows its proposal (and the certificate it carries) to
    /// one validator only, so locks split; never sends its votes.
    Withhold,
    /// As leader after a timeout, rebuilds the timeout certificate to
    /// carry a certificate two below the highest and extends that one
    /// (the verifier's maximum-view check must refuse it).
    LowTc,
    /// Holds its proposals and votes until just under the others' view
    /// timeout.
    Delay,
    /// Serves block requests with junk: nothing, only the first block, or
    /// blocks whose payload no longer matches their header.
    SyncLiar,
    /// As leader, proposes blocks whose execution results carry a state
    /// root or receipts root nobody computed (P22 must refuse them).
    LieExecution,
}

impl Behaviour {
    /// Every behaviour.
    pub const ALL: [Behaviour; 14] = [
        Behaviour::Silent,
        Behaviour::Equivocate,
        Behaviour::DoubleVote,
        Behaviour::BadSignatures,
        Behaviour::Replay,
        Behaviour::FutureFlood,
        Behaviour::StaleFork,
        Behaviour::Twins,
        Behaviour::Burn,
        Behaviour::Withhold,
        Behaviour::LowTc,
        Behaviour::Delay,
        Behaviour::SyncLiar,
        Behaviour::LieExecution,
    ];
}

/// Which data a wiped validator loses (see [`SimConfig::wipes`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Wipes {
    /// No wipes.
    None,
    /// The block store is wiped and restored from a peer's committed
    /// state (a state sync); the safety record survives on its own path.
    Store,
    /// Everything is lost, the safety record too: the validator restarts
    /// from a peer's committed state in recovery (P19).
    Everything,
}

/// Parameters of a simulation run.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Validators (n).
    pub validators: usize,
    /// Byzantine validators; more than f is the negative control.
    pub byzantine: usize,
    /// Fixed behaviours, cycled over the Byzantine validators; empty means
    /// drawn from the seed (all Twins when `byzantine > f`).
    pub behaviours: Vec<Behaviour>,
    /// A deliberately unsafe core variant run by the honest validators.
    pub flaw: Option<Flaw>,
    /// The driver forgets the safety state on restart (an unsafe variant).
    pub forget_safety_on_restart: bool,
    /// Virtual time of global stabilisation, ms.
    pub gst_ms: u64,
    /// After GST, every honest validator must commit `liveness_blocks` new
    /// blocks within this budget, ms.
    pub liveness_budget_ms: u64,
    /// Blocks each honest validator must commit after GST.
    pub liveness_blocks: u64,
    /// ... within at most this many views after GST.
    pub liveness_max_views: u64,
    /// Checkpoint interval K.
    pub checkpoint_interval: u64,
    /// Whether honest validators crash and restart before GST.
    pub crashes: bool,
    /// Whether honest validators are wiped (one or two, before GST).
    pub wipes: Wipes,
    /// Honest validators screen frames apart from their driver, as the
    /// node does on its threads (D16), under an admission republished
    /// before a frame with this probability (`None`: screened inline,
    /// `Some(0.0)`: the admission of the start, never republished).
    pub screen_apart: Option<f64>,
}

impl SimConfig {
    /// Defaults for `n` validators and `b` Byzantine ones.
    pub fn new(n: usize, b: usize) -> SimConfig {
        SimConfig {
            validators: n,
            byzantine: b,
            behaviours: vec![],
            flaw: None,
            forget_safety_on_restart: false,
            gst_ms: 4_000,
            liveness_budget_ms: 60_000,
            liveness_blocks: 8,
            liveness_max_views: 60,
            checkpoint_interval: 5,
            crashes: true,
            wipes: Wipes::None,
            screen_apart: None,
        }
    }
}

/// Aggregate figures of one run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunStats {
    /// Lowest committed height among honest validators at the end.
    pub min_height: u64,
    /// Highest view reached by an honest validator.
    pub max_view: u64,
    /// Views honest validators went through after GST until liveness held.
    pub views_after_gst: u64,
    /// Messages delivered.
    pub delivered: u64,
    /// Messages refused by the verifier (bad signatures, malformed).
    pub rejected: u64,
    /// Messages the cores dropped as beyond the future-view window.
    pub future_dropped: u64,
    /// Evidence reports against Byzantine validators.
    pub evidence: u64,
    /// Byzantine validators graylisted by honest ones (D14).
    pub graylisted: u64,
    /// Views in which a twin saw its key used by its other copy (P21).
    pub elsewhere: u64,
    /// Execution mismatches honest validators reported against a lying
    /// leader (P22).
    pub exec_mismatches: u64,
    /// Execution results certified in committed blocks and checked against
    /// the honest validators' own (P22).
    pub certified_results: u64,
    /// Stable checkpoints reached (highest height).
    pub stable_height: u64,
    /// Crashes injected.
    pub crashes: u64,
    /// Wipes injected.
    pub wipes: u64,
    /// Recoveries (P19) that ended their quarantine.
    pub recoveries: u64,
    /// Local view timeouts of the honest validators after GST, summed.
    pub timeouts_after_gst: u64,
}

/// The result of one seed.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The seed.
    pub seed: u64,
    /// Invariant violations; empty means the run passed.
    pub violations: Vec<String>,
    /// A fingerprint of the whole schedule: equal seeds give equal traces.
    pub trace: u64,
    /// Figures.
    pub stats: RunStats,
}

impl Outcome {
    /// True if no invariant was violated.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Runs one seed.
pub fn run(seed: u64, cfg: &SimConfig) -> Outcome {
    let mut sim = Sim::new(seed, cfg);
    sim.run();
    sim.finish()
}

const CLIENT_SECRET: &[u8] = b"phalanx-sim-client-secret";
const ITEM_BYTES: usize = 16;
const MAX_ITEMS_PER_BLOCK: usize = 8;

fn item_mac(id: u64) -> [u8; 8] {
    let d = Digest::of_parts(&[CLIENT_SECRET, &id.to_le_bytes()]);
    let mut m = [0u8; 8];
    m.copy_from_slice(&d.0[..8]);
    m
}

fn make_item(id: u64) -> [u8; ITEM_BYTES] {
    let mut it = [0u8; ITEM_BYTES];
    it[..8].copy_from_slice(&id.to_le_bytes());
    it[8..].copy_from_slice(&item_mac(id));
    it
}

/// Splits a payload into client items, or `None` if it is malformed or any
/// item is not authenticated by a client.
fn parse_items(payload: &[u8]) -> Option<Vec<u64>> {
    if !payload.len().is_multiple_of(ITEM_BYTES) || payload.len() / ITEM_BYTES > MAX_ITEMS_PER_BLOCK
    {
        return None;
    }
    payload
        .chunks(ITEM_BYTES)
        .map(|c| {
            let mut id = [0u8; 8];
            id.copy_from_slice(&c[..8]);
            let id = u64::from_le_bytes(id);
            (c[8..] == item_mac(id)).then_some(id)
        })
        .collect()
}

/// Clients the items belong to: item `id` is its sender's item number
/// `id / SENDERS`, and a sender's items apply in that order (the
/// simulator's stand-in for nonces).
const SENDERS: u64 = 4;

/// True if no item repeats and each sender's items come in increasing
/// order, as an honest leader proposes them (the simulator's stand-in for
/// "every nonce executable in block order").
fn in_sender_order(ids: &[u64]) -> bool {
    let mut last: [Option<u64>; SENDERS as usize] = [None; SENDERS as usize];
    ids.iter().all(|id| {
        let slot = &mut last[(id % SENDERS) as usize];
        let ok = slot.is_none_or(|prev| prev < *id);
        *slot = Some(*id);
        ok
    })
}

/// Honest validators vote only for payloads made of client-authenticated
/// items in each sender's order: a Byzantine leader can neither invent an
/// item nor burn one by breaking its copy or its order.
struct ClientItems;

impl PayloadValidator for ClientItems {
    fn is_valid(&self, block: &Block) -> bool {
        parse_items(&block.payload).is_some_and(|ids| in_sender_order(&ids))
    }
}

/// What survives a crash.
#[derive(Clone, Default)]
struct Disk {
    safety: Option<SafetyState>,
    head: Option<(Block, QuorumCert)>,
    root: Digest,
    stable: Option<CheckpointCert>,
    blocks: BTreeMap<Digest, Block>,
    /// Committed blocks by height, and their heights by id: what the
    /// driver serves block requests from.
    chain: BTreeMap<u64, Block>,
    chain_ids: HashMap<Digest, u64>,
    /// The latest execution results (P22), as the node's store keeps its
    /// state and receipts roots by height.
    results: BTreeMap<u64, ExecResult>,
}

/// Work handed to the simulated executor, done in order.
// One job per block, moved into a queue and out once: boxing the block
// would cost an allocation per block for nothing.
#[allow(clippy::large_enum_variant)]
enum Job {
    Execute(Block, QuorumCert),
    Checkpoint(CheckpointCert),
}

/// The in-memory ports of one running validator. Outputs are buffered and
/// taken by the simulator after each driver call; writes go to the shared
/// disk (safety writes synced at once, block writes only at the next sync).
struct SimPorts {
    disk: Rc<RefCell<Disk>>,
    /// Block writes not yet synced: lost at a crash.
    unsynced: Vec<Block>,
    mempool: BTreeMap<u64, [u8; ITEM_BYTES]>,
    out: Vec<(Option<ValidatorIndex>, Message)>,
    jobs: Vec<Job>,
    evidence: Vec<Evidence>,
    graylisted: Vec<ValidatorIndex>,
    elsewhere: Vec<View>,
    mismatches: Vec<ValidatorIndex>,
    /// Port calls left before the process dies mid-list (`Some(0)`: the
    /// next call fails).
    fuse: Option<usize>,
    /// Messages the driver verified and refused, for the run's statistics.
    delivered: u64,
    rejected: u64,
}

impl SimPorts {
    fn new(disk: Rc<RefCell<Disk>>) -> SimPorts {
        SimPorts {
            disk,
            unsynced: Vec::new(),
            mempool: BTreeMap::new(),
            out: Vec::new(),
            jobs: Vec::new(),
            evidence: Vec::new(),
            graylisted: Vec::new(),
            elsewhere: Vec::new(),
            mismatches: Vec::new(),
            fuse: None,
            delivered: 0,
            rejected: 0,
        }
    }

    /// Burns the fuse: the call fails if it has run out.
    fn call(&mut self, port: &'static str) -> Result<(), PortError> {
        match self.fuse {
            Some(0) => Err(PortError::new(port, "crashed")),
            Some(n) => {
                self.fuse = Some(n - 1);
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn sync(&mut self) {
        let mut disk = self.disk.borrow_mut();
        for b in self.unsynced.drain(..) {
            disk.blocks.insert(b.id(), b);
        }
    }
}

impl SafetyStore for SimPorts {
    fn persist_safety(&mut self, state: &SafetyState) -> Result<(), PortError> {
        // Its own durable path: block writes are not synced by it (D2).
        self.call("safety store")?;
        self.disk.borrow_mut().safety = Some(state.clone());
        Ok(())
    }
}

impl BlockStore for SimPorts {
    fn persist_block(&mut self, block: &Block) -> Result<(), PortError> {
        self.call("block store")?;
        self.unsynced.push(block.clone());
        Ok(())
    }

    fn sync_blocks(&mut self) -> Result<(), PortError> {
        self.call("block store")?;
        self.sync();
        Ok(())
    }

    fn committed_height(&mut self, id: &Digest) -> Result<Option<Height>, PortError> {
        Ok(self.disk.borrow().chain_ids.get(id).map(|h| Height(*h)))
    }

    fn committed_block(&mut self, height: Height) -> Result<Option<Block>, PortError> {
        Ok(self.disk.borrow().chain.get(&height.0).cloned())
    }

    fn record_checkpoint(&mut self, cert: &CheckpointCert) -> Result<(), PortError> {
        self.call("block store")?;
        self.jobs.push(Job::Checkpoint(cert.clone()));
        Ok(())
    }
}

impl Outbox for SimPorts {
    fn send(&mut self, to: ValidatorIndex, msg: &Message) -> Result<(), PortError> {
        self.call("outbox")?;
        self.out.push((Some(to), msg.clone()));
        Ok(())
    }

    fn broadcast(&mut self, msg: &Message) -> Result<(), PortError> {
        self.call("outbox")?;
        self.out.push((None, msg.clone()));
        Ok(())
    }
}

impl Executor for SimPorts {
    fn execute(&mut self, block: Block, cert: QuorumCert) -> Result<(), PortError> {
        self.call("executor")?;
        self.jobs.push(Job::Execute(block, cert));
        Ok(())
    }
}

impl PayloadSource for SimPorts {
    fn payload(&mut self, _req: &PayloadRequest, wait: bool) -> Option<Vec<u8>> {
        if wait && self.mempool.is_empty() {
            return None;
        }
        Some(
            self.mempool
                .values()
                .take(MAX_ITEMS_PER_BLOCK)
                .flat_map(|it| it.iter().copied())
                .collect(),
        )
    }
}

impl Monitor for SimPorts {
    fn received(&mut self, _: ValidatorIndex, _: &VerifiedMessage, _: usize) {
        self.delivered += 1;
    }

    fn refused(&mut self, _: ValidatorIndex, e: &VerifyError) {
        if std::env::var_os("SIM_DEBUG").is_some() {
            eprintln!("reject {e}");
        }
        self.rejected += 1;
    }

    fn evidence(&mut self, evidence: &Evidence) {
        self.evidence.push(evidence.clone());
    }

    fn graylisted(&mut self, peer: ValidatorIndex, _until: Time) {
        self.graylisted.push(peer);
    }

    fn own_key_elsewhere(&mut self, view: View, _kind: &'static str) {
        self.elsewhere.push(view);
    }

    fn execution_mismatch(
        &mut self,
        proposer: ValidatorIndex,
        _view: View,
        _ours: &ExecResult,
        _theirs: &ExecResult,
    ) {
        self.mismatches.push(proposer);
    }
}

/// How long a simulated leader with an empty mempool waits before
/// proposing an empty block, ms.
const EMPTY_BLOCK_DELAY_MS: u64 = 30;

struct Slot {
    validator: ValidatorIndex,
    byz: Option<Behaviour>,
    driver: Option<Driver<SimPorts>>,
    /// Bumped at every start: events of an earlier life are ignored.
    life: u64,
    /// The deadline a tick is scheduled for, and its token.
    tick_at: Option<Time>,
    tick_token: u64,
    /// Executor jobs handed over and not yet done, in order.
    jobs: VecDeque<Job>,
    disk: Rc<RefCell<Disk>>,
    heard: Vec<Rc<Vec<u8>>>,
    clock_skew_ms: u64,
    side: bool,
    gst_height: u64,
    /// Started in recovery (P19) and not yet out of quarantine.
    recovering: bool,
    /// With [`SimConfig::screen_apart`]: this life's screen and the
    /// admission it was last handed.
    screen: Option<(crate::Screen, crate::Admission)>,
}

impl Slot {
    fn head_height(&self) -> u64 {
        self.disk
            .borrow()
            .head
            .as_ref()
            .map_or(0, |(b, _)| b.height().0)
    }
}

enum Ev {
    Deliver {
        to: usize,
        from: ValidatorIndex,
        bytes: Rc<Vec<u8>>,
    },
    Tick {
        slot: usize,
        token: u64,
    },
    Execute {
        slot: usize,
        life: u64,
    },
    Crash {
        slot: usize,
    },
    Restart {
        slot: usize,
    },
    Wipe {
        slot: usize,
    },
    Submit,
    Repartition,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Partition {
    None,
    Halves,
    Isolate(usize),
    OneWay,
}

struct Sim<'a> {
    cfg: &'a SimConfig,
    seed: u64,
    rng: Rng,
    now: u64,
    seq: u64,
    queue: BTreeMap<(u64, u64), Ev>,
    slots: Vec<Slot>,
    keys: Vec<KeyPair>,
    core_cfg: Config,
    partition: Partition,
    drop_p: f64,
    dup_p: f64,
    next_item: u64,
    committed: BTreeMap<u64, Digest>,
    roots: BTreeMap<u64, Digest>,
    checkpoints: BTreeMap<u64, (Digest, Digest)>,
    all_blocks: BTreeMap<Digest, Block>,
    violations: Vec<String>,
    stats: RunStats,
    trace: u64,
    gst_view: u64,
    /// Honest validators' local timeouts, summed, at GST.
    gst_timeouts: u64,
    done: bool,
    shadow: Shadow,
}

/// The independent equivocation checker: what every honest key signed, as
/// it left the process, whatever the cores believe or report. It knows
/// nothing of safety states, recovery or evidence.
#[derive(Default)]
struct Shadow {
    /// `(signer, kind, view or height)` → digest of the signed content.
    signed: BTreeMap<(u16, u8, u64), Digest>,
}

impl Shadow {
    const PROPOSAL: u8 = 0;
    const VOTE: u8 = 1;
    const TIMEOUT: u8 = 2;
    const CHECKPOINT: u8 = 3;

    /// Records one message signed by `signer`; returns a violation if it
    /// conflicts with something the same key signed before.
    fn record(&mut self, signer: ValidatorIndex, msg: &Message) -> Option<String> {
        use phalanx_crypto::SignedPayload;
        let (kind, round, content) = match msg {
            Message::Proposal(p) => (
                Self::PROPOSAL,
                p.payload.block.view().0,
                Digest::of(&p.payload.signed_bytes()),
            ),
            Message::Vote(v) => (
                Self::VOTE,
                v.payload.view.0,
                Digest::of(&encode(&v.payload)),
            ),
            Message::Timeout(t) => (
                Self::TIMEOUT,
                t.payload.view.0,
                Digest::of(&t.payload.signed_bytes()),
            ),
            Message::Checkpoint(c) => (
                Self::CHECKPOINT,
                c.payload.height.0,
                Digest::of(&encode(&c.payload)),
            ),
            _ => return None,
        };
        let names = ["proposals", "votes", "timeouts", "checkpoint votes"];
        // A vote re-sent after a timeout in its view is the same vote; a
        // first vote there breaks P14.
        if kind == Self::VOTE
            && self.signed.contains_key(&(signer.0, Self::TIMEOUT, round))
            && !self.signed.contains_key(&(signer.0, Self::VOTE, round))
        {
            return Some(format!(
                "shadow equivocation: honest {signer} voted in view {round} after timing out in it"
            ));
        }
        match self.signed.insert((signer.0, kind, round), content) {
            Some(before) if before != content => Some(format!(
                "shadow equivocation: honest {signer} signed two different {} for round {round}",
                names[kind as usize]
            )),
            _ => None,
        }
    }
}

impl<'a> Sim<'a> {
    fn new(seed: u64, cfg: &'a SimConfig) -> Sim<'a> {
        let mut rng = Rng::new(seed);
        let n = cfg.validators;
        let keys: Vec<KeyPair> = (0..n)
            .map(|i| {
                let mut s = [0u8; 32];
                s[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
                s[8..16].copy_from_slice(&seed.to_le_bytes());
                KeyPair::from_seed(s)
            })
            .collect();
        let set = ValidatorSet::new(keys.iter().map(|k| k.public()).collect())
            .expect("simulated keys are distinct");
        let chain = ChainId::new("phalanx-sim").expect("valid chain id");
        let mut core_cfg = Config::new(chain.clone(), set.clone(), 0);
        core_cfg.checkpoint_interval = cfg.checkpoint_interval;
        core_cfg.base_timeout_ms = 400;
        core_cfg.max_timeout_ms = 3_200;
        core_cfg.max_clock_skew_ms = 500;
        // Short runs commit tens of blocks: the least lag certifies the
        // most of them, and makes votes wait for execution (which the
        // simulator delays) often enough to be exercised.
        core_cfg.exec_lag = 3;
        core_cfg.future_view_window = 20;
        core_cfg.sync_batch_blocks = 32;
        core_cfg.retained_blocks = 100_000;
        core_cfg.max_payload_bytes = ITEM_BYTES * MAX_ITEMS_PER_BLOCK;
        core_cfg.flaw = cfg.flaw;
        if cfg.flaw == Some(Flaw::QuorumOffByOne) {
            core_cfg.validators = core_cfg.validators.clone().with_short_quorum();
        }
        let genesis = Block::genesis(&chain, 0);

        // Byzantine validators: the highest indices, behaviours from config
        // or seed (all Twins beyond f: the negative control).
        let f = set.f();
        let byz_from = n.saturating_sub(cfg.byzantine);
        let behaviour_for = |i: usize, rng: &mut Rng| -> Behaviour {
            if !cfg.behaviours.is_empty() {
                cfg.behaviours[(i - byz_from) % cfg.behaviours.len()]
            } else if cfg.byzantine > f {
                Behaviour::Twins
            } else {
                Behaviour::ALL[rng.index(Behaviour::ALL.len())]
            }
        };
        let mut slots = Vec::new();
        for i in 0..n {
            let byz = (i >= byz_from).then(|| behaviour_for(i, &mut rng));
            let copies = if byz == Some(Behaviour::Twins) { 2 } else { 1 };
            for c in 0..copies {
                slots.push(Slot {
                    validator: ValidatorIndex(i as u16),
                    byz,
                    driver: None,
                    life: 0,
                    tick_at: None,
                    tick_token: 0,
                    jobs: VecDeque::new(),
                    disk: Rc::new(RefCell::new(Disk::default())),
                    heard: Vec::new(),
                    clock_skew_ms: rng.range(0, 200),
                    // Twins start on opposite sides of a halves partition.
                    side: if copies == 2 { c == 1 } else { rng.chance(0.5) },
                    gst_height: 0,
                    recovering: false,
                    screen: None,
                });
            }
        }
        let drop_p = [0.0, 0.02, 0.1, 0.25][rng.index(4)];
        let dup_p = [0.0, 0.05, 0.2][rng.index(3)];
        let genesis_cert = genesis_qc(&genesis);
        let mut sim = Sim {
            cfg,
            seed,
            rng,
            now: 0,
            seq: 0,
            queue: BTreeMap::new(),
            slots,
            keys,
            core_cfg,
            partition: Partition::None,
            drop_p,
            dup_p,
            next_item: 0,
            committed: BTreeMap::new(),
            roots: BTreeMap::new(),
            checkpoints: BTreeMap::new(),
            all_blocks: BTreeMap::new(),
            violations: Vec::new(),
            stats: RunStats::default(),
            trace: seed,
            gst_view: 0,
            gst_timeouts: 0,
            done: false,
            shadow: Shadow::default(),
        };
        sim.all_blocks.insert(genesis.id(), genesis.clone());
        for s in 0..sim.slots.len() {
            // As `phalanx init` does: a new validator's record exists and
            // says it never signed; only a wipe removes it.
            let mut disk = sim.slots[s].disk.borrow_mut();
            disk.head = Some((genesis.clone(), genesis_cert.clone()));
            disk.safety = Some(SafetyState::initial(genesis_cert.clone()));
            drop(disk);
            sim.start(s);
        }
        sim.schedule(0, Ev::Submit);
        sim.schedule(0, Ev::Repartition);
        if cfg.crashes {
            let crashes = sim.rng.range(0, 3);
            for _ in 0..crashes {
                let at = sim.rng.range(100, cfg.gst_ms.saturating_sub(1500).max(101));
                let slot = sim.rng.index(sim.slots.len());
                sim.schedule(at, Ev::Crash { slot });
            }
        }
        if cfg.wipes != Wipes::None {
            let wipes = sim.rng.range(1, 3);
            for _ in 0..wipes {
                let at = sim.rng.range(800, cfg.gst_ms.saturating_sub(1000).max(801));
                let slot = sim.rng.index(sim.slots.len());
                sim.schedule(at, Ev::Wipe { slot });
            }
        }
        sim
    }

    fn schedule(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.insert((at.max(self.now), self.seq), ev);
    }

    fn mix(&mut self, v: u64) {
        let mut r = Rng::new(self.trace ^ v.rotate_left(17));
        self.trace = r.next_u64();
    }

    fn honest(&self, s: usize) -> bool {
        self.slots[s].byz.is_none()
    }

    fn clock(&self, s: usize) -> Time {
        Time(self.now + self.slots[s].clock_skew_ms)
    }

    fn start(&mut self, s: usize) {
        let key = self.keys[self.slots[s].validator.as_usize()].clone();
        let disk = self.slots[s].disk.borrow().clone();
        let genesis = Block::genesis(&self.core_cfg.chain_id, 0);
        let Some(head) = disk.head else {
            return;
        };
        let safety = match disk.safety {
            Some(st) if !self.cfg.forget_safety_on_restart => st,
            Some(_) => SafetyState::initial(genesis_qc(&genesis)),
            // The record is gone: recover (P19) with a fresh nonce.
            None => {
                let nonce = Digest::of(&self.rng.next_u64().to_le_bytes());
                SafetyState::recovering(head.1.clone(), nonce)
            }
        };
        let restore = Restore {
            safety,
            committed: head,
            stable: disk.stable,
            blocks: disk.blocks.into_values().collect(),
            executed: disk.results.into_values().collect(),
        };
        let now = self.clock(s);
        let slot = &mut self.slots[s];
        slot.life += 1;
        slot.jobs.clear();
        slot.tick_at = None;
        let ports = SimPorts::new(slot.disk.clone());
        let cfg = DriverConfig {
            empty_block_delay_ms: EMPTY_BLOCK_DELAY_MS,
        };
        match Driver::start(
            self.core_cfg.clone(),
            key,
            Box::new(ClientItems),
            restore,
            ports,
            cfg,
            now,
        ) {
            Ok(driver) => {
                self.slots[s].recovering = driver.core().quarantined();
                self.slots[s].driver = Some(driver);
                self.slots[s].screen = None;
                self.after_call(s, Ok(()));
            }
            Err(e) => self.violations.push(format!("restart failed: {e}")),
        }
    }

    fn run(&mut self) {
        let deadline = self.cfg.gst_ms + self.cfg.liveness_budget_ms;
        let mut gst_done = false;
        while let Some(((at, _), ev)) = self.queue.pop_first() {
            // A violated invariant ends the run: the seed replays it.
            if at > deadline || self.done || !self.violations.is_empty() {
                break;
            }
            self.now = at;
            if !gst_done && at >= self.cfg.gst_ms {
                gst_done = true;
                self.on_gst();
            }
            self.step(ev);
        }
        self.check_conflicts();
        if !self.done && self.violations.is_empty() {
            let missing: Vec<String> = (0..self.slots.len())
                .filter(|&s| self.honest(s))
                .filter_map(|s| {
                    let h = self.slots[s].head_height();
                    let need = self.slots[s].gst_height + self.cfg.liveness_blocks;
                    let v = self.slots[s].validator;
                    if self.slots[s].recovering {
                        Some(format!("{v} still quarantined at height {h}"))
                    } else {
                        (h < need).then(|| format!("{v} at height {h} (needs {need})"))
                    }
                })
                .collect();
            self.violations.push(format!(
                "liveness: {} ms after GST, not every honest validator committed {} new blocks: {}",
                self.cfg.liveness_budget_ms,
                self.cfg.liveness_blocks,
                missing.join(", ")
            ));
        }
    }

    fn on_gst(&mut self) {
        self.partition = Partition::None;
        for s in 0..self.slots.len() {
            if self.slots[s].driver.is_none() {
                self.start(s);
            }
            self.slots[s].gst_height = self.slots[s].head_height();
        }
        self.gst_view = self.max_honest_view();
        self.gst_timeouts = self.honest_timeouts();
    }

    fn honest_timeouts(&self) -> u64 {
        self.slots
            .iter()
            .filter(|s| s.byz.is_none())
            .filter_map(|s| s.driver.as_ref().map(|d| d.core().stats().timeouts))
            .sum()
    }

    fn max_honest_view(&self) -> u64 {
        self.slots
            .iter()
            .filter(|s| s.byz.is_none())
            .filter_map(|s| s.driver.as_ref().map(|d| d.core().view().0))
            .max()
            .unwrap_or(0)
    }

    fn pre_gst(&self) -> bool {
        self.now < self.cfg.gst_ms
    }

    fn step(&mut self, ev: Ev) {
        match ev {
            Ev::Deliver { to, from, bytes } => {
                self.mix(1 + to as u64);
                self.mix(Digest::of(&bytes).0[0] as u64);
                self.deliver(to, from, bytes);
            }
            Ev::Tick { slot, token } => {
                if self.slots[slot].tick_token != token || self.slots[slot].driver.is_none() {
                    return;
                }
                self.mix(1000 + slot as u64);
                self.slots[slot].tick_at = None;
                let now = self.clock(slot);
                self.call(slot, |d| d.tick(now));
            }
            Ev::Execute { slot, life } => {
                if self.slots[slot].life == life && self.slots[slot].driver.is_some() {
                    self.mix(2000 + slot as u64);
                    self.execute_next(slot);
                }
            }
            Ev::Crash { slot } => {
                if self.honest(slot) && self.pre_gst() && self.down_count() == 0 {
                    self.crash(slot);
                }
            }
            Ev::Restart { slot } => {
                if self.slots[slot].driver.is_none() {
                    self.mix(3000 + slot as u64);
                    self.start(slot);
                }
            }
            Ev::Wipe { slot } => {
                // One lost record at a time: two validators recovering at
                // once are two faults.
                // A recovered validator counts until the cluster has passed
                // its floor: it cannot help certify views up to it.
                let recovering = self.slots.iter().any(|s| {
                    s.recovering
                        || s.driver.as_ref().is_some_and(|d| {
                            let floor = d.core().safety().floor;
                            floor > View(0) && d.core().view() <= floor
                        })
                });
                if self.honest(slot) && self.pre_gst() && self.down_count() == 0 && !recovering {
                    self.wipe(slot);
                }
            }
            Ev::Submit => {
                let id = self.next_item;
                self.next_item += 1;
                let item = make_item(id);
                for s in 0..self.slots.len() {
                    let Some(d) = self.slots[s].driver.as_mut() else {
                        continue;
                    };
                    d.ports_mut().mempool.insert(id, item);
                    if d.awaiting_payload() {
                        let now = self.clock(s);
                        self.call(s, |d| d.payload_available(now));
                    }
                }
                let next = self.now + self.rng.range(20, 120);
                self.schedule(next, Ev::Submit);
            }
            Ev::Repartition => {
                if !self.pre_gst() {
                    return;
                }
                let has_twins = self.slots.iter().any(|s| s.byz == Some(Behaviour::Twins));
                self.partition = match self.rng.index(if has_twins { 3 } else { 5 }) {
                    0 => Partition::None,
                    1 | 2 => Partition::Halves,
                    3 => {
                        // Isolate the current leader: the view must change.
                        let view = self.max_honest_view();
                        let leader = self
                            .slots
                            .iter()
                            .filter(|s| s.byz.is_none())
                            .filter_map(|s| s.driver.as_ref().map(|d| d.core()))
                            .find(|c| c.view().0 == view)
                            .map_or(self.core_cfg.rotation(View(view)), |c| c.leader());
                        let slot = self.slots.iter().position(|s| s.validator == leader);
                        Partition::Isolate(slot.unwrap_or(0))
                    }
                    _ => Partition::OneWay,
                };
                for s in 0..self.slots.len() {
                    if self.slots[s].byz != Some(Behaviour::Twins) {
                        self.slots[s].side = self.rng.chance(0.5);
                    }
                }
                self.mix(4000 + self.partition_code());
                let next = self.now + self.rng.range(200, 1200);
                self.schedule(next, Ev::Repartition);
            }
        }
    }

    fn partition_code(&self) -> u64 {
        match self.partition {
            Partition::None => 0,
            Partition::Halves => 1,
            Partition::Isolate(i) => 2 + i as u64,
            Partition::OneWay => 100,
        }
    }

    fn down_count(&self) -> usize {
        self.slots.iter().filter(|s| s.driver.is_none()).count()
    }

    /// The process dies: everything not durable (unsynced block writes,
    /// the mempool, commits not yet executed, timers) is lost.
    fn crash(&mut self, s: usize) {
        self.stats.crashes += 1;
        let slot = &mut self.slots[s];
        slot.driver = None;
        slot.screen = None;
        slot.jobs.clear();
        slot.tick_at = None;
        self.mix(5000 + s as u64);
        let back = (self.now + self.rng.range(100, 1500)).min(self.cfg.gst_ms);
        self.schedule(back, Ev::Restart { slot: s });
    }

    /// The validator dies and its data is wiped; it comes back with a
    /// peer's committed state (its head, or its stable checkpoint), as a
    /// state sync gives it, and with its safety record only if
    /// [`Wipes::Store`].
    fn wipe(&mut self, s: usize) {
        let peers: Vec<usize> = (0..self.slots.len())
            .filter(|&p| p != s && self.honest(p) && self.slots[p].driver.is_some())
            .collect();
        if peers.is_empty() {
            return;
        }
        let peer = peers[self.rng.index(peers.len())];
        let mut from = self.slots[peer].disk.borrow().clone();
        let Some(mut head) = from.head.clone() else {
            return;
        };
        let mut root = from.root;
        // A state sync restores a checkpoint and replays the blocks after
        // it, executing each: the results of those heights are its own.
        let synced_from = from.stable.as_ref().map_or(0, |c| c.payload.height.0);
        let mut results: BTreeMap<u64, ExecResult> = from.results.split_off(&(synced_from + 1));
        // Half the time, the checkpoint (older than the head): the restored
        // view is then further behind the views this validator signed in.
        if self.rng.chance(0.5)
            && let Some(cp) = &from.stable
            && let Some(b) = from.chain.get(&cp.payload.height.0)
            && let Some(child) = from.chain.get(&(cp.payload.height.0 + 1))
        {
            head = (b.clone(), child.header.justify.clone());
            root = cp.payload.state_root;
            results.clear();
        }
        self.stats.wipes += 1;
        self.crash(s);
        let keep_safety = self.cfg.wipes == Wipes::Store;
        let mut disk = self.slots[s].disk.borrow_mut();
        let h = head.0.height().0;
        let id = head.0.id();
        *disk = Disk {
            safety: if keep_safety {
                disk.safety.take()
            } else {
                None
            },
            root,
            stable: from.stable.filter(|c| c.payload.height.0 <= h),
            blocks: BTreeMap::new(),
            chain: BTreeMap::from([(h, head.0.clone())]),
            chain_ids: HashMap::from([(id, h)]),
            head: Some(head),
            results,
        };
    }

    fn link_up(&self, a: usize, b: usize) -> bool {
        if !self.pre_gst() {
            return true;
        }
        let (sa, sb) = (self.slots[a].side, self.slots[b].side);
        match self.partition {
            Partition::None => true,
            Partition::Halves => sa == sb,
            Partition::Isolate(i) => a != i && b != i,
            // Side `true` cannot reach side `false`; the reverse works.
            Partition::OneWay => !sa || sb,
        }
    }

    fn deliver(&mut self, to: usize, from: ValidatorIndex, bytes: Rc<Vec<u8>>) {
        if self.slots[to].driver.is_none() {
            return;
        }
        if self.slots[to].byz == Some(Behaviour::Replay) && self.slots[to].heard.len() < 512 {
            self.slots[to].heard.push(bytes.clone());
        }
        let now = self.clock(to);
        if let Some(p) = self.cfg.screen_apart
            && self.honest(to)
        {
            let republish = self.rng.chance(p);
            let slot = &mut self.slots[to];
            let Some(d) = slot.driver.as_ref() else {
                return;
            };
            let (screen, adm) = slot
                .screen
                .get_or_insert_with(|| (d.screen(), d.admission(now)));
            if republish {
                *adm = d.admission(now);
            }
            let out = screen.screen(now, from, &bytes, adm);
            self.call(to, |d| d.on_screened(now, from, out, bytes.len()));
            return;
        }
        self.call(to, |d| d.on_bytes(now, from, &bytes));
    }

    /// Calls the driver of slot `s` (if running) and processes what came
    /// out. Rarely, an honest process dies part-way through the action
    /// list: a fuse makes one of the next port calls fail.
    fn call(&mut self, s: usize, f: impl FnOnce(&mut Driver<SimPorts>) -> Result<(), DriverError>) {
        let fuse = if self.cfg.crashes
            && self.honest(s)
            && self.pre_gst()
            && self.down_count() == 0
            && self.rng.chance(0.002)
        {
            Some(self.rng.index(6))
        } else {
            None
        };
        let Some(d) = self.slots[s].driver.as_mut() else {
            return;
        };
        d.ports_mut().fuse = fuse;
        let result = f(d);
        d.ports_mut().fuse = None;
        self.after_call(s, result);
    }

    /// Takes the outputs the ports buffered during a driver call: messages
    /// to the network (through the Byzantine filters), executor jobs,
    /// evidence, and the next tick.
    fn after_call(&mut self, s: usize, result: Result<(), DriverError>) {
        let Some(d) = self.slots[s].driver.as_mut() else {
            return;
        };
        let out = std::mem::take(&mut d.ports_mut().out);
        let jobs = std::mem::take(&mut d.ports_mut().jobs);
        let evidence = std::mem::take(&mut d.ports_mut().evidence);
        let graylisted = std::mem::take(&mut d.ports_mut().graylisted);
        let elsewhere = std::mem::take(&mut d.ports_mut().elsewhere);
        let mismatches = std::mem::take(&mut d.ports_mut().mismatches);
        self.stats.delivered += std::mem::take(&mut d.ports_mut().delivered);
        self.stats.rejected += std::mem::take(&mut d.ports_mut().rejected);
        let deadline = d.next_deadline();
        let quarantined = d.core().quarantined();
        if std::env::var_os("SIM_DEBUG").is_some() {
            let c = d.core();
            for (to, msg) in &out {
                eprintln!(
                    "{} slot {s} v{} -> {to:?}: {} {:?}",
                    self.now,
                    c.view(),
                    msg.kind(),
                    msg.view()
                );
            }
            eprintln!(
                "{} slot {s} stats {:?} committed {:?}",
                self.now,
                c.stats(),
                c.committed().0
            );
        }
        if self.slots[s].recovering && !quarantined {
            self.slots[s].recovering = false;
            self.stats.recoveries += 1;
        }
        // Whatever was sent before a failing port call has left.
        for (to, msg) in out {
            self.send(s, to, msg);
        }
        for e in evidence {
            self.on_evidence(s, e);
        }
        for peer in graylisted {
            self.on_graylisted(s, peer);
        }
        for proposer in mismatches {
            self.on_mismatch(s, proposer);
        }
        for view in elsewhere {
            match self.slots[s].byz {
                None => self.violations.push(format!(
                    "key used elsewhere: honest {} found its signature in view {} where it signed nothing of the kind",
                    self.slots[s].validator, view.0
                )),
                Some(Behaviour::Twins) => self.stats.elsewhere += 1,
                Some(_) => {}
            }
        }
        if let Err(e) = result {
            match e {
                DriverError::Port(p) if p.reason == "crashed" => self.crash(s),
                other => self
                    .violations
                    .push(format!("{} stopped: {other}", self.slots[s].validator)),
            }
            return;
        }
        let slot = &mut self.slots[s];
        if !jobs.is_empty() {
            let was_idle = slot.jobs.is_empty();
            slot.jobs.extend(jobs);
            if was_idle {
                self.schedule_execution(s);
            }
        }
        let slot = &mut self.slots[s];
        if deadline != slot.tick_at {
            slot.tick_at = deadline;
            slot.tick_token += 1;
            if let Some(at) = deadline {
                let token = slot.tick_token;
                let at = at.0.saturating_sub(slot.clock_skew_ms);
                self.schedule(at, Ev::Tick { slot: s, token });
            }
        }
    }

    /// Execution takes a little virtual time, so that messages overtake it.
    fn schedule_execution(&mut self, s: usize) {
        let delay = self.rng.range(0, 25);
        let life = self.slots[s].life;
        self.schedule(self.now + delay, Ev::Execute { slot: s, life });
    }

    /// The executor finishes its oldest job and reports it.
    fn execute_next(&mut self, s: usize) {
        let Some(job) = self.slots[s].jobs.pop_front() else {
            return;
        };
        match job {
            Job::Execute(block, cert) => {
                let result = self.on_commit(s, block, cert);
                let now = self.clock(s);
                self.call(s, |d| d.on_executed(now, result));
            }
            Job::Checkpoint(c) => self.on_checkpoint(s, c),
        }
        if !self.slots[s].jobs.is_empty() && self.slots[s].driver.is_some() {
            self.schedule_execution(s);
        }
    }

    /// An honest validator graylisted `peer`: a violation if every copy of
    /// `peer` is honest (an honest validator never sends what earns it).
    fn on_graylisted(&mut self, s: usize, peer: ValidatorIndex) {
        if !self.honest(s) {
            return;
        }
        let peer_honest = self
            .slots
            .iter()
            .filter(|x| x.validator == peer)
            .all(|x| x.byz.is_none());
        if peer_honest {
            self.violations.push(format!(
                "{} graylisted honest {peer}",
                self.slots[s].validator
            ));
        } else {
            self.stats.graylisted += 1;
        }
    }

    fn on_evidence(&mut self, s: usize, e: Evidence) {
        if !self.honest(s) {
            return;
        }
        let culprit = e.signer.as_usize();
        let culprit_honest = self
            .slots
            .iter()
            .any(|x| x.validator.as_usize() == culprit && x.byz.is_none());
        if culprit_honest {
            self.violations.push(format!(
                "honest equivocation: {} reported evidence against honest {} at round {}",
                self.slots[s].validator, e.signer, e.round
            ));
        } else {
            self.stats.evidence += 1;
        }
    }

    /// An honest validator found a proposal's execution result differing
    /// from its own (P22): a violation unless the proposer may lie.
    fn on_mismatch(&mut self, s: usize, proposer: ValidatorIndex) {
        if !self.honest(s) {
            return;
        }
        let proposer_honest = self
            .slots
            .iter()
            .filter(|x| x.validator == proposer)
            .all(|x| x.byz.is_none() || x.byz == Some(Behaviour::Twins));
        if proposer_honest {
            self.violations.push(format!(
                "execution divergence: honest {} found honest {proposer}'s execution result differing from its own",
                self.slots[s].validator
            ));
        } else {
            self.stats.exec_mismatches += 1;
        }
    }

    /// P22's check on the certified root: every execution result a
    /// committed block carries is what the honest validators computed for
    /// that height.
    fn check_certified_results(&mut self, s: usize, block: &Block) {
        let who = self.slots[s].validator;
        for r in &block.header.exec {
            let h = r.height.0;
            let expected = match (self.committed.get(&h), self.roots.get(&h)) {
                (Some(id), Some(root)) => Some(ExecResult {
                    height: r.height,
                    block_id: *id,
                    state_root: *root,
                    receipts_root: receipts_root_of(id),
                }),
                _ => None,
            };
            if expected.as_ref() != Some(r) {
                self.violations.push(format!(
                    "certified execution: {who} committed block {} at height {} certifying a result at height {h} that the honest validators did not compute",
                    block.id().short(),
                    block.height().0
                ));
            } else {
                self.stats.certified_results += 1;
            }
        }
    }

    /// Executes a committed block on the slot's disk after checking it;
    /// returns its execution result.
    fn on_commit(&mut self, s: usize, block: Block, cert: QuorumCert) -> ExecResult {
        let id = block.id();
        let h = block.height().0;
        let who = self.slots[s].validator;
        let honest = self.honest(s);
        self.mix(6000 + h);
        self.mix(id.0[0] as u64);
        if cert.payload.block_id != id || cert.payload.height != block.height() {
            self.violations.push(format!(
                "commit certificate mismatch at height {h} on {who}"
            ));
        }
        let disk = self.slots[s].disk.clone();
        // Chain integrity: consecutive heights, each extending the last.
        if let Some((prev, _)) = &disk.borrow().head
            && (prev.height().0 + 1 != h || block.header.parent != prev.id())
            && honest
        {
            self.violations.push(format!(
                "chain integrity: {who} committed height {h} on top of height {} ({})",
                prev.height().0,
                if block.header.parent == prev.id() {
                    "parent ok"
                } else {
                    "wrong parent"
                }
            ));
        }
        // Validity: every item was submitted by a client, each sender's in
        // order (a broken copy or an item out of order would burn the
        // genuine one).
        match parse_items(&block.payload) {
            Some(ids) if ids.iter().all(|i| *i < self.next_item) => {
                if honest && !in_sender_order(&ids) {
                    self.violations.push(format!(
                        "validity: {who} committed a sender's items out of order at height {h}"
                    ));
                }
            }
            _ => {
                if honest {
                    self.violations.push(format!(
                        "validity: {who} committed a payload no client submitted at height {h}"
                    ));
                }
            }
        }
        if honest {
            match self.committed.get(&h) {
                Some(other) if *other != id => self.violations.push(format!(
                    "agreement: height {h}: {who} committed {} but another honest validator committed {}",
                    id.short(),
                    other.short()
                )),
                _ => {
                    self.committed.insert(h, id);
                }
            }
        }
        if let Some(ids) = parse_items(&block.payload)
            && let Some(d) = self.slots[s].driver.as_mut()
        {
            for i in ids {
                d.ports_mut().mempool.remove(&i);
            }
        }
        let root = Digest::of_parts(&[&disk.borrow().root.0, &id.0]);
        if honest {
            match self.roots.get(&h) {
                Some(r) if *r != root => self.violations.push(format!(
                    "state divergence: {who} has a different state root at height {h}"
                )),
                _ => {
                    self.roots.insert(h, root);
                }
            }
            self.check_certified_results(s, &block);
        }
        let result = ExecResult {
            height: block.height(),
            block_id: id,
            state_root: root,
            receipts_root: receipts_root_of(&id),
        };
        self.check_conflicts();
        self.all_blocks.insert(id, block.clone());
        {
            let mut disk = disk.borrow_mut();
            disk.root = root;
            disk.blocks.retain(|_, b| b.height().0 > h);
            disk.chain.insert(h, block.clone());
            disk.chain_ids.insert(id, h);
            disk.head = Some((block, cert));
            disk.results.insert(h, result);
            while disk.results.len() > EXEC_RESULTS_KEPT {
                disk.results.pop_first();
            }
        }
        self.check_liveness();
        result
    }

    fn on_checkpoint(&mut self, s: usize, c: CheckpointCert) {
        let h = c.payload.height.0;
        if self.honest(s) {
            let v = (c.payload.block_id, c.payload.state_root);
            match self.checkpoints.get(&h) {
                Some(other) if *other != v => self.violations.push(format!(
                    "checkpoint agreement: two stable checkpoints at height {h}"
                )),
                _ => {
                    self.checkpoints.insert(h, v);
                }
            }
            if let Some(id) = self.committed.get(&h)
                && *id != c.payload.block_id
            {
                self.violations.push(format!(
                    "checkpoint agreement: checkpoint at height {h} is not the committed block"
                ));
            }
            self.stats.stable_height = self.stats.stable_height.max(h);
        }
        self.slots[s].disk.borrow_mut().stable = Some(c);
    }

    /// An honest validator that sees a certified chain conflicting with its
    /// own commits proves that a fork was certified: with at most f faulty,
    /// that must never happen.
    fn check_conflicts(&mut self) {
        for s in 0..self.slots.len() {
            if !self.honest(s) {
                continue;
            }
            if let Some(d) = &self.slots[s].driver
                && d.core().stats().conflicting_commits > 0
            {
                let who = self.slots[s].validator;
                self.violations.push(format!(
                    "agreement: {who} saw a certified chain that conflicts with its commits"
                ));
                return;
            }
        }
    }

    fn check_liveness(&mut self) {
        if self.pre_gst() {
            return;
        }
        // A recovering validator counts as live once it signs again.
        let all = (0..self.slots.len()).filter(|&s| self.honest(s)).all(|s| {
            self.slots[s].head_height() >= self.slots[s].gst_height + self.cfg.liveness_blocks
                && !self.slots[s].recovering
        });
        if all {
            let views = self.max_honest_view().saturating_sub(self.gst_view);
            self.stats.views_after_gst = views;
            if views > self.cfg.liveness_max_views {
                self.violations.push(format!(
                    "liveness: {views} views after GST before every honest validator committed {} blocks (bound {})",
                    self.cfg.liveness_blocks, self.cfg.liveness_max_views
                ));
            }
            self.done = true;
        }
    }

    fn send(&mut self, s: usize, to: Option<ValidatorIndex>, msg: Message) {
        if self.honest(s)
            && let Some(v) = self.shadow.record(self.slots[s].validator, &msg)
        {
            self.violations.push(v);
        }
        match self.slots[s].byz {
            None | Some(Behaviour::Twins) => self.transmit(s, to, &msg),
            Some(Behaviour::Silent) => {}
            Some(Behaviour::Equivocate) => self.equivocate(s, to, msg),
            Some(Behaviour::DoubleVote) => {
                if let (Message::Vote(v), Some(to)) = (&msg, to) {
                    let mut other = v.payload;
                    other.block_id = Digest::of(&other.block_id.0);
                    let forged = self.sign_as(s, other);
                    self.transmit(s, Some(to), &Message::Vote(forged));
                }
                self.transmit(s, to, &msg);
            }
            Some(Behaviour::BadSignatures) => {
                let mut msg = msg;
                if self.rng.chance(0.5) {
                    corrupt(&mut msg);
                }
                self.transmit(s, to, &msg);
            }
            Some(Behaviour::Replay) => {
                self.transmit(s, to, &msg);
                if !self.slots[s].heard.is_empty() && self.rng.chance(0.5) {
                    let i = self.rng.index(self.slots[s].heard.len());
                    let old = self.slots[s].heard[i].clone();
                    let target = ValidatorIndex(self.rng.index(self.cfg.validators) as u16);
                    self.transmit_bytes(s, Some(target), old);
                }
            }
            Some(Behaviour::FutureFlood) => {
                self.transmit(s, to, &msg);
                let view = self.slots[s]
                    .driver
                    .as_ref()
                    .map_or(0, |d| d.core().view().0);
                let genesis = Block::genesis(&self.core_cfg.chain_id, 0);
                for k in [1u64, 5, 15, 19, 25, 1_000, 1_000_000] {
                    let t = Timeout {
                        view: View(view + k),
                        high_qc: genesis_qc(&genesis),
                        high_tc: None,
                    };
                    let signed = self.sign_as(s, t);
                    self.transmit(s, None, &Message::Timeout(signed));
                    let vote = Vote {
                        view: View(view + k),
                        height: Height(view + k),
                        block_id: Digest::of(&(view + k).to_le_bytes()),
                    };
                    let signed = self.sign_as(s, vote);
                    self.transmit(s, None, &Message::Vote(signed));
                }
            }
            Some(Behaviour::Burn) => {
                if let Message::Proposal(p) = &msg
                    && let Some(alt) = self.burn(s, &p.payload)
                {
                    self.transmit(s, to, &Message::Proposal(alt));
                    return;
                }
                self.transmit(s, to, &msg);
            }
            Some(Behaviour::LieExecution) => {
                if let Message::Proposal(p) = &msg
                    && !p.payload.block.header.exec.is_empty()
                {
                    let mut alt = p.payload.clone();
                    let r = &mut alt.block.header.exec[0];
                    if self.rng.chance(0.5) {
                        r.state_root = Digest::of(&r.state_root.0);
                    } else {
                        r.receipts_root = Digest::of(&r.receipts_root.0);
                    }
                    let alt = self.sign_as(s, alt);
                    self.transmit(s, to, &Message::Proposal(alt));
                    return;
                }
                self.transmit(s, to, &msg);
            }
            Some(Behaviour::StaleFork) => {
                if let Message::Proposal(p) = &msg
                    && let Some(alt) = self.stale_fork(s, &p.payload)
                {
                    self.transmit(s, None, &Message::Proposal(alt));
                    return;
                }
                self.transmit(s, to, &msg);
            }
            Some(Behaviour::Withhold) => match &msg {
                Message::Vote(_) => {}
                Message::Proposal(_) => {
                    let me = self.slots[s].validator.as_usize();
                    let n = self.cfg.validators;
                    let one = (me + 1 + self.rng.index(n - 1)) % n;
                    self.transmit(s, Some(ValidatorIndex(one as u16)), &msg);
                }
                _ => self.transmit(s, to, &msg),
            },
            Some(Behaviour::LowTc) => {
                if let Message::Proposal(p) = &msg
                    && p.payload.tc.is_some()
                    && let Some(mut alt) = self.stale_fork(s, &p.payload)
                {
                    if let Some(tc) = &mut alt.payload.tc {
                        tc.high_qc = alt.payload.block.header.justify.clone();
                    }
                    let alt = self.sign_as(s, alt.payload);
                    self.transmit(s, None, &Message::Proposal(alt));
                    return;
                }
                self.transmit(s, to, &msg);
            }
            Some(Behaviour::Delay) => {
                let hold = matches!(msg, Message::Proposal(_) | Message::Vote(_));
                let extra = if hold {
                    self.core_cfg.base_timeout_ms * 4 / 5
                } else {
                    0
                };
                let bytes = Rc::new(encode(&msg));
                if let Message::Proposal(p) = &msg {
                    let b = &p.payload.block;
                    self.all_blocks.entry(b.id()).or_insert_with(|| b.clone());
                }
                self.transmit_bytes_after(s, to, bytes, extra);
            }
            Some(Behaviour::SyncLiar) => {
                if let Message::BlockResponse(r) = &msg {
                    let mut r = r.clone();
                    match self.rng.index(4) {
                        // Stalls: no answer.
                        0 => return,
                        // Nothing.
                        1 => r.blocks.clear(),
                        // Ends early.
                        2 => r.blocks.truncate(1),
                        // Junk: payloads that no longer match.
                        _ => {
                            for b in &mut r.blocks {
                                b.payload.push(0xa5);
                            }
                        }
                    }
                    self.transmit(s, to, &Message::BlockResponse(r));
                    return;
                }
                self.transmit(s, to, &msg);
            }
        }
    }

    fn sign_as<T: phalanx_crypto::SignedPayload>(
        &self,
        s: usize,
        payload: T,
    ) -> phalanx_crypto::Signed<T> {
        let v = self.slots[s].validator;
        Verified::sign(
            &self.keys[v.as_usize()],
            v,
            &self.core_cfg.chain_id,
            payload,
        )
        .into_signed()
    }

    fn equivocate(&mut self, s: usize, to: Option<ValidatorIndex>, msg: Message) {
        let Message::Proposal(p) = &msg else {
            self.transmit(s, to, &msg);
            return;
        };
        let mut alt = p.payload.clone();
        // Another valid block: the same items less the first (a sender's
        // items stay in order, so honest validators may vote for either).
        let mut payload: Vec<u8> = alt
            .block
            .payload
            .get(ITEM_BYTES..)
            .unwrap_or_default()
            .to_vec();
        if payload == alt.block.payload || self.rng.chance(0.3) {
            // A forged item no client submitted.
            let mut forged = make_item(u64::MAX - self.rng.range(0, 1000));
            forged[15] ^= 1;
            payload.truncate(ITEM_BYTES * (MAX_ITEMS_PER_BLOCK - 1));
            if self.rng.chance(0.5) {
                payload.extend_from_slice(&forged);
            } else {
                payload.truncate(payload.len().saturating_sub(ITEM_BYTES));
            }
        }
        alt.block.header.payload_digest = Digest::of(&payload);
        alt.block.payload = payload;
        let alt = Message::Proposal(self.sign_as(s, alt));
        for v in 0..self.cfg.validators {
            let target = Some(ValidatorIndex(v as u16));
            let (first, second) = if self.rng.chance(0.5) {
                (&msg, &alt)
            } else {
                (&alt, &msg)
            };
            self.transmit(s, target, first);
            // Some validators see both blocks: an honest one votes once.
            if self.rng.chance(0.5) {
                self.transmit(s, target, second);
            }
        }
    }

    /// The proposal with its payload burnt: the items reversed, which puts
    /// a sender's later item first when the block holds two of its items,
    /// and at even heights one item's authentication broken too (a mutated
    /// copy).
    fn burn(&self, s: usize, p: &Proposal) -> Option<phalanx_crypto::Signed<Proposal>> {
        let mut items: Vec<[u8; ITEM_BYTES]> = p
            .block
            .payload
            .chunks(ITEM_BYTES)
            .filter_map(|c| c.try_into().ok())
            .collect();
        if p.block.height().0.is_multiple_of(2) {
            let first = items.first_mut()?;
            first[ITEM_BYTES - 1] ^= 1;
        }
        items.reverse();
        let mut alt = p.clone();
        alt.block.payload = items.concat();
        alt.block.header.payload_digest = Digest::of(&alt.block.payload);
        Some(self.sign_as(s, alt))
    }

    fn stale_fork(&self, s: usize, p: &Proposal) -> Option<phalanx_crypto::Signed<Proposal>> {
        // Fork off two certificates below the highest: below the block the
        // highest certificate's parent may already have committed.
        let high = self
            .all_blocks
            .get(&p.block.header.justify.payload.block_id)?;
        let mid = self.all_blocks.get(&high.header.justify.payload.block_id)?;
        let older = mid.header.justify.clone();
        let base = self.all_blocks.get(&older.payload.block_id)?;
        let mut alt = p.clone();
        alt.block.header.parent = base.id();
        alt.block.header.height = base.height().next();
        alt.block.header.timestamp_ms = alt
            .block
            .header
            .timestamp_ms
            .max(base.header.timestamp_ms + 1);
        alt.block.header.idle = crate::Idleness::next(
            &base.header.idle,
            self.core_cfg.validators.len(),
            alt.block.header.proposer,
            &older,
        );
        alt.block.header.justify = older;
        Some(self.sign_as(s, alt))
    }

    fn transmit(&mut self, s: usize, to: Option<ValidatorIndex>, msg: &Message) {
        if let Message::Proposal(p) = msg {
            let b = &p.payload.block;
            self.all_blocks.entry(b.id()).or_insert_with(|| b.clone());
        }
        let bytes = Rc::new(encode(msg));
        self.transmit_bytes(s, to, bytes);
    }

    fn transmit_bytes(&mut self, s: usize, to: Option<ValidatorIndex>, bytes: Rc<Vec<u8>>) {
        self.transmit_bytes_after(s, to, bytes, 0);
    }

    /// [`Sim::transmit_bytes`], held `extra` ms first.
    fn transmit_bytes_after(
        &mut self,
        s: usize,
        to: Option<ValidatorIndex>,
        bytes: Rc<Vec<u8>>,
        extra: u64,
    ) {
        let from = self.slots[s].validator;
        for t in 0..self.slots.len() {
            let tv = self.slots[t].validator;
            let wanted = match to {
                Some(v) => tv == v,
                None => tv != from,
            };
            if !wanted || t == s || !self.link_up(s, t) {
                continue;
            }
            let pre = self.pre_gst();
            if pre && self.rng.chance(self.drop_p) {
                continue;
            }
            let copies = if self.rng.chance(self.dup_p) { 2 } else { 1 };
            for _ in 0..copies {
                let delay = if pre {
                    self.rng.range(1, 150)
                } else {
                    self.rng.range(1, 20)
                };
                self.schedule(
                    self.now + delay + extra,
                    Ev::Deliver {
                        to: t,
                        from,
                        bytes: bytes.clone(),
                    },
                );
            }
        }
    }

    fn finish(mut self) -> Outcome {
        let honest: Vec<usize> = (0..self.slots.len()).filter(|&s| self.honest(s)).collect();
        self.stats.min_height = honest
            .iter()
            .map(|&s| self.slots[s].head_height())
            .min()
            .unwrap_or(0);
        self.stats.max_view = self.max_honest_view();
        self.stats.timeouts_after_gst = self.honest_timeouts().saturating_sub(self.gst_timeouts);
        self.stats.future_dropped = self
            .slots
            .iter()
            .filter_map(|s| s.driver.as_ref().map(|d| d.core().stats().future_dropped))
            .sum();
        Outcome {
            seed: self.seed,
            violations: self.violations,
            trace: self.trace,
            stats: self.stats,
        }
    }
}

/// Flips a bit in a signed message's signature.
fn corrupt(msg: &mut Message) {
    match msg {
        Message::Proposal(p) => p.signature.0[7] ^= 0x40,
        Message::Vote(v) => v.signature.0[7] ^= 0x40,
        Message::Timeout(t) => t.signature.0[7] ^= 0x40,
        Message::Checkpoint(c) => c.signature.0[7] ^= 0x40,
        Message::ViewReport(r) => r.signature.0[7] ^= 0x40,
        Message::BlockRequest(_)
        | Message::BlockResponse(_)
        | Message::RecoveryQuery(_)
        | Message::Evidence(_) => {}
    }
}

/// Runs `count` seeds from `start` on up to `threads` threads and returns
/// the outcomes in seed order.
pub fn run_many(cfg: &SimConfig, start: u64, count: u64, threads: usize) -> Vec<Outcome> {
    let threads = threads.max(1) as u64;
    let mut all: Vec<Outcome> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    (start + t..start + count)
                        .step_by(threads as usize)
                        .map(|seed| run(seed, cfg))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    all.sort_by_key(|o| o.seed);
    all
}

/// The simulated receipts root of a block: anything every honest executor
/// computes alike.
fn receipts_root_of(id: &Digest) -> Digest {
    Digest::of_parts(&[b"receipts", &id.0])
}
