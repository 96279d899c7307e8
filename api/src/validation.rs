//! Validation errors that say which field was wrong and why.

use std::fmt;

/// One invalid field: `spec.grants.gpio.pins[2]: pin 41 is not a valid BCM GPIO (0-27)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            return f.write_str(&self.message);
        }
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every invalid field of one object, so a user fixes them all in one go.
#[derive(Debug, Clone, Default, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl ValidationErrors {
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_result(self) -> Result<(), ValidationErrors> {
        if self.0.is_empty() { Ok(()) } else { Err(self) }
    }
}

/// Deserializes `de` into `T`, and on failure names the field path where it
/// failed (`spec.grants.leds.indices[0]: invalid type: string "four",
/// expected u8`), unknown fields and wrong types included; `prefix` goes
/// before the path (`plugins[2]` inside a list, or empty).
pub fn deserialize_at<'de, T, D>(de: D, prefix: &str) -> Result<T, FieldError>
where
    T: serde::Deserialize<'de>,
    D: serde::Deserializer<'de>,
    D::Error: fmt::Display,
{
    serde_path_to_error::deserialize(de).map_err(|e| {
        let inner = e.path().to_string();
        let path = match (prefix.is_empty(), inner.as_str()) {
            (_, ".") => prefix.to_string(),
            (true, p) => p.to_string(),
            (false, p) => format!("{prefix}.{p}"),
        };
        FieldError {
            path,
            message: e.into_inner().to_string(),
        }
    })
}

/// The most values one YAML document may hold once its aliases are
/// expanded: a manifest has a few hundred; an alias bomb of a few KiB
/// expands to billions.
pub const MAX_YAML_VALUES: usize = 100_000;
/// The deepest a YAML document may nest.
pub const MAX_YAML_DEPTH: usize = 64;

const BUDGET_MARK: &str = "\u{1}budget:";

/// Walks every document of `text` counting values (aliases expanded as
/// they would be) before anything is built from it, so an alias bomb costs
/// a bounded walk instead of the memory it would expand to. Returns the
/// 1-based document and what was wrong; syntax errors are left to the
/// parse that follows, which names their line and column.
pub fn check_yaml_size(text: &str) -> Result<(), (usize, String)> {
    use serde::de::DeserializeSeed;
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let budget = std::cell::Cell::new(MAX_YAML_VALUES);
        if let Err(e) = (Counter {
            budget: &budget,
            depth: 0,
        })
        .deserialize(doc)
        {
            let message = e.to_string();
            if let Some(at) = message.find(BUDGET_MARK) {
                let why = message[at + BUDGET_MARK.len()..]
                    .split('\u{1}')
                    .next()
                    .unwrap_or_default();
                return Err((i + 1, why.to_string()));
            }
            // A syntax error ends the stream; the parse reports it.
            return Ok(());
        }
    }
    Ok(())
}

struct Counter<'a> {
    budget: &'a std::cell::Cell<usize>,
    depth: usize,
}

impl Counter<'_> {
    fn spend<E: serde::de::Error>(&self) -> Result<(), E> {
        match self.budget.get().checked_sub(1) {
            Some(left) => {
                self.budget.set(left);
                Ok(())
            }
            None => Err(E::custom(format!(
                "{BUDGET_MARK}it expands to more than {MAX_YAML_VALUES} values (YAML aliases repeat what their anchor names): refused\u{1}"
            ))),
        }
    }

    fn inner(&self) -> Counter<'_> {
        Counter {
            budget: self.budget,
            depth: self.depth + 1,
        }
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Counter<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Counter<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<(), E> {
        self.spend()
    }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<(), E> {
        self.spend()
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<(), E> {
        self.spend()
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<(), E> {
        self.spend()
    }
    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<(), E> {
        self.spend()
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.spend()
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<(), E> {
        self.spend()
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        serde::de::DeserializeSeed::deserialize(self, d)
    }
    fn visit_newtype_struct<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        serde::de::DeserializeSeed::deserialize(self, d)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.spend()?;
        self.deeper()?;
        while seq.next_element_seed(self.inner())?.is_some() {}
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.spend()?;
        self.deeper()?;
        while map.next_key_seed(self.inner())?.is_some() {
            map.next_value_seed(self.inner())?;
        }
        Ok(())
    }

    fn visit_enum<A: serde::de::EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        use serde::de::VariantAccess;
        self.spend()?;
        let ((), variant) = data.variant_seed(self.inner())?;
        variant.newtype_variant_seed(self.inner())
    }
}

impl Counter<'_> {
    fn deeper<E: serde::de::Error>(&self) -> Result<(), E> {
        if self.depth >= MAX_YAML_DEPTH {
            return Err(E::custom(format!(
                "{BUDGET_MARK}it nests deeper than {MAX_YAML_DEPTH} levels: refused\u{1}"
            )));
        }
        Ok(())
    }
}
