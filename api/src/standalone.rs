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

use crate::grants::Grants;
use crate::quantity::{DurationSpec, MemorySize};
use crate::validation::ValidationErrors;
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A whole standalone manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StandaloneManifest {
    pub plugins: Vec<StandalonePlugin>,
}

/// One plugin of a standalone manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StandalonePlugin {
    pub name: String,
    /// Path of the `.wasm` component, relative to the manifest file.
    pub component: PathBuf,
    #[serde(default)]
    pub grants: Grants,
    #[serde(default, deserialize_with = "config_map")]
    pub config: BTreeMap<String, String>,
    #[serde(default = "default_tick_interval")]
    pub tick_interval: DurationSpec,
    #[serde(default)]
    pub limits: Limits,
}

/// Resource limits of one plugin instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Limits {
    /// Cap on the plugin's linear memories and tables together.
    #[serde(default = "default_memory")]
    pub memory: MemorySize,
    /// Longest a single call into the plugin (init, tick, command) may run.
    #[serde(default = "default_call_timeout")]
    pub call_timeout: DurationSpec,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory: default_memory(),
            call_timeout: default_call_timeout(),
        }
    }
}

fn default_memory() -> MemorySize {
    MemorySize::mebibytes(64)
}

fn default_call_timeout() -> DurationSpec {
    DurationSpec(Duration::from_millis(500))
}

fn default_tick_interval() -> DurationSpec {
    DurationSpec(Duration::from_secs(3))
}

/// Config values are strings for the plugin, but users write `HIGH_TEMP: 30.0`.
/// Keep the number exactly as written rather than round-tripping through f64.
pub(crate) fn config_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let raw = BTreeMap::<String, serde_yaml::Value>::deserialize(d)?;
    raw.into_iter()
        .map(|(k, v)| {
            let s = match v {
                serde_yaml::Value::String(s) => s,
                serde_yaml::Value::Number(n) => n.to_string(),
                serde_yaml::Value::Bool(b) => b.to_string(),
                other => {
                    return Err(serde::de::Error::custom(format!(
                        "config.{k}: expected a string, number or boolean, found {}",
                        match other {
                            serde_yaml::Value::Null => "nothing",
                            serde_yaml::Value::Sequence(_) => "a list",
                            serde_yaml::Value::Mapping(_) => "a mapping",
                            _ => "another type",
                        }
                    )));
                }
            };
            Ok((k, s))
        })
        .collect()
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
        // serde_yaml's messages carry the line and column of the bad field.
        let manifest: StandaloneManifest = serde_yaml::from_str(text).map_err(|e| ParseError::Syntax(e.to_string()))?;
        manifest.validate().map_err(ParseError::Invalid)?;
        Ok(manifest)
    }

    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let mut names = HashMap::new();
        let mut pins: HashMap<u8, &str> = HashMap::new();
        let mut leds: HashMap<u32, &str> = HashMap::new();
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
            p.grants.validate(&format!("{at}.grants"), &mut errors);
            validate_timing(p.tick_interval, &p.limits, &at, &mut errors);
            for pin in p.grants.output_pins() {
                if let Some(other) = pins.insert(pin, &p.name) {
                    errors.push(
                        format!("{at}.grants"),
                        format!("pin {pin} is already granted to plugin {other:?}"),
                    );
                }
            }
            for idx in p.grants.leds.iter().flat_map(|l| l.indices.iter()) {
                if let Some(other) = leds.insert(*idx, &p.name) {
                    errors.push(
                        format!("{at}.grants.leds"),
                        format!("LED {idx} is already granted to plugin {other:?}"),
                    );
                }
            }
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

/// Bounds that keep one plugin from hogging a small board.
pub fn validate_timing(tick: DurationSpec, limits: &Limits, at: &str, errors: &mut ValidationErrors) {
    if tick.0 < Duration::from_millis(10) {
        errors.push(
            format!("{at}.tickInterval"),
            format!("{tick} is too short (at least 10ms)"),
        );
    }
    if limits.memory.bytes() < (1 << 20) || limits.memory.bytes() > (4 << 30) {
        errors.push(
            format!("{at}.limits.memory"),
            format!("{} is out of range (1Mi-4Gi)", limits.memory),
        );
    }
    if limits.call_timeout.0 < Duration::from_millis(10) || limits.call_timeout.0 > Duration::from_secs(60) {
        errors.push(
            format!("{at}.limits.callTimeout"),
            format!("{} is out of range (10ms-60s)", limits.call_timeout),
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
        let p = &m.plugins[0];
        assert_eq!(p.config["HIGH_TEMP"], "30.0");
        assert_eq!(p.tick_interval.0, Duration::from_secs(3));
        assert_eq!(p.limits, Limits::default());
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
