//! Fuzz targets: every parser that reads what a network peer, a file or a
//! plugin hands over. Each must return (an answer or an error) for any
//! input: never panic, never allocate without a bound, never loop.
//!
//! `cargo fuzz run TARGET --features libfuzzer` (from this folder) runs one
//! under libFuzzer; `cargo test -p harvester-fuzz` replays every target's
//! corpus (`corpus/TARGET/`), crashes found and fixed included.

use harvester_api::Digest;
use std::str::FromStr;

/// A target: reads any bytes, never panics.
pub type Target = fn(&[u8]);

/// Every target, by the name of its corpus folder.
pub const TARGETS: &[(&str, Target)] = &[
    ("manifest", manifest),
    ("standalone", standalone),
    ("grants", grants),
    ("quantities", quantities),
    ("selector", selector),
    ("node_message", node_message),
    ("oci_manifest", oci_manifest),
    ("signature_payload", signature_payload),
    ("compiled_statement", compiled_statement),
];

fn text(data: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(data)
}

/// `harvester apply`'s documents, as the hub reads them.
pub fn manifest(data: &[u8]) {
    if let Ok(objects) = harvester_api::resources::parse_documents(&text(data)) {
        for o in objects {
            // What was accepted serialises back, as the store needs.
            let _ = serde_json::to_vec(&o);
        }
    }
}

/// `harvester nodelet --standalone FILE`.
pub fn standalone(data: &[u8]) {
    let _ = harvester_api::standalone::StandaloneManifest::parse(&text(data));
}

/// A plugin's grants alone, with their checks.
pub fn grants(data: &[u8]) {
    if harvester_api::validation::check_yaml_size(&text(data)).is_err() {
        return;
    }
    if let Ok(g) = serde_yaml::from_str::<harvester_api::Grants>(&text(data)) {
        let mut errors = harvester_api::ValidationErrors::default();
        g.validate("spec.grants", &mut errors);
        let _ = g.output_pins();
    }
}

/// Durations, memory sizes and times, as flags and manifests write them.
pub fn quantities(data: &[u8]) {
    let s = text(data);
    let _ = harvester_api::DurationSpec::from_str(&s).map(|d| d.to_string());
    let _ = harvester_api::MemorySize::from_str(&s).map(|m| m.to_string());
    let _ = harvester_api::time::parse_rfc3339(&s);
}

/// `-l`, `labelSelector` and `nodeAffinity`.
pub fn selector(data: &[u8]) {
    let s = text(data);
    if let Ok(sel) = harvester_api::selector::Selector::parse(&s) {
        let labels = harvester_api::resources::parse_labels("role=sensor,board=pi4").unwrap_or_default();
        let _ = sel.matches(&labels);
        let _ = sel.to_string();
    }
    if harvester_api::validation::check_yaml_size(&s).is_ok() {
        let _ = serde_yaml::from_str::<harvester_api::selector::NodeAffinity>(&s);
    }
}

/// The node protocol's stream, one NDJSON message per line, as a node
/// reads it from the hub.
pub fn node_message(data: &[u8]) {
    use tokio_util::codec::Decoder;
    let mut codec = harvester_api::ndjson::Ndjson::<harvester_api::live::NodeMessage>::new();
    let mut buf = bytes::BytesMut::from(data);
    for _ in 0..=data.len() {
        match codec.decode(&mut buf) {
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    let _ = codec.decode_eof(&mut buf);
}

/// A registry's image manifest, as a pull reads it.
pub fn oci_manifest(data: &[u8]) {
    let _ = harvester_registry::artifact::component_layer(data);
}

/// A signature payload reaches its parser only when its signature checks
/// out: sign the input with a fixed key, then verify it as a node does.
pub fn signature_payload(data: &[u8]) {
    use std::sync::OnceLock;
    static KEY: OnceLock<(harvester_registry::SigningKey, harvester_registry::TrustedKey)> = OnceLock::new();
    let (key, trusted) = KEY.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("harvester-fuzz-key-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let key = harvester_registry::SigningKey::load_or_create_unattended(&dir.join("fuzz.key"))
            .expect("a key to sign with");
        let trusted = harvester_registry::TrustedKey::from_signing_key(&key).expect("its public half");
        (key, trusted)
    });
    let Ok(signature) = key.sign_bytes(data) else { return };
    let layer = harvester_registry::signing::SignatureLayer {
        payload: data.to_vec(),
        signature,
    };
    let digest = Digest::of(b"an artifact");
    let _ = harvester_registry::signing::verify(
        "127.0.0.1:5000/plugins/dht22",
        &digest,
        std::slice::from_ref(&layer),
        std::slice::from_ref(trusted),
    );
}

/// The hub's statement about code it compiled, as a node reads it once
/// its signature checks out.
pub fn compiled_statement(data: &[u8]) {
    if let Ok(st) = serde_json::from_slice::<harvester_api::compiled::CompiledStatement>(data) {
        let _ = st.artifact.to_string();
    }
}
