//! The command line: clap definitions ([`args`]), the settings each command resolves from them,
//! the environment and tree.yml ([`settings`]), progress bars ([`progress`]), and the stdout and
//! logging set-up every command shares.

pub mod args;
pub mod progress;
pub mod settings;

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
pub fn init_logging(verbose: bool, env: &settings::Environment) {
    let debug = verbose || env.debug();
    let default = if debug { "debug" } else { "info" };
    // rustls-platform-verifier logs every refused certificate itself; our error says it once.
    let filter = env
        .log_filter()
        .and_then(|f| tracing_subscriber::EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| {
            tracing_subscriber::EnvFilter::new(format!("{default},rustls_platform_verifier=off"))
        });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(debug)
        .try_init();
}
