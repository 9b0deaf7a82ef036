//! Making the planned files present, `jobs` at a time: each is checked against the state's
//! record or re-hashed, else downloaded and verified while it streams; progress bars on a
//! terminal.

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::path::Path;
use std::sync::Arc;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use super::download::{self, Want};
use super::{PullRequest, State, StateFile};
use crate::tree::FileSig;

/// How a file ended up.
#[derive(Clone, Debug)]
pub(super) enum Outcome {
    Fetched(u64),
    Verified,
    Skipped,
    /// Not present, and not wanted (an older version, only used when already there).
    Absent,
    Failed(String),
}

impl Outcome {
    pub(super) fn ok(&self) -> bool {
        matches!(
            self,
            Outcome::Fetched(_) | Outcome::Verified | Outcome::Skipped
        )
    }
}

/// One local file to make present.
pub(super) struct Job {
    pub(super) url: String,
    pub(super) want: Want,
    /// Download it if missing (a version within `--keep`).
    pub(super) fetch: bool,
}

/// Is the file at `path` the one wanted? By the state's record when the file is unchanged
/// since (`Skipped`), else by re-hashing it if its size fits (`Verified`); `rehash: false`
/// trusts only the record.
fn check_local(
    path: &Path,
    want: &Want,
    record: Option<&StateFile>,
    rehash: bool,
    bar: &ProgressBar,
) -> Option<Outcome> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    if !meta.is_file() || meta.len() != want.size {
        return None;
    }
    if record.is_some_and(|r| {
        r.sig == FileSig::of(&meta) && r.sha256 == want.sha256 && r.size == want.size
    }) {
        return Some(Outcome::Skipped);
    }
    if !rehash {
        return None;
    }
    let (hasher, len) = download::hash_file(path, bar).ok()?;
    use sha2::Digest as _;
    (len == want.size && hex::encode(hasher.finalize()) == want.sha256).then_some(Outcome::Verified)
}

fn bar_style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// Runs every job and returns how each file ended up, by local path.
pub(super) async fn run_jobs(
    client: &reqwest::Client,
    req: &PullRequest,
    jobs: &BTreeMap<String, Job>,
    state: &State,
) -> BTreeMap<String, Outcome> {
    let draw = req.progress && std::io::stderr().is_terminal();
    let multi = MultiProgress::new();
    let total: u64 = jobs.values().filter(|j| j.fetch).map(|j| j.want.size).sum();
    let overall = if draw {
        multi.add(ProgressBar::new(total).with_style(bar_style(
            "{prefix:>8} [{wide_bar}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )))
    } else {
        ProgressBar::hidden()
    };
    overall.set_prefix("total");
    let permits = Arc::new(tokio::sync::Semaphore::new(req.jobs.max(1)));
    let mut set = tokio::task::JoinSet::new();
    for (lp, job) in jobs {
        let (lp, url, want, fetch) = (lp.clone(), job.url.clone(), job.want.clone(), job.fetch);
        let dest = req.target.join(&lp);
        let record = state.files.get(&lp).cloned();
        let (client, permits, overall) = (client.clone(), permits.clone(), overall.clone());
        let bar = if draw {
            let bar = ProgressBar::new(want.size).with_style(bar_style(
                "{prefix:>8} [{wide_bar}] {bytes}/{total_bytes} {msg}",
            ));
            bar.set_message(lp.rsplit('/').next().unwrap_or_default().to_owned());
            Some(bar)
        } else {
            None
        };
        let multi = multi.clone();
        set.spawn(async move {
            let Ok(_permit) = permits.acquire_owned().await else {
                return (lp, Outcome::Failed("cancelled".into()));
            };
            let bar = match bar {
                Some(b) => multi.add(b),
                None => ProgressBar::hidden(),
            };
            let checked = {
                let (dest, want, bar) = (dest.clone(), want.clone(), bar.clone());
                bar.set_prefix("checking");
                tokio::task::spawn_blocking(move || {
                    check_local(&dest, &want, record.as_ref(), fetch, &bar)
                })
                .await
                .ok()
                .flatten()
            };
            let outcome = match checked {
                Some(o) => {
                    if fetch {
                        overall.inc(want.size);
                    }
                    o
                }
                None if !fetch => Outcome::Absent,
                None => {
                    bar.set_prefix("fetching");
                    match download::fetch_file(&client, &url, &dest, &want, &bar, &overall).await {
                        Ok(n) => Outcome::Fetched(n),
                        Err(e) => Outcome::Failed(e.to_string()),
                    }
                }
            };
            bar.finish_and_clear();
            multi.remove(&bar);
            (lp, outcome)
        });
    }
    let mut out = BTreeMap::new();
    while let Some(joined) = set.join_next().await {
        if let Ok((lp, outcome)) = joined {
            out.insert(lp, outcome);
        }
    }
    overall.finish_and_clear();
    out
}
