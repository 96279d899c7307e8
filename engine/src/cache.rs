//! Compiled components on disk, keyed by content digest and engine hash, so a
//! node compiles each component once and a restart compiles nothing.

use crate::config::PluginEngine;
use harvester_api::Digest;
use sha2::Digest as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use wasmtime::component::Component;

/// Where a component came from this time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded from a precompiled file: no Cranelift run.
    Hit,
    /// Compiled now (and stored for next time).
    Compiled,
}

pub struct CompileCache {
    dir: PathBuf,
    compiles: AtomicU64,
    hits: AtomicU64,
}

/// Why bytes did not become a component.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("not a WebAssembly component: {0}")]
    Invalid(String),
    #[error("no compiled code for {0} in the compile cache")]
    NotCompiled(Digest),
    #[error("compile cache {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl CompileCache {
    pub fn new(dir: impl Into<PathBuf>) -> std::io::Result<CompileCache> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(CompileCache {
            dir,
            compiles: AtomicU64::new(0),
            hits: AtomicU64::new(0),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Components compiled by this process.
    pub fn compiles(&self) -> u64 {
        self.compiles.load(Ordering::Relaxed)
    }

    /// Components loaded precompiled by this process.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    fn path_for(&self, engine: &PluginEngine, digest: &Digest) -> PathBuf {
        self.dir
            .join(format!("{}-{}.cwasm", digest.hex(), engine.compat_hash()))
    }

    /// Where code a hub compiled for this node is kept.
    pub fn portable_path(&self, engine: &PluginEngine, digest: &Digest) -> PathBuf {
        self.dir
            .join(format!("{}-{}.cwasm", digest.hex(), engine.portable_hash()))
    }

    /// A fresh name in the cache folder for a file being written, renamed
    /// into place once complete: a crash mid-write never leaves a truncated
    /// entry. Unique per writer: two threads may write the same digest.
    pub fn scratch_path(&self, path: &Path) -> PathBuf {
        static WRITERS: AtomicU64 = AtomicU64::new(0);
        path.with_extension(format!(
            "tmp{}-{}",
            std::process::id(),
            WRITERS.fetch_add(1, Ordering::Relaxed)
        ))
    }

    /// Whether compiled code for `digest` is here (compiled by this node or
    /// by a hub for it).
    pub fn contains(&self, engine: &PluginEngine, digest: &Digest) -> bool {
        self.path_for(engine, digest).exists() || self.portable_path(engine, digest).exists()
    }

    /// Where the SHA-256 of the code at `path`, recorded when it was
    /// written, is kept.
    fn seal_path(path: &Path) -> PathBuf {
        let mut name = path.as_os_str().to_owned();
        name.push(".sha256");
        PathBuf::from(name)
    }

    /// Records that the code at `path` has digest `code` (its SHA-256), for
    /// the check on every load. Call it once the file is complete.
    pub fn seal(&self, path: &Path, code: &Digest) -> std::io::Result<()> {
        harvester_api::files::write_durable(&Self::seal_path(path), code.to_string().as_bytes())
    }

    /// Whether the code at `path` is what was recorded when it was written:
    /// a flipped bit on an SD card, a truncated file or an entry without a
    /// record (an older cache) is not run. Why not, if it is not.
    fn check_seal(path: &Path) -> Result<(), String> {
        let recorded =
            std::fs::read_to_string(Self::seal_path(path)).map_err(|e| format!("no record of its digest ({e})"))?;
        let recorded: Digest = recorded
            .trim()
            .parse()
            .map_err(|e| format!("its record is damaged: {e}"))?;
        let mut hasher = sha2::Sha256::new();
        std::io::copy(&mut std::fs::File::open(path).map_err(|e| e.to_string())?, &mut hasher)
            .map_err(|e| e.to_string())?;
        let actual = Digest::from_sha256(hasher);
        if actual != recorded {
            return Err(format!("its digest is {actual}, {recorded} when it was written"));
        }
        Ok(())
    }

    /// The cached code for `digest`, if intact and usable. An entry that is
    /// damaged or does not load is removed so that it gets replaced
    /// (compiled again, or fetched again from the hub).
    fn cached(&self, engine: &PluginEngine, digest: &Digest) -> Option<Component> {
        for path in [self.path_for(engine, digest), self.portable_path(engine, digest)] {
            if !path.exists() {
                continue;
            }
            if let Err(why) = Self::check_seal(&path) {
                tracing::warn!(path = %path.display(), "discarding damaged compiled code: {why}");
                let _ = std::fs::remove_file(&path);
                let _ = std::fs::remove_file(Self::seal_path(&path));
                continue;
            }
            match deserialize(engine, &path) {
                Ok(c) => {
                    self.hits.fetch_add(1, Ordering::Relaxed);
                    return Some(c);
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), "discarding unusable compiled component: {e:#}");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        None
    }

    /// Loads code compiled elsewhere and already stored in the cache.
    pub fn load_precompiled(
        &self,
        engine: &PluginEngine,
        digest: &Digest,
    ) -> Result<(Component, CacheOutcome, Duration), CompileError> {
        let started = Instant::now();
        match self.cached(engine, digest) {
            Some(c) => Ok((c, CacheOutcome::Hit, started.elapsed())),
            None => Err(CompileError::NotCompiled(*digest)),
        }
    }

    /// Returns the component for `bytes` (whose digest is `digest`), from the
    /// cache when possible, and how long it took.
    pub fn load(
        &self,
        engine: &PluginEngine,
        digest: &Digest,
        bytes: &[u8],
    ) -> Result<(Component, CacheOutcome, Duration), CompileError> {
        let started = Instant::now();
        if let Some(c) = self.cached(engine, digest) {
            return Ok((c, CacheOutcome::Hit, started.elapsed()));
        }
        let path = self.path_for(engine, digest);
        if !wasmparser_is_component(bytes) {
            return Err(CompileError::Invalid(describe_non_component(bytes)));
        }
        let compiled = engine
            .engine()
            .precompile_component(bytes)
            .map_err(|e| CompileError::Invalid(format!("{e:#}")))?;
        self.compiles.fetch_add(1, Ordering::Relaxed);
        let tmp = self.scratch_path(&path);
        let io = |source| CompileError::Io {
            path: path.clone(),
            source,
        };
        // Synced before the rename: a power cut never leaves a half-written
        // file under the final name, and clean pages are ones the kernel
        // can drop (see `release_cold_code`).
        write_synced(&tmp, &compiled).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        self.seal(&path, &Digest::of(&compiled)).map_err(io)?;
        drop(compiled);
        let component = deserialize(engine, &path).map_err(|e| CompileError::Invalid(format!("{e:#}")))?;
        Ok((component, CacheOutcome::Compiled, started.elapsed()))
    }
}

impl CompileCache {
    /// Removes code for components `keep` does not name, code for any
    /// other engine (a previous version's), and scratch files, when written
    /// before `written_before`. Running plugins keep their mapped code: the
    /// kernel frees an unlinked file only when its last mapping goes.
    pub fn collect(
        &self,
        engine: &PluginEngine,
        keep: &std::collections::HashSet<Digest>,
        written_before: std::time::SystemTime,
    ) -> std::io::Result<harvester_api::files::Swept> {
        let names: std::collections::HashSet<String> = keep
            .iter()
            .flat_map(|d| [self.path_for(engine, d), self.portable_path(engine, d)])
            .flat_map(|p| [Self::seal_path(&p), p])
            .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_string))
            .collect();
        harvester_api::files::remove_unneeded(&self.dir, |name| names.contains(name), written_before)
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Cranelift frees hundreds of MB after a Python compile, and each load
/// frees an ~18 MB component buffer, but glibc keeps freed memory of its
/// arenas; `Runtime::apply` hands it back after every load.
#[allow(unsafe_code)]
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Hands back the pages of compiled code that only a start-up touched:
/// after a plugin's `init`, most of an interpreter's code (module import,
/// start-up) never runs again, yet its pages stay mapped, three Python
/// plugins' worth of 30 MB. The node's own code is the same after it has
/// started. Only clean, file-backed, read-only or executable pages of
/// compiled components and of this program go; a page touched again is
/// read back from its file. Linear memories (writable mappings) are never
/// touched. Best effort: kernels before 5.4 ignore it.
#[allow(unsafe_code)]
pub fn release_cold_code() {
    #[cfg(target_os = "linux")]
    {
        let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
            return;
        };
        let exe = std::fs::read_link("/proc/self/exe").ok();
        for line in maps.lines() {
            let Some((start, len)) = cold_code_range(line, exe.as_deref()) else {
                continue;
            };
            // SAFETY: the range is a whole mapping of this process, read
            // from /proc/self/maps; MADV_PAGEOUT only reclaims pages (a
            // clean file page is read again on its next touch) and never
            // changes what a mapping reads.
            unsafe {
                libc::madvise(start as *mut libc::c_void, len, libc::MADV_PAGEOUT);
            }
        }
    }
}

/// The address range of a `/proc/self/maps` line worth paging out: an
/// unwritable mapping of a `.cwasm` file, or the executable code of `exe`.
fn cold_code_range(line: &str, exe: Option<&Path>) -> Option<(usize, usize)> {
    let mut fields = line.split_whitespace();
    let range = fields.next()?;
    let perms = fields.next()?;
    let path = fields.nth(3)?;
    if perms.contains('w') {
        return None;
    }
    let ours = path.ends_with(".cwasm") || (perms.contains('x') && exe.is_some_and(|e| Path::new(path) == e));
    if !ours {
        return None;
    }
    let (a, b) = range.split_once('-')?;
    let start = usize::from_str_radix(a, 16).ok()?;
    let end = usize::from_str_radix(b, 16).ok()?;
    Some((start, end.checked_sub(start)?))
}

#[allow(unsafe_code)]
fn deserialize(engine: &PluginEngine, path: &Path) -> wasmtime::Result<Component> {
    // SAFETY: only two kinds of file are loaded, both named by the digest
    // of their source and the exact engine configuration and renamed into
    // place whole: code this cache compiled itself, and code a hub compiled
    // that the node stored at `portable_path` only after checking a trusted
    // compiler key signed a statement naming this component, target, engine
    // and the code's SHA-256 and size, and that the bytes match it
    // (nodelet `agent/hub_code.rs`). Wasmtime still checks the header and
    // engine compatibility.
    unsafe { Component::deserialize_file(engine.engine(), path) }
}

/// The component binary format's preamble: magic, then version 0x0d and layer 1.
fn wasmparser_is_component(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[6..8] == [1, 0]
}

fn describe_non_component(bytes: &[u8]) -> String {
    if bytes.len() >= 8 && bytes[..4] == *b"\0asm" {
        "this is a core WebAssembly module, not a component: build it with `harvester plugin build` (or wrap it with `wasm-tools component new`)".into()
    } else if bytes.is_empty() {
        "the file is empty".into()
    } else {
        "the file does not start with the WebAssembly magic bytes".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collect_keeps_code_for_kept_components_and_this_engine_only() {
        let dir = std::env::temp_dir().join(format!("harvester-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cache = CompileCache::new(&dir).unwrap();
        let engine = PluginEngine::new().unwrap();
        let (kept, dropped) = (Digest::of(b"kept"), Digest::of(b"dropped"));
        let files = [
            cache.path_for(&engine, &kept),
            cache.portable_path(&engine, &kept),
            cache.path_for(&engine, &dropped),
            dir.join(format!("{}-0123456789abcdef.cwasm", kept.hex())),
            cache.scratch_path(&cache.path_for(&engine, &kept)),
        ];
        for f in &files {
            std::fs::write(f, b"code").unwrap();
        }
        let keep = std::collections::HashSet::from([kept]);
        let recent = std::time::SystemTime::now() - Duration::from_secs(60);
        assert_eq!(cache.collect(&engine, &keep, recent).unwrap().entries, 0);
        let later = std::time::SystemTime::now() + Duration::from_secs(1);
        assert_eq!(cache.collect(&engine, &keep, later).unwrap().entries, 3);
        assert!(files[0].exists() && files[1].exists());
        assert!(files[2..].iter().all(|f| !f.exists()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_unwritable_compiled_code_and_this_programs_code_are_paged_out() {
        let exe = Path::new("/usr/bin/harvester");
        let code = "7f0000000000-7f0000010000 r-xp 00000000 fd:01 42  /var/lib/harvester/compiled/ab-cd.cwasm";
        assert_eq!(cold_code_range(code, Some(exe)), Some((0x7f00_0000_0000, 0x10000)));
        let rodata = "7f0000010000-7f0000020000 r--p 00010000 fd:01 42  /var/lib/harvester/compiled/ab-cd.cwasm";
        assert!(cold_code_range(rodata, Some(exe)).is_some());
        // A linear memory's copy-on-write image is the plugin's state.
        let image = "7f0000100000-7f0000200000 rw-p 00020000 fd:01 42  /var/lib/harvester/compiled/ab-cd.cwasm";
        assert_eq!(cold_code_range(image, Some(exe)), None);
        let text = "555500000000-555500100000 r-xp 00000000 fd:01 7  /usr/bin/harvester";
        assert!(cold_code_range(text, Some(exe)).is_some());
        // Relocated read-only data of the program is private memory.
        let relro = "555500100000-555500200000 r--p 00100000 fd:01 7  /usr/bin/harvester";
        assert_eq!(cold_code_range(relro, Some(exe)), None);
        let heap = "555500300000-555500400000 rw-p 00000000 00:00 0  [heap]";
        assert_eq!(cold_code_range(heap, Some(exe)), None);
        let libc = "7f1000000000-7f1000100000 r-xp 00000000 fd:01 9  /usr/lib/libc.so.6";
        assert_eq!(cold_code_range(libc, Some(exe)), None);
    }
}
