//! `balans evaluate`: the field's batch-correction metrics on a table, and
//! `balans evaluate drift` between two versions of the same rows.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use ndarray::{concatenate, Axis};

use balans::io::dataset::{exclude_regex, LoadSpec, ProfileTable};
use balans::io::profile::ControlSelector;
use balans::io::table;
use balans::metrics::drift::{replicate_distance, representation_drift};
use balans::metrics::plots::{metric_bars, sample_rows, scatter, MAX_SCATTER_POINTS};
use balans::metrics::preprocess::robust_scale;
use balans::metrics::report::Figure;
use balans::metrics::{eval_input, eval_options, evaluate_table, Codes, EvalInput, Evaluation};

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
    /// Write a Markdown report; its figures are saved as SVG files next to
    /// it (`<stem>.<figure>.svg`).
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    /// Write a self-contained HTML report with figures (2-D PCA coloured by
    /// batch and by label, before/after when a baseline is given, and
    /// before/after metric bars).
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// With --baseline: do not score the baseline itself (it is then used for
    /// PCR comparison only, and the report has no "before" column).
    #[arg(long)]
    pub no_baseline_scores: bool,
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

/// The `--exclude` regex, if given.
fn exclude(s: Option<&str>) -> Result<Option<regex::Regex>> {
    Ok(s.map(|p| exclude_regex(p, "--exclude")).transpose()?)
}

/// The `--control` selector, if given.
fn control(s: Option<&str>) -> Result<Option<ControlSelector>> {
    Ok(s.map(ControlSelector::parse).transpose()?)
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
    let spec = LoadSpec {
        plate_col: Some(a.plate_col.clone()),
        control: control(a.control.as_deref())?,
        exclude: exclude(a.exclude.as_deref())?,
        label_col: Some(a.label_col.clone()),
        ..LoadSpec::new(&a.batch_col)
    };
    let t = ProfileTable::load(input, &spec)?;
    let source = t.source.clone();
    let baseline = match &a.baseline {
        Some(p) => Some((table::read_table(p)?, p.display().to_string())),
        None => None,
    };
    let input_data = eval_input(
        t,
        &a.compound_col,
        &a.treatment_col,
        baseline.as_ref().map(|(b, s)| (b, s.as_str())),
    )?;
    let opts = eval_options(a.seed, !a.no_robust_scale, a.pca);
    let scored = evaluate_table(
        &input_data,
        &opts,
        !a.no_baseline_scores,
        "use --no-baseline-scores to skip",
    )?;
    let report = scored.report();
    let (after, before) = (&scored.after, scored.before.as_ref());
    println!("{}", report.to_text());
    if let Some(p) = &a.json {
        write_text(p, &report.to_json()?)?;
    }
    if a.markdown.is_some() || a.html.is_some() {
        let figures = figures(&input_data, after, before, &report, a.seed)?;
        if let Some(p) = &a.markdown {
            let stem = p
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_else(|| "report".into());
            let dir = p.parent().unwrap_or_else(|| Path::new(""));
            let mut links = Vec::new();
            for f in &figures {
                let name = format!("{stem}.{}.svg", f.stem);
                write_text(&dir.join(&name), &f.svg)?;
                links.push((f.title.clone(), name));
            }
            write_text(p, &report.to_markdown_with(&links))?;
        }
        if let Some(p) = &a.html {
            write_text(
                p,
                &report.to_html(&format!("balans evaluate: {source}"), &figures),
            )?;
        }
    }
    Ok(())
}

/// The report's figures: PCA scatter by batch and by label (after, and
/// before when the baseline was scored), and the before/after metric bars.
fn figures(
    input: &EvalInput,
    after: &Evaluation,
    before: Option<&Evaluation>,
    report: &balans::metrics::Report,
    seed: u64,
) -> Result<Vec<Figure>> {
    let mut out = Vec::new();
    let pick = sample_rows(after.rows.len(), MAX_SCATTER_POINTS, seed);
    let sampled_note = if after.rows.len() > pick.len() {
        format!(" ({} of {} rows)", pick.len(), after.rows.len())
    } else {
        String::new()
    };
    let mut versions = vec![("after", after)];
    if let Some(b) = before {
        versions.insert(0, ("before", b));
    }
    for (colour_by, values) in [("batch", &input.batch), ("label", &input.label)] {
        for (when, ev) in &versions {
            if ev.embedding.ncols() < 2 {
                continue;
            }
            let xy: Vec<(f64, f64)> = pick
                .iter()
                .map(|&r| (ev.embedding[[r, 0]], ev.embedding[[r, 1]]))
                .collect();
            let groups: Vec<String> = pick.iter().map(|&r| values[ev.rows[r]].clone()).collect();
            let title = format!("{when}: PCA coloured by {colour_by}{sampled_note}");
            out.push(Figure {
                svg: scatter(&title, &xy, &groups)?,
                title,
                stem: format!("pca_{colour_by}_{when}"),
            });
        }
    }
    let rows = report.bar_rows();
    if !rows.is_empty() {
        let title = if before.is_some() {
            "metrics before and after".to_string()
        } else {
            "metrics".to_string()
        };
        out.push(Figure {
            svg: metric_bars(&title, &rows)?,
            title,
            stem: "metrics".into(),
        });
    }
    Ok(out)
}

fn write_text(p: &Path, text: &str) -> Result<()> {
    std::fs::write(p, text).with_context(|| format!("cannot write {}", p.display()))
}

fn run_drift(a: DriftArgs) -> Result<()> {
    let spec = LoadSpec {
        control: Some(ControlSelector::parse(&a.control)?),
        exclude: exclude(a.exclude.as_deref())?,
        ..LoadSpec::new(&a.batch_col)
    };
    let before = ProfileTable::load(&a.before, &spec)?;
    let sb = before.source.clone();
    let sa = a.after.display().to_string();
    let after = table::read_table(&a.after)?;
    anyhow::ensure!(
        before.rows() == after.num_rows(),
        "{sb} has {} rows and {sa} {}: drift compares the same rows in the same order",
        before.rows(),
        after.num_rows()
    );
    let xa = before.features_like(&after, &sa)?;
    let xb = &before.x;
    let controls = before
        .controls
        .clone()
        .unwrap_or_else(|| vec![false; before.rows()]);
    // One robust scaling for both versions, so units match.
    let n = xb.nrows();
    let both = robust_scale(&concatenate![Axis(0), xb.view(), xa.view()], 50.0)?.values;
    let zb = both.slice(ndarray::s![..n, ..]).to_owned();
    let za = both.slice(ndarray::s![n.., ..]).to_owned();
    let drift = representation_drift(&zb, &za, &controls, true)?;
    let treated: Vec<usize> = (0..n).filter(|&i| !controls[i]).collect();
    let perts = before.column(&a.treatment_col)?;
    let batches = &before.batch;
    let pick = |v: &[String]| treated.iter().map(|&i| v[i].clone()).collect::<Vec<_>>();
    let rd = replicate_distance(
        &zb.select(Axis(0), &treated),
        &Codes::new(&pick(&perts)),
        Some(&Codes::new(&pick(batches))),
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
