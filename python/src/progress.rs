//! Fit progress as log records (Python's `logging`, logger `balans...`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use balans::Progress;

/// Logs each stage of a fit at INFO and every tenth of it at DEBUG.
#[derive(Default)]
pub struct LogProgress {
    stage: Mutex<String>,
    total: AtomicU64,
    /// The last tenth logged.
    tenth: AtomicU64,
}

impl Progress for LogProgress {
    fn stage(&self, name: &str, total: u64) {
        if let Ok(mut s) = self.stage.lock() {
            *s = name.to_string();
        }
        self.total.store(total, Ordering::Relaxed);
        self.tenth.store(0, Ordering::Relaxed);
        tracing::info!(target: "balans::fit", stage = name, steps = total, "fit stage");
    }

    fn set(&self, done: u64) {
        let total = self.total.load(Ordering::Relaxed);
        if total == 0 {
            return;
        }
        let tenth = (done.min(total) * 10) / total;
        if self.tenth.fetch_max(tenth, Ordering::Relaxed) < tenth {
            let stage = self.stage.lock().map(|s| s.clone()).unwrap_or_default();
            tracing::debug!(target: "balans::fit", stage = %stage, done, steps = total, "fit progress");
        }
    }
}
