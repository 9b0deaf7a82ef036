//! `metadata.json` overrides, the lxd-image-server fork's file made deterministic: a product
//! folder's `metadata.json` applies to every version, and the newest version folder holding one
//! is layered on top. It may set `os`, `release_title`, `aliases` (a JSON array or a
//! comma-separated string), `variant`, `description` and `requirements`. A malformed file, or a
//! field of the wrong type, is reported as a warning and ignored: it never stops publishing.
//!
//! `description` has no product field in simplestreams: clients compose the description from
//! `os`, `release_title`, the version `label` and the variant. So it becomes the `label` of the
//! versions it applies to (a version folder's own file wins for that version), which every
//! client prints in the image description.

use std::collections::BTreeSet;
use std::path::Path;

use crate::config::{ProductSpec, check_alias};
use crate::format::{Manifest, Requirements, VersionName};

/// The file name, in a product folder or a version folder.
pub use crate::tree::names::METADATA_JSON as FILE;

/// The fields a `metadata.json` sets; `None` leaves the product's own value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    /// Product `os`.
    pub os: Option<String>,
    /// Product `release_title`.
    pub release_title: Option<String>,
    /// Aliases, put before the product's own ones.
    pub aliases: Option<Vec<String>>,
    /// Product `variant`.
    pub variant: Option<String>,
    /// Becomes the version `label`.
    pub description: Option<String>,
    /// Merged into the product's requirements (values as strings).
    pub requirements: Option<Requirements>,
}

impl Overrides {
    /// `self` with every field `over` sets replaced.
    fn layered(self, over: Overrides) -> Overrides {
        Overrides {
            os: over.os.or(self.os),
            release_title: over.release_title.or(self.release_title),
            aliases: over.aliases.or(self.aliases),
            variant: over.variant.or(self.variant),
            description: over.description.or(self.description),
            requirements: over.requirements.or(self.requirements),
        }
    }
}

/// Parses a `metadata.json`; `source` names it in warnings. `None` when the whole file is
/// unusable; a bad field is dropped on its own.
pub fn parse(bytes: &[u8], source: &str, warnings: &mut Vec<String>) -> Option<Overrides> {
    let doc: serde_json::Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => {
            warnings.push(format!("{source}: ignored: not valid JSON: {e}"));
            return None;
        }
    };
    let serde_json::Value::Object(fields) = doc else {
        warnings.push(format!("{source}: ignored: not a JSON object"));
        return None;
    };
    let mut out = Overrides::default();
    let mut bad = |key: &str, what: &str| {
        warnings.push(format!("{source}: `{key}` ignored: {what}"));
    };
    for (key, value) in fields {
        let text = || match &value {
            serde_json::Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
            _ => None,
        };
        match key.as_str() {
            "os" | "release_title" | "variant" | "description" => {
                let Some(s) = text() else {
                    bad(&key, "expected a non-empty string");
                    continue;
                };
                match key.as_str() {
                    "os" => out.os = Some(s),
                    "release_title" => out.release_title = Some(s),
                    "variant" => out.variant = Some(s),
                    _ => out.description = Some(s),
                }
            }
            "aliases" => {
                let list: Option<Vec<String>> = match &value {
                    serde_json::Value::String(s) => Some(s.split(',').map(str::to_owned).collect()),
                    serde_json::Value::Array(items) => items
                        .iter()
                        .map(|i| i.as_str().map(str::to_owned))
                        .collect(),
                    _ => None,
                };
                let Some(list) = list else {
                    bad(
                        &key,
                        "expected an array of strings or a comma-separated string",
                    );
                    continue;
                };
                let mut aliases = Vec::new();
                for alias in list.iter().map(|a| a.trim()).filter(|a| !a.is_empty()) {
                    match check_alias(alias) {
                        Ok(()) if !aliases.iter().any(|a| a == alias) => {
                            aliases.push(alias.to_owned());
                        }
                        Ok(()) => {}
                        Err(why) => bad(&format!("aliases: {alias}"), &why),
                    }
                }
                out.aliases = Some(aliases);
            }
            "requirements" => {
                let serde_json::Value::Object(reqs) = &value else {
                    bad(&key, "expected an object");
                    continue;
                };
                let mut map = Requirements::new();
                for (k, v) in reqs {
                    // Values must be strings: one boolean makes Incus reject the whole remote.
                    let v = match v {
                        serde_json::Value::String(s) => s.clone(),
                        serde_json::Value::Bool(b) => b.to_string(),
                        serde_json::Value::Number(n) => n.to_string(),
                        _ => {
                            bad(&format!("requirements.{k}"), "expected a string");
                            continue;
                        }
                    };
                    map.insert(k.clone(), v);
                }
                out.requirements = Some(map);
            }
            _ => bad(
                &key,
                "unknown key (known: os, release_title, aliases, variant, description, requirements)",
            ),
        }
    }
    Some(out)
}

/// Reads `dir/metadata.json`; a missing file is `None` without a warning.
pub fn read(dir: &Path, warnings: &mut Vec<String>) -> Option<Overrides> {
    let path = dir.join(FILE);
    match std::fs::read(&path) {
        Ok(bytes) => parse(&bytes, &path.display().to_string(), warnings),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            warnings.push(format!("{}: ignored: {e}", path.display()));
            None
        }
    }
}

/// Applies the `metadata.json` files of the product folder `product_dir` and of its version
/// folders to a loaded product. `listed`: the versions whose folder holds one, when known
/// (from the listing the manifest was hashed from); the other folders are not looked into.
pub fn apply(
    spec: &mut ProductSpec,
    manifest: &mut Manifest,
    product_dir: &Path,
    listed: Option<&BTreeSet<VersionName>>,
    warnings: &mut Vec<String>,
) {
    let base = read(product_dir, warnings).unwrap_or_default();
    let mut newest: Option<Overrides> = None;
    for (name, version) in manifest.versions.iter_mut().rev() {
        let own = listed
            .is_none_or(|l| l.contains(name))
            .then(|| read(&product_dir.join(name.as_str()), warnings))
            .flatten();
        let label = own
            .as_ref()
            .and_then(|o| o.description.clone())
            .or_else(|| base.description.clone());
        if label.is_some() {
            version.label = label;
        }
        if newest.is_none() {
            newest = own;
        }
    }
    let o = match newest {
        Some(n) => base.layered(n),
        None => base,
    };
    if let Some(os) = o.os {
        spec.os = Some(os);
    }
    if let Some(t) = o.release_title {
        spec.release_title = Some(t);
    }
    if let Some(v) = o.variant {
        spec.variant = Some(v);
    }
    if let Some(mut aliases) = o.aliases {
        for own in spec.aliases.drain(..) {
            if !aliases.contains(&own) {
                aliases.push(own);
            }
        }
        spec.aliases = aliases;
    }
    if let Some(reqs) = o.requirements {
        spec.requirements
            .get_or_insert_with(Requirements::new)
            .extend(reqs);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::Origin;
    use crate::format::{Version, VersionName};

    fn parsed(text: &str) -> (Option<Overrides>, Vec<String>) {
        let mut w = Vec::new();
        (parse(text.as_bytes(), "m.json", &mut w), w)
    }

    #[test]
    fn aliases_as_array_or_comma_separated_string() {
        let (a, w) = parsed(r#"{"aliases": ["x/1", "y"]}"#);
        assert_eq!(a.unwrap().aliases.unwrap(), ["x/1", "y"]);
        assert!(w.is_empty(), "{w:?}");
        let (s, w) = parsed(r#"{"aliases": "x/1, y,,x/1"}"#);
        assert_eq!(s.unwrap().aliases.unwrap(), ["x/1", "y"]);
        assert!(w.is_empty(), "{w:?}");
    }

    #[test]
    fn every_field() {
        let (o, w) = parsed(
            r#"{"os":"Ubuntu","release_title":"16.04 LTS","variant":"cloud",
                "description":"built by CI","requirements":{"secureboot":false,"cdrom":"true"}}"#,
        );
        let o = o.unwrap();
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(o.os.as_deref(), Some("Ubuntu"));
        assert_eq!(o.release_title.as_deref(), Some("16.04 LTS"));
        assert_eq!(o.variant.as_deref(), Some("cloud"));
        assert_eq!(o.description.as_deref(), Some("built by CI"));
        let reqs = o.requirements.unwrap();
        assert_eq!(reqs["secureboot"], "false");
        assert_eq!(reqs["cdrom"], "true");
    }

    #[test]
    fn malformed_files_and_fields_are_warnings() {
        for bad in ["{", "[1]", "\"x\"", ""] {
            let (o, w) = parsed(bad);
            assert!(o.is_none(), "{bad}");
            assert_eq!(w.len(), 1, "{bad}: {w:?}");
        }
        let (o, w) = parsed(
            r#"{"os": 3, "aliases": {"a": 1}, "release": "x", "requirements": [], "variant": "ok"}"#,
        );
        let o = o.unwrap();
        assert_eq!(o.os, None);
        assert_eq!(o.aliases, None);
        assert_eq!(o.variant.as_deref(), Some("ok"));
        assert_eq!(w.len(), 4, "{w:?}");
        let (o, w) = parsed(r#"{"aliases": "good,has space,debian/12/amd64"}"#);
        assert_eq!(o.unwrap().aliases.unwrap(), ["good"]);
        assert_eq!(w.len(), 2, "{w:?}");
    }

    /// A layout product's declaration, for tests.
    pub(crate) fn spec() -> ProductSpec {
        ProductSpec {
            name: "ubuntu:xenial:amd64:default".into(),
            arch: "amd64".into(),
            release: Some("xenial".into()),
            os: Some("ubuntu".into()),
            release_title: None,
            directory: "images/ubuntu/xenial/amd64/default".into(),
            version: None,
            prefix_path: None,
            build_script_hook: None,
            hidden: false,
            days: 1,
            deltas: None,
            aliases: vec!["ubuntu/xenial/default".into(), "ubuntu/xenial".into()],
            variant: Some("default".into()),
            release_codename: None,
            requirements: None,
            expiry: None,
            build: crate::config::BuildSpec::default(),
            origin: Origin::Layout { dir: "x".into() },
        }
    }

    #[test]
    fn product_file_then_newest_version_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        for v in ["20240101_00:00", "20240102_00:00", "20240103_00:00"] {
            std::fs::create_dir(p.join(v)).unwrap();
        }
        std::fs::write(
            p.join(FILE),
            r#"{"os":"Ubuntu","release_title":"base","description":"all","aliases":"xenial"}"#,
        )
        .unwrap();
        std::fs::write(
            p.join("20240102_00:00").join(FILE),
            r#"{"release_title":"16.04 LTS","description":"second","aliases":["u/16.04","ubuntu/xenial"]}"#,
        )
        .unwrap();
        std::fs::write(p.join("20240101_00:00").join(FILE), "{broken").unwrap();
        let mut m = Manifest::default();
        for v in ["20240101_00:00", "20240102_00:00", "20240103_00:00"] {
            m.versions
                .insert(VersionName::parse(v).unwrap(), Version::default());
        }
        let mut s = spec();
        let mut w = Vec::new();
        apply(&mut s, &mut m, p, None, &mut w);
        assert_eq!(w.len(), 1, "the broken file is reported: {w:?}");
        assert_eq!(s.os.as_deref(), Some("Ubuntu"));
        // The newest version folder with a metadata.json (…02) wins over the product's file.
        assert_eq!(s.release_title.as_deref(), Some("16.04 LTS"));
        assert_eq!(
            s.aliases,
            ["u/16.04", "ubuntu/xenial", "ubuntu/xenial/default"]
        );
        let labels: Vec<_> = m.versions.values().map(|v| v.label.as_deref()).collect();
        assert_eq!(labels, [Some("all"), Some("second"), Some("all")]);

        // With the listing known, only the folders it names are read: the broken file of
        // …01 is not listed (as if it had appeared since), so it is not read and not reported.
        let listed: BTreeSet<_> = [VersionName::parse("20240102_00:00").unwrap()].into();
        let mut s = spec();
        let mut w = Vec::new();
        apply(&mut s, &mut m, p, Some(&listed), &mut w);
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(s.release_title.as_deref(), Some("16.04 LTS"));
    }

    #[test]
    fn no_files_change_nothing() {
        let d = tempfile::tempdir().unwrap();
        let mut m = Manifest::default();
        let mut s = spec();
        let before = s.clone();
        let mut w = Vec::new();
        apply(&mut s, &mut m, d.path(), None, &mut w);
        assert_eq!(s, before);
        assert!(w.is_empty());
    }
}
