//! The one place that configures wasmtime.
//!
//! Every setting here is part of the compile cache key (through
//! `precompile_compatibility_hash`): a `.cwasm` written by one configuration
//! never loads into another.

use sha2::Digest as _;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;
use wasmtime::{Config, Engine, OptLevel};

/// How often the epoch advances; call deadlines are counted in these.
pub const EPOCH_PERIOD: Duration = Duration::from_millis(10);

/// The shared engine and the thread that drives its epoch.
pub struct PluginEngine {
    engine: Engine,
    compat_hash: String,
    portable_hash: String,
    stop: Arc<AtomicBool>,
    ticker: Option<JoinHandle<()>>,
}

/// The targets a hub can compile components for.
pub const COMPILE_TARGETS: &[&str] = &["x86_64-unknown-linux-gnu", "aarch64-unknown-linux-gnu"];

/// The triple of the machine this binary runs on, as wasmtime names it.
pub fn host_target() -> String {
    format!("{}-unknown-linux-gnu", std::env::consts::ARCH)
}

/// The one wasmtime configuration: for this host with the CPU features it
/// detects (`target: None`), or for `target` with that architecture's
/// baseline features, as a hub compiles for its nodes.
pub fn config(target: Option<&str>) -> anyhow::Result<Config> {
    let mut config = Config::new();
    config.wasm_component_model(true);
    // Deadlines per call, without fuel's per-instruction cost.
    config.epoch_interruption(true);
    config.cranelift_opt_level(OptLevel::Speed);
    // On-demand allocation: the pooling allocator reserves terabytes of
    // address space, which 39-bit Raspberry Pi kernels cannot give.
    // Copy-on-write memory images keep a Python instance at a few MB.
    config.memory_init_cow(true);
    if let Some(t) = target {
        if !COMPILE_TARGETS.contains(&t) {
            anyhow::bail!(
                "cannot compile for {t:?}: the targets are {}",
                COMPILE_TARGETS.join(", ")
            );
        }
        config.target(t).map_err(anyhow::Error::from)?;
    }
    Ok(config)
}

/// An engine that only compiles, for `target`.
pub fn compiler_for(target: &str) -> anyhow::Result<Engine> {
    compiler_with_cache(target, None)
}

/// An engine that compiles for `target`, reusing from `functions` the code
/// of every function it compiled before: a new version of a Python plugin
/// changes its script and heap snapshot, not the interpreter's thousands
/// of functions. The engine hash is the same with or without it.
pub fn compiler_with_cache(target: &str, functions: Option<Arc<dyn wasmtime::CacheStore>>) -> anyhow::Result<Engine> {
    let mut config = config(Some(target))?;
    if let Some(store) = functions {
        config
            .enable_incremental_compilation(store)
            .map_err(anyhow::Error::from)?;
    }
    Engine::new(&config).map_err(|e| {
        anyhow::anyhow!(
            "cannot compile for {target} on this {} machine ({e}): run the hub on the nodes' architecture",
            std::env::consts::ARCH
        )
    })
}

/// A name for everything a `.cwasm` depends on (wasmtime version, settings,
/// target and CPU features), stable across processes and machines so a hub
/// and a node can compare theirs.
pub fn engine_hash(engine: &Engine) -> String {
    struct Sha(sha2::Sha256);
    impl Hasher for Sha {
        fn finish(&self) -> u64 {
            let d = self.0.clone().finalize();
            u64::from_le_bytes(d[..8].try_into().unwrap_or_default())
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
    }
    let mut h = Sha(sha2::Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut h);
    hex::encode(&h.0.finalize()[..8])
}

impl PluginEngine {
    pub fn new() -> anyhow::Result<PluginEngine> {
        disable_transparent_huge_pages();
        let engine = Engine::new(&config(None)?).map_err(anyhow::Error::from)?;
        let compat_hash = engine_hash(&engine);
        // What a hub compiling for this machine's architecture produces;
        // such code loads here because this CPU has every baseline feature.
        let portable_hash = engine_hash(&compiler_for(&host_target())?);

        let stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let engine = engine.clone();
            let stop = stop.clone();
            std::thread::Builder::new().name("epoch".into()).spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_PERIOD);
                    engine.increment_epoch();
                }
            })?
        };
        Ok(PluginEngine {
            engine,
            compat_hash,
            portable_hash,
            stop,
            ticker: Some(ticker),
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Identifies this engine's code format; part of every compile cache key.
    pub fn compat_hash(&self) -> &str {
        &self.compat_hash
    }

    /// The engine hash of code a hub compiles for this node (see
    /// [`compiler_for`]); such code is kept under this hash in the cache.
    pub fn portable_hash(&self) -> &str {
        &self.portable_hash
    }

    /// Epoch ticks for a deadline. The epoch may be about to advance when
    /// the deadline is set, so one tick is added: a call gets at least its
    /// timeout and at most one period more.
    pub fn deadline_ticks(timeout: Duration) -> u64 {
        (timeout.as_nanos().div_ceil(EPOCH_PERIOD.as_nanos()) as u64).max(1) + 1
    }
}

impl Drop for PluginEngine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
    }
}

/// Compiled components are mapped from the compile cache; with transparent
/// huge pages the kernel maps their code in 2 MB pages, so touching a few
/// functions makes whole megabytes resident. Small boards need the memory
/// more than the TLB hits.
#[allow(unsafe_code)]
fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE only changes this process's paging policy.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_hashes_are_stable_and_name_the_target() {
        let host = compiler_for(&host_target()).unwrap();
        assert_eq!(engine_hash(&host), engine_hash(&compiler_for(&host_target()).unwrap()));
        assert_eq!(engine_hash(&host).len(), 16);
        let err = config(Some("riscv64gc-unknown-linux-gnu")).err().unwrap().to_string();
        assert!(err.contains("aarch64-unknown-linux-gnu"), "{err}");
        // A hub on a PC also compiles for the boards (aarch64); the other
        // way round is not built in.
        let (ok, missing) = if cfg!(target_arch = "x86_64") {
            (Some("aarch64-unknown-linux-gnu"), None)
        } else {
            (None, Some("x86_64-unknown-linux-gnu"))
        };
        if let Some(t) = ok {
            assert_ne!(engine_hash(&compiler_for(t).unwrap()), engine_hash(&host));
        }
        if let Some(t) = missing {
            let err = compiler_for(t).err().unwrap().to_string();
            assert!(err.contains("run the hub on the nodes' architecture"), "{err}");
        }
    }
}
