//! import: split and unified images into the layout. A unified tarball built here with every
//! kind of entry (modes, owners, symlink, hard link, device node, extended attribute) must come
//! out as a metadata tarball and a root.tar.xz with the same content, relative to the rootfs.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use assert_cmd::assert::Assert;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tar::EntryType;

use crate::common::fixtures::{fake_qcow2, fake_squashfs};

const META_YAML: &str = "architecture: x86_64\ncreation_date: 1735725600\nproperties:\n  os: Alpine\n  release: \"3.21\"\n  variant: default\n  description: Alpine 3.21\ntemplates:\n  /etc/hostname:\n    when: [create]\n    template: hostname.tpl\n";
const VERSION: &str = "images/alpine/3.21/amd64/default/20250101_10:00";

fn bin(dir: &Path) -> Command {
    crate::common::ssb(dir)
}

/// What a finished command wrote to stderr, as text.
fn stderr_of(out: &Assert) -> String {
    String::from_utf8_lossy(&out.get_output().stderr).into_owned()
}

/// `import` into `tree/` below `dir`, with these files as arguments.
fn import_to_tree(dir: &Path, files: &[&Path]) -> Assert {
    bin(dir).args(["-t", "tree", "import"]).args(files).assert()
}

/// Parses a JSON file.
fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn header(kind: EntryType, mode: u32, uid: u64, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(uid);
    h.set_gid(uid);
    h.set_mtime(1_735_725_600);
    h.set_size(size);
    h
}

/// The folders and regular files that open the unified image: path, kind, mode, owner, content.
#[rustfmt::skip]
const PLAIN_ENTRIES: &[(&str, EntryType, u32, u64, &[u8])] = &[
    ("metadata.yaml",          EntryType::Regular,   0o644,  0,    META_YAML.as_bytes()),
    ("templates/",             EntryType::Directory, 0o755,  0,    b""),
    ("templates/hostname.tpl", EntryType::Regular,   0o644,  0,    b"{{ container.name }}\n"),
    ("rootfs/",                EntryType::Directory, 0o755,  0,    b""),
    ("rootfs/etc/",            EntryType::Directory, 0o755,  0,    b""),
    ("rootfs/etc/os-release",  EntryType::Regular,   0o644,  0,    b"ID=alpine\n"),
    ("rootfs/home/",           EntryType::Directory, 0o750,  1000, b""),
    ("rootfs/home/user-file",  EntryType::Regular,   0o600,  1000, b"secret\n"),
    ("rootfs/bin/",            EntryType::Directory, 0o755,  0,    b""),
    ("rootfs/bin/busybox",     EntryType::Regular,   0o4755, 0,    b"\x7fELF fake"),
];

/// A unified image: metadata.yaml, templates/, and a rootfs with one of every entry kind.
fn unified_tarball(gzip: bool) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for &(path, kind, mode, uid, data) in PLAIN_ENTRIES {
        let mut h = header(kind, mode, uid, data.len() as u64);
        tar.append_data(&mut h, path, data).unwrap();
    }
    let mut h = header(EntryType::Symlink, 0o777, 0, 0);
    tar.append_link(&mut h, "rootfs/bin/sh", "busybox").unwrap();
    let mut h = header(EntryType::Link, 0o755, 0, 0);
    tar.append_link(&mut h, "rootfs/bin/ash", "rootfs/bin/busybox")
        .unwrap();
    tar.append_data(
        &mut header(EntryType::Directory, 0o755, 0, 0),
        "rootfs/dev/",
        &b""[..],
    )
    .unwrap();
    let mut h = header(EntryType::Char, 0o666, 0, 0);
    h.set_device_major(1).unwrap();
    h.set_device_minor(3).unwrap();
    tar.append_data(&mut h, "rootfs/dev/null", &b""[..])
        .unwrap();
    tar.append_pax_extensions([("SCHILY.xattr.user.comment", b"kept".as_slice())])
        .unwrap();
    let mut h = header(EntryType::Regular, 0o644, 0, 4);
    tar.append_data(&mut h, "rootfs/etc/with-xattr", &b"data"[..])
        .unwrap();
    let raw = tar.into_inner().unwrap();
    if gzip {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut e, &raw).unwrap();
        e.finish().unwrap()
    } else {
        let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
        std::io::Write::write_all(&mut e, &raw).unwrap();
        e.finish().unwrap()
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Entry {
    kind: u8,
    mode: u32,
    uid: u64,
    gid: u64,
    link: Option<String>,
    device: Option<(u32, u32)>,
    xattrs: BTreeMap<String, Vec<u8>>,
    data: Vec<u8>,
}

/// Every entry of a tarball (any compression), keyed by path with `./` and `/` trimmed, after
/// stripping `strip` from the front.
fn entries(bytes: &[u8], strip: &str) -> BTreeMap<String, Entry> {
    let (mut archive, _) =
        simplestreams_builder::image::metadata::open_tarball(bytes, Path::new("t")).unwrap();
    let mut out = BTreeMap::new();
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().to_string_lossy().into_owned();
        let Some(rel) = path.trim_start_matches("./").strip_prefix(strip) else {
            continue;
        };
        let rel = rel.trim_start_matches('/').trim_end_matches('/').to_owned();
        let h = e.header().clone();
        let xattrs = e
            .pax_extensions()
            .unwrap()
            .map(|x| {
                x.filter_map(Result::ok)
                    .filter(|x| x.key().is_ok_and(|k| k.starts_with("SCHILY.xattr.")))
                    .map(|x| (x.key().unwrap().to_owned(), x.value_bytes().to_vec()))
                    .collect()
            })
            .unwrap_or_default();
        let link = e.link_name().unwrap().map(|l| {
            let l = l.to_string_lossy();
            let l = l.trim_start_matches("./");
            // Hard links name their target from the archive root; symlinks are relative.
            let l = match h.entry_type() {
                EntryType::Link => l.strip_prefix(strip).unwrap_or(l),
                _ => l,
            };
            l.trim_start_matches('/').to_owned()
        });
        let device = h
            .device_major()
            .ok()
            .flatten()
            .zip(h.device_minor().ok().flatten());
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        out.insert(
            rel,
            Entry {
                kind: h.entry_type().as_byte(),
                mode: h.mode().unwrap(),
                uid: h.uid().unwrap(),
                gid: h.gid().unwrap(),
                link,
                device: if matches!(h.entry_type(), EntryType::Char | EntryType::Block) {
                    device
                } else {
                    None
                },
                xattrs,
                data,
            },
        );
    }
    out
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[test]
fn a_unified_tarball_is_split_with_everything_preserved() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("alpine.tar.gz");
    let unified = unified_tarball(true);
    std::fs::write(&src, &unified).unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    bin(dir.path())
        .args(["-t", "tree", "import"])
        .arg(&src)
        .assert()
        .success();

    let v = tree.join(VERSION);
    let root = std::fs::read(v.join("rootfs.tar.xz")).unwrap();
    let meta = std::fs::read(v.join("incus.tar.xz")).unwrap();
    let original_root = entries(&unified, "rootfs");
    let split_root = entries(&root, "");
    assert_eq!(
        split_root, original_root,
        "root.tar.xz must hold the rootfs, relative to it"
    );
    assert_eq!(
        split_root["bin/ash"].link.as_deref(),
        Some("bin/busybox"),
        "hard link rewritten"
    );
    assert_eq!(split_root["dev/null"].device, Some((1, 3)));
    assert_eq!(
        split_root["etc/with-xattr"].xattrs["SCHILY.xattr.user.comment"],
        b"kept"
    );
    assert_eq!(split_root["home/user-file"].uid, 1000);
    assert_eq!(split_root["bin/busybox"].mode, 0o4755);
    let split_meta = entries(&meta, "");
    let names: Vec<&String> = split_meta.keys().collect();
    assert_eq!(
        names,
        ["metadata.yaml", "templates", "templates/hostname.tpl"]
    );
    // The gzip original is kept and published as the unified image.
    assert_eq!(
        std::fs::read(v.join("incus_combined.tar.gz")).unwrap(),
        unified
    );
    let images = read_json(&tree.join("streams/v1/images.json"));
    let items =
        &images["products"]["alpine:3.21:amd64:default"]["versions"]["20250101_10:00"]["items"];
    assert_eq!(items["incus_combined.tar.gz"]["sha256"], sha(&unified));
    assert_eq!(items["lxd_combined.tar.gz"]["sha256"], sha(&unified));
    let mut cat = meta.clone();
    cat.extend_from_slice(&root);
    assert_eq!(items["incus.tar.xz"]["combined_rootxz_sha256"], sha(&cat));
    assert_eq!(
        images["products"]["alpine:3.21:amd64:default"]["os"],
        "Alpine"
    );

    // Again: found by its original, not split again.
    let out = import_to_tree(dir.path(), &[&src]).success();
    assert!(
        stderr_of(&out).contains("already imported"),
        "{}",
        stderr_of(&out)
    );
    // With the split rootfs gone it is split again, to the same bytes.
    std::fs::remove_file(v.join("rootfs.tar.xz")).unwrap();
    let out = import_to_tree(dir.path(), &[&src]).success();
    assert!(
        !stderr_of(&out).contains("already imported"),
        "{}",
        stderr_of(&out)
    );
    assert!(std::fs::read(v.join("rootfs.tar.xz")).unwrap() == root);
}

#[test]
fn an_xz_unified_tarball_is_split_but_not_kept_whole() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("alpine.tar.xz");
    std::fs::write(&src, unified_tarball(false)).unwrap();
    bin(dir.path())
        .args(["-t", ".", "import"])
        .arg(&src)
        .assert()
        .success();
    let v = dir.path().join(VERSION);
    assert!(v.join("rootfs.tar.xz").is_file() && v.join("incus.tar.xz").is_file());
    assert!(!v.join("incus_combined.tar.gz").exists());
    // Without an original to recognise it by, a second import splits again: the same bytes
    // (the xz output does not depend on the machine), so nothing changes.
    let out = bin(dir.path())
        .args(["-t", ".", "import"])
        .arg(&src)
        .assert()
        .success();
    assert!(
        stderr_of(&out).contains("already imported"),
        "{}",
        stderr_of(&out)
    );
}

fn split_files(dir: &Path, rootfs: &[u8], name: &str) -> (PathBuf, PathBuf) {
    let mut meta = Vec::new();
    simplestreams_builder::image::metadata::write_metadata_tarball(
        &mut meta,
        META_YAML,
        &[("hostname.tpl", "x")],
        0,
    )
    .unwrap();
    let m = dir.join("meta-abc.tar.xz");
    let r = dir.join(name);
    std::fs::write(&m, meta).unwrap();
    std::fs::write(&r, rootfs).unwrap();
    (m, r)
}

#[test]
fn split_images_land_under_standard_names_and_twice_is_a_no_op() {
    let dir = tempfile::tempdir().unwrap();
    let (m, r) = split_files(
        dir.path(),
        &fake_squashfs(b"squashfs bytes"),
        "abc.squashfs",
    );
    // Either order works: the metadata tarball is recognised.
    bin(dir.path())
        .args(["-t", "tree", "import"])
        .arg(&r)
        .arg(&m)
        .arg("--alias")
        .arg("alpine/latest")
        .assert()
        .success();
    let v = dir.path().join("tree").join(VERSION);
    assert_eq!(
        std::fs::read(v.join("rootfs.squashfs")).unwrap(),
        fake_squashfs(b"squashfs bytes")
    );
    assert_eq!(
        std::fs::read(v.join("incus.tar.xz")).unwrap(),
        std::fs::read(&m).unwrap()
    );
    let mj = read_json(&v.parent().unwrap().join("metadata.json"));
    assert_eq!(
        mj["aliases"],
        serde_json::json!(["alpine/3.21/default", "alpine/3.21", "alpine/latest"])
    );

    let out = import_to_tree(dir.path(), &[&m, &r]).success();
    let stderr = stderr_of(&out);
    assert!(
        stderr.contains("already imported") && stderr.contains("nothing changed"),
        "{stderr}"
    );

    // The same version with other bytes is a clash, and nothing is replaced.
    std::fs::write(&r, fake_squashfs(b"other bytes")).unwrap();
    let out = import_to_tree(dir.path(), &[&m, &r]).failure();
    let stderr = stderr_of(&out);
    assert!(
        stderr.contains("already holds a different rootfs.squashfs"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(v.join("rootfs.squashfs")).unwrap(),
        fake_squashfs(b"squashfs bytes")
    );
    let leftovers: Vec<String> = std::fs::read_dir(&v)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_vm_disk_with_its_own_metadata_joins_the_container_version() {
    let dir = tempfile::tempdir().unwrap();
    let (m, r) = split_files(dir.path(), &fake_squashfs(b"ct"), "ct.squashfs");
    import_to_tree(dir.path(), &[&m, &r]).success();
    let mut vm_meta = Vec::new();
    simplestreams_builder::image::metadata::write_metadata_tarball(
        &mut vm_meta,
        META_YAML,
        &[("vm.tpl", "y")],
        0,
    )
    .unwrap();
    std::fs::write(dir.path().join("meta-vm.tar.xz"), vm_meta).unwrap();
    std::fs::write(dir.path().join("disk.qcow2"), fake_qcow2(b"vm disk")).unwrap();
    bin(dir.path())
        .args(["-t", "tree", "import"])
        .arg(dir.path().join("meta-vm.tar.xz"))
        .arg(dir.path().join("disk.qcow2"))
        .assert()
        .success();
    let v = dir.path().join("tree").join(VERSION);
    let mut names: Vec<String> = std::fs::read_dir(&v)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "disk.qcow2",
            "incus-vm.tar.xz",
            "incus.tar.xz",
            "rootfs.squashfs"
        ]
    );
}

#[test]
fn from_dir_imports_everything_it_finds() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("exports");
    std::fs::create_dir_all(src.join("a")).unwrap();
    std::fs::create_dir_all(src.join("b")).unwrap();
    split_files(&src.join("a"), &fake_squashfs(b"a"), "abc.squashfs");
    std::fs::write(src.join("b/alpine.tar.gz"), unified_tarball(true)).unwrap();
    // b's unified image has the same creation_date and names: a different variant keeps them apart.
    bin(dir.path())
        .args(["-t", "tree", "import", "--from-dir"])
        .arg(src.join("a"))
        .assert()
        .success();
    bin(dir.path())
        .args(["-t", "tree", "import", "--variant", "unified", "--from-dir"])
        .arg(src.join("b"))
        .assert()
        .success();
    assert!(
        dir.path()
            .join("tree")
            .join(VERSION)
            .join("rootfs.squashfs")
            .is_file()
    );
    assert!(
        dir.path()
            .join("tree/images/alpine/3.21/amd64/unified/20250101_10:00/incus_combined.tar.gz")
            .is_file()
    );
}

#[test]
fn bad_inputs_are_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("junk.bin"), b"just some bytes").unwrap();
    let out = bin(dir.path())
        .args(["-t", ".", "import", "junk.bin"])
        .assert()
        .failure();
    assert!(stderr_of(&out).contains("junk.bin"));
    // A metadata tarball alone is not an image.
    let mut meta = Vec::new();
    simplestreams_builder::image::metadata::write_metadata_tarball(&mut meta, META_YAML, &[], 0)
        .unwrap();
    std::fs::write(dir.path().join("meta.tar.xz"), meta).unwrap();
    let out = bin(dir.path())
        .args(["-t", ".", "import", "meta.tar.xz"])
        .assert()
        .failure();
    let stderr = stderr_of(&out);
    assert!(
        stderr.contains("neither rootfs/ nor rootfs.img"),
        "{stderr}"
    );
    assert!(!dir.path().join("images/alpine").exists(), "nothing placed");
}

/// The distinct combined hashes of the items of a catalog (the metadata tarball is listed once
/// per client, under both ftypes).
fn combined_hashes(images: &Value) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for product in images["products"].as_object().unwrap().values() {
        for version in product["versions"].as_object().unwrap().values() {
            for item in version["items"].as_object().unwrap().values() {
                if let Some(h) = item["combined_squashfs_sha256"].as_str() {
                    out.insert(h.to_owned());
                }
            }
        }
    }
    out
}

#[test]
fn the_publish_after_a_split_import_reads_no_image_byte_again() {
    let dir = tempfile::tempdir().unwrap();
    let pattern: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let rootfs = fake_squashfs(&pattern);
    let (m, r) = split_files(dir.path(), &rootfs, "abc.squashfs");
    let out = import_to_tree(dir.path(), &[&m, &r]).success();
    // The import hashed both files while copying them and left that in the hash cache.
    let stderr = stderr_of(&out);
    assert!(stderr.contains("read 0 B of image data"), "{stderr}");
    let product_dir = dir.path().join("tree").join(VERSION);
    let product_dir = product_dir.parent().unwrap();
    let cache = std::fs::read_to_string(crate::common::hash_cache_file(product_dir)).unwrap();
    assert!(
        !product_dir.join(".ssb-cache.json").exists(),
        "the hash cache stays out of the tree"
    );
    assert!(cache.contains("20250101_10:00/rootfs.squashfs"), "{cache}");
    // What it recorded is right: the fingerprint is sha256(metadata tarball ‖ rootfs).
    let mut both = std::fs::read(&m).unwrap();
    both.extend_from_slice(&rootfs);
    let images = read_json(&dir.path().join("tree/streams/v1/images.json"));
    assert_eq!(combined_hashes(&images), [sha(&both)].into());

    // A rootfs changed after the import misses the cache and is hashed again.
    let placed = dir
        .path()
        .join("tree")
        .join(VERSION)
        .join("rootfs.squashfs");
    let mut changed = rootfs.clone();
    changed[100] ^= 1;
    std::fs::write(&placed, &changed).unwrap();
    let out = bin(dir.path())
        .args(["-t", "tree", "publish"])
        .assert()
        .success();
    let stderr = stderr_of(&out);
    assert!(!stderr.contains("read 0 B of image data"), "{stderr}");
    let mut both = std::fs::read(&m).unwrap();
    both.extend_from_slice(&changed);
    let images = read_json(&dir.path().join("tree/streams/v1/images.json"));
    assert_eq!(combined_hashes(&images), [sha(&both)].into());
}
