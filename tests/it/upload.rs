//! The image server's writes, against the real binary over real sockets: the seed's curl
//! upload seen by incus and lxc, PUT, overwrites, deletes, an upload killed halfway, a file
//! copied in by other means, metadata.json overrides, auth, hostile names, and broken images
//! (readers and uploaders at once: `load`).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use crate::common::catalog::sha256_of;
use crate::common::clients::{Client, Clients, Program};
use crate::common::fixtures::{
    MetaSpec, fake_squashfs, random_squashfs, write_metadata_tarball, write_squashfs_rootfs,
};
use crate::common::site::Site;

const V1: &str = "20250101_10:00";
const V2: &str = "20250102_10:00";

fn product<'a>(catalog: &'a Value, id: &str) -> Option<&'a Value> {
    catalog["products"].get(id)
}

fn version_fingerprint(catalog: &Value, id: &str, version: &str) -> Option<String> {
    let items = product(catalog, id)?["versions"].get(version)?["items"].as_object()?;
    items
        .values()
        .find_map(|i| i["combined_squashfs_sha256"].as_str().map(str::to_owned))
}

/// An image's two files in a scratch folder.
fn image_files(scratch: &Path, os: &str, serial: &str) -> (PathBuf, PathBuf, String) {
    let meta = write_metadata_tarball(
        &scratch.join(format!("{os}-{serial}.tar.xz")),
        &MetaSpec::new(os, "1.0", serial),
    );
    let rootfs = write_squashfs_rootfs(
        &scratch.join(format!("{os}-{serial}.squashfs")),
        &format!("{os}-{serial}"),
    );
    let fp = sha256_of(&[&meta, &rootfs]);
    (meta, rootfs, fp)
}

/// A metadata tarball and a squashfs of random bytes after its superblock, without mksquashfs:
/// the indexer only checks its header and hashes it.
fn quick_image(scratch: &Path, os: &str, rootfs_len: usize) -> (PathBuf, PathBuf, String) {
    let meta = write_metadata_tarball(
        &scratch.join(format!("{os}.tar.xz")),
        &MetaSpec::new(os, "1.0", V1),
    );
    let rootfs = scratch.join(format!("{os}.squashfs"));
    let seed = os.bytes().fold(7u64, |a, b| a * 31 + u64::from(b));
    std::fs::write(&rootfs, random_squashfs(rootfs_len.max(96), seed)).unwrap();
    let fp = sha256_of(&[&meta, &rootfs]);
    (meta, rootfs, fp)
}

#[test]
fn seed_curl_upload_is_listed_by_incus_and_lxc() {
    let site = Site::start(&[], &[]);
    let Some(clients) = Clients::detect(
        &site.ca,
        &[Program::Incus, Program::Lxc, Program::Mksquashfs],
    ) else {
        return;
    };
    let scratch = site.dir.path().join("scratch");
    let (meta, rootfs, fp) = image_files(&scratch, "myos", V1);
    let base = format!("myos/1.0/amd64/default/{V1}");

    let (code, body) = site.post(&meta, &format!("{base}/lxd.tar.xz"));
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["path"], format!("images/{base}/lxd.tar.xz"));
    assert_eq!(body["sha256"], sha256_of(&[&meta]));
    assert_eq!(body["size"], std::fs::metadata(&meta).unwrap().len());
    let (code, body) = site.post(&rootfs, &format!("{base}/rootfs.squashfs"));
    assert_eq!(code, 201, "{body}");
    let uploaded = Instant::now();
    let (_, took) = site.wait_for(
        |c| version_fingerprint(c, "myos:1.0:amd64:default", V1).as_deref() == Some(&fp),
        "the uploaded image in images.json",
    );
    eprintln!(
        "indexed {:?} after the upload ended ({took:?} of polling)",
        uploaded.elapsed()
    );

    for client in Client::BOTH {
        clients.remote_add(client, "up", site.url());
        let listed = clients.image_list(client, "up");
        assert!(
            listed.iter().any(|i| i.fingerprint == fp),
            "{client:?} does not list {fp}: {listed:?}"
        );
    }
}

#[test]
fn put_upload_and_size_limit() {
    let site = Site::start(&["--max-upload-size", "1M"], &[]);
    let scratch = site.dir.path().join("scratch");
    let (meta, rootfs, fp) = quick_image(&scratch, "putos", 256 << 10);
    let base = format!("images/putos/2/amd64/default/{V1}");
    let (code, body) = site.put(&meta, &format!("{base}/incus.tar.xz"));
    assert_eq!(code, 201, "{body}");
    let (code, body) = site.put(&rootfs, &format!("{base}/rootfs.squashfs"));
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["sha256"], sha256_of(&[&rootfs]));
    assert_eq!(
        std::fs::read(site.www.join(&base).join("rootfs.squashfs")).unwrap(),
        std::fs::read(&rootfs).unwrap()
    );
    site.wait_for(
        |c| {
            product(c, "putos:2:amd64:default")
                .and_then(|p| p["versions"].get(V1))
                .and_then(|v| v["items"].as_object())
                .is_some_and(|items| {
                    items
                        .values()
                        .any(|i| i["combined_squashfs_sha256"].as_str() == Some(fp.as_str()))
                })
        },
        "the PUT image",
    );

    let big = scratch.join("big");
    std::fs::write(&big, vec![0u8; (1 << 20) + 1]).unwrap();
    // HTTP/1.1: over HTTP/2 an answer sent before the body is read ends with a stream reset,
    // which curl reports as its own error instead of showing the 413.
    let (code, body) = site.curl(&[
        "--http1.1",
        "-H",
        &Site::auth(),
        "-T",
        &big.display().to_string(),
        &format!(
            "{}/images/putos/2/amd64/default/{V2}/rootfs.squashfs",
            site.url()
        ),
    ]);
    assert_eq!(code, 413, "{body}");
    assert!(
        !site
            .www
            .join(format!("images/putos/2/amd64/default/{V2}"))
            .exists()
    );
}

#[test]
fn overwrite_off_keeps_the_file_and_says_where_the_upload_went() {
    let site = Site::start(&[], &[]);
    let scratch = site.dir.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let (one, two) = (scratch.join("one"), scratch.join("two"));
    std::fs::write(&one, fake_squashfs(b"first")).unwrap();
    std::fs::write(&two, fake_squashfs(b"second")).unwrap();
    let path = format!("ow/1/amd64/default/{V1}/rootfs.squashfs");
    assert_eq!(site.post(&one, &path).0, 201);
    let (code, body) = site.post(&two, &path);
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["requested_path"], format!("images/{path}"));
    assert_eq!(
        body["path"],
        format!("images/ow/1/amd64/default/{V1}/rootfs-1.squashfs")
    );
    assert_eq!(body["replaced"], false);
    assert_eq!(
        std::fs::read(site.www.join("images").join(&path)).unwrap(),
        fake_squashfs(b"first")
    );
    assert_eq!(
        std::fs::read(site.www.join(body["path"].as_str().unwrap())).unwrap(),
        fake_squashfs(b"second")
    );
}

#[test]
fn overwrite_on_replaces_atomically() {
    let site = Site::start(&[], &[("ALLOW_OVERWRITES", "1")]);
    let scratch = site.dir.path().join("scratch");
    let (meta, rootfs, _) = quick_image(&scratch, "owos", 64 << 10);
    let (_, rootfs2, fp2) = {
        let (m, r, _) = quick_image(&scratch.join("b"), "owos2", 80 << 10);
        (m, r.clone(), sha256_of(&[&meta, &r]))
    };
    let base = format!("owos/1/amd64/default/{V1}");
    assert_eq!(site.post(&meta, &format!("{base}/lxd.tar.xz")).0, 201);
    assert_eq!(
        site.post(&rootfs, &format!("{base}/rootfs.squashfs")).0,
        201
    );
    let (code, body) = site.post(&rootfs2, &format!("{base}/rootfs.squashfs"));
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["replaced"], true);
    assert!(body.get("requested_path").is_none(), "{body}");
    assert_eq!(
        std::fs::read(site.www.join("images").join(&base).join("rootfs.squashfs")).unwrap(),
        std::fs::read(&rootfs2).unwrap()
    );
    site.wait_for(
        |c| version_fingerprint(c, "owos:1:amd64:default", V1).as_deref() == Some(&fp2),
        "the replaced rootfs's fingerprint",
    );
}

#[test]
fn delete_needs_allow_deletes() {
    let site = Site::start(&[], &[]);
    let scratch = site.dir.path().join("scratch");
    let (meta, _, _) = quick_image(&scratch, "delos", 1024);
    let path = format!("images/delos/1/amd64/default/{V1}/lxd.tar.xz");
    assert_eq!(site.put(&meta, &path).0, 201);
    let (code, body) = site.delete(&path);
    assert_eq!(code, 405, "{body}");
    assert!(site.www.join(&path).is_file());
}

#[test]
fn delete_files_and_versions_with_allow_deletes() {
    let site = Site::start(&[], &[("ALLOW_DELETES", "1")]);
    let scratch = site.dir.path().join("scratch");
    let (meta, rootfs, _) = quick_image(&scratch, "delos", 4096);
    // A different rootfs for the second version: a byte-identical one would be skipped.
    let (_, rootfs2, _) = quick_image(&scratch.join("v2"), "delos2", 4096);
    let id = "delos:1:amd64:default";
    for (v, root) in [(V1, &rootfs), (V2, &rootfs2)] {
        let base = format!("images/delos/1/amd64/default/{v}");
        assert_eq!(site.put(&meta, &format!("{base}/lxd.tar.xz")).0, 201);
        assert_eq!(site.put(root, &format!("{base}/rootfs.squashfs")).0, 201);
    }
    // Another product, which the deletes leave alone.
    let (other_meta, other_rootfs, _) = quick_image(&scratch.join("other"), "delother", 4096);
    let base = format!("images/delother/1/amd64/default/{V1}");
    assert_eq!(site.put(&other_meta, &format!("{base}/lxd.tar.xz")).0, 201);
    assert_eq!(
        site.put(&other_rootfs, &format!("{base}/rootfs.squashfs"))
            .0,
        201
    );
    site.wait_for(
        |c| {
            product(c, id).is_some_and(|p| p["versions"].as_object().unwrap().len() == 2)
                && product(c, "delother:1:amd64:default").is_some_and(|p| {
                    p["versions"][V1]["items"]
                        .as_object()
                        .is_some_and(|i| i.values().any(|i| i["ftype"] == "squashfs"))
                })
        },
        "both versions and the other product's image",
    );
    // What the uploads asked for has run before the deletes; the watcher asked for nothing
    // more, though the runs wrote into the product folders the uploads made.
    site.server.settle();
    let said = site.server.said();
    assert!(!said.contains("re-indexed (changed:"), "{said}");
    let before = said.len();
    // One file: the version loses its image.
    let (code, body) = site.delete(&format!(
        "images/delos/1/amd64/default/{V1}/rootfs.squashfs"
    ));
    assert_eq!(code, 200, "{body}");
    // A whole version folder.
    let (code, body) = site.delete(&format!("images/delos/1/amd64/default/{V2}"));
    assert_eq!(code, 200, "{body}");
    assert!(
        !site
            .www
            .join(format!("images/delos/1/amd64/default/{V2}"))
            .exists()
    );
    site.wait_for(
        |c| {
            product(c, id).is_some_and(|p| {
                p["versions"].get(V2).is_none()
                    && p["versions"][V1]["items"]
                        .as_object()
                        .is_some_and(|i| i.values().all(|i| i["ftype"] != "squashfs"))
            }) && product(c, "delother:1:amd64:default").is_some()
        },
        "the deletes in images.json",
    );
    // Each delete's run hashed its product alone (not the other one), and the watcher, which
    // saw the files go, asked for no second run.
    site.server.wait_said(&["re-indexed (deleted"]);
    let runs = site.server.settled_runs_since(before);
    assert!(!runs.is_empty(), "{}", site.server.said());
    for line in runs {
        assert!(
            line.contains("re-indexed (deleted") && line.contains("1 product folder(s) hashed"),
            "{line}"
        );
    }
    // Never the catalog, a product folder, or images/ itself.
    for path in [
        "streams/v1/images.json",
        "streams/v1/index.json",
        "images/delos/1/amd64/default",
        "images/",
        "images",
        "images/delos",
    ] {
        let (code, body) = site.delete(path);
        assert!((400..500).contains(&code), "{path}: {code} {body}");
    }
    assert!(site.www.join("streams/v1/images.json").is_file());
    let (code, _) = site.delete(&format!("images/delos/1/amd64/default/{V2}"));
    assert_eq!(code, 404);
}

#[test]
fn an_upload_killed_halfway_leaves_nothing() {
    let site = Site::start(&[], &[]);
    let scratch = site.dir.path().join("scratch");
    let (meta, rootfs, _) = quick_image(&scratch, "half", 64 << 20);
    let base = format!("images/half/1/amd64/default/{V1}");
    let before = site.catalog().unwrap()["products"].clone();
    let mut child = Command::new("curl")
        .args(["-sS", "--noproxy", "*", "--limit-rate", "4M", "--cacert"])
        .arg(site.ca.ca_pem())
        .args(["-H", &Site::auth(), "-T"])
        .arg(&rootfs)
        .arg(format!("{}/{base}/rootfs.squashfs", site.url()))
        .spawn()
        .unwrap();
    // Wait until the temp file shows the upload is under way, then kill the client.
    let dir = site.www.join(&base);
    let start = Instant::now();
    let temp_seen = loop {
        let temp = std::fs::read_dir(&dir).ok().and_then(|d| {
            d.flatten()
                .find(|e| e.file_name().to_string_lossy().starts_with(".upload-"))
        });
        if let Some(t) = temp
            && t.metadata().is_ok_and(|m| m.len() > 0)
        {
            break true;
        }
        if start.elapsed() > Duration::from_secs(10) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(temp_seen, "the upload never started");
    let start = Instant::now();
    while dir.exists() && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !dir.exists(),
        "the version folder made for the killed upload is left: {:?}",
        std::fs::read_dir(&dir).map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
    );
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        site.catalog().unwrap()["products"],
        before,
        "the catalog changed"
    );
    // The server is fine afterwards.
    assert_eq!(site.put(&meta, &format!("{base}/lxd.tar.xz")).0, 201);
}

/// An upload into a new version folder that takes longer than the watcher waits (300 ms): the
/// watcher reports the folder while the body is still coming, and that report must not cost a
/// run of its own; the upload's run is the only one.
#[test]
fn a_slow_upload_into_a_new_folder_is_indexed_once() {
    let site = Site::start(&[], &[]);
    let scratch = site.dir.path().join("scratch");
    let (_, rootfs, _) = quick_image(&scratch, "slow", 4 << 20);
    let before = site.server.said().len();
    let status = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "--noproxy",
            "*",
            "--limit-rate",
            "4M",
        ])
        .arg("--cacert")
        .arg(site.ca.ca_pem())
        .args(["-H", &Site::auth(), "-T"])
        .arg(&rootfs)
        .arg(format!(
            "{}/images/slow/1/amd64/default/{V1}/rootfs.squashfs",
            site.url()
        ))
        .status()
        .unwrap();
    assert!(status.success());
    site.server
        .wait_said(&["re-indexed (uploaded images/slow/"]);
    let runs = site.server.settled_runs_since(before);
    assert_eq!(runs.len(), 1, "{runs:#?}");
}

#[test]
fn a_file_copied_in_is_indexed_within_3_seconds() {
    let site = Site::start(&[], &[]);
    let scratch = site.dir.path().join("scratch");
    let (meta, rootfs, fp) = quick_image(&scratch, "copied", 1 << 20);
    let dir = site.www.join(format!("images/copied/1/amd64/default/{V1}"));
    std::fs::create_dir_all(&dir).unwrap();
    let start = Instant::now();
    let status = Command::new("cp")
        .arg(&meta)
        .arg(dir.join("lxd.tar.xz"))
        .status()
        .unwrap();
    assert!(status.success());
    let status = Command::new("cp")
        .arg(&rootfs)
        .arg(dir.join("rootfs.squashfs"))
        .status()
        .unwrap();
    assert!(status.success());
    site.wait_for(
        |c| version_fingerprint(c, "copied:1:amd64:default", V1).as_deref() == Some(&fp),
        "the copied image",
    );
    let took = start.elapsed();
    eprintln!("copied image indexed after {took:?}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
}

#[test]
fn metadata_json_overrides_with_array_and_string_aliases() {
    let site = Site::start(&[], &[]);
    let scratch = site.dir.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let (meta, rootfs, _) = quick_image(&scratch, "ubuntu", 4096);
    let (_, rootfs_b, _) = quick_image(&scratch.join("b"), "debian", 4096);
    // Product A: version-level file, aliases as an array.
    let a = format!("ubuntu/xenial/amd64/default/{V1}");
    let json_a = scratch.join("a.json");
    std::fs::write(
        &json_a,
        r#"{"os":"Ubuntu","release_title":"16.04 LTS","aliases":["u/16.04","xenial"],
            "variant":"server","description":"built by CI","requirements":{"secureboot":false}}"#,
    )
    .unwrap();
    // Product B: product-level file, aliases as a comma-separated string.
    let json_b = scratch.join("b.json");
    std::fs::write(&json_b, r#"{"os":"Debian","aliases":"deb/12, bookworm"}"#).unwrap();
    let b = format!("debian/12/amd64/default/{V1}");
    for (dir, json) in [
        (&a, format!("{a}/metadata.json")),
        (&b, "debian/12/amd64/default/metadata.json".into()),
    ] {
        assert_eq!(site.post(&meta, &format!("{dir}/lxd.tar.xz")).0, 201);
        let root = if dir == &a { &rootfs } else { &rootfs_b };
        assert_eq!(site.post(root, &format!("{dir}/rootfs.squashfs")).0, 201);
        let file = if dir == &a { &json_a } else { &json_b };
        let (code, body) = site.post(file, &json);
        assert_eq!(code, 201, "{body}");
    }
    // A malformed one elsewhere is reported and ignored, never fatal.
    let bad = scratch.join("bad.json");
    std::fs::write(&bad, "{not json").unwrap();
    let c = format!("broken/1/amd64/default/{V1}");
    assert_eq!(site.post(&meta, &format!("{c}/incus.tar.xz")).0, 201);
    assert_eq!(site.post(&bad, &format!("{c}/metadata.json")).0, 201);

    let (catalog, _) = site.wait_for(
        |c| {
            product(c, "ubuntu:xenial:amd64:default").is_some_and(|p| p["os"] == "Ubuntu")
                && product(c, "debian:12:amd64:default").is_some_and(|p| p["os"] == "Debian")
                && product(c, "broken:1:amd64:default").is_some()
        },
        "the overrides",
    );
    let pa = product(&catalog, "ubuntu:xenial:amd64:default").unwrap();
    assert_eq!(pa["release_title"], "16.04 LTS");
    assert_eq!(pa["variant"], "server");
    assert_eq!(pa["requirements"]["secureboot"], "false");
    assert_eq!(pa["lxd_requirements"]["secureboot"], "false");
    assert_eq!(pa["versions"][V1]["label"], "built by CI");
    let aliases: Vec<&str> = pa["aliases"].as_str().unwrap().split(',').collect();
    assert_eq!(aliases[..2], ["u/16.04", "xenial"], "{aliases:?}");
    assert!(aliases.contains(&"ubuntu/xenial"), "{aliases:?}");
    let pb = product(&catalog, "debian:12:amd64:default").unwrap();
    let aliases: Vec<&str> = pb["aliases"].as_str().unwrap().split(',').collect();
    assert_eq!(aliases[..2], ["deb/12", "bookworm"], "{aliases:?}");
    let broken = product(&catalog, "broken:1:amd64:default").unwrap();
    assert_eq!(broken["os"], "ubuntu", "from metadata.yaml, untouched");
    assert!(broken["versions"][V1].get("label").is_none());
}

#[test]
fn writes_need_the_right_token() {
    let site = Site::start(&[], &[]);
    let scratch = site.dir.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let f = scratch.join("f");
    std::fs::write(&f, b"x").unwrap();
    let url = format!("{}/images/", site.url());
    let form = format!(
        "file=@{};filename=a/1/amd64/default/{V1}/lxd.tar.xz",
        f.display()
    );
    let (code, body) = site.curl(&["-F", &form, &url]);
    assert_eq!(code, 401, "{body}");
    let (code, body) = site.curl(&["-H", "Authorization: Bearer wrong", "-F", &form, &url]);
    assert_eq!(code, 401, "{body}");
    let put = format!("{}/images/a/1/amd64/default/{V1}/lxd.tar.xz", site.url());
    let (code, _) = site.curl(&[
        "-H",
        "Authorization: Bearer wrong",
        "-T",
        &f.display().to_string(),
        &put,
    ]);
    assert_eq!(code, 401);
    let (code, _) = site.curl(&["-X", "DELETE", &put]);
    assert_eq!(code, 401);
    assert!(!site.www.join("images/a").exists());
    // Reads stay public.
    let (code, _) = site.curl(&[&format!("{}/streams/v1/index.json", site.url())]);
    assert_eq!(code, 200);
}

#[test]
fn without_a_token_writes_are_refused_unless_anonymous_is_asked_for() {
    let site = Site::start(&["--no-token"], &[]);
    let scratch = site.dir.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let f = scratch.join("f");
    std::fs::write(&f, b"x").unwrap();
    let put = format!("{}/images/a/1/amd64/default/{V1}/lxd.tar.xz", site.url());
    let (code, body) = site.curl(&["-T", &f.display().to_string(), &put]);
    assert_eq!(code, 403, "{body}");
    drop(site);
    let site = Site::start(&["--allow-anonymous-writes"], &[]);
    let f = write_metadata_tarball(&site.dir.path().join("f"), &MetaSpec::new("a", "1", V1));
    let put = format!("{}/images/a/1/amd64/default/{V1}/lxd.tar.xz", site.url());
    let (code, body) = site.curl(&["-T", &f.display().to_string(), &put]);
    assert_eq!(code, 201, "{body}");
}

/// Raw HTTP/1.1 over plain TCP, so the bytes of hostile paths and filenames reach the server
/// exactly as written (curl and reqwest would normalise some).
fn raw_request(addr: &str, head: &str, body: &[u8]) -> u16 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The server may answer and close before reading a refused body.
    let _ = s.write_all(head.as_bytes());
    let _ = s.write_all(body);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status for {head:?}: {text:?}"))
}

fn multipart(filename: &str) -> (String, Vec<u8>) {
    let boundary = "XyZzYbOuNdArY";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"upload\"; filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\nEVIL\r\n--{boundary}--\r\n"
    );
    (
        format!("multipart/form-data; boundary={boundary}"),
        body.into_bytes(),
    )
}

/// Every file under `dir` (following nothing), relative, with its content hash.
fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let ft = e.file_type().unwrap();
            let rel = p.strip_prefix(dir).unwrap().display().to_string();
            if ft.is_dir() {
                out.insert(format!("{rel}/"), String::new());
                stack.push(p);
            } else if ft.is_symlink() {
                out.insert(rel, "symlink".into());
            } else {
                out.insert(rel, sha256_of(&[&p]));
            }
        }
    }
    out
}

#[test]
fn hostile_upload_names_are_all_refused() {
    let dir = TempDir::with_prefix("ssb-hostile-").unwrap();
    let www = dir.path().join("www");
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(www.join("images/evil/1")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, www.join("images/evil/1/amd64")).unwrap();
    std::os::unix::fs::symlink(&outside, www.join("images/etc")).unwrap();
    let site = Site::start_in(dir, www, &["--http", "--allow-anonymous-writes"], &[]);
    // --http: the URL is http://127.0.0.1:PORT
    let addr = site.url().trim_start_matches("http://").to_owned();
    // Catalog files settle after the start-up scan; snapshot everything around the tree.
    std::thread::sleep(Duration::from_millis(300));
    let before = snapshot(site.dir.path());
    let catalog_before = std::fs::read(site.www.join("streams/v1/images.json")).unwrap();

    let v = V1;
    let names: Vec<String> = vec![
        "/streams/v1/images.json".into(),
        "streams/v1/images.json".into(),
        "../streams/v1/images.json".into(),
        "../../etc/passwd".into(),
        format!("a/1/amd64/default/{v}/../../../../../../streams/v1/index.json"),
        format!("../images/a/1/amd64/default/{v}/lxd.tar.xz"),
        format!("a/1/amd64/default/{v}/../lxd.tar.xz"),
        format!("./a/1/amd64/default/{v}/lxd.tar.xz"),
        format!("a/./1/amd64/default/{v}/lxd.tar.xz"),
        format!("a//1/amd64/default/{v}/lxd.tar.xz"),
        format!("/a/1/amd64/default/{v}/lxd.tar.xz"),
        format!("a/1/amd64/default/{v}/lxd.tar.xz/"),
        format!("a\\..\\..\\streams/1/amd64/default/{v}/lxd.tar.xz"),
        format!("..\\..\\streams\\v1\\images.json"),
        format!("a%2F..%2F..%2Fstreams/1/amd64/default/{v}/lxd.tar.xz"),
        format!("%2e%2e/1/amd64/default/{v}/lxd.tar.xz"),
        format!("a/1/amd64/default/{v}/%2e%2e%2f%2e%2e%2fx"),
        format!("a/1/amd64/default/{v}/lxd.tar.xz%00.png"),
        format!("a/1/amd64/default/{v}/lxd.tar.xz\0"),
        format!("a\0b/1/amd64/default/{v}/lxd.tar.xz"),
        format!("a\x01b/1/amd64/default/{v}/lxd.tar.xz"),
        format!("a\x7fb/1/amd64/default/{v}/lxd.tar.xz"),
        format!(".hidden/1/amd64/default/{v}/lxd.tar.xz"),
        format!("a/1/amd64/default/{v}/.lxd.tar.xz"),
        format!("a/1/amd64/default/{v}/.upload-x"),
        format!("a/1/amd64/default/{v}/.ssb-cache.json"),
        format!("a/1/amd64/default/{v}/ssb.json"),
        format!("a/1/amd64/default/{v}/evil.sh"),
        format!("a/1/amd64/default/{v}/index.json"),
        format!("{}/1/amd64/default/{v}/lxd.tar.xz", "x".repeat(300)),
        format!("a/1/amd64/default/{v}/{}.tar.xz", "y".repeat(300)),
        format!("{}lxd.tar.xz", "a/".repeat(600)),
        format!("a/1/amd64/default/not-a-date/lxd.tar.xz"),
        format!("a/1/amd64/default/20251399_10:00/lxd.tar.xz"),
        format!("a/1/amd64/{v}/lxd.tar.xz"),
        format!("a/1/{v}/lxd.tar.xz"),
        "lxd.tar.xz".into(),
        format!("a/1/notanarch/default/{v}/lxd.tar.xz"),
        format!("evil/1/amd64/default/{v}/lxd.tar.xz"),
        format!("etc/1/amd64/default/{v}/lxd.tar.xz"),
        format!("etc/cron.d/x"),
        format!("a b/1/amd64/default/{v}/lxd.tar.xz"),
        format!("caf\u{e9}/1/amd64/default/{v}/lxd.tar.xz"),
        format!("a/1/amd64/default/{v}/extra/lxd.tar.xz"),
        format!("a/1/amd64/default/metadata.json/x"),
        "".into(),
        "/".into(),
        format!("~/1/amd64/default/{v}/lxd.tar.xz/.."),
        format!("a/1/amd64/default/{v}/.."),
        format!("a/1/amd64/default/{v}/."),
        format!("images/a/1/amd64/default/{v}/lxd.tar.xz"),
        format!("C:\\Windows/1/amd64/default/{v}/lxd.tar.xz"),
        format!("a/1/amd64/default/{v}/lxd.tar.xz;x"),
    ];
    assert!(names.len() >= 40, "{} names", names.len());
    let mut accepted = Vec::new();
    for name in &names {
        let (ctype, body) = multipart(name);
        let head = format!(
            "POST /images/ HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let code = raw_request(&addr, &head, &body);
        if !(400..500).contains(&code) {
            accepted.push(format!("POST filename {name:?}: {code}"));
        }
    }
    // The same targets as PUT paths (raw, so %-escapes and dot segments reach the server).
    let mut paths: Vec<String> = names
        .iter()
        .filter(|n| !n.contains(['\r', '\n', ' ', '\0', '\x01', '\x7f', '"']) && n.is_ascii())
        .map(|n| format!("/images/{n}"))
        .collect();
    paths.extend(
        [
            "/streams/v1/images.json",
            "/streams/v1/index.json",
            "/streams/v1/images.json.gz",
            "/.ssb/tls/key.pem",
            "/images/..%2fstreams/v1/images.json",
            "/images/%2e%2e/streams/v1/images.json",
            "/images/a/1/amd64/default/20250101_10%3A00/..%2F..%2F..%2F..%2F..%2F..%2Fstreams%2Fv1%2Fimages.json",
            "/tree.yml",
        ]
        .map(String::from),
    );
    for path in &paths {
        let head = format!(
            "PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nConnection: close\r\n\r\n"
        );
        let code = raw_request(&addr, &head, b"EVIL");
        if !(400..500).contains(&code) {
            accepted.push(format!("PUT {path:?}: {code}"));
        }
    }
    assert!(accepted.is_empty(), "accepted: {accepted:#?}");
    std::thread::sleep(Duration::from_millis(800));
    let mut after = snapshot(site.dir.path());
    after.retain(|k, _| !k.starts_with("www/streams/"));
    let mut before = before;
    before.retain(|k, _| !k.starts_with("www/streams/"));
    assert_eq!(before, after, "files changed");
    assert!(
        std::fs::read_dir(&outside).unwrap().next().is_none(),
        "wrote through the symlink"
    );
    let catalog_after: Value =
        serde_json::from_slice(&std::fs::read(site.www.join("streams/v1/images.json")).unwrap())
            .unwrap();
    let catalog_before: Value = serde_json::from_slice(&catalog_before).unwrap();
    assert_eq!(catalog_before["products"], catalog_after["products"]);
}

/// Hardening item 3: a part's headers were buffered however long (a 400 MB header: 863 MB of
/// memory, then 201), and any number of parts was taken (1000 parts stored 1000 files). Both are
/// refused without reading the rest, on uploads and on `/import`.
#[test]
fn multipart_part_headers_and_part_counts_are_bounded() {
    let site = Site::start(&["--http", "--no-watch"], &[]);
    let addr = site.url().trim_start_matches("http://").to_owned();
    let boundary = "XyZzYbOuNdArY";
    let post = |path: &str, body: &[u8]| {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\n{}\r\nContent-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            Site::auth(),
            body.len()
        );
        raw_request(&addr, &head, body)
    };
    // A 2 MiB header line in one part.
    let long = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"upload\"; filename=\"a/1/amd64/default/{V1}/lxd.tar.xz\"\r\nX-Pad: {}\r\n\r\nEVIL\r\n--{boundary}--\r\n",
        "a".repeat(2 << 20)
    );
    for path in ["/images/", "/import"] {
        assert_eq!(
            post(path, long.as_bytes()),
            400,
            "{path}: long part headers"
        );
    }
    // 1000 parts.
    let mut many = String::new();
    for i in 0..1000 {
        many.push_str(&format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"f{i}\"; filename=\"a/1/amd64/default/{V1}/lxd.tar.xz\"\r\n\r\nx\r\n"
        ));
    }
    many.push_str(&format!("--{boundary}--\r\n"));
    for path in ["/images/", "/import"] {
        assert_eq!(post(path, many.as_bytes()), 413, "{path}: 1000 parts");
    }
    let stored: Vec<_> = std::fs::read_dir(site.www.join(format!("images/a/1/amd64/default/{V1}")))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        stored.len() <= 16,
        "at most the parts before the limit: {stored:?}"
    );
}

/// Hardening item 1: an upload that is not what its name says gets 400 naming the problem and is
/// never renamed into place (a PNG or an empty file as a rootfs, a truncated xz or a metadata
/// tarball for an architecture nobody knows as `lxd.tar.xz`), and the product keeps its
/// versions. Before the fix each got 201 and the re-index dropped the whole product.
#[test]
fn broken_uploads_are_refused_and_the_product_keeps_its_versions() {
    const PRODUCT: &str = "keep:1:amd64:default";
    let site = Site::start(&[], &[]);
    let scratch = site.dir.path().join("scratch");
    let (meta, rootfs, fp) = quick_image(&scratch, "keep", 8192);
    let good = format!("keep/1/amd64/default/{V1}");
    assert_eq!(site.post(&meta, &format!("{good}/lxd.tar.xz")).0, 201);
    assert_eq!(
        site.post(&rootfs, &format!("{good}/rootfs.squashfs")).0,
        201
    );
    site.wait_for(
        |c| version_fingerprint(c, PRODUCT, V1).as_deref() == Some(&fp),
        "the good version",
    );

    let bad = format!("keep/1/amd64/default/{V2}");
    let png = scratch.join("picture.png");
    std::fs::write(&png, b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR a picture").unwrap();
    let empty = scratch.join("empty");
    std::fs::write(&empty, b"").unwrap();
    let full = std::fs::read(&meta).unwrap();
    let truncated = scratch.join("truncated.tar.xz");
    std::fs::write(&truncated, &full[..full.len() / 2]).unwrap();
    let mut z80 = MetaSpec::new("keep", "1", V2);
    z80.arch = "z80".into();
    let z80 = write_metadata_tarball(&scratch.join("z80.tar.xz"), &z80);
    let mut arm = MetaSpec::new("keep", "1", V2);
    arm.arch = "aarch64".into();
    let arm = write_metadata_tarball(&scratch.join("arm.tar.xz"), &arm);
    for (file, name, needle) in [
        (&png, "lxd.tar.xz", "not a metadata tarball"),
        (&truncated, "lxd.tar.xz", "truncated xz data"),
        (&z80, "lxd.tar.xz", "architecture `z80`"),
        (&arm, "incus.tar.xz", "but the product's arch is `amd64`"),
        (
            &png,
            "rootfs.squashfs",
            "is not a squashfs image: it looks like a PNG image",
        ),
        (&empty, "rootfs.squashfs", "is empty (0 bytes)"),
        (&png, "disk.qcow2", "is not a qcow2 disk"),
        (
            &rootfs,
            "rootfs.tar.xz",
            "is not an xz-compressed root tarball",
        ),
    ] {
        let target = format!("{bad}/{name}");
        let (code, body) = site.post(file, &target);
        assert_eq!(code, 400, "{target}: {body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(&format!("images/{target} was not stored")) && error.contains(needle),
            "{target}: {error}"
        );
        // PUT gets the same answer.
        let (code, _) = site.put(file, &format!("images/{target}"));
        assert_eq!(code, 400, "PUT {target}");
    }
    let left: Vec<String> = std::fs::read_dir(site.www.join("images").join(&bad))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "nothing of the refused uploads stays: {left:?}"
    );
    let catalog = site.catalog().unwrap();
    assert_eq!(
        version_fingerprint(&catalog, PRODUCT, V1).as_deref(),
        Some(fp.as_str()),
        "the product keeps its version"
    );
}

/// Hardening item 1, on disk: a broken version copied into a served tree by other means is
/// left out by the server's re-index and named in its log; the product keeps its good version,
/// and a good version added beside it is still published.
#[test]
fn a_broken_version_copied_in_costs_only_that_version_in_the_reindex() {
    const PRODUCT: &str = "copy:1:amd64:default";
    let site = Site::start(&[], &[]);
    let scratch = site.dir.path().join("scratch");
    let (meta, rootfs, fp) = quick_image(&scratch, "copy", 8192);
    let product = site.www.join("images/copy/1/amd64/default");
    for v in [V1, V2] {
        std::fs::create_dir_all(product.join(v)).unwrap();
    }
    // V2 first, broken: an empty rootfs beside a good metadata tarball.
    std::fs::copy(&meta, product.join(V2).join("lxd.tar.xz")).unwrap();
    std::fs::write(product.join(V2).join("rootfs.squashfs"), b"").unwrap();
    std::fs::copy(&meta, product.join(V1).join("lxd.tar.xz")).unwrap();
    std::fs::copy(&rootfs, product.join(V1).join("rootfs.squashfs")).unwrap();
    let (catalog, _) = site.wait_for(
        |c| version_fingerprint(c, PRODUCT, V1).as_deref() == Some(&fp),
        "the good version beside the broken one",
    );
    assert!(
        catalog["products"][PRODUCT]["versions"][V2].is_null(),
        "the broken version is left out"
    );
    let needle = format!("{V2}/rootfs.squashfs: is empty (0 bytes), not a squashfs image");
    site.server.wait_said(&[&needle, "left out of the catalog"]);
}

/// The re-index after an upload hashes the product folder the upload went into and takes the
/// other products from their ssb.json (written by earlier runs), so its cost does not grow with
/// the tree; the catalog still lists everything. A full scan (start-up) hashes them all.
#[test]
fn an_upload_re_indexes_its_own_product_only() {
    let dir = TempDir::with_prefix("ssb-upload-").unwrap();
    let www = dir.path().join("www");
    let scratch = dir.path().join("scratch");
    let mut fingerprints = Vec::new();
    for os in ["inca", "incb", "incc"] {
        let (meta, rootfs, fp) = quick_image(&scratch.join(os), os, 4096);
        let v = www.join(format!("images/{os}/1/amd64/default/{V1}"));
        std::fs::create_dir_all(&v).unwrap();
        std::fs::copy(&meta, v.join("lxd.tar.xz")).unwrap();
        std::fs::copy(&rootfs, v.join("rootfs.squashfs")).unwrap();
        fingerprints.push((format!("{os}:1:amd64:default"), V1, fp));
    }
    let site = Site::start_in(dir, www, &[], &[]);
    let all_there = |c: &Value, fps: &[(String, &str, String)]| {
        fps.iter()
            .all(|(id, v, fp)| version_fingerprint(c, id, v).as_deref() == Some(fp.as_str()))
    };
    site.wait_for(|c| all_there(c, &fingerprints), "three products");
    let (meta, rootfs, fp) = quick_image(&scratch.join("inca2"), "inca", 8192);
    let base = format!("inca/1/amd64/default/{V2}");
    assert_eq!(site.post(&meta, &format!("{base}/lxd.tar.xz")).0, 201);
    assert_eq!(
        site.post(&rootfs, &format!("{base}/rootfs.squashfs")).0,
        201
    );
    fingerprints.push(("inca:1:amd64:default".into(), V2, fp));
    site.wait_for(
        |c| all_there(c, &fingerprints),
        "the new version beside the others",
    );
    // The run logs once what is published beside the catalog is written too: wait for it.
    let log = site.server.wait_said(&["4 version(s)"]);
    assert!(
        log.lines().any(|l| l.contains("re-indexed (start-up scan)")
            && l.contains("3 product(s), 3 version(s), 3 product folder(s) hashed")),
        "{log}"
    );
    let after: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("re-indexed (") && l.contains("4 version(s)"))
        .collect();
    assert!(
        !after.is_empty(),
        "no re-index of the four versions in:\n{log}"
    );
    for line in after {
        assert!(line.contains("1 product folder(s) hashed"), "{line}");
    }
    // The watcher saw the uploads arrive, but their triggers cover them: no second run.
    site.server.settle();
    let log = site.server.said();
    assert!(!log.contains("re-indexed (changed:"), "{log}");
    // A version copied in by other means is the watcher's to report.
    let (meta, rootfs, fp) = quick_image(&scratch.join("incb2"), "incb", 8192);
    let v = site.www.join(format!("images/incb/1/amd64/default/{V2}"));
    std::fs::create_dir_all(&v).unwrap();
    std::fs::copy(&meta, v.join("lxd.tar.xz")).unwrap();
    std::fs::copy(&rootfs, v.join("rootfs.squashfs")).unwrap();
    fingerprints.push(("incb:1:amd64:default".into(), V2, fp));
    site.wait_for(|c| all_there(c, &fingerprints), "the version copied in");
    // Its run logs once the files beside the catalog are written too, after the catalog.
    site.server.wait_said(&["re-indexed (changed:"]);
}

/// The access log line of a download is written once the body has gone, with the bytes that
/// really left: whole for a finished download, short and `complete=false` for one the client
/// gave up on (as nginx's `$body_bytes_sent` would say).
#[test]
fn the_access_log_counts_the_bytes_a_download_really_sent() {
    let site = Site::start(&[], &[]);
    let dir = site.www.join("images/logged");
    std::fs::create_dir_all(&dir).unwrap();
    let whole: u64 = 4 << 20;
    std::fs::File::create(dir.join("whole.img"))
        .unwrap()
        .set_len(whole)
        .unwrap();
    // Far more than loopback's socket buffers hold: a slow client cannot have it all in 1 s.
    std::fs::File::create(dir.join("cut.img"))
        .unwrap()
        .set_len(256 << 20)
        .unwrap();

    let (code, _) = site.curl(&[
        "-o",
        "/dev/null",
        &format!("{}/images/logged/whole.img", site.url()),
    ]);
    assert_eq!(code, 200);
    // The access line of `path`, once the server has written it.
    let line_of = |path: &str| {
        let needle = format!("path={path} ");
        let log = site.server.wait_said(&[&needle]);
        log.lines()
            .find(|l| l.contains(&needle))
            .unwrap()
            .to_owned()
    };
    let line = line_of("/images/logged/whole.img");
    assert!(line.contains(&format!("bytes={whole} ")), "{line}");
    assert!(line.contains("complete=true"), "{line}");

    // curl gives up after a second at 64 KB/s.
    let (code, _) = site.curl(&[
        "--http1.1",
        "--limit-rate",
        "64K",
        "--max-time",
        "1",
        "-o",
        "/dev/null",
        &format!("{}/images/logged/cut.img", site.url()),
    ]);
    assert_eq!(code, 200, "the head arrived before curl gave up");
    let line = line_of("/images/logged/cut.img");
    assert!(line.contains("complete=false"), "{line}");
    let sent: u64 = line
        .split_whitespace()
        .find_map(|f| f.strip_prefix("bytes="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no bytes= in {line}"));
    assert!(sent < 256 << 20, "{line}");
}
