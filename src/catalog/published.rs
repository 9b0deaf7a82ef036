//! The published catalog read back from a tree (index, then the products file it names), for
//! `verify`, `prune` and `list`, and for the server, which keeps it parsed until a file changes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::format::{Index, ProductsFile};
use crate::tree::FileSig;
use crate::tree::names::index_path;

/// A catalog file that is missing or not valid JSON.
#[derive(Debug, thiserror::Error)]
#[error("{}: {reason} (run `publish` first?)", path.display())]
pub struct UnreadableCatalog {
    /// The file.
    pub path: PathBuf,
    /// Why.
    pub reason: String,
}

/// Reads the published catalog of `target`.
pub fn load_catalog(target: &Path) -> Result<(Index, ProductsFile, PathBuf), UnreadableCatalog> {
    load_signed(target).map(|c| (c.index, c.products, c.products_path))
}

/// A catalog as read, with the signatures of the two files its bytes came from.
struct SignedCatalog {
    index: Index,
    index_sig: FileSig,
    products: ProductsFile,
    products_path: PathBuf,
    products_sig: FileSig,
}

fn load_signed(target: &Path) -> Result<SignedCatalog, UnreadableCatalog> {
    let read = |path: &Path| -> Result<(Vec<u8>, FileSig), UnreadableCatalog> {
        crate::tree::read_signed(path).map_err(|e| UnreadableCatalog {
            path: path.to_owned(),
            reason: e.kind().to_string(),
        })
    };
    let ipath = index_path(target);
    let (bytes, index_sig) = read(&ipath)?;
    let index: Index = serde_json::from_slice(&bytes).map_err(|e| UnreadableCatalog {
        path: ipath.clone(),
        reason: e.to_string(),
    })?;
    let entry = index
        .index
        .values()
        .find(|e| e.datatype == crate::config::DEFAULT_DATATYPE)
        .ok_or_else(|| UnreadableCatalog {
            path: ipath.clone(),
            reason: "no image-downloads entry".into(),
        })?;
    let products_path = target.join(&entry.path);
    let (bytes, products_sig) = read(&products_path)?;
    let products: ProductsFile = serde_json::from_slice(&bytes).map_err(|e| UnreadableCatalog {
        path: products_path.clone(),
        reason: e.to_string(),
    })?;
    Ok(SignedCatalog {
        index,
        index_sig,
        products,
        products_path,
        products_sig,
    })
}

/// The published catalog of one tree, parsed again only when one of its files changes. The
/// catalog is written whole (temp file, rename), so a new catalog is a new inode; an edit in
/// place changes the size or the times. For servers, which read it on requests.
#[derive(Default)]
pub struct CatalogCache {
    last: std::sync::Mutex<Option<Arc<CachedCatalog>>>,
}

struct CachedCatalog {
    index_sig: FileSig,
    products_path: PathBuf,
    products_sig: FileSig,
    products: Arc<ProductsFile>,
}

impl CatalogCache {
    /// The products file of `target`'s catalog (the same tree on every call).
    pub fn products(&self, target: &Path) -> Result<Arc<ProductsFile>, UnreadableCatalog> {
        let sig = |path: &Path| FileSig::read(path).ok();
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(c) = last
            && sig(&index_path(target)) == Some(c.index_sig)
            && sig(&c.products_path) == Some(c.products_sig)
        {
            return Ok(Arc::clone(&c.products));
        }
        let fresh = load_signed(target)?;
        let products = Arc::new(fresh.products);
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(CachedCatalog {
            index_sig: fresh.index_sig,
            products_path: fresh.products_path,
            products_sig: fresh.products_sig,
            products: Arc::clone(&products),
        }));
        Ok(products)
    }
}
