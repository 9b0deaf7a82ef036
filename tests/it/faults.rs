//! Fault injection, bounded and on loopback only: `publish` killed with SIGKILL at spread-out
//! moments while it works, and `serve --index` killed while uploads stream in. After every kill
//! the tree must be one a client can use: each catalog file parses, each file it names exists
//! with its size, no partial file carries a name clients fetch, and the next run succeeds. A
//! longer run with figures is in docs/reliability.md.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use crate::common::fixtures::{Layout, MetaSpec, random_squashfs, write_metadata_tarball};
use crate::common::server::{TestServer, peak_rss_kib};
use crate::common::site::TOKEN;
use crate::common::tls::TestCa;
use crate::common::{command::run_ok, ssb, ssb_command};

/// Kills of `publish`; enough moments across a run of about 100 ms, quick enough for the suite.
const PUBLISH_KILLS: u64 = 30;
/// Kills of `serve` during uploads.
const SERVE_KILLS: u64 = 4;

/// `SSB_FAULT_SCALE=K` multiplies the kills (the longer run of docs/reliability.md).
fn scaled(n: u64) -> u64 {
    n * std::env::var("SSB_FAULT_SCALE")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(1)
        .max(1)
}

/// A small deterministic spread of delays (xorshift), so a failure can be replayed.
fn delays(seed: u64, n: u64, max_ms: u64) -> Vec<Duration> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            Duration::from_millis(x % max_ms)
        })
        .collect()
}

/// One version of `os` with a metadata tarball and a squashfs of `size` bytes.
fn add_version(www: &Path, os: &str, version: &str, size: usize) {
    let dir = Layout::new(www).version_dir(os, "1", "amd64", "default", version);
    write_metadata_tarball(&dir.join("incus.tar.xz"), &MetaSpec::new(os, "1", version));
    let seed = os.len() as u64 * 131 + version.len() as u64;
    std::fs::write(dir.join("rootfs.squashfs"), random_squashfs(size, seed)).unwrap();
}

/// What a client can rely on: the catalog parses, every file it names is there with its size,
/// and a `.gz` twin, when there is one, holds exactly the file beside it (a publish removes the
/// twin before it replaces the file and writes the new twin last, so a static server's
/// `gzip_static` sends the plain file meanwhile). `complete`: the twins must be there too.
fn assert_usable(www: &Path, after: &str) {
    assert_usable_with(www, after, false);
}

fn assert_usable_with(www: &Path, after: &str, complete: bool) {
    let streams = www.join("streams/v1");
    if !streams.join("index.json").exists() {
        return; // killed before the first catalog: nothing published yet, nothing broken
    }
    let index: Value = serde_json::from_slice(&std::fs::read(streams.join("index.json")).unwrap())
        .unwrap_or_else(|e| panic!("{after}: index.json does not parse: {e}"));
    let path = index["index"]["images"]["path"].as_str().unwrap();
    let images: Value = serde_json::from_slice(&std::fs::read(www.join(path)).unwrap())
        .unwrap_or_else(|e| panic!("{after}: {path} does not parse: {e}"));
    for name in ["index.json", "images.json"] {
        let gz = match std::fs::read(streams.join(format!("{name}.gz"))) {
            Ok(gz) => gz,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !complete => continue,
            Err(e) => panic!("{after}: {name}.gz: {e}"),
        };
        let mut json = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut json)
            .unwrap_or_else(|e| panic!("{after}: {name}.gz is partial: {e}"));
        assert!(
            json == std::fs::read(streams.join(name)).unwrap(),
            "{after}: {name}.gz does not hold {name}"
        );
    }
    for product in images["products"].as_object().unwrap().values() {
        for version in product["versions"].as_object().unwrap().values() {
            for item in version["items"].as_object().unwrap().values() {
                let file = www.join(item["path"].as_str().unwrap());
                let size = std::fs::metadata(&file)
                    .unwrap_or_else(|e| panic!("{after}: {} is missing: {e}", file.display()))
                    .len();
                assert_eq!(size, item["size"].as_u64().unwrap(), "{after}: {item}");
            }
        }
    }
}

#[test]
fn publish_killed_anywhere_leaves_a_usable_tree() {
    let dir = TempDir::with_prefix("ssb-faults-").unwrap();
    let www = dir.path().join("www");
    for p in 0..12 {
        add_version(&www, &format!("os{p}"), "20250101_10:00", 256 << 10);
    }
    let (mut kills, mut peak_kib) = (0, 0);
    for (n, delay) in delays(0x5eed, scaled(PUBLISH_KILLS), 120)
        .into_iter()
        .enumerate()
    {
        // New work for every run: one more version to hash, so kills land mid-hash too.
        add_version(
            &www,
            &format!("os{}", n % 12),
            &format!("2025010{}_1{}:00", 2 + n / 10, n % 10),
            512 << 10,
        );
        let mut child = ssb_command(dir.path())
            .args(["publish", "-t", "www"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        peak_kib = peak_kib.max(peak_rss_kib(child.id()));
        let _ = child.kill();
        let _ = child.wait();
        assert_usable(&www, &format!("kill {n} after {delay:?}"));
        kills += 1;
    }
    eprintln!("publish: {kills} kills, peak RSS {} MiB", peak_kib / 1024);
    run_ok(
        ssb(dir.path()).args(["publish", "-t", "www"]),
        Duration::from_secs(120),
    );
    assert_usable_with(&www, "the publish after the kills", true);
    // What the kills left is ours to clean, and then the tree verifies.
    run_ok(
        ssb(dir.path()).args(["-t", "www", "prune", "--yes"]),
        Duration::from_secs(120),
    );
    run_ok(
        ssb(dir.path()).args(["-t", "www", "verify"]),
        Duration::from_secs(120),
    );
}

#[test]
fn serve_killed_during_uploads_leaves_a_usable_tree() {
    let dir = TempDir::with_prefix("ssb-faults-serve-").unwrap();
    let www = dir.path().join("www");
    add_version(&www, "base", "20250101_10:00", 64 << 10);
    run_ok(
        ssb(dir.path()).args(["publish", "-t", "www"]),
        Duration::from_secs(60),
    );
    let ca = TestCa::generate();
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let upload = dir.path().join("upload.bin");
    std::fs::write(&upload, random_squashfs(32 << 20, 7)).unwrap();
    let (mut kills, mut peak_kib) = (0, 0);
    for (n, delay) in delays(0xfa11, scaled(SERVE_KILLS), 400)
        .into_iter()
        .enumerate()
    {
        let with_token = [
            OsStr::new("--index"),
            OsStr::new("--no-watch"),
            OsStr::new("--write-token-file"),
            token.as_os_str(),
        ];
        let server = TestServer::serve_from(dir.path(), &www, &ca, &with_token);
        let url = format!(
            "{}/images/up{n}/1/amd64/default/20250101_10:00/rootfs.squashfs",
            server.url()
        );
        // A slow upload, so the kill lands while it streams.
        let mut curl = Command::new("curl")
            .args(["-sS", "--noproxy", "*", "--limit-rate", "20M", "--cacert"])
            .arg(ca.ca_pem())
            .args(["-H", &format!("Authorization: Bearer {TOKEN}"), "-T"])
            .arg(&upload)
            .arg(&url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(200) + delay);
        peak_kib = peak_kib.max(server.peak_rss_kib());
        drop(server); // SIGKILL
        kills += 1;
        let deadline = Instant::now() + Duration::from_secs(10);
        while curl.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = curl.kill();
        let _ = curl.wait();
        assert_usable(&www, &format!("serve kill {n}"));
        let product = www.join(format!("images/up{n}/1/amd64/default/20250101_10:00"));
        if let Ok(entries) = std::fs::read_dir(&product) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                assert!(
                    name.starts_with('.') || e.metadata().unwrap().len() == 32 << 20,
                    "serve kill {n}: a partial upload under a client name: {name}"
                );
            }
        }
    }
    eprintln!(
        "serve: {kills} kills during uploads, peak RSS {} MiB",
        peak_kib / 1024
    );
    // The next server clears what the kills left, and the tree verifies.
    let index = ["--index", "--no-watch"].map(OsStr::new);
    drop(TestServer::serve_from(dir.path(), &www, &ca, &index));
    run_ok(
        ssb(dir.path()).args(["-t", "www", "verify"]),
        Duration::from_secs(120),
    );
}
