//! A content-addressed blob store on local disk. Every read is checked
//! against the digest it is filed under, so a flipped bit on the SD card is
//! noticed (and the entry dropped, to be fetched again) instead of run.

use harvester_api::Digest;
use harvester_api::files::{Swept, remove_unneeded};
use std::collections::HashSet;
use std::io;
use std::path::PathBuf;
use std::time::SystemTime;

#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
}

impl BlobStore {
    /// Blobs live in `root/sha256/<hex>`.
    pub fn new(root: impl Into<PathBuf>) -> BlobStore {
        BlobStore { root: root.into() }
    }

    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.root.join("sha256").join(digest.hex())
    }

    /// The blob, if present and intact. A damaged entry is removed and
    /// reported as absent.
    pub fn get(&self, digest: &Digest) -> io::Result<Option<Vec<u8>>> {
        let path = self.path(digest);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let actual = Digest::of(&bytes);
        if &actual != digest {
            tracing::warn!(
                path = %path.display(),
                expected = %digest,
                %actual,
                "local blob does not match its digest; dropping it"
            );
            let _ = std::fs::remove_file(&path);
            return Ok(None);
        }
        Ok(Some(bytes))
    }

    pub fn contains(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    /// Files `bytes` under their own digest, refusing anything else.
    pub fn put(&self, digest: &Digest, bytes: &[u8]) -> io::Result<()> {
        let actual = Digest::of(bytes);
        if &actual != digest {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("refusing to store bytes with digest {actual} as {digest}"),
            ));
        }
        write_atomic(&self.path(digest), bytes)
    }

    /// What keeping `artifacts` needs: each artifact (an uploaded
    /// component, or an OCI manifest) and, for a manifest held here, its
    /// component layer.
    pub fn needed(&self, artifacts: impl IntoIterator<Item = Digest>) -> HashSet<Digest> {
        let mut out = HashSet::new();
        for artifact in artifacts {
            out.insert(artifact);
            // Only a file the size of a manifest is read: an uploaded
            // component is tens of MB and is its own layer.
            let small = std::fs::metadata(self.path(&artifact)).is_ok_and(|m| m.len() <= MANIFEST_MAX);
            if let Some(layer) = small
                .then(|| self.get(&artifact).ok().flatten())
                .flatten()
                .and_then(|m| crate::artifact::component_layer(&m).ok())
            {
                out.insert(layer.digest);
            }
        }
        out
    }

    /// Removes the blobs `keep` does not name that were written before
    /// `written_before` (and any temporary file a crash left).
    pub fn collect(&self, keep: &HashSet<Digest>, written_before: SystemTime) -> io::Result<Swept> {
        let keep: HashSet<String> = keep.iter().map(Digest::hex).collect();
        remove_unneeded(&self.root.join("sha256"), |name| keep.contains(name), written_before)
    }
}

/// The largest manifest a registry read accepts (see `fetch::FetchLimits`).
const MANIFEST_MAX: u64 = 4 << 20;

/// Writes a file whole or not at all, on disk when it returns.
pub use harvester_api::files::write_durable as write_atomic;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damaged_entries_read_as_absent_and_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::new(dir.path());
        let d = Digest::of(b"component");
        assert_eq!(store.get(&d).unwrap(), None);
        store.put(&d, b"component").unwrap();
        assert_eq!(store.get(&d).unwrap().as_deref(), Some(&b"component"[..]));
        std::fs::write(store.path(&d), b"c0mponent").unwrap();
        assert_eq!(store.get(&d).unwrap(), None);
        assert!(!store.contains(&d));
        assert!(store.put(&d, b"other").is_err());
    }

    #[test]
    fn collect_keeps_what_an_artifact_needs_and_what_is_new() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::new(dir.path());
        let (component, other) = (b"\0asm component".to_vec(), b"\0asm old".to_vec());
        let (layer, old) = (Digest::of(&component), Digest::of(&other));
        let manifest = crate::artifact::build(&component, "c", "2026-11-30T00:00:00Z").manifest;
        let artifact = Digest::of(&manifest);
        for (d, b) in [(layer, &component), (old, &other), (artifact, &manifest)] {
            store.put(&d, b).unwrap();
        }
        std::fs::write(dir.path().join("sha256").join(".leftover.tmp1"), b"x").unwrap();
        let keep = store.needed([artifact]);
        assert_eq!(keep, HashSet::from([artifact, layer]));
        // Written just now: kept, whatever is needed.
        let before = SystemTime::now() - std::time::Duration::from_secs(60);
        assert_eq!(store.collect(&HashSet::new(), before).unwrap().entries, 0);
        let swept = store
            .collect(&keep, SystemTime::now() + std::time::Duration::from_secs(1))
            .unwrap();
        assert_eq!(swept.entries, 2);
        assert!(store.contains(&artifact) && store.contains(&layer) && !store.contains(&old));
    }
}
