//! Lanczos iteration for the extremal eigenpairs of a large sparse
//! symmetric matrix (kBET's diffusion maps of label subsets too large for a
//! dense decomposition).
//!
//! Starting from a seeded random unit vector, each step multiplies the
//! newest basis vector by the matrix and orthogonalises the product against
//! *all* previous ones (twice — full re-orthogonalisation, so the basis
//! stays orthonormal and no spurious copies of converged eigenvalues
//! appear). The coefficients form a tridiagonal matrix `T` whose
//! eigenpairs ([`sym_eigen`]) give Ritz pairs `(theta, Q w)`; the extremal
//! ones converge first, even where the spectrum clusters (near 1, for a
//! diffusion operator).

use super::tridiagonal::sym_eigen;
use anyhow::Result;
use ndarray::{Array1, Array2};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// Ritz pairs of the symmetric sparse matrix `t` (row `i` lists its
/// non-zero entries `(column, value)`) after at most `steps` Lanczos steps
/// (capped at the dimension; fewer when the Krylov space is exhausted).
///
/// Returns the Ritz values in descending order and the Ritz vectors as
/// columns (`n x steps`). Deterministic for a given `seed` (the products
/// are computed in parallel, row by row, each in a fixed order).
pub fn lanczos_eigen(
    t: &[Vec<(usize, f64)>],
    steps: usize,
    seed: u64,
) -> Result<(Array1<f64>, Array2<f64>)> {
    let n = t.len();
    let steps = steps.min(n);
    if steps == 0 {
        return Ok((Array1::zeros(0), Array2::zeros((n, 0))));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut q: Vec<Array1<f64>> = Vec::with_capacity(steps + 1);
    let mut v: Array1<f64> = Array1::from_shape_fn(n, |_| rng.gen_range(-1.0..1.0));
    let norm: f64 = v.dot(&v).sqrt();
    v /= norm;
    q.push(v);
    let mut alpha: Vec<f64> = Vec::new();
    let mut beta: Vec<f64> = Vec::new();
    for j in 0..steps {
        let qj = &q[j];
        let mut w = Array1::from(
            t.par_iter()
                .map(|row| row.iter().map(|&(c, wt)| wt * qj[c]).sum::<f64>())
                .collect::<Vec<f64>>(),
        );
        alpha.push(qj.dot(&w));
        for _pass in 0..2 {
            for qi in &q {
                let proj = qi.dot(&w);
                w.scaled_add(-proj, qi);
            }
        }
        let b = w.dot(&w).sqrt();
        if j + 1 == steps || b < 1e-10 {
            break;
        }
        beta.push(b);
        w /= b;
        q.push(w);
    }
    let kk = alpha.len();
    let mut tri = Array2::zeros((kk, kk));
    for i in 0..kk {
        tri[[i, i]] = alpha[i];
        if i + 1 < kk {
            tri[[i, i + 1]] = beta[i];
            tri[[i + 1, i]] = beta[i];
        }
    }
    let (vals, w) = sym_eigen(&tri)?;
    let mut qm = Array2::zeros((n, kk));
    for (c, qc) in q.iter().take(kk).enumerate() {
        qm.column_mut(c).assign(qc);
    }
    Ok((vals, qm.dot(&w)))
}
