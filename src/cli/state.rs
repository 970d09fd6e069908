//! `balans state`: inspect and repair a daemon's state directory (see
//! docs/serve.md, "Delivery and recovery").
//!
//! - `check` verifies the snapshot (manifest checksums, row counts, finite
//!   values) and the write-ahead log (record checksums, the plate-index
//!   sequence), prints what it finds, and exits 0 when the daemon would
//!   start, 1 when it would refuse.
//! - `repair` truncates the log at its first bad record, keeping the
//!   dropped bytes in `wal.log.damaged-<offset>` and naming the plates
//!   dropped (they must be sent again). Without `--yes` it is a dry run.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};

use balans::serve::state::check;

/// Options of `balans state`.
#[derive(Args, Debug, Clone)]
pub struct StateArgs {
    #[command(subcommand)]
    pub action: StateAction,
}

/// What to do with the state directory.
#[derive(Subcommand, Debug, Clone)]
pub enum StateAction {
    /// Verify the snapshot and the write-ahead log; exit 0 if the daemon would start, 1 if not.
    Check {
        /// The daemon's state directory (`serve --state-dir`).
        #[arg(long)]
        state_dir: PathBuf,
    },
    /// Truncate the write-ahead log at its first bad record (the cut bytes kept in wal.log.damaged-<offset>).
    Repair {
        /// The daemon's state directory (`serve --state-dir`).
        #[arg(long)]
        state_dir: PathBuf,
        /// Apply the repair (without it: a dry run that says what would be dropped).
        #[arg(long)]
        yes: bool,
    },
}

/// Run it; `Ok(false)` = exit 1 (damage found, or a dry run).
pub fn run(a: StateArgs) -> Result<bool> {
    let report = match &a.action {
        StateAction::Check { state_dir } => check::check(state_dir)?,
        StateAction::Repair { state_dir, yes } => check::repair(state_dir, *yes)?,
    };
    for l in &report.lines {
        println!("{l}");
    }
    Ok(report.ok)
}
