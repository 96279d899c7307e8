//! Plugin components as OCI artifacts: the CNCF wasm layout, pushes and
//! pulls by digest, a checked local store, and cosign-compatible signatures
//! made and verified offline with the `sigstore` crate.

pub mod artifact;
pub mod auth;
pub mod client;
pub mod fetch;
pub mod signing;
pub mod store;

pub use auth::Credentials;
pub use client::{PullError, Pushed, Registry, RegistryOptions, parse_reference, pinned, repository};
pub use fetch::{DEFAULT_LAYER_BYTES, FetchLimits};
pub use oci_client::Reference;
pub use signing::{Refusal, SigningKey, TrustedKey, Verified, generate_key_pair};
pub use store::BlobStore;

/// A progress bar for a transfer of `what`: drawn on a terminal's stderr,
/// hidden elsewhere (logs, tests, pipes).
pub fn progress_bar(what: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(0);
    pb.set_style(
        indicatif::ProgressStyle::with_template("{msg:24} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}
