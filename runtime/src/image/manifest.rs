//! The manifest shapes berth reads (Docker schema2 and OCI), parsed leniently, and the
//! platform choice for manifest lists / OCI indexes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::error::ImageError;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_V1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// What a registry is asked for, in preference order.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
pub struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
}

/// A manifest or an index: both are read into this one shape and told apart by media type
/// or by which list is present.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct AnyManifest {
    #[serde(default)]
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: String,
    #[serde(default)]
    pub config: Option<Descriptor>,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

impl AnyManifest {
    pub fn parse(data: &[u8], what: &str) -> Result<AnyManifest, ImageError> {
        let m: AnyManifest = serde_json::from_slice(data).map_err(|source| ImageError::Json {
            what: what.to_string(),
            source,
        })?;
        if m.schema_version == 1 || m.media_type == DOCKER_V1_SIGNED {
            return Err(ImageError::Unsupported {
                what: "manifest schema",
                value: "Docker schema 1 (deprecated)".into(),
            });
        }
        Ok(m)
    }

    pub fn is_index(&self, content_type: &str) -> bool {
        let t = if self.media_type.is_empty() {
            content_type
        } else {
            &self.media_type
        };
        t.starts_with(OCI_INDEX)
            || t.starts_with(DOCKER_LIST)
            || (self.config.is_none() && !self.manifests.is_empty())
    }
}

/// Pick the manifest for `os/arch[/variant]` from an index, as containerd's default matcher does:
/// exact variant first, then a missing variant; arm64 treats `v8` and none alike. Attestation
/// manifests (`unknown/unknown`) are never chosen.
pub fn choose_platform<'a>(
    index: &'a AnyManifest,
    os: &str,
    arch: &str,
    variant: Option<&str>,
) -> Option<&'a Descriptor> {
    let norm = |v: Option<&str>| -> Option<String> {
        match (arch, v) {
            ("arm64", Some("v8")) | ("arm64", None) => None,
            (_, v) => v.map(str::to_string),
        }
    };
    let want_v = norm(variant);
    let mut fallback = None;
    for d in &index.manifests {
        let Some(p) = &d.platform else { continue };
        if p.os != os || p.architecture != arch {
            continue;
        }
        let got_v = norm(p.variant.as_deref());
        if got_v == want_v {
            return Some(d);
        }
        if got_v.is_none() && fallback.is_none() {
            fallback = Some(d);
        }
    }
    fallback
}

pub fn platforms(index: &AnyManifest) -> String {
    let v: Vec<String> = index
        .manifests
        .iter()
        .filter_map(|d| d.platform.as_ref())
        .map(|p| match &p.variant {
            Some(v) => format!("{}/{}/{}", p.os, p.architecture, v),
            None => format!("{}/{}", p.os, p.architecture),
        })
        .collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(ps: &[(&str, &str, Option<&str>)]) -> AnyManifest {
        AnyManifest {
            schema_version: 2,
            media_type: OCI_INDEX.into(),
            manifests: ps
                .iter()
                .enumerate()
                .map(|(i, (os, a, v))| Descriptor {
                    digest: format!("d{i}"),
                    platform: Some(Platform {
                        os: os.to_string(),
                        architecture: a.to_string(),
                        variant: v.map(str::to_string),
                    }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn platform_choice() {
        let i = idx(&[
            ("unknown", "unknown", None),
            ("linux", "arm", Some("v6")),
            ("linux", "arm", Some("v7")),
            ("linux", "amd64", None),
            ("linux", "arm64", Some("v8")),
        ]);
        assert_eq!(
            choose_platform(&i, "linux", "amd64", None).unwrap().digest,
            "d3"
        );
        assert_eq!(
            choose_platform(&i, "linux", "arm", Some("v7"))
                .unwrap()
                .digest,
            "d2"
        );
        assert_eq!(
            choose_platform(&i, "linux", "arm64", None).unwrap().digest,
            "d4"
        );
        assert!(choose_platform(&i, "linux", "s390x", None).is_none());
        assert!(choose_platform(&i, "windows", "amd64", None).is_none());
        assert!(platforms(&i).contains("linux/arm/v7"));
    }

    #[test]
    fn schema1_rejected() {
        assert!(AnyManifest::parse(br#"{"schemaVersion":1,"fsLayers":[]}"#, "m").is_err());
        assert!(AnyManifest::parse(b"not json", "m").is_err());
        let m = AnyManifest::parse(
            br#"{"schemaVersion":2,"manifests":[{"digest":"x","size":1}]}"#,
            "m",
        )
        .unwrap();
        assert!(m.is_index(""));
    }
}
