//! Preprocessing: per-plate robust normalisation (pycytominer/JUMP style).
//!
//! For every plate, each feature is centred at the median of the plate's
//! *reference rows* — its negative controls when a control selector is given
//! and the plate has at least [`MIN_CONTROLS_PER_PLATE`] of them, otherwise
//! all of its rows. Each feature is then divided by one robust scale, the
//! MAD (x 1.4826) of the centred reference rows pooled over all plates:
//! per-plate MADs of a handful of control wells are too noisy to divide by.
//!
//! Before that pooled scale, each *batch* can be rescaled by its controls
//! ([`Normalizer::fit`]'s `batch`): per feature, the ratio of the batch's
//! control MAD to the control MAD pooled over all batches is a multiplicative
//! gain (a channel's exposure or staining intensity that week) measured on
//! rows whose biology is the same in every batch. Control MADs of a few dozen
//! wells are noisy, so each batch keeps its mean log-gain over features and
//! each feature's deviation from it is shrunk by empirical Bayes
//! (James-Stein: the spread of the log-ratios over features against their
//! sampling variance `1.36 / n_controls`, weighted by `gain_shrinkage`, see
//! [`shrunk_gains`]); a batch with fewer than [`MIN_GAIN_CONTROLS`] controls
//! keeps gain 1.
//!
//! A feature whose pooled MAD is zero is *constant*: it is not corrected and
//! passes through unchanged. The working copy used for neighbour search and
//! kernel means is clipped to +-[`CLIP`] so a single extreme well cannot
//! dominate a PCA axis; the correction itself is applied to the unclipped
//! values. [`Normalizer::denormalise`] maps back to the input's units with
//! one global affine map per feature, so the output keeps the input's units
//! with plate effects removed.

use anyhow::Result;
use ndarray::{Array1, Array2, ArrayView2, Axis};
use rayon::prelude::*;

/// Plates with fewer control rows than this are centred on all their rows.
pub const MIN_CONTROLS_PER_PLATE: usize = 3;
/// Batches with fewer control rows than this keep gain 1.
pub const MIN_GAIN_CONTROLS: usize = 8;
/// Sampling variance of log(MAD) of `n` normal values is about `1.36 / n`.
const LOG_MAD_VAR: f64 = 1.36;
/// Clip of the working copy, in robust-z units.
pub(crate) const CLIP: f64 = 50.0;
/// MAD consistency constant for normally distributed data.
const MAD_K: f64 = 1.4826;

/// The fitted normalisation.
#[derive(Debug, Clone)]
pub struct Normalizer {
    /// Per plate, per feature centre (plates x d).
    pub plate_centre: Array2<f64>,
    /// Global centre per feature (median of reference rows, input units).
    pub global_centre: Array1<f64>,
    /// Pooled robust scale per feature (0 for constant features).
    pub scale: Array1<f64>,
    /// Per batch, per feature multiplicative gain measured on the controls
    /// (batches x d; empty when batch scaling is off).
    pub batch_gain: Array2<f64>,
    /// Per batch, the shrinkage factor applied to its log-gains (0 = gain 1).
    pub gain_shrink: Vec<f64>,
    /// Per feature, the MAD of the plate-centred control rows pooled over
    /// every batch: the reference gains are measured against (empty when
    /// batch scaling is off).
    pub control_mad: Array1<f64>,
    /// Plates that had too few controls and were centred on all rows.
    pub plates_without_controls: Vec<usize>,
}

/// Median of a slice (NaN-free), 0 for an empty slice. Reorders `v`.
pub fn median_inplace(v: &mut [f64]) -> f64 {
    let n = v.len();
    if n == 0 {
        return 0.0;
    }
    let mid = n / 2;
    let (_, m, _) = v.select_nth_unstable_by(mid, |a, b| a.total_cmp(b));
    let hi = *m;
    if n % 2 == 1 {
        hi
    } else {
        let lo = v[..mid].iter().copied().fold(f64::NEG_INFINITY, f64::max);
        0.5 * (lo + hi)
    }
}

/// The groups per-batch control gains are measured for
/// ([`Normalizer::fit`]'s `batch`).
#[derive(Debug, Clone, Copy)]
pub struct GainGroups<'a> {
    /// Row `i`'s batch id (`0..n_batches`).
    pub batch_of: &'a [u32],
    /// Number of batches.
    pub n_batches: usize,
    /// Weight of the sampling variance in the shrinkage ([`shrunk_gains`]).
    pub shrinkage: f64,
}

impl Normalizer {
    /// Fit on `x` (n x d). `plate_of[i]` is row i's plate (0..n_plates);
    /// `controls` marks negative-control rows, if a selector was given;
    /// `batch` turns on the per-batch control gains (needs controls).
    pub fn fit(
        x: ArrayView2<f64>,
        plate_of: &[u32],
        n_plates: usize,
        controls: Option<&[bool]>,
        batch: Option<GainGroups<'_>>,
    ) -> Result<Normalizer> {
        let (n, d) = x.dim();
        anyhow::ensure!(plate_of.len() == n, "plate ids do not match rows");
        let mut rows_of: Vec<Vec<usize>> = vec![Vec::new(); n_plates];
        for (i, &p) in plate_of.iter().enumerate() {
            anyhow::ensure!((p as usize) < n_plates, "row {i}: plate id out of range");
            rows_of[p as usize].push(i);
        }
        // Reference rows per plate.
        let mut plates_without_controls = Vec::new();
        let refs: Vec<Vec<usize>> = rows_of
            .iter()
            .enumerate()
            .map(|(p, rows)| match controls {
                Some(mask) => {
                    let c: Vec<usize> = rows.iter().copied().filter(|&i| mask[i]).collect();
                    if c.len() >= MIN_CONTROLS_PER_PLATE {
                        c
                    } else {
                        if !rows.is_empty() {
                            plates_without_controls.push(p);
                        }
                        rows.clone()
                    }
                }
                None => rows.clone(),
            })
            .collect();
        let all_refs: Vec<usize> = {
            let mut v: Vec<usize> = refs.iter().flatten().copied().collect();
            v.sort_unstable();
            v
        };
        // Pass 1, per feature: plate centres, the global centre, and each
        // batch's raw log-gain log(MAD_controls(batch) / MAD_controls(all)).
        let gain_batches: Option<(&[u32], usize, &[bool])> = match (batch, controls) {
            (Some(g), Some(mask)) if g.n_batches >= 1 => {
                anyhow::ensure!(g.batch_of.len() == n, "batch ids do not match rows");
                Some((g.batch_of, g.n_batches, mask))
            }
            _ => None,
        };
        let n_gain = gain_batches.map_or(0, |g| g.1);
        let shrinkage = batch.map_or(1.0, |g| g.shrinkage);
        let ctrl_rows_of: Vec<Vec<usize>> = match gain_batches {
            Some((b, nb, mask)) => {
                let mut v = vec![Vec::new(); nb];
                for i in (0..n).filter(|&i| mask[i]) {
                    anyhow::ensure!((b[i] as usize) < nb, "row {i}: batch id out of range");
                    v[b[i] as usize].push(i);
                }
                v
            }
            None => Vec::new(),
        };
        let pass1: Vec<(Vec<f64>, f64, Vec<f64>, f64)> = (0..d)
            .into_par_iter()
            .map(|f| {
                let col = x.column(f);
                let centres: Vec<f64> = refs
                    .iter()
                    .map(|r| {
                        let mut v: Vec<f64> = r.iter().map(|&i| col[i]).collect();
                        median_inplace(&mut v)
                    })
                    .collect();
                let mut g: Vec<f64> = all_refs.iter().map(|&i| col[i]).collect();
                let global = median_inplace(&mut g);
                let resid = |i: usize| (col[i] - centres[plate_of[i] as usize]).abs();
                let mut log_gain = vec![f64::NAN; n_gain];
                let mut pooled = 0.0;
                if n_gain > 0 {
                    let mut all: Vec<f64> =
                        ctrl_rows_of.iter().flatten().map(|&i| resid(i)).collect();
                    pooled = median_inplace(&mut all);
                    let usable = pooled.is_finite() && pooled > 0.0;
                    for (b, rows) in ctrl_rows_of.iter().enumerate() {
                        if rows.len() < MIN_GAIN_CONTROLS || !usable {
                            continue;
                        }
                        let mut v: Vec<f64> = rows.iter().map(|&i| resid(i)).collect();
                        let mad = median_inplace(&mut v);
                        if mad > 0.0 && mad.is_finite() {
                            log_gain[b] = (mad / pooled).ln();
                        }
                    }
                }
                (centres, global, log_gain, pooled)
            })
            .collect();
        // Empirical-Bayes shrinkage of each batch's log-gains.
        let mut batch_gain = Array2::<f64>::ones((n_gain, d));
        let mut gain_shrink = vec![0.0; n_gain];
        for (b, rows) in ctrl_rows_of.iter().enumerate() {
            let lr: Vec<f64> = pass1.iter().map(|p| p.2[b]).collect();
            let (g, shrink) = shrunk_gains(&lr, rows.len(), shrinkage);
            gain_shrink[b] = shrink;
            for (f, v) in g.into_iter().enumerate() {
                batch_gain[[b, f]] = v;
            }
        }
        let batch_of = gain_batches.map(|g| g.0);
        // Pass 2, per feature: the pooled scale, the MAD of all rows after
        // plate centring and batch gains (not only the controls): control-only
        // MADs are small, which blows treated wells' strong phenotypes up to
        // the clip and lets a few features dominate every distance (measured
        // on BBBC021, docs/ablation.md).
        let scales: Vec<f64> = pass1
            .par_iter()
            .enumerate()
            .map(|(f, (centres, global, _, _))| {
                let col = x.column(f);
                let mut resid: Vec<f64> = (0..col.len())
                    .map(|i| {
                        let g = batch_of.map_or(1.0, |b| batch_gain[[b[i] as usize, f]]);
                        (col[i] - centres[plate_of[i] as usize]).abs() / g
                    })
                    .collect();
                let mad = median_inplace(&mut resid) * MAD_K;
                let tol = 1e-12 * global.abs().max(1e-300);
                if mad.is_finite() && mad > tol {
                    mad
                } else {
                    0.0
                }
            })
            .collect();
        let mut plate_centre = Array2::zeros((n_plates, d));
        let mut global_centre = Array1::zeros(d);
        let scale = Array1::from(scales);
        let mut control_mad = Array1::zeros(if n_gain > 0 { d } else { 0 });
        for (f, (c, g, _, pooled)) in pass1.into_iter().enumerate() {
            for (p, v) in c.into_iter().enumerate() {
                plate_centre[[p, f]] = v;
            }
            global_centre[f] = g;
            if n_gain > 0 {
                control_mad[f] = pooled;
            }
        }
        Ok(Normalizer {
            plate_centre,
            global_centre,
            scale,
            batch_gain,
            gain_shrink,
            control_mad,
            plates_without_controls,
        })
    }

    /// The `control_gain` QC figure of each plate (see
    /// [`control_gain_figure`]): its control rows against the pooled control
    /// MAD. `None` for every plate when batch scaling was off, and for
    /// plates with fewer than [`MIN_GAIN_CONTROLS`] controls.
    pub fn plate_control_gains(
        &self,
        x: ArrayView2<f64>,
        plate_of: &[u32],
        controls: Option<&[bool]>,
    ) -> Vec<Option<f64>> {
        let n_plates = self.plate_centre.nrows();
        let (Some(mask), false) = (controls, self.control_mad.is_empty()) else {
            return vec![None; n_plates];
        };
        let mut ctrl_of: Vec<Vec<usize>> = vec![Vec::new(); n_plates];
        for (i, &p) in plate_of.iter().enumerate() {
            if mask.get(i) == Some(&true) && (p as usize) < n_plates {
                ctrl_of[p as usize].push(i);
            }
        }
        let features = self.varying_features();
        let mad = self.control_mad.to_vec();
        ctrl_of
            .par_iter()
            .enumerate()
            .map(|(p, ctrl)| {
                if ctrl.len() < MIN_GAIN_CONTROLS {
                    return None;
                }
                let centre: Vec<f64> = features
                    .iter()
                    .map(|&f| self.plate_centre[[p, f]])
                    .collect();
                control_gain_figure(&control_log_gains(x, ctrl, &features, &centre, &mad))
            })
            .collect()
    }

    /// Gain of feature `f` for a row of batch `b` (1 without batch scaling).
    pub fn gain(&self, b: Option<u32>, f: usize) -> f64 {
        match b {
            Some(b) if (b as usize) < self.batch_gain.nrows() => self.batch_gain[[b as usize, f]],
            _ => 1.0,
        }
    }

    /// Indices of the features with a non-zero robust scale.
    pub fn varying_features(&self) -> Vec<usize> {
        (0..self.scale.len())
            .filter(|&f| self.scale[f] > 0.0)
            .collect()
    }

    /// Robust z-scores of the varying features: n x |varying|. `batch_of`
    /// applies the batch gains (the ids [`Normalizer::fit`] was given).
    pub fn normalise(
        &self,
        x: ArrayView2<f64>,
        plate_of: &[u32],
        batch_of: Option<&[u32]>,
        varying: &[usize],
    ) -> Array2<f64> {
        let mut z = Array2::zeros((x.nrows(), varying.len()));
        z.axis_iter_mut(Axis(0))
            .into_par_iter()
            .enumerate()
            .for_each(|(i, mut row)| {
                let p = plate_of[i] as usize;
                let b = batch_of.map(|b| b[i]);
                for (j, &f) in varying.iter().enumerate() {
                    row[j] =
                        (x[[i, f]] - self.plate_centre[[p, f]]) / (self.scale[f] * self.gain(b, f));
                }
            });
        z
    }

    /// [`Normalizer::normalise`] in the memory of `x` when every feature
    /// varies (`x` is then `z`): the same values, one array fewer. Rows
    /// are independent, so each is rewritten from its own values.
    pub fn normalise_in_place(
        &self,
        x: &mut Array2<f64>,
        plate_of: &[u32],
        batch_of: Option<&[u32]>,
    ) {
        x.axis_iter_mut(Axis(0))
            .into_par_iter()
            .enumerate()
            .for_each(|(i, mut row)| {
                let p = plate_of[i] as usize;
                let b = batch_of.map(|b| b[i]);
                for (f, v) in row.iter_mut().enumerate() {
                    *v = (*v - self.plate_centre[[p, f]]) / (self.scale[f] * self.gain(b, f));
                }
            });
    }

    /// [`Normalizer::denormalise`] in the memory of `z` when every feature
    /// varies (`z` is then the corrected values).
    pub fn denormalise_in_place(&self, z: &mut Array2<f64>) {
        z.axis_iter_mut(Axis(0))
            .into_par_iter()
            .for_each(|mut row| {
                for (f, v) in row.iter_mut().enumerate() {
                    *v = *v * self.scale[f] + self.global_centre[f];
                }
            });
    }

    /// Map corrected z-scores of the varying features back to input units
    /// (one global affine map per feature), writing into `out` (n x d).
    pub fn denormalise(&self, z: ArrayView2<f64>, varying: &[usize], out: &mut Array2<f64>) {
        out.axis_iter_mut(Axis(0))
            .into_par_iter()
            .enumerate()
            .for_each(|(i, mut row)| {
                for (j, &f) in varying.iter().enumerate() {
                    row[f] = z[[i, j]] * self.scale[f] + self.global_centre[f];
                }
            });
    }
}

/// Gains from raw log-gains `lg_f = log(MAD_controls(group) / MAD_controls(all))`
/// per feature (non-finite = not measured: gain 1) of a group with
/// `n_controls` control rows. Each is shrunk towards the group's mean
/// log-gain `m` by the empirical-Bayes (James-Stein) factor
/// `s = max(0, var(lg) - v) / var(lg)`, `v = shrinkage * 1.36 / n_controls`:
/// `1.36 / n` is the sampling variance of the log-MAD of `n` Gaussian
/// values, and `shrinkage` weighs it (1 = James-Stein as derived, 0 = the
/// raw gains; the default 0.5 was measured, docs/ablation.md). Then
/// `gain_f = exp(m + s (lg_f - m))`. Returns the gains and `s` (gain 1 and
/// `s = 0` with fewer than [`MIN_GAIN_CONTROLS`] controls).
pub fn shrunk_gains(log_gains: &[f64], n_controls: usize, shrinkage: f64) -> (Vec<f64>, f64) {
    let finite: Vec<f64> = log_gains
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .collect();
    if n_controls < MIN_GAIN_CONTROLS || finite.len() < 2 {
        return (vec![1.0; log_gains.len()], 0.0);
    }
    // The group's overall gain (mean over hundreds of features) is kept;
    // each feature's deviation from it is shrunk.
    let centre = finite.iter().sum::<f64>() / finite.len() as f64;
    let spread = finite
        .iter()
        .map(|v| (v - centre) * (v - centre))
        .sum::<f64>()
        / finite.len() as f64;
    let noise = shrinkage * LOG_MAD_VAR / n_controls as f64;
    let signal = (spread - noise).max(0.0);
    let shrink = if signal > 0.0 {
        signal / (signal + noise)
    } else {
        0.0
    };
    let gains = log_gains
        .iter()
        .map(|&v| {
            if v.is_finite() {
                (centre + shrink * (v - centre)).exp()
            } else {
                1.0
            }
        })
        .collect();
    (gains, shrink)
}

/// Raw log-gains of one group of control rows (`ctrl`, row ids of `x`) for
/// the features `features`: `log(median |x_if - centre_f| / control_mad_f)`,
/// `centre[t]` the group's centre of `features[t]`; NaN where undefined.
pub fn control_log_gains(
    x: ArrayView2<f64>,
    ctrl: &[usize],
    features: &[usize],
    centre: &[f64],
    control_mad: &[f64],
) -> Vec<f64> {
    features
        .iter()
        .zip(centre)
        .map(|(&f, &c)| {
            let mut r: Vec<f64> = ctrl.iter().map(|&i| (x[[i, f]] - c).abs()).collect();
            let m = median_inplace(&mut r);
            match control_mad.get(f) {
                Some(&pooled) if pooled > 0.0 && m > 0.0 => (m / pooled).ln(),
                _ => f64::NAN,
            }
        })
        .collect()
}

/// The QC figure `control_gain` of a plate from its raw log-gains:
/// `exp(|mean log-gain|)`, the geometric-mean factor by which its controls
/// are more (or less) spread than the reference's (1 = same; 8 = eight times
/// brighter or dimmer). `None` without a finite log-gain.
pub fn control_gain_figure(log_gains: &[f64]) -> Option<f64> {
    let f: Vec<f64> = log_gains
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .collect();
    (!f.is_empty()).then(|| (f.iter().sum::<f64>() / f.len() as f64).abs().exp())
}

/// Clip a working copy to +-[`CLIP`].
pub fn clipped(z: &Array2<f64>) -> Array2<f64> {
    ndarray::Zip::from(z).par_map_collect(|&v| v.clamp(-CLIP, CLIP))
}

/// The rows `rows` of `z`, clipped to +-[`CLIP`]: the same values as
/// `clipped(z).select(Axis(0), rows)` without clipping every row.
pub fn clipped_rows(z: &Array2<f64>, rows: &[usize]) -> Array2<f64> {
    let mut w = z.select(Axis(0), rows);
    w.par_mapv_inplace(|v| v.clamp(-CLIP, CLIP));
    w
}

/// Map string labels to dense ids in sorted name order (so ids do not depend
/// on row order); returns the ids and the sorted distinct names.
pub fn dense_ids(labels: &[String]) -> (Vec<u32>, Vec<String>) {
    // The distinct names first (not a sorted copy of every label: at 1M
    // rows that was 1M short strings allocated and freed).
    let distinct: std::collections::HashSet<&str> = labels.iter().map(String::as_str).collect();
    let mut names: Vec<String> = distinct.into_iter().map(str::to_string).collect();
    names.sort_unstable();
    let map: std::collections::HashMap<&str, u32> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i as u32))
        .collect();
    let ids = labels.iter().map(|l| map[l.as_str()]).collect();
    (ids, names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn median_even_odd() {
        assert_eq!(median_inplace(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median_inplace(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median_inplace(&mut []), 0.0);
    }

    #[test]
    fn plate_centring_on_controls_and_constant_features() {
        // Two plates; plate 1 is plate 0 shifted by +10 in feature 0.
        let x = array![
            [1.0, 5.0, 7.0],
            [2.0, 6.0, 7.0],
            [3.0, 4.0, 7.0],
            [100.0, 5.0, 7.0],
            [11.0, 5.0, 7.0],
            [12.0, 6.0, 7.0],
            [13.0, 4.0, 7.0],
            [110.0, 5.0, 7.0],
        ];
        let plate = [0, 0, 0, 0, 1, 1, 1, 1];
        let ctrl = [true, true, true, false, true, true, true, false];
        let nz = Normalizer::fit(x.view(), &plate, 2, Some(&ctrl), None).unwrap();
        assert_eq!(nz.plate_centre[[0, 0]], 2.0);
        assert_eq!(nz.plate_centre[[1, 0]], 12.0);
        assert_eq!(nz.scale[2], 0.0, "constant feature detected");
        let varying = nz.varying_features();
        assert_eq!(varying, vec![0, 1]);
        let z = nz.normalise(x.view(), &plate, None, &varying);
        // The treated wells line up after plate centring.
        assert!((z[[3, 0]] - z[[7, 0]]).abs() < 1e-12);
        assert!((z[[0, 0]] - z[[4, 0]]).abs() < 1e-12);
        // Round trip back to input units: global affine map.
        let mut out = x.clone();
        nz.denormalise(z.view(), &varying, &mut out);
        assert!((out[[0, 0]] - (z[[0, 0]] * nz.scale[0] + nz.global_centre[0])).abs() < 1e-12);
        assert_eq!(out[[0, 2]], 7.0);
    }

    #[test]
    fn too_few_controls_falls_back_to_all_rows() {
        let x = array![[1.0], [2.0], [3.0], [4.0]];
        let nz = Normalizer::fit(
            x.view(),
            &[0, 0, 0, 0],
            1,
            Some(&[true, false, false, false]),
            None,
        )
        .unwrap();
        assert_eq!(nz.plates_without_controls, vec![0]);
        assert_eq!(nz.plate_centre[[0, 0]], 2.5);
    }

    fn groups(batch_of: &[u32], shrinkage: f64) -> GainGroups<'_> {
        GainGroups {
            batch_of,
            n_batches: 2,
            shrinkage,
        }
    }

    /// Two batches of 4 plates x 150 controls + 10 treated rows; batch 1's
    /// features are batch 0's scaled by `gain` (per feature).
    fn gained(gain: &[f64], seed: u64) -> (Array2<f64>, Vec<u32>, Vec<u32>, Vec<bool>) {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let d = gain.len();
        let (mut rows, mut plate, mut batch, mut ctrl) = (Vec::new(), vec![], vec![], vec![]);
        for b in 0..2u32 {
            for p in 0..4u32 {
                for r in 0..160 {
                    let treated = r >= 150;
                    for (f, g) in gain.iter().enumerate() {
                        let base: f64 =
                            rng.gen_range(-1.0..1.0) + if treated { 3.0 + f as f64 } else { 0.0 };
                        rows.push(if b == 1 { base * g } else { base });
                    }
                    plate.push(b * 4 + p);
                    batch.push(b);
                    ctrl.push(!treated);
                }
            }
        }
        let n = plate.len();
        (
            Array2::from_shape_vec((n, d), rows).unwrap(),
            plate,
            batch,
            ctrl,
        )
    }

    #[test]
    fn batch_gains_are_measured_on_controls_and_removed() {
        // Strong per-feature gains: the shrinkage keeps almost all of them.
        let gain = [2.0, 0.5, 1.5, 0.7, 1.0, 3.0];
        let (x, plate, batch, ctrl) = gained(&gain, 1);
        let nz =
            Normalizer::fit(x.view(), &plate, 8, Some(&ctrl), Some(groups(&batch, 1.0))).unwrap();
        assert!(
            nz.gain_shrink.iter().all(|&s| s > 0.8),
            "shrink {:?}",
            nz.gain_shrink
        );
        for (f, g) in gain.iter().enumerate() {
            let ratio = nz.batch_gain[[1, f]] / nz.batch_gain[[0, f]];
            assert!(
                (ratio / g - 1.0).abs() < 0.25,
                "feature {f}: ratio {ratio} vs gain {g}"
            );
        }
        // After normalisation the treated rows of both batches coincide in
        // the mean (the gain also scaled their phenotype).
        let v = nz.varying_features();
        let z = nz.normalise(x.view(), &plate, Some(&batch), &v);
        for f in 0..gain.len() {
            let mean = |b: u32| {
                let r: Vec<f64> = (0..z.nrows())
                    .filter(|&i| batch[i] == b && !ctrl[i])
                    .map(|i| z[[i, f]])
                    .collect();
                r.iter().sum::<f64>() / r.len() as f64
            };
            let (m0, m1) = (mean(0), mean(1));
            assert!((m1 / m0 - 1.0).abs() < 0.25, "feature {f}: {m0} vs {m1}");
        }
        // Without batch ids nothing is rescaled.
        let plain = Normalizer::fit(x.view(), &plate, 8, Some(&ctrl), None).unwrap();
        assert_eq!(plain.batch_gain.nrows(), 0);
        assert_eq!(plain.gain(Some(1), 0), 1.0);
    }

    #[test]
    fn no_gain_difference_shrinks_to_one() {
        // Same distribution in both batches: the log-gains are sampling
        // noise, and empirical Bayes shrinks them to (nearly) nothing.
        let (x, plate, batch, ctrl) = gained(&[1.0; 40], 2);
        let nz =
            Normalizer::fit(x.view(), &plate, 8, Some(&ctrl), Some(groups(&batch, 1.0))).unwrap();
        for b in 0..2 {
            assert!(
                nz.gain_shrink[b] < 0.5,
                "batch {b}: shrink {}",
                nz.gain_shrink[b]
            );
            for f in 0..40 {
                let g = nz.batch_gain[[b, f]];
                assert!((g - 1.0).abs() < 0.1, "batch {b} feature {f}: gain {g}");
            }
        }
    }

    #[test]
    fn too_few_controls_keep_gain_one() {
        let (x, plate, batch, mut ctrl) = gained(&[2.0, 0.5], 3);
        // Batch 1 keeps only 7 controls.
        let mut kept = 0;
        for i in 0..ctrl.len() {
            if batch[i] == 1 && ctrl[i] {
                kept += 1;
                ctrl[i] = kept <= 7;
            }
        }
        let nz =
            Normalizer::fit(x.view(), &plate, 8, Some(&ctrl), Some(groups(&batch, 1.0))).unwrap();
        assert_eq!(nz.batch_gain[[1, 0]], 1.0);
        assert_eq!(nz.batch_gain[[1, 1]], 1.0);
    }

    #[test]
    fn shrinkage_and_gain_figure_by_hand() {
        let lg = [0.1, -0.1, 0.3, f64::NAN];
        let (g, s) = shrunk_gains(&lg, 100, 1.0);
        let (mean, var) = (0.1, (0.0 + 0.04 + 0.04) / 3.0);
        let want_s = (var - 1.36 / 100.0) / var;
        assert!((s - want_s).abs() < 1e-12, "{s} vs {want_s}");
        for (gi, li) in g.iter().zip(&lg[..3]) {
            let want = (mean + want_s * (li - mean)).exp();
            assert!((gi - want).abs() < 1e-12);
        }
        assert_eq!(g[3], 1.0, "unmeasured feature keeps gain 1");
        // Spread below the sampling noise: every feature gets the mean gain.
        let (g, s) = shrunk_gains(&[0.51, 0.49, 0.5], 10, 1.0);
        assert_eq!(s, 0.0);
        assert!(g.iter().all(|v| (v - 0.5f64.exp()).abs() < 1e-12));
        // Too few controls: gain 1.
        assert_eq!(
            shrunk_gains(&[1.0, 2.0], MIN_GAIN_CONTROLS - 1, 1.0).0,
            vec![1.0, 1.0]
        );
        // The QC figure folds brighter and dimmer alike.
        let eight = 8f64.ln();
        assert!((control_gain_figure(&[eight, eight]).unwrap() - 8.0).abs() < 1e-12);
        assert!((control_gain_figure(&[-eight, f64::NAN]).unwrap() - 8.0).abs() < 1e-12);
        assert_eq!(control_gain_figure(&[f64::NAN]), None);
    }

    #[test]
    fn shrinkage_weight_runs_from_raw_gains_to_james_stein() {
        let lg = [0.4, -0.2, 0.1, 0.3, f64::NAN];
        let (mean, var) = (0.15, (0.0625 + 0.1225 + 0.0025 + 0.0225) / 4.0);
        // Weight 0: no noise assumed, the raw gains come back.
        let (g, s) = shrunk_gains(&lg, 20, 0.0);
        assert_eq!(s, 1.0);
        for (gi, li) in g.iter().zip(&lg[..4]) {
            assert!((gi - li.exp()).abs() < 1e-12);
        }
        // Weight 0.5 by hand.
        let (g, s) = shrunk_gains(&lg, 20, 0.5);
        let want_s = (var - 0.5 * 1.36 / 20.0) / var;
        assert!((s - want_s).abs() < 1e-12, "{s} vs {want_s}");
        for (gi, li) in g.iter().zip(&lg[..4]) {
            assert!((gi - (mean + want_s * (li - mean)).exp()).abs() < 1e-12);
        }
        // More weight never shrinks less, and every gain stays between the
        // batch's mean gain and its raw gain.
        let mut last = f64::INFINITY;
        for w in [0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 100.0] {
            let (g, s) = shrunk_gains(&lg, 20, w);
            assert!((0.0..=1.0).contains(&s) && s <= last, "weight {w}: {s}");
            last = s;
            for (gi, li) in g.iter().zip(&lg[..4]) {
                let (lo, hi) = if *li < mean { (*li, mean) } else { (mean, *li) };
                assert!(gi.ln() >= lo - 1e-12 && gi.ln() <= hi + 1e-12);
            }
        }
        assert_eq!(
            last, 0.0,
            "overwhelming noise: every feature gets the mean gain"
        );
    }

    #[test]
    fn dense_ids_sorted() {
        let l: Vec<String> = ["b", "a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let (ids, names) = dense_ids(&l);
        assert_eq!(ids, vec![1, 0, 1, 2]);
        assert_eq!(names, vec!["a", "b", "c"]);
    }
}
