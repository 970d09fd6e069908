//! Per-plate QC of an offline fit (`balans correct --qc`): the daemon's
//! figures and outlier test, applied to every plate of a corrected table.
//!
//! The daemon compares a plate with the rows incorporated before it; here
//! every plate is compared with *all the other plates* of the table (every
//! row is indexed, and a plate's own rows are left out of its neighbours).
//! The figures themselves are [`crate::qc::figures`]'s, shared with the
//! daemon, and the verdict is [`assess`] against the previous plates of the
//! batch in table order (order of first appearance).

use std::collections::HashMap;

use anyhow::Result;
use ndarray::ArrayView2;
use serde::Serialize;

use crate::method::index::{build_batch_indices, BatchIndex};
use crate::method::params::IndexKind;
use crate::method::preprocess::dense_ids;
use crate::qc::figures::{
    control_dispersion, expected_other_share, finite, mean_offset, query_mixing, LeaveOut,
};
use crate::qc::{assess, OutlierVerdict, QcConfig, QcFigures};

/// One plate's row of the offline QC table (`balans correct --qc`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlateQcRow {
    /// Plate id.
    pub plate: String,
    /// Batch.
    pub batch: String,
    /// Rows of the plate.
    pub rows: usize,
    /// Control rows of the plate.
    pub controls: usize,
    /// Batch mixing of the plate's rows among the other plates' rows before
    /// correction (same definition as the daemon's `mixing_before`).
    pub mixing_before: f64,
    /// The same after correction.
    pub mixing_after: f64,
    /// Median distance to the nearest other-batch row, before.
    pub cross_batch_distance_before: f64,
    /// The same after.
    pub cross_batch_distance_after: f64,
    /// Mean norm of the correction applied (neighbour space).
    pub mean_offset: f64,
    /// Median distance of control rows to their centroid after correction.
    pub control_dispersion: Option<f64>,
    /// Spread of the plate's controls against the reference's, folded to >= 1.
    pub control_gain: Option<f64>,
    /// Outlier verdict against the previous plates of the batch (plate
    /// order = order of first appearance in the table).
    pub verdict: OutlierVerdict,
}

/// Per-plate QC of an offline fit, with the daemon's definitions: for each
/// plate, its rows' `k` nearest neighbours among the rows of the *other*
/// plates (every batch), in the neighbour space before (`y_before`) and after
/// (`y_after`) correction. Cost: rows x batches searches of k neighbours,
/// twice (the own batch's with the plate's rows filtered out inside the
/// search: [`crate::method::index::BatchIndex::search_many_without`]).
#[allow(clippy::too_many_arguments)]
pub fn offline_plate_qc(
    y_before: ArrayView2<f32>,
    y_after: ArrayView2<f32>,
    batch: &[String],
    plate: &[String],
    controls: Option<&[bool]>,
    control_gain: &dyn Fn(&str) -> Option<f64>,
    k: usize,
    kind: IndexKind,
    cfg: &QcConfig,
) -> Result<Vec<PlateQcRow>> {
    let n = y_before.nrows();
    anyhow::ensure!(
        y_after.nrows() == n && batch.len() == n && plate.len() == n,
        "QC inputs disagree in length"
    );
    let (batch_of, batch_names) = dense_ids(batch);
    let nb = batch_names.len();
    let threads = rayon::current_num_threads();
    let before = build_batch_indices(y_before, &batch_of, nb, kind, threads)?;
    let after = build_batch_indices(y_after, &batch_of, nb, kind, threads)?;
    // Plates in order of first appearance (ids are positions in `order`).
    let mut order: Vec<&String> = Vec::new();
    let mut plate_id: HashMap<&str, usize> = HashMap::new();
    let mut rows_of: Vec<Vec<usize>> = Vec::new();
    let mut plate_of: Vec<usize> = Vec::with_capacity(n);
    for (i, p) in plate.iter().enumerate() {
        let id = *plate_id.entry(p.as_str()).or_insert_with(|| {
            order.push(p);
            rows_of.push(Vec::new());
            order.len() - 1
        });
        rows_of[id].push(i);
        plate_of.push(id);
    }
    let mut batch_rows = vec![0usize; nb];
    for &b in &batch_of {
        batch_rows[b as usize] += 1;
    }
    let mut history: HashMap<u32, Vec<QcFigures>> = HashMap::new();
    let mut out = Vec::with_capacity(order.len());
    for (pid, (p, idx)) in order.iter().zip(&rows_of).enumerate() {
        let Some(&first) = idx.first() else { continue };
        let b = batch_of[first];
        // The candidates: every row of the other plates.
        let expected = expected_other_share(batch_rows[b as usize] - idx.len(), n - idx.len());
        let is_plate = |key: u64| plate_of.get(key as usize) == Some(&pid);
        let leave_out = LeaveOut {
            batch: b as usize,
            rows: idx.len(),
            is_left_out: &is_plate,
        };
        let mixing = |indices: &[BatchIndex], y: ArrayView2<f32>| {
            query_mixing(
                indices,
                y,
                idx,
                k,
                Some(b as usize),
                expected,
                Some(&leave_out),
            )
        };
        let (mixing_before, cbd_before) = mixing(&before, y_before)?;
        let (mixing_after, cbd_after) = mixing(&after, y_after)?;
        let mean_offset = mean_offset(y_before, y_after, idx);
        let ctrl: Vec<usize> = match controls {
            Some(m) => idx
                .iter()
                .copied()
                .filter(|&i| m.get(i) == Some(&true))
                .collect(),
            None => Vec::new(),
        };
        let control_dispersion = control_dispersion(y_after, &ctrl);
        let control_gain = control_gain(p).and_then(finite);
        let figures = QcFigures {
            mean_offset: finite(mean_offset),
            mixing_after: finite(mixing_after),
            cross_batch_distance_after: finite(cbd_after),
            control_dispersion: control_dispersion.and_then(finite),
            control_gain,
            coverage_median: None,
        };
        let h = history.entry(b).or_default();
        let verdict = assess(h, &figures, cfg);
        h.push(figures);
        out.push(PlateQcRow {
            plate: (*p).clone(),
            batch: batch_names[b as usize].clone(),
            rows: idx.len(),
            controls: ctrl.len(),
            mixing_before,
            mixing_after,
            cross_batch_distance_before: cbd_before,
            cross_batch_distance_after: cbd_after,
            mean_offset,
            control_dispersion,
            control_gain,
            verdict,
        });
    }
    Ok(out)
}
