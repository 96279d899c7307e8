//! `config`: the plugin's own configuration from its manifest.

use super::HostState;
use crate::bindings::config::Host;

host_capability!(Config, Config, config);

impl Host for HostState {
    fn get(&mut self, key: String) -> Option<String> {
        self.ctx.config.get(&key).cloned()
    }

    fn all(&mut self) -> Vec<(String, String)> {
        self.ctx.config.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}
