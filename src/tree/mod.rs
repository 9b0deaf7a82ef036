//! The on-disk tree: every name it uses ([`names`]), scanning product and version folders
//! ([`scan`]), the lxd-image-server layout ([`layout`]), atomic writes ([`atomic`]) and the
//! lock that serialises a tree's writers ([`lock`]).

pub mod atomic;
pub mod layout;
pub mod lock;
pub mod names;
pub mod scan;

pub use layout::{LayoutProduct, discover_layout};
pub use names::{FileRole, classify};
pub use scan::{
    DeltaFile, FileSig, ImageFile, TreeError, VersionDir, is_plain_name, only_plain, outside_root,
    read_signed, resolves_outside, scan_product, scan_version,
};
