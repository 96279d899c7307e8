//! How to run a plugin, wherever it is written: the grants, the config
//! handed to `init`, the tick interval and the limits. A Plugin's spec, a
//! node's assignment and a standalone manifest's entry all carry one
//! [`RunSpec`], and [`RunSpec::validate`] is the one check of it.
//!
//! On the wire and in YAML its four fields sit beside their neighbours
//! (`spec.grants`, not `spec.run.grants`). `#[serde(flatten)]` would give
//! that shape but turns off `deny_unknown_fields` and drops field paths
//! from errors, so [`runs_a_plugin!`] writes each carrier's serde form
//! instead: a private wire struct with the four fields listed once, here.

use crate::grants::Grants;
use crate::quantity::{CpuShare, DurationSpec, MemorySize};
use crate::validation::ValidationErrors;
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// How to run one plugin.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSpec {
    /// What the plugin may touch; everything else is denied.
    pub grants: Grants,
    /// Handed to the plugin's `init`; a config-only change needs no rebuild.
    pub config: BTreeMap<String, String>,
    pub tick_interval: DurationSpec,
    pub limits: Limits,
}

/// Resource limits of one plugin instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Limits {
    /// Cap on the plugin's linear memories and tables together.
    #[serde(default = "default_memory")]
    pub memory: MemorySize,
    /// Longest a single call into the plugin (init, tick, command) may run.
    #[serde(default = "default_call_timeout")]
    pub call_timeout: DurationSpec,
    /// The share of one CPU core the plugin's ticks and commands may use,
    /// averaged over a second; over it, its next ticks wait.
    #[serde(default = "default_cpu")]
    pub cpu: CpuShare,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory: default_memory(),
            call_timeout: default_call_timeout(),
            cpu: default_cpu(),
        }
    }
}

/// What a manifest that says nothing gets: no grants, no config, a tick
/// every 3 s, 64 MiB and 500 ms per call.
impl Default for RunSpec {
    fn default() -> Self {
        RunSpec {
            grants: Grants::default(),
            config: BTreeMap::new(),
            tick_interval: default_tick_interval(),
            limits: Limits::default(),
        }
    }
}

fn default_memory() -> MemorySize {
    MemorySize::mebibytes(64)
}

/// Half a core: a Pi Zero 2W's four cores hold eight plugins at their
/// limit and the node itself.
fn default_cpu() -> CpuShare {
    CpuShare::millicores(500)
}

fn default_call_timeout() -> DurationSpec {
    DurationSpec(Duration::from_millis(500))
}

pub(crate) fn default_tick_interval() -> DurationSpec {
    DurationSpec(Duration::from_secs(3))
}

impl RunSpec {
    /// Checks the grants' scopes and the timing bounds; `at` is where the
    /// fields sit (`spec`, `plugins[2]`).
    pub fn validate(&self, at: &str, errors: &mut ValidationErrors) {
        self.grants.validate(&format!("{at}.grants"), errors);
        validate_timing(self.tick_interval, &self.limits, at, errors);
    }
}

/// Bounds that keep one plugin from hogging a small board.
fn validate_timing(tick: DurationSpec, limits: &Limits, at: &str, errors: &mut ValidationErrors) {
    if tick.0 < Duration::from_millis(10) {
        errors.push(
            format!("{at}.tickInterval"),
            format!("{tick} is too short (at least 10ms)"),
        );
    }
    if tick.0 > Duration::from_secs(86_400) {
        errors.push(
            format!("{at}.tickInterval"),
            format!("{tick} is too long (at most 24h)"),
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
    // A plugin runs on one thread: more than one core is not a budget.
    if limits.cpu.0 < 10 || limits.cpu.0 > 1000 {
        errors.push(
            format!("{at}.limits.cpu"),
            format!("{} is out of range (10m-1, a share of one core)", limits.cpu),
        );
    }
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

/// Declares a struct that carries a [`RunSpec`] in `run`, serialized with
/// the run spec's fields after its own, in camelCase. The wire struct
/// takes the serde container attributes given (`deny_unknown_fields` for
/// what people write) and each field's attributes.
macro_rules! runs_a_plugin {
    (
        $(#[doc = $doc:literal])*
        #[serde($($container:tt)*)]
        pub struct $name:ident (wire $wire:ident) {
            $( $(#[$field_meta:meta])* pub $field:ident : $ty:ty, )*
        }
    ) => {
        $(#[doc = $doc])*
        #[derive(Debug, Clone, PartialEq)]
        pub struct $name {
            $( pub $field: $ty, )*
            pub run: $crate::run_spec::RunSpec,
        }

        #[derive(serde::Deserialize, schemars::JsonSchema)]
        #[serde($($container)*)]
        $(#[doc = $doc])*
        struct $wire {
            $( $(#[$field_meta])* $field: $ty, )*
            /// What the plugin may touch; everything else is denied.
            #[serde(default)]
            grants: $crate::grants::Grants,
            /// Handed to the plugin's init; a config-only change needs no rebuild.
            #[serde(
                default,
                skip_serializing_if = "std::collections::BTreeMap::is_empty",
                deserialize_with = "crate::run_spec::config_map"
            )]
            #[schemars(schema_with = "crate::schema::config_values")]
            config: std::collections::BTreeMap<String, String>,
            /// How often the plugin's tick runs (default 3s, at least 10ms).
            #[serde(default = "crate::run_spec::default_tick_interval")]
            tick_interval: $crate::quantity::DurationSpec,
            /// The plugin's memory, the length of each call into it, and its share of a CPU core.
            #[serde(default)]
            limits: $crate::run_spec::Limits,
        }

        impl schemars::JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
                $wire::json_schema(generator)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                // The same shape, borrowed: a hub serialises every node's
                // assignments on each change, so nothing is copied.
                #[derive(serde::Serialize)]
                #[serde($($container)*)]
                struct Borrowed<'a> {
                    $( $(#[$field_meta])* $field: &'a $ty, )*
                    grants: &'a $crate::grants::Grants,
                    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
                    config: &'a std::collections::BTreeMap<String, String>,
                    tick_interval: &'a $crate::quantity::DurationSpec,
                    limits: &'a $crate::run_spec::Limits,
                }
                Borrowed {
                    $( $field: &self.$field, )*
                    grants: &self.run.grants,
                    config: &self.run.config,
                    tick_interval: &self.run.tick_interval,
                    limits: &self.run.limits,
                }
                .serialize(s)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<$name, D::Error> {
                let w = $wire::deserialize(d)?;
                Ok($name {
                    $( $field: w.$field, )*
                    run: $crate::run_spec::RunSpec {
                        grants: w.grants,
                        config: w.config,
                        tick_interval: w.tick_interval,
                        limits: w.limits,
                    },
                })
            }
        }
    };
}

pub(crate) use runs_a_plugin;

#[cfg(test)]
mod tests {
    use super::*;

    runs_a_plugin! {
        /// A carrier for the tests.
        #[serde(deny_unknown_fields, rename_all = "camelCase")]
        pub struct Carrier (wire CarrierWire) {
            pub name: String,
        }
    }

    #[test]
    fn the_run_spec_fields_sit_beside_the_carriers_own() {
        let c: Carrier =
            serde_yaml::from_str("name: a\ngrants: {leds: {indices: [1]}}\nconfig: {T: 30.0}\ntickInterval: 1s\n")
                .unwrap();
        assert_eq!(c.name, "a");
        assert_eq!(c.run.config["T"], "30.0");
        assert_eq!(c.run.tick_interval.0, Duration::from_secs(1));
        assert_eq!(c.run.limits, Limits::default());
        assert!(c.run.grants.allows_led(1));
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["tickInterval"], "1s");
        assert_eq!(json["grants"]["leds"]["indices"][0], 1);
        assert!(json.get("run").is_none());
        let back: Carrier = serde_json::from_value(json).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn unknown_fields_are_refused_with_their_place() {
        let err = serde_yaml::from_str::<Carrier>("name: a\nlimits: {memory: 8Mi, cpus: 2}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("limits: unknown field `cpus`"), "{err}");
        let err = serde_yaml::from_str::<Carrier>("name: a\ntickIntervall: 1s\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `tickIntervall`"), "{err}");
    }

    #[test]
    fn validation_names_the_field() {
        let run = RunSpec {
            tick_interval: DurationSpec(Duration::from_millis(1)),
            ..RunSpec::default()
        };
        let mut errors = ValidationErrors::default();
        run.validate("spec", &mut errors);
        assert!(
            errors.to_string().contains("spec.tickInterval: 1ms is too short"),
            "{errors}"
        );
        for (cpu, ok) in [("5m", false), ("10m", true), ("1", true), ("1.5", false)] {
            let c: Carrier = serde_yaml::from_str(&format!("name: a\nlimits: {{cpu: {cpu}}}\n")).unwrap();
            let mut errors = ValidationErrors::default();
            c.run.validate("spec", &mut errors);
            assert_eq!(errors.is_empty(), ok, "{cpu}: {errors}");
            if !ok {
                assert!(errors.to_string().contains("spec.limits.cpu:"), "{errors}");
            }
        }
    }
}
