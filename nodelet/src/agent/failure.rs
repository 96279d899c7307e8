//! Why an assignment is not running as asked: a refusal (final until the
//! artifact or the node's keys change) or a transient failure (retried).

use harvester_api::Reason;
use harvester_registry::{PullError, Refusal};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Failure {
    pub generation: u64,
    pub reason: Reason,
    pub message: String,
    /// Set for refusals, counted in harvester_signature_refusals_total.
    pub refusal: Option<&'static str>,
}

impl Failure {
    pub fn refused(generation: u64, r: &Refusal) -> Failure {
        Failure {
            generation,
            reason: r.reason(),
            message: r.to_string(),
            refusal: Some(r.label()),
        }
    }

    /// A registry's answer: a refusal, or a failure worth retrying.
    pub fn pulling(generation: u64, e: PullError) -> Failure {
        match e {
            PullError::Refused(r) => Failure::refused(generation, &r),
            PullError::Registry(e) => Failure::transient(generation, Reason::PullFailed, format!("{e:#}")),
        }
    }

    pub fn transient(generation: u64, reason: Reason, e: impl std::fmt::Display) -> Failure {
        Failure {
            generation,
            reason,
            message: e.to_string(),
            refusal: None,
        }
    }

    /// Code the hub compiled that this node will not load.
    pub fn compiled_code_refused(generation: u64, message: String) -> Failure {
        Failure {
            generation,
            reason: Reason::CompiledCodeRefused,
            message,
            refusal: Some("compiled_code"),
        }
    }

    /// Whether trying again later may succeed: a registry or a hub may come
    /// back and a signature may be added, but the same bytes and config
    /// mostly fail to load the same way every time (they get a few more
    /// attempts only).
    pub fn worth_retrying(&self) -> bool {
        self.reason != Reason::LoadFailed
    }
}
