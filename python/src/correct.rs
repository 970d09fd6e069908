//! `balans.correct`: the steps of `balans correct` (src/cli/correct.rs),
//! calling the same library functions in the same order, so the values
//! are the CLI's to the bit.

use std::path::Path;

use anyhow::Result;
use arrow_array::RecordBatch;
use balans::io::table;
use balans::{correct, Config, Correction, LoadSpec, ProfileTable};

use crate::arrow::Data;
use crate::progress::LogProgress;

/// Load `data` with `spec`: a file through the CLI's reader, a table
/// through the same loader (errors name `source`, column and row).
pub fn load(data: Data, spec: &LoadSpec) -> Result<ProfileTable> {
    Ok(match data {
        Data::Path(p) => ProfileTable::load(&p, spec)?,
        Data::Table(t, source) => ProfileTable::from_table(t, spec, &source)?,
    })
}

/// The offline fit of a loaded table, with the CLI's warnings.
pub fn fit(t: &ProfileTable, cfg: &Config) -> Result<Correction> {
    if t.plate.is_none() {
        tracing::warn!(
            target: "balans::correct",
            plate_col = %cfg.correct.plate_col,
            "{}: no plate column {}; normalising per batch instead",
            t.source,
            cfg.correct.plate_col
        );
    }
    let fit = correct(&t.dataset(), &cfg.method, &LogProgress::default())?;
    if fit.summary.corrected_features < t.columns.names.len() {
        tracing::warn!(
            target: "balans::correct",
            constant = t.columns.names.len() - fit.summary.corrected_features,
            "constant features (zero MAD) pass through uncorrected"
        );
    }
    Ok(fit)
}

/// Correct `data`: the corrected table (features replaced, everything else
/// as given).
pub fn correct_table(data: Data, cfg: &Config) -> Result<RecordBatch> {
    let spec = LoadSpec::from_config(&cfg.correct)?;
    let t = load(data, &spec)?;
    let f = fit(&t, cfg)?;
    t.corrected_table(f.corrected.view())
}

/// Correct the table file `input` into `output` (format by extension, with
/// the provenance metadata), checking the output before the fit as the CLI
/// does.
/// A folder or glob `input` writes one file per input under the folder
/// `output` instead ([`crate::files::correct_many`]).
pub fn correct_file(input: &Path, output: &Path, cfg: &Config) -> Result<()> {
    if let Some(jobs) = crate::files::plan(input, output)? {
        return crate::files::correct_many(&jobs, cfg);
    }
    table::prepare_output(output, &[input])?;
    let batch = correct_table(Data::Path(input.to_path_buf()), cfg)?;
    crate::provenance::write(output, &batch, cfg)?;
    tracing::info!(target: "balans::correct", output = %output.display(), "wrote corrected table");
    Ok(())
}
