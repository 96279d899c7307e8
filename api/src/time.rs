//! Times on the wire are milliseconds since the Unix epoch; people read and
//! write them as RFC 3339 (`2026-11-30T17:28:16.123Z`), as kubectl shows
//! them. Every timestamp field accepts either form, so what `get -o yaml`
//! prints can be applied back.

use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;

/// The fields of objects that hold a time, by their JSON name.
pub const TIMESTAMP_FIELDS: &[&str] = &[
    "creationTimestamp",
    "lastTransitionTime",
    "lastHeartbeat",
    "stepStarted",
    "lastProgress",
    "healthySince",
    "created",
    "readySince",
    "recentUpdates",
];

/// `ms` as RFC 3339 in UTC, to the millisecond.
pub fn rfc3339(ms: u64) -> String {
    match i64::try_from(ms).ok().and_then(chrono::DateTime::from_timestamp_millis) {
        Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        None => ms.to_string(),
    }
}

/// An RFC 3339 time as milliseconds since the epoch (0 before it).
pub fn parse_rfc3339(text: &str) -> Result<u64, String> {
    let t = chrono::DateTime::parse_from_rfc3339(text)
        .map_err(|e| format!("{text:?} is not an RFC 3339 time (like 2026-11-30T17:28:16Z): {e}"))?;
    Ok(u64::try_from(t.timestamp_millis()).unwrap_or(0))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Either {
    Ms(u64),
    Text(String),
}

impl Either {
    fn ms<E: serde::de::Error>(self) -> Result<u64, E> {
        match self {
            Either::Ms(n) => Ok(n),
            Either::Text(s) => parse_rfc3339(&s).map_err(E::custom),
        }
    }
}

/// A timestamp field: milliseconds or RFC 3339.
pub fn ms<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    Either::deserialize(d)?.ms()
}

/// A map of timestamps.
pub fn ms_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, u64>, D::Error> {
    BTreeMap::<String, Either>::deserialize(d)?
        .into_iter()
        .map(|(k, v)| Ok((k, v.ms()?)))
        .collect()
}

/// A list of timestamps.
pub fn ms_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
    Vec::<Either>::deserialize(d)?.into_iter().map(Either::ms).collect()
}

/// Rewrites every timestamp field of `value` (an object as the API sends
/// it) as RFC 3339, for people; a zero stays a zero (never set).
pub fn to_rfc3339(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if TIMESTAMP_FIELDS.contains(&key.as_str()) {
                    readable(v);
                } else {
                    to_rfc3339(v);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(to_rfc3339),
        _ => {}
    }
}

fn readable(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Number(n) => {
            if let Some(ms) = n.as_u64().filter(|ms| *ms > 0) {
                *v = serde_json::Value::String(rfc3339(ms));
            }
        }
        serde_json::Value::Object(map) => map.values_mut().for_each(readable),
        serde_json::Value::Array(items) => items.iter_mut().for_each(readable),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_back_in_either_form() {
        assert_eq!(rfc3339(1_796_059_696_123), "2026-11-30T17:28:16.123Z");
        assert_eq!(parse_rfc3339("2026-11-30T17:28:16.123Z"), Ok(1_796_059_696_123));
        assert_eq!(parse_rfc3339("2026-11-30T18:28:16.123+01:00"), Ok(1_796_059_696_123));
        assert!(parse_rfc3339("yesterday").unwrap_err().contains("RFC 3339"));
        let mut v = serde_json::json!({
            "metadata": {"creationTimestamp": 1_796_059_696_123u64, "generation": 3},
            "status": {"conditions": [{"lastTransitionTime": 0}],
                       "rollout": {"readySince": {"pi4": 1_796_059_696_123u64}, "recentUpdates": [1_796_059_696_123u64]}}
        });
        to_rfc3339(&mut v);
        assert_eq!(v["metadata"]["creationTimestamp"], "2026-11-30T17:28:16.123Z");
        assert_eq!(v["metadata"]["generation"], 3);
        assert_eq!(v["status"]["conditions"][0]["lastTransitionTime"], 0);
        assert_eq!(v["status"]["rollout"]["readySince"]["pi4"], "2026-11-30T17:28:16.123Z");
        assert_eq!(v["status"]["rollout"]["recentUpdates"][0], "2026-11-30T17:28:16.123Z");
    }
}
