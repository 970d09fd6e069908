//! `balans synth`: write a synthetic profile table with known biology and
//! known batch effects (and optionally its ground truth).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use balans::io::table;
use balans::synth::{generate, to_record_batch, truth_record_batch, SynthSpec};

/// Options of `balans synth`.
#[derive(Args, Debug, Clone)]
pub struct SynthArgs {
    /// Rows (wells).
    #[arg(long, default_value_t = 10_000)]
    pub rows: usize,
    /// Batches.
    #[arg(long, default_value_t = 5)]
    pub batches: usize,
    /// Feature columns.
    #[arg(long, default_value_t = 50)]
    pub features: usize,
    /// Biological groups (clusters / perturbation classes).
    #[arg(long)]
    pub groups: Option<usize>,
    /// Groups present in a single batch only (confounded biology).
    #[arg(long)]
    pub batch_specific_groups: Option<usize>,
    /// Strength of the additive batch shift.
    #[arg(long)]
    pub shift: Option<f64>,
    /// Strength of the per-feature batch scaling.
    #[arg(long)]
    pub scale: Option<f64>,
    /// Strength of the non-linear batch warp.
    #[arg(long)]
    pub warp: Option<f64>,
    /// Random seed.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Output table (format by extension).
    #[arg(long, short)]
    pub output: PathBuf,
    /// Also write the ground truth (same rows without batch effects).
    #[arg(long)]
    pub truth: Option<PathBuf>,
}

/// Run `balans synth`.
pub fn run(a: SynthArgs) -> Result<()> {
    let mut spec = SynthSpec {
        rows: a.rows,
        batches: a.batches,
        features: a.features,
        seed: a.seed,
        ..SynthSpec::default()
    };
    if let Some(v) = a.groups {
        spec.groups = v;
    }
    if let Some(v) = a.batch_specific_groups {
        spec.batch_specific_groups = v;
    }
    if let Some(v) = a.shift {
        spec.shift = v;
    }
    if let Some(v) = a.scale {
        spec.scale = v;
    }
    if let Some(v) = a.warp {
        spec.warp = v;
    }
    let t = generate(&spec)?;
    table::write_table(&a.output, &to_record_batch(&t)?)?;
    if let Some(p) = &a.truth {
        table::write_table(p, &truth_record_batch(&t)?)?;
    }
    println!(
        "balans synth: wrote {} rows x {} features in {} batches to {}",
        a.rows,
        a.features,
        a.batches,
        a.output.display()
    );
    Ok(())
}
