//! OpenPGP signatures for the catalog: clear-signed JSON (`.sjson`, what python-simplestreams
//! verifies with `--keyring`) and detached ASCII-armoured signatures (`.asc`, what
//! images.linuxcontainers.org publishes beside LXC's index and files, checked with `gpgv`).
//!
//! The implementation is rPGP (the `pgp` crate): pure Rust, maintained, no agent, no keyring
//! and no pinentry to drive, so a passphrase comes from the settings and nothing is written
//! outside the tree. Keys it makes are v4 Ed25519 ("legacy" EdDSA), which GnuPG 2.2 (Debian 12's
//! gpgv) and every python-simplestreams verifier read.

use std::io::Read;
use std::path::{Path, PathBuf};

use pgp::composed::{
    ArmorOptions, CleartextSignedMessage, Deserializable, DetachedSignature, KeyType,
    SecretKeyParamsBuilder, SignedPublicKey, SignedSecretKey,
};
use pgp::crypto::hash::HashAlgorithm;
use pgp::ser::Serialize as _;
use pgp::types::{KeyDetails as _, Password, SigningKey};

/// A signing key that cannot be used, or a signature that cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The key file cannot be read.
    #[error("cannot read the signing key {}: {source}", path.display())]
    Read {
        /// The key file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The key file holds no usable secret key.
    #[error("signing key {}: {reason}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong, and what to do.
        reason: String,
    },
    /// A file to sign cannot be read.
    #[error("cannot sign {}: {source}", path.display())]
    Input {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Signing failed.
    #[error("cannot sign {what}: {reason}")]
    Sign {
        /// What was being signed.
        what: String,
        /// Why.
        reason: String,
    },
}

/// Which key of the secret key signs: the primary, or a signing subkey.
enum Which {
    Primary,
    Subkey(usize),
}

/// An unlocked-on-use signing key: the secret key, its passphrase, and the key that signs.
pub struct Signer {
    key: SignedSecretKey,
    password: Password,
    which: Which,
    fingerprint: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key material or the passphrase.
        f.debug_struct("Signer")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// Loads an ASCII-armoured secret key (`gpg --export-secret-keys --armor`, or `keygen`) and
    /// proves it signs with `passphrase` (none for a key without one), so a wrong or missing
    /// passphrase fails here, before anything is written.
    pub fn load(path: &Path, passphrase: Option<&str>) -> Result<Self, SignError> {
        let text = std::fs::read_to_string(path).map_err(|source| SignError::Read {
            path: path.to_owned(),
            source,
        })?;
        let bad = |reason: String| SignError::Key {
            path: path.to_owned(),
            reason,
        };
        let (key, _) = SignedSecretKey::from_string(&text).map_err(|e| {
            bad(format!(
                "not an ASCII-armoured OpenPGP secret key ({e}); export one with `gpg --export-secret-keys --armor ID` or make one with `simplestreams-builder keygen`"
            ))
        })?;
        let can_sign_primary = key
            .details
            .users
            .iter()
            .flat_map(|u| &u.signatures)
            .chain(&key.details.direct_signatures)
            .any(|s| s.key_flags().sign());
        let which = if can_sign_primary {
            Which::Primary
        } else {
            let sub = key
                .secret_subkeys
                .iter()
                .position(|s| s.signatures.iter().any(|s| s.key_flags().sign()))
                .ok_or_else(|| {
                    bad("neither the key nor any of its subkeys may sign (no signing flag)".into())
                })?;
            Which::Subkey(sub)
        };
        let encrypted = match which {
            Which::Primary => key.primary_key.secret_params().is_encrypted(),
            Which::Subkey(i) => key.secret_subkeys[i].key.secret_params().is_encrypted(),
        };
        let password = match (encrypted, passphrase) {
            (true, None) => {
                return Err(bad(
                    "the key is protected by a passphrase: give it in SSB_SIGN_KEY_PASSPHRASE"
                        .into(),
                ));
            }
            (true, Some(p)) => Password::from(p),
            (false, _) => Password::empty(),
        };
        let fingerprint = format!("{:X}", key.fingerprint());
        let signer = Self {
            key,
            password,
            which,
            fingerprint,
        };
        signer.clearsign("probe\n").map_err(|e| match e {
            SignError::Sign { reason, .. } if encrypted => bad(format!(
                "cannot unlock it with the passphrase in SSB_SIGN_KEY_PASSPHRASE ({reason})"
            )),
            SignError::Sign { reason, .. } => bad(format!("it cannot sign: {reason}")),
            other => other,
        })?;
        Ok(signer)
    }

    /// The primary key's fingerprint, upper-case hex (as `gpg --fingerprint` shows it).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    fn signing_key(&self) -> &dyn SigningKey {
        match self.which {
            Which::Primary => &self.key.primary_key,
            Which::Subkey(i) => &self.key.secret_subkeys[i].key,
        }
    }

    /// The text clear-signed (`-----BEGIN PGP SIGNED MESSAGE-----`), as `gpg --clearsign` makes
    /// it. Lines must stay short (GnuPG refuses clear-signed lines of 20,000 bytes or more), so
    /// callers sign pretty-printed JSON.
    pub fn clearsign(&self, text: &str) -> Result<String, SignError> {
        let key = Box::new(self.signing_key());
        CleartextSignedMessage::sign(rand::thread_rng(), text, &key, &self.password)
            .and_then(|m| m.to_armored_string(ArmorOptions::default()))
            .map_err(|e| SignError::Sign {
                what: "a clear-signed document".into(),
                reason: e.to_string(),
            })
    }

    /// A detached, ASCII-armoured signature of the bytes `data` reads (streamed: any size, flat
    /// memory). `what` names them in errors.
    pub fn detached(&self, data: impl Read, what: &str) -> Result<String, SignError> {
        let key = Box::new(self.signing_key());
        DetachedSignature::sign_binary_data(
            rand::thread_rng(),
            &key,
            &self.password,
            HashAlgorithm::Sha256,
            data,
        )
        .and_then(|s| s.to_armored_string(ArmorOptions::default()))
        .map_err(|e| SignError::Sign {
            what: what.to_owned(),
            reason: e.to_string(),
        })
    }

    /// A detached signature of the file at `path`, read once.
    pub fn detached_file(&self, path: &Path) -> Result<String, SignError> {
        let file = std::fs::File::open(path).map_err(|source| SignError::Input {
            path: path.to_owned(),
            source,
        })?;
        let reader = std::io::BufReader::with_capacity(1 << 17, file);
        self.detached(reader, &path.display().to_string())
    }

    /// True when the armoured detached signature `asc` was made by this key.
    pub fn made_detached(&self, asc: &str) -> bool {
        DetachedSignature::from_string(asc).is_ok_and(|(sig, _)| {
            sig.signature
                .issuer_fingerprint()
                .iter()
                .any(|f| self.is_mine(f))
        })
    }

    /// The fingerprint of this key, or of the subkey that signs.
    fn is_mine(&self, f: &pgp::types::Fingerprint) -> bool {
        match self.which {
            Which::Primary => format!("{f:X}") == self.fingerprint,
            Which::Subkey(i) => self.key.secret_subkeys[i].key.fingerprint() == *f,
        }
    }
}

/// The ASCII-armoured signature block at the end of the file at `path` (a detached `.asc`, or
/// the end of a clear-signed document), read from its last few KiB only.
pub fn signature_block(path: &Path) -> Option<String> {
    use std::io::{Seek, SeekFrom};
    /// Far more than an armoured signature (Ed25519: ~300 bytes; RSA 4096: ~900).
    const TAIL: u64 = 8 << 10;
    const BEGIN: &str = "-----BEGIN PGP SIGNATURE-----";
    let mut file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(TAIL))).ok()?;
    let mut tail = String::new();
    file.read_to_string(&mut tail).ok()?;
    tail.rfind(BEGIN).map(|at| tail[at..].to_owned())
}

/// A new signing key, armoured: the secret key (protected by `passphrase` when one is given)
/// and the public key, as text for `gpg --import` and as binary packets for `gpgv --keyring`
/// and `sstream-query --keyring` (GnuPG reads a keyring file only in binary form).
pub struct NewKey {
    /// The secret key, ASCII-armoured.
    pub secret: String,
    /// The public key, ASCII-armoured.
    pub public: String,
    /// The public key as binary packets.
    pub public_binary: Vec<u8>,
    /// Its fingerprint, upper-case hex.
    pub fingerprint: String,
}

/// Makes a v4 Ed25519 key that certifies and signs, for `user_id` (`Name <email>`).
pub fn generate(user_id: &str, passphrase: Option<&str>) -> Result<NewKey, SignError> {
    let fail = |reason: String| SignError::Sign {
        what: "a new key".into(),
        reason,
    };
    let mut params = SecretKeyParamsBuilder::default();
    params
        .key_type(KeyType::Ed25519Legacy)
        .can_certify(true)
        .can_sign(true)
        .primary_user_id(user_id.to_owned());
    let params = params.build().map_err(|e| fail(e.to_string()))?;
    let mut key = params
        .generate(rand::thread_rng())
        .map_err(|e| fail(e.to_string()))?;
    let public = SignedPublicKey::from(key.clone());
    if let Some(p) = passphrase {
        key.primary_key
            .set_password(rand::thread_rng(), &Password::from(p))
            .map_err(|e| fail(e.to_string()))?;
    }
    let armored = |r: pgp::errors::Result<String>| r.map_err(|e| fail(e.to_string()));
    Ok(NewKey {
        secret: armored(key.to_armored_string(ArmorOptions::default()))?,
        public: armored(public.to_armored_string(ArmorOptions::default()))?,
        public_binary: public.to_bytes().map_err(|e| fail(e.to_string()))?,
        fingerprint: format!("{:X}", key.fingerprint()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_file(dir: &Path, passphrase: Option<&str>) -> (PathBuf, NewKey) {
        let key = generate("Test <t@example.org>", passphrase).unwrap();
        let path = dir.join("key.asc");
        std::fs::write(&path, &key.secret).unwrap();
        (path, key)
    }

    #[test]
    fn clear_signs_and_detaches_with_and_without_a_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        for pass in [None, Some("correct horse")] {
            let (path, key) = key_file(dir.path(), pass);
            let signer = Signer::load(&path, pass).unwrap();
            assert_eq!(signer.fingerprint(), key.fingerprint);
            let text = "{\n \"a\": 1\n}\n";
            let signed = signer.clearsign(text).unwrap();
            assert!(signed.starts_with("-----BEGIN PGP SIGNED MESSAGE-----"));
            let (msg, _) = CleartextSignedMessage::from_string(&signed).unwrap();
            let (public, _) = SignedPublicKey::from_string(&key.public).unwrap();
            msg.verify(&public).unwrap();
            assert_eq!(msg.signed_text(), text.replace('\n', "\r\n"));
            let doc = dir.path().join("doc.sjson");
            std::fs::write(&doc, &signed).unwrap();
            let block = signature_block(&doc).unwrap();
            assert!(signer.made_detached(&block), "{block}");
            let asc = signer.detached(&b"data"[..], "data").unwrap();
            let (sig, _) = DetachedSignature::from_string(&asc).unwrap();
            sig.verify(&public, b"data").unwrap();
            assert!(sig.verify(&public, b"date").is_err());
            assert!(signer.made_detached(&asc));
        }
    }

    #[test]
    fn a_wrong_or_missing_passphrase_or_key_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = key_file(dir.path(), Some("right"));
        let e = Signer::load(&path, None).unwrap_err().to_string();
        assert!(e.contains("SSB_SIGN_KEY_PASSPHRASE"), "{e}");
        let e = Signer::load(&path, Some("wrong")).unwrap_err().to_string();
        assert!(e.contains("cannot unlock"), "{e}");
        let e = Signer::load(&dir.path().join("nope"), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot read the signing key"), "{e}");
        let public = dir.path().join("pub.asc");
        std::fs::write(&public, generate("P", None).unwrap().public).unwrap();
        let e = Signer::load(&public, None).unwrap_err().to_string();
        assert!(
            e.contains("not an ASCII-armoured OpenPGP secret key"),
            "{e}"
        );
        // Another key's signature is not ours.
        let (a, _) = key_file(dir.path(), None);
        let signer = Signer::load(&a, None).unwrap();
        let other = generate("O", None).unwrap();
        let opath = dir.path().join("o.asc");
        std::fs::write(&opath, other.secret).unwrap();
        let theirs = Signer::load(&opath, None)
            .unwrap()
            .detached(&b"x"[..], "x")
            .unwrap();
        assert!(!signer.made_detached(&theirs));
    }
}
