//! Table-like steps through the core: what it does for one input, checked
//! directly on its actions.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use phalanx_consensus::{
    AcceptAll, Action, Block, BlockHeader, BlockResponse, Config, Core, Event, Evidence,
    EvidenceReport, ExecResult, Height, Idleness, Message, PROBE_ROTATIONS, Proposal, QuorumCert,
    RecoveryQuery, Restore, SafetyState, Statement, Time, Timeout, UNANSWERED_BLOCK_REQUESTS,
    VerifiedMessage, Verifier, View, ViewReport, Vote, genesis_qc,
};
use phalanx_crypto::{ChainId, Digest, KeyPair, Signed, ValidatorIndex, ValidatorSet, Verified};

struct Net {
    keys: Vec<KeyPair>,
    cfg: Config,
    verifier: Verifier,
}

fn net() -> Net {
    let keys: Vec<KeyPair> = (0..4u8).map(|i| KeyPair::from_seed([i + 1; 32])).collect();
    let set = ValidatorSet::new(keys.iter().map(|k| k.public()).collect()).unwrap();
    let chain = ChainId::new("steps").unwrap();
    let mut cfg = Config::new(chain.clone(), set.clone(), 1_000);
    cfg.checkpoint_interval = 2;
    cfg.future_view_window = 10;
    let genesis = Block::genesis(&chain, 1_000);
    let verifier = Verifier::new(set, chain, &genesis, cfg.max_payload_bytes);
    Net {
        keys,
        cfg,
        verifier,
    }
}

impl Net {
    fn verifier_set(&self) -> &ValidatorSet {
        &self.cfg.validators
    }

    fn core(&self, i: usize) -> Core {
        Core::new(
            self.cfg.clone(),
            self.keys[i].clone(),
            Box::new(AcceptAll),
            Time(2_000),
        )
        .unwrap()
        .0
    }

    fn genesis(&self) -> Block {
        Block::genesis(&self.cfg.chain_id, 1_000)
    }

    /// A timeout for `view` signed by validator `i`, carrying the genesis QC.
    fn timeout(&self, i: u16, view: u64) -> Message {
        Message::Timeout(
            Verified::sign(
                &self.keys[i as usize],
                ValidatorIndex(i),
                &self.cfg.chain_id,
                Timeout {
                    view: View(view),
                    high_qc: genesis_qc(&self.genesis()),
                    high_tc: None,
                },
            )
            .into_signed(),
        )
    }

    /// A proposal for view 1 (leader v1) on genesis with `payload` and time.
    fn proposal(&self, payload: &[u8], ts: u64) -> Signed<Proposal> {
        let g = self.genesis();
        let block = Block {
            header: BlockHeader {
                parent: g.id(),
                height: Height(1),
                view: View(1),
                proposer: ValidatorIndex(1),
                timestamp_ms: ts,
                payload_digest: Digest::of(payload),
                idle: Idleness::next(
                    &g.header.idle,
                    self.cfg.validators.len(),
                    ValidatorIndex(1),
                    &genesis_qc(&g),
                ),
                justify: genesis_qc(&g),
                exec_next: g.header.exec_next,
                exec: vec![],
            },
            payload: payload.to_vec(),
        };
        Verified::sign(
            &self.keys[1],
            ValidatorIndex(1),
            &self.cfg.chain_id,
            Proposal { block, tc: None },
        )
        .into_signed()
    }

    fn deliver(&mut self, core: &mut Core, from: u16, msg: Message, now: u64) -> Vec<Action> {
        let msg: VerifiedMessage = self.verifier.verify(msg).expect("valid message");
        core.handle(
            Time(now),
            Event::Message {
                from: ValidatorIndex(from),
                msg,
            },
        )
    }
}

fn votes(actions: &[Action]) -> Vec<Signed<Vote>> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send {
                msg: Message::Vote(v),
                ..
            } => Some(v.clone()),
            _ => None,
        })
        .collect()
}

/// Every message a validator signs is preceded, in the same action list, by
/// a Persist whose safety state already records it.
fn assert_persist_before_send(actions: &[Action]) {
    let mut persisted = None;
    for a in actions {
        match a {
            Action::Persist(s) => persisted = Some(s.clone()),
            Action::Send {
                msg: Message::Vote(v),
                ..
            } => {
                let s = persisted.as_ref().expect("vote sent before any persist");
                assert_eq!(
                    s.last_vote.as_ref(),
                    Some(v),
                    "persisted state lacks the vote"
                );
            }
            Action::Broadcast(Message::Timeout(t)) => {
                let s = persisted.as_ref().expect("timeout sent before any persist");
                let stored = s.last_timeout.as_ref().expect("timeout not persisted");
                assert_eq!(stored.signature, t.signature);
            }
            Action::Broadcast(Message::Proposal(p)) => {
                let s = persisted
                    .as_ref()
                    .expect("proposal sent before any persist");
                assert!(s.last_proposed_view >= p.payload.block.view());
            }
            _ => {}
        }
    }
}

#[test]
fn votes_once_and_persists_before_sending() {
    let mut n = net();
    let mut c = n.core(0);
    let p = n.proposal(b"tx", 2_100);
    let out = n.deliver(&mut c, 1, Message::Proposal(p), 2_200);
    assert_persist_before_send(&out);
    let v = votes(&out);
    assert_eq!(v.len(), 1);
    assert!(
        matches!(out.iter().find(|a| matches!(a, Action::Send { .. })),
        Some(Action::Send { to, .. }) if *to == ValidatorIndex(2)),
        "vote goes to the next leader"
    );
    assert!(
        out.iter().any(|a| matches!(a, Action::PersistBlock(_))),
        "the voted block is persisted"
    );
}

#[test]
fn restart_resends_the_stored_vote_and_never_signs_a_conflicting_one() {
    let mut n = net();
    let mut c = n.core(0);
    let p = n.proposal(b"tx", 2_100);
    let out = n.deliver(&mut c, 1, Message::Proposal(p.clone()), 2_200);
    let first = votes(&out).pop().unwrap();
    let safety = c.safety().clone();
    drop(c);

    let mut c = n.restarted(0, safety, 3_000).0;
    assert_eq!(c.view(), View(1), "resumes in the view it voted in");
    // The leader equivocates: a different block for view 1. No vote.
    let other = n.proposal(b"other", 2_100);
    let out = n.deliver(&mut c, 1, Message::Proposal(other), 3_100);
    assert!(
        votes(&out).is_empty(),
        "signed a conflicting vote after restart"
    );
    // The original block again: the stored vote, byte for byte.
    let out = n.deliver(&mut c, 1, Message::Proposal(p), 3_200);
    let again = votes(&out).pop().expect("stored vote re-sent");
    assert_eq!(again, first);
}

impl Net {
    /// Validator `i` restarted at time `now` from `safety`, with genesis
    /// committed and nothing else stored.
    fn restarted(&self, i: usize, safety: SafetyState, now: u64) -> (Core, Vec<Action>) {
        let g = self.genesis();
        let restore = Restore {
            safety,
            committed: (g.clone(), genesis_qc(&g)),
            stable: None,
            blocks: vec![],
            executed: vec![],
        };
        Core::restore(
            self.cfg.clone(),
            self.keys[i].clone(),
            Box::new(AcceptAll),
            restore,
            Time(now),
        )
        .unwrap()
    }

    /// Validator `i` restarted with its record lost: recovering with `nonce`.
    fn recovering(&self, i: usize, nonce: Digest) -> (Core, Vec<Action>) {
        let g = self.genesis();
        self.restarted(i, SafetyState::recovering(genesis_qc(&g), nonce), 2_000)
    }
}

fn signed_kinds(actions: &[Action]) -> Vec<&'static str> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { msg, .. } | Action::Broadcast(msg) => Some(msg.kind()),
            _ => None,
        })
        .filter(|k| matches!(*k, "proposal" | "vote" | "timeout" | "checkpoint"))
        .collect()
}

#[test]
fn a_recovering_validator_signs_nothing_until_a_quorum_of_reports_sets_its_floor() {
    let mut n = net();
    let nonce = Digest::of(b"fresh");
    let (mut c, out) = n.recovering(0, nonce);
    assert!(c.quarantined());
    assert!(
        out.iter()
            .any(|a| matches!(a, Action::Broadcast(Message::RecoveryQuery(q)) if q.nonce == nonce)),
        "asks for reports at start"
    );
    // A valid proposal and the view's timer: no vote, no timeout, but the
    // question again.
    let out = n.deliver(
        &mut c,
        1,
        Message::Proposal(n.proposal(b"tx", 2_100)),
        2_200,
    );
    assert!(signed_kinds(&out).is_empty(), "{out:?}");
    let out = c.handle(Time(9_000), Event::TimerFired { view: View(1) });
    assert!(signed_kinds(&out).is_empty(), "{out:?}");
    assert!(
        out.iter()
            .any(|a| matches!(a, Action::Broadcast(Message::RecoveryQuery(_))))
    );
    // Reports from the other three: their certificates say view 0 at most
    // (genesis), so views up to 2 are closed to signing.
    let mut peers: Vec<Core> = (1..4).map(|i| n.core(i)).collect();
    let mut last = Vec::new();
    for (k, peer) in peers.iter_mut().enumerate() {
        let from = k as u16 + 1;
        let q = Message::RecoveryQuery(RecoveryQuery { nonce });
        let answer = n.deliver(peer, 0, q, 2_300);
        let report = answer
            .iter()
            .find_map(|a| match a {
                Action::Send {
                    to,
                    msg: m @ Message::ViewReport(_),
                } if *to == ValidatorIndex(0) => Some(m.clone()),
                _ => None,
            })
            .expect("an active validator answers");
        assert!(c.quarantined(), "not before the last report");
        last = n.deliver(&mut c, from, report, 2_400);
    }
    assert!(!c.quarantined());
    assert_eq!(c.safety().floor, View(2));
    // The floor is persisted before anything else the core does.
    assert!(
        matches!(last.first(), Some(Action::Persist(s)) if s.floor == View(2) && s.quarantine.is_none()),
        "{last:?}"
    );
    // View 1 is below the floor: its proposal gets no vote even now.
    let out = n.deliver(
        &mut c,
        1,
        Message::Proposal(n.proposal(b"tx", 2_100)),
        2_500,
    );
    assert!(votes(&out).is_empty());
}

#[test]
fn a_view_report_is_signed_once_per_peer_and_view_and_never_by_a_quarantined_validator() {
    let mut n = net();
    let mut peer = n.core(1);
    let ask = |nonce: &[u8]| {
        Message::RecoveryQuery(RecoveryQuery {
            nonce: Digest::of(nonce),
        })
    };
    let reports = |out: &[Action]| -> Vec<Message> {
        out.iter()
            .filter_map(|a| match a {
                Action::Send {
                    msg: m @ Message::ViewReport(_),
                    ..
                } => Some(m.clone()),
                _ => None,
            })
            .collect()
    };
    let first = reports(&n.deliver(&mut peer, 0, ask(b"a"), 2_100));
    assert_eq!(first.len(), 1);
    // The same nonce again: the same bytes, no new signature.
    let again = reports(&n.deliver(&mut peer, 0, ask(b"a"), 2_200));
    assert_eq!(again, first);
    // A new nonce in the same view: nothing (one signature per peer and
    // view bounds what a peer can make this validator sign).
    assert!(reports(&n.deliver(&mut peer, 0, ask(b"b"), 2_300)).is_empty());
    // Another peer is answered.
    assert_eq!(reports(&n.deliver(&mut peer, 2, ask(b"c"), 2_300)).len(), 1);
    // A validator that is itself recovering answers no one.
    let (mut quarantined, _) = n.recovering(3, Digest::of(b"own"));
    assert!(reports(&n.deliver(&mut quarantined, 0, ask(b"d"), 2_300)).is_empty());
    // Reports are checked like any signed message: a report for another
    // nonce does not count.
    let (mut c, _) = n.recovering(0, Digest::of(b"mine"));
    let stray = Message::ViewReport(
        Verified::sign(
            &n.keys[1],
            ValidatorIndex(1),
            &n.cfg.chain_id,
            ViewReport {
                nonce: Digest::of(b"not mine"),
                high_qc: genesis_qc(&n.genesis()),
                high_tc: None,
            },
        )
        .into_signed(),
    );
    assert!(!c.wants_report(ValidatorIndex(1), &Digest::of(b"not mine")));
    n.deliver(&mut c, 1, stray, 2_400);
    assert!(c.quarantined());
}

#[test]
fn equivocating_proposals_produce_evidence_with_both_signatures() {
    let mut n = net();
    let mut c = n.core(0);
    let a = n.proposal(b"a", 2_100);
    let b = n.proposal(b"b", 2_100);
    n.deliver(&mut c, 1, Message::Proposal(a.clone()), 2_200);
    let out = n.deliver(&mut c, 1, Message::Proposal(b.clone()), 2_300);
    let ev = out
        .iter()
        .find_map(|x| match x {
            Action::Evidence(e) => Some(e.clone()),
            _ => None,
        })
        .expect("evidence");
    assert_eq!(ev.signer, ValidatorIndex(1));
    // Both signed messages, compacted to what the signature covers, and both
    // still verify: anyone can check the evidence.
    for (got, want) in [(&ev.first, &a), (&ev.second, &b)] {
        let Statement::Proposal(got) = got else {
            panic!("not a proposal")
        };
        assert_eq!(got.signature, want.signature);
        assert_eq!(got.payload.block.id(), want.payload.block.id());
        assert!(got.payload.block.payload.is_empty(), "payload not kept");
        assert!(
            got.clone()
                .verify(n.verifier_set(), &n.cfg.chain_id)
                .is_ok()
        );
    }
    assert!(votes(&out).is_empty());

    // Passed on to every validator, once.
    let reports: Vec<&Message> = out
        .iter()
        .filter_map(|x| match x {
            Action::Broadcast(m @ Message::Evidence(_)) => Some(m),
            _ => None,
        })
        .collect();
    assert_eq!(reports.len(), 1, "{out:?}");
    let report = reports[0].clone();

    // A validator that saw neither proposal learns of it from the report,
    // and does not pass it on again.
    let mut other = n.core(2);
    let out = n.deliver(&mut other, 0, report.clone(), 2_400);
    let got: Vec<&Evidence> = out
        .iter()
        .filter_map(|x| match x {
            Action::Evidence(e) => Some(e),
            _ => None,
        })
        .collect();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].signer, ValidatorIndex(1));
    assert!(!out.iter().any(|x| matches!(x, Action::Broadcast(_))));
    // The same report again: already known.
    let out = n.deliver(&mut other, 3, report.clone(), 2_500);
    assert!(!out.iter().any(|x| matches!(x, Action::Evidence(_))));

    // Reports that prove nothing are refused at the edge.
    let Message::Evidence(r) = report else {
        unreachable!()
    };
    let same = EvidenceReport {
        first: r.first.clone(),
        second: r.first.clone(),
    };
    let mut forged = r.clone();
    if let Statement::Proposal(p) = &mut forged.second {
        p.signature.0[3] ^= 1;
    }
    let other_slot = EvidenceReport {
        first: r.first.clone(),
        second: Statement::Proposal(n.proposal(b"c", 2_100)),
    };
    let Statement::Proposal(p) = &r.first else {
        unreachable!()
    };
    let vote = Vote {
        view: p.payload.block.view(),
        height: p.payload.block.height(),
        block_id: p.payload.block.id(),
    };
    let other_kind = EvidenceReport {
        first: r.first.clone(),
        second: Statement::Vote(
            Verified::sign(&n.keys[1], ValidatorIndex(1), &n.cfg.chain_id, vote).into_signed(),
        ),
    };
    for (bad, why) in [
        (same, "no conflict"),
        (*forged, "a forged signature"),
        (other_kind, "two kinds of statement"),
    ] {
        assert!(
            n.verifier.verify(Message::Evidence(Box::new(bad))).is_err(),
            "{why}"
        );
    }
    // A report cannot hold a report: the byte that would start one is
    // refused at once, however deep an input tries to nest them (the fuzz
    // target `consensus_message` once overflowed the stack this way).
    let nested = vec![8u8; 100_000];
    assert!(n.verifier.verify_bytes(&nested).is_err());
    // (A third block of the same view conflicts too.)
    assert!(
        n.verifier
            .verify(Message::Evidence(Box::new(other_slot)))
            .is_ok()
    );
}

#[test]
fn block_timestamp_rules() {
    // (block timestamp, validator clock, votes?, why)
    let cases = [
        (2_100, 2_200, true, "in the past, after the parent"),
        (2_200 + 2_000, 2_200, true, "at the skew bound"),
        (2_200 + 2_001, 2_200, false, "beyond the skew bound"),
        (1_000, 2_200, false, "not after the parent's timestamp"),
    ];
    for (ts, now, want, why) in cases {
        let mut n = net();
        let mut c = n.core(0);
        let out = n.deliver(&mut c, 1, Message::Proposal(n.proposal(b"x", ts)), now);
        assert_eq!(!votes(&out).is_empty(), want, "{why}");
    }
}

/// P6/P20: a block's idleness must be the one derived from its parent; a
/// proposer that writes another (to move leaders' turns) gets no vote.
#[test]
fn a_block_with_idleness_not_derived_from_its_parent_gets_no_vote() {
    let mut n = net();
    let mut c = n.core(0);
    let mut p = n.proposal(b"x", 2_100).payload;
    let g = n.genesis();
    // As if validator 2 had proposed: validator 1 counted idle.
    p.block.header.idle = Idleness::next(&g.header.idle, 4, ValidatorIndex(2), &genesis_qc(&g));
    let forged = Verified::sign(&n.keys[1], ValidatorIndex(1), &n.cfg.chain_id, p).into_signed();
    let out = n.deliver(&mut c, 1, Message::Proposal(forged), 2_200);
    assert!(votes(&out).is_empty());
    assert_eq!(c.stats().proposals_refused, 1);
    // The honest block of the same view still gets its vote.
    let mut c = n.core(0);
    let out = n.deliver(&mut c, 1, Message::Proposal(n.proposal(b"x", 2_100)), 2_200);
    assert_eq!(votes(&out).len(), 1);
}

#[test]
fn far_future_messages_are_dropped_not_buffered() {
    let mut n = net();
    let mut c = n.core(0);
    for (view, dropped) in [(5u64, 0u64), (11, 0), (12, 1), (1_000_000, 2)] {
        let t = n.timeout(3, view);
        n.deliver(&mut c, 3, t, 2_100);
        assert_eq!(c.stats().future_dropped, dropped, "view {view}");
    }
    assert_eq!(c.view(), View(1), "one validator's timeouts move nobody");
}

#[test]
fn a_certificate_from_beyond_the_window_is_followed_and_its_block_fetched() {
    let mut n = net();
    let mut c = n.core(0);
    // A quorum certificate for a block in view 50, far past the window of
    // 10 views, carried by a timeout for view 51.
    let vote = Vote {
        view: View(50),
        height: Height(40),
        block_id: Digest::of(b"a block this validator never saw"),
    };
    let qc = quorum_on(&n, n.verifier_set(), vote);
    let t = Message::Timeout(
        Verified::sign(
            &n.keys[3],
            ValidatorIndex(3),
            &n.cfg.chain_id,
            Timeout {
                view: View(51),
                high_qc: qc,
                high_tc: None,
            },
        )
        .into_signed(),
    );
    let actions = n.deliver(&mut c, 3, t, 2_100);
    assert_eq!(
        c.stats().future_dropped,
        1,
        "the timeout itself is not kept"
    );
    assert_eq!(c.view(), View(51), "the view after the certificate");
    assert!(
        !asked_for(&actions, vote.block_id).is_empty(),
        "the certified block is fetched: {actions:?}"
    );
}

#[test]
fn votes_that_overtake_the_proposal_leave_the_next_leader_able_to_lead() {
    // Validator 2 leads view 2. Votes for view 1's block reach it before
    // the proposal: it must ask someone else for the block (never itself),
    // and the late proposal must then serve as that block.
    let mut n = net();
    let mut c = n.core(2);
    let p = n.proposal(b"tx", 2_100);
    let b1 = p.payload.block.clone();
    let mut out = Vec::new();
    for i in [0u16, 1, 3] {
        let v = Verified::sign(
            &n.keys[i as usize],
            ValidatorIndex(i),
            &n.cfg.chain_id,
            Vote {
                view: View(1),
                height: Height(1),
                block_id: b1.id(),
            },
        )
        .into_signed();
        out.extend(n.deliver(&mut c, i, Message::Vote(v), 2_200));
    }
    assert_eq!(c.view(), View(2), "the certificate moves it to view 2");
    let asked = asked_for(&out, b1.id());
    assert!(
        !asked.is_empty() && !asked.contains(&ValidatorIndex(2)),
        "the block is asked of another validator: {out:?}"
    );
    let late = n.deliver(&mut c, 1, Message::Proposal(p), 2_300);
    assert!(
        persists(&late, b1.id()),
        "the late proposal's block is kept: {late:?}"
    );
    assert!(
        late.iter()
            .any(|a| matches!(a, Action::RequestPayload { view, .. } if *view == View(2))),
        "and the leader of view 2 can propose on it: {late:?}"
    );
}

#[test]
fn timer_fires_a_persisted_timeout_and_no_vote_follows_in_that_view() {
    let mut n = net();
    let mut c = n.core(0);
    let fired = c.handle(Time(3_000), Event::TimerFired { view: View(1) });
    let out = fired.clone();
    assert_persist_before_send(&out);
    assert!(
        out.iter()
            .any(|a| matches!(a, Action::Broadcast(Message::Timeout(_))))
    );
    let next_timer = out.iter().find_map(|a| match a {
        Action::SetTimer { view, at } => Some((*view, *at)),
        _ => None,
    });
    assert_eq!(
        next_timer,
        Some((View(1), Time(3_000 + 2 * n.cfg.base_timeout_ms))),
        "the view's timer backs off"
    );
    let out = n.deliver(
        &mut c,
        1,
        Message::Proposal(n.proposal(b"late", 2_100)),
        3_100,
    );
    assert!(votes(&out).is_empty());
    // The timer firing again re-sends the same signed timeout.
    let again = c.handle(Time(6_000), Event::TimerFired { view: View(1) });
    let sigs: Vec<_> = fired
        .iter()
        .chain(again.iter())
        .filter_map(|a| match a {
            Action::Broadcast(Message::Timeout(t)) => Some(t.signature),
            _ => None,
        })
        .collect();
    assert_eq!(sigs.len(), 2);
    assert_eq!(sigs[0], sigs[1], "re-sent, not re-signed");
}

#[test]
fn a_restarted_validator_counts_its_own_stored_timeout_towards_the_certificate() {
    // Timed out in view 1, then restarted: its aggregation sets are empty.
    // The two other timeouts plus its own re-sent one are a quorum.
    let mut n = net();
    let mut c = n.core(0);
    c.handle(Time(9_000), Event::TimerFired { view: View(1) });
    let safety = c.safety().clone();
    assert_eq!(
        safety.last_timeout.as_ref().map(|t| t.payload.view),
        Some(View(1))
    );
    let (mut c, _) = n.restarted(0, safety, 10_000);
    for i in [1u16, 2] {
        n.deliver(&mut c, i, n.timeout(i, 1), 10_100);
    }
    assert_eq!(c.view(), View(1), "two timeouts are not a quorum");
    let out = c.handle(Time(20_000), Event::TimerFired { view: View(1) });
    assert!(
        out.iter().any(
            |a| matches!(a, Action::Broadcast(Message::Timeout(t)) if t.signer == ValidatorIndex(0))
        ),
        "its stored timeout is re-sent"
    );
    assert_eq!(c.view(), View(2), "and counted: the certificate forms");
}

#[test]
fn validly_signed_messages_of_long_past_views_do_not_grow_the_evidence_memory() {
    // A validator in view 50 (window 10): views below 30 are beyond the
    // evidence window. A peer sends a signed vote for each of them.
    let mut n = net();
    let g = n.genesis();
    let mut safety = SafetyState::initial(genesis_qc(&g));
    safety.last_voted_view = View(50);
    let (mut c, _) = n.restarted(0, safety, 2_000);
    assert_eq!(c.view(), View(50));
    for v in 1..30u64 {
        let vote = Vote {
            view: View(v),
            height: Height(v),
            block_id: Digest::of(&v.to_le_bytes()),
        };
        let signed = Verified::sign(&n.keys[1], ValidatorIndex(1), &n.cfg.chain_id, vote);
        n.deliver(&mut c, 1, Message::Vote(signed.into_signed()), 2_100);
    }
    assert_eq!(c.evidence_memory(), 0, "nothing of long-past views is kept");
    // Inside the window, messages are still remembered.
    n.deliver(&mut c, 1, n.timeout(1, 49), 2_200);
    assert_eq!(c.evidence_memory(), 1);
}

/// A quorum certificate (validators 1 to 3) for block `id` at height 5,
/// view 0: a block the core under test has never seen.
fn quorum_for(n: &Net, set: &ValidatorSet, id: Digest) -> QuorumCert {
    let vote = Vote {
        view: View(0),
        height: Height(5),
        block_id: id,
    };
    quorum_on(n, set, vote)
}

/// Validator 1's timeout for view 1, carrying `high_qc`.
fn timeout_of_v1(n: &Net, high_qc: QuorumCert) -> Message {
    timeout_carrying(n, 1, 1, high_qc)
}

/// Validator `i`'s timeout for `view`, carrying `high_qc`.
fn timeout_carrying(n: &Net, i: u16, view: u64, high_qc: QuorumCert) -> Message {
    Message::Timeout(
        Verified::sign(
            &n.keys[i as usize],
            ValidatorIndex(i),
            &n.cfg.chain_id,
            Timeout {
                view: View(view),
                high_qc,
                high_tc: None,
            },
        )
        .into_signed(),
    )
}

/// Validators 1 to 3's certificate for `vote`.
fn quorum_on(n: &Net, set: &ValidatorSet, vote: Vote) -> QuorumCert {
    quorum_of(n, set, &[1, 2, 3], vote)
}

/// The certificate of `signers` for `vote`.
fn quorum_of(n: &Net, set: &ValidatorSet, signers: &[u16], vote: Vote) -> QuorumCert {
    let votes: Vec<_> = signers
        .iter()
        .map(|i| {
            Verified::sign(
                &n.keys[*i as usize],
                ValidatorIndex(*i),
                &n.cfg.chain_id,
                vote,
            )
        })
        .collect();
    phalanx_crypto::Certificate::aggregate(&votes, set).unwrap()
}

#[test]
fn abandoned_block_requests_never_lock_fetching_out() {
    // Timeouts carrying certificates for blocks nobody serves: each makes
    // the validator ask for its block. Past the bound of 64, the oldest
    // request gives way and a new block is still asked for.
    let mut n = net();
    let mut c = n.core(0);
    let set = n.verifier_set().clone();
    let qc_for = |n: &Net, k: u64| quorum_for(n, &set, Digest::of(&k.to_le_bytes()));
    let requested =
        |out: &[Action], k: u64| !asked_for(out, Digest::of(&k.to_le_bytes())).is_empty();
    for k in 0..70u64 {
        let t = timeout_of_v1(&n, qc_for(&n, k));
        let out = n.deliver(&mut c, 1, t, 2_100);
        assert!(requested(&out, k), "block {k} is asked for");
    }
}

#[test]
fn a_block_request_expires_after_a_window_of_views() {
    // A certificate for a block nobody serves: asked for, asked again at
    // the view's timer while the request is young, given up once the
    // chain has moved a whole window of views on (a certificate that needs
    // the block again asks again).
    let mut n = net();
    let mut c = n.core(0);
    let set = n.verifier_set().clone();
    let missing = Digest::of(b"a block nobody serves");
    let qc = quorum_for(&n, &set, missing);
    let asks = |out: &[Action]| !asked_for(out, missing).is_empty();
    let t = timeout_of_v1(&n, qc);
    assert!(asks(&n.deliver(&mut c, 1, t, 2_100)));
    let mut now = 3_000;
    let mut to_view = |n: &mut Net, c: &mut Core, v: u64| {
        for i in 1..4u16 {
            now += 10;
            n.deliver(c, i, n.timeout(i, v), now);
        }
        assert_eq!(c.view(), View(v + 1));
    };
    // (The test network's window is 10 views.)
    to_view(&mut n, &mut c, 6);
    let young = c.handle(Time(100_000), Event::TimerFired { view: View(7) });
    assert!(asks(&young), "asked again while young");
    to_view(&mut n, &mut c, 12);
    let old = c.handle(Time(200_000), Event::TimerFired { view: View(13) });
    assert!(!asks(&old), "abandoned a window of views later");
}

#[test]
fn a_validator_that_joins_a_timeout_backs_off_as_p13_says() {
    // P13: f + 1 timeouts for a view make a validator join with
    // local_timeout() (P14), which backs its timer off like its own timeout.
    let mut n = net();
    let mut c = n.core(0);
    let mut out = Vec::new();
    for i in [1u16, 2] {
        out.extend(n.deliver(&mut c, i, n.timeout(i, 1), 2_500));
    }
    assert!(
        out.iter().any(
            |a| matches!(a, Action::Broadcast(Message::Timeout(t)) if t.signer == ValidatorIndex(0))
        ),
        "joined the timeout"
    );
    assert_persist_before_send(&out);
    // Its own timeout completes a quorum: the TC moves it to view 2, whose
    // timer is backed off because view 1 failed (one failure: 2 × base).
    // A joiner that skipped P14 would arm view 2 at the base timeout.
    let timer = out.iter().rev().find_map(|a| match a {
        Action::SetTimer { view, at } => Some((*view, *at)),
        _ => None,
    });
    assert_eq!(
        timer,
        Some((View(2), Time(2_500 + 2 * n.cfg.base_timeout_ms))),
        "the joiner backs off"
    );
    assert_eq!(c.stats().timeouts, 1, "counted as a local timeout");
}

#[test]
fn wire_format_is_pinned() {
    // Changing these bytes breaks every deployed validator: do it only with
    // a new message version.
    let v = Vote {
        view: View(300),
        height: Height(7),
        block_id: Digest([0xab; 32]),
    };
    let hex: String = phalanx_crypto::encode(&v)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(hex, format!("ac0207{}", "ab".repeat(32)));
    let chain = ChainId::new("c").unwrap();
    let signing = phalanx_crypto::signing_bytes(&chain, &v);
    assert!(signing.starts_with(b"PHALANX-SIG-V1\0\x16phalanx/consensus/vote\x01c"));
}

#[test]
fn stale_proposals_are_dropped() {
    let mut n = net();
    let mut c = n.core(0);
    // Three timeouts for view 1 and 2 move validator 0 to view 3.
    for view in [1u64, 2] {
        for i in 1..4u16 {
            let t = n.timeout(i, view);
            n.deliver(&mut c, i, t, 2_100);
        }
    }
    assert_eq!(c.view(), View(3));
    let before = c.stats().stale_dropped;
    let out = n.deliver(
        &mut c,
        1,
        Message::Proposal(n.proposal(b"old", 2_100)),
        2_200,
    );
    assert!(votes(&out).is_empty());
    assert_eq!(c.stats().stale_dropped, before + 1);
}

#[test]
fn bad_inputs_are_refused_at_the_edge() {
    let mut n = net();
    let mut p = n.proposal(b"x", 2_100);
    p.signature.0[0] ^= 1;
    assert!(n.verifier.verify(Message::Proposal(p)).is_err());
    let mut p = n.proposal(b"x", 2_100);
    p.payload.block.payload = b"y".to_vec();
    assert!(
        n.verifier.verify(Message::Proposal(p)).is_err(),
        "payload digest"
    );
    let mut p = n.proposal(b"x", 2_100);
    p.signer = ValidatorIndex(2);
    assert!(
        n.verifier.verify(Message::Proposal(p)).is_err(),
        "signer is not the proposer"
    );
    assert!(n.verifier.verify_bytes(&[0xff; 40]).is_err());
    assert!(n.verifier.verify_bytes(&[]).is_err());
}

#[test]
fn a_checkpoint_forms_from_a_quorum_of_equal_votes() {
    let mut n = net();
    let mut cores: Vec<Core> = (0..4).map(|i| n.core(i)).collect();
    let root = Digest::of(b"root");
    let block = Digest::of(b"block");
    let mut votes = Vec::new();
    for c in cores.iter_mut().take(3) {
        let out = c.handle(
            Time(2_100),
            Event::Executed(ExecResult {
                height: Height(2),
                block_id: block,
                state_root: root,
                receipts_root: Digest::ZERO,
            }),
        );
        votes.extend(out.into_iter().filter_map(|a| match a {
            Action::Broadcast(m @ Message::Checkpoint(_)) => Some(m),
            _ => None,
        }));
    }
    assert_eq!(votes.len(), 3);
    let mut last = vec![];
    for (i, v) in votes.into_iter().enumerate() {
        last = n.deliver(&mut cores[3], i as u16, v, 2_200);
    }
    let cert = last
        .iter()
        .find_map(|a| match a {
            Action::StableCheckpoint(c) => Some(c.clone()),
            _ => None,
        })
        .expect("stable checkpoint");
    assert_eq!(cert.payload.height, Height(2));
    assert_eq!(cert.payload.state_root, root);
    assert_eq!(cert.signers.count(), 3);
    assert_eq!(cores[3].stable_checkpoint(), Some(&cert));
}

#[test]
fn config_errors_name_the_key() {
    let n = net();
    let mut cfg = n.cfg.clone();
    cfg.checkpoint_interval = 0;
    assert_eq!(cfg.validate().unwrap_err().key, "checkpoint_interval");
    let mut cfg = n.cfg.clone();
    cfg.max_timeout_ms = 1;
    assert_eq!(cfg.validate().unwrap_err().key, "max_timeout_ms");
    let stranger = KeyPair::from_seed([99; 32]);
    let err = Core::new(n.cfg.clone(), stranger, Box::new(AcceptAll), Time(0))
        .err()
        .unwrap();
    assert_eq!(err.key, "validator_key");
}

/// P20: a validator that has neither proposed nor signed a carried
/// certificate for a window of blocks loses its turns to the next one,
/// except in probe rotations, and gets them back once it proposes.
#[test]
fn an_idle_validators_turns_pass_to_the_next_except_in_probe_rotations() {
    let n = net();
    let vote = Vote {
        view: View(1),
        height: Height(1),
        block_id: n.genesis().id(),
    };
    // Validators 1 to 3 sign every carried certificate; 0 never does.
    let qc = quorum_on(&n, n.verifier_set(), vote);
    let w = n.cfg.idle_window();
    let mut header = n.genesis().header;
    // Views 20..24: an ordinary rotation (20 / 4 is not a multiple of the
    // probe period).
    for k in 1..=u64::from(w) {
        let proposer = ValidatorIndex((k % 3 + 1) as u16);
        header.idle = Idleness::next(&header.idle, 4, proposer, &qc);
        let expected = if k < u64::from(w) { 0 } else { 1 };
        assert_eq!(
            n.cfg.leader(View(20), &header),
            ValidatorIndex(expected),
            "after {k} blocks"
        );
    }
    assert_eq!(header.idle.of(ValidatorIndex(0)), w);
    for i in 1..4u16 {
        let view = View(20 + u64::from(i));
        assert_eq!(n.cfg.leader(view, &header), ValidatorIndex(i));
    }
    // In a probe rotation the idle validator has its own turn.
    let probe = View(4 * PROBE_ROTATIONS * 2);
    assert_eq!(n.cfg.leader(probe, &header), ValidatorIndex(0));
    // Once it proposes, it is active again.
    header.idle = Idleness::next(&header.idle, 4, ValidatorIndex(0), &qc);
    assert_eq!(header.idle.of(ValidatorIndex(0)), 0);
    assert_eq!(n.cfg.leader(View(20), &header), ValidatorIndex(0));
}

/// The validators `out` asks for block `id`.
fn asked_for(out: &[Action], id: Digest) -> Vec<ValidatorIndex> {
    out.iter()
        .filter_map(|a| match a {
            Action::Send {
                to,
                msg: Message::BlockRequest(r),
            } if r.id == id => Some(*to),
            _ => None,
        })
        .collect()
}

/// True if `out` persists block `id`.
fn persists(out: &[Action], id: Digest) -> bool {
    out.iter()
        .any(|a| matches!(a, Action::PersistBlock(b) if b.id() == id))
}

fn elsewhere(actions: &[Action]) -> Vec<(View, &'static str)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::OwnKeyElsewhere { view, kind } => Some((*view, *kind)),
            _ => None,
        })
        .collect()
}

/// P21: a certificate holding validator 2's vote for a view in which this
/// process signed nothing raises the alarm, once; the same certificate
/// after this process cast that very vote does not.
#[test]
fn a_certificate_with_a_vote_this_process_never_cast_raises_the_own_key_alarm() {
    let mut n = net();
    let set = n.verifier_set().clone();
    let p = n.proposal(b"tx", 2_100);
    let vote = Vote {
        view: View(1),
        height: Height(1),
        block_id: p.payload.block.id(),
    };
    let qc = quorum_on(&n, &set, vote);

    // Validator 2 voted: the certificate holds its own vote.
    let mut voted = n.core(2);
    n.deliver(&mut voted, 1, Message::Proposal(p.clone()), 2_200);
    assert_eq!(
        voted.safety().last_vote.as_ref().map(|v| v.payload),
        Some(vote)
    );
    let out = n.deliver(&mut voted, 1, timeout_of_v1(&n, qc.clone()), 2_300);
    assert_eq!(elsewhere(&out), vec![]);

    // A copy that never saw the proposal finds its key's vote in it.
    let mut other = n.core(2);
    let out = n.deliver(&mut other, 1, timeout_of_v1(&n, qc.clone()), 2_300);
    assert_eq!(elsewhere(&out), vec![(View(1), "vote")]);
    let out = n.deliver(&mut other, 3, timeout_of_v1(&n, qc), 2_400);
    assert_eq!(elsewhere(&out), vec![], "once per view");
}

/// P21 for blocks: a block naming validator 1 its proposer, signed with its
/// key, in a view where this process proposed none or another raises the
/// alarm, whether the block arrives as a proposal or is fetched as a
/// certified block; the process that proposed it raises none.
#[test]
fn a_block_proposed_under_this_key_by_another_process_raises_the_own_key_alarm() {
    let mut n = net();
    let set = n.verifier_set().clone();
    let p = n.proposal(b"tx", 2_100);
    let block = p.payload.block.clone();

    // A copy that never proposed is sent the other copy's proposal.
    let mut copy = n.core(1);
    let out = n.deliver(&mut copy, 0, Message::Proposal(p.clone()), 2_200);
    assert_eq!(elsewhere(&out), vec![(View(1), "proposal")]);

    // A copy that only hears of the block through a certificate (without
    // its own vote) fetches it, and finds it named the proposer.
    let vote = Vote {
        view: View(1),
        height: Height(1),
        block_id: block.id(),
    };
    let carrier = timeout_carrying(&n, 0, 2, quorum_of(&n, &set, &[0, 2, 3], vote));
    let mut fetching = n.core(1);
    let out = n.deliver(&mut fetching, 0, carrier, 2_300);
    assert_eq!(elsewhere(&out), vec![]);
    assert!(
        !asked_for(&out, block.id()).is_empty(),
        "the certified block is fetched: {out:?}"
    );
    let response = Message::BlockResponse(BlockResponse {
        blocks: vec![block.clone()],
    });
    let out = n.deliver(&mut fetching, 0, response, 2_400);
    assert_eq!(elsewhere(&out), vec![(View(1), "proposal")]);

    // The process that proposed a block in view 1 raises nothing for its
    // own block, and the alarm for the other copy's block of that view.
    let (mut leader, started) = Core::new(
        n.cfg.clone(),
        n.keys[1].clone(),
        Box::new(AcceptAll),
        Time(2_000),
    )
    .unwrap();
    assert!(
        started
            .iter()
            .any(|a| matches!(a, Action::RequestPayload { view, .. } if *view == View(1))),
        "validator 1 leads view 1: {started:?}"
    );
    let out = leader.handle(
        Time(2_050),
        Event::PayloadReady {
            view: View(1),
            payload: b"own".to_vec(),
        },
    );
    assert!(
        out.iter()
            .any(|a| matches!(a, Action::Broadcast(Message::Proposal(_)))),
        "it proposes: {out:?}"
    );
    assert_eq!(elsewhere(&out), vec![]);
    let out = n.deliver(&mut leader, 0, Message::Proposal(p), 2_200);
    assert_eq!(elsewhere(&out), vec![(View(1), "proposal")]);
}

/// A peer that leaves block requests unanswered (it lacks the blocks,
/// stalls, or is reached over a connection that no longer leads to it)
/// while its messages keep asking for more is not asked again until the
/// others have been asked as often; a peer that serves a wanted block is
/// asked first again.
#[test]
fn blocks_are_asked_of_others_once_a_peer_leaves_requests_unanswered() {
    let mut n = net();
    let mut c = n.core(0);
    let set = n.verifier_set().clone();
    // Certificates from validator 1 for blocks nobody serves.
    let mut peers = Vec::new();
    for k in 0..6u64 {
        let id = Digest::of(&k.to_le_bytes());
        let out = n.deliver(
            &mut c,
            1,
            timeout_of_v1(&n, quorum_for(&n, &set, id)),
            2_100,
        );
        let to = asked_for(&out, id);
        assert_eq!(to.len(), 1, "block {k} is asked of one peer: {out:?}");
        peers.push(to[0].0);
    }
    let limit = UNANSWERED_BLOCK_REQUESTS as usize;
    assert_eq!(&peers[..limit], &vec![1; limit][..], "the sender first");
    assert_ne!(peers[limit], 1, "then another: {peers:?}");
    for p in 1..4u16 {
        assert_eq!(
            peers.iter().filter(|x| **x == p).count(),
            2,
            "each peer asked as often: {peers:?}"
        );
    }

    // Validator 3 serves a wanted block: it is asked first again.
    let p = n.proposal(b"tx", 2_100);
    let block = p.payload.block.clone();
    let vote = Vote {
        view: View(1),
        height: Height(1),
        block_id: block.id(),
    };
    let out = n.deliver(
        &mut c,
        1,
        timeout_of_v1(&n, quorum_on(&n, &set, vote)),
        2_200,
    );
    assert_eq!(asked_for(&out, block.id()).len(), 1);
    let response = Message::BlockResponse(BlockResponse {
        blocks: vec![block],
    });
    n.deliver(&mut c, 3, response, 2_300);
    let id = Digest::of(b"one more");
    let out = n.deliver(
        &mut c,
        1,
        timeout_of_v1(&n, quorum_for(&n, &set, id)),
        2_400,
    );
    assert_eq!(asked_for(&out, id), vec![ValidatorIndex(3)]);
}

/// Behind a fast chain, a block request expires (a window of views on)
/// or gives way to newer ones before its answer comes. The answer is kept
/// all the same when the block's certificate is held: its id proves it.
/// Dropping it left a restarted validator in a 30-minute chaos run
/// fetching for 39 s without committing while the chain ran at hundreds of
/// blocks a second.
#[test]
fn a_certified_block_answered_after_its_request_expired_is_kept() {
    let mut n = net();
    let mut c = n.core(0);
    let set = n.verifier_set().clone();
    let a = n.proposal(b"tx", 2_100).payload.block.clone();
    let qc_a = quorum_on(
        &n,
        &set,
        Vote {
            view: View(1),
            height: Height(1),
            block_id: a.id(),
        },
    );
    let proposer = n.cfg.leader(View(2), &a.header);
    let b = Block {
        header: BlockHeader {
            parent: a.id(),
            height: Height(2),
            view: View(2),
            proposer,
            timestamp_ms: 2_150,
            payload_digest: Digest::of(b""),
            idle: Idleness::next(&a.header.idle, 4, proposer, &qc_a),
            justify: qc_a,
            exec_next: a.header.exec_next,
            exec: vec![],
        },
        payload: Vec::new(),
    };
    let qc_b = quorum_on(
        &n,
        &set,
        Vote {
            view: View(2),
            height: Height(2),
            block_id: b.id(),
        },
    );
    let asks = |out: &[Action], id: Digest| !asked_for(out, id).is_empty();
    // B's certificate: B is asked for; a short answer brings B alone, and
    // its parent A is asked for.
    let out = n.deliver(&mut c, 1, timeout_of_v1(&n, qc_b), 2_200);
    assert!(asks(&out, b.id()), "{out:?}");
    let only_b = Message::BlockResponse(BlockResponse {
        blocks: vec![b.clone()],
    });
    let out = n.deliver(&mut c, 1, only_b, 2_300);
    assert!(asks(&out, a.id()), "{out:?}");
    // Certificates move the chain a whole window of views on (the test
    // network's window is 10) before A's answer comes, with no timeout
    // here to ask again: the request is abandoned.
    let now = 2_400;
    for v in 3..=15u64 {
        let qc = quorum_on(
            &n,
            &set,
            Vote {
                view: View(v),
                height: Height(v),
                block_id: Digest::of(&v.to_le_bytes()),
            },
        );
        let out = n.deliver(&mut c, 1, timeout_of_v1(&n, qc), now);
        assert!(!asks(&out, a.id()), "view {v}: {out:?}");
    }
    assert_eq!(c.view(), View(16));
    let late = Message::BlockResponse(BlockResponse {
        blocks: vec![a.clone()],
    });
    let out = n.deliver(&mut c, 1, late, now + 10);
    assert!(persists(&out, a.id()), "the late answer is kept: {out:?}");
    assert!(
        out.iter()
            .any(|x| matches!(x, Action::Commit { block, .. } if block.id() == a.id())),
        "and A commits (B, certified in the next view, extends it): {out:?}"
    );
    // A block nobody certified is still refused unasked.
    let stray = n.proposal(b"other", 2_150).payload.block.clone();
    let out = n.deliver(
        &mut c,
        1,
        Message::BlockResponse(BlockResponse {
            blocks: vec![stray],
        }),
        now + 20,
    );
    assert!(
        !out.iter().any(|x| matches!(x, Action::PersistBlock(_))),
        "an uncertified block is not kept: {out:?}"
    );
}

/// Genesis, A (view 1) and B (view 2, certifying A), with certificates for
/// both, and the result of executing A.
struct ExecChain {
    a: Block,
    qc_a: QuorumCert,
    b: Block,
    qc_b: QuorumCert,
    result_a: ExecResult,
}

fn exec_chain(n: &Net) -> ExecChain {
    let set = n.verifier_set().clone();
    let a = n.proposal(b"tx", 2_100).payload.block.clone();
    let qc_a = quorum_on(n, &set, vote_on(&a));
    let b = child(n, &a, 2, qc_a.clone(), vec![]);
    let qc_b = quorum_on(n, &set, vote_on(&b));
    let result_a = ExecResult {
        height: Height(1),
        block_id: a.id(),
        state_root: Digest::of(b"state after a"),
        receipts_root: Digest::of(b"receipts of a"),
    };
    ExecChain {
        a,
        qc_a,
        b,
        qc_b,
        result_a,
    }
}

fn vote_on(b: &Block) -> Vote {
    Vote {
        view: b.view(),
        height: b.height(),
        block_id: b.id(),
    }
}

/// A block of `view` on `parent` by its leader, carrying `exec`.
fn child(n: &Net, parent: &Block, view: u64, justify: QuorumCert, exec: Vec<ExecResult>) -> Block {
    let proposer = n.cfg.leader(View(view), &parent.header);
    Block {
        header: BlockHeader {
            parent: parent.id(),
            height: parent.height().next(),
            view: View(view),
            proposer,
            timestamp_ms: parent.header.timestamp_ms + 50,
            payload_digest: Digest::of(b""),
            idle: Idleness::next(&parent.header.idle, 4, proposer, &justify),
            justify,
            exec_next: exec
                .last()
                .map_or(parent.header.exec_next, |r| r.height.next()),
            exec,
        },
        payload: Vec::new(),
    }
}

fn proposal_of(n: &Net, block: Block) -> Message {
    let p = block.header.proposer;
    Message::Proposal(
        Verified::sign(
            &n.keys[p.as_usize()],
            p,
            &n.cfg.chain_id,
            Proposal { block, tc: None },
        )
        .into_signed(),
    )
}

/// Validator `i` in view 3 holding A committed (and its result when
/// `executed`) and B.
fn at_view_3(n: &Net, i: usize, ch: &ExecChain, executed: bool) -> Core {
    let restore = Restore {
        safety: SafetyState::initial(ch.qc_b.clone()),
        committed: (ch.a.clone(), ch.qc_a.clone()),
        stable: None,
        blocks: vec![ch.b.clone()],
        executed: if executed { vec![ch.result_a] } else { vec![] },
    };
    Core::restore(
        n.cfg.clone(),
        n.keys[i].clone(),
        Box::new(AcceptAll),
        restore,
        Time(2_300),
    )
    .unwrap()
    .0
}

/// P22: a proposal whose execution result differs from the validator's own
/// gets no vote and raises the mismatch; the true one gets a vote.
#[test]
fn a_proposal_certifying_a_wrong_execution_result_gets_no_vote() {
    let mut n = net();
    let ch = exec_chain(&n);
    let leader = n.cfg.leader(View(3), &ch.b.header).as_usize();
    let voter = (leader + 1) % 4;
    for (what, lie) in [
        ("state root", {
            let mut r = ch.result_a;
            r.state_root = Digest::of(b"another state");
            r
        }),
        ("receipts root", {
            let mut r = ch.result_a;
            r.receipts_root = Digest::of(b"other receipts");
            r
        }),
    ] {
        let mut c = at_view_3(&n, voter, &ch, true);
        let c_block = child(&n, &ch.b, 3, ch.qc_b.clone(), vec![lie]);
        let out = n.deliver(&mut c, leader as u16, proposal_of(&n, c_block), 2_400);
        assert!(votes(&out).is_empty(), "{what}: voted for a wrong result");
        assert_eq!(c.safety().last_voted_view, View(0), "{what}");
        let raised: Vec<_> = out
            .iter()
            .filter_map(|a| match a {
                Action::ExecutionMismatch { ours, theirs, .. } => Some((*ours, *theirs)),
                _ => None,
            })
            .collect();
        assert_eq!(raised, vec![(ch.result_a, lie)], "{what}");
        assert_eq!(c.stats().exec_mismatches, 1);
    }
    let mut c = at_view_3(&n, voter, &ch, true);
    let honest = child(&n, &ch.b, 3, ch.qc_b.clone(), vec![ch.result_a]);
    n.deliver(&mut c, leader as u16, proposal_of(&n, honest), 2_400);
    assert_eq!(
        c.safety().last_voted_view,
        View(3),
        "no vote for the true result"
    );
    // A result for a height at or below this validator's state that it
    // does not hold (its state came from a state sync) cannot be checked:
    // no vote, and no alarm either.
    let mut c = at_view_3(&n, voter, &ch, false);
    let honest = child(&n, &ch.b, 3, ch.qc_b.clone(), vec![ch.result_a]);
    let out = n.deliver(&mut c, leader as u16, proposal_of(&n, honest), 2_400);
    assert_eq!(c.safety().last_voted_view, View(0));
    assert!(
        !out.iter()
            .any(|a| matches!(a, Action::ExecutionMismatch { .. }))
    );
    assert_eq!(c.stats().exec_unverifiable, 1);
}

/// P22: a result for a height this validator has committed but not yet
/// executed holds the vote until its own execution agrees.
#[test]
fn a_vote_waits_for_execution_to_reach_the_results_it_certifies() {
    let mut n = net();
    let ch = exec_chain(&n);
    let leader = n.cfg.leader(View(3), &ch.b.header).as_usize();
    let voter = (leader + 1) % 4;
    let g = n.genesis();
    let restore = Restore {
        safety: SafetyState::initial(ch.qc_b.clone()),
        committed: (g.clone(), genesis_qc(&g)),
        stable: None,
        blocks: vec![ch.a.clone(), ch.b.clone()],
        executed: vec![],
    };
    let mut c = Core::restore(
        n.cfg.clone(),
        n.keys[voter].clone(),
        Box::new(AcceptAll),
        restore,
        Time(2_300),
    )
    .unwrap()
    .0;
    let block = child(&n, &ch.b, 3, ch.qc_b.clone(), vec![ch.result_a]);
    let out = n.deliver(&mut c, leader as u16, proposal_of(&n, block), 2_400);
    assert_eq!(
        c.safety().last_voted_view,
        View(0),
        "voted before executing height 1"
    );
    assert!(
        out.iter()
            .any(|a| matches!(a, Action::Commit { block, .. } if block.id() == ch.a.id())),
        "the proposal's certificate commits A"
    );
    c.handle(Time(2_450), Event::Executed(ch.result_a));
    assert_eq!(
        c.safety().last_voted_view,
        View(3),
        "the held vote is cast once executed"
    );
    assert_eq!(c.stats().exec_waits, 1);
}
