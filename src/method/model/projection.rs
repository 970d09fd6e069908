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

impl Model {
    /// Normalise a plate against its own controls with the frozen scale and
    /// its batch's gains: returns z (rows x |varying|), the number of
    /// controls used and the plate's `control_gain` QC figure. The gains
    /// are the reference fit's for a batch it had; otherwise measured on
    /// the plate's own controls against the frozen pooled control MAD and
    /// shrunk the same way (gain 1 with fewer than [`MIN_GAIN_CONTROLS`]
    /// controls). `batch = None`: not a known batch.
    pub(super) fn normalise_plate(
        &self,
        x: ArrayView2<f64>,
        controls: Option<&[bool]>,
        batch: Option<&str>,
    ) -> (Array2<f64>, usize, Option<f64>) {
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
        let (gains, control_gain) = self.plate_gains(x, &ctrl, &centres, batch);
        let mut z = Array2::zeros((n, v.len()));
        for (j, &f) in v.iter().enumerate() {
            let s = self.meta.scale[f] * gains[j];
            for i in 0..n {
                z[[i, j]] = (x[[i, f]] - centres[j]) / s;
            }
        }
        (z, ctrl.len(), control_gain)
    }

    /// Gains of the varying features for a plate (see
    /// [`Model::normalise_plate`]) and its `control_gain` QC figure (measured
    /// on its controls whichever gains are used).
    fn plate_gains(
        &self,
        x: ArrayView2<f64>,
        ctrl: &[usize],
        centres: &[f64],
        batch: Option<&str>,
    ) -> (Vec<f64>, Option<f64>) {
        let v = &self.meta.varying;
        let mad = &self.meta.control_mad;
        if self.meta.params.batch_scale == BatchScale::None || mad.is_empty() {
            return (vec![1.0; v.len()], None);
        }
        let measured =
            (ctrl.len() >= MIN_GAIN_CONTROLS).then(|| control_log_gains(x, ctrl, v, centres, mad));
        let figure = measured.as_deref().and_then(control_gain_figure);
        let gains = match (batch.and_then(|b| self.meta.batch_gain.get(b)), measured) {
            (Some(g), _) => v
                .iter()
                .map(|&f| g.get(f).copied().unwrap_or(1.0))
                .collect(),
            (None, Some(lg)) => shrunk_gains(&lg, ctrl.len(), self.meta.params.gain_shrinkage).0,
            (None, None) => vec![1.0; v.len()],
        };
        (gains, figure)
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
        let (z, _, _) = self.normalise_plate(x, controls, batch);
        self.pca.transform_f32(clipped(&z).view())
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
        let (z, _, _) = self.normalise_plate(x, controls, Some(&record.batch));
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
        let z_corr = z - &self.pca.offsets_to_features(offset);
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
