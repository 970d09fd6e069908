//! Silhouette widths: silhouette label, silhouette batch and BRAS.
//!
//! For row `i` in cluster `C`, `a(i)` is its mean distance to the other
//! members of `C` and `b(i)` a between-cluster distance; the silhouette is
//! `(b - a) / max(a, b)` (0 for singletons and for `0/0`, like scikit-learn and
//! scib-metrics' `nan_to_num`). `b(i)` is, per [`Between`]:
//! * `Nearest` — the smallest mean distance to another cluster (classic);
//! * `MeanOther` — the mean distance to all rows of all other clusters (BRAS,
//!   Rautenstrauch & Ohler 2025, scib-metrics >= 0.5);
//! * `Furthest` — the largest mean distance to another cluster.
//!
//! Distances are computed in row blocks against all rows, accumulating
//! per-cluster sums, so memory is `O(block x n)`; time is `O(n^2 d)` — callers
//! subsample large inputs (see `EvalOptions::max_silhouette_rows`).

use super::knn::Metric;
use super::labels::Codes;
use anyhow::{bail, Result};
use ndarray::{s, Array2, Axis};
use rayon::prelude::*;

const BLOCK: usize = 256;

/// How the between-cluster distance `b(i)` is formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Between {
    /// Nearest other cluster (standard silhouette).
    Nearest,
    /// Mean over all rows of all other clusters (BRAS).
    MeanOther,
    /// Furthest other cluster.
    Furthest,
}

/// Pairwise distance tile between two row sets.
fn distance_tile(a: &Array2<f64>, b: &Array2<f64>, bsq: &[f64], metric: Metric) -> Array2<f64> {
    let g = a.dot(&b.t());
    let asq: Vec<f64> = a.rows().into_iter().map(|r| r.dot(&r)).collect();
    let mut out = g;
    for (i, mut row) in out.axis_iter_mut(Axis(0)).enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v = match metric {
                Metric::Euclidean => (asq[i] + bsq[j] - 2.0 * *v).max(0.0).sqrt(),
                Metric::Cosine => {
                    if asq[i] == 0.0 || bsq[j] == 0.0 {
                        1.0
                    } else {
                        (1.0 - *v / (asq[i] * bsq[j]).sqrt()).clamp(0.0, 2.0)
                    }
                }
            };
        }
    }
    out
}

/// Per-row silhouette widths of the clustering `labels` (codes `0..C`).
pub(crate) fn silhouette_samples(
    x: &Array2<f64>,
    labels: &[usize],
    metric: Metric,
    between: Between,
) -> Result<Vec<f64>> {
    let n = x.nrows();
    if labels.len() != n {
        bail!("silhouette: {} labels for {} rows", labels.len(), n);
    }
    let n_clusters = labels.iter().copied().max().map_or(0, |m| m + 1);
    let mut freq = vec![0usize; n_clusters];
    for &l in labels {
        freq[l] += 1;
    }
    let sq: Vec<f64> = x.rows().into_iter().map(|r| r.dot(&r)).collect();
    let xo = x.to_owned();
    let n_blocks = n.div_ceil(BLOCK);
    let out: Vec<Vec<f64>> = (0..n_blocks)
        .into_par_iter()
        .map(|b| {
            let r0 = b * BLOCK;
            let r1 = (r0 + BLOCK).min(n);
            let tile = distance_tile(&xo.slice(s![r0..r1, ..]).to_owned(), &xo, &sq, metric);
            let mut res = Vec::with_capacity(r1 - r0);
            for (ri, row) in tile.axis_iter(Axis(0)).enumerate() {
                let i = r0 + ri;
                let mut sums = vec![0.0; n_clusters];
                for (j, &dij) in row.iter().enumerate() {
                    if j != i {
                        sums[labels[j]] += dij;
                    }
                }
                let own = labels[i];
                let a = sums[own] / (freq[own] as f64 - 1.0);
                let bval = match between {
                    Between::Nearest => (0..n_clusters)
                        .filter(|&c| c != own && freq[c] > 0)
                        .map(|c| sums[c] / freq[c] as f64)
                        .fold(f64::INFINITY, f64::min),
                    Between::Furthest => (0..n_clusters)
                        .filter(|&c| c != own && freq[c] > 0)
                        .map(|c| sums[c] / freq[c] as f64)
                        .fold(f64::NEG_INFINITY, f64::max),
                    Between::MeanOther => {
                        let total: f64 =
                            (0..n_clusters).filter(|&c| c != own).map(|c| sums[c]).sum();
                        total / (n - freq[own]) as f64
                    }
                };
                let s = (bval - a) / a.max(bval);
                res.push(if s.is_finite() { s } else { 0.0 });
            }
            res
        })
        .collect();
    Ok(out.into_iter().flatten().collect())
}

/// Silhouette label: mean silhouette of the labels, rescaled to `(s + 1) / 2`
/// when `rescale`. scib-metrics' default metric here is Euclidean.
pub fn silhouette_label(
    x: &Array2<f64>,
    labels: &Codes,
    metric: Metric,
    rescale: bool,
) -> Result<f64> {
    if labels.n_levels() < 2 {
        bail!(
            "silhouette label needs at least 2 labels, got {}",
            labels.n_levels()
        );
    }
    let s = silhouette_samples(x, &labels.codes, metric, Between::Nearest)?;
    let mean = s.iter().sum::<f64>() / s.len() as f64;
    Ok(if rescale { (mean + 1.0) / 2.0 } else { mean })
}

/// Silhouette batch (scib): for each label, silhouette of the batch
/// assignment among that label's rows, scored `1 - |s|`, averaged per label
/// and then over labels. Labels whose rows lie in one batch only, or whose
/// rows are all in distinct batches, are skipped; `None` if every label is
/// skipped.
pub fn silhouette_batch(
    x: &Array2<f64>,
    labels: &Codes,
    batches: &Codes,
    metric: Metric,
    between: Between,
) -> Result<Option<f64>> {
    if labels.codes.len() != x.nrows() || batches.codes.len() != x.nrows() {
        bail!(
            "silhouette batch: label/batch lengths do not match {} rows",
            x.nrows()
        );
    }
    let mut per_label = Vec::new();
    for rows in labels.members() {
        let sub_b = batches.subset(&rows);
        let nb = sub_b.n_levels();
        if nb == 1 || nb == rows.len() {
            continue;
        }
        let sub_x = x.select(Axis(0), &rows);
        let s = silhouette_samples(&sub_x, &sub_b.codes, metric, between)?;
        let m = s.iter().map(|v| 1.0 - v.abs()).sum::<f64>() / s.len() as f64;
        per_label.push(m);
    }
    if per_label.is_empty() {
        return Ok(None);
    }
    Ok(Some(per_label.iter().sum::<f64>() / per_label.len() as f64))
}

/// BRAS (batch removal adapted silhouette): [`silhouette_batch`] with cosine
/// distance and `b` = mean distance to all other batches, as scib-metrics'
/// `bras()` defaults.
pub fn bras(x: &Array2<f64>, labels: &Codes, batches: &Codes) -> Result<Option<f64>> {
    silhouette_batch(x, labels, batches, Metric::Cosine, Between::MeanOther)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::knn::distance;
    use ndarray::array;
    use proptest::prelude::*;

    fn oracle(x: &Array2<f64>, labels: &[usize], metric: Metric) -> Vec<f64> {
        let n = x.nrows();
        let c = labels.iter().max().unwrap() + 1;
        (0..n)
            .map(|i| {
                let mean_to = |k: usize| {
                    let js: Vec<usize> = (0..n).filter(|&j| j != i && labels[j] == k).collect();
                    js.iter()
                        .map(|&j| distance(x.row(i), x.row(j), metric))
                        .sum::<f64>()
                        / js.len() as f64
                };
                let own = labels[i];
                if labels.iter().filter(|&&l| l == own).count() == 1 {
                    return 0.0;
                }
                let a = mean_to(own);
                let b = (0..c)
                    .filter(|&k| k != own)
                    .map(mean_to)
                    .fold(f64::INFINITY, f64::min);
                let s = (b - a) / a.max(b);
                if s.is_finite() {
                    s
                } else {
                    0.0
                }
            })
            .collect()
    }

    #[test]
    fn hand_computed_case() {
        // Two tight, far-apart pairs. Row 0: a = 1, b = mean(10, 11) = 10.5;
        // row 1: a = 1, b = mean(9, 10) = 9.5; rows 2, 3 mirror them.
        let x = array![[0.0], [1.0], [10.0], [11.0]];
        let s = silhouette_samples(&x, &[0, 0, 1, 1], Metric::Euclidean, Between::Nearest).unwrap();
        let want = [9.5 / 10.5, 8.5 / 9.5, 8.5 / 9.5, 9.5 / 10.5];
        for (v, w) in s.iter().zip(want) {
            assert!((v - w).abs() < 1e-9, "{v} vs {w}");
        }
    }

    #[test]
    fn singleton_scores_zero_and_bras_of_mixed_is_high() {
        let x = array![[0.0, 1.0], [1.0, 0.0], [5.0, 5.0]];
        let s = silhouette_samples(&x, &[0, 0, 1], Metric::Euclidean, Between::Nearest).unwrap();
        assert_eq!(s[2], 0.0);
        // identical rows in two batches: perfectly mixed -> BRAS 1
        let y = array![[1.0, 2.0], [1.0, 2.0], [1.0, 2.0], [1.0, 2.0]];
        let labels = Codes::new(&["a", "a", "a", "a"]);
        let batches = Codes::new(&["x", "y", "x", "y"]);
        assert_eq!(bras(&y, &labels, &batches).unwrap(), Some(1.0));
        // one batch only -> skipped -> None
        let one = Codes::new(&["x", "x", "x", "x"]);
        assert_eq!(bras(&y, &labels, &one).unwrap(), None);
    }

    proptest! {
        #[test]
        fn matches_oracle_and_is_bounded(
            pts in proptest::collection::vec((-5.0f64..5.0, -5.0f64..5.0, 0usize..3), 4..40)
        ) {
            let x = Array2::from_shape_fn((pts.len(), 2), |(i, j)| if j == 0 { pts[i].0 } else { pts[i].1 });
            let raw: Vec<usize> = pts.iter().map(|p| p.2).collect();
            let labels = Codes::from_codes(&raw);
            prop_assume!(labels.n_levels() >= 2);
            for metric in [Metric::Euclidean, Metric::Cosine] {
                let s = silhouette_samples(&x, &labels.codes, metric, Between::Nearest).unwrap();
                let o = oracle(&x, &labels.codes, metric);
                for (a, b) in s.iter().zip(&o) {
                    prop_assert!((a - b).abs() < 1e-6, "{} vs {}", a, b);
                    prop_assert!((-1.0..=1.0).contains(a));
                }
            }
        }
    }
}
