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

use std::sync::Arc;

use anyhow::{bail, ensure, Context, Result};
use arrow_array::{ArrayRef, Float64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use ndarray::Array2;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// Label (and treatment name) of the negative-control rows.
pub const CONTROL_LABEL: &str = "DMSO";

/// Rows per independently seeded chunk of the value generation.
const CHUNK_ROWS: usize = 4096;
/// Standard deviation of the group centres in latent space.
const CENTRE_SD: f64 = 1.5;
/// Standard deviation of the control centre (controls sit near the origin).
const CONTROL_CENTRE_SD: f64 = 0.1;
/// Standard deviation of a treatment's offset from its group centre.
const TREATMENT_SD: f64 = 0.35;
/// Standard deviation of a row's latent noise around its treatment.
const WITHIN_SD: f64 = 0.5;
/// Median of the feature-specific measurement noise.
const FEATURE_NOISE_SD: f64 = 0.3;
/// Log-normal spread of the feature noise levels across features.
const FEATURE_NOISE_LOG_SD: f64 = 0.3;
/// Rank of the non-linear warp.
const WARP_RANK: usize = 4;
/// Per-plate shift, relative to the batch shift.
const PLATE_SHIFT_FRACTION: f64 = 0.15;
/// Batch weights are `1 + U(-BATCH_SIZE_JITTER, BATCH_SIZE_JITTER)`.
const BATCH_SIZE_JITTER: f64 = 0.3;
/// Log-normal spread of the group-batch affinities (composition imbalance).
const GROUP_BATCH_IMBALANCE_SD: f64 = 0.3;
/// Log-normal spread of the group weights (group sizes).
const GROUP_SIZE_SD: f64 = 0.3;
/// Wells of a 384-well plate.
const WELLS_PER_PLATE: usize = 384;
/// Columns of a 384-well plate (rows are `A`..`P`).
const PLATE_COLUMNS: usize = 24;

/// What to generate. All counts must be positive; see [`generate`] for the
/// validation rules and the module documentation for the model.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthSpec {
    /// Number of rows (profiles) in the table.
    pub rows: usize,
    /// Number of batches.
    pub batches: usize,
    /// Number of feature columns.
    pub features: usize,
    /// Number of biological groups (clusters / perturbation classes), without the controls.
    pub groups: usize,
    /// Fraction of rows that are negative controls (label [`CONTROL_LABEL`]), in `[0, 1)`.
    pub controls_fraction: f64,
    /// Plates per batch (a batch with fewer rows than plates has fewer plates).
    pub plates_per_batch: usize,
    /// Additive batch shift, in units of the typical within-group spread.
    pub shift: f64,
    /// Standard deviation of the log of the per-feature multiplicative batch scaling.
    pub scale: f64,
    /// Strength of the non-linear batch warp, in units of the typical within-group spread.
    pub warp: f64,
    /// Number of groups that exist in one batch only (confounded biology).
    pub batch_specific_groups: usize,
    /// Target number of replicates per treatment (at least 2).
    pub replicates: usize,
    /// Dimension of the latent biological space.
    pub latent_dim: usize,
    /// Seed of all random draws.
    pub seed: u64,
}

impl Default for SynthSpec {
    fn default() -> Self {
        SynthSpec {
            rows: 10_000,
            batches: 4,
            features: 50,
            groups: 20,
            controls_fraction: 0.1,
            plates_per_batch: 4,
            shift: 2.0,
            scale: 0.3,
            warp: 0.5,
            batch_specific_groups: 0,
            replicates: 4,
            latent_dim: 10,
            seed: 42,
        }
    }
}

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

/// Feature column names `Feature_000`.. (at least three digits, more if needed).
pub fn feature_names(n: usize) -> Vec<String> {
    let width = digits(n.saturating_sub(1)).max(3);
    (0..n).map(|j| format!("Feature_{j:0width$}")).collect()
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

/// The observed table as an Arrow `RecordBatch` in pycytominer layout:
/// `Metadata_Batch`, `Metadata_Plate`, `Metadata_Well`, `Metadata_Label`,
/// `Metadata_Treatment` (Utf8), then `Feature_000`.. (Float64).
pub fn to_record_batch(t: &SynthTable) -> Result<RecordBatch> {
    record_batch(t, &t.features).context("building the synthetic feature record batch")
}

/// The ground truth in the same layout as [`to_record_batch`], for evaluation.
pub fn truth_record_batch(t: &SynthTable) -> Result<RecordBatch> {
    record_batch(t, &t.truth).context("building the synthetic truth record batch")
}

fn record_batch(t: &SynthTable, values: &Array2<f64>) -> Result<RecordBatch> {
    let n = values.nrows();
    let metadata: [(&str, &Vec<String>); 5] = [
        ("Metadata_Batch", &t.batch),
        ("Metadata_Plate", &t.plate),
        ("Metadata_Well", &t.well),
        ("Metadata_Label", &t.label),
        ("Metadata_Treatment", &t.treatment),
    ];
    for (name, column) in &metadata {
        ensure!(
            column.len() == n,
            "column {name} has {} rows but the value matrix has {n}",
            column.len()
        );
    }
    // The string columns and the transposition run side by side.
    let (metadata_columns, feature_columns) = rayon::join(
        || {
            metadata
                .par_iter()
                .map(|(_, column)| {
                    Arc::new(StringArray::from_iter_values(column.iter())) as ArrayRef
                })
                .collect::<Vec<_>>()
        },
        || {
            // One row-major pass (reading each column with a stride would
            // walk the whole matrix once per feature).
            let mut columns: Vec<Vec<f64>> =
                (0..values.ncols()).map(|_| Vec::with_capacity(n)).collect();
            for row in values.rows() {
                for (column, &x) in columns.iter_mut().zip(row) {
                    column.push(x);
                }
            }
            columns
        },
    );
    let mut fields: Vec<Field> = metadata
        .iter()
        .map(|(name, _)| Field::new(*name, DataType::Utf8, false))
        .collect();
    let mut columns = metadata_columns;
    for (name, column) in feature_names(values.ncols())
        .into_iter()
        .zip(feature_columns)
    {
        fields.push(Field::new(name, DataType::Float64, false));
        columns.push(Arc::new(Float64Array::from(column)));
    }
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

fn validate(spec: &SynthSpec) -> Result<()> {
    for (name, value) in [
        ("rows", spec.rows),
        ("batches", spec.batches),
        ("features", spec.features),
        ("groups", spec.groups),
        ("plates_per_batch", spec.plates_per_batch),
        ("latent_dim", spec.latent_dim),
    ] {
        ensure!(value > 0, "synth spec: {name} must be at least 1, got 0");
    }
    ensure!(
        spec.batches <= spec.rows,
        "synth spec: batches ({}) must not exceed rows ({})",
        spec.batches,
        spec.rows
    );
    ensure!(
        spec.rows
            .checked_mul(spec.features)
            .is_some_and(|cells| cells <= isize::MAX as usize / 16),
        "synth spec: rows x features ({} x {}) is too large to hold in memory",
        spec.rows,
        spec.features
    );
    ensure!(
        spec.controls_fraction.is_finite() && (0.0..1.0).contains(&spec.controls_fraction),
        "synth spec: controls_fraction must be in [0, 1), got {}",
        spec.controls_fraction
    );
    for (name, value) in [
        ("shift", spec.shift),
        ("scale", spec.scale),
        ("warp", spec.warp),
    ] {
        ensure!(
            value.is_finite() && value >= 0.0,
            "synth spec: {name} must be a finite number >= 0, got {value}"
        );
    }
    ensure!(
        spec.replicates >= 2,
        "synth spec: replicates must be at least 2, got {}",
        spec.replicates
    );
    ensure!(
        spec.batch_specific_groups < spec.groups,
        "synth spec: batch_specific_groups ({}) must be smaller than groups ({}) so some biology is shared across batches",
        spec.batch_specific_groups,
        spec.groups
    );
    let treated = spec.rows - control_count(spec);
    ensure!(
        treated >= 2 * spec.batches,
        "synth spec: {treated} non-control rows are too few for {} batches (need at least 2 per batch); \
         increase rows or lower controls_fraction",
        spec.batches
    );
    Ok(())
}

fn control_count(spec: &SynthSpec) -> usize {
    ((spec.controls_fraction * spec.rows as f64).round() as usize).min(spec.rows)
}

/// What a row is: a replicate of treatment `t`, or a control.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RowKind {
    Control,
    Treatment(usize),
}

/// The design of one row: where it is and what it is.
#[derive(Debug, Clone, Copy)]
struct RowDesign {
    batch: usize,
    /// Global plate index (into `Design::plate_names`).
    plate: usize,
    /// Position within the plate (384-well order).
    well: usize,
    kind: RowKind,
}

/// The experimental layout, drawn before any values.
struct Design {
    rows: Vec<RowDesign>,
    /// Group of every treatment.
    treatment_group: Vec<usize>,
    plate_names: Vec<String>,
}

fn design(spec: &SynthSpec, rng: &mut ChaCha8Rng) -> Result<Design> {
    let b_count = spec.batches;
    let g_count = spec.groups;
    let controls = control_count(spec);
    let treated = spec.rows - controls;

    // Treatments and their replicate counts: at least one per batch, at least
    // two replicates each (validation guarantees treated >= 2 * batches).
    let t_count = (treated / spec.replicates).max(b_count).min(treated / 2);
    let base = treated / t_count;
    let extra = treated % t_count;

    let mut normal = Normal::default();
    let batch_weight: Vec<f64> = (0..b_count)
        .map(|_| 1.0 + rng.gen_range(-BATCH_SIZE_JITTER..=BATCH_SIZE_JITTER))
        .collect();
    let group_weight: Vec<f64> = (0..g_count)
        .map(|_| (GROUP_SIZE_SD * normal.sample(rng)).exp())
        .collect();
    // Per group: batch weight times group-batch affinity.
    let placement_weight: Vec<Vec<f64>> = (0..g_count)
        .map(|_| {
            batch_weight
                .iter()
                .map(|w| w * (GROUP_BATCH_IMBALANCE_SD * normal.sample(rng)).exp())
                .collect()
        })
        .collect();

    // Groups of the treatments: every group once (random order), then by weight.
    let mut group_order: Vec<usize> = (0..g_count).collect();
    group_order.shuffle(rng);
    let treatment_group: Vec<usize> = (0..t_count)
        .map(|t| {
            if t < g_count {
                group_order[t]
            } else {
                pick_weighted(&group_weight, None, rng)
            }
        })
        .collect();

    let mut batch_order: Vec<usize> = (0..b_count).collect();
    batch_order.shuffle(rng);
    let first_specific = g_count - spec.batch_specific_groups;
    let specific_batch = |g: usize| batch_order[(g - first_specific) % b_count];

    let mut per_batch: Vec<Vec<RowKind>> = vec![Vec::new(); b_count];
    let mut round_robin = 0;
    for (t, &g) in treatment_group.iter().enumerate() {
        let reps = base + usize::from(t < extra);
        let kind = RowKind::Treatment(t);
        if g >= first_specific {
            per_batch[specific_batch(g)].extend(std::iter::repeat_n(kind, reps));
            continue;
        }
        let first = batch_order[round_robin % b_count];
        round_robin += 1;
        per_batch[first].push(kind);
        let exclude = (b_count > 1).then_some(first);
        let second = pick_weighted(&placement_weight[g], exclude, rng);
        per_batch[second].push(kind);
        for _ in 2..reps {
            per_batch[pick_weighted(&placement_weight[g], None, rng)].push(kind);
        }
    }

    // One control per batch first (so every batch has some), then by batch weight.
    let mut control_batches: Vec<usize> = (0..b_count).collect();
    control_batches.shuffle(rng);
    control_batches.truncate(controls);
    for _ in control_batches.len()..controls {
        control_batches.push(pick_weighted(&batch_weight, None, rng));
    }
    for b in control_batches {
        per_batch[b].push(RowKind::Control);
    }

    let batch_width = digits(b_count).max(2);
    let plate_width = digits(spec.plates_per_batch).max(2);
    let mut rows = Vec::with_capacity(spec.rows);
    let mut plate_names = Vec::new();
    for (b, kinds) in per_batch.iter_mut().enumerate() {
        if kinds.is_empty() {
            bail!(
                "synth spec: the design left Batch{:0batch_width$} without rows \
                 ({} rows, {} batches, {} batch-specific groups, controls_fraction {}); \
                 increase rows or controls_fraction",
                b + 1,
                spec.rows,
                b_count,
                spec.batch_specific_groups,
                spec.controls_fraction
            );
        }
        kinds.shuffle(rng);
        let n = kinds.len();
        let plates = spec.plates_per_batch.min(n);
        for p in 0..plates {
            let plate = plate_names.len();
            plate_names.push(format!(
                "Batch{:0batch_width$}_Plate{:0plate_width$}",
                b + 1,
                p + 1
            ));
            let (start, end) = (p * n / plates, (p + 1) * n / plates);
            for (well, &kind) in kinds[start..end].iter().enumerate() {
                rows.push(RowDesign {
                    batch: b,
                    plate,
                    well,
                    kind,
                });
            }
        }
    }
    debug_assert_eq!(rows.len(), spec.rows);
    Ok(Design {
        rows,
        treatment_group,
        plate_names,
    })
}

/// Draws an index with probability proportional to `weights` (all positive),
/// never returning `exclude`. Linear in the number of weights.
fn pick_weighted(weights: &[f64], exclude: Option<usize>, rng: &mut ChaCha8Rng) -> usize {
    let total: f64 = weights
        .iter()
        .enumerate()
        .filter(|&(i, _)| Some(i) != exclude)
        .map(|(_, w)| w)
        .sum();
    let mut target = rng.gen::<f64>() * total;
    let mut last = 0;
    for (i, &w) in weights.iter().enumerate() {
        if Some(i) == exclude {
            continue;
        }
        last = i;
        if target < w {
            return i;
        }
        target -= w;
    }
    // Rounding can leave `target` a hair above the last weight.
    last
}

/// Batch-effect parameters of one batch (row-major small matrices).
struct BatchEffect {
    /// Per-feature multiplicative scaling `m_b`.
    scale: Vec<f64>,
    /// Additive shift `delta_b`.
    shift: Vec<f64>,
    /// Warp read-in `V_b^T / s_x`, `WARP_RANK x features`.
    warp_in: Vec<f64>,
    /// Warp write-out `warp * s * U_b^T`, `WARP_RANK x features`.
    warp_out: Vec<f64>,
}

/// All parameters of the generative model.
struct Model {
    features: usize,
    latent: usize,
    /// `latent x features`.
    loadings: Vec<f64>,
    /// `groups x latent`.
    group_centres: Vec<f64>,
    control_centre: Vec<f64>,
    /// `treatments x latent`.
    treatment_offsets: Vec<f64>,
    /// Group of every treatment.
    treatment_group: Vec<usize>,
    feature_noise: Vec<f64>,
    batches: Vec<BatchEffect>,
    /// `plates x features`.
    plate_shift: Vec<f64>,
    apply_warp: bool,
}

impl Model {
    fn draw(spec: &SynthSpec, design: &Design, rng: &mut ChaCha8Rng) -> Model {
        let f = spec.features;
        let l = spec.latent_dim;
        let mut normal = Normal::default();
        let mut draw = |count: usize, sd: f64, rng: &mut ChaCha8Rng| -> Vec<f64> {
            (0..count).map(|_| sd * normal.sample(rng)).collect()
        };
        let loadings = draw(l * f, 1.0 / (l as f64).sqrt(), rng);
        let group_centres = draw(spec.groups * l, CENTRE_SD, rng);
        let control_centre = draw(l, CONTROL_CENTRE_SD, rng);
        let treatment_offsets = draw(design.treatment_group.len() * l, TREATMENT_SD, rng);
        let feature_noise: Vec<f64> = draw(f, FEATURE_NOISE_LOG_SD, rng)
            .into_iter()
            .map(|e| FEATURE_NOISE_SD * e.exp())
            .collect();

        let mean_noise_var = feature_noise.iter().map(|s| s * s).sum::<f64>() / f as f64;
        let within = (WITHIN_SD.powi(2) + TREATMENT_SD.powi(2) + mean_noise_var).sqrt();
        let total =
            (CENTRE_SD.powi(2) + WITHIN_SD.powi(2) + TREATMENT_SD.powi(2) + mean_noise_var).sqrt();

        let batches = (0..spec.batches)
            .map(|_| BatchEffect {
                scale: draw(f, spec.scale, rng).into_iter().map(f64::exp).collect(),
                shift: draw(f, spec.shift * within, rng),
                warp_in: draw(WARP_RANK * f, 1.0 / ((f as f64).sqrt() * total), rng),
                warp_out: draw(
                    WARP_RANK * f,
                    spec.warp * within / (WARP_RANK as f64).sqrt(),
                    rng,
                ),
            })
            .collect();
        let plate_shift = draw(
            design.plate_names.len() * f,
            PLATE_SHIFT_FRACTION * spec.shift * within,
            rng,
        );
        Model {
            features: f,
            latent: l,
            loadings,
            group_centres,
            control_centre,
            treatment_offsets,
            treatment_group: design.treatment_group.clone(),
            feature_noise,
            batches,
            plate_shift,
            apply_warp: spec.warp > 0.0,
        }
    }

    /// Draws one row: its true profile into `truth`, its observed one into `observed`.
    fn row(
        &self,
        row: &RowDesign,
        rng: &mut ChaCha8Rng,
        s: &mut Scratch,
        truth: &mut [f64],
        observed: &mut [f64],
    ) {
        let (f, l) = (self.features, self.latent);
        match row.kind {
            RowKind::Control => s.z.copy_from_slice(&self.control_centre),
            RowKind::Treatment(t) => {
                let g = self.treatment_group[t];
                let centre = &self.group_centres[g * l..(g + 1) * l];
                let offset = &self.treatment_offsets[t * l..(t + 1) * l];
                for ((z, c), o) in s.z.iter_mut().zip(centre).zip(offset) {
                    *z = c + o;
                }
            }
        }
        for z in s.z.iter_mut() {
            *z += WITHIN_SD * s.normal.sample(rng);
        }
        for (x, sd) in truth.iter_mut().zip(&self.feature_noise) {
            *x = sd * s.normal.sample(rng);
        }
        for (k, &z) in s.z.iter().enumerate() {
            for (x, a) in truth.iter_mut().zip(&self.loadings[k * f..(k + 1) * f]) {
                *x += z * a;
            }
        }

        let effect = &self.batches[row.batch];
        observed.copy_from_slice(truth);
        if self.apply_warp {
            for r in 0..WARP_RANK {
                let v = &effect.warp_in[r * f..(r + 1) * f];
                let h = truth.iter().zip(v).map(|(x, v)| x * v).sum::<f64>().tanh();
                for (y, u) in observed
                    .iter_mut()
                    .zip(&effect.warp_out[r * f..(r + 1) * f])
                {
                    *y += h * u;
                }
            }
        }
        let plate_shift = &self.plate_shift[row.plate * f..(row.plate + 1) * f];
        for (((y, m), d), p) in observed
            .iter_mut()
            .zip(&effect.scale)
            .zip(&effect.shift)
            .zip(plate_shift)
        {
            *y = m * *y + d + p;
        }
    }
}

/// Per-chunk working memory.
struct Scratch {
    z: Vec<f64>,
    normal: Normal,
}

impl Scratch {
    fn new(latent: usize) -> Scratch {
        Scratch {
            z: vec![0.0; latent],
            normal: Normal::default(),
        }
    }
}

/// Standard normal variates by the Box–Muller transform; each pair of
/// uniforms yields two independent normals, the second kept for the next call.
#[derive(Debug, Default)]
struct Normal {
    spare: Option<f64>,
}

impl Normal {
    fn sample<R: Rng>(&mut self, rng: &mut R) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        // 1 - U(0,1] avoids ln(0).
        let u1 = 1.0 - rng.gen::<f64>();
        let u2 = rng.gen::<f64>();
        let radius = (-2.0 * u1.ln()).sqrt();
        let angle = std::f64::consts::TAU * u2;
        self.spare = Some(radius * angle.sin());
        radius * angle.cos()
    }
}

/// Group labels `G01`.. (at least two digits).
fn group_names(groups: usize) -> Vec<String> {
    let width = digits(groups).max(2);
    (1..=groups).map(|g| format!("G{g:0width$}")).collect()
}

/// Well name of position `i` within a plate: `A01`..`P24`, then `A01_s2`..
fn well_name(i: usize) -> String {
    let site = i / WELLS_PER_PLATE;
    let w = i % WELLS_PER_PLATE;
    let row = (b'A' + (w / PLATE_COLUMNS) as u8) as char;
    let column = w % PLATE_COLUMNS + 1;
    if site == 0 {
        format!("{row}{column:02}")
    } else {
        format!("{row}{column:02}_s{}", site + 1)
    }
}

/// Number of decimal digits of `n` (1 for 0).
fn digits(n: usize) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

#[cfg(test)]
mod tests;
