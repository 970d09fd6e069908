//! One sampling round of a plate against the model, in three passes.
//!
//! Every plate row is a landmark. Its affinity row needs (see
//! [`crate::method::sampling`]): its `k.max(m)` nearest rows in every batch
//! index and in the plate itself, and — for the symmetric kernel and the
//! mutual trust test — each candidate's own scale against the *plate*
//! (`sigma_j^(plate)`: the distance from candidate `j` to its k-th nearest
//! plate row; the plate in flight is its own pseudo-batch).
//!
//! Computed row by row, the second part is one exact query of the plate per
//! distinct candidate, memoised behind a lock shared by the threads: up to
//! `384 x 11 x 15` lookups a round, each a lock and a hash, with a fresh
//! neighbour list per miss. Here the round is split instead:
//! 1. query every plate row against every index, in parallel (the same
//!    queries, kept as candidate lists; an exact index — a batch summary —
//!    answers the whole plate with one matrix product);
//! 2. collect the distinct candidates and compute their scales against the
//!    plate in one allocation-free pass
//!    ([`crate::method::scales::kth_scales_against`], the same distances as
//!    the exact plate index, so the same bits);
//! 3. score every row from its lists with the scales read without a lock
//!    ([`ScaleCache::with_known`], [`compute_row_from`]).
//!
//! The rows are identical to [`crate::method::sampling::compute_row`]'s
//! (the test below checks it on a model with several batches).

use anyhow::Result;
use ndarray::ArrayView2;
use rayon::prelude::*;

use super::{Model, RowHits};
use crate::method::index::{BatchIndex, Neighbor};
use crate::method::params::KernelKind;
use crate::method::rowmap::RowMap;
use crate::method::rows::RowSource;
use crate::method::sampling::{compute_row_from, SamplingConfig, SparseRow};
use crate::method::scales::{kth_scales_against, ScaleCache};

/// What a round produced: the plate rows' affinity rows, and (when asked)
/// each row's k nearest rows in every batch index of the model — the QC's
/// mixing-before figures come from round 1's.
pub(super) struct PlateRound {
    pub rows: Vec<SparseRow>,
    pub hits: Option<Vec<RowHits>>,
}

impl Model {
    /// Sample every plate row once. `all` = the model's rows followed by the
    /// plate's at their current coordinates `plate` (rows `self.len()..`,
    /// pseudo-batch `self.indices.len()`), `plate_index` = an exact index
    /// over `plate`. `record`: return the rows' model hits.
    pub(super) fn sample_plate(
        &self,
        all: &dyn RowSource,
        plate: ArrayView2<f32>,
        plate_index: &BatchIndex,
        cfg: &SamplingConfig,
        record: bool,
    ) -> Result<PlateRound> {
        let n0 = self.len();
        let n_plate = plate.nrows();
        let n_batches = self.indices.len();
        let plate_batch = n_batches as u32;
        let mut refs: Vec<&BatchIndex> = self.indices.iter().collect();
        refs.push(plate_index);
        // 1. The candidate queries: each index answers the whole plate as
        //    one block (an exact index with one matrix product), the same
        //    lists as [`candidate_lists`] row by row.
        let kq = cfg.k.max(cfg.m);
        let per_index: Vec<Vec<Vec<Neighbor>>> = refs
            .par_iter()
            .map(|index| index.search_many(plate, kq))
            .collect::<Result<_>>()?;
        let mut lists: Vec<Vec<Vec<Neighbor>>> = vec![Vec::with_capacity(refs.len()); n_plate];
        for per_row in per_index {
            for (l, nb) in lists.iter_mut().zip(per_row) {
                l.push(nb);
            }
        }
        // 2. Every distinct candidate's scale against the plate.
        let needs_scales = cfg.kernel == KernelKind::Symmetric
            || (cfg.trust > 0.0 && cfg.trust_rule.uses_mutual());
        let known: RowMap<(u32, u32), f32> = if needs_scales {
            let mut cand: Vec<u32> = lists
                .iter()
                .flatten()
                .flatten()
                .map(|n| n.key as u32)
                .collect();
            cand.sort_unstable();
            cand.dedup();
            let queries: Vec<&[f32]> = cand.iter().map(|&j| all.row(j as usize)).collect();
            let flat = plate.as_standard_layout();
            let flat = flat.as_slice().unwrap_or(&[]);
            let scales = kth_scales_against(flat, plate.ncols(), &queries, cfg.k);
            cand.iter()
                .zip(scales)
                .map(|(&j, s)| ((j, plate_batch), s as f32))
                .collect()
        } else {
            RowMap::default()
        };
        let cache = ScaleCache::with_known(n_batches + 1, cfg.k, known);
        // 3. The rows.
        let rows: Vec<SparseRow> = lists
            .par_iter()
            .enumerate()
            .map(|(r, l)| compute_row_from(n0 + r, all, &refs, l, &cache, cfg))
            .collect::<Result<_>>()?;
        let hits = record.then(|| {
            lists
                .iter()
                .map(|l| {
                    l.iter()
                        .take(n_batches)
                        .enumerate()
                        .flat_map(|(c, nb)| nb.iter().take(cfg.k).map(move |n| (n.dist2, c)))
                        .collect::<RowHits>()
                })
                .collect()
        });
        Ok(PlateRound { rows, hits })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::method::index::build_batch_indices;
    use crate::method::params::{IndexKind, Params, TrustRule};
    use crate::method::rows::{Concat, MatrixRows};
    use crate::method::sampling::compute_row;
    use ndarray::Array2;
    use rand::{Rng, SeedableRng};

    fn meta_for(params: &Params, p: usize, nb: usize) -> crate::method::model::ModelMeta {
        crate::method::model::ModelMeta {
            params: params.clone(),
            features: (0..p).map(|f| format!("f{f}")).collect(),
            varying: (0..p).collect(),
            scale: vec![1.0; p],
            global_centre: vec![0.0; p],
            pca_mean: vec![0.0; p],
            pca_components: Array2::<f64>::eye(p).iter().copied().collect(),
            pca_whitening: None,
            control_mad: Vec::new(),
            batch_gain: Default::default(),
            dims: p,
            batches: (0..nb).map(|b| format!("b{b}")).collect(),
            plates: Default::default(),
            generation: 1,
            feature_rows: false,
            control_pool: Default::default(),
        }
    }

    /// The three-pass round gives exactly the rows (and hits) of computing
    /// each row on its own with [`compute_row`] and a lazily filled cache,
    /// for every kernel and trust rule.
    #[test]
    fn round_matches_row_by_row_sampling() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let (n, p, nb, n_plate) = (300usize, 5usize, 3usize, 40usize);
        let y: Vec<f32> = (0..n * p)
            .map(|t| rng.gen_range(-2.0f32..2.0) + ((t / p) % 3) as f32)
            .collect();
        let batch_of: Vec<u32> = (0..n).map(|i| (i % nb) as u32).collect();
        let yv = ArrayView2::from_shape((n, p), &y).unwrap();
        let indices = build_batch_indices(yv, &batch_of, nb, IndexKind::Exact, 1).unwrap();
        let plate = Array2::from_shape_fn((n_plate, p), |(i, t)| {
            ((i * 7 + t * 3) % 11) as f32 * 0.3 - 1.0
        });
        let mut plate_index = BatchIndex::new(IndexKind::Exact, p, 1).unwrap();
        let keys: Vec<u64> = (n..n + n_plate).map(|k| k as u64).collect();
        plate_index.add(&keys, plate.view(), 1).unwrap();
        let plate_ids = vec![nb as u32; n_plate];
        let old = MatrixRows::new(yv, &batch_of).unwrap();
        let new = MatrixRows::new(plate.view(), &plate_ids).unwrap();
        let all = Concat { a: &old, b: &new };
        let mut refs: Vec<&BatchIndex> = indices.iter().collect();
        refs.push(&plate_index);
        for (kernel, trust, rule) in [
            (KernelKind::Symmetric, 0.5, TrustRule::Mutual),
            (KernelKind::Symmetric, 0.0, TrustRule::Mass),
            (KernelKind::Asymmetric, 0.5, TrustRule::Both),
            (KernelKind::Asymmetric, 0.0, TrustRule::Mass),
        ] {
            let params = Params {
                k: 6,
                m: 4,
                kernel,
                trust,
                trust_rule: rule,
                ..Params::default()
            };
            let model = Model {
                meta: meta_for(&params, p, nb),
                pca: crate::method::pca::Pca {
                    mean: ndarray::Array1::zeros(p),
                    components: Array2::eye(p),
                    variances: ndarray::Array1::ones(p),
                    whitening: None,
                },
                indices: build_batch_indices(yv, &batch_of, nb, IndexKind::Exact, 1).unwrap(),
                summaries: vec![None; nb],
                y: y.clone(),
                w: Vec::new(),
                batch_of: batch_of.clone(),
                coverage: vec![1.0; n],
            };
            let cfg = SamplingConfig::from_params(&params, n_plate, f64::INFINITY, n_plate);
            let got = model
                .sample_plate(&all, plate.view(), &plate_index, &cfg, true)
                .unwrap();
            let cache = ScaleCache::sparse(nb + 1, params.k);
            let want: Vec<SparseRow> = (n..n + n_plate)
                .map(|i| compute_row(i, &all, &refs, &cache, &cfg).unwrap())
                .collect();
            assert_eq!(got.rows, want, "{kernel:?} trust {trust} {rule:?}");
            let hits = got.hits.unwrap();
            for (r, h) in hits.iter().enumerate() {
                let mut w: RowHits = Vec::new();
                for (c, ix) in indices.iter().enumerate() {
                    let nbrs = ix.search(all.row(n + r), params.k.max(params.m)).unwrap();
                    w.extend(nbrs.iter().take(params.k).map(|x| (x.dist2, c)));
                }
                assert_eq!(h, &w);
            }
        }
    }
}
