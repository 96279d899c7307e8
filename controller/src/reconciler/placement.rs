//! Which plugins run on which nodes: a node's labels must include the
//! plugin's selector, the node must have every device the grants need, no
//! two plugins on a node may hold the same output pin or LED, and the
//! `limits.memory` of a node's plugins may not add up to more than the
//! memory it has for plugins.
//!
//! The one implementation of those rules: the reconciler places the whole
//! desired state with it, and apply's admission check asks it whether a
//! new plugin would be kept off a node that exists now.

use harvester_api::grants::Holdings;
use harvester_api::resources::{Node, Plugin, required_devices};
use std::collections::BTreeMap;

/// Whether `plugin` belongs on `node`, exclusivity aside.
pub(crate) fn places(plugin: &Plugin, node: &Node) -> bool {
    plugin.spec.node_selector().matches(&node.metadata.labels)
        && required_devices(&plugin.spec.run.grants)
            .iter()
            .all(|d| node.status.devices.iter().any(|have| have == d))
}

/// Where every plugin goes.
#[derive(Debug, Default)]
pub(crate) struct Placement<'a> {
    /// Per node, the plugins it runs, in placement order.
    pub on_node: BTreeMap<&'a str, Vec<&'a Plugin>>,
    /// Per plugin, the nodes it runs on.
    pub nodes_of: BTreeMap<&'a str, Vec<&'a Node>>,
    /// Per plugin, why it is kept off nodes it otherwise belongs on.
    pub clashes: BTreeMap<&'a str, Vec<String>>,
    /// Per plugin, the nodes too short of memory for it, and the numbers.
    pub short_of_memory: BTreeMap<&'a str, Vec<String>>,
}

/// Oldest first (creation time, then name): the order placement honours,
/// so a plugin applied later that wants a pin or an LED already granted on
/// a node waits instead of taking it.
pub(crate) fn oldest_first(plugins: &[Plugin]) -> Vec<&Plugin> {
    let mut by_age: Vec<&Plugin> = plugins.iter().collect();
    by_age.sort_by(|a, b| {
        (a.metadata.creation_timestamp, &a.metadata.name).cmp(&(b.metadata.creation_timestamp, &b.metadata.name))
    });
    by_age
}

/// Places `plugins` in the order given; earlier ones keep what they hold.
pub(crate) fn place<'a>(plugins: impl IntoIterator<Item = &'a Plugin>, nodes: &'a [Node]) -> Placement<'a> {
    let mut out = Placement::default();
    let mut held: BTreeMap<&str, Holdings> = BTreeMap::new();
    let mut memory: BTreeMap<&str, u64> = BTreeMap::new();
    for plugin in plugins {
        let name = plugin.metadata.name.as_str();
        let grants = &plugin.spec.run.grants;
        let asks = plugin.spec.run.limits.memory;
        for node in nodes.iter().filter(|n| places(plugin, n)) {
            let node_name = node.metadata.name.as_str();
            let placed = memory.get(node_name).copied().unwrap_or(0);
            if let Some(has) = node.status.memory.map(|m| m.allocatable)
                && placed.saturating_add(asks.bytes()) > has.bytes()
            {
                out.short_of_memory.entry(name).or_default().push(format!(
                    "node {node_name} has {has} for plugins, {} of it placed; this plugin asks for {asks} (limits.memory)",
                    harvester_api::MemorySize(placed)
                ));
                continue;
            }
            if let Err(clashes) = held.entry(node_name).or_default().claim(name, grants) {
                let c = &clashes[0];
                out.clashes.entry(name).or_default().push(format!(
                    "{} is already granted to plugin {} on node {node_name}",
                    c.what, c.holder
                ));
                continue;
            }
            *memory.entry(node_name).or_default() += asks.bytes();
            out.on_node.entry(node_name).or_default().push(plugin);
            out.nodes_of.entry(name).or_default().push(node);
        }
    }
    out
}

/// Apply's admission check: the first of `incoming` (by position) that
/// would be kept off a node registered now because `stored` plugins, or
/// incoming ones before it, hold one of its pins or LEDs; and why.
/// Plugins that land on no node now pass: the reconciler guards nodes
/// that come later (condition GrantConflict).
pub(crate) fn refused_at_apply(stored: &[Plugin], incoming: &[&Plugin], nodes: &[Node]) -> Option<(usize, String)> {
    // Only plugins holding an output pin or an LED can clash, and only on
    // nodes they land on: most applies stop here, at no cost.
    let exclusive = |p: &Plugin| p.spec.run.grants.holds_exclusive();
    let contenders: Vec<&Plugin> = incoming.iter().copied().filter(|p| exclusive(p)).collect();
    if !contenders.iter().any(|p| nodes.iter().any(|n| places(p, n))) {
        return None;
    }
    let replaced = |p: &Plugin| incoming.iter().any(|q| q.metadata.name == p.metadata.name);
    let kept = oldest_first(stored)
        .into_iter()
        .filter(|p| exclusive(p) && !replaced(p));
    let placement = place(kept.chain(contenders), nodes);
    incoming.iter().enumerate().find_map(|(i, p)| {
        let why = placement.clashes.get(p.metadata.name.as_str())?;
        Some((
            i,
            format!(
                "spec.grants: {} (two plugins on one node may not share an output pin or an LED)",
                why[0]
            ),
        ))
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use harvester_api::resources::parse_documents;

    pub(crate) fn plugin(name: &str, created: u64, yaml_spec: &str) -> Plugin {
        let text = format!(
            "apiVersion: harvester.dev/v1alpha1\nkind: Plugin\nmetadata: {{name: {name}}}\nspec:\n  image: p.wasm\n{yaml_spec}"
        );
        match parse_documents(&text).unwrap().remove(0) {
            harvester_api::resources::Object::Plugin(mut p) => {
                p.metadata.creation_timestamp = created;
                p
            }
            _ => unreachable!(),
        }
    }

    pub(crate) fn node(name: &str, labels: &[(&str, &str)], devices: &[&str]) -> Node {
        let mut n: Node = serde_json::from_value(serde_json::json!({
            "apiVersion": "harvester.dev/v1alpha1", "kind": "Node", "metadata": {"name": name}
        }))
        .unwrap();
        n.metadata.labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        n.status.devices = devices.iter().map(|d| d.to_string()).collect();
        n
    }

    fn names<'a>(ps: Option<&Vec<&'a Plugin>>) -> Vec<&'a str> {
        ps.map(|v| v.iter().map(|p| p.metadata.name.as_str()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn placement_needs_the_labels_and_the_hardware() {
        let sensor = node("n", &[("role", "sensor")], &["gpio", "leds", "dht22"]);
        let hub = node("n", &[("role", "hub")], &["gpio", "leds", "buzzer"]);
        let p = plugin(
            "p",
            1,
            "  nodeSelector: {role: sensor}\n  grants: {dht22: {pin: 4}, leds: {indices: [1]}}\n",
        );
        assert!(places(&p, &sensor) && !places(&p, &hub));
        let buzz = plugin("p", 1, "  grants: {buzzer: {}}\n");
        assert!(!places(&buzz, &sensor) && places(&buzz, &hub));
        let anywhere = plugin("p", 1, "  grants: {system: {}, net: {hosts: [127.0.0.1]}}\n");
        assert!(places(&anywhere, &sensor) && places(&anywhere, &hub));
    }

    #[test]
    fn a_board_gets_no_more_plugin_memory_than_it_has_and_the_plugin_kept_off_says_why() {
        let mut zero = node("zero", &[], &[]);
        zero.status.memory = Some(harvester_api::resources::NodeMemory {
            total: harvester_api::MemorySize::mebibytes(512),
            allocatable: harvester_api::MemorySize::mebibytes(384),
        });
        // An older node that does not say: no check there.
        let old = node("old", &[], &[]);
        let nodes = [zero, old];
        let plugins = [
            plugin(
                "first",
                10,
                "  limits: {memory: 256Mi}
",
            ),
            plugin(
                "second",
                20,
                "  limits: {memory: 128Mi}
",
            ),
            plugin(
                "third",
                30,
                "  limits: {memory: 1Mi}
",
            ),
        ];
        let placement = place(oldest_first(&plugins), &nodes);
        assert_eq!(names(placement.on_node.get("zero")), ["first", "second"]);
        assert_eq!(names(placement.on_node.get("old")), ["first", "second", "third"]);
        assert_eq!(
            placement.short_of_memory["third"],
            ["node zero has 384Mi for plugins, 384Mi of it placed; this plugin asks for 1Mi (limits.memory)"]
        );
        assert!(!placement.short_of_memory.contains_key("first"));
    }

    #[test]
    fn the_older_plugin_keeps_a_pin_or_an_led_and_the_newer_says_why_it_waits() {
        let nodes = [
            node("pi4", &[("role", "sensor")], &["gpio", "leds"]),
            node("lab", &[("role", "lab")], &["gpio", "leds"]),
        ];
        let plugins = [
            plugin("newer", 20, "  grants: {gpio: {pins: [21]}, leds: {indices: [5, 6]}}\n"),
            plugin("older", 10, "  grants: {gpio: {pins: [20]}, leds: {indices: [5]}}\n"),
            plugin(
                "free",
                30,
                "  grants: {leds: {indices: [6]}}\n  nodeSelector: {role: sensor}\n",
            ),
        ];
        let placement = place(oldest_first(&plugins), &nodes);
        assert_eq!(names(placement.on_node.get("lab")), ["older"]);
        assert_eq!(names(placement.on_node.get("pi4")), ["older", "free"]);
        assert_eq!(
            placement.clashes["newer"],
            [
                "LED 5 is already granted to plugin older on node pi4",
                "LED 5 is already granted to plugin older on node lab"
            ]
        );
        // newer took nothing where it waits, so LED 6 stayed free for a
        // plugin applied after it.
        assert!(!placement.clashes.contains_key("free"));
        assert!(!placement.nodes_of.contains_key("newer"));
        assert_eq!(placement.nodes_of["older"].len(), 2);
    }

    #[test]
    fn apply_refuses_only_what_would_clash_on_a_node_that_exists() {
        let nodes = [node("pi4", &[("role", "sensor")], &["gpio", "leds"])];
        let stored = [plugin(
            "first",
            1,
            "  grants: {gpio: {pins: [5]}, leds: {indices: [1, 2]}}\n",
        )];
        let second = plugin("second", 0, "  grants: {gpio: {pins: [6]}, leds: {indices: [2]}}\n");
        let (i, why) = refused_at_apply(&stored, &[&second], &nodes).unwrap();
        assert_eq!(i, 0);
        assert!(
            why.contains("LED 2 is already granted to plugin first on node pi4"),
            "{why}"
        );

        // Two new ones in one manifest: the later one is refused.
        let pins = plugin("pins", 0, "  grants: {gpio: {pins: [17]}}\n");
        let pins2 = plugin("pins2", 0, "  grants: {gpio: {pins: [17, 27]}}\n");
        let (i, why) = refused_at_apply(&stored, &[&pins, &pins2], &nodes).unwrap();
        assert_eq!(i, 1);
        assert!(
            why.starts_with("spec.grants: GPIO pin 17 is already granted to plugin pins on node pi4"),
            "{why}"
        );

        // A new version of the holder itself, one for nodes that do not
        // exist yet, and one without exclusive grants all pass.
        let first_again = plugin("first", 0, "  grants: {gpio: {pins: [5]}, leds: {indices: [2]}}\n");
        assert_eq!(refused_at_apply(&stored, &[&first_again], &nodes), None);
        let lab = plugin(
            "lab",
            0,
            "  nodeSelector: {role: lab}\n  grants: {leds: {indices: [1]}}\n",
        );
        assert_eq!(refused_at_apply(&stored, &[&lab], &nodes), None);
        let system = plugin("system", 0, "  grants: {system: {}}\n");
        assert_eq!(refused_at_apply(&stored, &[&system], &nodes), None);
    }
}

#[cfg(test)]
mod properties {
    use super::tests::{node, plugin};
    use super::*;
    use harvester_api::Grants;
    use proptest::prelude::*;

    const DEVICES: [&str; 5] = ["gpio", "leds", "buzzer", "dht22", "bme680"];

    fn grants_needing(needs: &[bool]) -> Grants {
        let mut g = Grants::default();
        if needs[0] {
            g.gpio = Some(harvester_api::grants::GpioGrant { pins: vec![17] });
        }
        if needs[1] {
            g.leds = Some(harvester_api::grants::LedsGrant { indices: vec![1] });
        }
        if needs[2] {
            g.buzzer = Some(Default::default());
        }
        if needs[3] {
            g.dht22 = Some(harvester_api::grants::Dht22Grant { pin: 4 });
        }
        if needs[4] {
            g.bme680 = Some(Default::default());
        }
        g
    }

    proptest! {
        /// A plugin lands on a node exactly when the node's labels include
        /// the selector and the node has every device the grants need.
        #[test]
        fn placement_is_selector_and_hardware(
            selector in proptest::collection::btree_map("[a-c]", "[x-z]", 0..3),
            labels in proptest::collection::btree_map("[a-d]", "[x-z]", 0..4),
            needs in proptest::collection::vec(any::<bool>(), 5),
            has in proptest::collection::vec(any::<bool>(), 5),
        ) {
            let mut p = plugin("p", 1, "  grants: {}\n");
            p.spec.node_selector = selector.clone();
            p.spec.run.grants = grants_needing(&needs);
            let devices: Vec<&str> = DEVICES.iter().zip(&has).filter(|(_, h)| **h).map(|(d, _)| *d).collect();
            let labels_vec: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let n = node("n", &labels_vec, &devices);
            let selector_ok = selector.iter().all(|(k, v)| labels.get(k) == Some(v));
            let hardware_ok = needs.iter().zip(&has).all(|(need, have)| !need || *have);
            prop_assert_eq!(places(&p, &n), selector_ok && hardware_ok);
        }
    }
}
