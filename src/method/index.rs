//! Per-batch nearest-neighbour indices.
//!
//! BALANS keeps one index per batch over the neighbour-space coordinates of
//! that batch's rows, so that a query can ask "the k nearest points *of batch
//! c*" — the batch-balanced candidate sets (as in BBKNN) and the batch-aware
//! local scales both come from such queries.
//!
//! Two backends implement the same contract:
//! - [`IndexKind::Hnsw`]: usearch's HNSW graph (approximate, `O(log n)` per
//!   query, incremental adds — what the daemon uses);
//! - [`IndexKind::Exact`]: brute force over the stored vectors (the oracle).
//!
//! Keys are global row ids (`u64`). Distances are **squared Euclidean**
//! (the evaluator's cosine graphs index unit rows, on which Euclidean order
//! is cosine order). Results are sorted by (distance, key) so ties break
//! deterministically.
//!
//! This is the crate's one usearch wrapper: the fit's and the daemon's
//! per-batch indices use [`BatchIndex::new`] with [`HnswParams::BALANS`];
//! the evaluator's approximate k-NN graph (`metrics::knn::knn_hnsw`) builds
//! one index over all rows with its own settings through
//! [`BatchIndex::with_config`].

use anyhow::{anyhow, Context, Result};
use ndarray::ArrayView2;
use rayon::prelude::*;

pub use crate::method::params::IndexKind;

/// One neighbour: a global row id and its squared Euclidean distance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Neighbor {
    /// Global row id.
    pub key: u64,
    /// Squared Euclidean distance to the query.
    pub dist2: f32,
}

/// HNSW graph settings (usearch's names).
///
/// HNSW keeps a layered proximity graph; a search walks it greedily from
/// the top layer down, keeping a beam of the best candidates. Wider beams
/// and denser graphs find the true neighbours more often and cost more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HnswParams {
    /// Links per node and layer (`M`; twice that on the base layer).
    pub connectivity: usize,
    /// Beam width while inserting (`ef_construction`): the graph's quality.
    pub expansion_add: usize,
    /// Beam width while searching (`ef`): the recall of a query.
    pub expansion_search: usize,
}

impl HnswParams {
    /// The BALANS per-batch indices (see `docs/method.md` for the
    /// measurements behind them). Part of the fit's output: changing them
    /// changes which neighbours the sampling sees.
    pub const BALANS: HnswParams = HnswParams {
        connectivity: 16,
        expansion_add: 40,
        expansion_search: 48,
    };
}

impl Default for HnswParams {
    fn default() -> Self {
        HnswParams::BALANS
    }
}

/// How a [`BatchIndex`] searches: the backend, and the graph settings when
/// it is HNSW (ignored by the exact backend).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexConfig {
    /// HNSW or brute force.
    pub kind: IndexKind,
    /// Graph settings of the HNSW backend.
    pub hnsw: HnswParams,
}

impl IndexConfig {
    /// `kind` with the BALANS graph settings.
    pub fn balans(kind: IndexKind) -> IndexConfig {
        IndexConfig {
            kind,
            hnsw: HnswParams::BALANS,
        }
    }
}

/// Rows an index reserves room for before its first [`BatchIndex::add`]
/// (it grows by doubling).
const INITIAL_CAPACITY: usize = 64;

/// The index over one batch's rows.
pub struct BatchIndex {
    config: IndexConfig,
    dims: usize,
    keys: Vec<u64>,
    /// Row-major vectors (exact backend only).
    vectors: Vec<f32>,
    hnsw: Option<usearch::Index>,
}

impl std::fmt::Debug for BatchIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchIndex")
            .field("config", &self.config)
            .field("dims", &self.dims)
            .field("len", &self.keys.len())
            .finish()
    }
}

impl BatchIndex {
    /// An empty BALANS index ([`HnswParams::BALANS`]) of `dims`
    /// dimensions. `threads` is the number of threads that may query it at
    /// once (usearch thread slots).
    pub fn new(kind: IndexKind, dims: usize, threads: usize) -> Result<Self> {
        Self::with_config(IndexConfig::balans(kind), dims, INITIAL_CAPACITY, threads)
    }

    /// An empty index with explicit settings and room for `capacity` rows
    /// before it has to grow (an HNSW graph is the same either way; the
    /// reservation only saves reallocations).
    pub fn with_config(
        config: IndexConfig,
        dims: usize,
        capacity: usize,
        threads: usize,
    ) -> Result<Self> {
        let hnsw = match config.kind {
            IndexKind::Exact => None,
            IndexKind::Hnsw => {
                let opts = usearch::IndexOptions {
                    dimensions: dims,
                    metric: usearch::MetricKind::L2sq,
                    quantization: usearch::ScalarKind::F32,
                    connectivity: config.hnsw.connectivity,
                    expansion_add: config.hnsw.expansion_add,
                    expansion_search: config.hnsw.expansion_search,
                    multi: false,
                };
                let index = usearch::Index::new(&opts)
                    .map_err(|e| anyhow!("cannot create usearch index: {e}"))?;
                index
                    .reserve_capacity_and_threads(capacity, threads.max(1) + 1)
                    .map_err(|e| anyhow!("cannot reserve usearch index: {e}"))?;
                Some(index)
            }
        };
        Ok(BatchIndex {
            config,
            dims,
            keys: Vec::new(),
            vectors: Vec::new(),
            hnsw,
        })
    }

    /// The backend and graph settings.
    pub fn config(&self) -> IndexConfig {
        self.config
    }

    /// Number of indexed rows.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Dimensions of the indexed vectors.
    pub fn dims(&self) -> usize {
        self.dims
    }

    /// Global row ids, in insertion order (a removal moves the last row
    /// into the removed one's place).
    pub fn keys(&self) -> &[u64] {
        &self.keys
    }

    /// Add rows (sequentially, so the HNSW graph is deterministic).
    /// `rows` is `keys.len() x dims`.
    pub fn add(&mut self, keys: &[u64], rows: ArrayView2<f32>, threads: usize) -> Result<()> {
        anyhow::ensure!(
            rows.ncols() == self.dims && rows.nrows() == keys.len(),
            "index add: expected {} x {} rows, got {} x {}",
            keys.len(),
            self.dims,
            rows.nrows(),
            rows.ncols()
        );
        match &self.hnsw {
            None => {
                for row in rows.rows() {
                    self.vectors.extend(row.iter().copied());
                }
            }
            Some(index) => {
                let want = self.keys.len() + keys.len();
                if index.capacity() < want {
                    let cap = want.max(index.capacity() * 2);
                    index
                        .reserve_capacity_and_threads(cap, threads.max(1) + 1)
                        .map_err(|e| anyhow!("cannot grow usearch index to {cap}: {e}"))?;
                }
                let mut buf = vec![0f32; self.dims];
                for (key, row) in keys.iter().zip(rows.rows()) {
                    for (b, v) in buf.iter_mut().zip(row.iter()) {
                        *b = *v;
                    }
                    index
                        .add(*key, &buf)
                        .map_err(|e| anyhow!("usearch add of row {key} failed: {e}"))?;
                }
            }
        }
        self.keys.extend_from_slice(keys);
        Ok(())
    }

    /// The `k` nearest indexed rows to `query`, sorted by (distance, key).
    /// Returns fewer when the index holds fewer than `k` rows.
    pub fn search(&self, query: &[f32], k: usize) -> Result<Vec<Neighbor>> {
        let k = k.min(self.keys.len());
        if k == 0 {
            return Ok(Vec::new());
        }
        match &self.hnsw {
            None => {
                let mut out = self.exact_search(query, k);
                out.sort_by(by_distance_then_key);
                Ok(out)
            }
            Some(index) => hnsw_search(index, query, k, None),
        }
    }

    /// [`BatchIndex::search`] for every row of `queries` (rows x dims):
    /// one neighbour list per row, each sorted by (distance, key). The exact
    /// backend answers a block of queries with one matrix product
    /// ([`crate::method::blocked::knn_blocked`]: the same distances as
    /// [`BatchIndex::search`], so the same lists unless GEMM rounding
    /// exceeds the gap between the k-th and the (k+8)-th neighbour); the
    /// HNSW backend runs one graph query per row, in parallel.
    pub fn search_many(&self, queries: ArrayView2<f32>, k: usize) -> Result<Vec<Vec<Neighbor>>> {
        let k = self.checked_k(queries, k)?;
        if k == 0 {
            return Ok(vec![Vec::new(); queries.nrows()]);
        }
        if let Some(index) = &self.hnsw {
            return hnsw_search_many(index, queries, k, None);
        }
        let base = ArrayView2::from_shape((self.keys.len(), self.dims), &self.vectors)
            .context("exact index vectors")?;
        let flat = crate::method::blocked::knn_blocked(queries, base, k);
        Ok(flat
            .chunks(k)
            .map(|c| {
                let mut row: Vec<Neighbor> = c
                    .iter()
                    .map(|n| Neighbor {
                        key: self.keys[n.key as usize],
                        dist2: n.dist2,
                    })
                    .collect();
                row.sort_by(by_distance_then_key);
                row
            })
            .collect())
    }

    /// [`BatchIndex::search_many`] among the rows `left_out` does not name:
    /// each query's `k` nearest *other* rows (fewer when fewer are left).
    /// `n_left_out` is how many indexed rows `left_out` names at most.
    ///
    /// The HNSW backend filters inside the graph walk (usearch's
    /// `filtered_search`), so the cost is that of a `k`-query whatever
    /// `n_left_out` is; asking `k + n_left_out` neighbours instead (a
    /// plate's 1,000 rows left out of its own batch for the offline QC)
    /// made every query walk a candidate list that long. The exact backend
    /// asks `k + n_left_out` neighbours of one matrix product and drops the
    /// named rows: the same lists as brute force over the others.
    pub fn search_many_without(
        &self,
        queries: ArrayView2<f32>,
        k: usize,
        left_out: &(dyn Fn(u64) -> bool + Sync),
        n_left_out: usize,
    ) -> Result<Vec<Vec<Neighbor>>> {
        let Some(index) = &self.hnsw else {
            let lists = self.search_many(queries, k + n_left_out)?;
            return Ok(lists
                .into_iter()
                .map(|l| l.into_iter().filter(|n| !left_out(n.key)).take(k).collect())
                .collect());
        };
        let k = self.checked_k(queries, k)?;
        if k == 0 {
            return Ok(vec![Vec::new(); queries.nrows()]);
        }
        hnsw_search_many(index, queries, k, Some(left_out))
    }

    /// `k` clamped to the rows held, after checking the queries' width.
    fn checked_k(&self, queries: ArrayView2<f32>, k: usize) -> Result<usize> {
        anyhow::ensure!(
            queries.ncols() == self.dims,
            "index search: queries have {} dimensions, the index {}",
            queries.ncols(),
            self.dims
        );
        Ok(k.min(self.keys.len()))
    }

    /// Remove the row `key` (exact backend only: a batch summary swaps rows
    /// in and out). Returns whether it was indexed.
    pub fn remove(&mut self, key: u64) -> Result<bool> {
        anyhow::ensure!(
            self.hnsw.is_none(),
            "rows are removed only from an exact index"
        );
        let Some(pos) = self.keys.iter().position(|&k| k == key) else {
            return Ok(false);
        };
        let d = self.dims;
        let last = self.keys.len() - 1;
        self.keys.swap_remove(pos);
        if pos != last {
            let (head, tail) = self.vectors.split_at_mut(last * d);
            head[pos * d..(pos + 1) * d].copy_from_slice(&tail[..d]);
        }
        self.vectors.truncate(last * d);
        Ok(true)
    }

    fn exact_search(&self, query: &[f32], k: usize) -> Vec<Neighbor> {
        let d = self.dims;
        let mut all: Vec<Neighbor> = self
            .keys
            .iter()
            .enumerate()
            .map(|(r, &key)| {
                let v = &self.vectors[r * d..(r + 1) * d];
                Neighbor {
                    key,
                    dist2: l2sq(v, query),
                }
            })
            .collect();
        let cmp = |a: &Neighbor, b: &Neighbor| a.dist2.total_cmp(&b.dist2).then(a.key.cmp(&b.key));
        if k < all.len() {
            all.select_nth_unstable_by(k - 1, cmp);
            all.truncate(k);
        }
        all.sort_by(cmp);
        all
    }

    /// The HNSW graph serialised (usearch's file format: the graph and the
    /// vectors); `None` for the exact backend, which has no graph to keep.
    /// [`BatchIndex::from_bytes`] reads it back.
    pub fn to_bytes(&self) -> Result<Option<Vec<u8>>> {
        let Some(index) = &self.hnsw else {
            return Ok(None);
        };
        let mut buf = vec![0u8; index.serialized_length()];
        index
            .save_to_buffer(&mut buf)
            .map_err(|e| anyhow!("serialising a usearch index of {} rows: {e}", self.len()))?;
        Ok(Some(buf))
    }

    /// An HNSW index read back from [`BatchIndex::to_bytes`], holding the
    /// rows `keys` (in insertion order). The bytes are checked against
    /// what the caller knows: the dimensions and the row count, and that
    /// `sample` (`(key, vector)` pairs the caller holds) are stored with
    /// exactly those vectors. Any mismatch is an error (the caller rebuilds
    /// the index from its rows); the graph settings are reset to `config`'s
    /// (usearch does not store the beam widths).
    pub fn from_bytes(
        config: IndexConfig,
        dims: usize,
        keys: Vec<u64>,
        bytes: &[u8],
        sample: &[(u64, &[f32])],
        threads: usize,
    ) -> Result<Self> {
        anyhow::ensure!(
            config.kind == IndexKind::Hnsw,
            "only an HNSW index is stored"
        );
        let empty = BatchIndex::with_config(config, dims, 1, threads)?;
        let index = empty.hnsw.context("HNSW index")?;
        index
            .load_from_buffer(bytes)
            .map_err(|e| anyhow!("not a usearch index: {e}"))?;
        anyhow::ensure!(
            index.dimensions() == dims,
            "index has {} dimensions, the model {dims}",
            index.dimensions()
        );
        anyhow::ensure!(
            index.size() == keys.len(),
            "index holds {} rows, the model's batch {}",
            index.size(),
            keys.len()
        );
        anyhow::ensure!(
            index.connectivity() == config.hnsw.connectivity,
            "index has connectivity {}, expected {}",
            index.connectivity(),
            config.hnsw.connectivity
        );
        index.change_expansion_add(config.hnsw.expansion_add);
        index.change_expansion_search(config.hnsw.expansion_search);
        index
            .reserve_capacity_and_threads(keys.len().max(INITIAL_CAPACITY), threads.max(1) + 1)
            .map_err(|e| anyhow!("cannot reserve usearch index: {e}"))?;
        let mut buf = vec![0f32; dims];
        for (key, want) in sample {
            let found = index
                .get(*key, &mut buf)
                .map_err(|e| anyhow!("reading row {key} from the index: {e}"))?;
            anyhow::ensure!(
                found == 1 && buf.as_slice() == *want,
                "row {key} is {} in the index",
                if found == 1 { "different" } else { "missing" }
            );
        }
        Ok(BatchIndex {
            config,
            dims,
            keys,
            vectors: Vec::new(),
            hnsw: Some(index),
        })
    }

    /// Serialise the HNSW graph (None for the exact backend).
    pub fn save(&self, path: &std::path::Path) -> Result<()> {
        if let Some(index) = &self.hnsw {
            let p = path
                .to_str()
                .with_context(|| format!("index path {} is not UTF-8", path.display()))?;
            index
                .save(p)
                .map_err(|e| anyhow!("saving index to {}: {e}", path.display()))?;
        }
        Ok(())
    }
}

/// Neighbour lists are ordered by (distance, key): the exact and HNSW
/// backends then agree on ties.
fn by_distance_then_key(a: &Neighbor, b: &Neighbor) -> std::cmp::Ordering {
    a.dist2.total_cmp(&b.dist2).then(a.key.cmp(&b.key))
}

/// One HNSW query of `k` neighbours, among the rows `left_out` does not
/// name when given (usearch's `filtered_search`: the filter applies inside
/// the graph walk), sorted by (distance, key).
fn hnsw_search(
    index: &usearch::Index,
    query: &[f32],
    k: usize,
    left_out: Option<&(dyn Fn(u64) -> bool + Sync)>,
) -> Result<Vec<Neighbor>> {
    let m = match left_out {
        None => index.search(query, k),
        Some(gone) => index.filtered_search(query, k, |key| !gone(key)),
    }
    .map_err(|e| anyhow!("usearch search failed: {e}"))?;
    let mut out: Vec<Neighbor> = m
        .keys
        .iter()
        .zip(m.distances.iter())
        .map(|(&key, &dist2)| Neighbor {
            key,
            dist2: dist2.max(0.0),
        })
        .collect();
    out.sort_by(by_distance_then_key);
    Ok(out)
}

/// [`hnsw_search`] for every row of `queries`, in parallel.
fn hnsw_search_many(
    index: &usearch::Index,
    queries: ArrayView2<f32>,
    k: usize,
    left_out: Option<&(dyn Fn(u64) -> bool + Sync)>,
) -> Result<Vec<Vec<Neighbor>>> {
    queries
        .outer_iter()
        .into_par_iter()
        .map(|q| match q.as_slice() {
            Some(q) => hnsw_search(index, q, k, left_out),
            None => hnsw_search(index, &q.to_vec(), k, left_out),
        })
        .collect()
}

/// Squared Euclidean distance with eight independent accumulators, so the
/// compiler can vectorise it (a single running f32 sum cannot be reordered).
#[inline]
pub(crate) fn l2sq(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            let t = x[l] - y[l];
            acc[l] += t * t;
        }
    }
    let mut tail = 0f32;
    for (x, y) in ra.iter().zip(rb) {
        tail += (x - y) * (x - y);
    }
    acc.iter().sum::<f32>() + tail
}

/// Build one index per batch over `y` (n x p): batch `c` holds the rows `i`
/// with `batch_of[i] == c`. Batches are built in parallel, each sequentially.
pub fn build_batch_indices(
    y: ArrayView2<f32>,
    batch_of: &[u32],
    n_batches: usize,
    kind: IndexKind,
    threads: usize,
) -> Result<Vec<BatchIndex>> {
    let mut members: Vec<Vec<u64>> = vec![Vec::new(); n_batches];
    for (i, &b) in batch_of.iter().enumerate() {
        let slot = members
            .get_mut(b as usize)
            .with_context(|| format!("row {i}: batch id {b} out of range {n_batches}"))?;
        slot.push(i as u64);
    }
    members
        .into_par_iter()
        .map(|keys| {
            let mut index = BatchIndex::new(kind, y.ncols(), threads)?;
            let rows = y.select(
                ndarray::Axis(0),
                &keys.iter().map(|&k| k as usize).collect::<Vec<_>>(),
            );
            index.add(&keys, rows.view(), threads)?;
            Ok(index)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;
    use rand::{Rng, SeedableRng};

    fn clustered(n: usize, d: usize, seed: u64) -> Array2<f32> {
        // Correlated, clustered data (like profiles), not uniform noise.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let centres: Vec<Vec<f32>> = (0..8)
            .map(|_| (0..d).map(|_| rng.gen_range(-5.0..5.0)).collect())
            .collect();
        Array2::from_shape_fn((n, d), |(i, j)| {
            centres[i % 8][j] + rng.gen_range(-1.0f32..1.0) * (1.0 + (j % 3) as f32)
        })
    }

    #[test]
    fn exact_search_matches_brute_force_oracle() {
        let y = clustered(300, 6, 1);
        let keys: Vec<u64> = (0..300).collect();
        let mut idx = BatchIndex::new(IndexKind::Exact, 6, 1).unwrap();
        idx.add(&keys, y.view(), 1).unwrap();
        let q: Vec<f32> = y.row(7).to_vec();
        let got = idx.search(&q, 10).unwrap();
        let mut all: Vec<(f32, u64)> = (0..300)
            .map(|r| {
                let d: f32 = y
                    .row(r)
                    .iter()
                    .zip(&q)
                    .map(|(a, b)| (a - b) * (a - b))
                    .sum();
                (d, r as u64)
            })
            .collect();
        all.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let want: Vec<u64> = all[..10].iter().map(|x| x.1).collect();
        assert_eq!(got.iter().map(|n| n.key).collect::<Vec<_>>(), want);
        assert_eq!(got[0].key, 7);
        assert_eq!(got[0].dist2, 0.0);
    }

    /// `search_many` gives `search`'s lists, for both backends; a removed
    /// row is never returned and the rest still match brute force.
    #[test]
    fn search_many_matches_search_and_remove_forgets_rows() {
        let y = clustered(400, 7, 3);
        let q = clustered(50, 7, 4);
        let keys: Vec<u64> = (0..400).map(|k| k * 3 + 1).collect();
        for kind in [IndexKind::Exact, IndexKind::Hnsw] {
            let mut idx = BatchIndex::new(kind, 7, 2).unwrap();
            idx.add(&keys, y.view(), 2).unwrap();
            let many = idx.search_many(q.view(), 12).unwrap();
            assert_eq!(many.len(), 50);
            for (r, got) in many.iter().enumerate() {
                let want = idx.search(q.row(r).as_slice().unwrap(), 12).unwrap();
                assert_eq!(got, &want, "{kind:?} query {r}");
            }
        }
        let mut idx = BatchIndex::new(IndexKind::Exact, 7, 1).unwrap();
        idx.add(&keys, y.view(), 1).unwrap();
        let gone: Vec<u64> = keys.iter().copied().step_by(3).collect();
        for &k in &gone {
            assert!(idx.remove(k).unwrap());
        }
        assert!(!idx.remove(gone[0]).unwrap(), "already removed");
        assert_eq!(idx.len(), 400 - gone.len());
        let kept: Vec<usize> = (0..400).filter(|r| r % 3 != 0).collect();
        let mut oracle = BatchIndex::new(IndexKind::Exact, 7, 1).unwrap();
        let kept_keys: Vec<u64> = kept.iter().map(|&r| keys[r]).collect();
        oracle
            .add(&kept_keys, y.select(ndarray::Axis(0), &kept).view(), 1)
            .unwrap();
        let got = idx.search_many(q.view(), 9).unwrap();
        let want = oracle.search_many(q.view(), 9).unwrap();
        assert_eq!(got, want);
        let hnsw = BatchIndex::new(IndexKind::Hnsw, 7, 1).unwrap();
        let mut hnsw = hnsw;
        hnsw.add(&keys[..5], y.slice(ndarray::s![0..5, ..]), 1)
            .unwrap();
        assert!(hnsw.remove(keys[0]).is_err(), "HNSW rows are not removed");
    }

    /// Leaving rows out: the exact backend gives brute force over the other
    /// rows; the HNSW backend never returns a left-out row, returns k rows,
    /// and finds most of the exact ones (recall), with a third of the rows
    /// (a clustered block, as a plate is) left out.
    #[test]
    fn search_without_leaves_rows_out() {
        let y = clustered(600, 8, 5);
        let q = clustered(60, 8, 6);
        let keys: Vec<u64> = (0..600).collect();
        let gone = |key: u64| key < 200;
        let kept: Vec<usize> = (200..600).collect();
        let mut oracle = BatchIndex::new(IndexKind::Exact, 8, 1).unwrap();
        oracle
            .add(
                &kept.iter().map(|&r| r as u64).collect::<Vec<_>>(),
                y.select(ndarray::Axis(0), &kept).view(),
                1,
            )
            .unwrap();
        let want = oracle.search_many(q.view(), 10).unwrap();
        let mut exact = BatchIndex::new(IndexKind::Exact, 8, 1).unwrap();
        exact.add(&keys, y.view(), 1).unwrap();
        assert_eq!(
            exact.search_many_without(q.view(), 10, &gone, 200).unwrap(),
            want
        );
        let mut hnsw = BatchIndex::new(IndexKind::Hnsw, 8, 2).unwrap();
        hnsw.add(&keys, y.view(), 2).unwrap();
        let got = hnsw.search_many_without(q.view(), 10, &gone, 200).unwrap();
        let mut hit = 0usize;
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.len(), 10);
            assert!(g.iter().all(|n| !gone(n.key)), "a left-out row came back");
            assert!(g.windows(2).all(|p| p[0].dist2 <= p[1].dist2), "sorted");
            hit += g
                .iter()
                .filter(|n| w.iter().any(|x| x.key == n.key))
                .count();
        }
        assert!(hit as f64 >= 0.9 * 600.0, "recall {hit} / 600");
    }

    #[test]
    fn l2sq_matches_naive() {
        let a: Vec<f32> = (0..37).map(|i| i as f32 * 0.3).collect();
        let b: Vec<f32> = (0..37).map(|i| (i * i) as f32 * 0.01).collect();
        let naive: f32 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
        assert!((l2sq(&a, &b) - naive).abs() <= 1e-4 * naive);
    }

    #[test]
    fn hnsw_recall_against_exact() {
        let y = clustered(2000, 20, 2);
        let keys: Vec<u64> = (0..2000).map(|i| i * 3 + 1).collect();
        let mut exact = BatchIndex::new(IndexKind::Exact, 20, 2).unwrap();
        let mut hnsw = BatchIndex::new(IndexKind::Hnsw, 20, 2).unwrap();
        exact.add(&keys, y.view(), 2).unwrap();
        hnsw.add(&keys, y.view(), 2).unwrap();
        let mut hit = 0usize;
        let mut total = 0usize;
        for r in (0..2000).step_by(20) {
            let q = y.row(r).to_vec();
            let a: std::collections::HashSet<u64> = exact
                .search(&q, 15)
                .unwrap()
                .iter()
                .map(|n| n.key)
                .collect();
            let b = hnsw.search(&q, 15).unwrap();
            assert_eq!(b.len(), 15);
            hit += b.iter().filter(|n| a.contains(&n.key)).count();
            total += 15;
        }
        let recall = hit as f64 / total as f64;
        assert!(recall > 0.9, "recall@15 = {recall}");
    }

    #[test]
    fn small_index_returns_what_it_has_and_grows() {
        let y = clustered(5, 3, 3);
        let mut idx = BatchIndex::new(IndexKind::Hnsw, 3, 1).unwrap();
        idx.add(&[10, 11, 12], y.slice(ndarray::s![0..3, ..]), 1)
            .unwrap();
        assert_eq!(idx.search(&[0.0, 0.0, 0.0], 10).unwrap().len(), 3);
        // Incremental add past the initial capacity.
        let big = clustered(200, 3, 4);
        let keys: Vec<u64> = (100..300).collect();
        idx.add(&keys, big.view(), 1).unwrap();
        assert_eq!(idx.len(), 203);
        assert_eq!(idx.search(&big.row(50).to_vec(), 1).unwrap()[0].key, 150);
    }

    #[test]
    fn build_splits_rows_by_batch() {
        let y = clustered(40, 4, 5);
        let batch_of: Vec<u32> = (0..40).map(|i| (i % 3) as u32).collect();
        let idx = build_batch_indices(y.view(), &batch_of, 3, IndexKind::Exact, 1).unwrap();
        assert_eq!(idx.len(), 3);
        for (c, ix) in idx.iter().enumerate() {
            assert!(ix.keys().iter().all(|&k| batch_of[k as usize] == c as u32));
        }
        assert_eq!(idx.iter().map(|i| i.len()).sum::<usize>(), 40);
        assert!(build_batch_indices(y.view(), &batch_of, 2, IndexKind::Exact, 1).is_err());
    }

    /// Brute-force `k` nearest of `q` among `rows` (keys `keys`), by
    /// (squared distance, key) — the contract every backend follows. The
    /// distance is [`l2sq`] (checked against the naive sum above), so
    /// near-ties order as the exact backend orders them.
    fn oracle(rows: &Array2<f32>, keys: &[u64], q: &[f32], k: usize) -> Vec<u64> {
        let mut all: Vec<(f32, u64)> = rows
            .rows()
            .into_iter()
            .zip(keys)
            .map(|(r, &key)| (l2sq(&r.to_vec(), q), key))
            .collect();
        all.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        all.into_iter().take(k).map(|p| p.1).collect()
    }

    #[test]
    fn configured_hnsw_with_a_wide_beam_finds_the_exact_neighbours() {
        // A beam as wide as the index visits (practically) every node, so
        // the approximate search returns the brute-force answer.
        let y = clustered(300, 8, 6);
        let keys: Vec<u64> = (0..300).map(|i| 1000 + i).collect();
        let config = IndexConfig {
            kind: IndexKind::Hnsw,
            hnsw: HnswParams {
                connectivity: 32,
                expansion_add: 300,
                expansion_search: 300,
            },
        };
        let mut idx = BatchIndex::with_config(config, 8, 300, 2).unwrap();
        assert_eq!(idx.config(), config);
        idx.add(&keys, y.view(), 2).unwrap();
        for r in (0..300).step_by(7) {
            let q = y.row(r).to_vec();
            let got: Vec<u64> = idx.search(&q, 12).unwrap().iter().map(|n| n.key).collect();
            assert_eq!(got, oracle(&y, &keys, &q, 12), "query {r}");
        }
        // The BALANS constructor uses the BALANS settings.
        let b = BatchIndex::new(IndexKind::Hnsw, 8, 1).unwrap();
        assert_eq!(b.config(), IndexConfig::balans(IndexKind::Hnsw));
        assert_eq!(HnswParams::default(), HnswParams::BALANS);
    }

    #[test]
    fn serialised_hnsw_index_loads_back_identical_and_is_checked() {
        let y = clustered(500, 6, 8);
        let keys: Vec<u64> = (0..500).map(|i| 2 * i + 5).collect();
        let mut idx = BatchIndex::new(IndexKind::Hnsw, 6, 2).unwrap();
        idx.add(&keys, y.view(), 2).unwrap();
        let bytes = idx.to_bytes().unwrap().expect("an HNSW graph");
        let sample: Vec<(u64, Vec<f32>)> = [0usize, 250, 499]
            .iter()
            .map(|&r| (keys[r], y.row(r).to_vec()))
            .collect();
        let sample: Vec<(u64, &[f32])> = sample.iter().map(|(k, v)| (*k, v.as_slice())).collect();
        let config = IndexConfig::balans(IndexKind::Hnsw);
        let mut back = BatchIndex::from_bytes(config, 6, keys.clone(), &bytes, &sample, 2).unwrap();
        assert_eq!(back.len(), 500);
        assert_eq!(back.keys(), &keys[..]);
        for r in (0..500).step_by(9) {
            let q = y.row(r).to_vec();
            assert_eq!(idx.search(&q, 15).unwrap(), back.search(&q, 15).unwrap());
        }
        // It keeps growing like the original.
        let more = clustered(40, 6, 9);
        let new_keys: Vec<u64> = (5000..5040).collect();
        back.add(&new_keys, more.view(), 2).unwrap();
        idx.add(&new_keys, more.view(), 2).unwrap();
        assert_eq!(back.search(&more.row(3).to_vec(), 1).unwrap()[0].key, 5003);
        // Refused: other rows than the caller's, a different vector, a cut
        // or flipped file, a different dimension.
        let err = |r: Result<BatchIndex>| format!("{:#}", r.expect_err("refused"));
        let e = err(BatchIndex::from_bytes(
            config,
            6,
            keys[..499].to_vec(),
            &bytes,
            &sample,
            1,
        ));
        assert!(e.contains("500 rows"), "{e}");
        let other = vec![0.5f32; 6];
        let e = err(BatchIndex::from_bytes(
            config,
            6,
            keys.clone(),
            &bytes,
            &[(keys[7], &other)],
            1,
        ));
        assert!(e.contains("different"), "{e}");
        let e = err(BatchIndex::from_bytes(
            config,
            6,
            keys.clone(),
            &bytes,
            &[(99_999, &other)],
            1,
        ));
        assert!(e.contains("missing"), "{e}");
        assert!(BatchIndex::from_bytes(config, 6, keys.clone(), &bytes[..100], &[], 1).is_err());
        assert!(BatchIndex::from_bytes(config, 5, keys.clone(), &bytes, &[], 1).is_err());
        let exact = BatchIndex::new(IndexKind::Exact, 6, 1).unwrap();
        assert!(exact.to_bytes().unwrap().is_none());
    }

    #[test]
    fn add_rejects_mismatched_shapes() {
        let mut idx = BatchIndex::new(IndexKind::Exact, 3, 1).unwrap();
        let y = clustered(4, 3, 1);
        assert!(idx.add(&[1, 2, 3], y.view(), 1).is_err());
        assert!(idx.add(&[1, 2, 3, 4], y.t(), 1).is_err());
        assert!(idx.is_empty());
        assert!(idx.search(&[0.0; 3], 5).unwrap().is_empty());
    }

    proptest::proptest! {
        #[test]
        fn prop_exact_backend_is_brute_force(
            seed in 0u64..500, n in 1usize..120, d in 1usize..12, k in 1usize..20,
            grid in proptest::bool::ANY,
        ) {
            // `grid` rounds coordinates to a coarse grid: many equal
            // distances, so the (distance, key) tie-break is exercised.
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let y = Array2::from_shape_fn((n, d), |_| {
                let v: f32 = rng.gen_range(-2.0..2.0);
                if grid { v.round() } else { v }
            });
            let mut keys: Vec<u64> = (0..n as u64).map(|i| i * 7 % 1000 + i).collect();
            keys.reverse();
            let mut idx = BatchIndex::new(IndexKind::Exact, d, 1).unwrap();
            // Added in two parts: the index grows.
            let half = n / 2;
            idx.add(&keys[..half], y.slice(ndarray::s![..half, ..]), 1).unwrap();
            idx.add(&keys[half..], y.slice(ndarray::s![half.., ..]), 1).unwrap();
            let q: Vec<f32> = (0..d).map(|_| rng.gen_range(-2.0f32..2.0)).collect();
            let got = idx.search(&q, k).unwrap();
            let want = oracle(&y, &keys, &q, k);
            proptest::prop_assert_eq!(got.iter().map(|n| n.key).collect::<Vec<_>>(), want);
            for w in got.windows(2) {
                proptest::prop_assert!(w[0].dist2 <= w[1].dist2);
            }
        }
    }
}
