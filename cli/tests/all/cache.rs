//! Compiled components survive restarts: a node compiles each digest once.

use crate::support::*;
use harvester_nodelet::events::EventKind;
use harvester_nodelet::hardware::sim::SimProfile;
use std::time::Duration;

#[test]
fn a_restart_loads_from_the_compile_cache_without_compiling() {
    let dir = tempfile::tempdir().unwrap();
    let grants = "{dht22: {pin: 4}, leds: {indices: [1]}}";
    {
        let node = node_with(dir.path(), SimProfile::default());
        node.runtime.apply(spec("dht22", "dht22", grants, &[])).unwrap();
        assert_eq!((node.runtime.cache().compiles(), node.runtime.cache().hits()), (1, 0));
        let started = node.wait_event(Duration::from_secs(10), "start", |e| {
            matches!(e.kind, EventKind::Started { .. })
        });
        assert!(matches!(started.kind, EventKind::Started { from_cache: false, .. }));
    }
    // A new runtime on the same data folder: the node restarted.
    let node = node_with(dir.path(), SimProfile::default());
    node.runtime.apply(spec("dht22", "dht22", grants, &[])).unwrap();
    assert_eq!(
        (node.runtime.cache().compiles(), node.runtime.cache().hits()),
        (0, 1),
        "the restart must not run Cranelift"
    );
    let started = node.wait_event(Duration::from_secs(10), "start", |e| {
        matches!(e.kind, EventKind::Started { .. })
    });
    assert!(matches!(started.kind, EventKind::Started { from_cache: true, .. }));
    assert!(
        node.runtime
            .metrics()
            .render()
            .contains("harvester_component_cache_hits_total 1")
    );

    // A damaged cache entry is detected and replaced, not trusted. (The
    // node is stopped first: it maps its entries.)
    drop(node);
    for entry in std::fs::read_dir(dir.path().join("compiled")).unwrap() {
        std::fs::write(entry.unwrap().path(), b"garbage").unwrap();
    }
    let node = node_with(dir.path(), SimProfile::default());
    node.runtime.apply(spec("dht22", "dht22", grants, &[])).unwrap();
    assert_eq!((node.runtime.cache().compiles(), node.runtime.cache().hits()), (1, 0));
}
