//! `balans correct`: read a profile table, correct its features, write the
//! same table back with corrected features.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;

use balans::config::Config;
use balans::io::dataset::{LoadSpec, ProfileTable};
use balans::io::profile::NonFinitePolicy;
use balans::io::table;
use balans::method::params::{
    BatchScale, IndexKind, KernelKind, NeighborSpace, Retention, SamplingRule, TrustRule,
};
use balans::qc;
use balans::qc::mixing::MixingFigures;
use balans::{correct, Summary};

use super::logging::LogArgs;
use super::progress::Bar;

/// Options of `balans correct`. Every option can also come from the config
/// file (`[correct]` and `[method]` sections) or `BALANS_<SECTION>__<KEY>`.
#[derive(Args, Debug, Clone, Default)]
pub struct CorrectArgs {
    /// Input table: .parquet, .csv, .csv.gz, .arrow/.ipc (Arrow IPC file).
    #[arg(long, short)]
    pub input: PathBuf,
    /// Output table (format by extension); written to a temp file and renamed.
    #[arg(long, short)]
    pub output: PathBuf,
    /// TOML config file (same keys as config/balans.toml).
    #[arg(long, env = "BALANS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Batch label column (required here or in the config).
    #[arg(long)]
    pub batch_col: Option<String>,
    /// Plate column for per-plate normalisation [default: Metadata_Plate].
    #[arg(long)]
    pub plate_col: Option<String>,
    /// Negative controls as COLUMN=VALUE, e.g. Metadata_MoA=DMSO.
    #[arg(long)]
    pub control: Option<String>,
    /// Regex of feature columns to pass through uncorrected, e.g. '_Location_|_Center_'.
    #[arg(long)]
    pub exclude: Option<String>,
    /// Replace NaN/inf/null feature values by the column median (default: error).
    #[arg(long, conflicts_with = "drop_features")]
    pub impute: bool,
    /// Remove feature columns with NaN/inf/null values from the output (default: error).
    #[arg(long)]
    pub drop_features: bool,
    /// Refuse the table when a feature value's magnitude exceeds this (a damaged cell or a unit error); `inf` = no check [default: 1e12].
    #[arg(long)]
    pub max_abs_value: Option<f64>,
    /// Biological label column, used only for the before/after summary.
    #[arg(long)]
    pub label_col: Option<String>,
    /// Write the run summary as JSON to this file.
    #[arg(long)]
    pub summary_json: Option<PathBuf>,
    /// Write the per-plate QC table (plate, batch, rows, controls, mixing before/after, mean offset, control dispersion, outlier flag and reasons; thresholds from [qc]) to this file (.csv, .parquet, ...).
    #[arg(long)]
    pub qc: Option<PathBuf>,
    /// k of the batch-aware local scale [default: 15].
    #[arg(long)]
    pub k: Option<usize>,
    /// Strongest affinities kept per batch in each sampled row [default: 10].
    #[arg(long)]
    pub m: Option<usize>,
    /// PCA dimensions of the neighbour space [default: 50].
    #[arg(long)]
    pub neighbor_dims: Option<usize>,
    /// Neighbour space: pca, or whitened (PCA whitened on the --control rows; pca without enough controls) [default: whitened].
    #[arg(long, value_parser = parse_choice::<NeighborSpace>)]
    pub neighbor_space: Option<NeighborSpace>,
    /// Per-batch feature scaling: controls (each batch's gain per feature from its --control rows' MAD, shrunk by empirical Bayes), or none (one pooled scale) [default: controls].
    #[arg(long, value_parser = parse_choice::<BatchScale>)]
    pub batch_scale: Option<BatchScale>,
    /// Strength of the empirical-Bayes shrinkage of the batch gains: weight of a log-MAD's sampling variance (1 = James-Stein for Gaussian controls, 0 = raw gains) [default: 0.5].
    #[arg(long)]
    pub gain_shrinkage: Option<f64>,
    /// Sampling budget as a fraction of rows [default: 0.3].
    #[arg(long)]
    pub budget: Option<f64>,
    /// Minimum landmarks regardless of the budget [default: 500].
    #[arg(long)]
    pub min_landmarks: Option<usize>,
    /// Rows the sampling fit runs on: larger tables are fitted on a stratified subsample of this many rows, the other rows take the mean offset of their nearest subsample rows (0 = all rows) [default: 10000].
    #[arg(long)]
    pub fit_rows: Option<usize>,
    /// Coverage at which a row stops being a sampling priority [default: 1.0].
    #[arg(long)]
    pub coverage_target: Option<f64>,
    /// How each sampling round picks landmarks: lowest (lowest coverage first) or proportional (drawn with probability proportional to 1 / (1 + coverage)) [default: lowest].
    #[arg(long, value_parser = parse_choice::<SamplingRule>)]
    pub sampling_rule: Option<SamplingRule>,
    /// Landmarks per sampling round as a fraction of rows [default: 0.02].
    #[arg(long)]
    pub round_fraction: Option<f64>,
    /// Alignment rounds; 0 = per-plate normalisation only [default: 2].
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Width of the `mass` trust test (x the control-calibrated width when --control is given); 0 turns the trust test off and forces alignment, whatever the rule [default: 0.5].
    #[arg(long)]
    pub trust: Option<f64>,
    /// Neighbour rank of the own-batch scale in the `mass` trust test [default: 15].
    #[arg(long)]
    pub trust_k: Option<usize>,
    /// How the trust test measures another batch's correspondence: mutual (mutual nearest neighbours), mass (kernel mass at the `--trust` width), either (the larger), both (the smaller) [default: mutual].
    #[arg(long, value_parser = parse_choice::<TrustRule>)]
    pub trust_rule: Option<TrustRule>,
    /// Kernel form [default: symmetric].
    #[arg(long, value_parser = parse_choice::<KernelKind>)]
    pub kernel: Option<KernelKind>,
    /// Retention of row entries [default: perbatch].
    #[arg(long, value_parser = parse_choice::<Retention>)]
    pub retention: Option<Retention>,
    /// Neighbour index [default: hnsw].
    #[arg(long, value_parser = parse_choice::<IndexKind>)]
    pub index: Option<IndexKind>,
    /// Exact mode: brute-force neighbours, every row sampled (small tables).
    #[arg(long)]
    pub exact: bool,
    /// Random seed [default: 42].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Worker threads, 0 = all cores [default: 0].
    #[arg(long)]
    pub threads: Option<usize>,
}

/// Parse a `[method]` enum value from the command line with the same names
/// (and error) as the config file: the enums' serde spellings.
fn parse_choice<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, String> {
    use serde::de::IntoDeserializer;
    T::deserialize(s.into_deserializer()).map_err(|e: serde::de::value::Error| e.to_string())
}

impl CorrectArgs {
    /// The configuration after file, environment and these flags.
    pub fn resolve(&self) -> Result<Config> {
        let mut cfg = Config::load(self.config.as_deref())?;
        let c = &mut cfg.correct;
        if let Some(v) = &self.batch_col {
            c.batch_col = Some(v.clone());
        }
        if let Some(v) = &self.plate_col {
            c.plate_col = v.clone();
        }
        if let Some(v) = &self.control {
            c.control = Some(v.clone());
        }
        if let Some(v) = &self.exclude {
            c.exclude = Some(v.clone());
        }
        if self.impute {
            c.non_finite = NonFinitePolicy::Impute;
        }
        if self.drop_features {
            c.non_finite = NonFinitePolicy::DropFeatures;
        }
        if let Some(v) = &self.label_col {
            c.label_col = Some(v.clone());
        }
        if let Some(v) = self.max_abs_value {
            anyhow::ensure!(
                v > 0.0,
                "--max-abs-value must be positive (inf turns the check off), got {v}"
            );
            c.max_abs_value = v;
        }
        let m = &mut cfg.method;
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { m.$f = v; } )* };
        }
        set!(
            k,
            m,
            neighbor_dims,
            gain_shrinkage,
            budget,
            min_landmarks,
            fit_rows,
            coverage_target,
            round_fraction,
            rounds,
            trust,
            trust_k
        );
        set!(
            kernel,
            retention,
            index,
            neighbor_space,
            batch_scale,
            trust_rule,
            sampling_rule,
            seed,
            threads
        );
        if self.exact {
            m.exact = true;
        }
        m.validate()?;
        Ok(cfg)
    }
}

/// The summary printed (and optionally written as JSON) after a run.
#[derive(Debug, Serialize)]
pub struct CorrectReport {
    /// Input file.
    pub input: String,
    /// Output file.
    pub output: String,
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
}

/// Run `balans correct`.
pub fn run(args: CorrectArgs, log: &LogArgs) -> Result<()> {
    let report = correct_file(&args, log.quiet)?;
    print_report(&report);
    if let Some(p) = &args.summary_json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(p, text).with_context(|| format!("writing summary {}", p.display()))?;
    }
    Ok(())
}

/// Read, correct and write; returns the report.
pub fn correct_file(args: &CorrectArgs, quiet: bool) -> Result<CorrectReport> {
    let cfg = args.resolve()?;
    // Every output is checked (and its directory created) before the fit.
    table::prepare_output(&args.output, &[&args.input])?;
    if let Some(qc) = &args.qc {
        table::prepare_output(qc, &[&args.input, &args.output])?;
    }
    let spec = LoadSpec::from_config(&cfg.correct)?;
    let t = ProfileTable::load(&args.input, &spec)?;
    if t.plate.is_none() {
        tracing::warn!(
            plate_col = %cfg.correct.plate_col,
            "{}: no plate column {}; normalising per batch instead",
            t.source,
            cfg.correct.plate_col
        );
    }
    let data = t.dataset();
    let bar = Bar::new(quiet);
    let fit = correct(&data, &cfg.method, &bar)?;
    bar.finish();
    if fit.summary.corrected_features < t.columns.names.len() {
        tracing::warn!(
            constant = t.columns.names.len() - fit.summary.corrected_features,
            "constant features (zero MAD) pass through uncorrected"
        );
    }
    table::write_table(&args.output, &t.corrected_table(fit.corrected.view())?)?;
    tracing::info!(output = %args.output.display(), "wrote corrected table");
    if let Some(qc_path) = &args.qc {
        let rows = qc::table::plate_qc(&fit, &data, &cfg.method, &cfg.qc)?;
        let outliers = rows.iter().filter(|r| r.verdict.outlier).count();
        table::write_table(qc_path, &qc::table::qc_record_batch(&rows)?)?;
        tracing::info!(output = %qc_path.display(), plates = rows.len(), outliers, "wrote per-plate QC table");
    }
    let figures = qc::table::before_after(&fit, &data, t.labels.as_deref(), cfg.method.seed);
    Ok(CorrectReport {
        input: t.source.clone(),
        output: args.output.display().to_string(),
        fit: fit.summary,
        before: figures.before,
        after: figures.after,
        dropped_features: t.dropped,
        imputed_values: t.imputed,
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
    println!("  time {:.2}s", f.seconds);
}
