//! A throwaway certificate authority and a server certificate it signed, as PEM files.
//!
//! The real clients trust the CA through `SSL_CERT_FILE` (Go reads it for the system pool), so
//! the server certificate is checked exactly as a production one would be: chain, SAN and TLS
//! 1.3, with no `servercerts/` pinning and no insecure switch.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tempfile::TempDir;

/// The names the server certificate is valid for: what the tests put in URLs.
pub const SERVER_NAMES: [&str; 2] = ["localhost", "127.0.0.1"];

/// `ca.pem`, `cert.pem` (server, signed by the CA) and `key.pem` in a temp dir.
pub struct TestCa {
    dir: TempDir,
}

impl TestCa {
    /// Generates a fresh CA and a server certificate for [`SERVER_NAMES`].
    pub fn generate() -> TestCa {
        let dir = TempDir::with_prefix("ssb-tls-").expect("create temp dir for TLS material");

        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "simplestreams-builder test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().expect("generate CA key");
        let ca_cert = ca_params.self_signed(&ca_key).expect("self-sign CA");
        let issuer = Issuer::new(ca_params, ca_key);

        let names: Vec<String> = SERVER_NAMES.iter().map(|n| n.to_string()).collect();
        let mut leaf_params = CertificateParams::new(names).expect("server cert params");
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, SERVER_NAMES[0]);
        leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        leaf_params.use_authority_key_identifier_extension = true;
        let leaf_key = KeyPair::generate().expect("generate server key");
        let leaf_cert = leaf_params
            .signed_by(&leaf_key, &issuer)
            .expect("sign server cert");

        let ca = TestCa { dir };
        write(&ca.ca_pem(), &ca_cert.pem());
        write(&ca.cert_pem(), &leaf_cert.pem());
        write(&ca.key_pem(), &leaf_key.serialize_pem());
        ca
    }

    /// A server certificate that is its own CA: self-signed, `CA:TRUE`, valid for
    /// [`SERVER_NAMES`], as internal servers often have. `ca.pem` is that same certificate:
    /// what a user pins. webpki refuses it as an end entity (`CaUsedAsEndEntity`); the Go
    /// clients accept it.
    pub fn self_signed_ca_server() -> TestCa {
        let dir = TempDir::with_prefix("ssb-tls-").expect("create temp dir for TLS material");
        let names: Vec<String> = SERVER_NAMES.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("cert params");
        params
            .distinguished_name
            .push(DnType::CommonName, SERVER_NAMES[0]);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("generate key");
        let cert = params.self_signed(&key).expect("self-sign");
        let ca = TestCa { dir };
        write(&ca.ca_pem(), &cert.pem());
        write(&ca.cert_pem(), &cert.pem());
        write(&ca.key_pem(), &key.serialize_pem());
        ca
    }

    /// The CA certificate: what clients must trust.
    pub fn ca_pem(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The server certificate, for `serve --tls-cert`.
    pub fn cert_pem(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    /// The server private key, for `serve --tls-key`.
    pub fn key_pem(&self) -> PathBuf {
        self.dir.path().join("key.pem")
    }
}

fn write(path: &Path, pem: &str) {
    std::fs::write(path, pem).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}
