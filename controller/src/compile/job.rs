//! One compile in a process of its own. Cranelift needs hundreds of MB to
//! compile a Python component, and a long-running process's allocator
//! keeps most of it after the compile ends; a child's memory all goes back
//! to the system when it exits, so the hub stays small between compiles.
//! The child opens the function cache itself: the hub never holds it, and
//! a damaged cache costs a slower compile, never a failed one.
//!
//! The protocol is one JSON [`Job`] on the child's stdin and one JSON
//! [`Outcome`] on its stdout; the child runs the hub's own binary with
//! [`SUBCOMMAND`].

use harvester_api::Digest;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The hidden subcommand of the hub's binary that runs one job.
pub const SUBCOMMAND: &str = "compile-job";

/// A compile that has not ended by then is stopped: a Pi-class hub
/// compiles an 18 MB Python component for aarch64 in about a minute.
const TIME_LIMIT: Duration = Duration::from_secs(600);

/// The outcome is a few hundred bytes; anything longer is not ours.
const OUTCOME_LIMIT: u64 = 64 << 10;

#[derive(Debug, Serialize, Deserialize)]
pub struct Job {
    /// The component's bytes.
    pub component: PathBuf,
    /// Where the code goes (written atomically).
    pub output: PathBuf,
    pub target: String,
    /// The engine hash the hub expects: a child from another build of the
    /// binary (replaced on disk while the hub runs) must not compile.
    pub engine: String,
    /// Cranelift's function cache (a sled database).
    pub functions: PathBuf,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Outcome {
    Compiled {
        /// sha256 of the code written.
        code: Digest,
        /// The child's peak resident memory, in bytes.
        peak_memory: u64,
        /// Why the function cache was not used, if it was not.
        cache_unavailable: Option<String>,
    },
    /// The component does not compile.
    Invalid(String),
    /// Anything else: the target, the engine, the disk.
    Failed(String),
}

/// Runs `job` in a child process of `program` and waits for it, within
/// [`TIME_LIMIT`]. Dropping the future stops the child.
pub async fn run(program: &Path, job: &Job) -> Outcome {
    match run_child(program, job).await {
        Ok(o) => o,
        Err(e) => Outcome::Failed(format!("the compiler process ({}): {e}", program.display())),
    }
}

async fn run_child(program: &Path, job: &Job) -> std::io::Result<Outcome> {
    let mut child = tokio::process::Command::new(program)
        .arg(SUBCOMMAND)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    let request = serde_json::to_vec(job).map_err(std::io::Error::other)?;
    let mut stdin = child.stdin.take().ok_or_else(|| std::io::Error::other("no stdin"))?;
    let stdout = child.stdout.take().ok_or_else(|| std::io::Error::other("no stdout"))?;
    let work = async {
        stdin.write_all(&request).await?;
        drop(stdin);
        let mut answer = Vec::new();
        stdout.take(OUTCOME_LIMIT).read_to_end(&mut answer).await?;
        let status = child.wait().await?;
        Ok::<_, std::io::Error>((answer, status))
    };
    let (answer, status) = match tokio::time::timeout(TIME_LIMIT, work).await {
        Ok(r) => r?,
        Err(_) => {
            let _ = child.kill().await;
            return Err(std::io::Error::other(format!(
                "still compiling after {} s, stopped",
                TIME_LIMIT.as_secs()
            )));
        }
    };
    serde_json::from_slice(&answer).map_err(|e| {
        std::io::Error::other(format!(
            "exited with {status} without an answer ({e}); its messages are in the hub's log"
        ))
    })
}

/// The child's side: reads a job on stdin, compiles, answers on stdout.
pub fn child_main() -> std::process::ExitCode {
    let mut request = Vec::new();
    let outcome = match std::io::stdin().take(OUTCOME_LIMIT).read_to_end(&mut request) {
        Ok(_) => match serde_json::from_slice::<Job>(&request) {
            Ok(job) => compile(&job),
            Err(e) => Outcome::Failed(format!("not a compile job: {e}")),
        },
        Err(e) => Outcome::Failed(format!("reading the job: {e}")),
    };
    let ok = matches!(outcome, Outcome::Compiled { .. });
    let written = serde_json::to_vec(&outcome)
        .map_err(std::io::Error::other)
        .and_then(|b| std::io::stdout().write_all(&b));
    if ok && written.is_ok() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

fn compile(job: &Job) -> Outcome {
    let failed = |what: &str, e: &dyn std::fmt::Display| Outcome::Failed(format!("{what}: {e}"));
    let (functions, mut cache_unavailable) = match open_functions(&job.functions) {
        Ok(f) => (Some(Arc::new(f)), None),
        // A damaged cache is rebuilt, empty: this compile fills it again.
        Err(e) => {
            let path = &job.functions;
            let _ = std::fs::remove_dir_all(path).or_else(|_| std::fs::remove_file(path));
            match open_functions(path) {
                Ok(f) => (
                    Some(Arc::new(f)),
                    Some(format!("{}: damaged ({e}); rebuilt empty", path.display())),
                ),
                Err(again) => (None, Some(format!("{}: {again}", path.display()))),
            }
        }
    };
    let engine = match harvester_engine::config::compiler_with_cache(
        &job.target,
        functions.clone().map(|f| f as Arc<dyn wasmtime::CacheStore>),
    ) {
        Ok(e) => e,
        Err(e) => return failed("the engine", &format!("{e:#}")),
    };
    let hash = harvester_engine::config::engine_hash(&engine);
    if hash != job.engine {
        return Outcome::Failed(format!(
            "the compiler's engine for {} is {hash}, the hub's is {}: the binary on disk is not the one running; restart the hub",
            job.target, job.engine
        ));
    }
    let bytes = match std::fs::read(&job.component) {
        Ok(b) => b,
        Err(e) => return failed(&job.component.display().to_string(), &e),
    };
    let code = match engine.precompile_component(&bytes) {
        Ok(c) => c,
        Err(e) => return Outcome::Invalid(format!("{e:#}")),
    };
    drop(bytes);
    if let Err(e) = harvester_registry::store::write_atomic(&job.output, &code) {
        return failed(&job.output.display().to_string(), &e);
    }
    // sled writes behind; this process ends next, so what it compiled is
    // flushed for the next job now.
    if let Some(Err(e)) = functions.map(|f| f.0.flush()) {
        cache_unavailable = Some(format!("{}: saving: {e}", job.functions.display()));
    }
    Outcome::Compiled {
        code: Digest::of(&code),
        peak_memory: peak_memory(),
        cache_unavailable,
    }
}

/// Compiled functions by Cranelift's key for them, on disk: a new version
/// of a Python plugin changes its script and heap snapshot, not the
/// interpreter's thousands of functions.
struct FunctionCache(sled::Tree);

impl std::fmt::Debug for FunctionCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FunctionCache({} entries)", self.0.len())
    }
}

impl wasmtime::CacheStore for FunctionCache {
    fn get(&self, key: &[u8]) -> Option<std::borrow::Cow<'_, [u8]>> {
        self.0
            .get(key)
            .ok()
            .flatten()
            .map(|v| std::borrow::Cow::Owned(v.to_vec()))
    }

    fn insert(&self, key: &[u8], value: Vec<u8>) -> bool {
        self.0.insert(key, value).is_ok()
    }
}

fn open_functions(path: &Path) -> Result<FunctionCache, sled::Error> {
    let db = sled::Config::new().path(path).cache_capacity(32 << 20).open()?;
    Ok(FunctionCache(db.open_tree("cranelift")?))
}

/// This process's peak resident memory (Linux; 0 elsewhere).
fn peak_memory() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A component holding one core module with one empty function: the
    /// smallest thing that gives Cranelift a function to compile.
    fn component() -> Vec<u8> {
        let module: &[u8] = &[
            0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // core module, version 1
            0x01, 0x04, 0x01, 0x60, 0x00, 0x00, // types: func () -> ()
            0x03, 0x02, 0x01, 0x00, // functions: one of type 0
            0x0a, 0x04, 0x01, 0x02, 0x00, 0x0b, // code: no locals, end
        ];
        let mut c = vec![0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00, 0x01, module.len() as u8];
        c.extend_from_slice(module);
        c
    }

    fn job(dir: &Path, name: &str) -> Job {
        let target = harvester_engine::config::host_target();
        let engine = harvester_engine::config::compiler_for(&target).unwrap();
        let component = dir.join("in.wasm");
        std::fs::write(&component, self::component()).unwrap();
        Job {
            component,
            output: dir.join(name),
            engine: harvester_engine::config::engine_hash(&engine),
            target,
            functions: dir.join("functions"),
        }
    }

    #[test]
    fn what_one_job_compiles_is_kept_for_the_next_and_a_damaged_cache_is_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let first = job(dir.path(), "a.cwasm");
        let Outcome::Compiled {
            code,
            peak_memory,
            cache_unavailable,
        } = compile(&first)
        else {
            panic!("the component compiles");
        };
        assert_eq!(cache_unavailable, None);
        assert_eq!(Digest::of(&std::fs::read(&first.output).unwrap()), code);
        assert!(peak_memory > 0);
        let kept = open_functions(&first.functions).unwrap().0.len();
        assert!(kept > 0, "the compiled function is in the cache for the next process");

        // Something that is not a database where the cache should be.
        std::fs::remove_dir_all(&first.functions).unwrap();
        std::fs::write(&first.functions, "not a database").unwrap();
        let second = job(dir.path(), "b.cwasm");
        match compile(&second) {
            Outcome::Compiled {
                cache_unavailable: Some(why),
                ..
            } => assert!(why.contains("functions") && why.contains("rebuilt"), "{why}"),
            other => panic!("compiled, the cache rebuilt, saying so: {other:?}"),
        }
        assert!(second.output.exists());
        let rebuilt = open_functions(&second.functions).unwrap().0.len();
        assert!(rebuilt > 0, "the rebuilt cache holds this compile's functions");
    }

    #[test]
    fn a_job_for_another_engine_or_an_invalid_component_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let mut other = job(dir.path(), "a.cwasm");
        other.engine = "0123456789abcdef".into();
        match compile(&other) {
            Outcome::Failed(m) => assert!(m.contains("restart the hub"), "{m}"),
            o => panic!("{o:?}"),
        }
        let invalid = job(dir.path(), "b.cwasm");
        std::fs::write(&invalid.component, b"\0asm\x0d\0\x01\0\x01\x05junk!").unwrap();
        assert!(matches!(compile(&invalid), Outcome::Invalid(_)));
        assert!(!invalid.output.exists(), "nothing is written for what does not compile");
    }
}
