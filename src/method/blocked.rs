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
/// Base rows scanned per vectorised threshold test.
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
            // The `short` smallest GEMM distances, kept sorted while
            // streaming over the base in chunks: a chunk whose smallest
            // value does not beat the current worst is skipped after one
            // vectorised test (keys increase, so a tie never displaces an
            // earlier key).
            let mut top: Vec<(f32, u32)> = Vec::with_capacity(short + 1);
            let mut exact: Vec<Neighbor> = Vec::with_capacity(short);
            let mut v = vec![0f32; nb];
            for (t, grow) in g.rows().into_iter().enumerate() {
                let qrow = &qs[(lo + t) * dims..(lo + t + 1) * dims];
                for ((o, &dot), &bn) in v.iter_mut().zip(grow.iter()).zip(&norms) {
                    *o = bn - 2.0 * dot;
                }
                top.clear();
                for (ci, chunk) in v.chunks(CHUNK).enumerate() {
                    if top.len() == short {
                        let worst = top.last().map_or(f32::INFINITY, |w| w.0);
                        // A branch-free count (vectorises; a float `min`
                        // fold does not).
                        if chunk.iter().fold(0u32, |c, &x| c + u32::from(x < worst)) == 0 {
                            continue;
                        }
                    }
                    for (o, &x) in chunk.iter().enumerate() {
                        if top.len() == short {
                            match top.last() {
                                Some(w) if x.total_cmp(&w.0).is_lt() => {
                                    top.pop();
                                }
                                _ => continue,
                            }
                        }
                        let at = top.partition_point(|e| e.0.total_cmp(&x).is_le());
                        top.insert(at, (x, (ci * CHUNK + o) as u32));
                    }
                }
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
