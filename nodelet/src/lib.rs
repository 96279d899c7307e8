//! The Harvester nodelet: the agent on each board that runs sandboxed plugin
//! components with exactly the hardware their manifests grant.
//!
//! - [`node`]: the composition root: hardware, metrics, runtime, server,
//!   and the standalone loop or the agent, wired together.
//! - [`runtime`]: loads, starts, hot-swaps and stops plugins (one thread each).
//! - `sandbox`: import checks against grants, memory cap, locked-down WASI.
//! - `host`: one module per capability: its binding, grant check and state.
//! - [`hardware`]: one trait per device; simulated and Raspberry Pi backends.
//! - [`events`], `report`, [`metrics`]: status, events, log lines and Prometheus metrics.
//! - `agent`: the link to the controller: watch, converge, report, run from disk when offline.
//! - `standalone`: `harvester nodelet --standalone FILE`, with file watching.
//! - [`uplink`]: log lines, readings, LED frame and buzzer activity pushed to the hub.
//! - [`log_tap`]: which node a log line is from: each node's lines go to its own buffer.
//! - `server`: the node's local HTTP endpoints (`/status`, `/metrics`, commands).
//!
//! The wasmtime configuration and the compile cache are the `harvester-engine`
//! crate's, shared with the hub; the shapes on the wire (`RunSpec`, `Phase`,
//! `Reason`, log lines) are `harvester-api`'s.

pub mod agent;
mod bindings;
pub mod events;
pub mod hardware;
mod host;
pub mod log_tap;
pub mod metrics;
pub mod node;
mod report;
pub mod runtime;
pub mod sandbox;
mod server;
mod standalone;
pub mod uplink;

/// The header the hub and this node's command listener want on every
/// request ([`harvester_api::cross_site`]).
pub(crate) fn marker_header() -> reqwest::header::HeaderMap {
    let mut h = reqwest::header::HeaderMap::new();
    h.insert(
        harvester_api::cross_site::MARKER,
        reqwest::header::HeaderValue::from_static("1"),
    );
    h
}

pub use runtime::{Applied, PluginSpec, Runtime, RuntimeOptions};
