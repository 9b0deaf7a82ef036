#!/usr/bin/env python3
"""Image files for the bench scripts, which pass the image check without mksquashfs.

  tiny_tree.py tree ROOT PRODUCTS VERSIONS [--yml] [--os PREFIX] [--pad N]
      PRODUCTS x VERSIONS tiny versions: one real metadata tarball shared by all, and a
      distinct squashfs per version (a version 4 superblock, then its tag padded to N bytes).
      Layout mode (images/<PREFIX><p>/1/amd64/default/<version>/), or with --yml the folders
      p<p>/<version>/ and a tree.yml declaring them.
  tiny_tree.py squashfs FILE TAG   one such squashfs
  tiny_tree.py superblock FILE     turns FILE (any bytes) into a squashfs of its size
  tiny_tree.py meta FILE           the metadata tarball (x86_64, os bench, release 1)
"""
import argparse
import io
import lzma
import os
import struct
import tarfile

META_YAML = (b"architecture: x86_64\ncreation_date: 1704067200\nproperties:\n"
             b"  os: bench\n  release: \"1\"\n  variant: default\n")


def metadata_tarball():
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as t:
        info = tarfile.TarInfo("metadata.yaml")
        info.size = len(META_YAML)
        info.mtime = 1
        t.addfile(info, io.BytesIO(META_YAML))
    return lzma.compress(raw.getvalue())


def superblock(size):
    """A squashfs version 4 superblock saying `size` bytes are used."""
    sb = bytearray(96)
    sb[0:4] = b"hsqs"
    sb[28:30] = struct.pack("<H", 4)
    sb[40:48] = struct.pack("<Q", size)
    return sb


def squashfs(tag, pad=32):
    body = tag.encode().ljust(pad, b".")
    return bytes(superblock(96 + len(body))) + body


def version_name(v):
    return f"2024{1 + v // 28 % 12:02d}{1 + v % 28:02d}_{v // 336 % 24:02d}:00"


def tree(args):
    meta = metadata_tarball()
    lines = ["products:"]
    for p in range(args.products):
        if args.yml:
            rel = f"p{p}"
            lines += [f"  - name: p{p}:1:amd64:default", "    arch: amd64",
                      f"    directory: {rel}", f"    aliases: [p{p}/1]"]
        else:
            rel = f"images/{args.os}{p}/1/amd64/default"
        for v in range(args.versions):
            d = os.path.join(args.root, rel, version_name(v))
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, "incus.tar.xz"), "wb") as f:
                f.write(meta)
            with open(os.path.join(d, "rootfs.squashfs"), "wb") as f:
                f.write(squashfs(f"{p}-{v}", args.pad))
    if args.yml:
        with open(os.path.join(args.root, "tree.yml"), "w") as f:
            f.write("\n".join(lines) + "\n")


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="what", required=True)
    t = sub.add_parser("tree")
    t.add_argument("root")
    t.add_argument("products", type=int)
    t.add_argument("versions", type=int)
    t.add_argument("--yml", action="store_true")
    t.add_argument("--os", default="os")
    t.add_argument("--pad", type=int, default=32)
    s = sub.add_parser("squashfs")
    s.add_argument("file")
    s.add_argument("tag")
    b = sub.add_parser("superblock")
    b.add_argument("file")
    m = sub.add_parser("meta")
    m.add_argument("file")
    args = parser.parse_args()
    if args.what == "tree":
        tree(args)
    elif args.what == "meta":
        with open(args.file, "wb") as f:
            f.write(metadata_tarball())
    elif args.what == "squashfs":
        with open(args.file, "wb") as f:
            f.write(squashfs(args.tag))
    else:
        with open(args.file, "r+b") as f:
            f.write(superblock(os.fstat(f.fileno()).st_size))


if __name__ == "__main__":
    main()
