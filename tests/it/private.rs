//! Private catalogs: `serve --read-users FILE`. Each user, through the real Incus and LXD
//! clients with `https://USER:TOKEN@HOST` remotes (or curl with a bearer token), sees exactly
//! its products and the public ones, can export those and nothing else; a wrong token and an
//! address that keeps failing are refused; the users file is picked up when it changes;
//! nothing filtered and no credential reaches the disk or the log.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::common::catalog::ImageType;
use crate::common::clients::{Client, Clients, Program};
use crate::common::command::run_ok;
use crate::common::fixtures::{MetaSpec, write_metadata_tarball, write_squashfs_rootfs};
use crate::common::server::TestServer;
use crate::common::ssb;
use crate::common::tls::TestCa;

const V: &str = "20250101_10:00";

fn files_under(root: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.insert(e.path().strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    out
}

fn users_add(dir: &Path, file: &Path, name: &str, products: &[&str]) -> String {
    let mut cmd = ssb(dir);
    cmd.args(["users", "add", name, "--file"]).arg(file);
    for p in products {
        cmd.args(["--products", p]);
    }
    let out = run_ok(&mut cmd, Duration::from_secs(30));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(token.len(), 64, "stdout is the token alone: {token}");
    token
}

/// `curl` with the test CA and `args`; (status, body).
fn curl(ca: &TestCa, args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--noproxy", "*", "--cacert"])
        .arg(ca.ca_pem())
        .args(["-w", "\n%{http_code}"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), body.to_owned())
}

#[test]
fn each_reader_sees_exactly_its_products() {
    let ca = TestCa::generate();
    let Some(clients) = Clients::detect(&ca, &[Program::Incus, Program::Lxc]) else {
        return;
    };
    let dir = TempDir::with_prefix("ssb-private-").unwrap();
    let www = dir.path().join("www");
    for os in ["alpine", "debian", "ubuntu"] {
        let v = www.join(format!("images/{os}/1/amd64/default/{V}"));
        write_metadata_tarball(&v.join("incus.tar.xz"), &MetaSpec::new(os, "1", V));
        write_squashfs_rootfs(&v.join("rootfs.squashfs"), os);
    }
    run_ok(
        ssb(dir.path()).arg("-t").arg(&www).arg("publish"),
        Duration::from_secs(60),
    );
    let users = dir.path().join("users.yml");
    let alice = users_add(dir.path(), &users, "alice", &["alpine:*"]);
    let bob = users_add(dir.path(), &users, "bob", &[]);
    let mut text = std::fs::read_to_string(&users).unwrap();
    text.push_str("public: [\"ubuntu:*\"]\n");
    std::fs::write(&users, text).unwrap();
    let listed = run_ok(
        ssb(dir.path())
            .args(["users", "list", "--file"])
            .arg(&users),
        Duration::from_secs(30),
    );
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.contains("alice\talpine:*") && listed.contains("bob\t*"),
        "{listed}"
    );
    assert!(!listed.contains(&alice), "list shows no token");

    let before = files_under(&www);
    let server = TestServer::serve_from(
        dir.path(),
        &www,
        &ca,
        &[OsStr::new("--read-users"), users.as_os_str()],
    );
    let url = server.url().to_owned();
    let host = url.trim_start_matches("https://");
    let index = format!("{url}/streams/v1/index.json");
    let products = |auth: &[&str]| -> BTreeSet<String> {
        let mut args = auth.to_vec();
        args.push(&index);
        let (code, body) = curl(&ca, &args);
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["index"]["images"]["products"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap().split(':').next().unwrap().to_owned())
            .collect()
    };
    let set = |names: &[&str]| {
        names
            .iter()
            .map(|s| (*s).to_owned())
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(
        products(&[]),
        set(&["ubuntu"]),
        "anonymous: the public ones"
    );
    let alice_auth = format!("alice:{alice}");
    assert_eq!(products(&["-u", &alice_auth]), set(&["alpine", "ubuntu"]));
    let bearer = format!("Authorization: Bearer {bob}");
    assert_eq!(
        products(&["-H", &bearer]),
        set(&["alpine", "debian", "ubuntu"])
    );
    // Files of products one may not see are not there, whether they exist or not.
    let file = |os: &str| format!("{url}/images/{os}/1/amd64/default/{V}/rootfs.squashfs");
    assert_eq!(
        curl(
            &ca,
            &["-u", &alice_auth, "-o", "/dev/null", &file("alpine")]
        )
        .0,
        200
    );
    assert_eq!(
        curl(
            &ca,
            &["-u", &alice_auth, "-o", "/dev/null", &file("debian")]
        )
        .0,
        404
    );
    assert_eq!(
        curl(
            &ca,
            &["-u", &alice_auth, "-o", "/dev/null", &file("nothere")]
        )
        .0,
        404
    );
    assert_eq!(
        curl(&ca, &["-u", &alice_auth, &format!("{url}/index.html")]).0,
        404
    );
    let (code, page) = curl(
        &ca,
        &[
            "-u",
            &alice_auth,
            "-H",
            "Accept: text/html",
            &format!("{url}/"),
        ],
    );
    assert_eq!(code, 200);
    assert!(
        page.contains("alpine/1") && !page.contains("debian/1"),
        "{page}"
    );
    assert_eq!(curl(&ca, &["-u", "alice:wrong", &index]).0, 401);
    // The direct-URL import: a hidden product's alias does not exist for alice, not even by
    // its architectures; hers resolves, and the unified tarball it names is hers to fetch.
    let arch = "Incus-Server-Architectures: i686";
    let (code, body) = curl(
        &ca,
        &[
            "-u",
            &alice_auth,
            "-H",
            arch,
            &format!("{url}/direct/debian/1"),
        ],
    );
    assert_eq!(code, 404, "{body}");
    assert!(
        !body.contains("x86_64") && !body.contains("amd64"),
        "{body}"
    );
    let out = Command::new("curl")
        .args([
            "-sS",
            "--noproxy",
            "*",
            "-D",
            "-",
            "-o",
            "/dev/null",
            "--cacert",
        ])
        .arg(ca.ca_pem())
        .args([
            "-u",
            &alice_auth,
            "-H",
            "Incus-Server-Architectures: x86_64",
        ])
        .arg(format!("{url}/direct/alpine/1"))
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&out.stdout).to_lowercase();
    let image_url = head
        .lines()
        .find_map(|l| l.strip_prefix("incus-image-url: "))
        .unwrap_or_else(|| panic!("no image URL: {head}"))
        .trim()
        .to_owned();
    assert_eq!(
        curl(&ca, &["-u", &alice_auth, "-o", "/dev/null", &image_url]).0,
        200
    );
    assert_eq!(
        curl(&ca, &["-o", "/dev/null", &image_url]).0,
        404,
        "anonymous"
    );

    // The real clients, with the credentials in the remote's URL.
    for client in Client::BOTH {
        let remote = format!("{}-alice", client.name());
        clients.remote_add(client, &remote, &format!("https://alice:{alice}@{host}"));
        let aliases: BTreeSet<String> = clients
            .image_list(client, &remote)
            .into_iter()
            .flat_map(|i| i.aliases)
            .collect();
        assert!(
            aliases.contains("alpine/1") && aliases.contains("ubuntu/1"),
            "{client:?}: {aliases:?}"
        );
        assert!(
            !aliases.iter().any(|a| a.starts_with("debian")),
            "{client:?}: {aliases:?}"
        );
        let out = dir.path().join(format!("export-{}", client.name()));
        let files = clients.image_export(client, &remote, "alpine/1", ImageType::Container, &out);
        assert!(!files.is_empty(), "{client:?} exported nothing");
        let refused = clients
            .command(client.program())
            .args(["image", "export", "-q", &format!("{remote}:debian/1")])
            .arg(dir.path().join("nope"))
            .output()
            .unwrap();
        assert!(
            !refused.status.success(),
            "{client:?} exported a hidden image"
        );
        // Without credentials: the public products only.
        let anon = format!("{}-anon", client.name());
        clients.remote_add(client, &anon, &url);
        let aliases: BTreeSet<String> = clients
            .image_list(client, &anon)
            .into_iter()
            .flat_map(|i| i.aliases)
            .collect();
        assert!(
            aliases.contains("ubuntu/1") && !aliases.iter().any(|a| !a.starts_with("ubuntu")),
            "{client:?} anonymous: {aliases:?}"
        );
        let wrong = format!("{}-wrong", client.name());
        clients
            .command(client.program())
            .args([
                "remote",
                "add",
                &wrong,
                &format!("https://alice:wrong@{host}"),
                "--protocol",
                "simplestreams",
            ])
            .output()
            .unwrap();
        let listed = clients
            .command(client.program())
            .args(["image", "list", &format!("{wrong}:")])
            .output()
            .unwrap();
        assert!(
            !listed.status.success(),
            "{client:?}: a wrong token listed images"
        );
    }

    // A removed user is refused once the server has read the file again.
    run_ok(
        ssb(dir.path())
            .args(["users", "remove", "bob", "--file"])
            .arg(&users),
        Duration::from_secs(30),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while curl(&ca, &["-H", &bearer, "-o", "/dev/null", &index]).0 != 401 {
        assert!(
            Instant::now() < deadline,
            "bob still reads after his removal"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Nothing filtered was written (the direct import's unified tarball is an image cache, the
    // same for everyone), and no token was logged.
    let after: BTreeSet<String> = files_under(&www)
        .into_iter()
        .filter(|f| !f.contains("/.ssb-unified."))
        .collect();
    assert_eq!(after, before);
    let log = server.wait_said(&["failed read login as `alice`"]);
    for token in [&alice, &bob] {
        assert!(!log.contains(token.as_str()), "a token is in the log");
    }

    // An address that keeps failing is refused for a while, even with a good token.
    let mut codes = Vec::new();
    for _ in 0..12 {
        codes.push(curl(&ca, &["-u", "alice:bad", "-o", "/dev/null", &index]).0);
    }
    assert!(codes.contains(&429), "{codes:?}");
    assert_eq!(
        curl(&ca, &["-u", &alice_auth, "-o", "/dev/null", &index]).0,
        429
    );
}

#[test]
fn a_bad_users_file_stops_the_server_with_its_name() {
    let dir = TempDir::with_prefix("ssb-private-bad-").unwrap();
    let www = dir.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    let users = dir.path().join("users.yml");
    let hash = "0".repeat(64);
    for (text, says) in [
        ("users: [".to_owned(), "not a users file"),
        (
            format!(
                "users:\n  - name: a\n    token_sha256: {hash}\n    products: [\"*\"]\n    role: admin\n"
            ),
            "unknown field",
        ),
        (
            format!(
                "users:\n  - name: a\n    token_sha256: {hash}\n    products: [\"*\"]\n  - name: a\n    token_sha256: {hash}\n    products: [\"*\"]\n"
            ),
            "listed twice",
        ),
    ] {
        std::fs::write(&users, text).unwrap();
        let out = ssb(dir.path())
            .arg("-t")
            .arg(&www)
            .args(["serve", "--http", "--listen", "127.0.0.1:0", "--read-users"])
            .arg(&users)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(says) && err.contains("users.yml"),
            "{says}: {err}"
        );
    }
}

/// The daemons copy and launch what a reader may see through a `https://USER:TOKEN@HOST`
/// remote, and are refused the rest.
fn daemon_copies_only_what_its_reader_sees(kind: crate::common::daemon::Kind) {
    use crate::common::bootable::{busybox_rootfs, have_busybox, pack_squashfs, skip};
    if !have_busybox() {
        skip(
            &format!("{kind:?} private copy"),
            "busybox-static is missing",
        );
        return;
    }
    let ca = TestCa::generate();
    let Some(daemon) = crate::common::daemon::Daemon::start(kind, &ca) else {
        return;
    };
    let dir = TempDir::with_prefix("ssb-private-daemon-").unwrap();
    let www = dir.path().join("www");
    let pretty = format!("SSB private {}", std::process::id());
    for os in ["open", "secret"] {
        let v = www.join(format!("images/{os}/1/amd64/default/{V}"));
        let rootfs = busybox_rootfs(&dir.path().join(os), &pretty);
        std::fs::create_dir_all(&v).unwrap();
        write_metadata_tarball(&v.join("incus.tar.xz"), &MetaSpec::new(os, "1", V));
        pack_squashfs(&rootfs, &v.join("rootfs.squashfs"));
    }
    run_ok(
        ssb(dir.path()).arg("-t").arg(&www).arg("publish"),
        Duration::from_secs(120),
    );
    let users = dir.path().join("users.yml");
    let token = users_add(dir.path(), &users, "carol", &["open:*"]);
    let server = TestServer::serve_from(
        dir.path(),
        &www,
        &ca,
        &[OsStr::new("--read-users"), users.as_os_str()],
    );
    let host = server.url().trim_start_matches("https://").to_owned();
    daemon.remote_add("priv", &format!("https://carol:{token}@{host}"));
    daemon.ok(&["image", "copy", "priv:open/1", "local:", "--alias", "open"]);
    crate::daemons::boots(&daemon, "open", "private", &pretty);
    let refused = daemon.run(
        &["image", "copy", "priv:secret/1", "local:"],
        Duration::from_secs(120),
    );
    assert!(!refused.status.success(), "{kind:?} copied a hidden image");
}

#[test]
fn incus_daemon_copies_only_what_its_reader_sees() {
    daemon_copies_only_what_its_reader_sees(crate::common::daemon::Kind::Incus);
}

#[test]
fn lxd_daemon_copies_only_what_its_reader_sees() {
    daemon_copies_only_what_its_reader_sees(crate::common::daemon::Kind::Lxd);
}
