//! `POST /import` against the real binary over HTTPS: split and unified images land in the
//! layout and are in the catalog by the time the answer comes; the same image again changes
//! nothing; auth is the uploads'; bad requests are refused with a 4xx that leaves the tree, the
//! catalog and the staging folder as they were.
//!
//! The sites run with `--no-watch`, so only the import's own re-index can publish, and the
//! catalog's bytes show whether anything was re-published.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use reqwest::blocking::multipart::{Form, Part};
use serde_json::Value;
use tempfile::TempDir;

use crate::common::catalog::sha256_of;
use crate::common::clients::{Client, Clients, Program};
use crate::common::fixtures::{
    MetaSpec, fake_squashfs, write_metadata_tarball, write_squashfs_rootfs, write_text,
    write_unified_tar_gz,
};
use crate::common::site::{Site, TOKEN};

/// The version folder of every fixture image: `FIXTURE_EPOCH`, 2025-01-01 10:00 UTC.
const VERSION: &str = "20250101_10:00";

fn start() -> Site {
    Site::start(&["--no-watch"], &[])
}

/// `POST /import` with these files (by path, sent under their own names) and text fields;
/// `token` is the bearer token to send, if any. Returns the status and the JSON body.
fn import(
    site: &Site,
    files: &[&Path],
    fields: &[(&str, &str)],
    token: Option<&str>,
) -> (u16, Value) {
    let mut form = Form::new();
    for file in files {
        form = form.file("file", file).expect("read a file to send");
    }
    for (name, value) in fields {
        form = form.text(name.to_string(), value.to_string());
    }
    send(site, form, token)
}

fn send(site: &Site, form: Form, token: Option<&str>) -> (u16, Value) {
    let ca = std::fs::read(site.ca.ca_pem()).expect("read the test CA");
    let client = reqwest::blocking::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("parse the test CA"))
        .no_proxy()
        .timeout(std::time::Duration::from_secs(120))
        .build()
        .expect("build an HTTP client");
    let mut request = client
        .post(format!("{}/import", site.url()))
        .multipart(form);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().expect("send the import");
    let status = response.status().as_u16();
    let text = response.text().expect("read the answer");
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("answer {status} is not JSON ({e}): {text}"));
    (status, body)
}

fn catalog_bytes(site: &Site) -> Vec<u8> {
    std::fs::read(site.www.join("streams/v1/images.json")).expect("read images.json")
}

/// The items of a version in the catalog on disk (no waiting: the answer came after it).
fn items(site: &Site, product: &str) -> serde_json::Map<String, Value> {
    let catalog = site.catalog().expect("images.json is valid JSON");
    catalog["products"][product]["versions"][VERSION]["items"]
        .as_object()
        .unwrap_or_else(|| panic!("{product} {VERSION} is not in the catalog: {catalog:#}"))
        .clone()
}

/// Every file under `dir` (hidden ones included) with its size, relative to `dir`.
fn files_under(dir: &Path) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let meta = entry.metadata().expect("stat");
            if meta.is_dir() {
                todo.push(path);
            } else {
                let rel = path.strip_prefix(dir).unwrap().display().to_string();
                out.insert(rel, meta.len());
            }
        }
    }
    out
}

/// Nothing is left in the staging folder of imports.
fn assert_staging_empty(site: &Site) {
    let left = files_under(&site.www.join(".ssb/import"));
    assert!(left.is_empty(), "left in .ssb/import: {left:?}");
    if let Ok(dirs) = std::fs::read_dir(site.www.join(".ssb/import")) {
        let dirs: Vec<_> = dirs.flatten().map(|e| e.path()).collect();
        assert!(dirs.is_empty(), "folders left in .ssb/import: {dirs:?}");
    }
}

fn fingerprints(answer: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = answer["images"]
        .as_array()
        .unwrap_or_else(|| panic!("no images in {answer:#}"))
        .iter()
        .map(|i| {
            (
                i["fingerprint"].as_str().unwrap().to_owned(),
                i["type"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

fn scratch(site: &Site) -> PathBuf {
    let dir = site.dir.path().join("scratch");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A metadata tarball of `os` and a "squashfs" that is only a superblock and some bytes: the
/// import and the indexer read no further, so no mksquashfs is needed.
fn quick_split(dir: &Path, os: &str, rootfs: &[u8]) -> (PathBuf, PathBuf) {
    let meta = write_metadata_tarball(
        &dir.join(format!("{os}.tar.xz")),
        &MetaSpec::new(os, "1.0", VERSION),
    );
    let root = dir.join(format!("{os}.squashfs"));
    std::fs::write(&root, fake_squashfs(rootfs)).unwrap();
    (meta, root)
}

#[test]
fn a_split_image_is_in_the_catalog_when_the_answer_comes_and_again_changes_nothing() {
    let site = start();
    let Some(_tools) = Clients::detect(&site.ca, &[Program::Mksquashfs]) else {
        return;
    };
    let scratch = scratch(&site);
    let meta = write_metadata_tarball(
        &scratch.join("meta.tar.xz"),
        &MetaSpec::new("myos", "1.0", "1"),
    );
    let rootfs = write_squashfs_rootfs(&scratch.join("myos.squashfs"), "myos-1");
    let fingerprint = sha256_of(&[&meta, &rootfs]);

    // The rootfs first: the import tells which file is which.
    let (code, answer) = import(
        &site,
        &[&rootfs, &meta],
        &[("alias", "myos/latest"), ("alias", "mine")],
        Some(TOKEN),
    );
    assert_eq!(code, 201, "{answer:#}");
    let version_dir = format!("images/myos/1.0/amd64/default/{VERSION}");
    assert_eq!(answer["path"], version_dir);
    assert_eq!(answer["product"], "myos:1.0:amd64:default");
    assert_eq!(answer["version"], VERSION);
    assert_eq!(answer["changed"], true);
    assert_eq!(answer["published"], true, "{answer:#}");
    assert_eq!(
        fingerprints(&answer),
        [(fingerprint.clone(), "container".to_owned())]
    );

    // No polling: the answer came after the re-index.
    let items = items(&site, "myos:1.0:amd64:default");
    assert_eq!(
        items["incus.tar.xz"]["combined_squashfs_sha256"],
        fingerprint.as_str()
    );
    assert_eq!(
        items["lxd.tar.xz"]["combined_squashfs_sha256"],
        fingerprint.as_str()
    );
    assert_eq!(
        std::fs::read(site.www.join(&version_dir).join("rootfs.squashfs")).unwrap(),
        std::fs::read(&rootfs).unwrap()
    );
    let catalog = site.catalog().unwrap();
    let aliases = catalog["products"]["myos:1.0:amd64:default"]["aliases"]
        .as_str()
        .unwrap()
        .to_owned();
    let aliases: Vec<&str> = aliases.split(',').collect();
    for alias in ["myos/1.0/default", "myos/1.0", "myos/latest", "mine"] {
        assert!(aliases.contains(&alias), "{alias} not in {aliases:?}");
    }
    assert_staging_empty(&site);

    let before = catalog_bytes(&site);
    let (code, again) = import(&site, &[&meta, &rootfs], &[], Some(TOKEN));
    assert_eq!(code, 200, "{again:#}");
    assert_eq!(again["changed"], false);
    assert!(
        again["message"]
            .as_str()
            .unwrap()
            .contains("nothing changed"),
        "{again:#}"
    );
    assert_eq!(again["path"], version_dir);
    assert_eq!(again["published"], true);
    assert_eq!(
        fingerprints(&again),
        [(fingerprint, "container".to_owned())]
    );
    assert_eq!(catalog_bytes(&site), before, "nothing was re-published");
    assert_staging_empty(&site);
}

#[test]
fn a_unified_tarball_is_published_split_and_whole() {
    let site = start();
    let scratch = scratch(&site);
    let unified = write_unified_tar_gz(
        &scratch.join("export.tar.gz"),
        &MetaSpec::new("uni", "2", "1"),
        "uni-2",
    );
    let (code, answer) = import(&site, &[&unified], &[("variant", "exported")], Some(TOKEN));
    assert_eq!(code, 201, "{answer:#}");
    let version_dir = site
        .www
        .join(format!("images/uni/2/amd64/exported/{VERSION}"));
    assert_eq!(
        answer["path"],
        format!("images/uni/2/amd64/exported/{VERSION}")
    );
    assert_eq!(answer["product"], "uni:2:amd64:exported");
    let split = sha256_of(&[
        &version_dir.join("incus.tar.xz"),
        &version_dir.join("rootfs.tar.xz"),
    ]);
    let whole = sha256_of(&[&unified]);
    let mut want = vec![
        (split.clone(), "container".to_owned()),
        (whole.clone(), "container".to_owned()),
    ];
    want.sort();
    assert_eq!(fingerprints(&answer), want);

    let items = items(&site, "uni:2:amd64:exported");
    assert_eq!(
        items["incus.tar.xz"]["combined_rootxz_sha256"],
        split.as_str()
    );
    assert_eq!(items["incus_combined.tar.gz"]["sha256"], whole.as_str());
    assert_eq!(items["lxd_combined.tar.gz"]["sha256"], whole.as_str());
    assert_eq!(
        std::fs::read(version_dir.join("incus_combined.tar.gz")).unwrap(),
        std::fs::read(&unified).unwrap()
    );
    assert_staging_empty(&site);
}

/// With the watcher on: an import's re-index hashes the image's product alone, and the
/// watcher, which sees the files arrive, asks for no second run; nor after aliases added to an
/// image already there.
#[test]
fn an_import_re_indexes_its_product_alone_and_once() {
    let site = Site::start(&[], &[]);
    let scratch = scratch(&site);
    let (meta_a, root_a) = quick_split(&scratch.join("a"), "impa", b"first");
    let (meta_b, root_b) = quick_split(&scratch.join("b"), "impb", b"second");
    let (code, answer) = import(&site, &[&meta_a, &root_a], &[], Some(TOKEN));
    assert_eq!(code, 201, "{answer:#}");
    // The first import's runs (the watcher's too, if it asked) are over before the next.
    site.server.settle();
    let before = site.server.said().len();
    let (code, answer) = import(&site, &[&meta_b, &root_b], &[], Some(TOKEN));
    assert_eq!(code, 201, "{answer:#}");
    assert_eq!(answer["published"], true, "{answer:#}");
    let (code, answer) = import(&site, &[&meta_b, &root_b], &[("alias", "bee")], Some(TOKEN));
    assert_eq!(code, 200, "{answer:#}");
    let catalog = site.catalog().unwrap();
    let aliases = catalog["products"]["impb:1.0:amd64:default"]["aliases"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(aliases.split(',').any(|a| a == "bee"), "{aliases}");
    let runs = site.server.settled_runs_since(before);
    assert_eq!(runs.len(), 2, "{runs:#?}");
    assert!(
        runs[0].contains("re-indexed (imported images/impb/"),
        "{runs:#?}"
    );
    assert!(
        runs[1].contains("re-indexed (aliases for images/impb/"),
        "{runs:#?}"
    );
    for line in runs {
        assert!(line.contains("1 product folder(s) hashed"), "{line}");
    }
}

#[test]
fn imports_need_the_write_token() {
    let site = start();
    let scratch = scratch(&site);
    let (meta, root) = quick_split(&scratch, "tok", b"bytes");
    let before = catalog_bytes(&site);
    for token in [None, Some("not-the-token")] {
        let (code, answer) = import(&site, &[&meta, &root], &[], token);
        assert_eq!(code, 401, "{token:?}: {answer:#}");
        assert!(
            answer["error"].as_str().unwrap().contains("token"),
            "{answer:#}"
        );
    }
    assert!(!site.www.join("images").exists(), "nothing placed");
    assert_staging_empty(&site);
    assert_eq!(catalog_bytes(&site), before);
}

/// A request that must be refused with a 400 saying `says`.
struct Case<'a> {
    what: &'a str,
    files: &'a [&'a Path],
    fields: &'a [(&'a str, &'a str)],
    says: &'a str,
}

#[test]
fn bad_imports_are_refused_and_leave_everything_as_it_was() {
    let site = start();
    let scratch = scratch(&site);
    let (meta, root) = quick_split(&scratch, "bad", b"bytes");
    let garbage = scratch.join("garbage.bin");
    std::fs::write(&garbage, b"just some bytes, no image").unwrap();
    let no_os = write_metadata_tarball(
        &scratch.join("no-os.tar.xz"),
        &MetaSpec::new("", "1.0", "1"),
    );
    let unified = write_unified_tar_gz(
        &scratch.join("u.tar.gz"),
        &MetaSpec::new("cut", "1", "1"),
        "cut",
    );
    let bytes = std::fs::read(&unified).unwrap();
    let truncated = scratch.join("truncated.tar.gz");
    std::fs::write(&truncated, &bytes[..bytes.len() * 2 / 3]).unwrap();

    let before_catalog = catalog_bytes(&site);
    let before_files = files_under(&site.www);
    let cases = [
        Case {
            what: "three files",
            files: &[&meta, &root, &garbage],
            fields: &[],
            says: "a third file part",
        },
        Case {
            what: "no file",
            files: &[],
            fields: &[("variant", "x")],
            says: "no file part",
        },
        Case {
            what: "garbage",
            files: &[&garbage],
            fields: &[],
            says: "garbage.bin: not a metadata tarball",
        },
        Case {
            what: "two rootfs",
            files: &[&root, &root],
            fields: &[],
            says: "is a metadata tarball",
        },
        Case {
            what: "metadata alone",
            files: &[&meta],
            fields: &[],
            says: "neither rootfs/ nor rootfs.img",
        },
        Case {
            what: "no os",
            files: &[&no_os, &root],
            fields: &[],
            says: "no-os.tar.xz: metadata.yaml property `os`",
        },
        Case {
            what: "truncated",
            files: &[&truncated],
            fields: &[],
            says: "truncated.tar.gz",
        },
        Case {
            what: "bad alias",
            files: &[&meta, &root],
            fields: &[("alias", "has space")],
            says: "alias `has space`",
        },
        Case {
            what: "bad variant",
            files: &[&meta, &root],
            fields: &[("variant", "../up")],
            says: "`variant`",
        },
        Case {
            what: "unknown field",
            files: &[&meta, &root],
            fields: &[("aliases", "x")],
            says: "field `aliases`: unknown",
        },
        Case {
            what: "variant twice",
            files: &[&meta, &root],
            fields: &[("variant", "a"), ("variant", "b")],
            says: "given twice",
        },
    ];
    for Case {
        what,
        files,
        fields,
        says,
    } in cases
    {
        let (code, answer) = import(&site, files, fields, Some(TOKEN));
        assert_eq!(code, 400, "{what}: {answer:#}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(says),
            "{what}: {error:?} does not say {says:?}"
        );
        assert!(
            !error.contains(&site.www.display().to_string()),
            "{what}: the error shows server paths: {error}"
        );
        assert_staging_empty(&site);
    }
    assert_eq!(
        catalog_bytes(&site),
        before_catalog,
        "the catalog is untouched"
    );
    let mut after_files = files_under(&site.www);
    after_files.retain(|path, _| !path.starts_with(".ssb/import"));
    assert_eq!(
        after_files, before_files,
        "no file was placed or left behind"
    );
}

#[test]
fn a_different_image_in_the_same_version_is_a_clash() {
    let site = start();
    let scratch = scratch(&site);
    let (meta, root) = quick_split(&scratch, "clash", b"first");
    let (code, answer) = import(&site, &[&meta, &root], &[], Some(TOKEN));
    assert_eq!(code, 201, "{answer:#}");
    let before = catalog_bytes(&site);
    std::fs::write(&root, fake_squashfs(b"second")).unwrap();
    let (code, answer) = import(&site, &[&meta, &root], &[], Some(TOKEN));
    assert_eq!(code, 409, "{answer:#}");
    let error = answer["error"].as_str().unwrap();
    assert!(
        error.contains(&format!(
            "images/clash/1.0/amd64/default/{VERSION} already holds a different rootfs.squashfs"
        )),
        "{error}"
    );
    assert_eq!(
        std::fs::read(site.www.join(format!(
            "images/clash/1.0/amd64/default/{VERSION}/rootfs.squashfs"
        )))
        .unwrap(),
        fake_squashfs(b"first")
    );
    assert_eq!(catalog_bytes(&site), before);
    assert_staging_empty(&site);
}

#[test]
fn the_import_path_takes_only_post() {
    let site = start();
    let (code, body) = site.curl(&[
        "-X",
        "PUT",
        "-H",
        &Site::auth(),
        "--data-binary",
        "x",
        &format!("{}/import", site.url()),
    ]);
    assert_eq!(code, 405, "{body}");
    assert!(body.contains("allowed: POST"), "{body}");
    // Not an upload into a folder named import, with or without the slash.
    let scratch = scratch(&site);
    std::fs::write(scratch.join("rootfs.squashfs"), fake_squashfs(b"")).unwrap();
    let (code, body) = site.curl(&[
        "-H",
        &Site::auth(),
        "-F",
        &format!("file=@{}", scratch.join("rootfs.squashfs").display()),
        &format!("{}/import/", site.url()),
    ]);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("cannot import"), "{body}");
    assert!(!site.www.join("import").exists());
}

#[test]
fn a_tree_yml_server_refuses_imports() {
    let dir = TempDir::with_prefix("ssb-import-").unwrap();
    let www = dir.path().join("www");
    std::fs::create_dir_all(www.join("demo/one")).unwrap();
    write_text(
        &dir.path().join("tree.yml"),
        "products:\n\
         \x20 - name: demo:1:amd64:default\n\
         \x20   arch: amd64\n\
         \x20   release: \"1\"\n\
         \x20   os: Demo\n\
         \x20   directory: demo/one\n\
         \x20 - name: legacy:1:amd64:default\n\
         \x20   arch: amd64\n\
         \x20   release: \"1\"\n\
         \x20   os: Legacy\n\
         \x20   directory: import/legacy\n",
    );
    let site = Site::start_in(dir, www, &["--no-watch"], &[]);
    // A product folder under a reserved top-level name is unreachable: said at start-up.
    site.server
        .wait_said(&["legacy:1:amd64:default", "reserves"]);
    let scratch = scratch(&site);
    let (meta, root) = quick_split(&scratch, "demo", b"bytes");
    let (code, answer) = import(&site, &[&meta, &root], &[], Some(TOKEN));
    assert_eq!(code, 409, "{answer:#}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("imports need the layout mode"),
        "{answer:#}"
    );
    assert!(!site.www.join("images").exists());
    assert_staging_empty(&site);
}

/// A part without a file name is a text field; an empty file part is still a file.
#[test]
fn an_empty_file_part_is_not_an_image() {
    let site = start();
    let form = Form::new().part("file", Part::bytes(Vec::new()).file_name("empty.tar.gz"));
    let (code, answer) = send(&site, form, Some(TOKEN));
    assert_eq!(code, 400, "{answer:#}");
    assert!(
        answer["error"].as_str().unwrap().contains("empty.tar.gz"),
        "{answer:#}"
    );
    assert_staging_empty(&site);
}

#[test]
fn each_file_is_held_to_the_upload_limit() {
    let site = Site::start(&["--no-watch", "--max-upload-size", "1K"], &[]);
    let scratch = scratch(&site);
    let (meta, root) = quick_split(&scratch, "big", &[7u8; 4096]);
    let before = catalog_bytes(&site);
    let (code, answer) = import(&site, &[&meta, &root], &[], Some(TOKEN));
    assert_eq!(code, 413, "{answer:#}");
    assert!(
        answer["error"].as_str().unwrap().contains("1024 bytes"),
        "{answer:#}"
    );
    assert!(!site.www.join("images").exists());
    assert_eq!(catalog_bytes(&site), before);
    assert_staging_empty(&site);
}

/// What the answer promises: the real clients list the image as soon as it comes.
#[test]
fn incus_and_lxc_list_an_imported_image_at_once() {
    let site = start();
    let needed = [Program::Incus, Program::Lxc, Program::Mksquashfs];
    let Some(clients) = Clients::detect(&site.ca, &needed) else {
        return;
    };
    let scratch = scratch(&site);
    let meta = write_metadata_tarball(
        &scratch.join("lxd.tar.xz"),
        &MetaSpec::new("listed", "2", "1"),
    );
    let rootfs = write_squashfs_rootfs(&scratch.join("rootfs.squashfs"), "listed-2");
    let fingerprint = sha256_of(&[&meta, &rootfs]);
    let (code, answer) = import(&site, &[&meta, &rootfs], &[], Some(TOKEN));
    assert_eq!(code, 201, "{answer:#}");
    for client in Client::BOTH {
        clients.remote_add(client, "imp", site.url());
        let listed = clients.image_list(client, "imp");
        assert!(
            listed.iter().any(|i| i.fingerprint == fingerprint),
            "{client:?} does not list {fingerprint}: {listed:?}"
        );
    }
}
