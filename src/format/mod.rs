//! The simplestreams format as LXD and Incus read it: documents, items, file types, version
//! names and architectures. Pure data and rules: no I/O.

pub mod arch;
pub mod catalog;
pub mod item;
pub mod version;

pub use arch::canonical_arch;
pub use catalog::{Index, IndexEntry, Manifest, Product, ProductsFile, Requirements, Version};
pub use item::{Family, Ftype, ImageType, Item, LXC_META_FTYPE, RootfsKind, SQUASHFS_DELTA_FTYPE};
pub use version::{VersionName, VersionNameError};
