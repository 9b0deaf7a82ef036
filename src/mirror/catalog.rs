//! The mirror's own catalog: the upstream products, versions and items that were actually
//! mirrored, with every upstream field kept and each item path pointing at the local copy.
//! A version is listed only with complete images (a metadata item and its rootfs, or a unified
//! item): a half-mirrored pair would be an image clients list and cannot download. Pure.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Map, Value};

use super::select::{Image, PlannedProduct};
use crate::format::{Family, Index, IndexEntry};

/// The products of one source that made it, and what they reference.
#[derive(Debug, Default)]
pub struct Assembled {
    /// Product id → product object, ready for the products file.
    pub products: BTreeMap<String, Value>,
    /// Versions listed.
    pub versions: usize,
}

/// Builds the products of one source from its plan. `local` answers, for an item of a product
/// version, the local path of its verified copy (or `None` when it is not there); `keep` bounds
/// the versions per product; `seen` holds the fingerprints already listed, across sources, so
/// no fingerprint is published twice (clients could reach neither).
pub fn assemble(
    planned: &[PlannedProduct],
    keep: Option<usize>,
    local: &dyn Fn(&str, &str, &str) -> Option<String>,
    seen: &mut HashMap<(Option<Family>, String), String>,
    warnings: &mut Vec<String>,
) -> Assembled {
    let mut out = Assembled::default();
    for p in planned {
        let product = &p.product;
        let mut versions = Map::new();
        for pv in &p.versions {
            if keep.is_some_and(|k| versions.len() >= k) {
                break;
            }
            let version = &product.versions[pv.index];
            let complete: Vec<&Image> = pv
                .images
                .iter()
                .filter(|img| {
                    img.items
                        .iter()
                        .all(|k| local(&product.id, &version.name, k).is_some())
                })
                .collect();
            if complete.is_empty() {
                continue;
            }
            let at = format!("product `{}` version {}", product.id, version.name);
            if let Some(other) = complete
                .iter()
                .find_map(|img| seen.get(&(img.family, img.fingerprint.clone())))
            {
                warnings.push(format!(
                    "{at} left out: it publishes a fingerprint already listed by {other}, and clients could reach neither"
                ));
                continue;
            }
            for img in &complete {
                seen.insert((img.family, img.fingerprint.clone()), at.clone());
            }
            // Upstream JSON is parsed into a value only for what is mirrored.
            let version_raw = parse_raw(&version.raw);
            let mut items = Map::new();
            let deltas = pv
                .deltas
                .iter()
                .filter(|k| local(&product.id, &version.name, k).is_some());
            let keys = complete
                .iter()
                .flat_map(|img| img.items.iter())
                .chain(deltas);
            for key in keys {
                if items.contains_key(key) {
                    continue;
                }
                let mut raw = version_raw["items"][key].clone();
                if let (Some(obj), Some(path)) =
                    (raw.as_object_mut(), local(&product.id, &version.name, key))
                {
                    obj.insert("path".into(), Value::String(path));
                }
                items.insert(key.clone(), raw);
            }
            let mut raw = version_raw;
            if let Some(obj) = raw.as_object_mut() {
                obj.insert("items".into(), Value::Object(items));
            }
            versions.insert(version.name.clone(), raw);
        }
        if versions.is_empty() {
            continue;
        }
        drop_baseless_deltas(&mut versions);
        out.versions += versions.len();
        let mut raw = parse_raw(&product.raw);
        if let Some(obj) = raw.as_object_mut() {
            obj.insert("versions".into(), Value::Object(versions));
        }
        out.products.insert(product.id.clone(), raw);
    }
    out
}

/// Deltas whose base version is not in the mirror's catalog: nobody here can apply them.
fn drop_baseless_deltas(versions: &mut Map<String, Value>) {
    let names: Vec<String> = versions.keys().cloned().collect();
    for version in versions.values_mut() {
        if let Some(items) = version.get_mut("items").and_then(Value::as_object_mut) {
            items.retain(|_, item| {
                item["ftype"] != crate::format::SQUASHFS_DELTA_FTYPE
                    || item["delta_base"]
                        .as_str()
                        .is_some_and(|b| names.iter().any(|n| n == b))
            });
        }
    }
}

/// Upstream JSON text, already validated when it was read, as a value.
fn parse_raw(raw: &serde_json::value::RawValue) -> Value {
    serde_json::from_str(raw.get()).unwrap_or(Value::Null)
}

/// The products file: our envelope (content id, datatype, format, time) around the mirrored
/// products.
pub fn products_file(products: &BTreeMap<String, Value>, updated: &str) -> Value {
    serde_json::json!({
        "content_id": crate::catalog::publish::CONTENT_ID,
        "datatype": crate::config::DEFAULT_DATATYPE,
        "format": crate::config::DEFAULT_FORMAT,
        "products": products,
        "updated": updated,
    })
}

/// The index naming the products file at `images_path/images.json`.
pub fn index(products: &BTreeMap<String, Value>, images_path: &str, updated: &str) -> Index {
    Index {
        format: "index:1.0".into(),
        index: BTreeMap::from([(
            crate::catalog::publish::CONTENT_ID.to_owned(),
            IndexEntry {
                datatype: crate::config::DEFAULT_DATATYPE.into(),
                format: crate::config::DEFAULT_FORMAT.into(),
                path: crate::tree::names::products_rel(images_path),
                products: products.keys().cloned().collect(),
                updated: Some(updated.to_owned()),
            },
        )]),
        updated: Some(updated.to_owned()),
    }
}

/// Every item path a products file references.
pub fn referenced_paths(products_file: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for product in products_file
        .get("products")
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|m| m.values())
    {
        for version in product
            .get("versions")
            .and_then(Value::as_object)
            .into_iter()
            .flat_map(|m| m.values())
        {
            for item in version
                .get("items")
                .and_then(Value::as_object)
                .into_iter()
                .flat_map(|m| m.values())
            {
                if let Some(p) = item.get("path").and_then(Value::as_str) {
                    out.push(p.to_owned());
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::select::{Filters, parse_products, plan};
    use super::*;
    use serde_json::json;

    fn upstream() -> Value {
        let version = |n: u32| {
            json!({"label": "ok", "items": {
                "incus.tar.xz": {"ftype": "incus.tar.xz", "path": format!("v{n}/meta"), "sha256": format!("m{n}"), "size": 1,
                                  "combined_squashfs_sha256": format!("fp{n}"), "extra": "kept"},
                "root.squashfs": {"ftype": "squashfs", "path": format!("v{n}/root"), "sha256": format!("r{n}"), "size": 2},
                "delta": {"ftype": "squashfs.vcdiff", "path": format!("v{n}/delta"), "sha256": "x", "size": 1}
            }})
        };
        json!({"products": {"p": {"arch": "amd64", "os": "o", "release": "r", "aliases": "o/r",
            "supported": true,
            "versions": {"20240101_00:00": version(1), "20240102_00:00": version(2), "20240103_00:00": version(3)}}}})
    }

    #[test]
    fn lists_only_complete_images_with_upstream_fields_and_local_paths() {
        let mut w = Vec::new();
        let planned = plan(
            parse_products(
                &serde_json::to_vec(&upstream()).unwrap(),
                "x",
                &Filters::default(),
                &mut w,
            )
            .unwrap(),
            &Filters::default(),
        );
        // Version 3's rootfs failed: version 3 is left out, 2 and 1 are listed (keep 2).
        let local = |_: &str, v: &str, key: &str| {
            (v != "20240103_00:00" || key != "root.squashfs").then(|| format!("local/{v}/{key}"))
        };
        let mut seen = HashMap::new();
        let out = assemble(&planned, Some(2), &local, &mut seen, &mut w);
        let p = &out.products["p"];
        assert_eq!(p["supported"], json!(true));
        let versions: Vec<_> = p["versions"].as_object().unwrap().keys().cloned().collect();
        assert_eq!(versions, ["20240101_00:00", "20240102_00:00"]);
        let items = p["versions"]["20240102_00:00"]["items"]
            .as_object()
            .unwrap();
        assert_eq!(items.len(), 2, "the delta belongs to no image: {items:?}");
        assert_eq!(items["incus.tar.xz"]["extra"], json!("kept"));
        assert_eq!(
            items["incus.tar.xz"]["path"],
            json!("local/20240102_00:00/incus.tar.xz")
        );
        assert_eq!(p["versions"]["20240102_00:00"]["label"], json!("ok"));
        let doc = products_file(&out.products, "now");
        assert_eq!(referenced_paths(&doc).len(), 4);

        // The same fingerprints from a second source are not listed again.
        let again = assemble(&planned, Some(2), &local, &mut seen, &mut w);
        assert!(again.products.is_empty());
        assert!(w.iter().any(|w| w.contains("already listed")), "{w:?}");
    }
}
