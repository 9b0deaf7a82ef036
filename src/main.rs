//! The `simplestreams-builder` binary: parse the command line, set up logging, run the command,
//! and turn its error into the exit code.

mod cli;
mod commands;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::args::Cli::parse();
    let env = cli::settings::Environment::capture();
    cli::init_logging(cli.verbose, &env);
    match cli::settings::Settings::resolve(cli, &env).and_then(commands::run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
