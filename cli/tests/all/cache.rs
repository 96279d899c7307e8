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

    // A damaged cache entry is detected and replaced, not trusted: one
    // flipped bit in the middle of the code, where wasmtime's own header
    // check never looks. (The node is stopped first: it maps its entries.)
    drop(node);
    damage_compiled_code(&dir.path().join("compiled"));
    let node = node_with(dir.path(), SimProfile::default());
    node.runtime.apply(spec("dht22", "dht22", grants, &[])).unwrap();
    assert_eq!((node.runtime.cache().compiles(), node.runtime.cache().hits()), (1, 0));
}

#[test]
fn code_a_hub_compiled_for_this_architecture_runs_without_compiling_here() {
    use harvester_api::Digest;
    use harvester_engine::{compiler_for, engine_hash, host_target};
    use harvester_nodelet::runtime::ComponentSource;

    let dir = tempfile::tempdir().unwrap();
    let node = node_with(dir.path(), SimProfile::default());
    let bytes = component("dht22");
    let digest = Digest::of(&bytes);
    // What a hub does: compile for the node's architecture with baseline
    // CPU features, then hand over the code.
    let hub = compiler_for(&host_target()).unwrap();
    assert_eq!(engine_hash(&hub), node.runtime.engine().portable_hash());
    assert_ne!(
        node.runtime.engine().portable_hash(),
        node.runtime.engine().compat_hash(),
        "code for this CPU's detected features is kept apart"
    );
    let code = hub.precompile_component(&bytes).unwrap();
    let cache = node.runtime.cache();
    let path = cache.portable_path(node.runtime.engine(), &digest);
    std::fs::write(&path, &code).unwrap();
    cache.seal(&path, &Digest::of(&code)).unwrap();

    let mut s = spec("dht22", "dht22", "{dht22: {pin: 4}, leds: {indices: [1]}}", &[]);
    s.component = ComponentSource::Precompiled(digest);
    node.runtime.apply(s).unwrap();
    assert_eq!((cache.compiles(), cache.hits()), (0, 1));
    node.wait_event(Duration::from_secs(10), "a tick", |e| {
        matches!(e.kind, EventKind::Telemetry { .. })
    });

    // Code that is not there is an error naming the digest, and what runs
    // keeps running.
    let missing = Digest::of(b"not compiled anywhere");
    let mut s = spec("dht22", "dht22", "{dht22: {pin: 4}, leds: {indices: [1]}}", &[]);
    s.component = ComponentSource::Precompiled(missing);
    let err = node.runtime.apply(s).unwrap_err().to_string();
    assert!(
        err.contains(&missing.to_string()) && err.contains("no compiled code"),
        "{err}"
    );
    assert_eq!(node.runtime.plugin_status("dht22").unwrap().digest, Some(digest));
}
