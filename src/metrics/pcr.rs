//! Principal component regression (Büttner et al. 2018) as in scib-metrics.
//!
//! `PCR(X, batch) = sum_k var_k R^2_k / sum_k var_k`, where `R^2_k` is the
//! fraction of the variance of principal component `k` explained by a linear
//! regression on the one-hot (centred) batch indicators, i.e. the ANOVA
//! between-batch share of that component's variance.
//!
//! With **all** components (scib's default, `n_components=None`) the weighted
//! sum telescopes: PCs span the centred data, `var_k R^2_k = SSB_k / (n-1)`,
//! and the total between-batch sum of squares is rotation invariant, so
//! `PCR = SSB / SST` computed directly on the columns — no PCA needed. With
//! `Some(k)` the first `k` PCs are computed and weighted explicitly.
//!
//! PCR comparison = `max(0, (PCR_pre - PCR_post) / PCR_pre)`: the share of
//! batch-explained variance the correction removed (1 = all of it).

use super::labels::Codes;
use crate::method::pca::Pca;
use anyhow::{bail, Result};
use ndarray::{Array2, ArrayView1};

/// Between-group and total sums of squares of one column.
fn anova(col: ArrayView1<f64>, groups: &Codes) -> (f64, f64) {
    let n = col.len() as f64;
    let mean = col.sum() / n;
    let g = groups.n_levels();
    let mut sums = vec![0.0; g];
    let mut counts = vec![0.0; g];
    for (&v, &c) in col.iter().zip(&groups.codes) {
        sums[c] += v;
        counts[c] += 1.0;
    }
    let sst: f64 = col.iter().map(|v| (v - mean) * (v - mean)).sum();
    let ssb: f64 = sums
        .iter()
        .zip(&counts)
        .filter(|(_, &c)| c > 0.0)
        .map(|(&s, &c)| {
            let m = s / c;
            c * (m - mean) * (m - mean)
        })
        .sum();
    (ssb, sst)
}

/// Variance-weighted R^2 of `batches` on the principal components of `x`.
pub fn pcr(x: &Array2<f64>, batches: &Codes, n_components: Option<usize>) -> Result<f64> {
    if batches.codes.len() != x.nrows() {
        bail!(
            "PCR: {} batch labels for {} rows",
            batches.codes.len(),
            x.nrows()
        );
    }
    if x.nrows() < 2 {
        bail!("PCR needs at least 2 rows");
    }
    match n_components {
        None => {
            let (mut ssb, mut sst) = (0.0, 0.0);
            for col in x.columns() {
                let (b, t) = anova(col, batches);
                ssb += b;
                sst += t;
            }
            if sst == 0.0 {
                bail!("PCR: data has zero variance");
            }
            Ok((ssb / sst).clamp(0.0, 1.0))
        }
        Some(k) => {
            let p = Pca::fit_exact(x.view(), k)?;
            let coords = p.transform(x.view())?;
            let mut num = 0.0;
            let mut den = 0.0;
            for (j, col) in coords.columns().into_iter().enumerate() {
                let (b, t) = anova(col, batches);
                let r2 = if t > 0.0 {
                    (b / t).clamp(0.0, 1.0)
                } else {
                    0.0
                };
                num += r2 * p.variances[j];
                den += p.variances[j];
            }
            if den == 0.0 {
                bail!("PCR: data has zero variance");
            }
            Ok(num / den)
        }
    }
}

/// PCR comparison of a correction against a baseline of the same rows.
pub fn pcr_comparison(pre: &Array2<f64>, post: &Array2<f64>, batches: &Codes) -> Result<f64> {
    if pre.nrows() != post.nrows() {
        bail!(
            "PCR comparison: baseline has {} rows, corrected data {}",
            pre.nrows(),
            post.nrows()
        );
    }
    let a = pcr(pre, batches, None)?;
    let b = pcr(post, batches, None)?;
    if a == 0.0 {
        bail!("PCR comparison: baseline has no batch-explained variance");
    }
    Ok(((a - b) / a).max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn closed_form_equals_explicit_all_components() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let b: Vec<String> = (0..60).map(|i| format!("b{}", i % 3)).collect();
        let codes = Codes::new(&b);
        let x = Array2::from_shape_fn((60, 5), |(i, j)| {
            rng.gen_range(-1.0..1.0) + (i % 3) as f64 * j as f64 * 0.3
        });
        let closed = pcr(&x, &codes, None).unwrap();
        let explicit = pcr(&x, &codes, Some(5)).unwrap();
        assert!((closed - explicit).abs() < 1e-10, "{closed} vs {explicit}");
        assert!(closed > 0.1);
    }

    #[test]
    fn pure_batch_shift_and_its_removal() {
        let b: Vec<String> = (0..40).map(|i| format!("b{}", i % 2)).collect();
        let codes = Codes::new(&b);
        let pre = Array2::from_shape_fn((40, 2), |(i, _)| (i % 2) as f64 * 10.0);
        assert!((pcr(&pre, &codes, None).unwrap() - 1.0).abs() < 1e-12);
        let post = Array2::from_shape_fn((40, 2), |(i, j)| ((i / 2) as f64).sin() + j as f64);
        let cmp = pcr_comparison(&pre, &post, &codes).unwrap();
        assert!(cmp > 0.9 && cmp <= 1.0);
        // A correction that adds batch variance is clipped at 0.
        assert_eq!(pcr_comparison(&post, &pre, &codes).unwrap(), 0.0);
    }
}
