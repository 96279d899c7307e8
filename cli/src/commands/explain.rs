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
