//! Apply a model to new plates outside the daemon, with the daemon's step.
//!
//! [`apply_model`] splits a table into plates (the plate column; a table
//! without one is a single plate named by [`ApplyOptions::fallback_plate`]),
//! in order of first appearance, and runs each through the same sequence as
//! the daemon's pipeline: look the plate up ([`Model::lookup`]: an id
//! already incorporated with the same content is a *replay* and gets the
//! values it got then; with other content it is refused), align it
//! ([`crate::qc::correct_plate`], pure), judge its QC figures against the
//! batch's history ([`crate::qc::assess`]), and incorporate it
//! ([`Model::apply`]). Later plates therefore see earlier ones, exactly as
//! when the same plates reach `balans serve --model` one file at a time in
//! the same order.
//!
//! Guarantees: the rows already in the model never move (the model only
//! grows); a plate of a batch the model has never seen is corrected (the
//! batch is added); features the table has beyond the model's pass through
//! unchanged; a table lacking one of the model's features is refused with
//! the daemon's message, naming the table and the first missing column.

use anyhow::{anyhow, bail, Result};
use arrow_array::{RecordBatch, UInt32Array};
use ndarray::{Array2, Axis};

use crate::io::dataset::ProfileTable;
use crate::method::model::{Lookup, Model};
use crate::qc::QcConfig;
use crate::serve::plate::{table_hash, QcRecord};

/// Options of [`apply_model`].
#[derive(Debug, Clone, Default)]
pub struct ApplyOptions {
    /// Outlier thresholds of the QC verdicts (`[qc]`).
    pub qc: QcConfig,
    /// Plate id of a table without a plate column (the daemon uses the file
    /// name up to its first dot); empty = the table's source name.
    pub fallback_plate: String,
}

/// What [`apply_model`] returns.
#[derive(Debug, Clone)]
pub struct Applied {
    /// Corrected features, rows x features, in the table's row order and
    /// its feature column order ([`ProfileTable::columns`]).
    pub corrected: Array2<f64>,
    /// One QC record per plate, in the order they were applied: the record
    /// the daemon publishes (figures and outlier verdict; none for a
    /// replay).
    pub plates: Vec<QcRecord>,
}

/// The plates of a table: (plate id, row indices), in order of first
/// appearance.
fn plates_of(table: &ProfileTable, fallback: &str) -> Vec<(String, Vec<usize>)> {
    let Some(plate) = &table.plate else {
        let id = if fallback.is_empty() {
            table.source.clone()
        } else {
            fallback.to_string()
        };
        return vec![(id, (0..table.rows()).collect())];
    };
    let mut order: Vec<(String, Vec<usize>)> = Vec::new();
    let mut at = std::collections::HashMap::new();
    for (i, p) in plate.iter().enumerate() {
        let k = *at.entry(p.as_str()).or_insert_with(|| {
            order.push((p.clone(), Vec::new()));
            order.len() - 1
        });
        order[k].1.push(i);
    }
    order
}

/// The rows `rows` of `t` (the whole table when they are all of it).
fn plate_rows<'a>(t: &'a RecordBatch, rows: &[usize]) -> Result<std::borrow::Cow<'a, RecordBatch>> {
    if rows.len() == t.num_rows() {
        return Ok(std::borrow::Cow::Borrowed(t));
    }
    let idx = UInt32Array::from_iter_values(rows.iter().map(|&i| i as u32));
    Ok(std::borrow::Cow::Owned(
        arrow_select::take::take_record_batch(t, &idx)?,
    ))
}

/// Correct the rows of `table` against `model`, inductively: rows already
/// in the model never move. Rows are grouped by plate and each plate is
/// aligned and then incorporated exactly as the daemon does
/// ([`crate::qc::correct_plate`] -> [`Model::apply`]), in order of first
/// appearance, so later plates see earlier ones. Returns the corrected
/// features (rows x features, in table order and in the table's feature
/// column order) plus the per-plate QC records. See the [module docs](self).
///
/// On an error (a plate spanning two batches, a missing feature, a plate id
/// already incorporated with other content) the plates before it stay
/// incorporated in `model`.
pub fn apply_model(
    model: &mut Model,
    table: &ProfileTable,
    opts: &ApplyOptions,
) -> Result<Applied> {
    let source = &table.source;
    let pos = model
        .feature_positions(&table.columns.names)
        .map_err(|e| anyhow!("{source}: {e}"))?;
    let mut out = table.x.clone();
    let mut records = Vec::new();
    for (plate, rows) in plates_of(table, &opts.fallback_plate) {
        let started = std::time::Instant::now();
        let batch = &table.batch[rows[0]];
        if let Some(&i) = rows.iter().find(|&&i| &table.batch[i] != batch) {
            bail!(
                "{source}: plate {plate} spans several batches ({batch}, {}); one plate = one batch",
                table.batch[i]
            );
        }
        // Rows x model features, in the model's feature order.
        let x = table.x.select(Axis(0), &rows).select(Axis(1), &pos);
        let controls: Option<Vec<bool>> = table
            .controls
            .as_ref()
            .map(|c| rows.iter().map(|&i| c[i]).collect());
        let hash = table_hash(plate_rows(&table.table, &rows)?.as_ref());
        let (values, qc, outlier, version, replay) = match model.lookup(&plate, hash) {
            Lookup::Clash(r) => bail!(
                "{source}: duplicate plate id {plate}: already incorporated in the model (version {}) with different content",
                r.version
            ),
            Lookup::Replay(r) => {
                let v = model
                    .replay_plate(&r, x.view(), controls.as_deref())
                    .map_err(|e| anyhow!("{source}: plate {plate}: {e}"))?;
                (v, None, None, r.version.clone(), true)
            }
            Lookup::New => {
                let pc = crate::qc::correct_plate_with(
                    model,
                    &plate,
                    batch,
                    x.view(),
                    controls.as_deref(),
                    hash,
                    &opts.qc,
                )
                .map_err(|e| anyhow!("{source}: plate {plate}: {e:#}"))?;
                let verdict = crate::qc::assess_plate(&model.qc_history(batch), &pc.qc, &opts.qc);
                model.apply(&pc.delta)?;
                let v = pc.delta.version.clone();
                (pc.corrected, Some(pc.qc), Some(verdict), v, false)
            }
        };
        for (r, &i) in rows.iter().enumerate() {
            for (model_j, &table_j) in pos.iter().enumerate() {
                out[(i, table_j)] = values[(r, model_j)];
            }
        }
        records.push(QcRecord {
            plate,
            batch: batch.clone(),
            model_version: version,
            replay,
            qc,
            outlier,
            seconds: started.elapsed().as_secs_f64(),
            generation_drift: None,
        });
    }
    Ok(Applied {
        corrected: out,
        plates: records,
    })
}
