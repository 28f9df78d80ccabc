//! Table tests for the driver's contract (`consensus/src/driver.rs`, D1–D11):
//! each case feeds inputs to a driver over recording ports and checks the
//! port calls it observed, in order.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use phalanx_consensus::{
    AcceptAll, BLOCK_REQUEST_BURST, BLOCK_REQUESTS_PER_SEC, Block, BlockHeader, BlockRequest,
    BlockStore, CheckpointCert, Config, Driver, DriverConfig, DriverError, ExecResult, Executor,
    GRAYLIST_INVALID_MAX, GRAYLIST_MS, GRAYLIST_WINDOW_MS, Height, Idleness, MAX_UNEXECUTED_BLOCKS,
    Message, Monitor, Outbox, PROPOSE_MAX_UNEXECUTED, PayloadRequest, PayloadSource, PortError,
    Proposal, QuorumCert, Restore, SYNC_RESPONSE_BYTES_MAX, SafetyState, SafetyStore, Time,
    Timeout, VerifiedMessage, VerifyError, View, Vote, genesis_qc, take_sync_blocks,
};
use phalanx_crypto::{
    Certificate, ChainId, Digest, KeyPair, ValidatorIndex, ValidatorSet, Verified, encode,
};

/// One observed port call.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Call {
    PersistSafety { voted: u64 },
    PersistBlock(u64),
    SyncBlocks,
    Send { to: u16, kind: &'static str },
    Broadcast(&'static str),
    Execute(u64),
    Checkpoint(u64),
    Payload { view: u64, wait: bool },
    Refused,
    TimedOut(u64),
    Served { blocks: usize },
    Graylisted { peer: u16, until: u64 },
    Dropped(u16),
}

use Call::*;

/// Ports that record every call and can be told to fail one kind.
#[derive(Default)]
struct Recorder {
    calls: Vec<Call>,
    sent: Vec<Message>,
    fail: Option<&'static str>,
    /// What the payload source holds.
    payload: Option<Vec<u8>>,
    /// Committed blocks this store holds, by height.
    chain: BTreeMap<u64, Block>,
}

impl Recorder {
    fn check(&self, port: &'static str) -> Result<(), PortError> {
        if self.fail == Some(port) {
            return Err(PortError::new(port, "disk error"));
        }
        Ok(())
    }
}

impl SafetyStore for Recorder {
    fn persist_safety(&mut self, s: &SafetyState) -> Result<(), PortError> {
        self.calls.push(PersistSafety {
            voted: s.last_voted_view.0,
        });
        self.check("safety")
    }
}

impl BlockStore for Recorder {
    fn persist_block(&mut self, b: &Block) -> Result<(), PortError> {
        self.calls.push(PersistBlock(b.height().0));
        self.check("block")
    }
    fn sync_blocks(&mut self) -> Result<(), PortError> {
        self.calls.push(SyncBlocks);
        self.check("block")
    }
    fn committed_height(&mut self, id: &Digest) -> Result<Option<Height>, PortError> {
        Ok(self
            .chain
            .values()
            .find(|b| b.id() == *id)
            .map(|b| b.height()))
    }
    fn committed_block(&mut self, h: Height) -> Result<Option<Block>, PortError> {
        Ok(self.chain.get(&h.0).cloned())
    }
    fn record_checkpoint(&mut self, c: &CheckpointCert) -> Result<(), PortError> {
        self.calls.push(Checkpoint(c.payload.height.0));
        self.check("block")
    }
}

impl Outbox for Recorder {
    fn send(&mut self, to: ValidatorIndex, msg: &Message) -> Result<(), PortError> {
        self.calls.push(Send {
            to: to.0,
            kind: msg.kind(),
        });
        self.sent.push(msg.clone());
        self.check("outbox")
    }
    fn broadcast(&mut self, msg: &Message) -> Result<(), PortError> {
        self.calls.push(Broadcast(msg.kind()));
        self.sent.push(msg.clone());
        self.check("outbox")
    }
}

impl Executor for Recorder {
    fn execute(&mut self, b: Block, _: QuorumCert) -> Result<(), PortError> {
        self.calls.push(Execute(b.height().0));
        self.check("executor")
    }
}

impl PayloadSource for Recorder {
    fn payload(&mut self, req: &PayloadRequest, wait: bool) -> Option<Vec<u8>> {
        self.calls.push(Payload {
            view: req.view.0,
            wait,
        });
        match self.payload.take() {
            Some(p) => Some(p),
            None if wait => None,
            None => Some(Vec::new()),
        }
    }
}

impl Monitor for Recorder {
    fn refused(&mut self, _: ValidatorIndex, _: &VerifyError) {
        self.calls.push(Refused);
    }
    fn timed_out(&mut self, view: View) {
        self.calls.push(TimedOut(view.0));
    }
    fn served(&mut self, _: ValidatorIndex, _: Height, blocks: usize) {
        self.calls.push(Served { blocks });
    }
    fn received(&mut self, _: ValidatorIndex, _: &VerifiedMessage, _: usize) {}
    fn graylisted(&mut self, peer: ValidatorIndex, until: Time) {
        self.calls.push(Graylisted {
            peer: peer.0,
            until: until.0,
        });
    }
    fn dropped(&mut self, from: ValidatorIndex) {
        self.calls.push(Dropped(from.0));
    }
}

/// A 4-validator chain and the keys to sign anything on it.
struct Net {
    keys: Vec<KeyPair>,
    cfg: Config,
}

const T0: u64 = 10_000;

fn net() -> Net {
    let keys: Vec<KeyPair> = (0..4u8).map(|i| KeyPair::from_seed([i + 7; 32])).collect();
    let set = ValidatorSet::new(keys.iter().map(|k| k.public()).collect()).unwrap();
    let chain = ChainId::new("driver").unwrap();
    let mut cfg = Config::new(chain, set, 1_000);
    cfg.checkpoint_interval = 2;
    cfg.future_view_window = 10;
    cfg.base_timeout_ms = 1_000;
    Net { keys, cfg }
}

impl Net {
    fn genesis(&self) -> Block {
        Block::genesis(&self.cfg.chain_id, 1_000)
    }

    fn genesis_restore(&self) -> Restore {
        let g = self.genesis();
        Restore {
            executed: vec![],
            safety: SafetyState::initial(genesis_qc(&g)),
            committed: (g.clone(), genesis_qc(&g)),
            stable: None,
            blocks: vec![],
        }
    }

    fn driver(&self, me: usize, restore: Restore, ports: Recorder) -> Driver<Recorder> {
        Driver::start(
            self.cfg.clone(),
            self.keys[me].clone(),
            Box::new(AcceptAll),
            restore,
            ports,
            DriverConfig {
                empty_block_delay_ms: 50,
            },
            Time(T0),
        )
        .unwrap()
    }

    fn block(&self, parent: &Block, view: u64, justify: QuorumCert, payload: &[u8]) -> Block {
        let proposer = self.cfg.leader(View(view), &parent.header);
        Block {
            header: BlockHeader {
                parent: parent.id(),
                height: parent.height().next(),
                view: View(view),
                proposer,
                timestamp_ms: parent.header.timestamp_ms + 1,
                payload_digest: Digest::of(payload),
                idle: Idleness::next(
                    &parent.header.idle,
                    self.cfg.validators.len(),
                    proposer,
                    &justify,
                ),
                justify,
                exec_next: parent.header.exec_next,
                exec: vec![],
            },
            payload: payload.to_vec(),
        }
    }

    fn proposal(&self, block: Block) -> Vec<u8> {
        let leader = block.header.proposer;
        encode(&Message::Proposal(
            Verified::sign(
                &self.keys[leader.as_usize()],
                leader,
                &self.cfg.chain_id,
                Proposal { block, tc: None },
            )
            .into_signed(),
        ))
    }

    /// Validator `from`'s signed vote for `b`.
    fn signed_vote(&self, from: u16, b: &Block) -> Verified<Vote> {
        Verified::sign(
            &self.keys[from as usize],
            ValidatorIndex(from),
            &self.cfg.chain_id,
            Vote {
                view: b.view(),
                height: b.height(),
                block_id: b.id(),
            },
        )
    }

    /// A certificate for `b` from validators 0, 1 and 2.
    fn qc(&self, b: &Block) -> QuorumCert {
        let votes: Vec<Verified<Vote>> = (0..3u16).map(|i| self.signed_vote(i, b)).collect();
        Certificate::aggregate(&votes, &self.cfg.validators).unwrap()
    }

    /// Blocks in views 1..=k, each certified by the next one's justify.
    fn chain(&self, k: u64) -> Vec<Block> {
        let g = self.genesis();
        let mut out: Vec<Block> = Vec::new();
        let mut parent = g.clone();
        let mut justify = genesis_qc(&g);
        for v in 1..=k {
            let b = self.block(&parent, v, justify, format!("b{v}").as_bytes());
            justify = self.qc(&b);
            parent = b.clone();
            out.push(b);
        }
        out
    }

    fn vote(&self, from: u16, b: &Block) -> Vec<u8> {
        encode(&Message::Vote(self.signed_vote(from, b).into_signed()))
    }

    /// Validator `ME` after proposals for views 1 to 4, which commit
    /// heights 1 and 2 (checkpoint interval 2), neither executed.
    fn driver_with_two_commits(&self) -> Driver<Recorder> {
        let mut d = self.driver(ME, self.genesis_restore(), Recorder::default());
        for b in self.chain(4) {
            let leader = b.header.proposer;
            d.on_bytes(Time(T0 + 1), leader, &self.proposal(b)).unwrap();
        }
        d
    }

    fn far_timeout(&self, from: u16, view: u64) -> Vec<u8> {
        let g = self.genesis();
        encode(&Message::Timeout(
            Verified::sign(
                &self.keys[from as usize],
                ValidatorIndex(from),
                &self.cfg.chain_id,
                Timeout {
                    view: View(view),
                    high_qc: genesis_qc(&g),
                    high_tc: None,
                },
            )
            .into_signed(),
        ))
    }
}

/// Validator 0: not the leader of views 1 to 3; its votes for view v go to
/// the leader of v + 1 (itself for view 3).
const ME: usize = 0;

fn calls_after<P>(d: &mut Driver<Recorder>, f: P) -> Vec<Call>
where
    P: FnOnce(&mut Driver<Recorder>) -> Result<(), DriverError>,
{
    d.ports_mut().calls.clear();
    f(d).unwrap();
    std::mem::take(&mut d.ports_mut().calls)
}

struct Case {
    desc: &'static str,
    /// Inputs, run on a fresh driver of validator `ME` at genesis.
    input: fn(&Net, &mut Driver<Recorder>) -> Result<(), DriverError>,
    expected: Vec<Call>,
}

#[test]
fn the_driver_performs_each_input_as_the_contract_says() {
    let cases = vec![
        Case {
            desc: "D1/D2: a proposal: the block, synced, then the safety state, then the vote",
            input: |n, d| {
                let b1 = n.chain(1).remove(0);
                d.on_bytes(Time(T0 + 1), ValidatorIndex(1), &n.proposal(b1))
            },
            expected: vec![
                PersistBlock(1),
                SyncBlocks,
                PersistSafety { voted: 1 },
                Send {
                    to: 2,
                    kind: "vote",
                },
            ],
        },
        Case {
            desc: "D1/D8: the view's timer: the timeout is persisted before it is broadcast",
            input: |_, d| {
                let at = d.next_deadline().unwrap();
                d.tick(Time(at.0 - 1))?;
                d.tick(at)
            },
            expected: vec![
                TimedOut(1),
                PersistSafety { voted: 1 },
                Broadcast("timeout"),
            ],
        },
        Case {
            desc: "D4: a certified two-chain commits its first block to the executor",
            input: |n, d| {
                let c = n.chain(3);
                for (i, b) in c.into_iter().enumerate() {
                    let leader = ValidatorIndex(i as u16 + 1);
                    d.on_bytes(Time(T0 + 1), leader, &n.proposal(b))?;
                }
                Ok(())
            },
            expected: vec![
                PersistBlock(1),
                SyncBlocks,
                PersistSafety { voted: 1 },
                Send {
                    to: 2,
                    kind: "vote",
                },
                PersistBlock(2),
                SyncBlocks,
                PersistSafety { voted: 2 },
                Send {
                    to: 3,
                    kind: "vote",
                },
                // The justify of block 3 certifies block 2, whose parent
                // sits in the view before it: block 1 commits first.
                Execute(1),
                PersistBlock(3),
                SyncBlocks,
                PersistSafety { voted: 3 },
            ],
        },
        Case {
            desc: "D10: a second far-view message from one peer is refused unverified",
            input: |n, d| {
                d.on_bytes(Time(T0 + 1), ValidatorIndex(1), &n.far_timeout(1, 500))?;
                d.on_bytes(Time(T0 + 2), ValidatorIndex(1), &n.far_timeout(1, 501))
            },
            expected: vec![Refused],
        },
        Case {
            desc: "D13: a validly signed view report nobody asked for is refused unverified",
            input: |n, d| {
                let g = n.genesis();
                let report = Message::ViewReport(
                    Verified::sign(
                        &n.keys[1],
                        ValidatorIndex(1),
                        &n.cfg.chain_id,
                        phalanx_consensus::ViewReport {
                            nonce: Digest::of(b"unasked"),
                            high_qc: genesis_qc(&g),
                            high_tc: None,
                        },
                    )
                    .into_signed(),
                );
                d.on_bytes(Time(T0 + 1), ValidatorIndex(1), &encode(&report))
            },
            expected: vec![Refused],
        },
        Case {
            desc: "refused at the edge: junk bytes reach the monitor, not the core",
            input: |_, d| d.on_bytes(Time(T0 + 1), ValidatorIndex(2), &[0xff; 40]),
            expected: vec![Refused],
        },
    ];
    let n = net();
    for case in cases {
        let mut d = n.driver(ME, n.genesis_restore(), Recorder::default());
        d.ports_mut().calls.clear();
        (case.input)(&n, &mut d).unwrap();
        assert_eq!(d.ports().calls, case.expected, "{}", case.desc);
    }
}

#[test]
fn execution_results_are_fed_back_and_sign_checkpoints() {
    let n = net();
    let mut d = n.driver_with_two_commits();
    assert_eq!(d.committed_height(), Height(2));
    assert_eq!(d.executed_height(), Height(0));
    let c = n.chain(2);
    // (Validator 0 leads view 4, and a payload held back while both
    // heights waited is asked for as they execute: D12.)
    let not_payload = |c: &Call| !matches!(c, Payload { .. });
    let calls = calls_after(&mut d, |d| {
        d.on_executed(
            Time(T0 + 2),
            result(Height(1), c[0].id(), Digest::of(b"r1")),
        )
    });
    let calls: Vec<Call> = calls.into_iter().filter(not_payload).collect();
    assert_eq!(calls, vec![], "height 1 is no checkpoint");
    let calls = calls_after(&mut d, |d| {
        d.on_executed(
            Time(T0 + 2),
            result(Height(2), c[1].id(), Digest::of(b"r2")),
        )
    });
    let calls: Vec<Call> = calls.into_iter().filter(not_payload).collect();
    assert_eq!(calls, vec![Broadcast("checkpoint")], "height 2 is");
    assert_eq!(d.executed_height(), Height(2));
}

#[test]
#[should_panic(expected = "out of order")]
fn an_execution_result_out_of_height_order_is_a_bug() {
    let n = net();
    let mut d = n.driver_with_two_commits();
    let c = n.chain(2);
    let _ = d.on_executed(
        Time(T0 + 2),
        result(Height(2), c[1].id(), Digest::of(b"r2")),
    );
}

#[test]
fn a_stored_vote_is_resent_verbatim_after_restart_and_its_block_synced_first() {
    let n = net();
    let b1 = n.chain(1).remove(0);
    let mut d = n.driver(ME, n.genesis_restore(), Recorder::default());
    d.on_bytes(Time(T0 + 1), ValidatorIndex(1), &n.proposal(b1.clone()))
        .unwrap();
    let stored = d.core().safety().clone();
    let first_vote = d.ports().sent.last().cloned().unwrap();

    // Restart from what was persisted; the proposal arrives again.
    let mut restore = n.genesis_restore();
    restore.safety = stored.clone();
    restore.blocks = vec![b1.clone()];
    let mut d = n.driver(ME, restore, Recorder::default());
    let calls = calls_after(&mut d, |d| {
        d.on_bytes(Time(T0 + 5), ValidatorIndex(1), &n.proposal(b1))
    });
    // No new signature (no safety write): the block written again is
    // synced on its own before the stored vote leaves (D2).
    assert_eq!(
        calls,
        vec![
            PersistBlock(1),
            SyncBlocks,
            Send {
                to: 2,
                kind: "vote"
            }
        ]
    );
    let resent = d.ports().sent.last().cloned().unwrap();
    assert_eq!(encode(&resent), encode(&first_vote), "byte for byte");
    assert_eq!(
        Some(match &resent {
            Message::Vote(v) => v.clone(),
            _ => unreachable!(),
        }),
        stored.last_vote
    );
}

#[test]
fn a_failed_write_stops_the_validator_before_anything_depending_on_it_leaves() {
    let n = net();
    for port in ["safety", "block"] {
        let ports = Recorder {
            fail: Some(port),
            ..Recorder::default()
        };
        let mut d = n.driver(ME, n.genesis_restore(), ports);
        let b1 = n.chain(1).remove(0);
        let err = d
            .on_bytes(Time(T0 + 1), ValidatorIndex(1), &n.proposal(b1.clone()))
            .unwrap_err();
        assert!(matches!(err, DriverError::Port(_)), "{port}: {err}");
        assert!(
            !d.ports()
                .calls
                .iter()
                .any(|c| matches!(c, Send { .. } | Broadcast(_))),
            "{port}: nothing sent after the failed write: {:?}",
            d.ports().calls
        );
        assert!(d.is_stopped());
        let again = d.on_bytes(Time(T0 + 2), ValidatorIndex(1), &n.proposal(b1));
        assert!(matches!(again, Err(DriverError::Stopped)), "{port}");
        assert!(matches!(d.tick(Time(u64::MAX)), Err(DriverError::Stopped)));
    }
}

#[test]
fn block_requests_for_committed_blocks_are_served_from_the_store_within_one_budget() {
    let n = net();
    let g = n.genesis();
    // Five committed blocks of 3 MiB: the budget (8 MiB) holds two.
    let big = vec![7u8; 3 * 1024 * 1024];
    let mut chain = BTreeMap::new();
    let mut parent = g.clone();
    let mut justify = genesis_qc(&g);
    for v in 1..=5 {
        let b = n.block(&parent, v, justify, &big);
        justify = n.qc(&b);
        chain.insert(v, b.clone());
        parent = b;
    }
    let top = chain[&5].id();
    let ports = Recorder {
        chain: chain.clone(),
        ..Recorder::default()
    };
    let mut d = n.driver(ME, n.genesis_restore(), ports);
    let req = Message::BlockRequest(BlockRequest { id: top, count: 64 });
    let calls = calls_after(&mut d, |d| {
        d.on_bytes(Time(T0 + 1), ValidatorIndex(0), &encode(&req))
    });
    assert_eq!(
        calls,
        vec![
            Served { blocks: 2 },
            Send {
                to: 0,
                kind: "block_response"
            }
        ]
    );
    let Some(Message::BlockResponse(r)) = d.ports().sent.last() else {
        panic!("no response")
    };
    let heights: Vec<u64> = r.blocks.iter().map(|b| b.height().0).collect();
    assert_eq!(heights, vec![5, 4], "walks down from the requested block");
    assert!(encode(&r.blocks).len() <= SYNC_RESPONSE_BYTES_MAX);

    // The core fills its responses with the same function and budget.
    let walk = chain.values().rev().cloned().map(Ok::<_, ()>);
    assert_eq!(take_sync_blocks(64, walk).unwrap().len(), 2);
    let walk = chain.values().rev().cloned().map(Ok::<_, ()>);
    assert_eq!(take_sync_blocks(1, walk).unwrap().len(), 1);
}

#[test]
fn a_payload_is_owed_until_the_mempool_has_one_or_the_wait_is_over() {
    let n = net();
    // Validator 1 leads view 1.
    let mut d = n.driver(1, n.genesis_restore(), Recorder::default());
    assert_eq!(
        d.ports().calls,
        vec![Payload {
            view: 1,
            wait: true
        }],
        "asked at start, nothing there"
    );
    assert!(d.awaiting_payload());
    assert_eq!(d.next_deadline(), Some(Time(T0 + 50)));
    d.ports_mut().payload = Some(b"tx".to_vec());
    let calls = calls_after(&mut d, |d| d.payload_available(Time(T0 + 10)));
    assert_eq!(
        calls[0],
        Payload {
            view: 1,
            wait: true
        }
    );
    assert!(calls.contains(&Broadcast("proposal")), "{calls:?}");
    assert!(!d.awaiting_payload());

    // The view moves on (a timeout certificate for view 1): the payload is
    // no longer owed, and the mempool is not asked for it.
    let mut d = n.driver(1, n.genesis_restore(), Recorder::default());
    assert!(d.awaiting_payload());
    for i in [0u16, 2, 3] {
        d.on_bytes(Time(T0 + 5), ValidatorIndex(i), &n.far_timeout(i, 1))
            .unwrap();
    }
    assert!(d.core().view() > View(1));
    assert!(!d.awaiting_payload(), "nothing owed for a view left behind");

    // Nothing arrives: an empty block once the wait is over.
    let mut d = n.driver(1, n.genesis_restore(), Recorder::default());
    let calls = calls_after(&mut d, |d| d.tick(Time(T0 + 49)));
    assert_eq!(calls, vec![]);
    let calls = calls_after(&mut d, |d| d.tick(Time(T0 + 50)));
    assert_eq!(
        calls[0],
        Payload {
            view: 1,
            wait: false
        }
    );
    assert!(calls.contains(&Broadcast("proposal")), "{calls:?}");
}

#[test]
fn input_is_refused_while_too_many_commits_wait_for_execution() {
    let n = net();
    let mut d = n.driver(ME, n.genesis_restore(), Recorder::default());
    let k = MAX_UNEXECUTED_BLOCKS as u64 + 2;
    let chain = n.chain(k);
    for b in &chain {
        let leader = b.header.proposer;
        assert!(d.accepts_input(), "at {}", d.unexecuted());
        d.on_bytes(Time(T0 + 1), leader, &n.proposal(b.clone()))
            .unwrap();
    }
    assert_eq!(d.unexecuted(), MAX_UNEXECUTED_BLOCKS);
    assert!(!d.accepts_input());
    d.on_executed(
        Time(T0 + 2),
        result(Height(1), chain[0].id(), Digest::of(b"r")),
    )
    .unwrap();
    assert!(d.accepts_input());
}

#[test]
fn a_leader_waits_for_its_executor_before_asking_for_a_payload() {
    // Validator 0 leads view 4. Proposals for views 1 to 3 and votes for
    // view 3 commit heights 1 and 2; with neither executed, it does not ask
    // the mempool for a payload (D12) until execution catches up.
    let n = net();
    let mut d = n.driver(0, n.genesis_restore(), Recorder::default());
    let chain = n.chain(3);
    for b in &chain {
        let leader = b.header.proposer;
        d.on_bytes(Time(T0 + 1), leader, &n.proposal(b.clone()))
            .unwrap();
    }
    for i in [1u16, 2] {
        d.on_bytes(Time(T0 + 2), ValidatorIndex(i), &n.vote(i, &chain[2]))
            .unwrap();
    }
    assert_eq!(d.core().view(), View(4), "leads view 4");
    assert_eq!(d.unexecuted(), 2);
    assert!(
        !d.ports().calls.iter().any(|c| matches!(c, Payload { .. })),
        "no payload asked for while two blocks wait: {:?}",
        d.ports().calls
    );
    assert!(d.awaiting_payload());
    assert_eq!(
        d.next_deadline(),
        Some(Time(T0 + 2 + n.cfg.base_timeout_ms)),
        "only the view timer: the held payload waits for execution"
    );
    // Executed one by one: asked for exactly when no more than
    // PROPOSE_MAX_UNEXECUTED blocks are left.
    for h in 1..=2u64 {
        let calls = calls_after(&mut d, |d| {
            let id = chain[h as usize - 1].id();
            d.on_executed(Time(T0 + 3), result(Height(h), id, Digest::of(b"r")))
        });
        let asked = calls.contains(&Payload {
            view: 4,
            wait: true,
        });
        assert_eq!(
            asked,
            d.unexecuted() < PROPOSE_MAX_UNEXECUTED + 1,
            "after height {h}: {calls:?}"
        );
        if asked {
            return;
        }
    }
    panic!("never asked for a payload");
}

/// Validator 2's vote for `b` under validator 3's signature, encoded.
fn forged_vote(n: &Net, b: &Block) -> Vec<u8> {
    let mut forged = n.signed_vote(2, b).into_signed();
    forged.signature = n.signed_vote(3, b).into_signed().signature;
    encode(&Message::Vote(forged))
}

#[test]
fn a_peer_sending_invalid_messages_is_graylisted_and_only_it() {
    let n = net();
    let mut d = n.driver(ME, n.genesis_restore(), Recorder::default());
    let b1 = n.chain(1).remove(0);
    let forged = forged_vote(&n, &b1);
    let t = T0 + 1;
    // Up to the bound: refused, counted, nothing more.
    for _ in 0..GRAYLIST_INVALID_MAX {
        let calls = calls_after(&mut d, |d| d.on_bytes(Time(t), ValidatorIndex(2), &forged));
        assert_eq!(calls, vec![Refused]);
    }
    // Refusals that an honest peer can earn (far views) never count.
    for i in 0..2 * GRAYLIST_INVALID_MAX as u64 {
        let far = n.far_timeout(3, 1_000 + i);
        d.on_bytes(Time(t), ValidatorIndex(3), &far).unwrap();
    }
    // One more: graylisted.
    let calls = calls_after(&mut d, |d| d.on_bytes(Time(t), ValidatorIndex(2), &forged));
    assert_eq!(
        calls,
        vec![
            Refused,
            Graylisted {
                peer: 2,
                until: t + GRAYLIST_MS
            }
        ]
    );
    // Even its valid messages are dropped unread; other peers' are not.
    let calls = calls_after(&mut d, |d| {
        d.on_bytes(Time(t + 1), ValidatorIndex(2), &n.vote(2, &b1))
    });
    assert_eq!(calls, vec![Dropped(2)]);
    let calls = calls_after(&mut d, |d| {
        d.on_bytes(Time(t + 1), ValidatorIndex(1), &n.proposal(b1.clone()))
    });
    assert!(calls.contains(&PersistBlock(1)), "{calls:?}");
    // After the graylist time, its frames are read again.
    let later = Time(t + GRAYLIST_MS);
    let calls = calls_after(&mut d, |d| d.on_bytes(later, ValidatorIndex(2), &forged));
    assert_eq!(calls, vec![Refused]);
}

#[test]
fn invalid_messages_spread_over_windows_do_not_graylist() {
    let n = net();
    let mut d = n.driver(ME, n.genesis_restore(), Recorder::default());
    let b1 = n.chain(1).remove(0);
    let forged = forged_vote(&n, &b1);
    for w in 0..5 {
        let t = T0 + w * GRAYLIST_WINDOW_MS;
        for _ in 0..GRAYLIST_INVALID_MAX {
            let calls = calls_after(&mut d, |d| d.on_bytes(Time(t), ValidatorIndex(2), &forged));
            assert_eq!(calls, vec![Refused], "window {w}");
        }
    }
}

#[test]
fn block_requests_past_a_peer_rate_are_refused_unread_and_never_graylist() {
    let n = net();
    let mut d = n.driver(ME, n.genesis_restore(), Recorder::default());
    let req = |i: u64| {
        encode(&Message::BlockRequest(BlockRequest {
            id: Digest::of(&i.to_le_bytes()),
            count: 4,
        }))
    };
    let t = T0 + 1;
    // The burst is admitted (nothing to answer: unknown blocks).
    for i in 0..BLOCK_REQUEST_BURST {
        let calls = calls_after(&mut d, |d| d.on_bytes(Time(t), ValidatorIndex(2), &req(i)));
        assert_eq!(calls, vec![], "request {i}");
    }
    // Then refused, however many, without graylisting the peer.
    for i in 0..3 * BLOCK_REQUEST_BURST {
        let calls = calls_after(&mut d, |d| d.on_bytes(Time(t), ValidatorIndex(2), &req(i)));
        assert_eq!(calls, vec![Refused], "request {i} past the burst");
    }
    // Another peer has its own budget.
    let calls = calls_after(&mut d, |d| d.on_bytes(Time(t), ValidatorIndex(1), &req(0)));
    assert_eq!(calls, vec![]);
    // One request's worth of time buys one request.
    let one = Time(t + 1000 / BLOCK_REQUESTS_PER_SEC);
    let calls = calls_after(&mut d, |d| d.on_bytes(one, ValidatorIndex(2), &req(1)));
    assert_eq!(calls, vec![]);
    let calls = calls_after(&mut d, |d| d.on_bytes(one, ValidatorIndex(2), &req(2)));
    assert_eq!(calls, vec![Refused]);
}

/// D16: frames screened away from the driver, under the admissions it hands
/// out, lead to exactly the port calls the inline screen leads to.
#[test]
fn a_screen_run_elsewhere_decides_as_the_inline_one() {
    let n = net();
    let chain = n.chain(6);
    let mut forged = n.signed_vote(2, &chain[0]).into_signed();
    forged.signature = n.signed_vote(3, &chain[0]).into_signed().signature;
    let forged = encode(&Message::Vote(forged));
    // Proposals, votes, invalid frames enough to graylist, far views.
    let mut inputs: Vec<(u64, u16, Vec<u8>)> = Vec::new();
    for (i, b) in chain.iter().enumerate() {
        let t = T0 + 1 + i as u64;
        inputs.push((t, b.header.proposer.0, n.proposal(b.clone())));
        inputs.push((t, 1, n.vote(1, b)));
        inputs.push((t, 3, n.far_timeout(3, 100 + i as u64)));
    }
    for _ in 0..=GRAYLIST_INVALID_MAX {
        inputs.push((T0 + 10, 2, forged.clone()));
    }
    inputs.push((T0 + 11, 2, n.vote(2, &chain[5])));
    inputs.push((T0 + 11, 2, vec![0xff; 40]));
    inputs.push((T0 + 11, 1, n.vote(1, &chain[5])));

    let mut inline = n.driver(ME, n.genesis_restore(), Recorder::default());
    let mut split = n.driver(ME, n.genesis_restore(), Recorder::default());
    let mut screen = split.screen();
    for (t, from, bytes) in &inputs {
        let (t, from) = (Time(*t), ValidatorIndex(*from));
        inline.on_bytes(t, from, bytes).unwrap();
        let adm = split.admission(t);
        let out = screen.screen(t, from, bytes, &adm);
        split.on_screened(t, from, out, bytes.len()).unwrap();
    }
    let (a, b) = (&inline.ports().calls, &split.ports().calls);
    assert!(a.contains(&Dropped(2)) && a.iter().any(|c| matches!(c, Graylisted { .. })));
    assert!(a.contains(&PersistBlock(6)), "{a:?}");
    assert_eq!(a, b);
    assert_eq!(inline.core().view(), split.core().view());
}

/// D16: a stale admission costs work, never state: a frame verified before
/// its sender was graylisted is dropped when its outcome arrives, and a
/// graylisted sender's frames are dropped unread by any screen that has
/// the new admission.
#[test]
fn an_outcome_from_a_sender_graylisted_meanwhile_is_dropped() {
    let n = net();
    let mut d = n.driver(ME, n.genesis_restore(), Recorder::default());
    let b1 = n.chain(1).remove(0);
    let forged = forged_vote(&n, &b1);
    let t = Time(T0 + 1);
    let stale = d.admission(t);
    let mut screen = d.screen();
    let good = n.vote(2, &b1);
    let early = screen.screen(t, ValidatorIndex(2), &good, &stale);
    assert!(matches!(early, phalanx_consensus::Screened::Verified(_)));
    for _ in 0..=GRAYLIST_INVALID_MAX {
        d.on_bytes(t, ValidatorIndex(2), &forged).unwrap();
    }
    let calls = calls_after(&mut d, |d| {
        d.on_screened(t, ValidatorIndex(2), early, good.len())
    });
    assert_eq!(calls, vec![Dropped(2)]);
    let fresh = d.admission(t);
    assert!(fresh.blocks(ValidatorIndex(2), t) && !fresh.blocks(ValidatorIndex(1), t));
    assert!(!fresh.blocks(ValidatorIndex(2), Time(t.0 + GRAYLIST_MS)));
    // Unread: junk is dropped, not refused.
    let junk = screen.screen(t, ValidatorIndex(2), &[0xff; 40], &fresh);
    assert!(matches!(junk, phalanx_consensus::Screened::Dropped));
    // The stale admission still lets it through to a refusal; the driver
    // counts it against the sender as it would inline.
    let junk = screen.screen(t, ValidatorIndex(2), &[0xff; 40], &stale);
    assert!(matches!(junk, phalanx_consensus::Screened::Refused(_)));
}

/// An execution result with an empty receipts root.
fn result(height: Height, block_id: Digest, state_root: Digest) -> ExecResult {
    ExecResult {
        height,
        block_id,
        state_root,
        receipts_root: Digest::ZERO,
    }
}
