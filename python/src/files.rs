//! Many plate files in, one corrected file per input out: a folder or a
//! glob as `data` with `output=` a folder, as `balans correct` and `balans
//! apply` take them (src/cli/correct.rs `correct_many`, src/cli/apply.rs),
//! through the same library functions ([`balans::io::files`]), so the
//! outputs are the CLI's files.

use std::path::{Path, PathBuf};

use anyhow::Result;
use balans::io::dataset::Scope;
use balans::io::files::{self, Inputs};
use balans::{apply_model, ApplyOptions, Config, LoadSpec, Model, ProfileTable};

/// `(input, output)` pairs of a path `input` (a file, folder or glob) and
/// `output` (a file for one input, a folder for many), checked before any
/// work; `None` when `input` is one file.
pub fn plan(input: &Path, output: &Path) -> Result<Option<Vec<(PathBuf, PathBuf)>>> {
    match files::expand_inputs(input)? {
        Inputs::One(_) => Ok(None),
        Inputs::Many(inputs) => {
            let outputs = files::output_paths(&inputs, output)?;
            Ok(Some(inputs.into_iter().zip(outputs).collect()))
        }
    }
}

/// One fit over every file (stacked with bounded memory), one corrected file
/// per input, with the provenance.
pub fn correct_many(jobs: &[(PathBuf, PathBuf)], cfg: &Config) -> Result<()> {
    let spec = LoadSpec::from_config(&cfg.correct)?;
    let inputs: Vec<PathBuf> = jobs.iter().map(|(i, _)| i.clone()).collect();
    let st = files::load_stacked(&inputs, &spec)?;
    tracing::info!(target: "balans::correct", files = st.files.len(), rows = st.x.nrows(), features = st.features.len(), "read plate files");
    let fit = balans::correct(
        &st.dataset(),
        &cfg.method,
        &crate::progress::LogProgress::default(),
    )?;
    let file_spec = LoadSpec {
        scope: Scope::Plate,
        ..spec
    };
    for ((input, rows), (_, output)) in st.files.iter().zip(jobs) {
        let t = ProfileTable::load(input, &file_spec)?;
        let values = files::file_values(&t, &st.features, rows.clone(), fit.corrected.view())?;
        crate::provenance::write(output, &t.corrected_table(values.view())?, cfg)?;
    }
    tracing::info!(target: "balans::correct", files = jobs.len(), "wrote corrected plate files");
    Ok(())
}

/// Every file against `model`, in name order (each incorporated before the
/// next), one corrected file per input.
pub fn transform_many(model: &mut Model, jobs: &[(PathBuf, PathBuf)], cfg: &Config) -> Result<()> {
    let spec = LoadSpec::for_plate(&cfg.correct)?;
    for (input, output) in jobs {
        let t = ProfileTable::load(input, &spec)?;
        let opts = ApplyOptions {
            qc: cfg.qc.clone(),
            fallback_plate: files::plate_id_of(input),
        };
        let applied = apply_model(model, &t, &opts)?;
        crate::provenance::write(output, &t.corrected_table(applied.corrected.view())?, cfg)?;
        tracing::info!(target: "balans::apply", input = %input.display(), output = %output.display(), "applied");
    }
    Ok(())
}
