//! Retention: which versions of a product to delete, and deleting them with every outcome
//! reported. The original counted "days" as builds and ignored errors; here `days` keeps the
//! newest N versions (same meaning), `max_age` drops older ones, the version just built is never
//! touched, hidden partial folders are never counted, and a failed deletion fails the command.

use std::path::{Path, PathBuf};

use jiff::civil::DateTime;

use crate::config::expiry::HumanDuration;
use crate::format::VersionName;

/// How many versions to keep and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Keep the newest this many (`days` in tree.yml; at least 1).
    pub keep: u32,
    /// Drop versions older than this, when set.
    pub max_age: Option<HumanDuration>,
}

/// The versions to delete, oldest first. `protect` (the version just built) is never among them.
pub fn plan(
    versions: &[VersionName],
    retention: Retention,
    protect: Option<&VersionName>,
    now: DateTime,
) -> Vec<VersionName> {
    let mut newest_first: Vec<&VersionName> = versions.iter().collect();
    newest_first.sort_by(|a, b| b.cmp(a));
    let keep = retention.keep.max(1) as usize;
    let too_old = |v: &VersionName| {
        retention.max_age.is_some_and(|age| {
            let limit = now
                .checked_sub(jiff::Span::new().seconds(age.seconds()))
                .unwrap_or(DateTime::MIN);
            v.datetime() < limit
        })
    };
    let mut doomed: Vec<VersionName> = newest_first
        .iter()
        .enumerate()
        .filter(|(i, v)| (*i >= keep || too_old(v)) && Some(**v) != protect)
        .map(|(_, v)| (*v).clone())
        .collect();
    doomed.sort();
    doomed
}

/// What deleting gave.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Folders deleted.
    pub removed: Vec<PathBuf>,
    /// Folders that could not be deleted, with the reason.
    pub failed: Vec<String>,
}

/// Deletes the deltas from `base` in the other version folders of `product_dir`: nobody can
/// apply them once it is gone (the catalog stopped naming them in the publish before).
fn remove_deltas_from(product_dir: &Path, base: &VersionName) {
    let name = crate::tree::names::delta_name(base);
    let Ok(entries) = std::fs::read_dir(product_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let delta = entry.path().join(&name);
        match std::fs::remove_file(&delta) {
            Ok(()) => tracing::info!("purged {}", delta.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("cannot remove {}: {e}", delta.display()),
        }
    }
}

/// Deletes the doomed version folders of `product_dir` with `remove` (normally
/// `std::fs::remove_dir_all`), reporting each one.
pub fn execute(
    product_dir: &Path,
    doomed: &[VersionName],
    remove: &dyn Fn(&Path) -> std::io::Result<()>,
) -> Outcome {
    let mut out = Outcome::default();
    for v in doomed {
        let dir = product_dir.join(v.as_str());
        match remove(&dir) {
            Ok(()) => {
                tracing::info!("purged {}", dir.display());
                out.removed.push(dir);
                remove_deltas_from(product_dir, v);
            }
            Err(e) => {
                tracing::error!("cannot purge {}: {e}", dir.display());
                out.failed.push(format!("{}: {e}", dir.display()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> VersionName {
        VersionName::parse(s).unwrap()
    }

    fn names(vs: &[VersionName]) -> Vec<&str> {
        vs.iter().map(VersionName::as_str).collect()
    }

    const NOW: DateTime = jiff::civil::date(2024, 1, 10).at(12, 0, 0, 0);

    #[test]
    fn keeps_the_newest_n_whatever_their_spelling() {
        let all = [
            v("20240101_00:00"),
            v("20240103_0000"),
            v("20240102_00:00"),
            v("20240104_00:00"),
        ];
        let r = Retention {
            keep: 2,
            max_age: None,
        };
        assert_eq!(
            names(&plan(&all, r, None, NOW)),
            ["20240101_00:00", "20240102_00:00"]
        );
        let r = Retention {
            keep: 0,
            max_age: None,
        };
        assert_eq!(
            plan(&all, r, None, NOW).len(),
            3,
            "days <= 0 keeps one, as the original"
        );
    }

    #[test]
    fn max_age_drops_older_versions_even_within_the_count() {
        let all = [
            v("20240101_00:00"),
            v("20240108_00:00"),
            v("20240110_00:00"),
        ];
        let r = Retention {
            keep: 10,
            max_age: Some(HumanDuration::parse("5d").unwrap()),
        };
        assert_eq!(names(&plan(&all, r, None, NOW)), ["20240101_00:00"]);
    }

    #[test]
    fn never_deletes_the_version_just_built() {
        // A build stamped in the past (SOURCE_DATE_EPOCH), older than max_age and not among
        // the newest `keep`, survives; the others go.
        let all = [
            v("20230101_00:00"),
            v("20231201_00:00"),
            v("20240110_00:00"),
        ];
        let r = Retention {
            keep: 1,
            max_age: Some(HumanDuration::parse("1d").unwrap()),
        };
        let protect = v("20230101_00:00");
        assert_eq!(
            names(&plan(&all, r, Some(&protect), NOW)),
            ["20231201_00:00"]
        );
        let r = Retention {
            keep: 1,
            max_age: None,
        };
        let newest = v("20240110_00:00");
        assert_eq!(
            names(&plan(&all, r, Some(&newest), NOW)),
            ["20230101_00:00", "20231201_00:00"]
        );
    }

    #[test]
    fn reports_every_deletion_and_every_failure() {
        let dir = tempfile::tempdir().unwrap();
        for n in ["20240101_00:00", "20240102_00:00", "20240103_00:00"] {
            std::fs::create_dir(dir.path().join(n)).unwrap();
        }
        let doomed = [v("20240101_00:00"), v("20240102_00:00")];
        let out = execute(dir.path(), &doomed, &|p| {
            if p.ends_with("20240101_00:00") {
                Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    "read-only",
                ))
            } else {
                std::fs::remove_dir_all(p)
            }
        });
        assert_eq!(out.removed, [dir.path().join("20240102_00:00")]);
        assert_eq!(out.failed.len(), 1);
        assert!(
            out.failed[0].contains("20240101_00:00: read-only"),
            "{:?}",
            out.failed
        );
    }

    /// A purged version takes its own folder and every delta from it in the versions kept.
    #[test]
    fn purging_a_base_removes_the_deltas_from_it() {
        let d = tempfile::tempdir().unwrap();
        let (old, new) = (v("20240101_0000"), v("20240102_0000"));
        std::fs::create_dir_all(d.path().join(old.as_str())).unwrap();
        std::fs::create_dir_all(d.path().join(new.as_str())).unwrap();
        let delta = d
            .path()
            .join(new.as_str())
            .join(crate::tree::names::delta_name(&old));
        std::fs::write(&delta, b"x").unwrap();
        let out = execute(d.path(), std::slice::from_ref(&old), &|p| {
            std::fs::remove_dir_all(p)
        });
        assert_eq!(out.removed.len(), 1);
        assert!(!delta.exists());
        assert!(d.path().join(new.as_str()).is_dir());
    }
}
