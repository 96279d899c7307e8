//! How Harvester turns a component into code a board runs, shared by the
//! hub (which compiles for its nodes) and the nodes (which compile for
//! themselves or load what the hub compiled).
//!
//! - [`config`]: the one wasmtime configuration, the epoch-driven engine,
//!   and engine hashes that name a code format across machines.
//! - [`cache`]: compiled components on disk, keyed by digest and engine hash.

pub mod cache;
pub mod config;

pub use cache::{CacheOutcome, CompileCache, CompileError, release_cold_code, release_freed_memory};
pub use config::{
    COMPILE_TARGETS, EPOCH_PERIOD, PluginEngine, compiler_for, compiler_with_cache, config, engine_hash, host_target,
};
