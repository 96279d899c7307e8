//! `harvester explain plugin.spec.grants` and `harvester schema`: the
//! fields of a kind, read from the JSON Schema derived from the types the
//! API reads manifests into, so what they say is what apply accepts.

use anyhow::bail;
use harvester_api::schema::{manifest_schema, resolve};
use serde_json::Value;

/// The schema's name for a field's type: `Grants`, `string`, `[]integer`,
/// `map[string]string`.
fn type_name(root: &Value, field: &Value) -> String {
    if let Some(r) = referenced(field) {
        return r.to_string();
    }
    let s = resolve(root, field);
    if !std::ptr::eq(s, field)
        && let Some(r) = referenced_in(field)
    {
        return r;
    }
    match s.get("type") {
        Some(Value::String(t)) if t == "array" => format!("[]{}", type_name(root, &s["items"])),
        Some(Value::String(t)) if t == "object" && s["additionalProperties"].is_object() => {
            format!("map[string]{}", type_name(root, &s["additionalProperties"]))
        }
        Some(Value::String(t)) => t.clone(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .collect::<Vec<_>>()
            .join("|"),
        _ if s.get("anyOf").is_some() => "string|integer".into(),
        _ => "object".into(),
    }
}

fn referenced(s: &Value) -> Option<&str> {
    s.get("$ref")?.as_str()?.strip_prefix("#/definitions/")
}

/// The definition a wrapper (`allOf`, `anyOf` with null) points at.
fn referenced_in(s: &Value) -> Option<String> {
    ["allOf", "anyOf"]
        .iter()
        .find_map(|k| s.get(*k)?.as_array()?.iter().find_map(referenced).map(str::to_string))
}

fn description<'a>(root: &'a Value, field: &'a Value) -> &'a str {
    field
        .get("description")
        .or_else(|| resolve(root, field).get("description"))
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn indent(text: &str, by: &str) -> String {
    text.lines().map(|l| format!("{by}{l}\n")).collect()
}

/// The text `explain` prints for `path` (`plugin`, `plugin.spec.grants`).
pub fn explain_text(path: &str, recursive: bool) -> anyhow::Result<String> {
    let root = manifest_schema();
    let mut parts = path.split('.');
    let kind = parts.next().unwrap_or_default();
    let (title, index) = match crate::client::Kind::parse(kind)? {
        crate::client::Kind::Plugin => ("Plugin", 0),
        crate::client::Kind::Node => ("Node", 1),
    };
    let mut field = &root["oneOf"][index];
    let mut at = title.to_lowercase();
    let mut name = None;
    for part in parts {
        let mut s = resolve(&root, field);
        if s["type"] == "array" {
            s = resolve(&root, &s["items"]);
        }
        match s["properties"].get(part) {
            Some(f) => field = f,
            None => {
                let known: Vec<&str> = s["properties"]
                    .as_object()
                    .map(|p| p.keys().map(String::as_str).collect())
                    .unwrap_or_default();
                if known.is_empty() {
                    bail!("{at} has no fields: {part:?} does not exist");
                }
                bail!(
                    "field {part:?} does not exist in {at}; its fields: {}",
                    known.join(", ")
                );
            }
        }
        at = format!("{at}.{part}");
        name = Some(part);
    }
    let mut out = format!(
        "KIND:     {title}\nVERSION:  {}\n\n",
        harvester_api::resources::API_VERSION
    );
    if let Some(n) = name {
        out.push_str(&format!("FIELD:    {n} <{}>\n\n", type_name(&root, field)));
    }
    out.push_str("DESCRIPTION:\n");
    out.push_str(&indent(description(&root, field), "    "));
    let mut s = resolve(&root, field);
    if s["type"] == "array" {
        s = resolve(&root, &s["items"]);
    }
    if s["properties"].as_object().is_some_and(|p| !p.is_empty()) {
        out.push_str("\nFIELDS:\n");
        fields(&root, s, 1, recursive, &mut out, 0);
    }
    Ok(out)
}

fn fields(root: &Value, s: &Value, depth: usize, recursive: bool, out: &mut String, guard: usize) {
    let required: Vec<&str> = s["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(props) = s["properties"].as_object() else {
        return;
    };
    let pad = "  ".repeat(depth);
    for (name, f) in props {
        let mark = if required.contains(&name.as_str()) {
            " -required-"
        } else {
            ""
        };
        out.push_str(&format!("{pad}{name}\t<{}>{mark}\n", type_name(root, f)));
        if recursive {
            let mut inner = resolve(root, f);
            if inner["type"] == "array" {
                inner = resolve(root, &inner["items"]);
            }
            if guard < 16 {
                fields(root, inner, depth + 1, true, out, guard + 1);
            }
        } else {
            out.push_str(&indent(description(root, f), &format!("{pad}  ")));
            out.push('\n');
        }
    }
}

/// `harvester explain`.
pub fn explain(path: &str, recursive: bool) -> anyhow::Result<()> {
    print!("{}", explain_text(path, recursive)?);
    Ok(())
}

/// `harvester schema`: the JSON Schema of a manifest document.
pub fn schema() -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(&manifest_schema())?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `value` fits `schema`: properties, unknown fields, item and
    /// scalar types (patterns aside): enough to compare with the API.
    fn fits(root: &Value, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
        let s = resolve(root, schema);
        for key in ["anyOf", "oneOf"] {
            if let Some(branches) = s.get(key).and_then(Value::as_array) {
                let ok = branches.iter().any(|b| {
                    let mut e = Vec::new();
                    fits(root, b, value, at, &mut e);
                    e.is_empty()
                });
                if !ok {
                    errors.push(format!("{at}: fits no branch of {key}"));
                }
                return;
            }
        }
        if let Some(c) = s.get("const")
            && c != value
        {
            errors.push(format!("{at}: {value} is not {c}"));
            return;
        }
        if let Some(allowed) = s.get("enum").and_then(Value::as_array)
            && !allowed.contains(value)
        {
            errors.push(format!("{at}: {value} is not one of {allowed:?}"));
            return;
        }
        let types: Vec<&str> = match &s["type"] {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            _ => return,
        };
        let kind = match value {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        if !types
            .iter()
            .any(|t| *t == kind || (*t == "number" && kind == "integer"))
        {
            errors.push(format!("{at}: {kind} where the schema says {types:?}"));
            return;
        }
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    match (s["properties"].get(k), &s["additionalProperties"]) {
                        (Some(p), _) => fits(root, p, v, &format!("{at}.{k}"), errors),
                        (None, Value::Bool(false)) => errors.push(format!("{at}.{k}: not in the schema")),
                        (None, extra @ Value::Object(_)) => fits(root, extra, v, &format!("{at}.{k}"), errors),
                        (None, _) => {}
                    }
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    fits(root, &s["items"], v, &format!("{at}[{i}]"), errors);
                }
            }
            _ => {}
        }
    }

    fn schema_errors(yaml: &str) -> Vec<String> {
        let root = manifest_schema();
        let value: Value = serde_yaml::from_str(yaml).unwrap();
        let index = if value["kind"] == "Node" { 1 } else { 0 };
        let mut errors = Vec::new();
        fits(&root, &root["oneOf"][index], &value, "", &mut errors);
        errors
    }

    #[test]
    fn the_schema_and_the_api_agree_on_the_shipped_manifests() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/fleet");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(
                harvester_api::resources::parse_documents(&text).is_ok(),
                "{}",
                path.display()
            );
            assert_eq!(schema_errors(&text), Vec::<String>::new(), "{}", path.display());
            // What the API refuses, the schema refuses too.
            for (from, to) in [
                ("spec:\n", "spec:\n  colour: red\n"),
                ("metadata:", "metadata:\n  colour: red\n  x:"),
                ("image:", "revisionHistoryLimit: many\n  image:"),
                ("image:", "rollout: {strategy: Sideways}\n  image:"),
            ] {
                let broken = text.replacen(from, to, 1);
                assert_ne!(broken, text, "{}: {from:?}", path.display());
                assert!(harvester_api::resources::parse_documents(&broken).is_err(), "{broken}");
                assert!(
                    !schema_errors(&broken).is_empty(),
                    "the schema takes what the API refuses:\n{broken}"
                );
            }
            seen += 1;
        }
        assert!(seen >= 5, "the shipped manifests are in {}", dir.display());
    }

    #[test]
    fn explain_walks_the_schema_and_names_what_is_not_there() {
        let grants = explain_text("plugin.spec.grants", false).unwrap();
        assert!(grants.contains("FIELD:    grants <Grants>"), "{grants}");
        assert!(grants.contains("everything else is denied"), "{grants}");
        assert!(grants.contains("  leds\t<LedsGrant>"), "{grants}");
        let indices = explain_text("pl.spec.grants.leds.indices", false).unwrap();
        assert!(indices.contains("indices <[]integer>"), "{indices}");
        let spec = explain_text("plugin.spec", false).unwrap();
        assert!(spec.contains("image\t<string> -required-"), "{spec}");
        assert!(spec.contains("config\t<map[string]"), "{spec}");
        let err = explain_text("plugin.spec.grantz", false).unwrap_err().to_string();
        assert!(err.contains("\"grantz\" does not exist in plugin.spec"), "{err}");
        assert!(err.contains("grants"), "{err}");
        let all = explain_text("node", true).unwrap();
        assert!(all.contains("    lastHeartbeat\t<"), "{all}");
    }
}
