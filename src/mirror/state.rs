//! What a mirror remembers in `.ssb/mirror.json`: each file it verified (path → sha256, size and
//! file signature), so an unchanged file is not read again; the file also marks the tree as a
//! mirror, so a pull never replaces a catalog it did not write.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::MirrorError;
use crate::tree::FileSig;

/// Where the mirror remembers what it verified.
pub fn state_path(target: &Path) -> PathBuf {
    crate::tree::names::mirror_state(target)
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct StateFile {
    pub(super) sha256: String,
    pub(super) size: u64,
    pub(super) sig: FileSig,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct State {
    pub(super) version: u32,
    pub(super) files: BTreeMap<String, StateFile>,
}

pub(super) const STATE_VERSION: u32 = 1;

impl State {
    /// The state of the mirror at `target`; `None` when the tree is not a mirror (yet).
    pub(super) fn load(target: &Path) -> Option<State> {
        let bytes = std::fs::read(state_path(target)).ok()?;
        serde_json::from_slice::<State>(&bytes)
            .ok()
            .filter(|s| s.version == STATE_VERSION)
            .or_else(|| Some(State::default()))
    }

    /// Writes the state atomically.
    pub(super) fn save(&self, target: &Path) -> Result<(), MirrorError> {
        let path = state_path(target);
        let bytes = serde_json::to_vec(self).expect("the state always serializes");
        crate::tree::atomic::write(&path, &bytes).map_err(|source| MirrorError::Io { path, source })
    }
}
