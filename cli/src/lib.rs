//! The `harvester` command: one binary for every role (like k3s).
//!
//! - [`args`]: the command line, every command with its examples.
//! - [`build`]: `harvester plugin build DIR`, for Python and Rust plugins.
//! - [`nodelet`]: `harvester nodelet`, the node agent.
//! - [`client`]: the typed client of the hub's API.
//! - [`commands`]: `apply`, `get`, `describe`, `delete`, `rollout status`,
//!   `logs` and `exec`, one file per group.
//! - [`dev`]: `harvester dev DIR`, build-push-sign-apply on save.
//! - [`oci`]: `keygen`, `push`, `sign`, `verify`, `pull`.

pub mod args;
pub mod build;
pub mod client;
pub mod commands;
pub mod dev;
pub mod nodelet;
pub mod oci;
