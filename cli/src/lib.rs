//! The `harvester` command: one binary for every role (like k3s).
//!
//! - [`build`]: `harvester plugin build DIR`, for Python and Rust plugins.
//! - [`nodelet`]: `harvester nodelet`, the node agent.
//! - [`client`] and [`commands`]: `apply`, `get`, `describe`, `delete`, `rollout status`.
//! - [`live`]: `logs` and `exec`, through the hub; [`dev`]: `harvester dev DIR`, build-push-sign-apply on save.

pub mod build;
pub mod client;
pub mod commands;
pub mod dev;
pub mod live;
pub mod nodelet;
pub mod oci;
