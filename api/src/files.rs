//! Files that survive power cuts, and folders that do not fill up.
//!
//! - [`write_durable`]: a file replaced whole or not at all, on disk when it
//!   returns (written, synced, renamed, its folder synced).
//! - [`write_state`] / [`read_state`]: state a board cannot do without (its
//!   assignments, its rollback judgements), with the previous good copy kept
//!   and used when the newest cannot be read.
//! - [`remove_unneeded`]: folders of files named by what they hold (a
//!   digest, an engine hash) swept of what nothing needs any more.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

/// A name beside `path` for a file being written: unique per process and
/// writer, and starting with a dot so sweeps and readers never take it for
/// the real thing.
fn scratch(path: &Path, what: &str) -> PathBuf {
    static WRITERS: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    path.with_file_name(format!(
        ".{name}.{what}{}-{}",
        std::process::id(),
        WRITERS.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Syncs a folder, so that renames and new names in it are on disk.
fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Writes `bytes` to `path` so that a crash or a power cut at any moment
/// leaves either the old content or the new, and the new is on disk when
/// this returns: a temporary file, synced, renamed over `path`, and the
/// folder synced. Creates the folder if needed.
pub fn write_durable(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = parent(path);
    std::fs::create_dir_all(dir)?;
    let tmp = scratch(path, "tmp");
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    sync_dir(dir)
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Where the copy before the current one of a state file is kept.
pub fn previous_path(path: &Path) -> PathBuf {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("state");
    path.with_file_name(format!("{name}.prev"))
}

/// Like [`write_durable`], keeping what `path` held as [`previous_path`]:
/// at every moment `path` holds the old or the new content and the
/// previous copy the one before or the old, never nothing.
pub fn write_state(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = parent(path);
    std::fs::create_dir_all(dir)?;
    if path.exists() {
        // A second name for the current content, moved over the previous
        // copy in one rename.
        let link = scratch(path, "prev");
        std::fs::hard_link(path, &link)?;
        if let Err(e) = std::fs::rename(&link, previous_path(path)) {
            let _ = std::fs::remove_file(&link);
            return Err(e);
        }
    }
    write_durable(path, bytes)
}

/// Which copy [`read_state`] read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateCopy {
    Current,
    /// The newest could not be read or parsed (why); the previous one was.
    Previous(String),
}

/// The state kept at `path` as `parse` reads it: the newest copy, or when
/// it is missing, empty, cut short or damaged, the previous one. `None`
/// when neither reads (never written, or both damaged: say so and start
/// without).
pub fn read_state<T, E: std::fmt::Display>(
    path: &Path,
    parse: impl Fn(&[u8]) -> Result<T, E>,
) -> Option<(T, StateCopy)> {
    let why = match std::fs::read(path) {
        Ok(b) if b.is_empty() => "it is empty".to_string(),
        Ok(b) => match parse(&b) {
            Ok(v) => return Some((v, StateCopy::Current)),
            Err(e) => e.to_string(),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => "it is missing".to_string(),
        Err(e) => e.to_string(),
    };
    let previous = std::fs::read(previous_path(path)).ok()?;
    let value = parse(&previous).ok()?;
    Some((value, StateCopy::Previous(why)))
}

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

    fn parse(b: &[u8]) -> Result<u64, String> {
        let s = std::str::from_utf8(b).map_err(|e| e.to_string())?;
        let (n, check) = s.split_once(':').ok_or("no checksum")?;
        let n: u64 = n.parse().map_err(|_| "not a number")?;
        // The state is a number and its repetition: a torn write shows.
        (check == n.to_string().repeat(64))
            .then_some(n)
            .ok_or_else(|| "torn".to_string())
    }

    fn state(n: u64) -> Vec<u8> {
        format!("{n}:{}", n.to_string().repeat(64)).into_bytes()
    }

    #[test]
    fn a_damaged_or_missing_state_file_falls_back_to_the_previous_copy() {
        let dir = std::env::temp_dir().join(format!("harvester-state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("assignments.json");
        assert_eq!(read_state(&path, parse), None);
        write_state(&path, &state(1)).unwrap();
        write_state(&path, &state(2)).unwrap();
        assert_eq!(read_state(&path, parse), Some((2, StateCopy::Current)));
        for (damage, why) in [(&b""[..], "it is empty"), (&b"2:22"[..], "torn")] {
            std::fs::write(&path, damage).unwrap();
            assert_eq!(read_state(&path, parse), Some((1, StateCopy::Previous(why.into()))));
        }
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            read_state(&path, parse),
            Some((1, StateCopy::Previous("it is missing".into())))
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A writer process killed at random moments, many times: every time,
    /// the state reads back whole, and never older than what was written
    /// before the last completed write.
    #[test]
    fn state_written_by_a_process_killed_at_random_moments_always_reads_back() {
        if let Ok(path) = std::env::var("HARVESTER_STATE_WRITER") {
            // The child: writes ever newer states until it is killed.
            let path = PathBuf::from(path);
            let mut n = read_state(&path, parse).map_or(0, |(n, _)| n);
            loop {
                n += 1;
                write_state(&path, &state(n)).unwrap();
            }
        }
        let dir = std::env::temp_dir().join(format!("harvester-kill-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("state.json");
        let mut last = 0;
        for round in 0..30u64 {
            let mut child = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "files::tests::state_written_by_a_process_killed_at_random_moments_always_reads_back",
                    "--nocapture",
                ])
                .env("HARVESTER_STATE_WRITER", &path)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let started = std::time::Instant::now();
            while !path.exists() && started.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(1));
            }
            // A different moment each round: 5 to 40 ms into its writes.
            std::thread::sleep(Duration::from_millis(5 + (round * 7919) % 36));
            child.kill().unwrap();
            child.wait().unwrap();
            let (n, _) = read_state(&path, parse).unwrap_or_else(|| panic!("round {round}: no readable state"));
            assert!(n + 1 >= last, "round {round}: state went back from {last} to {n}");
            last = n;
        }
        assert!(last > 0, "the writer never wrote");
        std::fs::remove_dir_all(&dir).unwrap();
    }

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
