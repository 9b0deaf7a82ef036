//! The integration tests, as one binary: the command line and its golden catalogs (`cli`),
//! builds with a stub and with the real distrobuilder (`build`, `build_e2e`), the server's reads,
//! uploads, imports and direct-URL import (`server`, `upload`, `server_import`, `direct`), import,
//! inventory and mirroring (`import`, `import_e2e`, `inventory`, `mirror`), classic LXC and
//! signed catalogs (`lxc`), the deployment files
//! (`deploy`), the real clients end to end (`e2e`), and kills and load (`faults`, `load`).
//! `common` holds what they share.

// The tests read their own switches (SSB_REQUIRE_REAL_CLIENTS, PATH, ...); the rule that only
// cli::settings reads the environment is the binary's.
#![allow(clippy::disallowed_methods)]

mod common;

mod build;
mod build_e2e;
mod cli;
mod daemons;
mod deltas;
mod deploy;
mod direct;
mod e2e;
mod faults;
mod import;
mod import_e2e;
mod inventory;
mod load;
mod lxc;
mod mirror;
mod page;
mod pipeline;
mod private;
mod s3;
mod server;
mod server_import;
mod upload;
