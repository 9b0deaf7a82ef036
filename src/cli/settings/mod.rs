//! Settings: the command line, the environment and tree.yml (or the layout) resolved once per
//! command into one validated value. Commands get that value and never look at clap's structs or
//! the environment again; this module is the only one that reads the environment (through
//! [`Environment`], captured once in `main`).
//!
//! Precedence, as the original tool had it: a flag wins over its environment variable (clap's
//! `env =` on the flag), which wins over tree.yml, which wins over the built-in default. The
//! `SSBUILDER_<KEY>` variables replace tree.yml's top-level keys.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};

use simplestreams_builder::catalog::manifest::HttpSettings;
use simplestreams_builder::catalog::products::Tree;
use simplestreams_builder::catalog::publish::Clock;
use simplestreams_builder::config::Overrides;
use simplestreams_builder::config::expiry::HumanDuration;
use simplestreams_builder::hash::CacheDir;
use simplestreams_builder::mirror::PullRequest;
use simplestreams_builder::server::ServeOptions;

mod bucket;
mod environment;
mod resolve;

pub use bucket::{BucketAction, BucketJob};

pub use environment::Environment;
use resolve::Resolver;

use super::args::{Cli, Command, Format, MirrorCommand};

/// What every command that publishes or fetches shares.
#[derive(Clone, Debug)]
pub struct Shared {
    /// Replacements of tree.yml's top-level keys.
    pub overrides: Overrides,
    /// How remote manifests are fetched.
    pub http: HttpSettings,
    /// The time stamped on what is built and published.
    pub clock: Clock,
    /// Where the hash caches of product folders are kept.
    pub hash_cache: CacheDir,
    /// The key that signs what is published (`--sign-key`), loaded and proven once.
    pub signer: Option<std::sync::Arc<simplestreams_builder::sign::Signer>>,
}

/// `publish`.
pub struct Publish {
    pub tree: Tree,
    pub source: PathBuf,
    pub target: PathBuf,
    pub md5: bool,
    pub skip_unavailable: bool,
    pub force: bool,
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
    pub hash_cache: CacheDir,
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
    pub force: bool,
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
    /// `TMPDIR`: created before the build when it does not exist (as the original did).
    pub tmpdir: Option<PathBuf>,
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
        /// The products, to find the versions left out as broken; `None` when they cannot be
        /// loaded (the catalog alone is still listed).
        tree: Option<Tree>,
        format: Format,
    },
    Serve(Box<Serve>),
    Demo(Demo),
    MirrorPull(PullRequest),
    MirrorPush {
        source: PathBuf,
        dest: String,
    },
    Users(super::args::UsersCommand),
    /// Any command whose tree is in a bucket (`-t s3://…`).
    Bucket(Box<BucketJob>),
    Keygen {
        out: PathBuf,
        user_id: String,
        /// `SSB_SIGN_KEY_PASSPHRASE`: protects the new secret key.
        passphrase: Option<String>,
    },
}

impl Settings {
    /// Resolves the parsed command line against the environment and tree.yml (or the layout).
    pub fn resolve(cli: Cli, env: &Environment) -> Result<Self> {
        let r = Resolver { cli: &cli, env };
        if let Some(job) = r.bucket()? {
            return Ok(Settings::Bucket(Box::new(job)));
        }
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
                    force: args.force,
                    shared: r.shared()?,
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
            Command::List(args) => {
                let target = r.target_or_cwd();
                let tree = r
                    .tree(&target)
                    .inspect_err(|e| {
                        tracing::warn!(
                            "versions left out as broken are not listed: the products cannot be loaded: {e:#}"
                        );
                    })
                    .ok();
                Settings::List {
                    target,
                    tree,
                    format: args.format,
                }
            }
            Command::Serve(args) => Settings::Serve(Box::new(r.serve(args)?)),
            Command::Demo(args) => Settings::Demo(Demo {
                target: cli.target_dir.clone().unwrap_or_else(|| "ssb-demo".into()),
                listen: args.listen,
                serve: !args.no_serve,
                shared: r.shared()?,
            }),
            Command::Users(cmd) => Settings::Users(cmd.clone()),
            Command::Keygen(args) => Settings::Keygen {
                out: args.out.clone(),
                user_id: args.user_id.clone(),
                passphrase: env
                    .get("SSB_SIGN_KEY_PASSPHRASE")
                    .filter(|p| !p.is_empty())
                    .map(str::to_owned),
            },
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
