//! Classic LXC and signed catalogs: `lxc-create -t download` (LXC 5.0.2) creates and starts a
//! container from an LXC pair uploaded to our `serve`, beside an Incus image of the same
//! version; python-simplestreams verifies a signed tree with `--keyring` and refuses one altered
//! after signing; `gpgv` verifies every detached signature; a wrong or locked key writes nothing.

use std::path::{Path, PathBuf};

use tempfile::TempDir;

use crate::common::bootable::{busybox_rootfs, have_busybox, pack_root_tar_xz};
use crate::common::catalog::sha256_of;
use crate::common::clients::{Client, Clients, Program};
use crate::common::command::run_ok;
use crate::common::fixtures::{
    MetaSpec, write_metadata_tarball, write_squashfs_rootfs, write_text,
};
use crate::common::server::TestServer;
use crate::common::site::{INDEX_DEADLINE, Site};
use crate::common::tls::TestCa;
use crate::common::{is_root, ssb};

const V1: &str = "20240101_00:00";
const PASSPHRASE: &str = "correct horse battery staple";

/// LXC's metadata tarball as `distrobuilder pack-lxc` writes it: `config` (with the template's
/// placeholder), `create-message`, `excludes-user`.
fn write_lxc_meta(path: &Path) -> PathBuf {
    let scratch = TempDir::with_prefix("ssb-lxc-meta-").unwrap();
    let dir = scratch.path();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    write_text(
        &dir.join("config"),
        "lxc.include = LXC_TEMPLATE_CONFIG/common.conf\nlxc.arch = x86_64\n",
    );
    write_text(
        &dir.join("create-message"),
        "Made by simplestreams-builder's tests.\n",
    );
    write_text(&dir.join("excludes-user"), "");
    run_ok(
        assert_cmd::Command::new("tar")
            .arg("-C")
            .arg(dir)
            .arg("-cJf")
            .arg(path)
            .args(["config", "create-message", "excludes-user"]),
        std::time::Duration::from_secs(60),
    );
    path.to_owned()
}

fn lxc(tool: &str, lxcpath: &Path, args: &[&str]) -> std::process::Output {
    let out = std::process::Command::new(tool)
        .arg("-P")
        .arg(lxcpath)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {tool}: {e}"));
    assert!(
        out.status.success(),
        "{tool} {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Stops and destroys the containers of an LXC path, whatever the test did.
struct Containers<'a>(&'a Path, Vec<&'a str>);

impl Drop for Containers<'_> {
    fn drop(&mut self) {
        for name in &self.1 {
            for (tool, extra) in [("lxc-stop", &["-k"][..]), ("lxc-destroy", &[][..])] {
                let _ = std::process::Command::new(tool)
                    .arg("-P")
                    .arg(self.0)
                    .args(["-n", name])
                    .args(extra)
                    .output();
            }
        }
    }
}

#[test]
fn lxc_create_downloads_and_starts_an_uploaded_lxc_pair() {
    let needed = [
        Program::LxcCreate,
        Program::Incus,
        Program::Lxc,
        Program::Gpgv,
    ];
    if Clients::detect(&TestCa::generate(), &needed).is_none() {
        return;
    }
    if !is_root() || !have_busybox() {
        let msg = "SKIPPED lxc_create_downloads_and_starts_an_uploaded_lxc_pair: lxc-create needs root and busybox-static";
        assert!(
            std::env::var(crate::common::clients::REQUIRE_ENV).as_deref() != Ok("1"),
            "{msg}"
        );
        eprintln!("{msg}");
        return;
    }
    // The server signs at every re-index with the key it was started with.
    let keys = TempDir::with_prefix("ssb-lxc-keys-").unwrap();
    ssb(keys.path())
        .args(["keygen", "--out", "."])
        .assert()
        .success();
    let key = keys.path().join("signing-key.asc");
    let site = Site::start(&["--sign-key", key.to_str().unwrap()], &[]);
    let clients = Clients::detect(&site.ca, &needed).unwrap();
    let scratch = site.dir.path().join("scratch");
    let rootfs = busybox_rootfs(&scratch, "LXC from simplestreams-builder");
    let root_tar = pack_root_tar_xz(&rootfs, &scratch.join("rootfs.tar.xz"));
    let lxc_meta = write_lxc_meta(&scratch.join("meta.tar.xz"));
    let incus_meta = write_metadata_tarball(
        &scratch.join("incus.tar.xz"),
        &MetaSpec::new("ssbboot", "1", V1),
    );
    let base = format!("images/ssbboot/1/amd64/default/{V1}");

    // An LXD metadata tarball under LXC's name is refused at the door, by its content.
    let (code, body) = site.put(&incus_meta, &format!("{base}/meta.tar.xz"));
    assert_eq!(code, 400, "{body}");
    assert!(body.to_string().contains("metadata.yaml"), "{body}");

    for (file, name) in [
        (&incus_meta, "incus.tar.xz"),
        (&root_tar, "rootfs.tar.xz"),
        (&lxc_meta, "meta.tar.xz"),
    ] {
        let (code, body) = site.put(file, &format!("{base}/{name}"));
        assert_eq!(code, 201, "{name}: {body}");
    }
    let (catalog, _) = site.wait_for(
        |c| {
            c["products"]["ssbboot:1:amd64:default"]["versions"][V1]["items"]
                .get("lxc.tar.xz")
                .is_some()
        },
        "the uploaded LXC pair in the catalog",
    );
    let items = &catalog["products"]["ssbboot:1:amd64:default"]["versions"][V1]["items"];
    assert_eq!(items["lxc.tar.xz"]["path"], format!("{base}/meta.tar.xz"));
    assert_eq!(items["lxc.tar.xz"]["sha256"], sha256_of(&[&lxc_meta]));
    let keyring = keys.path().join("signing-key.pub.gpg");
    let version = site.www.join(&base);
    // LXC's index and its signature are written just after the catalog.
    let index_asc = site.www.join("meta/1.0/index-system.asc");
    let start = std::time::Instant::now();
    while !index_asc.is_file() && start.elapsed() < INDEX_DEADLINE {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    for file in [
        version.join("meta.tar.xz"),
        version.join("rootfs.tar.xz"),
        site.www.join("meta/1.0/index-system"),
    ] {
        clients.gpgv(&keyring, &file);
    }
    assert!(site.www.join("streams/v1/index.sjson").is_file());

    // The index, as the template asks for it: `https://HOST/` + `/meta/1.0/index-system`.
    let (code, index) = site.curl(&[
        "--path-as-is",
        &format!("{}//meta/1.0/index-system", site.url()),
    ]);
    assert_eq!(code, 200, "{index}");
    assert_eq!(index, format!("ssbboot;1;amd64;default;{V1};/{base}/\n"));
    // Unprivileged containers (in a user namespace) read `index-user`: the same images.
    let (code, user_index) = site.curl(&[
        "--path-as-is",
        &format!("{}//meta/1.0/index-user", site.url()),
    ]);
    assert_eq!((code, user_index), (200, index.clone()));
    let (code, _) = site.curl(&["--path-as-is", &format!("{}//.ssb/tls/../x", site.url())]);
    assert_eq!(code, 404, "collapsing slashes must not open hidden paths");

    // The real template creates the container, and it starts.
    let lxcpath = site.dir.path().join("lxc");
    std::fs::create_dir_all(&lxcpath).unwrap();
    let _cleanup = Containers(&lxcpath, vec!["c1"]);
    clients.lxc_download(site.url(), &lxcpath, "c1", ["ssbboot", "1", "amd64"]);
    let os_release = std::fs::read_to_string(lxcpath.join("c1/rootfs/etc/os-release")).unwrap();
    assert!(
        os_release.contains("LXC from simplestreams-builder"),
        "{os_release}"
    );
    lxc("lxc-start", &lxcpath, &["-n", "c1", "-d"]);
    let mut said = String::new();
    for _ in 0..50 {
        let out = std::process::Command::new("lxc-attach")
            .arg("-P")
            .arg(&lxcpath)
            .args(["-n", "c1", "--", "cat", "/etc/os-release"])
            .output()
            .unwrap();
        said = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(
        said.contains("LXC from simplestreams-builder"),
        "the started container says: {said}"
    );

    // The same version's Incus image (its metadata with the same root tarball) is still what
    // the simplestreams clients see; LXC's metadata is not an image to them.
    let fp = sha256_of(&[&incus_meta, &root_tar]);
    for client in Client::BOTH {
        clients.remote_add(client, "mixed", site.url());
        let listed = clients.image_list(client, "mixed");
        let fps: Vec<&str> = listed.iter().map(|i| i.fingerprint.as_str()).collect();
        assert_eq!(fps, [fp.as_str()], "{client:?}: {listed:#?}");
    }

    // `list` shows both, `verify` is clean.
    let out = run_ok(
        ssb(site.dir.path()).arg("-t").arg(&site.www).arg("list"),
        INDEX_DEADLINE,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.contains("ssbboot:1:amd64:default") && l.contains(" lxc ")),
        "{text}"
    );
    assert!(text.contains(&fp[..12]), "{text}");
    run_ok(
        ssb(site.dir.path()).arg("-t").arg(&site.www).arg("verify"),
        INDEX_DEADLINE,
    );
}

/// Two products: an Incus image, and an LXC-only version.
fn signed_fixture(dir: &Path) -> PathBuf {
    let www = dir.join("www");
    let v = www.join(format!("images/alpha/1/amd64/default/{V1}"));
    write_metadata_tarball(&v.join("incus.tar.xz"), &MetaSpec::new("alpha", "1", V1));
    write_squashfs_rootfs(&v.join("rootfs.squashfs"), "alpha");
    let l = www.join(format!("images/beta/2/amd64/default/{V1}"));
    let rootfs = dir.join("beta-rootfs");
    write_text(&rootfs.join("etc/os-release"), "ID=beta\n");
    std::fs::create_dir_all(&l).unwrap();
    run_ok(
        assert_cmd::Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cJf")
            .arg(l.join("rootfs.tar.xz"))
            .arg("."),
        std::time::Duration::from_secs(60),
    );
    write_lxc_meta(&l.join("meta.tar.xz"));
    www
}

fn publish(
    dir: &Path,
    www: &Path,
    key: Option<&Path>,
    passphrase: Option<&str>,
) -> assert_cmd::assert::Assert {
    let mut cmd = ssb(dir);
    cmd.arg("-t").arg(www).arg("publish");
    if let Some(key) = key {
        cmd.arg("--sign-key").arg(key);
    }
    match passphrase {
        Some(p) => cmd.env("SSB_SIGN_KEY_PASSPHRASE", p),
        None => cmd.env_remove("SSB_SIGN_KEY_PASSPHRASE"),
    };
    cmd.assert()
}

#[test]
fn a_signed_tree_verifies_with_python_simplestreams_and_gpgv() {
    let ca = TestCa::generate();
    let Some(clients) = Clients::detect(&ca, &[Program::SstreamQuery, Program::Gpgv]) else {
        return;
    };
    let dir = TempDir::with_prefix("ssb-signed-").unwrap();
    let www = signed_fixture(dir.path());
    let keys = dir.path().join("keys");
    let out = ssb(dir.path())
        .args(["keygen", "--out"])
        .arg(&keys)
        .env("SSB_SIGN_KEY_PASSPHRASE", PASSPHRASE)
        .assert()
        .success();
    let fingerprint = String::from_utf8_lossy(&out.get_output().stdout)
        .trim()
        .to_owned();
    assert_eq!(fingerprint.len(), 40, "{fingerprint}");
    let secret = keys.join("signing-key.asc");
    let keyring = keys.join("signing-key.pub.gpg");
    ssb(dir.path())
        .args(["keygen", "--out"])
        .arg(&keys)
        .assert()
        .failure()
        .stderr(predicates::str::contains("never replaces a key"));

    // A locked key without its passphrase, a wrong passphrase, a public key, a missing file:
    // clear errors, and nothing of the catalog is written.
    for (key, pass, says) in [
        (secret.clone(), None, "SSB_SIGN_KEY_PASSPHRASE"),
        (secret.clone(), Some("wrong"), "cannot unlock"),
        (
            keys.join("signing-key.pub.asc"),
            None,
            "not an ASCII-armoured OpenPGP secret key",
        ),
        (keys.join("nope.asc"), None, "cannot read the signing key"),
    ] {
        publish(dir.path(), &www, Some(&key), pass)
            .failure()
            .stderr(predicates::str::contains(says));
        assert!(
            !www.join("streams").exists(),
            "{says}: a catalog was written"
        );
        assert!(
            !www.join("meta").exists(),
            "{says}: LXC's index was written"
        );
    }

    publish(dir.path(), &www, Some(&secret), Some(PASSPHRASE)).success();
    let lxc_dir = www.join(format!("images/beta/2/amd64/default/{V1}"));
    let signed_files = [
        www.join("meta/1.0/index-system"),
        lxc_dir.join("meta.tar.xz"),
        lxc_dir.join("rootfs.tar.xz"),
    ];
    for file in &signed_files {
        clients.gpgv(&keyring, file);
    }
    assert_eq!(
        std::fs::read_to_string(&signed_files[0]).unwrap(),
        format!("beta;2;amd64;default;{V1};/images/beta/2/amd64/default/{V1}/\n")
    );

    // Through our server: the signed index lists every item the plain one does.
    let server = TestServer::serve(&www, &ca);
    let item_ids = |items: Vec<serde_json::Value>| -> Vec<String> {
        let mut ids: Vec<String> = items
            .iter()
            .map(|i| {
                format!(
                    "{} {} {} {}",
                    i["product_name"], i["version_name"], i["item_name"], i["sha256"]
                )
            })
            .collect();
        ids.sort();
        ids
    };
    let plain = item_ids(clients.sstream_query(&format!("{}/streams/v1/index.json", server.url())));
    let query_signed = |url: &str| {
        clients
            .command(Program::SstreamQuery)
            .arg("--keyring")
            .arg(&keyring)
            .args(["--json", url])
            .output()
            .unwrap()
    };
    let out = query_signed(&format!("{}/streams/v1/index.sjson", server.url()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let signed = item_ids(serde_json::from_slice(&out.stdout).unwrap());
    assert_eq!(signed, plain);
    assert_eq!(
        signed.len(),
        5,
        "incus.tar.xz, its lxd twin, the squashfs, LXC's two: {signed:#?}"
    );

    // A mirror carries the LXC pair, writes its own LXC index and signs with its own key.
    let mirror = dir.path().join("mirror");
    let mirror_keys = dir.path().join("mirror-keys");
    ssb(dir.path())
        .args(["keygen", "--out"])
        .arg(&mirror_keys)
        .assert()
        .success();
    ssb(dir.path())
        .env("SSL_CERT_FILE", ca.ca_pem())
        .env_remove("SSB_SIGN_KEY_PASSPHRASE")
        .args(["mirror", "pull", server.url(), "--sign-key"])
        .arg(mirror_keys.join("signing-key.asc"))
        .arg("-t")
        .arg(&mirror)
        .assert()
        .success();
    let mirrored = mirror.join(format!("images/beta/2/amd64/default/{V1}"));
    for name in ["meta.tar.xz", "rootfs.tar.xz"] {
        assert_eq!(
            std::fs::read(mirrored.join(name)).unwrap(),
            std::fs::read(lxc_dir.join(name)).unwrap(),
            "{name}"
        );
        clients.gpgv(
            &mirror_keys.join("signing-key.pub.gpg"),
            &mirrored.join(name),
        );
    }
    assert_eq!(
        std::fs::read_to_string(mirror.join("meta/1.0/index-system")).unwrap(),
        std::fs::read_to_string(&signed_files[0]).unwrap()
    );
    drop(server);

    // Publishing again changes nothing: no file is signed again.
    let sjson = www.join("streams/v1/images.sjson");
    let before = std::fs::metadata(&sjson).unwrap().modified().unwrap();
    let asc_before = std::fs::read(lxc_dir.join("rootfs.tar.xz.asc")).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    publish(dir.path(), &www, Some(&secret), Some(PASSPHRASE)).success();
    assert_eq!(
        std::fs::metadata(&sjson).unwrap().modified().unwrap(),
        before
    );
    assert_eq!(
        std::fs::read(lxc_dir.join("rootfs.tar.xz.asc")).unwrap(),
        asc_before
    );

    // A products file altered after signing is refused.
    let text = std::fs::read_to_string(&sjson).unwrap();
    let altered = text.replacen("\"alpha\"", "\"alphb\"", 1);
    assert_ne!(altered, text);
    std::fs::write(&sjson, altered).unwrap();
    let out = query_signed(&format!(
        "file://{}",
        www.join("streams/v1/index.sjson").display()
    ));
    assert!(
        !out.status.success(),
        "sstream-query accepted an altered products file: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Without the key, the signed catalog that no longer matches goes.
    std::fs::remove_file(lxc_dir.join("meta.tar.xz")).unwrap();
    publish(dir.path(), &www, None, None).success();
    assert!(!sjson.exists());
    assert!(!www.join("streams/v1/index.sjson").exists());
    assert!(!www.join("meta/1.0/index-system.asc").exists());
    assert_eq!(std::fs::read_to_string(&signed_files[0]).unwrap(), "");
}
