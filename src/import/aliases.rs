//! Extra aliases for an imported image's product, kept in the product folder's metadata.json
//! beside the aliases the layout gives it.

use std::collections::BTreeSet;
use std::path::Path;

use super::{ImportError, io};
use crate::tree::LayoutProduct;

/// Checks aliases given for an import, so that a bad one is refused before anything is placed.
pub fn check_aliases(aliases: &[String]) -> Result<(), ImportError> {
    for a in aliases {
        crate::config::check_alias(a)
            .map_err(|why| ImportError::Input(format!("alias `{a}` {why}")))?;
    }
    Ok(())
}

/// After [`super::import`] placed an image in `version_dir` under `target`: gives its product the
/// `extra` aliases, through the product folder's metadata.json, keeping the aliases the layout
/// gives it (an `aliases` there replaces them). The CLI and the server both end an import
/// with this.
pub fn add_product_aliases(
    target: &Path,
    version_dir: &Path,
    extra: &[String],
) -> Result<(), ImportError> {
    if extra.is_empty() {
        return Ok(());
    }
    check_aliases(extra)?;
    let product = version_dir
        .parent()
        .and_then(|dir| LayoutProduct::of_folder(target, dir))
        .ok_or_else(|| {
            ImportError::Input(format!(
                "{}: not a version folder of the layout images/<os>/<release>/<arch>/<variant>/",
                version_dir.display()
            ))
        })?;
    add_aliases(
        &target.join(&product.directory),
        &product.default_aliases(),
        extra,
    )
}

/// Adds aliases to a product through its folder's metadata.json.
fn add_aliases(
    product_dir: &Path,
    defaults: &[String],
    extra: &[String],
) -> Result<(), ImportError> {
    let path = product_dir.join(crate::tree::names::METADATA_JSON);
    let mut doc: serde_json::Map<String, serde_json::Value> = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            ImportError::Input(format!("{}: {e}; fix or remove it", path.display()))
        })?,
        Err(_) => serde_json::Map::new(),
    };
    let mut aliases: Vec<String> = match doc.get("aliases") {
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        Some(serde_json::Value::String(s)) => s
            .split(',')
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect(),
        _ => defaults.to_vec(),
    };
    let mut seen: BTreeSet<String> = aliases.iter().cloned().collect();
    for a in extra {
        if seen.insert(a.clone()) {
            aliases.push(a.clone());
        }
    }
    doc.insert("aliases".into(), serde_json::Value::from(aliases));
    let mut bytes =
        serde_json::to_vec_pretty(&doc).map_err(|e| ImportError::Input(e.to_string()))?;
    bytes.push(b'\n');
    crate::tree::atomic::write(&path, &bytes).map_err(io(&path))
}
