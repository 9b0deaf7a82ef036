//! End to end: the real clients against image trees. This part checks our own fixtures and
//! client helpers against the reference implementations, before our binary is in the loop.
//! Without the real clients the tests skip loudly; with `SSB_REQUIRE_REAL_CLIENTS=1` (CI) they
//! fail instead.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use common::catalog::{ImageType, ListedImage, names, sha256_of};
use common::clients::{Client, Clients, Program};
use common::fixtures::{
    MetaSpec, write_metadata_tarball, write_qcow2, write_rootfs_tar_xz, write_squashfs_rootfs,
};
use common::server::TestServer;
use common::tls::TestCa;

const V1: &str = "20250101_10:00";

/// Our fixtures and client helpers, checked against the reference implementations with our
/// binary out of the loop: incus-simplestreams accepts the metadata tarballs, squashfs and qcow2
/// and computes the same fingerprints as [`sha256_of`]; a Python TLS 1.3 server of its tree is
/// listed and exported by `incus` through [`Clients`] and [`TestServer`].
#[test]
fn fixtures_accepted_by_incus_simplestreams() {
    let ca = TestCa::generate();
    let needed = [
        Program::Incus,
        Program::IncusSimplestreams,
        Program::Mksquashfs,
        Program::QemuImg,
        Program::QemuIo,
        Program::Python3,
    ];
    let Some(clients) = Clients::detect(&ca, &needed) else {
        return;
    };
    let scratch = TempDir::with_prefix("ssb-fixtures-").expect("create scratch dir");
    let files = scratch.path().join("files");
    let spec = MetaSpec::new("fixture", "1", V1);
    let meta = write_metadata_tarball(&files.join("incus.tar.xz"), &spec);
    let squashfs = write_squashfs_rootfs(&files.join("rootfs.squashfs"), "fixture-1");
    let qcow2 = write_qcow2(&files.join("disk.qcow2"), "fixture-1");

    // Same inputs, same bytes (stable fingerprints); another seed, other bytes.
    let again = scratch.path().join("again");
    let other = scratch.path().join("other");
    let same = |a: &Path, b: &Path| std::fs::read(a).ok() == std::fs::read(b).ok();
    let pairs: [(&Path, PathBuf, PathBuf); 3] = [
        (
            &meta,
            write_metadata_tarball(&again.join("incus.tar.xz"), &spec),
            write_metadata_tarball(&other.join("incus.tar.xz"), &spec.vm()),
        ),
        (
            &squashfs,
            write_squashfs_rootfs(&again.join("rootfs.squashfs"), "fixture-1"),
            write_squashfs_rootfs(&other.join("rootfs.squashfs"), "fixture-2"),
        ),
        (
            &qcow2,
            write_qcow2(&again.join("disk.qcow2"), "fixture-1"),
            write_qcow2(&other.join("disk.qcow2"), "fixture-2"),
        ),
    ];
    for (original, rebuilt, reseeded) in &pairs {
        assert!(
            same(original, rebuilt),
            "{} is not reproducible",
            rebuilt.display()
        );
        assert!(
            !same(original, reseeded),
            "{} ignores its seed",
            reseeded.display()
        );
    }

    let container = sha256_of(&[&meta, &squashfs]);
    let vm = sha256_of(&[&meta, &qcow2]);
    let tree = scratch.path().join("tree");
    common::fixtures::mkdir(&tree);
    clients.incus_simplestreams(
        &tree,
        [OsArg::from("add"), meta.clone().into(), squashfs.into()],
    );
    clients.incus_simplestreams(&tree, [OsArg::from("add"), meta.into(), qcow2.into()]);
    let out = clients.incus_simplestreams(&tree, ["list", "--format", "json"]);
    let listed = ListedImage::parse_list(&out.stdout).expect("incus-simplestreams list JSON");
    assert_eq!(
        types_by_fingerprint(&listed),
        BTreeMap::from([
            (container.clone(), ImageType::Container),
            (vm.clone(), ImageType::VirtualMachine),
        ]),
        "incus-simplestreams disagrees with sha256(meta ‖ rootfs): {listed:#?}"
    );

    let server = TestServer::python_https(&tree, &ca);
    clients.incus_remote_add("ref", server.url());
    let listed = clients.image_list(Client::Incus, "ref");
    assert_eq!(types_by_fingerprint(&listed).len(), 2, "{listed:#?}");
    for (fingerprint, image_type) in [
        (container, ImageType::Container),
        (vm, ImageType::VirtualMachine),
    ] {
        let dir = scratch.path().join(format!("export-{image_type:?}"));
        let exported = clients.image_export(Client::Incus, "ref", &fingerprint, image_type, &dir);
        // incus-simplestreams names them <meta sha256>.incus.tar.xz and <meta sha256>.<ext>.
        let (meta, rootfs): (Vec<_>, Vec<_>) = exported
            .iter()
            .partition(|(name, _)| name.ends_with(".incus.tar.xz"));
        assert_eq!(
            (meta.len(), rootfs.len()),
            (1, 1),
            "exported: {:?}",
            names(&exported)
        );
        let paths = [meta[0].1.as_path(), rootfs[0].1.as_path()];
        assert_eq!(
            sha256_of(&paths),
            fingerprint,
            "exported {:?}",
            names(&exported)
        );
    }
}

/// An OS-string argument, to mix literals and paths in one argument list.
type OsArg = std::ffi::OsString;

/// Fixture archives read back with independent readers: the entries are where the clients look
/// for them, and `metadata.yaml` is YAML with the properties we put in.
#[test]
fn fixture_archives_have_the_expected_entries() {
    let dir = TempDir::with_prefix("ssb-fixtures-").expect("create scratch dir");
    let spec = MetaSpec::new("debian", "12", V1);
    let meta = write_metadata_tarball(&dir.path().join("incus.tar.xz"), &spec);
    let rootfs = write_rootfs_tar_xz(&dir.path().join("rootfs.tar.xz"), "seed");

    let meta_entries = tar_xz_entries(&meta);
    assert_eq!(
        meta_entries.keys().map(String::as_str).collect::<Vec<_>>(),
        ["metadata.yaml", "templates/", "templates/hostname.tpl"]
    );
    let yaml: serde_json::Value =
        serde_saphyr::from_slice(&meta_entries["metadata.yaml"]).expect("metadata.yaml is YAML");
    assert_eq!(yaml["architecture"], "x86_64");
    assert_eq!(yaml["properties"]["os"], "debian");
    assert_eq!(yaml["properties"]["serial"], V1);
    assert_eq!(
        yaml["templates"]["/etc/hostname"]["template"],
        "hostname.tpl"
    );

    let rootfs_entries = tar_xz_entries(&rootfs);
    assert_eq!(
        rootfs_entries
            .keys()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        [
            "./",
            "./etc/",
            "./etc/hostname",
            "./etc/os-release",
            "./etc/ssb-seed"
        ]
    );
    assert_eq!(rootfs_entries["./etc/hostname"], b"seed\n");
}

/// Entry name → contents, read with `liblzma` + `tar` independently of how they were written.
fn tar_xz_entries(path: &Path) -> BTreeMap<String, Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path).expect("open fixture");
    let mut archive = tar::Archive::new(liblzma::read::XzDecoder::new(file));
    let mut out = BTreeMap::new();
    for entry in archive.entries().expect("read tar") {
        let mut entry = entry.expect("read tar entry");
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).expect("read tar entry data");
        out.insert(name, data);
    }
    out
}

fn types_by_fingerprint(listed: &[ListedImage]) -> BTreeMap<String, ImageType> {
    listed
        .iter()
        .map(|i| (i.fingerprint.clone(), i.image_type))
        .collect()
}
