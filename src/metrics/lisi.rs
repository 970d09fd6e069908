//! LISI — local inverse Simpson index (Korsunsky et al. 2019), as computed by
//! scib-metrics 0.5.
//!
//! For each row, Gaussian weights `exp(-beta d_j)` over its k-NN (self
//! excluded; `d` are the raw, unsquared neighbour distances) are calibrated by
//! binary search on `beta` until their entropy equals `log(perplexity)`
//! (tolerance 1e-5, at most 50 steps, starting at `beta = 1` and doubling or
//! halving until bracketed). The Simpson index is `sum_c p_c^2` with `p_c` the
//! total weight of category `c`, and LISI is its inverse: the effective
//! number of categories in the neighbourhood. Rows whose weights all vanish
//! get LISI `-1`, as in scib-metrics.
//!
//! iLISI (batches) = `(median LISI - 1) / (B - 1)`, 1 = perfectly mixed;
//! cLISI (labels) = `(C - median LISI) / (C - 1)`, 1 = pure neighbourhoods.
//! The perplexity defaults to `floor(k / 3)`, i.e. 30 for k = 90.

use super::knn::Neighbors;
use super::labels::{nanmedian, Codes};
use anyhow::{bail, Result};
use rayon::prelude::*;

const TOL: f64 = 1e-5;
const MAX_TRIES: usize = 50;

/// Entropy and normalised weights of one row at precision `beta`.
fn h_beta(dists: &[f64], mask: &[bool], beta: f64, p: &mut [f64]) -> f64 {
    let mut sum_p = 0.0;
    let mut sum_dp = 0.0;
    for ((pj, &d), &m) in p.iter_mut().zip(dists).zip(mask) {
        *pj = if m { (-d * beta).exp() } else { 0.0 };
        sum_p += *pj;
        sum_dp += d * *pj;
    }
    if sum_p == 0.0 {
        p.iter_mut().for_each(|v| *v = 0.0);
        return 0.0;
    }
    p.iter_mut().for_each(|v| *v /= sum_p);
    sum_p.ln() + beta * sum_dp / sum_p
}

/// Per-row LISI of `labels` over the neighbourhoods in `nn`.
pub fn lisi(nn: &Neighbors, labels: &Codes, perplexity: Option<f64>) -> Result<Vec<f64>> {
    if labels.codes.len() != nn.n {
        bail!("LISI: {} labels for {} rows", labels.codes.len(), nn.n);
    }
    let perplexity = perplexity.unwrap_or((nn.k / 3) as f64);
    if perplexity <= 0.0 {
        bail!(
            "LISI: perplexity must be positive (k = {} neighbours)",
            nn.k
        );
    }
    let target = perplexity.ln();
    let n_labels = labels.n_levels();
    Ok((0..nn.n)
        .into_par_iter()
        .map(|i| {
            let idx = nn.row(i);
            let dists = nn.row_dist(i);
            let mask: Vec<bool> = idx.iter().map(|&j| j != i).collect();
            let mut p = vec![0.0; idx.len()];
            let mut beta = 1.0;
            let mut betamin = f64::NEG_INFINITY;
            let mut betamax = f64::INFINITY;
            let mut h = h_beta(dists, &mask, beta, &mut p);
            let mut hdiff = h - target;
            let mut tries = 0;
            while hdiff.abs() >= TOL && tries < MAX_TRIES {
                if hdiff > 0.0 {
                    betamin = beta;
                    beta = if betamax == f64::INFINITY {
                        beta * 2.0
                    } else {
                        (beta + betamax) / 2.0
                    };
                } else {
                    betamax = beta;
                    beta = if betamin == f64::NEG_INFINITY {
                        beta / 2.0
                    } else {
                        (beta + betamin) / 2.0
                    };
                }
                h = h_beta(dists, &mask, beta, &mut p);
                hdiff = h - target;
                tries += 1;
            }
            if h == 0.0 {
                return -1.0;
            }
            let mut per = vec![0.0; n_labels];
            for (&j, &pj) in idx.iter().zip(&p) {
                per[labels.codes[j]] += pj;
            }
            1.0 / per.iter().map(|v| v * v).sum::<f64>()
        })
        .collect())
}

/// iLISI: `(median LISI of batches - 1) / (B - 1)`; needs at least 2 batches.
pub fn ilisi(nn: &Neighbors, batches: &Codes) -> Result<f64> {
    let b = batches.n_levels();
    if b < 2 {
        bail!("iLISI needs at least 2 batches, got {b}");
    }
    let l = lisi(nn, batches, None)?;
    Ok((nanmedian(&l) - 1.0) / (b as f64 - 1.0))
}

/// cLISI: `(C - median LISI of labels) / (C - 1)`; needs at least 2 labels.
pub fn clisi(nn: &Neighbors, labels: &Codes) -> Result<f64> {
    let c = labels.n_levels();
    if c < 2 {
        bail!("cLISI needs at least 2 labels, got {c}");
    }
    let l = lisi(nn, labels, None)?;
    Ok((c as f64 - nanmedian(&l)) / (c as f64 - 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::knn::{knn, Metric};
    use ndarray::Array2;

    #[test]
    fn perfectly_mixed_gives_ilisi_one_and_separated_zero() {
        // All rows coincide and batches alternate: every neighbourhood holds
        // the two batches in (near) equal weight -> LISI ~2 -> iLISI ~1.
        let n = 200;
        let x = Array2::<f64>::zeros((n, 1));
        let mixed: Vec<String> = (0..n).map(|i| format!("b{}", i % 2)).collect();
        let nn = knn(&x, 30, Metric::Euclidean).unwrap();
        let il = ilisi(&nn, &Codes::new(&mixed)).unwrap();
        assert!(il > 0.99, "mixed iLISI {il}");
        // Two far-apart blobs, one per batch -> LISI 1 -> iLISI 0, cLISI 1.
        let y = Array2::from_shape_fn((n, 1), |(i, _)| {
            if i < n / 2 {
                i as f64 * 1e-3
            } else {
                1e3 + i as f64 * 1e-3
            }
        });
        let sep: Vec<String> = (0..n)
            .map(|i| if i < n / 2 { "a".into() } else { "b".into() })
            .collect();
        let nn = knn(&y, 30, Metric::Euclidean).unwrap();
        assert!(ilisi(&nn, &Codes::new(&sep)).unwrap().abs() < 1e-9);
        assert!((clisi(&nn, &Codes::new(&sep)).unwrap() - 1.0).abs() < 1e-9);
    }

    #[test]
    fn calibrated_weights_reach_target_perplexity() {
        let x = Array2::from_shape_fn((120, 3), |(i, j)| ((i * 7 + j * 13) % 17) as f64);
        let nn = knn(&x, 30, Metric::Euclidean).unwrap();
        // LISI lies between 1 and the number of categories.
        let labels: Vec<String> = (0..120).map(|i| format!("c{}", i % 3)).collect();
        let l = lisi(&nn, &Codes::new(&labels), None).unwrap();
        for v in l {
            assert!((1.0 - 1e-9..=3.0 + 1e-9).contains(&v), "{v}");
        }
    }

    #[test]
    fn single_batch_is_an_error() {
        let x = Array2::from_shape_fn((10, 1), |(i, _)| i as f64);
        let nn = knn(&x, 5, Metric::Euclidean).unwrap();
        assert!(ilisi(&nn, &Codes::new(&["a"; 10])).is_err());
    }
}
