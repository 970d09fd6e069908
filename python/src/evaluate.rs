//! `balans.evaluate`: `balans evaluate` on a table and an optional
//! baseline, through the same library path (`balans::metrics::table`:
//! `eval_input`, `eval_options`, `evaluate_table`), returning the report the
//! CLI writes with `--json`.

use anyhow::Result;
use balans::io::dataset::exclude_regex;
use balans::io::profile::ControlSelector;
use balans::io::table;
use balans::metrics::{eval_input, eval_options, evaluate_table};
use balans::LoadSpec;
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
    let baseline = match baseline {
        Some(Data::Path(p)) => Some((table::read_table(&p)?, p.display().to_string())),
        Some(Data::Table(b, s)) => Some((b, s)),
        None => None,
    };
    let input = eval_input(
        t,
        &a.compound_col,
        &a.treatment_col,
        baseline.as_ref().map(|(b, s)| (b, s.as_str())),
    )?;
    let opts = eval_options(a.seed, a.robust_scale, a.pca);
    let scored = evaluate_table(
        &input,
        &opts,
        a.baseline_scores,
        "pass baseline_scores=False to skip",
    )?;
    scored.report().to_json()
}
