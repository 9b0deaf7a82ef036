//! `users`: the readers of a private server (`serve --read-users FILE`).

use anyhow::{Context, Result};

use simplestreams_builder::access::UsersFile;

use crate::cli::args::UsersCommand;
use crate::cli::write_stdout;

/// Runs one `users` command. `add` prints the new token alone on stdout: it is shown once, the
/// file keeps only its hash.
pub fn run(cmd: UsersCommand) -> Result<()> {
    match cmd {
        UsersCommand::Add {
            name,
            file,
            products,
        } => {
            let mut users = if file.exists() {
                UsersFile::load(&file)?
            } else {
                UsersFile::default()
            };
            let token = users
                .add(&name, products)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("{}", file.display()))?;
            users.save(&file)?;
            tracing::info!(
                "added `{name}` to {}; a running server picks it up within a second",
                file.display()
            );
            write_stdout(format!("{token}\n").as_bytes())
        }
        UsersCommand::List { file } => {
            let users = UsersFile::load(&file)?;
            let mut out = String::new();
            if !users.public.is_empty() {
                out.push_str(&format!("(anyone)\t{}\n", users.public.join(",")));
            }
            for u in &users.users {
                out.push_str(&format!("{}\t{}\n", u.name, u.products.join(",")));
            }
            write_stdout(out.as_bytes())
        }
        UsersCommand::Remove { name, file } => {
            let mut users = UsersFile::load(&file)?;
            let before = users.users.len();
            users.users.retain(|u| u.name != name);
            anyhow::ensure!(
                users.users.len() < before,
                "{}: there is no user `{name}`",
                file.display()
            );
            users.save(&file)?;
            tracing::info!("removed `{name}` from {}", file.display());
            Ok(())
        }
    }
}
