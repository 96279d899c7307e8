//! The local manifest of `harvester nodelet --standalone FILE`: plugins to run on
//! this node without a controller, for development and for single boards.
//!
//! ```yaml
//! plugins:
//!   - name: dht22
//!     component: ../plugins/dht22/dht22.wasm   # relative to this file
//!     grants: {dht22: {pin: 4}, leds: {indices: [1]}}
//!     config: {HIGH_TEMP: "30.0"}
//!     tickInterval: 3s
//!     limits: {memory: 64Mi, callTimeout: 200ms}
//! ```

use crate::grants::{Exclusive, Holdings};
use crate::run_spec::runs_a_plugin;
use crate::validation::ValidationErrors;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A whole standalone manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StandaloneManifest {
    pub plugins: Vec<StandalonePlugin>,
}

runs_a_plugin! {
    /// One plugin of a standalone manifest.
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct StandalonePlugin (wire StandalonePluginWire) {
        pub name: String,
        /// Path of the `.wasm` component, relative to the manifest file.
        pub component: PathBuf,
    }
}

/// A manifest that could not be used, with the file it came from.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Parse { file: PathBuf, message: String },
    #[error("{file}: {errors}")]
    Invalid { file: PathBuf, errors: ValidationErrors },
}

impl StandaloneManifest {
    /// Reads, parses and validates a manifest; component paths come back
    /// resolved against the manifest's folder.
    pub fn load(file: &Path) -> Result<StandaloneManifest, ManifestError> {
        let text = std::fs::read_to_string(file).map_err(|source| ManifestError::Read {
            file: file.to_path_buf(),
            source,
        })?;
        let mut manifest = Self::parse(&text).map_err(|e| match e {
            ParseError::Syntax(message) => ManifestError::Parse {
                file: file.to_path_buf(),
                message,
            },
            ParseError::Invalid(errors) => ManifestError::Invalid {
                file: file.to_path_buf(),
                errors,
            },
        })?;
        let base = file.parent().unwrap_or(Path::new("."));
        for p in &mut manifest.plugins {
            if p.component.is_relative() {
                p.component = base.join(&p.component);
            }
        }
        Ok(manifest)
    }

    /// Parses and validates manifest text.
    pub fn parse(text: &str) -> Result<StandaloneManifest, ParseError> {
        crate::validation::check_yaml_size(text).map_err(|(_, why)| ParseError::Syntax(why))?;
        // serde_yaml's messages carry the line and column of the bad field.
        let manifest: StandaloneManifest =
            crate::validation::deserialize_at(serde_yaml::Deserializer::from_str(text), "")
                .map_err(|e| ParseError::Syntax(e.to_string()))?;
        manifest.validate().map_err(ParseError::Invalid)?;
        Ok(manifest)
    }

    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let mut names = HashMap::new();
        let mut held = Holdings::default();
        for (i, p) in self.plugins.iter().enumerate() {
            let at = format!("plugins[{i}]");
            validate_name(&p.name, &format!("{at}.name"), &mut errors);
            if let Some(prev) = names.insert(p.name.as_str(), i) {
                errors.push(
                    format!("{at}.name"),
                    format!("{:?} is already the name of plugins[{prev}]", p.name),
                );
            }
            if p.component.as_os_str().is_empty() {
                errors.push(
                    format!("{at}.component"),
                    "give the path of the plugin's .wasm component",
                );
            }
            p.run.validate(&at, &mut errors);
            for clash in held.clashes(&p.run.grants) {
                let (path, what) = match clash.what {
                    Exclusive::Pin(pin) => (format!("{at}.grants"), format!("pin {pin}")),
                    Exclusive::Led(i) => (format!("{at}.grants.leds"), format!("LED {i}")),
                };
                errors.push(path, format!("{what} is already granted to plugin {:?}", clash.holder));
            }
            held.take(&p.name, &p.run.grants);
        }
        errors.into_result()
    }
}

/// Why manifest text was refused.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("{0}")]
    Syntax(String),
    #[error("{0}")]
    Invalid(ValidationErrors),
}

/// Names follow Kubernetes' DNS label rule so they are safe in paths, URLs and metric labels.
pub fn validate_name(name: &str, path: &str, errors: &mut ValidationErrors) {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !ok {
        errors.push(
            path,
            format!("{name:?} is not a valid name: use 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_manifest_parses_with_defaults() {
        let m = StandaloneManifest::parse(
            "plugins:\n- name: dht22\n  component: a.wasm\n  grants: {dht22: {pin: 4}, leds: {indices: [1]}}\n  config: {HIGH_TEMP: 30.0, NAME: x}\n",
        )
        .unwrap();
        let p = &m.plugins[0].run;
        assert_eq!(p.config["HIGH_TEMP"], "30.0");
        assert_eq!(p.tick_interval.0, std::time::Duration::from_secs(3));
        assert_eq!(p.limits, crate::run_spec::Limits::default());
    }

    #[test]
    fn bad_manifests_name_the_field() {
        let err = StandaloneManifest::parse(
            "plugins:\n- name: a\n  component: a.wasm\n  tickInterval: 1ms\n  grants: {gpio: {pins: [99]}}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("plugins[0].tickInterval: 1ms is too short"), "{err}");
        assert!(
            err.contains("plugins[0].grants.gpio.pins[0]: pin 99 is not a valid BCM GPIO"),
            "{err}"
        );

        let err = StandaloneManifest::parse("plugins:\n- name: a\n  component: a.wasm\n  grant: {}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `grant`") && err.contains("line 4"), "{err}");
    }

    #[test]
    fn two_plugins_cannot_share_a_pin_or_led() {
        let err = StandaloneManifest::parse(
            "plugins:\n- {name: a, component: a.wasm, grants: {leds: {indices: [1]}, gpio: {pins: [17]}}}\n- {name: b, component: b.wasm, grants: {leds: {indices: [1]}, gpio: {pins: [17]}}}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("plugins[1].grants: pin 17 is already granted to plugin \"a\""),
            "{err}"
        );
        assert!(
            err.contains("plugins[1].grants.leds: LED 1 is already granted to plugin \"a\""),
            "{err}"
        );
    }

    #[test]
    fn names_must_be_dns_labels() {
        let err = StandaloneManifest::parse("plugins:\n- {name: Bad_Name, component: a.wasm}\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("plugins[0].name: \"Bad_Name\" is not a valid name"),
            "{err}"
        );
    }
}
