//! Progress on a terminal: spinners and bars on stderr while hashing, importing and building;
//! hidden when stderr is not a terminal, so logs and CI output stay clean.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

const TICK: Duration = Duration::from_millis(120);

/// A bar drawn only on a terminal, with `template` (falling back to `fallback`'s style).
fn on_terminal(bar: ProgressBar, template: &str, fallback: fn() -> ProgressStyle) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    bar.set_style(ProgressStyle::with_template(template).unwrap_or_else(|_| fallback()));
    bar.enable_steady_tick(TICK);
    bar
}

/// Bytes hashed so far, while publishing or verifying.
pub fn hashing() -> ProgressBar {
    on_terminal(
        ProgressBar::new_spinner(),
        "{spinner} hashing {msg} {bytes} ({bytes_per_sec})",
        ProgressStyle::default_spinner,
    )
}

/// One image's import: the import sets its length.
pub fn importing(shown: &str) -> ProgressBar {
    on_terminal(
        ProgressBar::no_length().with_message(shown.to_owned()),
        "{spinner} importing {msg} [{bar:24}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
        ProgressStyle::default_bar,
    )
}

/// A build's current stage (the message) and how long it has run.
pub fn building(product: &str) -> ProgressBar {
    let bar = on_terminal(
        ProgressBar::new_spinner(),
        "{spinner} {prefix}: {msg} ({elapsed})",
        ProgressStyle::default_spinner,
    );
    bar.set_prefix(product.to_owned());
    bar
}

/// `1.5 GiB`.
pub fn human_bytes(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}
