//! Small dense linear algebra kernels the metrics need, written out so the
//! crate needs no LAPACK.
//!
//! * [`sym_eigen`] — all eigenpairs of a real symmetric matrix by Householder
//!   tridiagonalisation followed by the implicit QL algorithm (the classic
//!   EISPACK `tred2`/`tql2` pair, as ported in JAMA). `O(n^3)`, accurate to
//!   machine precision; used for PCA covariance matrices, Rayleigh–Ritz
//!   projections and the diffusion maps of small label subsets in kBET.
//! * [`svd_jacobi`] — singular value decomposition of a square matrix by
//!   one-sided (Hestenes) Jacobi rotations; used for the orthogonal Procrustes
//!   problem of representation drift, where only `U V^T` matters.
//! * [`orthonormalize_columns`] — modified Gram–Schmidt, for subspace
//!   iteration.

use anyhow::{bail, Result};
use ndarray::{Array1, Array2};

/// Eigen-decomposition of a symmetric matrix.
///
/// Returns eigenvalues in **descending** order and the matching unit
/// eigenvectors as the columns of the second array. Only the lower triangle
/// is trusted implicitly (the algorithm reads both, so pass a symmetric
/// matrix). Errors on non-square or non-finite input, or if QL fails to
/// converge (which does not happen for finite symmetric input in practice).
pub fn sym_eigen(a: &Array2<f64>) -> Result<(Array1<f64>, Array2<f64>)> {
    let n = a.nrows();
    if n != a.ncols() {
        bail!(
            "sym_eigen: matrix is {}x{}, not square",
            a.nrows(),
            a.ncols()
        );
    }
    if a.iter().any(|v| !v.is_finite()) {
        bail!("sym_eigen: matrix has non-finite entries");
    }
    if n == 0 {
        return Ok((Array1::zeros(0), Array2::zeros((0, 0))));
    }
    // Row-major working copy: v[r * n + c].
    let mut v: Vec<f64> = a.iter().copied().collect();
    let mut d = vec![0.0; n];
    let mut e = vec![0.0; n];
    tred2(n, &mut v, &mut d, &mut e);
    // QL updates pairs of eigenvector columns across all rows: store the
    // accumulated transform transposed so those sweeps are contiguous.
    let mut vt = vec![0.0; n * n];
    for r in 0..n {
        for c in 0..n {
            vt[c * n + r] = v[r * n + c];
        }
    }
    tql2(n, &mut vt, &mut d, &mut e)?;
    // Sort descending.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| d[j].total_cmp(&d[i]));
    let values = Array1::from_iter(order.iter().map(|&i| d[i]));
    let mut vectors = Array2::zeros((n, n));
    for (new_c, &old_c) in order.iter().enumerate() {
        for r in 0..n {
            vectors[[r, new_c]] = vt[old_c * n + r];
        }
    }
    Ok((values, vectors))
}

/// Householder reduction to tridiagonal form (JAMA `tred2`).
fn tred2(n: usize, v: &mut [f64], d: &mut [f64], e: &mut [f64]) {
    let idx = |r: usize, c: usize| r * n + c;
    for j in 0..n {
        d[j] = v[idx(n - 1, j)];
    }
    for i in (1..n).rev() {
        let mut scale = 0.0;
        let mut h = 0.0;
        for dk in d.iter().take(i) {
            scale += dk.abs();
        }
        if scale == 0.0 {
            e[i] = d[i - 1];
            for j in 0..i {
                d[j] = v[idx(i - 1, j)];
                v[idx(i, j)] = 0.0;
                v[idx(j, i)] = 0.0;
            }
        } else {
            for dk in d.iter_mut().take(i) {
                *dk /= scale;
                h += *dk * *dk;
            }
            let mut f = d[i - 1];
            let mut g = h.sqrt();
            if f > 0.0 {
                g = -g;
            }
            e[i] = scale * g;
            h -= f * g;
            d[i - 1] = f - g;
            for ej in e.iter_mut().take(i) {
                *ej = 0.0;
            }
            for j in 0..i {
                f = d[j];
                v[idx(j, i)] = f;
                g = e[j] + v[idx(j, j)] * f;
                for k in (j + 1)..i {
                    g += v[idx(k, j)] * d[k];
                    e[k] += v[idx(k, j)] * f;
                }
                e[j] = g;
            }
            f = 0.0;
            for j in 0..i {
                e[j] /= h;
                f += e[j] * d[j];
            }
            let hh = f / (h + h);
            for j in 0..i {
                e[j] -= hh * d[j];
            }
            for j in 0..i {
                f = d[j];
                g = e[j];
                for k in j..i {
                    v[idx(k, j)] -= f * e[k] + g * d[k];
                }
                d[j] = v[idx(i - 1, j)];
                v[idx(i, j)] = 0.0;
            }
        }
        d[i] = h;
    }
    // Accumulate transformations.
    for i in 0..n.saturating_sub(1) {
        v[idx(n - 1, i)] = v[idx(i, i)];
        v[idx(i, i)] = 1.0;
        let h = d[i + 1];
        if h != 0.0 {
            for k in 0..=i {
                d[k] = v[idx(k, i + 1)] / h;
            }
            for j in 0..=i {
                let mut g = 0.0;
                for k in 0..=i {
                    g += v[idx(k, i + 1)] * v[idx(k, j)];
                }
                for k in 0..=i {
                    v[idx(k, j)] -= g * d[k];
                }
            }
        }
        for k in 0..=i {
            v[idx(k, i + 1)] = 0.0;
        }
    }
    for j in 0..n {
        d[j] = v[idx(n - 1, j)];
        v[idx(n - 1, j)] = 0.0;
    }
    v[idx(n - 1, n - 1)] = 1.0;
    e[0] = 0.0;
}

/// Implicit QL iterations on the tridiagonal matrix (JAMA `tql2`). `v`
/// holds the transform **transposed** (`V[r][c]` at `v[c * n + r]`).
fn tql2(n: usize, v: &mut [f64], d: &mut [f64], e: &mut [f64]) -> Result<()> {
    let idx = |r: usize, c: usize| c * n + r;
    for i in 1..n {
        e[i - 1] = e[i];
    }
    e[n - 1] = 0.0;
    let mut f = 0.0;
    let mut tst1: f64 = 0.0;
    let eps = f64::EPSILON;
    for l in 0..n {
        tst1 = tst1.max(d[l].abs() + e[l].abs());
        let mut m = l;
        while m < n - 1 {
            if e[m].abs() <= eps * tst1 {
                break;
            }
            m += 1;
        }
        if m > l {
            let mut iter = 0;
            loop {
                iter += 1;
                if iter > 200 {
                    bail!("sym_eigen: QL iteration did not converge");
                }
                let g = d[l];
                let mut p = (d[l + 1] - g) / (2.0 * e[l]);
                let mut r = p.hypot(1.0);
                if p < 0.0 {
                    r = -r;
                }
                d[l] = e[l] / (p + r);
                d[l + 1] = e[l] * (p + r);
                let dl1 = d[l + 1];
                let mut h = g - d[l];
                for di in d.iter_mut().take(n).skip(l + 2) {
                    *di -= h;
                }
                f += h;
                p = d[m];
                let mut c = 1.0;
                let mut c2 = c;
                let mut c3 = c;
                let el1 = e[l + 1];
                let mut s = 0.0;
                let mut s2 = 0.0;
                for i in (l..m).rev() {
                    c3 = c2;
                    c2 = c;
                    s2 = s;
                    let g = c * e[i];
                    h = c * p;
                    r = p.hypot(e[i]);
                    e[i + 1] = s * r;
                    s = e[i] / r;
                    c = p / r;
                    p = c * d[i] - s * g;
                    d[i + 1] = h + s * (c * g + s * d[i]);
                    for k in 0..n {
                        h = v[idx(k, i + 1)];
                        v[idx(k, i + 1)] = s * v[idx(k, i)] + c * h;
                        v[idx(k, i)] = c * v[idx(k, i)] - s * h;
                    }
                }
                p = -s * s2 * c3 * el1 * e[l] / dl1;
                e[l] = s * p;
                d[l] = c * p;
                if e[l].abs() <= eps * tst1 {
                    break;
                }
            }
        }
        d[l] += f;
        e[l] = 0.0;
    }
    Ok(())
}

/// Singular value decomposition `M = U diag(s) V^T` of a square matrix by
/// one-sided Jacobi rotations.
///
/// Returns `(U, s, V)`; singular values are not sorted. Columns of `U` that
/// belong to (numerically) zero singular values are completed to an
/// orthonormal basis, so `U` is always orthogonal — any completion is a valid
/// SVD, which matters only for rank-deficient inputs.
pub fn svd_jacobi(m: &Array2<f64>) -> Result<(Array2<f64>, Array1<f64>, Array2<f64>)> {
    let n = m.nrows();
    if n != m.ncols() {
        bail!(
            "svd_jacobi: matrix is {}x{}, not square",
            m.nrows(),
            m.ncols()
        );
    }
    if m.iter().any(|v| !v.is_finite()) {
        bail!("svd_jacobi: matrix has non-finite entries");
    }
    // Column-major working copies.
    let mut w: Vec<Vec<f64>> = (0..n).map(|c| m.column(c).to_vec()).collect();
    let mut vv: Vec<Vec<f64>> = (0..n)
        .map(|c| (0..n).map(|r| if r == c { 1.0 } else { 0.0 }).collect())
        .collect();
    for _sweep in 0..80 {
        let mut rotated = false;
        for p in 0..n {
            for q in (p + 1)..n {
                let alpha: f64 = w[p].iter().map(|x| x * x).sum();
                let beta: f64 = w[q].iter().map(|x| x * x).sum();
                let gamma: f64 = w[p].iter().zip(&w[q]).map(|(a, b)| a * b).sum();
                if gamma == 0.0 || gamma.abs() <= 1e-15 * (alpha * beta).sqrt() {
                    continue;
                }
                rotated = true;
                let zeta = (beta - alpha) / (2.0 * gamma);
                let t = zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
                let c = 1.0 / (1.0 + t * t).sqrt();
                let s = c * t;
                rotate_pair(&mut w, p, q, c, s);
                rotate_pair(&mut vv, p, q, c, s);
            }
        }
        if !rotated {
            break;
        }
    }
    let sigma: Vec<f64> = w
        .iter()
        .map(|col| col.iter().map(|x| x * x).sum::<f64>().sqrt())
        .collect();
    let smax = sigma.iter().copied().fold(0.0, f64::max);
    let tol = smax * 1e-12 * n as f64;
    let mut u = Array2::zeros((n, n));
    let mut missing = Vec::new();
    for c in 0..n {
        if sigma[c] > tol && sigma[c] > 0.0 {
            for r in 0..n {
                u[[r, c]] = w[c][r] / sigma[c];
            }
        } else {
            missing.push(c);
        }
    }
    complete_basis(&mut u, &missing);
    let mut v = Array2::zeros((n, n));
    for c in 0..n {
        for r in 0..n {
            v[[r, c]] = vv[c][r];
        }
    }
    Ok((u, Array1::from(sigma), v))
}

fn rotate_pair(cols: &mut [Vec<f64>], p: usize, q: usize, c: f64, s: f64) {
    let (left, right) = cols.split_at_mut(q);
    let cp = &mut left[p];
    let cq = &mut right[0];
    for (a, b) in cp.iter_mut().zip(cq.iter_mut()) {
        let x = *a;
        let y = *b;
        *a = c * x - s * y;
        *b = s * x + c * y;
    }
}

/// Fill the listed (zero) columns of `u` with unit vectors orthogonal to all
/// other columns, trying standard basis vectors in turn.
fn complete_basis(u: &mut Array2<f64>, missing: &[usize]) {
    let n = u.nrows();
    let mut filled: Vec<bool> = vec![true; n];
    for &c in missing {
        filled[c] = false;
    }
    let mut candidate = 0;
    for &c in missing {
        while candidate < n {
            let mut x = Array1::<f64>::zeros(n);
            x[candidate] = 1.0;
            candidate += 1;
            for _pass in 0..2 {
                for (k, &ok) in filled.iter().enumerate() {
                    if ok {
                        let col = u.column(k);
                        let proj = col.dot(&x);
                        x.scaled_add(-proj, &col);
                    }
                }
            }
            let norm = x.dot(&x).sqrt();
            if norm > 1e-8 {
                u.column_mut(c).assign(&(&x / norm));
                filled[c] = true;
                break;
            }
        }
    }
}

/// Orthonormalise the columns of `y` in place (modified Gram–Schmidt, two
/// passes). Columns that become numerically zero are replaced by zeros.
pub fn orthonormalize_columns(y: &mut Array2<f64>) {
    let k = y.ncols();
    for j in 0..k {
        for _pass in 0..2 {
            for i in 0..j {
                let proj = y.column(i).dot(&y.column(j));
                let ci = y.column(i).to_owned();
                y.column_mut(j).scaled_add(-proj, &ci);
            }
        }
        let norm = y.column(j).dot(&y.column(j)).sqrt();
        if norm > 1e-300 {
            y.column_mut(j).mapv_inplace(|v| v / norm);
        } else {
            y.column_mut(j).fill(0.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random_sym(n: usize, seed: u64) -> Array2<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let a = Array2::from_shape_fn((n, n), |_| rng.gen_range(-1.0..1.0));
        &a + &a.t()
    }

    #[test]
    fn eigen_reconstructs_matrix() {
        for n in [1, 2, 3, 7, 30] {
            let a = random_sym(n, n as u64);
            let (vals, vecs) = sym_eigen(&a).unwrap();
            let recon = vecs.dot(&Array2::from_diag(&vals)).dot(&vecs.t());
            let err = (&recon - &a).mapv(f64::abs).fold(0.0f64, |m, &v| m.max(v));
            assert!(err < 1e-10, "n={n} err={err}");
            let orth = vecs.t().dot(&vecs) - Array2::<f64>::eye(n);
            assert!(orth.mapv(f64::abs).fold(0.0f64, |m, &v| m.max(v)) < 1e-10);
            for w in vals.windows(2) {
                assert!(w[0] >= w[1]);
            }
        }
    }

    #[test]
    fn eigen_of_diagonal_and_known_2x2() {
        let a = array![[2.0, 1.0], [1.0, 2.0]];
        let (vals, _) = sym_eigen(&a).unwrap();
        assert!((vals[0] - 3.0).abs() < 1e-12 && (vals[1] - 1.0).abs() < 1e-12);
        let z = Array2::<f64>::zeros((4, 4));
        let (vals, vecs) = sym_eigen(&z).unwrap();
        assert!(vals.iter().all(|v| v.abs() < 1e-15));
        assert!(
            (vecs.t().dot(&vecs) - Array2::<f64>::eye(4))
                .mapv(f64::abs)
                .sum()
                < 1e-12
        );
    }

    #[test]
    fn svd_reconstructs_including_rank_deficient() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let a = Array2::from_shape_fn((6, 6), |_| rng.gen_range(-1.0..1.0));
        // rank 2 matrix
        let b = Array2::from_shape_fn((6, 2), |_| rng.gen_range(-1.0..1.0));
        let c = Array2::from_shape_fn((2, 6), |_| rng.gen_range(-1.0..1.0));
        for m in [a, b.dot(&c)] {
            let (u, s, v) = svd_jacobi(&m).unwrap();
            let recon = u.dot(&Array2::from_diag(&s)).dot(&v.t());
            assert!((&recon - &m).mapv(f64::abs).sum() < 1e-9);
            assert!((u.t().dot(&u) - Array2::<f64>::eye(6)).mapv(f64::abs).sum() < 1e-9);
            assert!((v.t().dot(&v) - Array2::<f64>::eye(6)).mapv(f64::abs).sum() < 1e-9);
        }
    }

    #[test]
    fn gram_schmidt_gives_orthonormal_columns() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let mut y = Array2::from_shape_fn((20, 5), |_| rng.gen_range(-1.0..1.0));
        orthonormalize_columns(&mut y);
        assert!((y.t().dot(&y) - Array2::<f64>::eye(5)).mapv(f64::abs).sum() < 1e-10);
    }
}
