//! Items: one file of a version as the catalog describes it, and the file types (`ftype`) the
//! clients act on.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Which client family a metadata or unified file is published for. Incus reads only
/// `incus.*` ftypes, LXD (5.0.0–5.0.2, 5.21+, 6.x) only `lxd.*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// LXD: `lxd.tar.xz`, `lxd_combined.tar.gz`, `lxd_requirements`.
    Lxd,
    /// Incus: `incus.tar.xz`, `incus_combined.tar.gz`, `requirements`.
    Incus,
}

impl Family {
    /// Both families, in a fixed order.
    pub const ALL: [Family; 2] = [Family::Lxd, Family::Incus];

    /// The other family.
    pub fn twin(self) -> Family {
        match self {
            Family::Lxd => Family::Incus,
            Family::Incus => Family::Lxd,
        }
    }

    /// `lxd` or `incus`, as in file names.
    pub const fn as_str(self) -> &'static str {
        match self {
            Family::Lxd => "lxd",
            Family::Incus => "incus",
        }
    }

    /// `LXD` or `Incus`: the product's name, as in its HTTP headers (`LXD-Image-Hash`,
    /// `Incus-Server-Architectures`) and in messages.
    pub const fn product_name(self) -> &'static str {
        match self {
            Family::Lxd => "LXD",
            Family::Incus => "Incus",
        }
    }

    /// The ftype of its split metadata: `lxd.tar.xz`, `incus.tar.xz`.
    pub const fn meta_ftype(self) -> &'static str {
        match self {
            Family::Lxd => "lxd.tar.xz",
            Family::Incus => "incus.tar.xz",
        }
    }

    /// The ftype of its unified tarballs: `lxd_combined.tar.gz`, `incus_combined.tar.gz`.
    pub const fn unified_ftype(self) -> &'static str {
        match self {
            Family::Lxd => "lxd_combined.tar.gz",
            Family::Incus => "incus_combined.tar.gz",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The root file types a split image pairs with its metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RootfsKind {
    /// `squashfs`: a container rootfs.
    Squashfs,
    /// `root.tar.xz`: a container rootfs as a tarball.
    RootTarXz,
    /// `disk-kvm.img`: a VM disk (qcow2).
    DiskKvm,
}

impl RootfsKind {
    /// Every kind, in the clients' order of preference.
    pub const ALL: [RootfsKind; 3] = [
        RootfsKind::Squashfs,
        RootfsKind::RootTarXz,
        RootfsKind::DiskKvm,
    ];

    /// The wire string of its ftype.
    pub const fn ftype_str(self) -> &'static str {
        match self {
            RootfsKind::Squashfs => "squashfs",
            RootfsKind::RootTarXz => "root.tar.xz",
            RootfsKind::DiskKvm => "disk-kvm.img",
        }
    }

    /// The item ftype.
    pub fn ftype(self) -> Ftype {
        match self {
            RootfsKind::Squashfs => Ftype::Squashfs,
            RootfsKind::RootTarXz => Ftype::RootTarXz,
            RootfsKind::DiskKvm => Ftype::DiskKvmImg,
        }
    }

    /// The image type a client shows for this rootfs.
    pub fn image_type(self) -> ImageType {
        match self {
            RootfsKind::DiskKvm => ImageType::VirtualMachine,
            _ => ImageType::Container,
        }
    }
}

/// Container or virtual machine: aliases are registered per image type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ImageType {
    /// A container image.
    Container,
    /// A virtual-machine image.
    VirtualMachine,
}

impl fmt::Display for ImageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ImageType::Container => "container",
            ImageType::VirtualMachine => "virtual-machine",
        })
    }
}

/// The ftype of classic LXC's metadata tarball.
pub const LXC_META_FTYPE: &str = "lxc.tar.xz";

/// The ftype of an xdelta3 delta between two squashfs files.
pub const SQUASHFS_DELTA_FTYPE: &str = "squashfs.vcdiff";

/// An item's `ftype`. Unknown values are kept so catalogs read from elsewhere round-trip.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Ftype {
    /// Split metadata for a family.
    Meta(Family),
    /// Unified tarball for a family (`*_combined.tar.gz`, whatever its compression).
    Unified(Family),
    /// `squashfs`.
    Squashfs,
    /// `root.tar.xz`.
    RootTarXz,
    /// `disk-kvm.img`.
    DiskKvmImg,
    /// `lxc.tar.xz`: classic LXC's `meta.tar.xz` (what `lxc-create -t download` fetches beside
    /// the root tarball). Ours: no client of the simplestreams catalog acts on it (LXD and Incus
    /// skip ftypes they do not know), but mirrors carry it with its hash.
    LxcMeta,
    /// `squashfs.vcdiff`: an xdelta3 delta from the squashfs of the version `delta_base` names.
    SquashfsDelta,
    /// Anything else (deltas, legacy disks, …), passed through untouched.
    Other(String),
}

impl Ftype {
    /// The wire string.
    pub fn as_str(&self) -> &str {
        match self {
            Ftype::Meta(family) => family.meta_ftype(),
            Ftype::Unified(family) => family.unified_ftype(),
            Ftype::Squashfs => RootfsKind::Squashfs.ftype_str(),
            Ftype::RootTarXz => RootfsKind::RootTarXz.ftype_str(),
            Ftype::DiskKvmImg => RootfsKind::DiskKvm.ftype_str(),
            Ftype::LxcMeta => LXC_META_FTYPE,
            Ftype::SquashfsDelta => SQUASHFS_DELTA_FTYPE,
            Ftype::Other(s) => s,
        }
    }

    /// Parses the wire string.
    pub fn parse(s: &str) -> Ftype {
        let family =
            |name: fn(Family) -> &'static str| Family::ALL.into_iter().find(|f| name(*f) == s);
        if let Some(f) = family(Family::meta_ftype) {
            return Ftype::Meta(f);
        }
        if let Some(f) = family(Family::unified_ftype) {
            return Ftype::Unified(f);
        }
        if s == LXC_META_FTYPE {
            return Ftype::LxcMeta;
        }
        if s == SQUASHFS_DELTA_FTYPE {
            return Ftype::SquashfsDelta;
        }
        match RootfsKind::ALL.into_iter().find(|k| k.ftype_str() == s) {
            Some(kind) => kind.ftype(),
            None => Ftype::Other(s.to_owned()),
        }
    }

    /// The rootfs kind of a rootfs ftype.
    pub fn rootfs_kind(&self) -> Option<RootfsKind> {
        match self {
            Ftype::Squashfs => Some(RootfsKind::Squashfs),
            Ftype::RootTarXz => Some(RootfsKind::RootTarXz),
            Ftype::DiskKvmImg => Some(RootfsKind::DiskKvm),
            _ => None,
        }
    }
}

impl fmt::Display for Ftype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Ftype {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Ftype {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Ftype::parse(&String::deserialize(d)?))
    }
}

/// One file of a version. Field order is the wire order (alphabetical, as the original tool
/// wrote it); optional fields are omitted when absent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// sha256(meta ‖ disk): the fingerprint of the VM image this metadata makes with the disk.
    #[serde(
        rename = "combined_disk-kvm-img_sha256",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub combined_disk_kvm_img_sha256: Option<String>,
    /// sha256(meta ‖ root.tar.xz).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub combined_rootxz_sha256: Option<String>,
    /// Legacy twin of `combined_rootxz_sha256`, read by old clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub combined_sha256: Option<String>,
    /// sha256(meta ‖ squashfs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub combined_squashfs_sha256: Option<String>,
    /// For delta items: the version the delta applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta_base: Option<String>,
    /// The file's role.
    pub ftype: Ftype,
    /// md5 of the file, only when asked for (`--md5`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub md5: Option<String>,
    /// Where the file is, relative to the catalog root (or a URL).
    pub path: String,
    /// Lowercase hex sha256 of the file.
    pub sha256: String,
    /// Exact size in bytes.
    pub size: u64,
}

impl Item {
    /// A plain item with no combined hashes.
    pub fn new(ftype: Ftype, path: String, sha256: String, size: u64) -> Self {
        Self {
            combined_disk_kvm_img_sha256: None,
            combined_rootxz_sha256: None,
            combined_sha256: None,
            combined_squashfs_sha256: None,
            delta_base: None,
            ftype,
            md5: None,
            path,
            sha256,
            size,
        }
    }

    /// The fingerprint of the split image this metadata item makes with a rootfs of `kind`, as
    /// the clients look it up (root.tar.xz falls back to the legacy key).
    pub fn combined_for(&self, kind: RootfsKind) -> Option<&str> {
        match kind {
            RootfsKind::Squashfs => self.combined_squashfs_sha256.as_deref(),
            RootfsKind::RootTarXz => self
                .combined_rootxz_sha256
                .as_deref()
                .or(self.combined_sha256.as_deref()),
            RootfsKind::DiskKvm => self.combined_disk_kvm_img_sha256.as_deref(),
        }
    }

    /// Every fingerprint of a split image this metadata item makes, one per rootfs kind it has
    /// a combined hash for.
    pub fn combined_fingerprints(&self) -> impl Iterator<Item = &str> {
        RootfsKind::ALL
            .into_iter()
            .filter_map(|kind| self.combined_for(kind))
    }

    /// Records (or clears) the combined hash for a rootfs kind; root.tar.xz sets both keys.
    pub fn set_combined(&mut self, kind: RootfsKind, value: Option<String>) {
        match kind {
            RootfsKind::Squashfs => self.combined_squashfs_sha256 = value,
            RootfsKind::RootTarXz => {
                self.combined_sha256.clone_from(&value);
                self.combined_rootxz_sha256 = value;
            }
            RootfsKind::DiskKvm => self.combined_disk_kvm_img_sha256 = value,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ftypes_round_trip_and_keep_unknown_values() {
        for s in [
            "lxd.tar.xz",
            "incus.tar.xz",
            "lxd_combined.tar.gz",
            "incus_combined.tar.gz",
            "squashfs",
            "root.tar.xz",
            "disk-kvm.img",
            "squashfs.vcdiff",
            "lxc.tar.xz",
        ] {
            assert_eq!(Ftype::parse(s).as_str(), s);
        }
        assert_eq!(
            Ftype::parse("root.squashfs"),
            Ftype::Other("root.squashfs".into())
        );
    }

    #[test]
    fn item_serializes_only_present_keys_with_the_clients_names() {
        let mut item = Item::new(Ftype::Meta(Family::Incus), "a/b".into(), "00".into(), 3);
        item.set_combined(RootfsKind::DiskKvm, Some("11".into()));
        item.set_combined(RootfsKind::RootTarXz, Some("22".into()));
        let json = serde_json::to_string(&item).unwrap();
        assert_eq!(
            json,
            r#"{"combined_disk-kvm-img_sha256":"11","combined_rootxz_sha256":"22","combined_sha256":"22","ftype":"incus.tar.xz","path":"a/b","sha256":"00","size":3}"#
        );
        let back: Item = serde_json::from_str(&json).unwrap();
        assert_eq!(back, item);
        assert_eq!(back.combined_for(RootfsKind::Squashfs), None);
    }
}
