//! Principal component analysis by eigen-decomposition.
//!
//! scib-metrics computes PCA with an SVD of the centred data; the right
//! singular vectors are the eigenvectors of the covariance matrix and
//! `variance = s^2 / (n - 1)` its eigenvalues, so we decompose whichever of
//! the covariance (`d x d`) or Gram (`n x n`) matrix is smaller with
//! [`sym_eigen`]. Component signs are fixed so the largest-magnitude loading
//! of each component is positive (distances, and so every metric, are
//! invariant to the signs).

use super::linalg::sym_eigen;
use anyhow::{bail, Result};
use ndarray::{Array1, Array2, Axis};

/// A fitted PCA: `coords = (x - mean) · components^T`.
#[derive(Debug, Clone)]
pub struct Pca {
    /// Column means of the training data (length `d`).
    pub mean: Array1<f64>,
    /// Principal axes, one per row (`k x d`), unit norm.
    pub components: Array2<f64>,
    /// Variance along each axis (eigenvalues of the covariance), descending.
    pub variance: Array1<f64>,
}

impl Pca {
    /// Fit `k` components (capped at `min(n, d)`) on the rows of `x`.
    pub fn fit(x: &Array2<f64>, k: usize) -> Result<Pca> {
        let (n, d) = x.dim();
        if n < 2 {
            bail!("PCA needs at least 2 rows, got {n}");
        }
        if d == 0 {
            bail!("PCA needs at least 1 feature column");
        }
        let k = k.min(n).min(d).max(1);
        let mean = x.mean_axis(Axis(0)).unwrap_or_else(|| Array1::zeros(d));
        let xc = x - &mean;
        let denom = (n - 1) as f64;
        let mut components = Array2::zeros((k, d));
        let mut variance = Array1::zeros(k);
        if d <= n {
            let cov = xc.t().dot(&xc) / denom;
            let (vals, vecs) = sym_eigen(&cov)?;
            for j in 0..k {
                variance[j] = vals[j].max(0.0);
                components.row_mut(j).assign(&vecs.column(j));
            }
        } else {
            let gram = xc.dot(&xc.t());
            let (vals, vecs) = sym_eigen(&gram)?;
            for j in 0..k {
                let lambda = vals[j];
                variance[j] = lambda.max(0.0) / denom;
                if lambda > 1e-12 * vals[0].abs().max(1e-300) {
                    let axis = xc.t().dot(&vecs.column(j)) / lambda.sqrt();
                    components.row_mut(j).assign(&axis);
                }
            }
        }
        for mut row in components.rows_mut() {
            let mut best = 0.0f64;
            for &v in row.iter() {
                if v.abs() > best.abs() {
                    best = v;
                }
            }
            if best < 0.0 {
                row.mapv_inplace(|v| -v);
            }
        }
        Ok(Pca {
            mean,
            components,
            variance,
        })
    }

    /// Project rows onto the fitted axes.
    pub fn transform(&self, x: &Array2<f64>) -> Result<Array2<f64>> {
        if x.ncols() != self.mean.len() {
            bail!(
                "PCA transform: data has {} columns, model was fitted on {}",
                x.ncols(),
                self.mean.len()
            );
        }
        Ok((x - &self.mean).dot(&self.components.t()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn data(n: usize, d: usize) -> Array2<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        Array2::from_shape_fn((n, d), |(_, j)| rng.gen_range(-1.0..1.0) * (j + 1) as f64)
    }

    #[test]
    fn covariance_and_gram_routes_agree() {
        // Same data seen as tall (covariance route) and with d > n (Gram route).
        let x = data(12, 20);
        let wide = Pca::fit(&x, 5).unwrap();
        let xt = data(40, 6);
        let tall = Pca::fit(&xt, 6).unwrap();
        // Total variance is preserved when all components are kept.
        let total: f64 = xt.var_axis(Axis(0), 1.0).sum();
        assert!((tall.variance.sum() - total).abs() < 1e-9);
        // Gram route: variances equal those of projected coordinates.
        let coords = wide.transform(&x).unwrap();
        let var = coords.var_axis(Axis(0), 1.0);
        for j in 0..5 {
            assert!((var[j] - wide.variance[j]).abs() < 1e-9);
        }
        // Axes orthonormal.
        let g = wide.components.dot(&wide.components.t());
        assert!((g - Array2::<f64>::eye(5)).mapv(f64::abs).sum() < 1e-9);
    }

    #[test]
    fn rejects_tiny_input() {
        assert!(Pca::fit(&Array2::zeros((1, 3)), 2).is_err());
        let p = Pca::fit(&data(5, 3), 2).unwrap();
        assert!(p.transform(&Array2::zeros((2, 4))).is_err());
    }
}
