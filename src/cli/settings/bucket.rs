//! Commands whose tree is in a bucket: `-t s3://BUCKET/PREFIX` (or `mirror push s3://…`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};

use simplestreams_builder::bucket::{BucketUrl, S3Settings};
use simplestreams_builder::catalog::products::Tree;
use simplestreams_builder::mirror::PullRequest;
use simplestreams_builder::server::TlsMode;

use super::resolve::Resolver;
use super::{Build, Shared};
use crate::cli::args::{Command, Format, MirrorCommand};

/// One command on a tree in a bucket.
pub struct BucketJob {
    pub url: BucketUrl,
    pub s3: S3Settings,
    /// tree.yml (`None`: the layout, discovered in the bucket).
    pub config: Option<PathBuf>,
    pub shared: Shared,
    pub action: BucketAction,
}

/// What to do with the bucket.
pub enum BucketAction {
    /// `publish`: with a local source, its products go up first; without, the catalog is
    /// rebuilt from the manifests in the bucket.
    Publish {
        source: Option<(PathBuf, Tree)>,
        md5: bool,
        skip_unavailable: bool,
        force: bool,
    },
    /// `import`: into a local staging tree, then up.
    Import {
        images: Vec<Vec<PathBuf>>,
        aliases: Vec<String>,
        variant: Option<String>,
    },
    /// `build-product`: built in a local staging tree, then the new version goes up.
    Build(Box<Build>),
    /// `mirror pull`: into a local staging tree, then up.
    MirrorPull(Box<PullRequest>),
    /// `mirror push s3://…` from a local tree.
    MirrorPush {
        source: PathBuf,
        tree: Tree,
    },
    Verify(Format),
    List(Format),
    Prune {
        yes: bool,
        grace: Duration,
    },
    Serve(BucketServe),
}

/// `serve -t s3://…`.
pub struct BucketServe {
    pub listen: SocketAddr,
    pub tls: TlsMode,
    pub redirect: bool,
    /// Where a self-signed certificate is kept (the bucket holds only the tree).
    pub state_dir: PathBuf,
}

impl Resolver<'_> {
    /// The bucket job of this command line, when its tree is in a bucket.
    pub(super) fn bucket(&self) -> Result<Option<BucketJob>> {
        let cli = self.cli;
        let push_dest = match &cli.command {
            Command::Mirror(MirrorCommand::Push(args)) => BucketUrl::parse(&args.dest)?,
            _ => None,
        };
        let target = match &cli.target_dir {
            Some(t) => BucketUrl::parse(&t.to_string_lossy())?,
            None => None,
        };
        let Some(url) = push_dest.clone().or(target) else {
            return Ok(None);
        };
        let shared = self.shared()?;
        let config = self.config_path();
        let action = match &cli.command {
            Command::Mirror(MirrorCommand::Push(_)) if push_dest.is_some() => {
                let Some(source) = cli.target_dir.clone() else {
                    bail!("mirror push {url} needs -t DIR (the local tree to push)");
                };
                if BucketUrl::parse(&source.to_string_lossy())?.is_some() {
                    bail!(
                        "mirror push from one bucket to another is not supported: pull into a local tree, then push"
                    );
                }
                BucketAction::MirrorPush {
                    tree: self.tree(&source)?,
                    source,
                }
            }
            Command::Publish(args) => BucketAction::Publish {
                source: match &args.source_dir {
                    Some(source) => Some((source.clone(), self.tree(source)?)),
                    None => None,
                },
                md5: args.md5,
                skip_unavailable: args.skip_unavailable,
                force: args.force,
            },
            Command::Import(args) => {
                let import = self.import(args)?;
                BucketAction::Import {
                    images: import.images,
                    aliases: import.aliases,
                    variant: import.variant,
                }
            }
            Command::BuildProduct(args) => {
                if config.is_none() {
                    bail!(
                        "build-product -t {url} needs the tree.yml that declares the product (-c FILE)"
                    );
                }
                BucketAction::Build(Box::new(self.build(args)?))
            }
            Command::Mirror(MirrorCommand::Pull(args)) => {
                BucketAction::MirrorPull(Box::new(self.pull(args, PathBuf::new())?))
            }
            Command::Verify(args) => BucketAction::Verify(args.format),
            Command::List(args) => BucketAction::List(args.format),
            Command::Prune(args) => BucketAction::Prune {
                yes: args.yes,
                grace: args
                    .grace
                    .unwrap_or(simplestreams_builder::bucket::inventory::DEFAULT_GRACE),
            },
            Command::Serve(args) => {
                if args.index
                    || args.allow_anonymous_writes
                    || super::resolve::write_token(args)?.is_some()
                    || args.mirror_interval.is_some()
                    || args.read_users.is_some()
                {
                    bail!(
                        "serve -t {url} serves the bucket read-only: uploads (a write token), --index, --mirror-interval and --read-users need a local tree (publish into the bucket with publish, import or build-product)"
                    );
                }
                let serve = self.serve(args)?;
                let state_dir = self.env.cache_root().join("bucket-serve").join(format!(
                    "{}{}",
                    url.bucket,
                    if url.prefix.is_empty() {
                        String::new()
                    } else {
                        format!("-{}", url.prefix.replace('/', "-"))
                    }
                ));
                BucketAction::Serve(BucketServe {
                    listen: serve.options.listen,
                    tls: serve.options.tls,
                    redirect: args.redirect,
                    state_dir,
                })
            }
            other => bail!(
                "{} does not work on a bucket (-t {url}); use publish, import, build-product, mirror pull/push, verify, list, prune or serve",
                command_name(other)
            ),
        };
        Ok(Some(BucketJob {
            s3: self.env.s3(cli.s3_allow_http),
            url,
            config,
            shared,
            action,
        }))
    }
}

fn command_name(c: &Command) -> &'static str {
    match c {
        Command::BuildVersionsManifest(_) => "build-versions-manifest",
        Command::BuildImagesFile(_) => "build-images-file",
        Command::BuildIndex(_) => "build-index",
        Command::Print => "print",
        Command::Demo(_) => "demo",
        _ => "this command",
    }
}
