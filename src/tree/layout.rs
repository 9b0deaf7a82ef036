//! The lxd-image-server layout: every folder `images/<os>/<release>/<arch>/<variant>/` under the
//! tree is a product, named and aliased after its path.

use std::path::{Path, PathBuf};

use super::TreeError;
use super::names::LAYOUT_ROOT;
use super::scan::read_dir_sorted;
use crate::format::VersionName;

/// A product of the lxd-image-server layout `images/<os>/<release>/<arch>/<variant>/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayoutProduct {
    /// `os` folder name.
    pub os: String,
    /// `release` folder name.
    pub release: String,
    /// `arch` folder name.
    pub arch: String,
    /// `variant` folder name.
    pub variant: String,
    /// The product folder relative to the root, with `/` separators.
    pub directory: String,
}

impl LayoutProduct {
    /// The product whose folder is `dir`, when `dir` is `root/images/<os>/<release>/<arch>/<variant>`
    /// (both as given, without resolving anything).
    pub fn of_folder(root: &Path, dir: &Path) -> Option<Self> {
        let rel = dir.strip_prefix(root.join(LAYOUT_ROOT)).ok()?;
        let parts: Vec<&str> = rel
            .components()
            .map(|c| match c {
                std::path::Component::Normal(name) => name.to_str(),
                _ => None,
            })
            .collect::<Option<_>>()?;
        Self::of_parts(&parts)
    }

    fn of_parts(parts: &[&str]) -> Option<Self> {
        let [os, release, arch, variant] = parts else {
            return None;
        };
        Some(Self {
            directory: format!("{LAYOUT_ROOT}/{os}/{release}/{arch}/{variant}"),
            os: (*os).to_owned(),
            release: (*release).to_owned(),
            arch: (*arch).to_owned(),
            variant: (*variant).to_owned(),
        })
    }

    /// The product whose folder, relative to the root with `/` separators, is
    /// `images/<os>/<release>/<arch>/<variant>` (a bucket's keys); hidden names are not products.
    pub fn of_rel(rel: &str) -> Option<Self> {
        let rest = rel.strip_prefix(LAYOUT_ROOT)?.strip_prefix('/')?;
        let parts: Vec<&str> = rest.split('/').collect();
        if parts.len() != 4
            || parts.iter().any(|p| p.is_empty() || p.starts_with('.'))
            || VersionName::parse(parts[2]).is_ok()
            || VersionName::parse(parts[3]).is_ok()
        {
            return None;
        }
        Self::of_parts(&parts)
    }

    /// The product id in the catalog: `os:release:arch:variant`.
    pub fn name(&self) -> String {
        format!(
            "{}:{}:{}:{}",
            self.os, self.release, self.arch, self.variant
        )
    }

    /// The aliases the layout gives a product: `os/release/variant`, plus `os/release` for the
    /// `default` variant.
    pub fn default_aliases(&self) -> Vec<String> {
        let mut aliases = vec![format!("{}/{}/{}", self.os, self.release, self.variant)];
        if self.variant == "default" {
            aliases.push(format!("{}/{}", self.os, self.release));
        }
        aliases
    }
}

/// Finds the product folders of the layout under `root/images`. Folders at the wrong depth are
/// reported, hidden ones ignored.
pub fn discover_layout(
    root: &Path,
    warnings: &mut Vec<String>,
) -> Result<Vec<LayoutProduct>, TreeError> {
    let base = root.join(LAYOUT_ROOT);
    let mut out = Vec::new();
    if !base.is_dir() {
        return Ok(out);
    }
    // Folders only: a symlink (to a system folder, say) is reported and never walked, so a
    // stray link cannot make the scan walk half the file system.
    let mut skipped = Vec::new();
    let mut subdirs = |dir: &Path| -> Result<Vec<(String, PathBuf)>, TreeError> {
        Ok(read_dir_sorted(dir)?
            .into_iter()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let path = e.path();
                let kind = e.file_type().ok()?;
                if name.starts_with('.') {
                    return None;
                }
                if kind.is_symlink() && path.is_dir() {
                    skipped.push(format!(
                        "{}: skipped: a symlink to a folder; the layout is walked through real folders only",
                        path.display()
                    ));
                    return None;
                }
                kind.is_dir().then_some((name, path))
            })
            .collect())
    };
    for (os, os_dir) in subdirs(&base)? {
        for (release, rel_dir) in subdirs(&os_dir)? {
            for (arch, arch_dir) in subdirs(&rel_dir)? {
                if VersionName::parse(&arch).is_ok() {
                    warnings.push(format!(
                        "{}: a version folder at the wrong depth; expected images/<os>/<release>/<arch>/<variant>/<version>",
                        arch_dir.display()
                    ));
                    continue;
                }
                for (variant, var_dir) in subdirs(&arch_dir)? {
                    if VersionName::parse(&variant).is_ok() {
                        warnings.push(format!(
                            "{}: a version folder at the wrong depth; expected images/<os>/<release>/<arch>/<variant>/<version>",
                            var_dir.display()
                        ));
                        continue;
                    }
                    out.push(LayoutProduct {
                        directory: format!("{LAYOUT_ROOT}/{os}/{release}/{arch}/{variant}"),
                        os: os.clone(),
                        release: release.clone(),
                        arch: arch.clone(),
                        variant,
                    });
                }
            }
        }
    }
    warnings.extend(skipped);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x").unwrap();
    }

    #[test]
    fn discovers_layout_products() {
        let d = tempfile::tempdir().unwrap();
        touch(
            &d.path()
                .join("images/debian/12/amd64/default/20240101_00:00/incus.tar.xz"),
        );
        touch(
            &d.path()
                .join("images/debian/12/amd64/cloud/20240101_00:00/incus.tar.xz"),
        );
        touch(&d.path().join("images/.uploads/x/y/z/w"));
        std::fs::create_dir_all(d.path().join("images/alpine/3.20/20240101_00:00")).unwrap();
        std::fs::create_dir_all(d.path().join("images/alpine/3.20/amd64/20240101_00:00")).unwrap();
        let mut w = Vec::new();
        let p = discover_layout(d.path(), &mut w).unwrap();
        let dirs: Vec<_> = p.iter().map(|p| p.directory.as_str()).collect();
        assert_eq!(
            dirs,
            [
                "images/debian/12/amd64/cloud",
                "images/debian/12/amd64/default"
            ]
        );
        assert_eq!(w.len(), 2, "{w:?}");
    }

    #[test]
    fn a_symlink_in_the_layout_is_reported_and_not_walked() {
        let d = tempfile::tempdir().unwrap();
        let system = tempfile::tempdir().unwrap();
        touch(
            &system
                .path()
                .join("12/amd64/default/20240101_00:00/incus.tar.xz"),
        );
        touch(
            &d.path()
                .join("images/debian/12/amd64/default/20240101_00:00/incus.tar.xz"),
        );
        std::os::unix::fs::symlink(system.path(), d.path().join("images/usr")).unwrap();
        let mut w = Vec::new();
        let p = discover_layout(d.path(), &mut w).unwrap();
        let dirs: Vec<_> = p.iter().map(|p| p.directory.as_str()).collect();
        assert_eq!(dirs, ["images/debian/12/amd64/default"]);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("images/usr: skipped: a symlink"), "{w:?}");
    }

    #[test]
    fn a_layout_folder_names_its_product_and_aliases() {
        let root = Path::new("tree");
        let p = LayoutProduct::of_folder(root, Path::new("tree/images/alpine/3.21/amd64/default"))
            .unwrap();
        assert_eq!(p.name(), "alpine:3.21:amd64:default");
        assert_eq!(p.directory, "images/alpine/3.21/amd64/default");
        assert_eq!(p.default_aliases(), ["alpine/3.21/default", "alpine/3.21"]);
        let cloud =
            LayoutProduct::of_folder(root, Path::new("tree/images/alpine/3.21/arm64/cloud"))
                .unwrap();
        assert_eq!(cloud.default_aliases(), ["alpine/3.21/cloud"]);
        for not in [
            "tree/images/alpine/3.21/amd64",
            "tree/images/alpine/3.21/amd64/default/20250101_10:00",
            "elsewhere/images/alpine/3.21/amd64/default",
        ] {
            assert!(
                LayoutProduct::of_folder(root, Path::new(not)).is_none(),
                "{not}"
            );
        }
    }
}
