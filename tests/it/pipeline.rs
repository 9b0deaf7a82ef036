//! A MottainaiCI pipeline replayed as its task files run it (../shared/reference/mottainai.md
//! §9), on one machine: a product task builds in its own namespace with
//! `SSBUILDER_PREFIX=../<namespace>` and pushes its tree; an index task in another namespace
//! removes `streams/` and runs `build-index` and `build-images-file`, which fetch the product's
//! ssb.json through `prefix_path`; both namespaces sit under one HTTPS root served by our
//! `serve`. The real daemons then launch a container from the index namespace.

use std::path::Path;
use std::time::Duration;

use tempfile::TempDir;

use crate::common::bootable::{busybox_rootfs, can_build_with_distrobuilder, pack_root_tar_gz};
use crate::common::catalog::read_json;
use crate::common::command::run_ok;
use crate::common::daemon::{Daemon, Kind};
use crate::common::fixtures::{mkdir, write_text};
use crate::common::server::TestServer;
use crate::common::ssb;
use crate::common::tls::TestCa;

const PRODUCT: &str = "busybox:1:amd64:default";
const STEP_TIMEOUT: Duration = Duration::from_secs(300);

/// `mc mirror SRC DST`: the contents of `src` into `dst`, as they are.
fn mirror(src: &Path, dst: &Path) {
    mkdir(dst);
    run_ok(
        assert_cmd::Command::new("cp")
            .arg("-a")
            .arg(src.join("."))
            .arg(dst),
        STEP_TIMEOUT,
    );
}

#[test]
fn a_mottainai_pipeline_replayed_ends_with_the_daemons_launching_from_the_index() {
    if !can_build_with_distrobuilder("the Mottainai pipeline replay") {
        return;
    }
    let ca = TestCa::generate();
    let dir = TempDir::with_prefix("ssb-pipeline-").unwrap();
    let www = dir.path().join("www");
    for ns in ["lxd-busybox", "lxd-images"] {
        mkdir(&www.join(ns));
    }
    let server = TestServer::serve(&www, &ca);
    let url = server.url().to_owned();

    // The product task (lxd/sabayon-builder/task.yaml's shape).
    let task = dir.path().join("task-busybox");
    let rootfs = busybox_rootfs(&dir.path().join("src"), "SSB Mottainai replay");
    let tarball = pack_root_tar_gz(&rootfs, &dir.path().join("busybox.tar.gz"));
    write_text(
        &task.join("busybox/image.yaml"),
        &format!(
            "image:\n  distribution: busybox\n  release: \"1\"\n  architecture: x86_64\n  description: SSB busybox\n  expiry: 30d\n\
             source:\n  downloader: rootfs-http\n  url: file://{}\n\
             packages:\n  custom_manager:\n    install: {{cmd: \"true\"}}\n    remove: {{cmd: \"true\"}}\n    update: {{cmd: \"true\"}}\n    clean: {{cmd: \"true\"}}\n    refresh: {{cmd: \"true\"}}\n  update: false\n  cleanup: false\n",
            tarball.display()
        ),
    );
    write_text(
        &task.join("tree-images.yaml"),
        &format!(
            "products:\n  - name: {PRODUCT}\n    arch: amd64\n    os: ssbpipe\n    release: \"1\"\n    directory: busybox\n    aliases: [ssbpipe/1]\n    days: 2\n"
        ),
    );
    mirror(&www.join("lxd-busybox"), &task.join("images"));
    let product_step = |args: &[&str]| {
        run_ok(
            ssb(&task)
                .env("SSBUILDER_PREFIX", "../lxd-busybox")
                .env("CACHEDIR", "./cachedir")
                .env("TMPDIR", "./tmp")
                .args(args),
            STEP_TIMEOUT,
        );
    };
    product_step(&[
        "build-product",
        "-c",
        "tree-images.yaml",
        "-s",
        ".",
        "-t",
        "./images",
        PRODUCT,
        "--skip-lxc",
    ]);
    product_step(&[
        "build-versions-manifest",
        "-c",
        "tree-images.yaml",
        "-s",
        "./images",
        "-t",
        "images",
        "-p",
        PRODUCT,
        "-i",
        "busybox/image.yaml",
    ]);
    mirror(&task.join("images"), &www.join("lxd-busybox"));

    // The index task (lxd/build-index.yaml's shape), with a second product never built yet.
    let index_task = dir.path().join("task-index");
    write_text(
        &index_task.join("tree-images.yaml"),
        &format!(
            "products:\n  - name: {PRODUCT}\n    arch: amd64\n    os: ssbpipe\n    release: \"1\"\n    directory: busybox\n    aliases: [ssbpipe/1]\n    prefix_path: {url}/lxd-busybox\n\
             \x20 - name: later:1:amd64:default\n    arch: amd64\n    directory: later\n    prefix_path: {url}/lxd-later\n"
        ),
    );
    mirror(&www.join("lxd-images"), &index_task.join("images"));
    let _ = std::fs::remove_dir_all(index_task.join("images/streams"));
    for step in ["build-index", "build-images-file"] {
        run_ok(
            ssb(&index_task)
                .env("SSL_CERT_FILE", ca.ca_pem())
                .env("SSBUILDER_HTTP_TIMEOUT", "120")
                .args(["-c", "tree-images.yaml", "-t", "./images", step]),
            STEP_TIMEOUT,
        );
    }
    mirror(&index_task.join("images"), &www.join("lxd-images"));
    let index = read_json(&www.join("lxd-images/streams/v1/index.json"));
    assert_eq!(
        index["index"]["images"]["products"],
        serde_json::json!([PRODUCT]),
        "the product, not the one never built: {index:#}"
    );
    let images = read_json(&www.join("lxd-images/streams/v1/images.json"));
    let items = images["products"][PRODUCT]["versions"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|v| v["items"].as_object().unwrap().values());
    for item in items {
        assert!(
            item["path"]
                .as_str()
                .unwrap()
                .starts_with("../lxd-busybox/busybox/"),
            "{item}"
        );
    }

    for kind in [Kind::Incus, Kind::Lxd] {
        let Some(daemon) = Daemon::start(kind, &ca) else {
            continue;
        };
        daemon.remote_add("idx", &format!("{url}/lxd-images"));
        daemon.ok(&[
            "-q",
            "image",
            "copy",
            "idx:ssbpipe/1",
            "local:",
            "--alias",
            "p",
        ]);
        crate::daemons::boots(&daemon, "local:p", "pipeline", &rootfs.pretty_name);
    }
}
