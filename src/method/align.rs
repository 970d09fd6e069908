//! The alignment read-out: local offset removal from the sampled affinity.
//!
//! Each landmark `l` has a sparse row with entries in every batch. Its
//! batch-wise kernel means `mu_l^(c) = sum_{j in c} A_lj z_j / sum_{j in c}
//! A_lj` say where batch `c` sits around `l`; their average over the batches
//! present is the consensus `mu_l`, and `delta_l^(c) = mu_l^(c) - mu_l` is
//! batch c's local offset there. A point `j` of batch `c` moves by the
//! affinity-weighted average of `delta_l^(c)` over the landmarks whose rows
//! retained it — a smooth, locally varying batch centring (Harmony-like,
//! but driven by the batch-aware kernel). Points no landmark retained
//! borrow the average offset of their nearest covered neighbours in their
//! own batch.
//!
//! Offsets are computed in the (normalised) feature space, so the output
//! keeps every input feature, not just the neighbour-space dimensions.

use std::ops::Range;

use anyhow::Result;
use ndarray::{Array2, ArrayView2, Axis};
use rayon::prelude::*;

use crate::method::rows::RowSource;
use crate::method::sampling::SparseRow;

/// The space offsets are computed in: row `j`'s vector and batch.
pub trait Features: Sync {
    /// Dimensions.
    fn dims(&self) -> usize;
    /// Row `j`'s batch id.
    fn batch(&self, j: usize) -> u32;
    /// `acc += a * row_j`.
    fn accumulate(&self, j: usize, a: f64, acc: &mut [f64]);
}

/// Dense f64 features (the offline fit's normalised feature space).
pub struct DenseFeatures<'a> {
    /// n x d values.
    pub z: ArrayView2<'a, f64>,
    /// Batch id of each row.
    pub batch_of: &'a [u32],
}

impl Features for DenseFeatures<'_> {
    fn dims(&self) -> usize {
        self.z.ncols()
    }
    fn batch(&self, j: usize) -> u32 {
        self.batch_of[j]
    }
    fn accumulate(&self, j: usize, a: f64, acc: &mut [f64]) {
        for (o, v) in acc.iter_mut().zip(self.z.row(j).iter()) {
            *o += a * v;
        }
    }
}

/// Neighbour-space rows as features (the daemon corrects in that space).
pub struct RowFeatures<'a, R: RowSource + ?Sized>(pub &'a R);

impl<R: RowSource + ?Sized> Features for RowFeatures<'_, R> {
    fn dims(&self) -> usize {
        self.0.dims()
    }
    fn batch(&self, j: usize) -> u32 {
        self.0.batch(j)
    }
    fn accumulate(&self, j: usize, a: f64, acc: &mut [f64]) {
        for (o, v) in acc.iter_mut().zip(self.0.row(j).iter()) {
            *o += a * *v as f64;
        }
    }
}

/// Per-point offsets and how they were obtained.
#[derive(Debug, Clone)]
pub struct Offsets {
    /// n x d offsets to subtract.
    pub values: Array2<f64>,
    /// Points with no covering landmark (offset borrowed from neighbours).
    pub uncovered: usize,
}

/// `delta_l^(c)` for every landmark (row-major `L x B x d`, f32).
///
/// `frozen_consensus_of`: when set to batch `x`, the consensus is the mean
/// of the *other* batches present (if any), so `x` moves all the way to
/// rows that are already aligned and will not move (the daemon's plate in
/// flight against published rows).
pub(crate) fn landmark_deltas(
    z: &dyn Features,
    n_batches: usize,
    rows: &[SparseRow],
    frozen_consensus_of: Option<u32>,
) -> Vec<f32> {
    let d = z.dims();
    let mut out = vec![0f32; rows.len() * n_batches * d];
    out.par_chunks_mut(n_batches * d)
        .zip(rows.par_iter())
        .for_each(|(slot, row)| {
            let mut sums = vec![0f64; n_batches * d];
            let mut mass = vec![0f64; n_batches];
            for &(j, a) in &row.entries {
                let c = z.batch(j as usize) as usize;
                mass[c] += a as f64;
                z.accumulate(j as usize, a as f64, &mut sums[c * d..(c + 1) * d]);
            }
            let present: Vec<usize> = (0..n_batches).filter(|&c| mass[c] > 0.0).collect();
            if present.len() < 2 {
                return; // one batch around this landmark: nothing to align
            }
            let own = z.batch(row.landmark as usize) as usize;
            let trust = |c: usize| -> f64 {
                if c == own {
                    1.0
                } else {
                    row.trust.get(c).map_or(1.0, |&t| t as f64)
                }
            };
            let mut consensus = vec![0f64; d];
            let mut np = 0.0;
            for &c in &present {
                for t in 0..d {
                    sums[c * d + t] /= mass[c];
                }
                if frozen_consensus_of != Some(c as u32) {
                    let w = trust(c);
                    np += w;
                    for t in 0..d {
                        consensus[t] += w * sums[c * d + t];
                    }
                }
            }
            if np <= 0.0 {
                return;
            }
            for t in consensus.iter_mut() {
                *t /= np;
            }
            for &c in &present {
                let w = trust(c);
                for t in 0..d {
                    slot[c * d + t] = (w * (sums[c * d + t] - consensus[t])) as f32;
                }
            }
        });
    out
}

/// Offsets of the rows `targets` (row ids; output row `t` is id
/// `targets.start + t`) from the landmark deltas. `own_batch_neighbors(j)`
/// returns j's nearest rows in its own batch (nearest first) and is used
/// only for targets no landmark retained; only covered targets lend.
pub fn point_offsets(
    z: &dyn Features,
    n_batches: usize,
    rows: &[SparseRow],
    targets: Range<usize>,
    frozen_consensus_of: Option<u32>,
    own_batch_neighbors: &(dyn Fn(usize) -> Result<Vec<u32>> + Sync),
) -> Result<Offsets> {
    let d = z.dims();
    let n = targets.len();
    let start = targets.start;
    let deltas = landmark_deltas(z, n_batches, rows, frozen_consensus_of);
    let slot = |j: u32| (j as usize).checked_sub(start).filter(|&t| t < n);
    // Transpose the sampled rows: for each target, (landmark index, A).
    let mut counts = vec![0usize; n + 1];
    for r in rows {
        for &(j, _) in &r.entries {
            if let Some(t) = slot(j) {
                counts[t + 1] += 1;
            }
        }
    }
    for j in 0..n {
        counts[j + 1] += counts[j];
    }
    let mut fill = counts.clone();
    let mut cols = vec![(0u32, 0f32); counts[n]];
    for (li, r) in rows.iter().enumerate() {
        for &(j, a) in &r.entries {
            if let Some(t) = slot(j) {
                cols[fill[t]] = (li as u32, a);
                fill[t] += 1;
            }
        }
    }
    let mut values = Array2::<f64>::zeros((n, d));
    let covered: Vec<bool> = values
        .axis_iter_mut(Axis(0))
        .into_par_iter()
        .enumerate()
        .map(|(t, mut out)| {
            let c = z.batch(start + t) as usize;
            let entries = &cols[counts[t]..counts[t + 1]];
            let mut w = 0f64;
            for &(li, a) in entries {
                let base = (li as usize * n_batches + c) * d;
                let delta = &deltas[base..base + d];
                for (o, v) in out.iter_mut().zip(delta) {
                    *o += a as f64 * *v as f64;
                }
                w += a as f64;
            }
            if w > 0.0 {
                out.mapv_inplace(|v| v / w);
                true
            } else {
                false
            }
        })
        .collect();
    let uncovered: Vec<usize> = (0..n).filter(|&t| !covered[t]).collect();
    let borrowed: Vec<(usize, Vec<f64>)> = uncovered
        .par_iter()
        .map(|&t| {
            let nb = own_batch_neighbors(start + t)?;
            let mut acc = vec![0f64; d];
            let mut cnt = 0usize;
            for q in nb.iter().filter_map(|&q| slot(q)) {
                if covered[q] {
                    for (a, v) in acc.iter_mut().zip(values.row(q)) {
                        *a += v;
                    }
                    cnt += 1;
                }
            }
            if cnt > 0 {
                for a in acc.iter_mut() {
                    *a /= cnt as f64;
                }
            }
            Ok((t, acc))
        })
        .collect::<Result<_>>()?;
    for (j, acc) in borrowed {
        for (o, v) in values.row_mut(j).iter_mut().zip(acc) {
            *o = v;
        }
    }
    Ok(Offsets {
        values,
        uncovered: uncovered.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn two_batches_meet_at_the_consensus() {
        // Landmark 0 (batch 0) sees points 0,1 (batch 0, around 0) and 2,3
        // (batch 1, around 10) with equal weights.
        let z = array![[-1.0], [1.0], [9.0], [11.0]];
        let b = [0, 0, 1, 1];
        let rows = vec![SparseRow {
            landmark: 0,
            entries: vec![(0, 1.0), (1, 1.0), (2, 1.0), (3, 1.0)],
            trust: vec![],
        }];
        let f = DenseFeatures {
            z: z.view(),
            batch_of: &b,
        };
        let deltas = landmark_deltas(&f, 2, &rows, None);
        // Batch 1 moving to a frozen batch 0: delta of batch 1 is the full gap.
        assert_eq!(landmark_deltas(&f, 2, &rows, Some(1)), vec![0.0, 10.0]);
        assert_eq!(deltas, vec![-5.0, 5.0]);
        let off = point_offsets(&f, 2, &rows, 0..4, None, &|_| Ok(vec![])).unwrap();
        let corrected = &z - &off.values;
        assert_eq!(corrected, array![[4.0], [6.0], [4.0], [6.0]]);
        assert_eq!(off.uncovered, 0);
    }

    #[test]
    fn single_batch_landmark_gives_no_offset_and_uncovered_borrow() {
        let z = array![[0.0], [1.0], [5.0], [6.0], [100.0]];
        let b = [0, 0, 1, 1, 1];
        let rows = vec![
            SparseRow {
                landmark: 0,
                entries: vec![(0, 1.0), (1, 0.5)],
                trust: vec![],
            },
            SparseRow {
                landmark: 2,
                entries: vec![(0, 0.5), (2, 1.0), (3, 1.0)],
                trust: vec![],
            },
        ];
        let f = DenseFeatures {
            z: z.view(),
            batch_of: &b,
        };
        let off = point_offsets(&f, 2, &rows, 0..5, None, &|j| {
            Ok(if j == 4 { vec![4, 3, 2] } else { vec![] })
        })
        .unwrap();
        assert_eq!(off.uncovered, 1);
        // Point 4 borrows the mean offset of its covered neighbours 3 and 2.
        let want = 0.5 * (off.values[[3, 0]] + off.values[[2, 0]]);
        assert!((off.values[[4, 0]] - want).abs() < 1e-12);
        // Landmark 0's row is single-batch: contributes zero delta.
        assert!(off.values[[1, 0]].abs() < 1e-12);
        // A target range: only rows 2..5, indexed from 0.
        let part = point_offsets(&f, 2, &rows, 2..5, None, &|j| {
            Ok(if j == 4 { vec![4, 3, 2] } else { vec![] })
        })
        .unwrap();
        assert_eq!(part.values.nrows(), 3);
        for t in 0..3 {
            assert!((part.values[[t, 0]] - off.values[[t + 2, 0]]).abs() < 1e-12);
        }
    }
}
