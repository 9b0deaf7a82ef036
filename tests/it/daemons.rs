//! The proof that matters: the real daemons (Incus 6.0.4 and LXD 5.0.2, each started in a temp
//! folder) take images from our `serve` over HTTPS and run them. For each daemon: a squashfs
//! container, a root.tar.xz container and a unified tarball are copied, launched and shown to
//! be ours (`exec -- cat /etc/os-release`), with the catalog's fingerprint, aliases and
//! properties in `image info`; a VM is copied (the daemons cannot start VMs here: no
//! vhost-vsock); and the daemons import a split-only and a unified image themselves through
//! `/direct/`, then launch them. A product built by `build-product` with the real distrobuilder
//! boots on both.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tempfile::TempDir;

use crate::common::bootable::{
    BootableRootfs, busybox_rootfs, can_build_with_distrobuilder, have_busybox, pack_root_tar_gz,
    pack_root_tar_xz, pack_squashfs, pack_unified, skip,
};
use crate::common::catalog::{ImageInfo, ImageType, read_json};
use crate::common::command::run_ok;
use crate::common::daemon::{Daemon, Kind};
use crate::common::fixtures::{Layout, MetaSpec, write_metadata_tarball, write_qcow2};
use crate::common::server::TestServer;
use crate::common::ssb;
use crate::common::tls::TestCa;

const VERSION: &str = "20250101_10:00";
const PUBLISH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// The images of one test tree, each with what its os-release says.
struct Tree {
    dir: TempDir,
    www: PathBuf,
    /// (alias, PRETTY_NAME) of the container images.
    containers: Vec<(&'static str, String)>,
}

impl Tree {
    /// Every fingerprint the catalog offers for the product `id`: combined hashes of its
    /// metadata items and the sha256 of its unified items.
    fn fingerprints(&self, id: &str) -> BTreeSet<String> {
        let index = read_json(&self.www.join("streams/v1/index.json"));
        let path = index["index"]["images"]["path"]
            .as_str()
            .unwrap()
            .to_owned();
        let products = read_json(&self.www.join(path));
        let mut out = BTreeSet::new();
        for version in products["products"][id]["versions"]
            .as_object()
            .unwrap_or_else(|| panic!("no product {id}"))
            .values()
        {
            for item in version["items"].as_object().unwrap().values() {
                let map = item.as_object().unwrap();
                for (k, v) in map {
                    if k.starts_with("combined_") && k.ends_with("sha256") {
                        out.extend(v.as_str().map(str::to_owned));
                    }
                }
                if item["ftype"]
                    .as_str()
                    .is_some_and(|f| f.ends_with("_combined.tar.gz"))
                {
                    out.extend(item["sha256"].as_str().map(str::to_owned));
                }
            }
        }
        out
    }
}

/// A unique label, so an os-release shows which test and image a container came from.
fn label(what: &str) -> String {
    format!("SSB {what} {}", std::process::id())
}

/// The layout tree: busybox as squashfs (`ssbboot/sq`) and root.tar.xz (`ssbboot/tar`), a VM
/// (`ssbboot/vm`), and a unified tarball imported with our `import` (`ssbboot/uni`), which
/// publishes the whole tree.
fn bootable_tree() -> Tree {
    let dir = TempDir::with_prefix("ssb-boot-").unwrap();
    let www = dir.path().join("www");
    let layout = Layout::new(&www);
    let mut containers = Vec::new();
    for (release, pack) in [
        ("sq", pack_squashfs as fn(&BootableRootfs, &Path) -> PathBuf),
        ("tar", pack_root_tar_xz),
    ] {
        let rootfs = busybox_rootfs(&dir.path().join(release), &label(release));
        let version = layout.version_dir("ssbboot", release, "amd64", "default", VERSION);
        write_metadata_tarball(
            &version.join("incus.tar.xz"),
            &MetaSpec::new("ssbboot", release, "1"),
        );
        let name = if release == "sq" {
            "rootfs.squashfs"
        } else {
            "rootfs.tar.xz"
        };
        pack(&rootfs, &version.join(name));
        containers.push((release, rootfs.pretty_name));
    }
    let vm = layout.version_dir("ssbboot", "vm", "amd64", "default", VERSION);
    write_metadata_tarball(
        &vm.join("incus.tar.xz"),
        &MetaSpec::new("ssbboot", "vm", "1").vm(),
    );
    write_qcow2(&vm.join("disk.qcow2"), "boot-vm");
    let rootfs = busybox_rootfs(&dir.path().join("uni"), &label("uni"));
    let unified = pack_unified(
        &rootfs,
        &MetaSpec::new("ssbboot", "uni", "1"),
        &dir.path().join("uni.tar.gz"),
    );
    run_ok(
        ssb(dir.path())
            .arg("-t")
            .arg(&www)
            .arg("import")
            .arg(&unified),
        PUBLISH_TIMEOUT,
    );
    containers.push(("uni", rootfs.pretty_name));
    Tree {
        dir,
        www,
        containers,
    }
}

/// The sha256 a direct-URL import of the split-only image in `version_dir` gets: the one the
/// server's cached unified tarball is named after.
fn built_unified_sha(version_dir: &Path) -> String {
    std::fs::read_dir(version_dir)
        .unwrap()
        .flatten()
        .find_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let rest = name
                .strip_prefix(".ssb-unified.")?
                .strip_suffix(".tar.gz")?;
            rest.split_once('.').map(|(_, sha)| sha.to_owned())
        })
        .unwrap_or_else(|| panic!("no unified tarball was built in {}", version_dir.display()))
}

/// `cat /etc/os-release` in a container launched from `image` shows `pretty`.
pub(crate) fn boots(daemon: &Daemon, image: &str, name: &str, pretty: &str) {
    let container = daemon.launch(image, name);
    let release = daemon.exec(&container, &["cat", "/etc/os-release"]);
    assert!(
        release.contains(&format!("PRETTY_NAME=\"{pretty}\"")),
        "{:?}: {container} from {image} is not our image:\n{release}",
        daemon.kind()
    );
    let init = daemon.exec(&container, &["cat", "/proc/1/comm"]);
    assert_eq!(
        init.trim(),
        "init",
        "{container}: PID 1 is not busybox init"
    );
}

fn every_image_type_boots(kind: Kind) {
    if !have_busybox() {
        skip(
            &format!("{kind:?} boot test"),
            "/bin/busybox (busybox-static) missing",
        );
        return;
    }
    let ca = TestCa::generate();
    let Some(daemon) = Daemon::start(kind, &ca) else {
        return;
    };
    let tree = bootable_tree();
    let server = TestServer::serve(&tree.www, &ca);
    daemon.remote_add("ssb", server.url());

    for (release, pretty) in &tree.containers {
        let product = format!("ssbboot:{release}:amd64:default");
        daemon.ok(&[
            "-q",
            "image",
            "copy",
            &format!("ssb:ssbboot/{release}"),
            "local:",
            "--alias",
            release,
        ]);
        let info =
            ImageInfo::parse(&daemon.ok(&["image", "info", &format!("local:{release}")])).unwrap();
        assert!(
            tree.fingerprints(&product).contains(&info.fingerprint),
            "{kind:?}: {release}: fingerprint {} is not one the catalog publishes for {product}: {:?}",
            info.fingerprint,
            tree.fingerprints(&product)
        );
        assert_eq!(info.image_type, ImageType::Container, "{release}");
        assert!(info.aliases.contains(*release), "{release}: {info:?}");
        assert_eq!(
            info.properties.get("os").map(String::as_str),
            Some("ssbboot")
        );
        assert_eq!(
            info.properties.get("release").map(String::as_str),
            Some(*release)
        );
        boots(&daemon, &format!("local:{release}"), release, pretty);
    }

    // A VM: copied with its fingerprint (starting it needs vhost-vsock, which is not here).
    daemon.ok(&[
        "-q",
        "image",
        "copy",
        "ssb:ssbboot/vm",
        "local:",
        "--alias",
        "vm",
        "--vm",
    ]);
    let info = ImageInfo::parse(&daemon.ok(&["image", "info", "local:vm"])).unwrap();
    assert_eq!(info.image_type, ImageType::VirtualMachine);
    assert!(
        tree.fingerprints("ssbboot:vm:amd64:default")
            .contains(&info.fingerprint),
        "{kind:?}: vm fingerprint {}",
        info.fingerprint
    );

    // The daemon imports through /direct/ itself: a split-only image (the server builds the
    // unified tarball) and a published unified one. The copies go first: the unified image may
    // be the one `image copy` took, and a daemon holds an image once.
    for (release, _) in &tree.containers {
        daemon.ok(&["image", "delete", &format!("local:{release}")]);
    }
    let split_dir = tree
        .www
        .join(format!("images/ssbboot/sq/amd64/default/{VERSION}"));
    for (release, pretty) in tree.containers.iter().filter(|(r, _)| *r != "tar") {
        let alias = format!("direct-{release}");
        let url = format!("{}/direct/ssbboot/{release}", server.url());
        daemon.ok(&["-q", "image", "import", &url, "--alias", &alias]);
        let info =
            ImageInfo::parse(&daemon.ok(&["image", "info", &format!("local:{alias}")])).unwrap();
        let expected = if *release == "sq" {
            built_unified_sha(&split_dir)
        } else {
            unified_sha(&tree, release)
        };
        assert_eq!(info.fingerprint, expected, "{kind:?}: {alias}");
        boots(&daemon, &format!("local:{alias}"), &alias, pretty);
    }
    drop(daemon);
    drop(server);
    drop(tree.dir);
}

/// The sha256 of the unified item the catalog publishes for `ssbboot/<release>`.
fn unified_sha(tree: &Tree, release: &str) -> String {
    let index = read_json(&tree.www.join("streams/v1/index.json"));
    let path = index["index"]["images"]["path"]
        .as_str()
        .unwrap()
        .to_owned();
    let products = read_json(&tree.www.join(path));
    let versions = &products["products"][format!("ssbboot:{release}:amd64:default")]["versions"];
    versions
        .as_object()
        .unwrap()
        .values()
        .flat_map(|v| v["items"].as_object().unwrap().values())
        .find(|i| i["ftype"] == "incus_combined.tar.gz")
        .and_then(|i| i["sha256"].as_str())
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no unified item for {release}: {versions:#}"))
}

#[test]
fn incus_daemon_boots_every_image_type_we_serve() {
    every_image_type_boots(Kind::Incus);
}

#[test]
fn lxd_daemon_boots_every_image_type_we_serve() {
    every_image_type_boots(Kind::Lxd);
}

/// A product built by `build-product` with the real distrobuilder (busybox rootfs through
/// `downloader: rootfs-http` and a `file://` URL) boots on both daemons.
#[test]
fn a_distrobuilder_build_boots_on_both_daemons() {
    if !can_build_with_distrobuilder("a_distrobuilder_build_boots_on_both_daemons") {
        return;
    }
    let ca = TestCa::generate();
    let dir = TempDir::with_prefix("ssb-boot-build-").unwrap();
    let root = dir.path();
    let rootfs = busybox_rootfs(&root.join("src"), &label("distrobuilder"));
    let tarball = pack_root_tar_gz(&rootfs, &root.join("busybox.tar.gz"));
    crate::common::fixtures::write_text(
        &root.join("products/busybox/image.yaml"),
        &format!(
            "image:\n  distribution: busybox\n  release: \"1\"\n  architecture: x86_64\n  description: SSB busybox\n\
             source:\n  downloader: rootfs-http\n  url: file://{}\n\
             packages:\n  custom_manager:\n    install: {{cmd: \"true\"}}\n    remove: {{cmd: \"true\"}}\n    update: {{cmd: \"true\"}}\n    clean: {{cmd: \"true\"}}\n    refresh: {{cmd: \"true\"}}\n  update: false\n  cleanup: false\n",
            tarball.display()
        ),
    );
    crate::common::fixtures::write_text(
        &root.join("tree.yml"),
        "products:\n  - name: busybox:1:amd64:default\n    arch: amd64\n    os: ssbbuild\n    release: \"1\"\n    directory: busybox\n    aliases: [ssbbuild/1]\n",
    );
    run_ok(
        ssb(root)
            .env("CACHEDIR", root.join("cache"))
            .args(["-c", "tree.yml", "-t", "www", "build-product"])
            .args(["busybox:1:amd64:default", "-s", "products", "--skip-lxc"]),
        PUBLISH_TIMEOUT,
    );
    let www = root.join("www");
    let server = TestServer::serve(&www, &ca);
    let index = read_json(&www.join("streams/v1/index.json"));
    let products: Value = read_json(&www.join(index["index"]["images"]["path"].as_str().unwrap()));
    let product = &products["products"]["busybox:1:amd64:default"];
    assert!(product.is_object(), "not published: {products:#}");
    for kind in [Kind::Incus, Kind::Lxd] {
        let Some(daemon) = Daemon::start(kind, &ca) else {
            continue;
        };
        daemon.remote_add("ssb", server.url());
        daemon.ok(&[
            "-q",
            "image",
            "copy",
            "ssb:ssbbuild/1",
            "local:",
            "--alias",
            "built",
        ]);
        let info = ImageInfo::parse(&daemon.ok(&["image", "info", "local:built"])).unwrap();
        let published = product.to_string();
        assert!(
            published.contains(&info.fingerprint),
            "{kind:?}: fingerprint {} not in {product:#}",
            info.fingerprint
        );
        boots(&daemon, "local:built", "built", &rootfs.pretty_name);
    }
}
