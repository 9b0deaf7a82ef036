//! build-product with the real distrobuilder, offline: a rootfs tarball made here, an image.yaml
//! with `downloader: rootfs-http` and a `file://` url, two builds with `days: 1`, and the result
//! served by our `serve` to the real `incus` and `lxc`, and to classic LXC's `lxc-create -t
//! download` (pack-lxc's pair, signed with `--sign-key`, its signatures checked with `gpgv`).

use std::io::Write;
use std::path::Path;

use tempfile::TempDir;

use crate::common::catalog::{Catalog, sha256_of, version_folders};
use crate::common::clients::{Client, Clients, Program};
use crate::common::server::TestServer;
use crate::common::tls::TestCa;
use crate::common::{command::run_ok, is_root, ssb};

const PRODUCT: &str = "tiny:1:amd64:default";

fn host_arch() -> (&'static str, &'static str) {
    match std::env::consts::ARCH {
        "aarch64" => ("arm64", "aarch64"),
        _ => ("amd64", "x86_64"),
    }
}

/// A tiny rootfs as a tar.gz, with paths relative to the rootfs, as rootfs-http expects.
fn write_rootfs_tarball(path: &Path) {
    let gz = flate2::write::GzEncoder::new(
        std::fs::File::create(path).unwrap(),
        flate2::Compression::fast(),
    );
    let mut tar = tar::Builder::new(gz);
    for dir in [
        "./", "./bin/", "./dev/", "./etc/", "./proc/", "./root/", "./sys/", "./tmp/", "./usr/",
        "./var/",
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        h.set_cksum();
        tar.append_data(&mut h, dir, std::io::empty()).unwrap();
    }
    for (name, body) in [
        (
            "./etc/os-release",
            "ID=tiny\nVERSION_ID=1\nPRETTY_NAME=\"Tiny 1\"\n",
        ),
        ("./etc/hostname", "tiny\n"),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(body.len() as u64);
        h.set_cksum();
        tar.append_data(&mut h, name, body.as_bytes()).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap().flush().unwrap();
}

#[test]
fn e2e_build_product_with_real_distrobuilder() {
    let ca = TestCa::generate();
    let Some(clients) = Clients::detect(
        &ca,
        &[
            Program::Incus,
            Program::Lxc,
            Program::Distrobuilder,
            Program::Mksquashfs,
            Program::LxcCreate,
            Program::Gpgv,
        ],
    ) else {
        return;
    };
    if !is_root() {
        // distrobuilder's build-dir chroots into the rootfs.
        let msg = "SKIPPED e2e_build_product_with_real_distrobuilder: distrobuilder needs root";
        assert!(
            std::env::var("SSB_REQUIRE_REAL_CLIENTS").as_deref() != Ok("1"),
            "{msg}"
        );
        eprintln!("{msg}");
        return;
    }
    let site = TempDir::with_prefix("ssb-build-e2e-").unwrap();
    let root = site.path();
    let (arch, kernel_arch) = host_arch();
    write_rootfs_tarball(&root.join("rootfs.tar.gz"));
    std::fs::create_dir_all(root.join("products/tiny")).unwrap();
    std::fs::write(
        root.join("products/tiny/image.yaml"),
        format!(
            "image:\n  distribution: tiny\n  release: \"1\"\n  architecture: {kernel_arch}\n  description: Tiny 1\n  expiry: 30d\n\
             source:\n  downloader: rootfs-http\n  url: file://{}\n\
             targets:\n  lxc:\n    create_message: hello\n    config:\n      - type: all\n        content: lxc.include = LXC_TEMPLATE_CONFIG/common.conf\n\
             packages:\n  custom_manager:\n    install: {{cmd: \"true\"}}\n    remove: {{cmd: \"true\"}}\n    update: {{cmd: \"true\"}}\n    clean: {{cmd: \"true\"}}\n    refresh: {{cmd: \"true\"}}\n  update: false\n  cleanup: false\n",
            root.join("rootfs.tar.gz").display()
        ),
    )
    .unwrap();
    std::fs::write(
        root.join("tree.yml"),
        format!(
            "products:\n  - name: {PRODUCT}\n    arch: {arch}\n    os: Tiny\n    release: \"1\"\n    release_title: One\n    directory: tiny\n    aliases: [tiny/1]\n    days: 1\n    expiry: 30d\n"
        ),
    )
    .unwrap();
    let www = root.join("www");
    run_ok(
        ssb(root).args(["keygen", "--out", "keys"]),
        std::time::Duration::from_secs(60),
    );
    let build = |epoch: &str| {
        run_ok(
            ssb(root)
                .env("SOURCE_DATE_EPOCH", epoch)
                .env("SSB_SIGN_KEY_FILE", root.join("keys/signing-key.asc"))
                .env("CACHEDIR", root.join("cache"))
                .args([
                    "-c",
                    "tree.yml",
                    "-t",
                    "www",
                    "build-product",
                    PRODUCT,
                    "-s",
                    "products",
                ]),
            std::time::Duration::from_secs(300),
        )
    };
    build("1763900000");
    let v1 = "20251123_12:13";
    let version = www.join("tiny").join(v1);
    for f in [
        "incus.tar.xz",
        "rootfs.squashfs",
        "meta.tar.xz",
        "rootfs.tar.xz",
    ] {
        assert!(
            version.join(f).is_file(),
            "distrobuilder did not leave {f} in {}",
            version.display()
        );
    }
    let squashfs_fp = sha256_of(&[
        &version.join("incus.tar.xz"),
        &version.join("rootfs.squashfs"),
    ]);

    let server = TestServer::serve(&www, &ca);
    for client in Client::BOTH {
        clients.remote_add(client, "built", server.url());
        let listed = clients.image_list(client, "built");
        let fps: Vec<&str> = listed.iter().map(|i| i.fingerprint.as_str()).collect();
        assert!(
            fps.contains(&squashfs_fp.as_str()),
            "{client:?} lists {listed:#?}, not {squashfs_fp}"
        );
        let image = listed
            .iter()
            .find(|i| i.fingerprint == squashfs_fp)
            .unwrap();
        assert!(
            image.aliases.iter().any(|a| a == "tiny/1"),
            "{client:?}: {image:#?}"
        );
        assert!(
            image.description().contains("Tiny One"),
            "{client:?}: {image:#?}"
        );
    }

    // A second build with days: 1 leaves exactly one version, on disk and in the catalog.
    build("1763986400");
    assert_eq!(version_folders(&www.join("tiny")), ["20251124_12:13"]);
    let catalog = Catalog::load(&www);
    let versions: Vec<&String> = catalog.product(PRODUCT)["versions"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(versions, ["20251124_12:13"]);
    let v2 = www.join("tiny/20251124_12:13");
    let fp2 = sha256_of(&[&v2.join("incus.tar.xz"), &v2.join("rootfs.squashfs")]);
    // A fresh client (the Incus CLI caches catalogs for five minutes per HOME).
    let again = Clients::detect(
        &ca,
        &[
            Program::Incus,
            Program::Lxc,
            Program::LxcCreate,
            Program::Gpgv,
        ],
    )
    .unwrap();
    for client in Client::BOTH {
        again.remote_add(client, "built", server.url());
        let listed = again.image_list(client, "built");
        let containers: Vec<&str> = listed
            .iter()
            .filter(|i| i.aliases.iter().any(|a| a == "tiny/1"))
            .map(|i| i.fingerprint.as_str())
            .collect();
        assert_eq!(containers, [fp2.as_str()], "{client:?}: {listed:#?}");
    }

    // Classic LXC finds pack-lxc's pair of the new version and creates a container from it;
    // the pair and LXC's index carry signatures from the build's key.
    let keyring = root.join("keys/signing-key.pub.gpg");
    for file in [
        v2.join("meta.tar.xz"),
        v2.join("rootfs.tar.xz"),
        www.join("meta/1.0/index-system"),
    ] {
        again.gpgv(&keyring, &file);
    }
    let lxcpath = root.join("lxc");
    std::fs::create_dir_all(&lxcpath).unwrap();
    again.lxc_download(server.url(), &lxcpath, "tiny", ["tiny", "1", arch]);
    let os_release = std::fs::read_to_string(lxcpath.join("tiny/rootfs/etc/os-release")).unwrap();
    assert!(os_release.contains("ID=tiny"), "{os_release}");
    let _ = std::process::Command::new("lxc-destroy")
        .arg("-P")
        .arg(&lxcpath)
        .args(["-n", "tiny"])
        .output();
}
