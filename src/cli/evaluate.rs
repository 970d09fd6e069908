//! `balans evaluate`: the field's batch-correction metrics on a table, and
//! `balans evaluate drift` between two versions of the same rows.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use arrow_array::RecordBatch;
use clap::{Args, Subcommand};
use ndarray::{concatenate, Array2, Axis};

use balans::metrics::drift::{replicate_distance, representation_drift};
use balans::metrics::preprocess::robust_scale;
use balans::metrics::{evaluate, Codes, EvalInput, EvalOptions};
use balans::profile::{self, ControlSelector, FeatureColumns, NonFinitePolicy};
use balans::table;

/// Options of `balans evaluate`.
#[derive(Args, Debug, Clone)]
#[command(args_conflicts_with_subcommands = true)]
pub struct EvaluateArgs {
    #[command(subcommand)]
    pub command: Option<EvaluateCommand>,
    #[command(flatten)]
    pub table: TableArgs,
}

/// Subcommands of `balans evaluate`.
#[derive(Subcommand, Debug, Clone)]
pub enum EvaluateCommand {
    /// Representation drift between two versions of the same rows
    /// (Procrustes gauge fix on controls, normalised by replicate distance).
    Drift(DriftArgs),
}

/// Scoring one table.
#[derive(Args, Debug, Clone, Default)]
pub struct TableArgs {
    /// Table to score (corrected profiles).
    #[arg(long, short)]
    pub input: Option<PathBuf>,
    /// Uncorrected table with the same rows, for PCR comparison.
    #[arg(long)]
    pub baseline: Option<PathBuf>,
    /// Batch column.
    #[arg(long, default_value = "Metadata_Batch")]
    pub batch_col: String,
    /// Biological label column (e.g. Metadata_MoA).
    #[arg(long, default_value = "Metadata_MoA")]
    pub label_col: String,
    /// Negative controls COLUMN=VALUE (excluded from the metrics; used by mAP-vs-controls).
    #[arg(long)]
    pub control: Option<String>,
    /// Compound column (mAP presets, NSC/NSCB); used when present.
    #[arg(long, default_value = "Metadata_Compound")]
    pub compound_col: String,
    /// Treatment column (compound + dose) for NSC/NSCB medians; used when present.
    #[arg(long, default_value = "Metadata_Treatment")]
    pub treatment_col: String,
    /// Plate column (Arevalo mAP presets); used when present.
    #[arg(long, default_value = "Metadata_Plate")]
    pub plate_col: String,
    /// Regex of feature columns to leave out (e.g. '_Location_|_Center_').
    #[arg(long)]
    pub exclude: Option<String>,
    /// Write the report as JSON (one key per metric plus batch, bio, total).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write a Markdown report.
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    /// Seed of the stochastic parts (k-means, null distributions, subsampling).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Skip the protocol's robust scaling (median/MAD, clip +-50) before PCA.
    #[arg(long)]
    pub no_robust_scale: bool,
    /// PCA components the metrics see (0 = the features as given).
    #[arg(long, default_value_t = 50)]
    pub pca: usize,
}

/// `balans evaluate drift`.
#[derive(Args, Debug, Clone)]
pub struct DriftArgs {
    /// Earlier version of the rows.
    #[arg(long)]
    pub before: PathBuf,
    /// Later version of the same rows (same order).
    #[arg(long)]
    pub after: PathBuf,
    /// Negative controls COLUMN=VALUE (the gauge is fixed on them).
    #[arg(long)]
    pub control: String,
    /// Batch column (replicate distance is within batch).
    #[arg(long, default_value = "Metadata_Batch")]
    pub batch_col: String,
    /// Perturbation column whose replicates define the noise floor.
    #[arg(long, default_value = "Metadata_Treatment")]
    pub treatment_col: String,
    /// Regex of feature columns to leave out.
    #[arg(long)]
    pub exclude: Option<String>,
    /// Write the result as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

fn exclude_regex(s: &Option<String>) -> Result<Option<regex::Regex>> {
    s.as_deref()
        .map(regex::Regex::new)
        .transpose()
        .context("--exclude is not a valid regular expression")
}

fn optional_column(batch: &RecordBatch, name: &str, source: &str) -> Result<Option<Vec<String>>> {
    if batch.schema().column_with_name(name).is_some() {
        Ok(Some(profile::string_column(batch, name, source)?))
    } else {
        Ok(None)
    }
}

fn controls_of(batch: &RecordBatch, sel: Option<&str>, source: &str) -> Result<Vec<bool>> {
    match sel {
        Some(s) => {
            let sel: ControlSelector = s.parse()?;
            profile::control_mask(batch, &sel, source)
        }
        None => Ok(vec![false; batch.num_rows()]),
    }
}

/// Features of `other` in the column order of `cols` (by name).
fn same_features(other: &RecordBatch, cols: &FeatureColumns, source: &str) -> Result<Array2<f64>> {
    let schema = other.schema();
    let mut indices = Vec::new();
    for name in &cols.names {
        let (i, _) = schema
            .column_with_name(name)
            .with_context(|| format!("{source}: missing feature column '{name}'"))?;
        indices.push(i);
    }
    let fc = FeatureColumns {
        indices,
        names: cols.names.clone(),
    };
    Ok(profile::feature_matrix(other, fc, NonFinitePolicy::Error, source)?.values)
}

/// Run `balans evaluate`.
pub fn run(args: EvaluateArgs) -> Result<()> {
    match args.command {
        Some(EvaluateCommand::Drift(d)) => run_drift(d),
        None => run_table(args.table),
    }
}

fn run_table(a: TableArgs) -> Result<()> {
    let Some(input) = a.input.as_deref() else {
        bail!("balans evaluate needs --input TABLE (or the `drift` subcommand)");
    };
    let source = input.display().to_string();
    let batch = table::read_table(input)?;
    let cols = profile::feature_columns(&batch, exclude_regex(&a.exclude)?.as_ref(), &source)?;
    let fm = profile::feature_matrix(&batch, cols.clone(), NonFinitePolicy::Error, &source)?;
    let baseline = match &a.baseline {
        Some(p) => {
            let s = p.display().to_string();
            let b = table::read_table(p)?;
            anyhow::ensure!(
                b.num_rows() == batch.num_rows(),
                "{s} has {} rows, {source} {} (the baseline must hold the same rows)",
                b.num_rows(),
                batch.num_rows()
            );
            Some(same_features(&b, &cols, &s)?)
        }
        None => None,
    };
    let input_data = EvalInput {
        features: fm.values,
        batch: profile::string_column(&batch, &a.batch_col, &source)?,
        label: profile::string_column(&batch, &a.label_col, &source)?,
        compound: optional_column(&batch, &a.compound_col, &source)?,
        treatment: optional_column(&batch, &a.treatment_col, &source)?,
        plate: optional_column(&batch, &a.plate_col, &source)?,
        is_control: controls_of(&batch, a.control.as_deref(), &source)?,
        baseline,
        previous: None,
    };
    let mut opts = EvalOptions {
        seed: a.seed,
        robust_scale: !a.no_robust_scale,
        pca_components: (a.pca > 0).then_some(a.pca),
        ..EvalOptions::default()
    };
    opts.kmeans.seed = a.seed;
    let started = std::time::Instant::now();
    let report = evaluate(&input_data, &opts)?;
    tracing::info!(seconds = started.elapsed().as_secs_f64(), "evaluated");
    println!("{}", report.to_text());
    if let Some(p) = &a.json {
        write_text(p, &report.to_json()?)?;
    }
    if let Some(p) = &a.markdown {
        write_text(p, &report.to_markdown())?;
    }
    Ok(())
}

fn write_text(p: &Path, text: &str) -> Result<()> {
    std::fs::write(p, text).with_context(|| format!("cannot write {}", p.display()))
}

fn run_drift(a: DriftArgs) -> Result<()> {
    let sb = a.before.display().to_string();
    let sa = a.after.display().to_string();
    let before = table::read_table(&a.before)?;
    let after = table::read_table(&a.after)?;
    anyhow::ensure!(
        before.num_rows() == after.num_rows(),
        "{sb} has {} rows and {sa} {}: drift compares the same rows in the same order",
        before.num_rows(),
        after.num_rows()
    );
    let cols = profile::feature_columns(&before, exclude_regex(&a.exclude)?.as_ref(), &sb)?;
    let xb = profile::feature_matrix(&before, cols.clone(), NonFinitePolicy::Error, &sb)?.values;
    let xa = same_features(&after, &cols, &sa)?;
    let controls = controls_of(&before, Some(&a.control), &sb)?;
    // One robust scaling for both versions, so units match.
    let n = xb.nrows();
    let both = robust_scale(&concatenate![Axis(0), xb.view(), xa.view()], 50.0)?.values;
    let zb = both.slice(ndarray::s![..n, ..]).to_owned();
    let za = both.slice(ndarray::s![n.., ..]).to_owned();
    let drift = representation_drift(&zb, &za, &controls, true)?;
    let treated: Vec<usize> = (0..n).filter(|&i| !controls[i]).collect();
    let perts = profile::string_column(&before, &a.treatment_col, &sb)?;
    let batches = profile::string_column(&before, &a.batch_col, &sb)?;
    let pick = |v: &[String]| treated.iter().map(|&i| v[i].clone()).collect::<Vec<_>>();
    let rd = replicate_distance(
        &zb.select(Axis(0), &treated),
        &Codes::new(&pick(&perts)),
        Some(&Codes::new(&pick(&batches))),
        2000,
        0,
    );
    let normalised = rd.filter(|r| *r > 0.0).map(|r| drift / r);
    println!("drift (median cosine displacement, gauge-fixed on controls): {drift:.6}");
    match (rd, normalised) {
        (Some(r), Some(nd)) => {
            println!("replicate distance (median within-batch cosine): {r:.6}");
            println!("normalised drift: {nd:.4}");
        }
        _ => println!(
            "normalised drift: n/a (no replicate pairs in {})",
            a.treatment_col
        ),
    }
    if let Some(p) = &a.json {
        let j = serde_json::json!({"drift": drift, "replicate_distance": rd, "normalised_drift": normalised});
        write_text(p, &serde_json::to_string_pretty(&j)?)?;
    }
    Ok(())
}
