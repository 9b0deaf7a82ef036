//! The documents: `ssb.json` (a product's manifest), `images.json` (the products file) and
//! `index.json`. Maps are `BTreeMap`s so the output is deterministic.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::item::Item;
use super::version::VersionName;

/// The items of one version.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// Item key → item. Clients ignore the keys; python-simplestreams uses them as identity.
    pub items: BTreeMap<String, Box<Item>>,
    /// Optional label, shown by clients in descriptions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// Image requirements (`requirements` for Incus, `lxd_requirements` for LXD). Values are
/// strings by construction: one boolean makes Incus reject the whole remote.
pub type Requirements = BTreeMap<String, String>;

/// A product of the products file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    /// Comma-joined aliases.
    pub aliases: String,
    /// Architecture as published (Debian names recommended).
    pub arch: String,
    /// Requirements as LXD reads them; always identical to `requirements`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lxd_requirements: Option<Requirements>,
    /// Display name of the OS.
    pub os: String,
    /// Release (codename or number).
    pub release: String,
    /// Release codename (LXD ≥ 6.8 shows it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_codename: Option<String>,
    /// What clients show in descriptions.
    pub release_title: String,
    /// Requirements as Incus reads them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requirements: Option<Requirements>,
    /// End of support, `YYYY-MM-DD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub support_eol: Option<String>,
    /// Variant (`default`, `cloud`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// Product version (image property `version`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Version name → version.
    pub versions: BTreeMap<VersionName, Version>,
}

/// `streams/v1/images.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductsFile {
    /// Required by python-simplestreams.
    pub content_id: String,
    /// `image-downloads`: the only datatype LXD and Incus read.
    pub datatype: String,
    /// `products:1.0`.
    pub format: String,
    /// Product id → product.
    pub products: BTreeMap<String, Product>,
    /// RFC 2822 time of publication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated: Option<String>,
}

impl ProductsFile {
    /// Every item of every version of every product.
    pub fn items(&self) -> impl Iterator<Item = &Item> {
        self.products
            .values()
            .flat_map(|p| p.versions.values())
            .flat_map(|v| v.items.values())
            .map(|item| &**item)
    }
}

/// One entry of `index.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// Must be `image-downloads` for LXD and Incus.
    pub datatype: String,
    /// `products:1.0`; python-simplestreams skips entries without it.
    pub format: String,
    /// Path of the products file relative to the remote root.
    pub path: String,
    /// The product ids of that file, sorted.
    pub products: Vec<String>,
    /// RFC 2822 time of publication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated: Option<String>,
}

/// `streams/v1/index.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Index {
    /// `index:1.0`.
    pub format: String,
    /// Content id → entry.
    pub index: BTreeMap<String, IndexEntry>,
    /// RFC 2822 time of publication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated: Option<String>,
}

/// A product's `ssb.json`: what the tree holds for it, hashed. Extra fields beyond the original
/// tool's (`properties`) are ignored by it, so manifests stay readable both ways.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The product id; must match the product it is loaded for.
    pub name: String,
    /// End of support as `YYYY-MM-DD` (the original wrote Unix seconds; both are read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiry: Option<String>,
    /// Properties of the newest version's metadata.yaml (`os`, `release`, `variant`,
    /// `description`, `architecture`, …), so remote products can be described without their
    /// image files.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
    /// Version name → version.
    pub versions: BTreeMap<VersionName, Version>,
}
