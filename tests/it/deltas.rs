//! Deltas: xdelta3 VCDIFF files between versions' squashfs, made once at publish, applied by
//! `xdelta3 -d` to the byte, left out when too large or when their base is gone, accepted by
//! python-simplestreams; and the real daemons (Incus 6.0.4, LXD 5.0.2) refreshing an
//! auto-update image through the delta instead of the full squashfs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use crate::common::bootable::{busybox_rootfs, have_busybox, pack_squashfs, skip};
use crate::common::catalog::{read_json, sha256_of};
use crate::common::clients::{Clients, Program};
use crate::common::command::run_ok;
use crate::common::daemon::{Daemon, Kind};
use crate::common::fixtures::{MetaSpec, write_metadata_tarball};
use crate::common::server::TestServer;
use crate::common::ssb;
use crate::common::tls::TestCa;

const V1: &str = "20250101_10:00";
const V2: &str = "20250102_10:00";
const V3: &str = "20250103_10:00";
const TIMEOUT: Duration = Duration::from_secs(300);

fn products(www: &Path) -> Value {
    read_json(&www.join("streams/v1/images.json"))
}

fn publish(cwd: &Path, www: &Path, extra: &[&str]) -> std::process::Output {
    run_ok(
        ssb(cwd).arg("-t").arg(www).arg("publish").args(extra),
        TIMEOUT,
    )
}

/// A version of `ssbboot:<release>` whose busybox rootfs says `pretty` and holds `extra`.
fn version(dir: &Path, www: &Path, release: &str, v: &str, pretty: &str, extra: &[u8]) -> PathBuf {
    let rootfs = busybox_rootfs(&dir.join(format!("{release}-{v}")), pretty);
    std::fs::write(rootfs.path.join("etc/ssb-extra"), extra).unwrap();
    let version = www.join(format!("images/ssbboot/{release}/amd64/default/{v}"));
    std::fs::create_dir_all(&version).unwrap();
    write_metadata_tarball(
        &version.join("incus.tar.xz"),
        &MetaSpec::new("ssbboot", release, "1"),
    );
    pack_squashfs(&rootfs, &version.join("rootfs.squashfs"));
    version
}

fn xdelta3_decode(base: &Path, delta: &Path) -> Vec<u8> {
    run_ok(
        assert_cmd::Command::new("xdelta3")
            .args(["-d", "-c", "-s"])
            .arg(base)
            .arg(delta),
        TIMEOUT,
    )
    .stdout
}

fn needs(what: &str) -> bool {
    if have_busybox() && Clients::detect(&TestCa::generate(), &[Program::Mksquashfs]).is_some() {
        let ok = std::process::Command::new("xdelta3")
            .arg("-V")
            .output()
            .is_ok();
        if ok {
            return true;
        }
    }
    skip(what, "busybox-static, mksquashfs or xdelta3 is missing");
    false
}

#[test]
fn deltas_are_made_once_applied_exactly_and_follow_their_base() {
    if !needs("deltas_are_made_once_applied_exactly_and_follow_their_base") {
        return;
    }
    let ca = TestCa::generate();
    let clients = Clients::detect(&ca, &[Program::SstreamQuery, Program::SstreamMirror]);
    let dir = TempDir::with_prefix("ssb-deltas-").unwrap();
    let www = dir.path().join("www");
    let v1 = version(dir.path(), &www, "1", V1, "one", b"first");
    let v2 = version(dir.path(), &www, "1", V2, "one", b"second");
    // Two rootfs that differ in 4 MiB of random bytes: the delta is most of the squashfs.
    let noise = || -> Vec<u8> {
        let mut bytes = vec![0u8; 4 << 20];
        std::io::Read::read_exact(
            &mut std::fs::File::open("/dev/urandom").unwrap(),
            &mut bytes,
        )
        .unwrap();
        bytes
    };
    version(dir.path(), &www, "2", V1, "two", &noise());
    version(dir.path(), &www, "2", V2, "two", &noise());

    let out = publish(dir.path(), &www, &["--deltas", "2"]);
    let log = String::from_utf8_lossy(&out.stderr);
    let catalog = products(&www);
    let items = &catalog["products"]["ssbboot:1:amd64:default"]["versions"][V2]["items"];
    let name = format!("delta-{V1}.vcdiff");
    let delta = &items[&name];
    assert_eq!(delta["ftype"], "squashfs.vcdiff", "{items:#}");
    assert_eq!(delta["delta_base"], V1);
    assert_eq!(
        delta["path"],
        format!("images/ssbboot/1/amd64/default/{V2}/{name}")
    );
    let file = v2.join(&name);
    assert_eq!(delta["sha256"], sha256_of(&[&file]));
    assert_eq!(delta["size"], std::fs::metadata(&file).unwrap().len());
    // What the daemons do with it gives the new squashfs, byte for byte.
    assert!(
        xdelta3_decode(&v1.join("rootfs.squashfs"), &file)
            == std::fs::read(v2.join("rootfs.squashfs")).unwrap()
    );
    assert!(
        std::fs::metadata(&file).unwrap().len() * 2
            < std::fs::metadata(v2.join("rootfs.squashfs")).unwrap().len(),
        "a one-file change should make a small delta"
    );
    // The oldest version has no base.
    let v1_items = &catalog["products"]["ssbboot:1:amd64:default"]["versions"][V1]["items"];
    assert!(
        !v1_items
            .as_object()
            .unwrap()
            .keys()
            .any(|k| k.ends_with(".vcdiff")),
        "{v1_items:#}"
    );
    // Too large: made, measured, left out and not kept.
    let two = &catalog["products"]["ssbboot:2:amd64:default"]["versions"][V2]["items"];
    assert!(two.get(&name).is_none(), "{two:#}");
    assert!(
        !www.join(format!("images/ssbboot/2/amd64/default/{V2}/{name}"))
            .exists()
    );
    assert!(log.contains("not published"), "{log}");

    // A re-publish makes nothing again (the cache knows both outcomes).
    let mtime = std::fs::metadata(&file).unwrap().modified().unwrap();
    let out = publish(dir.path(), &www, &["--deltas", "2"]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!log.contains("making the delta"), "{log}");
    assert_eq!(std::fs::metadata(&file).unwrap().modified().unwrap(), mtime);
    // The share follows the setting: raised, the large delta is published; lowered again, it
    // goes.
    let large = www.join(format!("images/ssbboot/2/amd64/default/{V2}/{name}"));
    publish(
        dir.path(),
        &www,
        &["--deltas", "2", "--delta-max-percent", "100"],
    );
    let items = &products(&www)["products"]["ssbboot:2:amd64:default"]["versions"][V2]["items"];
    assert_eq!(items[&name]["delta_base"], V1, "{items:#}");
    assert!(large.is_file());
    publish(dir.path(), &www, &["--deltas", "2"]);
    let items = &products(&www)["products"]["ssbboot:2:amd64:default"]["versions"][V2]["items"];
    assert!(items.get(&name).is_none(), "{items:#}");
    assert!(!large.exists());

    // A third version gets deltas from both earlier ones; `list` and `verify` know them.
    let v3 = version(dir.path(), &www, "1", V3, "one", b"third");
    publish(dir.path(), &www, &["--deltas", "2"]);
    let items = &products(&www)["products"]["ssbboot:1:amd64:default"]["versions"][V3]["items"];
    for base in [V1, V2] {
        assert_eq!(items[format!("delta-{base}.vcdiff")]["delta_base"], base);
    }
    let listed = run_ok(ssb(dir.path()).arg("-t").arg(&www).arg("list"), TIMEOUT);
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.contains(&format!("from {V1}")), "{listed}");
    run_ok(ssb(dir.path()).arg("-t").arg(&www).arg("verify"), TIMEOUT);

    // python-simplestreams reads the catalog and mirrors the deltas, checking their sha256.
    if let Some(clients) = &clients {
        let server = TestServer::serve(&www, &ca);
        let index = format!("{}/streams/v1/index.json", server.url());
        let items = clients.sstream_query(&index);
        assert!(
            items.iter().any(|i| i["ftype"] == "squashfs.vcdiff"),
            "{items:#?}"
        );
        let out = dir.path().join("sstream-mirror");
        clients.sstream_mirror(&index, &out);
        assert!(
            out.join(format!(
                "images/ssbboot/1/amd64/default/{V3}/delta-{V2}.vcdiff"
            ))
            .is_file()
        );
    }

    // A broken delta is found by verify.
    let broken = v3.join(format!("delta-{V2}.vcdiff"));
    let mut bytes = std::fs::read(&broken).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0xff;
    std::fs::write(&broken, &bytes).unwrap();
    let out = ssb(dir.path())
        .arg("-t")
        .arg(&www)
        .arg("verify")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("broken delta"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    std::fs::remove_file(&broken).unwrap();

    // The base goes: its deltas leave the catalog in the same publish, and prune takes them
    // off the disk.
    std::fs::remove_dir_all(&v1).unwrap();
    publish(dir.path(), &www, &["--deltas", "2"]);
    let catalog = products(&www);
    for v in [V2, V3] {
        let items = &catalog["products"]["ssbboot:1:amd64:default"]["versions"][v]["items"];
        assert!(items.get(&name).is_none(), "{v}: {items:#}");
    }
    run_ok(
        ssb(dir.path()).arg("-t").arg(&www).args(["prune", "--yes"]),
        TIMEOUT,
    );
    assert!(!v2.join(&name).exists());
    assert!(!v3.join(&name).exists());
    run_ok(ssb(dir.path()).arg("-t").arg(&www).arg("verify"), TIMEOUT);
}

/// Copies `V1` of `ssbboot/1` into `daemon`'s store with auto-update, publishes `V2` with its
/// delta, and refreshes: the daemon must fetch the delta, not the squashfs, and end up with
/// `V2`'s image, which boots.
fn refresh_takes_the_delta(kind: Kind) {
    let what = format!("{kind:?} refresh through a delta");
    if !needs(&what) {
        return;
    }
    let ca = TestCa::generate();
    let Some(daemon) = Daemon::start(kind, &ca) else {
        return;
    };
    let dir = TempDir::with_prefix("ssb-delta-daemon-").unwrap();
    let www = dir.path().join("www");
    let pretty1 = format!("SSB delta one {}", std::process::id());
    let pretty2 = format!("SSB delta two {}", std::process::id());
    version(dir.path(), &www, "1", V1, &pretty1, b"first");
    publish(dir.path(), &www, &["--deltas", "1"]);
    let server = TestServer::serve(&www, &ca);
    daemon.remote_add("srv", server.url());
    daemon.ok(&[
        "image",
        "copy",
        "srv:ssbboot/1",
        "local:",
        "--auto-update",
        "--alias",
        "boot",
    ]);

    let v2 = version(dir.path(), &www, "1", V2, &pretty2, b"second");
    publish(dir.path(), &www, &["--deltas", "1"]);
    let fp2 = sha256_of(&[&v2.join("incus.tar.xz"), &v2.join("rootfs.squashfs")]);
    assert!(v2.join(format!("delta-{V1}.vcdiff")).is_file());
    // The daemon keeps the remote's catalog for an hour; a refresh must see the new one.
    daemon.forget_remote_catalogs();
    let before = server.said().len();
    daemon.ok(&["image", "refresh", "boot"]);
    let delta = format!("/{V2}/delta-{V1}.vcdiff");
    // Panics with the log if the daemon did not fetch the delta.
    let said = server.wait_said(&[&delta])[before..].to_owned();
    assert!(
        said.contains(&delta),
        "{kind:?} fetched the delta before the refresh:\n{said}"
    );
    assert!(
        !said.contains(&format!("/{V2}/rootfs.squashfs")),
        "{kind:?} fetched the full squashfs:\n{said}"
    );
    let info = daemon.ok(&["image", "info", "boot"]);
    assert!(
        info.contains(&fp2),
        "{kind:?}: the image is not version 2's:\n{info}"
    );
    crate::daemons::boots(&daemon, "boot", "from-delta", &pretty2);
}

#[test]
fn incus_refreshes_an_image_through_its_delta() {
    refresh_takes_the_delta(Kind::Incus);
}

#[test]
fn lxd_refreshes_an_image_through_its_delta() {
    refresh_takes_the_delta(Kind::Lxd);
}
