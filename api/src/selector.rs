//! Label selectors, as kubectl users type them: `key=value`, `key==value`,
//! `key!=value`, `key in (a,b)`, `key notin (a,b)`, `key`, `!key`, joined
//! with commas (all must hold). One parser and one matcher serve `-l`, the
//! API's `labelSelector`, a Plugin's `nodeSelector` (a plain map, as in
//! Kubernetes) and its `nodeAffinity.matchExpressions`.

use crate::resources::Labels;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// One condition on a label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// `key=value`, `key==value`.
    Equals(String, String),
    /// `key!=value`: also true when the label is absent (as in Kubernetes).
    NotEquals(String, String),
    /// `key in (a,b)`.
    In(String, BTreeSet<String>),
    /// `key notin (a,b)`: also true when the label is absent.
    NotIn(String, BTreeSet<String>),
    /// `key`.
    Exists(String),
    /// `!key`.
    DoesNotExist(String),
}

impl Requirement {
    pub fn matches(&self, labels: &Labels) -> bool {
        match self {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        }
    }
}

impl std::fmt::Display for Requirement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |vs: &BTreeSet<String>| vs.iter().cloned().collect::<Vec<_>>().join(",");
        match self {
            Requirement::Equals(k, v) => write!(f, "{k}={v}"),
            Requirement::NotEquals(k, v) => write!(f, "{k}!={v}"),
            Requirement::In(k, vs) => write!(f, "{k} in ({})", set(vs)),
            Requirement::NotIn(k, vs) => write!(f, "{k} notin ({})", set(vs)),
            Requirement::Exists(k) => write!(f, "{k}"),
            Requirement::DoesNotExist(k) => write!(f, "!{k}"),
        }
    }
}

/// Requirements that must all hold; none selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector(pub Vec<Requirement>);

/// Why a selector cannot be read: the part, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("label selector {part:?}: {why}")]
pub struct SelectorError {
    pub part: String,
    pub why: String,
}

/// What a label key or value may hold (as labels themselves are checked).
pub fn valid_label(s: &str) -> bool {
    s.len() <= 63 && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
}

const EXPECTED: &str = "expected key=value, key==value, key!=value, key in (a,b), key notin (a,b), key or !key";

impl Selector {
    /// Every `key: value` of a map (a `nodeSelector`).
    pub fn from_map(labels: &Labels) -> Selector {
        Selector(
            labels
                .iter()
                .map(|(k, v)| Requirement::Equals(k.clone(), v.clone()))
                .collect(),
        )
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.0.iter().all(|r| r.matches(labels))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn parse(s: &str) -> Result<Selector, SelectorError> {
        let mut out = Vec::new();
        for part in split_top(s)? {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            out.push(parse_one(part)?);
        }
        Ok(Selector(out))
    }
}

impl std::str::FromStr for Selector {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Selector, SelectorError> {
        Selector::parse(s)
    }
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&parts.join(","))
    }
}

/// Splits at commas outside parentheses.
fn split_top(s: &str) -> Result<Vec<&str>, SelectorError> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if !(0..=1).contains(&depth) {
            return Err(SelectorError {
                part: s.to_string(),
                why: "unbalanced or nested parentheses".into(),
            });
        }
    }
    if depth != 0 {
        return Err(SelectorError {
            part: s.to_string(),
            why: "a ( without its )".into(),
        });
    }
    parts.push(&s[start..]);
    Ok(parts)
}

fn parse_one(part: &str) -> Result<Requirement, SelectorError> {
    let err = |why: &str| SelectorError {
        part: part.to_string(),
        why: why.to_string(),
    };
    let key = |k: &str| -> Result<String, SelectorError> {
        let k = k.trim();
        if k.is_empty() || !valid_label(k) {
            return Err(err(&format!(
                "{k:?} is not a label key (letters, digits, - _ . /, at most 63): {EXPECTED}"
            )));
        }
        Ok(k.to_string())
    };
    let value = |v: &str| -> Result<String, SelectorError> {
        let v = v.trim();
        if !valid_label(v) || v.contains(['=', '!']) {
            return Err(err(&format!("{v:?} is not a label value: {EXPECTED}")));
        }
        Ok(v.to_string())
    };
    if let Some(rest) = part.strip_prefix('!') {
        return Ok(Requirement::DoesNotExist(key(rest)?));
    }
    if let Some(open) = part.find('(') {
        let head = part[..open].trim();
        let body = part[open + 1..]
            .strip_suffix(')')
            .ok_or_else(|| err("nothing may follow the closing )"))?;
        let (k, op) = head
            .rsplit_once(char::is_whitespace)
            .ok_or_else(|| err(&format!("expected key in (...) or key notin (...): {EXPECTED}")))?;
        let values: BTreeSet<String> = body.split(',').map(&value).collect::<Result<_, _>>()?;
        if values.iter().any(String::is_empty) {
            return Err(err("an empty value in the list"));
        }
        return match op.trim() {
            "in" => Ok(Requirement::In(key(k)?, values)),
            "notin" => Ok(Requirement::NotIn(key(k)?, values)),
            other => Err(err(&format!("{other:?} is not an operator: {EXPECTED}"))),
        };
    }
    if let Some((k, v)) = part.split_once("!=") {
        return Ok(Requirement::NotEquals(key(k)?, value(v)?));
    }
    if let Some((k, v)) = part.split_once("==") {
        return Ok(Requirement::Equals(key(k)?, value(v)?));
    }
    if let Some((k, v)) = part.split_once('=') {
        return Ok(Requirement::Equals(key(k)?, value(v)?));
    }
    Ok(Requirement::Exists(key(part)?))
}

/// `spec.nodeAffinity`: conditions on node labels beyond `nodeSelector`'s
/// equalities, as Kubernetes' `matchExpressions`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeAffinity {
    #[serde(default)]
    pub match_expressions: Vec<MatchExpression>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MatchExpression {
    pub key: String,
    pub operator: Operator,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl NodeAffinity {
    pub fn is_empty(&self) -> bool {
        self.match_expressions.is_empty()
    }

    /// The expressions as a selector; errors name each field that is wrong.
    pub fn selector(&self, path: &str, errors: &mut crate::validation::ValidationErrors) -> Selector {
        let mut out = Vec::new();
        for (i, e) in self.match_expressions.iter().enumerate() {
            let at = format!("{path}.matchExpressions[{i}]");
            if e.key.is_empty() || !valid_label(&e.key) {
                errors.push(format!("{at}.key"), format!("{:?} is not a valid label key", e.key));
                continue;
            }
            for (j, v) in e.values.iter().enumerate() {
                if !valid_label(v) {
                    errors.push(format!("{at}.values[{j}]"), format!("{v:?} is not a valid label value"));
                }
            }
            let values: BTreeSet<String> = e.values.iter().cloned().collect();
            let key = e.key.clone();
            match e.operator {
                Operator::In | Operator::NotIn if values.is_empty() => {
                    errors.push(format!("{at}.values"), "In and NotIn need at least one value");
                }
                Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                    errors.push(format!("{at}.values"), "Exists and DoesNotExist take no values");
                }
                Operator::In => out.push(Requirement::In(key, values)),
                Operator::NotIn => out.push(Requirement::NotIn(key, values)),
                Operator::Exists => out.push(Requirement::Exists(key)),
                Operator::DoesNotExist => out.push(Requirement::DoesNotExist(key)),
            }
        }
        Selector(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn every_form_kubectl_users_type_parses_and_matches_as_kubernetes_does() {
        let climate = labels(&[("app", "climate"), ("board", "pi4")]);
        let lights = labels(&[("app", "lights")]);
        let bare = labels(&[]);
        let cases: &[(&str, [bool; 3])] = &[
            ("app=climate", [true, false, false]),
            ("app==climate", [true, false, false]),
            ("app!=climate", [false, true, true]),
            ("app in (climate, lights)", [true, true, false]),
            ("app notin (climate)", [false, true, true]),
            ("board", [true, false, false]),
            ("!board", [false, true, true]),
            ("app=climate,board=pi4", [true, false, false]),
            ("app in (climate,lights),!board", [false, true, false]),
            ("", [true, true, true]),
        ];
        for (s, want) in cases {
            let sel = Selector::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            let got = [sel.matches(&climate), sel.matches(&lights), sel.matches(&bare)];
            assert_eq!(&got, want, "{s}");
            assert_eq!(
                Selector::parse(&sel.to_string()).unwrap(),
                sel,
                "{s} prints as it reads"
            );
        }
    }

    #[test]
    fn a_selector_that_cannot_be_read_names_the_part() {
        for bad in [
            "app!",
            "app in climate",
            "app in (climate",
            "app in (a,(b))",
            "app within (a)",
            "=climate",
            "app=cli mate",
            "app=climate=x",
            "a b",
            "app in ()",
        ] {
            let e = Selector::parse(bad).expect_err(bad);
            assert!(e.to_string().starts_with("label selector"), "{bad}: {e}");
        }
    }

    #[test]
    fn node_affinity_expressions_become_requirements_and_bad_ones_name_their_field() {
        let yaml = "matchExpressions:\n- {key: board, operator: In, values: [pi4, pi5]}\n- {key: broken, operator: DoesNotExist}\n";
        let a: NodeAffinity = serde_yaml::from_str(yaml).unwrap();
        let mut errors = crate::validation::ValidationErrors::default();
        let sel = a.selector("spec.nodeAffinity", &mut errors);
        assert!(errors.is_empty());
        assert!(sel.matches(&labels(&[("board", "pi5")])));
        assert!(!sel.matches(&labels(&[("board", "pi5"), ("broken", "yes")])));
        let bad: NodeAffinity = serde_yaml::from_str(
            "matchExpressions:\n- {key: board, operator: In}\n- {key: x, operator: Exists, values: [y]}\n",
        )
        .unwrap();
        let mut errors = crate::validation::ValidationErrors::default();
        bad.selector("spec.nodeAffinity", &mut errors);
        let text = errors.to_string();
        assert!(text.contains("spec.nodeAffinity.matchExpressions[0].values"), "{text}");
        assert!(text.contains("spec.nodeAffinity.matchExpressions[1].values"), "{text}");
        assert!(serde_yaml::from_str::<NodeAffinity>("matchExpressions:\n- {key: b, operator: Near}\n").is_err());
    }
}
