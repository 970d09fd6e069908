//! All eigenpairs of a dense symmetric matrix by Householder
//! tridiagonalisation followed by the implicit QL algorithm — the classic
//! EISPACK `tred2`/`tql2` pair, as ported in JAMA. `O(n^3)` with a small
//! constant and accurate to machine precision: the evaluator's solver (PCA
//! covariance and Gram matrices, kBET's dense diffusion maps and Lanczos
//! tridiagonals).
//!
//! The two phases: `tred2` applies `n - 2` Householder reflections that
//! reduce `A` to a tridiagonal `T = Q^T A Q` (accumulating `Q`); `tql2` then
//! diagonalises `T` by implicitly shifted QL sweeps, each a chain of Givens
//! rotations that is also applied to `Q`'s columns.

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
