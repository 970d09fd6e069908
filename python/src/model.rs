//! `balans.Model`: the incremental model of `balans serve`, fitted on a
//! reference (`balans.fit`), saved and loaded with the CLI's files
//! (`balans correct --save-model`, `balans apply --model`), and applied to
//! new plates ([`balans::apply_model`], the daemon's per-plate step).

use std::path::{Path, PathBuf};

use anyhow::Result;
use arrow_array::RecordBatch;
use balans::io::{files, table};
use balans::{apply_model, save_model, ApplyOptions, Config, LoadSpec, Model, Provenance};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::arrow::Data;
use crate::{config, error, to_py};

/// A fitted model and the configuration new plates are read with: the
/// fit's, or for a loaded model its provenance's (under the config file and
/// `BALANS_*` environment, as `balans apply` resolves it), with the model's
/// own method parameters.
#[pyclass(name = "Model", module = "balans._balans")]
pub struct PyModel {
    model: Model,
    cfg: Config,
}

/// Fit a model on `data` (the fit of `balans correct`, then the model
/// `--save-model` writes).
pub fn fit_model(data: Data, cfg: &Config) -> Result<Model> {
    let spec = LoadSpec::from_config(&cfg.correct)?;
    let t = crate::correct::load(data, &spec)?;
    let f = crate::correct::fit(&t, cfg)?;
    Model::from_fit(&f, t.columns.names.clone(), &cfg.method)
}

/// Correct `data` against `model` as `balans apply` does: read as the
/// daemon reads a plate (non-finite values refused, a plate may hold no
/// control), plates split by the plate column (a table without one is one
/// plate, named after its file, or its source), each aligned and then
/// incorporated. Returns the corrected table.
fn transform(model: &mut Model, data: Data, cfg: &Config) -> Result<RecordBatch> {
    let spec = LoadSpec::for_plate(&cfg.correct)?;
    let fallback_plate = match &data {
        Data::Path(p) => files::plate_id_of(p),
        Data::Table(..) => String::new(),
    };
    let t = crate::correct::load(data, &spec)?;
    let opts = ApplyOptions {
        qc: cfg.qc.clone(),
        fallback_plate,
    };
    let applied = apply_model(model, &t, &opts)?;
    t.corrected_table(applied.corrected.view())
}

/// `transform` of the file `input` into `output` (with the provenance).
/// A folder or glob `input` writes one file per input under the folder
/// `output` ([`crate::files::transform_many`]).
fn transform_file(model: &mut Model, input: &Path, output: &Path, cfg: &Config) -> Result<()> {
    if let Some(jobs) = crate::files::plan(input, output)? {
        return crate::files::transform_many(model, &jobs, cfg);
    }
    table::prepare_output(output, &[input])?;
    let batch = transform(model, Data::Path(input.to_path_buf()), cfg)?;
    crate::provenance::write(output, &batch, cfg)
}

impl PyModel {
    /// The model with `cfg`, whose method parameters become the model's
    /// own (as `balans apply` records them).
    fn new(model: Model, mut cfg: Config) -> PyModel {
        cfg.method = model.meta().params.clone();
        PyModel { model, cfg }
    }
}

#[pymethods]
impl PyModel {
    /// Correct `data` (a path or an Arrow table) against the model, which
    /// incorporates its plates. With `output` (a path input), the file is
    /// written and None returned; otherwise the corrected pyarrow.Table.
    #[pyo3(signature = (data, output=None, source="table"))]
    fn transform_data(
        &mut self,
        py: Python<'_>,
        data: &Bound<'_, PyAny>,
        output: Option<PathBuf>,
        source: &str,
    ) -> PyResult<Option<Py<PyAny>>> {
        crate::sync_log_levels();
        let data = Data::from_py(data, source)?;
        let (model, cfg) = (&mut self.model, &self.cfg);
        match (data, output) {
            (Data::Path(input), Some(output)) => {
                py.detach(|| transform_file(model, &input, &output, cfg))
                    .map_err(to_py)?;
                Ok(None)
            }
            (Data::Table(..), Some(_)) => Err(error(
                "output= is for a path input; an in-memory table is returned corrected",
            )),
            (data, None) => {
                let batch = py
                    .detach(|| transform(model, data, cfg))
                    .and_then(|b| crate::provenance::stamp(b, cfg))
                    .map_err(to_py)?;
                crate::arrow::to_py(py, batch).map(Some)
            }
        }
    }

    /// Write the model to the directory `path` (`--save-model`'s files).
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        let (model, cfg) = (&self.model, &self.cfg);
        py.detach(|| save_model(model, &path, &Provenance::from_config(cfg)?))
            .map_err(to_py)
    }

    /// The `[correct]` section the model reads tables with, as a dict of
    /// its set keys.
    fn layout<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = &self.cfg.correct;
        let d = PyDict::new(py);
        d.set_item("batch_col", c.batch_col.as_deref())?;
        d.set_item("plate_col", &c.plate_col)?;
        d.set_item("control", c.control.as_deref())?;
        d.set_item("exclude", c.exclude.as_deref())?;
        Ok(d)
    }

    /// Feature names, in model order.
    #[getter]
    fn features(&self) -> Vec<String> {
        self.model.meta().features.clone()
    }

    /// Batch names.
    #[getter]
    fn batches(&self) -> Vec<String> {
        self.model.meta().batches.clone()
    }

    /// Rows held.
    #[getter]
    fn rows(&self) -> usize {
        self.model.len()
    }

    /// The configuration (TOML) as written into a saved model.
    #[getter]
    fn config(&self) -> PyResult<String> {
        Ok(Provenance::from_config(&self.cfg).map_err(to_py)?.config)
    }
}

/// Fit a model on `data` with the keyword overrides.
#[pyfunction]
#[pyo3(signature = (data, overrides, config_path=None, source="table"))]
fn fit_data(
    py: Python<'_>,
    data: &Bound<'_, PyAny>,
    overrides: &str,
    config_path: Option<PathBuf>,
    source: &str,
) -> PyResult<PyModel> {
    let cfg = config(config_path, overrides)?;
    let data = Data::from_py(data, source)?;
    let model = py.detach(|| fit_model(data, &cfg)).map_err(to_py)?;
    Ok(PyModel::new(model, cfg))
}

/// Read a saved model (checksums and format version verified). Its table
/// layout and `[qc]` thresholds are its provenance's, under `config_path`
/// and the `BALANS_*` environment (as for `balans apply`).
#[pyfunction]
#[pyo3(signature = (path, config_path=None))]
fn load_model(py: Python<'_>, path: PathBuf, config_path: Option<PathBuf>) -> PyResult<PyModel> {
    crate::sync_log_levels();
    let (model, cfg) = py
        .detach(|| -> Result<(Model, Config)> {
            let (model, made) = balans::serve::saved::load_with_provenance(&path)?;
            let cfg = Config::load_over(
                &made.resolved_config()?,
                config_path.as_deref(),
                std::env::vars(),
            )?;
            Ok((model, cfg))
        })
        .map_err(to_py)?;
    Ok(PyModel::new(model, cfg))
}

/// Add the class and its functions to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyModel>()?;
    m.add_function(wrap_pyfunction!(fit_data, m)?)?;
    m.add_function(wrap_pyfunction!(load_model, m)?)?;
    Ok(())
}
