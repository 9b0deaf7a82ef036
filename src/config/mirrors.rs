//! tree.yml's `mirrors:` section: the remotes `mirror pull` (without a URL) and `serve
//! --mirror-interval` pull, each with the filters that say which images to take.

use std::path::PathBuf;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::parse_image_type;
use crate::format::ImageType;

/// Which products, versions and image types to mirror. Empty lists match everything. Set by
/// `mirror pull`'s flags or a `mirrors:` entry; [`crate::mirror`] applies it to a remote catalog.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filters {
    /// `--os` (case-insensitive).
    pub os: Vec<String>,
    /// `--release` (case-insensitive).
    pub release: Vec<String>,
    /// `--arch`: matches the published name or any name of the same architecture.
    pub arch: Vec<String>,
    /// `--variant` (case-insensitive).
    pub variant: Vec<String>,
    /// `--alias GLOB`: `*` and `?` wildcards, matched against each alias.
    pub alias: Vec<String>,
    /// `--type`: only container or only VM images.
    pub image_type: Option<ImageType>,
    /// `--keep N`: the newest N versions of each product (`None`: all).
    pub keep: Option<usize>,
    /// `--no-deltas`: leave out the deltas between the versions kept.
    pub no_deltas: bool,
}

/// One entry of `mirrors:`. A new section, so unknown keys are errors rather than warnings.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMirror {
    url: Option<String>,
    #[serde(default)]
    os: Vec<String>,
    #[serde(default)]
    release: Vec<String>,
    #[serde(default)]
    arch: Vec<String>,
    #[serde(default)]
    variant: Vec<String>,
    #[serde(default)]
    alias: Vec<String>,
    #[serde(rename = "type")]
    image_type: Option<Spanned<String>>,
    keep: Option<Spanned<i64>>,
    #[serde(default)]
    no_deltas: bool,
    ca_cert: Option<PathBuf>,
}

/// A validated `mirrors:` entry: what `mirror pull` without a URL (and `serve
/// --mirror-interval`) pulls.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MirrorSpec {
    /// The remote (`https://…`, or `http://…`).
    pub url: String,
    /// What to take from it.
    pub filters: Filters,
    /// An extra CA to trust for it.
    pub ca_cert: Option<PathBuf>,
}

/// Validates the `mirrors:` entries; each problem is pushed with its file:line:column.
pub(super) fn parse(
    raw: Vec<Spanned<RawMirror>>,
    at: &dyn Fn(&serde_saphyr::Location) -> String,
    problems: &mut Vec<String>,
) -> Vec<MirrorSpec> {
    let mut mirrors = Vec::new();
    for m in raw {
        let here = at(&m.referenced);
        let m = m.value;
        let url = m.url.map(|u| u.trim().to_owned()).unwrap_or_default();
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            problems.push(format!(
                "{here}: mirror `url: {url}` must be an https:// (or http://) URL"
            ));
        }
        let image_type = m.image_type.and_then(|t| match parse_image_type(&t.value) {
            Ok(t) => Some(t),
            Err(why) => {
                problems.push(format!("{}: mirror `type`: {why}", at(&t.referenced)));
                None
            }
        });
        let keep = m.keep.and_then(|k| match usize::try_from(k.value) {
            Ok(n) if n > 0 => Some(n),
            _ => {
                problems.push(format!(
                    "{}: mirror `keep: {}` must be at least 1 (leave it out to keep every version)",
                    at(&k.referenced),
                    k.value
                ));
                None
            }
        });
        mirrors.push(MirrorSpec {
            url,
            filters: Filters {
                os: m.os,
                release: m.release,
                arch: m.arch,
                variant: m.variant,
                alias: m.alias,
                image_type,
                keep,
                no_deltas: m.no_deltas,
            },
            ca_cert: m.ca_cert,
        });
    }
    mirrors
}
