//! The command line: clap definitions ([`args`]), the settings each command resolves from them,
//! the environment and tree.yml ([`settings`]), progress bars ([`progress`]), and the stdout and
//! logging set-up every command shares.

pub mod args;

use std::io::{IsTerminal, Write};

/// Writes command output to stdout. A closed pipe (`| head`) is not an error.
pub fn write_stdout(bytes: &[u8]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// Sets up logging on stderr: info by default, debug with `-v` or a non-empty `DEBUG`;
/// `RUST_LOG` overrides both.
pub fn init_logging(verbose: bool) {
    let debug = verbose || std::env::var("DEBUG").is_ok_and(|v| !v.is_empty());
    let default = if debug { "debug" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(debug)
        .try_init();
}
