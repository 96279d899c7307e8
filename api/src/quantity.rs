//! Durations, memory sizes and CPU shares written the way Kubernetes users write them.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The longest duration anything accepts: ten years.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 86_400);

/// A duration such as `3s`, `200ms`, `1m30s` or `1h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DurationSpec(pub Duration);

impl DurationSpec {
    pub fn as_duration(self) -> Duration {
        self.0
    }
}

impl FromStr for DurationSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("invalid duration {s:?}: expected a number and a unit, like 3s, 200ms or 1m30s");
        let s = s.trim();
        if s.is_empty() {
            return Err(bad());
        }
        let mut total = Duration::ZERO;
        let mut rest = s;
        while !rest.is_empty() {
            let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
            if digits == 0 {
                return Err(bad());
            }
            let value: f64 = rest[..digits].parse().map_err(|_| bad())?;
            rest = &rest[digits..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(rest.len());
            let seconds_per_unit = match &rest[..unit_len] {
                "ms" => 0.001,
                "s" => 1.0,
                "m" => 60.0,
                "h" => 3600.0,
                _ => return Err(bad()),
            };
            rest = &rest[unit_len..];
            // Past what any setting means (and what Duration holds), a
            // number is refused rather than wrapped or panicked on.
            let too_long = || {
                format!(
                    "duration {s:?} is too long (at most {} days)",
                    MAX_DURATION.as_secs() / 86_400
                )
            };
            let part = Duration::try_from_secs_f64(value * seconds_per_unit).map_err(|_| too_long())?;
            total = total
                .checked_add(part)
                .filter(|t| *t <= MAX_DURATION)
                .ok_or_else(too_long)?;
        }
        Ok(DurationSpec(total))
    }
}

impl fmt::Display for DurationSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl Serialize for DurationSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DurationSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A memory size such as `64Mi`, `512Ki`, `1Gi` or a plain byte count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemorySize(pub u64);

impl MemorySize {
    pub const fn mebibytes(n: u64) -> Self {
        MemorySize(n * 1024 * 1024)
    }

    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for MemorySize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("invalid memory size {s:?}: expected a number with Ki, Mi or Gi, like 64Mi");
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let n: u64 = s[..split].parse().map_err(|_| bad())?;
        let mult: u64 = match &s[split..] {
            "" => 1,
            "Ki" => 1 << 10,
            "Mi" => 1 << 20,
            "Gi" => 1 << 30,
            "K" | "k" => 1000,
            "M" => 1_000_000,
            "G" => 1_000_000_000,
            _ => return Err(bad()),
        };
        n.checked_mul(mult).map(MemorySize).ok_or_else(bad)
    }
}

impl fmt::Display for MemorySize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b.is_multiple_of(1 << 30) && b > 0 {
            write!(f, "{}Gi", b >> 30)
        } else if b.is_multiple_of(1 << 20) && b > 0 {
            write!(f, "{}Mi", b >> 20)
        } else if b.is_multiple_of(1 << 10) && b > 0 {
            write!(f, "{}Ki", b >> 10)
        } else {
            write!(f, "{b}")
        }
    }
}

impl Serialize for MemorySize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MemorySize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(MemorySize(n)),
            Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// A share of one CPU core in thousandths, written as Kubernetes writes
/// CPU: `250m`, `0.5`, `1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CpuShare(pub u32);

impl CpuShare {
    pub const fn millicores(n: u32) -> Self {
        CpuShare(n)
    }

    /// CPU seconds per second of wall time.
    pub fn fraction(self) -> f64 {
        f64::from(self.0) / 1000.0
    }
}

impl FromStr for CpuShare {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("invalid CPU share {s:?}: expected millicores like 250m, or cores like 0.5");
        let s = s.trim();
        if let Some(m) = s.strip_suffix('m') {
            return m.parse::<u32>().map(CpuShare).map_err(|_| bad());
        }
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return Err(bad());
        }
        let cores: f64 = s.parse().map_err(|_| bad())?;
        let m = (cores * 1000.0).round();
        if !(0.0..=f64::from(u32::MAX)).contains(&m) {
            return Err(bad());
        }
        Ok(CpuShare(m as u32))
    }
}

impl fmt::Display for CpuShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}m", self.0)
    }
}

impl Serialize for CpuShare {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for CpuShare {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(f64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => n.to_string().parse().map_err(serde::de::Error::custom),
            Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_shares_parse_like_kubernetes() {
        assert_eq!("250m".parse::<CpuShare>(), Ok(CpuShare(250)));
        assert_eq!("0.5".parse::<CpuShare>(), Ok(CpuShare(500)));
        assert_eq!("1".parse::<CpuShare>(), Ok(CpuShare(1000)));
        assert_eq!(CpuShare(250).to_string(), "250m");
        assert_eq!(serde_yaml::from_str::<CpuShare>("0.25").unwrap(), CpuShare(250));
        assert_eq!(serde_yaml::from_str::<CpuShare>("100m").unwrap(), CpuShare(100));
        for bad in ["", "m", "-1", "1e3", "half", "99999999999", "0.5m"] {
            assert!(bad.parse::<CpuShare>().is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_parse_like_kubernetes() {
        assert_eq!("3s".parse::<DurationSpec>().unwrap().0, Duration::from_secs(3));
        assert_eq!("200ms".parse::<DurationSpec>().unwrap().0, Duration::from_millis(200));
        assert_eq!("1m30s".parse::<DurationSpec>().unwrap().0, Duration::from_secs(90));
        assert_eq!("1.5s".parse::<DurationSpec>().unwrap().0, Duration::from_millis(1500));
        for bad in ["", "3", "s", "3 parsecs", "-1s"] {
            let err = bad.parse::<DurationSpec>().unwrap_err();
            assert!(err.contains("invalid duration"), "{bad}: {err}");
        }
        // Absurd numbers are refused, never a panic or a wrap.
        for absurd in ["99999999999999999999h", "87600h1ms", &"9".repeat(400), "3650d"] {
            let err = absurd.parse::<DurationSpec>().unwrap_err();
            assert!(
                err.contains("too long") || err.contains("invalid duration"),
                "{absurd}: {err}"
            );
        }
        assert_eq!("87600h".parse::<DurationSpec>().unwrap().0, MAX_DURATION);
    }

    #[test]
    fn memory_sizes_parse_binary_suffixes() {
        assert_eq!("64Mi".parse::<MemorySize>().unwrap().0, 64 << 20);
        assert_eq!("1Gi".parse::<MemorySize>().unwrap().0, 1 << 30);
        assert_eq!("4096".parse::<MemorySize>().unwrap().0, 4096);
        assert!("64MB".parse::<MemorySize>().unwrap_err().contains("64MB"));
        assert_eq!(MemorySize::mebibytes(64).to_string(), "64Mi");
    }
}
