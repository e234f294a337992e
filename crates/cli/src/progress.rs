//! Progress display: an indicatif spinner or bar on a terminal, nothing otherwise (log lines carry the news).

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// A spinner showing a message, hidden when stderr is not a terminal.
pub fn spinner() -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
            .expect("the spinner template is valid"),
    );
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}
