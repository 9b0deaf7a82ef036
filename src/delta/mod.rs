//! Deltas: xdelta3 VCDIFF files that turn an earlier version's squashfs into a newer one's, so
//! an auto-updating LXD or Incus daemon downloads only what changed (protocol.md §1.4, §1.6).
//!
//! Encoding runs the `xdelta3` program (Debian's `xdelta3`, the same implementation the daemons
//! decode with: `xdelta3 -d -s <base> <delta>`), with its default 64 MiB source window, so
//! memory stays flat whatever the rootfs size. The file is written next to where it will live
//! and renamed into place only when it is small enough to be worth publishing.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::format::VersionName;
use crate::hash::{CachedDelta, DeltaOutcome, HashCache};
use crate::tree::{FileRole, FileSig, ImageFile, VersionDir};

/// How deltas are made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeltaPolicy {
    /// The largest delta published, as a percentage of the full squashfs (default 60).
    pub max_percent: u8,
    /// The encoder and decoder (`xdelta3`).
    pub program: PathBuf,
    /// `xdelta3`'s compression level, 0–9 (`-9` is what simplestream-maintainer runs).
    pub level: u8,
}

impl Default for DeltaPolicy {
    fn default() -> Self {
        Self {
            max_percent: DEFAULT_MAX_PERCENT,
            program: PathBuf::from("xdelta3"),
            level: 9,
        }
    }
}

/// The largest delta published by default, as a percentage of the full file.
pub const DEFAULT_MAX_PERCENT: u8 = 60;

/// The most deltas per version a product may ask for.
pub const MAX_DELTAS: u32 = 16;

/// A delta that could not be made or checked.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    /// The program could not be started.
    #[error("cannot run {}: {source} (install xdelta3, or turn deltas off)", program.display())]
    Spawn {
        /// The program.
        program: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The program failed.
    #[error("{} failed on {} → {}: {status}: {stderr}", program.display(), base.display(), new.display())]
    Failed {
        /// The program.
        program: PathBuf,
        /// The base file.
        base: PathBuf,
        /// The new file (or the delta, when decoding).
        new: PathBuf,
        /// How it ended.
        status: String,
        /// What it said.
        stderr: String,
    },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A delta encoded into a temp file beside where it will live.
pub struct Encoded {
    /// The temp file.
    pub file: tempfile::NamedTempFile,
    /// Its size in bytes.
    pub size: u64,
}

/// Encodes `base` → `new` into a hidden temp file in `dir`.
pub fn encode(
    policy: &DeltaPolicy,
    base: &Path,
    new: &Path,
    dir: &Path,
) -> Result<Encoded, DeltaError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| DeltaError::Io { path, source }
    };
    let file =
        crate::tree::atomic::temp_file(dir, crate::tree::names::TEMP_PREFIX).map_err(io(dir))?;
    let mut cmd = Command::new(&policy.program);
    cmd.arg("-e")
        .arg(format!("-{}", policy.level.min(9)))
        // -f: the temp file exists already; -q: quiet.
        .args(["-f", "-q", "-s"])
        .arg(base)
        .arg(new)
        .arg(file.path());
    run(policy, cmd, base, new)?;
    crate::tree::atomic::seal(&file).map_err(io(file.path()))?;
    let size = file.as_file().metadata().map_err(io(file.path()))?.len();
    Ok(Encoded { file, size })
}

/// The sha256 of what applying `delta` to `base` gives (`xdelta3 -d -c -s base delta`),
/// streamed: what the daemons will get.
pub fn decoded_sha256(
    policy: &DeltaPolicy,
    base: &Path,
    delta: &Path,
) -> Result<String, DeltaError> {
    let spawn_error = |source| DeltaError::Spawn {
        program: policy.program.clone(),
        source,
    };
    let mut child = Command::new(&policy.program)
        .args(["-d", "-c", "-q", "-s"])
        .arg(base)
        .arg(delta)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_error)?;
    let mut out = child.stdout.take().expect("piped stdout");
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; 1 << 17];
    loop {
        let n = out.read(&mut buf).map_err(|source| DeltaError::Io {
            path: delta.to_owned(),
            source,
        })?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
    }
    let output = child.wait_with_output().map_err(spawn_error)?;
    if !output.status.success() {
        return Err(failed(policy, base, delta, &output));
    }
    Ok(hex::encode(sha.finalize()))
}

fn run(policy: &DeltaPolicy, mut cmd: Command, base: &Path, new: &Path) -> Result<(), DeltaError> {
    let output = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|source| DeltaError::Spawn {
            program: policy.program.clone(),
            source,
        })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(failed(policy, base, new, &output))
    }
}

fn failed(
    policy: &DeltaPolicy,
    base: &Path,
    new: &Path,
    output: &std::process::Output,
) -> DeltaError {
    DeltaError::Failed {
        program: policy.program.clone(),
        base: base.to_owned(),
        new: new.to_owned(),
        status: output.status.to_string(),
        stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
    }
}

/// A published delta of a version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    /// The version it starts from.
    pub base: VersionName,
    /// Its file name in the version folder (also its item key).
    pub name: String,
    /// Its sha256.
    pub sha256: String,
    /// Its size.
    pub size: u64,
}

/// The deltas of each version of one product (folders in version order, as scanned; only those
/// that are published): from each of the `count` versions before it that has a squashfs. A
/// delta on disk that the cache knows for the same two squashfs files is taken as it is; one
/// for files that have changed since is made again; a missing one is made now, and kept only
/// when it is at most `max_percent` of the full file (the cache remembers one that was not, so
/// it is never encoded twice). Deltas from versions not in `versions` are not published (a base
/// that was purged or left out).
pub fn publish(
    policy: &DeltaPolicy,
    count: u32,
    versions: &[&VersionDir],
    cache: &mut HashCache,
    progress: &dyn Fn(u64),
    warnings: &mut Vec<String>,
) -> BTreeMap<VersionName, Vec<Published>> {
    let mut out = BTreeMap::new();
    let with_squashfs: Vec<(&VersionDir, &ImageFile)> = versions
        .iter()
        .filter_map(|v| Some((*v, v.file(SQUASHFS)?)))
        .collect();
    for (i, &(v, new)) in with_squashfs.iter().enumerate() {
        let first = i.saturating_sub(count as usize);
        let mut published = Vec::new();
        for &(b, base) in with_squashfs[first..i].iter().rev() {
            match one(policy, (b, base), (v, new), cache, progress) {
                Ok(Some(p)) => published.push(p),
                Ok(None) => {}
                Err(e) => warnings.push(format!(
                    "{}: no delta from version {}: {e}",
                    v.path.display(),
                    b.name
                )),
            }
        }
        if !published.is_empty() {
            out.insert(v.name.clone(), published);
        }
    }
    out
}

const SQUASHFS: FileRole = FileRole::Rootfs(crate::format::RootfsKind::Squashfs);

/// The delta from `base` to `new` (each a version and its squashfs), made if needed.
fn one(
    policy: &DeltaPolicy,
    (b, base): (&VersionDir, &ImageFile),
    (v, new): (&VersionDir, &ImageFile),
    cache: &mut HashCache,
    progress: &dyn Fn(u64),
) -> Result<Option<Published>, DeltaError> {
    let name = crate::tree::names::delta_name(&b.name);
    let path = v.path.join(&name);
    let on_disk = v.deltas.iter().find(|d| d.base == b.name);
    let recorded = cache
        .delta(v.name.as_str(), b.name.as_str())
        .filter(|c| c.base == base.sig && c.new == new.sig)
        .cloned();
    let record = |cache: &mut HashCache, outcome| {
        cache.record_delta(
            v.name.as_str(),
            b.name.as_str(),
            CachedDelta {
                base: base.sig,
                new: new.sig,
                outcome,
            },
        );
    };
    // A published delta, recorded for the next run.
    let keep = |cache: &mut HashCache, file: FileSig, sha256: String| {
        record(
            cache,
            DeltaOutcome::Published {
                file,
                sha256: sha256.clone(),
            },
        );
        Published {
            base: b.name.clone(),
            name: name.clone(),
            sha256,
            size: file.size,
        }
    };
    match (on_disk, recorded.map(|c| c.outcome)) {
        (Some(d), Some(DeltaOutcome::Published { file, sha256 })) if file == d.sig => {
            if worth_it(policy, file.size, new.sig.size) {
                return Ok(Some(keep(cache, file, sha256)));
            }
            // The share allowed was lowered since it was made.
            let _ = std::fs::remove_file(&path);
            record(cache, DeltaOutcome::TooLarge { size: file.size });
            return Ok(None);
        }
        (None, Some(DeltaOutcome::TooLarge { size })) if !worth_it(policy, size, new.sig.size) => {
            record(cache, DeltaOutcome::TooLarge { size });
            return Ok(None);
        }
        (Some(d), None) if cache.delta(v.name.as_str(), b.name.as_str()).is_none() => {
            // A delta that came with the version (a mirror, a copy of the tree): hashed once
            // and taken as made from these two files.
            let (sha256, _) =
                crate::hash::sha256_state(&d.path, progress).map_err(|e| DeltaError::Io {
                    path: d.path.clone(),
                    source: std::io::Error::other(e.to_string()),
                })?;
            cache.bytes_read += d.sig.size;
            // It must give this version's squashfs from the base's: a delta left by files
            // that have changed since is made again below.
            let gives = decoded_sha256(policy, &base.path, &d.path)?;
            let (new_sha, _) =
                crate::hash::sha256_state(&new.path, progress).map_err(|e| DeltaError::Io {
                    path: new.path.clone(),
                    source: std::io::Error::other(e.to_string()),
                })?;
            cache.bytes_read += base.sig.size + 2 * new.sig.size;
            if gives == new_sha {
                return Ok(Some(keep(cache, d.sig, sha256)));
            }
            tracing::warn!(
                "{}: does not give this version's squashfs from version {}: made again",
                d.path.display(),
                b.name
            );
        }
        _ => {}
    }
    // Missing, or made from files that have changed since: made now.
    tracing::info!(
        "{}: making the delta from version {}",
        v.path.display(),
        b.name
    );
    let encoded = encode(policy, &base.path, &new.path, &v.path)?;
    progress(base.sig.size + new.sig.size);
    cache.bytes_read += base.sig.size + new.sig.size;
    if !worth_it(policy, encoded.size, new.sig.size) {
        tracing::info!(
            "{}: the delta from version {} is {} bytes, more than {}% of the squashfs ({} bytes): not published",
            v.path.display(),
            b.name,
            encoded.size,
            policy.max_percent,
            new.sig.size
        );
        if on_disk.is_some() {
            let _ = std::fs::remove_file(&path);
        }
        record(cache, DeltaOutcome::TooLarge { size: encoded.size });
        return Ok(None);
    }
    let (sha256, _) =
        crate::hash::sha256_state(encoded.file.path(), &|_| {}).map_err(|e| DeltaError::Io {
            path: encoded.file.path().to_owned(),
            source: std::io::Error::other(e.to_string()),
        })?;
    encoded.file.persist(&path).map_err(|e| DeltaError::Io {
        path: path.clone(),
        source: e.error,
    })?;
    crate::tree::atomic::sync_dir(&v.path).map_err(|source| DeltaError::Io {
        path: v.path.clone(),
        source,
    })?;
    let _ = crate::tree::atomic::set_file_mode(&path);
    let file = FileSig::read(&path).map_err(|source| DeltaError::Io {
        path: path.clone(),
        source,
    })?;
    Ok(Some(keep(cache, file, sha256)))
}

/// True when a delta of `delta_size` bytes for a file of `full_size` bytes is worth publishing.
pub fn worth_it(policy: &DeltaPolicy, delta_size: u64, full_size: u64) -> bool {
    u128::from(delta_size) * 100 <= u128::from(full_size) * u128::from(policy.max_percent)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn have_xdelta3() -> bool {
        Command::new("xdelta3").arg("-V").output().is_ok()
    }

    #[test]
    fn the_share_limit_is_a_percentage_of_the_full_file() {
        let p = DeltaPolicy::default();
        assert!(worth_it(&p, 60, 100));
        assert!(!worth_it(&p, 61, 100));
        assert!(worth_it(&p, u64::MAX / 2, u64::MAX));
    }

    /// The delta is what `xdelta3 -d` applies: decoding it against the base gives the new
    /// file's bytes.
    #[test]
    #[allow(
        clippy::disallowed_methods,
        reason = "a test's own switch: skip loudly, or fail in CI"
    )]
    fn a_delta_round_trips_through_xdelta3() {
        if !have_xdelta3() {
            let msg = "SKIPPED a_delta_round_trips_through_xdelta3: xdelta3 is not installed";
            assert!(
                std::env::var("SSB_REQUIRE_REAL_CLIENTS").as_deref() != Ok("1"),
                "{msg}"
            );
            eprintln!("{msg}");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let base: Vec<u8> = (0..(3u32 << 20)).map(|i| (i * 7 / 13) as u8).collect();
        let mut new = base.clone();
        new[1 << 20..(1 << 20) + 4096].fill(0xab);
        std::fs::write(d.path().join("base"), &base).unwrap();
        std::fs::write(d.path().join("new"), &new).unwrap();
        let policy = DeltaPolicy::default();
        let enc = encode(
            &policy,
            &d.path().join("base"),
            &d.path().join("new"),
            d.path(),
        )
        .unwrap();
        assert!(enc.size < 64 << 10, "{} bytes", enc.size);
        assert!(worth_it(&policy, enc.size, new.len() as u64));
        let sha = decoded_sha256(&policy, &d.path().join("base"), enc.file.path()).unwrap();
        assert_eq!(sha, crate::hash::sha256_hex(&new));
        let e = decoded_sha256(&policy, &d.path().join("new"), enc.file.path());
        assert!(e.is_err(), "a delta applied to the wrong base must fail");
    }
}
