//! The CNCF wasm OCI artifact layout: an image manifest whose config has the
//! media type `application/vnd.wasm.config.v0+json` and whose single layer is
//! the component, `application/wasm`. `oras`, `wkg` and `wasm-pkg-tools`
//! read and write the same layout.

use harvester_api::Digest;
use serde_json::{Value, json};
use std::collections::BTreeMap;

pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_MANIFEST_MEDIA_TYPE: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
pub const LAYER_MEDIA_TYPE: &str = "application/wasm";
/// The older wasm-to-oci layer type; still accepted on pull.
pub const LEGACY_LAYER_MEDIA_TYPE: &str = "application/vnd.wasm.content.layer.v1+wasm";
pub const TITLE_ANNOTATION: &str = "org.opencontainers.image.title";
pub const CREATED_ANNOTATION: &str = "org.opencontainers.image.created";

/// A wasm component starts with the wasm magic and the component-model
/// layer/version word (a core module has version 1 there).
pub fn check_component(bytes: &[u8]) -> Result<(), String> {
    const MAGIC: &[u8] = b"\0asm";
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        return Err("not a WebAssembly file (no \\0asm header)".into());
    }
    if bytes[4..8] == [1, 0, 0, 0] {
        return Err(
            "a core WebAssembly module, not a component: build it for wasm32-wasip2 or with componentize-py".into(),
        );
    }
    if bytes[6..8] != [1, 0] {
        return Err(format!("unknown WebAssembly layer/version {:02x?}", &bytes[4..8]));
    }
    Ok(())
}

/// The config blob and the manifest for `component`, both as the exact bytes
/// to upload (the manifest's digest is the digest of these bytes).
pub struct Built {
    pub config: Vec<u8>,
    pub manifest: Vec<u8>,
    pub layer_digest: Digest,
}

pub fn build(component: &[u8], title: &str, created: &str) -> Built {
    let layer_digest = Digest::of(component);
    let config = serde_json::to_vec(&json!({
        "created": created,
        "architecture": "wasm",
        "os": "wasip2",
        "layerDigests": [layer_digest.to_string()],
    }))
    .expect("a JSON value serialises");
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {
            "mediaType": CONFIG_MEDIA_TYPE,
            "digest": Digest::of(&config).to_string(),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": LAYER_MEDIA_TYPE,
            "digest": layer_digest.to_string(),
            "size": component.len(),
            "annotations": { TITLE_ANNOTATION: title },
        }],
        "annotations": { CREATED_ANNOTATION: created },
    }))
    .expect("a JSON value serialises");
    Built {
        config,
        manifest,
        layer_digest,
    }
}

/// What a pull needs from a manifest: the one component layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentLayer {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
    pub annotations: BTreeMap<String, String>,
}

/// Checks a manifest is a wasm component artifact and returns its layer.
pub fn component_layer(manifest: &[u8]) -> Result<ComponentLayer, String> {
    let m: Value = serde_json::from_slice(manifest).map_err(|e| format!("manifest is not JSON: {e}"))?;
    if let Some(mt) = m["mediaType"].as_str()
        && mt != MANIFEST_MEDIA_TYPE
        && mt != DOCKER_MANIFEST_MEDIA_TYPE
    {
        return Err(format!("manifest media type {mt:?} is not an image manifest"));
    }
    let config_type = m["config"]["mediaType"].as_str().unwrap_or("");
    if config_type != CONFIG_MEDIA_TYPE {
        return Err(format!(
            "config media type {config_type:?}: not a wasm artifact (expected {CONFIG_MEDIA_TYPE})"
        ));
    }
    let layers = m["layers"].as_array().cloned().unwrap_or_default();
    let [layer] = layers.as_slice() else {
        return Err(format!(
            "{} layers: a wasm component artifact has exactly one",
            layers.len()
        ));
    };
    let media_type = layer["mediaType"].as_str().unwrap_or("").to_string();
    if media_type != LAYER_MEDIA_TYPE && media_type != LEGACY_LAYER_MEDIA_TYPE {
        return Err(format!("layer media type {media_type:?}: expected {LAYER_MEDIA_TYPE}"));
    }
    let digest = layer["digest"]
        .as_str()
        .ok_or("layer has no digest")?
        .parse::<Digest>()?;
    let size = layer["size"].as_u64().ok_or("layer has no size")?;
    let annotations = layer["annotations"]
        .as_object()
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    Ok(ComponentLayer {
        digest,
        size,
        media_type,
        annotations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMPONENT: &[u8] = b"\0asm\x0d\x00\x01\x00rest";

    #[test]
    fn built_manifests_read_back() {
        let built = build(COMPONENT, "dht22.wasm", "2026-01-01T00:00:00Z");
        let layer = component_layer(&built.manifest).unwrap();
        assert_eq!(layer.digest, Digest::of(COMPONENT));
        assert_eq!(layer.size, COMPONENT.len() as u64);
        assert_eq!(layer.annotations[TITLE_ANNOTATION], "dht22.wasm");
        assert_eq!(built.layer_digest, layer.digest);
    }

    #[test]
    fn other_artifacts_are_named_and_refused() {
        let image =
            br#"{"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.image.config.v1+json"},"layers":[]}"#;
        assert!(component_layer(image).unwrap_err().contains("not a wasm artifact"));
        let two =
            br#"{"schemaVersion":2,"config":{"mediaType":"application/vnd.wasm.config.v0+json"},"layers":[{},{}]}"#;
        assert!(component_layer(two).unwrap_err().contains("2 layers"));
    }

    #[test]
    fn only_components_are_pushed() {
        assert!(check_component(COMPONENT).is_ok());
        assert!(check_component(b"\0asm\x01\x00\x00\x00").unwrap_err().contains("core"));
        assert!(
            check_component(b"#!/bin/sh\n")
                .unwrap_err()
                .contains("not a WebAssembly")
        );
    }
}
