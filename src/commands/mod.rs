//! The commands: resolve CLI + `SSBUILDER_*` environment + tree.yml (or the layout) into what
//! to do, run it, and report. Warnings go to the log; errors carry the file or product.

mod demo;
mod serve;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use tracing::{info, warn};

use crate::cli::args::{
    BuildProductArgs, CatalogArgs, Cli, Command, Format, ImportArgs, InventoryArgs, ManifestArgs,
    PruneArgs, PublishArgs,
};
use simplestreams_builder::catalog::manifest::{self, BuildOptions, HttpSettings, MANIFEST_FILE};
use simplestreams_builder::catalog::products::{self, LoadOptions, Manifests, Tree};
use simplestreams_builder::catalog::publish;
use simplestreams_builder::config::TreeConfig;
use simplestreams_builder::config::expiry::HumanDuration;

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    let env = |k: &str| std::env::var(k).ok();
    match &cli.command {
        Command::BuildProduct(args) => build_product_cmd(&cli, args),
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
        Command::Import(args) => import_cmd(&cli, args),
        Command::Verify(args) => verify_cmd(&cli, args),
        Command::Prune(args) => prune_cmd(&cli, args),
        Command::List(args) => list_cmd(&cli, args),
        Command::Serve(args) => {
            let root = cli.target_dir.clone().unwrap_or_else(|| ".".into());
            if let Some(every) = args.mirror_interval {
                let req = mirror_config_request(&cli, root.clone(), Vec::new(), false)?;
                simplestreams_builder::mirror::pull_every(req, every);
            }
            crate::commands::serve::serve(root, config_path(&cli), http_settings(&cli), args)
        }
        Command::Demo(args) => crate::commands::demo::run(&cli, args),
        Command::Mirror(args) => mirror_cmd(&cli, args),
    }
}

/// `mirror pull` / `mirror push`: CLI + tree.yml `mirrors:` into a request for [`simplestreams_builder::mirror`].
fn mirror_cmd(cli: &Cli, cmd: &crate::cli::args::MirrorCommand) -> Result<()> {
    use crate::cli::args::MirrorCommand;
    let target = cli
        .target_dir
        .clone()
        .context("mirror needs -t DIR (the mirror tree)")?;
    match cmd {
        MirrorCommand::Pull(args) => {
            let req = mirror_pull_request(cli, args, target)?;
            let report = simplestreams_builder::mirror::pull(&req)?;
            products::report(&report.warnings);
            info!(
                "mirror: {} product(s), {} version(s) published in {}; fetched {} file(s) ({}), verified {}, skipped {}, failed {}, removed {}",
                report.products,
                report.versions,
                req.target.display(),
                report.fetched,
                human_bytes(report.bytes),
                report.verified,
                report.skipped,
                report.failed.len(),
                report.removed
            );
            if !report.failed.is_empty() {
                for f in &report.failed {
                    tracing::error!("{f}");
                }
                bail!(
                    "{} file(s) could not be mirrored; everything else was published (run again to retry them)",
                    report.failed.len()
                );
            }
            Ok(())
        }
        MirrorCommand::Push(args) => {
            let report = simplestreams_builder::mirror::push(&target, &args.dest, &mut |_| {})?;
            info!(
                "pushed {} to {}: {} file(s) copied, {} unchanged, {} removed",
                target.display(),
                args.dest,
                report.copied,
                report.unchanged,
                report.removed
            );
            Ok(())
        }
    }
}

/// The sources (the URL and filters, or tree.yml's `mirrors:`) and TLS settings of a pull.
pub fn mirror_pull_request(
    cli: &Cli,
    args: &crate::cli::args::MirrorPullArgs,
    target: PathBuf,
) -> Result<simplestreams_builder::mirror::PullRequest> {
    use simplestreams_builder::mirror::{Filters, Source};
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
            finish_pull_request(sources, target, args.ca_cert.clone(), args.insecure)?
        }
        None => {
            if filters != Filters::default() {
                bail!(
                    "filters (--os, --keep, …) need a URL; without one, tree.yml `mirrors:` says what to pull"
                );
            }
            mirror_config_request(cli, target, args.ca_cert.clone(), args.insecure)?
        }
    };
    req.jobs = args.jobs as usize;
    Ok(req)
}

/// A pull of tree.yml's `mirrors:` (for `mirror pull` without a URL and `serve
/// --mirror-interval`).
pub fn mirror_config_request(
    cli: &Cli,
    target: PathBuf,
    mut ca_certs: Vec<PathBuf>,
    insecure: bool,
) -> Result<simplestreams_builder::mirror::PullRequest> {
    let path = config_path(cli)
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
        .map(|m| simplestreams_builder::mirror::Source {
            url: m.url,
            filters: m.filters,
        })
        .collect();
    finish_pull_request(sources, target, ca_certs, insecure)
}

fn finish_pull_request(
    sources: Vec<simplestreams_builder::mirror::Source>,
    target: PathBuf,
    mut ca_certs: Vec<PathBuf>,
    insecure: bool,
) -> Result<simplestreams_builder::mirror::PullRequest> {
    // rustls-platform-verifier reads SSL_CERT_FILE on Linux; adding it explicitly keeps the
    // promise if that ever changes.
    if let Some(file) = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from)
        && file.is_file()
    {
        ca_certs.push(file);
    }
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
    Ok(simplestreams_builder::mirror::PullRequest {
        sources,
        target,
        jobs: 4,
        tls: simplestreams_builder::mirror::TlsSettings { ca_certs, insecure },
        progress: true,
    })
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

/// A bar for one image's import on a terminal (hidden otherwise): the import sets its length.
fn import_bar(shown: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::no_length().with_message(shown.to_owned());
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} importing {msg} [{bar:24}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
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
        exclude: &products::Exclusions::new(),
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
    let text = fs_err::read_to_string(found)?;
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

fn manifest_cmd(cli: &Cli, args: &ManifestArgs) -> Result<()> {
    let source = args
        .source_dir
        .clone()
        .or_else(|| cli.target_dir.clone())
        .unwrap_or_else(|| ".".into());
    let target = cli.target_dir.clone().unwrap_or_else(|| source.clone());
    let env = |k: &str| std::env::var(k).ok();
    let tree = Tree::load(config_path(cli).as_deref(), &source, &env)?;
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
    let opts = BuildOptions {
        md5: args.md5,
        cache: true,
        expiry,
        ..BuildOptions::default()
    };
    let mut warnings = Vec::new();
    let bar = progress_bar();
    let (m, _) = products::hash_product(spec, &tree.config, &source, &opts, &bar, &mut warnings)?;
    bar.finish_and_clear();
    products::report(&warnings);
    if args.stdout {
        crate::cli::write_stdout(&manifest::to_json(&m))?;
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
            exclude: &products::Exclusions::new(),
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
        return crate::cli::write_stdout(&bytes);
    }
    let _lock = simplestreams_builder::tree::lock::lock_tree(
        cli.target_dir.as_deref().unwrap_or(Path::new(".")),
    )?;
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

fn build_product_cmd(cli: &Cli, args: &BuildProductArgs) -> Result<()> {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    use simplestreams_builder::build::{self, AfterBuild, BuildRequest, Stage};

    let target = cli
        .target_dir
        .clone()
        .context("build-product needs -t DIR (the tree the version is written into)")?;
    let source = args.source_dir.clone().unwrap_or_else(|| ".".into());
    let env = |k: &str| std::env::var(k).ok();
    let config = config_path(cli);
    let tree = Tree::load(config.as_deref(), &target, &env)?;
    let product = tree.product(&args.product)?;
    let interrupted = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&interrupted))
            .context("cannot install the signal handler")?;
    }
    let cache_root = std::env::var_os("CACHEDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("ssb-cache"));
    let terminal = std::io::stderr().is_terminal();
    let bar = if terminal {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {prefix}: {msg} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_prefix(product.name.clone());
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    } else {
        ProgressBar::hidden()
    };
    let name = product.name.clone();
    let output = |line: &str| {
        if terminal {
            bar.println(format!("[{name}] {line}"));
        } else {
            eprintln!("[{name}] {line}");
        }
    };
    let stage = |s: Stage| {
        bar.set_message(s.to_string());
        info!("product `{}`: {s}", product.name);
    };
    let http = http_settings(cli);
    let after = if args.no_publish {
        AfterBuild::Nothing
    } else if product.prefix_path.is_some() {
        // Its catalog is built in another namespace from the ssb.json written here.
        AfterBuild::Manifest
    } else {
        AfterBuild::Publish {
            config: config.as_deref(),
            http: &http,
            env: &env,
        }
    };
    let report = build::build_product(
        &BuildRequest {
            product,
            tree: &tree.config,
            source: &source,
            target: &target,
            image_file: args.image_file.as_deref(),
            skip_lxc: args.skip_lxc,
            skip_lxd: args.skip_lxd,
            skip_purge: args.skip_purge,
            keep_failed: args.keep_failed,
            now: publish::stamp_time(),
            cache_root: &cache_root,
            output: &output,
            stage: &stage,
            interrupted: &interrupted,
        },
        &after,
    );
    bar.finish_and_clear();
    let report = report?;
    if let Some(dir) = &report.dir {
        info!(
            "product `{}`: version {} is ready",
            product.name,
            dir.display()
        );
    }
    for dir in &report.purged {
        info!("purged {}", dir.display());
    }
    Ok(())
}

fn inventory_tree(cli: &Cli) -> Result<(PathBuf, Tree)> {
    let target = cli.target_dir.clone().unwrap_or_else(|| ".".into());
    let env = |k: &str| std::env::var(k).ok();
    let tree = Tree::load(config_path(cli).as_deref(), &target, &env)?;
    Ok((target, tree))
}

fn verify_cmd(cli: &Cli, args: &InventoryArgs) -> Result<()> {
    let (target, tree) = inventory_tree(cli)?;
    let bar = progress_bar();
    let report = simplestreams_builder::catalog::inventory::verify(&target, &tree, &|n| bar.inc(n));
    bar.finish_and_clear();
    let report = report?;
    match args.format {
        Format::Json => {
            let mut json = serde_json::to_vec(&report)?;
            json.push(b'\n');
            crate::cli::write_stdout(&json)?;
        }
        Format::Table => {
            let mut out = String::new();
            for p in &report.problems {
                out.push_str(&format!("{p}\n"));
            }
            out.push_str(&format!(
                "checked {} file(s), {} fingerprint(s), {}: {} problem(s)\n",
                report.files,
                report.fingerprints,
                human_bytes(report.bytes),
                report.problems.len()
            ));
            crate::cli::write_stdout(out.as_bytes())?;
        }
    }
    if !report.problems.is_empty() {
        bail!(
            "{} problem(s) in {}",
            report.problems.len(),
            target.display()
        );
    }
    Ok(())
}

fn prune_cmd(cli: &Cli, args: &PruneArgs) -> Result<()> {
    let (target, tree) = inventory_tree(cli)?;
    let report = simplestreams_builder::catalog::inventory::prune(&target, &tree, !args.yes)?;
    let verb = if args.yes { "removed" } else { "would remove" };
    let mut out = String::new();
    for r in &report.removed {
        out.push_str(&format!("{verb} {r}\n"));
    }
    if !args.yes && !report.removed.is_empty() {
        out.push_str("(dry run: add --yes to delete)\n");
    }
    if report.removed.is_empty() {
        out.push_str("nothing to prune\n");
    }
    crate::cli::write_stdout(out.as_bytes())?;
    if !report.failed.is_empty() {
        bail!(
            "{} file(s) could not be removed:\n{}",
            report.failed.len(),
            report.failed.join("\n")
        );
    }
    Ok(())
}

fn list_cmd(cli: &Cli, args: &InventoryArgs) -> Result<()> {
    let target = cli.target_dir.clone().unwrap_or_else(|| ".".into());
    let (_, products, _) = simplestreams_builder::catalog::inventory::load_catalog(&target)?;
    let rows = simplestreams_builder::catalog::inventory::list(&products);
    match args.format {
        Format::Json => {
            let mut json = serde_json::to_vec(&rows)?;
            json.push(b'\n');
            crate::cli::write_stdout(&json)
        }
        Format::Table => {
            let header = [
                "PRODUCT",
                "VERSION",
                "TYPE",
                "FORMAT",
                "FINGERPRINT",
                "SIZE",
                "ALIASES",
            ];
            let body: Vec<[String; 7]> = rows
                .iter()
                .map(|r| {
                    [
                        r.product.clone(),
                        r.version.clone(),
                        r.image_type.clone(),
                        r.format.clone(),
                        r.fingerprint.chars().take(12).collect(),
                        human_bytes(r.size),
                        r.aliases.join(","),
                    ]
                })
                .collect();
            let mut widths = header.map(str::len);
            for row in &body {
                for (w, cell) in widths.iter_mut().zip(row) {
                    *w = (*w).max(cell.chars().count());
                }
            }
            let mut out = String::new();
            let mut line = |cells: &[String]| {
                let parts: Vec<String> = cells
                    .iter()
                    .zip(widths)
                    .map(|(c, w)| format!("{c:<w$}"))
                    .collect();
                out.push_str(parts.join("  ").trim_end());
                out.push('\n');
            };
            line(&header.map(String::from));
            for row in &body {
                line(row);
            }
            crate::cli::write_stdout(out.as_bytes())
        }
    }
}

fn import_cmd(cli: &Cli, args: &ImportArgs) -> Result<()> {
    use simplestreams_builder::import::{self, ImportRequest, Imported};
    let target = cli.target_dir.clone().unwrap_or_else(|| ".".into());
    let images = match &args.from_dir {
        Some(src) => {
            let found = import::find_images(src)?;
            if found.is_empty() {
                bail!("no images found under {}", src.display());
            }
            found
        }
        None => vec![args.files.clone()],
    };
    import::check_aliases(&args.aliases)?;
    let mut failures = Vec::new();
    let mut changed = 0;
    for files in &images {
        let shown = files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(" + ");
        let bar = import_bar(&shown);
        let result = import::import(&ImportRequest {
            target: &target,
            files,
            variant: args.variant.as_deref(),
            progress: &bar,
        });
        bar.finish_and_clear();
        let dir = match result {
            Ok(Imported::New(dir)) => {
                info!("imported {shown} into {}", dir.display());
                changed += 1;
                dir
            }
            Ok(Imported::AlreadyThere(dir)) => {
                info!(
                    "{shown}: already imported in {} (nothing changed)",
                    dir.display()
                );
                dir
            }
            Err(e) => {
                failures.push(format!("{shown}: {e}"));
                continue;
            }
        };
        import::add_product_aliases(&target, &dir, &args.aliases)?;
    }
    if changed > 0 || !args.aliases.is_empty() {
        publish_tree(cli, None, &target, &target, false, false)?;
    }
    if !failures.is_empty() {
        bail!(
            "{} image(s) not imported:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
    Ok(())
}
