//! Principal component analysis for the neighbour space.
//!
//! BALANS searches neighbours in the first `p` principal components of the
//! preprocessed profiles (p ~ 50). The basis is fitted once and frozen, so
//! later rows (the daemon's new plates) project into the same space.
//!
//! The covariance (d x d) is accumulated over fixed row chunks and summed in
//! chunk order, so the result does not depend on the thread count. Its top
//! eigenvectors come from cyclic Jacobi rotations when d is small (exact —
//! the oracle) and from block subspace iteration with a Rayleigh–Ritz step
//! otherwise.

use anyhow::Result;
use ndarray::{s, Array1, Array2, ArrayView2, Axis};
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

/// Largest dimension for which the full Jacobi eigensolver is used.
const JACOBI_MAX_DIM: usize = 400;
const CHUNK: usize = 2048;

/// A fitted, frozen PCA basis.
#[derive(Debug, Clone)]
pub struct Pca {
    /// Column means (length d).
    pub mean: Array1<f64>,
    /// Loadings, d x p (orthonormal columns, by decreasing variance).
    pub components: Array2<f64>,
    /// Variance along each component (length p).
    pub variances: Array1<f64>,
}

impl Pca {
    /// Fit `p` components (clamped to d and n - 1, at least 1) to `x` (n x d).
    pub fn fit(x: ArrayView2<f64>, p: usize, seed: u64) -> Result<Pca> {
        let (n, d) = x.dim();
        anyhow::ensure!(n >= 1 && d >= 1, "PCA needs at least one row and column");
        let p = p.min(d).min(n.saturating_sub(1).max(1)).max(1);
        let mean = column_means(x);
        let cov = covariance(x, &mean);
        let (vals, vecs) = if d <= JACOBI_MAX_DIM {
            let (vals, vecs) = jacobi_eigen(&cov);
            (
                vals.slice(s![..p]).to_owned(),
                vecs.slice(s![.., ..p]).to_owned(),
            )
        } else {
            subspace_eigen(&cov, p, seed)
        };
        Ok(Pca {
            mean,
            components: vecs,
            variances: vals,
        })
    }

    /// Number of components.
    pub fn dims(&self) -> usize {
        self.components.ncols()
    }

    /// Project rows (n x d) to component scores (n x p), as f32 for the index.
    pub fn transform_f32(&self, x: ArrayView2<f64>) -> Array2<f32> {
        let centred = &x - &self.mean.view().insert_axis(Axis(0));
        centred.dot(&self.components).mapv(|v| v as f32)
    }
}

/// Column means, summed in fixed chunks (deterministic for any thread count).
pub fn column_means(x: ArrayView2<f64>) -> Array1<f64> {
    let (n, d) = x.dim();
    let parts: Vec<Array1<f64>> = x
        .axis_chunks_iter(Axis(0), CHUNK)
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|c| c.sum_axis(Axis(0)))
        .collect();
    let mut sum = Array1::zeros(d);
    for p in parts {
        sum += &p;
    }
    sum / n.max(1) as f64
}

/// Sample covariance (d x d) about `mean`.
pub fn covariance(x: ArrayView2<f64>, mean: &Array1<f64>) -> Array2<f64> {
    let (n, d) = x.dim();
    let parts: Vec<Array2<f64>> = x
        .axis_chunks_iter(Axis(0), CHUNK)
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|c| {
            let centred = &c - &mean.view().insert_axis(Axis(0));
            centred.t().dot(&centred)
        })
        .collect();
    let mut cov = Array2::zeros((d, d));
    for p in parts {
        cov += &p;
    }
    cov / (n.saturating_sub(1).max(1)) as f64
}

/// All eigenpairs of a symmetric matrix by cyclic Jacobi rotations, sorted
/// by decreasing eigenvalue; eigenvectors are the columns.
pub fn jacobi_eigen(a: &Array2<f64>) -> (Array1<f64>, Array2<f64>) {
    let d = a.nrows();
    let mut m = a.clone();
    let mut v = Array2::<f64>::eye(d);
    let scale: f64 = m.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-300);
    for _sweep in 0..60 {
        let mut off = 0.0;
        for p in 0..d {
            for q in (p + 1)..d {
                off += m[[p, q]] * m[[p, q]];
            }
        }
        if off.sqrt() <= 1e-14 * scale {
            break;
        }
        for p in 0..d {
            for q in (p + 1)..d {
                let apq = m[[p, q]];
                if apq.abs() <= 1e-300 {
                    continue;
                }
                let theta = (m[[q, q]] - m[[p, p]]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..d {
                    let mkp = m[[k, p]];
                    let mkq = m[[k, q]];
                    m[[k, p]] = c * mkp - s * mkq;
                    m[[k, q]] = s * mkp + c * mkq;
                }
                for k in 0..d {
                    let mpk = m[[p, k]];
                    let mqk = m[[q, k]];
                    m[[p, k]] = c * mpk - s * mqk;
                    m[[q, k]] = s * mpk + c * mqk;
                }
                for k in 0..d {
                    let vkp = v[[k, p]];
                    let vkq = v[[k, q]];
                    v[[k, p]] = c * vkp - s * vkq;
                    v[[k, q]] = s * vkp + c * vkq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..d).collect();
    order.sort_by(|&i, &j| m[[j, j]].total_cmp(&m[[i, i]]).then(i.cmp(&j)));
    let vals = Array1::from_iter(order.iter().map(|&i| m[[i, i]]));
    let mut vecs = Array2::zeros((d, d));
    for (c, &i) in order.iter().enumerate() {
        let mut col = v.column(i).to_owned();
        // Sign convention: largest-magnitude entry positive.
        let (mut best, mut arg) = (0.0f64, 0usize);
        for (r, x) in col.iter().enumerate() {
            if x.abs() > best {
                best = x.abs();
                arg = r;
            }
        }
        if col[arg] < 0.0 {
            col.mapv_inplace(|x| -x);
        }
        vecs.column_mut(c).assign(&col);
    }
    (vals, vecs)
}

/// Orthonormalise the columns of `q` in place (modified Gram–Schmidt).
fn orthonormalise(q: &mut Array2<f64>) {
    let p = q.ncols();
    for j in 0..p {
        for i in 0..j {
            let qi = q.column(i).to_owned();
            let dot = qi.dot(&q.column(j));
            let mut cj = q.column_mut(j);
            cj.scaled_add(-dot, &qi);
        }
        let norm = q.column(j).dot(&q.column(j)).sqrt();
        if norm > 1e-300 {
            q.column_mut(j).mapv_inplace(|x| x / norm);
        }
    }
}

/// Top-`p` eigenpairs of a symmetric PSD matrix by block subspace iteration
/// (with 10 oversampling columns) and a Rayleigh–Ritz step.
fn subspace_eigen(cov: &Array2<f64>, p: usize, seed: u64) -> (Array1<f64>, Array2<f64>) {
    let d = cov.nrows();
    let b = (p + 10).min(d);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut q = Array2::from_shape_fn((d, b), |_| rng.gen_range(-1.0..1.0));
    orthonormalise(&mut q);
    for _ in 0..40 {
        q = cov.dot(&q);
        orthonormalise(&mut q);
    }
    let small = q.t().dot(cov).dot(&q);
    let (vals, vecs) = jacobi_eigen(&small);
    let full = q.dot(&vecs);
    (
        vals.slice(s![..p]).to_owned(),
        full.slice(s![.., ..p]).to_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random_sym(d: usize, seed: u64) -> Array2<f64> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let a = Array2::from_shape_fn((d, d + 3), |_| rng.gen_range(-1.0..1.0));
        a.dot(&a.t())
    }

    #[test]
    fn jacobi_reconstructs_matrix() {
        let a = random_sym(12, 1);
        let (vals, vecs) = jacobi_eigen(&a);
        // A v = lambda v for each pair; eigenvectors orthonormal.
        for j in 0..12 {
            let v = vecs.column(j);
            let av = a.dot(&v);
            for i in 0..12 {
                assert!((av[i] - vals[j] * v[i]).abs() < 1e-9);
            }
        }
        let vtv = vecs.t().dot(&vecs);
        for i in 0..12 {
            for j in 0..12 {
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((vtv[[i, j]] - want).abs() < 1e-9);
            }
        }
        for j in 1..12 {
            assert!(vals[j - 1] >= vals[j]);
        }
    }

    #[test]
    fn subspace_iteration_matches_jacobi() {
        let a = random_sym(60, 2);
        let (v1, _) = jacobi_eigen(&a);
        let (v2, vec2) = subspace_eigen(&a, 5, 3);
        for j in 0..5 {
            assert!(
                (v1[j] - v2[j]).abs() / v1[j] < 1e-6,
                "{} vs {}",
                v1[j],
                v2[j]
            );
            let av = a.dot(&vec2.column(j));
            let err = (&av - &(&vec2.column(j) * v2[j]))
                .mapv(|x| x * x)
                .sum()
                .sqrt();
            assert!(err / v2[j] < 1e-4);
        }
    }

    #[test]
    fn pca_finds_dominant_direction_and_is_thread_independent() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        let x = Array2::from_shape_fn((5000, 4), |(_, j)| {
            let t: f64 = rng.gen_range(-1.0..1.0);
            if j == 2 {
                10.0 * t
            } else {
                t
            }
        });
        let pca = Pca::fit(x.view(), 2, 1).unwrap();
        assert!(pca.components[[2, 0]].abs() > 0.99);
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let pca1 = one.install(|| Pca::fit(x.view(), 2, 1).unwrap());
        assert_eq!(pca.components, pca1.components);
        let y = pca.transform_f32(x.view());
        assert_eq!(y.dim(), (5000, 2));
    }
}
