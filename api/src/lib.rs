//! Harvester's resource types, shared by the CLI, the controller and the nodelet.
//!
//! - [`answers`]: what the hub's API answers besides objects (lists, apply
//!   results, events, command answers, errors).
//! - [`compiled`]: code a hub compiles for its nodes, and what it vouches for.
//! - [`digest`]: `sha256:` content digests; everything runs by digest.
//! - [`grants`]: what a plugin may touch (deny by default), with scope checks.
//! - [`identity`]: enrolment, certificates, join tokens, the CLI's client configuration.
//! - [`live`]: what nodes push to the hub (logs, readings, LEDs) and commands sent down.
//! - [`ndjson`]: the codec of the hub's streams, each line bounded.
//! - [`quantity`]: durations (`3s`, `200ms`) and memory sizes (`64Mi`) as they
//!   appear in manifests.
//! - [`resources`]: the `harvester.dev/v1alpha1` kinds `Plugin` and `Node`, multi-document parsing.
//! - [`rollout`]: how a new revision reaches the nodes (AllAtOnce, Rolling,
//!   Canary), the numbered revisions, where a rollout stands.
//! - [`selector`]: label selectors (`=`, `!=`, `in`, `notin`, `key`, `!key`) and node affinity.
//! - [`run_spec`]: how to run a plugin (grants, config, tick interval, limits), one
//!   shape shared by a Plugin's spec, a node's assignment and a standalone manifest.
//! - [`standalone`]: the local manifest a nodelet runs in `--standalone` mode.
//! - [`status`]: a plugin's `Phase` on a node, the `Reason` behind every state and
//!   condition, and the condition types.
//! - [`validation`]: errors that name the field path that was wrong.
//!
//! Every type rejects unknown fields: a typo in a manifest is an error, never a
//! silently ignored setting.

pub mod answers;
pub mod compiled;
pub mod digest;
pub mod grants;
pub mod identity;
pub mod live;
pub mod ndjson;
pub mod quantity;
pub mod resources;
pub mod rollout;
pub mod run_spec;
pub mod schema;
pub mod selector;
pub mod standalone;
pub mod status;
pub mod task;
pub mod time;
pub mod validation;

pub use digest::Digest;
pub use grants::{Capability, Grants};
pub use quantity::{DurationSpec, MemorySize};
pub use run_spec::{Limits, RunSpec};
pub use status::{ConditionType, Phase, Reason};
pub use validation::{FieldError, ValidationErrors};

/// Milliseconds since the Unix epoch: the one clock of timestamps on the
/// wire (log lines, heartbeats, conditions).
pub fn now_ms() -> u64 {
    unix_ms(std::time::SystemTime::now())
}

/// A time as milliseconds since the Unix epoch (0 before it).
pub fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `s` percent-encoded for one path segment or query value of an API URL:
/// every byte but the unreserved ones of RFC 3986, so a name can never
/// reach another path or add a parameter.
pub fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_path_segment_cannot_leave_its_segment() {
        assert_eq!(super::path_segment("pi4"), "pi4");
        assert_eq!(super::path_segment("a/b?c=d&e#f g"), "a%2Fb%3Fc%3Dd%26e%23f%20g");
    }
}
