//! Harvester's resource types, shared by the CLI, the controller and the nodelet.
//!
//! - [`compiled`]: code a hub compiles for its nodes, and what it vouches for.
//! - [`digest`]: `sha256:` content digests; everything runs by digest.
//! - [`grants`]: what a plugin may touch (deny by default), with scope checks.
//! - [`live`]: what nodes push to the hub (logs, readings, LEDs) and commands sent down.
//! - [`quantity`]: durations (`3s`, `200ms`) and memory sizes (`64Mi`) as they
//!   appear in manifests.
//! - [`resources`]: the `harvester.dev/v1alpha1` kinds `Plugin` and `Node`, multi-document parsing.
//! - [`standalone`]: the local manifest a nodelet runs in `--standalone` mode.
//! - [`validation`]: errors that name the field path that was wrong.
//!
//! Every type rejects unknown fields: a typo in a manifest is an error, never a
//! silently ignored setting.

pub mod compiled;
pub mod digest;
pub mod grants;
pub mod live;
pub mod quantity;
pub mod resources;
pub mod standalone;
pub mod validation;

pub use digest::Digest;
pub use grants::{Capability, Grants};
pub use quantity::{DurationSpec, MemorySize};
pub use validation::{FieldError, ValidationErrors};
