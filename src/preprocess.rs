//! Preprocessing: per-plate robust normalisation (pycytominer/JUMP style).
//!
//! For every plate, each feature is centred at the median of the plate's
//! *reference rows* — its negative controls when a control selector is given
//! and the plate has at least [`MIN_CONTROLS_PER_PLATE`] of them, otherwise
//! all of its rows. Each feature is then divided by one robust scale, the
//! MAD (x 1.4826) of the centred reference rows pooled over all plates:
//! per-plate MADs of a handful of control wells are too noisy to divide by.
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
/// Clip of the working copy, in robust-z units.
pub const CLIP: f64 = 50.0;
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

impl Normalizer {
    /// Fit on `x` (n x d). `plate_of[i]` is row i's plate (0..n_plates);
    /// `controls` marks negative-control rows, if a selector was given.
    pub fn fit(
        x: ArrayView2<f64>,
        plate_of: &[u32],
        n_plates: usize,
        controls: Option<&[bool]>,
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
        let per_feature: Vec<(Vec<f64>, f64, f64)> = (0..d)
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
                // Scale: MAD of all rows after plate centring (not only the
                // controls): control-only MADs are small, which blows treated
                // wells' strong phenotypes up to the clip and lets a few
                // features dominate every distance (measured on BBBC021,
                // docs/ablation.md).
                let mut resid: Vec<f64> = (0..col.len())
                    .map(|i| (col[i] - centres[plate_of[i] as usize]).abs())
                    .collect();
                let mad = median_inplace(&mut resid) * MAD_K;
                let tol = 1e-12 * global.abs().max(1e-300);
                let scale = if mad.is_finite() && mad > tol {
                    mad
                } else {
                    0.0
                };
                (centres, global, scale)
            })
            .collect();
        let mut plate_centre = Array2::zeros((n_plates, d));
        let mut global_centre = Array1::zeros(d);
        let mut scale = Array1::zeros(d);
        for (f, (c, g, s)) in per_feature.into_iter().enumerate() {
            for (p, v) in c.into_iter().enumerate() {
                plate_centre[[p, f]] = v;
            }
            global_centre[f] = g;
            scale[f] = s;
        }
        Ok(Normalizer {
            plate_centre,
            global_centre,
            scale,
            plates_without_controls,
        })
    }

    /// Indices of the features with a non-zero robust scale.
    pub fn varying_features(&self) -> Vec<usize> {
        (0..self.scale.len())
            .filter(|&f| self.scale[f] > 0.0)
            .collect()
    }

    /// Robust z-scores of the varying features: n x |varying|.
    pub fn normalise(
        &self,
        x: ArrayView2<f64>,
        plate_of: &[u32],
        varying: &[usize],
    ) -> Array2<f64> {
        let mut z = Array2::zeros((x.nrows(), varying.len()));
        z.axis_iter_mut(Axis(0))
            .into_par_iter()
            .enumerate()
            .for_each(|(i, mut row)| {
                let p = plate_of[i] as usize;
                for (j, &f) in varying.iter().enumerate() {
                    row[j] = (x[[i, f]] - self.plate_centre[[p, f]]) / self.scale[f];
                }
            });
        z
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

/// Clip a working copy to +-[`CLIP`].
pub fn clipped(z: &Array2<f64>) -> Array2<f64> {
    z.mapv(|v| v.clamp(-CLIP, CLIP))
}

/// Map string labels to dense ids in sorted name order (so ids do not depend
/// on row order); returns the ids and the sorted distinct names.
pub fn dense_ids(labels: &[String]) -> (Vec<u32>, Vec<String>) {
    let mut names: Vec<String> = labels.to_vec();
    names.sort_unstable();
    names.dedup();
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
        let nz = Normalizer::fit(x.view(), &plate, 2, Some(&ctrl)).unwrap();
        assert_eq!(nz.plate_centre[[0, 0]], 2.0);
        assert_eq!(nz.plate_centre[[1, 0]], 12.0);
        assert_eq!(nz.scale[2], 0.0, "constant feature detected");
        let varying = nz.varying_features();
        assert_eq!(varying, vec![0, 1]);
        let z = nz.normalise(x.view(), &plate, &varying);
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
        )
        .unwrap();
        assert_eq!(nz.plates_without_controls, vec![0]);
        assert_eq!(nz.plate_centre[[0, 0]], 2.5);
    }

    #[test]
    fn dense_ids_sorted() {
        let l: Vec<String> = ["b", "a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let (ids, names) = dense_ids(&l);
        assert_eq!(ids, vec![1, 0, 1, 2]);
        assert_eq!(names, vec!["a", "b", "c"]);
    }
}
