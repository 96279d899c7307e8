//! The sandbox around one plugin instance: what it may import, what its WASI
//! sees, how much memory it gets. It knows nothing of capabilities beyond
//! their names; [`crate::host`] links the granted ones.
//!
//! - [`imports`]: refuses a component that imports a capability not granted.
//! - [`limits`]: the memory cap.
//! - [`stdio`]: stdout/stderr as log lines.
//! - [`wasi`]: the locked-down WASI context.

pub(crate) mod imports;
pub(crate) mod limits;
pub(crate) mod stdio;

use harvester_api::Capability;
use stdio::{LineSink, LineStream};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder};

/// A WASI context with no files, no sockets, no environment and no
/// arguments; stdout and stderr become whole lines for `out` and `err`.
pub(crate) fn wasi(out: LineSink, err: LineSink) -> WasiCtx {
    // WasiCtxBuilder starts empty: no preopened directories, no env, no
    // args, stdin closed. Network use is switched off explicitly.
    WasiCtxBuilder::new()
        .stdout(LineStream::new(out))
        .stderr(LineStream::new(err))
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build()
}

/// The capabilities a host can link, for error messages.
pub(crate) fn known_capabilities() -> String {
    Capability::ALL.iter().map(|c| c.name()).collect::<Vec<_>>().join(", ")
}
