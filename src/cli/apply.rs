//! `balans apply`: correct new plates against a saved model, inductively —
//! the model's rows never move; each plate is aligned and incorporated in
//! turn, as the daemon does ([`balans::apply_model`]).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;

use balans::config::Config;
use balans::io::dataset::{LoadSpec, ProfileTable};
use balans::io::files;
use balans::io::table;
use balans::serve::plate::QcRecord;
use balans::serve::saved::{self, load_with_provenance};
use balans::{apply_model, ApplyOptions, Provenance};

use super::tables::TableArgs;

/// Options of `balans apply`. The table layout (`[correct]`) and the `[qc]`
/// thresholds start from the saved model's own configuration; the config
/// file, `BALANS_<SECTION>__<KEY>` and these flags override them. The method
/// parameters are the model's.
#[derive(Args, Debug, Clone, Default)]
pub struct ApplyArgs {
    /// Saved model directory (`balans correct --save-model DIR`).
    #[arg(long)]
    pub model: PathBuf,
    /// Input, output and table layout.
    #[command(flatten)]
    pub table: TableArgs,
    /// Save the model with the applied plates incorporated to this new directory.
    #[arg(long)]
    pub save_model: Option<PathBuf>,
}

/// The summary printed (and optionally written as JSON) after a run.
#[derive(Debug, Serialize)]
pub struct ApplyReport {
    /// The saved model applied.
    pub model: String,
    /// Rows of the model before the run.
    pub model_rows: usize,
    /// (input, output) files.
    pub files: Vec<(String, String)>,
    /// One QC record per plate, in the order applied.
    pub plates: Vec<QcRecord>,
    /// Where the grown model was saved (--save-model).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub saved_model: Option<String>,
}

/// Run `balans apply`.
pub fn run(args: ApplyArgs) -> Result<()> {
    let report = apply_files(&args)?;
    print_report(&report);
    if let Some(p) = &args.table.summary_json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(p, text).with_context(|| format!("writing summary {}", p.display()))?;
    }
    Ok(())
}

/// Load the model, correct every input in name order, write the outputs.
/// A plate file that fails stops the run with its name; the files before
/// it are written.
pub fn apply_files(args: &ApplyArgs) -> Result<ApplyReport> {
    let (mut model, made) = load_with_provenance(&args.model)?;
    let mut cfg = Config::load_over(
        &made.resolved_config()?,
        args.table.config.as_deref(),
        std::env::vars(),
    )?;
    args.table.apply_to(&mut cfg.correct)?;
    cfg.method = model.meta().params.clone();
    let prov = Provenance::from_config(&cfg)?;
    let plan = args.table.plan()?;
    if let Some(dir) = &args.save_model {
        saved::prepare_dir(dir)?;
    }
    // Plates are read as the daemon reads them: non-finite values refused
    // (the model's features are fixed), a plate may hold no control.
    let spec = LoadSpec::for_plate(&cfg.correct)?;
    let opts = |input: &std::path::Path| ApplyOptions {
        qc: cfg.qc.clone(),
        fallback_plate: files::plate_id_of(input),
    };
    let model_rows = model.len();
    let md = prov.metadata();
    let mut plates = Vec::new();
    for (input, output) in &plan.jobs {
        let t = ProfileTable::load(input, &spec)?;
        let applied = apply_model(&mut model, &t, &opts(input))?;
        table::write_table_with_metadata(
            output,
            &t.corrected_table(applied.corrected.view())?,
            &md,
        )?;
        tracing::info!(input = %input.display(), output = %output.display(), plates = applied.plates.len(), "applied");
        plates.extend(applied.plates);
    }
    let saved_model = match &args.save_model {
        Some(dir) => {
            saved::save_model(&model, dir, &prov)?;
            Some(dir.display().to_string())
        }
        None => None,
    };
    Ok(ApplyReport {
        model: args.model.display().to_string(),
        model_rows,
        files: plan
            .jobs
            .iter()
            .map(|(i, o)| (i.display().to_string(), o.display().to_string()))
            .collect(),
        plates,
        saved_model,
    })
}

/// Print the human summary on stdout: one line per plate.
pub fn print_report(r: &ApplyReport) {
    let out = match r.files.as_slice() {
        [(i, o)] => format!("{i} -> {o}"),
        f => format!("{} files", f.len()),
    };
    println!(
        "balans apply: {out} against {} ({} rows)",
        r.model, r.model_rows
    );
    println!(
        "  {:<24} {:<14} {:>6} {:>9} {:>9} {:>8}  outlier",
        "plate", "batch", "rows", "mix bef.", "mix aft.", "offset"
    );
    for p in &r.plates {
        match &p.qc {
            Some(q) => println!(
                "  {:<24} {:<14} {:>6} {:>9.3} {:>9.3} {:>8.3}  {}",
                p.plate,
                p.batch,
                q.rows,
                q.mixing_before,
                q.mixing_after,
                q.mean_offset,
                p.outlier.as_ref().is_some_and(|v| v.outlier)
            ),
            None => println!(
                "  {:<24} {:<14} replay (already in the model)",
                p.plate, p.batch
            ),
        }
    }
    if let Some(d) = &r.saved_model {
        println!("  saved model {d}");
    }
}
