//! The commands: resolve CLI + `SSBUILDER_*` environment + tree.yml (or the layout) into what
//! to do, run it, and report. Warnings go to the log; errors carry the file or product.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use tracing::{info, warn};

use crate::cli::{CatalogArgs, Cli, Command, ManifestArgs, PublishArgs};
use crate::config::TreeConfig;
use crate::expiry::ExpiryDuration;
use crate::manifest::{self, BuildOptions, HttpSettings, MANIFEST_FILE};
use crate::products::{self, LoadOptions, Manifests, Tree};
use crate::publish;

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
            let tree = Tree::load(config_path(&cli).as_deref(), &root, &env)?;
            print!("{}", render_print(&tree.config));
            Ok(())
        }
        Command::Serve(args) => {
            let root = cli.target_dir.clone().unwrap_or_else(|| ".".into());
            crate::serve_cmd::serve(root, config_path(&cli), http_settings(&cli), args)
        }
        Command::Demo(args) => crate::demo::run(&cli, args),
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

fn human_bytes(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
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

/// Publishes the tree at `source` into `target` (see [`publish::publish_tree`]) and logs a
/// summary.
pub fn publish_tree(
    cli: &Cli,
    config: Option<PathBuf>,
    source: &Path,
    target: &Path,
    md5: bool,
    skip_unavailable: bool,
) -> Result<()> {
    let env = |k: &str| std::env::var(k).ok();
    let bar = progress_bar();
    let summary = publish::publish_tree(&publish::PublishRequest {
        config: config.as_deref(),
        source,
        target,
        md5,
        skip_unavailable,
        http: &http_settings(cli),
        env: &env,
        progress: &bar,
    });
    bar.finish_and_clear();
    let summary = summary?;
    info!(
        "published {} product(s), {} version(s) to {} (read {} of image data)",
        summary.products,
        summary.versions,
        summary.index.display(),
        human_bytes(summary.bytes_read)
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
    let tree = Tree::load(config_path(cli).as_deref(), &source, &env)?;
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
    let (m, _) = products::hash_product(spec, &tree.config, &source, &opts, &bar, &mut warnings)?;
    bar.finish_and_clear();
    products::report(&warnings);
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
    let tree = Tree::load(config_path(cli).as_deref(), &source, &env)?;
    let bar = progress_bar();
    let loaded = products::load_entries(
        &tree,
        &LoadOptions {
            source: &source,
            manifests: Manifests::Read,
            skip_unavailable: args.skip_unavailable,
            http: &http_settings(cli),
            progress: &bar,
        },
    )?;
    let mut warnings = Vec::new();
    let (products, index) = publish::build_catalog(
        &loaded.entries,
        &publish::catalog_settings(&tree),
        &mut warnings,
    )?;
    products::report(&warnings);
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
