//! Classic LXC's image index, `meta/1.0/index-system`: what `lxc-create -t download` reads to
//! find an image (lxc's `templates/lxc-download.in`). One line per version holding an LXC pair
//! (`meta.tar.xz` beside the root tarball), `dist;release;arch;variant;build;path`, where `dist`
//! is the lower-case OS, `arch` the Debian name LXC uses (`amd64`, `arm64`, …), `build` the
//! version and `path` the version folder with a leading and a trailing slash. The template takes
//! the first line that matches, so each product's versions come newest first.
//!
//! Built from the products file that is published with it, so it names exactly the versions
//! the catalog names, and nothing that is not complete.

use crate::format::arch::debian_arch;
use crate::format::{Ftype, Item, Product, ProductsFile, RootfsKind, Version};
use crate::tree::FileRole;

/// The index's text for a products file; `warnings` gets one line per LXC pair left out.
pub fn build(products: &ProductsFile, warnings: &mut Vec<String>) -> Vec<u8> {
    let mut out = String::new();
    for (id, product) in &products.products {
        for (vname, version) in product.versions.iter().rev() {
            let Some(folder) = lxc_folder(version) else {
                continue;
            };
            match line(product, vname.as_str(), &folder) {
                Ok(line) => {
                    out.push_str(&line);
                    out.push('\n');
                }
                Err(why) => warnings.push(format!(
                    "product `{id}` version {vname}: its LXC files are left out of the LXC index: {why}"
                )),
            }
        }
    }
    out.into_bytes()
}

/// The folder (tree-relative, as item paths give it) of a version's LXC pair, when it has one.
fn lxc_folder(version: &Version) -> Option<String> {
    let (meta, _) = lxc_pair(version)?;
    Some(
        meta.path
            .rsplit_once('/')
            .map_or("", |(dir, _)| dir)
            .to_owned(),
    )
}

/// A version's LXC pair (metadata, root tarball), when it has one: both files side by side
/// under the names the template fetches, `<path>/meta.tar.xz` and `<path>/rootfs.tar.xz` (a
/// root tarball named `root.tar.xz` serves LXD and Incus only).
pub fn lxc_pair(version: &Version) -> Option<(&Item, &Item)> {
    let split = |i: &Item| -> (String, String) {
        match i.path.rsplit_once('/') {
            Some((dir, name)) => (dir.to_owned(), name.to_owned()),
            None => (String::new(), i.path.clone()),
        }
    };
    let meta = version.items.values().find(|i| i.ftype == Ftype::LxcMeta)?;
    let (dir, _) = split(meta);
    let root_name = FileRole::Rootfs(RootfsKind::RootTarXz).file_name();
    let root = version
        .items
        .values()
        .find(|i| i.ftype == Ftype::RootTarXz && split(i) == (dir.clone(), root_name.to_owned()))?;
    Some((meta, root))
}

fn line(product: &Product, build: &str, folder: &str) -> Result<String, String> {
    if folder.contains("://") {
        return Err(format!(
            "its files are at {folder}, a URL (the tree's `prefix`): the download template only fetches from the server it was given"
        ));
    }
    let arch = debian_arch(&product.arch)
        .ok_or_else(|| format!("architecture `{}` has no LXC name", product.arch))?;
    let dist = product.os.to_lowercase();
    let variant = product.variant.as_deref().unwrap_or("default");
    let fields = [
        ("os", dist.as_str()),
        ("release", product.release.as_str()),
        ("variant", variant),
    ];
    for (name, value) in fields {
        if value.is_empty() {
            return Err(format!("its {name} is empty"));
        }
        if value.contains([';', '\n', '\r']) {
            return Err(format!(
                "its {name} `{value}` holds a `;` or a line break, which the index cannot carry"
            ));
        }
    }
    let folder = folder.trim_matches('/');
    Ok(format!(
        "{dist};{};{arch};{variant};{build};/{folder}/",
        product.release
    ))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::format::{Family, Item, VersionName};

    fn version(files: &[(Ftype, &str)]) -> Version {
        let mut v = Version::default();
        for (ftype, path) in files {
            v.items.insert(
                ftype.as_str().to_owned(),
                Box::new(Item::new(ftype.clone(), (*path).to_owned(), "00".into(), 1)),
            );
        }
        v
    }

    fn product(os: &str, arch: &str, versions: Vec<(&str, Version)>) -> Product {
        Product {
            aliases: String::new(),
            arch: arch.into(),
            lxd_requirements: None,
            os: os.into(),
            release: "3.20".into(),
            release_codename: None,
            release_title: "3.20".into(),
            requirements: None,
            support_eol: None,
            variant: None,
            version: None,
            versions: versions
                .into_iter()
                .map(|(n, v)| (VersionName::parse(n).unwrap(), v))
                .collect(),
        }
    }

    /// The golden form: newest first per product, Debian arch names, lower-case OS, the
    /// `default` variant when none is set, folders with both slashes; versions without an LXC
    /// pair (LXD only, or the two files apart) are not listed.
    #[test]
    fn golden_index() {
        let dir = "images/alpine/3.20/amd64/default";
        let pair = |v: &str| {
            version(&[
                (Ftype::LxcMeta, &format!("{dir}/{v}/meta.tar.xz")),
                (Ftype::RootTarXz, &format!("{dir}/{v}/rootfs.tar.xz")),
                (
                    Ftype::Meta(Family::Incus),
                    &format!("{dir}/{v}/incus.tar.xz"),
                ),
            ])
        };
        let lxd_only = version(&[
            (Ftype::Meta(Family::Incus), "x/20240103_0000/incus.tar.xz"),
            (Ftype::Squashfs, "x/20240103_0000/rootfs.squashfs"),
        ]);
        let apart = version(&[
            (Ftype::LxcMeta, "a/20240104_0000/meta.tar.xz"),
            (Ftype::RootTarXz, "b/20240104_0000/rootfs.tar.xz"),
        ]);
        // The template fetches `rootfs.tar.xz`, never `root.tar.xz`.
        let named = version(&[
            (Ftype::LxcMeta, "c/20240105_0000/meta.tar.xz"),
            (Ftype::RootTarXz, "c/20240105_0000/root.tar.xz"),
        ]);
        let mut arm = product(
            "Alpine",
            "aarch64",
            vec![("20240101_00:00", pair("20240101_00:00"))],
        );
        arm.variant = Some("cloud".into());
        let products = ProductsFile {
            content_id: "images".into(),
            datatype: "image-downloads".into(),
            format: "products:1.0".into(),
            products: BTreeMap::from([
                (
                    "alpine:3.20:amd64:default".to_owned(),
                    product(
                        "Alpine",
                        "amd64",
                        vec![
                            ("20240101_00:00", pair("20240101_00:00")),
                            ("20240102_00:00", pair("20240102_00:00")),
                            ("20240103_0000", lxd_only),
                            ("20240104_0000", apart),
                            ("20240105_0000", named),
                        ],
                    ),
                ),
                ("alpine:3.20:arm64:cloud".to_owned(), arm),
            ]),
            updated: None,
        };
        let mut warnings = Vec::new();
        let text = String::from_utf8(build(&products, &mut warnings)).unwrap();
        assert_eq!(
            text,
            "alpine;3.20;amd64;default;20240102_00:00;/images/alpine/3.20/amd64/default/20240102_00:00/\n\
             alpine;3.20;amd64;default;20240101_00:00;/images/alpine/3.20/amd64/default/20240101_00:00/\n\
             alpine;3.20;arm64;cloud;20240101_00:00;/images/alpine/3.20/amd64/default/20240101_00:00/\n"
        );
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn fields_the_index_cannot_carry_are_left_out_with_a_warning() {
        let v = version(&[
            (Ftype::LxcMeta, "p/20240101_0000/meta.tar.xz"),
            (Ftype::RootTarXz, "p/20240101_0000/rootfs.tar.xz"),
        ]);
        let url = version(&[
            (Ftype::LxcMeta, "https://cdn/p/20240102_0000/meta.tar.xz"),
            (
                Ftype::RootTarXz,
                "https://cdn/p/20240102_0000/rootfs.tar.xz",
            ),
        ]);
        let products = ProductsFile {
            content_id: "images".into(),
            datatype: "image-downloads".into(),
            format: "products:1.0".into(),
            products: BTreeMap::from([
                (
                    "a".to_owned(),
                    product("x;y", "amd64", vec![("20240101_0000", v.clone())]),
                ),
                (
                    "b".to_owned(),
                    product("Ok", "sparc64", vec![("20240101_0000", v)]),
                ),
                (
                    "c".to_owned(),
                    product("Ok", "amd64", vec![("20240102_0000", url)]),
                ),
            ]),
            updated: None,
        };
        let mut warnings = Vec::new();
        assert!(build(&products, &mut warnings).is_empty());
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(warnings[0].contains("`x;y`"), "{}", warnings[0]);
        assert!(warnings[1].contains("sparc64"), "{}", warnings[1]);
        assert!(warnings[2].contains("a URL"), "{}", warnings[2]);
    }
}
