//! The daemon's plate step: correct a plate against the model and compute
//! its QC figures.
//!
//! [`correct_plate`] is the one entry point the daemon calls for a new
//! plate. It asks the method core to align the plate
//! ([`Model::align_plate`], pure: the model does not change), then computes
//! the plate's [`PlateQc`] from what the alignment hands back, with the
//! definitions of [`crate::qc::figures`] — the same functions `balans
//! correct --qc` uses. The outlier figures go into the returned delta, so
//! applying it ([`Model::apply`]) records them as the batch's QC history.
//!
//! The figures compare the plate with the rows the model holds before it:
//! its batch index (own batch) and every other batch index. Mixing before
//! correction reuses round 1's neighbour queries (the alignment records
//! them); after correction the plate's corrected rows are queried afresh.

use anyhow::Result;
use ndarray::{Array2, ArrayView2};
use serde::{Deserialize, Serialize};

use crate::method::model::{AlignedPlate, Model, PlateDelta, PlateTimings, QcFigures};
use crate::qc::figures::{
    control_dispersion, coverage_figures, expected_other_share, finite, mean_offset,
    mixing_from_hits, query_mixing,
};

/// Per-plate quality figures computed while correcting (published in the
/// daemon's QC record; field names are part of that format).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct PlateQc {
    /// Rows of the plate.
    pub rows: usize,
    /// Control rows found (0 without a selector).
    pub controls: usize,
    /// Mean norm of the offset applied, neighbour space (robust-z units).
    pub mean_offset: f64,
    /// Batch mixing of the plate's rows before correction: share of their
    /// nearest neighbours (over all batches) from other batches, relative
    /// to the share of other-batch rows in the model (1 = mixed).
    pub mixing_before: f64,
    /// The same after correction.
    pub mixing_after: f64,
    /// Median distance of the plate's rows to their nearest row of another
    /// batch, before correction (neighbour space).
    pub cross_batch_distance_before: f64,
    /// The same after correction.
    pub cross_batch_distance_after: f64,
    /// Median distance of control rows to their centroid, after correction
    /// (None without controls).
    pub control_dispersion: Option<f64>,
    /// Spread of the plate's controls against the reference's, folded to >= 1
    /// (`exp(|mean log-gain|)`; None without batch scaling or with fewer than
    /// 8 controls). The daemon removes a new batch's gain, so a failed
    /// staining shows here rather than in the offsets.
    #[serde(default)]
    pub control_gain: Option<f64>,
    /// Minimum coverage of the plate's rows.
    pub coverage_min: f64,
    /// Median coverage of the plate's rows.
    pub coverage_median: f64,
    /// True when the plate opened a batch the model had not seen.
    pub new_batch: bool,
}

impl PlateQc {
    /// The figures the outlier test uses (NaN -> None).
    pub fn figures(&self) -> QcFigures {
        QcFigures {
            mean_offset: finite(self.mean_offset),
            mixing_after: finite(self.mixing_after),
            cross_batch_distance_after: finite(self.cross_batch_distance_after),
            control_dispersion: self.control_dispersion.and_then(finite),
            control_gain: self.control_gain.and_then(finite),
            coverage_median: finite(self.coverage_median),
        }
    }
}

/// A corrected plate.
#[derive(Debug, Clone)]
pub struct PlateCorrection {
    /// Corrected features (rows x all features, input units).
    pub corrected: Array2<f64>,
    /// QC figures.
    pub qc: PlateQc,
    /// The state change to apply (carrying the plate's outlier figures).
    pub delta: PlateDelta,
    /// Stage timings.
    pub timings: PlateTimings,
}

/// Correct one plate (all rows share `batch`) and compute its QC figures.
/// `x` is rows x features in the model's feature order. Does not change
/// the model: apply the returned delta with [`Model::apply`].
pub fn correct_plate(
    model: &Model,
    plate: &str,
    batch: &str,
    x: ArrayView2<f64>,
    controls: Option<&[bool]>,
    content_hash: u64,
) -> Result<PlateCorrection> {
    let aligned = model.align_plate(plate, batch, x, controls, content_hash)?;
    let t_qc = std::time::Instant::now();
    let qc = plate_qc(model, &aligned, controls)?;
    let AlignedPlate {
        corrected,
        mut delta,
        mut timings,
        ..
    } = aligned;
    delta.qc = Some(qc.figures());
    timings.qc += t_qc.elapsed().as_secs_f64();
    Ok(PlateCorrection {
        corrected,
        qc,
        delta,
        timings,
    })
}

/// The QC figures of a plate aligned to `model` (before the delta is
/// applied). `controls` is the plate's control mask, as aligned.
pub fn plate_qc(
    model: &Model,
    aligned: &AlignedPlate,
    controls: Option<&[bool]>,
) -> Result<PlateQc> {
    let k = model.meta().params.k;
    let batch_id = aligned.batch_id;
    let expected = model_expected_share(model, batch_id);
    let (mixing_before, cross_batch_distance_before) = match &aligned.hits_before {
        Some(hits) => mixing_from_hits(hits, batch_id, expected, k),
        None => plate_mixing(model, aligned.y_raw.view(), batch_id)?,
    };
    let (mixing_after, cross_batch_distance_after) =
        plate_mixing(model, aligned.y_corrected.view(), batch_id)?;
    let n = aligned.y_raw.nrows();
    let all: Vec<usize> = (0..n).collect();
    let ctrl: Vec<usize> = match controls {
        Some(m) => (0..n).filter(|&i| m.get(i) == Some(&true)).collect(),
        None => Vec::new(),
    };
    let (coverage_min, coverage_median) = coverage_figures(&aligned.delta.plate_coverage);
    Ok(PlateQc {
        rows: n,
        controls: aligned.controls,
        mean_offset: mean_offset(aligned.y_raw.view(), aligned.y_corrected.view(), &all),
        mixing_before,
        mixing_after,
        cross_batch_distance_before,
        cross_batch_distance_after,
        control_dispersion: control_dispersion(aligned.y_corrected.view(), &ctrl),
        control_gain: aligned.control_gain,
        coverage_min,
        coverage_median,
        new_batch: batch_id.is_none(),
    })
}

/// Batch mixing and cross-batch distance of plate rows (coordinates `y`)
/// among the model's rows: each row's k nearest rows of every batch index
/// (see [`crate::qc::figures`]). NaN for an empty model, or a model holding
/// only the plate's batch. `batch` is the plate's batch id (`None` = a
/// batch the model has not seen). Rows are queried in parallel.
pub fn plate_mixing(model: &Model, y: ArrayView2<f32>, batch: Option<usize>) -> Result<(f64, f64)> {
    let rows: Vec<usize> = (0..y.nrows()).collect();
    let expected = model_expected_share(model, batch);
    let k = model.meta().params.k;
    query_mixing(model.batch_indices(), y, &rows, k, batch, expected, None)
}

/// The other-batch share of the model's rows, seen from batch `batch`.
fn model_expected_share(model: &Model, batch: Option<usize>) -> f64 {
    let own = batch.map_or(0, |b| model.batch_rows(b));
    expected_other_share(own, model.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_map_nan_to_none() {
        let qc = PlateQc {
            mean_offset: 1.5,
            mixing_after: f64::NAN,
            cross_batch_distance_after: f64::INFINITY,
            control_dispersion: Some(0.25),
            coverage_median: 2.0,
            ..PlateQc::default()
        };
        let f = qc.figures();
        assert_eq!(f.mean_offset, Some(1.5));
        assert_eq!(f.mixing_after, None);
        assert_eq!(f.cross_batch_distance_after, None);
        assert_eq!(f.control_dispersion, Some(0.25));
        assert_eq!(f.coverage_median, Some(2.0));
    }
}
