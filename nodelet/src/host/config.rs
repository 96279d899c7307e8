//! `config`: the plugin's own configuration from its manifest.

use super::{Data, HostCapability, HostState};
use crate::bindings;
use crate::bindings::config::Host;
use harvester_api::Capability;
use wasmtime::component::Linker;

pub(super) struct Config;

impl HostCapability for Config {
    const CAPABILITY: Capability = Capability::Config;
    fn link(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
        bindings::config::add_to_linker::<HostState, Data>(l, |s| s)
    }
}

impl Host for HostState {
    fn get(&mut self, key: String) -> Option<String> {
        self.ctx.config.get(&key).cloned()
    }

    fn all(&mut self) -> Vec<(String, String)> {
        self.ctx.config.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}
