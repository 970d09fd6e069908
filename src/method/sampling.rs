//! Coverage-prioritised adaptive row sampling of the sparse affinity.
//!
//! BALANS never forms the `n x n` affinity. It computes whole rows for a
//! subset of points, the *landmarks*, chosen adaptively: every point carries
//! a cumulative coverage `c_j = sum of retained A_lj over landmarks l`, and
//! each sampling round takes the points with the lowest coverage (ties
//! broken by a seeded random rank). A landmark's row has candidates from
//! *every* batch — its nearest points in each per-batch index, as in BBKNN —
//! scored with the batch-aware kernel, and only the strongest affinities are
//! kept (`m` per batch, or `m * B` overall). Sampling stops when every point
//! reaches the coverage target or the row budget is spent.
//!
//! Rows of one round are computed in parallel; coverage is updated after the
//! round in landmark order, so the result depends only on the seed.

use anyhow::Result;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayon::prelude::*;

use crate::method::index::{BatchIndex, Neighbor};
use crate::method::kernel::affinity;
use crate::method::mutual::mutual_fractions;
pub use crate::method::mutual::mutual_rank;
use crate::method::params::{KernelKind, Params, Retention, SamplingRule, TrustRule};
use crate::method::rowmap::RowMap;
use crate::method::rows::RowSource;
use crate::method::scales::{kth_scale, ScaleCache};

/// One sampled row of the affinity: the landmark and its retained entries
/// `(row id, A_lj)`, sorted by row id. The landmark's own entry (`A_ll = 1`)
/// is included.
#[derive(Debug, Clone, PartialEq)]
pub struct SparseRow {
    /// The landmark's row id.
    pub landmark: u32,
    /// Retained affinities.
    pub entries: Vec<(u32, f32)>,
    /// Per batch, how much the landmark trusts that batch's correspondence
    /// in [0, 1] (empty = trust every batch fully); see [`SamplingConfig::trust`].
    pub trust: Vec<f32>,
}

/// Settings of one sampling run.
#[derive(Debug, Clone)]
pub struct SamplingConfig {
    /// k of the local scales.
    pub k: usize,
    /// Entries kept per batch (or `m * B` overall).
    pub m: usize,
    /// Kernel form.
    pub kernel: KernelKind,
    /// Retention rule.
    pub retention: Retention,
    /// Maximum number of landmarks.
    pub budget_rows: usize,
    /// Coverage at which a point stops being a priority (`f64::INFINITY`
    /// samples every row up to the budget).
    pub coverage_target: f64,
    /// Landmarks per sampling round.
    pub round_rows: usize,
    /// How a round picks its landmarks among the rows below the target.
    pub rule: SamplingRule,
    /// Seed of the tie-break ranks.
    pub seed: u64,
    /// Kernel-mass trust test width (0 = off). A batch `c` is trusted at
    /// landmark `l` by `min(1, M_c / M_own)`, where `M_c` sums
    /// `exp(-d^2 / (trust * sigma_l^(own))^2)` over the retained entries of
    /// batch `c` — the batch's mass under the landmark's *own-batch* scale,
    /// which (unlike the batch-aware kernel) does not stretch to reach a
    /// batch that has nothing nearby.
    pub trust: f64,
    /// Neighbour rank of the own-batch scale used by the trust test.
    pub trust_k: usize,
    /// How the trust test measures a batch's correspondence.
    pub trust_rule: TrustRule,
    /// Share of the landmark's batch the mutual test's rank may reach
    /// ([`mutual_rank`]): [`crate::method::mutual::MUTUAL_SHARE`] offline,
    /// `plate_mutual_share` for a daemon's plate.
    pub mutual_share: f64,
}

impl SamplingConfig {
    /// The settings `params` fixes (kernel, retention, rule, seed, trust
    /// test), with the three a caller sizes to its run: the landmark budget,
    /// the coverage target (`f64::INFINITY` = sample every row up to the
    /// budget) and the landmarks per round. The fit starts every round
    /// from this; the daemon samples every row of a plate in one round.
    pub fn from_params(
        params: &Params,
        budget_rows: usize,
        coverage_target: f64,
        round_rows: usize,
    ) -> SamplingConfig {
        SamplingConfig {
            k: params.k,
            m: params.m,
            kernel: params.kernel,
            retention: params.retention,
            budget_rows,
            coverage_target,
            round_rows,
            rule: params.sampling_rule,
            seed: params.seed,
            trust: params.trust,
            trust_k: params.trust_k,
            trust_rule: params.trust_rule,
            mutual_share: crate::method::mutual::MUTUAL_SHARE,
        }
    }
}

/// What a sampling run produced.
#[derive(Debug, Clone)]
pub struct Sampling {
    /// The landmarks' rows, in sampling order.
    pub rows: Vec<SparseRow>,
    /// Final coverage of every point.
    pub coverage: Vec<f64>,
    /// Sampling rounds run.
    pub rounds: usize,
}

impl Sampling {
    /// (min, median) coverage.
    pub fn coverage_stats(&self) -> (f64, f64) {
        if self.coverage.is_empty() {
            return (0.0, 0.0);
        }
        let mut c = self.coverage.clone();
        let med = crate::method::preprocess::median_inplace(&mut c);
        let min = self.coverage.iter().copied().fold(f64::INFINITY, f64::min);
        (min, med)
    }
}

/// Compute the retained affinity row of point `i`.
pub fn compute_row(
    i: usize,
    rows: &dyn RowSource,
    indices: &[&BatchIndex],
    cache: &ScaleCache,
    cfg: &SamplingConfig,
) -> Result<SparseRow> {
    compute_row_observed(i, rows, indices, cache, cfg, &mut |_, _| {})
}

/// [`compute_row`], also handing each batch's candidate list (`k.max(m)`
/// nearest rows of batch `c`, sorted) to `observe(c, list)` — so a caller
/// needing the same queries (the daemon's mixing QC) does not repeat them.
pub fn compute_row_observed(
    i: usize,
    rows: &dyn RowSource,
    indices: &[&BatchIndex],
    cache: &ScaleCache,
    cfg: &SamplingConfig,
    observe: &mut dyn FnMut(usize, &[Neighbor]),
) -> Result<SparseRow> {
    let lists = candidate_lists(rows.row(i), indices, cfg)?;
    for (c, nb) in lists.iter().enumerate() {
        observe(c, nb);
    }
    compute_row_from(i, rows, indices, &lists, cache, cfg)
}

/// The candidate queries of a sampled row at `q`: its `k.max(m)` nearest
/// rows of every batch index, sorted (one list per index, in index order).
pub fn candidate_lists(
    q: &[f32],
    indices: &[&BatchIndex],
    cfg: &SamplingConfig,
) -> Result<Vec<Vec<Neighbor>>> {
    let kq = cfg.k.max(cfg.m);
    indices.iter().map(|index| index.search(q, kq)).collect()
}

/// [`compute_row`] from candidate lists already queried
/// ([`candidate_lists`] at row `i`'s coordinates): the same row, without the
/// queries. The daemon queries a whole plate first, so it can compute every
/// candidate's scale against the plate in one pass
/// ([`crate::method::scales::kth_scales_against`]) and hand them in `cache`.
pub fn compute_row_from(
    i: usize,
    rows: &dyn RowSource,
    indices: &[&BatchIndex],
    lists: &[Vec<Neighbor>],
    cache: &ScaleCache,
    cfg: &SamplingConfig,
) -> Result<SparseRow> {
    anyhow::ensure!(
        lists.len() == indices.len(),
        "row {i}: {} candidate lists for {} indices",
        lists.len(),
        indices.len()
    );
    let bi = rows.batch(i) as usize;
    let mut all: Vec<(u32, f32)> = Vec::new();
    let mut dist2: RowMap<u32, f32> = RowMap::default();
    let mut own_scale = 0.0;
    for (c, nb) in lists.iter().enumerate() {
        if nb.is_empty() {
            continue;
        }
        let s_i = kth_scale(nb, cfg.k);
        cache.set(i, c, s_i);
        if c == bi {
            own_scale = kth_scale(nb, cfg.trust_k.max(1));
        }
        for n in nb {
            dist2.insert(n.key as u32, n.dist2);
        }
        let mut scored: Vec<(u32, f32)> = Vec::with_capacity(nb.len());
        for n in nb {
            let j = n.key as usize;
            let s_j = match cfg.kernel {
                KernelKind::Symmetric => cache.get_or_compute(j, bi, rows, indices)?,
                KernelKind::Asymmetric => 0.0,
            };
            let a = affinity(cfg.kernel, n.dist2 as f64, s_i, s_j);
            if a > 0.0 {
                scored.push((n.key as u32, a as f32));
            }
        }
        if cfg.retention == Retention::PerBatch {
            keep_strongest(&mut scored, cfg.m);
        }
        all.extend(scored);
    }
    if cfg.retention == Retention::Global {
        keep_strongest(&mut all, cfg.m * indices.len());
    }
    all.sort_by_key(|e| e.0);
    let trust = if cfg.trust > 0.0 {
        let nb = indices.len();
        let mass = cfg.trust_rule.uses_mass().then(|| {
            let w = (cfg.trust * own_scale).max(crate::method::kernel::SCALE_FLOOR);
            let mut mass = vec![0f64; nb];
            for &(j, _) in &all {
                let d2 = dist2.get(&j).copied().unwrap_or(f32::INFINITY) as f64;
                mass[rows.batch(j as usize) as usize] += (-d2 / (w * w)).exp();
            }
            let own = mass.get(bi).copied().unwrap_or(0.0).max(1e-300);
            mass.iter()
                .map(|m| (m / own).min(1.0))
                .collect::<Vec<f64>>()
        });
        let mutual = if cfg.trust_rule.uses_mutual() {
            Some(mutual_fractions(
                &all, &dist2, bi, rows, indices, cache, cfg,
            )?)
        } else {
            None
        };
        match (mass, mutual) {
            (Some(m), None) | (None, Some(m)) => m.iter().map(|&t| t as f32).collect(),
            (Some(m), Some(u)) => m
                .iter()
                .zip(&u)
                .map(|(&a, &b)| match cfg.trust_rule {
                    TrustRule::Both => a.min(b),
                    _ => a.max(b),
                } as f32)
                .collect(),
            (None, None) => Vec::new(),
        }
    } else {
        Vec::new()
    };
    Ok(SparseRow {
        landmark: i as u32,
        entries: all,
        trust,
    })
}

/// `take` of the rows `cand`, drawn without replacement with probability
/// proportional to `1 / (1 + coverage)` (Efraimidis-Spirakis keys
/// `ln(u) / w`, the largest `take` win), seeded by `seed` and the round.
fn weighted_draw(cand: &[u32], coverage: &[f64], take: usize, seed: u64, round: u64) -> Vec<u32> {
    use rand::Rng;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
        seed ^ 0x9E37_79B9_7F4A_7C15u64.wrapping_mul(round + 1),
    );
    let mut keyed: Vec<(f64, u32)> = cand
        .iter()
        .map(|&j| {
            let w = 1.0 / (1.0 + coverage[j as usize].max(0.0));
            let u: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
            (u.ln() / w, j)
        })
        .collect();
    let by_key = |a: &(f64, u32), b: &(f64, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
    if take < keyed.len() {
        keyed.select_nth_unstable_by(take - 1, by_key);
        keyed.truncate(take);
    }
    keyed.into_iter().map(|(_, j)| j).collect()
}

/// Keep the `m` largest affinities (ties: smaller row id first).
fn keep_strongest(v: &mut Vec<(u32, f32)>, m: usize) {
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    v.truncate(m);
}

/// Run coverage-prioritised sampling over all rows of `y`.
///
/// `initial_coverage` lets a caller (the daemon) continue from earlier
/// coverage; `eligible` restricts which rows may become landmarks.
#[allow(clippy::too_many_arguments)]
pub fn sample(
    rows: &dyn RowSource,
    indices: &[&BatchIndex],
    cache: &ScaleCache,
    cfg: &SamplingConfig,
    initial_coverage: Option<Vec<f64>>,
    eligible: Option<&[bool]>,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<Sampling> {
    let n = rows.len();
    let mut coverage = initial_coverage.unwrap_or_else(|| vec![0.0; n]);
    anyhow::ensure!(coverage.len() == n, "coverage length does not match rows");
    let mut rank: Vec<u32> = (0..n as u32).collect();
    rank.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed));
    let mut sampled = vec![false; n];
    if let Some(e) = eligible {
        for (s, &ok) in sampled.iter_mut().zip(e) {
            *s = !ok;
        }
    }
    let mut out: Vec<SparseRow> = Vec::new();
    let mut rounds = 0;
    let round_rows = cfg.round_rows.max(1);
    while out.len() < cfg.budget_rows {
        let mut cand: Vec<u32> = (0..n as u32)
            .filter(|&j| !sampled[j as usize] && coverage[j as usize] < cfg.coverage_target)
            .collect();
        if cand.is_empty() {
            break;
        }
        let take = round_rows.min(cfg.budget_rows - out.len()).min(cand.len());
        let cmp = |a: &u32, b: &u32| {
            coverage[*a as usize]
                .total_cmp(&coverage[*b as usize])
                .then(rank[*a as usize].cmp(&rank[*b as usize]))
        };
        if take < cand.len() {
            match cfg.rule {
                SamplingRule::Lowest => {
                    cand.select_nth_unstable_by(take - 1, cmp);
                    cand.truncate(take);
                }
                SamplingRule::Proportional => {
                    cand = weighted_draw(&cand, &coverage, take, cfg.seed, rounds as u64);
                }
            }
        }
        cand.sort_by(cmp);
        let new_rows: Vec<SparseRow> = cand
            .par_iter()
            .map(|&i| compute_row(i as usize, rows, indices, cache, cfg))
            .collect::<Result<_>>()?;
        for r in &new_rows {
            sampled[r.landmark as usize] = true;
            for &(j, a) in &r.entries {
                coverage[j as usize] += a as f64;
            }
        }
        out.extend(new_rows);
        rounds += 1;
        progress(out.len());
    }
    Ok(Sampling {
        rows: out,
        coverage,
        rounds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::method::index::build_batch_indices;
    use crate::method::params::IndexKind;
    use crate::method::rows::MatrixRows;
    use ndarray::Array2;
    use rand::Rng;

    fn data(n: usize, seed: u64) -> (Array2<f32>, Vec<u32>) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let y = Array2::from_shape_fn((n, 3), |(i, j)| {
            (i % 5) as f32 * 3.0 + j as f32 + rng.gen_range(-0.5..0.5) + (i % 2) as f32
        });
        let b = (0..n).map(|i| (i % 2) as u32).collect();
        (y, b)
    }

    fn cfg(budget: usize, target: f64) -> SamplingConfig {
        SamplingConfig {
            k: 5,
            m: 4,
            kernel: KernelKind::Symmetric,
            retention: Retention::PerBatch,
            budget_rows: budget,
            coverage_target: target,
            round_rows: 8,
            rule: SamplingRule::Lowest,
            seed: 7,
            trust: 0.0,
            trust_k: 5,
            trust_rule: TrustRule::Mass,
            mutual_share: 0.5,
        }
    }

    #[test]
    fn row_matches_brute_force_definition() {
        let (y, b) = data(60, 1);
        let idx = build_batch_indices(y.view(), &b, 2, IndexKind::Exact, 1).unwrap();
        let idx: Vec<&BatchIndex> = idx.iter().collect();
        let rows = MatrixRows::new(y.view(), &b).unwrap();
        let cache = ScaleCache::new(60, 2, 5);
        let c = cfg(60, f64::INFINITY);
        let row = compute_row(3, &rows, &idx, &cache, &c).unwrap();
        // Oracle: all distances, per batch the 5th nearest distance (self counted).
        let d2 = |i: usize, j: usize| -> f64 {
            (0..3)
                .map(|t| ((y[[i, t]] - y[[j, t]]) as f64).powi(2))
                .sum()
        };
        let scale = |i: usize, batch: u32| -> f64 {
            let mut v: Vec<f64> = (0..60)
                .filter(|&j| b[j] == batch)
                .map(|j| d2(i, j))
                .collect();
            v.sort_by(|a, b| a.total_cmp(b));
            v[4].sqrt()
        };
        let mut want: Vec<(u32, f64)> = Vec::new();
        for batch in 0..2u32 {
            let mut cands: Vec<(usize, f64)> = (0..60)
                .filter(|&j| b[j] == batch)
                .map(|j| (j, d2(3, j)))
                .collect();
            cands.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
            let mut scored: Vec<(u32, f64)> = cands[..5]
                .iter()
                .map(|&(j, dd)| {
                    (
                        j as u32,
                        affinity(KernelKind::Symmetric, dd, scale(3, batch), scale(j, b[3])),
                    )
                })
                .collect();
            scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            want.extend(scored.into_iter().take(4));
        }
        want.sort_by_key(|e| e.0);
        assert_eq!(row.entries.len(), want.len());
        for (g, w) in row.entries.iter().zip(&want) {
            assert_eq!(g.0, w.0);
            assert!((g.1 as f64 - w.1).abs() < 1e-5, "{g:?} vs {w:?}");
        }
        assert!(row.entries.iter().any(|&(j, a)| j == 3 && a == 1.0));
    }

    /// Every row reached coverage 1, and coverage equals the column sums of
    /// the retained rows.
    fn assert_covered_with_column_sums(s: &Sampling) {
        assert!(s.coverage.iter().all(|&c| c >= 1.0));
        let mut sums = vec![0.0; s.coverage.len()];
        for r in &s.rows {
            for &(j, a) in &r.entries {
                sums[j as usize] += a as f64;
            }
        }
        for (a, b) in sums.iter().zip(&s.coverage) {
            assert!((a - b).abs() < 1e-9);
        }
    }

    #[test]
    fn coverage_sampling_covers_everything_and_respects_budget() {
        let (y, b) = data(200, 2);
        let idx = build_batch_indices(y.view(), &b, 2, IndexKind::Exact, 1).unwrap();
        let idx: Vec<&BatchIndex> = idx.iter().collect();
        let rows = MatrixRows::new(y.view(), &b).unwrap();
        let cache = ScaleCache::new(200, 2, 5);
        let s = sample(&rows, &idx, &cache, &cfg(200, 1.0), None, None, &|_| {}).unwrap();
        assert!(s.rows.len() < 200, "coverage stops sampling early");
        assert_covered_with_column_sums(&s);
        let small = sample(&rows, &idx, &cache, &cfg(10, 1.0), None, None, &|_| {}).unwrap();
        assert_eq!(small.rows.len(), 10);
        // Lowest coverage first: the first round's landmarks all started at 0.
        let exact = sample(
            &rows,
            &idx,
            &cache,
            &cfg(200, f64::INFINITY),
            None,
            None,
            &|_| {},
        )
        .unwrap();
        assert_eq!(exact.rows.len(), 200, "exact mode samples every row");
    }

    #[test]
    fn deterministic_for_seed_and_threads() {
        let (y, b) = data(150, 3);
        let idx = build_batch_indices(y.view(), &b, 2, IndexKind::Hnsw, 2).unwrap();
        let idx: Vec<&BatchIndex> = idx.iter().collect();
        let rows = MatrixRows::new(y.view(), &b).unwrap();
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let cache = ScaleCache::new(150, 2, 5);
                sample(&rows, &idx, &cache, &cfg(150, 2.0), None, None, &|_| {}).unwrap()
            })
        };
        let a = run(2);
        let b2 = run(2);
        assert_eq!(a.rows, b2.rows);
        assert_eq!(a.coverage, b2.coverage);
        assert_eq!(a.rows, run(1).rows);
    }

    #[test]
    fn eligible_rows_restrict_landmarks() {
        let (y, b) = data(100, 4);
        let idx = build_batch_indices(y.view(), &b, 2, IndexKind::Exact, 1).unwrap();
        let idx: Vec<&BatchIndex> = idx.iter().collect();
        let rows = MatrixRows::new(y.view(), &b).unwrap();
        let cache = ScaleCache::new(100, 2, 5);
        let eligible: Vec<bool> = (0..100).map(|i| i >= 80).collect();
        let s = sample(
            &rows,
            &idx,
            &cache,
            &cfg(100, f64::INFINITY),
            None,
            Some(&eligible),
            &|_| {},
        )
        .unwrap();
        assert_eq!(s.rows.len(), 20);
        assert!(s.rows.iter().all(|r| r.landmark >= 80));
    }

    /// Three batches of three uniform blobs 20 apart; batch 2 lacks group 0,
    /// batch 1 is displaced by 3 (1.5x a blob's width).
    fn grouped(n_per: usize, seed: u64) -> (Array2<f32>, Vec<u32>) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut v = Vec::new();
        let mut b = Vec::new();
        for batch in 0..3u32 {
            for g in 0..3usize {
                if batch == 2 && g == 0 {
                    continue;
                }
                for _ in 0..n_per {
                    let shift = if batch == 1 { 3.0 } else { 0.0 };
                    v.push(g as f32 * 20.0 + shift + rng.gen_range(-1.0..1.0));
                    v.push(rng.gen_range(-1.0..1.0));
                    b.push(batch);
                }
            }
        }
        (Array2::from_shape_vec((b.len(), 2), v).unwrap(), b)
    }

    #[test]
    fn mutual_trust_matches_brute_force() {
        let (y, b) = grouped(12, 3);
        let n = b.len();
        let idx = build_batch_indices(y.view(), &b, 3, IndexKind::Exact, 1).unwrap();
        let idx: Vec<&BatchIndex> = idx.iter().collect();
        let rows = MatrixRows::new(y.view(), &b).unwrap();
        let d2 = |i: usize, j: usize| -> f64 {
            (0..2)
                .map(|t| ((y[[i, t]] - y[[j, t]]) as f64).powi(2))
                .sum()
        };
        let mut c = cfg(n, f64::INFINITY);
        c.trust = 0.5;
        let mut mass_cfg = c.clone();
        mass_cfg.trust_rule = TrustRule::Mass;
        // Half a batch (offline), a quarter (a daemon's plate), a tenth.
        for (i, share) in (0..n)
            .step_by(5)
            .flat_map(|i| [(i, 0.5), (i, 0.25), (i, 0.1)])
        {
            c.trust_rule = TrustRule::Mutual;
            c.mutual_share = share;
            let cache = ScaleCache::new(n, 3, 5);
            let row = compute_row(i, &rows, &idx, &cache, &c).unwrap();
            // Oracle: entry j of batch c is mutual when fewer than r rows of
            // i's batch are strictly closer to j than i is (r = k, or the
            // share of i's batch when that is smaller, at least 1).
            let size = b.iter().filter(|&&x| x == b[i]).count();
            let r = c.k.min((size as f64 * share).floor() as usize).max(1);
            let mut hit = [0f64; 3];
            let mut all = [0f64; 3];
            for &(j, a) in &row.entries {
                let (j, cj) = (j as usize, b[j as usize] as usize);
                if cj == b[i] as usize {
                    continue;
                }
                let closer = (0..n)
                    .filter(|&q| b[q] == b[i] && d2(j, q) < d2(j, i) - 1e-9)
                    .count();
                all[cj] += a as f64;
                if closer < r {
                    hit[cj] += a as f64;
                }
            }
            for cb in 0..3 {
                let want = if cb == b[i] as usize {
                    1.0
                } else if all[cb] > 0.0 {
                    hit[cb] / all[cb]
                } else {
                    0.0
                };
                assert!(
                    (row.trust[cb] as f64 - want).abs() < 1e-6,
                    "row {i} batch {cb} share {share}: {} vs {want}",
                    row.trust[cb]
                );
            }
            // Either / Both combine the two tests by max / min.
            let mass = compute_row(i, &rows, &idx, &cache, &mass_cfg).unwrap();
            for (rule, f) in [
                (TrustRule::Either, f32::max as fn(f32, f32) -> f32),
                (TrustRule::Both, f32::min),
            ] {
                c.trust_rule = rule;
                let r = compute_row(i, &rows, &idx, &cache, &c).unwrap();
                for cb in 0..3 {
                    assert_eq!(r.trust[cb], f(mass.trust[cb], row.trust[cb]));
                }
            }
        }
    }

    #[test]
    fn mutual_trust_follows_a_displaced_state_but_not_an_absent_one() {
        // Batch 1 is the same three groups displaced by 3 (1.5x the spread):
        // the mutual test trusts it where the kernel-mass test at a replicate
        // width does not. Group 0 is absent from batch 2: its nearest batch-2
        // rows belong to group 1, whose own nearest batch-0 rows are group 1,
        // so the correspondence is not mutual. k = the group size, so a
        // displaced group is mutual as a whole, not only on its facing edge.
        let (y, b) = grouped(12, 5);
        let n = b.len();
        let idx = build_batch_indices(y.view(), &b, 3, IndexKind::Exact, 1).unwrap();
        let idx: Vec<&BatchIndex> = idx.iter().collect();
        let rows = MatrixRows::new(y.view(), &b).unwrap();
        let mut c = cfg(n, f64::INFINITY);
        c.trust = 0.5;
        c.k = 12;
        let mut mass = c.clone();
        mass.trust_rule = TrustRule::Mass;
        c.trust_rule = TrustRule::Mutual;
        let mean = |cfg: &SamplingConfig, rows_of: &[usize], batch: usize| -> f32 {
            let cache = ScaleCache::new(n, 3, 12);
            rows_of
                .iter()
                .map(|&i| compute_row(i, &rows, &idx, &cache, cfg).unwrap().trust[batch])
                .sum::<f32>()
                / rows_of.len() as f32
        };
        // Batch-0 rows of group 0 (absent from batch 2) and of group 2.
        let g0: Vec<usize> = (0..12).collect();
        let g2: Vec<usize> = (24..36).collect();
        assert!(mean(&c, &g0, 1) > 0.8, "displaced state trusted");
        assert!(mean(&mass, &g0, 1) < 0.2, "mass test misses it");
        assert!(mean(&c, &g2, 2) > 0.8, "shared state trusted");
        assert!(mean(&c, &g0, 2) < 0.2, "absent state not trusted");
    }

    #[test]
    fn mutual_trust_is_not_vacuous_for_a_batch_smaller_than_k() {
        // Batch 0 is a small plate: 4 rows of group 0 and 4 of group 1 (8
        // rows, k = 12). Batch 1 holds groups 1 and 2 (12 rows each), not
        // group 0. At rank k every plate row would be among any row's 12
        // nearest plate rows, so group 0 would be trusted onto group 1;
        // at rank 4 (half the plate) only group 1 is mutual.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let mut v = Vec::new();
        let mut b = Vec::new();
        for (batch, g, count) in [(0u32, 0usize, 4), (0, 1, 4), (1, 1, 12), (1, 2, 12)] {
            for _ in 0..count {
                v.push(g as f32 * 20.0 + rng.gen_range(-1.0..1.0));
                v.push(rng.gen_range(-1.0..1.0));
                b.push(batch);
            }
        }
        let n = b.len();
        let y = Array2::from_shape_vec((n, 2), v).unwrap();
        let idx = build_batch_indices(y.view(), &b, 2, IndexKind::Exact, 1).unwrap();
        let idx: Vec<&BatchIndex> = idx.iter().collect();
        let rows = MatrixRows::new(y.view(), &b).unwrap();
        let mut c = cfg(n, f64::INFINITY);
        c.trust = 0.5;
        c.k = 12;
        c.trust_rule = TrustRule::Mutual;
        assert_eq!(mutual_rank(12, 8, 0.5), 4);
        assert_eq!(mutual_rank(12, 30, 0.5), 12);
        assert_eq!(mutual_rank(12, 1, 0.5), 1);
        // A daemon's plate: a quarter of it.
        assert_eq!(mutual_rank(15, 19, 0.25), 4);
        assert_eq!(mutual_rank(15, 214, 0.25), 15);
        assert_eq!(mutual_rank(15, 3, 0.25), 1);
        let cache = ScaleCache::new(n, 2, 12);
        let trust = |i: usize| compute_row(i, &rows, &idx, &cache, &c).unwrap().trust[1];
        for i in 0..4 {
            assert!(trust(i) < 0.2, "absent group 0, row {i}: {}", trust(i));
        }
        for i in 4..8 {
            assert!(trust(i) > 0.8, "shared group 1, row {i}: {}", trust(i));
        }
    }

    #[test]
    fn proportional_sampling_covers_everything_and_is_seeded() {
        let (y, b) = data(200, 4);
        let idx = build_batch_indices(y.view(), &b, 2, IndexKind::Exact, 1).unwrap();
        let idx: Vec<&BatchIndex> = idx.iter().collect();
        let rows = MatrixRows::new(y.view(), &b).unwrap();
        let mut c = cfg(200, 1.0);
        c.rule = SamplingRule::Proportional;
        let run = |c: &SamplingConfig| {
            let cache = ScaleCache::new(200, 2, 5);
            sample(&rows, &idx, &cache, c, None, None, &|_| {}).unwrap()
        };
        let s = run(&c);
        assert!(s.rows.len() < 200, "coverage stops sampling early");
        assert_covered_with_column_sums(&s);
        let landmarks = |s: &Sampling| s.rows.iter().map(|r| r.landmark).collect::<Vec<_>>();
        assert_eq!(landmarks(&s), landmarks(&run(&c)), "same seed, same draw");
        c.seed = 8;
        assert_ne!(
            landmarks(&s),
            landmarks(&run(&c)),
            "another seed, another draw"
        );
    }

    #[test]
    fn weighted_draw_favours_low_coverage() {
        // 100 rows at coverage 0 (weight 1) and 100 at coverage 9 (weight
        // 0.1): a small draw should take about 10 low rows per high row.
        let cand: Vec<u32> = (0..200).collect();
        let coverage: Vec<f64> = (0..200).map(|j| if j < 100 { 0.0 } else { 9.0 }).collect();
        let (mut low, mut high) = (0usize, 0usize);
        for round in 0..50 {
            let d = weighted_draw(&cand, &coverage, 10, 3, round);
            assert_eq!(d.len(), 10);
            let mut u = d.clone();
            u.sort_unstable();
            u.dedup();
            assert_eq!(u.len(), 10, "without replacement");
            low += d.iter().filter(|&&j| j < 100).count();
            high += d.iter().filter(|&&j| j >= 100).count();
        }
        assert!(low > 4 * high, "low {low} high {high}");
        assert!(high > 0, "high-coverage rows keep a chance");
    }
}
