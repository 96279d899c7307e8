//! Deny by default, checked before anything runs: every import of a component
//! must be WASI (locked down) or a capability its manifest grants.

use harvester_api::grants::{WIT_PACKAGE, WIT_VERSION};
use harvester_api::{Capability, Grants};
use wasmtime::Engine;
use wasmtime::component::Component;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    #[error(
        "the component imports `{interface}`, which its manifest does not grant: add `{capability}` to its grants (with the scope it needs), or rebuild the plugin without that import"
    )]
    NotGranted { interface: String, capability: Capability },
    #[error(
        "the component imports `{interface}`, which this node does not provide (it offers wasi:* and {WIT_PACKAGE}/{{{offered}}}@{WIT_VERSION})"
    )]
    Unknown { interface: String, offered: String },
}

/// The capabilities a component imports, or the first import that is refused.
pub fn check(engine: &Engine, component: &Component, grants: &Grants) -> Result<Vec<Capability>, ImportError> {
    let mut used = Vec::new();
    for (name, _) in component.component_type().imports(engine) {
        if name.starts_with("wasi:") {
            continue;
        }
        if name.starts_with(&format!("{WIT_PACKAGE}/types@")) {
            continue;
        }
        match Capability::from_interface(name) {
            Some(cap) if grants.grants(cap) => used.push(cap),
            Some(cap) => {
                return Err(ImportError::NotGranted {
                    interface: name.to_string(),
                    capability: cap,
                });
            }
            None => {
                return Err(ImportError::Unknown {
                    interface: name.to_string(),
                    offered: super::known_capabilities(),
                });
            }
        }
    }
    used.sort();
    used.dedup();
    Ok(used)
}
