//! Batch-aware local scales.
//!
//! `sigma_i^(c)` is the distance from point `i` to the k-th nearest point of
//! batch `c`. When `i` belongs to `c` it counts itself (the first neighbour,
//! at distance 0), so a batch and an exact copy of it get identical scales —
//! a duplicated batch is then already aligned and is left unchanged. `k` is
//! clamped to the batch size, so a batch smaller than k uses its farthest
//! point (documented behaviour, not an error).
//!
//! Scales are needed for every sampled row against every batch (free: they
//! come with the candidate queries) and, for the symmetric kernel, for every
//! candidate against the sampled row's batch. The latter are computed lazily
//! and memoised in a dense `n x B` table of atomics, so rows sampled in
//! parallel share them without locks.

use crate::method::blocked::{for_each_at_or_below, group_minima};
use crate::method::rowmap::RowMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use anyhow::Result;

use crate::method::index::{l2sq, BatchIndex, Neighbor};
use crate::method::rows::RowSource;

/// The scale from a sorted neighbour list: the distance to the k-th entry
/// (or the last one when there are fewer than k). 0 for an empty list.
pub fn kth_scale(neighbors: &[Neighbor], k: usize) -> f64 {
    if neighbors.is_empty() || k == 0 {
        return 0.0;
    }
    let idx = k.min(neighbors.len()) - 1;
    (neighbors[idx].dist2.max(0.0) as f64).sqrt()
}

/// Memoised `sigma_i^(c)` for all rows `i` and batches `c`: a dense table
/// (offline fits touch most entries) or a sparse map (the daemon touches a
/// few entries per plate out of millions of rows).
pub struct ScaleCache {
    n_batches: usize,
    k: usize,
    values: Vec<AtomicU32>,
    sparse: Option<Mutex<RowMap<(u32, u32), f32>>>,
    /// Scales computed before sampling (read without a lock).
    known: RowMap<(u32, u32), f32>,
}

const UNKNOWN: u32 = u32::MAX; // a NaN bit pattern never produced by sqrt

impl ScaleCache {
    /// An empty cache for `n` rows and `n_batches` batches.
    pub fn new(n: usize, n_batches: usize, k: usize) -> Self {
        let values = (0..n * n_batches)
            .map(|_| AtomicU32::new(UNKNOWN))
            .collect();
        ScaleCache {
            n_batches,
            k,
            values,
            sparse: None,
            known: RowMap::default(),
        }
    }

    /// An empty sparse cache (memory proportional to the entries computed).
    pub fn sparse(n_batches: usize, k: usize) -> Self {
        ScaleCache {
            n_batches,
            k,
            values: Vec::new(),
            sparse: Some(Mutex::new(RowMap::default())),
            known: RowMap::default(),
        }
    }

    /// A sparse cache holding `known` scales (`(row, batch) -> sigma`,
    /// computed beforehand with the same definition): they are read without
    /// a lock and never recomputed; anything else is computed and memoised
    /// as in [`ScaleCache::sparse`].
    pub fn with_known(n_batches: usize, k: usize, known: RowMap<(u32, u32), f32>) -> Self {
        ScaleCache {
            known,
            ..ScaleCache::sparse(n_batches, k)
        }
    }

    /// The k of these scales.
    pub fn k(&self) -> usize {
        self.k
    }

    /// A known scale, if computed.
    pub fn get(&self, i: usize, c: usize) -> Option<f64> {
        if let Some(&v) = self.known.get(&(i as u32, c as u32)) {
            return Some(v as f64);
        }
        if let Some(m) = &self.sparse {
            let m = m.lock().unwrap_or_else(|e| e.into_inner());
            return m.get(&(i as u32, c as u32)).map(|&v| v as f64);
        }
        let bits = self.values[i * self.n_batches + c].load(Ordering::Relaxed);
        (bits != UNKNOWN).then(|| f32::from_bits(bits) as f64)
    }

    /// Record a scale.
    pub fn set(&self, i: usize, c: usize, v: f64) {
        if self.known.contains_key(&(i as u32, c as u32)) {
            return; // same definition, already there
        }
        if let Some(m) = &self.sparse {
            let mut m = m.lock().unwrap_or_else(|e| e.into_inner());
            m.insert((i as u32, c as u32), v as f32);
            return;
        }
        self.values[i * self.n_batches + c].store((v as f32).to_bits(), Ordering::Relaxed);
    }

    /// `sigma_i^(c)`, querying batch `c`'s index for `y_i` when unknown.
    pub fn get_or_compute(
        &self,
        i: usize,
        c: usize,
        rows: &dyn RowSource,
        indices: &[&BatchIndex],
    ) -> Result<f64> {
        if let Some(v) = self.get(i, c) {
            return Ok(v);
        }
        let nb = indices[c].search(rows.row(i), self.k)?;
        let v = kth_scale(&nb, self.k);
        self.set(i, c, v);
        Ok(self.get(i, c).unwrap_or(v))
    }

    /// Number of scales computed so far (for the summary and metrics).
    pub fn computed(&self) -> usize {
        if let Some(m) = &self.sparse {
            return self.known.len() + m.lock().unwrap_or_else(|e| e.into_inner()).len();
        }
        self.values
            .iter()
            .filter(|v| v.load(Ordering::Relaxed) != UNKNOWN)
            .count()
    }
}

/// `sigma_q` against a small block of rows for many queries: for each
/// query, the distance to its k-th nearest row of `rows` (row-major, `dims`
/// wide), counting a row at distance 0 — exactly [`kth_scale`] of an exact
/// [`BatchIndex`] search over `rows`, bit for bit. `k` is clamped to the
/// row count; 0 rows give 0.
///
/// How: the distances of a block of queries to every row come from one
/// matrix product (`|q|^2 + |r|^2 - 2 q.r`, SIMD GEMM), which is fast but
/// rounds differently; they only select the rows that can be among the k
/// nearest — every row whose approximate distance is within twice the
/// product's error bound of the approximate k-th — and those few rows get
/// the exact [`l2sq`] distance the index would compute. The k-th smallest
/// of those is the exact answer: a row left out is farther than the k-th
/// by more than the bound, and at least k rows are kept.
///
/// Cost: `queries x rows x dims` multiply-adds in GEMM, plus about `k`
/// exact distances per query. The daemon calls it with a plate's 384 rows
/// and the distinct candidates of the plate's queries.
pub fn kth_scales_against(rows: &[f32], dims: usize, queries: &[&[f32]], k: usize) -> Vec<f64> {
    use ndarray::{Array2, ArrayView2};
    use rayon::prelude::*;
    /// Queries per matrix product.
    const BLOCK: usize = 128;
    let n = rows.len().checked_div(dims).unwrap_or(0);
    let k = k.min(n);
    if k == 0 {
        return vec![0.0; queries.len()];
    }
    let Ok(r) = ArrayView2::from_shape((n, dims), &rows[..n * dims]) else {
        return vec![0.0; queries.len()];
    };
    let norms: Vec<f32> = rows
        .chunks_exact(dims)
        .map(|x| x.iter().map(|v| v * v).sum())
        .collect();
    let max_norm = norms.iter().copied().fold(0f32, f32::max);
    // Rounding bound of a GEMM distance relative to |q|^2 + |r|^2: a few
    // ulps per accumulated term, with a wide margin.
    let rel = 8.0 * dims as f32 * f32::EPSILON;
    let blocks: Vec<Vec<f64>> = queries
        .par_chunks(BLOCK)
        .map(|blk| {
            let q = Array2::from_shape_fn((blk.len(), dims), |(a, t)| blk[a][t]);
            let g = q.dot(&r.t());
            let mut approx: Vec<f32> = Vec::with_capacity(n);
            let mut work: Vec<f32> = Vec::with_capacity(n);
            let mut keys: Vec<i32> = Vec::with_capacity(n);
            let mut mins: Vec<i32> = Vec::with_capacity(n.div_ceil(GROUP));
            let mut sel: Vec<i32> = Vec::with_capacity(n);
            blk.iter()
                .enumerate()
                .map(|(a, qa)| {
                    let qn: f32 = qa.iter().map(|v| v * v).sum();
                    approx.clear();
                    // `g` is a fresh standard-layout product: its rows are
                    // slices, iterated as slices so the loop vectorises.
                    let row = g.row(a);
                    let dots = row.as_slice().unwrap_or(&[]);
                    approx.extend(
                        dots.iter()
                            .zip(&norms)
                            .map(|(&dot, &rn)| qn + rn - 2.0 * dot),
                    );
                    if approx.len() < n {
                        approx.clear();
                        approx.extend(
                            row.iter()
                                .zip(&norms)
                                .map(|(&dot, &rn)| qn + rn - 2.0 * dot),
                        );
                    }
                    let kth = kth_smallest_grouped(&approx, k, &mut keys, &mut mins, &mut sel);
                    let eps = rel * (qn + max_norm) + f32::MIN_POSITIVE;
                    let limit = kth + 2.0 * eps;
                    work.clear();
                    for (x, &d) in rows.chunks_exact(dims).zip(&approx) {
                        if d <= limit {
                            work.push(l2sq(x, qa));
                        }
                    }
                    if work.len() < k {
                        // Unreachable for finite inputs; exact over all rows.
                        work.clear();
                        work.extend(rows.chunks_exact(dims).map(|x| l2sq(x, qa)));
                    }
                    keys.clear();
                    keys.extend(work.iter().map(|&v| total_order_key(v)));
                    let (_, kth, _) = keys.select_nth_unstable(k - 1);
                    (from_total_order_key(*kth).max(0.0) as f64).sqrt()
                })
                .collect()
        })
        .collect();
    blocks.into_iter().flatten().collect()
}

/// Values per group in [`kth_smallest_grouped`].
const GROUP: usize = 4;

/// The `k`-th smallest of `v` (1-based, `1 <= k <= v.len()`) in the
/// total order of [`total_order_key`]: the value `select_nth_unstable(k -
/// 1)` over every key gives, found by selecting among fewer keys.
///
/// The groups ([`group_minima`]) of `GROUP` keys give a threshold `tau`,
/// the `k`-th smallest group minimum, and the selection runs over the keys
/// at or below it in the groups that can hold them
/// ([`for_each_at_or_below`]; about 2 x `k` keys for `k` = 15 of 384)
/// instead of all of them. `keys`, `mins` and `sel` are scratch.
fn kth_smallest_grouped(
    v: &[f32],
    k: usize,
    keys: &mut Vec<i32>,
    mins: &mut Vec<i32>,
    sel: &mut Vec<i32>,
) -> f32 {
    keys.clear();
    keys.extend(v.iter().map(|&x| total_order_key(x)));
    group_minima(keys, GROUP, mins);
    if k >= mins.len() {
        let (_, kth, _) = keys.select_nth_unstable(k - 1);
        return from_total_order_key(*kth);
    }
    sel.clear();
    sel.extend_from_slice(mins);
    let (_, tau, _) = sel.select_nth_unstable(k - 1);
    let tau = *tau;
    sel.clear();
    for_each_at_or_below(keys, mins, tau, |_, key| sel.push(key));
    let (_, kth, _) = sel.select_nth_unstable(k - 1);
    from_total_order_key(*kth)
}

/// `v`'s bits as an `i32` whose natural order is [`f32::total_cmp`]'s
/// (the transform `total_cmp` itself uses): selections on these keys
/// compare integers instead of re-deriving the order at every comparison.
/// An involution: [`from_total_order_key`] gives the value back.
#[inline]
pub(crate) fn total_order_key(v: f32) -> i32 {
    let b = v.to_bits() as i32;
    b ^ ((((b >> 31) as u32) >> 1) as i32)
}

/// The value of a [`total_order_key`].
#[inline]
pub(crate) fn from_total_order_key(key: i32) -> f32 {
    f32::from_bits((key ^ ((((key >> 31) as u32) >> 1) as i32)) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::method::params::IndexKind;
    use ndarray::array;
    use proptest::prelude::*;

    proptest! {
        /// The grouped selection is the plain selection over every key,
        /// with ties, signed zeros, infinities and NaN among the values.
        #[test]
        fn prop_kth_smallest_grouped_is_the_plain_selection(
            v in proptest::collection::vec(
                prop_oneof![
                    (0u8..12).prop_map(f32::from),
                    Just(-0.0f32), Just(0.0f32), Just(f32::NAN), Just(f32::INFINITY),
                    -5.0f32..5.0,
                ],
                1..300),
            kk in 0usize..300) {
            let k = kk % v.len() + 1;
            let mut want: Vec<i32> = v.iter().map(|&x| total_order_key(x)).collect();
            want.sort_unstable();
            let (mut keys, mut mins, mut sel) = (Vec::new(), Vec::new(), Vec::new());
            let got = kth_smallest_grouped(&v, k, &mut keys, &mut mins, &mut sel);
            prop_assert_eq!(total_order_key(got), want[k - 1]);
        }
    }

    #[test]
    fn kth_scale_counts_self_and_clamps() {
        let nb = vec![
            Neighbor { key: 0, dist2: 0.0 },
            Neighbor { key: 1, dist2: 4.0 },
            Neighbor { key: 2, dist2: 9.0 },
        ];
        assert_eq!(kth_scale(&nb, 1), 0.0);
        assert_eq!(kth_scale(&nb, 2), 2.0);
        assert_eq!(kth_scale(&nb, 10), 3.0, "clamped to the batch size");
        assert_eq!(kth_scale(&[], 3), 0.0);
    }

    /// The batch scales are the exact index's k-th distances, bit for bit,
    /// including k beyond the rows (clamped) and duplicate rows.
    #[test]
    fn kth_scales_against_match_exact_index_queries() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        let (n, d) = (37usize, 9usize);
        let mut rows: Vec<f32> = (0..n * d).map(|_| rng.gen_range(-3.0..3.0)).collect();
        rows.copy_within(0..d, d); // rows 0 and 1 coincide
        let mut index = BatchIndex::new(IndexKind::Exact, d, 1).unwrap();
        let keys: Vec<u64> = (100..100 + n as u64).collect();
        index
            .add(
                &keys,
                ndarray::ArrayView2::from_shape((n, d), &rows).unwrap(),
                1,
            )
            .unwrap();
        let queries: Vec<Vec<f32>> = (0..50)
            .map(|q| {
                if q < 5 {
                    rows[q * d..(q + 1) * d].to_vec()
                } else {
                    (0..d).map(|_| rng.gen_range(-3.0..3.0)).collect()
                }
            })
            .collect();
        let refs: Vec<&[f32]> = queries.iter().map(Vec::as_slice).collect();
        for k in [1usize, 2, 15, 37, 80] {
            let got = kth_scales_against(&rows, d, &refs, k);
            for (q, g) in refs.iter().zip(&got) {
                let want = kth_scale(&index.search(q, k).unwrap(), k);
                assert_eq!(g.to_bits(), want.to_bits(), "k {k}");
            }
        }
        assert_eq!(kth_scales_against(&[], d, &refs[..2], 3), vec![0.0, 0.0]);
    }

    proptest::proptest! {
        /// The integer keys order values as `total_cmp` does (signed
        /// zeros, infinities, NaNs included) and give them back bit for bit.
        #[test]
        fn prop_total_order_keys_order_as_total_cmp(a in proptest::num::f32::ANY, b in proptest::num::f32::ANY) {
            proptest::prop_assert_eq!(total_order_key(a).cmp(&total_order_key(b)), a.total_cmp(&b));
            proptest::prop_assert_eq!(from_total_order_key(total_order_key(a)).to_bits(), a.to_bits());
        }

        /// Near-ties (coordinates on a coarse grid, so many rows at equal
        /// distance) and large offsets (big norms, where the matrix
        /// product's rounding is largest) still give the exact bits.
        #[test]
        fn prop_kth_scales_against_are_exact(
            seed in 0u64..1000, n in 1usize..60, d in 1usize..40, k in 1usize..20,
            grid in proptest::bool::ANY, shift in 0.0f32..500.0,
        ) {
            use rand::{Rng, SeedableRng};
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let draw = |rng: &mut rand_chacha::ChaCha8Rng| {
                let v: f32 = rng.gen_range(-2.0..2.0);
                shift + if grid { v.round() } else { v }
            };
            let rows: Vec<f32> = (0..n * d).map(|_| draw(&mut rng)).collect();
            let queries: Vec<Vec<f32>> = (0..9).map(|_| (0..d).map(|_| draw(&mut rng)).collect()).collect();
            let refs: Vec<&[f32]> = queries.iter().map(Vec::as_slice).collect();
            let mut index = BatchIndex::new(IndexKind::Exact, d, 1).unwrap();
            let keys: Vec<u64> = (0..n as u64).collect();
            index.add(&keys, ndarray::ArrayView2::from_shape((n, d), &rows).unwrap(), 1).unwrap();
            let got = kth_scales_against(&rows, d, &refs, k);
            for (q, g) in refs.iter().zip(&got) {
                let want = kth_scale(&index.search(q, k).unwrap(), k);
                proptest::prop_assert_eq!(g.to_bits(), want.to_bits());
            }
        }
    }

    #[test]
    fn cache_computes_once_against_the_right_batch() {
        let y = array![[0.0f32], [1.0], [3.0], [10.0], [12.0]];
        let mut a = BatchIndex::new(IndexKind::Exact, 1, 1).unwrap();
        a.add(&[0, 1, 2], y.slice(ndarray::s![0..3, ..]), 1)
            .unwrap();
        let mut b = BatchIndex::new(IndexKind::Exact, 1, 1).unwrap();
        b.add(&[3, 4], y.slice(ndarray::s![3..5, ..]), 1).unwrap();
        let idx = vec![&a, &b];
        let bo = [0, 0, 0, 1, 1];
        let rows = crate::method::rows::MatrixRows::new(y.view(), &bo).unwrap();
        for cache in [ScaleCache::new(5, 2, 2), ScaleCache::sparse(2, 2)] {
            assert_eq!(cache.get(0, 1), None);
            // Row 0 against batch 1: second nearest of {10, 12} is 12.
            assert_eq!(cache.get_or_compute(0, 1, &rows, &idx).unwrap(), 12.0);
            // Row 0 against its own batch: itself then 1.0.
            assert_eq!(cache.get_or_compute(0, 0, &rows, &idx).unwrap(), 1.0);
            assert_eq!(cache.computed(), 2);
        }
        // Known scales are read as given and never recomputed or replaced.
        let known = [((0u32, 1u32), 7.5f32)].into_iter().collect();
        let cache = ScaleCache::with_known(2, 2, known);
        assert_eq!(cache.get_or_compute(0, 1, &rows, &idx).unwrap(), 7.5);
        cache.set(0, 1, 1.0);
        assert_eq!(cache.get(0, 1), Some(7.5));
        assert_eq!(cache.get_or_compute(0, 0, &rows, &idx).unwrap(), 1.0);
        assert_eq!(cache.computed(), 2);
    }
}
