//! The sandbox around one plugin instance: what it may import, what its WASI
//! sees, how much memory and time it gets.
//!
//! - [`imports`]: refuses a component that imports a capability not granted.
//! - [`limits`]: the memory cap.
//! - [`stdio`]: stdout/stderr as log lines.
//! - [`state`]: the per-store host state and the locked-down WASI context.

pub mod imports;
pub mod limits;
pub mod state;
pub mod stdio;

use crate::bindings;
use crate::capabilities;
use harvester_api::{Capability, Grants};
use state::HostState;
use wasmtime::Engine;
use wasmtime::component::{HasSelf, Linker};

/// A linker with WASI and exactly the granted capability interfaces. A
/// capability that is not granted is not even defined, so a component that
/// imports it can never be instantiated, whatever the import check says.
pub fn linker(engine: &Engine, grants: &Grants) -> wasmtime::Result<Linker<HostState>> {
    let mut l = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut l)?;
    bindings::types::add_to_linker::<HostState, HasSelf<HostState>>(&mut l, |s| s)?;
    for cap in grants.capabilities() {
        capabilities::add_to_linker(&mut l, cap)?;
    }
    Ok(l)
}

/// The capabilities a host can link, for error messages.
pub fn known_capabilities() -> String {
    Capability::ALL.iter().map(|c| c.name()).collect::<Vec<_>>().join(", ")
}
