//! Dense linear algebra shared by the BALANS fit (`method/`) and the
//! evaluator (`metrics/`), written out so the crate needs no LAPACK.
//!
//! This module imports nothing else from the crate: it is the bottom of the
//! import graph, so both the method core and the metrics can use it without
//! depending on each other.
//!
//! | routine | what | used by |
//! |---|---|---|
//! | [`column_means`], [`covariance`] | chunked, thread-count independent sums | the fit's PCA, the control whitening |
//! | [`jacobi_eigen`] | all eigenpairs by cyclic Jacobi rotations | the fit's PCA (`d <= 400`), whitening, Rayleigh–Ritz |
//! | [`subspace_eigen`] | top eigenpairs by seeded block subspace iteration | the fit's PCA (`d > 400`) |
//! | [`sym_eigen`] | all eigenpairs by Householder + implicit QL (`tred2`/`tql2`) | the evaluator's PCA, kBET's diffusion maps |
//! | [`lanczos_eigen`] | Ritz pairs of a sparse symmetric matrix | kBET's diffusion maps of large label subsets |
//! | [`svd_jacobi`] | one-sided Jacobi SVD of a square matrix | representation drift (Procrustes) |
//! | [`orthonormalise_columns`] | modified Gram–Schmidt | subspace iteration, tests |
//! | [`eigen_compose`], [`largest_entry_positive`] | `U diag(f) U^T`; the sign convention | whitening; both PCAs |
//!
//! # Why two dense eigensolvers
//!
//! Both are exact to machine precision, but they do different arithmetic,
//! so their eigenvectors differ in the last bits — and those bits matter:
//!
//! * The fit's neighbour space is frozen into daemon checkpoints and every
//!   corrected table depends on it bit for bit; it has always come from
//!   Jacobi rotations (simple, and accurate for the small `p x p`
//!   Rayleigh–Ritz and whitening matrices). Switching solver would change
//!   every correction in the last digits and invalidate the byte-identical
//!   regression check.
//! * The evaluator's figures are checked against scib-metrics / numpy
//!   reference values (`tests/metrics_reference.rs`) and were measured with
//!   `tred2`/`tql2`, which is `O(n^3)` with a small constant — the right
//!   choice for the evaluator's dense covariance, Gram and diffusion
//!   matrices of up to a few hundred rows.
//!
//! So each caller keeps its method; what is shared is one implementation of
//! each (and one sign convention, [`largest_entry_positive`]).
//!
//! # Sums and determinism
//!
//! [`column_means`] and [`covariance`] sum fixed chunks of
//! [`CHUNK`] rows in parallel and then add the chunk sums in chunk order, so
//! the result does not depend on the number of threads. The evaluator's
//! exact PCA instead centres with `ndarray`'s `mean_axis` and forms one
//! product over all rows, as numpy does; the two summation orders round
//! differently for more than [`CHUNK`] rows, which is why the evaluator does
//! not use these two functions (see `method::pca::Pca::fit_exact`).

mod columns;
mod jacobi;
mod lanczos;
mod svd;
mod tridiagonal;

#[cfg(test)]
mod tests;

pub use columns::{
    column_means, covariance, largest_entry_positive, orthonormalise_columns, CHUNK,
};
pub use jacobi::{eigen_compose, jacobi_eigen, subspace_eigen};
pub use lanczos::lanczos_eigen;
pub use svd::svd_jacobi;
pub use tridiagonal::sym_eigen;
