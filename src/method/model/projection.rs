//! A plate's way into the model's neighbour space and back out to features.
//!
//! A plate is normalised against its *own* controls (their median is the
//! plate's centre: plates drift), divided by the frozen robust scale and its
//! batch's control gains, clipped and projected with the frozen PCA basis.
//! The correction is an offset in that space; `Model::to_features` maps it
//! back through the loadings (only the neighbour subspace moves, the rest
//! of each profile passes through). A replayed plate goes the same way with
//! the stored corrected coordinates, so its output is re-derived rather than
//! stored.

use anyhow::{Context, Result};
use ndarray::{Array2, ArrayView2};

use super::meta::PlateRecord;
use super::Model;
use crate::method::params::BatchScale;
use crate::method::preprocess::{
    clipped, control_gain_figure, control_log_gains, median_inplace, shrunk_gains,
    MIN_CONTROLS_PER_PLATE, MIN_GAIN_CONTROLS,
};

/// Controls of a batch the reference fit did not have, pooled over its
/// plates (first plates first) to measure its gains: at most this many.
pub const MAX_POOLED_CONTROLS: usize = 512;

/// A plate normalised for the model (see [`Model::normalise_plate`]).
pub(super) struct PlateNorm {
    /// Normalised profiles (rows x |varying|).
    pub z: Array2<f64>,
    /// Control rows found.
    pub controls: usize,
    /// The plate's `control_gain` QC figure.
    pub control_gain: Option<f64>,
    /// The plate's control deviations from their centre (controls x
    /// |varying|, row-major) when its batch pools them; else empty.
    pub control_dev: Vec<f32>,
    /// Pooled controls of earlier plates its gains used.
    pub pooled: usize,
}

impl Model {
    /// Normalise a plate against its own controls with the frozen scale and
    /// its batch's gains (see [`PlateNorm`]). The gains are the reference
    /// fit's for a batch it had; otherwise measured on the controls of the
    /// batch's plates so far (pooled, [`ModelMeta::control_pool`], up to
    /// [`MAX_POOLED_CONTROLS`]) and the plate's own, against the frozen
    /// pooled control MAD, and shrunk the same way (gain 1 with fewer than
    /// [`MIN_GAIN_CONTROLS`] controls in all). `batch = None`: not a known
    /// batch. `pooled`: how many pooled controls to use (`None` = all; a
    /// replay uses the count its first correction used).
    pub(super) fn normalise_plate(
        &self,
        x: ArrayView2<f64>,
        controls: Option<&[bool]>,
        batch: Option<&str>,
        pooled: Option<usize>,
    ) -> PlateNorm {
        let n = x.nrows();
        let ctrl: Vec<usize> = controls
            .map(|m| (0..n).filter(|&i| m[i]).collect())
            .unwrap_or_default();
        let reference: Vec<usize> = if ctrl.len() >= MIN_CONTROLS_PER_PLATE {
            ctrl.clone()
        } else {
            (0..n).collect()
        };
        let v = &self.meta.varying;
        let centres: Vec<f64> = v
            .iter()
            .map(|&f| {
                let mut vals: Vec<f64> = reference.iter().map(|&i| x[[i, f]]).collect();
                median_inplace(&mut vals)
            })
            .collect();
        let (gains, control_gain, pooled) = self.plate_gains(x, &ctrl, &centres, batch, pooled);
        let mut z = Array2::zeros((n, v.len()));
        for (j, &f) in v.iter().enumerate() {
            let s = self.meta.scale[f] * gains[j];
            for i in 0..n {
                z[[i, j]] = (x[[i, f]] - centres[j]) / s;
            }
        }
        let control_dev = if self.pools(batch) && ctrl.len() >= MIN_CONTROLS_PER_PLATE {
            ctrl.iter()
                .flat_map(|&i| {
                    v.iter()
                        .zip(&centres)
                        .map(move |(&f, &c)| (x[[i, f]] - c).abs() as f32)
                })
                .collect()
        } else {
            Vec::new()
        };
        PlateNorm {
            z,
            controls: ctrl.len(),
            control_gain,
            control_dev,
            pooled,
        }
    }

    /// Whether plates of `batch` pool their controls: with `pool_controls`
    /// on, a named batch without frozen gains, under per-batch control
    /// scaling.
    fn pools(&self, batch: Option<&str>) -> bool {
        self.meta.params.pool_controls
            && self.meta.params.batch_scale == BatchScale::Controls
            && !self.meta.control_mad.is_empty()
            && batch.is_some_and(|b| !self.meta.batch_gain.contains_key(b))
    }

    /// Gains of the varying features for a plate (see
    /// [`Model::normalise_plate`]), its `control_gain` QC figure (measured
    /// on its own controls whichever gains are used) and the pooled controls
    /// used.
    fn plate_gains(
        &self,
        x: ArrayView2<f64>,
        ctrl: &[usize],
        centres: &[f64],
        batch: Option<&str>,
        pooled: Option<usize>,
    ) -> (Vec<f64>, Option<f64>, usize) {
        let v = &self.meta.varying;
        let mad = &self.meta.control_mad;
        if self.meta.params.batch_scale == BatchScale::None || mad.is_empty() {
            return (vec![1.0; v.len()], None, 0);
        }
        let measured =
            (ctrl.len() >= MIN_GAIN_CONTROLS).then(|| control_log_gains(x, ctrl, v, centres, mad));
        let figure = measured.as_deref().and_then(control_gain_figure);
        if let Some(g) = batch.and_then(|b| self.meta.batch_gain.get(b)) {
            let gains = v
                .iter()
                .map(|&f| g.get(f).copied().unwrap_or(1.0))
                .collect();
            return (gains, figure, 0);
        }
        let pool = batch
            .and_then(|b| self.meta.control_pool.get(b))
            .map_or(&[][..], Vec::as_slice);
        let nv = v.len();
        let earlier = (pool.len() / nv.max(1)).min(pooled.unwrap_or(usize::MAX));
        if earlier == 0 {
            let gains = match measured {
                Some(lg) => shrunk_gains(&lg, ctrl.len(), self.meta.params.gain_shrinkage).0,
                None => vec![1.0; nv],
            };
            return (gains, figure, 0);
        }
        let own = if ctrl.len() >= MIN_CONTROLS_PER_PLATE {
            ctrl
        } else {
            &[][..]
        };
        let total = earlier + own.len();
        if total < MIN_GAIN_CONTROLS {
            return (vec![1.0; nv], figure, earlier);
        }
        let log_gains: Vec<f64> = v
            .iter()
            .enumerate()
            .map(|(j, &f)| {
                let mut r: Vec<f64> = (0..earlier)
                    .map(|i| f64::from(pool[i * nv + j]))
                    .chain(own.iter().map(|&i| (x[[i, f]] - centres[j]).abs()))
                    .collect();
                let m = median_inplace(&mut r);
                match mad.get(f) {
                    Some(&p) if p > 0.0 && m > 0.0 => (m / p).ln(),
                    _ => f64::NAN,
                }
            })
            .collect();
        let gains = shrunk_gains(&log_gains, total, self.meta.params.gain_shrinkage).0;
        (gains, figure, earlier)
    }

    /// Project a block of rows into the neighbour space the way a plate is
    /// projected (normalised against its own controls with the frozen
    /// scale, clipped, PCA) — without aligning it. With [`Model::restore`]
    /// this seeds a model with many indexed rows cheaply (the streaming
    /// bench's warm start) when an offline fit would take too long.
    /// `batch`: the plate's batch (its frozen gains when the reference fit
    /// had it), `None` = measure the gains on the plate's controls.
    pub fn project(
        &self,
        x: ArrayView2<f64>,
        controls: Option<&[bool]>,
        batch: Option<&str>,
    ) -> Array2<f32> {
        let z = self.normalise_plate(x, controls, batch, None).z;
        self.pca.transform_f32(clipped(&z).view())
    }

    /// [`Model::project`], also returning the rows' profiles (clipped,
    /// normalised varying features, f32): what a model that keeps profiles
    /// stores per row ([`Model::with_feature_rows`]).
    pub fn project_profiles(
        &self,
        x: ArrayView2<f64>,
        controls: Option<&[bool]>,
        batch: Option<&str>,
    ) -> (Array2<f32>, Array2<f32>) {
        let z = self.normalise_plate(x, controls, batch, None).z;
        let w = clipped(&z);
        let y = self.pca.transform_f32(w.view());
        (w.mapv(|v| v as f32), y)
    }

    /// Re-derive a replayed plate's published output from the stored
    /// corrected coordinates: bit-identical to the first publication, which
    /// [`Model::align_plate`] computes from the same f32 difference
    /// `y_raw - stored`.
    pub fn replay_plate(
        &self,
        record: &PlateRecord,
        x: ArrayView2<f64>,
        controls: Option<&[bool]>,
    ) -> Result<Array2<f64>> {
        let p = self.meta.dims;
        let n = record.rows as usize;
        anyhow::ensure!(
            x.nrows() == n,
            "replayed plate has {} rows, recorded {n}",
            x.nrows()
        );
        let z = self
            .normalise_plate(
                x,
                controls,
                Some(&record.batch),
                Some(record.pooled_controls as usize),
            )
            .z;
        if self.in_features() {
            let nv = self.meta.varying.len();
            let start = record.first_row as usize * nv;
            let stored = self
                .w
                .get(start..start + n * nv)
                .context("stored profiles")?;
            let stored = ArrayView2::from_shape((n, nv), stored).context("stored profiles")?;
            let published = &clipped(&z) - &stored.mapv(f64::from);
            return Ok(self.to_features_from(x, &(&z - &published)));
        }
        let y_raw = self.pca.transform_f32(clipped(&z).view());
        let start = record.first_row as usize * p;
        let stored =
            ArrayView2::from_shape((n, p), &self.y[start..start + n * p]).context("stored rows")?;
        let offset = (&y_raw - &stored).mapv(|v| v as f64);
        Ok(self.to_features(x, &z, offset.view()))
    }

    /// A plate's corrected features: its normalised profiles `z` moved by
    /// the neighbour-space `offset` (`z - offset * W^-1 * V^T`: only the
    /// neighbour subspace moves), scaled back to input units; features the
    /// model does not correct keep their input values `x`.
    pub(super) fn to_features(
        &self,
        x: ArrayView2<f64>,
        z: &Array2<f64>,
        offset: ArrayView2<f64>,
    ) -> Array2<f64> {
        self.to_features_from(x, &(z - &self.pca.offsets_to_features(offset)))
    }

    /// Corrected normalised profiles `z_corr` (rows x |varying|) scaled back
    /// to input units; features the model does not correct keep their
    /// input values `x`.
    pub(super) fn to_features_from(&self, x: ArrayView2<f64>, z_corr: &Array2<f64>) -> Array2<f64> {
        let mut corrected = x.to_owned();
        for (j, &f) in self.meta.varying.iter().enumerate() {
            let (s, g) = (self.meta.scale[f], self.meta.global_centre[f]);
            for i in 0..x.nrows() {
                corrected[[i, f]] = z_corr[[i, j]] * s + g;
            }
        }
        corrected
    }
}
