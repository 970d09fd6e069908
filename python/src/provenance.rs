//! Provenance on what the package returns and writes: the three key-value
//! pairs of [`balans::Provenance`] (`balans.version`, `balans.config`,
//! `balans.seed`), in the schema metadata of a returned table and in the
//! key-value metadata of a written file, as the CLI writes them.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use arrow_array::RecordBatch;
use balans::io::table;
use balans::{Config, Provenance};

/// `batch` with the provenance of a run with `cfg` added to its schema
/// metadata (existing keys such as pandas' are kept).
pub fn stamp(batch: RecordBatch, cfg: &Config) -> Result<RecordBatch> {
    let schema = batch.schema();
    let mut md: HashMap<String, String> = schema.metadata().clone();
    md.extend(Provenance::from_config(cfg)?.metadata());
    let schema = Arc::new(schema.as_ref().clone().with_metadata(md));
    Ok(batch.with_schema(schema)?)
}

/// Write `batch` to `output` with the provenance of a run with `cfg`, as
/// `balans correct` and `balans apply` write their outputs.
pub fn write(output: &Path, batch: &RecordBatch, cfg: &Config) -> Result<()> {
    table::write_table_with_metadata(output, batch, &Provenance::from_config(cfg)?.metadata())
}
