//! Column statistics and column-wise operations: means, covariance,
//! Gram–Schmidt orthonormalisation and the eigenvector sign convention.

use ndarray::{Array1, Array2, ArrayView2, ArrayViewMut1, Axis};
use rayon::prelude::*;

/// Rows per chunk of [`column_means`] and [`covariance`]. Part of the
/// arithmetic: changing it changes the rounding of every fitted basis.
pub const CHUNK: usize = 2048;

/// Column means of `x` (n x d), summed in fixed chunks of [`CHUNK`] rows:
/// the chunks are summed in parallel, then added in chunk order, so the
/// result is the same for any thread count. An empty `x` gives zeros.
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

/// Sample covariance (d x d, divisor `n - 1`) of the rows of `x` about
/// `mean`, accumulated like [`column_means`]: each chunk contributes
/// `C_c^T C_c` of its centred rows, added in chunk order.
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

/// Orthonormalise the columns of `q` in place by modified Gram–Schmidt,
/// projecting each column against the previous ones `passes` times before
/// normalising it.
///
/// One pass is what the fit's subspace iteration uses (it
/// re-orthonormalises after every multiplication, so the loss of
/// orthogonality of a single pass never accumulates — and the fitted basis
/// depends on exactly this arithmetic). Two passes ("twice is enough",
/// Parlett–Kahan) give columns orthonormal to machine precision even for
/// ill-conditioned inputs, for a one-off basis.
///
/// A column whose norm after projection is at most `1e-300` (numerically in
/// the span of the previous ones) is left as it is, i.e. (numerically) zero,
/// not normalised: there is no direction to normalise.
pub fn orthonormalise_columns(q: &mut Array2<f64>, passes: usize) {
    let p = q.ncols();
    for j in 0..p {
        for _pass in 0..passes {
            for i in 0..j {
                let qi = q.column(i).to_owned();
                let dot = qi.dot(&q.column(j));
                let mut cj = q.column_mut(j);
                cj.scaled_add(-dot, &qi);
            }
        }
        let norm = q.column(j).dot(&q.column(j)).sqrt();
        if norm > 1e-300 {
            q.column_mut(j).mapv_inplace(|x| x / norm);
        }
    }
}

/// The sign convention of both PCAs: flip `v` so that its entry of largest
/// magnitude (the first one, on ties) is positive. An eigenvector is only
/// defined up to sign; fixing it makes fitted bases reproducible and
/// comparable (distances, and so every metric, do not depend on it).
pub fn largest_entry_positive(mut v: ArrayViewMut1<f64>) {
    let (mut best, mut arg) = (0.0f64, 0usize);
    for (r, x) in v.iter().enumerate() {
        if x.abs() > best {
            best = x.abs();
            arg = r;
        }
    }
    if v.get(arg).is_some_and(|&x| x < 0.0) {
        v.mapv_inplace(|x| -x);
    }
}
