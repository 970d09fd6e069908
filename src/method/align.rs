//! The alignment read-out: local offset removal from the sampled affinity.
//!
//! Each landmark `l` has a sparse row with entries in every batch. Its
//! batch-wise kernel means `mu_l^(c) = sum_{j in c} A_lj z_j / sum_{j in c}
//! A_lj` say where batch `c` sits around `l`; their average over the batches
//! present is the consensus `mu_l`, and `delta_l^(c) = mu_l^(c) - mu_l` is
//! batch c's local offset there. A point `j` of batch `c` moves by the
//! affinity-weighted average of `delta_l^(c)` over the landmarks whose rows
//! retained it — a smooth, locally varying batch centring (Harmony-like,
//! but driven by the batch-aware kernel). Points no landmark retained
//! borrow the average offset of their nearest covered neighbours in their
//! own batch.
//!
//! Offsets are computed in the (normalised) feature space, so the output
//! keeps every input feature, not just the neighbour-space dimensions.

use std::ops::Range;

use anyhow::Result;
use ndarray::{Array2, Axis};
use rayon::prelude::*;

use crate::method::params::PlateMove;
use crate::method::rows::RowSource;
use crate::method::sampling::SparseRow;

/// The space offsets are computed in: row `j`'s vector and batch.
pub trait Features: Sync {
    /// Dimensions.
    fn dims(&self) -> usize;
    /// Row `j`'s batch id.
    fn batch(&self, j: usize) -> u32;
    /// `acc += a * row_j`.
    fn accumulate(&self, j: usize, a: f64, acc: &mut [f64]);
}

/// Neighbour-space rows as features (the daemon corrects in that space).
pub struct RowFeatures<'a, R: RowSource + ?Sized>(pub &'a R);

impl<R: RowSource + ?Sized> Features for RowFeatures<'_, R> {
    fn dims(&self) -> usize {
        self.0.dims()
    }
    fn batch(&self, j: usize) -> u32 {
        self.0.batch(j)
    }
    fn accumulate(&self, j: usize, a: f64, acc: &mut [f64]) {
        for (o, v) in acc.iter_mut().zip(self.0.row(j).iter()) {
            *o += a * *v as f64;
        }
    }
}

/// Per-point offsets and how they were obtained.
#[derive(Debug, Clone)]
pub struct Offsets {
    /// n x d offsets to subtract.
    pub values: Array2<f64>,
}

/// One batch moving onto the others, which stay put: the daemon's plate in
/// flight against published rows ([`landmark_deltas`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frozen {
    /// The moving batch: it is left out of every consensus, so it moves
    /// onto the other batches present rather than meeting them halfway.
    pub batch: u32,
    /// How far a landmark *of the moving batch* moves it (a landmark of
    /// another batch moves it in proportion to its trust in it, as in the
    /// offline fit): [`PlateMove::Trusted`] scales the move by the largest
    /// trust the landmark has in a batch around it, [`PlateMove::Full`]
    /// moves it all the way whenever any batch around it is trusted at all.
    pub moves: PlateMove,
}

/// `delta_l^(c)` for every landmark (row-major `L x B x d`, f32).
///
/// A landmark's consensus is the trust-weighted mean of the batches around
/// it, and each batch's delta is its trust times its gap to the consensus.
/// `frozen`: one batch moves onto the others ([`Frozen`]); the consensus
/// is the mean of the *other* batches present (if any).
pub(crate) fn landmark_deltas(
    z: &dyn Features,
    n_batches: usize,
    rows: &[SparseRow],
    frozen: Option<Frozen>,
) -> Vec<f32> {
    let d = z.dims();
    let mut out = vec![0f32; rows.len() * n_batches * d];
    out.par_chunks_mut(n_batches * d)
        .zip(rows.par_iter())
        .for_each(|(slot, row)| {
            let mut sums = vec![0f64; n_batches * d];
            let mut mass = vec![0f64; n_batches];
            for &(j, a) in &row.entries {
                let c = z.batch(j as usize) as usize;
                mass[c] += a as f64;
                z.accumulate(j as usize, a as f64, &mut sums[c * d..(c + 1) * d]);
            }
            let present: Vec<usize> = (0..n_batches).filter(|&c| mass[c] > 0.0).collect();
            if present.len() < 2 {
                return; // one batch around this landmark: nothing to align
            }
            let own = z.batch(row.landmark as usize) as usize;
            let trust = |c: usize| -> f64 {
                if c == own {
                    1.0
                } else {
                    row.trust.get(c).map_or(1.0, |&t| t as f64)
                }
            };
            let mut consensus = vec![0f64; d];
            let mut np = 0.0;
            for &c in &present {
                for t in 0..d {
                    sums[c * d + t] /= mass[c];
                }
                if frozen.map(|f| f.batch) != Some(c as u32) {
                    let w = trust(c);
                    np += w;
                    for t in 0..d {
                        consensus[t] += w * sums[c * d + t];
                    }
                }
            }
            if np <= 0.0 {
                return;
            }
            for t in consensus.iter_mut() {
                *t /= np;
            }
            // The moving batch's own landmark: the move is scaled by how far
            // the landmark trusts the batches it moves onto (see [`Frozen`]).
            let own_scale = match frozen {
                Some(f) if f.batch as usize == own && f.moves == PlateMove::Trusted => present
                    .iter()
                    .filter(|&&c| c != own)
                    .map(|&c| trust(c))
                    .fold(0.0, f64::max),
                _ => 1.0,
            };
            for &c in &present {
                let w = trust(c) * if c == own { own_scale } else { 1.0 };
                for t in 0..d {
                    slot[c * d + t] = (w * (sums[c * d + t] - consensus[t])) as f32;
                }
            }
        });
    out
}

/// Offsets of the rows `targets` (row ids; output row `t` is id
/// `targets.start + t`) from the landmark deltas. `own_batch_neighbors(j)`
/// returns j's nearest rows in its own batch (nearest first) and is used
/// only for targets no landmark retained; only covered targets lend.
pub fn point_offsets(
    z: &dyn Features,
    n_batches: usize,
    rows: &[SparseRow],
    targets: Range<usize>,
    frozen: Option<Frozen>,
    own_batch_neighbors: &(dyn Fn(usize) -> Result<Vec<u32>> + Sync),
) -> Result<Offsets> {
    let deltas = landmark_deltas(z, n_batches, rows, frozen);
    offsets_from_deltas(
        deltas,
        z.dims(),
        &|j| z.batch(j),
        n_batches,
        rows,
        targets,
        own_batch_neighbors,
    )
}

/// The second half of [`point_offsets`]: the offsets of `targets` from the
/// landmark deltas ([`landmark_deltas`] of the same `rows`, `d` wide;
/// `batch_of(j)` is row `j`'s batch). It reads no feature values. The same
/// values as [`point_offsets`], bit for bit.
pub(crate) fn offsets_from_deltas(
    deltas: Vec<f32>,
    d: usize,
    batch_of: &(dyn Fn(usize) -> u32 + Sync),
    n_batches: usize,
    rows: &[SparseRow],
    targets: Range<usize>,
    own_batch_neighbors: &(dyn Fn(usize) -> Result<Vec<u32>> + Sync),
) -> Result<Offsets> {
    let reader = DeltaReader::new(deltas, d, batch_of, n_batches, rows, &targets);
    let mut values = Array2::<f64>::zeros((targets.len(), d));
    let covered: Vec<bool> = values
        .axis_iter_mut(Axis(0))
        .into_par_iter()
        .enumerate()
        .map_init(
            || vec![0f64; d],
            |buf, (t, mut out)| {
                let covered = reader.offset(t, buf);
                out.assign(&ndarray::ArrayView1::from(&buf[..]));
                covered
            },
        )
        .collect();
    let borrowed = reader.borrowed(&covered, own_batch_neighbors, &|q, buf| {
        buf.iter_mut().zip(values.row(q)).for_each(|(b, &v)| *b = v)
    })?;
    for (j, acc) in borrowed {
        values
            .row_mut(j)
            .assign(&ndarray::ArrayView1::from(&acc[..]));
    }
    Ok(Offsets { values })
}

/// What [`add_offsets_from_deltas`] did: the targets no landmark covered,
/// and the Euclidean norm of each target's offset (in target order).
#[derive(Debug, Clone)]
pub(crate) struct AddedOffsets {
    /// Targets with no covering landmark (offset borrowed from neighbours).
    pub uncovered: usize,
    /// `|offset_t|` for every target `t`.
    pub norms: Vec<f64>,
}

/// [`offsets_from_deltas`] added into `total` (row `t` of `total` += the
/// offset of target `t`) without an `n x d` array of offsets: each row's
/// offset is formed in a buffer of its own and added, and a row no
/// landmark covered borrows its covered neighbours' offsets recomputed
/// from the deltas. `total` gets the same bits as `total +=
/// offsets_from_deltas(..).values` (test
/// `adding_offsets_matches_the_offsets_array`); the offline fit's rounds
/// use it, so their peak holds no offsets array (docs/performance.md,
/// "Width, memory").
#[allow(clippy::too_many_arguments)]
pub(crate) fn add_offsets_from_deltas(
    deltas: Vec<f32>,
    d: usize,
    batch_of: &(dyn Fn(usize) -> u32 + Sync),
    n_batches: usize,
    rows: &[SparseRow],
    targets: Range<usize>,
    own_batch_neighbors: &(dyn Fn(usize) -> Result<Vec<u32>> + Sync),
    total: &mut Array2<f64>,
) -> Result<AddedOffsets> {
    let n = targets.len();
    anyhow::ensure!(
        total.dim() == (n, d),
        "offsets of {n} x {d} added into a {:?} array",
        total.dim()
    );
    let reader = DeltaReader::new(deltas, d, batch_of, n_batches, rows, &targets);
    let covered: Vec<bool> = (0..n).into_par_iter().map(|t| reader.covers(t)).collect();
    // Borrowed offsets first: they read this round's offsets of covered
    // neighbours, which `total` no longer shows once they are added.
    let borrowed = reader.borrowed(&covered, own_batch_neighbors, &|q, buf| {
        reader.offset(q, buf);
    })?;
    let norm = |v: &[f64]| {
        let v = ndarray::ArrayView1::from(v);
        v.dot(&v).sqrt()
    };
    let mut norms: Vec<f64> = total
        .axis_iter_mut(Axis(0))
        .into_par_iter()
        .enumerate()
        .map_init(
            || vec![0f64; d],
            |buf, (t, mut row)| {
                if !covered[t] || !reader.offset(t, buf) {
                    return 0.0;
                }
                row.zip_mut_with(&ndarray::ArrayView1::from(&buf[..]), |o, v| *o += v);
                norm(buf)
            },
        )
        .collect();
    drop(reader);
    let uncovered = borrowed.len();
    for (t, acc) in borrowed {
        total
            .row_mut(t)
            .zip_mut_with(&ndarray::ArrayView1::from(&acc[..]), |o, v| *o += v);
        norms[t] = norm(&acc);
    }
    Ok(AddedOffsets { uncovered, norms })
}

/// Reads targets' offsets out of the landmark deltas: the one definition
/// of a target's offset (the affinity-weighted mean of its landmarks'
/// deltas for its batch) and of the borrowing of an uncovered target,
/// shared by [`offsets_from_deltas`] and [`add_offsets_from_deltas`].
struct DeltaReader<'a> {
    deltas: Vec<f32>,
    d: usize,
    batch_of: &'a (dyn Fn(usize) -> u32 + Sync),
    n_batches: usize,
    by_target: ByTarget,
}

impl<'a> DeltaReader<'a> {
    fn new(
        deltas: Vec<f32>,
        d: usize,
        batch_of: &'a (dyn Fn(usize) -> u32 + Sync),
        n_batches: usize,
        rows: &[SparseRow],
        targets: &Range<usize>,
    ) -> DeltaReader<'a> {
        DeltaReader {
            deltas,
            d,
            batch_of,
            n_batches,
            by_target: ByTarget::new(rows, targets),
        }
    }

    /// Whether a landmark covers target `t` (its affinities sum above 0;
    /// the same sum as [`DeltaReader::offset`]'s weight).
    fn covers(&self, t: usize) -> bool {
        let w = self
            .by_target
            .entries(t)
            .iter()
            .fold(0f64, |w, &(_, a)| w + a as f64);
        w > 0.0
    }

    /// Target `t`'s offset into `out` (`d` wide, zeroed here); whether a
    /// landmark covers it (if not, `out` stays zero).
    fn offset(&self, t: usize, out: &mut [f64]) -> bool {
        let d = self.d;
        out.fill(0.0);
        let c = (self.batch_of)(self.by_target.start + t) as usize;
        let mut w = 0f64;
        for &(li, a) in self.by_target.entries(t) {
            let base = (li as usize * self.n_batches + c) * d;
            let delta = &self.deltas[base..base + d];
            for (o, v) in out.iter_mut().zip(delta) {
                *o += a as f64 * *v as f64;
            }
            w += a as f64;
        }
        if w > 0.0 {
            for o in out.iter_mut() {
                *o /= w;
            }
            true
        } else {
            false
        }
    }

    /// The offsets of the targets `covered` marks false: the mean offset of
    /// their covered nearest rows in their own batch (zero when none is
    /// covered). `read(q, buf)` writes covered target `q`'s offset into
    /// `buf`.
    fn borrowed(
        &self,
        covered: &[bool],
        own_batch_neighbors: &(dyn Fn(usize) -> Result<Vec<u32>> + Sync),
        read: &(dyn Fn(usize, &mut [f64]) + Sync),
    ) -> Result<Vec<(usize, Vec<f64>)>> {
        let d = self.d;
        let uncovered: Vec<usize> = (0..covered.len()).filter(|&t| !covered[t]).collect();
        uncovered
            .par_iter()
            .map(|&t| {
                let nb = own_batch_neighbors(self.by_target.start + t)?;
                let mut acc = vec![0f64; d];
                let mut buf = vec![0f64; d];
                let mut cnt = 0usize;
                for q in nb.iter().filter_map(|&q| self.by_target.slot(q)) {
                    if covered[q] {
                        read(q, &mut buf);
                        for (a, v) in acc.iter_mut().zip(&buf) {
                            *a += v;
                        }
                        cnt += 1;
                    }
                }
                if cnt > 0 {
                    for a in acc.iter_mut() {
                        *a /= cnt as f64;
                    }
                }
                Ok((t, acc))
            })
            .collect()
    }
}

/// The sampled rows transposed: for each target, the (landmark index,
/// affinity) entries of the landmark rows that retained it, in landmark
/// order.
struct ByTarget {
    start: usize,
    n: usize,
    counts: Vec<usize>,
    cols: Vec<(u32, f32)>,
}

impl ByTarget {
    fn new(rows: &[SparseRow], targets: &Range<usize>) -> ByTarget {
        let (start, n) = (targets.start, targets.len());
        let mut out = ByTarget {
            start,
            n,
            counts: vec![0usize; n + 1],
            cols: Vec::new(),
        };
        for r in rows {
            for &(j, _) in &r.entries {
                if let Some(t) = out.slot(j) {
                    out.counts[t + 1] += 1;
                }
            }
        }
        for j in 0..n {
            out.counts[j + 1] += out.counts[j];
        }
        let mut fill = out.counts.clone();
        out.cols = vec![(0u32, 0f32); out.counts[n]];
        for (li, r) in rows.iter().enumerate() {
            for &(j, a) in &r.entries {
                if let Some(t) = out.slot(j) {
                    out.cols[fill[t]] = (li as u32, a);
                    fill[t] += 1;
                }
            }
        }
        out
    }

    /// Target position of row id `j`, if it is a target.
    fn slot(&self, j: u32) -> Option<usize> {
        (j as usize).checked_sub(self.start).filter(|&t| t < self.n)
    }

    /// Target `t`'s entries.
    fn entries(&self, t: usize) -> &[(u32, f32)] {
        &self.cols[self.counts[t]..self.counts[t + 1]]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{array, ArrayView2};

    /// Dense f64 features: a plain array (the tests' input).
    struct DenseFeatures<'a> {
        /// n x d values.
        z: ArrayView2<'a, f64>,
        /// Batch id of each row.
        batch_of: &'a [u32],
    }

    impl Features for DenseFeatures<'_> {
        fn dims(&self) -> usize {
            self.z.ncols()
        }
        fn batch(&self, j: usize) -> u32 {
            self.batch_of[j]
        }
        fn accumulate(&self, j: usize, a: f64, acc: &mut [f64]) {
            for (o, v) in acc.iter_mut().zip(self.z.row(j).iter()) {
                *o += a * v;
            }
        }
    }

    #[test]
    fn two_batches_meet_at_the_consensus() {
        // Landmark 0 (batch 0) sees points 0,1 (batch 0, around 0) and 2,3
        // (batch 1, around 10) with equal weights.
        let z = array![[-1.0], [1.0], [9.0], [11.0]];
        let b = [0, 0, 1, 1];
        let rows = vec![SparseRow {
            landmark: 0,
            entries: vec![(0, 1.0), (1, 1.0), (2, 1.0), (3, 1.0)],
            trust: vec![],
        }];
        let f = DenseFeatures {
            z: z.view(),
            batch_of: &b,
        };
        let deltas = landmark_deltas(&f, 2, &rows, None);
        // Batch 1 moving to a frozen batch 0: delta of batch 1 is the full gap.
        assert_eq!(
            landmark_deltas(
                &f,
                2,
                &rows,
                Some(Frozen {
                    batch: 1,
                    moves: PlateMove::Trusted
                })
            ),
            vec![0.0, 10.0]
        );
        assert_eq!(deltas, vec![-5.0, 5.0]);
        let off = point_offsets(&f, 2, &rows, 0..4, None, &|_| Ok(vec![])).unwrap();
        let corrected = &z - &off.values;
        assert_eq!(corrected, array![[4.0], [6.0], [4.0], [6.0]]);
        let mut total = Array2::zeros((4, 1));
        let added = add_offsets_from_deltas(
            deltas,
            1,
            &|j| b[j],
            2,
            &rows,
            0..4,
            &|_| Ok(vec![]),
            &mut total,
        )
        .unwrap();
        assert_eq!(added.uncovered, 0);
        assert_eq!(total, off.values);
    }

    /// A landmark of the moving batch moves it onto the other batches by
    /// its trust in them under [`PlateMove::Trusted`] (hand-computed), all
    /// the way under [`PlateMove::Full`], and not at all when it trusts
    /// none of them.
    #[test]
    fn a_moving_batchs_landmark_moves_it_by_its_trust() {
        let z = array![[-1.0], [1.0], [9.0], [11.0]];
        let b = [0, 0, 1, 1];
        let f = DenseFeatures {
            z: z.view(),
            batch_of: &b,
        };
        let row = |trust: Vec<f32>| {
            vec![SparseRow {
                landmark: 2, // of batch 1, the moving batch
                entries: vec![(0, 1.0), (1, 1.0), (2, 1.0), (3, 1.0)],
                trust,
            }]
        };
        let frozen = |moves| Some(Frozen { batch: 1, moves });
        let (t, fl) = (PlateMove::Trusted, PlateMove::Full);
        // Batch 1 sits at 10, batch 0 (the consensus) at 0.
        assert_eq!(
            landmark_deltas(&f, 2, &row(vec![0.25, 1.0]), frozen(t)),
            vec![0.0, 2.5]
        );
        assert_eq!(
            landmark_deltas(&f, 2, &row(vec![0.25, 1.0]), frozen(fl)),
            vec![0.0, 10.0]
        );
        // No trust test (empty trust): all the way under both.
        assert_eq!(
            landmark_deltas(&f, 2, &row(vec![]), frozen(t)),
            vec![0.0, 10.0]
        );
        // No batch trusted: no consensus, no move.
        assert_eq!(
            landmark_deltas(&f, 2, &row(vec![0.0, 1.0]), frozen(t)),
            vec![0.0, 0.0]
        );
        assert_eq!(
            landmark_deltas(&f, 2, &row(vec![0.0, 1.0]), frozen(fl)),
            vec![0.0, 0.0]
        );
        // Not frozen (the offline fit): the consensus is the trust-weighted
        // mean (10 x 1 + 0 x 0.25) / 1.25 = 8, each batch moved by its trust.
        assert_eq!(
            landmark_deltas(&f, 2, &row(vec![0.25, 1.0]), None),
            vec![-2.0, 2.0]
        );
    }

    /// Property: on random landmarks of several batches, `trusted` scales
    /// the moving batch's delta at its own landmarks by the largest trust
    /// in another batch present, and leaves every other delta as `full`
    /// has it.
    #[test]
    fn trusted_scales_only_the_moving_batchs_own_deltas() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let (n, d, nb) = (40usize, 3usize, 4usize);
        let z = Array2::from_shape_fn((n, d), |_| rng.gen_range(-3.0..3.0));
        let b: Vec<u32> = (0..n).map(|i| (i % nb) as u32).collect();
        let f = DenseFeatures {
            z: z.view(),
            batch_of: &b,
        };
        let moving = 3u32;
        let rows: Vec<SparseRow> = (0..30)
            .map(|l| {
                let landmark = rng.gen_range(0..n) as u32;
                let mut entries: Vec<(u32, f32)> = Vec::new();
                for j in 0..n as u32 {
                    if rng.gen_bool(0.3) {
                        entries.push((j, rng.gen_range(0.1f32..1.0)));
                    }
                }
                entries.push((landmark, 1.0));
                entries.sort_by_key(|e| e.0);
                entries.dedup_by_key(|e| e.0);
                let trust = if l % 5 == 0 {
                    Vec::new()
                } else {
                    (0..nb).map(|_| rng.gen_range(0.0f32..1.0)).collect()
                };
                SparseRow {
                    landmark,
                    entries,
                    trust,
                }
            })
            .collect();
        let frozen = |moves| {
            Some(Frozen {
                batch: moving,
                moves,
            })
        };
        let t = landmark_deltas(&f, nb, &rows, frozen(PlateMove::Trusted));
        let full = landmark_deltas(&f, nb, &rows, frozen(PlateMove::Full));
        let mut scaled = 0;
        for (l, row) in rows.iter().enumerate() {
            let own = b[row.landmark as usize];
            let present: Vec<u32> = (0..nb as u32)
                .filter(|&c| row.entries.iter().any(|&(j, _)| b[j as usize] == c))
                .collect();
            let top = present
                .iter()
                .filter(|&&c| c != own)
                .map(|&c| row.trust.get(c as usize).map_or(1.0, |&v| v as f64))
                .fold(0.0, f64::max);
            for c in 0..nb {
                for k in 0..d {
                    let at = (l * nb + c) * d + k;
                    let want = if own == moving && c as u32 == moving {
                        top * full[at] as f64
                    } else {
                        full[at] as f64
                    };
                    assert!(
                        (t[at] as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "landmark {l}, batch {c}: {} vs {want}",
                        t[at]
                    );
                }
            }
            scaled += usize::from(own == moving && top < 1.0 && present.len() > 1);
        }
        assert!(scaled > 0, "no landmark of the moving batch was scaled");
    }

    #[test]
    fn single_batch_landmark_gives_no_offset_and_uncovered_borrow() {
        let z = array![[0.0], [1.0], [5.0], [6.0], [100.0]];
        let b = [0, 0, 1, 1, 1];
        let rows = vec![
            SparseRow {
                landmark: 0,
                entries: vec![(0, 1.0), (1, 0.5)],
                trust: vec![],
            },
            SparseRow {
                landmark: 2,
                entries: vec![(0, 0.5), (2, 1.0), (3, 1.0)],
                trust: vec![],
            },
        ];
        let f = DenseFeatures {
            z: z.view(),
            batch_of: &b,
        };
        let off = point_offsets(&f, 2, &rows, 0..5, None, &|j| {
            Ok(if j == 4 { vec![4, 3, 2] } else { vec![] })
        })
        .unwrap();
        let mut total = Array2::zeros((5, 1));
        let added = add_offsets_from_deltas(
            landmark_deltas(&f, 2, &rows, None),
            1,
            &|j| b[j],
            2,
            &rows,
            0..5,
            &|j| Ok(if j == 4 { vec![4, 3, 2] } else { vec![] }),
            &mut total,
        )
        .unwrap();
        assert_eq!(added.uncovered, 1);
        assert_eq!(total, off.values);
        // Point 4 borrows the mean offset of its covered neighbours 3 and 2.
        let want = 0.5 * (off.values[[3, 0]] + off.values[[2, 0]]);
        assert!((off.values[[4, 0]] - want).abs() < 1e-12);
        // Landmark 0's row is single-batch: contributes zero delta.
        assert!(off.values[[1, 0]].abs() < 1e-12);
        // A target range: only rows 2..5, indexed from 0.
        let part = point_offsets(&f, 2, &rows, 2..5, None, &|j| {
            Ok(if j == 4 { vec![4, 3, 2] } else { vec![] })
        })
        .unwrap();
        assert_eq!(part.values.nrows(), 3);
        for t in 0..3 {
            assert!((part.values[[t, 0]] - off.values[[t + 2, 0]]).abs() < 1e-12);
        }
    }

    use proptest::prelude::*;

    proptest! {
        /// `add_offsets_from_deltas` gives `total + offsets_from_deltas`
        /// bit for bit, with the uncovered count and every row's norm, on
        /// random sparse rows where some targets are covered by nothing
        /// (zero affinities, or no entry) and borrow from neighbours.
        #[test]
        fn adding_offsets_matches_the_offsets_array(
            n in 1usize..24,
            d in 1usize..6,
            n_batches in 1usize..4,
            start in 0usize..5,
            seed in any::<u64>(),
        ) {
            use rand::{Rng, SeedableRng};
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let ids = start + n; // row ids 0..ids; the targets are start..ids
            let batch: Vec<u32> = (0..ids).map(|_| rng.gen_range(0..n_batches as u32)).collect();
            let z = Array2::from_shape_fn((ids, d), |_| rng.gen_range(-3.0..3.0));
            let rows: Vec<SparseRow> = (0..rng.gen_range(0..6usize))
                .map(|_| {
                    let mut entries: Vec<(u32, f32)> = (0..rng.gen_range(0..ids + 1))
                        .map(|_| {
                            let a = if rng.gen_bool(0.2) { 0.0 } else { rng.gen_range(0.0..1.0) };
                            (rng.gen_range(0..ids) as u32, a)
                        })
                        .collect();
                    entries.sort_by_key(|e| e.0);
                    entries.dedup_by_key(|e| e.0);
                    SparseRow { landmark: rng.gen_range(0..ids) as u32, entries, trust: vec![] }
                })
                .collect();
            let neighbours: Vec<Vec<u32>> = (0..ids)
                .map(|_| (0..rng.gen_range(0..5usize)).map(|_| rng.gen_range(0..ids) as u32).collect())
                .collect();
            let own = |j: usize| Ok(neighbours[j].clone());
            let f = DenseFeatures { z: z.view(), batch_of: &batch };
            let deltas = landmark_deltas(&f, n_batches, &rows, None);
            let off = offsets_from_deltas(
                deltas.clone(), d, &|j| batch[j], n_batches, &rows, start..ids, &own,
            ).unwrap();
            let before = Array2::from_shape_fn((n, d), |_| rng.gen_range(-1.0..1.0));
            let mut total = before.clone();
            let added = add_offsets_from_deltas(
                deltas, d, &|j| batch[j], n_batches, &rows, start..ids, &own, &mut total,
            ).unwrap();
            let want = &before + &off.values;
            prop_assert_eq!(total.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
            let covered = (0..n).filter(|&t| {
                rows.iter().flat_map(|r| r.entries.iter())
                    .filter(|e| e.0 as usize == start + t)
                    .fold(0f64, |w, e| w + e.1 as f64) > 0.0
            }).count();
            prop_assert_eq!(added.uncovered, n - covered);
            for (t, r) in off.values.rows().into_iter().enumerate() {
                prop_assert_eq!(added.norms[t].to_bits(), r.dot(&r).sqrt().to_bits());
            }
        }
    }
}
