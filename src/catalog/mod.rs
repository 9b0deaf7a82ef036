//! From hashed product folders to the published catalog: each product's manifest (`ssb.json`,
//! local or remote: [`manifest`]), the products of a tree with their overrides ([`products`],
//! [`metadata_json`], [`requirements_file`]), the catalog built, checked and written
//! ([`publish`]), read back ([`published`]) and checked against the tree ([`inventory`]).

pub mod companions;
pub mod inventory;
pub mod lxc_index;
pub mod manifest;
pub mod metadata_json;
pub mod page;
pub mod products;
pub mod publish;
pub mod published;
pub mod requirements_file;
