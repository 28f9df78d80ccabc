//! The screen: everything done to a peer's frame before the core sees it —
//! the cheap admission checks (graylist, view window, unsolicited reports)
//! and then the [`Verifier`]'s decode and signature checks — as a value
//! that can run away from the driver.
//!
//! The driver owns one screen and runs it inline ([`crate::Driver::on_bytes`],
//! what the simulator calls). An embedder with threads to spare asks the
//! driver for more screens ([`crate::Driver::screen`]) and runs them
//! elsewhere, feeding each the driver's latest [`Admission`] and handing
//! the outcome back through [`crate::Driver::on_screened`] (D16). The same
//! code decides in both places; only where it runs differs.
//!
//! The screen never makes a protocol decision. Its admission checks are
//! about cost, not safety: an [`Admission`] that is a little stale admits a
//! message the driver would by now refuse (the core ignores it, and checks
//! everything that matters again), or refuses one it would now admit (a
//! peer repeats what matters; a refusal here never counts towards a
//! graylisting).

use std::collections::HashMap;

use phalanx_crypto::{Digest, ValidatorIndex};

use crate::types::{Message, Time, View};
use crate::verify::{VerifiedMessage, Verifier, VerifyError};

/// How often one peer may have a message from beyond the view window
/// verified, ms (D10).
pub const FAR_VIEW_INTERVAL_MS: u64 = 250;
/// Why a message from beyond the view window was refused (D10).
pub const NOT_ADMITTED_FAR_VIEW: &str = "beyond the view window";
/// Why an unsolicited view report was refused (D13).
pub const NOT_ADMITTED_REPORT: &str = "view report not asked for";

/// What a screen needs to know of the driver's state to admit a frame: a
/// small value the driver hands out ([`crate::Driver::admission`]) and an
/// embedder republishes when it changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Admission {
    /// The core's current view.
    pub(crate) view: View,
    /// Views beyond `view` admitted freely (D10).
    pub(crate) window: u64,
    /// While the core is quarantined: its recovery's nonce and the signers
    /// whose reports it still wants (D13).
    pub(crate) reports: Option<(Digest, Vec<ValidatorIndex>)>,
    /// Graylisted peers and until when, ms (D14).
    pub(crate) graylisted: Vec<(ValidatorIndex, u64)>,
}

impl Admission {
    /// An admission at `view` with `window` views ahead admitted freely,
    /// no report wanted and no peer graylisted (a driver's own come from
    /// [`crate::Driver::admission`]).
    pub fn new(view: View, window: u64) -> Admission {
        Admission {
            view,
            window,
            ..Admission::default()
        }
    }

    /// The view the admission was taken in.
    pub fn view(&self) -> View {
        self.view
    }

    /// Whether frames from `from` are dropped unread at `now` (D14).
    pub fn blocks(&self, from: ValidatorIndex, now: Time) -> bool {
        self.graylisted
            .iter()
            .any(|(p, until)| *p == from && now.0 < *until)
    }

    fn wants_report(&self, signer: ValidatorIndex, nonce: &Digest) -> bool {
        self.reports
            .as_ref()
            .is_some_and(|(n, signers)| n == nonce && signers.contains(&signer))
    }
}

/// What became of a frame.
#[derive(Debug)]
pub enum Screened {
    /// Its sender is graylisted: dropped before it was decoded (D14).
    Dropped,
    /// Refused: undecodable, badly signed, over a bound or not admitted.
    Refused(VerifyError),
    /// Verified, for the core (boxed: outcomes queue between threads, and
    /// a verified proposal is far larger than the other outcomes).
    Verified(Box<VerifiedMessage>),
}

/// Admission checks and a [`Verifier`], with the per-peer state the checks
/// keep. One peer's frames should always go to the same screen: the D10
/// rate is counted per screen.
pub struct Screen {
    verifier: Verifier,
    /// When each peer last had a message from beyond the window verified.
    far_view_at: HashMap<ValidatorIndex, u64>,
}

impl Screen {
    /// A screen around `verifier`.
    pub fn new(verifier: Verifier) -> Screen {
        Screen {
            verifier,
            far_view_at: HashMap::new(),
        }
    }

    /// Screens one frame from `from` under `adm`.
    pub fn screen(
        &mut self,
        now: Time,
        from: ValidatorIndex,
        bytes: &[u8],
        adm: &Admission,
    ) -> Screened {
        if adm.blocks(from, now) {
            return Screened::Dropped;
        }
        let last = self.far_view_at.get(&from).copied();
        let mut admitted_far = false;
        let admit = |m: &Message| -> Result<(), &'static str> {
            // D13: only the view reports a quarantined core asked for.
            if let Message::ViewReport(r) = m
                && !adm.wants_report(r.signer, &r.payload.nonce)
            {
                return Err(NOT_ADMITTED_REPORT);
            }
            match m.view() {
                Some(v) if v.0 > adm.view.0.saturating_add(adm.window) => {
                    if last.is_some_and(|t| now.0 < t.saturating_add(FAR_VIEW_INTERVAL_MS)) {
                        return Err(NOT_ADMITTED_FAR_VIEW);
                    }
                    admitted_far = true;
                    Ok(())
                }
                _ => Ok(()),
            }
        };
        let verified = self.verifier.verify_bytes_if(bytes, admit);
        if admitted_far {
            self.far_view_at.insert(from, now.0);
        }
        match verified {
            Ok(msg) => Screened::Verified(Box::new(msg)),
            Err(e) => Screened::Refused(e),
        }
    }
}
