//! TLS for the server: loading the user's PEM files, creating and reusing the self-signed
//! certificate kept under `<root>/.ssb/tls/`, the rustls configuration, and the certificate
//! fingerprint shown to users.
//!
//! LXD and Incus refuse anything below TLS 1.3 and pin a self-signed server certificate by
//! copying it to `servercerts/<remote>.crt`, then force the TLS server name to the
//! certificate's *first* DNS SAN. So the self-signed certificate always lists `localhost`
//! first, and is kept stable across restarts: a new certificate breaks every pinned client.

use std::io::Write as _;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{RootCertStore, ServerConfig};
use sha2::{Digest as _, Sha256};

use super::ServerError;

/// The folder, relative to the served root, that holds the self-signed certificate.
pub(crate) use crate::tree::names::SELF_SIGNED_DIR;

/// A certificate ready to serve: the rustls config plus what users need to trust it.
pub(crate) struct ServerCert {
    /// The PEM file users copy into `servercerts/<remote>.crt`.
    pub(crate) cert_path: PathBuf,
    pub(crate) fingerprint: Fingerprint,
    pub(crate) config: Arc<ServerConfig>,
    leaf: CertificateDer<'static>,
}

/// SHA-256 of the DER-encoded leaf certificate.
pub(crate) struct Fingerprint([u8; 32]);

impl Fingerprint {
    fn of(der: &[u8]) -> Self {
        Self(Sha256::digest(der).into())
    }

    /// `AB:CD:...`, the form browsers and `openssl x509 -fingerprint` show.
    pub(crate) fn colon_hex(&self) -> String {
        self.0
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":")
    }

    /// Plain lowercase hex, the form `incus remote list` and `lxc` use.
    pub(crate) fn plain_hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// Loads a certificate chain and private key given by the user.
pub(crate) fn load_files(cert_path: &Path, key_path: &Path) -> Result<ServerCert, ServerError> {
    let cert_pem = read(cert_path)?;
    let key_pem = read(key_path)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| parse_error(cert_path, e.to_string()))?;
    let Some(leaf) = chain.first() else {
        return Err(parse_error(cert_path, "no CERTIFICATE block found".into()));
    };
    let fingerprint = Fingerprint::of(leaf);
    let leaf = leaf.clone();
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| parse_error(key_path, format!("no usable private key: {e}")))?;
    let config = rustls_config(chain, key).map_err(|source| ServerError::TlsConfig {
        cert: cert_path.to_owned(),
        key: key_path.to_owned(),
        source,
    })?;
    Ok(ServerCert {
        cert_path: cert_path.to_owned(),
        fingerprint,
        config,
        leaf,
    })
}

/// Returns the self-signed certificate under `<root>/.ssb/tls/`, creating it on first use and
/// replacing it only when it is unusable, expired, or lacks one of `extra_sans`.
pub(crate) fn self_signed(root: &Path, extra_sans: &[String]) -> Result<ServerCert, ServerError> {
    for name in extra_sans {
        if san_server_name(name).is_none() {
            return Err(ServerError::InvalidSan { name: name.clone() });
        }
    }
    let dir = root.join(SELF_SIGNED_DIR);
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");

    if cert_path.exists() && key_path.exists() {
        match load_files(&cert_path, &key_path) {
            Ok(existing) => match uncovered_name(&existing.leaf, extra_sans) {
                None => return Ok(existing),
                Some(name) => tracing::warn!(
                    "stored certificate {} is not valid for {name}; generating a new one \
                     (clients that pinned the old one must copy the new file)",
                    cert_path.display()
                ),
            },
            // Read errors (permissions...) are the user's to fix; only a damaged or
            // mismatched pair, e.g. after a crash between the two renames, is replaced.
            Err(e @ ServerError::ReadPem { .. }) => return Err(e),
            Err(e) => tracing::warn!(
                "stored self-signed certificate is unusable ({}); generating a new one",
                crate::error_chain(&e)
            ),
        }
    }

    let names = san_list(extra_sans, host_name().as_deref());
    let (cert_pem, key_pem) = generate(&names)?;
    create_tls_dir(&dir)?;
    // The key goes first: after a crash between the two writes, the next start finds a key
    // that does not match the certificate and replaces both.
    write_atomic(&key_path, key_pem.as_bytes(), 0o600)?;
    write_atomic(&cert_path, cert_pem.as_bytes(), 0o644)?;
    tracing::info!(
        "generated self-signed certificate {} for {}",
        cert_path.display(),
        names.join(", ")
    );
    load_files(&cert_path, &key_path)
}

/// TLS 1.3 only (both Go clients refuse 1.2 unless told to be insecure), with ALPN so that
/// clients may use HTTP/2.
///
/// aws-lc seeds its random generator on first use, from CPU jitter (~37 ms of CPU here): the
/// first client's handshake took 40-42 ms instead of 3 (curl's `time_appconnect` less
/// `time_connect`, three fresh servers). Drawing a few bytes here seeds it before the first
/// connection.
fn rustls_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    provider.secure_random.fill(&mut [0; 32])?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The SANs of a new certificate, in order: `localhost` (clients force the server name to the
/// first DNS SAN), the host name, the extra names, then the loopback addresses.
fn san_list(extra_sans: &[String], host_name: Option<&str>) -> Vec<String> {
    let mut names: Vec<String> = vec!["localhost".into()];
    let candidates = host_name
        .into_iter()
        .map(str::to_owned)
        .chain(extra_sans.iter().cloned())
        .chain(["127.0.0.1".into(), "::1".into()]);
    for name in candidates {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

fn generate(names: &[String]) -> Result<(String, String), ServerError> {
    let gen_error = |source| ServerError::GenerateCert {
        names: names.to_vec(),
        source,
    };
    // `CertificateParams::new` turns each name that parses as an IP into an IP SAN and the
    // rest into DNS SANs, keeping their order.
    let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(gen_error)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "simplestreams-builder");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    // A day of slack for clocks that lag; ten years so users rarely have to re-pin.
    let now = jiff::Timestamp::now();
    let yesterday = (now - jiff::SignedDuration::from_hours(24))
        .to_zoned_datetime(jiff::tz::TimeZone::UTC)
        .date();
    params.not_before = rcgen::date_time_ymd(
        i32::from(yesterday.year()),
        yesterday.month().unsigned_abs(),
        yesterday.day().unsigned_abs(),
    );
    params.not_after = rcgen::date_time_ymd(
        i32::from(yesterday.year()) + 10,
        yesterday.month().unsigned_abs(),
        yesterday.day().unsigned_abs().min(28),
    );
    let key = rcgen::KeyPair::generate().map_err(gen_error)?;
    let cert = params.self_signed(&key).map_err(gen_error)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The first of `localhost` and `extra_sans` that a client pinning this certificate would
/// reject, checked with the same verifier logic clients use (which also catches expiry).
fn uncovered_name(leaf: &CertificateDer<'static>, extra_sans: &[String]) -> Option<String> {
    let mut roots = RootCertStore::empty();
    let verifier = roots.add(leaf.clone()).ok().and_then(|()| {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .ok()
    });
    let Some(verifier) = verifier else {
        return Some("localhost".into());
    };
    std::iter::once("localhost")
        .chain(extra_sans.iter().map(String::as_str))
        .find(|name| {
            let Some(server_name) = san_server_name(name) else {
                return true;
            };
            verifier
                .verify_server_cert(leaf, &[], &server_name, &[], UnixTime::now())
                .is_err()
        })
        .map(str::to_owned)
}

fn san_server_name(name: &str) -> Option<ServerName<'static>> {
    match name.parse::<IpAddr>() {
        Ok(ip) => Some(ServerName::IpAddress(ip.into())),
        Err(_) => ServerName::try_from(name.to_owned()).ok(),
    }
}

/// The machine's host name, if it is usable as a DNS SAN.
pub(crate) fn host_name() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .into_iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_owned())
        .find(|s| !s.is_empty())
        .filter(|s| s != "localhost" && san_server_name(s).is_some())
}

/// `.ssb` and `.ssb/tls` are created 0755 (the certificate is public); the key file itself
/// is 0600.
fn create_tls_dir(dir: &Path) -> Result<(), ServerError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|source| ServerError::WriteCert {
            path: dir.to_owned(),
            source,
        })
}

/// Temp file in the same folder, fsync, rename, fsync the folder: a crash leaves either the
/// old file or the new one, never a truncated key.
fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), ServerError> {
    let write_error = |source| ServerError::WriteCert {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = crate::tree::atomic::temp_file(dir, crate::tree::names::TEMP_PREFIX)
        .map_err(write_error)?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(write_error)?;
    tmp.write_all(contents).map_err(write_error)?;
    tmp.as_file().sync_all().map_err(write_error)?;
    tmp.persist(path).map_err(|e| write_error(e.error))?;
    crate::tree::atomic::sync_dir(dir).map_err(write_error)
}

fn read(path: &Path) -> Result<Vec<u8>, ServerError> {
    std::fs::read(path).map_err(|source| ServerError::ReadPem {
        path: path.to_owned(),
        source,
    })
}

fn parse_error(path: &Path, reason: String) -> ServerError {
    ServerError::ParsePem {
        path: path.to_owned(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn san_order_keeps_localhost_first_and_dedups() {
        let extra = vec!["images.example.org".to_owned(), "localhost".to_owned()];
        assert_eq!(
            san_list(&extra, Some("build01")),
            [
                "localhost",
                "build01",
                "images.example.org",
                "127.0.0.1",
                "::1"
            ]
        );
        assert_eq!(san_list(&[], None), ["localhost", "127.0.0.1", "::1"]);
    }

    #[test]
    fn generated_cert_covers_its_names_and_not_others() {
        let names = san_list(&["10.1.2.3".into(), "img.example".into()], None);
        let (cert_pem, _) = generate(&names).unwrap();
        let pem = &CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
        assert_eq!(uncovered_name(pem, &["img.example".into()]), None);
        assert_eq!(uncovered_name(pem, &["10.1.2.3".into()]), None);
        assert_eq!(uncovered_name(pem, &["::1".into()]), None);
        assert_eq!(
            uncovered_name(pem, &["other.example".into()]).as_deref(),
            Some("other.example")
        );
        assert_eq!(
            uncovered_name(pem, &["10.9.9.9".into()]).as_deref(),
            Some("10.9.9.9")
        );
    }

    #[test]
    fn refuses_names_no_client_could_match() {
        let root = tempfile::tempdir().unwrap();
        let result = self_signed(root.path(), &["not a host!".into()]);
        assert!(
            matches!(&result, Err(ServerError::InvalidSan { name }) if name == "not a host!"),
            "{:?}",
            result.err()
        );
        assert!(!root.path().join(SELF_SIGNED_DIR).exists());
    }

    #[test]
    fn fingerprint_formats() {
        let fp = Fingerprint([0xab; 32]);
        assert_eq!(fp.plain_hex(), "ab".repeat(32));
        assert_eq!(fp.colon_hex(), vec!["AB"; 32].join(":"));
    }
}
