//! A [`SynthTable`] as an Arrow `RecordBatch` in pycytominer layout, for the
//! table writers of [`crate::io::table`].

use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use arrow_array::{ArrayRef, Float64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use ndarray::Array2;
use rayon::prelude::*;

use super::names::feature_names;
use super::SynthTable;

/// The observed table as an Arrow `RecordBatch` in pycytominer layout:
/// `Metadata_Batch`, `Metadata_Plate`, `Metadata_Well`, `Metadata_Label`,
/// `Metadata_Treatment` (Utf8), then `Feature_000`.. (Float64).
pub fn to_record_batch(t: &SynthTable) -> Result<RecordBatch> {
    record_batch(t, &t.features).context("building the synthetic feature record batch")
}

/// The ground truth in the same layout as [`to_record_batch`], for evaluation.
pub fn truth_record_batch(t: &SynthTable) -> Result<RecordBatch> {
    record_batch(t, &t.truth).context("building the synthetic truth record batch")
}

fn record_batch(t: &SynthTable, values: &Array2<f64>) -> Result<RecordBatch> {
    let n = values.nrows();
    let metadata: [(&str, &Vec<String>); 5] = [
        ("Metadata_Batch", &t.batch),
        ("Metadata_Plate", &t.plate),
        ("Metadata_Well", &t.well),
        ("Metadata_Label", &t.label),
        ("Metadata_Treatment", &t.treatment),
    ];
    for (name, column) in &metadata {
        ensure!(
            column.len() == n,
            "column {name} has {} rows but the value matrix has {n}",
            column.len()
        );
    }
    // The string columns and the transposition run side by side.
    let (metadata_columns, feature_columns) = rayon::join(
        || {
            metadata
                .par_iter()
                .map(|(_, column)| {
                    Arc::new(StringArray::from_iter_values(column.iter())) as ArrayRef
                })
                .collect::<Vec<_>>()
        },
        || {
            // One row-major pass (reading each column with a stride would
            // walk the whole matrix once per feature).
            let mut columns: Vec<Vec<f64>> =
                (0..values.ncols()).map(|_| Vec::with_capacity(n)).collect();
            for row in values.rows() {
                for (column, &x) in columns.iter_mut().zip(row) {
                    column.push(x);
                }
            }
            columns
        },
    );
    let mut fields: Vec<Field> = metadata
        .iter()
        .map(|(name, _)| Field::new(*name, DataType::Utf8, false))
        .collect();
    let mut columns = metadata_columns;
    for (name, column) in feature_names(values.ncols())
        .into_iter()
        .zip(feature_columns)
    {
        fields.push(Field::new(name, DataType::Float64, false));
        columns.push(Arc::new(Float64Array::from(column)));
    }
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}
