//! Every name the tree uses, in one place: the image files of a version folder (what each is,
//! how they pair, their catalog item keys), the catalog's own files, the override files, and the
//! hidden state of the tree (locks while held, partial builds, temp files, the server's and a
//! mirror's state, the unified tarballs built for direct import, and the legacy hash cache).
//! Nothing else in the crate spells one of these names; a test below checks that.
//!
//! Where a file is named after its ftype (`incus.tar.xz`, `incus_combined.tar.gz`, and the
//! `root.tar.xz` / `disk-kvm.img` spellings), the name is taken from [`crate::format`].

use std::path::{Path, PathBuf};

use crate::format::{Family, Ftype, RootfsKind, VersionName};

/// What a file of a version folder is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileRole {
    /// A metadata tarball; `vm` for a VM's own metadata (`*-vm.tar.xz`), paired only with the disk.
    Meta {
        /// The family its name says.
        family: Family,
        /// A VM's own metadata.
        vm: bool,
    },
    /// A rootfs or disk.
    Rootfs(RootfsKind),
    /// A unified tarball.
    Unified(Family),
    /// Classic LXC's metadata tarball ([`LXC_META`]), which pairs with the root tarball for
    /// `lxc-create -t download`; never part of an LXD or Incus image.
    LxcMeta,
}

impl FileRole {
    /// Every role, each once.
    pub const ALL: [FileRole; 10] = [
        FileRole::meta(Family::Lxd),
        FileRole::meta(Family::Incus),
        FileRole::vm_meta(Family::Lxd),
        FileRole::vm_meta(Family::Incus),
        FileRole::Rootfs(RootfsKind::Squashfs),
        FileRole::Rootfs(RootfsKind::RootTarXz),
        FileRole::Rootfs(RootfsKind::DiskKvm),
        FileRole::Unified(Family::Lxd),
        FileRole::Unified(Family::Incus),
        FileRole::LxcMeta,
    ];

    /// A family's container (and shared) metadata.
    pub const fn meta(family: Family) -> Self {
        FileRole::Meta { family, vm: false }
    }

    /// A family's VM-only metadata.
    pub const fn vm_meta(family: Family) -> Self {
        FileRole::Meta { family, vm: true }
    }

    /// The name this role's file has in a version folder (the one we write).
    pub const fn file_name(self) -> &'static str {
        match self {
            FileRole::Meta { family, vm: false } => family.meta_ftype(),
            FileRole::Meta {
                family: Family::Lxd,
                vm: true,
            } => "lxd-vm.tar.xz",
            FileRole::Meta {
                family: Family::Incus,
                vm: true,
            } => "incus-vm.tar.xz",
            FileRole::Rootfs(RootfsKind::Squashfs) => "rootfs.squashfs",
            FileRole::Rootfs(RootfsKind::RootTarXz) => "rootfs.tar.xz",
            FileRole::Rootfs(RootfsKind::DiskKvm) => "disk.qcow2",
            FileRole::Unified(family) => family.unified_ftype(),
            FileRole::LxcMeta => LXC_META,
        }
    }

    /// The other name a version folder may hold this role's file under (Mottainai's trees and
    /// images.linuxcontainers.org use the ftype as the file name).
    pub const fn other_name(self) -> Option<&'static str> {
        match self {
            FileRole::Rootfs(kind @ (RootfsKind::RootTarXz | RootfsKind::DiskKvm)) => {
                Some(kind.ftype_str())
            }
            _ => None,
        }
    }

    /// Recognises the file names of a version folder. Anything else is not part of an image.
    pub fn classify(name: &str) -> Option<FileRole> {
        FileRole::ALL
            .into_iter()
            .find(|r| r.file_name() == name || r.other_name() == Some(name))
    }

    /// The key of its item in the catalog (as images.linuxcontainers.org names them).
    pub const fn item_key(self) -> &'static str {
        match self {
            FileRole::Rootfs(RootfsKind::Squashfs) => "root.squashfs",
            FileRole::Rootfs(RootfsKind::RootTarXz) => RootfsKind::RootTarXz.ftype_str(),
            FileRole::LxcMeta => crate::format::LXC_META_FTYPE,
            other => other.file_name(),
        }
    }

    /// The ftype of its item.
    pub fn ftype(self) -> Ftype {
        match self {
            FileRole::Meta { family, .. } => Ftype::Meta(family),
            FileRole::Rootfs(kind) => kind.ftype(),
            FileRole::Unified(family) => Ftype::Unified(family),
            FileRole::LxcMeta => Ftype::LxcMeta,
        }
    }

    /// The metadata roles in the order a product's description is taken from: the Incus
    /// container metadata first.
    pub const DESCRIPTION_ORDER: [FileRole; 4] = [
        FileRole::meta(Family::Incus),
        FileRole::meta(Family::Lxd),
        FileRole::vm_meta(Family::Incus),
        FileRole::vm_meta(Family::Lxd),
    ];
}

/// Recognises the file names of a version folder (see [`FileRole::classify`]).
pub fn classify(name: &str) -> Option<FileRole> {
    FileRole::classify(name)
}

/// The (metadata, rootfs) pairs that make split images among files of these roles, as indexes.
/// Container metadata pairs with every rootfs, and with the disk too unless a VM's own metadata
/// is there, which then pairs with the disk alone. Families are never mixed.
pub fn pairs(roles: &[FileRole]) -> Vec<(usize, usize)> {
    let has_vm_meta = roles
        .iter()
        .any(|r| matches!(r, FileRole::Meta { vm: true, .. }));
    let mut out = Vec::new();
    for (mi, m) in roles.iter().enumerate() {
        let FileRole::Meta { vm, .. } = *m else {
            continue;
        };
        for (ri, r) in roles.iter().enumerate() {
            let FileRole::Rootfs(kind) = *r else {
                continue;
            };
            let pairs = match (vm, kind) {
                (true, RootfsKind::DiskKvm) => true,
                (true, _) => false,
                (false, RootfsKind::DiskKvm) => !has_vm_meta,
                (false, _) => true,
            };
            if pairs {
                out.push((mi, ri));
            }
        }
    }
    out
}

/// The pair classic LXC's `download` template fetches (`lxc-create -t download`), as
/// `distrobuilder pack-lxc` writes it: this and the [`FileRole::Rootfs`] root tarball.
pub const LXC_META: &str = "meta.tar.xz";

/// True when the version's files make the pair classic LXC downloads: [`LXC_META`] and the root
/// tarball.
pub fn has_lxc_pair(roles: &[FileRole]) -> bool {
    roles.contains(&FileRole::LxcMeta) && roles.contains(&FileRole::Rootfs(RootfsKind::RootTarXz))
}

/// The folder of classic LXC's image index, which its download template hard-codes.
const LXC_INDEX_DIR: &str = "meta/1.0";

/// Classic LXC's image index (`lxc-create -t download` reads it), in [`LXC_INDEX_DIR`].
pub const LXC_INDEX_FILE: &str = "index-system";

/// The index the download template reads for unprivileged containers (in a user namespace).
pub const LXC_USER_INDEX_FILE: &str = "index-user";

/// True for the file name of either of LXC's indexes.
pub fn is_lxc_index_name(name: &str) -> bool {
    name == LXC_INDEX_FILE || name == LXC_USER_INDEX_FILE
}

/// Both of LXC's indexes.
pub fn lxc_index_paths(target: &Path) -> [PathBuf; 2] {
    [LXC_INDEX_FILE, LXC_USER_INDEX_FILE].map(|f| target.join(LXC_INDEX_DIR).join(f))
}

/// Both of LXC's indexes, relative to the tree with `/` separators.
pub fn lxc_index_rels() -> [String; 2] {
    [LXC_INDEX_FILE, LXC_USER_INDEX_FILE].map(|f| format!("{LXC_INDEX_DIR}/{f}"))
}

/// Where classic LXC's image index lives.
pub fn lxc_index_path(target: &Path) -> PathBuf {
    target.join(LXC_INDEX_DIR).join(LXC_INDEX_FILE)
}

/// The suffix of a detached ASCII-armoured OpenPGP signature: `<file>.asc`.
pub const SIGNATURE_SUFFIX: &str = ".asc";

/// The detached signature of a file: `<path>.asc`.
pub fn signature_path(path: &Path) -> PathBuf {
    let mut asc = path.as_os_str().to_owned();
    asc.push(SIGNATURE_SUFFIX);
    PathBuf::from(asc)
}

/// The suffix of a clear-signed catalog file.
const SIGNED_SUFFIX: &str = ".sjson";

/// The clear-signed twin of a catalog file: `images.json` → `images.sjson` (python-simplestreams'
/// convention).
pub fn signed_name(json_name: &str) -> String {
    let stem = json_name.strip_suffix(".json").unwrap_or(json_name);
    format!("{stem}{SIGNED_SUFFIX}")
}

/// True for the names publish writes beside the catalog: detached signatures, the signed
/// catalog, LXC's index and the catalog's web page.
pub fn is_companion_file_name(name: &str) -> bool {
    name.ends_with(SIGNATURE_SUFFIX)
        || name.ends_with(SIGNED_SUFFIX)
        || is_lxc_index_name(name)
        || name == PAGE_FILE
}

/// The catalog as a web page, at the tree's top (any web server or bucket shows it).
pub const PAGE_FILE: &str = "index.html";

/// Where the catalog's web page is written.
pub fn page_path(target: &Path) -> PathBuf {
    target.join(PAGE_FILE)
}

/// True for LXC's index folder (relative to the tree) and what is in it.
pub fn is_lxc_index_path(rel: &Path) -> bool {
    let dir = Path::new(LXC_INDEX_DIR);
    rel.starts_with(dir) || dir.starts_with(rel) && !rel.as_os_str().is_empty()
}

/// The clear-signed twin of the catalog file at `path` (see [`signed_name`]).
pub fn signed_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(signed_name(&name))
}

/// A delta's file name in the version folder it leads to: `delta-<base version>.vcdiff` (the
/// name images.linuxcontainers.org uses). Also its item key.
pub fn delta_name(base: &VersionName) -> String {
    format!("{DELTA_PREFIX}{base}{DELTA_SUFFIX}")
}

/// The base version a delta's file name names, when it is one.
pub fn delta_base(name: &str) -> Option<VersionName> {
    let base = name
        .strip_prefix(DELTA_PREFIX)?
        .strip_suffix(DELTA_SUFFIX)?;
    VersionName::parse(base).ok()
}

const DELTA_PREFIX: &str = "delta-";
const DELTA_SUFFIX: &str = ".vcdiff";

/// The folder of the layout under the tree root: `images/<os>/<release>/<arch>/<variant>/`.
pub const LAYOUT_ROOT: &str = "images";

/// The folder of the index, which clients hard-code, and the default folder of the products
/// file (`images_path:`).
pub const STREAMS_DIR: &str = "streams/v1";

/// The top folder of [`STREAMS_DIR`], which only the catalog uses.
pub const STREAMS_TOP: &str = "streams";

/// The index, in [`STREAMS_DIR`].
const INDEX_FILE: &str = "index.json";

/// The products file, in the `images_path` folder.
pub const PRODUCTS_FILE: &str = "images.json";

/// The suffix of a catalog file's gzip twin.
pub const GZ_SUFFIX: &str = ".gz";

/// The gzip twin of a catalog file: `<path>.gz`.
pub fn gz_path(path: &Path) -> PathBuf {
    let mut gz = path.as_os_str().to_owned();
    gz.push(GZ_SUFFIX);
    PathBuf::from(gz)
}

/// Where the index lives: clients hard-code `streams/v1/index.json`.
pub fn index_path(target: &Path) -> PathBuf {
    target.join(STREAMS_DIR).join(INDEX_FILE)
}

/// The index's path relative to the tree, with `/` separators.
pub fn index_rel() -> String {
    format!("{STREAMS_DIR}/{INDEX_FILE}")
}

/// Where the products file lives.
pub fn products_path(target: &Path, images_path: &str) -> PathBuf {
    target
        .join(images_path.trim_matches('/'))
        .join(PRODUCTS_FILE)
}

/// True for the file names the catalog is written as (index and products file, and their gzip
/// twins), wherever `images_path` puts them.
pub fn is_catalog_file_name(name: &str) -> bool {
    let name = name.strip_suffix(GZ_SUFFIX).unwrap_or(name);
    name == INDEX_FILE || name == PRODUCTS_FILE
}

/// The products file's path relative to the tree, with `/` separators.
pub fn products_rel(images_path: &str) -> String {
    format!("{}/{PRODUCTS_FILE}", images_path.trim_matches('/'))
}

/// The products file of a tree in a bucket, named after the sha256 of its bytes and never
/// overwritten (`<images_path>/images-<sha256>.json`): an index a client or a CDN still holds
/// keeps naming a file that exists.
pub fn snapshot_rel(images_path: &str, sha256: &str) -> String {
    format!("{}/images-{sha256}.json", images_path.trim_matches('/'))
}

/// True for the name of a products-file snapshot ([`snapshot_rel`]).
pub fn is_snapshot_name(name: &str) -> bool {
    name.strip_prefix("images-")
        .and_then(|n| n.strip_suffix(".json"))
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The bucket's own state, never part of the catalog: the probe of conditional writes and the
/// record of objects no catalog names any more (`prune`'s grace period).
pub const BUCKET_PROBE_PREFIX: &str = ".ssb/probe-";

/// The claim of a version in a bucket (`.ssb/claims/<product folder>/<version>.json`: its files
/// and their sha256), written once with If-None-Match before any of its files go up, so two
/// publishers of one version with other bytes never overwrite each other's files.
pub fn bucket_claim_rel(directory: &str, version: &str) -> String {
    format!(".ssb/claims/{}/{version}.json", directory.trim_matches('/'))
}

/// See [`BUCKET_PROBE_PREFIX`]: when each unreferenced object was first seen so.
pub const BUCKET_UNREFERENCED: &str = ".ssb/unreferenced.json";

/// The `Content-Type` a simplestreams file should carry, by its name (the server's, and the
/// objects' of a tree in a bucket). `.json.gz` served as a precompressed `.json` keeps `application/json` because the
/// type is chosen from the requested name.
pub fn content_type(file_name: &str) -> Option<&'static str> {
    if is_lxc_index_name(file_name) {
        return Some("text/plain; charset=utf-8");
    }
    let (_, extension) = file_name.rsplit_once('.')?;
    Some(match extension {
        "json" => "application/json",
        // Clear-signed JSON is text that only python-simplestreams reads, as JSON.
        "sjson" => "application/json",
        "asc" => "application/pgp-signature",
        "xz" => "application/x-xz",
        "gz" => "application/gzip",
        "squashfs" | "qcow2" | "img" | "vcdiff" => "application/octet-stream",
        _ => return None,
    })
}

/// A product's manifest, in its folder.
pub const MANIFEST_FILE: &str = "ssb.json";

/// `metadata.json` overrides, in a product or version folder (lxd-image-server's fork).
pub const METADATA_JSON: &str = "metadata.json";

/// `.requirements` files, in any folder above a product (antifob's convention).
pub const REQUIREMENTS_FILE: &str = ".requirements";

/// The tree's own hidden folder: locks and the server's and mirror's state.
pub const STATE_DIR: &str = ".ssb";

/// Serialises the writers of one tree's catalog; exists only while held. At the tree's top,
/// so taking it never makes (or removes) a folder others write into.
pub fn publish_lock(target: &Path) -> PathBuf {
    target.join(".ssb-publish.lock")
}

/// What a mirror pull verified (and the mark of a mirror tree).
pub fn mirror_state(target: &Path) -> PathBuf {
    target.join(STATE_DIR).join("mirror.json")
}

/// The server's self-signed certificate and key, relative to the tree.
pub const SELF_SIGNED_DIR: &str = ".ssb/tls";

/// Where `POST /import` stages its uploads, relative to the tree.
pub const IMPORT_STAGING: &str = ".ssb/import";

/// The hash cache older versions kept in each product folder: taken over once and removed
/// (caches now live outside the trees: [`crate::hash::CacheDir`]).
pub const HASH_CACHE: &str = ".ssb-cache.json";

/// A product folder's build lock.
pub const BUILD_LOCK: &str = ".ssb-build.lock";

/// The start of a build's hidden partial folder in its product folder.
pub const PARTIAL_BUILD_PREFIX: &str = ".build-";

/// The start of every temp file an atomic write leaves while it runs.
pub const TEMP_PREFIX: &str = ".tmp-";

/// The start of an upload's temp file, in its version folder.
pub const UPLOAD_PREFIX: &str = ".upload-";

/// The start of an import's temp files, in the layout.
pub const IMPORT_PREFIX: &str = ".import-";

/// True for the name of one of our temp files (atomic writes, uploads, imports, unified builds):
/// a crash can leave one behind; a live writer holds a lock on it while it works.
pub fn is_temp_name(name: &str) -> bool {
    [
        TEMP_PREFIX,
        UPLOAD_PREFIX,
        IMPORT_PREFIX,
        unified_cache::PARTIAL_PREFIX,
    ]
    .iter()
    .any(|p| name.starts_with(p))
}

/// A unified tarball built for the direct-URL import, cached in its version folder as
/// `.ssb-unified.<split fingerprint>.<sha256>.tar.gz`; the only hidden name that is served.
pub mod unified_cache {
    const PREFIX: &str = ".ssb-unified.";
    const SUFFIX: &str = ".tar.gz";

    /// The start of the temp file a build writes before it has its hash.
    pub const PARTIAL_PREFIX: &str = ".ssb-unified-partial.";

    /// The cache name of a unified tarball.
    pub fn name(fingerprint: &str, sha256: &str) -> String {
        format!("{PREFIX}{fingerprint}.{sha256}{SUFFIX}")
    }

    /// (split fingerprint, sha256) of a cache name, both 64 lower-case hex digits.
    pub fn parts(name: &str) -> Option<(&str, &str)> {
        let (fingerprint, sha) = name
            .strip_prefix(PREFIX)?
            .strip_suffix(SUFFIX)?
            .split_once('.')?;
        (is_sha256_hex(fingerprint) && is_sha256_hex(sha)).then_some((fingerprint, sha))
    }

    fn is_sha256_hex(s: &str) -> bool {
        s.len() == 64
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_round_trips_through_its_names() {
        for role in FileRole::ALL {
            assert_eq!(FileRole::classify(role.file_name()), Some(role), "{role:?}");
            if let Some(other) = role.other_name() {
                assert_eq!(FileRole::classify(other), Some(role), "{role:?}");
            }
        }
        let names: std::collections::BTreeSet<_> =
            FileRole::ALL.iter().map(|r| r.file_name()).collect();
        assert_eq!(names.len(), FileRole::ALL.len(), "two roles share a name");
        for not in [MANIFEST_FILE, METADATA_JSON, "root.squashfs", "x"] {
            assert_eq!(FileRole::classify(not), None, "{not}");
        }
    }

    #[test]
    fn item_keys_are_what_published_catalogs_use() {
        let keys: Vec<_> = FileRole::ALL.iter().map(|r| r.item_key()).collect();
        assert_eq!(
            keys,
            [
                "lxd.tar.xz",
                "incus.tar.xz",
                "lxd-vm.tar.xz",
                "incus-vm.tar.xz",
                "root.squashfs",
                "root.tar.xz",
                "disk.qcow2",
                "lxd_combined.tar.gz",
                "incus_combined.tar.gz",
                "lxc.tar.xz"
            ]
        );
    }

    #[test]
    fn delta_names_round_trip() {
        let v = VersionName::parse("20240101_00:00").unwrap();
        assert_eq!(delta_name(&v), "delta-20240101_00:00.vcdiff");
        assert_eq!(delta_base(&delta_name(&v)), Some(v));
        assert_eq!(delta_base("delta-x.vcdiff"), None);
        assert_eq!(delta_base("rootfs.squashfs"), None);
    }

    #[test]
    fn unified_cache_names_round_trip() {
        let h = "ab".repeat(32);
        let name = unified_cache::name(&h, &h);
        assert_eq!(unified_cache::parts(&name), Some((h.as_str(), h.as_str())));
        assert_eq!(unified_cache::parts(&name.replace(".tar.gz", ".tgz")), None);
        assert_eq!(unified_cache::parts(HASH_CACHE), None);
    }

    /// Acceptance of the layout: outside this module (and the format's ftypes it builds on),
    /// no source file spells an image file name or a hidden tree name. Test modules, which
    /// write fixtures under these names on purpose, are not looked at.
    #[test]
    fn no_other_module_spells_a_tree_name() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut names: Vec<String> = FileRole::ALL
            .iter()
            .flat_map(|r| [Some(r.file_name()), r.other_name()])
            .flatten()
            .map(str::to_owned)
            .collect();
        names.extend(
            [
                MANIFEST_FILE,
                METADATA_JSON,
                REQUIREMENTS_FILE,
                HASH_CACHE,
                BUILD_LOCK,
                PARTIAL_BUILD_PREFIX,
                TEMP_PREFIX,
                unified_cache::PARTIAL_PREFIX,
                STATE_DIR,
                STREAMS_DIR,
                INDEX_FILE,
                PRODUCTS_FILE,
                LXC_INDEX_FILE,
                LXC_USER_INDEX_FILE,
            ]
            .map(str::to_owned),
        );
        let mut found = Vec::new();
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let rel = path
                    .strip_prefix(&root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                if rel == "tree/names.rs" || rel == "format/item.rs" {
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap();
                let code = text.split("#[cfg(test)]").next().unwrap_or_default();
                for (n, line) in code.lines().enumerate() {
                    let line = line.trim_start();
                    if line.starts_with("//") {
                        continue;
                    }
                    // The text between quotes: string literals, messages included.
                    let literals = line.split('"').skip(1).step_by(2);
                    for literal in literals {
                        for name in names.iter().filter(|n| literal.contains(n.as_str())) {
                            found.push(format!("src/{rel}:{}: {name}", n + 1));
                        }
                    }
                }
            }
        }
        assert!(
            found.is_empty(),
            "tree names spelled outside tree/names.rs:\n{}",
            found.join("\n")
        );
    }
}
