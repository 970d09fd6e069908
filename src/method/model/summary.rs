//! Batch summaries: the bounded sample of a large batch that plates are
//! aligned against.
//!
//! A plate's cost is its queries against every batch's index. With one
//! HNSW graph over every row of a batch, that cost grows with the model
//! (the walks get longer and leave the cache): the stream bench measured
//! the p99 per plate 3.9x higher at 1M rows than at 20k. A batch with more
//! than `summary_rows` rows ([`crate::method::params::Params::summary_rows`])
//! is therefore represented by a *summary*: a seeded uniform sample of
//! `summary_rows` of its rows, kept in an exact index (a block of queries
//! is one matrix product, [`crate::method::blocked`]), so a plate costs the
//! same whatever the model's size — as the offline fit aligns on its
//! `fit_rows` subsample.
//!
//! The sample is a *bottom-k* sample: every row gets a pseudo-random
//! priority from the model's seed and its row id ([`priority`]), and the
//! summary holds the `summary_rows` rows of lowest priority. New rows
//! enter when they beat the highest priority held (which leaves), so the
//! summary stays uniform over the batch's whole history — recent plates
//! are represented in proportion — and it is a function of the batch's row
//! ids alone: a restart rebuilds exactly the set the live model held.

use std::collections::BinaryHeap;

/// A row's priority: splitmix64 of the seed and the row id (uniform,
/// stable across runs and platforms).
pub(super) fn priority(seed: u64, key: u64) -> u64 {
    let mut z = seed ^ key.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The rows of one batch's summary, by priority.
#[derive(Debug, Clone)]
pub(super) struct Summary {
    /// `(priority, row id)` of the rows held; the top is the next to leave.
    held: BinaryHeap<(u64, u64)>,
    cap: usize,
    seed: u64,
}

/// What offering a new row to a full summary did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Offer {
    /// The row is not sampled.
    Rejected,
    /// The row is sampled in place of this one.
    Replaces(u64),
}

impl Summary {
    /// The summary of a batch whose rows are `keys`: the `cap` of lowest
    /// priority. Returns it and the rows it holds, in id order.
    pub(super) fn of(seed: u64, cap: usize, keys: &[u64]) -> (Summary, Vec<u64>) {
        let mut all: Vec<(u64, u64)> = keys.iter().map(|&k| (priority(seed, k), k)).collect();
        if all.len() > cap {
            all.select_nth_unstable(cap.saturating_sub(1));
            all.truncate(cap);
        }
        let mut chosen: Vec<u64> = all.iter().map(|x| x.1).collect();
        chosen.sort_unstable();
        let held = all.into_iter().collect();
        (Summary { held, cap, seed }, chosen)
    }

    /// Offer a new row (the summary is full: it was built over more rows
    /// than it holds).
    pub(super) fn offer(&mut self, key: u64) -> Offer {
        let p = (priority(self.seed, key), key);
        match self.held.peek() {
            Some(&top) if p < top && self.held.len() >= self.cap => {
                self.held.pop();
                self.held.push(p);
                Offer::Replaces(top.1)
            }
            _ => Offer::Rejected,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Offering rows one by one holds exactly the bottom-k sample of
        /// every row so far (what a restart rebuilds), whatever the batch
        /// size and the order the ids arrive in.
        #[test]
        fn prop_incremental_equals_rebuilt(cap in 1usize..40, first in 1usize..80,
                                           more in 0usize..300, seed in 0u64..1000,
                                           stride in 1u64..7) {
            let keys: Vec<u64> = (0..(first + more) as u64).map(|i| i * stride + 3).collect();
            let first = first.max(cap + 1).min(keys.len());
            if keys.len() <= cap {
                return Ok(());
            }
            let (mut s, mut held) = Summary::of(seed, cap, &keys[..first]);
            for &k in &keys[first..] {
                match s.offer(k) {
                    Offer::Rejected => {}
                    Offer::Replaces(old) => {
                        let pos = held.iter().position(|&h| h == old);
                        prop_assert!(pos.is_some(), "evicted {} was not held", old);
                        held.swap_remove(pos.unwrap_or(0));
                        held.push(k);
                    }
                }
            }
            held.sort_unstable();
            let (_, want) = Summary::of(seed, cap, &keys);
            prop_assert_eq!(held.len(), cap);
            prop_assert_eq!(held, want);
        }
    }

    /// The sample is uniform over the history: of 20,000 rows arriving in
    /// order, each tenth holds about a tenth of a 1,000-row summary.
    #[test]
    fn summary_is_uniform_over_arrival() {
        let keys: Vec<u64> = (0..20_000).collect();
        let (_, held) = Summary::of(42, 1000, &keys);
        for t in 0..10u64 {
            let n = held.iter().filter(|&&k| k / 2000 == t).count();
            assert!((60..=140).contains(&n), "tenth {t}: {n} of 1000");
        }
    }
}
