//! Settings: the command line, the environment and tree.yml (or the layout) resolved once per
//! command into one validated value. Commands get that value and never look at clap's structs or
//! the environment again; this module is the only one that reads the environment (through
//! [`Environment`], captured once in `main`).
//!
//! Precedence, as the original tool had it: a flag wins over its environment variable (clap's
//! `env =` on the flag), which wins over tree.yml, which wins over the built-in default. The
//! `SSBUILDER_<KEY>` variables replace tree.yml's top-level keys.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tracing::warn;

use simplestreams_builder::catalog::manifest::{self, HttpSettings};
use simplestreams_builder::catalog::products::{self, Tree};
use simplestreams_builder::catalog::publish::Clock;
use simplestreams_builder::config::expiry::HumanDuration;
use simplestreams_builder::config::{Filters, Overrides, TreeConfig};
use simplestreams_builder::mirror::{self, PullRequest, Source, TlsSettings};
use simplestreams_builder::server::{IndexOptions, ServeOptions, TlsMode, WriteOptions};

use super::args::{
    BuildProductArgs, CatalogArgs, Cli, Command, Format, ImportArgs, ManifestArgs, MirrorCommand,
    MirrorPullArgs, ServeArgs,
};

/// The environment variables the binary reads, captured once.
#[derive(Clone, Debug, Default)]
pub struct Environment {
    vars: BTreeMap<String, String>,
}

impl Environment {
    /// The process environment (values that are not UTF-8 are taken lossily).
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

    fn get(&self, key: &str) -> Option<&str> {
        self.vars.get(key).map(String::as_str)
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
    fn flag(&self, key: &str) -> bool {
        self.get(key)
            .is_some_and(|v| matches!(v.trim(), "1" | "true" | "yes"))
    }

    /// `SSBUILDER_<KEY>` replacing tree.yml's top-level keys.
    fn overrides(&self) -> Overrides {
        let var = |k: &str| self.get(k).map(str::to_owned);
        Overrides {
            prefix: var("SSBUILDER_PREFIX"),
            images_path: var("SSBUILDER_IMAGES_PATH"),
            datatype: var("SSBUILDER_DATATYPE"),
            format: var("SSBUILDER_FORMAT"),
            distrobuilder: var("SSBUILDER_DISTROBUILDER"),
        }
    }

    /// `SOURCE_DATE_EPOCH` when set (reproducible builds, golden tests), else the system clock.
    fn clock(&self) -> Clock {
        self.get("SOURCE_DATE_EPOCH")
            .and_then(|s| s.trim().parse::<i64>().ok())
            .and_then(|s| jiff::Timestamp::from_second(s).ok())
            .map_or(Clock::System, Clock::Fixed)
    }

    /// `SSL_CERT_FILE`, when it names a file.
    fn cert_file(&self) -> Option<PathBuf> {
        self.get("SSL_CERT_FILE")
            .map(PathBuf::from)
            .filter(|f| f.is_file())
    }

    /// Where distrobuilder keeps its per-product caches: `CACHEDIR`, else `$TMPDIR/ssb-cache`.
    fn cache_root(&self) -> PathBuf {
        match self.get("CACHEDIR") {
            Some(dir) => PathBuf::from(dir),
            None => std::env::temp_dir().join("ssb-cache"),
        }
    }
}

/// What every command that publishes or fetches shares.
#[derive(Clone, Debug)]
pub struct Shared {
    /// Replacements of tree.yml's top-level keys.
    pub overrides: Overrides,
    /// How remote manifests are fetched.
    pub http: HttpSettings,
    /// The time stamped on what is built and published.
    pub clock: Clock,
}

/// `publish`.
pub struct Publish {
    pub tree: Tree,
    pub source: PathBuf,
    pub target: PathBuf,
    pub md5: bool,
    pub skip_unavailable: bool,
    pub shared: Shared,
}

/// `build-versions-manifest`.
pub struct Manifest {
    pub tree: Tree,
    pub product: String,
    pub source: PathBuf,
    /// `None`: print on stdout.
    pub target: Option<PathBuf>,
    pub expiry: Option<HumanDuration>,
    pub md5: bool,
}

/// Which catalog file `build-images-file` / `build-index` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CatalogPart {
    Products,
    Index,
}

/// `build-images-file` and `build-index`.
pub struct Catalog {
    pub part: CatalogPart,
    pub tree: Tree,
    pub source: PathBuf,
    /// `None`: print on stdout.
    pub target: Option<PathBuf>,
    pub skip_unavailable: bool,
    pub shared: Shared,
}

/// What build-product does once the version exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum After {
    /// `--no-publish`.
    Nothing,
    /// The product's catalog lives in another namespace (`prefix_path`): its ssb.json only.
    Manifest,
    /// The whole tree.
    Publish,
}

/// `build-product`.
pub struct Build {
    pub tree: Tree,
    pub product: String,
    pub source: PathBuf,
    pub target: PathBuf,
    pub image_file: Option<PathBuf>,
    pub skip_lxc: bool,
    pub skip_lxd: bool,
    pub skip_purge: bool,
    pub keep_failed: bool,
    pub after: After,
    pub cache_root: PathBuf,
    pub shared: Shared,
}

/// `import`.
pub struct Import {
    pub target: PathBuf,
    /// Each image's files: one unified tarball, or a metadata tarball and its rootfs.
    pub images: Vec<Vec<PathBuf>>,
    pub aliases: Vec<String>,
    pub variant: Option<String>,
    pub shared: Shared,
}

/// `verify` and `prune`.
pub struct Inventory {
    pub target: PathBuf,
    pub tree: Tree,
}

/// `serve`.
pub struct Serve {
    pub options: ServeOptions,
    /// `--mirror-interval`: what to pull and how often.
    pub mirror: Option<(PullRequest, Duration)>,
}

/// `demo`.
pub struct Demo {
    pub target: PathBuf,
    pub listen: SocketAddr,
    pub serve: bool,
    pub shared: Shared,
}

/// One command, resolved.
pub enum Settings {
    Publish(Publish),
    Manifest(Manifest),
    Catalog(Catalog),
    Print(Tree),
    Build(Build),
    Import(Import),
    Verify {
        inventory: Inventory,
        format: Format,
    },
    Prune {
        inventory: Inventory,
        yes: bool,
    },
    List {
        target: PathBuf,
        format: Format,
    },
    Serve(Box<Serve>),
    Demo(Demo),
    MirrorPull(PullRequest),
    MirrorPush {
        source: PathBuf,
        dest: String,
    },
}

impl Settings {
    /// Resolves the parsed command line against the environment and tree.yml (or the layout).
    pub fn resolve(cli: Cli, env: &Environment) -> Result<Self> {
        let r = Resolver { cli: &cli, env };
        Ok(match &cli.command {
            Command::Publish(args) => {
                let target = cli
                    .target_dir
                    .clone()
                    .or_else(|| args.source_dir.clone())
                    .context("publish needs -t DIR (the tree to publish)")?;
                let source = args.source_dir.clone().unwrap_or_else(|| target.clone());
                Settings::Publish(Publish {
                    tree: r.tree(&source)?,
                    source,
                    target,
                    md5: args.md5,
                    skip_unavailable: args.skip_unavailable,
                    shared: r.shared(),
                })
            }
            Command::BuildVersionsManifest(args) => Settings::Manifest(r.manifest(args)?),
            Command::BuildImagesFile(args) => {
                Settings::Catalog(r.catalog(args, CatalogPart::Products)?)
            }
            Command::BuildIndex(args) => Settings::Catalog(r.catalog(args, CatalogPart::Index)?),
            Command::Print => Settings::Print(r.tree(&r.target_or_cwd())?),
            Command::BuildProduct(args) => Settings::Build(r.build(args)?),
            Command::Import(args) => Settings::Import(r.import(args)?),
            Command::Verify(args) => Settings::Verify {
                inventory: r.inventory()?,
                format: args.format,
            },
            Command::Prune(args) => Settings::Prune {
                inventory: r.inventory()?,
                yes: args.yes,
            },
            Command::List(args) => Settings::List {
                target: r.target_or_cwd(),
                format: args.format,
            },
            Command::Serve(args) => Settings::Serve(Box::new(r.serve(args)?)),
            Command::Demo(args) => Settings::Demo(Demo {
                target: cli.target_dir.clone().unwrap_or_else(|| "ssb-demo".into()),
                listen: args.listen,
                serve: !args.no_serve,
                shared: r.shared(),
            }),
            Command::Mirror(cmd) => {
                let target = cli
                    .target_dir
                    .clone()
                    .context("mirror needs -t DIR (the mirror tree)")?;
                match cmd {
                    MirrorCommand::Pull(args) => Settings::MirrorPull(r.pull(args, target)?),
                    MirrorCommand::Push(args) => Settings::MirrorPush {
                        source: target,
                        dest: args.dest.clone(),
                    },
                }
            }
        })
    }
}

struct Resolver<'a> {
    cli: &'a Cli,
    env: &'a Environment,
}

impl Resolver<'_> {
    /// The tree.yml: `-c`/`SSBUILDER_CONFIG`, else `./tree.yml` when it exists; `None` means
    /// layout mode.
    fn config_path(&self) -> Option<PathBuf> {
        self.cli.config.clone().or_else(|| {
            let default = PathBuf::from("tree.yml");
            default.is_file().then_some(default)
        })
    }

    /// `-t`, else the current folder.
    fn target_or_cwd(&self) -> PathBuf {
        self.cli.target_dir.clone().unwrap_or_else(|| ".".into())
    }

    /// The products: tree.yml's, or the layout's under `root`.
    fn tree(&self, root: &Path) -> Result<Tree> {
        Ok(Tree::load(
            self.config_path().as_deref(),
            root,
            &self.env.overrides(),
        )?)
    }

    fn http(&self) -> HttpSettings {
        let mut http = HttpSettings {
            apikey: self.cli.apikey.clone().filter(|k| !k.is_empty()),
            ..HttpSettings::default()
        };
        if let Some(v) = self.env.get("SSBUILDER_HTTP_TIMEOUT") {
            match v.trim().parse::<u64>() {
                Ok(s) if s > 0 => http.timeout = Duration::from_secs(s),
                _ => warn!(
                    "SSBUILDER_HTTP_TIMEOUT=`{v}` is not a number of seconds; using {}s",
                    http.timeout.as_secs()
                ),
            }
        }
        http.insecure = self.env.flag("SSBUILDER_INSECURE_SKIPVERIFY");
        http.token_over_http = self.env.flag("SSBUILDER_ALLOW_HTTP_TOKEN");
        http
    }

    fn shared(&self) -> Shared {
        Shared {
            overrides: self.env.overrides(),
            http: self.http(),
            clock: self.env.clock(),
        }
    }

    fn manifest(&self, args: &ManifestArgs) -> Result<Manifest> {
        let source = args
            .source_dir
            .clone()
            .or_else(|| self.cli.target_dir.clone())
            .unwrap_or_else(|| ".".into());
        let target = self
            .cli
            .target_dir
            .clone()
            .unwrap_or_else(|| source.clone());
        let tree = self.tree(&source)?;
        let spec = tree.product(&args.product)?;
        let expiry = match (&args.expire, &args.image_file) {
            (Some(e), _) => Some(HumanDuration::parse(e).context("-e/--force-expire")?),
            (None, Some(file)) => {
                let mut candidates = vec![file.clone()];
                if file.is_relative() {
                    candidates.push(source.join(&spec.directory).join(file));
                    candidates.push(source.join(file));
                    candidates.push(PathBuf::from(manifest::join_prefix(
                        &tree.config.prefix,
                        &file.to_string_lossy(),
                    )));
                }
                image_file_expiry(file, &candidates)?
            }
            (None, None) => spec.expiry,
        };
        Ok(Manifest {
            product: args.product.clone(),
            source,
            target: (!args.stdout).then_some(target),
            expiry,
            md5: args.md5,
            tree,
        })
    }

    fn catalog(&self, args: &CatalogArgs, part: CatalogPart) -> Result<Catalog> {
        if self.cli.target_dir.is_some() && args.stdout {
            bail!("use -t/--target-dir or --stdout, not both");
        }
        let source = args
            .source_dir
            .clone()
            .or_else(|| self.cli.target_dir.clone())
            .context(
                "missing -t/--target-dir or --stdout (and -s/--source-dir to read ssb.json files from)",
            )?;
        Ok(Catalog {
            part,
            tree: self.tree(&source)?,
            source,
            target: (!args.stdout).then(|| self.target_or_cwd()),
            skip_unavailable: args.skip_unavailable,
            shared: self.shared(),
        })
    }

    fn build(&self, args: &BuildProductArgs) -> Result<Build> {
        let target = self
            .cli
            .target_dir
            .clone()
            .context("build-product needs -t DIR (the tree the version is written into)")?;
        let tree = self.tree(&target)?;
        let product = tree.product(&args.product)?;
        let after = if args.no_publish {
            After::Nothing
        } else if product.prefix_path.is_some() {
            After::Manifest
        } else {
            After::Publish
        };
        Ok(Build {
            product: args.product.clone(),
            source: args.source_dir.clone().unwrap_or_else(|| ".".into()),
            target,
            image_file: args.image_file.clone(),
            skip_lxc: args.skip_lxc,
            skip_lxd: args.skip_lxd,
            skip_purge: args.skip_purge,
            keep_failed: args.keep_failed,
            after,
            cache_root: self.env.cache_root(),
            shared: self.shared(),
            tree,
        })
    }

    fn import(&self, args: &ImportArgs) -> Result<Import> {
        let images = match &args.from_dir {
            Some(src) => {
                let found = simplestreams_builder::import::find_images(src)?;
                if found.is_empty() {
                    bail!("no images found under {}", src.display());
                }
                found
            }
            None => vec![args.files.clone()],
        };
        simplestreams_builder::import::check_aliases(&args.aliases)?;
        Ok(Import {
            target: self.target_or_cwd(),
            images,
            aliases: args.aliases.clone(),
            variant: args.variant.clone(),
            shared: self.shared(),
        })
    }

    fn inventory(&self) -> Result<Inventory> {
        let target = self.target_or_cwd();
        Ok(Inventory {
            tree: self.tree(&target)?,
            target,
        })
    }

    fn serve(&self, args: &ServeArgs) -> Result<Serve> {
        let root = self.target_or_cwd();
        // The pull runs before the server starts, as it did: a bad `mirrors:` stops the start.
        let mirror = match args.mirror_interval {
            Some(every) => Some((
                self.mirror_config_request(root.clone(), Vec::new(), false)?,
                every,
            )),
            None => None,
        };
        let tls = if args.http {
            TlsMode::Http
        } else if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
            TlsMode::Files {
                cert: cert.clone(),
                key: key.clone(),
            }
        } else {
            TlsMode::SelfSigned {
                extra_sans: args.tls_san.clone(),
            }
        };
        let token = write_token(args)?;
        let index = args.index || token.is_some() || args.allow_anonymous_writes;
        let shared = self.shared();
        Ok(Serve {
            options: ServeOptions {
                listen: args.listen,
                tls,
                index: index.then(|| IndexOptions {
                    config: self.config_path(),
                    overrides: shared.overrides,
                    clock: shared.clock,
                    watch: !args.no_watch,
                    http: shared.http,
                }),
                writes: WriteOptions {
                    token,
                    allow_anonymous: args.allow_anonymous_writes,
                    allow_overwrites: args.allow_overwrites,
                    allow_deletes: args.allow_deletes,
                    max_upload_size: args.max_upload_size,
                },
                root,
            },
            mirror,
        })
    }

    /// The sources (the URL and filters, or tree.yml's `mirrors:`) and TLS settings of a pull.
    fn pull(&self, args: &MirrorPullArgs, target: PathBuf) -> Result<PullRequest> {
        let filters = Filters {
            os: args.os.clone(),
            release: args.release.clone(),
            arch: args.arch.clone(),
            variant: args.variant.clone(),
            alias: args.alias.clone(),
            image_type: args.image_type,
            keep: args.keep.map(|k| k as usize),
        };
        let mut req = match &args.url {
            Some(url) => {
                let sources = vec![Source {
                    url: url.trim().to_owned(),
                    filters,
                }];
                self.pull_request(sources, target, args.ca_cert.clone(), args.insecure)?
            }
            None => {
                if filters != Filters::default() {
                    bail!(
                        "filters (--os, --keep, …) need a URL; without one, tree.yml `mirrors:` says what to pull"
                    );
                }
                self.mirror_config_request(target, args.ca_cert.clone(), args.insecure)?
            }
        };
        req.jobs = args.jobs as usize;
        Ok(req)
    }

    /// A pull of tree.yml's `mirrors:` (for `mirror pull` without a URL and `serve
    /// --mirror-interval`).
    fn mirror_config_request(
        &self,
        target: PathBuf,
        mut ca_certs: Vec<PathBuf>,
        insecure: bool,
    ) -> Result<PullRequest> {
        let path = self
            .config_path()
            .context("mirror pull needs a URL, or a tree.yml (-c) with a `mirrors:` section")?;
        let config = TreeConfig::load(&path)?;
        products::report(&config.warnings);
        if config.mirrors.is_empty() {
            bail!("{} has no `mirrors:` section", path.display());
        }
        ca_certs.extend(config.mirrors.iter().filter_map(|m| m.ca_cert.clone()));
        let sources = config
            .mirrors
            .into_iter()
            .map(|m| Source {
                url: m.url,
                filters: m.filters,
            })
            .collect();
        self.pull_request(sources, target, ca_certs, insecure)
    }

    fn pull_request(
        &self,
        sources: Vec<Source>,
        target: PathBuf,
        mut ca_certs: Vec<PathBuf>,
        insecure: bool,
    ) -> Result<PullRequest> {
        // rustls-platform-verifier reads SSL_CERT_FILE on Linux; adding it explicitly keeps the
        // promise if that ever changes.
        ca_certs.extend(self.env.cert_file());
        if insecure {
            warn!(
                "--insecure: TLS certificates are not verified; file contents are still checked against their sha256"
            );
        }
        for s in &sources {
            if s.url.starts_with("http://") {
                warn!(
                    "{}: plain http; file contents are still checked against their sha256, but the catalog itself is not protected",
                    s.url
                );
            } else if !s.url.starts_with("https://") {
                bail!("`{}` is not an https:// (or http://) URL", s.url);
            }
        }
        Ok(mirror::PullRequest {
            sources,
            target,
            jobs: 4,
            tls: TlsSettings { ca_certs, insecure },
            progress: true,
            clock: self.env.clock(),
        })
    }
}

/// The support duration a distrobuilder image file's `image.expiry` gives, from the first of
/// `candidates` that exists.
fn image_file_expiry(path: &Path, candidates: &[PathBuf]) -> Result<Option<HumanDuration>> {
    let found = candidates.iter().find(|p| p.is_file()).with_context(|| {
        format!(
            "image file {} not found; looked at: {}",
            path.display(),
            candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    #[derive(serde::Deserialize)]
    struct Def {
        image: Option<ImageSection>,
    }
    #[derive(serde::Deserialize)]
    struct ImageSection {
        expiry: Option<String>,
    }
    let text = std::fs::read_to_string(found)
        .with_context(|| format!("cannot read {}", found.display()))?;
    let def: Def = serde_saphyr::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: {}", found.display(), e.without_snippet()))?;
    def.image
        .and_then(|i| i.expiry)
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            HumanDuration::parse(&e).with_context(|| format!("{}: image.expiry", found.display()))
        })
        .transpose()
}

/// The write token from `--write-token-file` or `SSB_WRITE_TOKEN`; surrounding white space
/// (a trailing newline in a file or a Secret) is not part of it.
fn write_token(args: &ServeArgs) -> Result<Option<String>> {
    let token = match (&args.write_token_file, &args.write_token) {
        (Some(file), _) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read the write token from {}", file.display()))?;
            Some((text.trim().to_owned(), format!("{}", file.display())))
        }
        (None, Some(t)) => Some((t.trim().to_owned(), "SSB_WRITE_TOKEN".to_owned())),
        (None, None) => None,
    };
    match token {
        Some((t, from)) if t.is_empty() => bail!("the write token in {from} is empty"),
        Some((t, from)) if t.len() < 16 => {
            warn!(
                "the write token in {from} is short ({} characters); use 32 or more random characters",
                t.len()
            );
            Ok(Some(t))
        }
        Some((t, _)) => Ok(Some(t)),
        None => Ok(None),
    }
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
    fn http_switches_take_one_true_or_yes() {
        for (value, on) in [("1", true), ("yes", true), ("true", true), ("0", false)] {
            let env = Environment::of(&[("SSBUILDER_INSECURE_SKIPVERIFY", value)]);
            assert_eq!(env.flag("SSBUILDER_INSECURE_SKIPVERIFY"), on, "{value}");
        }
    }
}
