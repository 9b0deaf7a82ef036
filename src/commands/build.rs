//! `build-product`: the build with its progress and output on the terminal, interrupted cleanly
//! by Ctrl-C or SIGTERM.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result};
use tracing::info;

use simplestreams_builder::build::{self, AfterBuild, BuildRequest, Stage};

use crate::cli::progress;
use crate::cli::settings::{After, Build};

/// `build-product`.
pub fn build_product(s: &Build) -> Result<()> {
    let product = s.tree.product(&s.product)?;
    if let Some(tmp) = &s.tmpdir {
        std::fs::create_dir_all(tmp)
            .with_context(|| format!("cannot create TMPDIR {}", tmp.display()))?;
    }
    let interrupted = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&interrupted))
            .context("cannot install the signal handler")?;
    }
    let bar = progress::building(&product.name);
    let name = product.name.clone();
    let output = |line: &str| {
        if bar.is_hidden() {
            eprintln!("[{name}] {line}");
        } else {
            bar.println(format!("[{name}] {line}"));
        }
    };
    let stage = |st: Stage| {
        bar.set_message(st.to_string());
        info!("product `{}`: {st}", product.name);
    };
    let after = match s.after {
        After::Nothing => AfterBuild::Nothing,
        // Its catalog is built in another namespace from the ssb.json written here.
        After::Manifest => AfterBuild::Manifest,
        After::Publish => AfterBuild::Publish {
            tree: &s.tree,
            http: &s.shared.http,
            clock: s.shared.clock,
            signer: s.shared.signer.as_deref(),
        },
    };
    let report = build::build_product(
        &BuildRequest {
            product,
            tree: &s.tree.config,
            source: &s.source,
            target: &s.target,
            hash_cache: &s.shared.hash_cache,
            image_file: s.image_file.as_deref(),
            skip_lxc: s.skip_lxc,
            skip_lxd: s.skip_lxd,
            skip_purge: s.skip_purge,
            keep_failed: s.keep_failed,
            now: s.shared.clock.now(),
            cache_root: &s.cache_root,
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
    Ok(())
}
