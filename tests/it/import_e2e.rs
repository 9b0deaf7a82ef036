//! Round trips through `import`: images as the clients export them (split squashfs, split
//! root.tar.xz, a VM qcow2, a unified tar.gz) are imported, served by our `serve`, and exported
//! again by the real `incus` and `lxc`; what they download must hash to the fingerprints we
//! published.

use std::io::Write;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use crate::common::catalog::{Catalog, Family, ImageType, sha256_of};
use crate::common::clients::{Client, Clients, Program};
use crate::common::command::run_ok;
use crate::common::fixtures::{
    MetaSpec, write_metadata_tarball, write_qcow2, write_rootfs_tar_xz, write_squashfs_rootfs,
};
use crate::common::server::TestServer;
use crate::common::ssb;
use crate::common::tls::TestCa;

/// A unified image as `incus image export` writes one: metadata.yaml, templates/ and rootfs/.
fn write_unified(path: &Path) -> PathBuf {
    let yaml = "architecture: x86_64\ncreation_date: 1735725600\nproperties:\n  os: fedora\n  release: \"41\"\n  variant: default\n  description: Fedora 41\ntemplates:\n  /etc/hostname:\n    when: [create]\n    template: hostname.tpl\n";
    let gz = flate2::write::GzEncoder::new(
        std::fs::File::create(path).unwrap(),
        flate2::Compression::fast(),
    );
    let mut tar = tar::Builder::new(gz);
    #[rustfmt::skip]
    let entries: [(&str, tar::EntryType, u32, &[u8]); 6] = [
        ("metadata.yaml",          tar::EntryType::Regular,   0o644, yaml.as_bytes()),
        ("templates/",             tar::EntryType::Directory, 0o755, b""),
        ("templates/hostname.tpl", tar::EntryType::Regular,   0o644, b"{{ container.name }}\n"),
        ("rootfs/",                tar::EntryType::Directory, 0o755, b""),
        ("rootfs/etc/",            tar::EntryType::Directory, 0o755, b""),
        ("rootfs/etc/os-release",  tar::EntryType::Regular,   0o644, b"ID=fedora\n"),
    ];
    for (name, kind, mode, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_mtime(1_735_725_600);
        h.set_size(data.len() as u64);
        tar.append_data(&mut h, name, data).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap().flush().unwrap();
    path.to_owned()
}

#[test]
fn e2e_imported_images_export_with_the_published_fingerprints() {
    let ca = TestCa::generate();
    let needed = [
        Program::Incus,
        Program::Lxc,
        Program::Mksquashfs,
        Program::QemuImg,
        Program::QemuIo,
    ];
    let Some(clients) = Clients::detect(&ca, &needed) else {
        return;
    };
    let site = TempDir::with_prefix("ssb-import-e2e-").unwrap();
    let exports = site.path().join("exports");
    let www = site.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    let serial = "20250101_10:00";
    let inputs: Vec<Vec<PathBuf>> = vec![
        vec![
            write_metadata_tarball(
                &exports.join("debian/meta.tar.xz"),
                &MetaSpec::new("debian", "12", serial),
            ),
            write_squashfs_rootfs(&exports.join("debian/rootfs.squashfs"), "debian"),
        ],
        vec![
            write_metadata_tarball(
                &exports.join("alpine/meta.tar.xz"),
                &MetaSpec::new("alpine", "3.21", serial),
            ),
            write_rootfs_tar_xz(&exports.join("alpine/rootfs.tar.xz"), "alpine"),
        ],
        vec![
            write_metadata_tarball(
                &exports.join("ubuntu/meta.tar.xz"),
                &MetaSpec::new("ubuntu", "24.04", serial).vm(),
            ),
            write_qcow2(&exports.join("ubuntu/disk.qcow2"), "ubuntu"),
        ],
        vec![write_unified(&exports.join("fedora.tar.gz"))],
    ];
    for files in &inputs {
        let mut cmd = ssb(site.path());
        cmd.arg("-t").arg(&www).arg("import").args(files);
        run_ok(&mut cmd, std::time::Duration::from_secs(120));
    }

    let catalog = Catalog::load(&www);
    let unified = &catalog.product("fedora:41:amd64:default")["versions"]["20250101_10:00"]["items"]
        ["incus_combined.tar.gz"];
    let unified_fp = unified["sha256"].as_str().unwrap().to_owned();
    assert_eq!(unified_fp, sha256_of(&[&exports.join("fedora.tar.gz")]));

    let server = TestServer::serve(&www, &ca);
    for client in Client::BOTH {
        let family = match client {
            Client::Incus => Family::Incus,
            Client::Lxc => Family::Lxd,
        };
        clients.remote_add(client, "imp", server.url());
        let listed = clients.image_list(client, "imp");
        let split = catalog.images(family);
        // debian squashfs, alpine root.tar.xz, ubuntu VM, fedora split from the unified one.
        assert_eq!(split.len(), 4, "{split:#?}");
        for image in &split {
            assert!(
                listed.iter().any(|l| l.fingerprint == image.fingerprint),
                "{client:?} does not list {image:#?}"
            );
            let out = site
                .path()
                .join(format!("out-{client:?}-{}", &image.fingerprint[..12]));
            let files =
                clients.image_export(client, "imp", &image.fingerprint, image.image_type, &out);
            let base = |p: &str| p.rsplit('/').next().unwrap().to_owned();
            let meta = &files[&base(&image.meta_path)];
            let rootfs = &files[&base(&image.rootfs_path)];
            assert_eq!(files.len(), 2, "{client:?} split export: {files:?}");
            assert_eq!(
                sha256_of(&[meta, rootfs]),
                image.fingerprint,
                "{client:?} {image:#?}"
            );
        }
        assert!(
            listed.iter().any(|l| l.fingerprint == unified_fp),
            "{client:?} does not list the unified image"
        );
        let out = site.path().join(format!("out-{client:?}-unified"));
        let files = clients.image_export(client, "imp", &unified_fp, ImageType::Container, &out);
        let paths: Vec<&PathBuf> = files.values().collect();
        assert_eq!(paths.len(), 1, "{client:?} unified export: {files:?}");
        assert_eq!(sha256_of(&[paths[0]]), unified_fp);
    }
}
