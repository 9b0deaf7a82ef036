//! Extended attributes of a squashfs (v4, little-endian), which backhand parses no further
//! than the per-inode index: the xattr id table and the key/value metadata blocks it points
//! into, read once (they are small: a whole distribution has a few KiB of them), and which
//! path has which index ([`indexes_by_path`]).
//!
//! Layout (squashfs-tools `xattr.h`): the superblock's `xattr_table` points at
//! `{ u64 kv_start, u32 ids, u32 unused }` followed by one u64 per metadata block of id
//! entries. An id entry is `{ u64 ref, u32 count, u32 size }`; `ref` locates the first key in
//! the key/value blocks (block offset from `kv_start` << 16 | offset in the block). A key is
//! `{ u16 type, u16 name_size, name }`, its value `{ u32 size, bytes }`; with type flag 0x100
//! the value is instead a u64 ref to where `{ u32 size, bytes }` is stored.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use backhand::Inode;
use backhand::kind::{Kind, LE_V4_0};
use backhand::v4::inode::InodeInner;
use backhand::v4::metadata::read_block;
use backhand::v4::squashfs::{NOT_SET, Squashfs};

/// The index of an inode without extended attributes.
pub(super) const NO_XATTRS: u32 = 0xffff_ffff;
/// Id entries per metadata block (8 KiB / 16 bytes).
const IDS_PER_BLOCK: u32 = 512;
/// Value stored out of line.
const OUT_OF_LINE: u16 = 0x100;

/// The extended attributes of one squashfs.
pub(super) struct Xattrs {
    /// Per xattr index: (ref of the first key, number of pairs).
    ids: Vec<(u64, u32)>,
    /// The key/value metadata blocks, decompressed, back to back.
    kv: Vec<u8>,
    /// Block offset relative to `kv_start` → where that block starts in `kv`.
    starts: HashMap<u64, usize>,
}

fn corrupt(what: &str) -> String {
    format!("corrupt extended attribute table ({what})")
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

impl Xattrs {
    /// Reads the tables of the squashfs at `path`; `None` when it stores no xattrs.
    pub(super) fn read(path: &Path) -> Result<Option<Xattrs>, String> {
        let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
        let mut r = BufReader::new(file);
        let kind = Kind::from_const(LE_V4_0)?;
        let (sb, _) = Squashfs::superblock_and_compression_options(&mut r, &kind)
            .map_err(|e| e.to_string())?;
        if sb.xattr_table == NOT_SET {
            return Ok(None);
        }
        let io = |e: std::io::Error| corrupt(&e.to_string());
        let block = |e: backhand::BackhandError| corrupt(&e.to_string());
        r.seek(SeekFrom::Start(sb.xattr_table)).map_err(io)?;
        let mut head = [0u8; 16];
        r.read_exact(&mut head).map_err(io)?;
        let kv_start = u64_at(&head, 0).ok_or_else(|| corrupt("header"))?;
        let count = u32_at(&head, 8).ok_or_else(|| corrupt("header"))?;
        let mut pointers = Vec::new();
        for _ in 0..count.div_ceil(IDS_PER_BLOCK) {
            let mut p = [0u8; 8];
            r.read_exact(&mut p).map_err(io)?;
            pointers.push(u64::from_le_bytes(p));
        }
        let mut raw_ids = Vec::new();
        for &p in &pointers {
            r.seek(SeekFrom::Start(p)).map_err(io)?;
            raw_ids.extend(read_block(&mut r, &sb, &kind).map_err(block)?);
        }
        let ids = (0..count as usize)
            .map(|i| Some((u64_at(&raw_ids, i * 16)?, u32_at(&raw_ids, i * 16 + 8)?)))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| corrupt("id table"))?;
        // The key/value blocks run from kv_start up to the first block of id entries.
        let end = pointers.first().copied().unwrap_or(sb.xattr_table);
        let mut kv = Vec::new();
        let mut starts = HashMap::new();
        r.seek(SeekFrom::Start(kv_start)).map_err(io)?;
        let mut pos = kv_start;
        while pos < end {
            starts.insert(pos - kv_start, kv.len());
            kv.extend(read_block(&mut r, &sb, &kind).map_err(block)?);
            pos = r.stream_position().map_err(io)?;
        }
        Ok(Some(Xattrs { ids, kv, starts }))
    }

    fn locate(&self, reference: u64) -> Option<usize> {
        Some(self.starts.get(&(reference >> 16))? + (reference & 0xffff) as usize)
    }

    /// The (full name, value) pairs of xattr index `index`, in stored order.
    pub(super) fn get(&self, index: u32) -> Result<Vec<(String, Vec<u8>)>, String> {
        let &(reference, count) = self
            .ids
            .get(index as usize)
            .ok_or_else(|| corrupt(&format!("index {index} out of range")))?;
        let kv = &self.kv;
        let bad = || corrupt(&format!("entry {index}"));
        let mut at = self.locate(reference).ok_or_else(bad)?;
        let mut out = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let kind = u16_at(kv, at).ok_or_else(bad)?;
            let name_len = usize::from(u16_at(kv, at + 2).ok_or_else(bad)?);
            let name = kv.get(at + 4..at + 4 + name_len).ok_or_else(bad)?;
            at += 4 + name_len;
            let value_len = u32_at(kv, at).ok_or_else(bad)? as usize;
            let mut value = kv.get(at + 4..at + 4 + value_len).ok_or_else(bad)?;
            at += 4 + value_len;
            if kind & OUT_OF_LINE != 0 {
                let target = u64_at(value, 0).ok_or_else(bad)?;
                let v = self.locate(target).ok_or_else(bad)?;
                let len = u32_at(kv, v).ok_or_else(bad)? as usize;
                value = kv.get(v + 4..v + 4 + len).ok_or_else(bad)?;
            }
            let prefix = match kind & 0xff {
                0 => "user.",
                1 => "trusted.",
                2 => "security.",
                _ => return Err(bad()),
            };
            out.push((
                format!("{prefix}{}", String::from_utf8_lossy(name)),
                value.to_vec(),
            ));
        }
        Ok(out)
    }
}

/// The xattr index of an inode, when it has one (only extended inodes can).
fn xattr_index(inode: &Inode) -> Option<u32> {
    let index = match &inode.inner {
        InodeInner::ExtendedDirectory(d) => d.xattr_index,
        InodeInner::ExtendedFile(f) => f.xattr_index,
        InodeInner::ExtendedSymlink(l) => l.xattr_index,
        InodeInner::ExtendedBlockDevice(d) | InodeInner::ExtendedCharacterDevice(d) => {
            d.xattr_index
        }
        InodeInner::ExtendedNamedPipe(n) | InodeInner::ExtendedSocket(n) => n.xattr_index,
        _ => return None,
    };
    (index != NO_XATTRS).then_some(index)
}

/// Where a directory's listing is in the directory table: (block, offset in it, bytes).
fn listing(inode: &Inode) -> Option<(u64, usize, usize)> {
    // The stored size counts the implicit `.` and `..` (3 bytes), which have no entries.
    let (block, offset, size) = match &inode.inner {
        InodeInner::BasicDirectory(d) => (d.block_index, d.block_offset, u32::from(d.file_size)),
        InodeInner::ExtendedDirectory(d) => (d.block_index, d.block_offset, d.file_size),
        _ => return None,
    };
    Some((
        u64::from(block),
        usize::from(offset),
        size.saturating_sub(3) as usize,
    ))
}

/// The xattr index of every path of the squashfs that has xattrs, keyed as backhand names its
/// nodes (`/`, `/etc`, `/etc/hostname`…). backhand keeps the index of regular files only, so
/// this walks the directory table itself (squashfs-tools `squashfs_fs.h`): a listing is a run
/// of headers `{ u32 count - 1, u32 start block, u32 base inode number }`, each followed by
/// entries `{ u16 offset, i16 inode number - base, u16 type, u16 name size - 1, name }`.
pub(super) fn indexes_by_path(sq: &Squashfs) -> Result<HashMap<PathBuf, u32>, String> {
    let (blocks, table) = &sq.dir_blocks;
    let mut out = HashMap::new();
    let mut seen = HashSet::new();
    let mut stack: Vec<(PathBuf, &Inode)> = vec![(PathBuf::from("/"), &sq.root_inode)];
    while let Some((path, inode)) = stack.pop() {
        if let Some(index) = xattr_index(inode) {
            out.insert(path.clone(), index);
        }
        let Some((block, offset, len)) = listing(inode) else {
            continue;
        };
        // A corrupt image can list a directory inside itself.
        if len == 0 || !seen.insert(inode.header.inode_number) {
            continue;
        }
        let bad = || corrupt(&format!("directory {}", path.display()));
        let start = blocks.get(&block).ok_or_else(bad)? + offset as u64;
        let bytes = usize::try_from(start)
            .ok()
            .and_then(|start| table.get(start..start.checked_add(len)?))
            .ok_or_else(bad)?;
        let mut at = 0;
        while at < bytes.len() {
            let count = u32_at(bytes, at).ok_or_else(bad)? as usize + 1;
            let base = u32_at(bytes, at + 8).ok_or_else(bad)?;
            at += 12;
            for _ in 0..count {
                let delta = u16_at(bytes, at + 2).ok_or_else(bad)? as i16;
                let name_len = usize::from(u16_at(bytes, at + 6).ok_or_else(bad)?) + 1;
                let name = bytes.get(at + 8..at + 8 + name_len).ok_or_else(bad)?;
                at += 8 + name_len;
                let number = base.checked_add_signed(i32::from(delta)).ok_or_else(bad)?;
                let child = sq.inodes.get(&number).ok_or_else(bad)?;
                stack.push((path.join(OsStr::from_bytes(name)), child));
            }
        }
    }
    Ok(out)
}
