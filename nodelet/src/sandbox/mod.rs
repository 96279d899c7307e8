//! The sandbox around one plugin instance: what it may import, what its WASI
//! sees, how much memory it gets. It knows nothing of capabilities beyond
//! their names; [`crate::host`] links the granted ones.
//!
//! - [`imports`]: refuses a component that imports a capability not granted.
//! - [`limits`]: the memory cap.
//! - [`cpu`]: the CPU budget.
//! - [`stdio`]: stdout/stderr as log lines.
//! - [`wasi`]: the locked-down WASI context, its resource table and host
//!   buffers bounded.

pub mod cpu;
pub(crate) mod imports;
pub(crate) mod limits;
pub(crate) mod stdio;

use harvester_api::Capability;
use stdio::{LineSink, LineStream};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder};

/// WASI resources (streams, pollables) one instance may hold at once: a
/// few hundred bytes of host memory each, outside its linear memory.
pub(crate) const MAX_TABLE_ENTRIES: usize = 4096;

/// The largest buffer the host fills for one call (random bytes), at most
/// the plugin's memory limit.
pub(crate) const MAX_HOST_BUFFER: u64 = 1 << 20;

/// A WASI context with no files, no sockets, no environment and no
/// arguments; stdout and stderr become whole lines for `out` and `err`;
/// host buffers within `memory_limit`.
pub(crate) fn wasi(out: LineSink, err: LineSink, memory_limit: u64) -> WasiCtx {
    // WasiCtxBuilder starts empty: no preopened directories, no env, no
    // args, stdin closed. Network use is switched off explicitly.
    WasiCtxBuilder::new()
        .stdout(LineStream::new(out))
        .stderr(LineStream::new(err))
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .max_random_size(MAX_HOST_BUFFER.min(memory_limit))
        .build()
}

/// A resource table of at most [`MAX_TABLE_ENTRIES`].
pub(crate) fn table() -> wasmtime::component::ResourceTable {
    let mut t = wasmtime::component::ResourceTable::new();
    t.set_max_capacity(MAX_TABLE_ENTRIES);
    t
}

/// The capabilities a host can link, for error messages.
pub(crate) fn known_capabilities() -> String {
    Capability::ALL.iter().map(|c| c.name()).collect::<Vec<_>>().join(", ")
}
