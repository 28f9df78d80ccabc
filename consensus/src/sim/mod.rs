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
//! Fakes live only here: the clock, the network and a disk that is a struct.

mod rng;

use std::collections::BTreeMap;
use std::rc::Rc;

use phalanx_crypto::{ChainId, Digest, KeyPair, ValidatorIndex, ValidatorSet, Verified, encode};

pub use rng::Rng;

use crate::core::{Action, Config, Core, Event, Flaw, PayloadValidator, Restore};
use crate::safety::SafetyState;
use crate::types::{
    Block, CheckpointCert, Height, Message, Proposal, QuorumCert, Time, Timeout, View, Vote,
    genesis_qc,
};
use crate::verify::Verifier;

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
}

impl Behaviour {
    /// Every behaviour.
    pub const ALL: [Behaviour; 8] = [
        Behaviour::Silent,
        Behaviour::Equivocate,
        Behaviour::DoubleVote,
        Behaviour::BadSignatures,
        Behaviour::Replay,
        Behaviour::FutureFlood,
        Behaviour::StaleFork,
        Behaviour::Twins,
    ];
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
    /// Stable checkpoints reached (highest height).
    pub stable_height: u64,
    /// Crashes injected.
    pub crashes: u64,
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

/// Honest validators vote only for payloads made of client-authenticated
/// items: a Byzantine leader cannot invent one.
struct ClientItems;

impl PayloadValidator for ClientItems {
    fn is_valid(&self, payload: &[u8]) -> bool {
        parse_items(payload).is_some()
    }
}

#[derive(Clone, Default)]
struct Disk {
    safety: Option<SafetyState>,
    head: Option<(Block, QuorumCert)>,
    root: Digest,
    stable: Option<CheckpointCert>,
    blocks: BTreeMap<Digest, Block>,
}

struct Slot {
    validator: ValidatorIndex,
    byz: Option<Behaviour>,
    core: Option<Core>,
    timer_token: u64,
    disk: Disk,
    mempool: BTreeMap<u64, [u8; ITEM_BYTES]>,
    heard: Vec<Rc<Vec<u8>>>,
    clock_skew_ms: u64,
    side: bool,
    gst_height: u64,
}

enum Ev {
    Deliver {
        to: usize,
        from: ValidatorIndex,
        bytes: Rc<Vec<u8>>,
    },
    Timer {
        slot: usize,
        token: u64,
        view: View,
    },
    Crash {
        slot: usize,
    },
    Restart {
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
    verifier: Verifier,
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
    done: bool,
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
        core_cfg.future_view_window = 20;
        core_cfg.sync_batch_blocks = 32;
        core_cfg.retained_blocks = 100_000;
        core_cfg.max_payload_bytes = ITEM_BYTES * MAX_ITEMS_PER_BLOCK;
        core_cfg.flaw = cfg.flaw;
        let genesis = Block::genesis(&chain, 0);
        let verifier = Verifier::new(set.clone(), chain, &genesis, core_cfg.max_payload_bytes);

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
                    core: None,
                    timer_token: 0,
                    disk: Disk::default(),
                    mempool: BTreeMap::new(),
                    heard: Vec::new(),
                    clock_skew_ms: rng.range(0, 200),
                    // Twins start on opposite sides of a halves partition.
                    side: if copies == 2 { c == 1 } else { rng.chance(0.5) },
                    gst_height: 0,
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
            verifier,
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
            done: false,
        };
        sim.all_blocks.insert(genesis.id(), genesis.clone());
        for s in 0..sim.slots.len() {
            sim.slots[s].disk.head = Some((genesis.clone(), genesis_cert.clone()));
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
        let disk = self.slots[s].disk.clone();
        let genesis = Block::genesis(&self.core_cfg.chain_id, 0);
        let safety = match disk.safety {
            Some(st) if !self.cfg.forget_safety_on_restart => st,
            _ => SafetyState::initial(genesis_qc(&genesis)),
        };
        let Some(head) = disk.head else {
            return;
        };
        let restore = Restore {
            safety,
            committed: head,
            stable: disk.stable,
            blocks: disk.blocks.into_values().collect(),
        };
        let now = self.clock(s);
        match Core::restore(
            self.core_cfg.clone(),
            key,
            Box::new(ClientItems),
            restore,
            now,
        ) {
            Ok((core, actions)) => {
                self.slots[s].core = Some(core);
                self.apply(s, actions, None);
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
                    let h = self.slots[s]
                        .disk
                        .head
                        .as_ref()
                        .map_or(0, |(b, _)| b.height().0);
                    let need = self.slots[s].gst_height + self.cfg.liveness_blocks;
                    (h < need).then(|| {
                        format!("{} at height {h} (needs {need})", self.slots[s].validator)
                    })
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
            if self.slots[s].core.is_none() {
                self.start(s);
            }
            self.slots[s].gst_height = self.slots[s]
                .disk
                .head
                .as_ref()
                .map_or(0, |(b, _)| b.height().0);
        }
        self.gst_view = self.max_honest_view();
    }

    fn max_honest_view(&self) -> u64 {
        self.slots
            .iter()
            .filter(|s| s.byz.is_none())
            .filter_map(|s| s.core.as_ref().map(|c| c.view().0))
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
            Ev::Timer { slot, token, view } => {
                if self.slots[slot].timer_token != token || self.slots[slot].core.is_none() {
                    return;
                }
                self.mix(1000 + slot as u64);
                if std::env::var_os("SIM_DEBUG").is_some() {
                    eprintln!("{} timer slot {slot} view {view}", self.now);
                }
                self.handle(slot, Event::TimerFired { view });
            }
            Ev::Crash { slot } => {
                if self.honest(slot) && self.pre_gst() && self.down_count() == 0 {
                    self.crash(slot);
                }
            }
            Ev::Restart { slot } => {
                if self.slots[slot].core.is_none() {
                    self.mix(3000 + slot as u64);
                    self.start(slot);
                }
            }
            Ev::Submit => {
                let id = self.next_item;
                self.next_item += 1;
                let item = make_item(id);
                for s in &mut self.slots {
                    if s.core.is_some() {
                        s.mempool.insert(id, item);
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
                        let view = View(self.max_honest_view());
                        let leader = self.core_cfg.leader(view);
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
        self.slots.iter().filter(|s| s.core.is_none()).count()
    }

    fn crash(&mut self, s: usize) {
        self.stats.crashes += 1;
        self.slots[s].core = None;
        self.slots[s].mempool.clear();
        self.mix(5000 + s as u64);
        let back = (self.now + self.rng.range(100, 1500)).min(self.cfg.gst_ms);
        self.schedule(back, Ev::Restart { slot: s });
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
        if self.slots[to].core.is_none() {
            return;
        }
        if self.slots[to].byz == Some(Behaviour::Replay) && self.slots[to].heard.len() < 512 {
            self.slots[to].heard.push(bytes.clone());
        }
        match self.verifier.verify_bytes(&bytes) {
            Ok(msg) => {
                self.stats.delivered += 1;
                self.handle(to, Event::Message { from, msg });
            }
            Err(e) => {
                if std::env::var_os("SIM_DEBUG").is_some() {
                    eprintln!("reject {e}");
                }
                self.stats.rejected += 1
            }
        }
    }

    fn handle(&mut self, s: usize, ev: Event) {
        let now = self.clock(s);
        let Some(core) = self.slots[s].core.as_mut() else {
            return;
        };
        let actions = core.handle(now, ev);
        if std::env::var_os("SIM_DEBUG").is_some() {
            for a in &actions {
                match a {
                    Action::Persist(_) | Action::SetTimer { .. } | Action::PersistBlock(_) => {}
                    Action::Send { to, msg } => eprintln!(
                        "{} slot {s} v{} -> {to}: {} {:?}",
                        self.now,
                        core.view(),
                        msg.kind(),
                        msg.view()
                    ),
                    Action::Broadcast(msg) => eprintln!(
                        "{} slot {s} v{} -> all: {} {:?}",
                        self.now,
                        core.view(),
                        msg.kind(),
                        msg.view()
                    ),
                    other => eprintln!("{} slot {s} v{}: {other:?}", self.now, core.view()),
                }
            }
            eprintln!(
                "{} slot {s} stats {:?} committed {:?}",
                self.now,
                core.stats(),
                core.committed().0
            );
        }
        // Rarely, an honest process dies part-way through its action list,
        // losing what was not yet persisted or sent.
        let cut = if self.cfg.crashes
            && self.honest(s)
            && self.pre_gst()
            && self.down_count() == 0
            && !actions.is_empty()
            && self.rng.chance(0.002)
        {
            Some(self.rng.index(actions.len()))
        } else {
            None
        };
        self.apply(s, actions, cut);
    }

    fn apply(&mut self, s: usize, actions: Vec<Action>, cut: Option<usize>) {
        let mut follow = Vec::new();
        for (i, a) in actions.into_iter().enumerate() {
            if cut == Some(i) {
                self.crash(s);
                return;
            }
            match a {
                Action::Persist(st) => self.slots[s].disk.safety = Some(st),
                Action::PersistBlock(b) => {
                    self.slots[s].disk.blocks.insert(b.id(), b);
                }
                Action::Send { to, msg } => self.send(s, Some(to), msg),
                Action::Broadcast(msg) => self.send(s, None, msg),
                Action::SetTimer { view, at } => {
                    self.slots[s].timer_token += 1;
                    let token = self.slots[s].timer_token;
                    let at = at.0.saturating_sub(self.slots[s].clock_skew_ms);
                    self.schedule(
                        at,
                        Ev::Timer {
                            slot: s,
                            token,
                            view,
                        },
                    );
                }
                Action::RequestPayload { view, .. } => {
                    let payload: Vec<u8> = self.slots[s]
                        .mempool
                        .values()
                        .take(MAX_ITEMS_PER_BLOCK)
                        .flat_map(|it| it.iter().copied())
                        .collect();
                    follow.push(Event::PayloadReady { view, payload });
                }
                Action::Commit { block, cert } => {
                    if let Some(ev) = self.on_commit(s, block, cert) {
                        follow.push(ev);
                    }
                }
                Action::StableCheckpoint(c) => self.on_checkpoint(s, c),
                Action::Evidence(e) => {
                    if self.honest(s) {
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
                }
            }
        }
        for ev in follow {
            if self.slots[s].core.is_some() {
                self.handle(s, ev);
            }
        }
    }

    fn on_commit(&mut self, s: usize, block: Block, cert: QuorumCert) -> Option<Event> {
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
        // Chain integrity: consecutive heights, each extending the last.
        if let Some((prev, _)) = &self.slots[s].disk.head
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
        // Validity: every item was submitted by a client.
        match parse_items(&block.payload) {
            Some(ids) if ids.iter().all(|i| *i < self.next_item) => {}
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
        if let Some(ids) = parse_items(&block.payload) {
            for i in ids {
                self.slots[s].mempool.remove(&i);
            }
        }
        let root = Digest::of_parts(&[&self.slots[s].disk.root.0, &id.0]);
        if honest {
            match self.roots.get(&h) {
                Some(r) if *r != root => self.violations.push(format!(
                    "state divergence: {who} has a different state root at height {h}"
                )),
                _ => {
                    self.roots.insert(h, root);
                }
            }
        }
        self.check_conflicts();
        self.all_blocks.insert(id, block.clone());
        self.slots[s].disk.root = root;
        self.slots[s].disk.blocks.retain(|_, b| b.height().0 > h);
        self.slots[s].disk.head = Some((block, cert));
        self.check_liveness();
        Some(Event::Executed {
            height: Height(h),
            block_id: id,
            state_root: root,
        })
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
        self.slots[s].disk.stable = Some(c);
    }

    /// An honest validator that sees a certified chain conflicting with its
    /// own commits proves that a fork was certified: with at most f faulty,
    /// that must never happen.
    fn check_conflicts(&mut self) {
        for s in 0..self.slots.len() {
            if !self.honest(s) {
                continue;
            }
            if let Some(c) = &self.slots[s].core
                && c.stats().conflicting_commits > 0
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
        let all = (0..self.slots.len()).filter(|&s| self.honest(s)).all(|s| {
            let h = self.slots[s]
                .disk
                .head
                .as_ref()
                .map_or(0, |(b, _)| b.height().0);
            h >= self.slots[s].gst_height + self.cfg.liveness_blocks
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
                let view = self.slots[s].core.as_ref().map_or(0, |c| c.view().0);
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
            Some(Behaviour::StaleFork) => {
                if let Message::Proposal(p) = &msg
                    && let Some(alt) = self.stale_fork(s, &p.payload)
                {
                    self.transmit(s, None, &Message::Proposal(alt));
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
        let items: Vec<&[u8]> = alt.block.payload.chunks(ITEM_BYTES).rev().collect();
        let mut payload: Vec<u8> = items.concat();
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
                    self.now + delay,
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
            .map(|&s| {
                self.slots[s]
                    .disk
                    .head
                    .as_ref()
                    .map_or(0, |(b, _)| b.height().0)
            })
            .min()
            .unwrap_or(0);
        self.stats.max_view = self.max_honest_view();
        self.stats.future_dropped = self
            .slots
            .iter()
            .filter_map(|s| s.core.as_ref().map(|c| c.stats().future_dropped))
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
        Message::BlockRequest(_) | Message::BlockResponse(_) => {}
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
