//! What happens to plugins, as events (for logs, the hub and tests) and as a
//! status table (for `/status`, the dashboard and `harvester get`).

pub use harvester_api::Phase;
pub use harvester_api::live::{LogLevel, LogSource};
use harvester_api::{Capability, Digest};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::SystemTime;

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    #[serde(with = "unix_millis")]
    pub at: SystemTime,
    pub plugin: String,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// Why a call into a plugin failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrapKind {
    /// The call ran past its deadline and was interrupted.
    Timeout,
    /// The plugin asked for more memory than its cap.
    MemoryLimit,
    /// The plugin held too many WASI resources, or asked the host for a
    /// buffer over its cap.
    ResourceLimit,
    /// Any other trap: `unreachable`, an uncaught Python exception, a panic.
    Trap,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum EventKind {
    Log {
        level: LogLevel,
        source: LogSource,
        message: String,
    },
    Telemetry {
        name: String,
        value: f64,
        unit: String,
    },
    /// A call outside the plugin's grants; it did nothing.
    Denied {
        capability: Capability,
        message: String,
    },
    /// The buzzer accepted a pattern or a tone change.
    Buzzer {
        /// `short`, `triple`, `long`, `tone-on` or `tone-off`.
        action: String,
    },
    /// A version was compiled (or loaded from the cache), instantiated and
    /// initialised, and now ticks.
    Started {
        generation: u64,
        digest: Digest,
        from_cache: bool,
        replaced: Option<u64>,
    },
    /// A version could not be loaded; whatever ran before keeps running.
    LoadFailed {
        generation: u64,
        error: String,
    },
    /// `tick` returned an error: the plugin stays up.
    TickFailed {
        message: String,
    },
    /// A call trapped; the instance is discarded and restarted after a backoff.
    Trapped {
        kind: TrapKind,
        call: String,
        message: String,
    },
    Restarted {
        attempt: u32,
    },
    /// Failing again and again: restarts continue at the longest backoff.
    CrashLoop {
        restarts: u32,
        last_error: String,
    },
    Stopped,
}

#[derive(Debug, Clone, Serialize)]
pub struct Reading {
    pub value: f64,
    pub unit: String,
    #[serde(with = "unix_millis")]
    pub at: SystemTime,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PluginStatus {
    pub name: String,
    pub phase: Phase,
    /// The version running now (1 for the first, +1 per applied change).
    pub generation: u64,
    /// The component digest: of the .wasm bytes that run (not the artifact
    /// digest, of the OCI manifest, that `get` and signatures show).
    #[serde(rename = "componentDigest")]
    pub digest: Option<Digest>,
    pub source: String,
    pub restarts: u32,
    pub ticks: u64,
    /// Ticks that returned an error (the plugin stayed up).
    pub tick_errors: u64,
    pub missed_ticks: u64,
    /// Ticks that waited because the plugin was over its CPU budget.
    pub throttled_ticks: u64,
    /// While the plugin is over its CPU budget: since when, and what it is.
    #[serde(skip)]
    pub throttled: Option<(std::time::Instant, harvester_api::CpuShare)>,
    pub denied_calls: u64,
    pub memory_bytes: u64,
    pub last_error: Option<String>,
    pub telemetry: BTreeMap<String, Reading>,
    /// The versions this node started, oldest first (the last
    /// [`VERSIONS_KEPT`]): what ran here, and when, whatever the hub says.
    pub versions: std::collections::VecDeque<VersionRecord>,
}

/// How many started versions a plugin's status keeps.
pub const VERSIONS_KEPT: usize = 32;

/// One version a node started: asked for at `requested`, running (swapped
/// in, or started) at `running`, both in milliseconds since the epoch.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionRecord {
    pub generation: u64,
    /// The component digest (of the .wasm bytes).
    #[serde(rename = "componentDigest")]
    pub digest: Digest,
    pub requested: u64,
    pub running: u64,
}

/// How long after its last delayed tick a plugin still counts as over
/// its CPU budget.
pub const THROTTLED_FOR: std::time::Duration = std::time::Duration::from_secs(10);

impl PluginStatus {
    /// Why the plugin's ticks wait, while it is over its CPU budget.
    pub fn cpu_limited(&self) -> Option<String> {
        let (at, share) = self.throttled?;
        (at.elapsed() < THROTTLED_FOR).then(|| {
            format!(
                "over its CPU budget of {share} (limits.cpu): {} ticks delayed so far",
                self.throttled_ticks
            )
        })
    }

    pub fn new(name: &str, source: &str) -> PluginStatus {
        PluginStatus {
            name: name.to_string(),
            phase: Phase::Loading,
            generation: 0,
            digest: None,
            source: source.to_string(),
            restarts: 0,
            ticks: 0,
            tick_errors: 0,
            missed_ticks: 0,
            throttled_ticks: 0,
            throttled: None,
            denied_calls: 0,
            memory_bytes: 0,
            last_error: None,
            telemetry: BTreeMap::new(),
            versions: Default::default(),
        }
    }
}

pub(crate) mod unix_millis {
    use serde::Serializer;
    use std::time::SystemTime;

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(harvester_api::unix_ms(*t))
    }
}
