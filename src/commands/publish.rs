//! `publish`, and the older one-step commands it replaces: `build-versions-manifest`,
//! `build-images-file`, `build-index`; and `print`.

use std::path::Path;

use anyhow::{Context, Result};
use tracing::info;

use simplestreams_builder::catalog::manifest::{self, BuildOptions, MANIFEST_FILE};
use simplestreams_builder::catalog::products::{self, LoadOptions, Manifests, Tree};
use simplestreams_builder::catalog::publish::{self as catalog, PublishRequest};
use simplestreams_builder::config::TreeConfig;

use crate::cli::progress::{self, human_bytes};
use crate::cli::settings::{Catalog, CatalogPart, Manifest, Publish, Shared};
use crate::cli::write_stdout;

/// `publish`.
pub fn publish(s: &Publish) -> Result<()> {
    publish_tree(
        &s.tree,
        &s.source,
        &s.target,
        s.md5,
        s.skip_unavailable,
        s.force,
        &s.shared,
    )
}

/// Publishes the tree at `source` into `target` (see [`catalog::publish_tree`]) and logs a
/// summary.
pub fn publish_tree(
    tree: &Tree,
    source: &Path,
    target: &Path,
    md5: bool,
    skip_unavailable: bool,
    force: bool,
    shared: &Shared,
) -> Result<()> {
    let bar = progress::hashing();
    let summary = catalog::publish_tree(&PublishRequest {
        tree,
        source,
        target,
        md5,
        skip_unavailable,
        http: &shared.http,
        clock: shared.clock,
        hash_cache: &shared.hash_cache,
        force,
        progress: &bar,
        exclude: &products::Exclusions::new(),
        only: None,
        entry_cache: None,
        catalog_in_memory: false,
        serve_made: None,
        signer: shared.signer.as_deref(),
    });
    bar.finish_and_clear();
    let summary = summary?;
    info!(
        "published {} product(s), {} version(s) to {} (read {} of image data{}{}{})",
        summary.products,
        summary.versions,
        summary.index.display(),
        human_bytes(summary.bytes_read),
        if summary.written {
            ""
        } else {
            "; nothing changed, the catalog was kept as it was"
        },
        match summary.companions.lxc_versions {
            0 => String::new(),
            n => format!("; {n} version(s) in LXC's index"),
        },
        match summary.companions.signed {
            0 => String::new(),
            n => format!("; {n} file(s) signed"),
        }
    );
    fail_on_rejected(&summary.rejected)
}

/// A run that left broken versions out still published the rest, but ends in failure so a
/// pipeline notices: the versions stay out until their files are fixed or removed.
fn fail_on_rejected(rejected: &[manifest::Rejected]) -> Result<()> {
    if rejected.is_empty() {
        return Ok(());
    }
    let lines: Vec<String> = rejected.iter().map(|r| format!("  {}", r.reason)).collect();
    anyhow::bail!(
        "{} version(s) were left out of the catalog because a file of theirs is broken (the rest is published; fix or remove them and publish again):\n{}",
        rejected.len(),
        lines.join("\n")
    )
}

/// Publishes the layout tree at `target` as it is now (after an import or the demo build).
pub fn publish_layout(target: &Path, shared: &Shared) -> Result<()> {
    let tree = Tree::load(None, target, &shared.overrides)?;
    publish_tree(&tree, target, target, false, false, false, shared)
}

/// `build-versions-manifest`.
pub fn manifest(s: &Manifest) -> Result<()> {
    let spec = s.tree.product(&s.product)?;
    let opts = BuildOptions {
        md5: s.md5,
        cache: Some(s.hash_cache.clone()),
        expiry: s.expiry,
        ..BuildOptions::default()
    };
    let mut warnings = Vec::new();
    let bar = progress::hashing();
    let built =
        products::hash_product(spec, &s.tree.config, &s.source, &opts, &bar, &mut warnings)?;
    bar.finish_and_clear();
    products::report(&warnings);
    let m = built.manifest;
    match &s.target {
        None => write_stdout(&manifest::to_json(&m))?,
        Some(target) => {
            let path = target.join(&spec.directory).join(MANIFEST_FILE);
            manifest::write(&path, &m)
                .with_context(|| format!("cannot write {}", path.display()))?;
            info!("wrote {} ({} version(s))", path.display(), m.versions.len());
        }
    }
    fail_on_rejected(&built.rejected)
}

/// `build-images-file` and `build-index`.
pub fn catalog(s: &Catalog) -> Result<()> {
    let bar = progress::hashing();
    let loaded = products::load_entries(
        &s.tree,
        &LoadOptions {
            source: &s.source,
            manifests: Manifests::Read,
            skip_unavailable: s.skip_unavailable,
            http: &s.shared.http,
            progress: &bar,
            exclude: &products::Exclusions::new(),
            only: None,
            entry_cache: None,
        },
    )?;
    let mut warnings = Vec::new();
    let (products, index) = catalog::build_catalog(
        loaded.entries,
        &catalog::catalog_settings(&s.tree, s.shared.clock),
        &mut warnings,
    )?;
    products::report(&warnings);
    let bytes = match s.part {
        CatalogPart::Products => catalog::to_json(&products),
        CatalogPart::Index => catalog::to_json(&index),
    };
    let Some(target) = &s.target else {
        return write_stdout(&bytes);
    };
    if !s.force {
        catalog::check_replacement(target, &s.tree, &products)?;
    }
    let path = match s.part {
        CatalogPart::Products => catalog::products_path(target, &s.tree.config.images_path),
        CatalogPart::Index => catalog::index_path(target),
    };
    let _lock = simplestreams_builder::tree::lock::lock_tree(target)?;
    catalog::write_with_gz(&path, bytes)?;
    info!("wrote {}", path.display());
    Ok(())
}

/// `print`.
pub fn print(tree: &Tree) -> Result<()> {
    write_stdout(render_print(&tree.config).as_bytes())
}

/// The `print` output of the original tool, with our extra keys.
fn render_print(c: &TreeConfig) -> String {
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
    let file = match &c.file {
        Some(file) => file.display().to_string(),
        None => "(none: products found in the images/ layout)".to_owned(),
    };
    let _ = writeln!(s, "{line}\n\n{line}\nConfig File:  {file}\n{line}");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn print_names_the_config_file_or_says_layout_mode() {
        let yml = "products:\n  - name: p\n    arch: amd64\n    directory: p\n";
        let mut config = TreeConfig::parse(Path::new("/srv/tree.yml"), yml).unwrap();
        assert!(render_print(&config).contains("Config File:  /srv/tree.yml\n"));
        config.file = None;
        let out = render_print(&config);
        assert!(
            out.contains("Config File:  (none: products found in the images/ layout)"),
            "{out}"
        );
    }
}
