//! The binary as users run it: golden catalogs, one test per bug of the original tool
//! (../shared/reference/mottainai.md §13) that applies here, and bad input that must fail with a
//! clear, located message while leaving the published catalog untouched.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use assert_cmd::Command;
use assert_cmd::assert::Assert;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::common::fixtures::{fake_qcow2, fake_root_tar_xz, fake_squashfs};
use simplestreams_builder::image::metadata::write_metadata_tarball;

/// A fixed publication time, so golden files are byte-stable.
const EPOCH: &str = "1763900400";

fn bin() -> Command {
    let mut c = crate::common::ssb_in_repo();
    c.env("SOURCE_DATE_EPOCH", EPOCH);
    c
}

fn sha(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    hex::encode(h.finalize())
}

fn meta(os: &str, release: &str, arch: &str, tag: &str) -> Vec<u8> {
    let yaml = format!(
        "architecture: {arch}\ncreation_date: 1704510000\nproperties:\n  os: {os}\n  release: \"{release}\"\n  variant: default\n  description: {os} {release} {tag}\n"
    );
    let mut v = Vec::new();
    write_metadata_tarball(
        &mut v,
        &yaml,
        &[("hostname.tpl", "{{ container.name }}\n")],
        1,
    )
    .unwrap();
    v
}

/// What a finished command wrote to stderr, as text.
fn stderr_of(out: &Assert) -> String {
    String::from_utf8_lossy(&out.get_output().stderr).into_owned()
}

fn put(root: &Path, rel: &str, bytes: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, bytes).unwrap();
}

/// Writes an image into the version folder `dir`: metadata as `meta_name`, rootfs.squashfs.
/// A split image: the metadata tarball and a squashfs whose content after its superblock is
/// `rootfs`.
fn put_image(root: &Path, dir: &str, meta_name: &str, meta: &[u8], rootfs: &[u8]) {
    put(root, &format!("{dir}/{meta_name}"), meta);
    put(
        root,
        &format!("{dir}/rootfs.squashfs"),
        &fake_squashfs(rootfs),
    );
}

fn read_json(p: &Path) -> Value {
    let bytes = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Compares a document with `tests/golden/NAME` (pretty JSON). `SSB_UPDATE_GOLDEN=1` rewrites.
fn golden(name: &str, actual: &Value) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    let pretty = serde_json::to_string_pretty(actual).unwrap() + "\n";
    if std::env::var_os("SSB_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &pretty).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with SSB_UPDATE_GOLDEN=1 to create it)",
            path.display()
        )
    });
    assert_eq!(pretty, want, "{} differs from the output", path.display());
}

const TREE_YML: &str = "\
prefix: ''
products:
  - name: debian:12:amd64:default
    arch: amd64
    release: bookworm
    os: Debian
    release_title: '12'
    directory: debian-12
    version: '12'
    days: 2
    aliases: [debian/12, debian/bookworm]
    requirements:
      secureboot: false
    expiry: 30d
  - name: alpine:3.20:arm64:default
    arch: arm64
    directory: alpine/3.20
    aliases: alpine/3.20
  - name: secret:1:amd64:default
    arch: amd64
    directory: secret
    hidden: true
";

struct Fixture {
    dir: tempfile::TempDir,
    files: BTreeMap<&'static str, Vec<u8>>,
}

impl Fixture {
    fn root(&self) -> &Path {
        self.dir.path()
    }
}

/// A tree.yml tree: Debian with two versions (lxd.tar.xz only; then both metadata families and
/// both rootfs kinds), Alpine arm64 with a VM that has its own metadata, and a hidden product.
fn tree_fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    let mut files = BTreeMap::new();
    files.insert("deb-lxd-1", meta("Debian", "12", "x86_64", "v1"));
    files.insert("deb-sq-1", fake_squashfs(b"squashfs one"));
    files.insert("deb-lxd-2", meta("Debian", "12", "amd64", "v2-lxd"));
    files.insert("deb-incus-2", meta("Debian", "12", "amd64", "v2-incus"));
    files.insert("deb-sq-2", fake_squashfs(b"squashfs two"));
    files.insert("deb-txz-2", fake_root_tar_xz(b"root tarball two"));
    files.insert("alp-incus", meta("Alpine", "3.20", "aarch64", "ct"));
    files.insert("alp-vm", meta("Alpine", "3.20", "aarch64", "vm"));
    files.insert("alp-sq", fake_squashfs(b"alpine squashfs"));
    files.insert("alp-disk", fake_qcow2(b"alpine disk"));
    put(r, "tree.yml", TREE_YML.as_bytes());
    for (rel, file) in [
        ("debian-12/20240105_03:00/lxd.tar.xz", "deb-lxd-1"),
        ("debian-12/20240105_03:00/rootfs.squashfs", "deb-sq-1"),
        ("debian-12/20240106_03:00/lxd.tar.xz", "deb-lxd-2"),
        ("debian-12/20240106_03:00/incus.tar.xz", "deb-incus-2"),
        ("debian-12/20240106_03:00/rootfs.squashfs", "deb-sq-2"),
        ("debian-12/20240106_03:00/rootfs.tar.xz", "deb-txz-2"),
        ("debian-12/20240103/lxd.tar.xz", "deb-lxd-1"),
        ("alpine/3.20/20240201_1200/incus.tar.xz", "alp-incus"),
        ("alpine/3.20/20240201_1200/rootfs.squashfs", "alp-sq"),
        ("alpine/3.20/20240201_1200/incus-vm.tar.xz", "alp-vm"),
        ("alpine/3.20/20240201_1200/disk.qcow2", "alp-disk"),
    ] {
        put(r, rel, &files[file]);
    }
    put(
        r,
        "debian-12/20240106_03:00/build.log",
        b"not an image file",
    );
    put(
        r,
        "secret/20240101_00:00/lxd.tar.xz",
        &meta("S", "1", "amd64", "s"),
    );
    Fixture { dir, files }
}

/// [`tree_fixture`], published once.
fn published_fixture() -> Fixture {
    let f = tree_fixture();
    publish(&f).success();
    f
}

fn publish(f: &Fixture) -> Assert {
    bin()
        .current_dir(f.root())
        .args(["publish", "-t", "."])
        .assert()
}

#[test]
fn golden_catalog_from_a_tree_yml() {
    let f = published_fixture();
    for (name, rel) in [
        ("debian-ssb.json", "debian-12/ssb.json"),
        ("alpine-ssb.json", "alpine/3.20/ssb.json"),
        ("images.json", "streams/v1/images.json"),
        ("index.json", "streams/v1/index.json"),
    ] {
        golden(name, &read_json(&f.root().join(rel)));
    }
}

#[test]
fn outputs_are_compact_with_gzip_twins_and_world_readable() {
    let f = published_fixture();
    for rel in [
        "streams/v1/images.json",
        "streams/v1/index.json",
        "debian-12/ssb.json",
    ] {
        let p = f.root().join(rel);
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(
            text.lines().count(),
            1,
            "{rel} is compact JSON with one newline"
        );
        assert!(text.ends_with("}\n"));
        // Bug 13: the original created 0760 folders; web servers could not read them.
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o644,
            "{rel}"
        );
        let parent = p.parent().unwrap();
        assert_eq!(
            std::fs::metadata(parent).unwrap().permissions().mode() & 0o777,
            0o755,
            "{rel}"
        );
    }
    for rel in ["streams/v1/images.json", "streams/v1/index.json"] {
        let gz = std::fs::read(f.root().join(format!("{rel}.gz"))).unwrap();
        let mut plain = String::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_string(&mut plain)
            .unwrap();
        assert_eq!(plain, std::fs::read_to_string(f.root().join(rel)).unwrap());
    }
}

fn product<'a>(images: &'a Value, id: &str) -> &'a Value {
    &images["products"][id]
}

#[test]
fn bug_1_and_2_combined_hashes_are_per_metadata_file_and_only_for_present_rootfs() {
    let f = published_fixture();
    let images = read_json(&f.root().join("streams/v1/images.json"));
    let v1 = &product(&images, "debian:12:amd64:default")["versions"]["20240105_03:00"]["items"];
    // Only a squashfs: no root.tar.xz keys at all (the original set them to sha256(meta)).
    assert_eq!(
        v1["lxd.tar.xz"]["combined_squashfs_sha256"],
        sha(&[&f.files["deb-lxd-1"], &f.files["deb-sq-1"]])
    );
    assert!(v1["lxd.tar.xz"].get("combined_rootxz_sha256").is_none());
    assert!(v1["lxd.tar.xz"].get("combined_sha256").is_none());
    // lxd.tar.xz and incus.tar.xz side by side: each paired with the rootfs alone, never mixed.
    let v2 = &product(&images, "debian:12:amd64:default")["versions"]["20240106_03:00"]["items"];
    for (key, file) in [("lxd.tar.xz", "deb-lxd-2"), ("incus.tar.xz", "deb-incus-2")] {
        assert_eq!(
            v2[key]["combined_squashfs_sha256"],
            sha(&[&f.files[file], &f.files["deb-sq-2"]]),
            "{key}"
        );
        assert_eq!(
            v2[key]["combined_rootxz_sha256"],
            sha(&[&f.files[file], &f.files["deb-txz-2"]]),
            "{key}"
        );
        assert_eq!(
            v2[key]["combined_sha256"], v2[key]["combined_rootxz_sha256"],
            "{key}"
        );
    }
    // A VM with its own metadata: the container metadata has no disk hash, the VM's only that.
    let a = &product(&images, "alpine:3.20:arm64:default")["versions"]["20240201_1200"]["items"];
    for fam in ["incus", "lxd"] {
        let ct = &a[format!("{fam}.tar.xz")];
        let vm = &a[format!("{fam}-vm.tar.xz")];
        assert_eq!(
            ct["combined_squashfs_sha256"],
            sha(&[&f.files["alp-incus"], &f.files["alp-sq"]])
        );
        assert!(ct.get("combined_disk-kvm-img_sha256").is_none());
        assert_eq!(
            vm["combined_disk-kvm-img_sha256"],
            sha(&[&f.files["alp-vm"], &f.files["alp-disk"]])
        );
        assert!(vm.get("combined_squashfs_sha256").is_none());
        assert_eq!(vm["ftype"], format!("{fam}.tar.xz"));
    }
}

#[test]
fn both_client_families_get_a_metadata_item_in_every_version() {
    let f = published_fixture();
    let images = read_json(&f.root().join("streams/v1/images.json"));
    for (id, p) in images["products"].as_object().unwrap() {
        for (v, version) in p["versions"].as_object().unwrap() {
            let ftypes: Vec<&str> = version["items"]
                .as_object()
                .unwrap()
                .values()
                .map(|i| i["ftype"].as_str().unwrap())
                .collect();
            assert!(
                ftypes.contains(&"lxd.tar.xz") && ftypes.contains(&"incus.tar.xz"),
                "{id} {v}: {ftypes:?}"
            );
        }
    }
    // The bridged twin points at the same file with the same hashes.
    let v1 = &product(&images, "debian:12:amd64:default")["versions"]["20240105_03:00"]["items"];
    assert_eq!(v1["incus.tar.xz"]["path"], v1["lxd.tar.xz"]["path"]);
    assert_eq!(
        v1["incus.tar.xz"]["combined_squashfs_sha256"],
        v1["lxd.tar.xz"]["combined_squashfs_sha256"]
    );
}

#[test]
fn bug_3_support_eol_is_a_date_from_the_newest_build() {
    let f = published_fixture();
    let images = read_json(&f.root().join("streams/v1/images.json"));
    // expiry: 30d after the newest version, 2024-01-06 03:00.
    assert_eq!(
        product(&images, "debian:12:amd64:default")["support_eol"],
        "2024-02-05"
    );
    assert!(
        product(&images, "alpine:3.20:arm64:default")
            .get("support_eol")
            .is_none()
    );
}

#[test]
fn bug_4_compound_durations_count_every_pair() {
    let f = tree_fixture();
    let out = bin()
        .current_dir(f.root())
        .args([
            "build-versions-manifest",
            "-p",
            "debian:12:amd64:default",
            "-s",
            ".",
            "--stdout",
            "-e",
            "1w2d",
        ])
        .assert()
        .success();
    let m: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(m["expiry"], "2024-01-15", "9 days after 2024-01-06, not 2");
}

#[test]
fn bug_6_stdout_carries_only_json() {
    let f = tree_fixture();
    for args in [
        vec![
            "build-versions-manifest",
            "-p",
            "debian:12:amd64:default",
            "-s",
            ".",
            "--stdout",
        ],
        vec!["build-images-file", "-s", ".", "--stdout"],
        vec!["build-index", "-s", ".", "--stdout"],
    ] {
        if args[0] != "build-versions-manifest" {
            publish(&f).success();
        }
        let out = bin().current_dir(f.root()).args(&args).assert().success();
        let stdout = &out.get_output().stdout;
        let v: Value = serde_json::from_slice(stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", String::from_utf8_lossy(stdout)));
        assert!(v.is_object());
        assert_eq!(
            stdout.iter().filter(|&&b| b == b'\n').count(),
            1,
            "{args:?}"
        );
    }
}

#[test]
fn old_four_step_flow_gives_the_same_catalog_as_publish() {
    let f = published_fixture();
    let want_images = read_json(&f.root().join("streams/v1/images.json"));
    let want_index = read_json(&f.root().join("streams/v1/index.json"));
    std::fs::remove_dir_all(f.root().join("streams")).unwrap();
    let step = |args: &[&str]| bin().current_dir(f.root()).args(args).assert().success();
    for p in [
        "debian:12:amd64:default",
        "alpine:3.20:arm64:default",
        "secret:1:amd64:default",
    ] {
        step(&["build-versions-manifest", "-p", p, "-s", ".", "-t", "."]);
    }
    step(&["build-images-file", "-t", "."]);
    step(&["build-index", "-t", "."]);
    assert_eq!(
        read_json(&f.root().join("streams/v1/images.json")),
        want_images
    );
    assert_eq!(
        read_json(&f.root().join("streams/v1/index.json")),
        want_index
    );
    bin()
        .current_dir(f.root())
        .args(["build-index", "-t", ".", "--stdout"])
        .assert()
        .failure()
        .stderr(predicates::str::contains("not both"));
}

#[test]
fn bug_7_images_path_moves_the_file_where_the_index_points() {
    let f = tree_fixture();
    bin()
        .current_dir(f.root())
        .env("SSBUILDER_IMAGES_PATH", "/custom/v9/")
        .args(["publish", "-t", "."])
        .assert()
        .success();
    let index = read_json(&f.root().join("streams/v1/index.json"));
    assert_eq!(index["index"]["images"]["path"], "custom/v9/images.json");
    assert!(f.root().join("custom/v9/images.json").is_file());
    assert!(f.root().join("custom/v9/images.json.gz").is_file());
}

#[test]
fn bug_8_and_env_prefix_join_item_paths_by_url_or_path_rules() {
    let f = tree_fixture();
    for (prefix, path) in [
        (
            "https://cdn.example.org/ns/",
            "https://cdn.example.org/ns/debian-12/20240105_03:00/rootfs.squashfs",
        ),
        (
            "../lxd-debian",
            "../lxd-debian/debian-12/20240105_03:00/rootfs.squashfs",
        ),
    ] {
        bin()
            .current_dir(f.root())
            .env("SSBUILDER_PREFIX", prefix)
            .args(["publish", "-t", "."])
            .assert()
            .success();
        let images = read_json(&f.root().join("streams/v1/images.json"));
        let version = &product(&images, "debian:12:amd64:default")["versions"]["20240105_03:00"];
        assert_eq!(version["items"]["root.squashfs"]["path"], path);
    }
}

#[test]
fn bug_9_folders_that_are_not_version_names_are_never_published() {
    let f = tree_fixture();
    let out = publish(&f).success();
    let stderr = stderr_of(&out);
    assert!(stderr.contains("20240103: skipped"), "{stderr}");
    let m = read_json(&f.root().join("debian-12/ssb.json"));
    let versions: Vec<&String> = m["versions"].as_object().unwrap().keys().collect();
    assert_eq!(versions, ["20240105_03:00", "20240106_03:00"]);
}

#[test]
fn bug_11_help_texts_say_what_the_flags_do() {
    let help = |args: &[&str]| {
        String::from_utf8(
            bin()
                .args(args)
                .arg("--help")
                .assert()
                .success()
                .get_output()
                .stdout
                .clone(),
        )
        .unwrap()
    };
    let h = help(&["build-images-file"]);
    assert!(
        h.contains("--stdout") && h.contains("Print the JSON"),
        "{h}"
    );
    assert!(!h.contains("index.json on stdout"));
    let h = help(&["build-versions-manifest"]);
    assert!(!h.contains("Default is image.yaml"), "{h}");
    let h = help(&[]);
    assert!(h.contains("publish") && h.contains("Order of work"), "{h}");
}

#[test]
fn hidden_products_are_manifested_but_not_published() {
    let f = published_fixture();
    assert!(f.root().join("secret/ssb.json").is_file());
    let index = read_json(&f.root().join("streams/v1/index.json"));
    assert_eq!(
        index["index"]["images"]["products"],
        serde_json::json!(["alpine:3.20:arm64:default", "debian:12:amd64:default"])
    );
}

#[test]
fn a_second_publish_reads_no_image_bytes() {
    let f = tree_fixture();
    let first = publish(&f).success();
    assert!(!stderr_of(&first).contains("read 0 B"));
    let again = publish(&f).success();
    let stderr = stderr_of(&again);
    assert!(stderr.contains("read 0 B of image data"), "{stderr}");
}

#[test]
fn a_byte_identical_rebuild_keeps_the_earlier_version() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    let m = meta("Debian", "12", "amd64", "same");
    for (v, rootfs) in [
        ("20240101_00:00", "same bytes"),
        ("20240102_00:00", "same bytes"),
        ("20240103_00:00", "new bytes"),
    ] {
        let dir = format!("images/debian/12/amd64/default/{v}");
        put_image(r, &dir, "incus.tar.xz", &m, rootfs.as_bytes());
    }
    let out = bin().args(["publish", "-t"]).arg(r).assert().success();
    let stderr = stderr_of(&out);
    assert!(
        stderr.contains(
            "version 20240102_00:00: skipped an image byte-identical to version 20240101_00:00"
        ),
        "{stderr}"
    );
    let images = read_json(&r.join("streams/v1/images.json"));
    let versions: Vec<&String> = images["products"]["debian:12:amd64:default"]["versions"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(versions, ["20240101_00:00", "20240103_00:00"]);
}

#[test]
fn layout_mode_names_products_and_aliases_from_folders() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    put_image(
        r,
        "images/debian/12/amd64/default/20240101_00:00",
        "incus.tar.xz",
        &meta("Debian", "12", "amd64", "d"),
        b"d",
    );
    put_image(
        r,
        "images/debian/12/amd64/cloud/20240101_00:00",
        "lxd.tar.xz",
        &meta("Debian", "12", "amd64", "c"),
        b"c",
    );
    bin()
        .current_dir(r)
        .args(["publish", "-t", "."])
        .assert()
        .success();
    let images = read_json(&r.join("streams/v1/images.json"));
    let d = product(&images, "debian:12:amd64:default");
    assert_eq!(d["aliases"], "debian/12/default,debian/12");
    assert_eq!(d["os"], "Debian", "from metadata.yaml");
    assert_eq!(d["release_title"], "12");
    assert_eq!(d["variant"], "default");
    assert_eq!(
        product(&images, "debian:12:amd64:cloud")["aliases"],
        "debian/12/cloud"
    );
}

#[test]
fn alias_clashes_between_products_are_refused_before_writing() {
    let f = published_fixture();
    let before = std::fs::read(f.root().join("streams/v1/images.json")).unwrap();
    let clash = TREE_YML
        .replace("aliases: alpine/3.20", "aliases: debian/12")
        .replace("arch: arm64", "arch: amd64");
    put(f.root(), "tree.yml", clash.as_bytes());
    // Alpine's metadata says aarch64: make the arch agree so only the alias rule fires.
    put(
        f.root(),
        "alpine/3.20/20240201_1200/incus.tar.xz",
        &meta("Alpine", "3.20", "amd64", "ct"),
    );
    put(
        f.root(),
        "alpine/3.20/20240201_1200/incus-vm.tar.xz",
        &meta("Alpine", "3.20", "amd64", "vm"),
    );
    let out = publish(&f).failure();
    let stderr = stderr_of(&out);
    assert!(stderr.contains("declares alias `debian/12` (x86_64, container), already declared by product `debian:12:amd64:default` (tree.yml:3:5)"), "{stderr}");
    assert_eq!(
        std::fs::read(f.root().join("streams/v1/images.json")).unwrap(),
        before
    );
}

#[test]
fn metadata_that_contradicts_the_product_arch_is_an_error() {
    let f = tree_fixture();
    put(
        f.root(),
        "alpine/3.20/20240201_1200/incus.tar.xz",
        &meta("Alpine", "3.20", "amd64", "ct"),
    );
    let out = publish(&f).failure();
    let stderr = stderr_of(&out);
    assert!(
        stderr.contains("incus.tar.xz: metadata.yaml says architecture `amd64` but the product's arch is `arm64`"),
        "{stderr}"
    );
}

// ---- Bad input: clear errors, non-zero exit, published catalog untouched ----

fn assert_fails_untouched(f: &Fixture, needles: &[&str]) {
    let before = std::fs::read(f.root().join("streams/v1/images.json")).unwrap();
    let out = publish(f).failure().code(1);
    let stderr = stderr_of(&out);
    assert!(stderr.contains("error: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for n in needles {
        assert!(stderr.contains(n), "missing {n:?} in:\n{stderr}");
    }
    assert_eq!(
        std::fs::read(f.root().join("streams/v1/images.json")).unwrap(),
        before,
        "catalog changed"
    );
}

#[test]
fn malformed_tree_yml_is_located() {
    let f = published_fixture();
    put(
        f.root(),
        "tree.yml",
        b"products:\n  - name: a\n    arch: amd64\n    days: [1\n",
    );
    assert_fails_untouched(&f, &["tree.yml:4:"]);
    put(
        f.root(),
        "tree.yml",
        TREE_YML.replace("arch: arm64", "arch: sparc").as_bytes(),
    );
    assert_fails_untouched(&f, &["tree.yml:16:11: unknown arch `sparc`"]);
    put(
        f.root(),
        "tree.yml",
        format!("{TREE_YML}  - name: debian:12:amd64:default\n    arch: amd64\n    directory: x\n")
            .as_bytes(),
    );
    assert_fails_untouched(
        &f,
        &["duplicate product name `debian:12:amd64:default` (first declared at tree.yml:3:11)"],
    );
}

/// What a failing `verify` of the fixture prints.
fn failed_verify(f: &Fixture) -> String {
    let out = bin()
        .current_dir(f.root())
        .args(["verify", "-t", "."])
        .assert()
        .failure();
    String::from_utf8_lossy(&out.get_output().stdout).into_owned()
}

/// A broken file in one version costs that version only: `publish` names the file, fails, and
/// still publishes the product with its other versions; `verify` and `list` report the version.
fn assert_version_left_out(f: &Fixture, needles: &[&str]) {
    const BROKEN: &str = "20240106_03:00";
    const PRODUCT: &str = "debian:12:amd64:default";
    let out = publish(f).failure().code(1);
    let stderr = stderr_of(&out);
    assert!(!stderr.contains("panicked"), "{stderr}");
    for n in needles.iter().chain(&["left out of the catalog"]) {
        assert!(stderr.contains(n), "missing {n:?} in:\n{stderr}");
    }
    let images = read_json(&f.root().join("streams/v1/images.json"));
    let versions: Vec<&String> = images["products"][PRODUCT]["versions"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(versions, ["20240105_03:00"], "the good version stays");
    assert!(
        images["products"]["alpine:3.20:arm64:default"].is_object(),
        "other products stay"
    );
    let stdout = failed_verify(f);
    assert!(
        stdout.contains(&format!(
            "left out of the catalog: debian-12/{BROKEN} (product {PRODUCT})"
        )),
        "{stdout}"
    );
    assert!(stdout.contains(needles[0]), "{stdout}");
    let out = bin()
        .current_dir(f.root())
        .args(["list", "-t", ".", "--format", "json"])
        .assert()
        .success();
    let rows: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let rejected: Vec<&Value> = rows
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["status"] == "rejected")
        .collect();
    assert_eq!(rejected.len(), 1, "{rows:#}");
    assert_eq!(rejected[0]["product"], PRODUCT);
    assert_eq!(rejected[0]["version"], BROKEN);
}

#[test]
fn a_metadata_tarball_that_is_not_a_tarball_costs_its_version_only() {
    let f = published_fixture();
    put(
        f.root(),
        "debian-12/20240106_03:00/lxd.tar.xz",
        b"<html>404 not found</html> and more text to fill a tar header block..",
    );
    assert_version_left_out(&f, &["debian-12/20240106_03:00/lxd.tar.xz", "tarball"]);
}

#[test]
fn a_truncated_xz_costs_its_version_only() {
    let f = published_fixture();
    let full = &f.files["deb-incus-2"];
    put(
        f.root(),
        "debian-12/20240106_03:00/incus.tar.xz",
        &full[..full.len() - 40],
    );
    assert_version_left_out(
        &f,
        &["debian-12/20240106_03:00/incus.tar.xz", "truncated xz data"],
    );
}

#[test]
fn an_unreadable_file_costs_its_version_only() {
    let f = published_fixture();
    let p = f.root().join("debian-12/20240106_03:00/rootfs.squashfs");
    std::fs::remove_file(&p).unwrap();
    std::os::unix::fs::symlink("/nonexistent/rootfs.squashfs", &p).unwrap();
    assert_version_left_out(&f, &["debian-12/20240106_03:00/rootfs.squashfs"]);
}

/// Issue 13, item 4: an empty or foreign rootfs is refused by `publish` and `verify` alike, with
/// one rule (the same one uploads and `import` apply).
#[test]
fn an_empty_or_foreign_rootfs_costs_its_version_only() {
    let f = published_fixture();
    put(f.root(), "debian-12/20240106_03:00/rootfs.squashfs", b"");
    assert_version_left_out(
        &f,
        &[
            "debian-12/20240106_03:00/rootfs.squashfs",
            "is empty (0 bytes)",
        ],
    );
    let f = published_fixture();
    put(
        f.root(),
        "debian-12/20240106_03:00/rootfs.tar.xz",
        b"\x89PNG\r\n\x1a\n a picture, not a root tarball",
    );
    assert_version_left_out(
        &f,
        &["debian-12/20240106_03:00/rootfs.tar.xz", "a PNG image"],
    );
}

/// Issue 13, item 1: a metadata tarball for an architecture nobody knows costs its version.
#[test]
fn metadata_of_an_unknown_architecture_costs_its_version_only() {
    let f = published_fixture();
    put(
        f.root(),
        "debian-12/20240106_03:00/incus.tar.xz",
        &meta("Debian", "12", "z80", "v2-incus"),
    );
    assert_version_left_out(
        &f,
        &[
            "debian-12/20240106_03:00/incus.tar.xz",
            "architecture `z80`",
        ],
    );
}

/// A catalog published by an older version may list an empty rootfs: `verify` says so.
#[test]
fn verify_names_a_published_empty_rootfs() {
    let f = published_fixture();
    let p = f.root().join("debian-12/20240106_03:00/rootfs.squashfs");
    std::fs::write(&p, b"").unwrap();
    let stdout = failed_verify(&f);
    assert!(
        stdout.contains(
            "broken image file: debian-12/20240106_03:00/rootfs.squashfs: is empty (0 bytes), not a squashfs image"
        ),
        "{stdout}"
    );
}

#[test]
fn a_missing_tree_is_an_error_not_an_empty_catalog() {
    let dir = tempfile::tempdir().unwrap();
    bin()
        .current_dir(dir.path())
        .args(["publish", "-t", "no-such-tree"])
        .assert()
        .failure()
        .stderr(predicates::str::contains("no-such-tree is not a folder"));
    assert!(!dir.path().join("no-such-tree").exists());
}

// ---- Remote manifests (prefix_path) against a loopback server ----

/// A tiny HTTP server on 127.0.0.1 that answers from a table and records every request.
struct Remote {
    url: String,
    requests: Arc<Mutex<Vec<String>>>,
}

fn remote(routes: Vec<(&'static str, u16, Vec<u8>)>) -> Remote {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&requests);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut head = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
            log.lock().unwrap().push(head);
            let (status, body) = routes
                .iter()
                .find(|(p, _, _)| *p == path)
                .map(|(_, s, b)| (*s, b.clone()))
                .unwrap_or((404, b"not found".to_vec()));
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(&body);
        }
    });
    Remote { url, requests }
}

fn remote_tree(url: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let yml = format!(
        "products:\n  - name: far:1:amd64:default\n    arch: amd64\n    os: Far\n    release: '1'\n    directory: far\n    prefix_path: {url}/ns\n    aliases: [far/1]\n"
    );
    put(dir.path(), "tree.yml", yml.as_bytes());
    dir
}

const FAR_SSB: &str = r#"{"name":"far:1:amd64:default","expiry":"1796314639","versions":{"20240105_03:00":{"items":{"lxd.tar.xz":{"combined_squashfs_sha256":"aa","ftype":"lxd.tar.xz","path":"../far/20240105_03:00/lxd.tar.xz","sha256":"bb","size":1},"root.squashfs":{"ftype":"squashfs","path":"../far/20240105_03:00/rootfs.squashfs","sha256":"cc","size":2}}}}}"#;

#[test]
fn remote_manifests_are_fetched_once_and_the_token_stays_off_plain_http() {
    let srv = remote(vec![("/ns/far/ssb.json", 200, FAR_SSB.as_bytes().to_vec())]);
    let dir = remote_tree(&srv.url);
    let out = bin()
        .current_dir(dir.path())
        .args(["-k", "s3cret", "publish", "-t", "."])
        .assert()
        .success();
    let stderr = stderr_of(&out);
    assert!(stderr.contains("not sending the API key"), "{stderr}");
    {
        let reqs = srv.requests.lock().unwrap();
        assert_eq!(reqs.len(), 1, "fetched once for both files: {reqs:?}");
        assert!(
            !reqs[0].to_lowercase().contains("authorization"),
            "bug 14: token sent over http"
        );
    }
    let images = read_json(&dir.path().join("streams/v1/images.json"));
    let p = product(&images, "far:1:amd64:default");
    assert_eq!(
        p["support_eol"], "2026-12-03",
        "the original's Unix seconds, read and converted"
    );
    assert_eq!(
        p["versions"]["20240105_03:00"]["items"]["incus.tar.xz"]["combined_squashfs_sha256"],
        "aa"
    );
    bin()
        .current_dir(dir.path())
        .env("SSBUILDER_ALLOW_HTTP_TOKEN", "1")
        .args(["-k", "s3cret", "publish", "-t", "."])
        .assert()
        .success();
    assert!(
        srv.requests.lock().unwrap()[1].contains("uthorization: token s3cret"),
        "{:?}",
        srv.requests.lock().unwrap()
    );
}

#[test]
fn a_remote_product_not_built_yet_is_left_out_with_a_warning() {
    // Mottainai pipeline item 1: tree.yml declares a product whose namespace has no ssb.json
    // yet (404). The index task removes streams/ first, so failing left no catalog at all; the
    // original skipped the product.
    let srv = remote(vec![]);
    let dir = remote_tree(&srv.url);
    for step in ["build-index", "build-images-file"] {
        let out = bin()
            .current_dir(dir.path())
            .args(["-t", ".", step])
            .assert()
            .success();
        let stderr = stderr_of(&out);
        assert!(
            stderr.contains(&format!(
                "product `far:1:amd64:default`: {}/ns/far/ssb.json (HTTP 404) does not exist (the product has not been built yet); left out of the catalog",
                srv.url
            )),
            "{step}: {stderr}"
        );
    }
    let index = read_json(&dir.path().join("streams/v1/index.json"));
    assert_eq!(index["index"]["images"]["products"], serde_json::json!([]));
    assert_eq!(
        srv.requests.lock().unwrap().len(),
        2,
        "a 404 is not retried"
    );
}

#[test]
fn a_remote_manifest_that_fails_otherwise_fails_and_publishes_nothing() {
    let srv = remote(vec![("/ns/far/ssb.json", 500, b"oops".to_vec())]);
    let dir = remote_tree(&srv.url);
    put(dir.path(), "streams/v1/images.json", b"{\"old\":true}\n");
    let out = bin()
        .current_dir(dir.path())
        .args(["publish", "-t", "."])
        .assert()
        .failure();
    let stderr = stderr_of(&out);
    assert!(
        stderr.contains(&format!(
            "product `far:1:amd64:default`: cannot fetch {}/ns/far/ssb.json: HTTP 500",
            srv.url
        )),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(dir.path().join("streams/v1/images.json")).unwrap(),
        b"{\"old\":true}\n"
    );
    let out = bin()
        .current_dir(dir.path())
        .args(["publish", "-t", ".", "--skip-unavailable"])
        .assert()
        .success();
    assert!(stderr_of(&out).contains("left out (--skip-unavailable)"));
    // The environment form, as pipelines set it.
    let out = bin()
        .current_dir(dir.path())
        .env("SSBUILDER_SKIP_UNAVAILABLE", "1")
        .args(["-t", ".", "build-index"])
        .assert()
        .success();
    assert!(stderr_of(&out).contains("left out (--skip-unavailable)"));

    // A refusal (a wrong token, say) fails at once: not retried, not left out.
    let srv = remote(vec![("/ns/far/ssb.json", 403, b"no".to_vec())]);
    let dir = remote_tree(&srv.url);
    let out = bin()
        .current_dir(dir.path())
        .args(["-t", ".", "build-index"])
        .assert()
        .failure();
    assert!(stderr_of(&out).contains("HTTP 403"), "{}", stderr_of(&out));
    assert_eq!(
        srv.requests.lock().unwrap().len(),
        1,
        "a 4xx is not retried"
    );
}

#[test]
fn a_missing_local_manifest_is_an_error_not_a_smaller_catalog() {
    // Only a remote 404 means "not built yet"; a local ssb.json that is not there means a
    // wrong -s or a product never manifested, and publishing without it would shrink the
    // catalog silently.
    let f = tree_fixture();
    let out = bin()
        .current_dir(f.root())
        .args(["-t", ".", "build-index"])
        .assert()
        .failure();
    assert!(
        stderr_of(&out).contains("not found (run build-versions-manifest or publish first)"),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn a_manifest_for_another_product_is_refused() {
    let srv = remote(vec![(
        "/ns/far/ssb.json",
        200,
        FAR_SSB.replace("far:1", "near:1").into_bytes(),
    )]);
    let dir = remote_tree(&srv.url);
    bin()
        .current_dir(dir.path())
        .args(["publish", "-t", "."])
        .assert()
        .failure()
        .stderr(predicates::str::contains(
            "holds the manifest of `near:1:amd64:default`",
        ));
}

#[test]
fn print_shows_the_effective_configuration() {
    let f = tree_fixture();
    let out = bin()
        .current_dir(f.root())
        .env("SSBUILDER_PREFIX", "../ns")
        .arg("print")
        .assert()
        .success();
    let s = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    assert!(s.contains("prefix: ../ns"), "{s}");
    assert!(s.contains("\tname: debian:12:amd64:default"), "{s}");
    assert!(s.contains("\taliases: [debian/12 debian/bookworm]"), "{s}");
}

#[test]
fn the_demo_builds_a_tree_real_clients_can_read() {
    let dir = tempfile::tempdir().unwrap();
    bin()
        .args(["demo", "--no-serve", "-t"])
        .arg(dir.path())
        .assert()
        .success();
    let images = read_json(&dir.path().join("streams/v1/images.json"));
    let (id, p) = images["products"]
        .as_object()
        .unwrap()
        .iter()
        .next()
        .unwrap();
    assert!(id.starts_with("ssb-demo:1.0:"), "{id}");
    let (_, v) = p["versions"].as_object().unwrap().iter().next().unwrap();
    let items = &v["items"];
    let base = dir.path();
    let read = |k: &str| std::fs::read(base.join(items[k]["path"].as_str().unwrap())).unwrap();
    assert_eq!(
        items["incus.tar.xz"]["combined_rootxz_sha256"],
        sha(&[&read("incus.tar.xz"), &read("root.tar.xz")])
    );
    // A second run reuses the image rather than adding a version.
    bin()
        .args(["demo", "--no-serve", "-t"])
        .arg(dir.path())
        .assert()
        .success();
    let again = read_json(&dir.path().join("streams/v1/images.json"));
    assert_eq!(again["products"], images["products"]);
}

#[test]
fn the_shipped_example_tree_is_valid_and_documents_every_key() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = root.join("tree.yml.example");
    let out = bin()
        .arg("-c")
        .arg(&example)
        .arg("print")
        .assert()
        .success();
    let stderr = stderr_of(&out);
    assert!(
        !stderr.contains("WARN"),
        "the example has unknown keys:\n{stderr}"
    );
    let text = std::fs::read_to_string(&example).unwrap();
    for key in [
        "prefix:",
        "images_path:",
        "datatype:",
        "format:",
        "name:",
        "arch:",
        "release:",
        "os:",
        "release_title:",
        "directory:",
        "version:",
        "prefix_path:",
        "build_script_hook:",
        "hidden:",
        "days:",
        "aliases:",
        "variant:",
        "release_codename:",
        "requirements:",
        "expiry:",
    ] {
        assert!(text.contains(key), "tree.yml.example does not show `{key}`");
    }
    assert!(root.join("products/debian-bookworm/image.yaml").is_file());
}

#[test]
fn the_readme_demo_command_serves_what_it_built() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = crate::common::ssb_command(dir.path())
        .args(["demo", "--listen", "127.0.0.1:0"])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stderr = child.stderr.take().unwrap();
    let _guard = Kill(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            seen.push_str(&line);
            seen.push('\n');
            if let Some(url) = line.split("listening on ").nth(1) {
                let _ = tx.send(Ok(url.trim().to_owned()));
            }
        }
        let _ = tx.send(Err(seen));
    });
    let url = match rx.recv_timeout(std::time::Duration::from_secs(60)) {
        Ok(Ok(url)) => url,
        other => panic!("demo did not start serving: {other:?}"),
    };
    let cert = std::fs::read(dir.path().join("ssb-demo/.ssb/tls/cert.pem"))
        .expect("the certificate lives in the demo tree");
    let client = reqwest::blocking::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&cert).unwrap())
        .resolve(
            "localhost",
            url.trim_start_matches("https://").parse().unwrap(),
        )
        .build()
        .unwrap();
    let port = url.rsplit(':').next().unwrap();
    let body = client
        .get(format!("https://localhost:{port}/streams/v1/index.json"))
        .send()
        .unwrap()
        .error_for_status()
        .unwrap()
        .bytes()
        .unwrap();
    let index: Value = serde_json::from_slice(&body).unwrap();
    let products = index["index"]["images"]["products"].as_array().unwrap();
    assert!(
        products[0].as_str().unwrap().starts_with("ssb-demo:1.0:"),
        "{index}"
    );
}

#[test]
fn requirements_files_apply_to_every_product_below_them() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    for os in ["debian", "alpine"] {
        put_image(
            r,
            &format!("images/{os}/1/amd64/default/20240101_00:00"),
            "incus.tar.xz",
            &meta(os, "1", "amd64", os),
            os.as_bytes(),
        );
    }
    put(r, "images/.requirements", br#"{"secureboot": false}"#);
    put(r, "images/debian/.requirements", br#"{"cgroup": "v2"}"#);
    bin().args(["publish", "-t"]).arg(r).assert().success();
    let images = read_json(&r.join("streams/v1/images.json"));
    let deb = product(&images, "debian:1:amd64:default");
    let want = serde_json::json!({"cgroup": "v2", "secureboot": "false"});
    assert_eq!(deb["requirements"], want);
    assert_eq!(
        deb["lxd_requirements"], want,
        "LXD reads lxd_requirements: both or neither"
    );
    assert_eq!(
        product(&images, "alpine:1:amd64:default")["requirements"],
        serde_json::json!({"secureboot": "false"})
    );
}

/// Mottainai pipeline item 7: messages that quote their cause printed it a second time.
#[test]
fn errors_say_each_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .current_dir(dir.path())
        .args(["-c", "missing.yml", "print"])
        .assert()
        .failure();
    let stderr = stderr_of(&out);
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        1,
        "{stderr}"
    );

    // The same image in two products: one problem, said once.
    let root = dir.path();
    let yml = "products:\n  - name: a:1:amd64:default\n    arch: amd64\n    directory: a\n  - name: b:1:amd64:default\n    arch: amd64\n    directory: b\n";
    put(root, "tree.yml", yml.as_bytes());
    let m = meta("Twin", "1", "x86_64", "same");
    for product in ["a", "b"] {
        put_image(
            root,
            &format!("{product}/20240105_03:00"),
            "incus.tar.xz",
            &m,
            b"rootfs",
        );
    }
    let out = bin()
        .current_dir(root)
        .args(["publish", "-t", "."])
        .assert()
        .failure();
    let stderr = stderr_of(&out);
    assert_eq!(
        stderr
            .matches("already published by product `a:1:amd64:default`")
            .count(),
        1,
        "{stderr}"
    );
}

/// Mottainai pipeline item 5: cobra took a subcommand's flags before its name, and printing the
/// catalog of remote products needs no source folder.
#[test]
fn subcommand_flags_work_before_the_name_and_remote_products_need_no_source() {
    let srv = remote(vec![("/ns/far/ssb.json", 200, FAR_SSB.as_bytes().to_vec())]);
    let dir = remote_tree(&srv.url);
    let out = bin()
        .current_dir(dir.path())
        .args(["-c", "tree.yml", "build-images-file", "--stdout"])
        .assert()
        .success();
    let images: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert!(
        images["products"]["far:1:amd64:default"].is_object(),
        "{images:#}"
    );
    let out = bin()
        .current_dir(dir.path())
        .args(["-s", ".", "-c", "tree.yml", "build-index", "--stdout"])
        .assert()
        .success();
    let index: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(
        index["index"]["images"]["products"],
        serde_json::json!(["far:1:amd64:default"])
    );
}

/// Mottainai pipeline item 4: a remote whose certificate is a self-signed CA:TRUE certificate,
/// given in SSL_CERT_FILE, failed with CaUsedAsEndEntity (and ~33 error lines). The Go clients
/// accept such a pinned certificate; so do remote manifests and mirror pulls now.
#[test]
fn a_pinned_self_signed_ca_certificate_is_accepted_for_remotes() {
    use crate::common::server::TestServer;
    use crate::common::tls::TestCa;
    let pinned = TestCa::self_signed_ca_server();
    let served = tempfile::tempdir().unwrap();
    put(served.path(), "ns/far/ssb.json", FAR_SSB.as_bytes());
    let server = TestServer::python_https(served.path(), &pinned);
    let dir = remote_tree(server.url());
    bin()
        .current_dir(dir.path())
        .env("SSL_CERT_FILE", pinned.ca_pem())
        .args(["publish", "-t", "."])
        .assert()
        .success();
    let images = read_json(&dir.path().join("streams/v1/images.json"));
    assert!(images["products"]["far:1:amd64:default"].is_object());

    // Not trusted: one clear line, not a cascade.
    let other = TestCa::generate();
    let out = bin()
        .current_dir(dir.path())
        .env("SSL_CERT_FILE", other.ca_pem())
        .env("SSBUILDER_HTTP_TIMEOUT", "5")
        .args(["publish", "-t", "."])
        .assert()
        .failure();
    let stderr = stderr_of(&out);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() <= 3, "{stderr}");
    assert!(stderr.contains("far:1:amd64:default"), "{stderr}");

    // A mirror pull from a server with that certificate.
    let tree = tempfile::tempdir().unwrap();
    let yml = "products:\n  - name: p:1:amd64:default\n    arch: amd64\n    directory: p\n    aliases: [p/1]\n";
    put(tree.path(), "tree.yml", yml.as_bytes());
    put_image(
        tree.path(),
        "p/20240105_03:00",
        "incus.tar.xz",
        &meta("Pinned", "1", "x86_64", "ct"),
        b"rootfs",
    );
    bin()
        .current_dir(tree.path())
        .args(["publish", "-t", "."])
        .assert()
        .success();
    let upstream = TestServer::python_https(tree.path(), &pinned);
    let mirror = tempfile::tempdir().unwrap();
    bin()
        .current_dir(mirror.path())
        .env("SSL_CERT_FILE", pinned.ca_pem())
        .args(["-t", "m", "mirror", "pull", upstream.url()])
        .assert()
        .success();
    let pulled = read_json(&mirror.path().join("m/streams/v1/images.json"));
    assert!(
        pulled["products"]["p:1:amd64:default"].is_object(),
        "{pulled:#}"
    );
}

/// Hardening item 7: an image file that is a symlink out of the tree was published (its sha256
/// and size in images.json) and passed verify, while serve refused to send it.
#[test]
fn an_image_file_resolving_outside_the_tree_is_refused_by_publish_and_verify() {
    let f = published_fixture();
    let outside = tempfile::tempdir().unwrap();
    let rootfs = f.root().join("debian-12/20240106_03:00/rootfs.squashfs");
    // The same bytes, outside: the hashes still match what the catalog says.
    let copy = outside.path().join("rootfs.squashfs");
    std::fs::copy(&rootfs, &copy).unwrap();
    std::fs::remove_file(&rootfs).unwrap();
    std::os::unix::fs::symlink(&copy, &rootfs).unwrap();
    let out = bin()
        .current_dir(f.root())
        .args(["verify"])
        .assert()
        .failure();
    let stdout = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    assert!(
        stdout.contains("outside the tree: debian-12/20240106_03:00/rootfs.squashfs"),
        "{stdout}"
    );
    assert_version_left_out(&f, &["rootfs.squashfs resolves to", "outside the tree"]);
}

/// Hardening item 8: a symlink from images/ to a big system folder was walked (and a server
/// re-indexing the tree failed every second); a version folder with an invalid name left its
/// product published with `"versions": {}`. Both are reported and skipped; the rest publishes.
#[test]
fn stray_links_and_misnamed_versions_in_the_layout_are_reported_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let www = dir.path().join("www");
    let good = "images/debian/12/amd64/default/20240105_03:00";
    put_image(
        &www,
        good,
        "incus.tar.xz",
        &meta("Debian", "12", "x86_64", "good"),
        b"sq",
    );
    put_image(
        &www,
        "images/alpine/3.20/amd64/default/2024-01-05",
        "incus.tar.xz",
        &meta("Alpine", "3.20", "x86_64", "misnamed"),
        b"sq2",
    );
    let system = tempfile::tempdir().unwrap();
    put_image(
        system.path(),
        "12/amd64/default/20240105_03:00",
        "incus.tar.xz",
        &meta("Sys", "12", "x86_64", "sys"),
        b"sys",
    );
    std::os::unix::fs::symlink(system.path(), www.join("images/usr")).unwrap();
    let out = bin()
        .current_dir(dir.path())
        .args(["publish", "-t", "www"])
        .assert()
        .success();
    let stderr = stderr_of(&out);
    assert!(
        stderr.contains("images/usr: skipped: a symlink"),
        "{stderr}"
    );
    assert!(stderr.contains("2024-01-05: skipped"), "{stderr}");
    assert!(
        stderr.contains("product `alpine:3.20:amd64:default` has no version to publish"),
        "{stderr}"
    );
    let images = read_json(&www.join("streams/v1/images.json"));
    let ids: Vec<&String> = images["products"].as_object().unwrap().keys().collect();
    assert_eq!(ids, ["debian:12:amd64:default"]);
}

/// Hardening item 5: temp files that killed uploads and writes left stayed forever (not
/// removed by a restart, publish or `prune --yes`, not reported by verify).
#[test]
fn temp_files_left_by_crashes_are_reported_pruned_and_cleared_by_the_server() {
    let f = published_fixture();
    let leftovers = [
        "debian-12/20240106_03:00/.upload-abc123",
        "streams/v1/.tmp-images.json.XYZ",
    ];
    for rel in leftovers {
        put(f.root(), rel, &vec![7u8; 4096]);
    }
    let out = bin().current_dir(f.root()).arg("verify").assert().failure();
    let stdout = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    for rel in leftovers {
        assert!(
            stdout.contains(&format!("left by an interrupted write: {rel} (4096 bytes")),
            "{stdout}"
        );
    }
    let out = bin().current_dir(f.root()).arg("prune").assert().success();
    let stdout = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    assert!(
        stdout.contains("would remove debian-12/20240106_03:00/.upload-abc123"),
        "{stdout}"
    );
    bin()
        .current_dir(f.root())
        .args(["prune", "--yes"])
        .assert()
        .success();
    for rel in leftovers {
        assert!(!f.root().join(rel).exists(), "{rel} not pruned");
    }
    bin().current_dir(f.root()).arg("verify").assert().success();

    // A server that owns the catalog clears them at start.
    for rel in leftovers {
        put(f.root(), rel, b"half");
    }
    let ca = crate::common::tls::TestCa::generate();
    let index = ["--index", "--no-watch"].map(std::ffi::OsStr::new);
    let server = crate::common::server::TestServer::serve_from(f.root(), f.root(), &ca, &index);
    for rel in leftovers {
        assert!(
            !f.root().join(rel).exists(),
            "{rel} left at start:\n{}",
            server.said()
        );
    }
}

/// Hardening item 2: `publish` or `serve --index` started without the tree.yml that built a
/// tree scanned the layout, found no product and replaced a catalog of N products with an
/// empty one. Such a run is refused, with what to do, unless --force.
#[test]
fn a_run_in_the_wrong_mode_does_not_wipe_the_catalog() {
    let f = published_fixture();
    let catalog = || std::fs::read(f.root().join("streams/v1/images.json")).unwrap();
    let before = catalog();
    // From another folder: no tree.yml, so the layout is scanned (and holds nothing).
    let elsewhere = tempfile::tempdir().unwrap();
    let out = bin()
        .current_dir(elsewhere.path())
        .arg("publish")
        .arg("-t")
        .arg(f.root())
        .assert()
        .failure();
    let stderr = stderr_of(&out);
    assert!(
        stderr.contains("refusing to replace the catalog")
            && stderr.contains("scanning the images/ layout")
            && stderr.contains("-c FILE")
            && stderr.contains("--force"),
        "{stderr}"
    );
    assert_eq!(catalog(), before);

    // The server, started the same way, keeps it too.
    let ca = crate::common::tls::TestCa::generate();
    let index = ["--index", "--no-watch"].map(std::ffi::OsStr::new);
    let server =
        crate::common::server::TestServer::serve_from(elsewhere.path(), f.root(), &ca, &index);
    server.wait_said(&["refusing to replace the catalog"]);
    drop(server);
    assert_eq!(catalog(), before);

    // Asked for: replaced.
    bin()
        .current_dir(elsewhere.path())
        .arg("publish")
        .arg("-t")
        .arg(f.root())
        .arg("--force")
        .assert()
        .success();
    let images = read_json(&f.root().join("streams/v1/images.json"));
    assert!(images["products"].as_object().unwrap().is_empty());
}

/// Publishing an unchanged tree rewrites nothing (the catalog keeps its time stamp, no file
/// gets a new inode), and a change to one product rewrites that product's manifest and the
/// catalog only.
#[test]
fn an_unchanged_tree_is_published_without_writing_anything() {
    use std::os::unix::fs::MetadataExt;
    let f = published_fixture();
    let files = [
        "streams/v1/images.json",
        "streams/v1/images.json.gz",
        "streams/v1/index.json",
        "streams/v1/index.json.gz",
        "debian-12/ssb.json",
        "alpine/3.20/ssb.json",
    ];
    // A file replaced by a rename is another inode; with its change time too, since a number
    // freed by a removal (a stale `.gz` twin goes before its file is replaced) can come back.
    let inodes = || -> Vec<(u64, i64, i64)> {
        files
            .iter()
            .map(|p| {
                let m = std::fs::metadata(f.root().join(p)).unwrap();
                (m.ino(), m.ctime(), m.ctime_nsec())
            })
            .collect()
    };
    let before = inodes();
    let stamp = read_json(&f.root().join("streams/v1/index.json"))["updated"].clone();
    let out = bin()
        .env("SOURCE_DATE_EPOCH", "1800000000")
        .current_dir(f.root())
        .args(["publish", "-t", "."])
        .assert()
        .success();
    assert!(
        stderr_of(&out).contains("nothing changed, the catalog was kept as it was"),
        "{}",
        stderr_of(&out)
    );
    assert_eq!(inodes(), before, "nothing rewritten");
    assert_eq!(
        read_json(&f.root().join("streams/v1/index.json"))["updated"],
        stamp
    );

    // A new Alpine version: its manifest and the catalog change, Debian's manifest does not.
    for (name, file) in [("incus.tar.xz", "alp-incus"), ("rootfs.squashfs", "alp-sq")] {
        let mut bytes = f.files[file].clone();
        if name == "rootfs.squashfs" {
            bytes = fake_squashfs(b"alpine squashfs, rebuilt");
        }
        put(
            f.root(),
            &format!("alpine/3.20/20240301_1200/{name}"),
            &bytes,
        );
    }
    bin()
        .env("SOURCE_DATE_EPOCH", "1800000000")
        .current_dir(f.root())
        .args(["publish", "-t", "."])
        .assert()
        .success();
    let after = inodes();
    for (i, file) in files.iter().enumerate() {
        let same = after[i] == before[i];
        assert_eq!(same, *file == "debian-12/ssb.json", "{file}");
    }
    assert_ne!(
        read_json(&f.root().join("streams/v1/index.json"))["updated"],
        stamp
    );
}
