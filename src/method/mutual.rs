//! The mutual trust test of a sampled row (see
//! [`crate::method::sampling::SamplingConfig::trust_rule`]): which of its
//! retained entries are mutual nearest neighbours of the landmark. Split
//! from `sampling.rs`, which calls it for every sampled row.

use anyhow::Result;

use crate::method::index::BatchIndex;
use crate::method::rows::RowSource;
use crate::method::sampling::SamplingConfig;
use crate::method::scales::ScaleCache;

/// Relative tolerance of the mutual test's distance comparison.
const MUTUAL_TOLERANCE: f64 = 1e-5;

/// Share of a batch the mutual test's rank may reach in the offline fit
/// ([`mutual_rank`]): half.
pub const MUTUAL_SHARE: f64 = 0.5;

/// Rank of the mutual test against a batch of `size` rows: `k`, or `share`
/// of the batch when that is smaller (at least 1). At a rank >= the batch's
/// size every row of the batch is among `j`'s nearest and the test passes
/// whatever the geometry; a row of another batch passes by chance with
/// probability about rank / size. The offline fit uses half a batch
/// ([`MUTUAL_SHARE`]); the daemon aligns each plate as its own batch and
/// uses `plate_mutual_share` of the plate
/// ([`crate::method::params::Params::plate_mutual_share`]).
pub fn mutual_rank(k: usize, size: usize, share: f64) -> usize {
    k.min((size as f64 * share) as usize).max(1)
}

/// Per batch, the affinity-weighted fraction of the row's retained entries
/// that are *mutual* neighbours of landmark `i` (batch `bi`): entry `j` of
/// batch `c` is mutual when `i` lies within `j`'s `r` nearest rows of batch
/// `bi` ([`mutual_rank`]: `r = k` unless `cfg.mutual_share` of `bi` is smaller),
/// i.e. `d(i, j) <= sigma_j^(bi)` at `r = k` (the scale the symmetric kernel
/// already needs, memoised in `cache`). `i` has `j` among its own `k.max(m)`
/// nearest of batch `c` by construction, so the test is the classic
/// mutual-nearest-neighbour pair test (Haghverdi et al. 2018). The own batch
/// gets 1.
pub(crate) fn mutual_fractions(
    entries: &[(u32, f32)],
    dist2: &crate::method::rowmap::RowMap<u32, f32>,
    bi: usize,
    rows: &dyn RowSource,
    indices: &[&BatchIndex],
    cache: &ScaleCache,
    cfg: &SamplingConfig,
) -> Result<Vec<f64>> {
    let k = cfg.k;
    let n_batches = indices.len();
    let mut hit = vec![0f64; n_batches];
    let mut all = vec![0f64; n_batches];
    let rank = mutual_rank(k, indices.get(bi).map_or(0, |x| x.len()), cfg.mutual_share);
    for &(j, a) in entries {
        let c = rows.batch(j as usize) as usize;
        if c == bi {
            continue;
        }
        let s_j = if rank < k {
            // A small batch (a daemon plate): its own rank, one exact
            // query of a few dozen rows.
            let nb = indices[bi].search(rows.row(j as usize), rank)?;
            crate::method::scales::kth_scale(&nb, rank)
        } else {
            cache.get_or_compute(j as usize, bi, rows, indices)?
        };
        let d2 = dist2.get(&j).copied().unwrap_or(f32::INFINITY) as f64;
        all[c] += a as f64;
        // `d2` (from i's query) and `s_j` (from j's query) are f32
        // distances computed by two searches; when i *is* j's k-th
        // neighbour they differ in the last bits, so compare with a
        // tolerance above f32 rounding and far below neighbour gaps.
        if d2 <= s_j * s_j * (1.0 + MUTUAL_TOLERANCE) {
            hit[c] += a as f64;
        }
    }
    Ok((0..n_batches)
        .map(|c| {
            if c == bi {
                1.0
            } else if all[c] > 0.0 {
                hit[c] / all[c]
            } else {
                0.0
            }
        })
        .collect())
}
