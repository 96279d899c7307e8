//! kubectl's output templates: `-o jsonpath='{.items[*].metadata.name}'`,
//! `-o custom-columns=NAME:.metadata.name,...` and `--sort-by=.metadata.name`.
//! The template language (text, `{expression}`, `{range ...}...{end}`,
//! `{"literal"}`) is kubectl's; each expression is evaluated as an RFC 9535
//! JSONPath, which kubectl's dialect (`.a.b`, `[*]`, `[0]`,
//! `[?(@.type=="Ready")]`, `..name`) reads as.

use anyhow::{Context, bail};
use serde_json::Value;
use serde_json_path::JsonPath;

/// One parsed JSONPath expression.
#[derive(Debug)]
pub struct Path(JsonPath);

impl Path {
    /// `.metadata.name`, `{.metadata.name}`, `$.metadata.name`, `@.x`.
    pub fn parse(text: &str) -> anyhow::Result<Path> {
        let inner = text.trim();
        let inner = inner
            .strip_prefix('{')
            .and_then(|s| s.strip_suffix('}'))
            .unwrap_or(inner)
            .trim();
        let rooted = match inner.chars().next() {
            Some('$') => inner.to_string(),
            Some('@') => format!("${}", &inner[1..]),
            Some('.' | '[') => format!("${inner}"),
            Some(_) => format!("$.{inner}"),
            None => bail!("an empty JSONPath expression"),
        };
        let path =
            JsonPath::parse(&rooted).map_err(|e| anyhow::anyhow!("{text:?} is not a JSONPath expression: {e}"))?;
        Ok(Path(path))
    }

    pub fn query<'v>(&self, value: &'v Value) -> Vec<&'v Value> {
        self.0.query(value).all()
    }
}

/// A value as a template prints it: strings bare, everything else as JSON.
pub fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[derive(Debug)]
enum Node {
    Text(String),
    Expr(Path),
    Range(Path, Vec<Node>),
}

/// A parsed `-o jsonpath=` template.
#[derive(Debug)]
pub struct Template(Vec<Node>);

impl Template {
    pub fn parse(text: &str) -> anyhow::Result<Template> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                pieces.push(Piece::Text(&rest[..open]));
            }
            let close =
                closing_brace(&rest[open..]).with_context(|| format!("jsonpath {text:?}: a {{ without its }}"))?;
            pieces.push(Piece::Action(rest[open + 1..open + close].trim()));
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest));
        }
        let mut iter = pieces.into_iter();
        let nodes = build(&mut iter, false).with_context(|| format!("jsonpath {text:?}"))?;
        Ok(Template(nodes))
    }

    pub fn render(&self, value: &Value) -> String {
        let mut out = String::new();
        render(&self.0, value, &mut out);
        out
    }
}

enum Piece<'a> {
    Text(&'a str),
    Action(&'a str),
}

/// Where the `}` matching the `{` at 0 is, skipping quoted text.
fn closing_brace(s: &str) -> Option<usize> {
    let mut quote = None;
    let mut depth = 0usize;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (Some(_), '\\') if !escaped => {
                escaped = true;
                continue;
            }
            (Some(q), c) if c == q && !escaped => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '{') => depth += 1,
            (None, '}') => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
        escaped = false;
    }
    None
}

fn build<'a>(pieces: &mut impl Iterator<Item = Piece<'a>>, in_range: bool) -> anyhow::Result<Vec<Node>> {
    let mut nodes = Vec::new();
    while let Some(piece) = pieces.next() {
        match piece {
            Piece::Text(t) => nodes.push(Node::Text(t.to_string())),
            Piece::Action("end") if in_range => return Ok(nodes),
            Piece::Action("end") => bail!("{{end}} without {{range}}"),
            Piece::Action(a) if a.starts_with("range ") => {
                let path = Path::parse(a["range ".len()..].trim())?;
                nodes.push(Node::Range(path, build(pieces, true)?));
            }
            Piece::Action(a) if a.starts_with('"') || a.starts_with('\'') => nodes.push(Node::Text(literal(a)?)),
            Piece::Action(a) => nodes.push(Node::Expr(Path::parse(a)?)),
        }
    }
    if in_range {
        bail!("{{range}} without {{end}}");
    }
    Ok(nodes)
}

/// `"\n"`, `'x'`: a quoted literal with the usual escapes.
fn literal(a: &str) -> anyhow::Result<String> {
    let quote = a.chars().next().unwrap_or('"');
    let body = a
        .strip_prefix(quote)
        .and_then(|s| s.strip_suffix(quote))
        .with_context(|| format!("{a}: an unterminated literal"))?;
    let mut out = String::new();
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    Ok(out)
}

fn render(nodes: &[Node], value: &Value, out: &mut String) {
    for node in nodes {
        match node {
            Node::Text(t) => out.push_str(t),
            Node::Expr(p) => {
                let found: Vec<String> = p.query(value).into_iter().map(plain).collect();
                out.push_str(&found.join(" "));
            }
            Node::Range(p, body) => {
                let found = p.query(value);
                // `{range .items}` walks the list's elements, as
                // `{range .items[*]}` does.
                match found.as_slice() {
                    [Value::Array(items)] => items.iter().for_each(|i| render(body, i, out)),
                    _ => found.into_iter().for_each(|i| render(body, i, out)),
                }
            }
        }
    }
}

/// `-o custom-columns=NAME:.metadata.name,READY:.status...`: headers and paths.
pub fn columns(spec: &str) -> anyhow::Result<Vec<(String, Path)>> {
    let mut out = Vec::new();
    for column in split_top_level(spec) {
        let (header, path) = column
            .split_once(':')
            .with_context(|| format!("custom-columns {column:?}: expected HEADER:.json.path"))?;
        if header.is_empty() {
            bail!("custom-columns {column:?}: the column has no header");
        }
        out.push((header.to_string(), Path::parse(path)?));
    }
    if out.is_empty() {
        bail!("custom-columns: give at least one HEADER:.json.path");
    }
    Ok(out)
}

/// Splits on commas outside brackets, parentheses and quotes (a filter
/// like `[?(@.a=="x,y")]` stays whole).
fn split_top_level(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut quote, mut start) = (0i32, None, 0);
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '[' | '(') => depth += 1,
            (None, ']' | ')') => depth -= 1,
            (None, ',') if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts.into_iter().filter(|p| !p.is_empty()).collect()
}

/// One cell of a custom column: every match, joined with commas; `<none>`.
pub fn cell(path: &Path, value: &Value) -> String {
    let found: Vec<String> = path.query(value).into_iter().map(plain).collect();
    if found.is_empty() || found.iter().all(String::is_empty) {
        "<none>".into()
    } else {
        found.join(",")
    }
}

/// Orders items by the value at `path` in each (`value_of` finds an item's
/// JSON): numbers by size, text by text, items without it first (as kubectl).
pub fn sort_by<I>(items: &mut [I], path: &Path, value_of: impl Fn(&I) -> &Value) {
    items.sort_by(|a, b| {
        let (a, b) = (
            path.query(value_of(a)).first().copied(),
            path.query(value_of(b)).first().copied(),
        );
        match (a, b) {
            (Some(Value::Number(x)), Some(Value::Number(y))) => {
                x.as_f64().partial_cmp(&y.as_f64()).unwrap_or(std::cmp::Ordering::Equal)
            }
            (Some(x), Some(y)) => plain(x).cmp(&plain(y)),
            (None, Some(_)) => std::cmp::Ordering::Less,
            (Some(_), None) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn list() -> Value {
        json!({"items": [
            {"metadata": {"name": "dht22", "generation": 12}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}},
            {"metadata": {"name": "buzzer", "generation": 3}, "status": {"conditions": [{"type": "Ready", "status": "False"}]}},
        ]})
    }

    #[test]
    fn templates_read_as_kubectl_writes_them() {
        let t = Template::parse("{.items[*].metadata.name}").unwrap();
        assert_eq!(t.render(&list()), "dht22 buzzer");
        let t = Template::parse("{range .items[*]}{.metadata.name}={.metadata.generation}{\"\\n\"}{end}").unwrap();
        assert_eq!(t.render(&list()), "dht22=12\nbuzzer=3\n");
        let t =
            Template::parse(r#"{.items[?(@.metadata.name=="buzzer")].status.conditions[?(@.type=="Ready")].status}"#)
                .unwrap();
        assert_eq!(t.render(&list()), "False");
        let t = Template::parse("names: {.items[0].metadata.name}, {..generation}").unwrap();
        assert_eq!(t.render(&list()), "names: dht22, 12 3");
    }

    #[test]
    fn broken_templates_are_named() {
        assert!(
            Template::parse("{.items[*]")
                .unwrap_err()
                .to_string()
                .contains("without its }")
        );
        assert!(format!("{:#}", Template::parse("{range .items[*]}x").unwrap_err()).contains("without {end}"));
        assert!(format!("{:#}", Template::parse("{.items[}").unwrap_err()).contains("not a JSONPath"));
    }

    #[test]
    fn custom_columns_and_sorting() {
        let cols =
            columns(r#"NAME:.metadata.name,READY:.status.conditions[?(@.type=="Ready")].status,X:.nope"#).unwrap();
        assert_eq!(cols.len(), 3);
        let items = list()["items"].as_array().unwrap().clone();
        assert_eq!(cell(&cols[1].1, &items[1]), "False");
        assert_eq!(cell(&cols[2].1, &items[0]), "<none>");
        assert!(columns("NAME").is_err());
        let mut sorted = items.clone();
        sort_by(&mut sorted, &Path::parse(".metadata.name").unwrap(), |v| v);
        assert_eq!(sorted[0]["metadata"]["name"], "buzzer");
        sort_by(&mut sorted, &Path::parse("{.metadata.generation}").unwrap(), |v| v);
        assert_eq!(sorted[0]["metadata"]["generation"], 3);
    }
}
