//! Resolving each command's settings from its flags, the environment and tree.yml.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tracing::warn;

use simplestreams_builder::catalog::manifest::{self, HttpSettings};
use simplestreams_builder::catalog::products::{self, Tree};
use simplestreams_builder::config::expiry::HumanDuration;
use simplestreams_builder::config::{Filters, TreeConfig};
use simplestreams_builder::mirror::{self, PullRequest, Source};
use simplestreams_builder::net::Trust;
use simplestreams_builder::server::{IndexOptions, ServeOptions, TlsMode, WriteOptions};

use super::{
    After, Build, Catalog, CatalogPart, Environment, Import, Inventory, Manifest, Serve, Shared,
};
use crate::cli::args::{
    BuildProductArgs, CatalogArgs, Cli, ImportArgs, ManifestArgs, MirrorPullArgs, ServeArgs,
};

pub(super) struct Resolver<'a> {
    pub(super) cli: &'a Cli,
    pub(super) env: &'a Environment,
}

impl Resolver<'_> {
    /// The tree.yml: `-c`/`SSBUILDER_CONFIG`, else `./tree.yml` when it exists; `None` means
    /// layout mode.
    pub(super) fn config_path(&self) -> Option<PathBuf> {
        self.cli.config.clone().or_else(|| {
            let default = PathBuf::from("tree.yml");
            default.is_file().then_some(default)
        })
    }

    /// `-t`, else the current folder.
    pub(super) fn target_or_cwd(&self) -> PathBuf {
        self.cli.target_dir.clone().unwrap_or_else(|| ".".into())
    }

    /// The products: tree.yml's, or the layout's under `root`.
    pub(super) fn tree(&self, root: &Path) -> Result<Tree> {
        Ok(Tree::load(
            self.config_path().as_deref(),
            root,
            &self.overrides(),
        )?)
    }

    /// tree.yml's top-level keys as the environment and the command line replace them.
    pub(super) fn overrides(&self) -> simplestreams_builder::config::Overrides {
        simplestreams_builder::config::Overrides {
            deltas: self.cli.deltas,
            delta_max_percent: self.cli.delta_max_percent,
            ..self.env.overrides()
        }
    }

    pub(super) fn http(&self) -> HttpSettings {
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
        http.ca_certs.extend(self.env.cert_file());
        http
    }

    pub(super) fn shared(&self) -> Result<Shared> {
        Ok(Shared {
            overrides: self.overrides(),
            http: self.http(),
            clock: self.env.clock(),
            hash_cache: self.env.hash_cache(),
            signer: self.signer()?,
        })
    }

    /// `--sign-key` / `SSB_SIGN_KEY_FILE`, unlocked with `SSB_SIGN_KEY_PASSPHRASE`: a key that
    /// cannot sign stops the command before it writes anything.
    pub(super) fn signer(
        &self,
    ) -> Result<Option<std::sync::Arc<simplestreams_builder::sign::Signer>>> {
        let Some(path) = self.cli.sign_key.as_deref() else {
            return Ok(None);
        };
        let passphrase = self.env.get("SSB_SIGN_KEY_PASSPHRASE");
        let signer = simplestreams_builder::sign::Signer::load(path, passphrase)
            .context("--sign-key / SSB_SIGN_KEY_FILE")?;
        tracing::debug!("signing with key {}", signer.fingerprint());
        Ok(Some(std::sync::Arc::new(signer)))
    }

    pub(super) fn manifest(&self, args: &ManifestArgs) -> Result<Manifest> {
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
            hash_cache: self.env.hash_cache(),
            tree,
        })
    }

    pub(super) fn catalog(&self, args: &CatalogArgs, part: CatalogPart) -> Result<Catalog> {
        if self.cli.target_dir.is_some() && args.stdout {
            bail!("use -t/--target-dir or --stdout, not both");
        }
        let missing = || {
            format!(
                "missing -t/--target-dir or --stdout (and -s/--source-dir to read {} files from)",
                manifest::MANIFEST_FILE
            )
        };
        let (tree, source) = match args
            .source_dir
            .clone()
            .or_else(|| self.cli.target_dir.clone())
        {
            Some(source) => (self.tree(&source)?, source),
            // Products whose manifests all live in other namespaces (`prefix_path`) are read
            // from there: printing their catalog needs no local folder, as in the original.
            None if args.stdout && self.config_path().is_some() => {
                let source = PathBuf::from(".");
                let tree = self.tree(&source)?;
                if tree.config.products.iter().any(|p| p.prefix_path.is_none()) {
                    bail!("{}", missing());
                }
                (tree, source)
            }
            None => bail!("{}", missing()),
        };
        Ok(Catalog {
            part,
            tree,
            source,
            target: (!args.stdout).then(|| self.target_or_cwd()),
            skip_unavailable: args.skip_unavailable,
            force: args.force,
            shared: self.shared()?,
        })
    }

    pub(super) fn build(&self, args: &BuildProductArgs) -> Result<Build> {
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
            tmpdir: self.env.tmpdir(),
            shared: self.shared()?,
            tree,
        })
    }

    pub(super) fn import(&self, args: &ImportArgs) -> Result<Import> {
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
            shared: self.shared()?,
        })
    }

    pub(super) fn inventory(&self) -> Result<Inventory> {
        let target = self.target_or_cwd();
        Ok(Inventory {
            tree: self.tree(&target)?,
            target,
        })
    }

    pub(super) fn serve(&self, args: &ServeArgs) -> Result<Serve> {
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
        let shared = self.shared()?;
        Ok(Serve {
            options: ServeOptions {
                listen: args.listen,
                tls,
                index: index.then(|| IndexOptions {
                    config: self.config_path(),
                    overrides: shared.overrides,
                    clock: shared.clock,
                    hash_cache: shared.hash_cache,
                    force: args.force,
                    watch: !args.no_watch,
                    http: shared.http,
                    signer: shared.signer,
                }),
                writes: WriteOptions {
                    token,
                    allow_anonymous: args.allow_anonymous_writes,
                    allow_overwrites: args.allow_overwrites,
                    allow_deletes: args.allow_deletes,
                    max_upload_size: args.max_upload_size,
                },
                root,
                read_users: args.read_users.clone(),
            },
            mirror,
        })
    }

    /// The sources (the URL and filters, or tree.yml's `mirrors:`) and TLS settings of a pull.
    pub(super) fn pull(&self, args: &MirrorPullArgs, target: PathBuf) -> Result<PullRequest> {
        let filters = Filters {
            os: args.os.clone(),
            release: args.release.clone(),
            arch: args.arch.clone(),
            variant: args.variant.clone(),
            alias: args.alias.clone(),
            image_type: args.image_type,
            keep: args.keep.map(|k| k as usize),
            no_deltas: args.no_deltas,
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
    pub(super) fn mirror_config_request(
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

    pub(super) fn pull_request(
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
            tls: Trust {
                extra: ca_certs,
                insecure,
            },
            progress: true,
            clock: self.env.clock(),
            signer: self.signer()?,
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
pub(super) fn write_token(args: &ServeArgs) -> Result<Option<String>> {
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
