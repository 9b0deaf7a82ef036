//! Writes to the served tree: who may write and where (`policy`, `target`), and the handlers for
//! uploads (`upload`), `POST /import` (`import`) and deletes (`delete`).

pub(super) mod delete;
pub(super) mod import;
mod parts;
mod policy;
pub(super) mod target;
pub(super) mod upload;

pub(super) use policy::Writes;
pub use policy::{DEFAULT_MAX_UPLOAD_SIZE, WriteOptions};
pub(super) use target::WriteScope;
