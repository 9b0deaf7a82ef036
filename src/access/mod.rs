//! Private catalogs: who may read which products. A users file (YAML) lists users, each with a
//! token stored only as its sha256 and the product ids it may see (globs: `debian:*`, `*`),
//! plus products anyone may see without credentials. Tokens are 32 random bytes, hex; a token
//! is checked against every user's hash in constant time, so neither the comparison nor the
//! user's position in the file shows through timing.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The users file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsersFile {
    /// Product globs anyone may read without credentials.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub public: Vec<String>,
    /// The users, in file order.
    #[serde(default)]
    pub users: Vec<User>,
}

/// One reader.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// Login name (the user of `https://USER:TOKEN@HOST`).
    pub name: String,
    /// sha256 of the token, lower-case hex.
    pub token_sha256: String,
    /// Product globs this user may read (`*` for all).
    pub products: Vec<String>,
}

/// A users file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// It cannot be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It breaks the format.
    #[error("{}: {problem}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What, where, and what to do.
        problem: String,
    },
}

impl UsersFile {
    /// Reads and checks a users file: YAML of the shape above, no unknown keys, unique plain
    /// names, 64-hex-digit hashes, at least one product glob per user.
    pub fn load(path: &Path) -> Result<Self, UsersError> {
        let text = std::fs::read_to_string(path).map_err(|source| UsersError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// [`Self::load`] for text read already; `path` names it in messages.
    pub fn parse(path: &Path, text: &str) -> Result<Self, UsersError> {
        let invalid = |problem: String| UsersError::Invalid {
            path: path.to_owned(),
            problem,
        };
        let file: UsersFile = if text.trim().is_empty() {
            UsersFile::default()
        } else {
            serde_saphyr::from_str(text).map_err(|e| {
                invalid(format!(
                    "not a users file ({e}); expected `users:` entries with `name`, `token_sha256` and `products`, and optionally `public:`"
                ))
            })?
        };
        let mut seen = BTreeSet::new();
        for (i, u) in file.users.iter().enumerate() {
            let at = format!("users[{i}] (`{}`)", u.name);
            if !is_user_name(&u.name) {
                return Err(invalid(format!(
                    "{at}: a name is letters, digits, `.`, `_` and `-` (no `:`, which separates it from the token)"
                )));
            }
            if !seen.insert(u.name.as_str()) {
                return Err(invalid(format!(
                    "{at}: the user `{}` is listed twice; remove one",
                    u.name
                )));
            }
            if u.token_sha256.len() != 64 || !u.token_sha256.bytes().all(|b| b.is_ascii_hexdigit())
            {
                return Err(invalid(format!(
                    "{at}: `token_sha256` must be the sha256 of the token, 64 hex digits (`users add` writes it)"
                )));
            }
            if u.products.is_empty() || u.products.iter().any(|g| g.trim().is_empty()) {
                return Err(invalid(format!(
                    "{at}: `products` must list at least one product id or glob (`*` for all)"
                )));
            }
        }
        Ok(file)
    }

    /// Writes the file atomically, readable by its owner only (it holds the token hashes).
    pub fn save(&self, path: &Path) -> Result<(), UsersError> {
        let text = serde_saphyr::to_string(self).map_err(|e| UsersError::Invalid {
            path: path.to_owned(),
            problem: e.to_string(),
        })?;
        crate::tree::atomic::write_with_mode(path, text.as_bytes(), 0o600).map_err(|source| {
            UsersError::Io {
                path: path.to_owned(),
                source,
            }
        })
    }

    /// Adds a user with a fresh token, which is returned (and stored only as its hash).
    pub fn add(&mut self, name: &str, products: Vec<String>) -> Result<String, String> {
        if !is_user_name(name) {
            return Err(format!(
                "`{name}`: a name is letters, digits, `.`, `_` and `-`"
            ));
        }
        if self.users.iter().any(|u| u.name == name) {
            return Err(format!(
                "the user `{name}` exists already; remove it first to give it a new token"
            ));
        }
        let token = new_token();
        self.users.push(User {
            name: name.to_owned(),
            token_sha256: token_hash(&token),
            products: if products.is_empty() {
                vec!["*".to_owned()]
            } else {
                products
            },
        });
        Ok(token)
    }

    /// The reader a name and token identify, or `None`; `name` `None` is a bearer token, which
    /// names no user.
    pub fn authenticate(&self, name: Option<&str>, token: &str) -> Option<&User> {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        // Every hash is compared, in constant time each.
        for u in &self.users {
            let mut stored = [0u8; 32];
            if hex::decode_to_slice(&u.token_sha256, &mut stored).is_err() {
                continue;
            }
            let same = same_digest(&stored, &hash);
            if same && name.is_none_or(|n| n == u.name) && found.is_none() {
                found = Some(u);
            }
        }
        found
    }
}

/// What a request may see: the product ids its user's globs (or the public ones) match.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Visibility {
    globs: Vec<String>,
}

impl Visibility {
    /// What `user` may see, with the public products (`None` for an anonymous request).
    pub fn of(file: &UsersFile, user: Option<&User>) -> Self {
        let mut globs = file.public.clone();
        if let Some(u) = user {
            globs.extend(u.products.iter().cloned());
        }
        globs.sort();
        globs.dedup();
        Self { globs }
    }

    /// True when the product id is visible.
    pub fn sees(&self, product: &str) -> bool {
        self.globs
            .iter()
            .any(|g| crate::mirror::select::glob_match(g, product))
    }

    /// True when nothing is visible.
    pub fn is_empty(&self) -> bool {
        self.globs.is_empty()
    }

    /// True when everything is visible (`*`).
    pub fn is_all(&self) -> bool {
        self.globs.iter().any(|g| g == "*")
    }
}

fn is_user_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// 32 random bytes (rand's thread generator: ChaCha seeded from the OS), as hex.
fn new_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// The hash a token is stored as.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// True when two sha256 digests are equal, compared byte by byte without an early exit: the
/// time taken says nothing about where they differ. Tokens are compared as their digests, so
/// their lengths do not show either.
pub fn same_digest(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<UsersFile, String> {
        UsersFile::parse(Path::new("users.yml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn tokens_authenticate_only_their_user() {
        let mut f = UsersFile::default();
        let a = f.add("alice", vec!["debian:*".into()]).unwrap();
        let b = f.add("bob", vec![]).unwrap();
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert_eq!(f.authenticate(Some("alice"), &a).unwrap().name, "alice");
        assert_eq!(f.authenticate(None, &b).unwrap().name, "bob");
        assert!(
            f.authenticate(Some("bob"), &a).is_none(),
            "alice's token is not bob's"
        );
        assert!(f.authenticate(Some("alice"), "wrong").is_none());
        assert_eq!(f.users[1].products, ["*"]);
        assert!(
            f.add("alice", vec![])
                .unwrap_err()
                .contains("exists already")
        );
        assert!(f.add("a:b", vec![]).is_err());
        let text = serde_saphyr::to_string(&f).unwrap();
        assert!(!text.contains(&a), "the token itself is never stored");
        assert_eq!(parse(&text).unwrap(), f);
    }

    #[test]
    fn visibility_is_the_users_globs_and_the_public_ones() {
        let mut f = parse("public: [\"alpine:*\"]\nusers: []\n").unwrap();
        f.add("alice", vec!["debian:12:*".into()]).unwrap();
        let anon = Visibility::of(&f, None);
        assert!(anon.sees("alpine:3:amd64:default") && !anon.sees("debian:12:amd64:default"));
        let alice = Visibility::of(&f, Some(&f.users[0]));
        assert!(alice.sees("debian:12:amd64:default") && alice.sees("alpine:3:amd64:default"));
        assert!(!alice.sees("debian:13:amd64:default"));
    }

    #[test]
    fn bad_files_are_named_with_what_to_do() {
        let hash = "0".repeat(64);
        for (text, says) in [
            ("users: [", "not a users file"),
            (
                "users:\n  - name: a\n    token_sha256: x\n    products: [\"*\"]\n",
                "64 hex digits",
            ),
            (
                &format!(
                    "users:\n  - name: a\n    token_sha256: {hash}\n    products: [\"*\"]\n    extra: 1\n"
                ),
                "unknown field",
            ),
            (
                &format!(
                    "users:\n  - name: a\n    token_sha256: {hash}\n    products: [\"*\"]\n  - name: a\n    token_sha256: {hash}\n    products: [\"*\"]\n"
                ),
                "listed twice",
            ),
            (
                &format!("users:\n  - name: a\n    token_sha256: {hash}\n    products: []\n"),
                "at least one product",
            ),
            ("owners: []\n", "unknown field"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(
                e.contains(says) && e.starts_with("users.yml: "),
                "{says}: {e}"
            );
        }
        assert_eq!(parse("").unwrap(), UsersFile::default());
    }
}
