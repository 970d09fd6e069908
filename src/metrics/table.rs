//! The metric suite on a profile table: the one path that `balans evaluate`
//! and the Python package's `balans.evaluate` both run.
//!
//! A loaded [`ProfileTable`] (and, optionally, the baseline table of the
//! same rows, e.g. the uncorrected input) becomes an [`EvalInput`] with
//! [`eval_input`]; [`evaluate_table`] scores it and, when asked, scores the
//! baseline against itself, so a report can show before and after.

use anyhow::{Context, Result};
use arrow_array::RecordBatch;

use crate::io::dataset::ProfileTable;
use crate::metrics::{evaluate_full, EvalInput, EvalOptions, Evaluation, Report};

/// The metric options of `balans evaluate`: `seed` (also k-means'),
/// robust scaling, and `pca` components (0 = the features themselves).
pub fn eval_options(seed: u64, robust_scale: bool, pca: usize) -> EvalOptions {
    let mut opts = EvalOptions {
        seed,
        robust_scale,
        pca_components: (pca > 0).then_some(pca),
        ..EvalOptions::default()
    };
    opts.kmeans.seed = seed;
    opts
}

/// The metrics' input from a loaded table: features, batch, label, plate
/// and control columns, plus the compound and treatment columns when the
/// table has them. `baseline` is another table of the same rows (named
/// `baseline_source` in errors) whose same feature columns are the "before"
/// version; it must hold as many rows.
pub fn eval_input(
    t: ProfileTable,
    compound_col: &str,
    treatment_col: &str,
    baseline: Option<(&RecordBatch, &str)>,
) -> Result<EvalInput> {
    let baseline = match baseline {
        Some((b, s)) => {
            anyhow::ensure!(
                b.num_rows() == t.rows(),
                "{s} has {} rows, {} {} (the baseline must hold the same rows)",
                b.num_rows(),
                t.source,
                t.rows()
            );
            Some(t.features_like(b, s)?)
        }
        None => None,
    };
    let n = t.rows();
    Ok(EvalInput {
        compound: t.optional_column(compound_col)?,
        treatment: t.optional_column(treatment_col)?,
        features: t.x,
        batch: t.batch,
        label: t.labels.unwrap_or_default(),
        plate: t.plate,
        is_control: t.controls.unwrap_or_else(|| vec![false; n]),
        baseline,
        previous: None,
    })
}

/// The scores of a table, and of its baseline when it was scored.
pub struct TableEvaluation {
    /// The table's scores (embedding included, for plots).
    pub after: Evaluation,
    /// The baseline scored against itself, if asked for and given.
    pub before: Option<Evaluation>,
}

impl TableEvaluation {
    /// The report: the table's metrics, with the baseline's as `before`.
    pub fn report(&self) -> Report {
        let mut report = self.after.report.clone();
        report.before = self.before.as_ref().map(|b| Box::new(b.report.clone()));
        report
    }
}

/// Score `input`; when `baseline_scores` and the input has a baseline,
/// also score the baseline against itself (its PCR comparison is 0 by
/// definition, so its batch mean covers the same five metrics). `skip_hint`
/// ends the error context of a failed baseline scoring, e.g. "use
/// --no-baseline-scores to skip".
pub fn evaluate_table(
    input: &EvalInput,
    opts: &EvalOptions,
    baseline_scores: bool,
    skip_hint: &str,
) -> Result<TableEvaluation> {
    let started = std::time::Instant::now();
    let after = evaluate_full(input, opts)?;
    tracing::info!(seconds = started.elapsed().as_secs_f64(), "evaluated");
    let before = match (&input.baseline, baseline_scores) {
        (Some(base), true) => {
            let started = std::time::Instant::now();
            let base_input = EvalInput {
                features: base.clone(),
                ..input.clone()
            };
            let ev = evaluate_full(&base_input, opts)
                .with_context(|| format!("scoring the baseline ({skip_hint})"))?;
            tracing::info!(
                seconds = started.elapsed().as_secs_f64(),
                "baseline evaluated"
            );
            Some(ev)
        }
        _ => None,
    };
    Ok(TableEvaluation { after, before })
}
