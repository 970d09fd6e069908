//! What to generate: the [`SynthSpec`] knobs, their defaults and the
//! validation [`super::generate`] runs before drawing anything.

use anyhow::{ensure, Result};

/// What to generate. All counts must be positive; see [`generate`](super::generate) for the
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
    /// Fraction of rows that are negative controls (label [`CONTROL_LABEL`](super::CONTROL_LABEL)), in `[0, 1)`.
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

pub(super) fn validate(spec: &SynthSpec) -> Result<()> {
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

pub(super) fn control_count(spec: &SynthSpec) -> usize {
    ((spec.controls_fraction * spec.rows as f64).round() as usize).min(spec.rows)
}
