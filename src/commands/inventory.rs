//! `verify`, `prune` and `list`: the published catalog against the tree.

use std::path::Path;

use anyhow::{Result, bail};

use simplestreams_builder::catalog::inventory;
use simplestreams_builder::catalog::products::Tree;

use crate::cli::args::Format;
use crate::cli::progress::{self, human_bytes};
use crate::cli::settings::Inventory;
use crate::cli::write_stdout;

/// Writes `value` as one line of JSON.
fn write_json(value: &impl serde::Serialize) -> Result<()> {
    let mut json = serde_json::to_vec(value)?;
    json.push(b'\n');
    write_stdout(&json)
}

/// `verify`.
pub fn verify(s: &Inventory, format: Format) -> Result<()> {
    let bar = progress::hashing();
    let report = inventory::verify(&s.target, &s.tree, &|n| bar.inc(n));
    bar.finish_and_clear();
    let report = report?;
    let checked = format!(
        "{} file(s), {} fingerprint(s), {}",
        report.files,
        report.fingerprints,
        human_bytes(report.bytes)
    );
    print_verify(
        &report,
        &report.problems,
        &checked,
        format,
        &s.target.display(),
    )
}

/// Prints what `verify` found (the report as JSON, or each problem and what was `checked`), and
/// fails when it found problems in `target`.
pub fn print_verify(
    report: &impl serde::Serialize,
    problems: &[impl std::fmt::Display],
    checked: &str,
    format: Format,
    target: &dyn std::fmt::Display,
) -> Result<()> {
    match format {
        Format::Json => write_json(report)?,
        Format::Table => {
            let mut out = String::new();
            for p in problems {
                out.push_str(&format!("{p}\n"));
            }
            out.push_str(&format!(
                "checked {checked}: {} problem(s)\n",
                problems.len()
            ));
            write_stdout(out.as_bytes())?;
        }
    }
    if !problems.is_empty() {
        bail!("{} problem(s) in {target}", problems.len());
    }
    Ok(())
}

/// `prune`: a dry run unless `yes`.
pub fn prune(s: &Inventory, yes: bool) -> Result<()> {
    let report = inventory::prune(&s.target, &s.tree, !yes)?;
    print_prune(&report.removed, &[], yes)?;
    if !report.failed.is_empty() {
        bail!(
            "{} file(s) could not be removed:\n{}",
            report.failed.len(),
            report.failed.join("\n")
        );
    }
    Ok(())
}

/// Prints what `prune` removed (or, unless `yes`, would remove), then the lines of what it keeps
/// for now.
pub fn print_prune(removed: &[String], kept: &[String], yes: bool) -> Result<()> {
    let verb = if yes { "removed" } else { "would remove" };
    let mut out = String::new();
    for r in removed {
        out.push_str(&format!("{verb} {r}\n"));
    }
    for line in kept {
        out.push_str(line);
        out.push('\n');
    }
    if !yes && !removed.is_empty() {
        out.push_str("(dry run: add --yes to delete)\n");
    }
    if removed.is_empty() && kept.is_empty() {
        out.push_str("nothing to prune\n");
    }
    write_stdout(out.as_bytes())
}

/// `list`: the published images, then the versions left out as broken (when the tree's
/// products could be loaded).
pub fn list(target: &Path, tree: Option<&Tree>, format: Format) -> Result<()> {
    let (_, products, _) = inventory::load_catalog(target)?;
    let unpublished = match tree {
        Some(tree) => inventory::orphans(target, tree, &products)?,
        None => Vec::new(),
    };
    print_list(inventory::list(&products, &unpublished), format)
}

/// Prints `list`'s rows as JSON or a table (the rejected versions last).
pub fn print_list(all: Vec<inventory::ListRow>, format: Format) -> Result<()> {
    if format == Format::Json {
        return write_json(&all);
    }
    let (rows, rejected): (Vec<_>, Vec<_>) = all.into_iter().partition(|r| r.problem.is_none());
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
                if r.fingerprint.is_empty() {
                    "-".to_owned()
                } else {
                    r.fingerprint.chars().take(12).collect()
                },
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
    for r in &rejected {
        out.push_str(&format!(
            "REJECTED {} {}: {}\n",
            r.product,
            r.version,
            r.problem.as_deref().unwrap_or_default()
        ));
    }
    write_stdout(out.as_bytes())
}
