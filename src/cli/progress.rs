//! An indicatif progress bar behind the library's `Progress` trait.

use balans::Progress;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar on stderr (drawn only when stderr is a terminal).
pub struct Bar {
    bar: ProgressBar,
}

impl Bar {
    /// A new bar; hidden when `quiet`.
    pub fn new(quiet: bool) -> Self {
        let bar = ProgressBar::new(1);
        if quiet {
            bar.set_draw_target(ProgressDrawTarget::hidden());
        }
        let style = ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {msg:28} {wide_bar} {pos}/{len}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        Bar { bar }
    }

    /// Remove the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Progress for Bar {
    fn stage(&self, name: &str, total: u64) {
        self.bar.set_length(total.max(1));
        self.bar.set_position(0);
        self.bar.set_message(name.to_string());
        tracing::debug!(stage = name, "stage");
    }

    fn set(&self, done: u64) {
        self.bar.set_position(done);
    }
}
