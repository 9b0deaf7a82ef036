use std::process::ExitCode;

use clap::Parser;
use simplestreams_builder::{cli::Cli, commands, init_logging};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
