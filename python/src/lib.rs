//! `balans._balans`: the native half of the `balans` Python package.
//!
//! The Python functions in `python/balans/__init__.py` turn pandas
//! DataFrames and AnnData objects into Arrow tables and back; this module
//! does the rest with the balans crate's own functions, so a table
//! corrected here has the values `balans correct` writes for it:
//!
//! - [`correct`](correct::correct_table) / `fit` / `Model.transform` /
//!   `evaluate` take a path or an Arrow table ([`arrow::Data`]) and a JSON
//!   object of keyword options ([`options::resolve`]: the CLI's
//!   configuration, flags replaced by keywords);
//! - the GIL is released for every fit, transform and evaluation
//!   (`Python::detach`), so other Python threads run meanwhile;
//! - the library's `tracing` events become `log` records, which
//!   `pyo3-log` hands to Python's `logging` (loggers named after the Rust
//!   module, `balans.method.fit`, ...);
//! - every failure is a `balans.BalansError` (a `ValueError`) whose message
//!   is the CLI's `error:` line: the file or table, the column, the row.

use std::path::PathBuf;

use pyo3::create_exception;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

mod arrow;
mod correct;
mod evaluate;
mod files;
mod model;
mod options;
mod progress;
mod provenance;

use arrow::Data;

create_exception!(
    _balans,
    BalansError,
    PyValueError,
    "Bad input or a failed run; the message is the CLI's (file or table, column, row)."
);

/// The bridge to Python's logging. Levels are cached per logger for speed;
/// [`sync_log_levels`] drops the cache at every call, so a level set
/// between calls (`logging.getLogger("balans").setLevel(...)`) applies to
/// the next one.
static LOG_RESET: std::sync::OnceLock<std::sync::Mutex<pyo3_log::ResetHandle>> =
    std::sync::OnceLock::new();

/// Re-read Python's logger levels (see [`LOG_RESET`]).
pub(crate) fn sync_log_levels() {
    if let Some(Ok(h)) = LOG_RESET.get().map(|m| m.lock()) {
        h.reset();
    }
}

/// A [`BalansError`] with `msg`.
pub(crate) fn error(msg: impl Into<String>) -> PyErr {
    BalansError::new_err(msg.into())
}

/// An error chain as a [`BalansError`], formatted as the CLI prints it.
pub(crate) fn to_py(e: anyhow::Error) -> PyErr {
    error(format!("{e:#}"))
}

/// The configuration from `config` (a TOML file, optional) and the keyword
/// overrides.
fn config(config: Option<PathBuf>, overrides: &str) -> PyResult<balans::Config> {
    sync_log_levels();
    options::resolve(config.as_deref(), overrides).map_err(to_py)
}

/// Correct `data` (a path or an Arrow table). With `output`, `data` must be
/// a path and the result is written there (returns None); otherwise the
/// corrected `pyarrow.Table` is returned.
#[pyfunction]
#[pyo3(signature = (data, overrides, output=None, config_path=None, source="table"))]
fn correct_data(
    py: Python<'_>,
    data: &Bound<'_, PyAny>,
    overrides: &str,
    output: Option<PathBuf>,
    config_path: Option<PathBuf>,
    source: &str,
) -> PyResult<Option<Py<PyAny>>> {
    let cfg = config(config_path, overrides)?;
    let data = Data::from_py(data, source)?;
    match (data, output) {
        (Data::Path(input), Some(output)) => {
            py.detach(|| correct::correct_file(&input, &output, &cfg))
                .map_err(to_py)?;
            Ok(None)
        }
        (Data::Table(..), Some(_)) => Err(error(
            "output= is for a path input; an in-memory table is returned corrected",
        )),
        (data, None) => {
            let batch = py
                .detach(|| correct::correct_table(data, &cfg))
                .and_then(|b| provenance::stamp(b, &cfg))
                .map_err(to_py)?;
            arrow::to_py(py, batch).map(Some)
        }
    }
}

/// Score `data` (and `baseline`): the `balans evaluate --json` report as
/// a JSON string.
#[pyfunction]
#[pyo3(signature = (data, options, baseline=None, source="table"))]
fn evaluate_data(
    py: Python<'_>,
    data: &Bound<'_, PyAny>,
    options: &str,
    baseline: Option<&Bound<'_, PyAny>>,
    source: &str,
) -> PyResult<String> {
    sync_log_levels();
    let opts: evaluate::EvaluateOptions = serde_json::from_str(options)
        .map_err(|e| error(format!("invalid keyword argument: {e}")))?;
    let data = Data::from_py(data, source)?;
    let baseline = baseline.map(|b| Data::from_py(b, "baseline")).transpose()?;
    py.detach(|| evaluate::evaluate(data, baseline, &opts))
        .map_err(to_py)
}

/// The balans crate version.
#[pyfunction]
fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

#[pymodule]
fn _balans(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // Rust `log` records (and through tracing's `log` feature, the
    // library's tracing events) go to Python's logging.
    let _ = LOG_RESET.set(std::sync::Mutex::new(pyo3_log::init()));
    m.add("BalansError", m.py().get_type::<BalansError>())?;
    m.add_function(wrap_pyfunction!(correct_data, m)?)?;
    m.add_function(wrap_pyfunction!(evaluate_data, m)?)?;
    m.add_function(wrap_pyfunction!(version, m)?)?;
    model::register(m)?;
    Ok(())
}
