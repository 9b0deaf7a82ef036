//! `POST /import`: the `import` command over HTTP. The multipart body holds one file part (a
//! unified tarball) or two (a metadata tarball and its rootfs: squashfs, root.tar.xz or qcow2),
//! and optionally the text fields `alias` (repeatable) and `variant`. Auth is the uploads' (the
//! router checks it). As with the command, only the layout mode imports.
//!
//! Every file part streams through the upload machinery (1 MiB buffer on a blocking thread,
//! `--max-upload-size` per file, a broken body never counts) into a private staging folder
//! `<root>/.ssb/import/<random>/`, which goes away whatever happens (left-overs of a crash are
//! cleared at start-up). The import itself, the same library call as the command's, runs on a
//! blocking thread, one at a time, and places every file atomically. The answer waits for the
//! re-index that publishes the image, so that a client holding its 201 (or 200: nothing
//! changed) finds the image in the catalog; the body names the version folder, the product and
//! the fingerprints.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::multipart::Field;
use axum::extract::{FromRequest as _, Multipart, Request};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Serialize;

use super::policy::Writes;
use super::target::WriteScope;
use super::upload::{drain_multipart, drain_small, receive_body};
use crate::format::Family;
use crate::import::{ImportError, ImportRequest, Imported};
use crate::server::error::RequestError;
use crate::tree::LayoutProduct;

/// The staging folder of imports, under the served root; hidden, so never served or indexed.
use crate::tree::names::IMPORT_STAGING as STAGING;
/// Longest accepted text field (`alias`, `variant`).
const MAX_TEXT_FIELD: usize = 1024;
/// How long the answer waits for the catalog to list the image.
const PUBLISH_WAIT: Duration = Duration::from_secs(120);

/// True for the request paths reserved for imports: `/import`, and `/import/`, which would
/// otherwise be an upload into a folder named `import`.
pub(crate) fn is_import_path(path: &str) -> bool {
    path == "/import" || path == "/import/"
}

/// What the client is told about an import.
#[derive(Debug, Serialize)]
struct Answer {
    /// What happened, for people.
    message: String,
    /// False when the same image was there already.
    changed: bool,
    /// The version folder, relative to the served root.
    path: String,
    /// The product id in the catalog.
    product: String,
    /// The version name.
    version: String,
    /// True once the catalog lists the version.
    published: bool,
    /// The images the catalog lists for the version (empty unless `published`).
    images: Vec<PublishedImage>,
    /// Why `published` is false.
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

/// One image of the imported version, as clients know it.
#[derive(Debug, Serialize)]
struct PublishedImage {
    fingerprint: String,
    /// `container` or `virtual-machine`.
    #[serde(rename = "type")]
    image_type: String,
}

/// A file part received into the staging folder.
#[derive(Debug)]
struct Staged {
    path: PathBuf,
    /// The part's file name, as the client sent it (made safe): what errors call the file.
    name: String,
}

/// The fields of an import request.
#[derive(Debug, Default)]
struct Form {
    files: Vec<Staged>,
    aliases: Vec<String>,
    variant: Option<String>,
}

/// `POST /import`. Auth is checked by the router before this runs.
pub(crate) async fn post(writes: Arc<Writes>, req: Request) -> Result<Response, RequestError> {
    if matches!(writes.scope, WriteScope::Declared(_)) {
        drain_small(req.into_body()).await;
        return Err(RequestError::ImportNeedsLayout);
    }
    let root = Arc::clone(&writes.root);
    let staging = blocking("the import staging folder", move || staging_dir(&root)).await?;
    let (req, seen) = super::parts::guard(req);
    let received = receive(&writes, req, staging.path()).await;
    let form = match super::parts::explain(received, &seen) {
        Ok(form) => form,
        Err(e) => {
            // Removing a large partial file is blocking work too.
            let _ = tokio::task::spawn_blocking(move || drop(staging)).await;
            return Err(e);
        }
    };
    // One import at a time: two of the same version must not both find its files missing.
    // The guard and the staging folder go with the job, which finishes even if the client
    // goes away, and so does the re-index it asks for.
    let turn = Arc::clone(&writes.import_lock).lock_owned().await;
    let root = Arc::clone(&writes.root);
    let reindexer = writes.reindexer.clone();
    let hash_cache = writes.hash_cache.clone();
    let (imported, publishing) = blocking("the import", move || {
        let _turn = turn;
        let (imported, aliased) = import(&root, &form, &hash_cache);
        let shown = form
            .files
            .iter()
            .map(|f| f.name.as_str())
            .collect::<Vec<_>>()
            .join(" + ");
        // Whatever was placed gets published, even when the aliases then failed. The run
        // hashes the image's product alone, and the watcher is told what this import wrote.
        let aliases_written = aliased.as_ref().is_ok_and(|added| *added);
        let publishing = match &imported {
            Ok(Imported::New(dir)) => {
                let rel = relative(&root, dir);
                tracing::info!("imported {shown} into {rel}");
                let mut paths = placed(&root, dir);
                paths.extend(aliases_written.then(|| metadata_json(&root, dir)));
                Some(reindexer.publish_written(&root, format!("imported {rel}"), paths))
            }
            Ok(Imported::AlreadyThere(dir)) => {
                let rel = relative(&root, dir);
                tracing::info!("{shown}: already imported in {rel} (nothing changed)");
                aliases_written.then(|| {
                    let paths = vec![metadata_json(&root, dir)];
                    reindexer.publish_written(&root, format!("aliases for {rel}"), paths)
                })
            }
            Err(_) => None,
        };
        // Only now: removing large staged copies can take longer than the watcher waits
        // before it reports the placed files, which the notes above now cover.
        drop(staging);
        let refuse = |e| {
            let staged: Vec<(&Path, &str)> = form
                .files
                .iter()
                .map(|f| (f.path.as_path(), f.name.as_str()))
                .collect();
            refusal(e, &staged, &root)
        };
        let imported = imported.map_err(refuse)?;
        aliased.map_err(refuse)?;
        Ok((imported, publishing))
    })
    .await?;

    let (dir, changed) = match imported {
        Imported::New(dir) => (dir, true),
        Imported::AlreadyThere(dir) => (dir, false),
    };
    let waited = match publishing {
        None => Ok(()),
        Some(done) => match tokio::time::timeout(PUBLISH_WAIT, done).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(format!(
                "the re-index failed and is retried; the catalog served is the previous one: {e}"
            )),
            Ok(Err(_)) => Err("the server is shutting down before the re-index".to_owned()),
            Err(_) => Err(format!(
                "the re-index takes longer than {} s; poll /{} and its {}",
                PUBLISH_WAIT.as_secs(),
                crate::tree::names::index_rel(),
                crate::tree::names::PRODUCTS_FILE
            )),
        },
    };
    let root = Arc::clone(&writes.root);
    let answer = blocking("the catalog", move || {
        Ok(answer(&root, &dir, changed, waited))
    })
    .await?;
    let status = if changed {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(super::policy::json_response(status, &answer))
}

/// Runs blocking file system work off the async threads; a panic becomes a 500 naming `what`.
async fn blocking<T: Send + 'static>(
    what: &str,
    job: impl FnOnce() -> Result<T, RequestError> + Send + 'static,
) -> Result<T, RequestError> {
    tokio::task::spawn_blocking(job)
        .await
        .map_err(|e| RequestError::Io {
            path: what.to_owned(),
            source: std::io::Error::other(e.to_string()),
        })?
}

/// A new, empty staging folder; removed when dropped.
fn staging_dir(root: &Path) -> Result<tempfile::TempDir, RequestError> {
    let parent = root.join(STAGING);
    let io = |source| RequestError::Io {
        path: STAGING.to_owned(),
        source,
    };
    crate::tree::atomic::create_dir_all(&parent).map_err(io)?;
    tempfile::Builder::new()
        .prefix("")
        .tempdir_in(&parent)
        .map_err(io)
}

/// Removes what imports interrupted by a crash or a kill left in the staging folder. Called at
/// start-up, before any request: the folder belongs to this server alone.
pub(crate) fn clear_staging(root: &Path) {
    let parent = root.join(STAGING);
    let Ok(entries) = std::fs::read_dir(&parent) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        match std::fs::remove_dir_all(&path) {
            Ok(()) => tracing::info!("removed {} left by an interrupted import", path.display()),
            Err(e) => tracing::warn!("cannot remove {}: {e}", path.display()),
        }
    }
}

/// Reads the multipart body: file parts into `staging`, text fields into the form.
async fn receive(writes: &Writes, req: Request, staging: &Path) -> Result<Form, RequestError> {
    let mut multipart = Multipart::from_request(req, &()).await?;
    let mut form = Form::default();
    while let Some(field) = multipart.next_field().await? {
        let refused = match field.file_name() {
            Some(_) if form.files.len() == 2 => Some(RequestError::ImportFileCount {
                got: "a third file part".into(),
            }),
            Some(file_name) => {
                let name = staged_name(file_name);
                let dir = staging.join((form.files.len() + 1).to_string());
                let path = dir.join(&name);
                let (job_path, shown) = (path.clone(), name.clone());
                receive_body(field, writes.max_upload_size, &name, move |chunks| {
                    let io = |source| RequestError::Io {
                        path: format!("the staged copy of {shown}"),
                        source,
                    };
                    std::fs::create_dir(&dir).map_err(io)?;
                    let file = std::fs::File::create_new(&job_path).map_err(io)?;
                    chunks.write_to(&file, &shown, |_| {})
                })
                .await?;
                form.files.push(Staged { path, name });
                None
            }
            None => match text_field(field).await {
                Ok((name, value)) => match name.as_str() {
                    "alias" => {
                        form.aliases.push(value);
                        None
                    }
                    "variant" if form.variant.is_none() => {
                        form.variant = Some(value);
                        None
                    }
                    "variant" => Some(RequestError::BadField {
                        name,
                        reason: "given twice".into(),
                    }),
                    _ => Some(RequestError::BadField {
                        name,
                        reason: "unknown: an import takes one or two file parts and the text fields `alias` (repeatable) and `variant`".into(),
                    }),
                },
                Err(e) => Some(e),
            },
        };
        if let Some(error) = refused {
            // Read the rest of a small body so HTTP/2 clients get the 400 (see drain_small).
            drain_multipart(&mut multipart).await;
            return Err(error);
        }
    }
    if form.files.is_empty() {
        return Err(RequestError::ImportFileCount {
            got: "no file part (a part with a filename)".into(),
        });
    }
    Ok(form)
}

/// A text field's name and its value, trimmed.
async fn text_field(mut field: Field<'_>) -> Result<(String, String), RequestError> {
    let name = field.name().unwrap_or_default().to_owned();
    let mut bytes = Vec::new();
    while let Some(chunk) = field.chunk().await? {
        bytes.extend_from_slice(&chunk);
        if bytes.len() > MAX_TEXT_FIELD {
            return Err(RequestError::BadField {
                name,
                reason: format!("longer than {MAX_TEXT_FIELD} bytes"),
            });
        }
    }
    match String::from_utf8(bytes) {
        Ok(value) => Ok((name, value.trim().to_owned())),
        Err(_) => Err(RequestError::BadField {
            name,
            reason: "not UTF-8".into(),
        }),
    }
}

/// The name a part is staged under: the last segment of its file name when that is a plain
/// name (the import tells a metadata tarball from a root tarball partly by name), else `file`.
fn staged_name(file_name: &str) -> String {
    let last = file_name.rsplit(['/', '\\']).next().unwrap_or_default();
    if last.len() <= 255 && crate::server::request_path::is_plain_name(last) {
        last.to_owned()
    } else {
        "file".to_owned()
    }
}

/// The import, then the aliases (true when some were added). The aliases are checked first, so
/// that a bad one places nothing; adding them can still fail after the import (an unreadable
/// metadata.json), hence two results.
fn import(
    root: &Path,
    form: &Form,
    hash_cache: &crate::hash::CacheDir,
) -> (Result<Imported, ImportError>, Result<bool, ImportError>) {
    let imported = crate::import::check_aliases(&form.aliases).and_then(|()| {
        let files: Vec<PathBuf> = form.files.iter().map(|f| f.path.clone()).collect();
        crate::import::import(&ImportRequest {
            target: root,
            files: &files,
            variant: form.variant.as_deref(),
            hash_cache,
            progress: &indicatif::ProgressBar::hidden(),
        })
    });
    let aliased = match &imported {
        Ok(Imported::New(dir) | Imported::AlreadyThere(dir)) => {
            crate::import::add_product_aliases(root, dir, &form.aliases)
                .map(|()| !form.aliases.is_empty())
        }
        Err(_) => Ok(false),
    };
    (imported, aliased)
}

/// The error for the client: what is wrong with the upload is a 4xx, our own trouble a 500.
/// Staged files are called by the names the client gave them, and paths are relative to the
/// served root.
fn refusal(e: ImportError, staged: &[(&Path, &str)], root: &Path) -> RequestError {
    let mut message = e.to_string();
    for (path, name) in staged {
        message = message.replace(&path.display().to_string(), name);
    }
    message = message.replace(&format!("{}/", root.display()), "");
    match e {
        ImportError::Clash { .. } => RequestError::ImportClash(message),
        ImportError::Input(_) | ImportError::Inspect(_) => RequestError::ImportRefused(message),
        // Reading a staged file fails on its content (a corrupt or truncated archive: the
        // decompressors and tar say so with these kinds), not on our disk.
        ImportError::Io { path, source }
            if staged.iter().any(|(p, _)| *p == path)
                && matches!(
                    source.kind(),
                    std::io::ErrorKind::InvalidData
                        | std::io::ErrorKind::InvalidInput
                        | std::io::ErrorKind::UnexpectedEof
                        | std::io::ErrorKind::Other
                ) =>
        {
            RequestError::ImportRefused(message)
        }
        ImportError::Io { path, source } => RequestError::Io {
            path: relative(root, &path),
            source,
        },
    }
}

fn relative(root: &Path, path: &Path) -> String {
    relative_path(root, path).display().to_string()
}

fn relative_path(root: &Path, path: &Path) -> PathBuf {
    path.strip_prefix(root).unwrap_or(path).to_owned()
}

/// The version folder `dir` an import has just filled and the files in it, relative to `root`
/// (the folder alone when it cannot be listed: the run is the same, the watcher may then ask
/// for one more).
fn placed(root: &Path, dir: &Path) -> Vec<PathBuf> {
    let files = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| relative_path(root, &entry.path()));
    std::iter::once(relative_path(root, dir))
        .chain(files)
        .collect()
}

/// The metadata.json of the product folder above the version folder `dir`, relative to `root`.
fn metadata_json(root: &Path, dir: &Path) -> PathBuf {
    relative_path(root, dir.parent().unwrap_or(dir)).join(crate::tree::names::METADATA_JSON)
}

/// The answer for an image placed in `dir`, with what the catalog now says of it.
fn answer(root: &Path, dir: &Path, changed: bool, waited: Result<(), String>) -> Answer {
    let product = dir
        .parent()
        .and_then(|p| LayoutProduct::of_folder(root, p))
        .map(|p| p.name())
        .unwrap_or_default();
    let version = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let path = relative(root, dir);
    let message = if changed {
        format!("imported into {path}")
    } else {
        format!("already imported in {path} (nothing changed)")
    };
    let listed = waited.and_then(|()| {
        let (_, products, _) = crate::catalog::inventory::load_catalog(root).map_err(|e| e.to_string())?;
        let found = products
            .products
            .get(&product)
            .and_then(|p| p.versions.iter().find(|(v, _)| v.as_str() == version));
        let Some((_, listed)) = found else {
            return Err(
                "the catalog does not list this version; the server log says why (an image whose fingerprint another version already has is left out)"
                    .to_owned(),
            );
        };
        Ok(crate::catalog::publish::images_of(listed, Family::Incus)
            .into_iter()
            .map(|(fingerprint, image_type, _, _)| PublishedImage {
                fingerprint,
                image_type: image_type.to_string(),
            })
            .collect())
    });
    let (published, images, note) = match listed {
        Ok(images) => (true, images, None),
        Err(note) => (false, Vec::new(), Some(note)),
    };
    Answer {
        message,
        changed,
        path,
        product,
        version,
        published,
        images,
        note,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_names_keep_plain_file_names_only() {
        assert_eq!(staged_name("lxd.tar.xz"), "lxd.tar.xz");
        assert_eq!(staged_name("/home/me/rootfs.squashfs"), "rootfs.squashfs");
        assert_eq!(staged_name("C:\\exports\\meta.tar.xz"), "meta.tar.xz");
        for hostile in ["", "..", ".hidden", "a/", "x\u{0}y", &"n".repeat(300)] {
            assert_eq!(staged_name(hostile), "file", "{hostile:?}");
        }
    }

    #[test]
    fn only_the_import_paths_are_reserved() {
        assert!(is_import_path("/import"));
        assert!(is_import_path("/import/"));
        for other in ["/import/x", "/imports", "/images/import", "/"] {
            assert!(!is_import_path(other), "{other}");
        }
    }

    #[test]
    fn refusals_name_the_client_files_and_hide_the_root() {
        let root = Path::new("/srv/www");
        let staged = Path::new("/srv/www/.ssb/import/abc/1/junk.bin");
        let e = refusal(
            ImportError::Input(format!("{}: neither squashfs", staged.display())),
            &[(staged, "junk.bin")],
            root,
        );
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(e.to_string(), "cannot import: junk.bin: neither squashfs");
        let clash = refusal(
            ImportError::Clash {
                dir: root.join("images/a/1/amd64/default/20250101_10:00"),
                what: "rootfs.squashfs".into(),
            },
            &[],
            root,
        );
        assert_eq!(clash.status(), StatusCode::CONFLICT);
        assert!(
            clash.to_string().starts_with(
                "cannot import: images/a/1/amd64/default/20250101_10:00 already holds"
            ),
            "{clash}"
        );
        let corrupt = refusal(
            ImportError::Io {
                path: staged.to_owned(),
                source: std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
            },
            &[(staged, "junk.bin")],
            root,
        );
        assert_eq!(corrupt.status(), StatusCode::BAD_REQUEST);
        let disk = refusal(
            ImportError::Io {
                path: root.join("images/a"),
                source: std::io::Error::from(std::io::ErrorKind::StorageFull),
            },
            &[(staged, "junk.bin")],
            root,
        );
        assert_eq!(disk.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
