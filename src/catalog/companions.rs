//! What is published beside the catalog, from the same products file: classic LXC's index
//! (`meta/1.0/index-system`), and with a signing key the signed catalog (`index.sjson` and the
//! products file's `.sjson`, clear-signed, the index pointing at the `.sjson` names as
//! python-simplestreams expects) and detached `.asc` signatures of LXC's index and of every LXC
//! file it names.
//!
//! Order, as for the catalog itself: the files a document names are in place before it. LXC
//! files get their signatures before the catalog is written ([`before_catalog`]); after it
//! ([`after_catalog`]), the signed products file, the signed index, LXC's index and its
//! signature. Each is written atomically, and only when its content changed, so
//! an unchanged tree is published without a write. A document is signed as the exact bytes it
//! is published with; a signature whose document is rewritten without a key is removed, never
//! left to vouch for other content.

use std::path::Path;

use crate::format::{Index, ProductsFile};
use crate::sign::Signer;
use crate::tree::names::{self, signature_path, signed_name, signed_path};

use super::publish::WriteError;

/// What was written beside the catalog.
#[derive(Debug, Default)]
pub struct Companions {
    /// Lines (versions) in LXC's index.
    pub lxc_versions: usize,
    /// Files signed in this run (documents and LXC files).
    pub signed: usize,
}

/// Before the catalog is written: with `signer`, the signatures of the LXC files `products`
/// names (`source` is where image files are when they are not under `target`). Returns how
/// many files were signed.
pub fn before_catalog(
    target: &Path,
    source: &Path,
    products: &ProductsFile,
    signer: Option<&Signer>,
    warnings: &mut Vec<String>,
) -> Result<usize, WriteError> {
    match signer {
        Some(signer) => sign_lxc_files(target, source, products, signer, warnings),
        None => Ok(0),
    }
}

/// After the catalog is written: LXC's index and, with `signer`, the signed catalog, for the
/// published `products` and `index` (as they are on disk, stamps included).
pub fn after_catalog(
    target: &Path,
    images_path: &str,
    products: &ProductsFile,
    index: &Index,
    signer: Option<&Signer>,
    warnings: &mut Vec<String>,
) -> Result<Companions, WriteError> {
    let mut done = Companions::default();
    let lxc = super::lxc_index::build(products, warnings);
    done.lxc_versions = lxc.iter().filter(|&&b| b == b'\n').count();
    if let Some(signer) = signer {
        done.signed += write_signed_catalog(target, images_path, products, index, signer)?;
    } else {
        remove_stale_signed_catalog(target, images_path)?;
    }
    // The page last, from the same products file: it names what is published already.
    let page = super::page::render(products, None, !lxc.is_empty());
    let page_path = names::page_path(target);
    // One index for privileged containers, one for unprivileged ones (the template asks for
    // `index-user` in a user namespace); every image serves both.
    for lxc_path in names::lxc_index_paths(target) {
        if lxc.is_empty() && !lxc_path.exists() {
            // A tree without LXC files gets no `meta/` folder; one that had some gets an empty
            // index.
            continue;
        }
        let changed = write_if_changed(&lxc_path, &lxc)?;
        let asc = signature_path(&lxc_path);
        match signer {
            Some(signer) if changed || !is_fresh(&lxc_path, &asc, signer) => {
                let sig = signer
                    .detached(lxc.as_slice(), &lxc_path.display().to_string())
                    .map_err(|e| sign_failed(&lxc_path, e))?;
                crate::tree::atomic::write(&asc, sig.as_bytes()).map_err(fail(&asc))?;
                done.signed += 1;
            }
            None if changed => remove(&asc)?,
            _ => {}
        }
    }
    write_if_changed(&page_path, page.as_bytes())?;
    Ok(done)
}

/// `images.sjson` and `index.sjson`: pretty-printed (GnuPG refuses clear-signed lines of 20,000
/// bytes or more, and a compact products file is one line), clear-signed, the index naming the
/// signed products file. Rewritten when the content or the key changed.
fn write_signed_catalog(
    target: &Path,
    images_path: &str,
    products: &ProductsFile,
    index: &Index,
    signer: &Signer,
) -> Result<usize, WriteError> {
    let products_json = names::products_path(target, images_path);
    let products_signed = signed_path(&products_json);
    let index_json = names::index_path(target);
    let index_signed = signed_path(&index_json);
    let mut signed_index = index.clone();
    for entry in signed_index.index.values_mut() {
        if let Some((dir, name)) = entry.path.rsplit_once('/') {
            entry.path = format!("{dir}/{}", signed_name(name));
        } else {
            entry.path = signed_name(&entry.path);
        }
    }
    let mut count = 0;
    let products_text = || pretty(products);
    let index_text = || pretty(&signed_index);
    let documents: [(&Path, &Path, &dyn Fn() -> String); 2] = [
        (&products_signed, &products_json, &products_text),
        (&index_signed, &index_json, &index_text),
    ];
    for (path, json, text) in documents {
        if is_fresh(json, path, signer) {
            continue;
        }
        let signed = signer
            .clearsign(&text())
            .map_err(|e| sign_failed(path, e))?;
        crate::tree::atomic::write(path, signed.as_bytes()).map_err(fail(path))?;
        count += 1;
    }
    Ok(count)
}

/// Without a key, a signed catalog left by an earlier signed publish would vouch for a catalog
/// that is no longer published: it goes.
fn remove_stale_signed_catalog(target: &Path, images_path: &str) -> Result<(), WriteError> {
    let products_json = names::products_path(target, images_path);
    let index_json = names::index_path(target);
    // The index first: a reader that finds it finds what it names.
    for path in [signed_path(&index_json), signed_path(&products_json)] {
        if path.exists() {
            tracing::warn!(
                "removed {}: this publish has no signing key (--sign-key), and the signed catalog would no longer match the catalog",
                path.display()
            );
            remove(&path)?;
        }
    }
    Ok(())
}

/// A detached signature beside every LXC file (`meta.tar.xz`, `rootfs.tar.xz`) that LXC's index
/// names, unless one made by this key after the file last changed is there already: each file
/// is read once, when it is new.
fn sign_lxc_files(
    target: &Path,
    source: &Path,
    products: &ProductsFile,
    signer: &Signer,
    warnings: &mut Vec<String>,
) -> Result<usize, WriteError> {
    let mut count = 0;
    for product in products.products.values() {
        for version in product.versions.values() {
            let Some((meta, root)) = super::lxc_index::lxc_pair(version) else {
                continue;
            };
            for item in [meta, root] {
                if item.path.contains("://") {
                    continue;
                }
                let rel = item.path.trim_start_matches('/');
                let Some(file) = [target.join(rel), source.join(rel)]
                    .into_iter()
                    .find(|p| p.is_file())
                else {
                    warnings.push(format!(
                        "{}: not found under {}: not signed",
                        item.path,
                        target.display()
                    ));
                    continue;
                };
                let asc = signature_path(&file);
                if is_fresh(&file, &asc, signer) {
                    continue;
                }
                let sig = signer
                    .detached_file(&file)
                    .map_err(|e| sign_failed(&file, e))?;
                crate::tree::atomic::write(&asc, sig.as_bytes()).map_err(fail(&asc))?;
                count += 1;
            }
        }
    }
    Ok(count)
}

/// True when `signed` (a detached signature, or a clear-signed document) is this key's and was
/// written after `file` (what it signs, or the document it clear-signs) last changed: its own
/// time, to the nanosecond, is later than the file's change time. Every signed file is
/// written only after what it signs, so an older one is stale; a copy that keeps times (rsync
/// -t, cp -p) changes the files' change times, so they are signed again: harmless. Only the
/// signature block at the end is read, whatever the size of the document.
fn is_fresh(file: &Path, signed: &Path, signer: &Signer) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(f), Ok(a)) = (std::fs::metadata(file), std::fs::metadata(signed)) else {
        return false;
    };
    let changed = (f.mtime(), f.mtime_nsec()).max((f.ctime(), f.ctime_nsec()));
    (a.mtime(), a.mtime_nsec()) > changed
        && crate::sign::signature_block(signed).is_some_and(|block| signer.made_detached(&block))
}

fn pretty<T: serde::Serialize>(doc: &T) -> String {
    let mut text = serde_json::to_string_pretty(doc).expect("catalog documents always serialize");
    text.push('\n');
    text
}

/// Writes `bytes` atomically unless the file already holds them; true when it wrote.
fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<bool, WriteError> {
    if let Some(dir) = path.parent() {
        crate::tree::atomic::create_dir_all(dir).map_err(fail(dir))?;
    }
    crate::tree::atomic::write_if_changed(path, bytes).map_err(fail(path))
}

fn remove(path: &Path) -> Result<(), WriteError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(WriteError {
            path: path.to_owned(),
            source: e,
        }),
        _ => Ok(()),
    }
}

fn fail(path: &Path) -> impl FnOnce(std::io::Error) -> WriteError + use<> {
    let path = path.to_owned();
    move |source| WriteError { path, source }
}

fn sign_failed(path: &Path, e: crate::sign::SignError) -> WriteError {
    WriteError {
        path: path.to_owned(),
        source: std::io::Error::other(e),
    }
}
