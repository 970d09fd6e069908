//! Oracle and property tests of the shared linear algebra: every
//! decomposition is checked by rebuilding what it decomposes
//! (`A = V diag(w) V^T`, `M = U diag(s) V^T`) and by the orthonormality of
//! its factors, on fixed cases and on random ones (proptest).

use super::*;
use ndarray::{array, Array1, Array2};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Largest absolute entry of `a`.
fn max_abs(a: &Array2<f64>) -> f64 {
    a.iter().fold(0.0f64, |m, &v| m.max(v.abs()))
}

/// `max |V^T V - I|`.
fn orthonormality_error(v: &Array2<f64>) -> f64 {
    max_abs(&(v.t().dot(v) - Array2::<f64>::eye(v.ncols())))
}

/// `max |V diag(w) V^T - A|`, relative to `max |A|`.
fn reconstruction_error(a: &Array2<f64>, w: &Array1<f64>, v: &Array2<f64>) -> f64 {
    let recon = v.dot(&Array2::from_diag(w)).dot(&v.t());
    max_abs(&(recon - a)) / max_abs(a).max(1e-300)
}

/// A random symmetric matrix, indefinite.
fn random_sym(n: usize, seed: u64) -> Array2<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let a = Array2::from_shape_fn((n, n), |_| rng.gen_range(-1.0..1.0));
    &a + &a.t()
}

/// A random positive semi-definite matrix of rank `min(n, r)`.
fn random_psd(n: usize, r: usize, seed: u64) -> Array2<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let a = Array2::from_shape_fn((n, r), |_| rng.gen_range(-1.0..1.0));
    a.dot(&a.t())
}

fn assert_descending(w: &Array1<f64>) {
    for pair in w.windows(2) {
        assert!(pair[0] >= pair[1], "{w}");
    }
}

fn assert_sign_convention(v: &Array2<f64>) {
    for col in v.columns() {
        let mut best = 0.0f64;
        for &x in col {
            if x.abs() > best.abs() {
                best = x;
            }
        }
        assert!(best >= 0.0, "largest entry negative: {col}");
    }
}

#[test]
fn jacobi_reconstructs_and_is_orthonormal() {
    for n in [1, 2, 3, 12, 40] {
        let a = random_psd(n, n + 3, n as u64);
        let (w, v) = jacobi_eigen(&a);
        assert!(reconstruction_error(&a, &w, &v) < 1e-12, "n={n}");
        assert!(orthonormality_error(&v) < 1e-12, "n={n}");
        // A v = lambda v for each pair.
        for j in 0..n {
            let r = a.dot(&v.column(j)) - &v.column(j) * w[j];
            assert!(r.iter().all(|x| x.abs() < 1e-9));
        }
        assert_descending(&w);
        assert_sign_convention(&v);
    }
}

#[test]
fn tql2_reconstructs_and_is_orthonormal() {
    for n in [1, 2, 3, 7, 30] {
        let a = random_sym(n, n as u64);
        let (w, v) = sym_eigen(&a).unwrap();
        assert!(reconstruction_error(&a, &w, &v) < 1e-12, "n={n}");
        assert!(orthonormality_error(&v) < 1e-12, "n={n}");
        assert_descending(&w);
    }
}

#[test]
fn eigen_of_known_2x2_diagonal_and_zero() {
    let a = array![[2.0, 1.0], [1.0, 2.0]];
    for (w, _) in [sym_eigen(&a).unwrap(), jacobi_eigen(&a)] {
        assert!((w[0] - 3.0).abs() < 1e-12 && (w[1] - 1.0).abs() < 1e-12);
    }
    let d = Array2::from_diag(&array![1.0, 5.0, 3.0]);
    let (w, v) = jacobi_eigen(&d);
    assert_eq!(w, array![5.0, 3.0, 1.0]);
    assert_eq!(v.column(0), array![0.0, 1.0, 0.0]);
    let z = Array2::<f64>::zeros((4, 4));
    let (w, v) = sym_eigen(&z).unwrap();
    assert!(w.iter().all(|v| v.abs() < 1e-15));
    assert!(orthonormality_error(&v) < 1e-12);
    let (w, v) = jacobi_eigen(&z);
    assert!(w.iter().all(|&v| v == 0.0));
    assert_eq!(v, Array2::<f64>::eye(4));
}

#[test]
fn tql2_rejects_bad_input() {
    assert!(sym_eigen(&Array2::zeros((2, 3))).is_err());
    assert!(sym_eigen(&array![[1.0, f64::NAN], [f64::NAN, 1.0]]).is_err());
    let (w, v) = sym_eigen(&Array2::zeros((0, 0))).unwrap();
    assert_eq!((w.len(), v.dim()), (0, (0, 0)));
}

#[test]
fn the_two_solvers_agree() {
    let a = random_psd(25, 30, 5);
    let (w1, v1) = jacobi_eigen(&a);
    let (w2, mut v2) = sym_eigen(&a).unwrap();
    for col in v2.columns_mut() {
        largest_entry_positive(col);
    }
    assert!((&w1 - &w2).iter().all(|d| d.abs() < 1e-10 * w1[0]));
    // A distinct spectrum: the same vectors once signs are fixed alike.
    assert!(max_abs(&(&v1 - &v2)) < 1e-8);
}

#[test]
fn subspace_iteration_matches_jacobi() {
    let a = random_psd(60, 63, 2);
    let (w1, _) = jacobi_eigen(&a);
    let (w2, v2) = subspace_eigen(&a, 5, 3);
    assert_eq!(v2.dim(), (60, 5));
    assert!(orthonormality_error(&v2) < 1e-10);
    for j in 0..5 {
        assert!(
            (w1[j] - w2[j]).abs() / w1[j] < 1e-6,
            "{} vs {}",
            w1[j],
            w2[j]
        );
        let r = a.dot(&v2.column(j)) - &v2.column(j) * w2[j];
        assert!(r.mapv(|x| x * x).sum().sqrt() / w2[j] < 1e-4);
    }
    // Seeded: the same input and seed give the same bits.
    assert_eq!(subspace_eigen(&a, 5, 3), (w2, v2));
}

#[test]
fn eigen_compose_inverts_and_takes_roots() {
    let a = random_psd(8, 12, 4);
    let (w, v) = jacobi_eigen(&a);
    let inv = eigen_compose(&v, &w.iter().map(|x| 1.0 / x).collect::<Vec<_>>());
    assert!(max_abs(&(a.dot(&inv) - Array2::<f64>::eye(8))) < 1e-9);
    let root = eigen_compose(&v, &w.iter().map(|x| x.sqrt()).collect::<Vec<_>>());
    assert!(max_abs(&(root.dot(&root) - &a)) < 1e-9 * max_abs(&a));
}

#[test]
fn lanczos_with_a_full_krylov_space_is_exact() {
    // A sparse tridiagonal-plus-corners matrix; n steps span everything.
    let n = 30;
    let mut dense = Array2::<f64>::zeros((n, n));
    for i in 0..n {
        dense[[i, i]] = 2.0 + (i % 4) as f64;
        dense[[i, (i + 1) % n]] = -1.0;
        dense[[(i + 1) % n, i]] = -1.0;
    }
    let sparse: Vec<Vec<(usize, f64)>> = dense
        .rows()
        .into_iter()
        .map(|r| {
            r.iter()
                .enumerate()
                .filter(|(_, &v)| v != 0.0)
                .map(|(j, &v)| (j, v))
                .collect()
        })
        .collect();
    let (w, v) = lanczos_eigen(&sparse, n, 7).unwrap();
    let (wd, _) = sym_eigen(&dense).unwrap();
    assert_eq!(w.len(), n);
    assert!((&w - &wd).iter().all(|d| d.abs() < 1e-9), "{w} vs {wd}");
    assert!(reconstruction_error(&dense, &w, &v) < 1e-9);
    assert!(orthonormality_error(&v) < 1e-9);
    // Degenerate requests.
    assert_eq!(lanczos_eigen(&sparse, 0, 7).unwrap().0.len(), 0);
    assert_eq!(lanczos_eigen(&[], 5, 7).unwrap().1.dim(), (0, 0));
}

#[test]
fn svd_reconstructs_including_rank_deficient() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let a = Array2::from_shape_fn((6, 6), |_| rng.gen_range(-1.0..1.0));
    // rank 2 matrix
    let b = Array2::from_shape_fn((6, 2), |_| rng.gen_range(-1.0..1.0));
    let c = Array2::from_shape_fn((2, 6), |_| rng.gen_range(-1.0..1.0));
    for m in [a, b.dot(&c), Array2::zeros((6, 6))] {
        let (u, s, v) = svd_jacobi(&m).unwrap();
        let recon = u.dot(&Array2::from_diag(&s)).dot(&v.t());
        assert!(max_abs(&(recon - &m)) < 1e-12);
        assert!(orthonormality_error(&u) < 1e-12);
        assert!(orthonormality_error(&v) < 1e-12);
        assert!(s.iter().all(|&x| x >= 0.0));
    }
    assert!(svd_jacobi(&Array2::zeros((2, 3))).is_err());
}

#[test]
fn gram_schmidt_gives_orthonormal_columns_spanning_the_input() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let y = Array2::from_shape_fn((20, 5), |_| rng.gen_range(-1.0..1.0));
    for passes in [1, 2] {
        let mut q = y.clone();
        orthonormalise_columns(&mut q, passes);
        assert!(orthonormality_error(&q) < 1e-12, "passes={passes}");
        // Same span: projecting y onto span(q) changes nothing.
        let proj = q.dot(&q.t().dot(&y));
        assert!(max_abs(&(proj - &y)) < 1e-12);
        // Triangular: column j of q lies in the span of y's first j + 1.
        assert!(q
            .column(0)
            .iter()
            .zip(y.column(0))
            .all(|(a, b)| a * b >= 0.0));
    }
    // A zero column stays zero (nothing to normalise).
    let mut z = Array2::<f64>::zeros((4, 2));
    z[[0, 0]] = 2.0;
    orthonormalise_columns(&mut z, 2);
    assert_eq!(z.column(0), array![1.0, 0.0, 0.0, 0.0]);
    assert!(z.column(1).iter().all(|&x| x == 0.0));
}

#[test]
fn means_and_covariance_match_naive_sums_for_any_thread_count() {
    // More rows than one chunk, so the chunked sums are exercised.
    let n = 2 * CHUNK + 123;
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let x = Array2::from_shape_fn((n, 4), |(_, j)| rng.gen_range(-1.0..1.0) + j as f64);
    let m = column_means(x.view());
    let c = covariance(x.view(), &m);
    for j in 0..4 {
        let naive = x.column(j).sum() / n as f64;
        assert!((m[j] - naive).abs() < 1e-12);
        for k in 0..4 {
            let naive: f64 = x
                .column(j)
                .iter()
                .zip(x.column(k))
                .map(|(a, b)| (a - m[j]) * (b - m[k]))
                .sum::<f64>()
                / (n - 1) as f64;
            assert!((c[[j, k]] - naive).abs() < 1e-12);
        }
    }
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let (m1, c1) = one.install(|| {
        let m1 = column_means(x.view());
        let c1 = covariance(x.view(), &m1);
        (m1, c1)
    });
    assert_eq!((m1, c1), (m, c));
    // Degenerate shapes do not divide by zero.
    let e = Array2::<f64>::zeros((0, 3));
    assert_eq!(column_means(e.view()), Array1::<f64>::zeros(3));
    let one_row = array![[1.0, 2.0]];
    assert_eq!(
        covariance(one_row.view(), &array![1.0, 2.0]),
        Array2::<f64>::zeros((2, 2))
    );
}

#[test]
fn sign_convention_picks_the_first_largest_entry() {
    let mut v = array![0.5, -2.0, 2.0, 1.0];
    largest_entry_positive(v.view_mut());
    assert_eq!(v, array![-0.5, 2.0, -2.0, -1.0]);
    let mut z = array![0.0, 0.0];
    largest_entry_positive(z.view_mut());
    assert_eq!(z, array![0.0, 0.0]);
}

/// Random symmetric matrices of size 1..=12 with entries in [-10, 10].
fn sym_matrix() -> impl Strategy<Value = Array2<f64>> {
    (1usize..=12).prop_flat_map(|n| {
        proptest::collection::vec(-10.0f64..10.0, n * n).prop_map(move |v| {
            let a = Array2::from_shape_vec((n, n), v).unwrap();
            (&a + &a.t()) / 2.0
        })
    })
}

/// Random square matrices of size 1..=8 with entries in [-10, 10].
fn square_matrix() -> impl Strategy<Value = Array2<f64>> {
    (1usize..=8).prop_flat_map(|n| {
        proptest::collection::vec(-10.0f64..10.0, n * n)
            .prop_map(move |v| Array2::from_shape_vec((n, n), v).unwrap())
    })
}

proptest! {
    #[test]
    fn prop_jacobi_is_an_eigendecomposition(a in sym_matrix()) {
        let (w, v) = jacobi_eigen(&a);
        prop_assert!(reconstruction_error(&a, &w, &v) < 1e-10);
        prop_assert!(orthonormality_error(&v) < 1e-10);
        prop_assert!(w.windows(2).into_iter().all(|p| p[0] >= p[1]));
    }

    #[test]
    fn prop_tql2_is_an_eigendecomposition(a in sym_matrix()) {
        let (w, v) = sym_eigen(&a).unwrap();
        prop_assert!(reconstruction_error(&a, &w, &v) < 1e-10);
        prop_assert!(orthonormality_error(&v) < 1e-10);
        prop_assert!(w.windows(2).into_iter().all(|p| p[0] >= p[1]));
        // Same spectrum as Jacobi.
        let (wj, _) = jacobi_eigen(&a);
        let scale = max_abs(&a).max(1.0);
        prop_assert!((&w - &wj).iter().all(|d| d.abs() < 1e-10 * scale));
    }

    #[test]
    fn prop_svd_reconstructs(m in square_matrix()) {
        let (u, s, v) = svd_jacobi(&m).unwrap();
        let recon = u.dot(&Array2::from_diag(&s)).dot(&v.t());
        prop_assert!(max_abs(&(recon - &m)) < 1e-10 * max_abs(&m).max(1.0));
        prop_assert!(orthonormality_error(&u) < 1e-10);
        prop_assert!(orthonormality_error(&v) < 1e-10);
    }

    #[test]
    fn prop_gram_schmidt_orthonormalises_full_rank_columns(
        seed in 0u64..1000, rows in 2usize..30, frac in 0.1f64..1.0
    ) {
        let cols = ((rows as f64 * frac) as usize).max(1);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let y = Array2::from_shape_fn((rows, cols), |_| rng.gen_range(-1.0..1.0));
        let mut q = y.clone();
        orthonormalise_columns(&mut q, 2);
        // Random columns are (almost surely) independent.
        prop_assert!(orthonormality_error(&q) < 1e-9);
        prop_assert!(max_abs(&(q.dot(&q.t().dot(&y)) - &y)) < 1e-9);
    }
}
