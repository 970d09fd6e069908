//! Singular value decomposition of a square matrix by one-sided (Hestenes)
//! Jacobi rotations: rotate pairs of columns until all are mutually
//! orthogonal; the column norms are then the singular values. Used for the
//! orthogonal Procrustes problem of representation drift, where only
//! `U V^T` matters.

use anyhow::{bail, Result};
use ndarray::{Array1, Array2};

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
