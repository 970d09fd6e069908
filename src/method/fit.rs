//! The BALANS fit: preprocessing, per-batch indices, scales, adaptive
//! sampling and alignment rounds, put together.
//!
//! ```text
//! x (n x d) --per-plate centring, per-batch control gains,
//!              pooled robust scale--> z --clip--> w
//! for each round:
//!     y = PCA_p(w - total_offset)             (frozen basis from round 0,
//!                                              whitened on the controls)
//!     per-batch indices over y
//!     coverage-prioritised sampling of affinity rows (landmarks)
//!     offsets from the landmark deltas; total_offset += offsets
//! corrected = denormalise(z - total_offset)   (input units)
//! ```
//!
//! Everything here is plain computation over ndarray data: no files, no
//! async. Progress is reported through the [`Progress`] trait so the CLI can
//! draw a bar and tests can ignore it.

use std::time::Instant;

use anyhow::{Context, Result};
use ndarray::{Array2, ArrayView2, Axis};
use rayon::prelude::*;
use serde::Serialize;

use crate::method::align::{add_offsets_from_deltas, landmark_deltas, Features as AlignFeatures};
use crate::method::blocked::knn_blocked;
use crate::method::index::{build_batch_indices, BatchIndex};
use crate::method::params::{BatchScale, NeighborSpace, Params};
use crate::method::pca::{Pca, WHITEN_RIDGE};
use crate::method::preprocess::{clipped, clipped_rows, dense_ids, GainGroups, Normalizer, CLIP};
use crate::method::rows::MatrixRows;
use crate::method::sampling::{sample, SamplingConfig};
use crate::method::scales::ScaleCache;

/// Progress reporting for long fits.
pub trait Progress: Sync {
    /// A new stage with `total` steps.
    fn stage(&self, name: &str, total: u64);
    /// Steps done in the current stage.
    fn set(&self, done: u64);
}

/// Progress that reports nothing.
pub struct NoProgress;

impl Progress for NoProgress {
    fn stage(&self, _name: &str, _total: u64) {}
    fn set(&self, _done: u64) {}
}

/// A profile table's numeric content and the labels BALANS needs.
pub struct Dataset<'a> {
    /// Features, n x d, in input units.
    pub x: ArrayView2<'a, f64>,
    /// Batch label of each row.
    pub batch: &'a [String],
    /// Plate label of each row (normalisation groups); `None` = per batch.
    pub plate: Option<&'a [String]>,
    /// Negative-control rows, if a control selector was given.
    pub controls: Option<&'a [bool]>,
}

/// Figures of one alignment round.
#[derive(Debug, Clone, Serialize)]
pub struct RoundSummary {
    /// Landmarks (sampled rows).
    pub landmarks: usize,
    /// Sampling rounds within this alignment round.
    pub sampling_rounds: usize,
    /// Smallest coverage of any row.
    pub coverage_min: f64,
    /// Median coverage.
    pub coverage_median: f64,
    /// Fraction of rows at or above the coverage target.
    pub covered_fraction: f64,
    /// Rows no landmark retained.
    pub uncovered: usize,
    /// Mean Euclidean norm of the offsets applied (robust-z units).
    pub mean_offset: f64,
    /// Width of the `mass` trust test used (calibrated on controls when
    /// given); 0 when the rule uses no width (`mutual`) or the test is off.
    pub trust_width: f64,
    /// Seconds building the per-batch indices.
    pub index_seconds: f64,
    /// Seconds sampling affinity rows.
    pub sampling_seconds: f64,
    /// Seconds computing and applying offsets.
    pub align_seconds: f64,
    /// Wall time of the round.
    pub seconds: f64,
}

/// What a fit did.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Rows.
    pub rows: usize,
    /// Batches.
    pub batches: usize,
    /// Plates (normalisation groups).
    pub plates: usize,
    /// Feature columns given.
    pub features: usize,
    /// Features corrected (the rest are constant and pass through).
    pub corrected_features: usize,
    /// Plates centred on all rows for lack of controls.
    pub plates_without_controls: usize,
    /// Rows the sampling fit ran on (all rows, or the `fit_rows`
    /// subsample; the others took their offsets from it).
    pub fit_rows: usize,
    /// Neighbour-space dimensions used.
    pub neighbor_dims: usize,
    /// Neighbour space used: `whitened` (on the controls) or `pca`.
    pub neighbor_space: String,
    /// Trust test used: `mutual`, `mass`, `either`, `both`, or `off`
    /// (`trust = 0`: every batch forced to align).
    pub trust_rule: String,
    /// Per batch, the empirical-Bayes factor its control gains were shrunk
    /// by (1 = as measured, 0 = only the batch's mean gain or, with too few
    /// controls, gain 1); empty when batch scaling was off.
    pub batch_gain_shrink: Vec<f64>,
    /// Per-round figures.
    pub rounds: Vec<RoundSummary>,
    /// Total wall time.
    pub seconds: f64,
}

/// The result of a fit.
pub struct Correction {
    /// Corrected features, n x d, input units (constant features unchanged).
    pub corrected: Array2<f64>,
    /// Normalised features before alignment (n x corrected_features).
    pub z_before: Array2<f64>,
    /// Normalised features after alignment.
    pub z_after: Array2<f64>,
    /// Indices (into the given features) of the corrected features.
    pub varying: Vec<usize>,
    /// The fitted normalisation (frozen for later plates).
    pub normalizer: Normalizer,
    /// The frozen neighbour-space basis.
    pub pca: Pca,
    /// Corrected neighbour-space coordinates of every row (n x p).
    pub y_after: Array2<f32>,
    /// Batch names; row i's batch is `batch_names[batch_of[i]]`.
    pub batch_names: Vec<String>,
    /// Dense batch id of each row.
    pub batch_of: Vec<u32>,
    /// Figures.
    pub summary: Summary,
    /// The input features given to [`correct_owned`] when they were not
    /// used for `z` (some feature is constant) and `corrected` was not
    /// kept: [`Correction::into_corrected`] writes into them.
    input: Option<Array2<f64>>,
}

/// Which of a [`Correction`]'s large arrays a fit builds. At 1M rows x 50
/// features each `n x d` f64 array is 400 MB, so a caller that needs less
/// than everything says so ([`correct_keeping`]); an array not kept is
/// empty (`0 x 0`). `z_after` and the fitted normalisation and basis are
/// always kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keep {
    /// `corrected` (without it, [`Correction::denormalise_into`] writes the
    /// corrected values into the caller's copy of the input features).
    pub corrected: bool,
    /// `z_before` (the QC table, a feature-space model).
    pub z_before: bool,
    /// `y_after` (the QC table, a saved model).
    pub y_after: bool,
}

impl Keep {
    /// Every array ([`correct`]).
    pub const ALL: Keep = Keep {
        corrected: true,
        z_before: true,
        y_after: true,
    };
}

/// Rows of the table processed at once after the rounds (the offsets'
/// interpolation and their application): one [`knn_blocked`] search of
/// their neighbour coordinates. Every row's coordinates, neighbours and
/// offset are its own, so the block sizes here change no value, only how
/// much is held at once.
const APPLY_ROWS: usize = 16_384;
/// Rows per part of an interpolated block handed to the caller (8 MB of
/// f64 offsets at 1,000 features).
const EMIT_ROWS: usize = 1024;

impl Correction {
    /// Write the corrected values of the corrected features into `x` (the
    /// input features, `n x d`, input units), in place: `x` then equals
    /// `corrected` (constant features pass through unchanged), without a
    /// second `n x d` array. Errors when `x` is not the fit's shape.
    pub fn denormalise_into(&self, x: &mut Array2<f64>) -> Result<()> {
        anyhow::ensure!(
            x.nrows() == self.z_after.nrows()
                && x.ncols() == self.summary.features
                && self.z_after.ncols() == self.varying.len(),
            "corrected values: the features are {} x {}, the fit's {} x {}",
            x.nrows(),
            x.ncols(),
            self.z_after.nrows(),
            self.summary.features
        );
        self.normalizer
            .denormalise(self.z_after.view(), &self.varying, x);
        Ok(())
    }

    /// The corrected values (`n x d`, input units; constant features
    /// unchanged), consuming the fit: `corrected` when it was kept; else
    /// made in the memory of `z_after` (every feature varies) or of the
    /// input given to [`correct_owned`], so no second `n x d` array is
    /// allocated. Read the other arrays first.
    pub fn into_corrected(self) -> Result<Array2<f64>> {
        let n = self.batch_of.len();
        if self.corrected.nrows() == n && self.corrected.ncols() == self.summary.features {
            return Ok(self.corrected);
        }
        anyhow::ensure!(
            self.z_after.nrows() == n && self.z_after.ncols() == self.varying.len(),
            "corrected values: the fit has no z_after"
        );
        match self.input {
            Some(mut x) => {
                self.normalizer
                    .denormalise(self.z_after.view(), &self.varying, &mut x);
                Ok(x)
            }
            None => {
                anyhow::ensure!(
                    self.varying.len() == self.summary.features,
                    "corrected values: some features are constant and the fit kept neither \
                     `corrected` nor its input (use Keep::corrected)"
                );
                let mut z = self.z_after;
                self.normalizer.denormalise_in_place(&mut z);
                Ok(z)
            }
        }
    }
}

/// Fit BALANS on `data` and return the corrected table (every array of
/// [`Correction`]: [`Keep::ALL`]).
pub fn correct(data: &Dataset, params: &Params, progress: &dyn Progress) -> Result<Correction> {
    correct_keeping(data, params, progress, Keep::ALL)
}

/// [`correct`], building only the arrays `keep` asks for.
pub fn correct_keeping(
    data: &Dataset,
    params: &Params,
    progress: &dyn Progress,
    keep: Keep,
) -> Result<Correction> {
    let labels = Labels {
        batch: data.batch,
        plate: data.plate,
        controls: data.controls,
    };
    run_in_pool(Features::View(data.x), &labels, params, progress, keep)
}

/// [`correct_keeping`] of the features `x` (`data.x` is not read), which
/// the fit consumes: when every feature varies, the normalised values are
/// made in `x`'s own memory, so the fit holds one `n x d` array where the
/// other forms hold two (the input and `z`). The corrected values are then
/// [`Correction::into_corrected`].
pub fn correct_owned(
    x: Array2<f64>,
    data: &Dataset,
    params: &Params,
    progress: &dyn Progress,
    keep: Keep,
) -> Result<Correction> {
    let labels = Labels {
        batch: data.batch,
        plate: data.plate,
        controls: data.controls,
    };
    run_in_pool(Features::Owned(x), &labels, params, progress, keep)
}

/// The features a fit reads: borrowed, or given to it ([`correct_owned`]).
enum Features<'a> {
    View(ArrayView2<'a, f64>),
    Owned(Array2<f64>),
}

/// The per-row labels of a [`Dataset`].
struct Labels<'a> {
    batch: &'a [String],
    plate: Option<&'a [String]>,
    controls: Option<&'a [bool]>,
}

fn run_in_pool(
    x: Features,
    data: &Labels,
    params: &Params,
    progress: &dyn Progress,
    keep: Keep,
) -> Result<Correction> {
    params.validate()?;
    let threads = if params.threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        params.threads
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .context("cannot start the worker threads")?;
    pool.install(|| correct_in_pool(x, data, params, threads, progress, keep))
}

fn correct_in_pool(
    x: Features,
    data: &Labels,
    params: &Params,
    threads: usize,
    progress: &dyn Progress,
    keep: Keep,
) -> Result<Correction> {
    let started = Instant::now();
    let xv = match &x {
        Features::View(v) => v.view(),
        Features::Owned(a) => a.view(),
    };
    let (n, d) = xv.dim();
    anyhow::ensure!(n >= 2, "need at least 2 rows to correct, got {n}");
    anyhow::ensure!(data.batch.len() == n, "batch labels do not match rows");
    let (batch_of, batch_names) = dense_ids(data.batch);
    let n_batches = batch_names.len();
    let (plate_of, plate_names) = match data.plate {
        Some(p) => {
            anyhow::ensure!(p.len() == n, "plate labels do not match rows");
            dense_ids(p)
        }
        None => (batch_of.clone(), batch_names.clone()),
    };
    progress.stage("normalising", 1);
    let gain_batches = match params.batch_scale {
        BatchScale::Controls => Some(GainGroups {
            batch_of: &batch_of,
            n_batches,
            shrinkage: params.gain_shrinkage,
        }),
        BatchScale::None => None,
    };
    let norm = Normalizer::fit(
        xv,
        &plate_of,
        plate_names.len(),
        data.controls,
        gain_batches,
    )?;
    let varying = norm.varying_features();
    anyhow::ensure!(
        !varying.is_empty(),
        "every feature is constant (zero MAD): nothing to correct"
    );
    // `z`: in the input's own memory when it was given and every feature
    // varies; `input` keeps what the corrected values are written into.
    let view_for_corrected = match &x {
        Features::View(v) => Some(*v),
        Features::Owned(_) => None,
    };
    let (mut z, input) = match x {
        Features::Owned(mut a) if varying.len() == d => {
            norm.normalise_in_place(&mut a, &plate_of, Some(&batch_of));
            (a, None)
        }
        Features::Owned(a) => (
            norm.normalise(a.view(), &plate_of, Some(&batch_of), &varying),
            Some(a),
        ),
        Features::View(v) => (
            norm.normalise(v, &plate_of, Some(&batch_of), &varying),
            None,
        ),
    };
    // Above `fit_rows` rows the sampling fit runs on a seeded, per-batch
    // stratified subsample; the other rows take their offsets from their
    // nearest subsample rows (docs/performance.md).
    let subset = fit_subset(&batch_of, n_batches, params);
    // The rows the alignment rounds work on: all, or the subsample (row t
    // = table row `subset[t]`), clipped (`w`); only their offsets feed the
    // next round, so the other rows are interpolated once, after the last
    // round. The neighbour-space basis is fitted on the same rows: its
    // cost is `rows x features^2`, the largest of the fit for wide tables.
    // The clipped copy of the other rows is never held whole: it is formed
    // block by block where it is needed (`clipped_rows`).
    let w_fit = match &subset {
        Some(ids) => clipped_rows(&z, ids),
        None => clipped(&z),
    };
    let mut pca = Pca::fit(w_fit.view(), params.neighbor_dims, params.seed)?;
    // The whitening reads every control row of the table from `z`, and the
    // rounds form their rows from `z` again (`current_rows`): the same
    // values as from `w_fit`, which is not held beside them.
    drop(w_fit);
    let whitened = match (params.neighbor_space, data.controls) {
        (NeighborSpace::Whitened, Some(mask)) => {
            let rows: Vec<usize> = (0..n).filter(|&i| mask.get(i) == Some(&true)).collect();
            pca.whiten_clipped_rows(&z, &rows, WHITEN_RIDGE)
        }
        _ => false,
    };
    let kind = params.index_kind();
    let n_fit = subset.as_ref().map_or(n, |s| s.len());
    let budget_rows = if params.exact {
        n
    } else {
        ((params.budget * n_fit as f64).ceil() as usize)
            .max(params.min_landmarks)
            .min(n_fit)
    };
    let coverage_target = if params.exact {
        f64::INFINITY
    } else {
        params.coverage_target
    };
    let round_rows = ((params.round_fraction * n_fit as f64).ceil() as usize).max(16);
    let cfg = SamplingConfig::from_params(params, budget_rows, coverage_target, round_rows);
    // Whether the trust test weighs kernel mass at a (calibrated) width.
    let width_used = params.trust > 0.0 && params.trust_rule.uses_mass();
    let sub_labels = subset.as_ref().map(|ids| {
        (
            ids.iter().map(|&i| batch_of[i]).collect::<Vec<u32>>(),
            data.controls
                .map(|m| ids.iter().map(|&i| m[i]).collect::<Vec<bool>>()),
        )
    });
    let (batch_fit, controls_fit) = match &sub_labels {
        Some((b, m)) => (b.as_slice(), m.as_deref()),
        None => (batch_of.as_slice(), data.controls),
    };
    let mut total_fit = Array2::<f64>::zeros((n_fit, z.ncols()));
    let mut rounds = Vec::new();
    let mut trust_widths = Vec::new();
    for round in 0..params.rounds {
        let t0 = Instant::now();
        // The rows where they stand now are needed whole only for their
        // projection; the deltas read them from `z` and `total_fit` again
        // (`CurrentRows`), so at the round's peak (its deltas) no
        // `n_fit x d` array but the totals is held (docs/performance.md,
        // "Width, memory").
        let current = current_rows(&z, subset.as_deref(), &total_fit);
        let y = pca.transform_f32(current.view());
        drop(current);
        progress.stage(
            &format!("round {}/{}: indexing", round + 1, params.rounds),
            1,
        );
        let y_fit = y.view();
        let indices = build_batch_indices(y_fit, batch_fit, n_batches, kind, threads)?;
        let index_seconds = t0.elapsed().as_secs_f64();
        progress.stage(
            &format!("round {}/{}: sampling", round + 1, params.rounds),
            budget_rows as u64,
        );
        let mut cfg = cfg.clone();
        if let (Some(mask), true) = (controls_fit, width_used) {
            if let Some(width) =
                calibrate_trust(y_fit, batch_fit, &indices, mask, params, round as u64)?
            {
                cfg.trust = params.trust * width;
            }
        }
        trust_widths.push(if width_used { cfg.trust } else { 0.0 });
        let cache = ScaleCache::new(n_fit, n_batches, params.k);
        let rows = MatrixRows::new(y_fit, batch_fit)?;
        let index_refs: Vec<&BatchIndex> = indices.iter().collect();
        let s = sample(&rows, &index_refs, &cache, &cfg, None, None, &|done| {
            progress.set(done as u64)
        })?;
        let sampling_seconds = t0.elapsed().as_secs_f64() - index_seconds;
        progress.stage(
            &format!("round {}/{}: aligning", round + 1, params.rounds),
            1,
        );
        let own = |j: usize| -> Result<Vec<u32>> {
            let q: Vec<f32> = y_fit.row(j).iter().copied().collect();
            let nb = indices[batch_fit[j] as usize].search(&q, params.k.max(params.m))?;
            Ok(nb.iter().map(|n| n.key as u32).collect())
        };
        let feats = CurrentRows {
            z: &z,
            subset: subset.as_deref(),
            total: &total_fit,
            batch_of: batch_fit,
        };
        let deltas = landmark_deltas(&feats, n_batches, &s.rows, None);
        let off = add_offsets_from_deltas(
            deltas,
            total_fit.ncols(),
            &|j| batch_fit[j],
            n_batches,
            &s.rows,
            0..n_fit,
            &own,
            &mut total_fit,
        )?;
        let mean_offset = off.norms.iter().sum::<f64>() / n_fit as f64;
        let (cmin, cmed) = s.coverage_stats();
        let covered = s
            .coverage
            .iter()
            .filter(|&&c| c >= params.coverage_target)
            .count();
        rounds.push(RoundSummary {
            landmarks: s.rows.len(),
            sampling_rounds: s.rounds,
            coverage_min: cmin,
            coverage_median: cmed,
            covered_fraction: covered as f64 / n_fit as f64,
            uncovered: off.uncovered,
            mean_offset,
            trust_width: trust_widths.last().copied().unwrap_or(0.0),
            index_seconds,
            sampling_seconds,
            align_seconds: t0.elapsed().as_secs_f64() - index_seconds - sampling_seconds,
            seconds: t0.elapsed().as_secs_f64(),
        });
        tracing::debug!(
            round,
            landmarks = s.rows.len(),
            mean_offset,
            "alignment round done"
        );
    }
    // The total offsets are applied block by block, as they are known:
    // `z_after = z - total` in place of `z`, and `y_after` the projection
    // of `clip(z) - total` (the same element-wise operations as over whole
    // arrays), so no `n x d` array of offsets or clipped values is held.
    let z_before = if keep.z_before {
        z.clone()
    } else {
        Array2::zeros((0, 0))
    };
    let mut y_after = if keep.y_after {
        Array2::<f32>::zeros((n, pca.dims()))
    } else {
        Array2::zeros((0, 0))
    };
    let mut apply = |z: &mut Array2<f64>, rows: &[usize], total: ArrayView2<f64>| {
        if keep.y_after {
            let mut w = clipped_rows(z, rows);
            w -= &total;
            let y = pca.transform_f32(w.view());
            for (r, &i) in rows.iter().enumerate() {
                y_after.row_mut(i).assign(&y.row(r));
            }
        }
        for (r, &i) in rows.iter().enumerate() {
            z.row_mut(i).zip_mut_with(&total.row(r), |zz, &t| *zz -= t);
        }
    };
    match &subset {
        Some(ids) => {
            let t0 = Instant::now();
            // The rows outside the subsample first: their neighbours are
            // found among the subsample's rows before those move.
            interpolate_offsets(
                &mut z,
                &|z: &Array2<f64>, rows: &[usize]| pca.transform_clipped_rows_f32(z, rows),
                &batch_of,
                ids,
                batch_fit,
                total_fit.view(),
                params.k.max(params.m),
                &mut |z, rows, offsets| apply(z, rows, offsets),
            );
            apply(&mut z, ids, total_fit.view());
            tracing::debug!(
                seconds = t0.elapsed().as_secs_f64(),
                "offsets interpolated to the rows outside the subsample"
            );
        }
        None => {
            let all: Vec<usize> = (0..n).collect();
            for (b, rows) in all.chunks(APPLY_ROWS).enumerate() {
                let lo = b * APPLY_ROWS;
                let part = total_fit.slice(ndarray::s![lo..lo + rows.len(), ..]);
                apply(&mut z, rows, part);
            }
        }
    }
    drop(total_fit);
    let z_after = z;
    let (corrected, input) = match (keep.corrected, input) {
        (false, input) => (Array2::zeros((0, 0)), input),
        (true, Some(mut a)) => {
            norm.denormalise(z_after.view(), &varying, &mut a);
            (a, None)
        }
        (true, None) => {
            // Every feature varies (an owned input), or the input is borrowed.
            let mut c = match &view_for_corrected {
                Some(v) => v.to_owned(),
                None => Array2::zeros((n, d)),
            };
            norm.denormalise(z_after.view(), &varying, &mut c);
            (c, None)
        }
    };
    let summary = Summary {
        rows: n,
        batches: n_batches,
        plates: plate_names.len(),
        features: d,
        corrected_features: varying.len(),
        plates_without_controls: norm.plates_without_controls.len(),
        fit_rows: n_fit,
        neighbor_dims: pca.dims(),
        neighbor_space: if whitened { "whitened" } else { "pca" }.to_string(),
        trust_rule: if params.trust > 0.0 {
            params.trust_rule.as_str()
        } else {
            "off"
        }
        .to_string(),
        batch_gain_shrink: norm.gain_shrink.clone(),
        rounds,
        seconds: started.elapsed().as_secs_f64(),
    };
    Ok(Correction {
        corrected,
        z_before,
        z_after,
        varying,
        normalizer: norm,
        pca,
        y_after,
        batch_names,
        batch_of,
        summary,
        input,
    })
}

/// Calibrate the trust test on negative controls, which exist in every batch
/// and must correspond across batches: for (up to 400, seeded) control rows,
/// the ratio of the median distance to the nearest control-or-not row of
/// each other batch to the row's own-batch `trust_k` scale; the width is the
/// 90th percentile of that ratio, so 90% of controls would trust the other
/// batches. Biology absent from a batch lies farther than controls do and
/// stays untrusted. `None` when there are too few controls.
fn calibrate_trust(
    y: ndarray::ArrayView2<f32>,
    batch_of: &[u32],
    indices: &[BatchIndex],
    controls: &[bool],
    params: &Params,
    salt: u64,
) -> Result<Option<f64>> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let mut rows: Vec<usize> = (0..controls.len()).filter(|&i| controls[i]).collect();
    if rows.len() < 10 || indices.len() < 2 {
        return Ok(None);
    }
    rows.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(
        params.seed ^ salt,
    ));
    rows.truncate(400);
    let mut ratios = Vec::new();
    for &i in &rows {
        let q: Vec<f32> = y.row(i).iter().copied().collect();
        let own = indices[batch_of[i] as usize].search(&q, params.trust_k.max(1))?;
        let s_own = crate::method::scales::kth_scale(&own, params.trust_k.max(1));
        if s_own <= 0.0 {
            continue;
        }
        let mut d: Vec<f64> = Vec::new();
        for (c, index) in indices.iter().enumerate() {
            if c as u32 == batch_of[i] || index.is_empty() {
                continue;
            }
            if let Some(nb) = index.search(&q, 1)?.first() {
                d.push((nb.dist2.max(0.0) as f64).sqrt());
            }
        }
        if !d.is_empty() {
            ratios.push(crate::method::preprocess::median_inplace(&mut d) / s_own);
        }
    }
    if ratios.len() < 10 {
        return Ok(None);
    }
    ratios.sort_by(|a, b| a.total_cmp(b));
    let q = ratios[((ratios.len() as f64 * 0.9) as usize).min(ratios.len() - 1)];
    Ok(Some(q.max(1e-3)))
}

/// The rows the sampling fit runs on when the table has more than
/// `params.fit_rows` rows (and the fit is not exact): `fit_rows` rows drawn
/// per batch in proportion to its size (at least `min(size, 2k)` of each
/// batch, so every batch keeps a scale's worth of rows), seeded, sorted.
/// `None` = all rows.
pub(crate) fn fit_subset(
    batch_of: &[u32],
    n_batches: usize,
    params: &Params,
) -> Option<Vec<usize>> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let n = batch_of.len();
    if params.exact || params.fit_rows == 0 || n <= params.fit_rows {
        return None;
    }
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); n_batches];
    for (i, &b) in batch_of.iter().enumerate() {
        if let Some(m) = members.get_mut(b as usize) {
            m.push(i);
        }
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(params.seed ^ 0x05ee_df17);
    let mut out = Vec::with_capacity(params.fit_rows + n_batches);
    for m in &mut members {
        let share = (params.fit_rows as f64 * m.len() as f64 / n as f64).round() as usize;
        let take = share.max(2 * params.k).min(m.len());
        m.shuffle(&mut rng);
        out.extend_from_slice(&m[..take]);
    }
    out.sort_unstable();
    Some(out)
}

/// Offsets of the rows outside the fitted subsample `ids` (row t of
/// `fitted` = row `ids[t]`, of batch `batch_fit[t]`): each takes the mean
/// offset of its `k` nearest subsample rows of its batch in the neighbour
/// space (exact, blocked: [`knn_blocked`]) — the rule the fit already uses
/// for rows no landmark retained. `y_of(state, rows)` gives the
/// coordinates of table rows; the fit passes the uncorrected neighbour
/// space: within one batch the correction is a smooth shift, so a row's
/// own-batch neighbours are those it had before the rounds moved them.
/// The offsets are handed to `emit(state, rows, offsets)` in blocks of at
/// most [`APPLY_ROWS`] rows (`offsets` row r = table row `rows[r]`), every
/// row outside the subsample once; the subsample's own rows are the
/// caller's. `emit` may change `state` for the rows it is given (the
/// subsample's rows are read first).
/// [`current_rows`] as [`Features`], read from `z` and `total` where the
/// deltas need a row: `acc += a * (clip(z[row]) - total[t])`, the same
/// bits as accumulating the row of [`current_rows`].
struct CurrentRows<'a> {
    z: &'a Array2<f64>,
    subset: Option<&'a [usize]>,
    total: &'a Array2<f64>,
    batch_of: &'a [u32],
}

impl AlignFeatures for CurrentRows<'_> {
    fn dims(&self) -> usize {
        self.total.ncols()
    }
    fn batch(&self, j: usize) -> u32 {
        self.batch_of[j]
    }
    fn accumulate(&self, j: usize, a: f64, acc: &mut [f64]) {
        let src = self.z.row(self.subset.map_or(j, |s| s[j]));
        for ((o, &v), &off) in acc.iter_mut().zip(src.iter()).zip(self.total.row(j).iter()) {
            *o += a * (v.clamp(-CLIP, CLIP) - off);
        }
    }
}

/// The rows a round aligns: `clip(z[row]) - total[t]` for the fit's row `t`
/// (table row `subset[t]`, or `t` without a subsample). The same values as
/// `clipped_rows(z, subset) - total`, formed without the clipped copy.
fn current_rows(z: &Array2<f64>, subset: Option<&[usize]>, total: &Array2<f64>) -> Array2<f64> {
    let mut out = Array2::<f64>::zeros(total.dim());
    out.axis_iter_mut(Axis(0))
        .into_par_iter()
        .enumerate()
        .for_each(|(t, mut row)| {
            let src = z.row(subset.map_or(t, |s| s[t]));
            for ((o, &v), &off) in row.iter_mut().zip(src.iter()).zip(total.row(t).iter()) {
                *o = v.clamp(-CLIP, CLIP) - off;
            }
        });
    out
}

/// The receiver of [`interpolate_offsets`]' blocks: `(state, rows, offsets)`.
type EmitOffsets<'e, S> = dyn FnMut(&mut S, &[usize], ArrayView2<f64>) + 'e;

#[allow(clippy::too_many_arguments)]
fn interpolate_offsets<S>(
    state: &mut S,
    y_of: &dyn Fn(&S, &[usize]) -> Array2<f32>,
    batch_of: &[u32],
    ids: &[usize],
    batch_fit: &[u32],
    fitted: ArrayView2<f64>,
    k: usize,
    emit: &mut EmitOffsets<S>,
) {
    let (n, d) = (batch_of.len(), fitted.ncols());
    let n_batches = batch_of.iter().map(|&b| b as usize + 1).max().unwrap_or(0);
    let mut in_fit = vec![false; n];
    for &i in ids {
        in_fit[i] = true;
    }
    for c in 0..n_batches as u32 {
        let base_pos: Vec<usize> = (0..ids.len()).filter(|&t| batch_fit[t] == c).collect();
        let targets: Vec<usize> = (0..n).filter(|&i| batch_of[i] == c && !in_fit[i]).collect();
        if targets.is_empty() || base_pos.is_empty() {
            continue;
        }
        let base_rows: Vec<usize> = base_pos.iter().map(|&t| ids[t]).collect();
        let base = y_of(state, &base_rows);
        let kk = k.min(base_pos.len());
        for block in targets.chunks(APPLY_ROWS) {
            let queries = y_of(state, block);
            let nb = knn_blocked(queries.view(), base.view(), k);
            // Emitted in parts of EMIT_ROWS rows (each row's offset is its
            // own), so the offsets are never an `APPLY_ROWS x d` array.
            for (part, rows) in block.chunks(EMIT_ROWS).enumerate() {
                let near_all = &nb[part * EMIT_ROWS * kk..(part * EMIT_ROWS + rows.len()) * kk];
                let mut vals = Array2::<f64>::zeros((rows.len(), d));
                vals.axis_iter_mut(Axis(0))
                    .into_par_iter()
                    .zip(near_all.par_chunks(kk))
                    .for_each(|(mut o, near)| {
                        for m in near {
                            o += &fitted.row(base_pos[m.key as usize]);
                        }
                        o /= kk as f64;
                    });
                emit(state, rows, vals.view());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{generate, SynthSpec};
    use rand::{Rng, SeedableRng};

    fn batches(n: usize, b: u32) -> Vec<u32> {
        (0..n).map(|i| (i as u32 * 7 + i as u32 / 5) % b).collect()
    }

    /// The rounds' rows formed from `z` and the totals (`current_rows`,
    /// and `CurrentRows` where the deltas read them) are the bits of
    /// `clipped_rows(z, subset) - total`, the arrays the rounds held before.
    #[test]
    fn current_rows_are_the_clipped_rows_minus_the_totals() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let (n, d) = (300, 7);
        // Values beyond the clip too, so the clip is exercised.
        let z = Array2::from_shape_fn((n, d), |_| rng.gen_range(-80.0..80.0));
        let subset: Vec<usize> = (0..n).filter(|_| rng.gen_bool(0.3)).collect();
        for ids in [Some(subset.as_slice()), None] {
            let m = ids.map_or(n, |s| s.len());
            let total = Array2::from_shape_fn((m, d), |_| rng.gen_range(-2.0..2.0));
            let want = match ids {
                Some(s) => &clipped_rows(&z, s) - &total,
                None => &clipped(&z) - &total,
            };
            let got = current_rows(&z, ids, &total);
            let bits = |a: &Array2<f64>| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want));
            let batch_of = vec![0u32; m];
            let rows = CurrentRows {
                z: &z,
                subset: ids,
                total: &total,
                batch_of: &batch_of,
            };
            for j in [0, m / 2, m - 1] {
                let a = rng.gen_range(0.0..1.0);
                let (mut acc, mut oracle) = (vec![0.5; d], vec![0.5; d]);
                rows.accumulate(j, a, &mut acc);
                for (o, v) in oracle.iter_mut().zip(want.row(j)) {
                    *o += a * v;
                }
                assert_eq!(acc, oracle);
            }
        }
    }

    #[test]
    fn subset_is_stratified_seeded_and_only_above_fit_rows() {
        let batch_of = batches(5000, 4);
        let p = Params {
            fit_rows: 1000,
            ..Params::default()
        };
        let s = fit_subset(&batch_of, 4, &p).unwrap();
        assert!(s.windows(2).all(|w| w[0] < w[1]), "sorted, distinct");
        assert!((s.len() as i64 - 1000).abs() <= 4, "{}", s.len());
        for c in 0..4u32 {
            let size = batch_of.iter().filter(|&&b| b == c).count();
            let got = s.iter().filter(|&&i| batch_of[i] == c).count();
            let want = 1000.0 * size as f64 / 5000.0;
            assert!(
                (got as f64 - want).abs() <= 1.0,
                "batch {c}: {got} vs {want}"
            );
        }
        assert_eq!(Some(s.clone()), fit_subset(&batch_of, 4, &p), "seeded");
        let other = Params {
            seed: 1,
            ..p.clone()
        };
        assert_ne!(Some(s), fit_subset(&batch_of, 4, &other));
        // At or below fit_rows, with fit_rows = 0 and in exact mode: all rows.
        let all = |p: Params| fit_subset(&batch_of, 4, &p).is_none();
        assert!(all(Params {
            fit_rows: 5000,
            ..p.clone()
        }));
        assert!(all(Params {
            fit_rows: 0,
            ..p.clone()
        }));
        assert!(all(Params {
            exact: true,
            ..p.clone()
        }));
        // A small batch keeps 2k rows (a scale's worth), or all of it.
        let mut skewed = vec![0u32; 5000];
        skewed[..40].iter_mut().for_each(|b| *b = 1);
        let s = fit_subset(&skewed, 2, &p).unwrap();
        assert_eq!(s.iter().filter(|&&i| skewed[i] == 1).count(), 30);
    }

    #[test]
    fn interpolation_matches_brute_force() {
        // Oracle: a row outside the subsample gets the plain mean offset of
        // its k nearest subsample rows of its batch (brute force, f64
        // distances); subsample rows keep theirs. Bound: exact up to f32
        // distance ties (none in random data) and f64 summation order.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let (n, p, d, k) = (400, 5, 3, 6);
        let y = Array2::from_shape_fn((n, p), |_| rng.gen_range(-1.0f32..1.0));
        let batch_of = batches(n, 3);
        let ids: Vec<usize> = (0..n).filter(|i| i % 3 == 0).collect();
        let batch_fit: Vec<u32> = ids.iter().map(|&i| batch_of[i]).collect();
        let fitted = Array2::from_shape_fn((ids.len(), d), |_| rng.gen_range(-1.0..1.0));
        // Every row outside the subsample is emitted once, in blocks;
        // the subsample's rows are the caller's.
        let mut out = Array2::<f64>::from_elem((n, d), f64::NAN);
        for (t, &i) in ids.iter().enumerate() {
            out.row_mut(i).assign(&fitted.row(t));
        }
        let mut emitted = vec![0usize; n];
        interpolate_offsets(
            &mut (),
            &|_: &(), rows: &[usize]| y.select(Axis(0), rows),
            &batch_of,
            &ids,
            &batch_fit,
            fitted.view(),
            k,
            &mut |_, rows, offsets| {
                for (r, &i) in rows.iter().enumerate() {
                    emitted[i] += 1;
                    out.row_mut(i).assign(&offsets.row(r));
                }
            },
        );
        for (i, &times) in emitted.iter().enumerate() {
            let want = usize::from(!ids.contains(&i));
            assert_eq!(times, want, "row {i} emitted {times} times");
        }
        for i in 0..n {
            let want: Vec<f64> = if let Some(t) = ids.iter().position(|&j| j == i) {
                fitted.row(t).to_vec()
            } else {
                let mut near: Vec<(f64, usize)> = (0..ids.len())
                    .filter(|&t| batch_fit[t] == batch_of[i])
                    .map(|t| {
                        let d2 = (0..p)
                            .map(|c| (y[[i, c]] as f64 - y[[ids[t], c]] as f64).powi(2))
                            .sum::<f64>();
                        (d2, t)
                    })
                    .collect();
                near.sort_by(|a, b| a.0.total_cmp(&b.0));
                (0..d)
                    .map(|c| near[..k].iter().map(|&(_, t)| fitted[[t, c]]).sum::<f64>() / k as f64)
                    .collect()
            };
            for c in 0..d {
                assert!((out[[i, c]] - want[c]).abs() < 1e-12, "row {i}");
            }
        }
    }

    #[test]
    fn fits_that_keep_less_give_the_same_bits() {
        // Oracle: `correct` (every array, the input borrowed). The fit on
        // an owned input (normalised in place when every feature varies,
        // kept aside when one is constant) and the fits that keep fewer
        // arrays give the same corrected values, z_after, and (when kept)
        // z_before and y_after, bit for bit; arrays not kept are empty. On
        // the subsample path (offsets applied block by block) and on all
        // rows.
        let spec = SynthSpec {
            rows: 3000,
            batches: 3,
            features: 8,
            seed: 9,
            ..SynthSpec::default()
        };
        let t = generate(&spec).unwrap();
        let mut with_constant = t.features.clone();
        with_constant.column_mut(3).fill(2.5);
        let controls: Vec<bool> = t
            .label
            .iter()
            .map(|l| l == crate::synth::CONTROL_LABEL)
            .collect();
        for x in [&t.features, &with_constant] {
            for fit_rows in [0, 1000] {
                let data = Dataset {
                    x: x.view(),
                    batch: &t.batch,
                    plate: Some(&t.plate),
                    controls: Some(&controls),
                };
                let p = Params {
                    fit_rows,
                    threads: 2,
                    ..Params::default()
                };
                let full = correct(&data, &p, &NoProgress).unwrap();
                let none = Keep {
                    corrected: false,
                    z_before: false,
                    y_after: false,
                };
                let lean = correct_keeping(&data, &p, &NoProgress, none).unwrap();
                assert_eq!(lean.z_after, full.z_after);
                assert_eq!(lean.corrected.dim(), (0, 0));
                assert_eq!(lean.z_before.dim(), (0, 0));
                assert_eq!(lean.y_after.dim(), (0, 0));
                let mut into = x.clone();
                lean.denormalise_into(&mut into).unwrap();
                assert!(
                    into == full.corrected,
                    "denormalise_into, fit_rows {fit_rows}"
                );
                let owned = correct_owned(x.clone(), &data, &p, &NoProgress, none).unwrap();
                assert_eq!(owned.z_after, full.z_after);
                assert!(
                    owned.into_corrected().unwrap() == full.corrected,
                    "into_corrected"
                );
                let kept = correct_owned(x.clone(), &data, &p, &NoProgress, Keep::ALL).unwrap();
                assert_eq!(kept.z_before, full.z_before);
                assert_eq!(kept.y_after, full.y_after);
                assert!(kept.corrected == full.corrected);
            }
        }
    }

    #[test]
    fn subsample_fit_is_as_close_to_the_truth_as_the_full_fit() {
        // 6000 rows in 4 batches with a strong shift: fit on a 2000-row
        // subsample vs all rows, each scored against the batch-free truth
        // (per-feature standardised, mean per-row RMS error, as
        // benches/perf/truth_error.py). Bound: the subsample fit's error is
        // at most the full fit's + 0.02 and under half the uncorrected one.
        let spec = SynthSpec {
            rows: 6000,
            batches: 4,
            features: 20,
            shift: 3.0,
            seed: 5,
            ..SynthSpec::default()
        };
        let t = generate(&spec).unwrap();
        let data = Dataset {
            x: t.features.view(),
            batch: &t.batch,
            plate: Some(&t.plate),
            controls: None,
        };
        let run = |fit_rows: usize| {
            let p = Params {
                fit_rows,
                threads: 2,
                ..Params::default()
            };
            correct(&data, &p, &NoProgress).unwrap()
        };
        let (full, sub) = (run(0), run(2000));
        assert_eq!(full.summary.fit_rows, 6000);
        assert!((sub.summary.fit_rows as i64 - 2000).abs() <= 4);
        let standardised = |a: &Array2<f64>| -> Array2<f64> {
            let mut a = a.clone();
            for mut col in a.columns_mut() {
                let m = col.mean().unwrap_or(0.0);
                let sd = col.std(0.0).max(1e-12);
                col.mapv_inplace(|v| (v - m) / sd);
            }
            a
        };
        let truth = standardised(&t.truth);
        let err = |a: &Array2<f64>| -> f64 {
            let d = standardised(a) - &truth;
            d.rows()
                .into_iter()
                .map(|r| (r.dot(&r) / r.len() as f64).sqrt())
                .sum::<f64>()
                / a.nrows() as f64
        };
        let (e_raw, e_full, e_sub) = (err(&t.features), err(&full.corrected), err(&sub.corrected));
        eprintln!("error to truth: uncorrected {e_raw:.4} full {e_full:.4} subsample {e_sub:.4}");
        assert!(e_sub <= e_full + 0.02, "{e_sub} vs {e_full}");
        assert!(e_sub < 0.5 * e_raw, "{e_sub} vs {e_raw}");
    }
}
