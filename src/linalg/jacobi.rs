//! Cyclic Jacobi rotations for dense symmetric matrices, and block subspace
//! iteration (with a Jacobi Rayleigh–Ritz step) for the top eigenpairs of a
//! large one. These are the fit's eigensolvers: the neighbour space, the
//! control whitening and every checkpointed basis come from them.

use super::columns::{largest_entry_positive, orthonormalise_columns};
use ndarray::{s, Array1, Array2, Axis};
use rand::{Rng, SeedableRng};

/// Most sweeps of [`jacobi_eigen`]; convergence is quadratic, so a
/// well-scaled matrix needs fewer than ten.
const MAX_SWEEPS: usize = 60;
/// Extra columns of [`subspace_eigen`]'s block beyond the `p` wanted: the
/// convergence rate of eigenvalue `j` is `(lambda_{b+1} / lambda_j)` per
/// iteration, so oversampling speeds up the last wanted pairs.
const OVERSAMPLE: usize = 10;
/// Multiplications of [`subspace_eigen`].
const ITERATIONS: usize = 40;

/// All eigenpairs of a symmetric matrix by cyclic Jacobi rotations.
///
/// Each rotation zeroes one off-diagonal pair `(p, q)`; a sweep visits every
/// pair, and sweeps repeat until the off-diagonal norm falls below `1e-14`
/// of the matrix norm (or after 60 sweeps). The diagonal is then
/// the spectrum and the accumulated rotations the eigenvectors.
///
/// Returns eigenvalues sorted by decreasing value (ties by position) and the
/// unit eigenvectors as columns, each with its largest-magnitude entry
/// positive ([`largest_entry_positive`]). `O(d^3)` per sweep: meant for
/// `d` up to a few hundred.
pub fn jacobi_eigen(a: &Array2<f64>) -> (Array1<f64>, Array2<f64>) {
    let d = a.nrows();
    let mut m = a.clone();
    let mut v = Array2::<f64>::eye(d);
    let scale: f64 = m.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-300);
    for _sweep in 0..MAX_SWEEPS {
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
                // The rotation angle that zeroes m[p, q]: t = tan(angle),
                // the smaller root of t^2 + 2 theta t - 1 = 0.
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
        vecs.column_mut(c).assign(&v.column(i));
        largest_entry_positive(vecs.column_mut(c));
    }
    (vals, vecs)
}

/// Top-`p` eigenpairs of a symmetric positive semi-definite matrix by block
/// subspace iteration, for when a full decomposition of `cov` (d x d) is too
/// slow.
///
/// A seeded random block of `p + 10` columns is multiplied by `cov` and
/// re-orthonormalised ([`orthonormalise_columns`], one pass) 40 times; the
/// block then spans the dominant invariant subspace, and the Rayleigh–Ritz
/// step — [`jacobi_eigen`] of the small projected matrix `Q^T cov Q` —
/// rotates it onto the eigenvectors. Same output convention as
/// [`jacobi_eigen`], truncated to `p` pairs; deterministic for a given
/// `seed`.
pub fn subspace_eigen(cov: &Array2<f64>, p: usize, seed: u64) -> (Array1<f64>, Array2<f64>) {
    let d = cov.nrows();
    let b = (p + OVERSAMPLE).min(d);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut q = Array2::from_shape_fn((d, b), |_| rng.gen_range(-1.0..1.0));
    orthonormalise_columns(&mut q, 1);
    for _ in 0..ITERATIONS {
        q = cov.dot(&q);
        orthonormalise_columns(&mut q, 1);
    }
    let small = q.t().dot(cov).dot(&q);
    let (vals, vecs) = jacobi_eigen(&small);
    let full = q.dot(&vecs);
    (
        vals.slice(s![..p]).to_owned(),
        full.slice(s![.., ..p]).to_owned(),
    )
}

/// `U diag(f) U^T` for eigenvectors `u` (columns) and one factor per
/// eigenvector: a function of a symmetric matrix applied through its
/// eigendecomposition (`f = 1 / lambda` is the inverse,
/// `f = 1 / sqrt(lambda)` the inverse square root).
pub fn eigen_compose(u: &Array2<f64>, f: &[f64]) -> Array2<f64> {
    let scaled = u * &Array1::from_vec(f.to_vec()).insert_axis(Axis(0));
    scaled.dot(&u.t())
}
