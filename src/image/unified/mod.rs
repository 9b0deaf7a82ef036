//! Unified image tarballs built from split images, for LXD's and Incus' direct-URL import
//! (which only takes unified images).
//!
//! A unified tarball holds the metadata tarball's entries (`metadata.yaml`, `templates/`) and
//! then either `rootfs/…` (a container) or `rootfs.img` (a VM's qcow2). It is written as gzip,
//! the compression the `*_combined.tar.gz` ftypes are named after, and reproducibly: the same
//! split files always give the same bytes (entries in the order of the sources, headers taken
//! from them, a gzip header without name or time, a fixed compression level).
//!
//! The squashfs is read in-process (backhand): owners, modes, times, symlinks, device nodes,
//! fifos and hard links carry over, and so do the extended attributes of every entry (file
//! capabilities such as ping's `cap_net_raw`, labels on folders and links), as
//! `SCHILY.xattr.*` pax records like GNU tar writes them. backhand parses neither the xattr
//! table nor which inode each directory entry names, so `squashfs_xattrs` reads both. A
//! root.tar.xz keeps all its pax records.

mod squashfs_xattrs;

use std::collections::HashMap;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use crate::format::RootfsKind;
use crate::image::metadata;

/// The gzip level of built tarballs. Fixed, since it is part of what makes the bytes (and so
/// the fingerprint) reproducible.
const GZIP_LEVEL: u32 = 6;

/// A unified tarball that could not be built.
#[derive(Debug, thiserror::Error)]
pub enum UnifiedError {
    /// A file cannot be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The output cannot be written (disk full, …).
    #[error("cannot write the unified tarball: {0}")]
    Write(std::io::Error),
    /// An input is not what its name says.
    #[error("{}: {problem}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> UnifiedError + '_ {
    move |source| UnifiedError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes the unified tarball made of the metadata tarball `meta` and the rootfs `root` (of
/// type `kind`) to `out`, gzip-compressed. Reads each input once, streaming.
///
/// Reading (squashfs or xz decompression, tar framing) and gzip compression each take about
/// half the time, so they run on two threads, joined by a short queue of 1 MiB chunks: memory
/// stays flat and a two-core machine builds in about half the time.
pub fn write_unified(
    meta: &Path,
    root: &Path,
    kind: RootfsKind,
    out: impl Write + Send,
) -> Result<(), UnifiedError> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(CHUNKS_IN_FLIGHT);
    std::thread::scope(|scope| {
        let compressor = scope.spawn(move || -> std::io::Result<()> {
            // No file name and mtime 0 in the gzip header: the bytes depend on the content only.
            let mut gz = flate2::GzBuilder::new().write(out, flate2::Compression::new(GZIP_LEVEL));
            for chunk in rx {
                gz.write_all(&chunk)?;
            }
            gz.finish()?.flush()
        });
        let produced = (|| {
            let mut tar = tar::Builder::new(Chunks {
                tx,
                buf: Vec::with_capacity(CHUNK),
            });
            tar.mode(tar::HeaderMode::Complete);
            let metadata_mtime = copy_metadata(&mut tar, meta)?;
            match kind {
                RootfsKind::Squashfs => copy_squashfs(&mut tar, root)?,
                RootfsKind::RootTarXz => copy_root_tarball(&mut tar, root)?,
                RootfsKind::DiskKvm => copy_disk(&mut tar, root, metadata_mtime)?,
            }
            tar.into_inner().and_then(Chunks::finish).map_err(io(root))
        })();
        // The reading side has dropped its sender by now (finished or failed), so the
        // compressor sees the end of the queue. Its error explains a failed send, so it wins.
        match compressor.join() {
            Ok(Ok(())) => produced,
            Ok(Err(e)) => Err(UnifiedError::Write(e)),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Size of the chunks handed to the compressor thread.
const CHUNK: usize = 1 << 20;
/// Chunks queued between the two threads.
const CHUNKS_IN_FLIGHT: usize = 4;

/// The tar side of the queue: collects bytes into chunks and sends them.
struct Chunks {
    tx: std::sync::mpsc::SyncSender<Vec<u8>>,
    buf: Vec<u8>,
}

impl Chunks {
    fn send(&mut self) -> std::io::Result<()> {
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx.send(chunk).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the compressor stopped")
        })
    }

    /// Sends what is left.
    fn finish(mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            self.send()
        }
    }
}

impl Write for Chunks {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What a tar entry carries besides its data, read before the data: the pax records worth
/// keeping (xattrs, long or precise values; not the path ones, which the builder writes itself
/// for the new name), its header and a link's target.
pub(crate) struct EntryParts {
    pax: Vec<(String, Vec<u8>)>,
    /// The entry's header.
    pub(crate) header: tar::Header,
    link: Option<String>,
}

impl EntryParts {
    /// Reads them from `entry`.
    pub(crate) fn of<R: Read>(entry: &mut tar::Entry<'_, R>) -> std::io::Result<Self> {
        let pax = entry
            .pax_extensions()?
            .map(|exts| {
                exts.filter_map(Result::ok)
                    .filter_map(|e| {
                        e.key()
                            .ok()
                            .map(|k| (k.to_owned(), e.value_bytes().to_vec()))
                    })
                    .filter(|(k, _)| k != "path" && k != "linkpath")
                    .collect()
            })
            .unwrap_or_default();
        let header = entry.header().clone();
        let link = entry.link_name()?.map(|l| l.to_string_lossy().into_owned());
        Ok(Self { pax, header, link })
    }

    /// Appends the entry under the name `path`, with its pax records and its data from `data`.
    /// A hard link's target goes through `link_target`; a symlink's is kept as is.
    pub(crate) fn append<W: Write>(
        mut self,
        out: &mut tar::Builder<W>,
        path: &str,
        data: impl Read,
        link_target: impl Fn(&str) -> String,
    ) -> std::io::Result<()> {
        if !self.pax.is_empty() {
            out.append_pax_extensions(self.pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
        }
        match (self.header.entry_type(), self.link) {
            (tar::EntryType::Link, Some(target)) => {
                out.append_link(&mut self.header, path, link_target(&target))
            }
            (tar::EntryType::Symlink, Some(target)) => {
                out.append_link(&mut self.header, path, target)
            }
            _ => out.append_data(&mut self.header, path, data),
        }
    }
}

/// Appends `entry` under the name `path`, keeping its header, pax records and data (see
/// [`EntryParts::append`]).
fn append_entry<W: Write, R: Read>(
    out: &mut tar::Builder<W>,
    entry: &mut tar::Entry<'_, R>,
    path: &str,
    link_target: impl Fn(&str) -> String,
) -> std::io::Result<()> {
    EntryParts::of(entry)?.append(out, path, entry, link_target)
}

fn corrupt(path: &Path, what: String) -> impl Fn(std::io::Error) -> UnifiedError + use<> {
    let path = path.to_owned();
    move |e| UnifiedError::Corrupt {
        path: path.clone(),
        problem: format!("corrupt {what}: {e}"),
    }
}

/// Opens a tarball of any compression for its entries, reading through a `buffer`-byte buffer;
/// also gives the compression's name.
fn open_tarball(
    path: &Path,
    buffer: usize,
) -> Result<(metadata::Tarball<'static>, &'static str), UnifiedError> {
    let file = std::fs::File::open(path).map_err(io(path))?;
    metadata::open_tarball(BufReader::with_capacity(buffer, file), path).map_err(|e| {
        UnifiedError::Corrupt {
            path: path.to_owned(),
            problem: e.problem,
        }
    })
}

/// Copies every entry of the metadata tarball; returns metadata.yaml's mtime (0 if none).
fn copy_metadata<W: Write>(out: &mut tar::Builder<W>, meta: &Path) -> Result<u64, UnifiedError> {
    let (mut archive, what) = open_tarball(meta, 8 << 10)?;
    let bad = corrupt(meta, format!("{what} metadata tarball"));
    let mut mtime = 0;
    for entry in archive.entries().map_err(&bad)? {
        let mut entry = entry.map_err(&bad)?;
        let name = entry.path().map_err(&bad)?.to_string_lossy().into_owned();
        if name.strip_prefix("./").unwrap_or(&name) == "metadata.yaml" {
            mtime = entry.header().mtime().unwrap_or(0);
        }
        append_entry(out, &mut entry, &name, str::to_owned).map_err(&bad)?;
    }
    Ok(mtime)
}

/// `rootfs/` + the path inside the rootfs (`./x`, `/x` and `x` all name `x`).
fn under_rootfs(path: &str) -> String {
    let rel = path.trim_start_matches("./").trim_start_matches('/');
    if rel.is_empty() || rel == "." {
        "rootfs/".to_owned()
    } else {
        format!("rootfs/{rel}")
    }
}

fn copy_root_tarball<W: Write>(out: &mut tar::Builder<W>, root: &Path) -> Result<(), UnifiedError> {
    let (mut archive, what) = open_tarball(root, 1 << 20)?;
    let bad = corrupt(root, format!("{what} root tarball"));
    let mut saw_root_dir = false;
    for entry in archive.entries().map_err(&bad)? {
        let mut entry = entry.map_err(&bad)?;
        let name = entry.path().map_err(&bad)?.to_string_lossy().into_owned();
        let path = under_rootfs(&name);
        if path == "rootfs/" {
            saw_root_dir = true;
        } else if !saw_root_dir {
            // A tarball made without its `./` entry: give rootfs/ the usual directory mode.
            out.append_data(&mut dir_header(0o755, 0, 0, 0), "rootfs/", std::io::empty())
                .map_err(io(root))?;
            saw_root_dir = true;
        }
        append_entry(out, &mut entry, &path, under_rootfs).map_err(&bad)?;
    }
    Ok(())
}

fn dir_header(mode: u32, uid: u64, gid: u64, mtime: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(mode);
    h.set_uid(uid);
    h.set_gid(gid);
    h.set_mtime(mtime);
    h.set_size(0);
    h
}

fn copy_disk<W: Write>(
    out: &mut tar::Builder<W>,
    disk: &Path,
    mtime: u64,
) -> Result<(), UnifiedError> {
    let file = std::fs::File::open(disk).map_err(io(disk))?;
    let size = file.metadata().map_err(io(disk))?.len();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(mtime);
    h.set_size(size);
    out.append_data(
        &mut h,
        "rootfs.img",
        BufReader::with_capacity(1 << 20, file),
    )
    .map_err(io(disk))
}

/// What tells one squashfs inode from another, as far as backhand shows it: data location
/// (blocks start, fragment, offset), size, permissions, owner, group, mtime.
type InodeKey = (u64, u32, u32, u64, u16, u32, u32, u32);

/// Linux `dev_t` as squashfs stores it (the kernel's `new_encode_dev`) → (major, minor).
fn split_dev(dev: u32) -> (u32, u32) {
    ((dev >> 8) & 0xfff, (dev & 0xff) | ((dev >> 12) & 0xfff00))
}

fn copy_squashfs<W: Write>(out: &mut tar::Builder<W>, root: &Path) -> Result<(), UnifiedError> {
    use backhand::{InnerNode, Squashfs, SquashfsFileReader};
    let file = std::fs::File::open(root).map_err(io(root))?;
    let unreadable = |e: backhand::BackhandError| UnifiedError::Corrupt {
        path: root.to_owned(),
        problem: format!("not a readable squashfs: {e}"),
    };
    let corrupt_table = |problem| UnifiedError::Corrupt {
        path: root.to_owned(),
        problem,
    };
    let sq = Squashfs::from_reader(BufReader::with_capacity(1 << 20, file)).map_err(unreadable)?;
    let xattrs = squashfs_xattrs::Xattrs::read(root).map_err(corrupt_table)?;
    let xattr_indexes = match &xattrs {
        Some(_) => squashfs_xattrs::indexes_by_path(&sq).map_err(corrupt_table)?,
        None => HashMap::new(),
    };
    let fs = sq.into_filesystem_reader().map_err(unreadable)?;
    let bad = corrupt(root, "squashfs".into());
    // Hard links: squashfs gives every name of a multiply-linked inode the same extended inode
    // (same data location, link count > 1); the first name carries the data, later ones link.
    let mut first_name: HashMap<InodeKey, String> = HashMap::new();
    for node in fs.files() {
        let path = under_rootfs(&node.fullpath.to_string_lossy());
        let hdr = &node.header;
        let mut h = tar::Header::new_gnu();
        h.set_mode(u32::from(hdr.permissions) & 0o7777);
        h.set_uid(u64::from(hdr.uid));
        h.set_gid(u64::from(hdr.gid));
        h.set_mtime(u64::from(hdr.mtime));
        h.set_size(0);
        let device = |h: &mut tar::Header, kind, dev: u32| {
            let (major, minor) = split_dev(dev);
            h.set_entry_type(kind);
            h.set_device_major(major)?;
            h.set_device_minor(minor)
        };
        if let InnerNode::File(SquashfsFileReader::Extended(e)) = &node.inner
            && e.link_count > 1
        {
            let key = (
                e.blocks_start,
                e.frag_index,
                e.block_offset,
                e.file_size,
                hdr.permissions,
                hdr.uid,
                hdr.gid,
                hdr.mtime,
            );
            if let Some(target) = first_name.get(&key) {
                // The inode's xattrs are on the first name's entry.
                h.set_entry_type(tar::EntryType::Link);
                out.append_link(&mut h, &path, target).map_err(&bad)?;
                continue;
            }
            first_name.insert(key, path.clone());
        }
        // Extended attributes, of any kind of entry: a pax header before it, as GNU tar does.
        if let (Some(table), Some(&index)) = (&xattrs, xattr_indexes.get(&node.fullpath))
            && !matches!(node.inner, InnerNode::Socket)
        {
            let pairs = table.get(index).map_err(|problem| UnifiedError::Corrupt {
                path: root.to_owned(),
                problem: format!("{path}: {problem}"),
            })?;
            let records: Vec<(String, Vec<u8>)> = pairs
                .into_iter()
                .map(|(name, value)| (format!("SCHILY.xattr.{name}"), value))
                .collect();
            if !records.is_empty() {
                out.append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                    .map_err(&bad)?;
            }
        }
        match &node.inner {
            InnerNode::Dir(_) => {
                h.set_entry_type(tar::EntryType::Directory);
                out.append_data(&mut h, &path, std::io::empty())
                    .map_err(&bad)?;
            }
            InnerNode::File(f) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(f.file_len() as u64);
                let reader = fs
                    .file(f)
                    .reader_checked()
                    .map_err(|e| UnifiedError::Corrupt {
                        path: root.to_owned(),
                        problem: format!("{path}: {e}"),
                    })?;
                out.append_data(&mut h, &path, reader).map_err(&bad)?;
            }
            InnerNode::Symlink(s) => {
                h.set_entry_type(tar::EntryType::Symlink);
                out.append_link(&mut h, &path, &s.link).map_err(&bad)?;
            }
            InnerNode::CharacterDevice(d) => {
                device(&mut h, tar::EntryType::Char, d.device_number).map_err(&bad)?;
                out.append_data(&mut h, &path, std::io::empty())
                    .map_err(&bad)?;
            }
            InnerNode::BlockDevice(d) => {
                device(&mut h, tar::EntryType::Block, d.device_number).map_err(&bad)?;
                out.append_data(&mut h, &path, std::io::empty())
                    .map_err(&bad)?;
            }
            InnerNode::NamedPipe => {
                h.set_entry_type(tar::EntryType::Fifo);
                out.append_data(&mut h, &path, std::io::empty())
                    .map_err(&bad)?;
            }
            // tar cannot hold sockets (GNU tar skips them too); they are recreated at run time.
            InnerNode::Socket => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rootfs_paths() {
        assert_eq!(under_rootfs("/"), "rootfs/");
        assert_eq!(under_rootfs("./"), "rootfs/");
        assert_eq!(under_rootfs("."), "rootfs/");
        assert_eq!(under_rootfs("./etc/hosts"), "rootfs/etc/hosts");
        assert_eq!(under_rootfs("/etc/hosts"), "rootfs/etc/hosts");
        assert_eq!(under_rootfs("etc"), "rootfs/etc");
    }

    #[test]
    fn device_numbers() {
        // /dev/null is 1:3, /dev/tty 5:0; a large minor spills into the high bits.
        assert_eq!(split_dev(0x0103), (1, 3));
        assert_eq!(split_dev(0x0500), (5, 0));
        assert_eq!(
            split_dev((259 << 8) | 0x12 | (0x34500 << 12)),
            (259, 0x34512)
        );
    }
}
