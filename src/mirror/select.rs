//! What to mirror: a remote catalog read leniently (a foreign server may write version names,
//! items or fields we would never publish), the images each version makes for the clients,
//! the user's filters, and the newest `--keep N` versions. Pure: no I/O.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_json::value::RawValue;

pub use crate::config::Filters;
use crate::format::{Ftype, ImageType, Item, canonical_arch};

/// One product of a remote products file, with its upstream JSON text kept so every upstream
/// field can be republished as it was.
#[derive(Clone, Debug)]
pub struct RemoteProduct {
    /// Product id (the key in `products`).
    pub id: String,
    /// `os`.
    pub os: String,
    /// `release`.
    pub release: String,
    /// `arch`, as published.
    pub arch: String,
    /// `variant`, if any.
    pub variant: Option<String>,
    /// `aliases`, split on `,` as the clients do (empty entries dropped).
    pub aliases: Vec<String>,
    /// The usable versions, newest first.
    pub versions: Vec<RemoteVersion>,
    /// The product object as upstream wrote it (JSON text, parsed again only when mirrored).
    pub raw: Box<RawValue>,
}

/// One version of a remote product.
#[derive(Clone, Debug)]
pub struct RemoteVersion {
    /// The version name (the key in `versions`).
    pub name: String,
    /// The items we could read, by key.
    pub items: BTreeMap<String, Item>,
    /// The version object as upstream wrote it.
    pub raw: Box<RawValue>,
}

/// An image a client makes from a version: a metadata item with a rootfs, or a unified item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// Container or VM.
    pub image_type: ImageType,
    /// The fingerprint clients look it up by.
    pub fingerprint: String,
    /// Which client family reads it (`lxd` or `incus`); `None` for classic LXC's pair, which
    /// `lxc-create -t download` reads through LXC's index.
    pub family: Option<crate::format::Family>,
    /// The item keys it needs: all of them or the image is unusable.
    pub items: Vec<String>,
}

/// Order of versions as the clients see them: by the digits of the name (so `20240106_03:00`,
/// `20240106_0300` and `202401060300` sort together), then by the name.
fn version_key(name: &str) -> (String, String) {
    (
        name.chars().filter(char::is_ascii_digit).collect(),
        name.to_owned(),
    )
}

/// The clients' rule (protocol.md §1.3): at least 8 characters, the first 8 a real `YYYYMMDD`.
fn client_reads_version(name: &str) -> bool {
    let Some(day) = name.get(..8) else {
        return false;
    };
    day.bytes().all(|b| b.is_ascii_digit()) && jiff::civil::Date::strptime("%Y%m%d", day).is_ok()
}

/// The fields of a product the selection reads. Each is taken leniently: a field of another
/// JSON type counts as absent, as it would for the clients, instead of failing the product.
#[derive(Deserialize)]
struct ProductFields<'a> {
    #[serde(default, borrow)]
    arch: Option<&'a RawValue>,
    #[serde(default, borrow)]
    os: Option<&'a RawValue>,
    #[serde(default, borrow)]
    release: Option<&'a RawValue>,
    #[serde(default, borrow)]
    variant: Option<&'a RawValue>,
    #[serde(default, borrow)]
    aliases: Option<&'a RawValue>,
    #[serde(default, borrow)]
    versions: Option<&'a RawValue>,
}

/// A JSON string's value; `None` for any other JSON value.
fn string_of(raw: Option<&RawValue>) -> Option<String> {
    raw.and_then(|r| serde_json::from_str::<String>(r.get()).ok())
}

/// The entries of a JSON object, as raw text; empty for any other JSON value.
fn object_of(raw: Option<&RawValue>) -> BTreeMap<String, &RawValue> {
    raw.and_then(|r| serde_json::from_str(r.get()).ok())
        .unwrap_or_default()
}

/// Reads the products of a products file (its bytes) that pass `filters`. Only those are
/// parsed beyond their id and the fields the filters read, and each keeps its upstream JSON as
/// text, so memory follows the products selected, not the size of the remote catalog.
/// Products, versions and items the clients would not use, or that we could not verify (no
/// `sha256`, `size` or `path`), are left out with a warning naming them; `source` names the
/// file in messages.
pub fn parse_products(
    doc: &[u8],
    source: &str,
    filters: &Filters,
    warnings: &mut Vec<String>,
) -> Result<Vec<RemoteProduct>, String> {
    #[derive(Deserialize)]
    struct Doc<'a> {
        #[serde(default, borrow)]
        products: Option<&'a RawValue>,
    }
    let doc: Doc<'_> =
        serde_json::from_slice(doc).map_err(|e| format!("{source}: not valid JSON: {e}"))?;
    let Some(products) = doc
        .products
        .and_then(|p| serde_json::from_str::<BTreeMap<String, &RawValue>>(p.get()).ok())
    else {
        warnings.push(format!("{source}: no `products` object; nothing to mirror"));
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (id, raw) in products {
        let Ok(fields) = serde_json::from_str::<ProductFields<'_>>(raw.get()) else {
            warnings.push(format!(
                "{source}: product `{id}` skipped: not a JSON object"
            ));
            continue;
        };
        let Some(arch) = string_of(fields.arch) else {
            warnings.push(format!("{source}: product `{id}` skipped: no `arch`"));
            continue;
        };
        let mut product = RemoteProduct {
            id,
            os: string_of(fields.os).unwrap_or_default(),
            release: string_of(fields.release).unwrap_or_default(),
            arch,
            variant: string_of(fields.variant),
            aliases: string_of(fields.aliases)
                .unwrap_or_default()
                .split(',')
                .filter(|a| !a.is_empty())
                .map(str::to_owned)
                .collect(),
            versions: Vec::new(),
            raw: raw.to_owned(),
        };
        if !filters.matches(&product) {
            continue;
        }
        product.versions = parse_versions(&product.id, fields.versions, source, warnings);
        out.push(product);
    }
    Ok(out)
}

/// The versions of a product the clients read, newest first.
fn parse_versions(
    id: &str,
    versions: Option<&RawValue>,
    source: &str,
    warnings: &mut Vec<String>,
) -> Vec<RemoteVersion> {
    #[derive(Deserialize)]
    struct VersionFields<'a> {
        #[serde(default, borrow)]
        items: Option<&'a RawValue>,
    }
    let mut out = Vec::new();
    for (name, vraw) in object_of(versions) {
        if !client_reads_version(&name) {
            warnings.push(format!(
                "{source}: product `{id}` version `{name}` skipped: clients ignore version names that do not start with YYYYMMDD"
            ));
            continue;
        }
        let fields = serde_json::from_str::<VersionFields<'_>>(vraw.get()).ok();
        let mut items = BTreeMap::new();
        for (key, iraw) in object_of(fields.and_then(|f| f.items)) {
            match serde_json::from_str::<Item>(iraw.get()) {
                Ok(item) => {
                    items.insert(key, item);
                }
                Err(e) => warnings.push(format!(
                    "{source}: product `{id}` version `{name}` item `{key}` skipped: {e}"
                )),
            }
        }
        out.push(RemoteVersion {
            name,
            items,
            raw: vraw.to_owned(),
        });
    }
    out.sort_by_key(|v| std::cmp::Reverse(version_key(&v.name)));
    out
}

/// The images a version makes, for both client families, as the clients pair items
/// (protocol.md §1.4): every metadata item with every rootfs item its combined hash names a
/// fingerprint for, and every unified item on its own.
pub fn images_of(version: &RemoteVersion) -> Vec<Image> {
    let mut out = Vec::new();
    for (key, item) in &version.items {
        match &item.ftype {
            Ftype::Meta(family) => {
                for (root_key, root) in &version.items {
                    let Some(kind) = root.ftype.rootfs_kind() else {
                        continue;
                    };
                    if let Some(fp) = item.combined_for(kind).filter(|fp| !fp.is_empty()) {
                        out.push(Image {
                            image_type: kind.image_type(),
                            fingerprint: fp.to_owned(),
                            family: Some(*family),
                            items: vec![key.clone(), root_key.clone()],
                        });
                    }
                }
            }
            Ftype::Unified(family) => out.push(Image {
                image_type: ImageType::Container,
                fingerprint: item.sha256.clone(),
                family: Some(*family),
                items: vec![key.clone()],
            }),
            Ftype::LxcMeta => {
                // LXC fetches `<folder>/meta.tar.xz` and `<folder>/rootfs.tar.xz`: a pair only
                // when both are in one folder. It has no fingerprint; the two hashes name it.
                let folder = |path: &str| path.rsplit_once('/').map(|(d, _)| d.to_owned());
                let root = version.items.iter().find(|(_, r)| {
                    r.ftype == Ftype::RootTarXz && folder(&r.path) == folder(&item.path)
                });
                if let Some((root_key, root)) = root {
                    out.push(Image {
                        image_type: ImageType::Container,
                        fingerprint: format!("lxc:{}:{}", item.sha256, root.sha256),
                        family: None,
                        items: vec![key.clone(), root_key.clone()],
                    });
                }
            }
            _ => {}
        }
    }
    out
}

/// `*` matches any run of characters (`/` included), `?` exactly one.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// The filters as a remote catalog's products and versions meet them (the filters themselves
/// are part of the configuration: [`crate::config::Filters`]).
impl Filters {
    /// True when the product passes the os, release, arch, variant and alias filters.
    pub fn matches(&self, p: &RemoteProduct) -> bool {
        let any_ci = |wanted: &[String], value: &str| {
            wanted.is_empty() || wanted.iter().any(|w| w.eq_ignore_ascii_case(value))
        };
        let arch_ok = self.arch.is_empty()
            || self.arch.iter().any(|a| {
                *a == p.arch
                    || canonical_arch(a).is_some_and(|c| Some(c) == canonical_arch(&p.arch))
            });
        any_ci(&self.os, &p.os)
            && any_ci(&self.release, &p.release)
            && arch_ok
            && any_ci(&self.variant, p.variant.as_deref().unwrap_or(""))
            && (self.alias.is_empty()
                || p.aliases
                    .iter()
                    .any(|a| self.alias.iter().any(|g| glob_match(g, a))))
    }

    /// The images of a version that pass the `--type` filter.
    pub fn images(&self, version: &RemoteVersion) -> Vec<Image> {
        images_of(version)
            .into_iter()
            .filter(|i| self.image_type.is_none_or(|t| t == i.image_type))
            .collect()
    }
}

/// One version chosen for mirroring and the images wanted from it.
#[derive(Clone, Debug)]
pub struct PlannedVersion {
    /// Index into the product's `versions`.
    pub index: usize,
    /// The images to mirror (each complete or not at all).
    pub images: Vec<Image>,
    /// The item keys of its deltas from other planned versions of the product (none with
    /// `--no-deltas`); the catalog keeps those whose base is mirrored too.
    pub deltas: Vec<String>,
    /// Within `--keep`: downloaded if missing. Older versions are candidates only when already
    /// present locally, so a failed download of a new version does not empty the product.
    pub wanted: bool,
}

/// A product chosen for mirroring.
#[derive(Clone, Debug)]
pub struct PlannedProduct {
    /// The product as read.
    pub product: RemoteProduct,
    /// Its versions with at least one wanted image, newest first.
    pub versions: Vec<PlannedVersion>,
}

impl PlannedProduct {
    /// Every item key of a planned version that some image needs, in key order.
    pub fn item_keys(&self, v: &PlannedVersion) -> BTreeSet<String> {
        v.images
            .iter()
            .flat_map(|i| i.items.iter().cloned())
            .chain(v.deltas.iter().cloned())
            .collect()
    }
}

/// Applies the filters: matching products (all of them, when [`parse_products`] applied the
/// same filters), and in each its versions with wanted images, the newest `keep` of them
/// marked as wanted.
pub fn plan(products: Vec<RemoteProduct>, filters: &Filters) -> Vec<PlannedProduct> {
    let mut out = Vec::new();
    for product in products.into_iter().filter(|p| filters.matches(p)) {
        let mut versions = Vec::new();
        for (index, v) in product.versions.iter().enumerate() {
            let images = filters.images(v);
            if images.is_empty() {
                continue;
            }
            let wanted = filters.keep.is_none_or(|k| versions.len() < k);
            versions.push(PlannedVersion {
                index,
                images,
                deltas: Vec::new(),
                wanted,
            });
        }
        if !filters.no_deltas {
            plan_deltas(&product, &mut versions);
        }
        if !versions.is_empty() {
            out.push(PlannedProduct { product, versions });
        }
    }
    out
}

/// The deltas of each planned version whose base is a planned version too: a delta from a
/// version the mirror does not hold is of no use to its clients.
fn plan_deltas(product: &RemoteProduct, versions: &mut [PlannedVersion]) {
    let planned: BTreeSet<&str> = versions
        .iter()
        .filter(|pv| pv.wanted)
        .map(|pv| product.versions[pv.index].name.as_str())
        .collect();
    for pv in versions.iter_mut().filter(|pv| pv.wanted) {
        pv.deltas = product.versions[pv.index]
            .items
            .iter()
            .filter(|(_, i)| {
                i.ftype == Ftype::SquashfsDelta
                    && i.delta_base.as_deref().is_some_and(|b| planned.contains(b))
            })
            .map(|(k, _)| k.clone())
            .collect();
    }
}

/// Where an upstream item path is stored under the mirror: the same relative path, if it is a
/// plain one. Absolute paths, URLs, `..`, hidden or empty segments, and the catalog folder are
/// refused: a remote must not be able to write outside the tree, over our catalog or state, or
/// into files the server hides.
pub fn local_path(path: &str) -> Result<String, &'static str> {
    if path.is_empty() {
        return Err("is empty");
    }
    if path.starts_with('/') {
        return Err("is absolute");
    }
    if path.contains("://") {
        return Err("is a URL");
    }
    if path.contains('\\') || path.chars().any(char::is_control) {
        return Err("contains a backslash or a control character");
    }
    for segment in path.split('/') {
        if segment.is_empty() {
            return Err("has an empty segment");
        }
        if segment == ".." || segment == "." {
            return Err("has a `.` or `..` segment");
        }
        if segment.starts_with('.') {
            return Err("has a hidden segment");
        }
    }
    let top = crate::tree::names::STREAMS_TOP;
    if path == top
        || path
            .strip_prefix(top)
            .is_some_and(|rest| rest.starts_with('/'))
    {
        return Err("is inside streams/, where the catalog lives");
    }
    Ok(path.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn bytes(doc: &Value) -> Vec<u8> {
        serde_json::to_vec(doc).unwrap()
    }

    fn doc() -> Value {
        let meta = |fp: &str| {
            json!({"ftype": "incus.tar.xz", "path": "a/m", "sha256": "m", "size": 1,
                   "combined_squashfs_sha256": fp, "combined_disk-kvm-img_sha256": format!("{fp}vm")})
        };
        json!({"products": {
            "debian:12:amd64:default": {
                "arch": "amd64", "os": "Debian", "release": "12", "variant": "default",
                "aliases": "debian/12,debian/12/default", "supported": true,
                "versions": {
                    "20240101_10:00": {"items": {
                        "incus.tar.xz": meta("a1"),
                        "root.squashfs": {"ftype": "squashfs", "path": "a/r1", "sha256": "r", "size": 2},
                        "disk.qcow2": {"ftype": "disk-kvm.img", "path": "a/d1", "sha256": "d", "size": 3},
                        "delta": {"ftype": "squashfs.vcdiff", "path": "a/x", "sha256": "x", "size": 1},
                        "broken": {"ftype": "squashfs", "path": "a/b"}
                    }},
                    "202401030000": {"items": {
                        "incus.tar.xz": meta("a3"),
                        "root.squashfs": {"ftype": "squashfs", "path": "a/r3", "sha256": "r", "size": 2}
                    }},
                    "20240102_10:00": {"items": {
                        "incus.tar.xz": meta("a2"),
                        "root.squashfs": {"ftype": "squashfs", "path": "a/r2", "sha256": "r", "size": 2}
                    }},
                    "staging": {"items": {}}
                }
            },
            "alpine:3.20:arm64:cloud": {
                "arch": "arm64", "os": "Alpine", "release": "3.20", "variant": "cloud",
                "aliases": "alpine/3.20/cloud", "versions": {}
            },
            "nameless": {"os": "x"}
        }})
    }

    #[test]
    fn reads_leniently_and_orders_versions_newest_first() {
        let mut w = Vec::new();
        let products =
            parse_products(&bytes(&doc()), "images.json", &Filters::default(), &mut w).unwrap();
        assert_eq!(products.len(), 2);
        let debian = products.iter().find(|p| p.os == "Debian").unwrap();
        let names: Vec<_> = debian.versions.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["202401030000", "20240102_10:00", "20240101_10:00"]);
        assert_eq!(debian.aliases, ["debian/12", "debian/12/default"]);
        assert!(!debian.versions[2].items.contains_key("broken"));
        let w = w.join("\n");
        for needle in [
            "`nameless` skipped: no `arch`",
            "`staging` skipped",
            "`broken` skipped",
        ] {
            assert!(w.contains(needle), "{needle} not in {w}");
        }
    }

    #[test]
    fn only_selected_products_are_read_beyond_their_filter_fields() {
        let mut w = Vec::new();
        let only_alpine = Filters {
            os: vec!["alpine".into()],
            ..Filters::default()
        };
        let products = parse_products(&bytes(&doc()), "x", &only_alpine, &mut w).unwrap();
        let ids: Vec<&str> = products.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["alpine:3.20:arm64:cloud"]);
        // Debian's versions were never read: none of their warnings.
        assert!(w.iter().all(|w| !w.contains("`staging`")), "{w:?}");
        // The upstream text is kept as it was, to be republished.
        let raw: Value = serde_json::from_str(products[0].raw.get()).unwrap();
        assert_eq!(raw["aliases"], "alpine/3.20/cloud");
        // A products file that is not JSON is an error naming it.
        let e = parse_products(b"{\"products\": [", "up/images.json", &only_alpine, &mut w);
        assert!(e.unwrap_err().starts_with("up/images.json: not valid JSON"));
    }

    #[test]
    fn pairs_items_as_clients_do_and_filters_by_type() {
        let mut w = Vec::new();
        let products = parse_products(&bytes(&doc()), "x", &Filters::default(), &mut w).unwrap();
        let debian = products.iter().find(|p| p.os == "Debian").unwrap();
        let oldest = &debian.versions[2];
        let images = images_of(oldest);
        assert_eq!(images.len(), 2);
        let vm = Filters {
            image_type: Some(ImageType::VirtualMachine),
            ..Filters::default()
        };
        let only = vm.images(oldest);
        assert_eq!(only.len(), 1);
        assert_eq!(only[0].fingerprint, "a1vm");
        assert_eq!(only[0].items, ["incus.tar.xz", "disk.qcow2"]);
        // The VM filter drops versions without a VM image.
        let planned = plan(products, &vm);
        assert_eq!(planned.len(), 1);
        assert_eq!(planned[0].versions.len(), 1);
    }

    #[test]
    fn filters_products_and_keeps_the_newest_versions() {
        let mut w = Vec::new();
        let products = parse_products(&bytes(&doc()), "x", &Filters::default(), &mut w).unwrap();
        let f = |f: Filters| {
            plan(products.clone(), &f)
                .into_iter()
                .map(|p| p.product.id)
                .collect::<Vec<_>>()
        };
        let debian = vec!["debian:12:amd64:default".to_owned()];
        assert_eq!(
            f(Filters {
                os: vec!["debian".into()],
                ..Default::default()
            }),
            debian
        );
        assert_eq!(
            f(Filters {
                arch: vec!["x86_64".into()],
                ..Default::default()
            }),
            debian
        );
        assert_eq!(
            f(Filters {
                alias: vec!["debian/*".into()],
                ..Default::default()
            }),
            debian
        );
        assert!(
            f(Filters {
                alias: vec!["debian".into()],
                ..Default::default()
            })
            .is_empty()
        );
        assert!(
            f(Filters {
                variant: vec!["cloud".into()],
                ..Default::default()
            })
            .is_empty()
        );
        let kept = plan(
            products,
            &Filters {
                keep: Some(2),
                ..Default::default()
            },
        );
        let wanted: Vec<bool> = kept[0].versions.iter().map(|v| v.wanted).collect();
        assert_eq!(wanted, [true, true, false]);
    }

    #[test]
    fn globs() {
        assert!(glob_match("debian/*", "debian/12/cloud"));
        assert!(glob_match("*/12", "debian/12"));
        assert!(glob_match("de?ian/1*", "debian/12"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("debian/?", "debian/12"));
        assert!(!glob_match("ubuntu*", "debian"));
    }

    #[test]
    fn local_paths_stay_inside_the_tree() {
        assert_eq!(
            local_path("images/debian/12/amd64/default/20240101_10:00/rootfs.squashfs"),
            Ok("images/debian/12/amd64/default/20240101_10:00/rootfs.squashfs".into())
        );
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/./b",
            "a//b",
            "a/.ssb/mirror.json",
            ".hidden",
            "streams/v1/index.json",
            "https://evil/x",
            "a\\b",
            "a\nb",
        ] {
            assert!(local_path(bad).is_err(), "{bad:?} must be refused");
        }
    }
}
