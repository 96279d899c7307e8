//! A content-addressed blob store on local disk. Every read is checked
//! against the digest it is filed under, so a flipped bit on the SD card is
//! noticed (and the entry dropped, to be fetched again) instead of run.

use harvester_api::Digest;
use std::io;
use std::path::{Path, PathBuf};

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
}

/// Writes via a temporary file and rename, so a crash never leaves half a file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("blob");
    let tmp = path.with_file_name(format!(".{name}.tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

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
}
