//! The commands: each takes its resolved [`Settings`], calls the library and reports. Warnings
//! go to the log, data to stdout; errors carry the file or product.

mod bucket;
mod build;
mod demo;
mod import;
mod inventory;
mod keygen;
mod mirror;
mod publish;
mod serve;
mod users;

use anyhow::Result;

use crate::cli::settings::Settings;

/// Runs one resolved command.
pub fn run(settings: Settings) -> Result<()> {
    match settings {
        Settings::Publish(s) => publish::publish(&s),
        Settings::Manifest(s) => publish::manifest(&s),
        Settings::Catalog(s) => publish::catalog(&s),
        Settings::Print(tree) => publish::print(&tree),
        Settings::Build(s) => build::build_product(&s),
        Settings::Import(s) => import::import(&s),
        Settings::Verify { inventory, format } => inventory::verify(&inventory, format),
        Settings::Prune { inventory, yes } => inventory::prune(&inventory, yes),
        Settings::List {
            target,
            tree,
            format,
        } => inventory::list(&target, tree.as_ref(), format),
        Settings::Serve(s) => serve::serve(*s),
        Settings::Demo(s) => demo::run(&s),
        Settings::MirrorPull(req) => mirror::pull(&req),
        Settings::MirrorPush { source, dest } => mirror::push(&source, &dest),
        Settings::Users(cmd) => users::run(cmd),
        Settings::Bucket(job) => bucket::run(*job),
        Settings::Keygen {
            out,
            user_id,
            passphrase,
        } => keygen::keygen(&out, &user_id, passphrase.as_deref()),
    }
}
