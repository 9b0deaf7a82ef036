//! Image files for the tests: metadata tarballs, squashfs and tarball rootfs, qcow2 disks,
//! unified tarballs, and the lxd-image-server layout they are published from.
//!
//! Every writer is deterministic (fixed times, owners and modes), so the same arguments always
//! give the same bytes and so the same fingerprint; different seeds give different bytes.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use liblzma::write::XzEncoder;
use tempfile::TempDir;

use super::command::run_ok;

/// The mtime of every file the fixtures write into archives: 2025-01-01 10:00 UTC.
pub const FIXTURE_EPOCH: u64 = 1_735_725_600;

/// Fixture tools are quick; anything slower than this is stuck.
const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

/// Bytes that pass the image check as a squashfs without mksquashfs, for tests that hash, publish
/// or serve a rootfs but never mount it: a version 4 superblock saying the whole file is used,
/// then `tag`.
pub fn fake_squashfs(tag: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; 96];
    v[..4].copy_from_slice(b"hsqs");
    v[28..30].copy_from_slice(&4u16.to_le_bytes());
    v.extend_from_slice(tag);
    let len = v.len() as u64;
    v[40..48].copy_from_slice(&len.to_le_bytes());
    v
}

/// [`fake_squashfs`] of exactly `size` bytes (at least 96) of pseudo-random content from `seed`.
pub fn random_squashfs(size: usize, seed: u64) -> Vec<u8> {
    // Distinct seeds give distinct contents; xorshift needs a state that is not zero.
    let mut x = seed
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(0x2545_f491_4f6c_dd1d)
        .max(1);
    let mut body = Vec::with_capacity(size + 8);
    while body.len() + 96 < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        body.extend_from_slice(&x.to_le_bytes());
    }
    body.truncate(size.saturating_sub(96));
    fake_squashfs(&body)
}

/// Bytes that pass the image check as a qcow2 disk without qemu-img: a version 3 header, then
/// `tag`.
pub fn fake_qcow2(tag: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; 104];
    v[..4].copy_from_slice(b"QFI\xfb");
    v[4..8].copy_from_slice(&3u32.to_be_bytes());
    v.extend_from_slice(tag);
    v
}

/// A small real `root.tar.xz` holding one file whose content is `tag`.
pub fn fake_root_tar_xz(tag: &[u8]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(tag.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_cksum();
    tar.append_data(&mut h, "./etc/tag", tag).unwrap();
    let raw = tar.into_inner().unwrap();
    let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 1);
    xz.write_all(&raw).unwrap();
    xz.finish().unwrap()
}

/// What goes into an image's `metadata.yaml`.
#[derive(Clone, Debug)]
pub struct MetaSpec {
    /// Architecture as the kernel names it (`x86_64`), like distrobuilder writes it.
    pub arch: String,
    pub os: String,
    pub release: String,
    pub variant: String,
    pub description: String,
    /// Unix seconds.
    pub creation_date: u64,
    pub serial: String,
}

impl MetaSpec {
    /// A `default`-variant x86_64 image of `os`/`release` built as `serial`.
    pub fn new(os: &str, release: &str, serial: &str) -> MetaSpec {
        MetaSpec {
            arch: "x86_64".into(),
            os: os.into(),
            release: release.into(),
            variant: "default".into(),
            description: format!("{os} {release} x86_64 ({serial})"),
            creation_date: FIXTURE_EPOCH,
            serial: serial.into(),
        }
    }

    /// The same image's VM flavour: distrobuilder's `pack-incus --vm` writes its own metadata,
    /// with its own description and creation time.
    pub fn vm(&self) -> MetaSpec {
        MetaSpec {
            description: format!("{} (VM)", self.description),
            creation_date: self.creation_date + 60,
            ..self.clone()
        }
    }

    /// `metadata.yaml` as distrobuilder lays it out, with one template.
    pub fn to_yaml(&self) -> String {
        // JSON strings are valid YAML scalars and quote everything that needs it.
        let q = |s: &str| serde_json::to_string(s).expect("a string serialises");
        let lines = [
            format!("architecture: {}", q(&self.arch)),
            format!("creation_date: {}", self.creation_date),
            "properties:".into(),
            format!("  architecture: {}", q(&self.arch)),
            format!("  description: {}", q(&self.description)),
            format!("  os: {}", q(&self.os)),
            format!("  release: {}", q(&self.release)),
            format!("  serial: {}", q(&self.serial)),
            format!("  variant: {}", q(&self.variant)),
            "templates:".into(),
            "  /etc/hostname:".into(),
            "    when: [create, copy]".into(),
            "    create_only: false".into(),
            "    template: hostname.tpl".into(),
            "    properties: {}".into(),
        ];
        lines.join("\n") + "\n"
    }
}

/// One entry of a fixture tarball.
enum Entry {
    Dir(&'static str),
    File(String, Vec<u8>),
}

/// Writes `entries` as an xz-compressed tar with fixed owners, modes and times. Names are stored
/// verbatim, so `./etc/hostname` stays `./etc/hostname` as in `tar -C rootfs -cJf … .`.
fn write_tar_xz(path: &Path, entries: &[Entry]) {
    let xz = write_tar(XzEncoder::new(create(path), 6), entries, path);
    xz.finish()
        .unwrap_or_else(|e| panic!("finish xz {}: {e}", path.display()))
        .sync_all()
        .unwrap_or_else(|e| panic!("sync {}: {e}", path.display()));
}

/// Writes `entries` as a tar into `out` (compressing, for `path`), and returns `out`.
fn write_tar<W: Write>(out: W, entries: &[Entry], path: &Path) -> W {
    let mut tar = tar::Builder::new(out);
    for entry in entries {
        let (name, kind, mode, data): (&str, _, _, &[u8]) = match entry {
            Entry::Dir(name) => (name, tar::EntryType::Directory, 0o755, &[]),
            Entry::File(name, data) => (name, tar::EntryType::Regular, 0o644, data),
        };
        let mut header = tar::Header::new_gnu();
        let field = &mut header.as_old_mut().name;
        assert!(
            name.len() < field.len(),
            "fixture tar name too long: {name}"
        );
        field[..name.len()].copy_from_slice(name.as_bytes());
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_size(data.len() as u64);
        header.set_mtime(FIXTURE_EPOCH);
        header.set_uid(0);
        header.set_gid(0);
        header.set_cksum();
        tar.append(&header, data)
            .unwrap_or_else(|e| panic!("append {name} to {}: {e}", path.display()));
    }
    tar.into_inner()
        .unwrap_or_else(|e| panic!("finish tar {}: {e}", path.display()))
}

/// The entries of a metadata tarball: `metadata.yaml` and a `templates/` folder, named without
/// `./` (incus-simplestreams rejects `./metadata.yaml`).
fn metadata_entries(spec: &MetaSpec) -> Vec<Entry> {
    vec![
        Entry::File("metadata.yaml".into(), spec.to_yaml().into_bytes()),
        Entry::Dir("templates/"),
        Entry::File(
            "templates/hostname.tpl".into(),
            format!("{{{{ instance.name }}}}\n# {}\n", spec.serial).into_bytes(),
        ),
    ]
}

/// A split image's metadata tarball (`incus.tar.xz` / `lxd.tar.xz`), see [`metadata_entries`].
pub fn write_metadata_tarball(path: &Path, spec: &MetaSpec) -> PathBuf {
    write_tar_xz(path, &metadata_entries(spec));
    path.to_path_buf()
}

/// A unified image as `incus image export` writes a container: one gzip tarball holding the
/// metadata tarball's entries and the rootfs of `seed` under `rootfs/`.
pub fn write_unified_tar_gz(path: &Path, spec: &MetaSpec, seed: &str) -> PathBuf {
    let mut entries = metadata_entries(spec);
    entries.extend([Entry::Dir("rootfs/"), Entry::Dir("rootfs/etc/")]);
    entries.extend(
        rootfs_files(seed)
            .into_iter()
            .map(|(name, data)| Entry::File(format!("rootfs/{name}"), data)),
    );
    let gz = flate2::write::GzEncoder::new(create(path), flate2::Compression::fast());
    write_tar(gz, &entries, path)
        .finish()
        .unwrap_or_else(|e| panic!("finish gzip {}: {e}", path.display()))
        .sync_all()
        .unwrap_or_else(|e| panic!("sync {}: {e}", path.display()));
    path.to_path_buf()
}

/// The files of a tiny rootfs; `seed` makes it unique.
fn rootfs_files(seed: &str) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "etc/os-release",
            format!("ID=ssb-test\nNAME=\"ssb test\"\nVERSION_ID=\"{seed}\"\n").into_bytes(),
        ),
        ("etc/hostname", format!("{seed}\n").into_bytes()),
        ("etc/ssb-seed", seed.repeat(16).into_bytes()),
    ]
}

/// A container rootfs as squashfs, made by `mksquashfs` with every time and owner pinned.
pub fn write_squashfs_rootfs(path: &Path, seed: &str) -> PathBuf {
    let src = TempDir::with_prefix("ssb-rootfs-").expect("create rootfs scratch dir");
    let root = src.path().join("rootfs");
    for (name, data) in rootfs_files(seed) {
        let file = root.join(name);
        mkdir(file.parent().expect("rootfs files are in folders"));
        std::fs::write(&file, data).unwrap_or_else(|e| panic!("write {}: {e}", file.display()));
        set_mode(&file, 0o644);
    }
    for dir in [root.join("etc"), root.clone()] {
        set_mode(&dir, 0o755);
    }
    run_ok(
        assert_cmd::Command::new("mksquashfs")
            .arg(&root)
            .arg(path)
            .args(["-noappend", "-all-root", "-no-xattrs", "-quiet"])
            .args(["-mkfs-time", "0", "-all-time", "0"]),
        TOOL_TIMEOUT,
    );
    path.to_path_buf()
}

/// A container rootfs as a `root.tar.xz`-style tarball, entries relative to the rootfs (`./…`).
pub fn write_rootfs_tar_xz(path: &Path, seed: &str) -> PathBuf {
    let mut entries = vec![Entry::Dir("./"), Entry::Dir("./etc/")];
    entries.extend(
        rootfs_files(seed)
            .into_iter()
            .map(|(name, data)| Entry::File(format!("./{name}"), data)),
    );
    write_tar_xz(path, &entries);
    path.to_path_buf()
}

/// A VM disk: an empty 64 MiB qcow2 with a seed-derived pattern written at offset 0, so that
/// disks of different fixtures differ too.
pub fn write_qcow2(path: &Path, seed: &str) -> PathBuf {
    run_ok(
        assert_cmd::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(path)
            .arg("64M"),
        TOOL_TIMEOUT,
    );
    let pattern = seed.bytes().fold(7u8, |acc, b| acc.wrapping_mul(31) ^ b);
    run_ok(
        assert_cmd::Command::new("qemu-io")
            .args(["-c", &format!("write -q -P {pattern} 0 4k")])
            .arg(path),
        TOOL_TIMEOUT,
    );
    path.to_path_buf()
}

/// The lxd-image-server layout: `<root>/images/<os>/<release>/<arch>/<variant>/<version>/`.
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(root: &Path) -> Layout {
        Layout {
            root: root.to_path_buf(),
        }
    }

    /// Creates and returns the folder of one version of `os:release:arch:variant`.
    pub fn version_dir(
        &self,
        os: &str,
        release: &str,
        arch: &str,
        variant: &str,
        version: &str,
    ) -> PathBuf {
        let dir = self
            .root
            .join("images")
            .join(os)
            .join(release)
            .join(arch)
            .join(variant)
            .join(version);
        mkdir(&dir);
        dir
    }
}

/// A container version `os/1/amd64/default/version` of the layout whose rootfs is `size`
/// pseudo-random bytes (no mksquashfs needed): (meta, rootfs).
pub fn random_container(
    layout: &Layout,
    os: &str,
    version: &str,
    size: usize,
) -> (PathBuf, PathBuf) {
    let v = layout.version_dir(os, "1", "amd64", "default", version);
    let meta = write_metadata_tarball(&v.join("incus.tar.xz"), &MetaSpec::new(os, "1", version));
    let bytes = random_squashfs(size, 0x9e37_79b9_7f4a_7c15 ^ size as u64 ^ os.len() as u64);
    let rootfs = v.join("rootfs.squashfs");
    std::fs::write(&rootfs, bytes).unwrap();
    (meta, rootfs)
}

/// Copies every file of `from` into `to` (created), byte for byte: a rebuild that changed nothing.
pub fn copy_version(from: &Path, to: &Path) {
    mkdir(to);
    for entry in std::fs::read_dir(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display()))
    {
        let entry = entry.expect("read dir entry");
        let target = to.join(entry.file_name());
        std::fs::copy(entry.path(), &target).unwrap_or_else(|e| {
            panic!(
                "copy {} to {}: {e}",
                entry.path().display(),
                target.display()
            )
        });
    }
}

fn create(path: &Path) -> std::fs::File {
    if let Some(parent) = path.parent() {
        mkdir(parent);
    }
    std::fs::File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()))
}

/// `mkdir -p`.
pub fn mkdir(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// Writes `text` to `path`, creating parent folders.
pub fn write_text(path: &Path, text: &str) {
    create(path)
        .write_all(text.as_bytes())
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}
