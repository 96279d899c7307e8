//! Code a hub compiles for its nodes, so that small boards never run the
//! compiler: what the node asks for and what the hub vouches for.
//!
//! A node asks `GET /api/v1alpha1/compiled/{artifact}?target=T&engine=H`
//! for an artifact it was assigned. The hub answers with the code as the
//! body and two headers: [`STATEMENT_HEADER`], a base64 [`CompiledStatement`],
//! and [`SIGNATURE_HEADER`], the hub key's base64 signature of those JSON
//! bytes. The node loads the code only if the signature is by a key it
//! trusts (`--trust-compiler`), the statement names its own target, engine
//! and the artifact's component, and the body hashes to `code`.

use crate::Digest;
use serde::{Deserialize, Serialize};

pub const STATEMENT_HEADER: &str = "harvester-compiled-statement";
pub const SIGNATURE_HEADER: &str = "harvester-compiled-signature";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CompiledStatement {
    /// The artifact the node was assigned (an OCI manifest digest, or the
    /// digest of a component uploaded to the hub).
    pub artifact: Digest,
    /// The component (the WebAssembly bytes) the code was compiled from.
    pub component: Digest,
    /// The target triple the code is for.
    pub target: String,
    /// The engine hash (wasmtime version, settings, target): a node loads
    /// only code whose hash is its own.
    pub engine: String,
    /// The SHA-256 of the code, and its length in bytes.
    pub code: Digest,
    pub size: u64,
}

/// How a node gets runnable code, as it reports itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EngineInfo {
    /// The target triple code must be compiled for.
    pub target: String,
    /// The engine hash a hub's code must carry to load here.
    pub hash: String,
    /// `hub` (asks the hub, never compiles), `auto` (asks the hub, compiles
    /// itself when the hub cannot help) or `local` (compiles itself).
    pub compile: String,
}
