//! Files that survive power cuts, hold secrets, and folders that do not
//! fill up.
//!
//! - [`write_durable`]: a file replaced whole or not at all, on disk when it
//!   returns (written, synced, renamed, its folder synced), readable by its
//!   owner only.
//! - [`Scratch`]: the same for a file written piece by piece (a backup
//!   streamed from the hub).
//! - [`write_state`] / [`read_state`]: state a board cannot do without (its
//!   assignments, its rollback judgements), with the previous good copy kept
//!   and used when the newest cannot be read.
//! - [`private_folder`]: a data folder only its owner can enter, mended at
//!   start when an older install left it open.
//! - [`remove_unneeded`]: folders of files named by what they hold (a
//!   digest, an engine hash) swept of what nothing needs any more.

use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

/// The mode of every file Harvester writes: its data holds keys, tokens'
/// hashes and plugins' configuration.
pub const PRIVATE_FILE: u32 = 0o600;
/// The mode of every folder Harvester keeps data in.
pub const PRIVATE_FOLDER: u32 = 0o700;

/// A name beside `path` for a file being written, starting with a dot so
/// sweeps and readers never take it for the real thing. Unique per process,
/// writer and moment; [`Scratch::beside`] still creates it exclusively, so a
/// name planted in advance by someone else is never written through.
fn scratch(path: &Path, what: &str) -> PathBuf {
    static WRITERS: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    path.with_file_name(format!(
        ".{name}.{what}{}-{}-{nanos:x}",
        std::process::id(),
        WRITERS.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Syncs a folder, so that renames and new names in it are on disk.
fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// A file being written beside its destination, readable by its owner only
/// (mode 0600 whatever the umask), created exclusively and never through a
/// symbolic link: a file or link another local user planted under its name
/// makes it pick another name, never write into theirs. [`Scratch::commit`]
/// puts it in place; dropped before that, it is removed.
pub struct Scratch {
    file: Option<std::fs::File>,
    tmp: PathBuf,
    path: PathBuf,
}

impl Scratch {
    /// A new scratch file for `path`, in `path`'s folder (created if needed).
    pub fn beside(path: &Path) -> io::Result<Scratch> {
        std::fs::create_dir_all(parent(path))?;
        // Only a name taken by someone else fails; a few tries find a free one.
        let mut tries = 0;
        loop {
            let tmp = scratch(path, "tmp");
            let opened = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(PRIVATE_FILE)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(&tmp);
            match opened {
                Ok(file) => {
                    // The umask may have taken bits away, never added them;
                    // set exactly 0600 all the same.
                    file.set_permissions(std::fs::Permissions::from_mode(PRIVATE_FILE))?;
                    return Ok(Scratch {
                        file: Some(file),
                        tmp,
                        path: path.to_path_buf(),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < 16 => tries += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// The scratch file's own name, for messages.
    pub fn scratch_path(&self) -> &Path {
        &self.tmp
    }

    /// Syncs the file, renames it over the destination and syncs the folder.
    pub fn commit(mut self) -> io::Result<()> {
        let file = self.file.take().expect("a scratch file is committed once");
        file.sync_all()?;
        drop(file);
        std::fs::rename(&self.tmp, &self.path)?;
        sync_dir(parent(&self.path))
    }
}

impl Write for Scratch {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.file {
            Some(f) => f.write(buf),
            None => Err(io::Error::other("the scratch file was committed")),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.file {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Writes `bytes` to `path` so that a crash or a power cut at any moment
/// leaves either the old content or the new, and the new is on disk when
/// this returns: a [`Scratch`] file (mode 0600), synced, renamed over
/// `path`, and the folder synced. Creates the folder if needed.
pub fn write_durable(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = Scratch::beside(path)?;
    f.write_all(bytes)?;
    f.commit()
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// What [`private_folder`] had to mend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mended {
    /// The folder's mode before, when others could enter or read it.
    pub folder_was: Option<u32>,
    /// Files and folders inside that others could read, now owner-only.
    pub entries: usize,
}

/// Makes `dir` (created if missing, mode 0700) a folder only its owner can
/// enter, and refuses one this process's user does not own: another local
/// user's folder (or a link to it) could be read, or have keys planted in
/// it, by them. When it exists with bits for its group or others (an older
/// install made data folders 0750 and files 0644), takes those bits off it
/// and everything in it, and says what it mended so the caller can log it;
/// an entry inside that another user owns is refused then too (they may
/// have put it there while the folder was open). Symbolic links inside are
/// left alone.
pub fn private_folder(dir: &Path) -> io::Result<Mended> {
    if !dir.exists() {
        match std::fs::DirBuilder::new()
            .recursive(true)
            .mode(PRIVATE_FOLDER)
            .create(dir)
        {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
    }
    let me = rustix::process::geteuid().as_raw();
    let meta = std::fs::metadata(dir)?;
    if !meta.is_dir() {
        return Err(io::Error::other(format!("{} is not a folder", dir.display())));
    }
    not_owned(dir, &meta, me)?;
    let mode = meta.permissions().mode() & 0o7777;
    let mut mended = Mended::default();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & !0o077))?;
        mended.folder_was = Some(mode);
        mended.entries = close_inside(dir, me)?;
    }
    Ok(mended)
}

/// An error when `path` (with `meta`) is not `me`'s.
fn not_owned(path: &Path, meta: &std::fs::Metadata, me: u32) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    if meta.uid() == me {
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!(
            "{} belongs to user {}, not to this process's user {me}: another user could read it or put keys in it; make it this user's (chown) after checking what is in it, or choose another folder",
            path.display(),
            meta.uid()
        ),
    ))
}

/// Makes every file and folder this process creates from now on its
/// owner's only, including those libraries create without asking (the
/// store's files): for the hub and the nodelet, whose data is all private.
/// Process-wide: call it from a binary's `main`, not from a library.
pub fn owner_only_umask() {
    rustix::process::umask(rustix::fs::Mode::from_bits_truncate(0o077));
}

/// Takes the group's and others' bits off everything under `dir`; how many
/// entries it changed. An entry another user owns stops it.
fn close_inside(dir: &Path, me: u32) -> io::Result<usize> {
    let mut changed = 0;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let meta = path.symlink_metadata()?;
        not_owned(&path, &meta, me)?;
        if meta.file_type().is_symlink() {
            continue;
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & !0o077))?;
            changed += 1;
        }
        if meta.is_dir() {
            changed += close_inside(&path, me)?;
        }
    }
    Ok(changed)
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

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    /// Secrets are never written into a file or through a link someone
    /// else put there, and come out 0600 whatever was there before.
    #[test]
    fn a_durable_file_is_its_owners_only_and_never_written_through_a_planted_link() {
        let dir = std::env::temp_dir().join(format!("harvester-private-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let lure = dir.join("lure");
        std::fs::write(&lure, b"").unwrap();
        let key = dir.join("ca.key");
        std::os::unix::fs::symlink(&lure, &key).unwrap();
        write_durable(&key, b"secret").unwrap();
        assert_eq!(std::fs::read(&lure).unwrap(), b"", "written through the link");
        assert_eq!(std::fs::read(&key).unwrap(), b"secret");
        assert_eq!(mode(&key), 0o600);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_durable(&key, b"again").unwrap();
        assert_eq!(mode(&key), 0o600);

        // A scratch file dropped before its commit leaves nothing behind.
        let mut s = Scratch::beside(&dir.join("backup.tar")).unwrap();
        s.write_all(b"half").unwrap();
        let scratch = s.scratch_path().to_path_buf();
        assert_eq!(mode(&scratch), 0o600);
        drop(s);
        assert!(!scratch.exists() && !dir.join("backup.tar").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_data_folder_open_to_others_is_closed_and_said() {
        let dir = std::env::temp_dir().join(format!("harvester-folder-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(private_folder(&dir).unwrap(), Mended::default());
        assert_eq!(mode(&dir), 0o700);
        std::fs::create_dir_all(dir.join("store")).unwrap();
        std::fs::write(dir.join("store/db"), b"x").unwrap();
        std::fs::set_permissions(dir.join("store/db"), std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(dir.join("store"), std::fs::Permissions::from_mode(0o755)).unwrap();
        // A closed folder is left as it is, whatever is inside.
        assert_eq!(private_folder(&dir).unwrap(), Mended::default());
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750)).unwrap();
        assert_eq!(
            private_folder(&dir).unwrap(),
            Mended {
                folder_was: Some(0o750),
                entries: 2
            }
        );
        assert_eq!(
            (mode(&dir), mode(&dir.join("store")), mode(&dir.join("store/db"))),
            (0o700, 0o700, 0o600)
        );

        // Another user's folder, or a link to it, is never taken; nor is
        // what another user put in ours while it was open.
        if rustix::process::geteuid().is_root() {
            let theirs = dir.join("theirs");
            std::fs::create_dir(&theirs).unwrap();
            std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
            let err = private_folder(&theirs).unwrap_err();
            assert!(err.to_string().contains("belongs to user 65534"), "{err}");
            let link = dir.join("link");
            std::os::unix::fs::symlink(&theirs, &link).unwrap();
            assert!(private_folder(&link).is_err());
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
            let err = private_folder(&dir).unwrap_err();
            assert!(err.to_string().contains("theirs belongs to user 65534"), "{err}");
        }
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
