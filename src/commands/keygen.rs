//! `keygen`: a signing key for `--sign-key`, and its public key for the clients.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use anyhow::{Context, Result};
use tracing::info;

use crate::cli::write_stdout;

/// The secret key (for `--sign-key`), readable by its owner only.
const SECRET: &str = "signing-key.asc";
/// The public key, armoured: `gpg --import`, or a web page.
const PUBLIC: &str = "signing-key.pub.asc";
/// The public key as binary packets: `gpgv --keyring`, `sstream-query --keyring`.
const KEYRING: &str = "signing-key.pub.gpg";

/// Makes the key and writes its three files into `out` (never over existing ones); prints the
/// fingerprint on stdout.
pub fn keygen(out: &Path, user_id: &str, passphrase: Option<&str>) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    for name in [SECRET, PUBLIC, KEYRING] {
        let path = out.join(name);
        anyhow::ensure!(
            !path.exists(),
            "{} exists already: keygen never replaces a key (move it away, or pick another --out)",
            path.display()
        );
    }
    let key = simplestreams_builder::sign::generate(user_id, passphrase)?;
    write_new(&out.join(SECRET), key.secret.as_bytes(), 0o600)?;
    write_new(&out.join(PUBLIC), key.public.as_bytes(), 0o644)?;
    write_new(&out.join(KEYRING), &key.public_binary, 0o644)?;
    info!(
        "signing key {} written to {} ({}); give clients {} (gpgv, sstream-query --keyring) or {} (gpg --import)",
        key.fingerprint,
        out.join(SECRET).display(),
        if passphrase.is_some() {
            "protected by SSB_SIGN_KEY_PASSPHRASE"
        } else {
            "no passphrase: keep the file private"
        },
        out.join(KEYRING).display(),
        out.join(PUBLIC).display(),
    );
    write_stdout(format!("{}\n", key.fingerprint).as_bytes())
}

/// Creates `path` with `mode` and `bytes`, flushed to disk; fails if it exists.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}
