//! Large files written once, front to back, by a thread that can wait for the disk (uploads,
//! imports): each block goes to the disk without a copy into the page cache when the file system
//! takes direct I/O, and through the page cache with its writeback started early when it does
//! not. Either way the fsync that ends the file has little left to wait for.
//!
//! Measured on a 1 GiB upload over TLS on this 2-core machine (`bench/upload.sh`, HTTP/1.1): the
//! page-cache copy was 12 % of all CPU samples, and the closing fsync waited 0.4 s for a disk the
//! kernel had been given nothing to write until then.

use std::fs::File;
use std::io;
use std::num::NonZeroU64;
use std::os::unix::fs::FileExt;

use bytes::BytesMut;
use rustix::fs::OFlags;

/// Address, offset and length multiple that direct I/O needs: the page size, which covers the
/// logical block size of every disk in use (512 or 4096 bytes).
pub const DIRECT_ALIGN: usize = 4096;

/// How much of a file written through the page cache may wait there before the kernel is asked
/// to start writing it out.
const WRITEBACK_STEP: u64 = 8 << 20;

/// An empty buffer that holds `capacity` bytes starting at a [`DIRECT_ALIGN`]ed address: filled
/// to a multiple of [`DIRECT_ALIGN`], it is written directly by [`SequentialFile::write`].
pub fn aligned_block(capacity: usize) -> BytesMut {
    let mut block = BytesMut::with_capacity(capacity + DIRECT_ALIGN);
    let pad = block.as_ptr().align_offset(DIRECT_ALIGN);
    if pad < DIRECT_ALIGN {
        block.resize(pad, 0);
        bytes::Buf::advance(&mut block, pad);
    }
    block
}

/// A file being written front to back (see the module's documentation).
#[derive(Debug)]
pub struct SequentialFile<'f> {
    file: &'f File,
    written: u64,
    /// O_DIRECT is set on the file.
    direct: bool,
    /// Where the part of the file not yet handed to the kernel's writeback starts.
    writeback_from: u64,
}

impl<'f> SequentialFile<'f> {
    /// Writes `file` (empty, opened for writing) from its start, directly when its file system
    /// allows (tmpfs and ext4 with `data=journal` do not: they get the page cache).
    pub fn new(file: &'f File) -> Self {
        let direct = set_direct(file, true).is_ok();
        Self {
            file,
            written: 0,
            direct,
            writeback_from: 0,
        }
    }

    /// Appends `block`. Aligned blocks ([`aligned_block`], a multiple of [`DIRECT_ALIGN`] long)
    /// go directly while the file takes it; the first other block (the last one, usually) ends
    /// direct writing for the rest of the file.
    pub fn write(&mut self, block: &[u8]) -> io::Result<()> {
        let aligned = block.as_ptr().align_offset(DIRECT_ALIGN) == 0
            && block.len().is_multiple_of(DIRECT_ALIGN);
        if self.direct && !aligned {
            self.buffered()?;
        }
        match self.file.write_all_at(block, self.written) {
            // A file system that took the flag but not this write: the block again, buffered.
            Err(e)
                if self.direct
                    && e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) =>
            {
                tracing::debug!("direct write refused ({e}): through the page cache from here");
                self.buffered()?;
                self.file.write_all_at(block, self.written)?;
            }
            other => other?,
        }
        self.written += block.len() as u64;
        if !self.direct {
            self.start_writeback();
        }
        Ok(())
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Whether blocks still go to the disk directly.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// Makes the file durable (fsync) and returns its size.
    pub fn sync(self) -> io::Result<u64> {
        self.file.sync_all()?;
        Ok(self.written)
    }

    fn buffered(&mut self) -> io::Result<()> {
        set_direct(self.file, false)?;
        self.direct = false;
        self.writeback_from = self.written;
        Ok(())
    }

    /// Every [`WRITEBACK_STEP`] written through the page cache, asks the kernel to start writing
    /// it out: left alone it keeps up to gigabytes dirty for half a minute, all for the fsync.
    fn start_writeback(&mut self) {
        let Some(len) = self
            .written
            .checked_sub(self.writeback_from)
            .filter(|len| *len >= WRITEBACK_STEP)
            .and_then(NonZeroU64::new)
        else {
            return;
        };
        // On Linux, POSIX_FADV_DONTNEED starts the writeback of the range's dirty pages without
        // waiting for it (and drops those of its pages already clean, none or few this soon).
        // Only a hint: the fsync still decides.
        if let Err(e) = rustix::fs::fadvise(
            self.file,
            self.writeback_from,
            Some(len),
            rustix::fs::Advice::DontNeed,
        ) {
            tracing::debug!("cannot start the writeback early ({e}): the fsync will do it");
        }
        self.writeback_from = self.written;
    }
}

fn set_direct(file: &File, on: bool) -> io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(file)?;
    let flags = if on {
        flags | OFlags::DIRECT
    } else {
        flags - OFlags::DIRECT
    };
    rustix::fs::fcntl_setfl(file, flags)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(len: usize, byte: u8) -> BytesMut {
        let mut block = aligned_block(len);
        block.resize(len, byte);
        block
    }

    #[test]
    fn aligned_blocks_go_directly_and_the_tail_through_the_cache() {
        // Under /var/tmp: /tmp may be a tmpfs, which takes no direct I/O.
        let d = tempfile::tempdir_in("/var/tmp").unwrap();
        let path = d.path().join("big");
        let file = File::create(&path).unwrap();
        let mut seq = SequentialFile::new(&file);
        let direct_at_first = seq.is_direct();
        for byte in 1..=3u8 {
            let block = filled(1 << 20, byte);
            assert_eq!(block.as_ptr().align_offset(DIRECT_ALIGN), 0);
            seq.write(&block).unwrap();
        }
        assert_eq!(
            seq.is_direct(),
            direct_at_first,
            "aligned blocks keep the way they went"
        );
        seq.write(b"the tail").unwrap();
        assert!(!seq.is_direct(), "an unaligned block ends direct writing");
        seq.write(&filled(DIRECT_ALIGN, 9)).unwrap();
        assert_eq!(seq.sync().unwrap(), 3 * (1 << 20) + 8 + DIRECT_ALIGN as u64);
        let back = std::fs::read(&path).unwrap();
        let mut want = Vec::new();
        for byte in 1..=3u8 {
            want.extend(std::iter::repeat_n(byte, 1 << 20));
        }
        want.extend_from_slice(b"the tail");
        want.extend(std::iter::repeat_n(9u8, DIRECT_ALIGN));
        assert!(back == want, "every byte where it was written");
    }

    #[test]
    fn writeback_is_asked_for_each_step_written_through_the_cache() {
        let d = tempfile::tempdir().unwrap();
        let file = File::create(d.path().join("big")).unwrap();
        let mut seq = SequentialFile::new(&file);
        seq.buffered().unwrap();
        let block = vec![7u8; 3 << 20];
        let mut asked = Vec::new();
        for _ in 0..7 {
            seq.write(&block).unwrap();
            asked.push(seq.writeback_from);
        }
        // 3 MiB blocks and an 8 MiB step: asked after the 3rd and the 6th block, each time
        // for all written since the last.
        let mib = 1u64 << 20;
        assert_eq!(asked, [0, 0, 9 * mib, 9 * mib, 9 * mib, 18 * mib, 18 * mib]);
        assert_eq!(seq.sync().unwrap(), 21 * mib);
    }
}
