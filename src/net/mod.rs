//! HTTP clients for what a tree takes from other servers (remote manifests, mirror pulls): the
//! system's roots plus the certificates the user trusts (`--ca-cert`, `SSL_CERT_FILE`), with
//! one addition the Go clients (LXD, Incus) have and webpki lacks: a server whose end-entity
//! certificate is exactly one of the trusted certificates is accepted, which is how a
//! self-signed `CA:TRUE` certificate is pinned. webpki refuses that with `CaUsedAsEndEntity`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// Which certificates a client trusts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Trust {
    /// PEM files of extra trusted certificates: CAs, or a server's own certificate (pinned).
    pub extra: Vec<PathBuf>,
    /// Verify nothing (the content is still checked against its sha256 where that applies).
    pub insecure: bool,
}

/// The trust settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// A PEM file that cannot be read or holds no certificate.
    #[error("cannot use the CA certificate {}: {reason}", path.display())]
    CaCert {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The system's roots or the TLS configuration are unusable.
    #[error("cannot set up TLS: {0}")]
    Tls(String),
}

/// `builder` set up to verify servers by `trust`; `http1_only` for clients that never speak
/// HTTP/2 (so TLS never offers it).
pub fn with_trust(
    builder: reqwest::ClientBuilder,
    trust: &Trust,
    http1_only: bool,
) -> Result<reqwest::ClientBuilder, TrustError> {
    if trust.insecure {
        return Ok(builder.danger_accept_invalid_certs(true));
    }
    let mut pinned = Vec::new();
    for path in &trust.extra {
        pinned.extend(read_certs(path)?);
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let inner =
        rustls_platform_verifier::Verifier::new_with_extra_roots(pinned.clone(), provider.clone())
            .map_err(|e| TrustError::Tls(e.to_string()))?;
    let verifier = PinnedOrChain {
        inner: Arc::new(inner),
        pinned,
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TrustError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = if http1_only {
        vec![b"http/1.1".to_vec()]
    } else {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    };
    Ok(builder.use_preconfigured_tls(config))
}

/// Whether a request failed because the server's certificate is not trusted: a permanent
/// failure, not worth a retry.
pub fn is_certificate_error(e: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        let tls = s.downcast_ref::<rustls::Error>().or_else(|| {
            s.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if matches!(tls, Some(rustls::Error::InvalidCertificate(_))) {
            return true;
        }
        source = s.source();
    }
    false
}

/// The certificates of a PEM file.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TrustError> {
    let fail = |reason: String| TrustError::CaCert {
        path: path.to_owned(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(format!("not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(fail("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// The platform's chain verification, after one check of our own: an end-entity certificate
/// that is byte for byte a trusted one, and valid for the server's name, is accepted as is.
#[derive(Debug)]
struct PinnedOrChain {
    inner: Arc<rustls_platform_verifier::Verifier>,
    pinned: Vec<CertificateDer<'static>>,
}

impl ServerCertVerifier for PinnedOrChain {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self
            .pinned
            .iter()
            .any(|c| c.as_ref() == end_entity.as_ref())
        {
            let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_name(&parsed, server_name)?;
            check_validity(end_entity, now)?;
            return Ok(ServerCertVerified::assertion());
        }
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The certificate's validity period holds `now`: a pinned certificate is trusted as it is,
/// but not once it has expired (nor before it is valid), as the Go clients decide too.
fn check_validity(cert: &CertificateDer<'_>, now: UnixTime) -> Result<(), rustls::Error> {
    use rustls::CertificateError;
    let bad = rustls::Error::InvalidCertificate;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|_| bad(CertificateError::BadEncoding))?;
    let seconds = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    let validity = parsed.validity();
    if seconds < validity.not_before.timestamp() {
        return Err(bad(CertificateError::NotValidYet));
    }
    if seconds > validity.not_after.timestamp() {
        return Err(bad(CertificateError::Expired));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pinned_self_signed_ca_certificate_verifies_for_its_names_only() {
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let der = CertificateDer::from(cert.der().to_vec());
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = PinnedOrChain {
            inner: Arc::new(
                rustls_platform_verifier::Verifier::new_with_extra_roots(
                    vec![der.clone()],
                    provider,
                )
                .unwrap(),
            ),
            pinned: vec![der.clone()],
        };
        let now = UnixTime::now();
        for name in ["localhost", "127.0.0.1"] {
            let name = ServerName::try_from(name).unwrap();
            verifier
                .verify_server_cert(&der, &[], &name, &[], now)
                .unwrap_or_else(|e| panic!("{name:?}: {e}"));
        }
        let other = ServerName::try_from("example.org").unwrap();
        assert!(
            verifier
                .verify_server_cert(&der, &[], &other, &[], now)
                .is_err()
        );
        // Past its end (rcgen's default: valid until 4096), it is not trusted any more.
        let name = ServerName::try_from("localhost").unwrap();
        let later = UnixTime::since_unix_epoch(std::time::Duration::from_secs(1 << 37));
        let err = verifier
            .verify_server_cert(&der, &[], &name, &[], later)
            .unwrap_err();
        assert!(err.to_string().contains("Expired"), "{err}");
    }
}
