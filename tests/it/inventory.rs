//! verify, prune and list on a published tree: every kind of damage is found and named, and
//! prune removes exactly the files the catalog does not reference.

use std::path::Path;

use assert_cmd::Command;
use serde_json::Value;
use simplestreams_builder::image::metadata::write_metadata_tarball;

use crate::common::fixtures::{fake_qcow2, fake_squashfs};

fn bin(dir: &Path) -> Command {
    crate::common::ssb(dir)
}

fn put(root: &Path, rel: &str, bytes: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, bytes).unwrap();
}

fn meta(tag: &str) -> Vec<u8> {
    let mut v = Vec::new();
    let yaml = format!(
        "architecture: x86_64\ncreation_date: 1\nproperties:\n  os: Debian\n  description: {tag}\n"
    );
    write_metadata_tarball(&mut v, &yaml, &[], 0).unwrap();
    v
}

const V1: &str = "images/debian/12/amd64/default/20240101_00:00";
const V2: &str = "images/debian/12/amd64/default/20240102_00:00";

/// A published layout tree: two versions, squashfs + qcow2 sharing one metadata file.
fn published() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    for (v, tag) in [(V1, "one"), (V2, "two")] {
        put(r, &format!("{v}/incus.tar.xz"), &meta(tag));
        put(
            r,
            &format!("{v}/rootfs.squashfs"),
            &fake_squashfs(format!("squashfs {tag} {}", "x".repeat(5000)).as_bytes()),
        );
        put(
            r,
            &format!("{v}/disk.qcow2"),
            &fake_qcow2(format!(" disk {tag}").as_bytes()),
        );
    }
    put(r, &format!("{V1}/build.log"), b"not an image file");
    bin(r).args(["publish", "-t", "."]).assert().success();
    dir
}

fn verify(r: &Path) -> (bool, String) {
    let out = bin(r).args(["verify", "-t", "."]).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn a_clean_tree_verifies() {
    let dir = published();
    let (ok, text) = verify(dir.path());
    assert!(ok, "{text}");
    assert!(
        text.contains("checked 6 file(s), 4 fingerprint(s)"),
        "{text}"
    );
    assert!(text.contains(": 0 problem(s)"), "{text}");
}

#[test]
fn verify_finds_a_flipped_byte_a_truncated_file_a_missing_file_and_orphans() {
    let dir = published();
    let r = dir.path();
    // A flipped byte: same size, other content.
    let sq = r.join(V2).join("rootfs.squashfs");
    let mut bytes = std::fs::read(&sq).unwrap();
    bytes[100] ^= 0x01;
    std::fs::write(&sq, &bytes).unwrap();
    // A truncated file.
    let disk = r.join(V1).join("disk.qcow2");
    let len = std::fs::metadata(&disk).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&disk)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    // A missing file.
    std::fs::remove_file(r.join(V2).join("disk.qcow2")).unwrap();
    // Orphans: a whole version never published, and a stray image file in a published one.
    put(
        r,
        "images/debian/12/amd64/default/20240103_00:00/incus.tar.xz",
        &meta("three"),
    );
    put(r, &format!("{V1}/rootfs.tar.xz"), b"stray");

    let (ok, text) = verify(r);
    assert!(!ok, "{text}");
    let needles: [String; 6] = [
        format!("wrong sha256: {V2}/rootfs.squashfs"),
        format!("wrong fingerprint: sha256({V2}/incus.tar.xz ‖ {V2}/rootfs.squashfs)"),
        format!(
            "wrong size: {V1}/disk.qcow2: published {len} bytes, found {}",
            len - 3
        ),
        format!(
            "missing: {V2}/disk.qcow2 (product debian:12:amd64:default, version 20240102_00:00)"
        ),
        "not in the catalog: images/debian/12/amd64/default/20240103_00:00\n".to_owned(),
        format!("not in the catalog: {V1}/rootfs.tar.xz"),
    ];
    for needle in &needles {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    assert!(
        !text.contains("build.log"),
        "non-image files are not orphans:\n{text}"
    );

    let json = bin(r)
        .args(["verify", "-t", ".", "--format", "json"])
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&json.stdout).unwrap();
    let kinds: Vec<&str> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["problem"].as_str().unwrap())
        .collect();
    for k in ["sha256", "combined", "size", "missing", "orphan"] {
        assert!(kinds.contains(&k), "{kinds:?}");
    }
}

#[test]
fn prune_is_a_dry_run_until_told_and_removes_only_orphans() {
    let dir = published();
    let r = dir.path();
    let orphan_version = "images/debian/12/amd64/default/20240103_00:00";
    put(r, &format!("{orphan_version}/incus.tar.xz"), &meta("three"));
    put(r, &format!("{orphan_version}/notes.txt"), b"x");
    put(r, &format!("{V1}/rootfs.tar.xz"), b"stray");

    let out = bin(r).args(["prune", "-t", "."]).assert().success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    assert!(
        text.contains(&format!("would remove {orphan_version}\n")),
        "{text}"
    );
    assert!(
        text.contains(&format!("would remove {V1}/rootfs.tar.xz")),
        "{text}"
    );
    assert!(text.contains("dry run"), "{text}");
    assert!(r.join(orphan_version).is_dir() && r.join(V1).join("rootfs.tar.xz").is_file());

    bin(r)
        .args(["prune", "-t", ".", "--yes"])
        .assert()
        .success();
    assert!(!r.join(orphan_version).exists());
    assert!(!r.join(V1).join("rootfs.tar.xz").exists());
    assert!(
        r.join(V1).join("build.log").is_file(),
        "not an image file: left alone"
    );
    let (ok, text) = verify(r);
    assert!(ok, "everything published is still there:\n{text}");
    let out = bin(r).args(["prune", "-t", "."]).assert().success();
    assert!(String::from_utf8_lossy(&out.get_output().stdout).contains("nothing to prune"));
}

#[test]
fn hidden_products_are_never_orphans() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    put(r, "tree.yml", b"products:\n  - name: a:1:amd64:default\n    arch: amd64\n    directory: a\n  - name: b:1:amd64:default\n    arch: amd64\n    directory: b\n    hidden: true\n");
    for p in ["a", "b"] {
        put(r, &format!("{p}/20240101_00:00/incus.tar.xz"), &meta(p));
        put(
            r,
            &format!("{p}/20240101_00:00/rootfs.squashfs"),
            &fake_squashfs(p.as_bytes()),
        );
    }
    bin(r).args(["publish", "-t", "."]).assert().success();
    bin(r)
        .args(["prune", "-t", ".", "--yes"])
        .assert()
        .success();
    assert!(r.join("b/20240101_00:00/rootfs.squashfs").is_file());
    let (ok, text) = verify(r);
    assert!(ok, "{text}");
}

#[test]
fn list_shows_every_image_as_a_table_or_json() {
    let dir = published();
    let r = dir.path();
    let out = bin(r).args(["list", "-t", "."]).assert().success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("PRODUCT"), "{text}");
    assert_eq!(lines.len(), 5, "4 images + header:\n{text}");
    assert!(
        text.contains("virtual-machine") && text.contains("container"),
        "{text}"
    );
    let out = bin(r)
        .args(["list", "-t", ".", "--format", "json"])
        .assert()
        .success();
    let rows: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 4);
    assert_eq!(
        rows[0]["aliases"],
        serde_json::json!(["debian/12/default", "debian/12"])
    );
    let images: Value =
        serde_json::from_slice(&std::fs::read(r.join("streams/v1/images.json")).unwrap()).unwrap();
    let fp = images["products"]["debian:12:amd64:default"]["versions"]["20240101_00:00"]["items"]["incus.tar.xz"]["combined_squashfs_sha256"].clone();
    assert!(rows.iter().any(|row| row["fingerprint"] == fp), "{rows:?}");
}

#[test]
fn verify_without_a_catalog_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("images")).unwrap();
    let out = bin(dir.path())
        .args(["verify", "-t", "."])
        .assert()
        .failure();
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(
        stderr.contains("streams/v1/index.json") && stderr.contains("run `publish` first"),
        "{stderr}"
    );
}
