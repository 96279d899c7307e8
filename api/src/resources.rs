//! The resource kinds of `harvester.dev/v1alpha1`: `Plugin` (run this component
//! on every matching node) and `Node` (created by nodelets).

use crate::digest::Digest;
use crate::grants::{Capability, Grants};
use crate::run_spec::runs_a_plugin;
use crate::standalone::validate_name;
use crate::status::{ConditionType, Phase, Reason};
use crate::validation::ValidationErrors;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const API_VERSION: &str = "harvester.dev/v1alpha1";

/// Labels on objects, and the selectors that match them.
pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: Labels,
    /// Set by the controller.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    /// Bumped by the controller when the spec changes.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub generation: u64,
    /// The store revision of the last write; send it back to update only if
    /// nobody wrote in between (a stale one gets 409 Conflict).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub resource_version: u64,
    /// Milliseconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "is_zero", deserialize_with = "crate::time::ms")]
    #[schemars(schema_with = "crate::schema::timestamp")]
    pub creation_timestamp: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

runs_a_plugin! {
    /// Run `image` on every node matching `nodeSelector` that has the hardware
    /// its grants need.
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct PluginSpecV1 (wire PluginSpecWire) {
        /// An OCI reference (`host/repo:tag`, resolved to a digest at apply) or,
        /// for development, a path to a `.wasm` file.
        pub image: String,
        /// The artifact digest the image was resolved to, set at apply: the
        /// digest of the OCI manifest (what `harvester push` prints and
        /// signatures sign), not of the component inside it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub digest: Option<Digest>,
        /// Labels a node must have, every one, to run the plugin.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        pub node_selector: Labels,
        /// Conditions on node labels beyond `nodeSelector`'s equalities.
        #[serde(default, skip_serializing_if = "crate::selector::NodeAffinity::is_empty")]
        pub node_affinity: crate::selector::NodeAffinity,
        /// How a new revision reaches the nodes (default: all at once).
        #[serde(default, skip_serializing_if = "crate::rollout::RolloutSpec::is_default")]
        pub rollout: crate::rollout::RolloutSpec,
        /// How many revisions the hub keeps (default 10).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub revision_history_limit: Option<u32>,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl ConditionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub kind: ConditionType,
    pub status: ConditionStatus,
    pub reason: Reason,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Milliseconds since the Unix epoch.
    #[serde(deserialize_with = "crate::time::ms")]
    #[schemars(schema_with = "crate::schema::timestamp")]
    pub last_transition_time: u64,
}

/// One node's view of one plugin, as the node reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PluginOnNode {
    pub phase: Phase,
    /// The Plugin generation this node runs (0 for none yet).
    pub generation: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
    #[serde(default)]
    pub restarts: u32,
    /// Why the node is not running the assigned version as asked
    /// (`SignatureInvalid`, `DigestMismatch`, `PullFailed`...), or
    /// `Unsigned` when it runs one without a valid signature because it was
    /// started with --allow-unsigned.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::status::optional_reason"
    )]
    pub reason: Option<Reason>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// How the revision a rollout gave this node fares, by the node's own judgement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<crate::rollout::NodeHealth>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PluginStatusV1 {
    pub observed_generation: u64,
    /// Where the rollout of the newest revision stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<crate::rollout::RolloutStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
    /// Every node the plugin is assigned to.
    #[serde(default)]
    pub nodes: BTreeMap<String, PluginOnNode>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Plugin {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: PluginSpecV1,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<PluginStatusV1>,
}

/// What a node reports about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatusV1 {
    #[serde(default)]
    pub architecture: String,
    /// `sim` or `rpi`.
    #[serde(default)]
    pub backend: String,
    /// Devices the node actually found (`gpio`, `leds`, `buzzer`, ...).
    #[serde(default)]
    pub devices: Vec<String>,
    #[serde(default)]
    pub led_count: usize,
    /// How the node gets runnable code (absent from older nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<crate::compiled::EngineInfo>,
    /// Where the node serves /metrics and /status.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub address: String,
    /// Fingerprints of the public keys this node accepts signatures from.
    #[serde(default)]
    pub trusted_keys: Vec<String>,
    /// The node runs components without a valid signature (development only).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_unsigned: bool,
    /// Milliseconds since the Unix epoch of the last heartbeat the controller saw.
    #[serde(default, deserialize_with = "crate::time::ms")]
    #[schemars(schema_with = "crate::schema::timestamp")]
    pub last_heartbeat: u64,
    /// The node's memory (absent from older nodes: no memory check there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<NodeMemory>,
    /// The filesystem of the node's data folder is almost full (under 5% or
    /// 64 MiB free): the hub reports it as the DiskPressure condition.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disk_pressure: bool,
    #[serde(default)]
    pub plugins: BTreeMap<String, PluginOnNode>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// A node's memory, as it reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeMemory {
    /// The board's memory.
    pub total: crate::MemorySize,
    /// What the `limits.memory` of the plugins placed on it may add up to:
    /// the board's memory less what the system and the node keep.
    pub allocatable: crate::MemorySize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Node {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub status: NodeStatusV1,
}

/// The hardware capabilities a plugin's grants need on its node.
pub fn required_devices(grants: &Grants) -> Vec<&'static str> {
    let mut out = Vec::new();
    for cap in grants.capabilities() {
        let device = match cap {
            Capability::Gpio => "gpio",
            Capability::I2c => "i2c",
            Capability::Leds => "leds",
            Capability::Buzzer => "buzzer",
            Capability::Dht22 => "dht22",
            Capability::Bme680 => "bme680",
            Capability::System | Capability::Net | Capability::Log | Capability::Telemetry | Capability::Config => {
                continue;
            }
        };
        out.push(device);
    }
    out
}

/// Whether an image names a local `.wasm` file rather than an OCI reference.
pub fn is_local_path(image: &str) -> bool {
    image.starts_with('/') || image.starts_with("./") || image.starts_with("../") || image.ends_with(".wasm")
}

impl PluginSpecV1 {
    /// The nodes this plugin may run on, by their labels: every
    /// `nodeSelector` equality and every `nodeAffinity` expression.
    pub fn node_selector(&self) -> crate::selector::Selector {
        let mut s = crate::selector::Selector::from_map(&self.node_selector);
        let mut ignored = ValidationErrors::default();
        s.0.extend(self.node_affinity.selector("spec.nodeAffinity", &mut ignored).0);
        s
    }
}

/// Parses labels `a=b,c=d` (a node's `--labels`).
pub fn parse_labels(s: &str) -> Result<Labels, String> {
    let mut out = Labels::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("label {part:?}: expected key=value"))?;
        out.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(out)
}

/// Checks label keys and values as Kubernetes does; `path` names where they sit.
pub fn validate_labels(labels: &Labels, path: &str, errors: &mut ValidationErrors) {
    for (k, v) in labels {
        let ok =
            |s: &str, max: usize| s.len() <= max && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
        if k.is_empty() || !ok(k, 63) {
            errors.push(format!("{path}.{k}"), format!("{k:?} is not a valid label key"));
        }
        if !ok(v, 63) {
            errors.push(format!("{path}.{k}"), format!("{v:?} is not a valid label value"));
        }
    }
}

/// What every object must get right: the API version, its name, its labels.
fn validate_header(api_version: &str, meta: &ObjectMeta, errors: &mut ValidationErrors) {
    if api_version != API_VERSION {
        errors.push(
            "apiVersion",
            format!("{api_version:?} is not supported; use {API_VERSION}"),
        );
    }
    validate_name(&meta.name, "metadata.name", errors);
    validate_labels(&meta.labels, "metadata.labels", errors);
}

impl Plugin {
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors = ValidationErrors::default();
        validate_header(&self.api_version, &self.metadata, &mut errors);
        if self.spec.image.trim().is_empty() {
            errors.push(
                "spec.image",
                "give an OCI reference (host/repo:tag) or a path to a .wasm file",
            );
        }
        validate_labels(&self.spec.node_selector, "spec.nodeSelector", &mut errors);
        self.spec.node_affinity.selector("spec.nodeAffinity", &mut errors);
        self.spec.rollout.validate("spec.rollout", &mut errors);
        if self.spec.revision_history_limit == Some(0) {
            errors.push("spec.revisionHistoryLimit", "keep at least the revision that runs (1)");
        }
        self.spec.run.validate("spec", &mut errors);
        errors.into_result()
    }
}

/// A node's roles are its labels with this prefix, as Kubernetes's
/// `node-role.kubernetes.io/<role>`: `--labels node-role.harvester.dev/hub=`
/// gives the role `hub`. Placement selects on them as on any label.
pub const NODE_ROLE_PREFIX: &str = "node-role.harvester.dev/";

/// The role of the board the hub itself runs on.
pub const HUB_ROLE: &str = "hub";

impl Node {
    /// Its roles, by name, in label order.
    pub fn roles(&self) -> Vec<&str> {
        self.metadata
            .labels
            .keys()
            .filter_map(|k| k.strip_prefix(NODE_ROLE_PREFIX))
            .filter(|r| !r.is_empty())
            .collect()
    }

    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors = ValidationErrors::default();
        validate_header(&self.api_version, &self.metadata, &mut errors);
        if let Err(e) = validate_address(&self.status.address) {
            errors.push("status.address", e);
        }
        errors.into_result()
    }
}

/// A node's `status.address`: empty, or `HOST:PORT` and nothing else (an IP
/// address, `[IPv6]`, or a DNS name; a port 1-65535). Prometheus scrapes
/// what the hub lists: a path, a query or another scheme must not get in.
pub fn validate_address(address: &str) -> Result<(), String> {
    if address.is_empty() {
        return Ok(());
    }
    let why = || format!("{address:?} is not HOST:PORT (an IP address, [IPv6] or a DNS name, and a port)");
    if address.len() > 261 {
        return Err(why());
    }
    let (host, port) = address.rsplit_once(':').ok_or_else(why)?;
    if !port.bytes().all(|b| b.is_ascii_digit()) || !matches!(port.parse::<u32>(), Ok(1..=65535)) {
        return Err(why());
    }
    let ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            host.parse::<std::net::Ipv4Addr>().is_ok()
                || (!host.is_empty()
                    && host.len() <= 253
                    && host.split('.').all(|label| {
                        !label.is_empty()
                            && label.len() <= 63
                            && !label.starts_with('-')
                            && !label.ends_with('-')
                            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    }))
        }
    };
    if ok { Ok(()) } else { Err(why()) }
}

/// Any object of this API, as a manifest document holds it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
// A handful per apply, never in bulk: boxing would only add noise.
#[allow(clippy::large_enum_variant)]
pub enum Object {
    Plugin(Plugin),
    Node(Node),
}

impl Object {
    pub fn kind(&self) -> &'static str {
        match self {
            Object::Plugin(_) => "Plugin",
            Object::Node(_) => "Node",
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Object::Plugin(p) => &p.metadata.name,
            Object::Node(n) => &n.metadata.name,
        }
    }
}

/// One document of a manifest that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DocumentError {
    /// 1-based position in the stream (0 for an object sent alone).
    pub document: usize,
    pub kind: Option<String>,
    pub name: Option<String>,
    pub message: String,
}

impl std::fmt::Display for DocumentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Document 0: the one object of a request that is not a manifest (an update).
        match (self.document, &self.kind, &self.name) {
            (0, Some(k), Some(n)) => write!(f, "{k} {n}")?,
            (d, Some(k), Some(n)) => write!(f, "document {d} ({k} {n})")?,
            (d, _, _) => write!(f, "document {d}")?,
        }
        write!(f, ": {}", self.message)
    }
}

/// A document's object, typed and validated: every field error with its path.
fn typed<T: serde::de::DeserializeOwned + Validate>(value: serde_yaml::Value) -> Result<T, Vec<String>> {
    let object: T = crate::validation::deserialize_at(value, "").map_err(|e| vec![e.to_string()])?;
    object
        .check()
        .map_err(|e| e.0.iter().map(ToString::to_string).collect::<Vec<_>>())?;
    Ok(object)
}

/// The objects `typed` reads.
trait Validate {
    fn check(&self) -> Result<(), ValidationErrors>;
}

impl Validate for Plugin {
    fn check(&self) -> Result<(), ValidationErrors> {
        self.validate()
    }
}

impl Validate for Node {
    fn check(&self) -> Result<(), ValidationErrors> {
        self.validate()
    }
}

/// Parses a YAML stream (documents separated by `---`) into validated
/// objects. Every document is checked; any error rejects the whole stream.
pub fn parse_documents(text: &str) -> Result<Vec<Object>, Vec<DocumentError>> {
    if let Err((document, message)) = crate::validation::check_yaml_size(text) {
        return Err(vec![DocumentError {
            document,
            kind: None,
            name: None,
            message,
        }]);
    }
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let n = i + 1;
        let value = match serde_yaml::Value::deserialize(doc) {
            Ok(serde_yaml::Value::Null) => continue,
            Ok(v) => v,
            Err(e) => {
                errors.push(DocumentError {
                    document: n,
                    kind: None,
                    name: None,
                    message: e.to_string(),
                });
                // A syntax error ends the stream: later documents can't be trusted.
                break;
            }
        };
        let kind = value.get("kind").and_then(|k| k.as_str()).map(str::to_string);
        let name = value
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(|n| n.as_str())
            .map(str::to_string);
        let err = |message: String| DocumentError {
            document: n,
            kind: kind.clone(),
            name: name.clone(),
            message,
        };
        // One error per field, each with its path, so every line of the
        // refusal names one thing to fix.
        let parsed: Result<Object, Vec<String>> = match kind.as_deref() {
            Some("Plugin") => typed::<Plugin>(value).map(Object::Plugin),
            Some("Node") => typed::<Node>(value).map(Object::Node),
            Some(other) => Err(vec![format!("kind: {other:?} is not known; use Plugin or Node")]),
            None => Err(vec!["kind: missing (Plugin or Node)".to_string()]),
        };
        match parsed {
            Ok(o) => objects.push(o),
            Err(messages) => errors.extend(messages.into_iter().map(err)),
        }
    }
    if errors.is_empty() { Ok(objects) } else { Err(errors) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_address_is_host_and_port_only() {
        for ok in ["", "127.0.0.1:9101", "pi4.local:9101", "[::1]:9101", "hub:1"] {
            assert!(validate_address(ok).is_ok(), "{ok}");
        }
        for bad in [
            "169.254.169.254:80/latest/meta-data?",
            "http://pi4:9101",
            "pi4",
            "pi4:0",
            "pi4:65536",
            "pi4:80#x",
            "[::1]",
            "::1:80",
            "pi 4:80",
            "-pi4:80",
        ] {
            assert!(validate_address(bad).is_err(), "{bad}");
        }
    }

    const PLUGIN: &str = "apiVersion: harvester.dev/v1alpha1\nkind: Plugin\nmetadata: {name: dht22, labels: {app: climate}}\nspec:\n  image: plugins/dht22/dht22.wasm\n  nodeSelector: {role: sensor}\n  grants: {dht22: {pin: 4}, leds: {indices: [1]}}\n  config: {HIGH_TEMP: 30.0}\n";

    #[test]
    fn a_plugin_document_parses_with_defaults() {
        let objs = parse_documents(PLUGIN).unwrap();
        let Object::Plugin(p) = &objs[0] else { panic!() };
        assert_eq!(p.spec.run.config["HIGH_TEMP"], "30.0");
        assert_eq!(p.spec.run.tick_interval.0, std::time::Duration::from_secs(3));
        assert_eq!(required_devices(&p.spec.run.grants), vec!["leds", "dht22"]);
    }

    #[test]
    fn every_bad_document_is_named() {
        let text = format!(
            "{PLUGIN}---\napiVersion: harvester.dev/v1alpha1\nkind: Plugin\nmetadata: {{name: bad}}\nspec:\n  image: x.wasm\n  grants: {{gpio: {{pins: [1, 2, 41]}}}}\n---\nkind: Gadget\nmetadata: {{name: g}}\n"
        );
        let errs = parse_documents(&text).unwrap_err();
        assert_eq!(errs.len(), 2);
        assert_eq!(
            errs[0].to_string(),
            "document 2 (Plugin bad): spec.grants.gpio.pins[2]: pin 41 is not a valid BCM GPIO (0-27)"
        );
        assert!(
            errs[1]
                .to_string()
                .starts_with("document 3 (Gadget g): kind: \"Gadget\" is not known")
        );
    }

    #[test]
    fn alias_bombs_and_deep_nesting_are_refused_before_they_expand() {
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let prev = i - 1;
            bomb.push_str(&format!("a{i}: &a{i} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"));
        }
        bomb.push_str("kind: Plugin\n");
        assert!(bomb.len() < 4096);
        let started = std::time::Instant::now();
        let errs = parse_documents(&bomb).unwrap_err();
        assert!(
            errs[0]
                .to_string()
                .starts_with("document 1: it expands to more than 100000 values"),
            "{errs:?}"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        let deep = format!("kind: Plugin\nspec: {}{}\n", "[".repeat(100), "]".repeat(100));
        let errs = parse_documents(&deep).unwrap_err();
        assert!(errs[0].message.contains("deeper than 64"), "{errs:?}");
        // A plain anchor that repeats little is fine.
        let small = PLUGIN.replace("nodeSelector: {role: sensor}", "nodeSelector: &sel {role: sensor}");
        assert!(parse_documents(&small).is_ok());
    }

    #[test]
    fn type_errors_and_unknown_fields_name_their_path_one_per_error() {
        let wrong_type = PLUGIN.replace("indices: [1]", "indices: [four]");
        let errs = parse_documents(&wrong_type).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0]
                .to_string()
                .starts_with("document 1 (Plugin dht22): spec.grants.leds.indices[0]: invalid type: string \"four\""),
            "{}",
            errs[0]
        );
        let unknown = PLUGIN.replace("nodeSelector", "nodeSelecter");
        let errs = parse_documents(&unknown).unwrap_err();
        assert!(
            errs[0]
                .to_string()
                .contains("spec.nodeSelecter: unknown field `nodeSelecter`"),
            "{}",
            errs[0]
        );
        // Two invalid fields: two errors, each on its own.
        let two = PLUGIN
            .replace("pin: 4", "pin: 41")
            .replace("indices: [1]", "indices: [1, 1]");
        let errs = parse_documents(&two).unwrap_err();
        assert!(errs.len() >= 2, "{errs:?}");
        assert!(errs.iter().all(|e| !e.message.contains("; ")), "{errs:?}");
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let errs = parse_documents(&PLUGIN.replace("nodeSelector", "nodeSelecter")).unwrap_err();
        assert!(errs[0].message.contains("unknown field `nodeSelecter`"), "{:?}", errs);
    }

    #[test]
    fn a_plugin_selects_nodes_by_its_node_selector_and_its_affinity() {
        let labels = parse_labels("role=sensor,board=pi4").unwrap();
        assert!(parse_labels("role").is_err());
        let with = |extra: &str| {
            let doc = PLUGIN.replace(
                "  nodeSelector: {role: sensor}\n",
                &format!("  nodeSelector: {{role: sensor}}\n{extra}"),
            );
            parse_documents(&doc).map(|mut d| match d.remove(0) {
                Object::Plugin(p) => p,
                _ => unreachable!(),
            })
        };
        assert!(with("").unwrap().spec.node_selector().matches(&labels));
        let p =
            with("  nodeAffinity:\n    matchExpressions: [{key: board, operator: NotIn, values: [pi4]}]\n").unwrap();
        assert!(!p.spec.node_selector().matches(&labels));
        assert!(
            p.spec
                .node_selector()
                .matches(&parse_labels("role=sensor,board=pizero").unwrap())
        );
        let e = with("  nodeAffinity:\n    matchExpressions: [{key: board, operator: In}]\n").unwrap_err();
        assert!(
            e[0].message.contains("spec.nodeAffinity.matchExpressions[0].values"),
            "{e:?}"
        );
    }
}

runs_a_plugin! {
    /// One plugin a node must run, exactly as the controller decided it.
    /// Unknown fields are ignored: a newer hub may send more.
    #[serde(rename_all = "camelCase")]
    pub struct Assignment (wire AssignmentWire) {
        pub name: String,
        pub generation: u64,
        pub digest: Digest,
        pub image: String,
        /// Health rules and what to go back to, during a progressive rollout.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub guard: Option<Box<crate::rollout::Guard>>,
    }
}

/// Everything a node must run: the full desired state for it, so a
/// reconnecting node never needs a diff.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Assignments {
    pub node: String,
    pub plugins: Vec<Assignment>,
}
