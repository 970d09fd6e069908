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
use crate::method::preprocess::{median_inplace, MIN_CONTROLS_PER_PLATE};
use crate::qc::figures::{
    control_dispersion, coverage_figures, expected_other_share, finite, mean_offset,
    mixing_from_hits, query_mixing,
};
use crate::qc::outlier::{assess, OutlierVerdict, QcConfig};

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
    /// Cells (row x corrected feature) whose robust z — distance from the
    /// plate's median in the model's robust scale of the feature — exceeds
    /// `[qc] extreme_z`: values the daemon accepted (below `max_abs_value`)
    /// but that are implausible for a measurement; they pull the plate's
    /// correction. See [`extreme_values`].
    #[serde(default)]
    pub extreme_cells: usize,
    /// The largest such robust |z| of the plate (0 for an empty plate).
    #[serde(default)]
    pub max_abs_z: f64,
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
/// the model: apply the returned delta with [`Model::apply`]. Extreme
/// values are counted at the default `[qc] extreme_z` (see
/// [`correct_plate_with`]).
pub fn correct_plate(
    model: &Model,
    plate: &str,
    batch: &str,
    x: ArrayView2<f64>,
    controls: Option<&[bool]>,
    content_hash: u64,
) -> Result<PlateCorrection> {
    let cfg = QcConfig::default();
    correct_plate_with(model, plate, batch, x, controls, content_hash, &cfg)
}

/// [`correct_plate`] with the `[qc]` configuration (its `extreme_z`). A
/// plate with extreme cells is logged (a warning naming the worst row and
/// feature); its correction is not changed.
pub fn correct_plate_with(
    model: &Model,
    plate: &str,
    batch: &str,
    x: ArrayView2<f64>,
    controls: Option<&[bool]>,
    content_hash: u64,
    cfg: &QcConfig,
) -> Result<PlateCorrection> {
    let aligned = model.align_plate(plate, batch, x, controls, content_hash)?;
    let t_qc = std::time::Instant::now();
    let mut qc = plate_qc(model, &aligned, controls)?;
    let ext = extreme_values(model, x, controls, cfg.extreme_z);
    qc.extreme_cells = ext.cells;
    qc.max_abs_z = ext.max_abs_z;
    if let Some((row, f)) = ext.worst.filter(|_| ext.cells > 0) {
        tracing::warn!(
            plate,
            cells = ext.cells,
            max_abs_z = ext.max_abs_z,
            row,
            feature = %model.meta().features[f],
            value = x[[row, f]],
            extreme_z = cfg.extreme_z,
            "plate has values beyond [qc] extreme_z robust SDs of its median (accepted; see its QC record)"
        );
    }
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
        extreme_cells: 0,
        max_abs_z: 0.0,
    })
}

/// Extreme cells of a plate (see [`PlateQc::extreme_cells`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ExtremeValues {
    /// Cells with robust |z| above the bound.
    pub cells: usize,
    /// The largest robust |z| (0 for an empty plate).
    pub max_abs_z: f64,
    /// Where it is: (row, feature index in the model's order).
    pub worst: Option<(usize, usize)>,
}

/// Count the cells of `x` (rows x features, the model's order) whose robust
/// z exceeds `bound`: for each corrected feature `f`,
/// `|x[i, f] - median_f| / scale_f`, with `median_f` over the plate's
/// controls (over all its rows with fewer than
/// [`MIN_CONTROLS_PER_PLATE`] controls, as the correction centres the
/// plate) and `scale_f` the model's frozen robust scale. One value 1e300
/// in a column of CellProfiler features is ~1e299 robust SDs away; honest
/// measurements stay within a few tens (see docs/reliability.md, case 7).
pub fn extreme_values(
    model: &Model,
    x: ArrayView2<f64>,
    controls: Option<&[bool]>,
    bound: f64,
) -> ExtremeValues {
    let n = x.nrows();
    let ctrl: Vec<usize> = controls
        .map(|m| (0..n).filter(|&i| m.get(i) == Some(&true)).collect())
        .unwrap_or_default();
    let reference: Vec<usize> = if ctrl.len() >= MIN_CONTROLS_PER_PLATE {
        ctrl
    } else {
        (0..n).collect()
    };
    let meta = model.meta();
    let mut out = ExtremeValues {
        cells: 0,
        max_abs_z: 0.0,
        worst: None,
    };
    let mut vals = Vec::with_capacity(reference.len());
    for &f in &meta.varying {
        let scale = meta.scale.get(f).copied().unwrap_or(f64::NAN);
        if !(scale.is_finite() && scale > 0.0) || f >= x.ncols() || reference.is_empty() {
            continue;
        }
        vals.clear();
        vals.extend(reference.iter().map(|&i| x[[i, f]]));
        let centre = median_inplace(&mut vals);
        for i in 0..n {
            let z = ((x[[i, f]] - centre) / scale).abs();
            if z > bound {
                out.cells += 1;
            }
            if z > out.max_abs_z {
                out.max_abs_z = z;
                out.worst = Some((i, f));
            }
        }
    }
    out
}

/// The verdict on a corrected plate: [`assess`] of its figures against
/// the batch's history, with [`OutlierVerdict::extreme_values`] set when
/// the plate holds extreme cells (a flag of its own, not an outlier
/// reason: it does not depend on the history, and the plate is corrected
/// as usual).
pub fn assess_plate(history: &[QcFigures], qc: &PlateQc, cfg: &QcConfig) -> OutlierVerdict {
    let mut v = assess(history, &qc.figures(), cfg);
    v.extreme_values = qc.extreme_cells > 0;
    v
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

/// The other-batch share of the model's indexed rows (the candidates of
/// the mixing queries: a large batch counts with its summary), seen from
/// batch `batch`.
fn model_expected_share(model: &Model, batch: Option<usize>) -> f64 {
    let own = batch.map_or(0, |b| model.batch_rows(b));
    expected_other_share(own, model.indexed_len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random rows x cols in [0, 10).
    fn matrix(rows: usize, cols: usize, seed: u64) -> Array2<f64> {
        let mut x = seed | 1;
        Array2::from_shape_fn((rows, cols), |_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 11) as f64 / (1u64 << 53) as f64 * 10.0
        })
    }

    fn model() -> Model {
        let params = crate::method::params::Params {
            threads: 1,
            ..Default::default()
        };
        let x = matrix(80, 6, 7);
        let names = (0..6).map(|j| format!("F{j}")).collect();
        Model::bootstrap(x.view(), None, names, &params).unwrap()
    }

    /// Brute force: every cell's |x - median| / scale, the median by
    /// sorting the reference rows' values.
    fn oracle(m: &Model, x: &Array2<f64>, controls: Option<&[bool]>, bound: f64) -> (usize, f64) {
        let meta = m.meta();
        let n = x.nrows();
        let is_ref = |i: usize| match controls {
            Some(c) if c.iter().filter(|&&b| b).count() >= MIN_CONTROLS_PER_PLATE => c[i],
            _ => true,
        };
        let (mut cells, mut max) = (0, 0.0f64);
        for &f in &meta.varying {
            let mut v: Vec<f64> = (0..n).filter(|&i| is_ref(i)).map(|i| x[[i, f]]).collect();
            v.sort_by(f64::total_cmp);
            let med = if v.len() % 2 == 1 {
                v[v.len() / 2]
            } else {
                (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
            };
            for i in 0..n {
                let z = (x[[i, f]] - med).abs() / meta.scale[f];
                cells += usize::from(z > bound);
                max = max.max(z);
            }
        }
        (cells, max)
    }

    #[test]
    fn extreme_values_match_brute_force() {
        let m = model();
        for seed in 1..40u64 {
            let mut x = matrix(24, 6, seed * 31);
            let mut planted = 0;
            for k in 0..(seed % 4) as usize {
                let (i, f) = (
                    (seed as usize * 5 + k * 7) % 24,
                    (seed as usize + k * 3) % 6,
                );
                x[[i, f]] += 1e3 * (k as f64 + 1.0) * if seed % 2 == 0 { 1.0 } else { -1.0 };
                planted += 1;
            }
            let controls: Vec<bool> = (0..24).map(|i| (i + seed as usize) % 5 == 0).collect();
            for c in [None, Some(controls.as_slice())] {
                for bound in [3.0, 50.0, f64::INFINITY] {
                    let got = extreme_values(&m, x.view(), c, bound);
                    let (cells, max) = oracle(&m, &x, c, bound);
                    assert_eq!(got.cells, cells, "seed {seed} bound {bound}");
                    assert!((got.max_abs_z - max).abs() <= 1e-9 * max.max(1.0));
                    if bound == 50.0 {
                        assert!(cells >= planted.min(1), "seed {seed}: {cells} < {planted}");
                    }
                }
            }
        }
    }

    /// The bound changes the QC record, never the correction.
    #[test]
    fn extreme_z_changes_the_qc_not_the_corrected_values() {
        let m = model();
        let mut x = matrix(24, 6, 99);
        x[[5, 2]] = 1e6;
        let run = |z: f64| {
            let cfg = QcConfig {
                extreme_z: z,
                ..QcConfig::default()
            };
            correct_plate_with(&m, "P", "B2", x.view(), None, 1, &cfg).unwrap()
        };
        let (flagged, off) = (run(50.0), run(f64::INFINITY));
        assert_eq!(flagged.corrected, off.corrected);
        assert_eq!(flagged.qc.extreme_cells, 1);
        assert_eq!(off.qc.extreme_cells, 0);
        assert_eq!(flagged.qc.max_abs_z, off.qc.max_abs_z);
        assert!(flagged.qc.max_abs_z > 1e4);
        let default = correct_plate(&m, "P", "B2", x.view(), None, 1).unwrap();
        assert_eq!(default.corrected, flagged.corrected);
        // (Debug, not ==: the figures of this one-batch model are NaN.)
        assert_eq!(format!("{:?}", default.qc), format!("{:?}", flagged.qc));
        let v = assess_plate(&[], &flagged.qc, &QcConfig::default());
        assert!(v.extreme_values && !v.outlier && v.reasons.is_empty());
        assert!(!assess_plate(&[], &off.qc, &QcConfig::default()).extreme_values);
    }

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
