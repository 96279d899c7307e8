//! Compiling components for the nodes, so that a small board never runs
//! Cranelift: the hub compiles each artifact once per target and engine,
//! signs what it produced with its own key, and serves it to nodes that
//! trust that key (see `harvester_api::compiled`).
//!
//! The hub compiles only artifacts its desired state runs: a component
//! uploaded to it, or an OCI artifact a Plugin is pinned to.

use crate::store::{Kind, Store};
use base64::Engine as _;
use harvester_api::Digest;
use harvester_api::compiled::CompiledStatement;
use harvester_api::resources::{Plugin, is_local_path};
use harvester_registry::store::BlobStore;
use harvester_registry::{PullError, Registry, SigningKey};
use sha2::Digest as _;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub mod job;

/// Code ready to send.
pub struct Compiled {
    pub path: PathBuf,
    pub size: u64,
    /// Base64 of the statement's JSON bytes, exactly as signed.
    pub statement: String,
    pub signature: String,
    /// How long the compiler ran for this request (none: compiled before).
    pub compiled_in: Option<std::time::Duration>,
    /// The compiler process's peak memory, when it ran for this request.
    pub peak_memory: Option<u64>,
}

/// Why the hub cannot give a node code for an artifact.
#[derive(Debug, thiserror::Error)]
pub enum CompileFailure {
    #[error("{0}")]
    Target(String),
    #[error(
        "this hub's engine for {target} is {hub}, the node's is {node}: they run different Harvester versions; run the same version on both, or let the node compile (--compile auto or local)"
    )]
    EngineMismatch { target: String, hub: String, node: String },
    #[error("no Plugin on this hub runs artifact {0}: the hub compiles only what its desired state runs")]
    Unknown(Digest),
    #[error("getting {artifact}: {message}")]
    Source { artifact: Digest, message: String },
    #[error("{artifact} does not compile: {message}")]
    Invalid { artifact: Digest, message: String },
    #[error("the hub's compile cache: {0}")]
    Io(String),
}

impl CompileFailure {
    pub fn reason(&self) -> &'static str {
        match self {
            CompileFailure::Target(_) => "UnsupportedTarget",
            CompileFailure::EngineMismatch { .. } => "EngineMismatch",
            CompileFailure::Unknown(_) => "NotFound",
            CompileFailure::Source { .. } => "PullFailed",
            CompileFailure::Invalid { .. } => "InvalidArtifact",
            CompileFailure::Io(_) => "Internal",
        }
    }
}

enum Source {
    /// Uploaded to the hub (`harvester apply` of a local path).
    Blob,
    Oci(harvester_registry::Reference),
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SignedRecord {
    statement: String,
    signature: String,
}

impl SignedRecord {
    /// What the record vouches for, if it reads.
    fn statement(&self) -> Option<CompiledStatement> {
        let json = base64::engine::general_purpose::STANDARD.decode(&self.statement).ok()?;
        serde_json::from_slice(&json).ok()
    }
}

pub struct Compiler {
    key: SigningKey,
    /// The hub's own binary, run with [`job::SUBCOMMAND`] for each compile.
    program: PathBuf,
    public_key: PathBuf,
    dir: PathBuf,
    /// Manifests and components pulled to compile them.
    pulled: BlobStore,
    /// Engines only to name what the code needs (the compiles happen in
    /// the child processes).
    engines: Mutex<BTreeMap<String, String>>,
    /// One compile at a time: a Python component takes hundreds of MB.
    one_at_a_time: tokio::sync::Mutex<()>,
    /// Code files checked against their signed records by this process.
    intact: Mutex<std::collections::HashSet<PathBuf>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn io(e: impl std::fmt::Display) -> CompileFailure {
    CompileFailure::Io(e.to_string())
}

impl Compiler {
    /// Uses (or makes) the hub's key `key`, keeps code under `dir`, and
    /// compiles in child processes of `program` (the hub's own binary).
    pub fn new(dir: &Path, key: &Path, program: PathBuf) -> anyhow::Result<Compiler> {
        std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
        let signing = SigningKey::load_or_create_unattended(key)?;
        Ok(Compiler {
            key: signing,
            program,
            public_key: key.with_extension("pub"),
            dir: dir.to_path_buf(),
            pulled: BlobStore::new(dir.join("pulled")),
            engines: Mutex::new(BTreeMap::new()),
            one_at_a_time: tokio::sync::Mutex::new(()),
            intact: Mutex::default(),
        })
    }

    /// The public key nodes pass to `--trust-compiler`.
    pub fn public_key(&self) -> &Path {
        &self.public_key
    }

    pub fn fingerprint(&self) -> &str {
        &self.key.fingerprint
    }

    /// Whether the code at `path` is what `record` signed (its size and
    /// SHA-256); checked once per process, and removed with its record
    /// when it is not.
    fn intact(&self, path: &Path, record: &SignedRecord, size: u64) -> bool {
        if lock(&self.intact).contains(path) {
            return true;
        }
        let good = record
            .statement()
            .is_some_and(|st| st.size == size && sha256_file(path).is_ok_and(|d| d == st.code));
        if good {
            lock(&self.intact).insert(path.to_path_buf());
        } else {
            tracing::warn!(path = %path.display(), "compiled code is not what was signed (damaged on disk): compiling it again");
            let _ = std::fs::remove_file(path);
        }
        good
    }

    /// The engine hash of `target`'s code.
    fn engine(&self, target: &str) -> Result<String, CompileFailure> {
        let mut engines = self.engines.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(hash) = engines.get(target) {
            return Ok(hash.clone());
        }
        let engine =
            harvester_engine::config::compiler_for(target).map_err(|e| CompileFailure::Target(format!("{e:#}")))?;
        let hash = harvester_engine::config::engine_hash(&engine);
        engines.insert(target.to_string(), hash.clone());
        Ok(hash)
    }

    fn source(&self, store: &Store, artifact: &Digest) -> Result<Source, CompileFailure> {
        if store.has_blob(artifact).map_err(io)? {
            return Ok(Source::Blob);
        }
        for value in store.list(Kind::Plugin).map_err(io)? {
            let Ok(p) = serde_json::from_value::<Plugin>(value) else {
                continue;
            };
            if p.spec.digest == Some(*artifact) && !is_local_path(&p.spec.image) {
                let reference =
                    harvester_registry::parse_reference(&p.spec.image).map_err(|e| CompileFailure::Source {
                        artifact: *artifact,
                        message: format!("{e:#}"),
                    })?;
                return Ok(Source::Oci(reference));
            }
        }
        Err(CompileFailure::Unknown(*artifact))
    }

    /// The code of `artifact` for `target`, compiled now or earlier, if
    /// the node's engine hash is the hub's for that target.
    pub async fn code_for(
        &self,
        store: &Store,
        registry: &Registry,
        artifact: Digest,
        target: &str,
        node_engine: &str,
    ) -> Result<Compiled, CompileFailure> {
        let hash = self.engine(target)?;
        if node_engine != hash {
            return Err(CompileFailure::EngineMismatch {
                target: target.to_string(),
                hub: hash,
                node: node_engine.to_string(),
            });
        }
        let source = self.source(store, &artifact)?;
        let pull_error = |e: PullError| CompileFailure::Source {
            artifact,
            message: match e {
                PullError::Refused(r) => r.to_string(),
                PullError::Registry(e) => format!("{e:#}"),
            },
        };
        let component = match &source {
            Source::Blob => artifact,
            Source::Oci(r) => registry
                .component_digest(r, &artifact, &self.pulled)
                .await
                .map_err(pull_error)?,
        };
        let code_path = self.dir.join(format!("{}-{hash}.cwasm", component.hex()));
        let record_path = self.dir.join(format!("{}-{hash}.json", artifact.hex()));
        let signed = || {
            std::fs::read(&record_path)
                .ok()
                .and_then(|b| serde_json::from_slice::<SignedRecord>(&b).ok())
        };
        // Code compiled before is served without waiting for a compile of
        // something else, once it is checked to be what was signed: a
        // damaged entry is dropped and compiled again, never served.
        if let (Ok(meta), Some(r)) = (std::fs::metadata(&code_path), signed())
            && self.intact(&code_path, &r, meta.len())
        {
            return Ok(Compiled {
                path: code_path,
                size: meta.len(),
                statement: r.statement,
                signature: r.signature,
                compiled_in: None,
                peak_memory: None,
            });
        }
        // The download happens before the queue, into the pulled store: a
        // slow or stalled registry holds this request only, never the
        // compiles of others.
        if !code_path.exists()
            && let Source::Oci(r) = &source
        {
            drop(
                registry
                    .pull(r, &artifact, &self.pulled, &indicatif::ProgressBar::hidden())
                    .await
                    .map_err(pull_error)?,
            );
        }
        // Nodes rolling out together ask at once: the first compiles, the
        // others wait here and find the code.
        let _one = self.one_at_a_time.lock().await;
        let mut compiled_in = None;
        let mut peak_memory = None;
        let mut code_digest = None;
        if !code_path.exists() {
            let bytes = match &source {
                Source::Blob => store
                    .get_blob(&artifact)
                    .map_err(io)?
                    .map(|b| b.to_vec())
                    .ok_or(CompileFailure::Unknown(artifact))?,
                // From the pulled store now, checked against its digest.
                Source::Oci(r) => registry
                    .pull(r, &artifact, &self.pulled, &indicatif::ProgressBar::hidden())
                    .await
                    .map_err(pull_error)?,
            };
            let started = std::time::Instant::now();
            let input = self.dir.join("jobs").join(format!("{}.wasm", component.hex()));
            harvester_registry::store::write_atomic(&input, &bytes).map_err(io)?;
            drop(bytes);
            let job = job::Job {
                component: input.clone(),
                output: code_path.clone(),
                target: target.to_string(),
                engine: hash.clone(),
                functions: self.dir.join("functions").join(format!("{target}-{hash}")),
            };
            let outcome = job::run(&self.program, &job).await;
            let _ = std::fs::remove_file(&input);
            let (digest, memory) = match outcome {
                job::Outcome::Compiled {
                    code,
                    peak_memory,
                    cache_unavailable,
                } => {
                    if let Some(why) = cache_unavailable {
                        tracing::warn!("the function cache of compiles: {why}");
                    }
                    (code, peak_memory)
                }
                job::Outcome::Invalid(message) => return Err(CompileFailure::Invalid { artifact, message }),
                job::Outcome::Failed(message) => return Err(CompileFailure::Io(message)),
            };
            code_digest = Some(digest);
            compiled_in = Some(started.elapsed());
            peak_memory = Some(memory);
            tracing::info!(
                %artifact,
                %component,
                target,
                engine = hash,
                ms = started.elapsed().as_millis() as u64,
                peak_mb = memory >> 20,
                "compiled for nodes"
            );
        }
        let size = std::fs::metadata(&code_path).map_err(io)?.len();
        let record = match signed() {
            Some(r) if compiled_in.is_none() => r,
            _ => {
                let statement = CompiledStatement {
                    artifact,
                    component,
                    target: target.to_string(),
                    engine: hash.clone(),
                    // Code compiled for another artifact with the same
                    // component is hashed from its file.
                    code: match code_digest {
                        Some(d) => d,
                        None => sha256_file(&code_path).map_err(io)?,
                    },
                    size,
                };
                let json = serde_json::to_vec(&statement).map_err(io)?;
                let record = SignedRecord {
                    signature: self.key.sign_bytes(&json).map_err(io)?,
                    statement: base64::engine::general_purpose::STANDARD.encode(&json),
                };
                harvester_registry::store::write_atomic(&record_path, &serde_json::to_vec(&record).map_err(io)?)
                    .map_err(io)?;
                record
            }
        };
        Ok(Compiled {
            path: code_path,
            size,
            statement: record.statement,
            signature: record.signature,
            compiled_in,
            peak_memory,
        })
    }
}

impl Compiler {
    /// Removes what no artifact in `artifacts` needs, once written before
    /// `written_before`: signed records of other artifacts or of an engine
    /// this hub no longer runs (a previous version's), code no remaining
    /// record names, pulled manifests and components, inputs a crashed
    /// compile left, and function caches of other engines.
    pub async fn collect(
        &self,
        artifacts: &std::collections::HashSet<Digest>,
        written_before: std::time::SystemTime,
    ) -> Result<harvester_api::files::Swept, CompileFailure> {
        use harvester_api::files::remove_unneeded;
        // Never between a compile's code and its record.
        let _one = self.one_at_a_time.lock().await;
        lock(&self.intact).clear();
        let keep: std::collections::HashSet<String> = artifacts.iter().map(Digest::hex).collect();
        let mut records = std::collections::HashSet::new();
        let mut code = std::collections::HashSet::new();
        let mut engines = std::collections::HashSet::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some((artifact, _)) = name.strip_suffix(".json").and_then(|n| n.split_once('-')) else {
                continue;
            };
            let statement = std::fs::read(entry.path())
                .ok()
                .and_then(|b| serde_json::from_slice::<SignedRecord>(&b).ok())
                .and_then(|r| r.statement());
            let Some(st) = statement else { continue };
            let current = self.engine(&st.target).is_ok_and(|e| e == st.engine);
            if current && keep.contains(artifact) {
                records.insert(name);
                code.insert(format!("{}-{}.cwasm", st.component.hex(), st.engine));
                engines.insert(format!("{}-{}", st.target, st.engine));
            }
        }
        let mut swept = remove_unneeded(
            &self.dir,
            |name| records.contains(name) || code.contains(name) || matches!(name, "pulled" | "jobs" | "functions"),
            written_before,
        )
        .map_err(io)?;
        swept += remove_unneeded(&self.dir.join("jobs"), |_| false, written_before).map_err(io)?;
        // A function cache serves one engine; the one of this version stays
        // while anything may be compiled with it.
        let current = self.engines.lock().unwrap_or_else(|e| e.into_inner()).clone();
        swept += remove_unneeded(
            &self.dir.join("functions"),
            |name| {
                engines.contains(name)
                    || name
                        .rsplit_once('-')
                        .is_some_and(|(target, hash)| current.get(target).is_some_and(|h| h == hash))
            },
            written_before,
        )
        .map_err(io)?;
        swept += self
            .pulled
            .collect(&self.pulled.needed(artifacts.iter().copied()), written_before)
            .map_err(io)?;
        Ok(swept)
    }
}

fn sha256_file(path: &Path) -> std::io::Result<Digest> {
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
    Ok(Digest::from_sha256(hasher))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::time::{Duration, SystemTime};

    fn record(compiler: &Compiler, artifact: Digest, component: Digest, target: &str, engine: &str) {
        let statement = CompiledStatement {
            artifact,
            component,
            target: target.to_string(),
            engine: engine.to_string(),
            code: Digest::of(b"code"),
            size: 4,
        };
        let json = serde_json::to_vec(&statement).unwrap();
        let r = SignedRecord {
            signature: compiler.key.sign_bytes(&json).unwrap(),
            statement: base64::engine::general_purpose::STANDARD.encode(&json),
        };
        let dir = &compiler.dir;
        std::fs::write(
            dir.join(format!("{}-{engine}.json", artifact.hex())),
            serde_json::to_vec(&r).unwrap(),
        )
        .unwrap();
        std::fs::write(dir.join(format!("{}-{engine}.cwasm", component.hex())), b"code").unwrap();
    }

    #[tokio::test]
    async fn collect_keeps_only_what_kept_artifacts_need_with_this_engine() {
        let dir = tempfile::tempdir().unwrap();
        let compiled = dir.path().join("compiled");
        let compiler = Compiler::new(&compiled, &dir.path().join("compile.key"), "/bin/false".into()).unwrap();
        let target = harvester_engine::config::host_target();
        let engine = compiler.engine(&target).unwrap();
        // Kept: an OCI artifact pulled here (manifest and layer), and its code.
        let component = b"\0asm\x0d\0\x01\0kept".to_vec();
        let built = harvester_registry::artifact::build(&component, "kept", "2026-11-30T00:00:00Z");
        let kept = Digest::of(&built.manifest);
        compiler.pulled.put(&kept, &built.manifest).unwrap();
        compiler.pulled.put(&built.layer_digest, &component).unwrap();
        record(&compiler, kept, built.layer_digest, &target, &engine);
        // Gone: another artifact, the kept one's code from an older engine,
        // a stale pulled blob, a crashed compile's input, old function caches.
        let (other, other_component) = (Digest::of(b"other"), Digest::of(b"other component"));
        record(&compiler, other, other_component, &target, &engine);
        record(&compiler, kept, built.layer_digest, &target, "00000000deadbeef");
        compiler.pulled.put(&other, b"other").unwrap();
        std::fs::create_dir_all(compiled.join("jobs")).unwrap();
        std::fs::write(compiled.join("jobs").join("x.wasm"), b"input").unwrap();
        let functions = compiled.join("functions");
        for f in [format!("{target}-{engine}"), format!("{target}-00000000deadbeef")] {
            std::fs::create_dir_all(functions.join(f)).unwrap();
        }
        std::fs::write(functions.join("conf"), b"a function cache of the old layout").unwrap();

        let keep = HashSet::from([kept]);
        let recent = SystemTime::now() - Duration::from_secs(60);
        assert_eq!(compiler.collect(&keep, recent).await.unwrap().entries, 0);
        let swept = compiler
            .collect(&keep, SystemTime::now() + Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(swept.entries, 8, "{swept:?}");
        let mut left: Vec<String> = std::fs::read_dir(&compiled)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        let mut expected = vec![
            format!("{}-{engine}.cwasm", built.layer_digest.hex()),
            format!("{}-{engine}.json", kept.hex()),
            "functions".to_string(),
            "jobs".to_string(),
            "pulled".to_string(),
        ];
        expected.sort();
        assert_eq!(left, expected);
        let functions_left: Vec<_> = std::fs::read_dir(&functions)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(functions_left, [std::ffi::OsString::from(format!("{target}-{engine}"))]);
        assert!(compiler.pulled.contains(&kept) && compiler.pulled.contains(&built.layer_digest));
        assert!(!compiler.pulled.contains(&other));
    }
}
