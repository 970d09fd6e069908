//! Quick before/after figures for the `balans correct` summary.
//!
//! These are deliberately simple nearest-neighbour figures, computed on at
//! most [`MAX_ROWS`] rows (a seeded sample) with exact search in PCA space,
//! so a user sees at a glance whether batches mixed and biology held. The
//! field's full metric set is `balans evaluate`.
//!
//! - `batch_mixing`: per row, the share of its k nearest neighbours from
//!   other batches divided by that share under perfect mixing
//!   (`1 - n_b / n`), capped at 1; averaged. 1 = mixed, 0 = segregated.
//! - `label_agreement`: share of the k nearest neighbours with the row's
//!   label.
//! - `cross_batch_label_agreement`: the same among the k nearest neighbours
//!   *from other batches* — retrieval across batches, the figure a batch
//!   correction must raise without collapsing labels.

use ndarray::{Array2, ArrayView2, Axis};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayon::prelude::*;
use serde::Serialize;

use crate::method::index::l2sq;
use crate::method::pca::Pca;

/// Rows used at most.
pub(crate) const MAX_ROWS: usize = 4000;
/// Neighbours per row.
pub(crate) const K: usize = 15;

/// The figures; label figures are `None` without labels.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MixingFigures {
    /// Rows evaluated.
    pub rows: usize,
    /// Batch mixing in [0, 1].
    pub batch_mixing: f64,
    /// Same-label share among nearest neighbours.
    pub label_agreement: Option<f64>,
    /// Same-label share among nearest other-batch neighbours.
    pub cross_batch_label_agreement: Option<f64>,
}

/// Compute the figures on the rows selected by `keep` (e.g. non-controls).
pub fn mixing_figures(
    z: ArrayView2<f64>,
    batch_of: &[u32],
    labels: Option<&[u32]>,
    keep: &[bool],
    seed: u64,
) -> Option<MixingFigures> {
    let rows = figure_rows(keep, seed)?;
    let sub = z.select(Axis(0), &rows);
    mixing_figures_of(sub.view(), &rows, batch_of, labels, seed)
}

/// The rows [`mixing_figures`] judges: those `keep` selects, at most
/// [`MAX_ROWS`] of them (a seeded sample), sorted; `None` when too few.
pub(crate) fn figure_rows(keep: &[bool], seed: u64) -> Option<Vec<usize>> {
    let mut rows: Vec<usize> = (0..keep.len()).filter(|&i| keep[i]).collect();
    if rows.len() < K + 2 {
        return None;
    }
    if rows.len() > MAX_ROWS {
        rows.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
        rows.truncate(MAX_ROWS);
        rows.sort_unstable();
    }
    Some(rows)
}

/// [`mixing_figures`] of the rows `rows` ([`figure_rows`]), given their
/// values `sub` (row t = table row `rows[t]`).
pub(crate) fn mixing_figures_of(
    sub: ArrayView2<f64>,
    rows: &[usize],
    batch_of: &[u32],
    labels: Option<&[u32]>,
    seed: u64,
) -> Option<MixingFigures> {
    let pca = Pca::fit(sub.view(), 50, seed).ok()?;
    let y: Array2<f32> = pca.transform_f32(sub.view());
    let n = rows.len();
    let b: Vec<u32> = rows.iter().map(|&i| batch_of[i]).collect();
    let l: Option<Vec<u32>> = labels.map(|l| rows.iter().map(|&i| l[i]).collect());
    let nb = b.iter().copied().max().map_or(0, |m| m as usize + 1);
    let mut size = vec![0usize; nb];
    for &x in &b {
        size[x as usize] += 1;
    }
    let per_row: Vec<(f64, f64, f64)> = (0..n)
        .into_par_iter()
        .map(|i| {
            let yi = y.row(i);
            let yi = yi.as_slice().unwrap_or(&[]);
            let mut d: Vec<(f32, usize)> = (0..n)
                .filter(|&j| j != i)
                .map(|j| (l2sq(yi, y.row(j).as_slice().unwrap_or(&[])), j))
                .collect();
            let by = |a: &(f32, usize), c: &(f32, usize)| a.0.total_cmp(&c.0).then(a.1.cmp(&c.1));
            // Only the K nearest (and the K nearest of other batches) are
            // needed, in order: select them, then sort the prefix.
            let nearest = |v: &mut Vec<(f32, usize)>| {
                if v.len() > K {
                    v.select_nth_unstable_by(K - 1, by);
                    v.truncate(K);
                }
                v.sort_by(by);
            };
            let mut cross_all: Vec<(f32, usize)> = if l.is_some() {
                d.iter().copied().filter(|&(_, j)| b[j] != b[i]).collect()
            } else {
                Vec::new()
            };
            nearest(&mut d);
            let knn = &d[..];
            let other =
                knn.iter().filter(|&&(_, j)| b[j] != b[i]).count() as f64 / knn.len() as f64;
            let expected = 1.0 - (size[b[i] as usize] as f64 - 1.0) / (n as f64 - 1.0);
            let mixing = if expected > 0.0 {
                (other / expected).min(1.0)
            } else {
                1.0
            };
            let (same, cross) = match &l {
                Some(l) => {
                    let same = knn.iter().filter(|&&(_, j)| l[j] == l[i]).count() as f64
                        / knn.len() as f64;
                    nearest(&mut cross_all);
                    let cross_nb: Vec<usize> = cross_all.iter().map(|&(_, j)| j).collect();
                    let cross = if cross_nb.is_empty() {
                        0.0
                    } else {
                        cross_nb.iter().filter(|&&j| l[j] == l[i]).count() as f64
                            / cross_nb.len() as f64
                    };
                    (same, cross)
                }
                None => (0.0, 0.0),
            };
            (mixing, same, cross)
        })
        .collect();
    let mean = |f: fn(&(f64, f64, f64)) -> f64| per_row.iter().map(f).sum::<f64>() / n as f64;
    Some(MixingFigures {
        rows: n,
        batch_mixing: mean(|r| r.0),
        label_agreement: l.as_ref().map(|_| mean(|r| r.1)),
        cross_batch_label_agreement: l.as_ref().map(|_| mean(|r| r.2)),
    })
}

/// Global robust scaling (median/MAD over all rows, clipped to +-50) of the
/// given columns — the "uncorrected" reference of the evaluation protocol.
pub fn global_robust_scale(x: ArrayView2<f64>, cols: &[usize]) -> Array2<f64> {
    let all: Vec<usize> = (0..x.nrows()).collect();
    global_robust_scale_rows(x, cols, &all)
}

/// [`global_robust_scale`] (medians and MADs over all rows) of the rows
/// `rows` only: row t of the result = row `rows[t]`.
pub(crate) fn global_robust_scale_rows(
    x: ArrayView2<f64>,
    cols: &[usize],
    rows: &[usize],
) -> Array2<f64> {
    // One column per task: the median and MAD of a column are two O(n)
    // selections over a strided copy, independent across columns.
    let scaled: Vec<Vec<f64>> = cols
        .par_iter()
        .map(|&c| {
            let col = x.column(c);
            let mut v: Vec<f64> = col.to_vec();
            let med = crate::method::preprocess::median_inplace(&mut v);
            for (d, a) in v.iter_mut().zip(col.iter()) {
                *d = (a - med).abs();
            }
            let mad = crate::method::preprocess::median_inplace(&mut v) * 1.4826;
            let s = if mad > 0.0 { mad } else { 1.0 };
            rows.iter()
                .map(|&r| ((col[r] - med) / s).clamp(-50.0, 50.0))
                .collect()
        })
        .collect();
    let mut out = Array2::zeros((rows.len(), cols.len()));
    for (j, col) in scaled.iter().enumerate() {
        for (o, &v) in out.column_mut(j).iter_mut().zip(col) {
            *o = v;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn segregated_vs_mixed() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let n = 200;
        let batch: Vec<u32> = (0..n).map(|i| (i % 2) as u32).collect();
        let label: Vec<u32> = (0..n).map(|i| ((i / 2) % 4) as u32).collect();
        let seg = Array2::from_shape_fn((n, 5), |(i, j)| {
            batch[i] as f64 * 50.0
                + label[i] as f64 * 5.0 * (j == 0) as u8 as f64
                + rng.gen_range(-0.5..0.5)
        });
        let mix = Array2::from_shape_fn((n, 5), |(i, j)| {
            label[i] as f64 * 5.0 * (j == 0) as u8 as f64 + rng.gen_range(-0.5..0.5)
        });
        let keep = vec![true; n];
        let a = mixing_figures(seg.view(), &batch, Some(&label), &keep, 1).unwrap();
        let b = mixing_figures(mix.view(), &batch, Some(&label), &keep, 1).unwrap();
        assert!(a.batch_mixing < 0.05, "{a:?}");
        assert!(b.batch_mixing > 0.8, "{b:?}");
        assert!(b.cross_batch_label_agreement.unwrap() > 0.9);
        assert!(a.label_agreement.unwrap() > 0.9);
    }
}
