//! `mirror pull` and `mirror push` against servers on 127.0.0.1 only: our own `serve` over
//! HTTPS with a test CA (checked with the real `incus` client), and a small plain-HTTP server
//! written here that can corrupt a file, slow a download down and records every request, so
//! that hash failures, resumes and retries can be observed from the outside.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use simplestreams_builder::mirror::push::PushReport;
use tempfile::TempDir;

use crate::common::catalog::{Catalog, Family, ImageType, read_json, sha256_of};
use crate::common::clients::{Clients, Program};
use crate::common::command::run;
use crate::common::fixtures::{
    Layout, MetaSpec, random_container, write_metadata_tarball, write_qcow2, write_rootfs_tar_xz,
    write_squashfs_rootfs, write_text,
};
use crate::common::server::TestServer;
use crate::common::tls::TestCa;
use crate::common::{publish_layout, ssb};

const V1: &str = "20250101_10:00";
const V2: &str = "20250102_10:00";
const PULL_TIMEOUT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------------
// A plain HTTP/1.1 file server with knobs.

/// What the knob server was asked: path and `Range` header.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Request {
    path: String,
    range: Option<String>,
}

#[derive(Default)]
struct Knobs {
    /// Paths served with one byte flipped (same size, wrong sha256).
    corrupt: Mutex<HashSet<String>>,
    /// Paths served slowly: 64 KiB every 20 ms.
    slow: Mutex<HashSet<String>>,
    log: Mutex<Vec<Request>>,
    stop: AtomicBool,
}

/// Serves `root` on 127.0.0.1 with `Range: bytes=N-` support, one thread per connection.
struct KnobServer {
    url: String,
    knobs: Arc<Knobs>,
}

impl KnobServer {
    fn start(root: &Path) -> KnobServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let knobs = Arc::new(Knobs::default());
        let (root, k) = (root.to_owned(), knobs.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if k.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let (root, k) = (root.clone(), k.clone());
                std::thread::spawn(move || {
                    let _ = serve_one(stream, &root, &k);
                });
            }
        });
        KnobServer { url, knobs }
    }

    fn set(set: &Mutex<HashSet<String>>, path: &str, on: bool) {
        let mut s = set.lock().unwrap();
        if on {
            s.insert(path.to_owned());
        } else {
            s.remove(path);
        }
    }

    fn corrupt(&self, path: &str, on: bool) {
        Self::set(&self.knobs.corrupt, path, on);
    }

    fn slow(&self, path: &str, on: bool) {
        Self::set(&self.knobs.slow, path, on);
    }

    /// The requests so far, catalog ones left out, and a fresh log.
    fn take_file_requests(&self) -> Vec<Request> {
        std::mem::take(&mut *self.knobs.log.lock().unwrap())
            .into_iter()
            .filter(|r| !r.path.starts_with("/streams/"))
            .collect()
    }
}

impl Drop for KnobServer {
    fn drop(&mut self) {
        self.knobs.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.url.trim_start_matches("http://"));
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn serve_one(stream: TcpStream, root: &Path, k: &Knobs) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = percent_decode(line.split_whitespace().nth(1).unwrap_or("/"));
    let mut range = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = h.split_once(':')
            && name.eq_ignore_ascii_case("range")
        {
            range = Some(value.trim().to_owned());
        }
    }
    k.log.lock().unwrap().push(Request {
        path: path.clone(),
        range: range.clone(),
    });
    let mut out = stream;
    let Ok(mut data) = std::fs::read(root.join(path.trim_start_matches('/'))) else {
        return out.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
    };
    if k.corrupt.lock().unwrap().contains(&path) {
        let mid = data.len() / 2;
        data[mid] ^= 0xff;
    }
    let total = data.len();
    let start = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok());
    let head = match start {
        Some(s) if s < total => format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {s}-{}/{total}\r\nConnection: close\r\n\r\n",
            total - s,
            total - 1
        ),
        Some(_) => {
            return out.write_all(
                format!("HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{total}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
            );
        }
        None => format!("HTTP/1.1 200 OK\r\nContent-Length: {total}\r\nConnection: close\r\n\r\n"),
    };
    out.write_all(head.as_bytes())?;
    let body = &data[start.unwrap_or(0)..];
    if k.slow.lock().unwrap().contains(&path) {
        for chunk in body.chunks(64 << 10) {
            out.write_all(chunk)?;
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    } else {
        out.write_all(body)
    }
}

// ---------------------------------------------------------------------------------------------
// Fixtures and helpers.

/// A split container image in the layout: returns (meta, rootfs).
fn container(layout: &Layout, os: &str, release: &str, version: &str) -> (PathBuf, PathBuf) {
    let v = layout.version_dir(os, release, "amd64", "default", version);
    let meta = write_metadata_tarball(
        &v.join("incus.tar.xz"),
        &MetaSpec::new(os, release, version),
    );
    let rootfs = write_squashfs_rootfs(
        &v.join("rootfs.squashfs"),
        &format!("{os}-{release}-{version}"),
    );
    (meta, rootfs)
}

fn pull(cwd: &Path, target: &Path, args: &[&str]) -> Output {
    let mut cmd = ssb(cwd);
    cmd.args(["mirror", "pull"])
        .args(args)
        .arg("-t")
        .arg(target);
    run(&mut cmd, PULL_TIMEOUT)
}

/// `path` relative to `root`, as a string.
fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_ok(o: &Output) {
    assert!(o.status.success(), "pull failed:\n{}", stderr(o));
}

/// Asserts that the command's stderr contains `needle`, showing the stderr if not.
#[track_caller]
fn assert_stderr_contains(o: &Output, needle: &str) {
    assert!(stderr(o).contains(needle), "{}", stderr(o));
}

/// Product id → version names of a tree's catalog.
fn versions_of(root: &Path) -> BTreeMap<String, Vec<String>> {
    let catalog = Catalog::load(root);
    catalog
        .products()
        .iter()
        .map(|(id, p)| {
            (
                id.clone(),
                p["versions"].as_object().unwrap().keys().cloned().collect(),
            )
        })
        .collect()
}

/// Every item path of the tree's catalog exists and has the catalog's sha256.
fn assert_catalog_files_verified(root: &Path) {
    let catalog = Catalog::load(root);
    for (_, _, item) in catalog.items() {
        let path = root.join(item["path"].as_str().unwrap());
        assert!(path.is_file(), "{} is listed but missing", path.display());
        assert_eq!(
            sha256_of(&[&path]),
            item["sha256"].as_str().unwrap(),
            "{}",
            path.display()
        );
    }
}

/// Regular, non-hidden files under `root` (relative), catalog included.
fn files_under(root: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.insert(
                    e.path()
                        .strip_prefix(root)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Acceptance 1: two of our servers; the mirror lists exactly the filtered images.

/// Upstream: debian/12 in two versions, ubuntu/24.04 with a container and a VM, alpine/3.20.
/// The mirror takes `--alias 'debian/*' --alias 'ubuntu/*' --type container --keep 1` over
/// HTTPS (test CA through `--ca-cert`), is served by a second `serve`, and `incus` lists
/// exactly the newest debian container and the ubuntu container; exports match fingerprints.
#[test]
fn mirror_pull_serves_exactly_the_filtered_images_to_incus() {
    let ca = TestCa::generate();
    let needed = [
        Program::Incus,
        Program::Mksquashfs,
        Program::QemuImg,
        Program::QemuIo,
    ];
    let Some(clients) = Clients::detect(&ca, &needed) else {
        return;
    };
    let site = TempDir::with_prefix("ssb-mirror-").unwrap();
    let www = site.path().join("upstream");
    let layout = Layout::new(&www);
    container(&layout, "debian", "12", V1);
    let (deb_meta, deb_root) = container(&layout, "debian", "12", V2);
    let (ubu_meta, ubu_root) = container(&layout, "ubuntu", "24.04", V1);
    let v = layout.version_dir("ubuntu", "24.04", "amd64", "default", V1);
    write_metadata_tarball(
        &v.join("incus-vm.tar.xz"),
        &MetaSpec::new("ubuntu", "24.04", V1).vm(),
    );
    write_qcow2(&v.join("disk.qcow2"), "ubuntu-vm");
    let v = layout.version_dir("alpine", "3.20", "amd64", "default", V1);
    write_metadata_tarball(&v.join("lxd.tar.xz"), &MetaSpec::new("alpine", "3.20", V1));
    write_rootfs_tar_xz(&v.join("rootfs.tar.xz"), "alpine");
    publish_layout(site.path(), &www);
    let upstream = TestServer::serve(&www, &ca);

    let mirror = site.path().join("mirror");
    let ca_pem = ca.ca_pem();
    let filtered = [
        upstream.url(),
        "--alias",
        "debian/*",
        "--alias",
        "ubuntu/*",
        "--type",
        "container",
        "--keep",
        "1",
        "--ca-cert",
        ca_pem.to_str().unwrap(),
    ];
    let out = pull(site.path(), &mirror, &filtered);
    assert_ok(&out);
    assert_stderr_contains(&out, "fetched 4 file(s)");
    assert_catalog_files_verified(&mirror);
    assert_eq!(
        versions_of(&mirror),
        BTreeMap::from([
            ("debian:12:amd64:default".into(), vec![V2.to_owned()]),
            ("ubuntu:24.04:amd64:default".into(), vec![V1.to_owned()]),
        ])
    );
    // Upstream fields are kept: the product objects are upstream's, versions filtered.
    let up = Catalog::load(&www);
    let mine = Catalog::load(&mirror);
    for key in [
        "aliases",
        "os",
        "release",
        "release_title",
        "arch",
        "variant",
    ] {
        assert_eq!(
            up.product("debian:12:amd64:default")[key],
            mine.product("debian:12:amd64:default")[key],
            "{key}"
        );
    }

    let expected = BTreeSet::from([
        sha256_of(&[&deb_meta, &deb_root]),
        sha256_of(&[&ubu_meta, &ubu_root]),
    ]);
    for family in Family::BOTH {
        let fps: BTreeSet<String> = mine
            .images(family)
            .into_iter()
            .map(|i| i.fingerprint)
            .collect();
        assert_eq!(fps, expected, "{family:?}");
    }

    let served = TestServer::serve(&mirror, &ca);
    clients.incus_remote_add("mirror", served.url());
    let listed = clients.image_list(crate::common::clients::Client::Incus, "mirror");
    let fps: BTreeSet<String> = listed.iter().map(|i| i.fingerprint.clone()).collect();
    assert_eq!(fps, expected, "incus image list mirror: {listed:#?}");
    assert!(listed.iter().all(|i| i.image_type == ImageType::Container));
    for (alias, meta, root) in [
        ("debian/12", &deb_meta, &deb_root),
        ("ubuntu/24.04", &ubu_meta, &ubu_root),
    ] {
        let dir = site
            .path()
            .join(format!("export-{}", alias.replace('/', "-")));
        let files = clients.image_export(
            crate::common::clients::Client::Incus,
            "mirror",
            alias,
            ImageType::Container,
            &dir,
        );
        let paths: Vec<&Path> = ["incus.tar.xz", "rootfs.squashfs"]
            .iter()
            .map(|n| {
                files
                    .get(*n)
                    .unwrap_or_else(|| panic!("{n} not exported: {files:?}"))
                    .as_path()
            })
            .collect();
        assert_eq!(sha256_of(&paths), sha256_of(&[meta, root]), "{alias}");
    }

    // A second run finds everything present and verified, fetches nothing.
    let again = pull(site.path(), &mirror, &filtered);
    assert_ok(&again);
    assert_stderr_contains(
        &again,
        "fetched 0 file(s) (0 B), verified 0, skipped 4, failed 0",
    );
}

/// TLS: our self-signed-CA server is refused without trust, trusted through `SSL_CERT_FILE`,
/// and reachable with `--insecure` (which warns).
#[test]
fn mirror_pull_tls_trust_sources() {
    let ca = TestCa::generate();
    let site = TempDir::with_prefix("ssb-mirror-tls-").unwrap();
    let www = site.path().join("upstream");
    let layout = Layout::new(&www);
    random_container(&layout, "tiny", V1, 1000);
    publish_layout(site.path(), &www);
    let upstream = TestServer::serve(&www, &ca);

    let refused = pull(site.path(), &site.path().join("m0"), &[upstream.url()]);
    assert!(!refused.status.success());
    assert_stderr_contains(&refused, "nothing was changed");

    let mut cmd = ssb(site.path());
    cmd.env("SSL_CERT_FILE", ca.ca_pem())
        .args(["mirror", "pull", upstream.url(), "-t"])
        .arg(site.path().join("m1"));
    assert_ok(&run(&mut cmd, PULL_TIMEOUT));
    assert_catalog_files_verified(&site.path().join("m1"));

    let insecure = pull(
        site.path(),
        &site.path().join("m2"),
        &[upstream.url(), "--insecure"],
    );
    assert_ok(&insecure);
    assert_stderr_contains(&insecure, "--insecure");
}

// ---------------------------------------------------------------------------------------------
// Acceptance 2: a corrupted file fails its item with both hashes; the rest is published; the
// next run fetches only that file.

#[test]
fn mirror_pull_corrupted_file_fails_only_its_item_and_is_retried_alone() {
    let site = TempDir::with_prefix("ssb-mirror-bad-").unwrap();
    let www = site.path().join("upstream");
    let layout = Layout::new(&www);
    let (_, bad_root) = random_container(&layout, "bad", V1, 300_000);
    random_container(&layout, "good", V1, 200_000);
    publish_layout(site.path(), &www);
    let server = KnobServer::start(&www);
    let bad_path = format!("/{}", relative(&www, &bad_root));
    server.corrupt(&bad_path, true);

    let mirror = site.path().join("mirror");
    let out = pull(site.path(), &mirror, &[&server.url, "--jobs", "2"]);
    assert!(!out.status.success(), "a failed item must fail the run");
    let err = stderr(&out);
    let expected = sha256_of(&[&bad_root]);
    let mut corrupted = std::fs::read(&bad_root).unwrap();
    let mid = corrupted.len() / 2;
    corrupted[mid] ^= 0xff;
    let scratch = site.path().join("corrupted");
    std::fs::write(&scratch, corrupted).unwrap();
    let actual = sha256_of(&[&scratch]);
    assert!(
        err.contains(&format!("expected {expected}, got {actual}")),
        "the message must carry both hashes:\n{err}"
    );
    assert!(
        err.contains("fetched 3 file(s)") && err.contains("failed 1"),
        "{err}"
    );
    // The rest is published; the broken product is not listed at all.
    assert_eq!(
        versions_of(&mirror),
        BTreeMap::from([("good:1:amd64:default".into(), vec![V1.to_owned()])])
    );
    assert_catalog_files_verified(&mirror);
    let local_bad = mirror.join(bad_path.trim_start_matches('/'));
    assert!(!local_bad.exists());
    assert!(
        !download_part(&local_bad).exists(),
        "the corrupted download must be deleted"
    );
    server.take_file_requests();

    // Fixed upstream: the next run fetches that one file and nothing else.
    server.corrupt(&bad_path, false);
    let out = pull(site.path(), &mirror, &[&server.url, "--jobs", "2"]);
    assert_ok(&out);
    let fetched = server.take_file_requests();
    assert_eq!(
        fetched,
        [Request {
            path: bad_path.clone(),
            range: None
        }],
        "only the failed file may be fetched again"
    );
    assert_stderr_contains(&out, "fetched 1 file(s)");
    assert_eq!(versions_of(&mirror).len(), 2);
    assert_catalog_files_verified(&mirror);
}

fn download_part(dest: &Path) -> PathBuf {
    dest.with_file_name(format!(
        ".{}.part",
        dest.file_name().unwrap().to_string_lossy()
    ))
}

// ---------------------------------------------------------------------------------------------
// Acceptance 3: a download killed halfway resumes with Range.

#[test]
fn mirror_pull_killed_halfway_resumes_with_range() {
    const SIZE: usize = 4 << 20;
    let site = TempDir::with_prefix("ssb-mirror-resume-").unwrap();
    let www = site.path().join("upstream");
    let layout = Layout::new(&www);
    let (_, root) = random_container(&layout, "big", V1, SIZE);
    publish_layout(site.path(), &www);
    let server = KnobServer::start(&www);
    let rel = relative(&www, &root);
    server.slow(&format!("/{rel}"), true);

    let mirror = site.path().join("mirror");
    let mut child = crate::common::ssb_command(site.path())
        .args(["mirror", "pull", &server.url, "-t"])
        .arg(&mirror)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let part = download_part(&mirror.join(&rel));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let len = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
        if len >= (SIZE / 2) as u64 {
            break;
        }
        assert!(Instant::now() < deadline, "the download never got halfway");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the pull ended before halfway"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().unwrap();
    let kept = std::fs::metadata(&part).unwrap().len();
    assert!(kept > 0 && kept < SIZE as u64, "part holds {kept} bytes");
    assert!(!mirror.join(&rel).exists());
    assert!(!mirror.join("streams/v1/index.json").exists());
    server.take_file_requests();

    server.slow(&format!("/{rel}"), false);
    let out = pull(site.path(), &mirror, &[&server.url]);
    assert_ok(&out);
    let requests = server.take_file_requests();
    assert!(
        requests.contains(&Request {
            path: format!("/{rel}"),
            range: Some(format!("bytes={kept}-"))
        }),
        "expected a ranged request from byte {kept}: {requests:?}"
    );
    assert!(
        !requests
            .iter()
            .any(|r| r.path.ends_with(&rel) && r.range.is_none()),
        "the file must not be fetched from the start again: {requests:?}"
    );
    assert_eq!(sha256_of(&[&mirror.join(&rel)]), sha256_of(&[&root]));
    assert!(!part.exists());
    assert_catalog_files_verified(&mirror);
}

// ---------------------------------------------------------------------------------------------
// Acceptance 4: --keep 1 after upstream publishes a newer version.

#[test]
fn mirror_pull_keep_one_leaves_exactly_the_newest_version() {
    let site = TempDir::with_prefix("ssb-mirror-keep-").unwrap();
    let www = site.path().join("upstream");
    let layout = Layout::new(&www);
    let (old_meta, old_root) = random_container(&layout, "keep", V1, 10_000);
    publish_layout(site.path(), &www);
    let server = KnobServer::start(&www);
    let mirror = site.path().join("mirror");
    // Through tree.yml `mirrors:` this time (no URL on the command line).
    let tree_yml = site.path().join("mirrors.yml");
    write_text(
        &tree_yml,
        &format!(
            "mirrors:\n  - url: {}\n    os: [keep]\n    keep: 1\n",
            server.url
        ),
    );
    let config = ["-c", tree_yml.to_str().unwrap()];
    assert_ok(&pull(site.path(), &mirror, &config));
    assert_eq!(
        versions_of(&mirror),
        BTreeMap::from([("keep:1:amd64:default".into(), vec![V1.to_owned()])])
    );

    let (new_meta, new_root) = random_container(&layout, "keep", V2, 12_000);
    publish_layout(site.path(), &www);
    let out = pull(site.path(), &mirror, &config);
    assert_ok(&out);
    assert_stderr_contains(&out, "removed 2");
    assert_eq!(
        versions_of(&mirror),
        BTreeMap::from([("keep:1:amd64:default".into(), vec![V2.to_owned()])])
    );
    assert_catalog_files_verified(&mirror);
    let rel = |p: &Path| relative(&www, p);
    // The catalog, and its web page beside it.
    let images: BTreeSet<String> = files_under(&mirror)
        .into_iter()
        .filter(|f| !f.starts_with("streams/") && f != "index.html")
        .collect();
    assert_eq!(images, BTreeSet::from([rel(&new_meta), rel(&new_root)]));
    assert!(mirror.join("index.html").is_file(), "the mirror's page");
    assert!(!mirror.join(rel(&old_meta)).exists() && !mirror.join(rel(&old_root)).exists());
    assert!(
        !mirror.join(rel(&old_root)).parent().unwrap().exists(),
        "the emptied version folder is removed"
    );
}

/// A tree that `mirror pull` did not write is never replaced.
#[test]
fn mirror_pull_refuses_a_tree_it_did_not_write() {
    let site = TempDir::with_prefix("ssb-mirror-guard-").unwrap();
    let www = site.path().join("upstream");
    random_container(&Layout::new(&www), "x", V1, 1000);
    publish_layout(site.path(), &www);
    let server = KnobServer::start(&www);
    let out = pull(site.path(), &www, &[&server.url]);
    assert!(!out.status.success());
    assert_stderr_contains(&out, "did not write");
}

/// Hardening item 6: reading a remote catalog costs memory for the products selected, not for
/// the whole file. 50,000 products (23 MB of JSON) pulled with a filter that matches one, under
/// a 192 MiB data limit (`prlimit --data`): the previous reader held every product as a
/// `serde_json::Value` three times over (about 17 KiB per product, 850 MiB here) and died; this
/// one stays far below (bench/mirror-catalog.sh: 216 MiB peak RSS for 200,000 products).
#[test]
fn a_large_remote_catalog_is_read_in_memory_for_what_is_selected() {
    const PRODUCTS: usize = 50_000;
    const DATA_LIMIT: u64 = 192 << 20;
    let site = TempDir::with_prefix("ssb-mirror-large-").unwrap();
    let www = site.path().join("upstream");
    let streams = www.join("streams/v1");
    std::fs::create_dir_all(&streams).unwrap();
    let mut products = String::from("{\"content_id\":\"images\",\"products\":{");
    for i in 0..PRODUCTS {
        if i > 0 {
            products.push(',');
        }
        products.push_str(&format!(
            "\"os{i}:rel:amd64:default\":{{\"aliases\":\"os{i}/rel\",\"arch\":\"amd64\",\"os\":\"os{i}\",\"release\":\"rel\",\"release_title\":\"rel\",\"variant\":\"default\",\"versions\":{{\"20240101_00:00\":{{\"items\":{{\"incus.tar.xz\":{{\"ftype\":\"incus.tar.xz\",\"path\":\"images/{i}/incus.tar.xz\",\"sha256\":\"aa\",\"size\":1,\"combined_squashfs_sha256\":\"{i:064x}\"}},\"root.squashfs\":{{\"ftype\":\"squashfs\",\"path\":\"images/{i}/rootfs.squashfs\",\"sha256\":\"bb\",\"size\":1}}}}}}}}}}"
        ));
    }
    products.push_str("}}");
    std::fs::write(streams.join("images.json"), &products).unwrap();
    std::fs::write(
        streams.join("index.json"),
        r#"{"format":"index:1.0","index":{"images":{"datatype":"image-downloads","format":"products:1.0","path":"streams/v1/images.json","products":["os0:rel:amd64:default"]}}}"#,
    )
    .unwrap();
    let server = KnobServer::start(&www);
    let target = site.path().join("mirror");
    let inner = {
        let mut c = crate::common::ssb_command(site.path());
        c.args(["mirror", "pull", &server.url, "--os", "os7"])
            .arg("-t")
            .arg(&target);
        c
    };
    let mut cmd = std::process::Command::new("prlimit");
    cmd.arg(format!("--data={DATA_LIMIT}"))
        .arg("--")
        .arg(inner.get_program())
        .args(inner.get_args())
        .current_dir(site.path());
    for (key, value) in inner.get_envs() {
        match value {
            Some(v) => cmd.env(key, v),
            None => cmd.env_remove(key),
        };
    }
    let out = run(&mut assert_cmd::Command::from_std(cmd), PULL_TIMEOUT);
    // The one product selected is planned; its files do not exist upstream, so its download
    // fails, which is reported: what matters is that the catalog was read within the limit.
    let stderr = stderr(&out);
    assert!(
        !stderr.contains("memory allocation") && out.status.code().is_some(),
        "the pull ran out of memory under a {DATA_LIMIT}-byte data limit:\n{stderr}"
    );
    assert!(
        stderr.contains("images/7/"),
        "the selected product was planned:\n{stderr}"
    );
}

// ---------------------------------------------------------------------------------------------
// Acceptance 5: push never exposes a catalog that names a missing file.

/// Every item path of the destination's current catalog (if any) exists there.
fn assert_destination_consistent(dest: &Path, event: &Path) {
    let index = dest.join("streams/v1/index.json");
    if !index.exists() {
        return;
    }
    let index = read_json(&index);
    for entry in index["index"].as_object().unwrap().values() {
        let products = read_json(&dest.join(entry["path"].as_str().unwrap()));
        for p in products["products"].as_object().unwrap().values() {
            for v in p["versions"].as_object().unwrap().values() {
                for item in v["items"].as_object().unwrap().values() {
                    let path = dest.join(item["path"].as_str().unwrap());
                    assert!(
                        path.is_file(),
                        "after {}: the published catalog names {}, which is missing",
                        event.display(),
                        path.display()
                    );
                }
            }
        }
    }
}

/// Pushes `www` to `dest`, checking the destination after every step; returns the report and
/// the paths written or removed, relative to `dest`, in order.
fn push_checking_each_step(www: &Path, dest: &Path) -> (PushReport, Vec<String>) {
    let mut events = Vec::new();
    let report = simplestreams_builder::mirror::push(www, dest.to_str().unwrap(), &mut |p| {
        assert_destination_consistent(dest, p);
        events.push(relative(dest, p));
    })
    .unwrap();
    (report, events)
}

#[test]
fn mirror_push_writes_the_catalog_after_the_files_and_removes_last() {
    let site = TempDir::with_prefix("ssb-mirror-push-").unwrap();
    let www = site.path().join("tree");
    let layout = Layout::new(&www);
    let (m1, _) = random_container(&layout, "p", V1, 5_000);
    publish_layout(site.path(), &www);
    let dest = site.path().join("dest");

    let (report, events) = push_checking_each_step(&www, &dest);
    assert_eq!(
        events.last().unwrap(),
        "streams/v1/index.json",
        "{events:?}"
    );
    assert_eq!(report.removed, 0);
    assert_eq!(files_under(&dest), files_under(&www));

    // The next version replaces the first: new files, then the catalog, then the removals.
    let (m2, _) = random_container(&layout, "p", V2, 6_000);
    std::fs::remove_dir_all(m1.parent().unwrap()).unwrap();
    publish_layout(site.path(), &www);
    let (report, events) = push_checking_each_step(&www, &dest);
    assert_eq!(report.removed, 2, "{events:?}");
    let index_at = events
        .iter()
        .position(|e| e == "streams/v1/index.json")
        .unwrap();
    let first_removal = events.iter().position(|e| e.contains(V1)).unwrap();
    let new_meta = relative(&www, &m2);
    let new_at = events.iter().position(|e| *e == new_meta).unwrap();
    assert!(new_at < index_at && index_at < first_removal, "{events:?}");
    assert_eq!(files_under(&dest), files_under(&www));
    assert_catalog_files_verified(&dest);

    // Unchanged files are not copied again; the CLI does the same.
    let out = run(
        ssb(site.path())
            .args(["mirror", "push", dest.to_str().unwrap(), "-t"])
            .arg(&www),
        PULL_TIMEOUT,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_stderr_contains(&out, "0 file(s) copied");
}

// ---------------------------------------------------------------------------------------------
// `serve --mirror-interval`: the served tree follows upstream.

#[test]
fn serve_with_mirror_interval_pulls_the_configured_mirrors() {
    let ca = TestCa::generate();
    let site = TempDir::with_prefix("ssb-mirror-serve-").unwrap();
    let www = site.path().join("upstream");
    let layout = Layout::new(&www);
    random_container(&layout, "tick", V1, 3_000);
    publish_layout(site.path(), &www);
    let upstream = KnobServer::start(&www);
    let tree_yml = site.path().join("mirrors.yml");
    write_text(
        &tree_yml,
        &format!("mirrors:\n  - url: {}\n    keep: 1\n", upstream.url),
    );
    let mirror = site.path().join("mirror");
    std::fs::create_dir_all(&mirror).unwrap();
    let mut cmd = crate::common::ssb_command(site.path());
    cmd.args(["serve", "-c"])
        .arg(&tree_yml)
        .arg("-t")
        .arg(&mirror)
        .args(["--listen", "127.0.0.1:0", "--mirror-interval", "1s"])
        .arg("--tls-cert")
        .arg(ca.cert_pem())
        .arg("--tls-key")
        .arg(ca.key_pem());
    let _server = TestServer::spawn("ssb-serve-mirror", cmd);
    let wait_for = |version: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if mirror.join("streams/v1/index.json").is_file()
                && versions_of(&mirror).get("tick:1:amd64:default")
                    == Some(&vec![version.to_owned()])
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the mirror never showed {version}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_for(V1);
    random_container(&layout, "tick", V2, 3_000);
    publish_layout(site.path(), &www);
    wait_for(V2);
    assert_catalog_files_verified(&mirror);
}
