//! Exact k-nearest neighbours by blocked brute force.
//!
//! The distance matrix is never materialised: queries are processed in blocks
//! of [`QUERY_BLOCK`] rows (in parallel with rayon), each block is multiplied
//! against candidate blocks of [`CANDIDATE_BLOCK`] rows with a single-precision
//! GEMM, and every query keeps a small sorted list of its best candidates.
//! Memory is `O(n k)` plus one `QUERY_BLOCK x CANDIDATE_BLOCK` tile per thread.
//!
//! The GEMM runs in `f32` for speed; each query keeps `k + 8` candidates and
//! their distances are then recomputed in `f64` and re-sorted, so the returned
//! distances are exact and the neighbour sets differ from a pure-`f64`
//! search only on near-ties at the `k`-th place.
//!
//! As in scib-metrics' `NeighborsResults`, every row's own index is its first
//! neighbour, with distance 0.
//!
//! Large inputs: [`knn_hnsw`] builds a usearch HNSW graph instead (the
//! reference computes its graphs with pynndescent, also approximate),
//! through the crate's one usearch wrapper,
//! [`BatchIndex`], with its own graph
//! settings; its recall against [`knn`] is tested and reported by
//! `evaluate` in its notes.

use crate::method::index::{BatchIndex, HnswParams, IndexConfig, IndexKind};
use anyhow::{bail, Result};
use ndarray::{s, Array2, ArrayView1, Axis};
use rayon::prelude::*;

/// Queries per parallel work item.
pub(crate) const QUERY_BLOCK: usize = 256;
/// Candidates per GEMM tile.
pub(crate) const CANDIDATE_BLOCK: usize = 2048;
/// Extra candidates kept per query before the exact `f64` re-ranking.
const SLACK: usize = 8;
/// Graph degree of [`knn_hnsw`]'s index.
const HNSW_CONNECTIVITY: usize = 16;
/// Insertion beam of [`knn_hnsw`]'s index: wider than the fit's
/// ([`HnswParams::BALANS`]), since one graph over all rows is built once.
const HNSW_EXPANSION_ADD: usize = 64;

/// Distance used for neighbour search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// `sqrt(sum (x - y)^2)`.
    Euclidean,
    /// `1 - x·y / (|x| |y|)`, clipped to `[0, 2]`; a zero row is at distance 1
    /// from everything.
    Cosine,
}

/// k-NN result: row `i`'s neighbours are `indices[i*k .. (i+1)*k]`, nearest
/// first, self first.
#[derive(Debug, Clone)]
pub struct Neighbors {
    /// Number of rows.
    pub n: usize,
    /// Neighbours per row (including self).
    pub k: usize,
    /// Flattened `n x k` neighbour indices.
    pub indices: Vec<usize>,
    /// Flattened `n x k` distances, ascending per row.
    pub distances: Vec<f64>,
}

impl Neighbors {
    /// Neighbour indices of row `i`.
    pub fn row(&self, i: usize) -> &[usize] {
        &self.indices[i * self.k..(i + 1) * self.k]
    }

    /// Neighbour distances of row `i`.
    pub fn row_dist(&self, i: usize) -> &[f64] {
        &self.distances[i * self.k..(i + 1) * self.k]
    }

    /// Keep the first `k` neighbours of each row (like scib's
    /// `subset_neighbors`).
    pub fn subset(&self, k: usize) -> Result<Neighbors> {
        if k > self.k || k == 0 {
            bail!("cannot subset {} neighbours to {k}", self.k);
        }
        let mut indices = Vec::with_capacity(self.n * k);
        let mut distances = Vec::with_capacity(self.n * k);
        for i in 0..self.n {
            indices.extend_from_slice(&self.row(i)[..k]);
            distances.extend_from_slice(&self.row_dist(i)[..k]);
        }
        Ok(Neighbors {
            n: self.n,
            k,
            indices,
            distances,
        })
    }
}

/// Exact distance between two rows in `f64`.
pub fn distance(a: ArrayView1<f64>, b: ArrayView1<f64>, metric: Metric) -> f64 {
    match metric {
        Metric::Euclidean => a
            .iter()
            .zip(b.iter())
            .map(|(x, y)| (x - y) * (x - y))
            .sum::<f64>()
            .sqrt(),
        Metric::Cosine => {
            let ab = a.dot(&b);
            let aa = a.dot(&a);
            let bb = b.dot(&b);
            if aa == 0.0 || bb == 0.0 {
                1.0
            } else {
                (1.0 - ab / (aa * bb).sqrt()).clamp(0.0, 2.0)
            }
        }
    }
}

/// The `k` nearest neighbours (self included) of every row of `x`.
///
/// `k` is capped at the number of rows. Errors on empty or non-finite input.
pub fn knn(x: &Array2<f64>, k: usize, metric: Metric) -> Result<Neighbors> {
    let (n, d) = x.dim();
    if n == 0 {
        bail!("kNN: no rows");
    }
    if k == 0 {
        bail!("kNN: k must be at least 1");
    }
    if let Some(((r, c), v)) = x.indexed_iter().find(|(_, v)| !v.is_finite()) {
        bail!("kNN: non-finite value {v} at row {r}, column {c}");
    }
    let k = k.min(n);
    // +1: the query itself is among the candidates.
    let keep = (k + SLACK + 1).min(n);
    // f32 working copy; cosine works on unit rows.
    let mut xf: Array2<f32> = x.mapv(|v| v as f32);
    if metric == Metric::Cosine {
        for mut row in xf.rows_mut() {
            let norm = row.dot(&row).sqrt();
            if norm > 0.0 {
                row.mapv_inplace(|v| v / norm);
            }
        }
    }
    let sq: Vec<f32> = xf.rows().into_iter().map(|r| r.dot(&r)).collect();
    let n_blocks = n.div_ceil(QUERY_BLOCK);
    let blocks: Vec<Vec<(Vec<usize>, Vec<f64>)>> = (0..n_blocks)
        .into_par_iter()
        .map(|b| {
            let q0 = b * QUERY_BLOCK;
            let q1 = (q0 + QUERY_BLOCK).min(n);
            let q = xf.slice(s![q0..q1, ..]);
            let mut best: Vec<Vec<(f32, usize)>> = vec![Vec::with_capacity(keep + 1); q1 - q0];
            let mut c0 = 0;
            while c0 < n {
                let c1 = (c0 + CANDIDATE_BLOCK).min(n);
                let c = xf.slice(s![c0..c1, ..]);
                let g = q.dot(&c.t());
                // Ranking key: |y|^2 - 2 x.y (|x|^2 is constant per query) or
                // -x.y for unit rows. Self is kept like any candidate and
                // dropped in the exact re-ranking below.
                let csq = &sq[c0..c1];
                for (r, grow) in g.axis_iter(Axis(0)).enumerate() {
                    let list = &mut best[r];
                    let mut worst = if list.len() < keep {
                        f32::INFINITY
                    } else {
                        list[list.len() - 1].0
                    };
                    for (cc, (&dot, &s2)) in grow.iter().zip(csq).enumerate() {
                        let key = match metric {
                            Metric::Euclidean => s2 - 2.0 * dot,
                            Metric::Cosine => -dot,
                        };
                        if key < worst {
                            let pos = list.partition_point(|&(dd, _)| dd <= key);
                            list.insert(pos, (key, c0 + cc));
                            if list.len() > keep {
                                list.pop();
                            }
                            if list.len() == keep {
                                worst = list[keep - 1].0;
                            }
                        }
                    }
                }
                c0 = c1;
            }
            best.into_iter()
                .enumerate()
                .map(|(r, list)| {
                    let qi = q0 + r;
                    let mut exact: Vec<(f64, usize)> = list
                        .into_iter()
                        .filter(|&(_, j)| j != qi)
                        .map(|(_, j)| (distance(x.row(qi), x.row(j), metric), j))
                        .collect();
                    exact.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                    let mut idx = Vec::with_capacity(k);
                    let mut dst = Vec::with_capacity(k);
                    idx.push(qi);
                    dst.push(0.0);
                    for (dd, j) in exact.into_iter().take(k - 1) {
                        idx.push(j);
                        dst.push(dd);
                    }
                    (idx, dst)
                })
                .collect()
        })
        .collect();
    let mut indices = Vec::with_capacity(n * k);
    let mut distances = Vec::with_capacity(n * k);
    for block in blocks {
        for (idx, dst) in block {
            indices.extend(idx);
            distances.extend(dst);
        }
    }
    let _ = d;
    Ok(Neighbors {
        n,
        k,
        indices,
        distances,
    })
}

/// Approximate k nearest neighbours (self included) through a usearch HNSW
/// graph: rows are added sequentially (so the graph, and therefore the
/// result, is deterministic), queried in parallel, and every returned
/// candidate's distance is recomputed exactly in `f64`. Same contract as
/// [`knn`]; a row whose search returns fewer than `k` candidates falls back
/// to an exact scan.
///
/// `expansion` is the search beam (`ef`); it is raised to at least `2 k`.
pub fn knn_hnsw(x: &Array2<f64>, k: usize, metric: Metric, expansion: usize) -> Result<Neighbors> {
    let (n, d) = x.dim();
    if n == 0 {
        bail!("kNN: no rows");
    }
    if k == 0 {
        bail!("kNN: k must be at least 1");
    }
    if let Some(((r, c), v)) = x.indexed_iter().find(|(_, v)| !v.is_finite()) {
        bail!("kNN: non-finite value {v} at row {r}, column {c}");
    }
    let k = k.min(n);
    let mut xf: Array2<f32> = x.mapv(|v| v as f32);
    if metric == Metric::Cosine {
        // On unit rows, Euclidean order = cosine order.
        for mut row in xf.rows_mut() {
            let norm = row.dot(&row).sqrt();
            if norm > 0.0 {
                row.mapv_inplace(|v| v / norm);
            }
        }
    }
    let xf = xf.as_standard_layout().into_owned();
    let flat = xf
        .as_slice()
        .ok_or_else(|| anyhow::anyhow!("kNN: internal layout error"))?;
    let want = k + SLACK + 1;
    let config = IndexConfig {
        kind: IndexKind::Hnsw,
        hnsw: HnswParams {
            connectivity: HNSW_CONNECTIVITY,
            expansion_add: HNSW_EXPANSION_ADD,
            expansion_search: expansion.max(2 * want),
        },
    };
    let threads = rayon::current_num_threads();
    let mut index = BatchIndex::with_config(config, d, n, threads)?;
    let keys: Vec<u64> = (0..n as u64).collect();
    index.add(&keys, xf.view(), threads)?;
    let rows: Vec<Result<(Vec<usize>, Vec<f64>)>> = (0..n)
        .into_par_iter()
        .map(|qi| {
            let found = index.search(&flat[qi * d..(qi + 1) * d], want)?;
            let mut cand: Vec<usize> = found
                .iter()
                .map(|nb| nb.key as usize)
                .filter(|&j| j != qi && j < n)
                .collect();
            if cand.len() < k - 1 {
                cand = (0..n).filter(|&j| j != qi).collect();
            }
            let mut exact: Vec<(f64, usize)> = cand
                .into_iter()
                .map(|j| (distance(x.row(qi), x.row(j), metric), j))
                .collect();
            exact.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            let mut idx = Vec::with_capacity(k);
            let mut dst = Vec::with_capacity(k);
            idx.push(qi);
            dst.push(0.0);
            for (dd, j) in exact.into_iter().take(k - 1) {
                idx.push(j);
                dst.push(dd);
            }
            Ok((idx, dst))
        })
        .collect();
    let mut indices = Vec::with_capacity(n * k);
    let mut distances = Vec::with_capacity(n * k);
    for r in rows {
        let (idx, dst) = r?;
        indices.extend(idx);
        distances.extend(dst);
    }
    Ok(Neighbors {
        n,
        k,
        indices,
        distances,
    })
}

/// Mean fraction of `exact`'s neighbours (self excluded) that `approx` also
/// found: recall@k.
pub fn recall(approx: &Neighbors, exact: &Neighbors) -> f64 {
    let k = approx.k.min(exact.k);
    if k <= 1 || approx.n != exact.n || approx.n == 0 {
        return 1.0;
    }
    let mut hit = 0usize;
    for i in 0..exact.n {
        let a = &approx.row(i)[1..k];
        hit += exact.row(i)[1..k].iter().filter(|j| a.contains(j)).count();
    }
    hit as f64 / (exact.n * (k - 1)) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn brute(x: &Array2<f64>, k: usize, metric: Metric) -> Vec<Vec<usize>> {
        let n = x.nrows();
        (0..n)
            .map(|i| {
                let mut v: Vec<(f64, usize)> = (0..n)
                    .filter(|&j| j != i)
                    .map(|j| (distance(x.row(i), x.row(j), metric), j))
                    .collect();
                v.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                std::iter::once(i)
                    .chain(v.into_iter().take(k - 1).map(|p| p.1))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn matches_brute_force_across_block_boundaries() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let x = Array2::from_shape_fn((600, 7), |_| rng.gen_range(-1.0..1.0));
        for metric in [Metric::Euclidean, Metric::Cosine] {
            let nn = knn(&x, 12, metric).unwrap();
            let oracle = brute(&x, 12, metric);
            for (i, want) in oracle.iter().enumerate() {
                assert_eq!(nn.row(i), want.as_slice(), "row {i} {metric:?}");
                for w in nn.row_dist(i).windows(2) {
                    assert!(w[0] <= w[1]);
                }
            }
        }
    }

    #[test]
    fn k_is_capped_and_subset_works() {
        let x = Array2::from_shape_fn((4, 2), |(i, j)| (i * 2 + j) as f64);
        let nn = knn(&x, 10, Metric::Euclidean).unwrap();
        assert_eq!(nn.k, 4);
        let s = nn.subset(2).unwrap();
        assert_eq!(s.row(0), &[0, 1]);
        assert!(nn.subset(5).is_err());
        assert!(knn(&x, 0, Metric::Euclidean).is_err());
    }

    #[test]
    fn hnsw_matches_exact_on_clustered_data() {
        // Clustered, correlated rows (like profiles), not uniform noise.
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let centres = Array2::from_shape_fn((12, 16), |_| rng.gen_range(-3.0..3.0));
        let x = Array2::from_shape_fn((3000, 16), |(i, j)| {
            centres[[i % 12, j]] + rng.gen_range(-1.0..1.0)
        });
        for metric in [Metric::Euclidean, Metric::Cosine] {
            let exact = knn(&x, 30, metric).unwrap();
            let approx = knn_hnsw(&x, 30, metric, 64).unwrap();
            assert_eq!(approx.k, 30);
            for i in 0..x.nrows() {
                assert_eq!(approx.row(i)[0], i);
                for w in approx.row_dist(i).windows(2) {
                    assert!(w[0] <= w[1]);
                }
            }
            let r = recall(&approx, &exact);
            assert!(r > 0.97, "{metric:?} recall {r}");
            assert!(recall(&exact, &exact) == 1.0);
            // Deterministic: the same graph twice.
            let again = knn_hnsw(&x, 30, metric, 64).unwrap();
            assert_eq!(again.indices, approx.indices);
        }
        // Fewer rows than k: capped, and every row still complete.
        let small = x.slice(s![..20, ..]).to_owned();
        let nn = knn_hnsw(&small, 50, Metric::Euclidean, 10).unwrap();
        assert_eq!(nn.k, 20);
        assert_eq!(
            knn(&small, 50, Metric::Euclidean).unwrap().indices,
            nn.indices
        );
    }

    #[test]
    fn rejects_nan() {
        let mut x = Array2::zeros((3, 2));
        x[[2, 1]] = f64::NAN;
        let e = knn(&x, 2, Metric::Cosine).unwrap_err().to_string();
        assert!(e.contains("row 2"), "{e}");
    }
}
