//! Helpers shared by the integration tests: TLS material, image fixtures, the server under test,
//! the real clients and what they report.
// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

pub mod bootable;
pub mod catalog;
pub mod clients;
pub mod command;
pub mod daemon;
pub mod fixtures;
pub mod s3;
pub mod server;
pub mod site;
pub mod tls;

use std::path::{Path, PathBuf};
use std::time::Duration;

use command::run_ok;

/// Publishing a handful of tiny images is quick; this bounds a hang, not the work.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(120);

/// Prefixes of the environment variables the binary reads as settings.
const SETTINGS_PREFIXES: [&str; 3] = ["SSBUILDER_", "SSB_", "AWS_"];

/// The other variables the binary reads: the server's Mottainai-era switches, logging, the build
/// cache, the publication time and the extra CA.
const SETTINGS_VARS: [&str; 7] = [
    "ALLOW_OVERWRITES",
    "ALLOW_DELETES",
    "DEBUG",
    "RUST_LOG",
    "CACHEDIR",
    "SOURCE_DATE_EPOCH",
    "SSL_CERT_FILE",
];

/// The binary under test, run from `cwd` (which decides whether a `tree.yml` is picked up),
/// with none of the caller's settings from the environment (a test sets the ones it means on
/// the command) and no colours in its logs. Every test runs the binary through this.
pub fn ssb_command(cwd: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_simplestreams-builder"));
    for (key, _) in std::env::vars_os() {
        let name = key.to_string_lossy();
        if SETTINGS_PREFIXES.iter().any(|p| name.starts_with(p))
            || SETTINGS_VARS.contains(&name.as_ref())
        {
            cmd.env_remove(key);
        }
    }
    cmd.current_dir(cwd)
        .env("NO_COLOR", "1")
        .env("SSB_CACHE_DIR", cache_dir());
    cmd
}

/// Where the binary under test keeps its hash caches: beside the build, not in the tester's
/// home (one file per product folder, and the tests make many).
pub fn cache_dir() -> PathBuf {
    static FRESH: std::sync::Once = std::sync::Once::new();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ssb-caches");
    // Each run of the tests starts without the caches of the last one.
    FRESH.call_once(|| {
        let _ = std::fs::remove_dir_all(&dir);
    });
    dir
}

/// The hash cache file of `product_dir`, as the binary under test keeps it.
pub fn hash_cache_file(product_dir: &Path) -> PathBuf {
    simplestreams_builder::hash::CacheDir::new(cache_dir().join("hash"))
        .file_for(product_dir)
        .expect("a cache folder is set")
}

/// [`ssb_command`] run from the repository (no tree.yml there: layout mode unless `-c`).
pub fn ssb_in_repo() -> assert_cmd::Command {
    ssb(Path::new(env!("CARGO_MANIFEST_DIR")))
}

/// [`ssb_command`] with a deadline-capable runner.
pub fn ssb(cwd: &Path) -> assert_cmd::Command {
    assert_cmd::Command::from_std(ssb_command(cwd))
}

/// `publish -t DIR` in layout mode: `cwd` must hold no `tree.yml`.
pub fn publish_layout(cwd: &Path, target: &Path) {
    assert!(
        !cwd.join("tree.yml").exists(),
        "layout mode needs a cwd without tree.yml"
    );
    publish(ssb(cwd).arg("publish").arg("-t").arg(target), target);
}

/// `publish -c TREE_YML -t DIR`.
pub fn publish_tree(cwd: &Path, tree_yml: &Path, target: &Path) {
    publish(
        ssb(cwd)
            .arg("publish")
            .arg("-c")
            .arg(tree_yml)
            .arg("-t")
            .arg(target),
        target,
    );
}

/// Whether the tests run as root (real uid 0, as `/proc/self/status` says).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
    })
}

/// Runs a publish command, which must succeed and leave an index behind.
fn publish(cmd: &mut assert_cmd::Command, target: &Path) {
    let output = run_ok(cmd, PUBLISH_TIMEOUT);
    let index = target.join("streams/v1/index.json");
    assert!(
        index.is_file(),
        "`{}` exited 0 but wrote no {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        command::command_line(cmd),
        index.display(),
        String::from_utf8_lossy(&output.stdout).trim_end(),
        String::from_utf8_lossy(&output.stderr).trim_end(),
    );
}
