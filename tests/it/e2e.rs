//! End to end: publish image trees with our binary, serve them with our binary over HTTPS on
//! loopback, and check what the real clients make of them: `incus` (Incus 6.0), `lxc` (LXD 5.0)
//! and python-simplestreams' `sstream-query` / `sstream-mirror`.
//!
//! Every expectation is computed from the fixture files themselves (a split image's fingerprint
//! is sha256(meta ‖ rootfs)), never copied from our own output. Without the real clients the
//! tests skip loudly; with `SSB_REQUIRE_REAL_CLIENTS=1` (CI) they fail instead.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use crate::common::catalog::{
    Catalog, Family, ImageType, ListedImage, names, read_gz, read_json, sha256_of,
};
use crate::common::clients::{Client, Clients, Program};
use crate::common::fixtures::{
    Layout, MetaSpec, copy_version, write_metadata_tarball, write_qcow2, write_rootfs_tar_xz,
    write_squashfs_rootfs, write_text,
};
use crate::common::server::TestServer;
use crate::common::tls::TestCa;
use crate::common::{publish_layout, publish_tree};

/// The remote name the tests register in each client.
const REMOTE: &str = "ssb";
const V1: &str = "20250101_10:00";
const V2: &str = "20250102_10:00";

/// One image a client must see, derived from the fixture files.
#[derive(Debug)]
struct Expected {
    /// Product id, `os:release:arch:variant`.
    product: String,
    os: String,
    /// Aliases that must resolve to this image (for its type).
    aliases: Vec<String>,
    image_type: ImageType,
    fingerprint: String,
    /// File names the client exports the image as: those of the published items.
    meta_name: String,
    rootfs_name: String,
}

impl Expected {
    /// A `default`-variant amd64 container of `os`/`release` made of `meta` and `rootfs`.
    fn container(os: &str, release: &str, meta: &Path, rootfs: &Path) -> Self {
        Self::new(os, release, ImageType::Container, meta, rootfs)
    }

    /// A `default`-variant amd64 virtual machine of `os`/`release` made of `meta` and `disk`.
    fn vm(os: &str, release: &str, meta: &Path, disk: &Path) -> Self {
        Self::new(os, release, ImageType::VirtualMachine, meta, disk)
    }

    /// A `default`-variant amd64 image of `os`/`release` made of `meta` and `rootfs`.
    fn new(os: &str, release: &str, image_type: ImageType, meta: &Path, rootfs: &Path) -> Self {
        Expected {
            product: format!("{os}:{release}:amd64:default"),
            os: os.into(),
            aliases: vec![format!("{os}/{release}"), format!("{os}/{release}/default")],
            image_type,
            fingerprint: sha256_of(&[meta, rootfs]),
            meta_name: file_name(meta),
            rootfs_name: file_name(rootfs),
        }
    }

    fn alias(&self) -> &str {
        &self.aliases[0]
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .expect("fixture files have names")
        .to_string_lossy()
        .into_owned()
}

/// Writes the layout tree of `e2e_layout_tree_all_image_kinds` under `www` and returns the
/// images the clients must see.
fn build_all_kinds_tree(www: &Path) -> Vec<Expected> {
    let layout = Layout::new(www);
    let version =
        |os: &str, release: &str, v: &str| layout.version_dir(os, release, "amd64", "default", v);
    let mut expected = Vec::new();

    // Squashfs container with Incus metadata only: LXD must see it through the lxd.tar.xz bridge.
    let v = version("debian", "12", V1);
    let meta = write_metadata_tarball(&v.join("incus.tar.xz"), &MetaSpec::new("debian", "12", V1));
    let rootfs = write_squashfs_rootfs(&v.join("rootfs.squashfs"), "debian-12");
    expected.push(Expected::container("debian", "12", &meta, &rootfs));

    // root.tar.xz container with LXD metadata only: Incus must see it through the other bridge.
    let v = version("alpine", "3.20", V1);
    let meta = write_metadata_tarball(&v.join("lxd.tar.xz"), &MetaSpec::new("alpine", "3.20", V1));
    let rootfs = write_rootfs_tar_xz(&v.join("rootfs.tar.xz"), "alpine-3.20");
    expected.push(Expected::container("alpine", "3.20", &meta, &rootfs));

    // VM only: metadata + qcow2 disk.
    let v = version("ubuntu", "24.04", V1);
    let spec = MetaSpec::new("ubuntu", "24.04", V1).vm();
    let meta = write_metadata_tarball(&v.join("incus.tar.xz"), &spec);
    let disk = write_qcow2(&v.join("disk.qcow2"), "ubuntu-24.04");
    expected.push(Expected::vm("ubuntu", "24.04", &meta, &disk));

    // Container and VM in one version, the VM with its own metadata (distrobuilder --vm):
    // exactly one image of each type, each with its own metadata.
    let v = version("fedora", "41", V1);
    let spec = MetaSpec::new("fedora", "41", V1);
    let meta = write_metadata_tarball(&v.join("incus.tar.xz"), &spec);
    let rootfs = write_squashfs_rootfs(&v.join("rootfs.squashfs"), "fedora-41");
    expected.push(Expected::container("fedora", "41", &meta, &rootfs));
    let vm_meta = write_metadata_tarball(&v.join("incus-vm.tar.xz"), &spec.vm());
    let disk = write_qcow2(&v.join("disk.qcow2"), "fedora-41");
    expected.push(Expected::vm("fedora", "41", &vm_meta, &disk));

    // A rebuild that changed nothing: two versions, same bytes, so one fingerprint. Publishing
    // it twice would make it unreachable ("More than one match"), even by alias.
    let first = version("rocky", "9", V1);
    let meta = write_metadata_tarball(&first.join("lxd.tar.xz"), &MetaSpec::new("rocky", "9", V1));
    let rootfs = write_squashfs_rootfs(&first.join("rootfs.squashfs"), "rocky-9");
    copy_version(&first, &version("rocky", "9", V2));
    expected.push(Expected::container("rocky", "9", &meta, &rootfs));

    expected
}

/// Layout mode, every kind of image, checked on disk, through Incus and LXD (list, info,
/// export with the fingerprint recomputed from the exported bytes) and through
/// python-simplestreams (query and a checksum-verified mirror).
#[test]
fn e2e_layout_tree_all_image_kinds() {
    let ca = TestCa::generate();
    let Some(clients) = Clients::detect(&ca, Program::E2E) else {
        return;
    };
    let site = TempDir::with_prefix("ssb-e2e-").expect("create site dir");
    let www = site.path().join("www");
    let expected = build_all_kinds_tree(&www);

    publish_layout(site.path(), &www);
    let catalog = Catalog::load(&www);
    check_catalog_files(&catalog, &www);
    for family in Family::BOTH {
        check_catalog_images(&catalog, family, &expected);
    }

    let server = TestServer::serve(&www, &ca);
    for client in Client::BOTH {
        clients.remote_add(client, REMOTE, server.url());
        let listed = clients.image_list(client, REMOTE);
        check_listing(client, &listed, &expected, &catalog);
        for (n, image) in expected.iter().enumerate() {
            check_info(&clients, client, image);
            let dir = site.path().join(format!("export-{client:?}-{n}"));
            check_export(&clients, client, image, &dir);
        }
    }
    check_python_simplestreams(&clients, server.url(), &catalog, &www, site.path());
}

/// tree.yml mode: a declared product with a `directory:` and `requirements`, published with
/// `-c`; both requirement keys are written, identical, and each client reads its own.
#[test]
fn e2e_tree_yml_product_with_requirements() {
    let ca = TestCa::generate();
    let needed = [Program::Incus, Program::Lxc, Program::Mksquashfs];
    let Some(clients) = Clients::detect(&ca, &needed) else {
        return;
    };
    let site = TempDir::with_prefix("ssb-e2e-").expect("create site dir");
    let www = site.path().join("www");
    let version_dir = www.join("demo/one").join(V1);
    let meta = write_metadata_tarball(
        &version_dir.join("lxd.tar.xz"),
        &MetaSpec::new("demo", "1", V1),
    );
    let rootfs = write_squashfs_rootfs(&version_dir.join("rootfs.squashfs"), "demo-1");
    let fingerprint = sha256_of(&[&meta, &rootfs]);
    let tree_yml = site.path().join("tree.yml");
    write_text(
        &tree_yml,
        "products:\n\
         \x20 - name: demo:1:amd64:default\n\
         \x20   arch: amd64\n\
         \x20   release: \"1\"\n\
         \x20   os: Demo\n\
         \x20   release_title: One\n\
         \x20   directory: demo/one\n\
         \x20   aliases: [demo/1, demo/one]\n\
         \x20   variant: default\n\
         \x20   requirements:\n\
         \x20     secureboot: \"false\"\n",
    );

    publish_tree(site.path(), &tree_yml, &www);
    let catalog = Catalog::load(&www);
    check_catalog_files(&catalog, &www);
    let product = catalog.product("demo:1:amd64:default");
    let requirements = serde_json::json!({"secureboot": "false"});
    assert_eq!(
        product["requirements"], requirements,
        "product: {product:#}"
    );
    assert_eq!(
        product["lxd_requirements"], requirements,
        "product: {product:#}"
    );
    for path in catalog.item_paths() {
        assert!(
            path.starts_with(&format!("demo/one/{V1}/")),
            "item path {path} is not <directory>/<version>/<file>"
        );
    }
    for family in Family::BOTH {
        let images = catalog.images(family);
        let fingerprints: Vec<&str> = images.iter().map(|i| i.fingerprint.as_str()).collect();
        assert_eq!(
            fingerprints,
            [fingerprint.as_str()],
            "{family:?} images: {images:#?}"
        );
    }

    let server = TestServer::serve(&www, &ca);
    for client in Client::BOTH {
        clients.remote_add(client, REMOTE, server.url());
        for alias in ["demo/1", "demo/one"] {
            let info = clients.image_info(client, REMOTE, alias, ImageType::Container);
            assert_eq!(
                info.fingerprint, fingerprint,
                "{client:?} {alias}: {info:#?}"
            );
            assert_eq!(
                info.properties
                    .get("requirements.secureboot")
                    .map(String::as_str),
                Some("false"),
                "{client:?} {alias} lacks requirements.secureboot: {info:#?}"
            );
            let description = &info.properties["description"];
            assert!(
                description.contains("Demo") && description.contains("One"),
                "{client:?} {alias}: description {description:?} lacks os and release_title"
            );
        }
    }
}

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
    crate::common::fixtures::mkdir(&tree);
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

/// index.json names the products file, which lists the same products; `images.json.gz` is the
/// same document; every item's `size` and `sha256` match the file at its `path`.
fn check_catalog_files(catalog: &Catalog, www: &Path) {
    let listed: BTreeSet<&str> = catalog.index["index"]
        .as_object()
        .into_iter()
        .flatten()
        .flat_map(|(_, entry)| entry["products"].as_array().into_iter().flatten())
        .filter_map(|p| p.as_str())
        .collect();
    let products: BTreeSet<&str> = catalog.products().keys().map(String::as_str).collect();
    assert_eq!(
        listed, products,
        "index.json products differ from images.json"
    );

    let images = www.join(&catalog.images_path);
    let gz = PathBuf::from(format!("{}.gz", images.display()));
    let unzipped: serde_json::Value =
        serde_json::from_slice(&read_gz(&gz)).expect("images.json.gz holds JSON");
    assert_eq!(
        unzipped,
        read_json(&images),
        "images.json.gz differs from images.json"
    );

    for (product, version, item) in catalog.items() {
        let path = item["path"]
            .as_str()
            .unwrap_or_else(|| panic!("{product} {version}: item without path: {item:#}"));
        let file = www.join(path);
        let size = std::fs::metadata(&file)
            .unwrap_or_else(|e| panic!("{product} {version}: item {path}: {e}"))
            .len();
        assert_eq!(
            item["size"].as_u64(),
            Some(size),
            "{product} {version} {path}: size"
        );
        assert_eq!(
            item["sha256"].as_str(),
            Some(sha256_of(&[&file]).as_str()),
            "{product} {version} {path}: sha256"
        );
    }
}

/// Asserts that `fingerprints` are those of the expected images, each exactly once.
#[track_caller]
fn assert_each_expected_once<'a>(
    fingerprints: impl Iterator<Item = &'a str>,
    expected: &[Expected],
    message: &str,
) {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for fingerprint in fingerprints {
        *seen.entry(fingerprint).or_default() += 1;
    }
    let want: BTreeMap<&str, usize> = expected
        .iter()
        .map(|e| (e.fingerprint.as_str(), 1))
        .collect();
    assert_eq!(seen, want, "{message}");
}

/// What `family` would see: exactly the expected images, each fingerprint once, each the hash
/// of the very files its items point at.
fn check_catalog_images(catalog: &Catalog, family: Family, expected: &[Expected]) {
    let images = catalog.images(family);
    assert_each_expected_once(
        images.iter().map(|i| i.fingerprint.as_str()),
        expected,
        &format!("{family:?} image fingerprints (with counts): {images:#?}"),
    );

    for e in expected {
        let image = images
            .iter()
            .find(|i| i.fingerprint == e.fingerprint)
            .expect("checked above");
        assert_eq!(image.product, e.product, "{e:#?}");
        assert_eq!(image.image_type, e.image_type, "{family:?} {image:#?}");
        assert!(
            image.meta_path.ends_with(&format!("/{}", e.meta_name))
                && image.rootfs_path.ends_with(&format!("/{}", e.rootfs_name)),
            "{family:?} pairs the wrong files: {image:#?}, expected {e:#?}"
        );
    }
}

/// The client lists every expected image once, with its type, aliases and a description naming
/// the OS and the version it was published as.
fn check_listing(client: Client, listed: &[ListedImage], expected: &[Expected], catalog: &Catalog) {
    assert_each_expected_once(
        listed.iter().map(|i| i.fingerprint.as_str()),
        expected,
        &format!("{client:?} image list (fingerprint: count): {listed:#?}"),
    );

    let catalog_images = catalog.images(Family::Incus);
    for e in expected {
        let image = listed
            .iter()
            .find(|i| i.fingerprint == e.fingerprint)
            .expect("checked above");
        assert_eq!(image.image_type, e.image_type, "{client:?}: {image:#?}");
        assert_eq!(image.architecture, "x86_64", "{client:?}: {image:#?}");
        for alias in &e.aliases {
            assert!(
                image.aliases.contains(alias),
                "{client:?}: {} lacks alias {alias}: {image:#?}",
                e.product
            );
        }
        let version = &catalog_images
            .iter()
            .find(|i| i.fingerprint == e.fingerprint)
            .expect("the catalog was checked")
            .version;
        let description = image.description().to_lowercase();
        assert!(
            description.contains(&e.os) && description.contains(version.as_str()),
            "{client:?}: description {:?} should name {} and {version}",
            image.description(),
            e.os
        );
    }
}

/// `image info` resolves the alias, and the fingerprint itself, to this image.
fn check_info(clients: &Clients, client: Client, e: &Expected) {
    for name in [e.alias(), &e.fingerprint[..12]] {
        let info = clients.image_info(client, REMOTE, name, e.image_type);
        assert_eq!(
            info.fingerprint, e.fingerprint,
            "{client:?} image info {name}: {info:#?}"
        );
        assert_eq!(
            info.image_type, e.image_type,
            "{client:?} image info {name}: {info:#?}"
        );
    }
}

/// `image export` by alias writes the published meta and rootfs files, and sha256 over them is
/// the fingerprint (the clients check it too; this makes sure nothing was swapped).
fn check_export(clients: &Clients, client: Client, e: &Expected, dir: &Path) {
    let exported = clients.image_export(client, REMOTE, e.alias(), e.image_type, dir);
    let want = BTreeSet::from([e.meta_name.as_str(), e.rootfs_name.as_str()]);
    assert_eq!(
        names(&exported).into_iter().collect::<BTreeSet<_>>(),
        want,
        "{client:?} export of {}",
        e.alias()
    );
    let combined = sha256_of(&[&exported[&e.meta_name], &exported[&e.rootfs_name]]);
    assert_eq!(
        combined,
        e.fingerprint,
        "{client:?} export of {}",
        e.alias()
    );
}

/// `sstream-query` sees every published item; `sstream-mirror` copies them all, verified.
fn check_python_simplestreams(
    clients: &Clients,
    url: &str,
    catalog: &Catalog,
    www: &Path,
    scratch: &Path,
) {
    let index_url = format!("{url}/streams/v1/index.json");
    let items = clients.sstream_query(&index_url);
    let queried: BTreeSet<String> = items
        .iter()
        .filter_map(|i| i["path"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(queried, catalog.item_paths(), "sstream-query item paths");

    let mirror = scratch.join("mirror");
    clients.sstream_mirror(&index_url, &mirror);
    assert!(
        mirror.join(&catalog.images_path).is_file(),
        "sstream-mirror wrote no products file"
    );
    for path in catalog.item_paths() {
        let copy = mirror.join(&path);
        assert!(copy.is_file(), "sstream-mirror did not copy {path}");
        assert_eq!(
            sha256_of(&[&copy]),
            sha256_of(&[&www.join(&path)]),
            "sstream-mirror copy of {path} differs"
        );
    }
}
