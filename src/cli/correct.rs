//! `balans correct`: read a profile table (or a folder of plate tables),
//! correct its features, write the same table back with corrected features
//! and the run's provenance; optionally save the fitted model.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use ndarray::Array2;
use serde::Serialize;

use balans::config::Config;
use balans::io::dataset::{LoadSpec, ProfileTable, Scope};
use balans::io::files;
use balans::io::profile::NonFinitePolicy;
use balans::io::table;
use balans::method::fit::{correct_keeping, correct_owned, Keep};
use balans::method::params::CorrectionSpace;
use balans::qc;
use balans::qc::mixing::MixingFigures;
use balans::qc::table::BeforeRows;
use balans::serve::saved;
use balans::{Correction, Dataset, Model, Provenance, Summary};

use super::logging::LogArgs;
use super::method_args::MethodArgs;
use super::progress::Bar;
use super::tables::{Plan, TableArgs};

/// Options of `balans correct`. Every option can also come from the config
/// file (`[correct]` and `[method]` sections) or `BALANS_<SECTION>__<KEY>`.
#[derive(Args, Debug, Clone, Default)]
pub struct CorrectArgs {
    /// Input, output and table layout.
    #[command(flatten)]
    pub table: TableArgs,
    /// Replace NaN/inf/null feature values by the column median (default: error; a single input table only).
    #[arg(long, conflicts_with = "drop_features")]
    pub impute: bool,
    /// Remove feature columns with NaN/inf/null values from the output (default: error; a single input table only).
    #[arg(long)]
    pub drop_features: bool,
    /// Biological label column, used only for the before/after summary.
    #[arg(long)]
    pub label_col: Option<String>,
    /// Write the per-plate QC table (plate, batch, rows, controls, mixing before/after, mean offset, control dispersion, outlier flag and reasons; thresholds from [qc]) to this file (.csv, .parquet, ...).
    #[arg(long)]
    pub qc: Option<PathBuf>,
    /// Save the fitted model to this new directory (the daemon's incremental model; for `balans apply --model` and `balans serve --model`).
    #[arg(long)]
    pub save_model: Option<PathBuf>,
    /// Method parameters.
    #[command(flatten)]
    pub method: MethodArgs,
}

impl CorrectArgs {
    /// The configuration after file, environment and these flags.
    pub fn resolve(&self) -> Result<Config> {
        let mut cfg = Config::load(self.table.config.as_deref())?;
        let c = &mut cfg.correct;
        self.table.apply_to(c)?;
        if self.impute {
            c.non_finite = NonFinitePolicy::Impute;
        }
        if self.drop_features {
            c.non_finite = NonFinitePolicy::DropFeatures;
        }
        if let Some(v) = &self.label_col {
            c.label_col = Some(v.clone());
        }
        self.method.apply_to(&mut cfg.method);
        cfg.method.validate()?;
        Ok(cfg)
    }
}

/// The summary printed (and optionally written as JSON) after a run.
#[derive(Debug, Serialize)]
pub struct CorrectReport {
    /// Input file (or folder / glob).
    pub input: String,
    /// Output file (or folder).
    pub output: String,
    /// Input files, with a folder or glob as input.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
    /// The fit's figures.
    pub fit: Summary,
    /// Quick figures before correction (global robust scaling only).
    pub before: Option<MixingFigures>,
    /// Quick figures after correction.
    pub after: Option<MixingFigures>,
    /// Features removed by --drop-features.
    pub dropped_features: Vec<String>,
    /// Values replaced by --impute.
    pub imputed_values: usize,
    /// Where the model was saved (--save-model).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub saved_model: Option<String>,
}

/// Run `balans correct`.
pub fn run(args: CorrectArgs, log: &LogArgs) -> Result<()> {
    let report = correct_file(&args, log.quiet)?;
    print_report(&report);
    if let Some(p) = &args.table.summary_json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(p, text).with_context(|| format!("writing summary {}", p.display()))?;
    }
    Ok(())
}

/// The outputs beside the corrected tables, checked before the fit.
fn prepare_extras(args: &CorrectArgs, plan: &Plan) -> Result<()> {
    if let Some(qc) = &args.qc {
        table::prepare_output(qc, &plan.paths())?;
    }
    if let Some(dir) = &args.save_model {
        saved::prepare_dir(dir)?;
    }
    Ok(())
}

/// What the fit ran on, whichever way it was read.
struct Fitted<'a> {
    data: Dataset<'a>,
    features: &'a [String],
    labels: Option<&'a [String]>,
}

/// The steps after the fit, shared by one input and many: the QC table,
/// the saved model, the before/after figures (`before`: taken from the
/// input features, [`qc::table::before_rows`]).
fn finish(
    args: &CorrectArgs,
    cfg: &Config,
    prov: &Provenance,
    fit: &Correction,
    f: &Fitted,
    before: Option<BeforeRows>,
) -> Result<(Option<MixingFigures>, Option<MixingFigures>, Option<String>)> {
    if let Some(qc_path) = &args.qc {
        let rows = qc::table::plate_qc(fit, &f.data, &cfg.method, &cfg.qc)?;
        let outliers = rows.iter().filter(|r| r.verdict.outlier).count();
        table::write_table(qc_path, &qc::table::qc_record_batch(&rows)?)?;
        tracing::info!(output = %qc_path.display(), plates = rows.len(), outliers, "wrote per-plate QC table");
    }
    let saved_model = match &args.save_model {
        Some(dir) => {
            let model = Model::from_fit(fit, f.features.to_vec(), &cfg.method)?;
            saved::save_model(&model, dir, prov)?;
            Some(dir.display().to_string())
        }
        None => None,
    };
    let figures = qc::table::before_after_of(
        fit,
        before.as_ref(),
        f.data.batch,
        f.labels,
        cfg.method.seed,
    );
    Ok((figures.before, figures.after, saved_model))
}

/// Read, correct and write; returns the report.
pub fn correct_file(args: &CorrectArgs, quiet: bool) -> Result<CorrectReport> {
    let cfg = args.resolve()?;
    let prov = Provenance::from_config(&cfg)?;
    // Every output is checked (and its directory created) before the fit.
    let plan = args.table.plan()?;
    prepare_extras(args, &plan)?;
    if plan.many {
        return correct_many(args, &cfg, &prov, &plan, quiet);
    }
    let (input, output) = &plan.jobs[0];
    let spec = LoadSpec::from_config(&cfg.correct)?;
    let (mut t, shell) = ProfileTable::load_lean(input, &spec)?;
    if t.plate.is_none() {
        tracing::warn!(
            plate_col = %cfg.correct.plate_col,
            "{}: no plate column {}; normalising per batch instead",
            t.source,
            cfg.correct.plate_col
        );
    }
    // One `n x d` array at the peak (docs/performance.md, section 6): the
    // table's feature values are only in `t.x` (`load_lean`); the fit
    // builds only the arrays this run needs and, without a QC table (which
    // reads the input features after the fit), is given `t.x` to
    // normalise in place; the corrected values are made in the same
    // memory, and the writer converts a few output columns at a time.
    let feature_model =
        args.save_model.is_some() && cfg.method.correction_space == CorrectionSpace::Features;
    let keep = Keep {
        corrected: false,
        z_before: args.qc.is_some() || feature_model,
        y_after: args.qc.is_some() || args.save_model.is_some(),
    };
    let before = qc::table::before_rows(t.x.view(), t.controls.as_deref(), cfg.method.seed);
    let owned = args
        .qc
        .is_none()
        .then(|| std::mem::replace(&mut t.x, Array2::zeros((0, 0))));
    let in_place = owned.is_some();
    let data = t.dataset();
    let fit = run_fit(&data, owned, &cfg, quiet, keep)?;
    if fit.summary.corrected_features < t.columns.names.len() {
        tracing::warn!(
            constant = t.columns.names.len() - fit.summary.corrected_features,
            "constant features (zero MAD) pass through uncorrected"
        );
    }
    // Everything that needs the fit's working arrays (QC table, saved
    // model, summary figures) runs before the write, which then holds the
    // corrected values (in place of the input features) and a few output
    // columns at a time.
    let f = Fitted {
        data,
        features: &t.columns.names,
        labels: t.labels.as_deref(),
    };
    let (before, after, saved_model) = finish(args, &cfg, &prov, &fit, &f, before)?;
    let summary = fit.summary.clone();
    let corrected = if in_place {
        fit.into_corrected()?
    } else {
        let mut x = std::mem::replace(&mut t.x, Array2::zeros((0, 0)));
        fit.denormalise_into(&mut x)?;
        x
    };
    let (source, dropped, imputed) = (t.source, t.dropped, t.imputed);
    let out = shell.with_values(corrected.view())?;
    table::write_source_with_metadata(output, &out, &prov.metadata())?;
    tracing::info!(output = %output.display(), "wrote corrected table");
    Ok(CorrectReport {
        input: source,
        output: output.display().to_string(),
        files: Vec::new(),
        fit: summary,
        before,
        after,
        dropped_features: dropped,
        imputed_values: imputed,
        saved_model,
    })
}

/// The fit of `data`; of `owned` instead of `data.x` when given
/// ([`correct_owned`]).
fn run_fit(
    data: &Dataset,
    owned: Option<Array2<f64>>,
    cfg: &Config,
    quiet: bool,
    keep: Keep,
) -> Result<Correction> {
    let bar = Bar::new(quiet);
    let fit = match owned {
        Some(x) => correct_owned(x, data, &cfg.method, &bar, keep)?,
        None => correct_keeping(data, &cfg.method, &bar, keep)?,
    };
    bar.finish();
    Ok(fit)
}

/// A folder or glob of plate files: one dataset, read with bounded memory
/// ([`files::load_stacked`]), fitted together, written back one file per
/// input (each re-read, its features replaced, written, dropped).
fn correct_many(
    args: &CorrectArgs,
    cfg: &Config,
    prov: &Provenance,
    plan: &Plan,
    quiet: bool,
) -> Result<CorrectReport> {
    let spec = LoadSpec::from_config(&cfg.correct)?;
    let st = files::load_stacked(&plan.inputs(), &spec)?;
    tracing::info!(
        files = st.files.len(),
        rows = st.x.nrows(),
        features = st.features.len(),
        "read plate files"
    );
    let data = st.dataset();
    let fit = run_fit(&data, None, cfg, quiet, Keep::ALL)?;
    let file_spec = LoadSpec {
        scope: Scope::Plate,
        ..spec
    };
    let md = prov.metadata();
    for ((input, rows), (_, output)) in st.files.iter().zip(&plan.jobs) {
        let t = ProfileTable::load(input, &file_spec)?;
        let values = files::file_values(&t, &st.features, rows.clone(), fit.corrected.view())?;
        table::write_table_with_metadata(output, &t.corrected_table(values.view())?, &md)?;
        tracing::debug!(output = %output.display(), "wrote corrected plate file");
    }
    tracing::info!(output = %args.table.output.display(), files = plan.jobs.len(), "wrote corrected plate files");
    let f = Fitted {
        data,
        features: &st.features,
        labels: st.labels.as_deref(),
    };
    let before = qc::table::before_rows(f.data.x, f.data.controls, cfg.method.seed);
    let (before, after, saved_model) = finish(args, cfg, prov, &fit, &f, before)?;
    Ok(CorrectReport {
        input: args.table.input.display().to_string(),
        output: args.table.output.display().to_string(),
        files: plan
            .jobs
            .iter()
            .map(|(i, _)| i.display().to_string())
            .collect(),
        fit: fit.summary,
        before,
        after,
        dropped_features: Vec::new(),
        imputed_values: 0,
        saved_model,
    })
}

/// Print the human summary on stdout.
pub fn print_report(r: &CorrectReport) {
    let f = &r.fit;
    println!("balans correct: {} -> {}", r.input, r.output);
    println!(
        "  rows {}  batches {}  plates {}  features {} ({} corrected)",
        f.rows, f.batches, f.plates, f.features, f.corrected_features
    );
    let gains = if f.batch_gain_shrink.is_empty() {
        "off".to_string()
    } else {
        let (lo, hi) = f
            .batch_gain_shrink
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
                (a.min(v), b.max(v))
            });
        format!("from the controls (per-feature shrinkage {lo:.2}-{hi:.2} across batches)")
    };
    println!(
        "  neighbour space {} ({} dims)  batch gains {}  trust test {}",
        f.neighbor_space, f.neighbor_dims, gains, f.trust_rule
    );
    for (i, round) in f.rounds.iter().enumerate() {
        println!(
            "  round {}: landmarks {} ({:.1}% of rows)  coverage min {:.2} median {:.2}  covered {:.1}%  mean offset {:.3}  {:.2}s",
            i + 1,
            round.landmarks,
            100.0 * round.landmarks as f64 / f.rows.max(1) as f64,
            round.coverage_min,
            round.coverage_median,
            100.0 * round.covered_fraction,
            round.mean_offset,
            round.seconds
        );
    }
    if let (Some(b), Some(a)) = (&r.before, &r.after) {
        println!(
            "  {:<34} {:>8} {:>8}",
            "figure (non-control rows)", "before", "after"
        );
        println!(
            "  {:<34} {:>8.3} {:>8.3}",
            "batch mixing (kNN, 1 = mixed)", b.batch_mixing, a.batch_mixing
        );
        if let (Some(x), Some(y)) = (b.label_agreement, a.label_agreement) {
            println!("  {:<34} {:>8.3} {:>8.3}", "label agreement (kNN)", x, y);
        }
        if let (Some(x), Some(y)) = (b.cross_batch_label_agreement, a.cross_batch_label_agreement) {
            println!(
                "  {:<34} {:>8.3} {:>8.3}",
                "cross-batch label agreement", x, y
            );
        }
    }
    if let Some(d) = &r.saved_model {
        println!("  saved model {d}");
    }
    println!("  time {:.2}s", f.seconds);
}
