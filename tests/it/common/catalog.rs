//! Reading what was published and what the clients report: the simplestreams catalog on disk
//! (resolved into images the way LXD and Incus do it), `image list --format json`, and
//! `image info`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Container or virtual machine, as the clients type images.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ImageType {
    Container,
    VirtualMachine,
}

impl ImageType {
    /// From the clients' spelling (`container`, `virtual-machine`).
    pub fn from_client(s: &str) -> Option<ImageType> {
        match s {
            "container" => Some(ImageType::Container),
            "virtual-machine" => Some(ImageType::VirtualMachine),
            _ => None,
        }
    }

    /// The rootfs ftypes that make an image of this type (§1.4).
    fn of_rootfs_ftype(ftype: &str) -> Option<ImageType> {
        match ftype {
            "squashfs" | "root.tar.xz" => Some(ImageType::Container),
            "disk-kvm.img" | "disk1.img" | "uefi1.img" => Some(ImageType::VirtualMachine),
            _ => None,
        }
    }

    /// `--vm` where the CLI needs it to pick the VM behind an alias.
    pub fn vm_flag(self) -> Option<&'static str> {
        (self == ImageType::VirtualMachine).then_some("--vm")
    }
}

/// The two client families and the meta ftype each reads (§1.5, LXD 5.0.2 and Incus 6.0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Incus,
    Lxd,
}

impl Family {
    pub const BOTH: [Family; 2] = [Family::Incus, Family::Lxd];

    pub fn meta_ftype(self) -> &'static str {
        match self {
            Family::Incus => "incus.tar.xz",
            Family::Lxd => "lxd.tar.xz",
        }
    }
}

/// The meta-item keys holding the fingerprint for a rootfs ftype, preferred first (§1.6).
fn combined_keys(rootfs_ftype: &str) -> &'static [&'static str] {
    match rootfs_ftype {
        "squashfs" => &["combined_squashfs_sha256"],
        "root.tar.xz" => &["combined_rootxz_sha256", "combined_sha256"],
        "disk-kvm.img" => &["combined_disk-kvm-img_sha256"],
        "disk1.img" => &["combined_disk1-img_sha256"],
        "uefi1.img" => &["combined_uefi1-img_sha256"],
        _ => &[],
    }
}

/// One image a client family would see in the catalog: a (meta, rootfs) pair with a combined
/// hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogImage {
    pub product: String,
    pub version: String,
    pub fingerprint: String,
    pub image_type: ImageType,
    /// Item paths, relative to the served base URL.
    pub meta_path: String,
    pub rootfs_path: String,
}

/// `streams/v1/index.json` and the products file it points at, as published on disk.
pub struct Catalog {
    pub index: Value,
    pub images: Value,
    /// Where the products file is, relative to the root.
    pub images_path: String,
}

impl Catalog {
    /// Reads the catalog under `root`, following the index's single `image-downloads` entry.
    pub fn load(root: &Path) -> Catalog {
        let index = read_json(&root.join("streams/v1/index.json"));
        let entries = index["index"]
            .as_object()
            .unwrap_or_else(|| panic!("index.json has no `index` object: {index:#}"));
        let downloads: Vec<&Value> = entries
            .values()
            .filter(|e| e["datatype"] == "image-downloads")
            .collect();
        assert_eq!(
            downloads.len(),
            1,
            "expected one image-downloads entry in index.json: {index:#}"
        );
        let images_path = downloads[0]["path"]
            .as_str()
            .unwrap_or_else(|| panic!("index entry without a path: {index:#}"))
            .to_owned();
        let images = read_json(&root.join(&images_path));
        Catalog {
            index,
            images,
            images_path,
        }
    }

    /// The products, by id.
    pub fn products(&self) -> &serde_json::Map<String, Value> {
        self.images["products"]
            .as_object()
            .unwrap_or_else(|| panic!("images.json has no `products` object"))
    }

    pub fn product(&self, id: &str) -> &Value {
        self.products().get(id).unwrap_or_else(|| {
            panic!(
                "no product {id} in images.json; products: {:?}",
                self.products().keys().collect::<Vec<_>>()
            )
        })
    }

    /// Every item `path` of every version of every product.
    pub fn item_paths(&self) -> BTreeSet<String> {
        self.items()
            .filter_map(|(_, _, item)| item["path"].as_str().map(str::to_owned))
            .collect()
    }

    /// (product id, version name, item) for every item.
    pub fn items(&self) -> impl Iterator<Item = (&str, &str, &Value)> {
        self.products().iter().flat_map(|(id, product)| {
            product["versions"]
                .as_object()
                .into_iter()
                .flatten()
                .flat_map(move |(version, v)| {
                    v["items"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(move |(_, item)| (id.as_str(), version.as_str(), item))
                })
        })
    }

    /// The split images `family` would build from the catalog, by the clients' rules: every
    /// meta item of the family's ftype paired with every rootfs item of the same version whose
    /// combined hash the meta item carries (an empty or missing hash skips the pair).
    pub fn images(&self, family: Family) -> Vec<CatalogImage> {
        let mut out = Vec::new();
        for (id, product) in self.products() {
            for (version, v) in product["versions"].as_object().into_iter().flatten() {
                let items: Vec<&Value> = v["items"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(_, i)| i)
                    .collect();
                let metas = items.iter().filter(|i| i["ftype"] == family.meta_ftype());
                for meta in metas {
                    for rootfs in &items {
                        let ftype = rootfs["ftype"].as_str().unwrap_or_default();
                        let Some(image_type) = ImageType::of_rootfs_ftype(ftype) else {
                            continue;
                        };
                        let fingerprint = combined_keys(ftype)
                            .iter()
                            .find_map(|k| meta[*k].as_str().filter(|h| !h.is_empty()));
                        let Some(fingerprint) = fingerprint else {
                            continue;
                        };
                        out.push(CatalogImage {
                            product: id.clone(),
                            version: version.clone(),
                            fingerprint: fingerprint.to_owned(),
                            image_type,
                            meta_path: str_field(meta, "path"),
                            rootfs_path: str_field(rootfs, "path"),
                        });
                    }
                }
            }
        }
        out
    }
}

fn str_field(item: &Value, key: &str) -> String {
    item[key]
        .as_str()
        .unwrap_or_else(|| panic!("item without a string `{key}`: {item:#}"))
        .to_owned()
}

/// Parses a JSON file, naming it on failure.
pub fn read_json(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

/// The version folders of a product folder on disk (hidden ones left out), sorted.
pub fn version_folders(product_dir: &Path) -> Vec<String> {
    let mut versions: Vec<String> = std::fs::read_dir(product_dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    versions.sort();
    versions
}

/// The bytes of a gzip file, decompressed.
pub fn read_gz(path: &Path) -> Vec<u8> {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(file)
        .read_to_end(&mut out)
        .unwrap_or_else(|e| panic!("gunzip {}: {e}", path.display()));
    out
}

/// Lowercase-hex sha256 of the files' bytes one after the other: a split image's fingerprint
/// is `sha256_of(&[meta, rootfs])`.
pub fn sha256_of(files: &[&Path]) -> String {
    let mut hasher = Sha256::new();
    for file in files {
        let mut f =
            std::fs::File::open(file).unwrap_or_else(|e| panic!("open {}: {e}", file.display()));
        let mut buf = vec![0; 64 * 1024];
        loop {
            match f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => hasher.update(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => panic!("read {}: {e}", file.display()),
            }
        }
    }
    hex::encode(hasher.finalize())
}

/// One entry of `incus image list --format json` / `lxc image list --format json`.
#[derive(Clone, Debug)]
pub struct ListedImage {
    pub fingerprint: String,
    pub image_type: ImageType,
    pub architecture: String,
    pub size: u64,
    /// Shown aliases (short and `/arch` forms, for native-arch images only).
    pub aliases: BTreeSet<String>,
    pub properties: BTreeMap<String, String>,
}

impl ListedImage {
    pub fn description(&self) -> &str {
        self.properties
            .get("description")
            .map(String::as_str)
            .unwrap_or_default()
    }

    /// Parses the client's JSON array.
    pub fn parse_list(json: &[u8]) -> Result<Vec<ListedImage>, String> {
        let value: Value = serde_json::from_slice(json).map_err(|e| {
            format!(
                "not JSON ({e}): {}",
                String::from_utf8_lossy(json)
                    .chars()
                    .take(2000)
                    .collect::<String>()
            )
        })?;
        let list = value
            .as_array()
            .ok_or_else(|| format!("not a JSON array: {value:#}"))?;
        list.iter().map(ListedImage::from_json).collect()
    }

    fn from_json(v: &Value) -> Result<ListedImage, String> {
        let text = |key: &str| {
            v[key]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("image without a string `{key}`: {v:#}"))
        };
        let type_name = text("type")?;
        Ok(ListedImage {
            fingerprint: text("fingerprint")?,
            image_type: ImageType::from_client(&type_name)
                .ok_or_else(|| format!("unknown image type {type_name:?}"))?,
            architecture: text("architecture")?,
            size: v["size"].as_u64().unwrap_or_default(),
            aliases: v["aliases"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a["name"].as_str().map(str::to_owned))
                .collect(),
            properties: v["properties"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect(),
        })
    }
}

/// The parts of `image info` the tests check. The 6.0/5.0 CLIs print it as indented text only.
#[derive(Clone, Debug)]
pub struct ImageInfo {
    pub fingerprint: String,
    pub image_type: ImageType,
    pub properties: BTreeMap<String, String>,
    pub aliases: BTreeSet<String>,
}

impl ImageInfo {
    /// Parses the text of `incus image info` / `lxc image info`.
    pub fn parse(text: &str) -> Result<ImageInfo, String> {
        let mut fingerprint = None;
        let mut image_type = None;
        let mut properties = BTreeMap::new();
        let mut aliases = BTreeSet::new();
        let mut section = "";
        for line in text.lines() {
            if let Some(item) = line.strip_prefix("    ") {
                match section {
                    "Properties" => {
                        if let Some((k, v)) = item.split_once(": ") {
                            properties.insert(k.to_owned(), v.to_owned());
                        }
                    }
                    "Aliases" => {
                        if let Some(alias) = item.strip_prefix("- ") {
                            aliases.insert(alias.to_owned());
                        }
                    }
                    _ => {}
                }
                continue;
            }
            let (key, value) = line.split_once(':').unwrap_or((line, ""));
            section = key;
            match key {
                "Fingerprint" => fingerprint = Some(value.trim().to_owned()),
                "Type" => image_type = ImageType::from_client(value.trim()),
                _ => {}
            }
        }
        Ok(ImageInfo {
            fingerprint: fingerprint.ok_or_else(|| format!("no Fingerprint line in:\n{text}"))?,
            image_type: image_type.ok_or_else(|| format!("no known Type line in:\n{text}"))?,
            properties,
            aliases,
        })
    }
}

/// Sorted paths, for messages.
pub fn names(paths: &BTreeMap<String, PathBuf>) -> Vec<&str> {
    paths.keys().map(String::as_str).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_image_info_text() {
        let text = "Fingerprint: 7e78\nSize: 0.00MiB\nType: virtual-machine\nProperties:\n    \
                    requirements.secureboot: false\n    os: debian\nAliases:\n    - debian/12\n\
                    Cached: no\n";
        let info = ImageInfo::parse(text).unwrap();
        assert_eq!(info.fingerprint, "7e78");
        assert_eq!(info.image_type, ImageType::VirtualMachine);
        assert_eq!(info.properties["requirements.secureboot"], "false");
        assert!(info.aliases.contains("debian/12"));
    }
}
