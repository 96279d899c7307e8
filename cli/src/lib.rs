//! The `harvester` command: one binary for every role (like k3s).
//!
//! - [`build`]: `harvester plugin build DIR`, for Python and Rust plugins.
//! - [`nodelet`]: `harvester nodelet`, the node agent.
//! - [`client`] and [`commands`]: `apply`, `get`, `describe`, `delete`, `rollout status`.

pub mod build;
pub mod client;
pub mod commands;
pub mod nodelet;
pub mod oci;
