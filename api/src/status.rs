//! The vocabulary of status: a plugin's [`Phase`] on a node, the
//! [`Reason`] behind a phase or a condition, and the [`ConditionType`]s a
//! Plugin or a Node carries.
//!
//! Each is rendered in exactly one place (its `as_str`), and each reads
//! words it does not know: a hub and a node one release apart still read
//! each other's status, they only show the newer word as it was sent.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// Declares a string-valued enum: known words as variants, anything else
/// kept as `Other(String)`, one `as_str` for both directions.
macro_rules! vocabulary {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($(#[$vm])* $variant,)*
            /// A word this release does not know (from a newer peer).
            Other(String),
        }

        impl $name {
            /// Every known word, in declaration order.
            pub const KNOWN: &'static [$name] = &[$($name::$variant),*];

            pub fn as_str(&self) -> &str {
                match self {
                    $($name::$variant => stringify!($variant),)*
                    $name::Other(s) => s,
                }
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> $name {
                match s {
                    $(stringify!($variant) => $name::$variant,)*
                    other => $name::Other(other.to_string()),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl schemars::JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                crate::schema::vocabulary(stringify!($name), vec![$(stringify!($variant)),*])
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<$name, D::Error> {
                let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
                Ok($name::from(s.as_ref()))
            }
        }
    };
}

vocabulary! {
    /// Where a plugin stands on one node.
    Phase {
        /// Assigned by the hub; the node has not reported it yet.
        Pending,
        /// Being compiled, instantiated and initialised for the first time.
        Loading,
        Running,
        /// Trapped; waiting for the restart backoff.
        Restarting,
        CrashLoopBackOff,
        /// Could not be loaded and nothing older is running.
        Failed,
        Stopped,
    }
}

impl Phase {
    /// Crashing or refused: the plugin is not doing its work there.
    pub fn is_failing(&self) -> bool {
        matches!(self, Phase::Failed | Phase::CrashLoopBackOff)
    }
}

vocabulary! {
    /// Why: the machine-readable word behind a plugin's state on a node or
    /// a condition, as `describe`, the dashboard and metrics show it.
    Reason {
        // Reported by nodes about one plugin.
        /// No signature, or none by a key the node trusts, or one for another image.
        SignatureInvalid,
        /// The bytes fetched are not the ones the digest names.
        DigestMismatch,
        /// The artifact is not a WebAssembly component.
        InvalidArtifact,
        /// A manifest, signature or component is over the node's size limit.
        TooLarge,
        /// The registry or the hub could not be reached; retried.
        PullFailed,
        /// Code the hub compiled was not signed by a trusted compiler key, or
        /// is not what its statement says.
        CompiledCodeRefused,
        /// The node may not compile itself and the hub could not give it code.
        CompileUnavailable,
        /// The component did not load (imports beyond its grants, init failed...).
        LoadFailed,
        /// Runs without a valid signature because the node allows it (development).
        Unsigned,
        /// Runs, but over its CPU budget (`limits.cpu`): its ticks wait.
        CpuLimit,
        // A Node's conditions.
        /// The node's data folder is almost full: it runs what it runs,
        /// applies removals and config changes, and takes in nothing new.
        LowOnDisk,
        EnoughDisk,
        HeartbeatReceived,
        HeartbeatTimeout,
        NoHeartbeat,
        // A Plugin's conditions.
        NoMatchingNodes,
        /// A node the plugin's selector matches has too little memory left
        /// for plugins for its `limits.memory`.
        InsufficientMemory,
        AllNodesRunning,
        RollingOut,
        Complete,
        Stalled,
        /// Another plugin on the node already holds one of its output pins or LEDs.
        GrantConflict,
        /// A node reports it failing, without a more specific reason.
        PluginFailing,
        NodeNotReady,
        AsExpected,
        UnsignedAllowed,
        SignatureVerified,
        // A Plugin's rollout.
        /// The new revision failed on more nodes than the rollout allows.
        HealthCheckFailed,
        /// The rollout made no progress for its progressDeadline.
        ProgressDeadlineExceeded,
        /// Someone aborted it (`harvester rollout abort`).
        AbortedByUser,
        /// At a `pause` step of a canary.
        PauseStep,
        /// Someone paused it (`harvester rollout pause`).
        PausedByUser,
    }
}

impl Reason {
    /// Reasons that say a node refuses or cannot run what it was assigned.
    /// `Unsigned` is a warning: the plugin does run.
    pub fn is_failure(&self) -> bool {
        !matches!(self, Reason::Unsigned)
    }
}

vocabulary! {
    /// The conditions of a Plugin (Ready, Progressing, Degraded, Verified)
    /// and of a Node (Ready).
    ConditionType {
        Ready,
        /// A node's data folder is almost full.
        DiskPressure,
        Progressing,
        Degraded,
        Verified,
        /// The newest revision's rollout was aborted and its nodes sent back.
        RolledBack,
        /// The rollout waits: at a pause step, or paused by someone.
        Paused,
    }
}

/// For optional reasons sent as strings: an absent or empty one is none.
pub(crate) fn optional_reason<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Reason>, D::Error> {
    let s = Option::<std::borrow::Cow<'de, str>>::deserialize(d)?;
    Ok(s.filter(|s| !s.is_empty()).map(|s| Reason::from(s.as_ref())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_word_reads_back_as_itself() {
        for r in Reason::KNOWN {
            let text = serde_json::to_string(r).unwrap();
            assert_eq!(text, format!("\"{}\"", r.as_str()));
            assert_eq!(&serde_json::from_str::<Reason>(&text).unwrap(), r);
        }
        for p in Phase::KNOWN {
            assert_eq!(&Phase::from(p.as_str()), p);
            assert_eq!(p.to_string(), p.as_str());
        }
        for c in ConditionType::KNOWN {
            assert_eq!(&ConditionType::from(c.as_str()), c);
        }
    }

    #[test]
    fn a_word_from_a_newer_release_is_kept_as_sent() {
        let r: Reason = serde_json::from_str("\"QuotaExceeded\"").unwrap();
        assert_eq!(r, Reason::Other("QuotaExceeded".into()));
        assert_eq!(serde_json::to_string(&r).unwrap(), "\"QuotaExceeded\"");
        let p: Phase = serde_yaml::from_str("Throttled").unwrap();
        assert_eq!(p.as_str(), "Throttled");
        assert!(!p.is_failing());
    }

    #[test]
    fn words_are_the_ones_the_wire_always_carried() {
        // Renaming a variant would break older peers: pin the spelling.
        assert_eq!(Phase::CrashLoopBackOff.as_str(), "CrashLoopBackOff");
        assert_eq!(Reason::CompiledCodeRefused.as_str(), "CompiledCodeRefused");
        assert_eq!(Reason::GrantConflict.as_str(), "GrantConflict");
        assert_eq!(ConditionType::Degraded.as_str(), "Degraded");
        assert!(Phase::Failed.is_failing() && Phase::CrashLoopBackOff.is_failing() && !Phase::Running.is_failing());
        assert!(!Reason::Unsigned.is_failure() && Reason::PullFailed.is_failure());
    }
}
