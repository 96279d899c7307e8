use super::*;
use harvester_api::Digest;
use harvester_api::resources::Labels;

fn revision(number: u64, generation: u64) -> Revision {
    Revision {
        number,
        generation,
        image: "probe.wasm".into(),
        digest: Digest::of(&number.to_be_bytes()),
        created: 0,
        by: String::new(),
        change: String::new(),
        outcome: String::new(),
        run: Default::default(),
    }
}

fn spec(yaml: &str) -> RolloutSpec {
    serde_yaml::from_str(yaml).unwrap()
}

/// Four ready nodes; `reports` says what each runs: (generation, phase, restarts).
struct Fleet {
    labels: Vec<Labels>,
    reports: BTreeMap<String, PluginOnNode>,
    ready: Vec<bool>,
}

const NAMES: [&str; 4] = ["n1", "n2", "n3", "n4"];

impl Fleet {
    fn new() -> Fleet {
        let mut f = Fleet {
            labels: NAMES
                .iter()
                .map(|n| {
                    harvester_api::resources::parse_labels(&format!(
                        "board={}",
                        if *n == "n3" { "pi4" } else { "zero" }
                    ))
                    .unwrap()
                })
                .collect(),
            reports: BTreeMap::new(),
            ready: vec![true; 4],
        };
        for n in NAMES {
            f.run(n, 1, Phase::Running, 0);
        }
        f
    }

    fn run(&mut self, node: &str, generation: u64, phase: Phase, restarts: u32) {
        self.reports.insert(
            node.into(),
            PluginOnNode {
                phase,
                generation,
                digest: None,
                restarts,
                reason: None,
                message: String::new(),
                health: None,
            },
        );
    }

    /// Every node runs what it is assigned, healthily.
    fn obey(&mut self, s: &RolloutStatus, generation_of: impl Fn(u64) -> u64) {
        for (n, r) in &s.nodes {
            self.run(n, generation_of(*r), Phase::Running, 0);
        }
    }

    fn advance(&self, prev: Option<&RolloutStatus>, spec: &RolloutSpec, now: u64) -> RolloutStatus {
        let target = revision(2, 2);
        let stable = revision(1, 1);
        let views: Vec<NodeView<'_>> = NAMES
            .iter()
            .enumerate()
            .map(|(i, n)| NodeView {
                name: n,
                labels: &self.labels[i],
                ready: self.ready[i],
                reported: self.reports.get(*n),
            })
            .collect();
        advance(
            prev,
            &Inputs {
                spec,
                target: &target,
                stable: Some(&stable),
                generation: 2,
                nodes: &views,
                now,
            },
        )
    }
}

fn on(s: &RolloutStatus, revision: u64) -> Vec<&'static str> {
    NAMES
        .iter()
        .copied()
        .filter(|n| s.revision_of(n) == Some(revision))
        .collect()
}

const S: u64 = 1000;

#[test]
fn all_at_once_sends_every_node_the_new_revision_and_completes_once_they_run_it() {
    let mut f = Fleet::new();
    let spec = spec("health: {minReady: 10s}");
    let s = f.advance(None, &spec, 0);
    assert_eq!(on(&s, 2), NAMES);
    let s = f.advance(Some(&s), &spec, S);
    assert_eq!(s.phase, RolloutPhase::Progressing, "the nodes do not run it yet");
    f.obey(&s, |r| r);
    let s = f.advance(Some(&s), &spec, 2 * S);
    assert_eq!((s.phase, s.stable_revision), (RolloutPhase::Complete, 2));
    assert!(s.ready_since.is_empty());
}

#[test]
fn all_at_once_judges_nothing_and_sends_nobody_back() {
    let mut f = Fleet::new();
    let spec = spec("progressDeadline: 5s");
    let s = f.advance(None, &spec, 0);
    f.run("n1", 2, Phase::CrashLoopBackOff, 5);
    let s = f.advance(Some(&s), &spec, 60 * S);
    assert_eq!(s.phase, RolloutPhase::Progressing);
    assert_eq!(on(&s, 2), NAMES);
}

#[test]
fn rolling_updates_one_node_at_a_time_each_healthy_before_the_next() {
    let mut f = Fleet::new();
    let spec = spec("strategy: Rolling\nmaxUnavailable: 1\nhealth: {minReady: 5s}");
    let mut s = f.advance(None, &spec, 0);
    let mut t = 0;
    let mut order = Vec::new();
    while s.phase != RolloutPhase::Complete {
        let updating: Vec<&str> = on(&s, 2)
            .into_iter()
            .filter(|n| !order.contains(&n.to_string()))
            .collect();
        assert!(updating.len() <= 1, "{updating:?} at once");
        order.extend(updating.iter().map(|n| n.to_string()));
        f.obey(&s, |r| r);
        t += S;
        s = f.advance(Some(&s), &spec, t);
        assert!(t < 100 * S, "{s:?}");
    }
    assert_eq!(order, NAMES);
}

#[test]
fn a_canary_that_fails_goes_back_and_no_other_node_ever_gets_it() {
    let mut f = Fleet::new();
    let spec = spec("strategy: Canary\nsteps: [{nodes: 1}, {pause: {}}, {percent: 100}]\nhealth: {minReady: 5s}");
    let s = f.advance(None, &spec, 0);
    assert_eq!(on(&s, 2), ["n1"]);
    // It crashes on its third tick, again and again.
    f.run("n1", 2, Phase::CrashLoopBackOff, 3);
    let s = f.advance(Some(&s), &spec, S);
    assert_eq!(s.phase, RolloutPhase::Aborted);
    assert!(
        s.message.contains("revision 2 failed on n1: CrashLoopBackOff"),
        "{}",
        s.message
    );
    assert_eq!(on(&s, 1), NAMES, "every node on the stable revision");
    // And it stays so.
    let s = f.advance(Some(&s), &spec, 60 * S);
    assert_eq!(on(&s, 1), NAMES);
}

#[test]
fn a_canary_waits_at_its_pause_until_promoted_then_updates_the_rest() {
    let mut f = Fleet::new();
    let spec = spec(
        "strategy: Canary\nsteps: [{selector: {matchLabels: {board: pi4}}}, {pause: {}}, {percent: 50}]\nhealth: {minReady: 5s}",
    );
    let s = f.advance(None, &spec, 0);
    assert_eq!(on(&s, 2), ["n3"]);
    f.obey(&s, |r| r);
    let s = f.advance(Some(&s), &spec, S);
    let s = f.advance(Some(&s), &spec, 7 * S);
    assert_eq!((s.phase, s.step), (RolloutPhase::Paused, 1), "{s:?}");
    // A paused step holds past the progress deadline.
    let s = f.advance(Some(&s), &spec, 3600 * S);
    assert_eq!(s.phase, RolloutPhase::Paused);
    let mut promoted = s.clone();
    promoted.promote = Some(1);
    let s = f.advance(Some(&promoted), &spec, 3601 * S);
    assert_eq!(s.step, 2);
    assert_eq!(on(&s, 2), ["n1", "n3"], "50%: the canary and the first other node");
    f.obey(&s, |r| r);
    let s = f.advance(Some(&s), &spec, 3602 * S);
    let s = f.advance(Some(&s), &spec, 3610 * S);
    assert_eq!(on(&s, 2), NAMES, "after the last step, every node");
    f.obey(&s, |r| r);
    let s = f.advance(Some(&s), &spec, 3611 * S);
    let s = f.advance(Some(&s), &spec, 3620 * S);
    assert_eq!(s.phase, RolloutPhase::Complete);
}

#[test]
fn every_node_running_the_revision_is_not_complete_until_each_held_min_ready() {
    // A promoted canary: the rest of the nodes start it at once.
    let mut f = Fleet::new();
    let canary = spec("strategy: Canary\nsteps: [{nodes: 1}, {pause: {}}, {percent: 100}]\nhealth: {minReady: 10s}");
    let s = f.advance(None, &canary, 0);
    f.obey(&s, |r| r);
    let s = f.advance(Some(&s), &canary, S);
    let mut s = f.advance(Some(&s), &canary, 11 * S);
    assert_eq!(s.phase, RolloutPhase::Paused);
    s.promote = Some(3);
    let s = f.advance(Some(&s), &canary, 12 * S);
    assert_eq!(on(&s, 2), NAMES);
    f.obey(&s, |r| r);
    let s = f.advance(Some(&s), &canary, 13 * S);
    // Every node runs it, and a failure now would still roll it back.
    let s = f.advance(Some(&s), &canary, 23 * S - 1);
    assert_eq!(s.phase, RolloutPhase::Progressing, "{s:?}");
    assert_eq!(s.stable_revision, 1);
    assert!(
        s.message.ends_with("waiting for n2, n3, n4 to be healthy for 10s"),
        "{}",
        s.message
    );
    let s = f.advance(Some(&s), &canary, 23 * S);
    assert_eq!((s.phase, s.stable_revision), (RolloutPhase::Complete, 2), "{s:?}");

    // Rolling: the last node to update holds the rollout for its minReady.
    let mut f = Fleet::new();
    let spec = spec("strategy: Rolling\nmaxUnavailable: 1\nhealth: {minReady: 2s}");
    let mut s = f.advance(None, &spec, 0);
    let mut t = 0;
    while on(&s, 2).len() < NAMES.len() {
        f.obey(&s, |r| r);
        t += S;
        s = f.advance(Some(&s), &spec, t);
        t += 2 * S;
        s = f.advance(Some(&s), &spec, t);
    }
    f.obey(&s, |r| r);
    let s = f.advance(Some(&s), &spec, t + S);
    assert_eq!(s.phase, RolloutPhase::Progressing, "{s:?}");
    assert!(
        s.message.contains("waiting for n4 to be healthy for 2s"),
        "{}",
        s.message
    );
    let s = f.advance(Some(&s), &spec, t + 3 * S);
    assert_eq!(s.phase, RolloutPhase::Complete, "{s:?}");
}

#[test]
fn a_node_offline_mid_rollout_does_not_hang_it_the_deadline_decides() {
    let mut f = Fleet::new();
    f.ready[1] = false;
    let spec = spec("strategy: Rolling\nhealth: {minReady: 1s}\nprogressDeadline: 30s");
    let mut s = f.advance(None, &spec, 0);
    let mut t = 0;
    while s.phase == RolloutPhase::Progressing {
        f.obey(&s, |r| r);
        // n2 never answers: it reports its old revision.
        f.run("n2", 1, Phase::Running, 0);
        t += S;
        s = f.advance(Some(&s), &spec, t);
    }
    assert_eq!(s.phase, RolloutPhase::Aborted);
    assert!(s.message.contains("no progress for 30s"), "{}", s.message);
    assert!(t < 40 * S, "{t}");
    assert_eq!(on(&s, 1), NAMES);
}

#[test]
fn a_version_that_cannot_load_counts_as_failed_and_the_old_one_runs_on() {
    let mut f = Fleet::new();
    let spec = spec("strategy: Canary\nsteps: [{nodes: 1}]");
    let s = f.advance(None, &spec, 0);
    f.reports.get_mut("n1").unwrap().reason = Some(Reason::LoadFailed);
    f.reports.get_mut("n1").unwrap().message = "init: VERSION=x is not a number".into();
    let s = f.advance(Some(&s), &spec, S);
    assert_eq!(s.phase, RolloutPhase::Aborted);
    assert!(s.message.contains("LoadFailed: init"), "{}", s.message);
}

#[test]
fn paused_by_someone_it_assigns_nothing_new() {
    let mut f = Fleet::new();
    let spec = spec("strategy: Rolling");
    let s = f.advance(None, &spec, 0);
    f.obey(&s, |r| r);
    let mut paused = s.clone();
    paused.paused = true;
    let s = f.advance(Some(&paused), &spec, 60 * S);
    assert_eq!(s.phase, RolloutPhase::Paused);
    assert_eq!(on(&s, 2), ["n1"]);
}

#[test]
fn a_first_revision_goes_everywhere_at_once_whatever_the_strategy() {
    let f = Fleet::new();
    let spec = spec("strategy: Canary\nsteps: [{nodes: 1}, {pause: {}}]\nhealth: {minReady: 1s}");
    let target = revision(1, 1);
    let views: Vec<NodeView<'_>> = NAMES
        .iter()
        .enumerate()
        .map(|(i, n)| NodeView {
            name: n,
            labels: &f.labels[i],
            ready: true,
            reported: f.reports.get(*n),
        })
        .collect();
    let inputs = |now| Inputs {
        spec: &spec,
        target: &target,
        stable: None,
        generation: 1,
        nodes: &views,
        now,
    };
    // The nodes run it already (Fleet reports generation 1 everywhere).
    let s = advance(None, &inputs(0));
    assert_eq!(on(&s, 1), NAMES);
    assert_eq!((s.phase, s.stable_revision), (RolloutPhase::Complete, 1));
}

#[test]
fn at_most_max_nodes_per_minute_start_the_new_revision() {
    let mut f = Fleet::new();
    let spec = spec("strategy: Rolling\nmaxUnavailable: 100%\nmaxNodesPerMinute: 2\nhealth: {minReady: 1s}");
    let s = f.advance(None, &spec, 0);
    assert_eq!(on(&s, 2), ["n1", "n2"]);
    f.obey(&s, |r| r);
    let s = f.advance(Some(&s), &spec, 30 * S);
    assert_eq!(on(&s, 2).len(), 2, "still within the minute");
    let s = f.advance(Some(&s), &spec, 61 * S);
    assert_eq!(on(&s, 2), NAMES);
}

#[test]
fn the_next_check_is_when_a_node_s_min_ready_or_a_timed_pause_ends() {
    let mut f = Fleet::new();
    let spec =
        spec("strategy: Canary\nsteps: [{nodes: 1}, {pause: 30s}]\nhealth: {minReady: 5s}\nprogressDeadline: 60s");
    let s = f.advance(None, &spec, 0);
    f.obey(&s, |r| r);
    let s = f.advance(Some(&s), &spec, 2 * S);
    assert_eq!(
        next_check(&s, &spec, 2 * S),
        Some(7 * S),
        "n1 healthy from 2 s, for 5 s"
    );
    let s = f.advance(Some(&s), &spec, 7 * S);
    assert_eq!((s.phase, s.step), (RolloutPhase::Paused, 1));
    assert_eq!(next_check(&s, &spec, 7 * S), Some(37 * S), "the pause started at 7 s");
    let s = f.advance(Some(&s), &spec, 37 * S);
    assert_eq!(on(&s, 2), NAMES);
}

#[test]
fn what_a_node_says_is_kept_within_a_bound() {
    let mut f = Fleet::new();
    let spec = spec("strategy: Rolling");
    let s = f.advance(None, &spec, 0);
    let n1 = f.reports.get_mut("n1").unwrap();
    n1.generation = 2;
    n1.health = Some(harvester_api::rollout::NodeHealth {
        revision: 2,
        healthy_since: 0,
        failure: "é".repeat(100_000),
    });
    let s = f.advance(Some(&s), &spec, S);
    assert_eq!(s.phase, RolloutPhase::Aborted);
    assert!(s.failed["n1"].len() <= 520, "{}", s.failed["n1"].len());
    assert!(s.message.len() < 700);
}
