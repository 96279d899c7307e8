//! The JSON Schema of `harvester.dev/v1alpha1`, derived from the same types
//! the API reads manifests into (so the schema, `harvester explain` and the
//! API's validation agree), for editors (the YAML language server) and for
//! `harvester explain`. What serde reads by hand (quantities, digests,
//! status words) says here what it accepts.

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use std::borrow::Cow;

/// The schema of a Plugin and a Node document: either, told apart by `kind`.
pub fn manifest_schema() -> serde_json::Value {
    let mut generator = schemars::generate::SchemaSettings::draft07().into_generator();
    let plugin = generator.subschema_for::<crate::resources::Plugin>();
    let node = generator.subschema_for::<crate::resources::Node>();
    let mut root = json_schema!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "$id": "https://harvester.dev/schemas/v1alpha1.json",
        "title": "Harvester manifest (harvester.dev/v1alpha1)",
        "description": "A Plugin or a Node, as harvester apply takes them.",
        "oneOf": [plugin, node],
    });
    let definitions = generator.take_definitions(true);
    root.insert("definitions".into(), serde_json::Value::Object(definitions));
    root.to_value()
}

/// The schema `s` stands for: references followed, a lone `allOf` or an
/// optional field's `anyOf [X, null]` unwrapped.
pub fn resolve<'a>(root: &'a serde_json::Value, mut s: &'a serde_json::Value) -> &'a serde_json::Value {
    for _ in 0..32 {
        if let Some(r) = s.get("$ref").and_then(|r| r.as_str()) {
            s = &root["definitions"][r.trim_start_matches("#/definitions/")];
            continue;
        }
        let only = |key: &str| -> Option<&'a serde_json::Value> {
            let all: Vec<&serde_json::Value> = s.get(key)?.as_array()?.iter().filter(|x| x["type"] != "null").collect();
            (all.len() == 1).then(|| all[0])
        };
        match only("allOf").or_else(|| only("anyOf")) {
            Some(inner) => s = inner,
            None => break,
        }
    }
    s
}

macro_rules! text_schema {
    ($ty:ty, $name:literal, $schema:tt) => {
        impl JsonSchema for $ty {
            fn schema_name() -> Cow<'static, str> {
                $name.into()
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!($schema)
            }
        }
    };
}

text_schema!(crate::Digest, "Digest", {
    "type": "string",
    "description": "A content digest: sha256: and 64 hex digits.",
    "pattern": "^sha256:[0-9a-f]{64}$"
});
text_schema!(crate::DurationSpec, "Duration", {
    "type": "string",
    "description": "A duration: a number with ms, s, m or h (500ms, 3s, 10m).",
    "pattern": "^[0-9]+(\\.[0-9]+)?(ms|s|m|h)$"
});
text_schema!(crate::MemorySize, "MemorySize", {
    "description": "A memory size: a byte count, or a number with Ki, Mi or Gi (64Mi).",
    "anyOf": [
        {"type": "integer", "minimum": 0},
        {"type": "string", "pattern": "^[0-9]+(Ki|Mi|Gi)?$"}
    ]
});
text_schema!(crate::quantity::CpuShare, "CpuShare", {
    "description": "A share of one CPU core: millicores (250m) or cores (0.5).",
    "anyOf": [
        {"type": "number", "minimum": 0},
        {"type": "string", "pattern": "^([0-9]+m|[0-9]+(\\.[0-9]+)?)$"}
    ]
});
text_schema!(crate::rollout::Amount, "Amount", {
    "description": "A number of nodes, or a percentage of them (25%).",
    "anyOf": [
        {"type": "integer", "minimum": 0},
        {"type": "string", "pattern": "^[0-9]+%?$"}
    ]
});
text_schema!(crate::rollout::Pause, "Pause", {
    "description": "Wait this long (a duration), or {} to wait until harvester rollout promote.",
    "anyOf": [
        {"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?(ms|s|m|h)$"},
        {"type": "object", "additionalProperties": false}
    ]
});

/// A status word (Phase, Reason, ConditionType): the known ones, though a
/// newer peer's are read too.
pub(crate) fn vocabulary(name: &str, known: Vec<&str>) -> Schema {
    json_schema!({
        "type": "string",
        "description": format!("A {name}: one of {}.", known.join(", ")),
    })
}

/// `config`: the plugin reads strings; numbers and booleans are kept as written.
pub(crate) fn config_values(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "description": "Handed to the plugin's init as strings; numbers and booleans are kept exactly as written.",
        "additionalProperties": {"type": ["string", "number", "boolean"]}
    })
}

/// A time: milliseconds since the epoch, or RFC 3339 (as get -o yaml prints).
pub(crate) fn timestamp(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "Milliseconds since the Unix epoch, or an RFC 3339 time.",
        "anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "format": "date-time"}]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve<'a>(root: &'a serde_json::Value, s: &'a serde_json::Value) -> &'a serde_json::Value {
        super::resolve(root, s)
    }

    #[test]
    fn the_schema_describes_what_the_api_reads() {
        let root = manifest_schema();
        let plugin = resolve(&root, &root["oneOf"][0]);
        let spec = resolve(&root, &plugin["properties"]["spec"]);
        // The run spec's fields sit beside the spec's own, as in YAML.
        for field in [
            "image",
            "nodeSelector",
            "grants",
            "config",
            "tickInterval",
            "limits",
            "rollout",
        ] {
            assert!(spec["properties"].get(field).is_some(), "spec.{field} missing: {spec}");
        }
        assert_eq!(spec["additionalProperties"], false);
        assert_eq!(spec["required"], serde_json::json!(["image"]));
        let grants = resolve(&root, &spec["properties"]["grants"]);
        assert!(grants["properties"]["leds"].is_object());
        assert!(
            spec["properties"]["grants"]["description"]
                .as_str()
                .unwrap_or_default()
                .contains("denied")
        );
        let memory = resolve(
            &root,
            &resolve(&root, &spec["properties"]["limits"])["properties"]["memory"],
        );
        assert!(memory["description"].as_str().unwrap().contains("64Mi"));
    }
}
