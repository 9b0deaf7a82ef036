//! The commands: resolve CLI + `SSBUILDER_*` environment + tree.yml (or the layout) into what
//! to do, run it, and report. Warnings go to the log; errors carry the file or product.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use tracing::{info, warn};

use crate::cli::{CatalogArgs, Cli, Command, ManifestArgs, PublishArgs};
use crate::config::{self, Origin, ProductSpec, TreeConfig};
use crate::expiry::ExpiryDuration;
use crate::manifest::{self, BuildOptions, HttpSettings, MANIFEST_FILE};
use crate::publish::{self, CatalogSettings, Entry};
use crate::stream::canonical_arch;
use crate::tree;

/// Where the products come from.
pub struct Tree {
    /// Validated configuration (synthesised in layout mode).
    pub config: TreeConfig,
    /// True when the products were discovered from the layout.
    pub layout: bool,
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    let env = |k: &str| std::env::var(k).ok();
    match &cli.command {
        Command::Publish(args) => publish_cmd(&cli, args),
        Command::BuildVersionsManifest(args) => manifest_cmd(&cli, args),
        Command::BuildImagesFile(args) => catalog_cmd(&cli, args, CatalogPart::Products),
        Command::BuildIndex(args) => catalog_cmd(&cli, args, CatalogPart::Index),
        Command::Print => {
            let root = cli.target_dir.clone().unwrap_or_else(|| ".".into());
            let tree = load_tree(config_path(&cli), &root, &env)?;
            print!("{}", render_print(&tree.config));
            Ok(())
        }
        Command::Serve(args) => {
            let root = cli.target_dir.clone().unwrap_or_else(|| ".".into());
            crate::serve_cmd::serve(root, args)
        }
        Command::Demo(args) => crate::demo::run(&cli, args),
    }
}

fn report(warnings: &[String]) {
    for w in warnings {
        warn!("{w}");
    }
}

/// Finds the tree.yml: `-c`/`SSBUILDER_CONFIG`, else `./tree.yml` when it exists; `None` means
/// layout mode.
pub fn config_path(cli: &Cli) -> Option<PathBuf> {
    cli.config.clone().or_else(|| {
        let default = PathBuf::from("tree.yml");
        default.is_file().then_some(default)
    })
}

/// Loads the products: from tree.yml, or discovered under `root` in layout mode.
pub fn load_tree(
    config: Option<PathBuf>,
    root: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Tree> {
    if let Some(path) = config {
        let mut config = TreeConfig::load(&path)?;
        config.apply_env(env);
        report(&config.warnings);
        return Ok(Tree {
            config,
            layout: false,
        });
    }
    if !root.is_dir() {
        bail!(
            "{} is not a folder; without a tree.yml, -t/-s must name a tree holding images/<os>/<release>/<arch>/<variant>/<version>/",
            root.display()
        );
    }
    let mut warnings = Vec::new();
    let found = tree::discover_layout(root, &mut warnings)?;
    report(&warnings);
    let mut problems = Vec::new();
    let mut products = Vec::new();
    for p in found {
        let dir = root.join(&p.directory);
        if canonical_arch(&p.arch).is_none() {
            problems.push(format!(
                "{}: unknown architecture folder `{}` (LXD and Incus would drop the product); use a name such as amd64 or arm64",
                dir.display(),
                p.arch
            ));
            continue;
        }
        let mut aliases = vec![format!("{}/{}/{}", p.os, p.release, p.variant)];
        if p.variant == "default" {
            aliases.push(format!("{}/{}", p.os, p.release));
        }
        for a in &aliases {
            if let Err(why) = config::check_alias(a) {
                problems.push(format!(
                    "{}: the alias `{a}` made from these folder names {why}",
                    dir.display()
                ));
            }
        }
        products.push(ProductSpec {
            name: format!("{}:{}:{}:{}", p.os, p.release, p.arch, p.variant),
            arch: p.arch,
            release: Some(p.release),
            os: None,
            release_title: None,
            directory: p.directory,
            version: None,
            prefix_path: None,
            build_script_hook: None,
            hidden: false,
            days: 1,
            aliases,
            variant: Some(p.variant),
            release_codename: None,
            requirements: None,
            expiry: None,
            origin: Origin::Layout { dir },
        });
    }
    if !problems.is_empty() {
        bail!(
            "the layout under {} has {} problem(s):\n{}",
            root.display(),
            problems.len(),
            problems.join("\n")
        );
    }
    if products.is_empty() {
        warn!(
            "no products under {}: expected images/<os>/<release>/<arch>/<variant>/<YYYYMMDD_HH:MM>/ (or a tree.yml)",
            root.display()
        );
    }
    let mut config = TreeConfig {
        file: PathBuf::new(),
        prefix: String::new(),
        images_path: config::DEFAULT_IMAGES_PATH.into(),
        datatype: config::DEFAULT_DATATYPE.into(),
        format: config::DEFAULT_FORMAT.into(),
        products,
        warnings: Vec::new(),
    };
    config.apply_env(env);
    Ok(Tree {
        config,
        layout: true,
    })
}

/// Fills what a layout product leaves to its images: the OS name from metadata.yaml, else the
/// folder name.
fn finish_layout_spec(spec: &mut ProductSpec, m: &crate::stream::Manifest) {
    if spec.os.is_none() {
        let folder = spec
            .directory
            .split('/')
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        spec.os = Some(m.properties.get("os").cloned().unwrap_or(folder));
    }
}

fn http_settings(cli: &Cli) -> HttpSettings {
    let mut http = HttpSettings {
        apikey: cli.apikey.clone().filter(|k| !k.is_empty()),
        ..HttpSettings::default()
    };
    if let Ok(v) = std::env::var("SSBUILDER_HTTP_TIMEOUT") {
        match v.trim().parse::<u64>() {
            Ok(s) if s > 0 => http.timeout = Duration::from_secs(s),
            _ => warn!(
                "SSBUILDER_HTTP_TIMEOUT=`{v}` is not a number of seconds; using {}s",
                http.timeout.as_secs()
            ),
        }
    }
    let flag = |k: &str| std::env::var(k).is_ok_and(|v| matches!(v.trim(), "1" | "true" | "yes"));
    http.insecure = flag("SSBUILDER_INSECURE_SKIPVERIFY");
    http.token_over_http = flag("SSBUILDER_ALLOW_HTTP_TOKEN");
    http
}

fn progress_bar() -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} hashing {msg} {bytes} ({bytes_per_sec})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// Hashes a local product's folder under `source` into its manifest.
fn hash_product(
    spec: &ProductSpec,
    config: &TreeConfig,
    source: &Path,
    opts: &BuildOptions,
    bar: &ProgressBar,
    warnings: &mut Vec<String>,
) -> Result<(crate::stream::Manifest, u64), manifest::ManifestError> {
    manifest::build(
        manifest::LocalProduct {
            name: &spec.name,
            arch: &spec.arch,
            dir: &source.join(&spec.directory),
            directory: &spec.directory,
            prefix: &config.prefix,
        },
        opts,
        &|n| bar.inc(n),
        warnings,
    )
}

/// Loads every product's manifest: local ones by hashing (`hash`) or from their ssb.json,
/// remote ones fetched once each. Returns the entries, in tree order.
fn load_entries(
    cli: &Cli,
    tree: &Tree,
    source: &Path,
    target: Option<&Path>,
    hash: Option<&BuildOptions>,
    skip_unavailable: bool,
) -> Result<Vec<Entry>> {
    let mut warnings = Vec::new();
    let remote: Vec<(String, String)> = tree
        .config
        .products
        .iter()
        .filter(|p| !p.hidden || hash.is_some())
        .filter_map(|p| {
            p.prefix_path
                .as_ref()
                .map(|pp| (p.name.clone(), manifest::remote_url(pp, &p.directory)))
        })
        .collect();
    let mut fetched = manifest::fetch_all(&remote, &http_settings(cli), &mut warnings).into_iter();
    let bar = progress_bar();
    let mut entries = Vec::new();
    let mut failures = Vec::new();
    let mut bytes = 0u64;
    for spec in &tree.config.products {
        if spec.hidden && hash.is_none() {
            continue;
        }
        let loaded = if spec.prefix_path.is_some() {
            fetched.next().expect("one fetch result per remote product")
        } else if let Some(opts) = hash {
            bar.set_message(spec.name.clone());
            let mut opts = opts.clone();
            opts.expiry = opts.expiry.or(spec.expiry);
            hash_product(spec, &tree.config, source, &opts, &bar, &mut warnings)
                .map(|(m, n)| {
                    bytes += n;
                    m
                })
                .and_then(|m| {
                    if let Some(target) = target {
                        let path = target.join(&spec.directory).join(MANIFEST_FILE);
                        manifest::write(&path, &m).map_err(|e| manifest::ManifestError::Read {
                            product: spec.name.clone(),
                            path,
                            reason: format!("cannot write: {e}"),
                        })?;
                    }
                    Ok(m)
                })
        } else {
            let path = source.join(&spec.directory).join(MANIFEST_FILE);
            manifest::read(&spec.name, &path, &mut warnings)
        };
        match loaded {
            Ok(m) => {
                let mut spec = spec.clone();
                if tree.layout {
                    finish_layout_spec(&mut spec, &m);
                }
                entries.push(Entry { spec, manifest: m });
            }
            Err(e) if skip_unavailable => {
                warnings.push(format!("{e}; left out (--skip-unavailable)"))
            }
            Err(e) => failures.push(e.to_string()),
        }
    }
    bar.finish_and_clear();
    report(&warnings);
    if hash.is_some() {
        info!(
            "hashed {} product(s), read {} of image data",
            entries.len(),
            human_bytes(bytes)
        );
    }
    if !failures.is_empty() {
        bail!(
            "{} product(s) could not be loaded; nothing was published (use --skip-unavailable to publish the rest):\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
    Ok(entries)
}

fn human_bytes(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}

fn catalog_settings(tree: &Tree) -> CatalogSettings {
    CatalogSettings {
        images_path: tree.config.images_path.clone(),
        datatype: tree.config.datatype.clone(),
        format: tree.config.format.clone(),
        updated: publish::updated_now(),
    }
}

fn publish_cmd(cli: &Cli, args: &PublishArgs) -> Result<()> {
    let target = cli
        .target_dir
        .clone()
        .or_else(|| args.source_dir.clone())
        .context("publish needs -t DIR (the tree to publish)")?;
    let source = args.source_dir.clone().unwrap_or_else(|| target.clone());
    publish_tree(
        cli,
        config_path(cli),
        &source,
        &target,
        args.md5,
        args.skip_unavailable,
    )
}

/// Manifests for every product, then images.json and index.json from that one state.
pub fn publish_tree(
    cli: &Cli,
    config: Option<PathBuf>,
    source: &Path,
    target: &Path,
    md5: bool,
    skip_unavailable: bool,
) -> Result<()> {
    let env = |k: &str| std::env::var(k).ok();
    let tree = load_tree(config, source, &env)?;
    let opts = BuildOptions {
        md5,
        cache: true,
        expiry: None,
    };
    let entries = load_entries(
        cli,
        &tree,
        source,
        Some(target),
        Some(&opts),
        skip_unavailable,
    )?;
    let mut warnings = Vec::new();
    let (products, index) =
        publish::build_catalog(&entries, &catalog_settings(&tree), &mut warnings)?;
    report(&warnings);
    publish::write_catalog(target, &tree.config.images_path, &products, &index)?;
    let images: usize = products.products.values().map(|p| p.versions.len()).sum();
    info!(
        "published {} product(s), {} version(s) to {}",
        products.products.len(),
        images,
        publish::index_path(target).display()
    );
    Ok(())
}

fn image_file_expiry(path: &Path, candidates: &[PathBuf]) -> Result<Option<ExpiryDuration>> {
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
    let text = fs_err::read_to_string(found)?;
    let def: Def = serde_saphyr::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: {}", found.display(), e.without_snippet()))?;
    def.image
        .and_then(|i| i.expiry)
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            ExpiryDuration::parse(&e).with_context(|| format!("{}: image.expiry", found.display()))
        })
        .transpose()
}

fn manifest_cmd(cli: &Cli, args: &ManifestArgs) -> Result<()> {
    let source = args
        .source_dir
        .clone()
        .or_else(|| cli.target_dir.clone())
        .unwrap_or_else(|| ".".into());
    let target = cli.target_dir.clone().unwrap_or_else(|| source.clone());
    let env = |k: &str| std::env::var(k).ok();
    let tree = load_tree(config_path(cli), &source, &env)?;
    let Some(spec) = tree.config.product(&args.product) else {
        bail!(
            "no product named `{}`; known: {}",
            args.product,
            tree.config
                .products
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    let expiry = match (&args.expire, &args.image_file) {
        (Some(e), _) => Some(ExpiryDuration::parse(e).context("-e/--force-expire")?),
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
    let opts = BuildOptions {
        md5: args.md5,
        cache: true,
        expiry,
    };
    let mut warnings = Vec::new();
    let bar = progress_bar();
    let (m, _) = hash_product(spec, &tree.config, &source, &opts, &bar, &mut warnings)?;
    bar.finish_and_clear();
    report(&warnings);
    if args.stdout {
        crate::write_stdout(&manifest::to_json(&m))?;
    } else {
        let path = target.join(&spec.directory).join(MANIFEST_FILE);
        manifest::write(&path, &m).with_context(|| format!("cannot write {}", path.display()))?;
        info!("wrote {} ({} version(s))", path.display(), m.versions.len());
    }
    Ok(())
}

enum CatalogPart {
    Products,
    Index,
}

fn catalog_cmd(cli: &Cli, args: &CatalogArgs, part: CatalogPart) -> Result<()> {
    if cli.target_dir.is_some() && args.stdout {
        bail!("use -t/--target-dir or --stdout, not both");
    }
    let source = args
        .source_dir
        .clone()
        .or_else(|| cli.target_dir.clone())
        .context(
            "missing -t/--target-dir or --stdout (and -s/--source-dir to read ssb.json files from)",
        )?;
    let env = |k: &str| std::env::var(k).ok();
    let tree = load_tree(config_path(cli), &source, &env)?;
    let entries = load_entries(cli, &tree, &source, None, None, args.skip_unavailable)?;
    let mut warnings = Vec::new();
    let (products, index) =
        publish::build_catalog(&entries, &catalog_settings(&tree), &mut warnings)?;
    report(&warnings);
    let (bytes, path) = match part {
        CatalogPart::Products => (
            publish::to_json(&products),
            publish::products_path(
                cli.target_dir.as_deref().unwrap_or(Path::new(".")),
                &tree.config.images_path,
            ),
        ),
        CatalogPart::Index => (
            publish::to_json(&index),
            publish::index_path(cli.target_dir.as_deref().unwrap_or(Path::new("."))),
        ),
    };
    if args.stdout {
        return crate::write_stdout(&bytes);
    }
    let _lock = publish::lock_tree(cli.target_dir.as_deref().unwrap_or(Path::new(".")))?;
    publish::write_with_gz(&path, &bytes)?;
    info!("wrote {}", path.display());
    Ok(())
}

/// The `print` output of the original tool, with our extra keys.
pub fn render_print(c: &TreeConfig) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let line = "===================================";
    let _ = writeln!(s, "{line}\nCONFIGURATION PARAMS:\n{line}\n");
    let _ = writeln!(s, "prefix: {}", c.prefix);
    let _ = writeln!(s, "images_path: {}", c.images_path);
    let _ = writeln!(s, "datatype: {}", c.datatype);
    let _ = writeln!(s, "format: {}", c.format);
    let _ = writeln!(s, "products:");
    let opt = |v: &Option<String>| v.clone().unwrap_or_default();
    for p in &c.products {
        let _ = writeln!(s);
        let _ = writeln!(s, "\tname: {}", p.name);
        let _ = writeln!(s, "\tarch: {}", p.arch);
        let _ = writeln!(s, "\trelease: {}", opt(&p.release));
        let _ = writeln!(s, "\trelease_title: {}", opt(&p.release_title));
        let _ = writeln!(s, "\tos: {}", opt(&p.os));
        let _ = writeln!(s, "\tdirectory: {}", p.directory);
        let _ = writeln!(s, "\tversion: {}", opt(&p.version));
        let _ = writeln!(s, "\tprefix_path: {}", opt(&p.prefix_path));
        let _ = writeln!(s, "\thidden: {}", p.hidden);
        let _ = writeln!(s, "\tdays: {}", p.days);
        let _ = writeln!(s, "\tbuild_script_hook: {}", opt(&p.build_script_hook));
        let _ = writeln!(s, "\taliases: [{}]", p.aliases.join(" "));
        let _ = writeln!(s, "\tvariant: {}", opt(&p.variant));
        let _ = writeln!(s, "\trelease_codename: {}", opt(&p.release_codename));
        if let Some(r) = &p.requirements {
            let kv: Vec<String> = r.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = writeln!(s, "\trequirements: [{}]", kv.join(" "));
        }
        if let Some(e) = &p.expiry {
            let _ = writeln!(s, "\texpiry: {e}");
        }
    }
    let _ = writeln!(
        s,
        "{line}\n\n{line}\nConfig File:  {}\n{line}",
        c.file.display()
    );
    s
}
