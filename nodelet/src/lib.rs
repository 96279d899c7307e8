//! The Harvester nodelet: the agent on each board that runs sandboxed plugin
//! components with exactly the hardware their manifests grant.
//!
//! - [`runtime`]: loads, starts, hot-swaps and stops plugins (one thread each).
//! - [`sandbox`]: import checks against grants, memory cap, locked-down WASI.
//! - [`capabilities`]: the host side of each WIT interface, with scope checks.
//! - [`hardware`]: one trait per device; simulated and Raspberry Pi backends.
//!
//! The wasmtime configuration and the compile cache are the `harvester-engine`
//! crate's, shared with the hub; the shapes on the wire (`RunSpec`, `Phase`,
//! `Reason`, log lines) are `harvester-api`'s.
//! - [`events`], [`report`], [`metrics`]: status, events, log lines and Prometheus metrics.
//! - [`agent`]: the link to the controller: watch, converge, report, run from disk when offline.
//! - [`standalone`]: `harvester nodelet --standalone FILE`, with file watching.
//! - [`uplink`]: log lines, readings, LED frame and buzzer activity pushed to the hub.
//! - [`server`]: the node's local HTTP endpoints (`/status`, `/metrics`, commands).

pub mod agent;
pub mod bindings;
pub mod capabilities;
pub mod events;
pub mod hardware;
pub mod metrics;
pub mod report;
pub mod runtime;
pub mod sandbox;
pub mod server;
pub mod standalone;
pub mod uplink;

pub use runtime::{Applied, PluginSpec, Runtime, RuntimeOptions};
