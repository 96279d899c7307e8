//! Folders of files named by what they hold (a digest, an engine hash):
//! what nothing needs any more is swept, so a board's SD card and a hub's
//! disk hold what runs, what may run again, and little else.

use std::io;
use std::path::Path;
use std::time::SystemTime;

/// What a sweep removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    pub entries: usize,
    pub bytes: u64,
}

impl std::ops::AddAssign for Swept {
    fn add_assign(&mut self, other: Swept) {
        self.entries += other.entries;
        self.bytes += other.bytes;
    }
}

/// Removes every entry of `dir` (files, and folders with what they hold)
/// whose name `needed` refuses and that was last written before
/// `written_before`: something written since may belong to work in progress
/// that the caller's idea of what is needed does not know of yet. A missing
/// folder has nothing to sweep; an entry that cannot be removed is left for
/// the next sweep.
pub fn remove_unneeded(dir: &Path, needed: impl Fn(&str) -> bool, written_before: SystemTime) -> io::Result<Swept> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Swept::default()),
        Err(e) => return Err(e),
    };
    let mut swept = Swept::default();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_str().is_some_and(&needed) {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        if meta.modified().is_ok_and(|t| t >= written_before) {
            continue;
        }
        let path = entry.path();
        let (removed, bytes) = if meta.is_dir() {
            let bytes = size_of_dir(&path);
            (std::fs::remove_dir_all(&path), bytes)
        } else {
            (std::fs::remove_file(&path), meta.len())
        };
        match removed {
            Ok(()) => {
                swept.entries += 1;
                swept.bytes += bytes;
            }
            Err(e) => tracing::warn!(path = %path.display(), "cannot remove: {e}"),
        }
    }
    Ok(swept)
}

/// The bytes of the files under `dir`, as far as they can be read.
pub fn size_of_dir(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => size_of_dir(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn sweeps_only_what_is_unneeded_and_old_enough() {
        let dir = std::env::temp_dir().join(format!("harvester-files-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("old-folder")).unwrap();
        std::fs::write(dir.join("old-folder").join("inside"), b"12345").unwrap();
        std::fs::write(dir.join("kept"), b"abc").unwrap();
        std::fs::write(dir.join("gone"), b"abcd").unwrap();
        let missing = dir.join("missing");
        assert_eq!(
            remove_unneeded(&missing, |_| false, SystemTime::now()).unwrap(),
            Swept::default()
        );
        // Nothing was written before an hour ago: nothing goes.
        let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
        assert_eq!(remove_unneeded(&dir, |_| false, an_hour_ago).unwrap(), Swept::default());
        let later = SystemTime::now() + Duration::from_secs(1);
        let swept = remove_unneeded(&dir, |n| n == "kept", later).unwrap();
        assert_eq!(swept, Swept { entries: 2, bytes: 9 });
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, ["kept"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
