//! Average precision and mean average precision with copairs semantics
//! (copairs 0.5).
//!
//! **Pairs.** A pair of rows `(i, j)` is *positive* when it agrees on every
//! column of `positive.same` and differs on every column of `positive.diff`;
//! *negative* likewise with the `negative` rule. An empty list imposes nothing.
//! A pair matching both rules is counted in both lists, as copairs does.
//!
//! **AP.** Each query row ranks its positive and negative partners by cosine
//! similarity, descending; at equal similarity positives rank first (copairs'
//! stable sort puts the positive list first). `AP = mean over positives of
//! precision at that positive's rank`. Queries without positives get no AP.
//!
//! **mAP and significance.** Queries are grouped by `group_by` (copairs'
//! `sameby`); a group's mAP is the mean AP of its queries. Its p-value compares
//! that mAP with a null distribution: for each query configuration
//! `(n_pos, n_total)`, `null_size` random rankings (positions drawn uniformly
//! without replacement, seeded ChaCha8 stream per configuration) give null
//! APs; the group null is the element-wise mean over its members' nulls and
//! `p = (#{null > mAP} + 1) / (null_size + 1)`. p-values are corrected with
//! Benjamini–Hochberg across groups; the *fraction retrieved* is the share of
//! groups with corrected `p < threshold`. The summary mAP is the mean over
//! groups of the per-group mAP. Random streams differ from numpy's, so
//! p-values agree with copairs only statistically (see docs/metrics.md).
//!
//! **Cost.** `O(q n d)` for `q` queries: similarities are computed per query
//! against all rows, and positives/negatives are counted by binary search
//! over the sorted positives, so negatives are never sorted. Large inputs
//! cap the number of queries (`MapOptions::max_queries`, seeded sample).

use super::labels::Codes;
use anyhow::{bail, Result};
use ndarray::{Array2, Axis};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap};

/// Which metadata columns two rows must share / must all differ on.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct PairRule {
    /// Columns whose values must be equal.
    pub same: Vec<String>,
    /// Columns whose values must all differ.
    pub diff: Vec<String>,
}

/// A complete mAP definition.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct MapSpec {
    /// Name used in reports.
    pub name: String,
    /// Positive-pair rule.
    pub positive: PairRule,
    /// Negative-pair rule.
    pub negative: PairRule,
    /// Columns defining the groups mAP is averaged over.
    pub group_by: Vec<String>,
}

fn rule(same: &[&str], diff: &[&str]) -> PairRule {
    PairRule {
        same: same.iter().map(|s| s.to_string()).collect(),
        diff: diff.iter().map(|s| s.to_string()).collect(),
    }
}

impl MapSpec {
    /// Arevalo et al. 2024, "non-replicate negatives": positives = same
    /// compound; negatives = other compounds on the same plate.
    pub fn arevalo_nonrep(compound: &str, plate: &str) -> MapSpec {
        MapSpec {
            name: "map_nonrep".into(),
            positive: rule(&[compound], &[]),
            negative: rule(&[plate], &[compound]),
            group_by: vec![compound.into()],
        }
    }

    /// Arevalo et al. 2024, "control negatives": positives = same compound;
    /// negatives = control wells on the same plate (`control` is a column
    /// flagging control rows; differing on it pairs a treated query with a
    /// control).
    pub fn arevalo_control(compound: &str, plate: &str, control: &str) -> MapSpec {
        MapSpec {
            name: "map_control".into(),
            positive: rule(&[compound], &[]),
            negative: rule(&[plate], &[compound, control]),
            group_by: vec![compound.into()],
        }
    }

    /// Cross-batch retrieval: positives = same label in a different batch and
    /// a different compound; negatives = a different label.
    pub fn cross_batch(label: &str, batch: &str, compound: &str) -> MapSpec {
        MapSpec {
            name: "map_cross_batch".into(),
            positive: rule(&[label], &[batch, compound]),
            negative: rule(&[], &[label]),
            group_by: vec![label.into()],
        }
    }

    /// All column names the spec refers to.
    pub fn columns(&self) -> Vec<&str> {
        let mut v: Vec<&str> = Vec::new();
        for c in self
            .positive
            .same
            .iter()
            .chain(&self.positive.diff)
            .chain(&self.negative.same)
            .chain(&self.negative.diff)
            .chain(&self.group_by)
        {
            if !v.contains(&c.as_str()) {
                v.push(c);
            }
        }
        v
    }
}

/// Significance settings.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct MapOptions {
    /// Null draws per configuration (copairs/Arevalo: 10,000).
    pub null_size: usize,
    /// Seed for null draws and query sampling.
    pub seed: u64,
    /// Threshold on BH-corrected p-values for "retrieved".
    pub threshold: f64,
    /// Cap on the number of query rows (seeded sample); `None` = all.
    pub max_queries: Option<usize>,
    /// Work budget per null configuration, in units of one draw's cost
    /// (`n_pos + n_total / 64`). A configuration whose `null_size` draws
    /// would exceed it gets fewer draws, never fewer than
    /// `min_null_size`. Small tables (all of copairs' test cases and
    /// BBBC021) never reach it; 100k-row tables do.
    pub null_budget: usize,
    /// Floor on the draws of a budget-limited configuration.
    pub min_null_size: usize,
}

impl Default for MapOptions {
    fn default() -> Self {
        MapOptions {
            null_size: 10_000,
            seed: 0,
            threshold: 0.05,
            max_queries: Some(5_000),
            null_budget: 2_000_000,
            min_null_size: 1_000,
        }
    }
}

/// AP of one query.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct QueryAp {
    /// Row index of the query.
    pub row: usize,
    /// Average precision.
    pub ap: f64,
    /// Number of positive partners.
    pub n_pos: usize,
    /// Number of positive plus negative partners.
    pub n_total: usize,
}

/// One group's mAP.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MapGroup {
    /// Group key (values of the `group_by` columns joined by `|`).
    pub key: String,
    /// Mean AP of the group's queries.
    pub map: f64,
    /// Null-distribution p-value.
    pub p_value: f64,
    /// Benjamini–Hochberg corrected p-value.
    pub corrected_p_value: f64,
    /// Number of queries with an AP.
    pub n_queries: usize,
}

/// Result of [`mean_average_precision`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct MapResult {
    /// Spec name.
    pub name: String,
    /// Mean over groups of the group mAP.
    pub mean_map: f64,
    /// Share of groups with corrected p below the threshold.
    pub fraction_retrieved: f64,
    /// Per-group detail, sorted by key.
    pub groups: Vec<MapGroup>,
    /// Fewest null draws behind any group's p-value (`null_size` unless the
    /// work budget cut it).
    pub null_draws: usize,
}

/// Metadata columns by name.
pub type Columns = BTreeMap<String, Codes>;

fn lookup<'a>(cols: &'a Columns, names: &[String]) -> Result<Vec<&'a [usize]>> {
    names
        .iter()
        .map(|c| match cols.get(c) {
            Some(codes) => Ok(codes.codes.as_slice()),
            None => bail!(
                "mAP: column '{c}' is not available (have: {:?})",
                cols.keys().collect::<Vec<_>>()
            ),
        })
        .collect()
}

fn matches(same: &[&[usize]], diff: &[&[usize]], i: usize, j: usize) -> bool {
    same.iter().all(|c| c[i] == c[j]) && diff.iter().all(|c| c[i] != c[j])
}

/// AP from positive and negative similarities (positives first on ties).
pub(crate) fn ap_from_sims(pos: &mut [f64], neg: &[f64]) -> Option<f64> {
    if pos.is_empty() {
        return None;
    }
    pos.sort_by(|a, b| a.total_cmp(b)); // ascending
    let p = pos.len();
    // above[t] = number of negatives strictly above exactly t positives'
    // similarities (i.e. with exactly t positives below them).
    let mut bucket = vec![0usize; p + 1];
    for &v in neg {
        let below = pos.partition_point(|&s| s < v);
        bucket[below] += 1;
    }
    // For the positive at ascending index a, negatives ranked above it are
    // those with more than a positives strictly below: sum bucket[a+1..].
    let mut suffix = vec![0usize; p + 2];
    for t in (0..=p).rev() {
        suffix[t] = suffix[t + 1] + bucket[t];
    }
    let mut total = 0.0;
    for a in 0..p {
        let pos_rank = p - a; // 1-based rank among positives (descending)
        let neg_above = suffix[a + 1];
        total += pos_rank as f64 / (pos_rank + neg_above) as f64;
    }
    Some(total / p as f64)
}

/// AP of each query row (rows without positives are omitted).
pub fn average_precision(
    x: &Array2<f64>,
    cols: &Columns,
    spec: &MapSpec,
    queries: &[usize],
) -> Result<Vec<QueryAp>> {
    let n = x.nrows();
    for c in spec.columns() {
        if let Some(codes) = cols.get(c) {
            if codes.codes.len() != n {
                bail!(
                    "mAP: column '{c}' has {} values for {n} rows",
                    codes.codes.len()
                );
            }
        }
    }
    let ps = lookup(cols, &spec.positive.same)?;
    let pd = lookup(cols, &spec.positive.diff)?;
    let ns = lookup(cols, &spec.negative.same)?;
    let nd = lookup(cols, &spec.negative.diff)?;
    if let Some(&q) = queries.iter().find(|&&q| q >= n) {
        bail!("mAP: query row {q} out of range ({n} rows)");
    }
    let mut unit = x.to_owned();
    for mut r in unit.axis_iter_mut(Axis(0)) {
        let norm = r.dot(&r).sqrt();
        if norm > 0.0 {
            r.mapv_inplace(|v| v / norm);
        }
    }
    // Similarities of a block of queries against all rows by one GEMM.
    const QB: usize = 128;
    let out: Vec<Option<QueryAp>> = queries
        .par_chunks(QB)
        .flat_map_iter(|block| {
            let q = unit.select(Axis(0), block);
            let sims = q.dot(&unit.t());
            block
                .iter()
                .enumerate()
                .map(|(r, &i)| {
                    let srow = sims.row(r);
                    let mut pos = Vec::new();
                    let mut neg = Vec::new();
                    for (j, &s) in srow.iter().enumerate() {
                        if j == i {
                            continue;
                        }
                        if matches(&ps, &pd, i, j) {
                            pos.push(s);
                        }
                        if matches(&ns, &nd, i, j) {
                            neg.push(s);
                        }
                    }
                    let n_pos = pos.len();
                    ap_from_sims(&mut pos, &neg).map(|ap| QueryAp {
                        row: i,
                        ap,
                        n_pos,
                        n_total: n_pos + neg.len(),
                    })
                })
                .collect::<Vec<_>>()
        })
        .collect();
    Ok(out.into_iter().flatten().collect())
}

/// Null APs for one `(n_pos, n_total)` configuration: `null_size` APs of
/// `n_pos` positives placed uniformly at random among `n_total` ranks.
///
/// Each draw picks the positive ranks with Floyd's algorithm (`O(n_pos)`
/// random numbers, membership in a reused bit set) and reads them back in
/// rank order from the bit set (or by sorting when `n_pos` is small against
/// `n_total`), so a draw costs `O(n_pos + n_total / 64)` instead of the
/// `O(n_total)` of an in-place shuffle — this is what makes mAP p-values
/// affordable on 100k-row tables.
pub(crate) fn null_aps(n_pos: usize, n_total: usize, null_size: usize, seed: u64) -> Vec<f64> {
    let mix = seed ^ ((n_pos as u64) << 32 | n_total as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut rng = ChaCha8Rng::seed_from_u64(mix);
    let n_pos = n_pos.min(n_total);
    if n_pos == 0 {
        return vec![0.0; null_size];
    }
    let words = n_total.div_ceil(64);
    let mut bits = vec![0u64; words];
    let mut picks: Vec<usize> = Vec::with_capacity(n_pos);
    let sparse = n_pos.saturating_mul(8) < words;
    (0..null_size)
        .map(|_| {
            picks.clear();
            for j in (n_total - n_pos)..n_total {
                let r = rng.gen_range(0..=j);
                let pick = if (bits[r / 64] >> (r % 64)) & 1 == 1 {
                    j
                } else {
                    r
                };
                bits[pick / 64] |= 1u64 << (pick % 64);
                picks.push(pick);
            }
            let mut sum = 0.0;
            if sparse {
                picks.sort_unstable();
                for (k, &r) in picks.iter().enumerate() {
                    sum += (k + 1) as f64 / (r + 1) as f64;
                    bits[r / 64] = 0;
                }
            } else {
                let mut k = 0usize;
                for (w, word) in bits.iter_mut().enumerate() {
                    let mut x = *word;
                    while x != 0 {
                        let r = w * 64 + x.trailing_zeros() as usize;
                        k += 1;
                        sum += k as f64 / (r + 1) as f64;
                        x &= x - 1;
                    }
                    *word = 0;
                }
            }
            sum / n_pos as f64
        })
        .collect()
}

/// Benjamini–Hochberg adjusted p-values (statsmodels `fdr_bh`).
pub(crate) fn bh_fdr(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let mut adj = vec![0.0; m];
    let mut running = f64::INFINITY;
    for rank in (0..m).rev() {
        let i = order[rank];
        let v = p[i] * m as f64 / (rank + 1) as f64;
        running = running.min(v);
        adj[i] = running.min(1.0);
    }
    adj
}

/// Group APs into mAP per group, with p-values, FDR and fraction retrieved.
pub fn mean_average_precision(
    aps: &[QueryAp],
    cols: &Columns,
    spec: &MapSpec,
    opts: &MapOptions,
) -> Result<MapResult> {
    if aps.is_empty() {
        bail!("mAP '{}': no query has a positive pair", spec.name);
    }
    let gcols = lookup(cols, &spec.group_by)?;
    let gnames: Vec<&Codes> = spec.group_by.iter().filter_map(|c| cols.get(c)).collect();
    let mut groups: BTreeMap<String, Vec<&QueryAp>> = BTreeMap::new();
    for q in aps {
        let key = gcols
            .iter()
            .zip(&gnames)
            .map(|(c, codes)| codes.levels[c[q.row]].as_str())
            .collect::<Vec<_>>()
            .join("|");
        groups.entry(key).or_default().push(q);
    }
    let mut confs: Vec<(usize, usize)> = aps.iter().map(|q| (q.n_pos, q.n_total)).collect();
    confs.sort_unstable();
    confs.dedup();
    tracing::debug!(
        configurations = confs.len(),
        queries = aps.len(),
        "mAP null distributions"
    );
    let nulls: HashMap<(usize, usize), Vec<f64>> = confs
        .par_iter()
        .map(|&(p, t)| {
            let cost = p + t / 64 + 1;
            let draws = if cost.saturating_mul(opts.null_size) > opts.null_budget {
                (opts.null_budget / cost)
                    .clamp(opts.min_null_size.min(opts.null_size), opts.null_size)
            } else {
                opts.null_size
            };
            ((p, t), null_aps(p, t, draws, opts.seed))
        })
        .collect();
    let mut null_draws = opts.null_size;
    let mut out: Vec<MapGroup> = groups
        .into_iter()
        .map(|(key, members)| {
            let map = members.iter().map(|q| q.ap).sum::<f64>() / members.len() as f64;
            // Draws shared by every member's configuration.
            let len = members
                .iter()
                .filter_map(|q| nulls.get(&(q.n_pos, q.n_total)).map(Vec::len))
                .min()
                .unwrap_or(opts.null_size);
            null_draws = null_draws.min(len);
            let mut null = vec![0.0; len];
            for q in &members {
                if let Some(d) = nulls.get(&(q.n_pos, q.n_total)) {
                    for (a, b) in null.iter_mut().zip(d) {
                        *a += b;
                    }
                }
            }
            let m = members.len() as f64;
            let above = null.iter().filter(|&&v| v / m > map).count();
            MapGroup {
                key,
                map,
                p_value: (above + 1) as f64 / (len + 1) as f64,
                corrected_p_value: f64::NAN,
                n_queries: members.len(),
            }
        })
        .collect();
    let p: Vec<f64> = out.iter().map(|g| g.p_value).collect();
    for (g, c) in out.iter_mut().zip(bh_fdr(&p)) {
        g.corrected_p_value = c;
    }
    let mean_map = out.iter().map(|g| g.map).sum::<f64>() / out.len() as f64;
    let retrieved = out
        .iter()
        .filter(|g| g.corrected_p_value < opts.threshold)
        .count();
    Ok(MapResult {
        name: spec.name.clone(),
        mean_map,
        fraction_retrieved: retrieved as f64 / out.len() as f64,
        groups: out,
        null_draws,
    })
}

/// Pick query rows: all `candidates`, or — when there are more than `max` —
/// a seeded sample stratified by `groups` (each group keeps
/// `max(1, round(max * size / total))` rows, so no group disappears).
pub(crate) fn sample_queries(
    candidates: &[usize],
    groups: Option<&[usize]>,
    max: Option<usize>,
    seed: u64,
) -> Vec<usize> {
    let m = match max {
        Some(m) if candidates.len() > m => m,
        _ => return candidates.to_vec(),
    };
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut by_group: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for &c in candidates {
        by_group
            .entry(groups.map_or(0, |g| g[c]))
            .or_default()
            .push(c);
    }
    let total = candidates.len() as f64;
    let mut v = Vec::with_capacity(m + by_group.len());
    for rows in by_group.values() {
        let quota = ((m as f64 * rows.len() as f64 / total).round() as usize).clamp(1, rows.len());
        v.extend(rows.choose_multiple(&mut rng, quota).copied());
    }
    v.sort_unstable();
    v
}

/// AP + mAP in one call.
pub fn evaluate_map(
    x: &Array2<f64>,
    cols: &Columns,
    spec: &MapSpec,
    queries: &[usize],
    opts: &MapOptions,
) -> Result<MapResult> {
    // Stratify the sample by the first grouping column.
    let groups = spec
        .group_by
        .first()
        .and_then(|g| cols.get(g))
        .map(|c| c.codes.as_slice());
    let q = sample_queries(queries, groups, opts.max_queries, opts.seed);
    let aps = average_precision(x, cols, spec, &q)?;
    mean_average_precision(&aps, cols, spec, opts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Oracle: sort all partners, positives first on ties, walk the list.
    fn oracle(pos: &[f64], neg: &[f64]) -> Option<f64> {
        if pos.is_empty() {
            return None;
        }
        let mut all: Vec<(f64, bool)> = pos
            .iter()
            .map(|&s| (s, true))
            .chain(neg.iter().map(|&s| (s, false)))
            .collect();
        all.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)));
        let mut tp = 0;
        let mut sum = 0.0;
        for (k, (_, rel)) in all.iter().enumerate() {
            if *rel {
                tp += 1;
                sum += tp as f64 / (k + 1) as f64;
            }
        }
        Some(sum / pos.len() as f64)
    }

    #[test]
    fn perfect_and_worst_rankings() {
        assert_eq!(ap_from_sims(&mut [0.9, 0.8], &[0.1, 0.2, 0.3]), Some(1.0));
        // positives last of 4: ranks 3, 4 -> (1/3 + 2/4) / 2
        let ap = ap_from_sims(&mut [0.0, -0.1], &[0.5, 0.6]).unwrap();
        assert!((ap - (1.0 / 3.0 + 0.5) / 2.0).abs() < 1e-12);
        // tie: positive ranks first
        assert_eq!(ap_from_sims(&mut [0.5], &[0.5]), Some(1.0));
        assert_eq!(ap_from_sims(&mut [], &[0.5]), None);
    }

    #[test]
    fn bh_matches_hand_computation() {
        let adj = bh_fdr(&[0.01, 0.04, 0.03, 0.5]);
        let want = [0.04, 0.04 * 4.0 / 3.0 * 0.75 / 0.75, 0.04, 0.5];
        // sorted p: .01,.03,.04,.5 -> raw .04,.06,.0533,.5 -> cummin from top: .04,.0533,.0533,.5
        assert!((adj[0] - 0.04).abs() < 1e-12);
        assert!((adj[2] - 0.04 * 4.0 / 3.0).abs() < 1e-12);
        assert!((adj[1] - 0.04 * 4.0 / 3.0).abs() < 1e-12);
        assert!((adj[3] - 0.5).abs() < 1e-12);
        let _ = want;
    }

    #[test]
    fn null_mean_matches_exact_expectation() {
        // E[AP] for 1 positive among t: (1/t) sum 1/r = H_t / t
        let t = 10;
        let null = null_aps(1, t, 20_000, 3);
        let mean = null.iter().sum::<f64>() / null.len() as f64;
        let h: f64 = (1..=t).map(|r| 1.0 / r as f64).sum::<f64>() / t as f64;
        assert!((mean - h).abs() < 0.01, "{mean} vs {h}");
    }

    /// Exact null mean by enumerating every placement of 2 positives.
    fn exact_null_mean_two(t: usize) -> f64 {
        let mut sum = 0.0;
        let mut count = 0.0;
        for a in 0..t {
            for b in (a + 1)..t {
                sum += (1.0 / (a + 1) as f64 + 2.0 / (b + 1) as f64) / 2.0;
                count += 1.0;
            }
        }
        sum / count
    }

    #[test]
    fn null_draws_match_enumeration_on_both_paths() {
        // t = 6: dense bit-set path; t = 3000: sparse (sorted picks) path.
        for t in [6usize, 3000] {
            let null = null_aps(2, t, 40_000, 11);
            let mean = null.iter().sum::<f64>() / null.len() as f64;
            let want = exact_null_mean_two(t);
            assert!(
                (mean - want).abs() < 0.02 * want.max(0.05),
                "t {t}: {mean} vs {want}"
            );
            assert!(null.iter().all(|&v| v > 0.0 && v <= 1.0));
        }
        // Every placement of 2 among 4 is equally likely (6 distinct APs).
        let null = null_aps(2, 4, 60_000, 5);
        let mut freq = std::collections::BTreeMap::new();
        for v in &null {
            *freq.entry((v * 1e9).round() as i64).or_insert(0usize) += 1;
        }
        assert_eq!(freq.len(), 6, "{freq:?}");
        for &c in freq.values() {
            assert!((c as f64 / 60_000.0 - 1.0 / 6.0).abs() < 0.01, "{freq:?}");
        }
        // All positives: AP 1.
        assert!(null_aps(5, 5, 10, 1)
            .iter()
            .all(|&v| (v - 1.0).abs() < 1e-12));
    }

    #[test]
    fn cross_batch_preset_on_toy_data() {
        // Two labels, two batches, compounds distinct per row.
        let x = ndarray::array![[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]];
        let mut cols = Columns::new();
        cols.insert("label".into(), Codes::new(&["A", "A", "B", "B"]));
        cols.insert("batch".into(), Codes::new(&["1", "2", "1", "2"]));
        cols.insert("compound".into(), Codes::new(&["a", "b", "c", "d"]));
        let spec = MapSpec::cross_batch("label", "batch", "compound");
        let opts = MapOptions {
            null_size: 100,
            ..Default::default()
        };
        let r = evaluate_map(&x, &cols, &spec, &[0, 1, 2, 3], &opts).unwrap();
        assert_eq!(r.mean_map, 1.0);
        assert_eq!(r.groups.len(), 2);
        // Missing column is a clear error.
        let bad = MapSpec::arevalo_nonrep("compound", "plate");
        let e = evaluate_map(&x, &cols, &bad, &[0], &opts)
            .unwrap_err()
            .to_string();
        assert!(e.contains("plate"), "{e}");
    }

    #[test]
    fn stratified_sampling_keeps_every_group() {
        let groups: Vec<usize> = (0..1000).map(|i| if i < 990 { 0 } else { 1 }).collect();
        let cands: Vec<usize> = (0..1000).collect();
        let q = sample_queries(&cands, Some(&groups), Some(50), 7);
        assert!(q.iter().any(|&i| groups[i] == 1));
        assert!(q.len() >= 50 && q.len() <= 52);
        assert_eq!(q, sample_queries(&cands, Some(&groups), Some(50), 7));
        assert_eq!(sample_queries(&cands, None, None, 7).len(), 1000);
    }

    proptest! {
        #[test]
        fn ap_matches_sorting_oracle(
            pos in proptest::collection::vec(-3i32..3, 0..8),
            neg in proptest::collection::vec(-3i32..3, 0..12),
        ) {
            let p: Vec<f64> = pos.iter().map(|&v| v as f64 / 3.0).collect();
            let n: Vec<f64> = neg.iter().map(|&v| v as f64 / 3.0).collect();
            let mut pc = p.clone();
            let got = ap_from_sims(&mut pc, &n);
            let want = oracle(&p, &n);
            match (got, want) {
                (Some(a), Some(b)) => prop_assert!((a - b).abs() < 1e-12),
                (None, None) => {},
                _ => prop_assert!(false, "mismatch {:?} {:?}", got, want),
            }
        }
    }
}
