//! Progressive rollouts: how a new revision of a Plugin reaches its nodes
//! (`spec.rollout`), the numbered revisions the hub keeps, and where a
//! rollout stands (`status.rollout`).
//!
//! A revision is what runs: the artifact digest and the run spec (grants,
//! config, tick interval, limits). A change of where a plugin runs
//! (`nodeSelector`, `nodeAffinity`) or of its labels is not a revision.

use crate::Digest;
use crate::quantity::DurationSpec;
use crate::resources::Labels;
use crate::run_spec::{RunSpec, runs_a_plugin};
use crate::selector::{NodeAffinity, Selector};
use crate::validation::ValidationErrors;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// How revisions are kept when the Plugin says nothing.
pub const DEFAULT_REVISION_HISTORY_LIMIT: u32 = 10;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum Strategy {
    /// Every node at once (the default).
    #[default]
    AllAtOnce,
    /// A few nodes at a time (`maxUnavailable`), each healthy before the next.
    Rolling,
    /// Through `steps`: a few nodes, a pause, more nodes...
    Canary,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::AllAtOnce => "AllAtOnce",
            Strategy::Rolling => "Rolling",
            Strategy::Canary => "Canary",
        }
    }
}

/// A count of nodes (`1`) or a share of them (`"25%"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amount {
    Nodes(u32),
    Percent(u32),
}

impl Amount {
    /// How many of `total` nodes: a share is rounded up, so it is never
    /// zero of a non-empty fleet.
    pub fn of(self, total: usize) -> usize {
        match self {
            Amount::Nodes(n) => (n as usize).min(total),
            Amount::Percent(p) => (total * p.min(100) as usize).div_ceil(100),
        }
    }
}

impl Serialize for Amount {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Amount::Nodes(n) => s.serialize_u32(*n),
            Amount::Percent(p) => s.serialize_str(&format!("{p}%")),
        }
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Wire {
            Nodes(u32),
            Text(String),
        }
        match Wire::deserialize(d)? {
            Wire::Nodes(n) => Ok(Amount::Nodes(n)),
            Wire::Text(t) => {
                let bad =
                    || serde::de::Error::custom(format!("{t:?}: expected a number of nodes or a percentage like 25%"));
                let p = t.trim().strip_suffix('%').ok_or_else(bad)?;
                let p: u32 = p.trim().parse().map_err(|_| bad())?;
                Ok(Amount::Percent(p))
            }
        }
    }
}

/// Which nodes a canary step selects, by label.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StepSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: Labels,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<crate::selector::MatchExpression>,
}

impl StepSelector {
    pub fn selector(&self, path: &str, errors: &mut ValidationErrors) -> Selector {
        let mut s = Selector::from_map(&self.match_labels);
        let affinity = NodeAffinity {
            match_expressions: self.match_expressions.clone(),
        };
        s.0.extend(affinity.selector(path, errors).0);
        s
    }
}

/// `pause: 2m` waits that long; `pause: {}` waits for `harvester rollout promote`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pause {
    For(DurationSpec),
    UntilPromoted,
}

impl Serialize for Pause {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Pause::For(d) => d.serialize(s),
            Pause::UntilPromoted => BTreeMap::<String, String>::new().serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Pause {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Wire {
            For(DurationSpec),
            Until(BTreeMap<String, serde::de::IgnoredAny>),
        }
        match Wire::deserialize(d)? {
            Wire::For(d) => Ok(Pause::For(d)),
            Wire::Until(m) if m.is_empty() => Ok(Pause::UntilPromoted),
            Wire::Until(_) => Err(serde::de::Error::custom(
                "pause: a duration like 2m, or {} to wait for `harvester rollout promote`",
            )),
        }
    }
}

/// One step of a canary: exactly one of its fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Step {
    /// Update this many nodes in all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<u32>,
    /// Update this share of the nodes in all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u32>,
    /// Update the nodes these labels select (besides those updated before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<StepSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<Pause>,
}

impl Step {
    pub fn describe(&self) -> String {
        match (self.nodes, self.percent, &self.selector, self.pause) {
            (Some(n), ..) => format!("{n} node{}", if n == 1 { "" } else { "s" }),
            (_, Some(p), ..) => format!("{p}% of the nodes"),
            (_, _, Some(s), _) => {
                let mut ignored = ValidationErrors::default();
                format!("nodes with {}", s.selector("", &mut ignored))
            }
            (.., Some(Pause::For(d))) => format!("pause {d}"),
            _ => "pause until promoted".into(),
        }
    }
}

/// What each updated node must hold before a rollout moves on. Each node
/// judges the revision it runs by these rules (and goes back by itself
/// when it fails them); the hub judges from what nodes report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Health {
    /// Running the new revision this long, without failing, is healthy.
    #[serde(default = "default_min_ready")]
    pub min_ready: DurationSpec,
    /// More restarts than this on the new revision is a failure.
    #[serde(default)]
    pub max_restarts: u32,
    /// Tick errors over ticks above this, over minReady, is a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tick_error_rate: Option<f64>,
    /// A reading outside its bounds is a failure.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub telemetry: Vec<Bound>,
}

/// Bounds of one sensor's readings, as the plugin emits them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Bound {
    pub sensor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

impl Bound {
    /// Why `value` breaks the bound, if it does.
    pub fn broken_by(&self, value: f64) -> Option<String> {
        let low = self.min.is_some_and(|m| value < m);
        let high = self.max.is_some_and(|m| value > m);
        (low || high || value.is_nan()).then(|| {
            format!(
                "{} read {value}, outside [{}, {}]",
                self.sensor,
                self.min.map_or("-inf".into(), |m| m.to_string()),
                self.max.map_or("inf".into(), |m| m.to_string())
            )
        })
    }
}

impl Default for Health {
    fn default() -> Self {
        Health {
            min_ready: default_min_ready(),
            max_restarts: 0,
            max_tick_error_rate: None,
            telemetry: Vec::new(),
        }
    }
}

fn default_min_ready() -> DurationSpec {
    DurationSpec(Duration::from_secs(10))
}

fn default_progress_deadline() -> DurationSpec {
    DurationSpec(Duration::from_secs(600))
}

/// `spec.rollout`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RolloutSpec {
    #[serde(default)]
    pub strategy: Strategy,
    /// Rolling: nodes updating at once (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<Amount>,
    /// Canary: the steps, in order; after the last, every node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<Step>,
    #[serde(default)]
    pub health: Health,
    /// A rollout that makes no progress for this long is aborted, and its
    /// nodes go back to the last good revision.
    #[serde(default = "default_progress_deadline")]
    pub progress_deadline: DurationSpec,
    /// Past this many nodes failing the new revision, the rollout aborts.
    #[serde(default)]
    pub max_failed_nodes: u32,
    /// Rolling and Canary: at most this many nodes start the new revision
    /// in any minute (for large fleets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_nodes_per_minute: Option<u32>,
}

impl Default for RolloutSpec {
    fn default() -> Self {
        RolloutSpec {
            strategy: Strategy::AllAtOnce,
            max_unavailable: None,
            steps: Vec::new(),
            health: Health::default(),
            progress_deadline: default_progress_deadline(),
            max_failed_nodes: 0,
            max_nodes_per_minute: None,
        }
    }
}

impl RolloutSpec {
    pub fn is_default(&self) -> bool {
        *self == RolloutSpec::default()
    }

    pub fn validate(&self, path: &str, errors: &mut ValidationErrors) {
        match self.strategy {
            Strategy::Canary if self.steps.is_empty() => {
                errors.push(format!("{path}.steps"), "a Canary rollout needs at least one step");
            }
            Strategy::AllAtOnce | Strategy::Rolling if !self.steps.is_empty() => {
                errors.push(format!("{path}.steps"), "steps are for strategy: Canary");
            }
            _ => {}
        }
        if self.max_unavailable.is_some() && self.strategy != Strategy::Rolling {
            errors.push(
                format!("{path}.maxUnavailable"),
                "maxUnavailable is for strategy: Rolling",
            );
        }
        match self.max_unavailable {
            Some(Amount::Nodes(0)) | Some(Amount::Percent(0)) => {
                errors.push(
                    format!("{path}.maxUnavailable"),
                    "at least one node must be able to update",
                );
            }
            Some(Amount::Percent(p)) if p > 100 => {
                errors.push(
                    format!("{path}.maxUnavailable"),
                    format!("{p}% is more than all the nodes"),
                );
            }
            _ => {}
        }
        for (i, step) in self.steps.iter().enumerate() {
            let at = format!("{path}.steps[{i}]");
            let set = [
                step.nodes.is_some(),
                step.percent.is_some(),
                step.selector.is_some(),
                step.pause.is_some(),
            ]
            .iter()
            .filter(|s| **s)
            .count();
            if set != 1 {
                errors.push(at.clone(), "a step is exactly one of nodes, percent, selector or pause");
            }
            if step.percent.is_some_and(|p| p == 0 || p > 100) {
                errors.push(format!("{at}.percent"), "a percentage from 1 to 100");
            }
            if step.nodes == Some(0) {
                errors.push(format!("{at}.nodes"), "at least one node");
            }
            if let Some(Pause::For(d)) = step.pause
                && d.as_duration() > Duration::from_secs(30 * 24 * 3600)
            {
                errors.push(format!("{at}.pause"), "at most 30 days");
            }
            if let Some(s) = &step.selector {
                if s.match_labels.is_empty() && s.match_expressions.is_empty() {
                    errors.push(format!("{at}.selector"), "matchLabels or matchExpressions");
                }
                s.selector(&format!("{at}.selector"), errors);
            }
        }
        let limit = Duration::from_secs(30 * 24 * 3600);
        for (field, d) in [
            ("health.minReady", self.health.min_ready),
            ("progressDeadline", self.progress_deadline),
        ] {
            if d.as_duration() > limit {
                errors.push(format!("{path}.{field}"), "at most 30 days");
            }
        }
        if self.max_nodes_per_minute == Some(0) {
            errors.push(format!("{path}.maxNodesPerMinute"), "at least 1");
        }
        if self.progress_deadline.as_duration() < Duration::from_secs(1) {
            errors.push(format!("{path}.progressDeadline"), "at least 1s");
        }
        if let Some(r) = self.health.max_tick_error_rate
            && !(0.0..=1.0).contains(&r)
        {
            errors.push(format!("{path}.health.maxTickErrorRate"), "a share from 0 to 1");
        }
        for (i, b) in self.health.telemetry.iter().enumerate() {
            let at = format!("{path}.health.telemetry[{i}]");
            if b.sensor.is_empty() {
                errors.push(format!("{at}.sensor"), "the name of a reading the plugin emits");
            }
            if b.min.is_none() && b.max.is_none() {
                errors.push(at.clone(), "min, max or both");
            }
            if b.min.zip(b.max).is_some_and(|(lo, hi)| lo > hi)
                || b.min.is_some_and(f64::is_nan)
                || b.max.is_some_and(f64::is_nan)
            {
                errors.push(at, "min must not be above max");
            }
        }
    }
}

runs_a_plugin! {
    /// One numbered, immutable revision of what a Plugin runs.
    #[serde(rename_all = "camelCase")]
    pub struct Revision (wire RevisionWire) {
        pub number: u64,
        /// The Plugin generation that made it.
        pub generation: u64,
        pub image: String,
        pub digest: Digest,
        /// Milliseconds since the Unix epoch.
        #[serde(deserialize_with = "crate::time::ms")]
        pub created: u64,
        /// Who applied it (empty when not known).
        #[serde(default, skip_serializing_if = "String::is_empty")]
        pub by: String,
        /// What changed from the revision before.
        pub change: String,
        /// How its rollout ended: empty while it has not.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        pub outcome: String,
    }
}

impl Revision {
    /// Whether it runs the same as `digest` with `run`.
    pub fn runs(&self, digest: &Digest, run: &RunSpec) -> bool {
        self.digest == *digest && self.run == *run
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum RolloutPhase {
    #[default]
    Progressing,
    /// Waiting at a pause step, or paused by someone.
    Paused,
    Complete,
    /// Stopped; every updated node went back to the stable revision.
    Aborted,
}

impl RolloutPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutPhase::Progressing => "Progressing",
            RolloutPhase::Paused => "Paused",
            RolloutPhase::Complete => "Complete",
            RolloutPhase::Aborted => "Aborted",
        }
    }
}

/// `status.rollout`: where the rollout of the newest revision stands. The
/// hub's reconciler keeps it in the store, so a restarted hub resumes at
/// the same step with the same nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// The revision being rolled out (the newest).
    pub revision: u64,
    /// The revision nodes go back to: the last one rolled out completely.
    #[serde(default)]
    pub stable_revision: u64,
    #[serde(default)]
    pub phase: RolloutPhase,
    /// Canary: the step being worked on (index into spec.rollout.steps;
    /// the number of steps once they are all done).
    #[serde(default)]
    pub step: u32,
    /// When the current step started (ms since the epoch).
    #[serde(default, deserialize_with = "crate::time::ms")]
    #[schemars(schema_with = "crate::schema::timestamp")]
    pub step_started: u64,
    /// When the rollout last moved (a node became healthy, a step ended).
    #[serde(default, deserialize_with = "crate::time::ms")]
    #[schemars(schema_with = "crate::schema::timestamp")]
    pub last_progress: u64,
    /// The revision each node is assigned; empty once the rollout is
    /// complete (every node the Plugin is placed on runs the newest).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub nodes: BTreeMap<String, u64>,
    /// Since when each node has run its assigned revision without failing.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "crate::time::ms_map"
    )]
    pub ready_since: BTreeMap<String, u64>,
    /// Nodes the new revision failed on, and how.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub failed: BTreeMap<String, String>,
    /// Paused by someone (`harvester rollout pause`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    /// `harvester rollout promote`: the step it ends (a pause), or every
    /// remaining step when it is the number of steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promote: Option<u32>,
    /// What it waits for, or why it stopped.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// When nodes were last given the new revision, within the last
    /// minute (for maxNodesPerMinute).
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "crate::time::ms_list"
    )]
    pub recent_updates: Vec<u64>,
    /// Why it is paused or was aborted.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::status::optional_reason"
    )]
    pub reason: Option<crate::Reason>,
    /// The generation nodes on the stable revision run.
    #[serde(default)]
    pub stable_generation: u64,
}

runs_a_plugin! {
    /// What a node goes back to when the revision it was given fails.
    #[serde(rename_all = "camelCase")]
    pub struct Fallback (wire FallbackWire) {
        pub generation: u64,
        pub digest: Digest,
        pub image: String,
    }
}

/// Sent with an assignment while a progressive rollout updates the node:
/// the node judges the revision by `health` itself and, when it fails,
/// runs `fallback` until the hub says otherwise, hub or no hub.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Guard {
    pub revision: u64,
    pub health: Health,
    pub fallback: Fallback,
}

/// What a node reports about a guarded revision.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeHealth {
    pub revision: u64,
    /// Since when it has passed every rule for minReady (ms since the
    /// epoch); 0 while it has not yet.
    #[serde(default, skip_serializing_if = "is_zero", deserialize_with = "crate::time::ms")]
    #[schemars(schema_with = "crate::schema::timestamp")]
    pub healthy_since: u64,
    /// The rule it broke; the node went back to its fallback.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub failure: String,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl RolloutStatus {
    /// The revision `node` (one the Plugin is placed on) is assigned.
    pub fn revision_of(&self, node: &str) -> Option<u64> {
        match self.nodes.get(node) {
            Some(r) => Some(*r),
            None => (self.phase == RolloutPhase::Complete).then_some(self.revision),
        }
    }
}

/// `GET /api/v1alpha1/plugins/NAME/revisions`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevisionList {
    pub items: Vec<Revision>,
    #[serde(default)]
    pub rollout: Option<RolloutStatus>,
}

/// The answer to `POST .../rollout/{pause,resume,promote,abort}`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutDecision {
    pub plugin: String,
    pub action: String,
    #[serde(default)]
    pub rollout: Option<RolloutStatus>,
}

/// The answer to `POST .../rollout/undo`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Undone {
    pub plugin: String,
    pub undone_to: u64,
    pub generation: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<RolloutSpec, String> {
        let spec: RolloutSpec = serde_yaml::from_str(yaml).map_err(|e| e.to_string())?;
        let mut errors = ValidationErrors::default();
        spec.validate("spec.rollout", &mut errors);
        errors.into_result().map(|_| spec).map_err(|e| e.to_string())
    }

    #[test]
    fn the_issue_s_canary_reads_and_wrong_steps_are_refused_by_path() {
        let spec = parse(
            "strategy: Canary\nsteps:\n  - nodes: 1\n  - pause: 2m\n  - pause: {}\n  - percent: 50\n  - selector: {matchLabels: {board: pi4}}\nhealth: {minReady: 30s, maxRestarts: 0}\nprogressDeadline: 10m\nmaxFailedNodes: 1\n",
        )
        .unwrap();
        assert_eq!(spec.steps.len(), 5);
        assert_eq!(spec.steps[1].pause, Some(Pause::For("2m".parse().unwrap())));
        assert_eq!(spec.steps[2].pause, Some(Pause::UntilPromoted));
        assert_eq!(spec.steps[4].describe(), "nodes with board=pi4");
        let e = parse("strategy: Canary\nsteps: [{nodes: 1, percent: 5}]\n").unwrap_err();
        assert!(e.contains("spec.rollout.steps[0]: a step is exactly one of"), "{e}");
        let e = parse("strategy: Canary\n").unwrap_err();
        assert!(e.contains("spec.rollout.steps"), "{e}");
        let e = parse("strategy: Rolling\nmaxUnavailable: 0\n").unwrap_err();
        assert!(e.contains("spec.rollout.maxUnavailable"), "{e}");
        let e = parse("strategy: Rolling\nmaxUnavailable: lots\n").unwrap_err();
        assert!(e.contains("percentage"), "{e}");
        assert!(
            parse("strategy: Rolling\nmaxTickRate: 1\n")
                .unwrap_err()
                .contains("unknown field")
        );
        let e = parse("strategy: Canary\nsteps: [{pause: 1000h}]\n").unwrap_err();
        assert!(e.contains("spec.rollout.steps[0].pause: at most 30 days"), "{e}");
    }

    #[test]
    fn telemetry_bounds_name_the_reading_that_broke_them() {
        let spec =
            parse("strategy: Rolling\nhealth: {telemetry: [{sensor: temperature, min: -40, max: 85}]}\n").unwrap();
        let b = &spec.health.telemetry[0];
        assert_eq!(b.broken_by(21.5), None);
        assert_eq!(b.broken_by(120.0).unwrap(), "temperature read 120, outside [-40, 85]");
        assert!(b.broken_by(f64::NAN).is_some());
        let e = parse("strategy: Rolling\nhealth: {telemetry: [{sensor: t, min: 5, max: 1}]}\n").unwrap_err();
        assert!(
            e.contains("spec.rollout.health.telemetry[0]: min must not be above max"),
            "{e}"
        );
        let e = parse("strategy: Rolling\nhealth: {maxTickErrorRate: 2}\n").unwrap_err();
        assert!(e.contains("maxTickErrorRate"), "{e}");
    }

    #[test]
    fn amounts_are_counts_or_shares_rounded_up() {
        let spec = parse("strategy: Rolling\nmaxUnavailable: 10%\n").unwrap();
        assert_eq!(spec.max_unavailable, Some(Amount::Percent(10)));
        assert_eq!(Amount::Percent(10).of(1000), 100);
        assert_eq!(Amount::Percent(10).of(4), 1);
        assert_eq!(Amount::Percent(25).of(0), 0);
        assert_eq!(Amount::Nodes(3).of(2), 2);
        assert_eq!(serde_json::to_string(&Amount::Percent(10)).unwrap(), "\"10%\"");
    }
}
