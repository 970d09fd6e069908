//! Generations: a deliberate realignment (`balans realign`) runs beside
//! the live model until the operator promotes it.
//!
//! ```text
//! STATE_DIR/                  the live generation (snapshot/, wal.log, FORMAT)
//! STATE_DIR/next/             the generation under evaluation: a state
//!                             directory of its own (snapshot/, wal.log, FORMAT)
//! STATE_DIR/next/realign.json what it was fitted on (written by `realign`)
//! STATE_DIR/next/PROMOTE      the operator's switch (`realign --promote`)
//! STATE_DIR/next.tmp/         a realignment being written (removed when stale)
//! STATE_DIR/PROMOTING         a promotion in progress (finished at start)
//! STATE_DIR/retired-g<N>/     the live generation's files after a promotion
//! ```
//!
//! `balans realign` ([`crate::serve::realign`]) writes the new generation's
//! checkpoint into `next.tmp/` and renames it to `next/`, so a kill leaves
//! either no new generation or a complete one. The daemon picks `next/` up
//! (at start, or between plates) and from then on corrects every plate with
//! both generations: both deltas are logged (each generation has its own
//! write-ahead log), both outputs published, the drift between them set on
//! both QC records ([`GenerationDrift`]) and in the metrics; only then is
//! the input acknowledged. A `kill -9` at any point so loses nothing: on
//! restart each generation restores from its own snapshot and log, and a
//! redelivered plate is a replay for a generation that logged it and new
//! for one that did not.
//!
//! Promotion ([`promote`]) is journalled: `PROMOTING` is written first, the
//! live files move to `retired-g<N>/` (marked `RETIRED` when all moved),
//! `next/`'s files move up, `next/` and the journal are removed. Every step
//! is a rename that is skipped when already done, so a start that finds
//! `PROMOTING` finishes it ([`finish_promotion`]).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ndarray::Array2;
use serde::Serialize;

use crate::method::model::Model;
use crate::metrics::drift::representation_drift;
use crate::serve::state::snapshot::{sync_dir, write_synced};
use crate::serve::state::StateDir;

/// The new generation's directory inside the state directory.
pub const NEXT: &str = "next";
/// Where `realign` writes it before the rename.
pub const NEXT_TMP: &str = "next.tmp";
/// The operator's switch inside `next/`.
pub const PROMOTE: &str = "PROMOTE";
/// What the new generation was fitted on, inside `next/`.
pub const REALIGN_RECORD: &str = "realign.json";
/// The promotion journal in the state directory.
const PROMOTING: &str = "PROMOTING";
/// Marks a retired directory complete.
const RETIRED: &str = "RETIRED";
/// The files of a generation's state, moved by a promotion.
const STATE_FILES: [&str; 4] = ["snapshot", "snapshot.old", "wal.log", "FORMAT"];

/// `STATE_DIR/next`.
pub fn next_dir(state_dir: &Path) -> PathBuf {
    state_dir.join(NEXT)
}

/// Does the state directory hold a new generation (complete: `realign`
/// installs it by rename)?
pub fn has_next(state_dir: &Path) -> bool {
    next_dir(state_dir).join("snapshot").is_dir()
        || next_dir(state_dir).join("snapshot.old").is_dir()
}

/// Has the operator asked for the new generation to be promoted?
pub fn promotion_requested(state_dir: &Path) -> bool {
    next_dir(state_dir).join(PROMOTE).exists()
}

/// The generation under evaluation, restored from `STATE_DIR/next`.
pub struct NextGeneration {
    /// Its own state directory (snapshot + write-ahead log).
    pub state: StateDir,
    /// Its model.
    pub model: Model,
}

/// Restore the new generation, if the state directory has one.
pub fn open_next(state_dir: &Path) -> Result<Option<NextGeneration>> {
    if !has_next(state_dir) {
        return Ok(None);
    }
    let dir = next_dir(state_dir);
    let mut state = StateDir::open(&dir)?;
    let Some((model, replayed)) = state
        .restore()
        .with_context(|| format!("the new generation in {}", dir.display()))?
    else {
        return Ok(None);
    };
    tracing::info!(
        generation = model.meta().generation,
        version = %model.version(),
        rows = model.len(),
        plates = model.meta().plates.len(),
        wal_records = replayed,
        "new generation restored: plates are corrected with both generations until it is promoted"
    );
    Ok(Some(NextGeneration { state, model }))
}

/// Ask for the new generation to be promoted (`balans realign --promote`):
/// writes `next/PROMOTE`. The daemon promotes it between plates (or at its
/// next start).
pub fn request_promotion(state_dir: &Path) -> Result<()> {
    anyhow::ensure!(
        has_next(state_dir),
        "{} holds no new generation to promote (run `balans realign` first)",
        state_dir.display()
    );
    let dir = next_dir(state_dir);
    write_synced(&dir.join(PROMOTE), b"promote\n")?;
    sync_dir(&dir)
}

/// Rename `from` to `to` unless `from` is gone (already moved).
fn move_if_present(from: &Path, to: &Path) -> Result<bool> {
    if from.exists() {
        std::fs::rename(from, to)
            .with_context(|| format!("cannot move {} to {}", from.display(), to.display()))?;
        return Ok(true);
    }
    Ok(false)
}

/// Promote `next/` to the live generation (see the module doc). Nothing
/// may hold either generation's state open. `retired` names the directory
/// the live files move to (`retired-g<N>`).
pub fn promote(state_dir: &Path, retired: &str) -> Result<()> {
    anyhow::ensure!(
        has_next(state_dir),
        "{} holds no new generation to promote",
        state_dir.display()
    );
    write_synced(
        &state_dir.join(PROMOTING),
        format!("{retired}\n").as_bytes(),
    )?;
    sync_dir(state_dir)?;
    finish_promotion(state_dir)
}

/// Finish a promotion a kill interrupted (`PROMOTING` present); nothing
/// to do otherwise. Called before the state is opened.
pub fn finish_promotion(state_dir: &Path) -> Result<()> {
    let journal = state_dir.join(PROMOTING);
    let retired = match std::fs::read_to_string(&journal) {
        Ok(s) => s.trim().to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", journal.display())),
    };
    anyhow::ensure!(
        retired.starts_with("retired-") && !retired.contains('/') && !retired.contains(".."),
        "{}: unexpected content {retired:?}",
        journal.display()
    );
    let old = state_dir.join(&retired);
    let next = next_dir(state_dir);
    if !old.join(RETIRED).exists() {
        std::fs::create_dir_all(&old)
            .with_context(|| format!("cannot create {}", old.display()))?;
        for f in STATE_FILES {
            move_if_present(&state_dir.join(f), &old.join(f))?;
        }
        sync_dir(state_dir)?;
        sync_dir(&old)?;
        write_synced(&old.join(RETIRED), b"retired\n")?;
        sync_dir(&old)?;
    }
    for f in STATE_FILES {
        move_if_present(&next.join(f), &state_dir.join(f))?;
    }
    sync_dir(state_dir)?;
    if next.exists() {
        // realign.json and PROMOTE: keep the record with the retired files.
        let _ = move_if_present(&next.join(REALIGN_RECORD), &old.join(REALIGN_RECORD));
        std::fs::remove_dir_all(&next)
            .with_context(|| format!("cannot remove {}", next.display()))?;
    }
    std::fs::remove_file(&journal)
        .with_context(|| format!("cannot remove {}", journal.display()))?;
    sync_dir(state_dir)?;
    tracing::info!(
        state_dir = %state_dir.display(),
        retired = %old.display(),
        "new generation promoted: it is now the live one"
    );
    Ok(())
}

/// How far the new generation's output of a plate is from the live one's
/// (`balans evaluate drift` on the two outputs of the same rows). Set on
/// both generations' QC records while a new generation is under
/// evaluation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GenerationDrift {
    /// The live generation's `model_version` for this plate.
    pub live_version: String,
    /// The new generation's `model_version` for this plate.
    pub next_version: String,
    /// Median cosine distance between the two outputs' treated (non-control)
    /// rows, corrected features (`balans evaluate drift` without the gauge
    /// fix: both generations publish in the input feature units, so there
    /// is no rotation to fix). `None` when every row is a control.
    pub drift: Option<f64>,
    /// Mean Euclidean distance between the two outputs' rows (input units).
    pub mean_shift: f64,
    /// Largest absolute difference of a value.
    pub max_abs_difference: f64,
}

/// The drift between two outputs of the same plate (same rows, same
/// columns). `controls` excludes the control rows from `drift`.
pub fn generation_drift(
    live: &Array2<f64>,
    next: &Array2<f64>,
    controls: Option<&[bool]>,
    live_version: &str,
    next_version: &str,
) -> Result<GenerationDrift> {
    anyhow::ensure!(
        live.dim() == next.dim(),
        "generations disagree on the plate's shape: {:?} vs {:?}",
        live.dim(),
        next.dim()
    );
    let n = live.nrows();
    let mask: Vec<bool> = match controls {
        Some(c) => c.to_vec(),
        None => vec![false; n],
    };
    let drift = if mask.iter().all(|&c| c) {
        None
    } else {
        Some(representation_drift(live, next, &mask, false)?)
    };
    let mut shift = 0.0;
    let mut max_abs: f64 = 0.0;
    for (a, b) in live.rows().into_iter().zip(next.rows()) {
        let mut s = 0.0;
        for (x, y) in a.iter().zip(b.iter()) {
            let d = x - y;
            s += d * d;
            max_abs = max_abs.max(d.abs());
        }
        shift += s.sqrt();
    }
    Ok(GenerationDrift {
        live_version: live_version.to_string(),
        next_version: next_version.to_string(),
        drift,
        mean_shift: if n == 0 { 0.0 } else { shift / n as f64 },
        max_abs_difference: max_abs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_of_identical_outputs_is_zero_and_grows_with_a_shift() {
        let a = Array2::from_shape_fn((6, 3), |(i, j)| (i * 3 + j) as f64 + 1.0);
        let ctrl = [true, false, false, false, false, true];
        let d = generation_drift(&a, &a, Some(&ctrl), "g1.p0", "g2.p0").unwrap();
        assert_eq!(d.drift, Some(0.0));
        assert_eq!(d.mean_shift, 0.0);
        assert_eq!(d.max_abs_difference, 0.0);
        let mut b = a.clone();
        b.column_mut(0).mapv_inplace(|v| v + 3.0);
        let d = generation_drift(&a, &b, Some(&ctrl), "g1.p0", "g2.p0").unwrap();
        assert!(d.drift.unwrap() > 0.0);
        assert!((d.mean_shift - 3.0).abs() < 1e-12);
        assert!((d.max_abs_difference - 3.0).abs() < 1e-12);
        // Every row a control: no treated rows to take the drift of.
        let d = generation_drift(&a, &b, Some(&[true; 6]), "a", "b").unwrap();
        assert_eq!(d.drift, None);
        assert!(generation_drift(
            &a,
            &b.slice(ndarray::s![..5, ..]).to_owned(),
            None,
            "a",
            "b"
        )
        .is_err());
    }

    #[test]
    fn an_interrupted_promotion_is_finished_at_every_step() {
        // Kill the promotion after each of its renames: finishing it must
        // always end with next's files live and the old ones retired.
        for stop_after in 0..=6 {
            let tmp = tempfile::tempdir().unwrap();
            let s = tmp.path();
            for (d, tag) in [(s.to_path_buf(), "live"), (next_dir(s), "next")] {
                std::fs::create_dir_all(d.join("snapshot")).unwrap();
                std::fs::write(d.join("snapshot").join("meta.json"), tag).unwrap();
                std::fs::write(d.join("wal.log"), tag).unwrap();
                std::fs::write(d.join("FORMAT"), tag).unwrap();
            }
            std::fs::write(next_dir(s).join(REALIGN_RECORD), "{}").unwrap();
            write_synced(&s.join(PROMOTING), b"retired-g1\n").unwrap();
            // Replay the first `stop_after` renames by hand.
            let old = s.join("retired-g1");
            std::fs::create_dir_all(&old).unwrap();
            let mut steps: Vec<(PathBuf, PathBuf)> = Vec::new();
            for f in ["snapshot", "wal.log", "FORMAT"] {
                steps.push((s.join(f), old.join(f)));
            }
            for f in ["snapshot", "wal.log", "FORMAT"] {
                steps.push((next_dir(s).join(f), s.join(f)));
            }
            for (i, (a, b)) in steps.iter().enumerate().take(stop_after) {
                if i == 3 {
                    std::fs::write(old.join(RETIRED), "").unwrap();
                }
                std::fs::rename(a, b).unwrap();
            }
            finish_promotion(s).unwrap();
            let read = |p: PathBuf| std::fs::read_to_string(p).unwrap();
            assert_eq!(
                read(s.join("snapshot").join("meta.json")),
                "next",
                "step {stop_after}"
            );
            assert_eq!(read(s.join("wal.log")), "next");
            assert_eq!(read(old.join("wal.log")), "live");
            assert_eq!(read(old.join("snapshot").join("meta.json")), "live");
            assert!(!next_dir(s).exists() && !s.join(PROMOTING).exists());
            assert!(old.join(REALIGN_RECORD).exists());
        }
    }
}
