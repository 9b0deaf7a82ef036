//! The load test of the hardening issue: 100 catalog readers and 4 uploaders against one
//! `serve --index` for a fixed time, loopback only. Every read must be a 200 whose body parses
//! and whose index and products file agree; every upload a 201; and at the end every uploaded
//! version is in the catalog. `SSB_LOAD_SECONDS` sets the time (default 5 s in the suite); the
//! figures of a longer run are in docs/reliability.md.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use crate::common::fixtures::{MetaSpec, random_squashfs, write_metadata_tarball};
use crate::common::site::{INDEX_DEADLINE, Site, TOKEN};

const READERS: usize = 100;
const UPLOADERS: usize = 4;
/// Products published before the load starts, so the catalog is not trivial.
const PRODUCTS: usize = 30;
/// Size of each uploaded rootfs.
const ROOTFS: usize = 1 << 20;

fn seconds() -> u64 {
    std::env::var("SSB_LOAD_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
}

/// The `i`-th version name of a day: `20250101_HH:MM`.
fn version(i: usize) -> String {
    assert!(i < 24 * 60, "more versions than minutes in a day");
    format!("20250101_{:02}:{:02}", i / 60, i % 60)
}

/// What the readers saw.
#[derive(Default)]
struct Reads {
    ok: AtomicU64,
    bytes: AtomicU64,
    /// One line per failed read: status, transport error, bad JSON, or index and products
    /// file disagreeing.
    failures: Mutex<Vec<String>>,
}

impl Reads {
    fn fail(&self, what: String) {
        self.failures.lock().unwrap().push(what);
    }
}

/// One reader's pass: index.json then the products file it names; both must be 200 and parse,
/// and every product the index lists must be in the products file.
fn read_once(client: &reqwest::blocking::Client, url: &str, reads: &Reads) {
    let get = |path: &str| -> Option<Value> {
        let r = match client.get(format!("{url}/{path}")).send() {
            Ok(r) => r,
            Err(e) => {
                reads.fail(format!("{path}: {e}"));
                return None;
            }
        };
        let status = r.status();
        if !status.is_success() {
            reads.fail(format!("{path}: HTTP {status}"));
            return None;
        }
        let body = match r.bytes() {
            Ok(b) => b,
            Err(e) => {
                reads.fail(format!("{path}: body: {e}"));
                return None;
            }
        };
        reads.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
        match serde_json::from_slice(&body) {
            Ok(v) => Some(v),
            Err(e) => {
                reads.fail(format!("{path}: not valid JSON ({e})"));
                None
            }
        }
    };
    let Some(index) = get("streams/v1/index.json") else {
        return;
    };
    let entry = &index["index"]["images"];
    let Some(path) = entry["path"].as_str() else {
        reads.fail("index.json names no products file".into());
        return;
    };
    let Some(products) = get(path) else {
        return;
    };
    // The index may be older than the products file (it is written after it), never newer:
    // every product it lists must be there.
    for id in entry["products"].as_array().into_iter().flatten() {
        let id = id.as_str().unwrap_or_default();
        if products["products"][id].is_null() {
            reads.fail(format!("index.json lists `{id}`, which {path} lacks"));
        }
    }
    reads.ok.fetch_add(1, Ordering::Relaxed);
}

#[test]
fn hundred_readers_and_four_uploaders_see_no_error() {
    let duration = Duration::from_secs(seconds());
    let dir = TempDir::with_prefix("ssb-load-").unwrap();
    let www = dir.path().join("www");
    let scratch = dir.path().join("scratch");
    for p in 0..PRODUCTS {
        let os = format!("base{p}");
        let v = www.join(format!("images/{os}/1/amd64/default/{}", version(0)));
        write_metadata_tarball(&v.join("incus.tar.xz"), &MetaSpec::new(&os, "1", "s"));
        std::fs::write(v.join("rootfs.squashfs"), random_squashfs(4096, p as u64)).unwrap();
    }
    // Each uploader's files: one metadata tarball per product, a fresh rootfs per version.
    let metas: Vec<PathBuf> = (0..UPLOADERS)
        .map(|u| {
            write_metadata_tarball(
                &scratch.join(format!("up{u}.tar.xz")),
                &MetaSpec::new(&format!("up{u}"), "1", "load"),
            )
        })
        .collect();
    let site = Site::start_in(dir, www, &[], &[]);
    let ca = std::fs::read(site.ca.ca_pem()).unwrap();
    let client = reqwest::blocking::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let url = site.url().to_owned();
    let reads = Reads::default();
    let stop = AtomicBool::new(false);
    let upload_failures: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let uploaded: Mutex<BTreeMap<String, Vec<String>>> = Mutex::new(BTreeMap::new());
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..READERS {
            let (client, url, reads, stop) = (&client, &url, &reads, &stop);
            s.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    read_once(client, url, reads);
                }
            });
        }
        for (u, meta) in metas.iter().enumerate() {
            let (client, url, stop) = (&client, &url, &stop);
            let (failures, uploaded) = (&upload_failures, &uploaded);
            s.spawn(move || {
                let product = format!("up{u}:1:amd64:default");
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let v = version(i);
                    let base = format!("{url}/images/up{u}/1/amd64/default/{v}");
                    let rootfs = random_squashfs(ROOTFS, (u * 10_000 + i) as u64 + 1);
                    let meta = std::fs::read(meta).unwrap();
                    let mut ok = true;
                    for (name, body) in [("incus.tar.xz", meta), ("rootfs.squashfs", rootfs)] {
                        let r = client
                            .put(format!("{base}/{name}"))
                            .header("Authorization", format!("Bearer {TOKEN}"))
                            .body(body)
                            .send();
                        match r {
                            Ok(r) if r.status() == 201 => {}
                            Ok(r) => {
                                ok = false;
                                failures
                                    .lock()
                                    .unwrap()
                                    .push(format!("{v}/{name}: HTTP {}", r.status()));
                            }
                            Err(e) => {
                                ok = false;
                                failures.lock().unwrap().push(format!("{v}/{name}: {e}"));
                            }
                        }
                    }
                    if ok {
                        uploaded
                            .lock()
                            .unwrap()
                            .entry(product.clone())
                            .or_default()
                            .push(v);
                    }
                    i += 1;
                }
            });
        }
        std::thread::sleep(duration);
        stop.store(true, Ordering::Relaxed);
    });
    let elapsed = started.elapsed();
    let uploaded = uploaded.into_inner().unwrap();
    let (catalog, waited) = site.wait_within(
        INDEX_DEADLINE,
        |c| {
            uploaded.iter().all(|(product, versions)| {
                versions
                    .iter()
                    .all(|v| !c["products"][product]["versions"][v].is_null())
            })
        },
        "every uploaded version in the catalog",
    );
    let versions: usize = uploaded.values().map(Vec::len).sum();
    let failures = reads.failures.into_inner().unwrap();
    let upload_failures = upload_failures.into_inner().unwrap();
    let ok = reads.ok.into_inner();
    eprintln!(
        "load: {READERS} readers, {UPLOADERS} uploaders, {:.1} s: {ok} index+products reads ({:.0}/s, {} MiB), {} failed; {versions} versions uploaded ({} MiB), {} failed; all indexed {:.2} s after the last; {} products in the catalog; server peak RSS {} MiB",
        elapsed.as_secs_f64(),
        ok as f64 / elapsed.as_secs_f64(),
        reads.bytes.into_inner() >> 20,
        failures.len(),
        (versions * ROOTFS) >> 20,
        upload_failures.len(),
        waited.as_secs_f64(),
        catalog["products"].as_object().map_or(0, |p| p.len()),
        site.server.peak_rss_kib() / 1024,
    );
    assert!(
        failures.is_empty(),
        "failed reads:\n{}",
        failures.join("\n")
    );
    assert!(
        upload_failures.is_empty(),
        "failed uploads:\n{}",
        upload_failures.join("\n")
    );
    assert!(ok > 0 && versions > 0, "the load did nothing");
}
