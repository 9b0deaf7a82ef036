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
/// `RUST_LOG` overrides both. The server's access log lines go through a buffered writer on
/// its own thread, so a request never waits for stderr; they are written whole, in order, and
/// none is dropped (the buffer holds 128k lines before a writer waits). The returned guard
/// flushes them when dropped.
pub fn init_logging(
    verbose: bool,
    env: &settings::Environment,
) -> tracing_appender::non_blocking::WorkerGuard {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::filter::FilterExt as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let debug = verbose || env.debug();
    let default = if debug { "debug" } else { "info" };
    // rustls-platform-verifier logs every refused certificate itself; our error says it once.
    let filter = || {
        env.log_filter()
            .and_then(|f| tracing_subscriber::EnvFilter::try_new(f).ok())
            .unwrap_or_else(|| {
                tracing_subscriber::EnvFilter::new(format!(
                    "{default},rustls_platform_verifier=off"
                ))
            })
    };
    let ansi = std::io::stderr().is_terminal();
    let (access_writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::stderr());
    let is_access =
        |meta: &tracing::Metadata<'_>| meta.target() == simplestreams_builder::server::ACCESS_LOG;
    // One filter per layer, the level filter and the access/other split joined with `and`.
    // Stacked as two per-layer filters, the outer one said "always" to every trace span of h2,
    // so the registry allocated, entered and closed one per HTTP/2 frame for the inner one to
    // drop (the slab allocation alone was 5 % of the samples of a download over HTTP/2).
    let _ = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(ansi)
                .with_target(debug)
                .with_filter(
                    filter().and(tracing_subscriber::filter::filter_fn(move |m| {
                        !is_access(m)
                    })),
                ),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(access_writer)
                .with_ansi(ansi)
                .with_target(debug)
                .with_filter(filter().and(tracing_subscriber::filter::filter_fn(is_access))),
        )
        .try_init();
    guard
}
