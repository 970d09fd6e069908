//! `balans.evaluate`: the steps of `balans evaluate` (run_table in
//! src/cli/evaluate.rs) on a table and an optional baseline, returning the
//! report the CLI writes with `--json`.

use anyhow::{Context, Result};
use balans::io::dataset::exclude_regex;
use balans::io::profile::ControlSelector;
use balans::io::table;
use balans::metrics::{evaluate_full, EvalInput, EvalOptions};
use balans::{LoadSpec, ProfileTable};
use serde::Deserialize;

use crate::arrow::Data;

/// The options of `balans evaluate`, with its defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvaluateOptions {
    /// `--batch-col`.
    pub batch_col: String,
    /// `--label-col`.
    pub label_col: String,
    /// `--control`.
    pub control: Option<String>,
    /// `--compound-col` (used when present).
    pub compound_col: String,
    /// `--treatment-col` (used when present).
    pub treatment_col: String,
    /// `--plate-col` (used when present).
    pub plate_col: String,
    /// `--exclude`.
    pub exclude: Option<String>,
    /// `--seed`.
    pub seed: u64,
    /// Not `--no-robust-scale`.
    pub robust_scale: bool,
    /// `--pca` (0 = the features as given).
    pub pca: usize,
    /// Not `--no-baseline-scores`.
    pub baseline_scores: bool,
}

impl Default for EvaluateOptions {
    fn default() -> Self {
        EvaluateOptions {
            batch_col: "Metadata_Batch".into(),
            label_col: "Metadata_MoA".into(),
            control: None,
            compound_col: "Metadata_Compound".into(),
            treatment_col: "Metadata_Treatment".into(),
            plate_col: "Metadata_Plate".into(),
            exclude: None,
            seed: 0,
            robust_scale: true,
            pca: 50,
            baseline_scores: true,
        }
    }
}

/// Score `data` (and the `baseline` version of the same rows, when given):
/// the report as JSON, the CLI's `--json` file.
pub fn evaluate(data: Data, baseline: Option<Data>, a: &EvaluateOptions) -> Result<String> {
    let spec = LoadSpec {
        plate_col: Some(a.plate_col.clone()),
        control: a
            .control
            .as_deref()
            .map(ControlSelector::parse)
            .transpose()?,
        exclude: a
            .exclude
            .as_deref()
            .map(|p| exclude_regex(p, "exclude"))
            .transpose()?,
        label_col: Some(a.label_col.clone()),
        ..LoadSpec::new(&a.batch_col)
    };
    let t = crate::correct::load(data, &spec)?;
    let source = t.source.clone();
    let baseline = match baseline {
        Some(b) => {
            let (b, s) = match b {
                Data::Path(p) => (table::read_table(&p)?, p.display().to_string()),
                Data::Table(b, s) => (b, s),
            };
            anyhow::ensure!(
                b.num_rows() == t.rows(),
                "{s} has {} rows, {source} {} (the baseline must hold the same rows)",
                b.num_rows(),
                t.rows()
            );
            Some(t.features_like(&b, &s)?)
        }
        None => None,
    };
    let input = eval_input(t, &a.compound_col, &a.treatment_col, baseline)?;
    let mut opts = EvalOptions {
        seed: a.seed,
        robust_scale: a.robust_scale,
        pca_components: (a.pca > 0).then_some(a.pca),
        ..EvalOptions::default()
    };
    opts.kmeans.seed = a.seed;
    let after = evaluate_full(&input, &opts)?;
    let mut report = after.report;
    if let (Some(base), true) = (&input.baseline, a.baseline_scores) {
        // As the CLI: the baseline scored against itself.
        let base_input = EvalInput {
            features: base.clone(),
            ..input.clone()
        };
        let ev = evaluate_full(&base_input, &opts)
            .context("scoring the baseline (pass baseline_scores=False to skip)")?;
        report.before = Some(Box::new(ev.report));
    }
    report.to_json()
}

/// The metrics' input from a loaded table.
fn eval_input(
    t: ProfileTable,
    compound_col: &str,
    treatment_col: &str,
    baseline: Option<ndarray::Array2<f64>>,
) -> Result<EvalInput> {
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
