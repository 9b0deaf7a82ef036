//! The one rule for image data files, applied wherever one enters or is published (`publish`,
//! the server's re-index, uploads, `import`, `verify`): a rootfs or disk must be what its name
//! says, told by its own header, never by its name alone. A squashfs starts with `hsqs` and a
//! version 4 superblock no longer than the file; a qcow2 disk with `QFI\xfb` and a version 2 or
//! 3 header; a `root.tar.xz` is xz data whose first tar header is valid; a unified tarball is a
//! tarball (xz, gzip, zstd or plain) whose first header is valid. An empty file is none of these.
//! Only the first few KiB are read: the rule is cheap enough to run on every file that arrives.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::format::{Family, RootfsKind};
use crate::image::metadata::open_tarball;

/// Bytes read from the start of a file to recognise it.
const HEAD: usize = 4096;
/// A squashfs superblock.
const SQUASHFS_SUPERBLOCK: u64 = 96;
/// A qcow2 version 2 header (version 3 headers are longer).
const QCOW2_HEADER: u64 = 72;

/// An image data file that breaks the rule.
#[derive(Debug, thiserror::Error)]
#[error("{}: {problem}", path.display())]
pub struct BadImage {
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it, and what it looks like instead.
    pub problem: String,
}

/// What a file is, by its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A squashfs file system.
    Squashfs,
    /// A qcow2 disk image.
    Qcow2,
    /// xz data.
    Xz,
    /// gzip data.
    Gzip,
    /// zstd data.
    Zstd,
    /// An uncompressed tar archive.
    Tar,
}

impl Format {
    /// True for a compressed or plain tarball.
    pub fn is_tarball(self) -> bool {
        matches!(self, Format::Xz | Format::Gzip | Format::Zstd | Format::Tar)
    }
}

/// Recognises a file by its first bytes (512 are enough for every format).
pub fn sniff(head: &[u8]) -> Option<Format> {
    Some(match head {
        [b'h', b's', b'q', b's', ..] => Format::Squashfs,
        [b'Q', b'F', b'I', 0xfb, ..] => Format::Qcow2,
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => Format::Xz,
        [0x1f, 0x8b, ..] => Format::Gzip,
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Format::Zstd,
        _ if head.get(257..262) == Some(b"ustar".as_slice()) => Format::Tar,
        _ => return None,
    })
}

/// Describes bytes that are not what was expected, for messages: a known kind of file, or the
/// first bytes in hex.
fn looks_like(head: &[u8]) -> String {
    let kind = match head {
        [0x89, b'P', b'N', b'G', ..] => "a PNG image",
        [0xff, 0xd8, 0xff, ..] => "a JPEG image",
        [b'G', b'I', b'F', b'8', ..] => "a GIF image",
        [b'%', b'P', b'D', b'F', ..] => "a PDF document",
        [b'P', b'K', 3, 4, ..] => "a ZIP archive",
        [0x7f, b'E', b'L', b'F', ..] => "an ELF program",
        [b'B', b'Z', b'h', ..] => "bzip2 data",
        _ => match sniff(head) {
            Some(Format::Squashfs) => "a squashfs image",
            Some(Format::Qcow2) => "a qcow2 disk",
            Some(Format::Xz) => "xz data",
            Some(Format::Gzip) => "gzip data",
            Some(Format::Zstd) => "zstd data",
            Some(Format::Tar) => "an uncompressed tarball",
            None => {
                let text = head
                    .iter()
                    .take(64)
                    .all(|&b| b.is_ascii_graphic() || b.is_ascii_whitespace() || !b.is_ascii());
                let html = text && {
                    let start = String::from_utf8_lossy(&head[..head.len().min(64)])
                        .trim_start()
                        .to_ascii_lowercase();
                    start.starts_with("<!doctype html") || start.starts_with("<html")
                };
                if html {
                    "an HTML page"
                } else if text {
                    "text"
                } else {
                    let hex: Vec<String> =
                        head.iter().take(8).map(|b| format!("{b:02x}")).collect();
                    return format!("bytes {}", hex.join(" "));
                }
            }
        },
    };
    kind.to_owned()
}

/// Reads up to [`HEAD`] bytes from the start of `path`, and its size.
fn head_of(path: &Path) -> Result<(Vec<u8>, u64), BadImage> {
    let fail = |e: std::io::Error| BadImage {
        path: path.to_owned(),
        problem: format!("cannot read: {e}"),
    };
    let file = std::fs::File::open(path).map_err(fail)?;
    let size = file.metadata().map_err(fail)?.len();
    let mut head = Vec::with_capacity(HEAD);
    file.take(HEAD as u64)
        .read_to_end(&mut head)
        .map_err(fail)?;
    Ok((head, size))
}

fn what(kind: RootfsKind) -> &'static str {
    match kind {
        RootfsKind::Squashfs => "a squashfs image",
        RootfsKind::RootTarXz => "an xz-compressed root tarball",
        RootfsKind::DiskKvm => "a qcow2 disk",
    }
}

/// Applies the rule to a rootfs or disk of `kind` at `path`.
pub fn check_rootfs(kind: RootfsKind, path: &Path) -> Result<(), BadImage> {
    let (head, size) = head_of(path)?;
    rootfs_problem(kind, path, &head, size).map_or(Ok(()), |problem| {
        Err(BadImage {
            path: path.to_owned(),
            problem,
        })
    })
}

/// Applies the rule to a unified tarball at `path`.
pub fn check_unified(path: &Path) -> Result<(), BadImage> {
    check_tarball(
        path,
        "a unified image tarball",
        Format::is_tarball,
        tar_problem,
    )
}

/// A tarball of `what`: not empty, of a format `accepted`, then whatever `inside` finds.
fn check_tarball(
    path: &Path,
    what: &str,
    accepted: impl Fn(Format) -> bool,
    inside: impl FnOnce(&Path) -> Option<String>,
) -> Result<(), BadImage> {
    let (head, size) = head_of(path)?;
    let problem = if size == 0 {
        Some(format!("is empty (0 bytes), not {what}"))
    } else if !sniff(&head).is_some_and(&accepted) {
        Some(format!(
            "is not {what}: it looks like {}",
            looks_like(&head)
        ))
    } else {
        inside(path)
    };
    problem.map_or(Ok(()), |problem| {
        Err(BadImage {
            path: path.to_owned(),
            problem,
        })
    })
}

/// Applies the rule to classic LXC's metadata tarball at `path`: xz data holding `config` (the
/// download template refuses a tarball without it) and no `metadata.yaml` (that is an LXD or
/// Incus metadata tarball, which LXC cannot use). Told by content, never by the name alone.
pub fn check_lxc_meta(path: &Path) -> Result<(), BadImage> {
    // LXC's metadata is a few KiB: a large file is a rootfs under the wrong name, refused
    // without decompressing it.
    const MAX_LXC_META: u64 = 64 << 20;
    if let Ok(m) = std::fs::metadata(path)
        && m.len() > MAX_LXC_META
    {
        return Err(BadImage {
            path: path.to_owned(),
            problem: format!(
                "is {} bytes, far more than classic LXC's metadata tarball (config, templates): is this the root tarball?",
                m.len()
            ),
        });
    }
    check_tarball(
        path,
        "an LXC metadata tarball (xz data, as `distrobuilder pack-lxc` writes it)",
        |f| f == Format::Xz,
        lxc_meta_problem,
    )
}

/// Which metadata a tarball holds, by its entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetadataKind {
    /// LXD's or Incus's: a `metadata.yaml`.
    LxdOrIncus,
    /// Classic LXC's: `config` (what the download template needs), no `metadata.yaml`.
    Lxc,
    /// LXC's files (`create-message`, `excludes-user`, `templates`, `expiry`) but no `config`:
    /// what `distrobuilder pack-lxc` writes for an image without `targets.lxc.config`.
    LxcWithoutConfig,
    /// Neither.
    Other,
}

/// What the tarball at `path` holds, or why it cannot be read as one.
pub fn metadata_kind(path: &Path) -> Result<MetadataKind, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let (mut archive, what) = open_tarball(file, path).map_err(|e| e.problem)?;
    let entries = archive
        .entries()
        .map_err(|e| format!("is not a tarball ({what}): {e}"))?;
    let (mut config, mut lxd, mut lxc_files, mut count) = (false, false, false, 0usize);
    for entry in entries {
        let entry = entry.map_err(|e| format!("is not a readable tarball ({what} data): {e}"))?;
        count += 1;
        let name = entry.path().map(|p| p.to_string_lossy().into_owned());
        match name.as_deref().map(|n| n.trim_start_matches("./")) {
            Ok("config") => config = true,
            Ok("metadata.yaml") => lxd = true,
            Ok("create-message" | "excludes-user" | "expiry") => lxc_files = true,
            Ok(n) if n.starts_with("templates/") || n.starts_with("config-user") => {
                lxc_files = true;
            }
            _ => {}
        }
    }
    if count == 0 {
        return Err(format!("is an empty tarball ({what}): it holds no files"));
    }
    Ok(match (lxd, config, lxc_files) {
        (true, _, _) => MetadataKind::LxdOrIncus,
        (false, true, _) => MetadataKind::Lxc,
        (false, false, true) => MetadataKind::LxcWithoutConfig,
        (false, false, false) => MetadataKind::Other,
    })
}

/// What an xz tarball that should be LXC's metadata holds instead.
fn lxc_meta_problem(path: &Path) -> Option<String> {
    match metadata_kind(path) {
        Err(problem) => Some(problem),
        Ok(MetadataKind::Lxc) => None,
        Ok(MetadataKind::LxdOrIncus) => Some(format!(
            "is an LXD or Incus metadata tarball (it holds metadata.yaml), not classic LXC's: publish it under its own name ({} or {})",
            Family::Incus.meta_ftype(),
            Family::Lxd.meta_ftype()
        )),
        Ok(MetadataKind::LxcWithoutConfig | MetadataKind::Other) => Some(
            "holds no `config` file: `lxc-create -t download` refuses it (distrobuilder writes one from the image's `targets.lxc.config`)".to_owned(),
        ),
    }
}

fn rootfs_problem(kind: RootfsKind, path: &Path, head: &[u8], size: u64) -> Option<String> {
    if size == 0 {
        return Some(format!("is empty (0 bytes), not {}", what(kind)));
    }
    let found = sniff(head);
    let wanted = match kind {
        RootfsKind::Squashfs => Format::Squashfs,
        RootfsKind::DiskKvm => Format::Qcow2,
        RootfsKind::RootTarXz => Format::Xz,
    };
    if found != Some(wanted) {
        return Some(format!(
            "is not {}: it looks like {}",
            what(kind),
            looks_like(head)
        ));
    }
    match kind {
        RootfsKind::Squashfs => squashfs_problem(head, size),
        RootfsKind::DiskKvm => qcow2_problem(head, size),
        RootfsKind::RootTarXz => tar_problem(path),
    }
}

fn squashfs_problem(head: &[u8], size: u64) -> Option<String> {
    if size < SQUASHFS_SUPERBLOCK || head.len() < SQUASHFS_SUPERBLOCK as usize {
        return Some(format!(
            "is truncated: {size} bytes, less than a squashfs superblock ({SQUASHFS_SUPERBLOCK})"
        ));
    }
    let major = u16::from_le_bytes([head[28], head[29]]);
    if major != 4 {
        return Some(format!(
            "is a squashfs of version {major}; LXD and Incus read version 4 (make it with mksquashfs 4)"
        ));
    }
    let mut used = [0u8; 8];
    used.copy_from_slice(&head[40..48]);
    let used = u64::from_le_bytes(used);
    if used < SQUASHFS_SUPERBLOCK {
        return Some(format!(
            "has a corrupt superblock: it says {used} bytes are used, less than the superblock itself"
        ));
    }
    (used > size).then(|| {
        format!(
            "is truncated: its superblock says {used} bytes, the file has {size}; copy or build it again"
        )
    })
}

fn qcow2_problem(head: &[u8], size: u64) -> Option<String> {
    if size < QCOW2_HEADER || head.len() < QCOW2_HEADER as usize {
        return Some(format!(
            "is truncated: {size} bytes, less than a qcow2 header ({QCOW2_HEADER})"
        ));
    }
    let version = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
    (!matches!(version, 2 | 3))
        .then(|| format!("is a qcow2 disk of version {version}; the clients read versions 2 and 3"))
}

/// Decodes the tarball at `path` far enough to read its first header (checksummed).
fn tar_problem(path: &Path) -> Option<String> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => return Some(format!("cannot read: {e}")),
    };
    let (mut archive, what) = match open_tarball(file, path) {
        Ok(a) => a,
        Err(e) => return Some(e.problem),
    };
    let mut entries = match archive.entries() {
        Ok(e) => e,
        Err(e) => return Some(format!("is not a tarball ({what}): {e}")),
    };
    match entries.next() {
        Some(Ok(_)) => None,
        Some(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => Some(format!(
            "is truncated: its {what} data ends before the first tar header"
        )),
        Some(Err(e)) => Some(format!("is not a tarball ({what} data): {e}")),
        None => Some(format!("is an empty tarball ({what}): it holds no files")),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A squashfs superblock (version 4) saying the file is `len` bytes, padded to `len`.
    pub(crate) fn squashfs_bytes(len: usize, tag: &[u8]) -> Vec<u8> {
        let mut v = vec![0u8; len.max(SQUASHFS_SUPERBLOCK as usize)];
        v[..4].copy_from_slice(b"hsqs");
        v[28..30].copy_from_slice(&4u16.to_le_bytes());
        let total = v.len() as u64;
        v[40..48].copy_from_slice(&total.to_le_bytes());
        let at = SQUASHFS_SUPERBLOCK as usize;
        let n = tag.len().min(v.len() - at);
        v[at..at + n].copy_from_slice(&tag[..n]);
        v
    }

    /// A qcow2 header of `version`, padded to 512 bytes.
    pub(crate) fn qcow2_bytes(version: u32) -> Vec<u8> {
        let mut v = vec![0u8; 512];
        v[..4].copy_from_slice(b"QFI\xfb");
        v[4..8].copy_from_slice(&version.to_be_bytes());
        v
    }

    fn tar_xz(files: &[(&str, &[u8])]) -> Vec<u8> {
        let xz = liblzma::write::XzEncoder::new(Vec::new(), 1);
        let mut tar = tar::Builder::new(xz);
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            tar.append_data(&mut h, name, *data).unwrap();
        }
        tar.into_inner().unwrap().finish().unwrap()
    }

    fn problem(kind: RootfsKind, bytes: &[u8]) -> Option<String> {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("f");
        std::fs::write(&path, bytes).unwrap();
        check_rootfs(kind, &path).err().map(|e| e.problem)
    }

    #[test]
    fn good_files_pass() {
        assert_eq!(
            problem(RootfsKind::Squashfs, &squashfs_bytes(4096, b"x")),
            None
        );
        assert_eq!(problem(RootfsKind::DiskKvm, &qcow2_bytes(3)), None);
        assert_eq!(
            problem(RootfsKind::RootTarXz, &tar_xz(&[("bin/sh", b"#!")])),
            None
        );
    }

    #[test]
    fn empty_and_foreign_files_are_named_for_what_they_are() {
        let empty = problem(RootfsKind::Squashfs, b"").unwrap();
        assert!(empty.contains("is empty (0 bytes)"), "{empty}");
        let png = problem(RootfsKind::Squashfs, b"\x89PNG\r\n\x1a\nrest").unwrap();
        assert!(
            png.contains("not a squashfs image") && png.contains("PNG"),
            "{png}"
        );
        let html = problem(RootfsKind::DiskKvm, b"<!DOCTYPE html><p>404</p>").unwrap();
        assert!(html.contains("an HTML page"), "{html}");
        let squash_as_disk = problem(RootfsKind::DiskKvm, &squashfs_bytes(200, b"")).unwrap();
        assert!(
            squash_as_disk.contains("a squashfs image"),
            "{squash_as_disk}"
        );
        let gz_root = problem(RootfsKind::RootTarXz, &[0x1f, 0x8b, 8, 0]).unwrap();
        assert!(gz_root.contains("gzip data"), "{gz_root}");
    }

    #[test]
    fn truncated_or_wrong_versions_are_refused() {
        let mut cut = squashfs_bytes(8192, b"");
        cut.truncate(4000);
        let e = problem(RootfsKind::Squashfs, &cut).unwrap();
        assert!(
            e.contains("superblock says 8192 bytes, the file has 4000"),
            "{e}"
        );
        let e = problem(RootfsKind::Squashfs, b"hsqs tiny").unwrap();
        assert!(e.contains("less than a squashfs superblock"), "{e}");
        let e = problem(RootfsKind::DiskKvm, &qcow2_bytes(1)).unwrap();
        assert!(e.contains("version 1"), "{e}");
        let full = tar_xz(&[("bin/sh", &[7u8; 2000])]);
        let e = problem(RootfsKind::RootTarXz, &full[..20]).unwrap();
        assert!(
            e.contains("truncated") || e.contains("not a tarball"),
            "{e}"
        );
        let e = problem(RootfsKind::RootTarXz, &tar_xz(&[])).unwrap();
        assert!(e.contains("holds no files"), "{e}");
    }

    #[test]
    fn unified_tarballs_are_tarballs() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("u");
        std::fs::write(&path, tar_xz(&[("metadata.yaml", b"a: b")])).unwrap();
        check_unified(&path).unwrap();
        std::fs::write(&path, b"").unwrap();
        assert!(check_unified(&path).unwrap_err().problem.contains("empty"));
        std::fs::write(&path, squashfs_bytes(100, b"")).unwrap();
        let e = check_unified(&path).unwrap_err().to_string();
        assert!(e.contains("a squashfs image") && e.contains("/u: "), "{e}");
    }

    /// LXC's metadata tarball is told by what it holds: `config`, and no metadata.yaml.
    #[test]
    fn lxc_metadata_is_told_by_its_content() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("m");
        let check = |bytes: Vec<u8>| {
            std::fs::write(&path, bytes).unwrap();
            check_lxc_meta(&path).map_err(|e| e.problem)
        };
        check(tar_xz(&[
            ("config", b"lxc.arch = x86_64"),
            ("create-message", b"hi"),
        ]))
        .unwrap();
        check(tar_xz(&[("./config", b"lxc.arch = x86_64")])).unwrap();
        let e = check(tar_xz(&[("metadata.yaml", b"a: b"), ("config", b"")])).unwrap_err();
        assert!(e.contains("LXD or Incus metadata tarball"), "{e}");
        let e = check(tar_xz(&[("create-message", b"hi")])).unwrap_err();
        assert!(e.contains("holds no `config`"), "{e}");
        let e = check(squashfs_bytes(100, b"")).unwrap_err();
        assert!(e.contains("a squashfs image"), "{e}");
        assert!(check(Vec::new()).unwrap_err().contains("empty"));
    }
}
