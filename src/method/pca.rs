//! Principal component analysis: the one PCA type of the crate, with the
//! fit's and the evaluator's fitting strategies.
//!
//! BALANS searches neighbours in the first `p` principal components of the
//! preprocessed profiles (p ~ 50). The basis is fitted once and frozen, so
//! later rows (the daemon's new plates) project into the same space.
//!
//! Two ways to fit the same kind of basis, each kept bit for bit (the
//! arithmetic lives in [`crate::linalg`]; see its docs for why there are two
//! eigensolvers):
//!
//! * [`Pca::fit`] — the BALANS neighbour space. The covariance (d x d) is
//!   accumulated over fixed row chunks and summed in chunk order, so the
//!   result does not depend on the thread count. Its top eigenvectors come
//!   from cyclic Jacobi rotations when d is small (exact — the oracle) and
//!   from seeded block subspace iteration with a Rayleigh–Ritz step
//!   otherwise. The basis may then be whitened on the negative controls
//!   ([`Pca::whiten`]).
//! * [`Pca::fit_exact`] — the evaluator's PCA, as scib-metrics / numpy
//!   compute it: centre with the column means, then a full
//!   eigendecomposition (`tred2`/`tql2`) of whichever of the covariance
//!   (`d x d`) or Gram (`n x n`) matrix is smaller. The right singular
//!   vectors of the centred data are the covariance's eigenvectors and
//!   `variance = s^2 / (n - 1)` its eigenvalues, so this is the SVD route
//!   of the reference without an SVD.
//!
//! Both give unit loadings by decreasing variance, each with its
//! largest-magnitude entry positive (distances, and so every metric, are
//! invariant to the signs).

use crate::linalg::{
    column_means, covariance, eigen_compose, jacobi_eigen, largest_entry_positive, subspace_eigen,
    sym_eigen,
};
use anyhow::{bail, Result};
use ndarray::{s, Array1, Array2, ArrayView2, Axis};
use rayon::prelude::*;

use crate::method::preprocess::clipped_rows;

/// Largest dimension for which [`Pca::fit`] uses the full Jacobi
/// eigensolver (above it: subspace iteration).
const JACOBI_MAX_DIM: usize = 400;
/// Rows per parallel block of [`Pca::transform_f32`] and of the
/// whitening's scores, at most: a block's centred copy is `rows x d` f64,
/// so wide tables take fewer rows ([`project_rows`]).
const PROJECT_ROWS: usize = 4096;
/// Bytes of one block's centred copy, at most (4 MB: 512 rows at 1,000
/// features; 4,096 rows, [`PROJECT_ROWS`], up to 128 features).
const PROJECT_BYTES: usize = 4 << 20;
/// Rows per block of [`Pca::transform_clipped_rows_f32`] (4 MB of f64 at
/// 1,000 features).
const GATHER_ROWS: usize = 512;

/// Rows per projection block for rows of `d` features: [`PROJECT_BYTES`]
/// of f64, between 64 and [`PROJECT_ROWS`]. A row's coordinates are the
/// same dot products whatever block it falls in, so the block size moves
/// memory, not values.
fn project_rows(d: usize) -> usize {
    (PROJECT_BYTES / (8 * d.max(1))).clamp(64, PROJECT_ROWS)
}

/// Ridge of the control whitening, relative to the largest control
/// eigenvalue in the PCA space: a guard against near-singular control
/// covariances, not a tuned value (docs/method.md).
pub const WHITEN_RIDGE: f64 = 1e-3;

/// Fewest control rows per neighbour dimension for which the control
/// covariance is estimated well enough to whiten with.
pub(crate) const WHITEN_MIN_ROWS_PER_DIM: usize = 2;

/// A fitted, frozen PCA basis, optionally followed by a control whitening.
///
/// Coordinates are `(x - mean) . components`, then `. W` when whitened.
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

impl Pca {
    /// The BALANS neighbour space: fit `p` components (clamped to d and
    /// n - 1, at least 1) to `x` (n x d). Thread-count independent;
    /// deterministic for a given `seed` (which only matters for d > 400).
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

    /// The evaluator's PCA: `k` components of the rows of `x` (capped at
    /// `min(n, d)`, at least one) by a full eigendecomposition, as numpy's
    /// SVD route computes them (module docs). Variances are clamped at 0.
    /// Errors on fewer than 2 rows or no columns.
    pub fn fit_exact(x: ArrayView2<f64>, k: usize) -> Result<Pca> {
        let (n, d) = x.dim();
        if n < 2 {
            bail!("PCA needs at least 2 rows, got {n}");
        }
        if d == 0 {
            bail!("PCA needs at least 1 feature column");
        }
        let k = k.min(n).min(d).max(1);
        let mean = x.mean_axis(Axis(0)).unwrap_or_else(|| Array1::zeros(d));
        let xc = &x - &mean;
        let denom = (n - 1) as f64;
        let mut components = Array2::zeros((d, k));
        let mut variances = Array1::zeros(k);
        if d <= n {
            let cov = xc.t().dot(&xc) / denom;
            let (vals, vecs) = sym_eigen(&cov)?;
            for j in 0..k {
                variances[j] = vals[j].max(0.0);
                components.column_mut(j).assign(&vecs.column(j));
            }
        } else {
            // Gram route: an eigenvector u of X X^T with eigenvalue lambda
            // gives the unit axis X^T u / sqrt(lambda).
            let gram = xc.dot(&xc.t());
            let (vals, vecs) = sym_eigen(&gram)?;
            for j in 0..k {
                let lambda = vals[j];
                variances[j] = lambda.max(0.0) / denom;
                if lambda > 1e-12 * vals[0].abs().max(1e-300) {
                    let axis = xc.t().dot(&vecs.column(j)) / lambda.sqrt();
                    components.column_mut(j).assign(&axis);
                }
            }
        }
        for col in components.columns_mut() {
            largest_entry_positive(col);
        }
        Ok(Pca {
            mean,
            components,
            variances,
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
        if !self.enough_to_whiten(controls.nrows()) {
            return false;
        }
        // Scores in blocks of rows (a row's scores are the same dot
        // products whatever block it falls in): no centred copy of the
        // controls.
        let block = project_rows(controls.ncols());
        let mut scores = Array2::<f64>::zeros((controls.nrows(), self.dims()));
        scores
            .axis_chunks_iter_mut(Axis(0), block)
            .into_par_iter()
            .zip(controls.axis_chunks_iter(Axis(0), block).into_par_iter())
            .for_each(|(mut o, xb)| o.assign(&self.scores(xb)));
        self.whiten_scores(scores.view(), ridge);
        true
    }

    /// [`Pca::whiten_rows`] of the rows `rows` of `z`, clipped to +-CLIP,
    /// without their clipped copy: the scores are formed [`GATHER_ROWS`]
    /// rows at a time (the same values as whitening on
    /// `clipped_rows(z, rows)`, bit for bit). The offline fit whitens on
    /// every control row of the table this way: at 100k x 1,000 the copy
    /// was 80 MB at the fit's peak (docs/performance.md, "Width, memory").
    pub fn whiten_clipped_rows(&mut self, z: &Array2<f64>, rows: &[usize], ridge: f64) -> bool {
        if !self.enough_to_whiten(rows.len()) {
            tracing::warn!(
                controls = rows.len(),
                dims = self.dims(),
                "too few control rows to whiten the neighbour space; using plain PCA"
            );
            return false;
        }
        let mut scores = Array2::<f64>::zeros((rows.len(), self.dims()));
        scores
            .axis_chunks_iter_mut(Axis(0), GATHER_ROWS)
            .into_par_iter()
            .zip(rows.par_chunks(GATHER_ROWS))
            .for_each(|(mut o, rs)| o.assign(&self.scores(clipped_rows(z, rs).view())));
        self.whiten_scores(scores.view(), ridge);
        true
    }

    /// Whether `rows` control rows are enough to whiten on.
    fn enough_to_whiten(&self, rows: usize) -> bool {
        rows >= WHITEN_MIN_ROWS_PER_DIM * self.dims() && rows >= 3
    }

    /// Set the whitening from the controls' PCA scores.
    fn whiten_scores(&mut self, scores: ArrayView2<f64>, ridge: f64) {
        let m = column_means(scores);
        let c = covariance(scores, &m);
        self.whitening = Some(Whitening::from_covariance(&c, ridge));
    }

    /// [`Pca::whiten`] on the rows of `w` that `controls` marks; `false`
    /// (plain PCA) when there are too few of them.
    pub fn whiten_on(&mut self, w: ArrayView2<f64>, controls: &[bool], ridge: f64) -> bool {
        let rows: Vec<usize> = (0..w.nrows())
            .filter(|&i| controls.get(i) == Some(&true))
            .collect();
        self.whiten_rows(w.select(Axis(0), &rows).view(), ridge)
    }

    /// [`Pca::whiten`] on the control rows `controls` themselves (the
    /// caller selected them), with a warning when there are too few.
    pub fn whiten_rows(&mut self, controls: ArrayView2<f64>, ridge: f64) -> bool {
        let ok = self.whiten(controls, ridge);
        if !ok {
            tracing::warn!(
                controls = controls.nrows(),
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

    /// PCA scores of rows (n x d -> n x p), not whitened.
    fn scores(&self, x: ArrayView2<f64>) -> Array2<f64> {
        let centred = &x - &self.mean.view().insert_axis(Axis(0));
        centred.dot(&self.components)
    }

    /// Coordinates of rows (n x d): PCA scores, whitened when
    /// [`Pca::whiten`] was applied. Unchecked: `x` must have d columns.
    fn coordinates(&self, x: ArrayView2<f64>) -> Array2<f64> {
        let scores = self.scores(x);
        match &self.whitening {
            Some(wh) => scores.dot(&wh.w),
            None => scores,
        }
    }

    /// Project rows (n x d) to coordinates (n x p) in `f64`; errors when
    /// `x` does not have the fitted number of columns.
    pub fn transform(&self, x: ArrayView2<f64>) -> Result<Array2<f64>> {
        if x.ncols() != self.mean.len() {
            bail!(
                "PCA transform: data has {} columns, model was fitted on {}",
                x.ncols(),
                self.mean.len()
            );
        }
        Ok(self.coordinates(x))
    }

    /// Project rows (n x d) to neighbour coordinates (n x p), as f32 for the
    /// index: PCA scores, whitened when [`Pca::whiten`] was applied.
    ///
    /// Rows are projected in parallel blocks of [`project_rows`], each
    /// written straight into the f32 result: no n x d centred copy and no
    /// n x p f64 intermediate (at 1M x 50 those were 600 MB of short-lived
    /// pages). A row's coordinates are the same dot products whatever block
    /// it falls in, so the result equals projecting all rows at once.
    pub fn transform_f32(&self, x: ArrayView2<f64>) -> Array2<f32> {
        let block = project_rows(x.ncols());
        let mut out = Array2::<f32>::zeros((x.nrows(), self.dims()));
        out.axis_chunks_iter_mut(Axis(0), block)
            .into_par_iter()
            .zip(x.axis_chunks_iter(Axis(0), block).into_par_iter())
            .for_each(|(mut o, xb)| {
                o.zip_mut_with(&self.coordinates(xb), |a, &v| *a = v as f32);
            });
        out
    }

    /// `transform_f32(clipped_rows(z, rows))`, the same values (each output
    /// row depends on its input row only), formed [`GATHER_ROWS`] rows at a
    /// time, so the clipped copy is never held whole: at 1,000 features a
    /// 16k-row block of it was 131 MB, which glibc maps afresh and faults in
    /// again for every block.
    pub fn transform_clipped_rows_f32(&self, z: &Array2<f64>, rows: &[usize]) -> Array2<f32> {
        let mut out = Array2::<f32>::zeros((rows.len(), self.dims()));
        out.axis_chunks_iter_mut(Axis(0), GATHER_ROWS)
            .into_par_iter()
            .zip(rows.par_chunks(GATHER_ROWS))
            .for_each(|(mut o, rs)| {
                let xb = clipped_rows(z, rs);
                o.zip_mut_with(&self.coordinates(xb.view()), |a, &v| *a = v as f32);
            });
        out
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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn data(n: usize, d: usize) -> Array2<f64> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        Array2::from_shape_fn((n, d), |(_, j)| rng.gen_range(-1.0..1.0) * (j + 1) as f64)
    }

    #[test]
    fn blocked_projection_equals_projecting_all_rows_at_once() {
        // More rows than one block, a ragged last block, whitened or not.
        let x = data(2 * PROJECT_ROWS + 37, 12);
        let mut pca = Pca::fit(x.view(), 5, 1).unwrap();
        for _ in 0..2 {
            let whole = pca.coordinates(x.view()).mapv(|v| v as f32);
            assert_eq!(pca.transform_f32(x.view()), whole);
            let controls: Vec<bool> = (0..x.nrows()).map(|i| i % 3 == 0).collect();
            assert!(pca.whiten_on(x.view(), &controls, WHITEN_RIDGE));
        }
    }

    #[test]
    fn wide_rows_are_projected_in_smaller_blocks_with_the_same_bits() {
        // 3,000 features: blocks of 174 rows, so 400 rows take three.
        let d = 3000;
        assert!(project_rows(d) < 200);
        assert_eq!(project_rows(12), PROJECT_ROWS);
        let x = data(400, d);
        let mut pca = Pca::fit(x.view(), 3, 1).unwrap();
        for _ in 0..2 {
            let whole = pca.coordinates(x.view()).mapv(|v| v as f32);
            assert_eq!(pca.transform_f32(x.view()), whole);
            let controls: Vec<bool> = (0..x.nrows()).map(|i| i % 2 == 0).collect();
            assert!(pca.whiten_on(x.view(), &controls, WHITEN_RIDGE));
        }
    }

    #[test]
    fn whitening_on_gathered_clipped_rows_equals_whitening_on_their_copy() {
        use crate::method::preprocess::CLIP;
        let mut z = data(3 * GATHER_ROWS + 11, 9);
        z.mapv_inplace(|v| v * 4.0 * CLIP);
        let rows: Vec<usize> = (0..z.nrows()).filter(|i| i % 3 != 1).collect();
        let pca = Pca::fit(clipped_rows(&z, &rows).view(), 4, 3).unwrap();
        let (mut a, mut b) = (pca.clone(), pca);
        assert!(a.whiten_rows(clipped_rows(&z, &rows).view(), WHITEN_RIDGE));
        assert!(b.whiten_clipped_rows(&z, &rows, WHITEN_RIDGE));
        let bits = |p: &Pca| {
            p.whitening_row_major()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<_>>()
        };
        assert_eq!(bits(&a), bits(&b));
        // Too few rows: plain PCA, as `whiten_rows`.
        let mut c = Pca::fit(z.view(), 4, 3).unwrap();
        assert!(!c.whiten_clipped_rows(&z, &rows[..5], WHITEN_RIDGE));
        assert!(c.whitening_row_major().is_none());
    }

    #[test]
    fn projecting_gathered_clipped_rows_equals_projecting_their_copy() {
        use crate::method::preprocess::CLIP;
        // Rows in any order, repeated, over several gather blocks, with
        // values beyond the clip; whitened or not: the very bits of
        // projecting a clipped copy of those rows at once.
        let mut z = data(3 * GATHER_ROWS + 11, 9);
        z.mapv_inplace(|v| v * 4.0 * CLIP);
        let rows: Vec<usize> = (0..2 * GATHER_ROWS + 300)
            .map(|i| (i * 7919) % z.nrows())
            .chain([0, 0, 5])
            .collect();
        let mut pca = Pca::fit(z.view(), 4, 3).unwrap();
        for _ in 0..2 {
            let copy = clipped_rows(&z, &rows);
            assert!(copy.iter().any(|&v| v == CLIP) && copy.iter().any(|&v| v == -CLIP));
            let want = pca.transform_f32(copy.view());
            let got = pca.transform_clipped_rows_f32(&z, &rows);
            assert_eq!(got.dim(), (rows.len(), 4));
            assert!(got
                .iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits()));
            let controls: Vec<bool> = (0..z.nrows()).map(|i| i % 3 == 0).collect();
            assert!(pca.whiten_on(z.view(), &controls, WHITEN_RIDGE));
        }
        assert_eq!(pca.transform_clipped_rows_f32(&z, &[]).dim(), (0, 4));
    }

    #[test]
    fn exact_covariance_and_gram_routes_agree() {
        // Same data seen as tall (covariance route) and with d > n (Gram route).
        let x = data(12, 20);
        let wide = Pca::fit_exact(x.view(), 5).unwrap();
        let xt = data(40, 6);
        let tall = Pca::fit_exact(xt.view(), 6).unwrap();
        // Total variance is preserved when all components are kept.
        let total: f64 = xt.var_axis(Axis(0), 1.0).sum();
        assert!((tall.variances.sum() - total).abs() < 1e-9);
        // Gram route: variances equal those of projected coordinates.
        let coords = wide.transform(x.view()).unwrap();
        let var = coords.var_axis(Axis(0), 1.0);
        for j in 0..5 {
            assert!((var[j] - wide.variances[j]).abs() < 1e-9);
        }
        // Axes orthonormal.
        let g = wide.components.t().dot(&wide.components);
        assert!((g - Array2::<f64>::eye(5)).mapv(f64::abs).sum() < 1e-9);
    }

    #[test]
    fn exact_rejects_tiny_input() {
        assert!(Pca::fit_exact(Array2::zeros((1, 3)).view(), 2).is_err());
        assert!(Pca::fit_exact(Array2::zeros((3, 0)).view(), 2).is_err());
        let p = Pca::fit_exact(data(5, 3).view(), 2).unwrap();
        assert!(p.transform(Array2::zeros((2, 4)).view()).is_err());
    }

    #[test]
    fn transform_does_not_depend_on_the_loadings_layout() {
        // The evaluator used to keep loadings as rows (k x d) and project
        // with `components.t()`; the shared type keeps columns (d x k). The
        // product must be bit for bit the same, or `evaluate` would change.
        for (n, d, k) in [(300, 20, 8), (12, 30, 5), (3000, 60, 50)] {
            let x = data(n, d);
            let pca = Pca::fit_exact(x.view(), k).unwrap();
            let rows = pca.components.t().as_standard_layout().into_owned();
            let old = (&x - &pca.mean).dot(&rows.t());
            assert_eq!(pca.transform(x.view()).unwrap(), old, "{n}x{d}, k={k}");
        }
    }

    #[test]
    fn both_strategies_find_the_same_basis() {
        // A clear spectrum: the seeded fit and the exact fit agree up to
        // rounding (same sign convention, same order).
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(8);
        let x = Array2::from_shape_fn((500, 6), |(_, j)| rng.gen_range(-1.0..1.0) * (6 - j) as f64);
        let a = Pca::fit(x.view(), 4, 1).unwrap();
        let b = Pca::fit_exact(x.view(), 4).unwrap();
        for j in 0..4 {
            assert!((a.variances[j] - b.variances[j]).abs() < 1e-9 * b.variances[0]);
            for r in 0..6 {
                let (va, vb) = (a.components[[r, j]], b.components[[r, j]]);
                assert!(
                    (va - vb).abs() < 1e-8,
                    "component {j}, entry {r}: {va} vs {vb}"
                );
            }
        }
        let ya = a.transform(x.view()).unwrap();
        let yf = a.transform_f32(x.view());
        assert_eq!(ya.mapv(|v| v as f32), yf);
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
