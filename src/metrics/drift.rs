//! Representation drift (cpdrift 1.0.0): how far already-corrected profiles
//! move when the correction is re-run with more batches.
//!
//! Corrections such as Harmony are defined only up to a rotation of the
//! feature space, so the displacement is measured after *gauge fixing*:
//! an orthogonal Procrustes rotation `R` (from the SVD of `Ac^T Bc`, `Ac`/`Bc`
//! the control rows of the two embeddings, each centred on its control mean)
//! maps the earlier embedding onto the later one, `A' = (A - mean_A) R + mean_B`.
//! Drift is the median cosine distance between `A'` and `B` over treated rows;
//! normalised drift divides it by the median within-batch replicate cosine
//! distance, so 1.0 = "moved as far as two replicates differ". Identical
//! embeddings give exactly 0.
//!
//! Without enough controls the rotation is not identified and drift would
//! measure basis rotation, so [`representation_drift`] refuses to run with
//! fewer than [`min_controls`] control rows (`max(10, d / 50)`, as cpdrift).
//! With fewer controls than dimensions `R` is not unique; our completion of
//! the singular basis may differ from numpy's (docs/metrics.md).

use super::labels::Codes;
use crate::linalg::svd_jacobi;
use anyhow::{bail, Result};
use ndarray::{Array1, Array2, Axis};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Minimum number of control rows for the gauge fix: `max(10, d / 50)`.
pub(crate) fn min_controls(dims: usize) -> usize {
    (dims / 50).max(10)
}

fn unit_rows(x: &Array2<f64>) -> Array2<f64> {
    let mut u = x.to_owned();
    for mut r in u.axis_iter_mut(Axis(0)) {
        let n = r.dot(&r).sqrt();
        let n = if n == 0.0 { 1.0 } else { n };
        r.mapv_inplace(|v| v / n);
    }
    u
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// Orthogonal `R` minimising `||A R - B||_F`.
pub(crate) fn procrustes_rotation(a: &Array2<f64>, b: &Array2<f64>) -> Result<Array2<f64>> {
    let m = a.t().dot(b);
    let (u, _s, v) = svd_jacobi(&m)?;
    Ok(u.dot(&v.t()))
}

/// Median cosine displacement of treated rows between two embeddings of the
/// same rows, after the control-based gauge fix (when `gauge_fix`).
pub fn representation_drift(
    before: &Array2<f64>,
    after: &Array2<f64>,
    is_control: &[bool],
    gauge_fix: bool,
) -> Result<f64> {
    if before.dim() != after.dim() {
        bail!(
            "drift: shape mismatch {:?} vs {:?}",
            before.dim(),
            after.dim()
        );
    }
    if is_control.len() != before.nrows() {
        bail!(
            "drift: control mask has {} entries for {} rows",
            is_control.len(),
            before.nrows()
        );
    }
    if before.iter().chain(after.iter()).any(|v| !v.is_finite()) {
        bail!("drift: embeddings contain non-finite values");
    }
    let ctrl: Vec<usize> = (0..is_control.len()).filter(|&i| is_control[i]).collect();
    let treated: Vec<usize> = (0..is_control.len()).filter(|&i| !is_control[i]).collect();
    if treated.is_empty() {
        bail!("drift: no treated rows");
    }
    let mut a = before.to_owned();
    if gauge_fix {
        let need = min_controls(before.ncols());
        if ctrl.len() < need {
            bail!(
                "drift: the gauge fix needs >= {need} control rows, got {}; without it drift measures basis rotation, not displacement",
                ctrl.len()
            );
        }
        let ac = before.select(Axis(0), &ctrl);
        let bc = after.select(Axis(0), &ctrl);
        let ma: Array1<f64> = ac
            .mean_axis(Axis(0))
            .unwrap_or_else(|| Array1::zeros(before.ncols()));
        let mb: Array1<f64> = bc
            .mean_axis(Axis(0))
            .unwrap_or_else(|| Array1::zeros(before.ncols()));
        let r = procrustes_rotation(&(&ac - &ma), &(&bc - &mb))?;
        a = (&a - &ma).dot(&r) + &mb;
    }
    let an = unit_rows(&a.select(Axis(0), &treated));
    let bn = unit_rows(&after.select(Axis(0), &treated));
    let d: Vec<f64> = an
        .rows()
        .into_iter()
        .zip(bn.rows())
        .map(|(x, y)| 1.0 - x.dot(&y).clamp(-1.0, 1.0))
        .collect();
    Ok(median(d))
}

/// Median within-batch cosine distance between replicate rows of the same
/// perturbation (the assay's noise floor). Groups (batch, perturbation) with
/// fewer than 2 rows are ignored; at most `max_perts` groups and 8 rows per
/// group are used (seeded sample). `None` if no group has 2 rows.
pub fn replicate_distance(
    z: &Array2<f64>,
    perts: &Codes,
    batch: Option<&Codes>,
    max_perts: usize,
    seed: u64,
) -> Option<f64> {
    let zn = unit_rows(z);
    let mut groups: std::collections::BTreeMap<(usize, usize), Vec<usize>> = Default::default();
    for i in 0..z.nrows() {
        let b = batch.map_or(0, |b| b.codes[i]);
        groups.entry((b, perts.codes[i])).or_default().push(i);
    }
    let mut gs: Vec<Vec<usize>> = groups.into_values().filter(|g| g.len() >= 2).collect();
    if gs.is_empty() {
        return None;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    if gs.len() > max_perts {
        gs.shuffle(&mut rng);
        gs.truncate(max_perts);
    }
    let mut ds = Vec::new();
    for mut g in gs {
        if g.len() > 8 {
            g.shuffle(&mut rng);
            g.truncate(8);
        }
        for a in 0..g.len() {
            for b in (a + 1)..g.len() {
                ds.push(1.0 - zn.row(g[a]).dot(&zn.row(g[b])));
            }
        }
    }
    Some(median(ds))
}

/// `representation_drift / replicate distance`; `None` when the replicate
/// distance is missing or not positive.
pub fn normalised_drift(
    before: &Array2<f64>,
    after: &Array2<f64>,
    is_control: &[bool],
    repl_dist: Option<f64>,
) -> Result<Option<f64>> {
    let d = representation_drift(before, after, is_control, true)?;
    Ok(match repl_dist {
        Some(r) if r > 0.0 && r.is_finite() => Some(d / r),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::orthonormalise_columns;
    use rand::Rng;

    fn setup() -> (Array2<f64>, Vec<bool>) {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let x = Array2::from_shape_fn((300, 20), |_| rng.gen_range(-1.0..1.0));
        let ctrl = (0..300).map(|i| i < 60).collect();
        (x, ctrl)
    }

    #[test]
    fn identity_gives_exactly_zero() {
        let (x, ctrl) = setup();
        let d = representation_drift(&x, &x, &ctrl, true).unwrap();
        assert!(d.abs() < 1e-12, "{d}");
        assert_eq!(representation_drift(&x, &x, &ctrl, false).unwrap(), 0.0);
    }

    #[test]
    fn rotation_is_absorbed_but_real_displacement_is_not() {
        let (x, ctrl) = setup();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut r = Array2::from_shape_fn((20, 20), |_| rng.gen_range(-1.0..1.0));
        orthonormalise_columns(&mut r, 2);
        let rotated = x.dot(&r);
        assert!(representation_drift(&x, &rotated, &ctrl, true).unwrap() < 1e-8);
        assert!(representation_drift(&x, &rotated, &ctrl, false).unwrap() > 0.1);
        let mut y = x.clone();
        for i in 60..300 {
            for j in 0..20 {
                y[[i, j]] += 0.5 * rng.gen_range(-1.0..1.0);
            }
        }
        assert!(representation_drift(&x, &y, &ctrl, true).unwrap() > 1e-3);
    }

    #[test]
    fn refuses_without_enough_controls() {
        let (x, _) = setup();
        let few: Vec<bool> = (0..300).map(|i| i < 9).collect();
        let e = representation_drift(&x, &x, &few, true)
            .unwrap_err()
            .to_string();
        assert!(e.contains(">= 10 control rows"), "{e}");
    }

    #[test]
    fn replicate_distance_of_identical_replicates_is_zero() {
        let x = ndarray::array![[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 2.0], [5.0, 5.0]];
        let p = Codes::new(&["a", "a", "b", "b", "c"]);
        assert_eq!(replicate_distance(&x, &p, None, 2000, 0), Some(0.0));
        let single = Codes::new(&["a", "b", "c", "d", "e"]);
        assert_eq!(replicate_distance(&x, &single, None, 2000, 0), None);
    }
}
