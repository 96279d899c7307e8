//! The `harvester` command: one binary for every role (like k3s).
//!
//! - [`build`]: `harvester plugin build DIR`, for Python and Rust plugins.
//! - [`nodelet`]: `harvester nodelet`, the node agent.

pub mod build;
pub mod nodelet;
