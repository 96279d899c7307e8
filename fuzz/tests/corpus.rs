//! Replays every target's corpus (seeds, what fuzzing found interesting,
//! and each crash once fixed) as a plain test: what once broke stays fixed.

use std::path::Path;

#[test]
fn every_corpus_entry_is_handled() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (name, target) in harvester_fuzz::TARGETS {
        let dir = root.join(name);
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        assert!(!entries.is_empty(), "{name} has no corpus");
        for path in entries {
            let data = std::fs::read(&path).unwrap();
            let run = std::panic::catch_unwind(|| target(&data));
            assert!(run.is_ok(), "{name} panicked on {}", path.display());
        }
    }
}
