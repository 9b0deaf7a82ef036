//! `.requirements` files (antifob's convention): a JSON object in any folder of the tree applies
//! to every product below it, the nearer file winning per key, and the product's own
//! `requirements:` in tree.yml winning over all of them. Values become strings (`false` →
//! `"false"`), since one non-string value makes Incus reject the whole remote; a file that is not
//! a JSON object of scalars is reported and ignored, never fatal.

use std::path::Path;

use crate::config::ProductSpec;
use crate::format::Requirements;

/// The file name.
pub use crate::tree::names::REQUIREMENTS_FILE as FILE;

/// Reads one `.requirements`; `None` (with a warning for a bad file) when there is nothing to use.
fn read(path: &Path, warnings: &mut Vec<String>) -> Option<Requirements> {
    let bytes = std::fs::read(path).ok()?;
    let value: serde_json::Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => {
            warnings.push(format!("{}: ignored: not valid JSON: {e}", path.display()));
            return None;
        }
    };
    let serde_json::Value::Object(map) = value else {
        warnings.push(format!("{}: ignored: not a JSON object", path.display()));
        return None;
    };
    let mut out = Requirements::new();
    for (k, v) in map {
        let s = match v {
            serde_json::Value::String(s) => s,
            serde_json::Value::Bool(b) => b.to_string(),
            serde_json::Value::Number(n) => n.to_string(),
            other => {
                warnings.push(format!(
                    "{}: `{k}` ignored: requirement values must be strings, not {other}",
                    path.display()
                ));
                continue;
            }
        };
        out.insert(k, s);
    }
    Some(out)
}

/// The `.requirements` files read in one run, by folder: the folders above the products are
/// shared by many of them (the tree's top by all), and each is read once.
#[derive(Debug, Default)]
pub struct Folders {
    read: std::collections::HashMap<std::path::PathBuf, Option<Requirements>>,
}

/// Merges the `.requirements` files from `root` down to the product's folder into its
/// requirements (each folder's file read once per `folders`).
pub fn apply(
    spec: &mut ProductSpec,
    root: &Path,
    folders: &mut Folders,
    warnings: &mut Vec<String>,
) {
    let mut merged = Requirements::new();
    let mut dir = root.to_path_buf();
    let mut chain = vec![dir.clone()];
    for part in spec.directory.split('/').filter(|p| !p.is_empty()) {
        dir.push(part);
        chain.push(dir.clone());
    }
    for folder in chain {
        let found = folders
            .read
            .entry(folder)
            .or_insert_with_key(|folder| read(&folder.join(FILE), warnings));
        if let Some(found) = found {
            merged.extend(found.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
    }
    if merged.is_empty() {
        return;
    }
    if let Some(own) = spec.requirements.take() {
        merged.extend(own);
    }
    spec.requirements = Some(merged);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BuildSpec, Origin};

    fn spec(dir: &str, own: Option<&[(&str, &str)]>) -> ProductSpec {
        ProductSpec {
            name: "p".into(),
            arch: "amd64".into(),
            release: None,
            os: None,
            release_title: None,
            directory: dir.into(),
            version: None,
            prefix_path: None,
            build_script_hook: None,
            hidden: false,
            days: 1,
            deltas: None,
            aliases: Vec::new(),
            variant: None,
            release_codename: None,
            requirements: own.map(|o| o.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()),
            expiry: None,
            build: BuildSpec::default(),
            origin: Origin::Layout { dir: dir.into() },
        }
    }

    #[test]
    fn nearer_files_win_and_tree_yml_wins_over_all() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("images/debian/12/amd64/default")).unwrap();
        std::fs::write(r.join(FILE), r#"{"secureboot": false, "cgroup": "v1"}"#).unwrap();
        std::fs::write(
            r.join("images/debian").join(FILE),
            r#"{"cgroup": "v2", "nesting": true}"#,
        )
        .unwrap();
        let mut w = Vec::new();
        let mut s = spec("images/debian/12/amd64/default", None);
        apply(&mut s, r, &mut Folders::default(), &mut w);
        let got: Vec<(String, String)> = s.requirements.unwrap().into_iter().collect();
        assert_eq!(
            got,
            [
                ("cgroup".into(), "v2".into()),
                ("nesting".into(), "true".into()),
                ("secureboot".into(), "false".into())
            ]
        );
        let mut s = spec("images/debian/12/amd64/default", Some(&[("cgroup", "v1")]));
        apply(&mut s, r, &mut Folders::default(), &mut w);
        assert_eq!(s.requirements.unwrap()["cgroup"], "v1");
        assert!(w.is_empty(), "{w:?}");
    }

    #[test]
    fn bad_files_are_reported_and_ignored() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("a")).unwrap();
        std::fs::write(r.join(FILE), b"{not json").unwrap();
        std::fs::write(r.join("a").join(FILE), r#"{"ok": "yes", "bad": {"x": 1}}"#).unwrap();
        let mut w = Vec::new();
        let mut s = spec("a", None);
        apply(&mut s, r, &mut Folders::default(), &mut w);
        assert_eq!(s.requirements.unwrap().len(), 1);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].contains("not valid JSON") && w[1].contains("`bad` ignored"),
            "{w:?}"
        );
        let mut s = spec("a", None);
        std::fs::remove_file(r.join("a").join(FILE)).unwrap();
        apply(&mut s, r, &mut Folders::default(), &mut Vec::new());
        assert_eq!(s.requirements, None);
    }

    /// A folder above many products is read once per run; a bad file is reported once.
    #[test]
    fn shared_folders_are_read_once() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::write(r.join(FILE), "[1]").unwrap();
        let mut folders = Folders::default();
        let mut w = Vec::new();
        for dir in ["a", "b", "c"] {
            let mut s = spec(dir, None);
            apply(&mut s, r, &mut folders, &mut w);
            assert_eq!(s.requirements, None);
        }
        assert_eq!(w.len(), 1, "{w:?}");
    }
}
