//! Commands on a tree in a bucket (`-t s3://BUCKET/PREFIX`). What is built, imported or pulled
//! is made in a local staging tree first (only the new versions), hashed there once, then goes
//! up: files, then manifests, then the catalog (see `simplestreams_builder::bucket`).

use std::path::Path;

use anyhow::{Context, Result, bail};
use tracing::info;

use simplestreams_builder::bucket::{self, Bucket, inventory as bucket_inventory};
use simplestreams_builder::catalog::manifest::BuildOptions;
use simplestreams_builder::catalog::products::{self, LoadOptions, Manifests, Tree};
use simplestreams_builder::server::{BucketServeOptions, ServerHandle, serve_bucket};

use crate::cli::progress::{self, human_bytes};
use crate::cli::settings::{BucketAction, BucketJob, Import, Shared};

/// Runs one command on a bucket.
pub fn run(job: BucketJob) -> Result<()> {
    let bucket = Bucket::open(job.url.clone(), &job.s3)?;
    if let BucketAction::Serve(s) = job.action {
        serve_bucket(
            BucketServeOptions {
                bucket,
                listen: s.listen,
                tls: s.tls,
                redirect: s.redirect,
                state_dir: s.state_dir,
            },
            ServerHandle::new(),
            |_| {},
            true,
        )?;
        return Ok(());
    }
    let rt = bucket::runtime().context("cannot start the async runtime")?;
    // Before anything is built or written: a server that ignores conditional writes would let
    // concurrent publishers lose each other's products.
    let writes = !matches!(
        job.action,
        BucketAction::Verify(_) | BucketAction::List(_) | BucketAction::Prune { .. }
    );
    if writes {
        rt.block_on(bucket::catalog::probe_conditional_writes(&bucket))?;
    }
    let up = Upload {
        bucket: &bucket,
        rt: &rt,
        config: job.config.as_deref(),
        shared: &job.shared,
    };
    match job.action {
        BucketAction::Publish {
            source: None,
            force,
            ..
        } => up.catalog(force),
        BucketAction::Publish {
            source: Some((source, tree)),
            md5,
            skip_unavailable,
            force,
        } => up.local_tree(&tree, &source, md5, skip_unavailable, force),
        BucketAction::MirrorPush { source, tree } => {
            up.local_tree(&tree, &source, false, false, false)
        }
        BucketAction::Import {
            images,
            aliases,
            variant,
        } => {
            let staging = staging()?;
            super::import::import(&Import {
                target: staging.path().to_owned(),
                images,
                aliases,
                variant,
                shared: job.shared.clone(),
            })?;
            let tree = Tree::load(None, staging.path(), &job.shared.overrides)?;
            up.local_tree(&tree, staging.path(), false, false, false)
        }
        BucketAction::Build(mut build) => {
            let staging = staging()?;
            build.target = staging.path().to_owned();
            // The staging tree holds this product's new version only: its earlier versions
            // (nothing to purge) and the other products are in the bucket. The version is
            // hashed once, by the upload below.
            build.skip_purge = true;
            build.after = crate::cli::settings::After::Nothing;
            let product = build.product.clone();
            build.tree.config.products.retain(|p| p.name == product);
            super::build::build_product(&build)?;
            up.local_tree(&build.tree, staging.path(), false, false, false)
        }
        BucketAction::MirrorPull(req) => {
            let report = rt.block_on(bucket::mirror::pull(&bucket, &req))?;
            products::report(&report.warnings);
            info!(
                "mirror into {}: {} version(s) of {} product(s) added ({} file(s), {} streamed from the remote); {} version(s) already there",
                bucket.url(),
                report.versions,
                report.products,
                report.files,
                human_bytes(report.bytes),
                report.present
            );
            // Mirrored products go into the layout; a tree.yml's products are kept beside them.
            up.catalog(false)?;
            if !report.failed.is_empty() {
                bail!(
                    "{} version(s) could not be mirrored (the rest is published):\n{}",
                    report.failed.len(),
                    report.failed.join("\n")
                );
            }
            Ok(())
        }
        BucketAction::Verify(format) => {
            let bar = progress::hashing();
            let report = rt.block_on(bucket_inventory::verify(&bucket, &|n| bar.inc(n)));
            bar.finish_and_clear();
            let report = report?;
            let checked = format!("{} file(s), {}", report.files, human_bytes(report.bytes));
            super::inventory::print_verify(
                &report,
                &report.problems,
                &checked,
                format,
                bucket.url(),
            )
        }
        BucketAction::List(format) => {
            let products = rt
                .block_on(bucket_inventory::catalog(&bucket))?
                .with_context(|| format!("{} has no catalog: publish first", bucket.url()))?;
            super::inventory::print_list(
                simplestreams_builder::catalog::inventory::list(&products, &[]),
                format,
            )
        }
        BucketAction::Prune { yes, grace } => {
            let tree = rt.block_on(bucket::catalog::products(
                &bucket,
                job.config.as_deref(),
                &job.shared.overrides,
            ))?;
            let report = rt.block_on(bucket_inventory::prune(
                &bucket,
                &tree,
                grace,
                // The grace period is real time, whatever SOURCE_DATE_EPOCH stamps on catalogs.
                jiff::Timestamp::now(),
                !yes,
            ))?;
            let kept: Vec<String> = report
                .waiting
                .iter()
                .map(|(r, until)| format!("unreferenced {r}: kept until {until} (grace period)"))
                .collect();
            super::inventory::print_prune(&report.removed, &kept, yes)
        }
        BucketAction::Serve(_) => unreachable!("served above"),
    }
}

/// A local folder for what goes up, removed at the end.
fn staging() -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("ssb-staging-")
        .tempdir()
        .context("cannot make a staging folder in the temp folder (TMPDIR)")
}

/// What every upload into the bucket shares.
struct Upload<'a> {
    bucket: &'a Bucket,
    rt: &'a tokio::runtime::Runtime,
    config: Option<&'a Path>,
    shared: &'a Shared,
}

impl Upload<'_> {
    /// Hashes the local products of `tree` under `source`, pushes what the bucket lacks, then
    /// publishes the catalog.
    fn local_tree(
        &self,
        tree: &Tree,
        source: &Path,
        md5: bool,
        skip_unavailable: bool,
        force: bool,
    ) -> Result<()> {
        let build = BuildOptions {
            md5,
            cache: Some(self.shared.hash_cache.clone()),
            delta: simplestreams_builder::delta::DeltaPolicy {
                max_percent: tree.config.delta_max_percent,
                ..Default::default()
            },
            ..BuildOptions::default()
        };
        let bar = progress::hashing();
        let loaded = products::load_entries(
            tree,
            &LoadOptions {
                source,
                manifests: Manifests::Hash {
                    opts: &build,
                    write_to: None,
                },
                skip_unavailable,
                http: &self.shared.http,
                progress: &bar,
                exclude: &products::Exclusions::new(),
                only: None,
                entry_cache: None,
            },
        );
        bar.finish_and_clear();
        let loaded = loaded?;
        let pushed = self.rt.block_on(bucket::push::push_entries(
            self.bucket,
            source,
            &loaded.entries,
        ))?;
        info!(
            "{}: {} version(s) of {} product(s) uploaded ({} file(s), {}); {} version(s) already there",
            self.bucket.url(),
            pushed.versions,
            pushed.products,
            pushed.files,
            human_bytes(pushed.bytes),
            pushed.unchanged
        );
        self.catalog(force)?;
        if !loaded.rejected.is_empty() {
            let lines: Vec<String> = loaded
                .rejected
                .iter()
                .map(|r| format!("  {}", r.reason))
                .collect();
            bail!(
                "{} version(s) were not uploaded because a file of theirs is broken (the rest is published):\n{}",
                lines.len(),
                lines.join("\n")
            );
        }
        Ok(())
    }

    /// Rebuilds and publishes the bucket's catalog from its manifests.
    fn catalog(&self, force: bool) -> Result<()> {
        let s = self.rt.block_on(async {
            bucket::catalog::publish(
                self.bucket,
                self.config,
                &self.shared.overrides,
                &self.shared.http,
                self.shared.clock,
                force,
            )
            .await
        })?;
        info!(
            "published {} product(s), {} version(s) to {} ({}{})",
            s.products,
            s.versions,
            self.bucket.url(),
            if s.written {
                format!("products file {}", s.snapshot)
            } else {
                "nothing changed, the catalog was kept as it was".to_owned()
            },
            match s.retries {
                0 => String::new(),
                n => format!("; rebuilt {n} time(s) after other publishers"),
            }
        );
        Ok(())
    }
}
