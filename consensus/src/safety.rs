//! The safety rules, as small pure functions, and the safety state that must
//! be durable before any message that depends on it leaves the process.
//!
//! Line tags (`P3`, `P7`, …) refer to the pseudocode in `docs/PROTOCOL.md`.

use phalanx_crypto::{Digest, Signed};
use serde::{Deserialize, Serialize};

use crate::types::{Block, QuorumCert, Timeout, TimeoutCert, View, Vote};

/// What a validator must remember across crashes to never sign conflicting
/// messages. The node persists it (synced) on every [`crate::Action::Persist`]
/// before performing the actions that follow it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SafetyState {
    /// Highest view this validator voted or timed out in. It never votes in
    /// a view at or below this again.
    pub last_voted_view: View,
    /// Highest quorum certificate observed when it last voted or timed out:
    /// the lock. Its timeouts never carry a lower one.
    pub high_qc: QuorumCert,
    /// The last vote signed, re-sent verbatim if asked again for that view.
    pub last_vote: Option<Signed<Vote>>,
    /// The last timeout signed, re-sent verbatim while its view lasts.
    pub last_timeout: Option<Signed<Timeout>>,
    /// Highest view this validator proposed in; it never proposes twice in
    /// one view, even after a restart.
    pub last_proposed_view: View,
    /// Highest timeout certificate known when last persisted. Not needed for
    /// safety: kept so that a restarted validator can show others why it is
    /// in its view (liveness).
    pub high_tc: Option<TimeoutCert>,
    /// Set by recovery (P19): this validator never signs a vote, timeout or
    /// proposal in a view at or below it, because it may have signed there
    /// before its record was lost.
    pub floor: View,
    /// While recovering from a lost record (P19): the nonce of its query.
    /// Nothing is signed until a quorum of fresh view reports sets `floor`.
    pub quarantine: Option<Digest>,
}

impl SafetyState {
    /// The state of a validator that has never signed anything.
    pub fn initial(genesis_qc: QuorumCert) -> SafetyState {
        SafetyState {
            last_voted_view: View(0),
            high_qc: genesis_qc,
            last_vote: None,
            last_timeout: None,
            last_proposed_view: View(0),
            high_tc: None,
            floor: View(0),
            quarantine: None,
        }
    }

    /// The state of a validator that lost its record and may have signed
    /// anything before: it signs nothing until recovery with `nonce`
    /// (fresh, never used before) has set its floor. `high_qc` is the
    /// highest certificate its store holds.
    pub fn recovering(high_qc: QuorumCert, nonce: Digest) -> SafetyState {
        SafetyState {
            quarantine: Some(nonce),
            ..SafetyState::initial(high_qc)
        }
    }

    /// True if this validator may sign a new vote, timeout or proposal in
    /// `view` as far as recovery is concerned (the vote rule still applies).
    pub fn may_sign_in(&self, view: View) -> bool {
        self.quarantine.is_none() && view > self.floor
    }
}

/// **P7 — vote rule.** Vote for `block` (proposed in `block.view`) only if
/// this validator has not voted or timed out in that view or later, and
/// either the block directly extends the previous view's certificate, or it
/// enters via a timeout certificate for the previous view and extends a
/// certificate at least as high as every one the timeout signers reported.
pub fn safe_to_vote(last_voted_view: View, block: &Block, tc: Option<&TimeoutCert>) -> bool {
    let view = block.view();
    if view <= last_voted_view {
        return false;
    }
    let qc_view = block.header.justify.payload.view;
    if qc_view.next() == view {
        return true;
    }
    match tc {
        Some(tc) => tc.view.next() == view && qc_view >= tc.high_qc.payload.view,
        None => false,
    }
}

/// **P12 — commit rule (two-chain).** A certificate for block `b` commits
/// `b`'s parent when `b` was proposed in the view right after its parent's:
/// the parent and its direct child are both certified in consecutive views.
/// Returns whether the parent (certified by `b.justify`) is committed.
pub fn commits_parent(b: &Block) -> bool {
    b.header.justify.payload.view.next() == b.view()
}

/// **P15 — view timeout.** The timer for a view lasts `base · 2^failures`,
/// capped at `max`: consecutive failed views back off exponentially, and the
/// count resets when a certificate shows progress, so a slow network does
/// not cause a storm of view changes.
pub fn view_timeout_ms(base_ms: u64, max_ms: u64, consecutive_failures: u32) -> u64 {
    let factor = 1u64 << consecutive_failures.min(30);
    base_ms.saturating_mul(factor).min(max_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Block, TimeoutCert};
    use phalanx_crypto::ChainId;

    fn block_with(view: u64, qc_view: u64) -> Block {
        let mut b = Block::genesis(&ChainId::new("t").unwrap(), 0);
        b.header.view = View(view);
        b.header.justify.payload.view = View(qc_view);
        b
    }

    fn tc(view: u64, high: u64) -> TimeoutCert {
        let mut qc = block_with(0, 0).header.justify;
        qc.payload.view = View(high);
        qc.payload.block_id = Digest::ZERO;
        TimeoutCert {
            view: View(view),
            entries: vec![],
            high_qc: qc,
        }
    }

    #[test]
    fn vote_rule_table() {
        // (last voted, block view, qc view, tc (view, high), expected, why)
        let cases = [
            (4, 5, 4, None, true, "direct extension"),
            (5, 5, 4, None, false, "already voted in this view"),
            (6, 5, 4, None, false, "already voted in a later view"),
            (4, 6, 4, None, false, "gap without a timeout certificate"),
            (
                4,
                6,
                4,
                Some((5, 4)),
                true,
                "enters via TC, extends its highest",
            ),
            (
                4,
                6,
                4,
                Some((5, 3)),
                true,
                "extends higher than the TC's highest",
            ),
            (
                4,
                6,
                3,
                Some((5, 4)),
                false,
                "extends below the TC's highest",
            ),
            (
                4,
                7,
                4,
                Some((5, 4)),
                false,
                "TC is not for the previous view",
            ),
        ];
        for (last, view, qc, t, want, why) in cases {
            let b = block_with(view, qc);
            let t = t.map(|(v, h)| tc(v, h));
            assert_eq!(safe_to_vote(View(last), &b, t.as_ref()), want, "{why}");
        }
    }

    #[test]
    fn commit_rule_needs_consecutive_views() {
        assert!(commits_parent(&block_with(8, 7)));
        assert!(!commits_parent(&block_with(9, 7)));
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(view_timeout_ms(100, 1000, 0), 100);
        assert_eq!(view_timeout_ms(100, 1000, 1), 200);
        assert_eq!(view_timeout_ms(100, 1000, 3), 800);
        assert_eq!(view_timeout_ms(100, 1000, 4), 1000);
        assert_eq!(view_timeout_ms(100, 1000, u32::MAX), 1000);
    }
}
