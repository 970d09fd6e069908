//! Synthetic morphological profiles with KNOWN biology and KNOWN batch effects.
//!
//! Batch correction is hard to evaluate on real data because nobody knows the
//! true, batch-free profile of a well. This module generates tables where we
//! do: every row comes with its ground-truth profile (`truth`) next to the
//! observed one (`features`), so tests, benchmarks and quality work can
//! measure exactly how much batch effect a method removes and how much
//! biology it destroys.
//!
//! The module is pure (no I/O). [`generate`] builds a [`SynthTable`];
//! [`to_record_batch`] / [`truth_record_batch`] turn it into an Arrow
//! `RecordBatch` in pycytominer layout for the table writers.
//!
//! # The model
//!
//! **Biology (the truth).** Real Cell Painting features are strongly
//! correlated: a few hundred measurements describe a handful of underlying
//! phenotypes. So the biology lives in a low-rank latent space of
//! `latent_dim` (default 10) dimensions and is mapped to `features`
//! dimensions by a random loading matrix `A` (entries `N(0, 1/latent_dim)`,
//! so each feature has roughly unit variance per unit of latent variance):
//!
//! ```text
//! z    = c_g + o_t + N(0, 0.5^2 I)          latent profile of one row
//! x    = A^T z + N(0, diag(sigma_f^2))      true profile (a row of `truth`)
//! ```
//!
//! * `c_g ~ N(0, 1.5^2 I)` is the centre of biological group `g` (labels
//!   `G01`, `G02`, ...). Negative controls (label `DMSO`) form their own group
//!   whose centre lies near the origin (`N(0, 0.1^2 I)`).
//! * `o_t ~ N(0, 0.35^2 I)` is the offset of treatment `t` within its group, so
//!   replicates of one treatment are closer to each other than to other
//!   treatments of the same group (replicate retrieval is meaningful).
//!   Controls have no treatment offset.
//! * `sigma_f = 0.3 * exp(N(0, 0.3^2))` is feature-specific measurement noise.
//!
//! **Batch effects (what a method must remove).** Each batch `b` applies, in
//! this order, to the true profile `x` of one of its rows on plate `p`:
//!
//! ```text
//! y = m_b ⊙ (x + warp * s * U_b tanh(V_b^T x / s_x)) + delta_b + pi_p
//! ```
//!
//! * a smooth non-linear **warp** of rank 4: `V_b` (entries
//!   `N(0, 1/features)`) reads the profile, scaled by the typical per-feature
//!   spread of the data `s_x` so `tanh` works in its curved range, and `U_b`
//!   (entries `N(0, 1/4)`) writes back, scaled by `warp` times the typical
//!   within-group spread `s`;
//! * per-feature multiplicative **scaling** `m_b = exp(N(0, scale^2))`;
//! * an additive **shift** `delta_b ~ N(0, (shift * s)^2 I)`, whose norm is
//!   about `shift` times the typical within-group spread vector `s * sqrt(features)`;
//! * a small per-plate shift `pi_p ~ N(0, (0.15 * shift * s)^2 I)`.
//!
//! With `shift = scale = warp = 0` the observed table equals the truth
//! exactly; `s = sqrt(0.5^2 + 0.35^2 + mean(sigma_f^2))`.
//!
//! **Design (which row is what).** `round(controls_fraction * rows)` rows are
//! controls; the rest belong to treatments with `replicates` (default 4)
//! replicates each (the remainder spread one extra replicate over the first
//! treatments; there are never fewer treatments than batches, so every
//! treatment has at least two replicates). Treatments are assigned to groups
//! (every group gets one first, the rest drawn with group weights
//! `exp(N(0, 0.3^2))`, so group sizes differ). A treatment's first replicate
//! goes to the batches in round-robin order, its second to a different batch
//! and the rest anywhere, each draw weighted by a batch weight `1 + U(-0.3,
//! 0.3)` (batches differ in size by up to about ±30 %) times a group-batch
//! affinity `exp(N(0, 0.3^2))` (mild imbalance of group composition). So
//! every treatment spans at least two batches whenever `batches >= 2`.
//!
//! The last `batch_specific_groups` groups are **batch-specific**: all rows
//! of such a group live in one batch (the k-th such group in the k-th batch
//! of a random batch order, round-robin). They model confounded biology that
//! an over-eager method would wrongly "correct" away.
//!
//! Controls go one per batch first, then by batch weight. Within a batch the
//! rows are shuffled and split into `plates_per_batch` consecutive, equally
//! sized plates (`Batch03_Plate02`); wells are numbered in 384-well order
//! (`A01`, `A02`, ..., `P24`). A plate holding more than 384 rows treats the
//! extra rows as further sites of the same wells (`A01_s2`, ...), so
//! `(plate, well)` stays unique. Rows are ordered by batch, plate, well.
//!
//! # Determinism and speed
//!
//! Everything derives from `seed` through `ChaCha8Rng` streams: stream 0 draws
//! the model parameters and the design sequentially (O(rows × batches)),
//! and the row values are drawn in fixed chunks of 4096 rows, chunk `i`
//! using stream `i + 1`. Chunks run in parallel with rayon, so the output
//! does not depend on the number of threads. The cost per row is
//! O(features × (latent_dim + 4)); nothing is quadratic in the row count.
//! Normal variates use the Box–Muller transform (rand 0.8 has no normal
//! distribution without `rand_distr`).
//!
//! # Files
//!
//! * [`spec`]: what to generate ([`SynthSpec`]) and its validation;
//! * `design`: which row is what (batch, plate, well, control or treatment);
//! * `model`: the generative model's parameters and the draw of one row;
//! * `normal`: Box–Muller normal variates;
//! * `names`: batch, plate, well, group and feature names;
//! * [`table`]: the Arrow `RecordBatch` layout of a generated table.

mod design;
mod model;
mod names;
mod normal;
pub(crate) mod spec;
pub(crate) mod table;

use anyhow::{Context, Result};
use ndarray::Array2;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use design::{design, RowKind};
use model::{Model, Scratch};
use names::{digits, group_names, well_name};
use spec::validate;

pub use names::feature_names;
pub use spec::SynthSpec;
pub use table::{to_record_batch, truth_record_batch};

/// Label (and treatment name) of the negative-control rows.
pub const CONTROL_LABEL: &str = "DMSO";

/// Rows per independently seeded chunk of the value generation.
const CHUNK_ROWS: usize = 4096;

/// A generated table: observed profiles, their ground truth and metadata,
/// all with one entry per row, ordered by batch, plate and well.
#[derive(Debug, Clone)]
pub struct SynthTable {
    /// Observed profiles (with batch effects), `rows x features`.
    pub features: Array2<f64>,
    /// The same rows without batch effects (ground truth), `rows x features`.
    pub truth: Array2<f64>,
    /// Batch name, `Batch01`.. (zero-padded so lexical order is numeric order).
    pub batch: Vec<String>,
    /// Plate name, `Batch01_Plate01`.. (unique across batches).
    pub plate: Vec<String>,
    /// Well name within the plate, `A01`..`P24` (`A01_s2`.. beyond 384 rows).
    pub well: Vec<String>,
    /// Biological group, `G01`.., or [`CONTROL_LABEL`] for controls.
    pub label: Vec<String>,
    /// Treatment name, `T0001`.., or [`CONTROL_LABEL`]; replicate groups.
    pub treatment: Vec<String>,
    /// Names of the groups that exist in a single batch only.
    pub batch_specific_labels: Vec<String>,
}

impl SynthTable {
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.features.nrows()
    }

    /// Feature column names, `Feature_000`..
    pub fn feature_names(&self) -> Vec<String> {
        feature_names(self.features.ncols())
    }
}

/// Generates a synthetic table from `spec`.
///
/// Errors (naming the offending field) when a count is zero, `batches >
/// rows`, `controls_fraction` is outside `[0, 1)`, an effect strength is
/// negative or not finite, `replicates < 2`, `batch_specific_groups >=
/// groups`, there are fewer than two non-control rows per batch, or the
/// design leaves a batch without rows (tiny tables with many batch-specific
/// groups and no controls).
pub fn generate(spec: &SynthSpec) -> Result<SynthTable> {
    validate(spec)?;
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let design = design(spec, &mut rng)?;
    let model = Model::draw(spec, &design, &mut rng);

    let n = spec.rows;
    let f = spec.features;
    let mut features = vec![0.0; n * f];
    let mut truth = vec![0.0; n * f];
    features
        .par_chunks_mut(CHUNK_ROWS * f)
        .zip(truth.par_chunks_mut(CHUNK_ROWS * f))
        .enumerate()
        .for_each(|(chunk, (obs_chunk, true_chunk))| {
            let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
            rng.set_stream(chunk as u64 + 1);
            let mut scratch = Scratch::new(spec.latent_dim);
            let first = chunk * CHUNK_ROWS;
            for (k, (obs, tru)) in obs_chunk
                .chunks_mut(f)
                .zip(true_chunk.chunks_mut(f))
                .enumerate()
            {
                model.row(&design.rows[first + k], &mut rng, &mut scratch, tru, obs);
            }
        });

    let features =
        Array2::from_shape_vec((n, f), features).context("shaping the feature matrix")?;
    let truth = Array2::from_shape_vec((n, f), truth).context("shaping the truth matrix")?;

    let batch_width = digits(spec.batches).max(2);
    let batch_names: Vec<String> = (1..=spec.batches)
        .map(|b| format!("Batch{b:0batch_width$}"))
        .collect();
    let group_names = group_names(spec.groups);
    let treatment_width = digits(design.treatment_group.len()).max(4);
    let treatment_names: Vec<String> = (1..=design.treatment_group.len())
        .map(|t| format!("T{t:0treatment_width$}"))
        .collect();

    // One column at a time, rows in parallel (five million small strings at 1M rows).
    let rows = &design.rows;
    let batch = rows
        .par_iter()
        .map(|r| batch_names[r.batch].clone())
        .collect();
    let plate = rows
        .par_iter()
        .map(|r| design.plate_names[r.plate].clone())
        .collect();
    let well = rows.par_iter().map(|r| well_name(r.well)).collect();
    let label = rows
        .par_iter()
        .map(|r| match r.kind {
            RowKind::Control => CONTROL_LABEL.to_string(),
            RowKind::Treatment(t) => group_names[design.treatment_group[t]].clone(),
        })
        .collect();
    let treatment = rows
        .par_iter()
        .map(|r| match r.kind {
            RowKind::Control => CONTROL_LABEL.to_string(),
            RowKind::Treatment(t) => treatment_names[t].clone(),
        })
        .collect();
    let batch_specific_labels = group_names[spec.groups - spec.batch_specific_groups..].to_vec();

    Ok(SynthTable {
        features,
        truth,
        batch,
        plate,
        well,
        label,
        treatment,
        batch_specific_labels,
    })
}

#[cfg(test)]
mod tests;
