//! Arrow data across the boundary, without copying.
//!
//! Tables come in through the Arrow PyCapsule stream interface
//! (`__arrow_c_stream__`: a `pyarrow.Table`, a `RecordBatchReader`, a
//! polars or DuckDB result, ...) and leave as a `pyarrow.Table`; both
//! directions hand over the buffers, not copies of them. A table of several
//! chunks is concatenated into one batch (the loader reads one batch): the
//! only copy, and none for the usual single-chunk table.

use std::path::PathBuf;

use anyhow::{Context, Result};
use arrow_array::RecordBatch;
use arrow_pyarrow::{FromPyArrow, PyArrowType, Table};
use pyo3::prelude::*;
use pyo3::types::PyString;

/// What a Python function was given: a file or an in-memory table.
pub enum Data {
    /// A table file (Parquet, CSV, CSV.gz, Arrow IPC), read by the CLI's
    /// reader.
    Path(PathBuf),
    /// An Arrow table and the name errors give it (`DataFrame`, `AnnData`,
    /// ...).
    Table(RecordBatch, String),
}

impl Data {
    /// `obj` as a path (`str` or `os.PathLike`) or an Arrow stream; `source`
    /// names an in-memory table in errors.
    pub fn from_py(obj: &Bound<'_, PyAny>, source: &str) -> PyResult<Data> {
        if obj.is_instance_of::<PyString>() || obj.hasattr("__fspath__")? {
            return Ok(Data::Path(obj.extract::<PathBuf>()?));
        }
        if !obj.hasattr("__arrow_c_stream__")? {
            return Err(crate::error(format!(
                "{source}: expected a path or an Arrow table (an object with __arrow_c_stream__), got {}",
                obj.get_type().name()?
            )));
        }
        let table = Table::from_pyarrow_bound(obj)?;
        let batch = one_batch(table).map_err(crate::to_py)?;
        Ok(Data::Table(batch, source.to_string()))
    }
}

/// The batches of `table` as one [`RecordBatch`] (zero-copy for one chunk).
pub fn one_batch(table: Table) -> Result<RecordBatch> {
    let (mut batches, schema) = table.into_inner();
    if batches.len() == 1 {
        return Ok(batches.remove(0));
    }
    arrow_select::concat::concat_batches(&schema, &batches).context("concatenating table chunks")
}

/// `batch` as a `pyarrow.Table` (zero-copy).
pub fn to_py(py: Python<'_>, batch: RecordBatch) -> PyResult<Py<PyAny>> {
    let schema = batch.schema();
    let table = Table::try_new(vec![batch], schema).map_err(|e| crate::error(e.to_string()))?;
    Ok(PyArrowType(table).into_pyobject(py)?.unbind())
}
