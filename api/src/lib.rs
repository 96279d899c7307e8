//! Harvester's resource types, shared by the CLI, the controller and the nodelet.
//!
//! - [`answers`]: what the hub's API answers besides objects (lists, apply
//!   results, events, command answers, errors).
//! - [`compiled`]: code a hub compiles for its nodes, and what it vouches for.
//! - [`cross_site`]: requests a web page of another site could send, refused by every server.
//! - [`digest`]: `sha256:` content digests; everything runs by digest.
//! - [`files`]: sweeping folders of content-named files nothing needs any more.
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
pub mod cross_site;
pub mod digest;
pub mod files;
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
pub use quantity::{CpuShare, DurationSpec, MemorySize};
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

/// Full jitter: a random wait between nothing and `ceiling`, so many
/// clients retrying one server (nodes after a hub restart, a registry back
/// up) spread out instead of arriving together.
pub fn jitter(ceiling: std::time::Duration) -> std::time::Duration {
    use std::hash::{BuildHasher, Hasher};
    // Each RandomState is seeded from the OS: no generator to carry around.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(ceiling.as_nanos());
    ceiling.mul_f64((h.finish() % 10_000) as f64 / 10_000.0)
}

/// `s` cut to at most `max` bytes on a character boundary, with `…` added
/// when something was cut: what a peer sent, kept within a bound.
pub fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
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
    fn jitter_spreads_within_its_ceiling() {
        let ceiling = std::time::Duration::from_millis(800);
        let waits: Vec<_> = (0..50).map(|_| super::jitter(ceiling)).collect();
        assert!(waits.iter().all(|w| *w < ceiling));
        let distinct: std::collections::HashSet<_> = waits.iter().collect();
        assert!(distinct.len() > 10, "{waits:?}");
    }

    #[test]
    fn truncation_keeps_characters_whole() {
        assert_eq!(super::truncate("short".into(), 10), "short");
        assert_eq!(super::truncate("abcdef".into(), 3), "abc…");
        // "é" is two bytes: a cut inside it moves before it.
        assert_eq!(super::truncate("aé".into(), 2), "a…");
    }

    #[test]
    fn a_path_segment_cannot_leave_its_segment() {
        assert_eq!(super::path_segment("pi4"), "pi4");
        assert_eq!(super::path_segment("a/b?c=d&e#f g"), "a%2Fb%3Fc%3Dd%26e%23f%20g");
    }
}
