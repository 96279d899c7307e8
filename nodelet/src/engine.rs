//! The one place that configures wasmtime.
//!
//! Every setting here is part of the compile cache key (through
//! `precompile_compatibility_hash`): a `.cwasm` written by one configuration
//! never loads into another.

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
    stop: Arc<AtomicBool>,
    ticker: Option<JoinHandle<()>>,
}

impl PluginEngine {
    pub fn new() -> anyhow::Result<PluginEngine> {
        disable_transparent_huge_pages();
        let mut config = Config::new();
        config.wasm_component_model(true);
        // Deadlines per call, without fuel's per-instruction cost.
        config.epoch_interruption(true);
        config.cranelift_opt_level(OptLevel::Speed);
        // On-demand allocation: the pooling allocator reserves terabytes of
        // address space, which 39-bit Raspberry Pi kernels cannot give.
        // Copy-on-write memory images keep a Python instance at a few MB.
        config.memory_init_cow(true);
        let engine = Engine::new(&config).map_err(anyhow::Error::from)?;

        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        let compat_hash = format!("{:016x}", h.finish());

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
