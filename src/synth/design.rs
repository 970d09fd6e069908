//! The experimental layout, drawn before any value: how many treatments,
//! which group each belongs to, which batch and plate each replicate and
//! control lands on, and the well order within a plate (see "Design" in the
//! [module docs](super)).

use anyhow::{bail, Result};
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::names::digits;
use super::normal::Normal;
use super::spec::{control_count, SynthSpec};

/// Batch weights are `1 + U(-BATCH_SIZE_JITTER, BATCH_SIZE_JITTER)`.
const BATCH_SIZE_JITTER: f64 = 0.3;
/// Log-normal spread of the group-batch affinities (composition imbalance).
const GROUP_BATCH_IMBALANCE_SD: f64 = 0.3;
/// Log-normal spread of the group weights (group sizes).
const GROUP_SIZE_SD: f64 = 0.3;

/// What a row is: a replicate of treatment `t`, or a control.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RowKind {
    Control,
    Treatment(usize),
}

/// The design of one row: where it is and what it is.
#[derive(Debug, Clone, Copy)]
pub(super) struct RowDesign {
    pub(super) batch: usize,
    /// Global plate index (into `Design::plate_names`).
    pub(super) plate: usize,
    /// Position within the plate (384-well order).
    pub(super) well: usize,
    pub(super) kind: RowKind,
}

/// The experimental layout, drawn before any values.
pub(super) struct Design {
    pub(super) rows: Vec<RowDesign>,
    /// Group of every treatment.
    pub(super) treatment_group: Vec<usize>,
    pub(super) plate_names: Vec<String>,
}

pub(super) fn design(spec: &SynthSpec, rng: &mut ChaCha8Rng) -> Result<Design> {
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
pub(super) fn pick_weighted(
    weights: &[f64],
    exclude: Option<usize>,
    rng: &mut ChaCha8Rng,
) -> usize {
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
