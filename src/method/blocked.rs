//! Blocked exact k-nearest neighbours for small base sets.
//!
//! Squared distances of a block of queries to every base row are computed
//! as `|q|^2 + |b|^2 - 2 q.b` with one matrix product per block (ndarray's
//! GEMM), which does the `O(queries x base x dims)` work at GEMM speed
//! instead of one distance loop per pair. The GEMM form loses precision
//! when `|q|^2` is much larger than the distance, so it only *shortlists*:
//! the `k + 8` smallest are recomputed with the direct difference
//! ([`l2sq`], the exact backend's distance) and sorted by (distance, key).
//! The result equals brute force unless the GEMM rounding error (about
//! `1e-6 x |q|^2`) exceeds the gap between the k-th and the (k+8)-th
//! neighbour (tests: `blocked_matches_brute_force`).
//!
//! Used where a base set is small enough that `queries x base` is cheaper
//! than one HNSW query per row: the scales of the fit's subsample and the
//! interpolation of the rows outside it (`fit.rs`).

use ndarray::{s, ArrayView2, CowArray, Ix2};
use rayon::prelude::*;

use crate::method::index::{l2sq, Neighbor};

/// Query rows per GEMM block.
const BLOCK: usize = 256;
/// Base rows per chunk minimum in the shortlist's threshold ([`shortlist`]).
const CHUNK: usize = 16;
/// Extra shortlisted candidates recomputed exactly.
const SHORTLIST_EXTRA: usize = 8;

/// The `k.min(base rows)` nearest base rows of every query, sorted by
/// (squared distance, base position): row-major, `queries x k'` entries,
/// `key` = position in `base`.
pub(crate) fn knn_blocked(
    queries: ArrayView2<f32>,
    base: ArrayView2<f32>,
    k: usize,
) -> Vec<Neighbor> {
    let (nq, nb) = (queries.nrows(), base.nrows());
    let k = k.min(nb);
    if k == 0 || nq == 0 {
        return Vec::new();
    }
    let q: CowArray<f32, Ix2> = queries.as_standard_layout();
    let b: CowArray<f32, Ix2> = base.as_standard_layout();
    let dims = b.ncols();
    let (qs, bs) = match (q.as_slice(), b.as_slice()) {
        (Some(qs), Some(bs)) => (qs, bs),
        _ => return Vec::new(), // unreachable: standard layout
    };
    let norms: Vec<f32> = bs
        .chunks_exact(dims.max(1))
        .map(|r| r.iter().map(|v| v * v).sum())
        .collect();
    let short = (k + SHORTLIST_EXTRA).min(nb);
    let bt = b.t();
    let mut out = vec![Neighbor { key: 0, dist2: 0.0 }; nq * k];
    out.par_chunks_mut(BLOCK * k)
        .enumerate()
        .for_each(|(blk, chunk)| {
            let lo = blk * BLOCK;
            let hi = (lo + BLOCK).min(nq);
            let g = q.slice(s![lo..hi, ..]).dot(&bt);
            // Per query row: the `short` smallest GEMM distances
            // ([`shortlist`]), then their exact distances, sorted.
            let mut top: Vec<(f32, u32)> = Vec::with_capacity(nb);
            let mut mins: Vec<f32> = Vec::with_capacity(nb.div_ceil(CHUNK));
            let mut sel: Vec<f32> = Vec::with_capacity(nb.div_ceil(CHUNK));
            let mut exact: Vec<Neighbor> = Vec::with_capacity(short);
            let mut v = vec![0f32; nb];
            for (t, grow) in g.rows().into_iter().enumerate() {
                let qrow = &qs[(lo + t) * dims..(lo + t + 1) * dims];
                // `g` is a fresh standard-layout product: a row is a slice,
                // and a slice loop vectorises (ndarray's element iterator
                // does not).
                match grow.as_slice() {
                    Some(dots) => {
                        for ((o, &dot), &bn) in v.iter_mut().zip(dots).zip(&norms) {
                            *o = bn - 2.0 * dot;
                        }
                    }
                    None => {
                        for ((o, &dot), &bn) in v.iter_mut().zip(grow.iter()).zip(&norms) {
                            *o = bn - 2.0 * dot;
                        }
                    }
                }
                shortlist(&v, short, &mut mins, &mut sel, &mut top);
                let cand = &top;
                exact.clear();
                exact.extend(cand.iter().map(|&(_, j)| Neighbor {
                    key: j as u64,
                    dist2: l2sq(qrow, &bs[j as usize * dims..(j as usize + 1) * dims]),
                }));
                exact.sort_by(|a, c| a.dist2.total_cmp(&c.dist2).then(a.key.cmp(&c.key)));
                chunk[t * k..(t + 1) * k].copy_from_slice(&exact[..k]);
            }
        });
    out
}

/// The minima of `v`'s strided groups `{i, i + g, i + 2g, ...}` (`g` =
/// `mins.len()` after the call, `v.len() / per_group` rounded up), into
/// `mins`. Strided rather than contiguous groups: their minima are one
/// element-wise minimum over consecutive `g`-wide blocks, which
/// vectorises. `if x < m` rather than `f32::min` for the same reason (NaN,
/// which the callers never pass, is simply never a minimum; a NaN first
/// element leaves a NaN minimum, which [`for_each_at_or_below`] scans).
pub(crate) fn group_minima<T: Copy + PartialOrd>(v: &[T], per_group: usize, mins: &mut Vec<T>) {
    let g = v.len().div_ceil(per_group).max(1);
    mins.clear();
    mins.extend_from_slice(&v[..g.min(v.len())]);
    for block in v.chunks(g).skip(1) {
        for (m, &x) in mins.iter_mut().zip(block) {
            *m = if x < *m { x } else { *m };
        }
    }
}

/// Every `(position, value)` of `v` at or below `tau`, visiting only the
/// groups of [`group_minima`] (`mins`) whose minimum is not above `tau`:
/// a value `<= tau` lies in such a group. With `tau` the `k`-th smallest
/// minimum, `k` distinct groups hold a value `<= tau`, so the `k` smallest
/// values of `v` are all among those visited — typically from `k` to
/// `2 x k` groups, not all of `v`.
pub(crate) fn for_each_at_or_below<T: Copy + PartialOrd>(
    v: &[T],
    mins: &[T],
    tau: T,
    mut f: impl FnMut(usize, T),
) {
    let g = mins.len().max(1);
    for (i, &m) in mins.iter().enumerate() {
        if m > tau {
            continue;
        }
        for j in (i..v.len()).step_by(g) {
            if v[j] <= tau {
                f(j, v[j]);
            }
        }
    }
}

/// The `short` smallest values of `v` as `(value, position)`, in
/// (value, position) order, into `top` (`mins` and `sel` are scratch).
///
/// A threshold first: the minima of `len / CHUNK` strided groups of `v`
/// ([`group_minima`]) are `short` distinct elements at or below the
/// `short`-th smallest group minimum `tau`, so the `short` smallest values
/// are all `<= tau`. One vectorised pass for the minima, a selection among
/// them, a filtering pass over the groups whose minimum is at or below
/// `tau` only ([`for_each_at_or_below`]: about a quarter of `v` for
/// `short` = 23 of 2,000) and a sort of the few survivors (typically 2-3 x
/// `short`) replace a sorted insertion per improving candidate (about
/// `short x ln(n / short)` of them in a streaming top-k).
fn shortlist(
    v: &[f32],
    short: usize,
    mins: &mut Vec<f32>,
    sel: &mut Vec<f32>,
    top: &mut Vec<(f32, u32)>,
) {
    let by_value = |a: &(f32, u32), b: &(f32, u32)| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1));
    top.clear();
    group_minima(v, CHUNK, mins);
    if short < mins.len() {
        // The threshold from a copy: `mins` keeps the groups' minima in
        // group order, which says which groups to visit.
        sel.clear();
        sel.extend_from_slice(mins);
        let (_, tau, _) = sel.select_nth_unstable_by(short - 1, |a, b| a.total_cmp(b));
        for_each_at_or_below(v, mins, *tau, |j, x| top.push((x, j as u32)));
    }
    if top.len() < short {
        // Few chunks (or non-finite values): take every value.
        top.clear();
        top.extend(v.iter().enumerate().map(|(j, &x)| (x, j as u32)));
    }
    if top.len() > short {
        top.select_nth_unstable_by(short - 1, by_value);
        top.truncate(short);
    }
    top.sort_unstable_by(by_value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};

    fn brute(q: &[f32], base: &Array2<f32>, k: usize) -> Vec<Neighbor> {
        let mut all: Vec<Neighbor> = base
            .rows()
            .into_iter()
            .enumerate()
            .map(|(j, r)| Neighbor {
                key: j as u64,
                dist2: l2sq(q, r.as_slice().unwrap()),
            })
            .collect();
        all.sort_by(|a, c| a.dist2.total_cmp(&c.dist2).then(a.key.cmp(&c.key)));
        all.truncate(k);
        all
    }

    fn random(n: usize, d: usize, seed: u64, offset: f32) -> Array2<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        Array2::from_shape_fn((n, d), |_| offset + rng.gen_range(-1.0f32..1.0))
    }

    #[test]
    fn blocked_matches_brute_force() {
        // Two blocks of queries and a far offset (|q|^2 >> distances, where
        // the GEMM form alone would lose the order).
        let q = random(300, 50, 1, 20.0);
        let base = random(700, 50, 2, 20.0);
        let got = knn_blocked(q.view(), base.view(), 15);
        assert_eq!(got.len(), 300 * 15);
        for t in 0..300 {
            let want = brute(q.row(t).as_slice().unwrap(), &base, 15);
            assert_eq!(&got[t * 15..(t + 1) * 15], &want[..], "query {t}");
        }
    }

    #[test]
    fn small_base_and_empty_inputs() {
        let q = random(5, 3, 3, 0.0);
        let base = random(4, 3, 4, 0.0);
        let got = knn_blocked(q.view(), base.view(), 10);
        assert_eq!(got.len(), 5 * 4, "k clamped to the base size");
        assert!(knn_blocked(q.view(), base.slice(s![0..0, ..]), 3).is_empty());
        // A query that is a base row finds itself at distance exactly 0.
        let got = knn_blocked(base.view(), base.view(), 1);
        for (j, nb) in got.iter().enumerate() {
            assert_eq!((nb.key, nb.dist2), (j as u64, 0.0));
        }
    }

    proptest! {
        #[test]
        fn prop_shortlist_is_the_smallest_by_value_then_position(
            v in proptest::collection::vec(0u8..20, 1..200), short in 1usize..40) {
            // Small integer values: many ties, which position must break.
            let v: Vec<f32> = v.into_iter().map(f32::from).collect();
            let mut want: Vec<(f32, u32)> =
                v.iter().enumerate().map(|(j, &x)| (x, j as u32)).collect();
            want.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            want.truncate(short);
            let (mut mins, mut sel, mut top) = (Vec::new(), Vec::new(), Vec::new());
            shortlist(&v, short, &mut mins, &mut sel, &mut top);
            prop_assert_eq!(top, want);
        }

        #[test]
        fn prop_matches_brute_force(nq in 1usize..40, nb in 1usize..60, d in 1usize..9,
                                    k in 1usize..12, seed in 0u64..1000) {
            let q = random(nq, d, seed, 0.0);
            let base = random(nb, d, seed + 1, 0.0);
            let got = knn_blocked(q.view(), base.view(), k);
            let kk = k.min(nb);
            for t in 0..nq {
                let want = brute(q.row(t).as_slice().unwrap(), &base, kk);
                prop_assert_eq!(&got[t * kk..(t + 1) * kk], &want[..]);
            }
        }
    }
}
