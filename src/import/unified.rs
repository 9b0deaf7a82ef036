//! Importing a unified tarball: split in one pass into a metadata tarball (everything but the
//! rootfs) and a root.tar.xz of the rootfs with paths relative to it (or the VM's disk), keeping
//! ownership, modes, extended attributes, device nodes and hard links; a gzip original is kept
//! as the version's unified item. A re-import of the same gzip tarball is recognised by it.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use super::{
    ImportError, ImportRequest, Imported, Landing, MAX_METADATA_YAML, finish, hash_error, io,
    land_bulk, landing, place, version_dir,
};
use crate::format::{Family, RootfsKind};
use crate::image::metadata;
use crate::tree::FileRole;

fn strip_rootfs(path: &str) -> Option<String> {
    let p = path.strip_prefix("./").unwrap_or(path);
    let rest = p.strip_prefix("rootfs")?;
    match rest {
        "" | "/" => Some("./".into()),
        r if r.starts_with('/') => Some(r[1..].to_owned()),
        _ => None,
    }
}

/// The xz encoder of a root tarball split out of a unified one: liblzma's multi-threaded
/// encoder at xz's default preset (6), on up to 4 threads (about 130 MiB of memory each).
/// Its output depends on the preset and the block size, not on the number of threads, so the
/// same unified tarball gives the same root.tar.xz on any machine.
fn root_xz<W: Write>(out: W) -> Result<liblzma::write::XzEncoder<W>, ImportError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    xz_on_threads(out, threads as u32)
}

pub(super) fn xz_on_threads<W: Write>(
    out: W,
    threads: u32,
) -> Result<liblzma::write::XzEncoder<W>, ImportError> {
    let stream = liblzma::stream::MtStreamBuilder::new()
        .preset(6)
        .threads(threads)
        .check(liblzma::stream::Check::Crc64)
        .encoder()
        .map_err(|e| ImportError::Input(format!("cannot start the xz encoder: {e}")))?;
    Ok(liblzma::write::XzEncoder::new_stream(out, stream))
}

/// The version folder a gzip unified tarball names, when it was imported before: its original
/// is there byte for byte, beside the metadata tarball and the rootfs or disk split from it.
/// Splitting again (xz of the whole rootfs, minutes for a large image) is then skipped.
fn already_split(req: &ImportRequest<'_>, src: &Path) -> Result<Option<PathBuf>, ImportError> {
    let file = std::io::BufReader::new(std::fs::File::open(src).map_err(io(src))?);
    let meta = metadata::read_metadata(file, src)?;
    let dir = version_dir(req.target, &meta, req.variant, src)?;
    let original = dir.join(FileRole::Unified(Family::Incus).file_name());
    let split = dir
        .join(FileRole::meta(Family::Incus).file_name())
        .is_file()
        && [RootfsKind::RootTarXz, RootfsKind::DiskKvm]
            .iter()
            .any(|&kind| dir.join(FileRole::Rootfs(kind).file_name()).is_file());
    let same_size = |a: &Path, b: &Path| match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.len() == b.len(),
        _ => false,
    };
    if !split || !same_size(&original, src) {
        return Ok(None);
    }
    let sha = |p: &Path| {
        crate::hash::sha256_state(p, &|_| {})
            .map(|(hex, _)| hex)
            .map_err(hash_error)
    };
    Ok((sha(&original)? == sha(src)?).then_some(dir))
}

pub(super) fn import_unified(req: &ImportRequest<'_>, src: &Path) -> Result<Imported, ImportError> {
    let gzip = sniff_gzip(src)?;
    if gzip && let Some(dir) = already_split(req, src)? {
        return Ok(Imported::AlreadyThere(dir));
    }
    // Read once to split it, and a gzip original once more to keep it.
    let src_size = std::fs::metadata(src).map(|m| m.len()).map_err(io(src))?;
    req.progress
        .set_length(if gzip { 2 * src_size } else { src_size });
    req.progress.set_position(0);
    let split = split(req, src)?;
    place_split(req, src, split, gzip)
}

/// A unified tarball split into temp files: the metadata tarball, and the rootfs as a root
/// tarball or the VM's disk.
struct Split {
    meta: Landing,
    root: Landing,
    disk: Option<Landing>,
    /// Its metadata.yaml.
    yaml: String,
}

/// Splits the unified tarball `src` in one pass into temp files in a staging folder of the
/// target (the version folder is known only once metadata.yaml has been read).
fn split(req: &ImportRequest<'_>, src: &Path) -> Result<Split, ImportError> {
    let staging_parent = req.target.join(crate::tree::names::LAYOUT_ROOT);
    let mut meta_out = landing(&staging_parent)?;
    let mut root_out = landing(&staging_parent)?;
    let mut disk_out: Option<Landing> = None;
    let mut yaml: Option<String> = None;
    let mut has_rootfs = false;
    {
        let file = std::io::BufReader::with_capacity(
            1 << 20,
            req.progress
                .wrap_read(std::fs::File::open(src).map_err(io(src))?),
        );
        let (mut archive, what) = metadata::open_tarball(file, src)?;
        let mut meta_tar = tar::Builder::new(liblzma::write::XzEncoder::new(&mut meta_out, 6));
        let mut root_tar = tar::Builder::new(root_xz(&mut root_out)?);
        meta_tar.mode(tar::HeaderMode::Complete);
        root_tar.mode(tar::HeaderMode::Complete);
        let bad = |e: std::io::Error| {
            ImportError::Input(format!("{}: corrupt {what} tarball: {e}", src.display()))
        };
        for entry in archive.entries().map_err(bad)? {
            let mut entry = entry.map_err(bad)?;
            let name = entry.path().map_err(bad)?.to_string_lossy().into_owned();
            let parts = crate::image::unified::EntryParts::of(&mut entry).map_err(bad)?;
            let plain = name.strip_prefix("./").unwrap_or(&name);
            if plain == "rootfs.img" {
                let mut disk = landing(&staging_parent)?;
                std::io::copy(&mut entry, &mut disk).map_err(bad)?;
                disk_out = Some(disk);
                has_rootfs = true;
                continue;
            }
            if let Some(rel) = strip_rootfs(&name) {
                has_rootfs = true;
                // A hard link into rootfs/ becomes relative to it, like the entries.
                let in_rootfs =
                    |target: &str| strip_rootfs(target).unwrap_or_else(|| target.to_owned());
                parts
                    .append(&mut root_tar, &rel, &mut entry, in_rootfs)
                    .map_err(io(src))?;
                continue;
            }
            if plain == "metadata.yaml" {
                if entry.size() > MAX_METADATA_YAML {
                    return Err(ImportError::Input(format!(
                        "{}: metadata.yaml is larger than 1 MiB",
                        src.display()
                    )));
                }
                let mut text = String::new();
                entry.read_to_string(&mut text).map_err(bad)?;
                let mut header = parts.header;
                meta_tar
                    .append_data(&mut header, &name, text.as_bytes())
                    .map_err(io(src))?;
                yaml = Some(text);
                continue;
            }
            parts
                .append(&mut meta_tar, &name, &mut entry, str::to_owned)
                .map_err(io(src))?;
        }
        meta_tar
            .into_inner()
            .and_then(|xz| xz.finish())
            .map_err(io(src))?;
        root_tar
            .into_inner()
            .and_then(|xz| xz.finish())
            .map_err(io(src))?;
    }
    let yaml = yaml.ok_or_else(|| {
        ImportError::Input(format!(
            "{}: no metadata.yaml: not an image tarball",
            src.display()
        ))
    })?;
    if !has_rootfs {
        return Err(ImportError::Input(format!(
            "{}: neither rootfs/ nor rootfs.img: a metadata tarball alone is not an image (give its rootfs too)",
            src.display()
        )));
    }
    Ok(Split {
        meta: meta_out,
        root: root_out,
        disk: disk_out,
        yaml,
    })
}

/// Moves the split files (and a gzip original) into the version folder metadata.yaml names.
fn place_split(
    req: &ImportRequest<'_>,
    src: &Path,
    split: Split,
    gzip: bool,
) -> Result<Imported, ImportError> {
    let Split {
        meta: meta_out,
        root: root_out,
        disk: disk_out,
        yaml,
    } = split;
    let meta = metadata::parse_metadata_yaml(&yaml, src)?;
    let dir = version_dir(req.target, &meta, req.variant, src)?;
    crate::tree::atomic::create_dir_all(&dir).map_err(io(&dir))?;
    let mut changed = false;
    let (meta_tmp, meta_sha) = finish(meta_out)?;
    let (meta_name, data) = match disk_out {
        Some(disk) => {
            drop(root_out);
            (
                FileRole::meta(Family::Incus).file_name(),
                Some((
                    finish(disk)?,
                    FileRole::Rootfs(RootfsKind::DiskKvm).file_name(),
                )),
            )
        }
        None => (
            FileRole::meta(Family::Incus).file_name(),
            Some((
                finish(root_out)?,
                FileRole::Rootfs(RootfsKind::RootTarXz).file_name(),
            )),
        ),
    };
    if let Some(((tmp, sha), name)) = data {
        changed |= place(tmp, &sha, &dir.join(name), name)?;
    }
    changed |= place(
        meta_tmp,
        &meta_sha,
        &dir.join(meta_name),
        "metadata tarball",
    )?;
    // The unified original, as clients can download it whole (gzip only: the ftype's name).
    if gzip {
        let (tmp, sha, _) = land_bulk(src, &dir, Vec::new(), req.progress)?;
        changed |= place(
            tmp,
            &sha,
            &dir.join(FileRole::Unified(Family::Incus).file_name()),
            "unified tarball",
        )?;
    }
    Ok(if changed {
        Imported::New(dir)
    } else {
        Imported::AlreadyThere(dir)
    })
}

fn sniff_gzip(path: &Path) -> Result<bool, ImportError> {
    let mut head = [0u8; 2];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .map_err(io(path))?;
    Ok(n == 2 && head == [0x1f, 0x8b])
}
