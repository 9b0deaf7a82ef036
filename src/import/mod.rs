//! `import`: images as `incus image export`, `lxc image export` and distrobuilder produce them —
//! split (a metadata tarball plus a squashfs, a root tarball or a qcow2) or unified (one tarball
//! holding metadata.yaml, templates/ and rootfs/ or rootfs.img) — placed into the layout
//! `images/<os>/<release>/<arch>/<variant>/<YYYYMMDD_HH:MM>/` under the standard names.
//!
//! A unified tarball is split in one pass into a metadata tarball (everything but the rootfs)
//! and a root.tar.xz of the rootfs with paths relative to it, keeping ownership, modes, extended
//! attributes, device nodes and hard links; a gzip original is kept as `incus_combined.tar.gz`.
//! Every file lands through a temp file in its destination folder, hashed on the way.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::format::arch::debian_arch;
use crate::format::{Family, RootfsKind, VersionName};
use crate::hash::bulk::DirectWriter;
use crate::hash::{HashCache, HashError, KnownDigest, MetaPrefix};
use crate::image::metadata::{self, ImageMetadata, InspectError};
use crate::tree::atomic::HashedTemp;
use crate::tree::{FileRole, FileSig};

mod aliases;
mod unified;

pub use aliases::{add_product_aliases, check_aliases};
use unified::import_unified;
#[cfg(test)]
use unified::xz_on_threads;

/// Largest metadata.yaml accepted, as for metadata tarballs.
const MAX_METADATA_YAML: u64 = 1 << 20;

/// An import that failed.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// A file cannot be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// An input is not what it must be.
    #[error(transparent)]
    Inspect(#[from] InspectError),
    /// The inputs do not make an image.
    #[error("{0}")]
    Input(String),
    /// The version folder holds a different image already.
    #[error("{} already holds a different {what}; remove it first, or import as another variant (--variant)", dir.display())]
    Clash {
        /// The version folder.
        dir: PathBuf,
        /// Which file differs.
        what: String,
    },
}

/// What an import did.
#[derive(Debug, PartialEq, Eq)]
pub enum Imported {
    /// New files were placed in this version folder.
    New(PathBuf),
    /// The same image was already there; nothing changed.
    AlreadyThere(PathBuf),
}

/// What to import.
pub struct ImportRequest<'a> {
    /// The tree (its `images/` is written).
    pub target: &'a Path,
    /// One unified tarball, or a metadata tarball and a rootfs/disk; either may come with
    /// classic LXC's metadata tarball (placed as `meta.tar.xz`, the LXC pair with the root
    /// tarball).
    pub files: &'a [PathBuf],
    /// Variant instead of metadata.yaml's (default `default`).
    pub variant: Option<&'a str>,
    /// Where the digests computed while copying are recorded, so the publish reads nothing.
    pub hash_cache: &'a crate::hash::CacheDir,
    /// Set to the bytes the import reads and advanced as it reads them (a hidden bar for no
    /// display).
    pub progress: &'a indicatif::ProgressBar,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ImportError + '_ {
    move |source| ImportError::Io {
        path: path.to_owned(),
        source,
    }
}

fn hash_error(e: HashError) -> ImportError {
    match e {
        HashError::Read { path, source } | HashError::Write { path, source } => {
            ImportError::Io { path, source }
        }
        other => ImportError::Input(other.to_string()),
    }
}

/// What an import source file is, by its first bytes (the image check's own table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Data {
    Squashfs,
    Qcow2,
    XzTarball,
    Tarball,
}

fn sniff(path: &Path) -> Result<Data, ImportError> {
    use crate::image::check::{self, Format};
    let mut head = Vec::with_capacity(512);
    let f = std::fs::File::open(path).map_err(io(path))?;
    f.take(512).read_to_end(&mut head).map_err(io(path))?;
    Ok(match check::sniff(&head) {
        Some(Format::Squashfs) => Data::Squashfs,
        Some(Format::Qcow2) => Data::Qcow2,
        Some(Format::Xz) => Data::XzTarball,
        Some(Format::Gzip | Format::Zstd | Format::Tar) => Data::Tarball,
        None => {
            return Err(ImportError::Input(format!(
                "{}: neither squashfs, qcow2 nor a tarball",
                path.display()
            )));
        }
    })
}

/// A path segment of the layout made from a metadata property.
fn segment(value: &str, what: &str, source: &Path) -> Result<String, ImportError> {
    let v = value.trim();
    let ok = !v.is_empty()
        && !v.starts_with('.')
        && !v
            .chars()
            .any(|c| c == '/' || c == '\\' || c == ',' || c.is_whitespace() || c.is_control());
    if ok {
        Ok(v.to_owned())
    } else {
        Err(ImportError::Input(format!(
            "{}: metadata.yaml property `{what}` is `{value}`, which cannot name a folder; set it in metadata.yaml (or --variant)",
            source.display()
        )))
    }
}

/// Where an image goes in the layout, from its metadata.
pub fn version_dir(
    target: &Path,
    meta: &ImageMetadata,
    variant: Option<&str>,
    source: &Path,
) -> Result<PathBuf, ImportError> {
    let prop = |k: &str| meta.properties.get(k).map(String::as_str).unwrap_or("");
    let os = segment(&prop("os").to_lowercase(), "os", source)?;
    let release = segment(prop("release"), "release", source)?;
    let arch = debian_arch(&meta.architecture).ok_or_else(|| {
        ImportError::Input(format!(
            "{}: metadata.yaml architecture `{}` is not one LXD or Incus knows",
            source.display(),
            meta.architecture
        ))
    })?;
    let variant = segment(
        variant.unwrap_or(match prop("variant") {
            "" => "default",
            v => v,
        }),
        "variant",
        source,
    )?;
    if meta.creation_date <= 0 {
        return Err(ImportError::Input(format!(
            "{}: metadata.yaml has no creation_date, which names the version",
            source.display()
        )));
    }
    let at = jiff::Timestamp::from_second(meta.creation_date)
        .map_err(|e| ImportError::Input(format!("{}: creation_date: {e}", source.display())))?
        .to_zoned_datetime(jiff::tz::TimeZone::UTC)
        .datetime();
    let version = VersionName::from_datetime(at);
    Ok(target
        .join(crate::tree::names::LAYOUT_ROOT)
        .join(os)
        .join(release)
        .join(arch)
        .join(variant)
        .join(version.as_str()))
}

/// A file being written into a version folder: a hidden temp file, renamed at the end.
type Landing = HashedTemp;

fn landing(dir: &Path) -> Result<Landing, ImportError> {
    HashedTemp::new(dir, crate::tree::names::IMPORT_PREFIX).map_err(io(dir))
}

fn finish(landing: Landing) -> Result<(tempfile::NamedTempFile, String), ImportError> {
    finish_with_state(landing).map(|(tmp, sha, _)| (tmp, sha))
}

/// Also gives the sha256 state after the last byte, to seed a combined hash.
fn finish_with_state(
    landing: Landing,
) -> Result<(tempfile::NamedTempFile, String, Sha256), ImportError> {
    let path = landing.path().to_owned();
    let (tmp, sha) = landing.seal().map_err(io(&path))?;
    Ok((tmp, hex::encode(sha.clone().finalize()), sha))
}

/// Copies `src` into a landing in `dir`, hashing it; also gives the sha256 state after it.
fn land_copy(
    src: &Path,
    dir: &Path,
) -> Result<(tempfile::NamedTempFile, String, Sha256), ImportError> {
    let mut landing = landing(dir)?;
    let mut f =
        std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(src).map_err(io(src))?);
    std::io::copy(&mut f, &mut landing).map_err(io(src))?;
    finish_with_state(landing)
}

/// Copies a large file (a rootfs, a disk, a unified tarball) into a temp file in `dir`,
/// writing it direct to the disk where it can ([`DirectWriter`]) and reading it once for its
/// sha256 and for sha256(prefix ‖ it) for each of `prefixes` (sha256 states after a metadata
/// tarball); the read, the write and the hashes run on their own threads.
fn land_bulk(
    src: &Path,
    dir: &Path,
    prefixes: Vec<Sha256>,
    progress: &indicatif::ProgressBar,
) -> Result<(tempfile::NamedTempFile, String, Vec<String>), ImportError> {
    let tmp = landing(dir)?.into_file();
    let path = tmp.path().to_owned();
    let mut out = DirectWriter::new(tmp.as_file());
    let (sha, combined) =
        crate::hash::copy_with_prefixes(src, &mut out, &path, prefixes, &|n| progress.inc(n))
            .map_err(hash_error)?;
    tracing::debug!(
        "{}: wrote {} bytes, {} of them direct",
        path.display(),
        out.written(),
        out.written_direct()
    );
    crate::tree::atomic::seal(&tmp).map_err(io(&path))?;
    Ok((tmp, sha, combined))
}

/// Puts the digests computed while copying into the product's hash cache (the version folder's
/// parent), so that the publish after the import reads neither file again. A failure only costs
/// that re-read.
fn record_digests(
    caches: &crate::hash::CacheDir,
    dir: &Path,
    (data, data_sha): (&Path, &str),
    (meta, meta_sha, metadata, state): (&Path, &str, ImageMetadata, Sha256),
    combined: String,
) {
    let name = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let (Some(product), Ok(data_sig), Ok(meta_sig)) =
        (dir.parent(), FileSig::read(data), FileSig::read(meta))
    else {
        return;
    };
    let known = KnownDigest {
        version: name(dir),
        file: name(data),
        sig: data_sig,
        sha256: data_sha.to_owned(),
        combined: vec![(
            MetaPrefix {
                name: name(meta),
                sig: meta_sig,
                sha256: meta_sha.to_owned(),
                metadata,
                state,
            },
            combined,
        )],
    };
    if let Err(e) = HashCache::record(caches, product, &[known]) {
        tracing::warn!(
            "cannot record the digests of {} (the publish will hash it again): {e}",
            data.display()
        );
    }
}

/// Places `tmp` at `dest`, unless an identical file is there; errors if a different one is.
fn place(
    tmp: tempfile::NamedTempFile,
    sha: &str,
    dest: &Path,
    what: &str,
) -> Result<bool, ImportError> {
    if dest.exists() {
        let existing = crate::hash::sha256_state(dest, &|_| {})
            .map_err(|e| ImportError::Input(e.to_string()))?
            .0;
        if existing == sha {
            return Ok(false);
        }
        return Err(ImportError::Clash {
            dir: dest.parent().unwrap_or(dest).to_owned(),
            what: what.to_owned(),
        });
    }
    tmp.persist(dest).map_err(|e| ImportError::Io {
        path: dest.to_owned(),
        source: e.error,
    })?;
    // The rename is durable only once the folder is synced.
    let dir = dest.parent().unwrap_or(dest);
    crate::tree::atomic::sync_dir(dir).map_err(io(dir))?;
    Ok(true)
}

/// Imports one image (see the module docs), and classic LXC's metadata tarball when one of the
/// files is that (told by content).
pub fn import(req: &ImportRequest<'_>) -> Result<Imported, ImportError> {
    let mut lxc = Vec::new();
    let mut image = Vec::new();
    for f in req.files {
        if is_lxc_meta(f) {
            lxc.push(f.clone());
        } else {
            image.push(f.clone());
        }
    }
    // LXC's metadata is checked, and its root tarball is there, before anything is placed.
    if let [meta] = lxc.as_slice() {
        crate::image::check::check_lxc_meta(meta).map_err(|e| ImportError::Input(e.to_string()))?;
        let with_root_tarball = match image.as_slice() {
            [_] => true,
            [a, b] => [a, b]
                .iter()
                .any(|p| sniff(p).is_ok_and(|k| k == Data::XzTarball) && !is_metadata(p)),
            _ => false,
        };
        if !image.is_empty() && !with_root_tarball {
            return Err(ImportError::Input(format!(
                "{}: classic LXC takes its root filesystem from the root tarball (rootfs.tar.xz), which this import does not have: import the image with its root tarball, or a unified tarball",
                meta.display()
            )));
        }
    }
    let imported = match (image.as_slice(), lxc.as_slice()) {
        ([one], [] | [_]) => import_unified(req, one)?,
        ([a, b], [] | [_]) => import_split(req, a, b)?,
        ([], [_]) => {
            return Err(ImportError::Input(format!(
                "{}: classic LXC's metadata tarball names no product or version; import it with the LXD or Incus image of the same build (its metadata tarball and root tarball)",
                lxc[0].display()
            )));
        }
        _ => {
            return Err(ImportError::Input(
                "import takes one unified tarball, or a metadata tarball and a rootfs, and optionally classic LXC's meta.tar.xz".into(),
            ));
        }
    };
    match lxc.as_slice() {
        [meta] => place_lxc_meta(meta, imported),
        _ => Ok(imported),
    }
}

/// Larger than any metadata tarball (they hold metadata.yaml, a few templates, LXC's config):
/// a larger file is a rootfs or a unified tarball, and is never listed to tell which metadata
/// it holds.
const MAX_METADATA_TARBALL: u64 = 64 << 20;

/// Which metadata the small tarball at `path` holds (`None` for a large file or none).
fn small_metadata_kind(path: &Path) -> Option<crate::image::check::MetadataKind> {
    let small = std::fs::metadata(path).is_ok_and(|m| m.len() <= MAX_METADATA_TARBALL);
    small
        .then(|| crate::image::check::metadata_kind(path).ok())
        .flatten()
}

/// True when `path` is an LXD or Incus metadata tarball (it holds metadata.yaml).
fn is_metadata(path: &Path) -> bool {
    small_metadata_kind(path) == Some(crate::image::check::MetadataKind::LxdOrIncus)
}

/// True when `path` is classic LXC's metadata tarball (by what it holds, with or without the
/// `config` the download template needs).
fn is_lxc_meta(path: &Path) -> bool {
    use crate::image::check::MetadataKind;
    matches!(
        small_metadata_kind(path),
        Some(MetadataKind::Lxc | MetadataKind::LxcWithoutConfig)
    )
}

/// Places LXC's metadata tarball beside the root tarball of the version just imported.
fn place_lxc_meta(meta: &Path, imported: Imported) -> Result<Imported, ImportError> {
    let dir = match &imported {
        Imported::New(d) | Imported::AlreadyThere(d) => d.as_path(),
    };
    // The template fetches `<folder>/rootfs.tar.xz`, under that name only.
    if !dir
        .join(FileRole::Rootfs(RootfsKind::RootTarXz).file_name())
        .is_file()
    {
        return Err(ImportError::Input(format!(
            "{}: classic LXC needs the root tarball beside its metadata, and {} holds none (import the image with its root tarball, not a squashfs)",
            meta.display(),
            dir.display()
        )));
    }
    let (tmp, sha, _) = land_copy(meta, dir)?;
    let name = FileRole::LxcMeta.file_name();
    let new = place(tmp, &sha, &dir.join(name), name)?;
    Ok(match imported {
        Imported::AlreadyThere(d) if new => Imported::New(d),
        other => other,
    })
}

fn import_split(req: &ImportRequest<'_>, a: &Path, b: &Path) -> Result<Imported, ImportError> {
    let (ka, kb) = (sniff(a)?, sniff(b)?);
    let is_data = |k: Data| matches!(k, Data::Squashfs | Data::Qcow2);
    // The metadata is the tarball; of two tarballs, the one whose name says so, else the smaller.
    let (meta_path, data_path, data) = match (is_data(ka), is_data(kb)) {
        (false, true) => (a, b, kb),
        (true, false) => (b, a, ka),
        (true, true) => {
            return Err(ImportError::Input(format!(
                "neither {} nor {} is a metadata tarball",
                a.display(),
                b.display()
            )));
        }
        (false, false) => {
            let named = |p: &Path| {
                let n = p
                    .file_name()
                    .map(|n| n.to_string_lossy().to_lowercase())
                    .unwrap_or_default();
                n.starts_with("meta") || n.starts_with("incus") || n.starts_with("lxd")
            };
            let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(u64::MAX);
            if named(a) && !named(b) || (named(a) == named(b) && size(a) <= size(b)) {
                (a, b, kb)
            } else {
                (b, a, ka)
            }
        }
    };
    let meta = metadata::read_metadata(
        std::io::BufReader::new(std::fs::File::open(meta_path).map_err(io(meta_path))?),
        meta_path,
    )?;
    let dir = version_dir(req.target, &meta, req.variant, meta_path)?;
    let kind = match data {
        Data::Squashfs => RootfsKind::Squashfs,
        Data::Qcow2 => RootfsKind::DiskKvm,
        Data::XzTarball => RootfsKind::RootTarXz,
        Data::Tarball => {
            return Err(ImportError::Input(format!(
                "{}: a root tarball must be xz-compressed (the ftype is root.tar.xz); recompress it with xz",
                data_path.display()
            )));
        }
    };
    crate::image::check::check_rootfs(kind, data_path)
        .map_err(|e| ImportError::Input(e.to_string()))?;
    let rootfs_name = FileRole::Rootfs(kind).file_name();
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).map_err(io(p));
    let meta_size = size(meta_path)?;
    req.progress.set_length(meta_size + size(data_path)?);
    req.progress.set_position(0);
    let (meta_tmp, meta_sha, meta_state) = land_copy(meta_path, &dir)?;
    req.progress.inc(meta_size);
    // A VM's own metadata beside a container's: keep both, the VM's paired with the disk only.
    let container_meta = dir.join(FileRole::meta(Family::Incus).file_name());
    let meta_dest = if data == Data::Qcow2
        && container_meta.exists()
        && crate::hash::sha256_state(&container_meta, &|_| {})
            .map(|h| h.0)
            .ok()
            .as_deref()
            != Some(meta_sha.as_str())
    {
        dir.join(FileRole::vm_meta(Family::Incus).file_name())
    } else {
        container_meta
    };
    let (data_tmp, data_sha, combined) =
        land_bulk(data_path, &dir, vec![meta_state.clone()], req.progress)?;
    let combined = combined.into_iter().next().unwrap_or_default();
    let data_dest = dir.join(rootfs_name);
    let new_data = place(data_tmp, &data_sha, &data_dest, rootfs_name)?;
    let new_meta = place(meta_tmp, &meta_sha, &meta_dest, "metadata tarball")?;
    // Either placed or found identical: the digests are those of the files now in place.
    record_digests(
        req.hash_cache,
        &dir,
        (&data_dest, &data_sha),
        (&meta_dest, &meta_sha, meta, meta_state),
        combined,
    );
    Ok(if new_data || new_meta {
        Imported::New(dir)
    } else {
        Imported::AlreadyThere(dir)
    })
}

/// The images found under `src`: unified tarballs alone, and a metadata tarball with the
/// rootfs files beside it. Folders are walked in name order; hidden entries are skipped.
pub fn find_images(src: &Path) -> Result<Vec<Vec<PathBuf>>, ImportError> {
    let mut out = Vec::new();
    let mut dirs = vec![src.to_owned()];
    while let Some(dir) = dirs.pop() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(io(&dir))?
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .map(|e| e.path())
            .collect();
        entries.sort();
        let mut metas = Vec::new();
        let mut datas = Vec::new();
        let mut lxc = None;
        for p in entries {
            if p.is_dir() {
                dirs.push(p);
                continue;
            }
            let Ok(kind) = sniff(&p) else { continue };
            // distrobuilder's output folder: pack-lxc's pair beside the LXD/Incus image.
            use crate::image::check::MetadataKind;
            let lxc_kind = (kind == Data::XzTarball)
                .then(|| small_metadata_kind(&p))
                .flatten();
            match lxc_kind {
                Some(MetadataKind::Lxc) => {
                    lxc = Some(p);
                    continue;
                }
                Some(MetadataKind::LxcWithoutConfig) => {
                    tracing::warn!(
                        "{}: classic LXC's metadata without `config` is not imported (lxc-create -t download refuses it)",
                        p.display()
                    );
                    continue;
                }
                _ => {}
            }
            match kind {
                Data::Squashfs | Data::Qcow2 => datas.push(p),
                Data::XzTarball | Data::Tarball => {
                    let name = p
                        .file_name()
                        .map(|n| n.to_string_lossy().to_lowercase())
                        .unwrap_or_default();
                    if name.starts_with("meta")
                        || name.starts_with("incus")
                        || name.starts_with("lxd")
                    {
                        metas.push(p);
                    } else if name.starts_with("rootfs") || name.starts_with("root.") {
                        datas.push(p);
                    } else {
                        out.push(vec![p]);
                    }
                }
            }
        }
        let is_root_tarball = |d: &PathBuf| sniff(d).is_ok_and(|k| k == Data::XzTarball);
        match (metas.len(), datas.len()) {
            (0, _) => {}
            (1, _) => out.extend(datas.into_iter().map(|d| {
                let mut group = vec![metas[0].clone(), d];
                if let Some(l) = lxc.as_ref().filter(|_| is_root_tarball(&group[1])) {
                    group.push(l.clone());
                }
                group
            })),
            _ => {
                return Err(ImportError::Input(format!(
                    "{}: {} metadata tarballs in one folder; import them one by one",
                    dir.display(),
                    metas.len()
                )));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const YAML: &str = "architecture: x86_64\ncreation_date: 1735725600\nproperties:\n  os: Alpine\n  release: \"3.21\"\n";

    /// A tarball of `entries` (name, bytes), xz- or gzip-compressed.
    fn tarball(entries: &[(&str, &[u8])], gzip: bool) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        for (name, bytes) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(bytes.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            tar.append_data(&mut h, name, *bytes).unwrap();
        }
        let raw = tar.into_inner().unwrap();
        if gzip {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&raw).unwrap();
            gz.finish().unwrap()
        } else {
            let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 1);
            xz.write_all(&raw).unwrap();
            xz.finish().unwrap()
        }
    }

    /// Imports `files` with a hidden bar; gives (bar length, bar position).
    fn import_counting(dir: &Path, files: &[PathBuf]) -> (Option<u64>, u64) {
        let bar = indicatif::ProgressBar::hidden();
        import(&ImportRequest {
            target: &dir.join("tree"),
            files,
            variant: None,
            hash_cache: &crate::hash::CacheDir::new(dir.join("caches")),
            progress: &bar,
        })
        .unwrap();
        (bar.length(), bar.position())
    }

    #[test]
    fn the_progress_covers_every_byte_read() {
        let dir = tempfile::tempdir().unwrap();
        let meta = dir.path().join("meta.tar.xz");
        std::fs::write(&meta, tarball(&[("metadata.yaml", YAML.as_bytes())], false)).unwrap();
        let rootfs = dir.path().join("rootfs.squashfs");
        let squashfs = crate::image::check::tests::squashfs_bytes(5 << 20, &[0x42; 64]);
        std::fs::write(&rootfs, &squashfs).unwrap();
        let total = std::fs::metadata(&meta).unwrap().len() + squashfs.len() as u64;
        assert_eq!(
            import_counting(dir.path(), &[meta, rootfs]),
            (Some(total), total)
        );

        // A gzip unified tarball is read twice: split, then kept whole.
        let unified = dir.path().join("unified.tar.gz");
        let yaml = YAML.replace("3.21", "3.22");
        let bytes = tarball(
            &[
                ("metadata.yaml", yaml.as_bytes()),
                ("rootfs/etc/hostname", b"x\n"),
            ],
            true,
        );
        std::fs::write(&unified, &bytes).unwrap();
        let twice = 2 * bytes.len() as u64;
        assert_eq!(
            import_counting(dir.path(), &[unified]),
            (Some(twice), twice)
        );
    }

    /// The root.tar.xz of a unified tarball must not depend on the machine that split it, or a
    /// second import elsewhere would clash with the first.
    #[test]
    fn the_xz_of_a_root_tarball_does_not_depend_on_the_thread_count() {
        // Two of liblzma's 24 MiB blocks at preset 6.
        let data: Vec<u8> = (0..(30u32 << 20))
            .map(|i| (i / 4096 % 251) as u8 ^ (i % 7) as u8)
            .collect();
        let compress = |threads| {
            let mut xz = xz_on_threads(Vec::new(), threads).unwrap();
            xz.write_all(&data).unwrap();
            xz.finish().unwrap()
        };
        let one = compress(1);
        assert_eq!(one, compress(3));
        let mut back = Vec::new();
        liblzma::read::XzDecoder::new_multi_decoder(&one[..])
            .read_to_end(&mut back)
            .unwrap();
        assert!(back == data);
    }

    /// distrobuilder's output folder (an Incus image in two rootfs forms, and pack-lxc's pair):
    /// both images are found, LXC's metadata goes with the root tarball, and lands as
    /// `meta.tar.xz` beside it; alone it names no version.
    #[test]
    fn lxc_metadata_comes_with_the_root_tarball() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        let w = |name: &str, bytes: Vec<u8>| {
            std::fs::write(out.join(name), bytes).unwrap();
            out.join(name)
        };
        let incus = w(
            "incus.tar.xz",
            tarball(&[("metadata.yaml", YAML.as_bytes())], false),
        );
        let squashfs = w(
            "rootfs.squashfs",
            crate::image::check::tests::squashfs_bytes(4096, b"s"),
        );
        let root = w("rootfs.tar.xz", tarball(&[("etc/hostname", b"x\n")], false));
        let lxc = w(
            "meta.tar.xz",
            tarball(
                &[
                    ("config", b"lxc.arch = x86_64\n"),
                    ("create-message", b"hi"),
                ],
                false,
            ),
        );
        let mut found = find_images(&out).unwrap();
        found.sort();
        assert_eq!(
            found,
            [
                vec![incus.clone(), squashfs.clone()],
                vec![incus.clone(), root.clone(), lxc.clone()]
            ]
        );
        let tree = dir.path().join("tree");
        let run = |files: &[PathBuf]| {
            import(&ImportRequest {
                target: &tree,
                files,
                variant: None,
                hash_cache: &crate::hash::CacheDir::new(dir.path().join("caches")),
                progress: &indicatif::ProgressBar::hidden(),
            })
        };
        let Imported::New(v) = run(&[lxc.clone(), incus.clone(), root.clone()]).unwrap() else {
            panic!("nothing imported");
        };
        assert_eq!(
            std::fs::read(v.join("meta.tar.xz")).unwrap(),
            std::fs::read(&lxc).unwrap()
        );
        assert_eq!(
            run(&[incus.clone(), root.clone(), lxc.clone()]).unwrap(),
            Imported::AlreadyThere(v.clone())
        );
        let e = run(std::slice::from_ref(&lxc)).unwrap_err().to_string();
        assert!(e.contains("names no product or version"), "{e}");
        let e = run(&[incus.clone(), squashfs, lxc])
            .unwrap_err()
            .to_string();
        assert!(e.contains("from the root tarball"), "{e}");
    }
}
