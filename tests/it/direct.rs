//! Direct-URL import (`lxc image import https://server/direct/<alias>`): the test speaks the
//! protocol as the LXD and Incus daemons do (architectures in, hash and URL out, download,
//! sha256 check) against the real binary, for images that exist unified and images that only
//! exist split (squashfs, root.tar.xz, a VM's qcow2), and checks what the unified tarballs
//! built from split files hold.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::blocking::Client;
use serde_json::Value;
use tempfile::TempDir;

use crate::common::catalog::sha256_of;
use crate::common::clients::{Client as RealClient, Clients, Program};
use crate::common::fixtures::{
    Layout, MetaSpec, fake_squashfs, write_metadata_tarball, write_qcow2, write_rootfs_tar_xz,
    write_squashfs_rootfs, write_unified_tar_gz,
};
use crate::common::server::TestServer;
use crate::common::site::Site as WriteSite;
use crate::common::tls::TestCa;
use simplestreams_builder::format::RootfsKind;

const V1: &str = "20250101_10:00";
const V2: &str = "20250102_10:00";
const LXD_ARCHS: &str = "x86_64, i686";

/// A served layout tree with one product per kind of image.
struct Site {
    _dir: TempDir,
    www: PathBuf,
    ca: TestCa,
    server: TestServer,
    http: Client,
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}

impl Site {
    fn build() -> (TempDir, PathBuf) {
        let dir = TempDir::with_prefix("ssb-direct-").unwrap();
        let www = dir.path().join("www");
        let layout = Layout::new(&www);
        // demo/1: two squashfs versions; the newest must win.
        for (version, serial) in [(V1, "s1"), (V2, "s2")] {
            let v = layout.version_dir("demo", "1", "amd64", "default", version);
            write_metadata_tarball(&v.join("incus.tar.xz"), &MetaSpec::new("demo", "1", serial));
            write_squashfs_rootfs(&v.join("rootfs.squashfs"), &format!("demo-{serial}"));
        }
        // tarred/1: root.tar.xz only.
        let v = layout.version_dir("tarred", "1", "amd64", "default", V1);
        write_metadata_tarball(&v.join("incus.tar.xz"), &MetaSpec::new("tarred", "1", "t1"));
        write_rootfs_tar_xz(&v.join("rootfs.tar.xz"), "tarred");
        // vm/1: a VM only.
        let v = layout.version_dir("vm", "1", "amd64", "default", V1);
        write_metadata_tarball(
            &v.join("incus.tar.xz"),
            &MetaSpec::new("vm", "1", "v1").vm(),
        );
        write_qcow2(&v.join("disk.qcow2"), "vm");
        // arm/1: another architecture.
        let v = layout.version_dir("arm", "1", "arm64", "default", V1);
        let mut spec = MetaSpec::new("arm", "1", "a1");
        spec.arch = "aarch64".into();
        write_metadata_tarball(&v.join("incus.tar.xz"), &spec);
        write_squashfs_rootfs(&v.join("rootfs.squashfs"), "arm");
        crate::common::publish_layout(dir.path(), &www);
        // unified/1: imported from a unified tarball, which is kept and published.
        let unified = dir.path().join("unified.tar.gz");
        write_unified_tar_gz(&unified, &MetaSpec::new("unified", "1", "u1"), "unified");
        crate::common::command::run_ok(
            crate::common::ssb(dir.path())
                .arg("-t")
                .arg(&www)
                .arg("import")
                .arg(&unified),
            Duration::from_secs(60),
        );
        (dir, www)
    }

    fn start(dir: TempDir, www: PathBuf) -> Site {
        let ca = TestCa::generate();
        let mut cmd = crate::common::ssb_command(dir.path());
        cmd.arg("serve")
            .arg("-t")
            .arg(&www)
            .args(["--listen", "127.0.0.1:0", "--index"])
            .arg("--tls-cert")
            .arg(ca.cert_pem())
            .arg("--tls-key")
            .arg(ca.key_pem());
        let server = TestServer::spawn("ssb-serve", cmd);
        let http = https_client(&ca);
        Site {
            _dir: dir,
            www,
            ca,
            server,
            http,
        }
    }

    fn catalog(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.www.join("streams/v1/images.json")).unwrap())
            .unwrap()
    }

    /// Sends a direct request like a daemon; returns (status, headers, body).
    fn ask(
        &self,
        method: reqwest::Method,
        alias: &str,
        headers: &[(&str, &str)],
    ) -> (u16, reqwest::header::HeaderMap, String) {
        ask(&self.http, self.server.url(), method, alias, headers)
    }

    fn import(&self, flavour: &str, alias: &str) -> (String, String, Vec<u8>) {
        daemon_import(&self.http, self.server.url(), flavour, alias)
    }

    fn version_dir(&self, os: &str, arch: &str, version: &str) -> PathBuf {
        self.www
            .join("images")
            .join(os)
            .join("1")
            .join(arch)
            .join("default")
            .join(version)
    }

    fn wait_for(&self, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let catalog = self.catalog();
            if ok(&catalog) {
                return catalog;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "timed out waiting for {what}: {catalog}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A client that trusts the test CA.
fn https_client(ca: &TestCa) -> Client {
    Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(ca.ca_pem()).unwrap()).unwrap(),
        )
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// Sends a direct request to the server at `base` like a daemon; returns (status, headers,
/// body).
fn ask(
    http: &Client,
    base: &str,
    method: reqwest::Method,
    alias: &str,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut req = http
        .request(method, format!("{base}/direct/{alias}"))
        .header("User-Agent", "LXD 5.0.2");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.text().unwrap())
}

/// The daemon's whole exchange: HEAD with the `<flavour>-Server-*` headers, read the two
/// `<flavour>-Image-*` headers, GET the URL and check its sha256. Returns (hash, URL, file).
fn daemon_import(
    http: &Client,
    base: &str,
    flavour: &str,
    alias: &str,
) -> (String, String, Vec<u8>) {
    let archs = format!("{flavour}-Server-Architectures");
    let version = format!("{flavour}-Server-Version");
    let (status, headers, body) = ask(
        http,
        base,
        reqwest::Method::HEAD,
        alias,
        &[(&archs, LXD_ARCHS), (&version, "5.0.2")],
    );
    assert_eq!(status, 200, "HEAD /direct/{alias}: {body}");
    let get = |name: &str| {
        headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} in the answer for {alias}: {headers:?}"))
            .to_str()
            .unwrap()
            .to_owned()
    };
    let hash = get(&format!("{flavour}-Image-Hash"));
    let url = get(&format!("{flavour}-Image-URL"));
    let other = if flavour == "LXD" { "Incus" } else { "LXD" };
    assert!(
        headers.get(format!("{other}-Image-Hash")).is_none(),
        "{flavour} request got {other} headers too"
    );
    assert!(url.starts_with(base), "{url} is not on {base}");
    let resp = http.get(&url).send().unwrap();
    assert_eq!(resp.status().as_u16(), 200, "GET {url}");
    let file = resp.bytes().unwrap().to_vec();
    assert_eq!(
        sha256_hex(&file),
        hash,
        "{url} does not hash to {flavour}-Image-Hash"
    );
    (hash, url, file)
}

/// (path → (type, mode, uid, gid, content or link target)) of a unified tarball, rootfs entries
/// and metadata entries alike.
type Listing = BTreeMap<String, (char, u32, u64, u64, Vec<u8>)>;

fn list_tarball(reader: impl Read) -> Listing {
    let mut archive = tar::Archive::new(reader);
    let mut out = Listing::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let h = entry.header().clone();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let path = path
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_owned();
        let (kind, data) = match h.entry_type() {
            tar::EntryType::Directory => ('d', Vec::new()),
            kind @ (tar::EntryType::Symlink | tar::EntryType::Link) => (
                if kind == tar::EntryType::Symlink {
                    'l'
                } else {
                    'h'
                },
                entry.link_name_bytes().unwrap().to_vec(),
            ),
            tar::EntryType::Fifo => ('p', Vec::new()),
            tar::EntryType::Char => (
                'c',
                format!(
                    "{}:{}",
                    h.device_major().unwrap().unwrap(),
                    h.device_minor().unwrap().unwrap()
                )
                .into_bytes(),
            ),
            _ => {
                let mut data = Vec::new();
                entry.read_to_end(&mut data).unwrap();
                ('-', data)
            }
        };
        out.insert(
            path,
            (
                kind,
                h.mode().unwrap() & 0o7777,
                h.uid().unwrap(),
                h.gid().unwrap(),
                data,
            ),
        );
    }
    out
}

/// Path → xattrs (from `SCHILY.xattr.*` pax records) of the entries that have any.
fn xattrs_of(reader: impl Read) -> BTreeMap<String, BTreeMap<String, Vec<u8>>> {
    let mut archive = tar::Archive::new(reader);
    let mut out: BTreeMap<String, BTreeMap<String, Vec<u8>>> = BTreeMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let Some(exts) = entry.pax_extensions().unwrap() else {
            continue;
        };
        for ext in exts {
            let ext = ext.unwrap();
            if let Some(name) = ext.key().unwrap().strip_prefix("SCHILY.xattr.") {
                out.entry(path.clone())
                    .or_default()
                    .insert(name.to_owned(), ext.value_bytes().to_vec());
            }
        }
    }
    out
}

fn list_gz(bytes: &[u8]) -> Listing {
    list_tarball(flate2::read::GzDecoder::new(bytes))
}

fn list_xz(path: &Path) -> Listing {
    list_tarball(liblzma::read::XzDecoder::new(
        std::fs::File::open(path).unwrap(),
    ))
}

/// The metadata tarball's entries and, under `rootfs/`, the root tarball's.
fn expected_unified(meta: &Path, root: &Path) -> Listing {
    let mut want = list_xz(meta);
    for (path, v) in list_xz(root) {
        let path = if path.is_empty() || path == "." {
            "rootfs".to_owned()
        } else {
            format!("rootfs/{path}")
        };
        want.insert(path, v);
    }
    want
}

fn needs_tools() -> bool {
    let have = |tool: &str| Command::new(tool).arg("--help").output().is_ok();
    let ok = have("mksquashfs") && have("qemu-img") && have("qemu-io");
    if !ok {
        assert!(
            std::env::var_os(crate::common::clients::REQUIRE_ENV).is_none(),
            "mksquashfs, qemu-img and qemu-io are required ({} is set)",
            crate::common::clients::REQUIRE_ENV
        );
        eprintln!("SKIPPED: direct-URL tests need mksquashfs, qemu-img and qemu-io");
    }
    ok
}

#[test]
fn direct_url_import_as_lxd_and_incus_do() {
    if !needs_tools() {
        return;
    }
    let (dir, www) = Site::build();
    let site = Site::start(dir, www);
    let before = site.catalog();
    let fingerprint_of = |catalog: &Value, product: &str, version: &str, key: &str| {
        catalog["products"][product]["versions"][version]["items"]
            .as_object()
            .unwrap()
            .values()
            .find_map(|i| i[key].as_str().map(str::to_owned))
            .unwrap_or_else(|| panic!("{product} {version} has no {key}"))
    };

    // Split only (squashfs): the newest version, built on the first request.
    let demo_dir = site.version_dir("demo", "amd64", V2);
    let (hash, url, file) = site.import("LXD", "demo/1");
    let fp = fingerprint_of(
        &before,
        "demo:1:amd64:default",
        V2,
        "combined_squashfs_sha256",
    );
    assert!(
        url.ends_with(&format!(
            "/images/demo/1/amd64/default/{V2}/.ssb-unified.{fp}.{hash}.tar.gz"
        )),
        "{url}"
    );
    let got = list_gz(&file);
    let squashfs_listing = {
        // What the squashfs holds, as `unsquashfs` lists it, against the rootfs/ entries.
        let out = Command::new("unsquashfs")
            .arg("-lln")
            .arg(demo_dir.join("rootfs.squashfs"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for path in ["etc/os-release", "etc/hostname", "etc/ssb-seed"] {
        assert!(squashfs_listing.contains(path), "{squashfs_listing}");
        assert!(
            got.contains_key(&format!("rootfs/{path}")),
            "{path} missing: {:?}",
            got.keys()
        );
    }
    assert_eq!(got["rootfs/etc/hostname"].4, b"demo-s2\n");
    assert_eq!(got["rootfs"].0, 'd');
    // The metadata tarball's entries, unchanged.
    for (path, v) in list_xz(&demo_dir.join("incus.tar.xz")) {
        assert_eq!(got.get(&path), Some(&v), "metadata entry {path}");
    }
    let cache = demo_dir.join(format!(".ssb-unified.{fp}.{hash}.tar.gz"));
    let built_at = std::fs::metadata(&cache).unwrap().mtime_nsec();

    // Incus headers, and GET instead of HEAD: the same tarball, not built again.
    let (status, headers, body) = site.ask(
        reqwest::Method::GET,
        "demo/1",
        &[
            ("Incus-Server-Architectures", LXD_ARCHS),
            ("Incus-Server-Version", "6.0.4"),
        ],
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["Incus-Image-Hash"], hash.as_str());
    assert!(body.contains(&hash), "{body}");
    let (incus_hash, _, _) = site.import("Incus", "demo/1");
    assert_eq!(incus_hash, hash);
    assert_eq!(std::fs::metadata(&cache).unwrap().mtime_nsec(), built_at);

    // The built tarball is published as the version's unified image (a new, unique
    // fingerprint), and from then on handed out under that path.
    let catalog = site.wait_for("the built unified tarball in the catalog", |c| {
        let items = &c["products"]["demo:1:amd64:default"]["versions"][V2]["items"];
        ["incus_combined.tar.gz", "lxd_combined.tar.gz"]
            .iter()
            .all(|ftype| {
                items.as_object().is_some_and(|m| {
                    m.values()
                        .any(|i| i["ftype"] == *ftype && i["sha256"] == hash.as_str())
                })
            })
    });
    assert_eq!(
        std::fs::metadata(demo_dir.join("incus_combined.tar.gz"))
            .unwrap()
            .ino(),
        std::fs::metadata(&cache).unwrap().ino(),
        "published as a hard link to the cache, not a copy"
    );
    let (again, url_again, _) = site.import("LXD", "demo/1");
    assert_eq!(again, hash);
    assert!(
        url_again.ends_with(&format!("{V2}/incus_combined.tar.gz")),
        "{url_again}"
    );
    // The older version was not touched.
    assert!(
        std::fs::read_dir(site.version_dir("demo", "amd64", V1))
            .unwrap()
            .all(|e| !e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".ssb-unified"))
    );

    // Split only (root.tar.xz): rootfs/ is the root tarball's content, owners and modes kept.
    let tarred = site.version_dir("tarred", "amd64", V1);
    let (tarred_hash, _, file) = site.import("LXD", "tarred/1");
    assert_eq!(
        list_gz(&file),
        expected_unified(&tarred.join("incus.tar.xz"), &tarred.join("rootfs.tar.xz"))
    );

    // A VM: rootfs.img is the qcow2, byte for byte; never published as a unified item (LXD
    // and Incus 6 would take it for a container).
    let vm = site.version_dir("vm", "amd64", V1);
    let (_, _, file) = site.import("Incus", "vm/1");
    let got = list_gz(&file);
    assert_eq!(
        got["rootfs.img"].4,
        std::fs::read(vm.join("disk.qcow2")).unwrap()
    );
    assert!(got.contains_key("metadata.yaml"));
    assert!(!vm.join("incus_combined.tar.gz").exists());

    // Exists unified: handed out as published.
    let (unified_hash, unified_url, _) = site.import("LXD", "unified/1");
    let unified_item = catalog["products"]["unified:1:amd64:default"]["versions"][V1]["items"]
        .as_object()
        .unwrap()
        .values()
        .find(|i| i["ftype"] == "lxd_combined.tar.gz")
        .cloned()
        .expect("the imported unified tarball is published");
    assert_eq!(unified_item["sha256"], unified_hash.as_str());
    assert!(
        unified_url.ends_with(unified_item["path"].as_str().unwrap()),
        "{unified_url}"
    );

    // The alias with an architecture, as clients register it.
    let (with_arch, _, _) = site.import("LXD", "demo/1/amd64");
    assert_eq!(with_arch, hash);

    // Architecture mismatch, unknown alias, no headers.
    let (status, _, body) = site.ask(
        reqwest::Method::HEAD,
        "demo/1",
        &[("LXD-Server-Architectures", "aarch64")],
    );
    assert_eq!(status, 404);
    let (status, _, body_get) = site.ask(
        reqwest::Method::GET,
        "demo/1",
        &[("LXD-Server-Architectures", "aarch64")],
    );
    assert_eq!(status, 404);
    assert!(body.is_empty(), "HEAD has no body");
    assert!(
        body_get.contains("aarch64") && body_get.contains("amd64"),
        "{body_get}"
    );
    let (status, _, _) = site.ask(
        reqwest::Method::HEAD,
        "arm/1",
        &[("LXD-Server-Architectures", "aarch64, armv7l")],
    );
    assert_eq!(status, 200, "an arm64 daemon gets the arm64 image");
    let (status, _, body) = site.ask(
        reqwest::Method::GET,
        "nosuch/1",
        &[("LXD-Server-Architectures", LXD_ARCHS)],
    );
    assert_eq!(status, 404);
    assert!(body.contains("nosuch/1"), "{body}");
    let (status, _, body) = site.ask(reqwest::Method::GET, "demo/1", &[]);
    assert_eq!(status, 400);
    assert!(body.contains("LXD-Server-Architectures"), "{body}");

    // Real clients still read the catalog with the published unified image, and export it
    // under its own fingerprint.
    if let Some(clients) = Clients::detect(&site.ca, &[Program::Incus, Program::Lxc]) {
        for client in RealClient::BOTH {
            clients.remote_add(client, "ssb", site.server.url());
            let out = tempfile::tempdir().unwrap();
            let files = clients.image_export(
                client,
                "ssb",
                &hash,
                crate::common::catalog::ImageType::Container,
                out.path(),
            );
            let got = files.values().next().expect("one exported file");
            assert_eq!(
                sha256_of(&[got]),
                hash,
                "{client:?} export of the unified image"
            );
        }
    }

    // After a restart: the same hashes, nothing rebuilt.
    let tarred_cache: Vec<_> = std::fs::read_dir(&tarred)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".ssb-unified."))
        .collect();
    assert_eq!(tarred_cache.len(), 1, "{tarred_cache:?}");
    let tarred_mtime = std::fs::metadata(&tarred_cache[0]).unwrap().mtime_nsec();
    let Site { _dir, www, .. } = site;
    let site = Site::start(_dir, www);
    assert_eq!(site.import("LXD", "tarred/1").0, tarred_hash);
    assert_eq!(site.import("Incus", "demo/1").0, hash);
    assert_eq!(
        std::fs::metadata(&tarred_cache[0]).unwrap().mtime_nsec(),
        tarred_mtime
    );
}

/// A squashfs with what real rootfs have: owners, odd modes, symlinks, hard links, a fifo and a
/// device node, turned into a unified tarball whose rootfs/ matches the source folder; built
/// twice, byte-identical.
#[test]
fn unified_tarball_from_squashfs_keeps_what_the_rootfs_holds() {
    if !needs_tools() {
        return;
    }
    let root_user = rustix::process::geteuid().is_root();
    let tmp = TempDir::new().unwrap();
    let src = tmp.path().join("rootfs");
    std::fs::create_dir_all(src.join("etc/skel")).unwrap();
    std::fs::create_dir_all(src.join("usr/bin")).unwrap();
    std::fs::create_dir_all(src.join("dev")).unwrap();
    std::fs::create_dir_all(src.join("tmp")).unwrap();
    std::fs::write(src.join("etc/hostname"), "rich\n").unwrap();
    std::fs::write(src.join("usr/bin/tool"), vec![7u8; 300_000]).unwrap();
    std::fs::hard_link(src.join("usr/bin/tool"), src.join("usr/bin/tool-alias")).unwrap();
    std::os::unix::fs::symlink("../usr/bin/tool", src.join("etc/tool-link")).unwrap();
    std::fs::set_permissions(
        src.join("usr/bin/tool"),
        std::fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    std::fs::set_permissions(src.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::write(src.join("etc/skel/.profile"), "# profile\n").unwrap();
    assert!(
        Command::new("mkfifo")
            .arg(src.join("dev/initctl"))
            .status()
            .unwrap()
            .success()
    );
    if root_user {
        assert!(
            Command::new("mknod")
                .arg(src.join("dev/null"))
                .args(["c", "1", "3"])
                .status()
                .unwrap()
                .success()
        );
        std::os::unix::fs::chown(src.join("etc/skel"), Some(1000), Some(1001)).unwrap();
        std::os::unix::fs::chown(src.join("etc/skel/.profile"), Some(1000), Some(1001)).unwrap();
    }
    // Extended attributes: user ones anyone may set (on a file and a folder), and as root a
    // file capability (cap_net_raw+ep, as Debian gives ping) and trusted ones on a symlink, a
    // fifo and a device node.
    let set_xattr = |path: &Path, name: &str, hex_value: &str| {
        let ok = Command::new("python3")
            .args([
                "-c",
                "import os, sys; os.setxattr(sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3]), follow_symlinks=False)",
            ])
            .arg(path)
            .args([name, hex_value])
            .status()
            .unwrap()
            .success();
        assert!(ok, "setxattr {name} on {}", path.display());
    };
    let mut want_xattrs: BTreeMap<String, BTreeMap<String, Vec<u8>>> = BTreeMap::new();
    set_xattr(&src.join("etc/hostname"), "user.ssb", "68656c6c6f");
    want_xattrs
        .entry("rootfs/etc/hostname".into())
        .or_default()
        .insert("user.ssb".into(), b"hello".to_vec());
    set_xattr(&src.join("etc/skel"), "user.ssb-dir", "736b656c");
    want_xattrs
        .entry("rootfs/etc/skel".into())
        .or_default()
        .insert("user.ssb-dir".into(), b"skel".to_vec());
    if root_user {
        let cap = "0100000200200000000000000000000000000000";
        set_xattr(&src.join("usr/bin/tool"), "security.capability", cap);
        let holder = "rootfs/usr/bin/tool";
        want_xattrs
            .entry(holder.into())
            .or_default()
            .insert("security.capability".into(), hex::decode(cap).unwrap());
        for special in ["etc/tool-link", "dev/initctl", "dev/null"] {
            set_xattr(&src.join(special), "trusted.ssb", "7370656369616c");
            want_xattrs
                .entry(format!("rootfs/{special}"))
                .or_default()
                .insert("trusted.ssb".into(), b"special".to_vec());
        }
    }
    let squashfs = tmp.path().join("rootfs.squashfs");
    assert!(
        Command::new("mksquashfs")
            .arg(&src)
            .arg(&squashfs)
            .args(["-noappend", "-quiet", "-comp", "xz"])
            .status()
            .unwrap()
            .success()
    );
    let meta = write_metadata_tarball(
        &tmp.path().join("incus.tar.xz"),
        &MetaSpec::new("rich", "1", "r"),
    );

    let build = || {
        let mut out = Vec::new();
        simplestreams_builder::image::unified::write_unified(
            &meta,
            &squashfs,
            RootfsKind::Squashfs,
            &mut out,
        )
        .unwrap();
        out
    };
    let first = build();
    assert_eq!(first, build(), "the same inputs give the same bytes");
    let got = list_gz(&first);

    // Walk the source folder: what rootfs/ must hold.
    let mut want = Listing::new();
    let mut seen_inodes: BTreeMap<u64, String> = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(path) = stack.pop() {
        let m = std::fs::symlink_metadata(&path).unwrap();
        let rel = path
            .strip_prefix(&src)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let name = if rel.is_empty() {
            "rootfs".to_owned()
        } else {
            format!("rootfs/{rel}")
        };
        let ft = m.file_type();
        let (kind, data) = if ft.is_dir() {
            for e in std::fs::read_dir(&path).unwrap() {
                stack.push(e.unwrap().path());
            }
            ('d', Vec::new())
        } else if ft.is_symlink() {
            (
                'l',
                std::fs::read_link(&path)
                    .unwrap()
                    .to_string_lossy()
                    .as_bytes()
                    .to_vec(),
            )
        } else if ft.is_file() {
            match seen_inodes.get(&m.ino()) {
                Some(first) => ('h', first.clone().into_bytes()),
                None => {
                    seen_inodes.insert(m.ino(), name.clone());
                    ('-', std::fs::read(&path).unwrap())
                }
            }
        } else if std::os::unix::fs::FileTypeExt::is_fifo(&ft) {
            ('p', Vec::new())
        } else {
            let rdev = m.rdev();
            let major = ((rdev >> 8) & 0xfff) as u32;
            let minor = ((rdev & 0xff) | ((rdev >> 12) & 0xfff00)) as u32;
            ('c', format!("{major}:{minor}").into_bytes())
        };
        want.insert(
            name,
            (
                kind,
                m.mode() & 0o7777,
                u64::from(m.uid()),
                u64::from(m.gid()),
                data,
            ),
        );
    }
    let rootfs: Listing = got
        .iter()
        .filter(|(k, _)| k.as_str() == "rootfs" || k.starts_with("rootfs/"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // Hard links: whichever name comes first carries the data; compare the pair either way.
    let normalise = |l: &Listing| -> Listing {
        let mut l = l.clone();
        let names = ["rootfs/usr/bin/tool", "rootfs/usr/bin/tool-alias"];
        let data = names
            .iter()
            .find_map(|n| (l[*n].0 == '-').then(|| l[*n].clone()))
            .unwrap();
        for n in names {
            l.insert(n.to_owned(), data.clone());
        }
        l
    };
    assert_eq!(normalise(&rootfs), normalise(&want));
    let links = ["rootfs/usr/bin/tool", "rootfs/usr/bin/tool-alias"]
        .iter()
        .filter(|n| rootfs[**n].0 == 'h')
        .count();
    assert_eq!(links, 1, "one name of the hard-linked pair is a link");
    // The xattrs, on whichever name of the hard-linked pair carries the data.
    let mut got_xattrs = xattrs_of(flate2::read::GzDecoder::new(first.as_slice()));
    if let Some(x) = got_xattrs.remove("rootfs/usr/bin/tool-alias") {
        got_xattrs.insert("rootfs/usr/bin/tool".into(), x);
    }
    assert_eq!(got_xattrs, want_xattrs);
    for (path, v) in list_xz(&meta) {
        assert_eq!(got.get(&path), Some(&v), "metadata entry {path}");
    }
}

/// The items of one version in a catalog, or none.
fn items_of<'a>(catalog: &'a Value, id: &str, version: &str) -> Vec<&'a Value> {
    catalog["products"][id]["versions"][version]["items"]
        .as_object()
        .map(|m| m.values().collect())
        .unwrap_or_default()
}

/// Files of a version folder that come from a direct build.
fn built_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".ssb-unified") || n == "incus_combined.tar.gz")
        .collect()
}

/// A unified tarball the server built and published from split files goes when those files are
/// replaced (an upload with overwrites on) or deleted: it holds the old image. The next direct
/// request builds one from the new files.
#[test]
fn changed_split_files_retire_the_built_unified_tarball() {
    if !needs_tools() {
        return;
    }
    let site = WriteSite::start(&[], &[("ALLOW_OVERWRITES", "1"), ("ALLOW_DELETES", "1")]);
    let http = https_client(&site.ca);
    let scratch = site.dir.path().join("scratch");
    let meta = write_metadata_tarball(
        &scratch.join("meta.tar.xz"),
        &MetaSpec::new("swap", "1", "s1"),
    );
    let first = write_squashfs_rootfs(&scratch.join("first.squashfs"), "swap-first");
    let second = write_squashfs_rootfs(&scratch.join("second.squashfs"), "swap-second");
    let (id, base) = ("swap:1:amd64:default", format!("swap/1/amd64/default/{V1}"));
    let vdir = site.www.join("images").join(&base);
    assert_eq!(site.post(&meta, &format!("{base}/incus.tar.xz")).0, 201);
    assert_eq!(site.post(&first, &format!("{base}/rootfs.squashfs")).0, 201);
    let fp1 = sha256_of(&[&meta, &first]);
    let has =
        |c: &Value, key: &str, value: &str| items_of(c, id, V1).iter().any(|i| i[key] == value);
    site.wait_for(
        |c| has(c, "combined_squashfs_sha256", &fp1),
        "the first image",
    );

    let (built1, _, file) = daemon_import(&http, site.url(), "LXD", "swap/1");
    assert_eq!(list_gz(&file)["rootfs/etc/hostname"].4, b"swap-first\n");
    site.wait_for(|c| has(c, "sha256", &built1), "the built tarball published");

    // The rootfs is replaced: the old build leaves the catalog and the folder.
    assert_eq!(
        site.post(&second, &format!("{base}/rootfs.squashfs")).0,
        201
    );
    let fp2 = sha256_of(&[&meta, &second]);
    site.wait_for(
        |c| has(c, "combined_squashfs_sha256", &fp2) && !has(c, "sha256", &built1),
        "the new image without the old build",
    );
    assert_eq!(built_files(&vdir), Vec::<String>::new());

    // Built again from the new files, and published again.
    let (built2, _, file) = daemon_import(&http, site.url(), "Incus", "swap/1");
    assert_ne!(built2, built1);
    assert_eq!(list_gz(&file)["rootfs/etc/hostname"].4, b"swap-second\n");
    site.wait_for(|c| has(c, "sha256", &built2), "the new build published");

    // The rootfs is deleted: the build of it does not keep the image alive.
    let (code, body) = site.delete(&format!("images/{base}/rootfs.squashfs"));
    assert_eq!(code, 200, "{body}");
    site.wait_for(
        |c| !has(c, "sha256", &built2) && !has(c, "combined_squashfs_sha256", &fp2),
        "the version without its image",
    );
    assert_eq!(built_files(&vdir), Vec::<String>::new());
}

/// A split image that cannot be built (a corrupt squashfs) gets a 500 whose body names the
/// alias but no server path; the details go to the server's log.
#[test]
fn a_failed_build_is_a_500_with_the_details_in_the_log() {
    let site = WriteSite::start(&[], &[]);
    let http = https_client(&site.ca);
    let scratch = site.dir.path().join("scratch");
    let meta = write_metadata_tarball(
        &scratch.join("meta.tar.xz"),
        &MetaSpec::new("bad", "1", "b1"),
    );
    let broken = scratch.join("broken.squashfs");
    // A valid superblock over garbage: it passes the upload's header check, then fails the
    // build of the unified tarball.
    std::fs::write(&broken, fake_squashfs(&[0x5a; 8096])).unwrap();
    let base = format!("bad/1/amd64/default/{V1}");
    assert_eq!(site.post(&meta, &format!("{base}/incus.tar.xz")).0, 201);
    assert_eq!(
        site.post(&broken, &format!("{base}/rootfs.squashfs")).0,
        201
    );
    let fp = sha256_of(&[&meta, &broken]);
    site.wait_for(
        |c| {
            items_of(c, "bad:1:amd64:default", V1)
                .iter()
                .any(|i| i["combined_squashfs_sha256"] == fp.as_str())
        },
        "the broken image in the catalog",
    );
    let (status, _, body) = ask(
        &http,
        site.url(),
        reqwest::Method::GET,
        "bad/1",
        &[("LXD-Server-Architectures", LXD_ARCHS)],
    );
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("bad/1") && body.contains("log"), "{body}");
    let root = site.www.display().to_string();
    assert!(
        !body.contains(&root),
        "the body shows a server path: {body}"
    );
    site.server
        .wait_said(&["direct request for `bad/1`", "unified tarball"]);
    let vdir = site.www.join("images").join(&base);
    assert_eq!(
        built_files(&vdir),
        Vec::<String>::new(),
        "no partial build left"
    );
}
