//! The catalog as a web page, in a real browser (headless Debian Chromium): served by `serve`
//! to a browser (curl still gets the short note), and written by `publish` as a static
//! `index.html`. Every product and alias is on it, the filter hides and shows rows, a
//! `<script>` in a product's text is shown as text and never runs; screenshots at desktop and
//! phone width.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use crate::common::command::run_ok;
use crate::common::fixtures::{MetaSpec, write_metadata_tarball, write_squashfs_rootfs};
use crate::common::server::TestServer;
use crate::common::ssb;
use crate::common::tls::TestCa;

const EVIL: &str = "<script>document.title='pwned'</script>";

fn chromium() -> Option<PathBuf> {
    let found = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file());
    if found.is_none() {
        let msg = "SKIPPED the page tests: chromium is not installed";
        assert!(
            std::env::var(crate::common::clients::REQUIRE_ENV).as_deref() != Ok("1"),
            "{msg}"
        );
        eprintln!("{msg}");
    }
    found
}

/// Headless Chromium, as the workplace's machines allow it, with its own profile.
fn browser(chromium: &Path, profile: &Path) -> Command {
    let mut cmd = Command::new(chromium);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        // The test CA is not in Chromium's store; what is tested is the page, not TLS.
        "--ignore-certificate-errors",
        "--virtual-time-budget=3000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    cmd
}

/// The DOM after the page's script ran.
fn dom(chromium: &Path, profile: &Path, url: &str) -> String {
    let out = browser(chromium, profile)
        .args(["--dump-dom", url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chromium --dump-dom {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn screenshot(chromium: &Path, profile: &Path, url: &str, size: &str, out: &Path) {
    let status = browser(chromium, profile)
        .arg(format!("--screenshot={}", out.display()))
        .arg(format!("--window-size={size}"))
        .arg(url)
        .output()
        .unwrap();
    assert!(status.status.success(), "screenshot of {url}");
    let png = std::fs::read(out).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{}",
        out.display()
    );
}

/// A tree.yml tree of three products, one of them with a script in its texts and aliases.
fn tree(dir: &Path) -> PathBuf {
    let www = dir.join("www");
    let products = [
        (
            "alpine:3.20:amd64:default",
            "Alpine",
            "3.20",
            "alpine",
            "alpine/3.20",
        ),
        (
            "debian:12:arm64:cloud",
            "Debian",
            "12",
            "debian",
            "debian/12/cloud",
        ),
        ("evil:1:amd64:default", EVIL, EVIL, "evil", "evil/1"),
    ];
    let mut yml = String::from("products:\n");
    for (name, os, title, folder, alias) in products {
        let arch = name.split(':').nth(2).unwrap();
        yml.push_str(&format!(
            "  - name: {name}\n    arch: {arch}\n    os: \"{os}\"\n    release: \"1\"\n    release_title: \"{title}\"\n    directory: {folder}\n    aliases: [\"{alias}\"]\n"
        ));
        for version in ["20250101_10:00", "20250102_10:00"] {
            let v = www.join(folder).join(version);
            let mut spec = MetaSpec::new(folder, "1", version);
            if arch == "arm64" {
                spec.arch = "aarch64".into();
            }
            write_metadata_tarball(&v.join("incus.tar.xz"), &spec);
            write_squashfs_rootfs(&v.join("rootfs.squashfs"), &format!("{name}{version}"));
        }
    }
    std::fs::write(dir.join("tree.yml"), yml).unwrap();
    run_ok(
        ssb(dir)
            .args(["-c", "tree.yml", "-t"])
            .arg(&www)
            .arg("publish"),
        Duration::from_secs(120),
    );
    www
}

fn rows(dom: &str) -> Vec<(String, bool)> {
    dom.split("<tr class=\"image\"")
        .skip(1)
        .map(|row| {
            let head = &row[..row.find('>').unwrap()];
            let id = row
                .split("<span class=\"id\">")
                .nth(1)
                .and_then(|s| s.split('<').next())
                .unwrap()
                .to_owned();
            (id, head.contains("hidden"))
        })
        .collect()
}

#[test]
fn the_catalog_page_in_a_real_browser() {
    let Some(chromium) = chromium() else {
        return;
    };
    let dir = TempDir::with_prefix("ssb-page-").unwrap();
    let www = tree(dir.path());
    let ca = TestCa::generate();
    let server = TestServer::serve(&www, &ca);
    let profile = dir.path().join("profile");
    let shots = dir.path().join("shots");
    std::fs::create_dir_all(&shots).unwrap();

    // curl and the clients still get the note.
    let note = Command::new("curl")
        .args(["-sS", "--noproxy", "*", "--cacert"])
        .arg(ca.ca_pem())
        .arg(format!("{}/", server.url()))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&note.stdout).starts_with("This is a simplestreams image server"),
        "{}",
        String::from_utf8_lossy(&note.stdout)
    );

    let static_url = format!("file://{}", www.join("index.html").display());
    for url in [format!("{}/", server.url()), static_url.clone()] {
        let page = dom(&chromium, &profile, &url);
        // Every product and alias; the script shown as text, not run.
        for needle in [
            "alpine:3.20:amd64:default",
            "debian:12:arm64:cloud",
            "evil:1:amd64:default",
            "<code class=\"alias\">alpine/3.20</code>",
            "<code class=\"alias\">debian/12/cloud</code>",
            "&lt;script&gt;document.title='pwned'&lt;/script&gt;",
            "1 older",
        ] {
            assert!(page.contains(needle), "{url}: {needle} missing:\n{page}");
        }
        assert!(
            page.contains("<title>Image server</title>"),
            "{url}: the script ran"
        );
        // Every row shown; a filter hides the others and shows them again.
        assert!(rows(&page).iter().all(|(_, hidden)| !hidden), "{url}");
        let filtered = dom(&chromium, &profile, &format!("{url}#q=arm64"));
        let shown: Vec<String> = rows(&filtered)
            .into_iter()
            .filter(|(_, hidden)| !hidden)
            .map(|(id, _)| id)
            .collect();
        assert_eq!(shown, ["debian:12:arm64:cloud"], "{url}");
        assert!(filtered.contains("1 of 3 shown"), "{url}");
        let by_alias = dom(&chromium, &profile, &format!("{url}#q=alpine/3"));
        assert_eq!(
            rows(&by_alias)
                .into_iter()
                .filter(|(_, h)| !h)
                .map(|(id, _)| id)
                .collect::<Vec<_>>(),
            ["alpine:3.20:amd64:default"]
        );
    }
    // The served page knows this server: its address and certificate fingerprint.
    let served = dom(&chromium, &profile, &format!("{}/", server.url()));
    let host = server.url().trim_start_matches("https://");
    assert!(
        served.contains(&format!(
            "incus remote add myimages https://{host} --protocol simplestreams"
        )),
        "{served}"
    );
    assert!(
        served.contains("<code class=\"fp\">"),
        "no certificate fingerprint"
    );

    screenshot(
        &chromium,
        &profile,
        &format!("{}/", server.url()),
        "1200,900",
        &shots.join("desktop.png"),
    );
    screenshot(
        &chromium,
        &profile,
        &format!("{}/", server.url()),
        "390,844",
        &shots.join("phone.png"),
    );
    screenshot(
        &chromium,
        &profile,
        &static_url,
        "1200,900",
        &shots.join("static.png"),
    );
}
