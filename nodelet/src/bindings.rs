//! Rust bindings of the `harvester:plugin` WIT package, generated at build time.

// The generated code uses `unsafe` internally for typed function lookups.
#![allow(unsafe_code, unused_variables)]

wasmtime::component::bindgen!({
    path: "../wit",
    world: "full",
});

pub use harvester::plugin::*;
