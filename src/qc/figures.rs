//! The per-plate QC figures, defined once.
//!
//! Two paths compute a plate's figures: the daemon, against the model it
//! corrects the plate with ([`crate::qc::correct_plate`]), and `balans
//! correct --qc`, against the other plates of an offline fit
//! ([`crate::qc::offline_plate_qc`]). Their figures are meant to be read
//! side by side (and the outlier test compares a plate with its batch's
//! history), so both call these functions: only *which* rows a plate is
//! compared with differs between them, never the arithmetic.
//!
//! Every figure is in the neighbour space (the PCA space the method aligns
//! in), over f32 coordinates, accumulated in f64:
//! - **mixing**: per plate row, the share of its `k` nearest rows (over
//!   every batch) that belong to another batch, divided by the share of
//!   other-batch rows among the candidates (`expected`), capped at 1;
//!   averaged over the plate's rows. 1 = as mixed as chance, 0 = segregated.
//! - **cross-batch distance**: the median over the plate's rows of the
//!   distance to the nearest row of another batch.
//! - **mean offset**: the mean norm of the move from before to after
//!   correction.
//! - **control dispersion**: the median distance of the control rows to
//!   their centroid.
//! - **coverage**: the minimum and the median of the rows' coverage.
//!
//! A figure that cannot be computed is NaN (or `None`); [`finite`] turns the
//! former into the latter for the stored history.

use anyhow::Result;
use ndarray::ArrayView2;
use rayon::prelude::*;

use crate::method::index::BatchIndex;
use crate::method::model::RowHits;
use crate::method::preprocess::median_inplace;

/// `None` for NaN/inf (figures that could not be computed).
pub fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

/// Share of other-batch rows among the `total` candidate rows a plate's
/// rows are compared with, `own` of which share the plate's batch: the
/// other-batch share of a perfectly mixed neighbourhood. NaN without
/// candidates.
pub fn expected_other_share(own: usize, total: usize) -> f64 {
    if total == 0 {
        return f64::NAN;
    }
    1.0 - own as f64 / total as f64
}

/// Rows a query leaves out of the candidates: the plate's own rows when
/// they are indexed too (the offline QC, where every plate is in the
/// indices).
pub struct LeaveOut<'a> {
    /// The batch index holding them (searched for the `k` nearest rows
    /// that are not left out: [`crate::method::index::BatchIndex::search_many_without`]).
    pub batch: usize,
    /// How many rows are left out.
    pub rows: usize,
    /// Whether the row with this key is left out.
    pub is_left_out: &'a (dyn Fn(u64) -> bool + Sync),
}

/// For each row `i` in `rows` of `y`: its `k` nearest rows in every batch
/// index, as `(squared distance, batch id)`, index by index, without the
/// rows `leave_out` names. Each index answers the rows as one block
/// ([`BatchIndex::search_many`]), the indices in parallel. Cost: |rows| x
/// batches searches.
pub(crate) fn batch_hits(
    indices: &[BatchIndex],
    y: ArrayView2<f32>,
    rows: &[usize],
    k: usize,
    leave_out: Option<&LeaveOut>,
) -> Result<Vec<RowHits>> {
    let queries = y.select(ndarray::Axis(0), rows);
    let per_index: Vec<Vec<Vec<crate::method::index::Neighbor>>> = indices
        .par_iter()
        .enumerate()
        .map(|(c, index)| match leave_out {
            Some(l) if l.batch == c => {
                index.search_many_without(queries.view(), k, l.is_left_out, l.rows)
            }
            _ => index.search_many(queries.view(), k),
        })
        .collect::<Result<_>>()?;
    Ok((0..rows.len())
        .map(|r| {
            let mut hits: RowHits = Vec::new();
            for (c, lists) in per_index.iter().enumerate() {
                for nb in &lists[r] {
                    if leave_out.is_some_and(|l| (l.is_left_out)(nb.key)) {
                        continue;
                    }
                    hits.push((nb.dist2, c));
                }
            }
            hits
        })
        .collect())
}

/// `(mixing, cross-batch distance)` of a plate from each of its rows'
/// nearest rows in every batch index (`hits`, see [`batch_hits`]; more than
/// `k` per row is fine, the nearest `k` are used). `own_batch` is the
/// plate's batch (`None` = every hit is another batch's), `expected` the
/// other-batch share of a mixed neighbourhood ([`expected_other_share`]).
/// Both NaN when `expected` is not positive (nothing to mix with) or there
/// are no rows; the distance is NaN when no row has another batch's hit.
pub fn mixing_from_hits(
    hits: &[RowHits],
    own_batch: Option<usize>,
    expected: f64,
    k: usize,
) -> (f64, f64) {
    if expected.is_nan() || expected <= 0.0 || hits.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mut total = 0.0;
    let mut nearest_other: Vec<f64> = Vec::with_capacity(hits.len());
    for row in hits {
        let mut all: Vec<(f32, bool)> = row
            .iter()
            .map(|&(d, c)| (d, Some(c) != own_batch))
            .collect();
        // Stable: ties keep the index order.
        all.sort_by(|a, b| a.0.total_cmp(&b.0));
        if let Some(d) = all.iter().find(|a| a.1) {
            nearest_other.push((d.0 as f64).sqrt());
        }
        all.truncate(k);
        let other = all.iter().filter(|a| a.1).count() as f64 / all.len().max(1) as f64;
        total += (other / expected).min(1.0);
    }
    let distance = if nearest_other.is_empty() {
        f64::NAN
    } else {
        median_inplace(&mut nearest_other)
    };
    (total / hits.len() as f64, distance)
}

/// [`batch_hits`] then [`mixing_from_hits`]; no query at all when there is
/// nothing to mix with (`expected` not positive).
pub fn query_mixing(
    indices: &[BatchIndex],
    y: ArrayView2<f32>,
    rows: &[usize],
    k: usize,
    own_batch: Option<usize>,
    expected: f64,
    leave_out: Option<&LeaveOut>,
) -> Result<(f64, f64)> {
    if expected.is_nan() || expected <= 0.0 {
        return Ok((f64::NAN, f64::NAN));
    }
    let hits = batch_hits(indices, y, rows, k, leave_out)?;
    Ok(mixing_from_hits(&hits, own_batch, expected, k))
}

/// Mean over `rows` of the norm of `before - after` (differences in f64).
/// NaN without rows.
pub fn mean_offset(before: ArrayView2<f32>, after: ArrayView2<f32>, rows: &[usize]) -> f64 {
    if rows.is_empty() {
        return f64::NAN;
    }
    rows.iter()
        .map(|&i| {
            before
                .row(i)
                .iter()
                .zip(after.row(i).iter())
                .map(|(&a, &c)| (a as f64 - c as f64).powi(2))
                .sum::<f64>()
                .sqrt()
        })
        .sum::<f64>()
        / rows.len() as f64
}

/// Median distance of the rows `rows` of `y` (the control rows) to their
/// centroid (summed in f64). `None` with fewer than 2 rows.
pub fn control_dispersion(y: ArrayView2<f32>, rows: &[usize]) -> Option<f64> {
    if rows.len() < 2 {
        return None;
    }
    let mut centre = vec![0f64; y.ncols()];
    for &i in rows {
        for (c, &v) in centre.iter_mut().zip(y.row(i).iter()) {
            *c += v as f64;
        }
    }
    centre.iter_mut().for_each(|c| *c /= rows.len() as f64);
    let mut d: Vec<f64> = rows
        .iter()
        .map(|&i| {
            y.row(i)
                .iter()
                .zip(&centre)
                .map(|(&a, c)| (a as f64 - c).powi(2))
                .sum::<f64>()
                .sqrt()
        })
        .collect();
    Some(median_inplace(&mut d))
}

/// `(min, median)` of the rows' coverage; NaN for no rows. Used for a
/// plate's QC record and for the model-wide `balans_model_coverage` gauge.
pub fn coverage_figures(coverage: &[f32]) -> (f64, f64) {
    if coverage.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mut cov: Vec<f64> = coverage.iter().map(|&c| c as f64).collect();
    let min = cov.iter().copied().fold(f64::INFINITY, f64::min);
    (min, median_inplace(&mut cov))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::method::index::build_batch_indices;
    use crate::method::params::IndexKind;
    use ndarray::Array2;
    use rand::{Rng, SeedableRng};

    /// Random points of `batches` batches, batch b shifted by `shift * b`.
    fn points(n: usize, p: usize, batches: u32, shift: f32, seed: u64) -> (Array2<f32>, Vec<u32>) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let batch: Vec<u32> = (0..n).map(|i| i as u32 % batches).collect();
        let y = Array2::from_shape_fn((n, p), |(i, j)| {
            rng.gen_range(-1.0f32..1.0) + if j == 0 { shift * batch[i] as f32 } else { 0.0 }
        });
        (y, batch)
    }

    fn dist(a: ndarray::ArrayView1<f32>, b: ndarray::ArrayView1<f32>) -> f64 {
        a.iter()
            .zip(b.iter())
            .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
            .sum::<f64>()
            .sqrt()
    }

    fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            0.5 * (v[n / 2 - 1] + v[n / 2])
        }
    }

    /// Brute force over all pairs: the plate `rows` (batch `b`) against every
    /// other row.
    fn brute_mixing(y: &Array2<f32>, batch: &[u32], rows: &[usize], k: usize) -> (f64, f64) {
        let b = batch[rows[0]];
        let cand: Vec<usize> = (0..y.nrows()).filter(|j| !rows.contains(j)).collect();
        let own = cand.iter().filter(|&&j| batch[j] == b).count();
        let expected = 1.0 - own as f64 / cand.len() as f64;
        let mut total = 0.0;
        let mut nearest = Vec::new();
        for &i in rows {
            let mut d: Vec<(f64, bool)> = cand
                .iter()
                .map(|&j| (dist(y.row(i), y.row(j)), batch[j] != b))
                .collect();
            d.sort_by(|a, c| a.0.total_cmp(&c.0));
            nearest.push(d.iter().find(|x| x.1).unwrap().0);
            let other = d[..k].iter().filter(|x| x.1).count() as f64 / k as f64;
            total += (other / expected).min(1.0);
        }
        (total / rows.len() as f64, median(nearest))
    }

    #[test]
    fn mixing_matches_brute_force_with_the_plate_left_out_or_not_indexed() {
        let k = 5;
        for (shift, seed) in [(0.0, 1), (0.7, 2), (5.0, 3)] {
            let (y, batch) = points(240, 4, 3, shift, seed);
            // The plate: 20 rows of batch 1.
            let rows: Vec<usize> = (0..y.nrows()).filter(|&i| batch[i] == 1).take(20).collect();
            let want = brute_mixing(&y, &batch, &rows, k);
            // Offline: every row indexed, the plate left out.
            let indices = build_batch_indices(y.view(), &batch, 3, IndexKind::Exact, 1).unwrap();
            let is_plate = |key: u64| rows.contains(&(key as usize));
            let leave = LeaveOut {
                batch: 1,
                rows: rows.len(),
                is_left_out: &is_plate,
            };
            let own = batch.iter().filter(|&&b| b == 1).count() - rows.len();
            let expected = expected_other_share(own, y.nrows() - rows.len());
            let got = query_mixing(
                &indices,
                y.view(),
                &rows,
                k,
                Some(1),
                expected,
                Some(&leave),
            )
            .unwrap();
            assert!((got.0 - want.0).abs() < 1e-12, "{got:?} {want:?}");
            assert!(
                (got.1 - want.1).abs() < 1e-5 * want.1.max(1.0),
                "{got:?} {want:?}"
            );
            // Daemon: the plate not indexed at all.
            let model_rows: Vec<usize> = (0..y.nrows()).filter(|i| !rows.contains(i)).collect();
            let sub = y.select(ndarray::Axis(0), &model_rows);
            let sub_batch: Vec<u32> = model_rows.iter().map(|&i| batch[i]).collect();
            let indices =
                build_batch_indices(sub.view(), &sub_batch, 3, IndexKind::Exact, 1).unwrap();
            let got2 = query_mixing(&indices, y.view(), &rows, k, Some(1), expected, None).unwrap();
            assert_eq!(got, got2);
        }
    }

    #[test]
    fn mixing_extremes_and_degenerate_cases() {
        // Two rows of the own batch at distance 1, one other-batch row at 2.
        let hits: Vec<RowHits> = vec![vec![(1.0, 0), (1.0, 0), (4.0, 1)]];
        // k = 2: no other-batch row among the nearest -> 0; distance 2.
        assert_eq!(mixing_from_hits(&hits, Some(0), 0.5, 2), (0.0, 2.0));
        // k = 3: one in three against an expected half -> 2/3.
        let (m, d) = mixing_from_hits(&hits, Some(0), 0.5, 3);
        assert!((m - 2.0 / 3.0).abs() < 1e-15 && d == 2.0);
        // A new batch: every hit is another batch's; capped at 1.
        assert_eq!(mixing_from_hits(&hits, None, 0.5, 2), (1.0, 1.0));
        // Nothing to mix with, no rows, no other-batch hit.
        assert!(mixing_from_hits(&hits, Some(0), 0.0, 2).0.is_nan());
        assert!(mixing_from_hits(&hits, Some(0), f64::NAN, 2).0.is_nan());
        assert!(mixing_from_hits(&[], Some(0), 0.5, 2).0.is_nan());
        let own_only: Vec<RowHits> = vec![vec![(1.0, 0)]];
        let (m, d) = mixing_from_hits(&own_only, Some(0), 0.5, 2);
        assert_eq!(m, 0.0);
        assert!(d.is_nan());
        assert!(expected_other_share(3, 0).is_nan());
        assert_eq!(expected_other_share(1, 4), 0.75);
    }

    #[test]
    fn offset_dispersion_and_coverage_match_brute_force() {
        let (a, _) = points(30, 6, 1, 0.0, 7);
        let (b, _) = points(30, 6, 1, 0.0, 8);
        let rows: Vec<usize> = (3..17).collect();
        let want = rows.iter().map(|&i| dist(a.row(i), b.row(i))).sum::<f64>() / rows.len() as f64;
        assert!((mean_offset(a.view(), b.view(), &rows) - want).abs() < 1e-12);
        assert_eq!(mean_offset(a.view(), a.view(), &rows), 0.0);
        assert!(mean_offset(a.view(), b.view(), &[]).is_nan());

        // Dispersion: the centroid of the selected rows, in f64.
        let sel = a.select(ndarray::Axis(0), &rows).mapv(|v| v as f64);
        let centre = sel.mean_axis(ndarray::Axis(0)).unwrap();
        let want = median(
            sel.rows()
                .into_iter()
                .map(|r| (&r - &centre).mapv(|v| v * v).sum().sqrt())
                .collect(),
        );
        let got = control_dispersion(a.view(), &rows).unwrap();
        assert!((got - want).abs() < 1e-12, "{got} {want}");
        assert_eq!(control_dispersion(a.view(), &[4]), None);
        // Two rows: each is half their distance from the centre.
        let d = dist(a.row(0), a.row(1));
        assert!((control_dispersion(a.view(), &[0, 1]).unwrap() - d / 2.0).abs() < 1e-12);

        assert_eq!(coverage_figures(&[3.0, 1.0, 2.0, 5.0]), (1.0, 2.5));
        assert_eq!(finite(f64::NAN), None);
        assert_eq!(finite(f64::INFINITY), None);
        assert_eq!(finite(1.0), Some(1.0));
    }
}
