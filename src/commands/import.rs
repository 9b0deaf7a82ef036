//! `import`: each image into the layout, then one publish of the tree.

use anyhow::{Result, bail};
use tracing::info;

use simplestreams_builder::import::{self, ImportRequest, Imported};

use super::publish::publish_layout;
use crate::cli::progress;
use crate::cli::settings::Import;

/// `import`.
pub fn import(s: &Import) -> Result<()> {
    let mut failures = Vec::new();
    let mut changed = 0;
    for files in &s.images {
        let shown = files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(" + ");
        let bar = progress::importing(&shown);
        let result = import::import(&ImportRequest {
            target: &s.target,
            files,
            variant: s.variant.as_deref(),
            hash_cache: &s.shared.hash_cache,
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
        import::add_product_aliases(&s.target, &dir, &s.aliases)?;
    }
    if changed > 0 || !s.aliases.is_empty() {
        publish_layout(&s.target, &s.shared)?;
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
