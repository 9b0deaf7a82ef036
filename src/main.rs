//! The `simplestreams-builder` binary: parse the command line, set up logging, run the command,
//! and turn its error into the exit code.

mod cli;
mod commands;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::args::Cli::parse_from(cli::args::subcommand_flags_after_name(
        std::env::args_os().collect(),
    ));
    let env = cli::settings::Environment::capture();
    let logging = cli::init_logging(cli.verbose, &env);
    let outcome = cli::settings::Settings::resolve(cli, &env).and_then(commands::run);
    // Every access log line is out before the error, if any.
    drop(logging);
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", error_line(&err));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each said once ([`simplestreams_builder::error_chain`]).
fn error_line(err: &anyhow::Error) -> String {
    simplestreams_builder::error_chain(err.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read tree.yml: {source}")]
    struct Quoting {
        source: std::io::Error,
    }

    #[test]
    fn a_cause_the_message_quotes_is_not_repeated() {
        let err = anyhow::Error::new(Quoting {
            source: std::io::Error::other("no such file"),
        })
        .context("loading the tree");
        assert_eq!(
            error_line(&err),
            "loading the tree: cannot read tree.yml: no such file"
        );
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(error_line(&plain), "outer: inner");
    }
}
