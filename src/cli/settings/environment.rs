//! The environment variables the binary reads, captured once in `main`: the only place the
//! process environment is read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use simplestreams_builder::catalog::publish::Clock;
use simplestreams_builder::config::Overrides;
use simplestreams_builder::hash::CacheDir;

/// The environment variables the binary reads, captured once.
#[derive(Clone, Debug, Default)]
pub struct Environment {
    vars: BTreeMap<String, String>,
}

impl Environment {
    /// The process environment (values that are not UTF-8 are taken lossily).
    #[allow(
        clippy::disallowed_methods,
        reason = "the one place that reads the environment"
    )]
    pub fn capture() -> Self {
        Self {
            vars: std::env::vars_os()
                .map(|(k, v)| {
                    (
                        k.to_string_lossy().into_owned(),
                        v.to_string_lossy().into_owned(),
                    )
                })
                .collect(),
        }
    }

    /// An environment of these pairs only (for tests).
    #[cfg(test)]
    pub fn of(pairs: &[(&str, &str)]) -> Self {
        Self {
            vars: pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    pub(super) fn get(&self, key: &str) -> Option<&str> {
        self.vars.get(key).map(String::as_str)
    }

    /// How S3 tools are told where a bucket is and who is asking: `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION` (or `AWS_DEFAULT_REGION`),
    /// `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`.
    pub fn s3(&self, allow_http: bool) -> simplestreams_builder::bucket::S3Settings {
        let set = |k: &str| self.get(k).filter(|v| !v.is_empty()).map(str::to_owned);
        simplestreams_builder::bucket::S3Settings {
            access_key_id: set("AWS_ACCESS_KEY_ID"),
            secret_access_key: set("AWS_SECRET_ACCESS_KEY"),
            session_token: set("AWS_SESSION_TOKEN"),
            region: set("AWS_REGION").or_else(|| set("AWS_DEFAULT_REGION")),
            endpoint: set("AWS_ENDPOINT_URL_S3").or_else(|| set("AWS_ENDPOINT_URL")),
            allow_http,
        }
    }

    /// `DEBUG` set to anything: debug logging.
    pub fn debug(&self) -> bool {
        self.get("DEBUG").is_some_and(|v| !v.is_empty())
    }

    /// `RUST_LOG`: a tracing filter that overrides the default level.
    pub fn log_filter(&self) -> Option<&str> {
        self.get("RUST_LOG")
    }

    /// A switch: `1`, `true` or `yes`.
    pub(super) fn flag(&self, key: &str) -> bool {
        self.get(key)
            .is_some_and(|v| matches!(v.trim(), "1" | "true" | "yes"))
    }

    /// `SSBUILDER_<KEY>` replacing tree.yml's top-level keys.
    pub(super) fn overrides(&self) -> Overrides {
        let var = |k: &str| self.get(k).map(str::to_owned);
        Overrides {
            prefix: var("SSBUILDER_PREFIX"),
            images_path: var("SSBUILDER_IMAGES_PATH"),
            datatype: var("SSBUILDER_DATATYPE"),
            format: var("SSBUILDER_FORMAT"),
            distrobuilder: var("SSBUILDER_DISTROBUILDER"),
            // `--deltas` and `--delta-max-percent` (which read these variables) are merged in
            // by the resolver.
            deltas: None,
            delta_max_percent: None,
        }
    }

    /// `SOURCE_DATE_EPOCH` when set (reproducible builds, golden tests), else the system clock.
    pub(super) fn clock(&self) -> Clock {
        self.get("SOURCE_DATE_EPOCH")
            .and_then(|s| s.trim().parse::<i64>().ok())
            .and_then(|s| jiff::Timestamp::from_second(s).ok())
            .map_or(Clock::System, Clock::Fixed)
    }

    /// `SSL_CERT_FILE`, when it names a file.
    pub(super) fn cert_file(&self) -> Option<PathBuf> {
        self.get("SSL_CERT_FILE")
            .map(PathBuf::from)
            .filter(|f| f.is_file())
    }

    /// Where the hash caches of product folders are kept, outside the trees: `SSB_CACHE_DIR`,
    /// else systemd's `CACHE_DIRECTORY` (`CacheDirectory=`), else
    /// `$XDG_CACHE_HOME/simplestreams-builder`, else `~/.cache/simplestreams-builder` (not with
    /// `HOME=/`, which systemd gives a dynamic user), else a folder of this user's own in the
    /// temp folder, made 0700. When even that is not private (another user made it), no cache
    /// is kept: a cache others can write could make us publish hashes they chose.
    pub(super) fn hash_cache(&self) -> CacheDir {
        let set = |k: &str| {
            self.get(k)
                .filter(|v| !v.trim().is_empty())
                .map(PathBuf::from)
        };
        let chosen = set("SSB_CACHE_DIR")
            .or_else(|| {
                self.get("CACHE_DIRECTORY")
                    .and_then(|v| v.split(':').find(|d| !d.is_empty()))
                    .map(PathBuf::from)
            })
            .or_else(|| set("XDG_CACHE_HOME").map(|d| d.join("simplestreams-builder")))
            .or_else(|| {
                set("HOME")
                    .filter(|h| h != Path::new("/"))
                    .map(|d| d.join(".cache/simplestreams-builder"))
            });
        if let Some(root) = chosen {
            return CacheDir::new(root.join("hash"));
        }
        let uid = rustix::process::geteuid().as_raw();
        let root = std::env::temp_dir().join(format!("simplestreams-builder-{uid}"));
        match private_dir(&root, uid) {
            Ok(()) => CacheDir::new(root.join("hash")),
            Err(why) => {
                tracing::warn!(
                    "no hash cache: {} {why}; set SSB_CACHE_DIR to a folder of your own",
                    root.display()
                );
                CacheDir::none()
            }
        }
    }

    /// `TMPDIR`, when set: the builder's temp folder, created before a build.
    pub(super) fn tmpdir(&self) -> Option<PathBuf> {
        self.get("TMPDIR")
            .filter(|v| !v.trim().is_empty())
            .map(PathBuf::from)
    }

    /// Where distrobuilder keeps its per-product caches: `CACHEDIR`, else `$TMPDIR/ssb-cache`.
    pub(super) fn cache_root(&self) -> PathBuf {
        match self.get("CACHEDIR") {
            Some(dir) => PathBuf::from(dir),
            None => std::env::temp_dir().join("ssb-cache"),
        }
    }
}

/// Makes `dir` (0700) unless it exists, then checks that it is this user's alone.
fn private_dir(dir: &Path, uid: u32) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot be made: {e}")),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|e| e.to_string())?;
    if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o077 != 0 {
        return Err("is not a folder of this user's alone (mode 0700)".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_replaces_top_level_keys_and_stamps_the_time() {
        let env = Environment::of(&[
            ("SSBUILDER_PREFIX", "../ns"),
            ("SSBUILDER_FORMAT", "products:1.0"),
            ("SOURCE_DATE_EPOCH", "1763900400"),
        ]);
        let o = env.overrides();
        assert_eq!(o.prefix.as_deref(), Some("../ns"));
        assert_eq!(o.format.as_deref(), Some("products:1.0"));
        assert_eq!(o.datatype, None);
        assert_eq!(
            env.clock(),
            Clock::Fixed(jiff::Timestamp::from_second(1_763_900_400).unwrap())
        );
        assert_eq!(Environment::of(&[]).clock(), Clock::System);
        assert_eq!(
            Environment::of(&[("SOURCE_DATE_EPOCH", "soon")]).clock(),
            Clock::System
        );
    }

    #[test]
    fn the_hash_cache_goes_where_the_service_manager_says_and_never_into_a_shared_folder() {
        let cache = |pairs: &[(&str, &str)]| Environment::of(pairs).hash_cache();
        assert_eq!(
            cache(&[("CACHE_DIRECTORY", "/var/cache/ssb:/other"), ("HOME", "/")]),
            CacheDir::new("/var/cache/ssb/hash")
        );
        assert_eq!(
            cache(&[("SSB_CACHE_DIR", "/c"), ("CACHE_DIRECTORY", "/d")]),
            CacheDir::new("/c/hash")
        );
        assert_eq!(
            cache(&[("HOME", "/home/u")]),
            CacheDir::new("/home/u/.cache/simplestreams-builder/hash")
        );
        // A folder someone else made (here: one that is not 0700) is not used.
        let shared = tempfile::tempdir().unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let uid = rustix::process::geteuid().as_raw();
        assert!(private_dir(shared.path(), uid).is_err());
        let mine = shared.path().join("mine");
        private_dir(&mine, uid).unwrap();
        assert!(private_dir(&mine, uid).is_ok(), "made once, then reused");
    }

    #[test]
    fn http_switches_take_one_true_or_yes() {
        for (value, on) in [("1", true), ("yes", true), ("true", true), ("0", false)] {
            let env = Environment::of(&[("SSBUILDER_INSECURE_SKIPVERIFY", value)]);
            assert_eq!(env.flag("SSBUILDER_INSECURE_SKIPVERIFY"), on, "{value}");
        }
    }
}
