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

/// Ridge of the control whitening, relative to the largest control
/// eigenvalue in the PCA space: a guard against near-singular control
/// covariances, not a tuned value (docs/method.md).
pub const WHITEN_RIDGE: f64 = 1e-3;

/// Fewest control rows per neighbour dimension for which the control
/// covariance is estimated well enough to whiten with.
pub const WHITEN_MIN_ROWS_PER_DIM: usize = 2;

/// A fitted, frozen PCA basis, optionally followed by a control whitening.
#[derive(Debug, Clone)]
pub struct Pca {
    /// Column means (length d).
    pub mean: Array1<f64>,
    /// Loadings, d x p (orthonormal columns, by decreasing variance).
    pub components: Array2<f64>,
    /// Variance along each component (length p).
    pub variances: Array1<f64>,
    /// Control whitening of the PCA scores, p x p (symmetric), and its
    /// inverse; `None` = plain PCA scores. See [`Pca::whiten`].
    pub whitening: Option<Whitening>,
}

/// A symmetric whitening of the PCA scores and its inverse.
#[derive(Debug, Clone, PartialEq)]
pub struct Whitening {
    /// `W`, p x p: neighbour coordinates are `scores . W`.
    pub w: Array2<f64>,
    /// `W^-1`, p x p: a neighbour-space offset maps back as `offset . W^-1 . V^T`.
    pub w_inv: Array2<f64>,
}

impl Whitening {
    /// Rebuild from a stored symmetric `W` (its inverse recomputed).
    pub fn from_matrix(w: Array2<f64>) -> Result<Whitening> {
        anyhow::ensure!(w.ncols() == w.nrows(), "whitening matrix is not square");
        anyhow::ensure!(
            w.iter().all(|v| v.is_finite()),
            "whitening matrix has non-finite entries"
        );
        let (vals, vecs) = jacobi_eigen(&w);
        anyhow::ensure!(
            vals.iter().all(|&v| v > 0.0),
            "whitening matrix is not positive definite"
        );
        let inv: Vec<f64> = vals.iter().map(|&v| 1.0 / v).collect();
        let w_inv = eigen_compose(&vecs, &inv);
        Ok(Whitening { w, w_inv })
    }

    /// ZCA whitening of the covariance `c` (p x p) with a ridge of
    /// `ridge x` its largest eigenvalue, rescaled so the whitened
    /// covariance keeps `c`'s trace (the neighbour space keeps robust-z
    /// units on average, only its shape changes).
    pub fn from_covariance(c: &Array2<f64>, ridge: f64) -> Whitening {
        let (vals, vecs) = jacobi_eigen(c);
        let top = vals.iter().copied().fold(0.0_f64, f64::max).max(1e-300);
        let lam: Vec<f64> = vals.iter().map(|&v| v.max(0.0) + ridge * top).collect();
        let trace: f64 = vals.iter().map(|v| v.max(0.0)).sum::<f64>().max(1e-300);
        // Whitened covariance = W C W ~ diag(l / (l + ridge)); its trace:
        let white_trace: f64 = vals
            .iter()
            .zip(&lam)
            .map(|(&v, &l)| v.max(0.0) / l)
            .sum::<f64>()
            .max(1e-300);
        let gain = (trace / white_trace).sqrt();
        let a: Vec<f64> = lam.iter().map(|&l| gain / l.sqrt()).collect();
        let b: Vec<f64> = lam.iter().map(|&l| l.sqrt() / gain).collect();
        let (w, w_inv) = (eigen_compose(&vecs, &a), eigen_compose(&vecs, &b));
        Whitening { w, w_inv }
    }
}

/// `U diag(f) U^T` for eigenvectors `u` (columns) and per-eigenvector factors `f`.
fn eigen_compose(u: &Array2<f64>, f: &[f64]) -> Array2<f64> {
    let scaled = u * &Array1::from_vec(f.to_vec()).insert_axis(Axis(0));
    scaled.dot(&u.t())
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
            whitening: None,
        })
    }

    /// Number of components.
    pub fn dims(&self) -> usize {
        self.components.ncols()
    }

    /// Whiten the neighbour space on `controls` (rows x d, in the space the
    /// basis was fitted in): afterwards the negative controls' covariance in
    /// the neighbour space is (up to the ridge) isotropic, so distances
    /// weigh every direction by how much it varies *between controls*, not
    /// by how much it varies overall — directions where replicate noise is
    /// large count less, directions where treatments differ and controls do
    /// not count more (the sphering of pycytominer, done in the p-dim PCA
    /// space so it stays a p x p map the daemon can freeze). Returns false
    /// (and leaves the basis unwhitened) when there are fewer than
    /// [`WHITEN_MIN_ROWS_PER_DIM`] x p control rows.
    pub fn whiten(&mut self, controls: ArrayView2<f64>, ridge: f64) -> bool {
        let p = self.dims();
        if controls.nrows() < WHITEN_MIN_ROWS_PER_DIM * p || controls.nrows() < 3 {
            return false;
        }
        let centred = &controls - &self.mean.view().insert_axis(Axis(0));
        let scores = centred.dot(&self.components);
        let m = column_means(scores.view());
        let c = covariance(scores.view(), &m);
        self.whitening = Some(Whitening::from_covariance(&c, ridge));
        true
    }

    /// [`Pca::whiten`] on the rows of `w` that `controls` marks; `false`
    /// (plain PCA) when there are too few of them.
    pub fn whiten_on(&mut self, w: ArrayView2<f64>, controls: &[bool], ridge: f64) -> bool {
        let rows: Vec<usize> = (0..w.nrows())
            .filter(|&i| controls.get(i) == Some(&true))
            .collect();
        let ok = self.whiten(w.select(Axis(0), &rows).view(), ridge);
        if !ok {
            tracing::warn!(
                controls = rows.len(),
                dims = self.dims(),
                "too few control rows to whiten the neighbour space; using plain PCA"
            );
        }
        ok
    }

    /// The whitening matrix `W`, row-major (what a checkpoint stores).
    pub fn whitening_row_major(&self) -> Option<Vec<f64>> {
        self.whitening
            .as_ref()
            .map(|w| w.w.iter().copied().collect())
    }

    /// Project rows (n x d) to neighbour coordinates (n x p), as f32 for the
    /// index: PCA scores, whitened when [`Pca::whiten`] was applied.
    pub fn transform_f32(&self, x: ArrayView2<f64>) -> Array2<f32> {
        let centred = &x - &self.mean.view().insert_axis(Axis(0));
        let scores = centred.dot(&self.components);
        match &self.whitening {
            Some(wh) => scores.dot(&wh.w).mapv(|v| v as f32),
            None => scores.mapv(|v| v as f32),
        }
    }

    /// Map neighbour-space offsets (n x p) back to feature offsets (n x d):
    /// `offset . W^-1 . V^T` (only the neighbour subspace moves).
    pub fn offsets_to_features(&self, offset: ArrayView2<f64>) -> Array2<f64> {
        match &self.whitening {
            Some(wh) => offset.dot(&wh.w_inv).dot(&self.components.t()),
            None => offset.dot(&self.components.t()),
        }
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

    #[test]
    fn whitening_makes_control_covariance_isotropic_and_inverts() {
        // Controls stretched 10x along one axis, 0.5x along another.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let x = Array2::from_shape_fn((400, 6), |(_, j)| {
            let g: f64 = rng.gen_range(-1.0..1.0);
            g * match j {
                0 => 10.0,
                1 => 0.5,
                _ => 1.0 + j as f64 * 0.3,
            }
        });
        let mut pca = Pca::fit(x.view(), 4, 1).unwrap();
        assert!(pca.whiten(x.view(), 0.0));
        let y = pca.transform_f32(x.view()).mapv(f64::from);
        let m = column_means(y.view());
        let c = covariance(y.view(), &m);
        let d0 = c[[0, 0]];
        for i in 0..4 {
            for j in 0..4 {
                let want = if i == j { d0 } else { 0.0 };
                assert!(
                    (c[[i, j]] - want).abs() < 1e-4 * d0,
                    "{i},{j}: {}",
                    c[[i, j]]
                );
            }
        }
        // Trace kept: the whitened space is in the scores' units on average.
        let scores = (&x - &pca.mean.view().insert_axis(Axis(0))).dot(&pca.components);
        let cs = covariance(scores.view(), &column_means(scores.view()));
        assert!((c.diag().sum() - cs.diag().sum()).abs() < 1e-6 * cs.diag().sum());
        // W W^-1 = I, so a neighbour-space offset maps back exactly.
        let wh = pca.whitening.clone().unwrap();
        let id = wh.w.dot(&wh.w_inv);
        for i in 0..4 {
            for j in 0..4 {
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((id[[i, j]] - want).abs() < 1e-9);
            }
        }
        // An offset applied in features moves the neighbour coordinates by
        // exactly that offset (within the subspace).
        let off = Array2::from_shape_fn((1, 4), |(_, j)| 0.3 * (j as f64 + 1.0));
        let feat = pca.offsets_to_features(off.view());
        let row = x.slice(s![0..1, ..]).to_owned();
        let moved = &row - &feat;
        let dy = &pca.transform_f32(row.view()).mapv(f64::from)
            - &pca.transform_f32(moved.view()).mapv(f64::from);
        for j in 0..4 {
            assert!(
                (dy[[0, j]] - off[[0, j]]).abs() < 1e-4,
                "{j}: {}",
                dy[[0, j]]
            );
        }
    }

    #[test]
    fn whitening_refuses_too_few_controls() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let x = Array2::from_shape_fn((50, 10), |_| rng.gen_range(-1.0..1.0));
        let mut pca = Pca::fit(x.view(), 8, 1).unwrap();
        assert!(!pca.whiten(x.slice(s![..15, ..]), WHITEN_RIDGE));
        assert!(pca.whitening.is_none());
        assert!(pca.whiten(x.view(), WHITEN_RIDGE));
    }
}
