//! Trees in an S3 bucket, against a real S3 server (SeaweedFS): publish, import, mirror pull and
//! push into the bucket; the Incus client and daemon through `serve -t s3://…`, streamed and
//! redirected; eight publishers at once; the server killed during a multipart upload.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::common::bootable::{
    busybox_rootfs, have_busybox, pack_root_tar_xz, pack_squashfs, skip,
};
use crate::common::catalog::{ImageType, sha256_of};
use crate::common::clients::{Client, Clients, Program};
use crate::common::command::{run, run_ok};
use crate::common::daemon::{Daemon, Kind};
use crate::common::fixtures::{Layout, MetaSpec, random_container, write_metadata_tarball};
use crate::common::s3::{Seaweed, block_on};
use crate::common::server::TestServer;
use crate::common::ssb;
use crate::common::tls::TestCa;

const V1: &str = "20250101_10:00";
const V2: &str = "20250102_10:00";
const TIMEOUT: Duration = Duration::from_secs(300);

/// `ssb … ARGS` with the bucket's credentials and endpoint.
fn s3_cmd(weed: &Seaweed, cwd: &Path, args: &[&str]) -> assert_cmd::Command {
    let mut cmd = ssb(cwd);
    for (k, v) in weed.vars() {
        cmd.env(k, v);
    }
    cmd.args(args);
    cmd
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A version of product `os/1` in the layout under `www`: metadata and `rootfs.squashfs` of
/// `rootfs_size` pseudo-random bytes. Returns the rootfs.
fn fake_version(www: &Path, os: &str, version: &str, rootfs_size: usize) -> PathBuf {
    random_container(&Layout::new(www), os, version, rootfs_size).1
}

/// A version of product `os/1` in the layout under `www` that boots: metadata and a busybox
/// squashfs whose os-release says `pretty`.
fn bootable_version(www: &Path, os: &str, pretty: &str) {
    let v = Layout::new(www).version_dir(os, "1", "amd64", "default", V1);
    write_metadata_tarball(&v.join("incus.tar.xz"), &MetaSpec::new(os, "1", V1));
    let scratch = www.with_file_name(format!("rootfs-{os}"));
    pack_squashfs(
        &busybox_rootfs(&scratch, pretty),
        &v.join("rootfs.squashfs"),
    );
}

/// The bucket's products file.
fn bucket_catalog(weed: &Seaweed, prefix: &str) -> simplestreams_builder::format::ProductsFile {
    block_on(simplestreams_builder::bucket::inventory::catalog(
        &weed.bucket(prefix),
    ))
    .unwrap()
    .expect("a catalog in the bucket")
}

/// The bucket's catalog: product id → version names.
fn catalog_of(weed: &Seaweed, prefix: &str) -> std::collections::BTreeMap<String, Vec<String>> {
    bucket_catalog(weed, prefix)
        .products
        .iter()
        .map(|(id, p)| {
            (
                id.clone(),
                p.versions.keys().map(|v| v.to_string()).collect(),
            )
        })
        .collect()
}

/// The combined fingerprint the bucket's catalog gives `product`'s squashfs image.
fn squashfs_fingerprint(weed: &Seaweed, prefix: &str, product: &str) -> String {
    bucket_catalog(weed, prefix).products[product]
        .versions
        .values()
        .flat_map(|v| v.items.values())
        .find_map(|i| i.combined_squashfs_sha256.clone())
        .unwrap_or_else(|| panic!("{product} has no squashfs image"))
}

/// `publish -s TREE -t URL` for every tree, all started together; their outputs.
fn publish_at_once(weed: &Seaweed, cwd: &Path, url: &str, trees: &[PathBuf]) -> Vec<Output> {
    let children: Vec<_> = trees
        .iter()
        .map(|tree| {
            let mut cmd = crate::common::ssb_command(cwd);
            for (k, v) in weed.vars() {
                cmd.env(k, v);
            }
            cmd.args(["-t", url, "publish", "-s"])
                .arg(tree)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect()
}

fn serve_bucket(weed: &Seaweed, cwd: &Path, url: &str, ca: &TestCa, redirect: bool) -> TestServer {
    let mut cmd = crate::common::ssb_command(cwd);
    for (k, v) in weed.vars() {
        cmd.env(k, v);
    }
    cmd.args(["-t", url, "serve", "--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(ca.cert_pem())
        .arg("--tls-key")
        .arg(ca.key_pem());
    if redirect {
        cmd.arg("--redirect");
    }
    TestServer::spawn(
        if redirect {
            "ssb-serve-s3-redirect"
        } else {
            "ssb-serve-s3"
        },
        cmd,
    )
}

/// Publish (mirror push), import and mirror pull into one bucket; the client lists and exports
/// through `serve -t s3://…` (files hash to the fingerprints), and the Incus daemon copies and
/// launches images through it, streamed and redirected to presigned URLs.
#[test]
fn bucket_tree_end_to_end_with_incus() {
    let test = "S3 end to end";
    if !have_busybox() {
        skip(test, "busybox-static is missing");
        return;
    }
    let Some(weed) = Seaweed::start(test) else {
        return;
    };
    let ca = TestCa::generate();
    let Some(clients) = Clients::detect(&ca, &[Program::Incus]) else {
        return;
    };
    let dir = TempDir::with_prefix("ssb-s3-e2e-").unwrap();
    let url = weed.url("e2e");
    let pretty = format!("SSB s3 {}", std::process::id());

    // 1. A local tree pushed into the bucket.
    let www = dir.path().join("www");
    bootable_version(&www, "pushed", &pretty);
    run_ok(
        s3_cmd(&weed, dir.path(), &["-t"])
            .arg(&www)
            .args(["mirror", "push", &url]),
        TIMEOUT,
    );
    let before = std::fs::read_dir(&www).unwrap().count();

    // 2. An image imported straight into the bucket.
    let imp = dir.path().join("imp");
    std::fs::create_dir_all(&imp).unwrap();
    let meta = write_metadata_tarball(
        &imp.join("incus.tar.xz"),
        &MetaSpec::new("imported", "1", V1),
    );
    let rootfs = pack_root_tar_xz(
        &busybox_rootfs(&dir.path().join("r2"), &pretty),
        &imp.join("rootfs.tar.xz"),
    );
    run_ok(
        s3_cmd(&weed, dir.path(), &["-t", &url, "import"])
            .arg(&meta)
            .arg(&rootfs),
        TIMEOUT,
    );

    // 3. A mirror pull from another server into the bucket.
    let other = dir.path().join("other");
    bootable_version(&other, "mirrored", &pretty);
    run_ok(
        ssb(dir.path()).arg("-t").arg(&other).arg("publish"),
        TIMEOUT,
    );
    let upstream = TestServer::serve(&other, &ca);
    let pull = || {
        let out = run_ok(
            s3_cmd(
                &weed,
                dir.path(),
                &["-t", &url, "mirror", "pull", upstream.url(), "--ca-cert"],
            )
            .arg(ca.cert_pem()),
            TIMEOUT,
        );
        stderr(&out)
    };
    let first = pull();
    assert!(
        first.contains("1 version(s) of 1 product(s) added (2 file(s)"),
        "{first}"
    );
    // Nothing is fetched again.
    let again = pull();
    assert!(
        again.contains("0 version(s) of 0 product(s) added (0 file(s)")
            && again.contains("1 version(s) already there"),
        "{again}"
    );
    drop(upstream);

    let catalog = catalog_of(&weed, "e2e");
    assert_eq!(
        catalog.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "imported:1:amd64:default",
            "mirrored:1:amd64:default",
            "pushed:1:amd64:default"
        ],
        "the bucket's catalog"
    );
    assert_eq!(
        std::fs::read_dir(&www).unwrap().count(),
        before,
        "mirror push into a bucket wrote into the local tree"
    );
    let verify = run_ok(
        &mut s3_cmd(&weed, dir.path(), &["-t", &url, "verify"]),
        TIMEOUT,
    );
    assert!(
        String::from_utf8_lossy(&verify.stdout).contains(": 0 problem(s)"),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let listed = run_ok(
        &mut s3_cmd(&weed, dir.path(), &["-t", &url, "list"]),
        TIMEOUT,
    );
    let listed = String::from_utf8_lossy(&listed.stdout);
    for p in [
        "pushed:1:amd64:default",
        "imported:1:amd64:default",
        "mirrored:1:amd64:default",
    ] {
        assert!(listed.contains(p), "list misses {p}:\n{listed}");
    }

    // 4. The client through our server on the bucket: list, export, fingerprints.
    let served = serve_bucket(&weed, dir.path(), &url, &ca, false);
    clients.incus_remote_add("s3", served.url());
    let images = clients.image_list(Client::Incus, "s3");
    assert_eq!(images.len(), 3, "incus image list s3: {images:?}");
    let out = dir.path().join("export");
    let exported =
        clients.image_export(Client::Incus, "s3", "pushed/1", ImageType::Container, &out);
    let (meta, rootfs): (Vec<_>, Vec<_>) =
        exported.iter().partition(|(n, _)| n.ends_with(".tar.xz"));
    assert_eq!((meta.len(), rootfs.len()), (1, 1), "exported: {exported:?}");
    assert_eq!(
        sha256_of(&[meta[0].1, rootfs[0].1]),
        squashfs_fingerprint(&weed, "e2e", "pushed:1:amd64:default"),
        "the exported files do not hash to the published fingerprint"
    );

    // 5. The daemon copies and launches, streamed and redirected.
    let Some(daemon) = Daemon::start(Kind::Incus, &ca) else {
        return;
    };
    daemon.remote_add("s3", served.url());
    daemon.ok(&[
        "image",
        "copy",
        "s3:pushed/1",
        "local:",
        "--alias",
        "pushed",
    ]);
    crate::daemons::boots(&daemon, "pushed", "s3-pushed", &pretty);
    let redirecting = serve_bucket(&weed, dir.path(), &url, &ca, true);
    // The client follows the redirects to the bucket too.
    clients.incus_remote_add("s3r", redirecting.url());
    let out = dir.path().join("export-redirected");
    let exported = clients.image_export(
        Client::Incus,
        "s3r",
        "mirrored/1",
        ImageType::Container,
        &out,
    );
    let (meta, rootfs): (Vec<_>, Vec<_>) =
        exported.iter().partition(|(n, _)| n.ends_with(".tar.xz"));
    assert_eq!((meta.len(), rootfs.len()), (1, 1), "exported: {exported:?}");
    assert_eq!(
        sha256_of(&[meta[0].1, rootfs[0].1]),
        squashfs_fingerprint(&weed, "e2e", "mirrored:1:amd64:default"),
        "the files exported through redirects do not hash to the published fingerprint"
    );
    daemon.remote_add("s3r", redirecting.url());
    daemon.ok(&[
        "image",
        "copy",
        "s3r:imported/1",
        "local:",
        "--alias",
        "imported",
    ]);
    crate::daemons::boots(&daemon, "imported", "s3-imported", &pretty);
    daemon.ok(&[
        "image",
        "copy",
        "s3r:mirrored/1",
        "local:",
        "--alias",
        "mirrored",
    ]);
    crate::daemons::boots(&daemon, "mirrored", "s3-mirrored", &pretty);
    // Panics with the log if the redirecting server redirected nothing.
    redirecting.wait_said(&["status=302"]);
}

/// Eight publishers of eight products, started together, five rounds: every round's catalog
/// has all eight with the round's version, and every catalog read meanwhile is complete.
#[test]
fn eight_publishers_at_once_lose_nothing() {
    let test = "S3 concurrent publishers";
    let Some(weed) = Seaweed::start(test) else {
        return;
    };
    let dir = TempDir::with_prefix("ssb-s3-conc-").unwrap();
    let url = weed.url("conc");
    let trees: Vec<PathBuf> = (0..8).map(|i| dir.path().join(format!("b{i}"))).collect();
    let stop = AtomicBool::new(false);
    let reads = AtomicUsize::new(0);
    let bucket = weed.bucket("conc");
    /// Stops the reader however the rounds end, so a failed round fails instead of hanging.
    struct StopOnDrop<'a>(&'a AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    std::thread::scope(|scope| {
        let stopper = StopOnDrop(&stop);
        let reader = scope.spawn(|| {
            let mut problems = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match block_on(simplestreams_builder::bucket::catalog::published(&bucket)) {
                    Ok(None) => {}
                    Ok(Some(simplestreams_builder::bucket::catalog::Published {
                        index,
                        products,
                        path,
                        ..
                    })) => {
                        match serde_json::from_slice::<simplestreams_builder::format::ProductsFile>(
                            &products,
                        ) {
                            Ok(p) => {
                                let named: BTreeSet<&String> =
                                    index.index.values().flat_map(|e| &e.products).collect();
                                let has: BTreeSet<&String> = p.products.keys().collect();
                                if named != has {
                                    problems.push(format!(
                                        "{path}: index names {named:?}, file has {has:?}"
                                    ));
                                }
                                reads.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => problems.push(format!("{path}: {e}")),
                        }
                    }
                    Err(e) => problems.push(e.to_string()),
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            problems
        });
        for (round, version) in [
            "20250101_00:00",
            "20250102_00:00",
            "20250103_00:00",
            "20250104_00:00",
            "20250105_00:00",
        ]
        .into_iter()
        .enumerate()
        {
            for (i, tree) in trees.iter().enumerate() {
                fake_version(tree, &format!("p{i}"), version, 64 << 10);
            }
            let started = Instant::now();
            for out in publish_at_once(&weed, dir.path(), &url, &trees) {
                assert!(
                    out.status.success(),
                    "round {round}: a publisher failed:\n{}",
                    stderr(&out)
                );
            }
            let catalog = catalog_of(&weed, "conc");
            assert_eq!(catalog.len(), 8, "round {round}: {catalog:?}");
            for (id, versions) in &catalog {
                assert_eq!(
                    versions.len(),
                    round + 1,
                    "round {round}: {id} has {versions:?}"
                );
                assert_eq!(versions.last().map(String::as_str), Some(version));
            }
            eprintln!("round {round}: 8 publishers in {:?}", started.elapsed());
        }
        drop(stopper);
        let problems = reader.join().unwrap();
        assert!(
            problems.is_empty(),
            "readers saw broken catalogs:\n{}",
            problems.join("\n")
        );
    });
    assert!(
        reads.load(Ordering::Relaxed) > 10,
        "too few reads to mean anything"
    );

    // prune: the snapshots of earlier publishes wait out the grace period, then go; the
    // catalog stays whole.
    let prune = |args: &[&str]| {
        let mut all = vec!["-t", url.as_str(), "prune", "--yes"];
        all.extend_from_slice(args);
        let out = run_ok(&mut s3_cmd(&weed, dir.path(), &all), TIMEOUT);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let first = prune(&[]);
    assert!(
        first.contains("unreferenced streams/v1/images-") && !first.contains("removed "),
        "{first}"
    );
    std::thread::sleep(Duration::from_secs(2));
    let second = prune(&["--grace", "1s"]);
    assert!(second.contains("removed streams/v1/images-"), "{second}");
    assert!(!second.contains("unreferenced "), "{second}");
    run_ok(
        &mut s3_cmd(&weed, dir.path(), &["-t", &url, "verify"]),
        TIMEOUT,
    );
    let catalog = catalog_of(&weed, "conc");
    assert_eq!(catalog.len(), 8);
    assert!(catalog.values().all(|v| v.len() == 5), "{catalog:?}");
}

/// The S3 server killed while a large file goes up in a multipart upload: a clear error naming
/// the bucket and key, nothing of the upload visible, the previous catalog intact; after a
/// restart the same command succeeds.
#[test]
fn server_killed_during_multipart_upload() {
    let test = "S3 kill during upload";
    let Some(mut weed) = Seaweed::start(test) else {
        return;
    };
    let dir = TempDir::with_prefix("ssb-s3-fault-").unwrap();
    let url = weed.url("fault");
    let www = dir.path().join("www");
    fake_version(&www, "big", V1, 64 << 10);
    run_ok(
        s3_cmd(&weed, dir.path(), &["-t", &url, "publish", "-s"]).arg(&www),
        TIMEOUT,
    );
    let before = catalog_of(&weed, "fault");
    fake_version(&www, "big", V2, 320 << 20);
    let key = format!("images/big/1/amd64/default/{V2}/rootfs.squashfs");

    let data_size = |p: &Path| -> u64 {
        walk(p)
            .iter()
            .filter_map(|f| f.metadata().ok())
            .map(|m| m.len())
            .sum()
    };
    let base = data_size(&weed.data_dir());
    let mut cmd = crate::common::ssb_command(dir.path());
    for (k, v) in weed.vars() {
        cmd.env(k, v);
    }
    let child = cmd
        .args(["-t", &url, "publish", "-s"])
        .arg(&www)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Kill once the first parts have landed.
    let deadline = Instant::now() + Duration::from_secs(120);
    while data_size(&weed.data_dir()) < base + (24 << 20) {
        assert!(Instant::now() < deadline, "the upload never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    weed.kill();
    let out = child.wait_with_output().unwrap();
    let said = stderr(&out);
    assert!(
        !out.status.success(),
        "the publish succeeded without its server:\n{said}"
    );
    eprintln!("the interrupted publish said:\n{said}");
    assert!(
        said.contains("s3://images/fault") && said.contains(&format!("fault/{key}")),
        "the error does not name the bucket and key:\n{said}"
    );

    weed.restart();
    let objects = block_on(weed.bucket("fault").list("")).unwrap();
    // The half-upload is not visible; a smaller file of the version that went up whole before
    // is named by nothing (prune removes it after its grace period).
    assert!(
        !objects.iter().any(|o| o.rel == key),
        "the interrupted upload is visible: {:?}",
        objects.iter().map(|o| &o.rel).collect::<Vec<_>>()
    );
    assert_eq!(catalog_of(&weed, "fault"), before, "the catalog changed");

    let rerun = run(
        s3_cmd(&weed, dir.path(), &["-t", &url, "publish", "-s"]).arg(&www),
        TIMEOUT,
    );
    assert!(
        rerun.status.success(),
        "the rerun failed:\n{}",
        stderr(&rerun)
    );
    let after = catalog_of(&weed, "fault");
    assert_eq!(after["big:1:amd64:default"], [V1, V2]);
    run_ok(
        &mut s3_cmd(&weed, dir.path(), &["-t", &url, "verify"]),
        TIMEOUT,
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Wrong credentials, a missing bucket, a plain-http endpoint elsewhere than loopback: each is
/// an error naming the bucket and key and the S3 error code, and nothing is written.
#[test]
fn bucket_errors_name_the_bucket_key_and_code() {
    let Some(weed) = Seaweed::start("S3 errors") else {
        return;
    };
    let dir = TempDir::with_prefix("ssb-s3-errors-").unwrap();
    let url = weed.url("errors");
    let fails = |cmd: &mut assert_cmd::Command| {
        let out = run(cmd, TIMEOUT);
        assert!(!out.status.success(), "succeeded: {}", stderr(&out));
        stderr(&out)
    };
    let wrong = fails(
        s3_cmd(&weed, dir.path(), &["-t", &url, "publish"]).env("AWS_SECRET_ACCESS_KEY", "wrong"),
    );
    assert!(
        wrong.contains("s3://images/errors")
            && (wrong.contains("SignatureDoesNotMatch")
                || wrong.contains("InvalidAccessKeyId")
                || wrong.contains("AccessDenied")),
        "{wrong}"
    );
    let missing = fails(&mut s3_cmd(
        &weed,
        dir.path(),
        &["-t", "s3://no-such-bucket/x", "list"],
    ));
    assert!(
        missing.contains("s3://no-such-bucket/x") && missing.contains("NoSuchBucket"),
        "{missing}"
    );
    let remote_http = fails(
        s3_cmd(&weed, dir.path(), &["-t", &url, "list"])
            .env("AWS_ENDPOINT_URL", "http://192.0.2.1:9000"),
    );
    assert!(remote_http.contains("--s3-allow-http"), "{remote_http}");
    let no_keys =
        fails(s3_cmd(&weed, dir.path(), &["-t", &url, "list"]).env_remove("AWS_ACCESS_KEY_ID"));
    assert!(no_keys.contains("AWS_ACCESS_KEY_ID"), "{no_keys}");
    let objects = block_on(weed.bucket("errors").list("")).unwrap();
    assert!(
        objects.is_empty(),
        "written: {:?}",
        objects.iter().map(|o| &o.rel).collect::<Vec<_>>()
    );
}

/// The bucket alone is a simplestreams tree: read anonymously (a public-read bucket, or a CDN in
/// front of one), python-simplestreams finds every item, and the objects carry the content
/// types and cache headers a CDN needs.
#[test]
fn a_public_bucket_is_a_simplestreams_tree() {
    let test = "public bucket";
    let Some(weed) = Seaweed::start_public(test) else {
        return;
    };
    let ca = TestCa::generate();
    let Some(clients) = Clients::detect(&ca, &[Program::SstreamQuery]) else {
        return;
    };
    let dir = TempDir::with_prefix("ssb-s3-public-").unwrap();
    let www = dir.path().join("www");
    let rootfs_file = fake_version(&www, "pub", V1, 64 << 10);
    run_ok(
        s3_cmd(&weed, dir.path(), &["-t"])
            .arg(&www)
            .args(["mirror", "push", &weed.url("public")]),
        TIMEOUT,
    );
    let base = format!("{}/images/public", weed.endpoint());
    let items = clients.sstream_query(&format!("{base}/streams/v1/index.json"));
    let paths: BTreeSet<&str> = items.iter().filter_map(|i| i["path"].as_str()).collect();
    let rootfs = format!("images/pub/1/amd64/default/{V1}/rootfs.squashfs");
    assert!(paths.contains(rootfs.as_str()), "sstream-query: {paths:?}");
    let head = |rel: &str| {
        let r = reqwest::blocking::get(format!("{base}/{rel}")).unwrap();
        assert!(r.status().is_success(), "{rel}: {}", r.status());
        let h = |n: &str| {
            r.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        (h("content-type"), h("cache-control"), r.bytes().unwrap())
    };
    let (ct, cc, index) = head("streams/v1/index.json");
    assert_eq!(
        (ct.as_str(), cc.as_str()),
        ("application/json", "public, max-age=60")
    );
    let index: serde_json::Value = serde_json::from_slice(&index).unwrap();
    let snapshot = index["index"]["images"]["path"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(snapshot.starts_with("streams/v1/images-"), "{snapshot}");
    let immutable = "public, max-age=31536000, immutable";
    let (ct, cc, _) = head(&snapshot);
    assert_eq!((ct.as_str(), cc.as_str()), ("application/json", immutable));
    let (ct, cc, bytes) = head(&rootfs);
    assert_eq!(
        (ct.as_str(), cc.as_str()),
        ("application/octet-stream", immutable)
    );
    assert_eq!(bytes, std::fs::read(&rootfs_file).unwrap());
}

/// Two publishers of the same version with other bytes, started together: one publishes, the
/// other is told the version is taken, and the bucket's files are the winner's (verify).
#[test]
fn one_version_one_set_of_bytes() {
    let Some(weed) = Seaweed::start("S3 same version, other bytes") else {
        return;
    };
    let dir = TempDir::with_prefix("ssb-s3-claim-").unwrap();
    let trees: Vec<PathBuf> = (0..2).map(|i| dir.path().join(format!("t{i}"))).collect();
    for (i, tree) in trees.iter().enumerate() {
        // Same product and version, other rootfs bytes (sizes differ, so the seeds do).
        fake_version(tree, "same", V1, (9 << 20) + i * 4096);
    }
    for round in 0..3 {
        let url = weed.url(&format!("claim{round}"));
        let outs = publish_at_once(&weed, dir.path(), &url, &trees);
        let said: Vec<String> = outs.iter().map(stderr).collect();
        let won = outs.iter().filter(|o| o.status.success()).count();
        assert_eq!(won, 1, "round {round}: {said:?}");
        let lost = &said[outs.iter().position(|o| !o.status.success()).unwrap()];
        assert!(
            lost.contains("is already published with other files")
                && lost.contains(&format!("same/1/amd64/default/{V1}/")),
            "round {round}: {lost}"
        );
        run_ok(
            &mut s3_cmd(&weed, dir.path(), &["-t", &url, "verify"]),
            TIMEOUT,
        );
    }
}
